//! Shared harness for scenario tests: the ARM simulator on loopback, a client pointed at it,
//! and helpers to build objects and read what the simulator received.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vmidentity::engine::{self, TargetResult};
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_planner::{Applied, DesiredObject, ObjectRef, RawSpec};
use vmidentity_simulator::{SimConfig, SimHandle, WorldSeed};

pub const SUB: &str = "00000000-0000-0000-0000-000000000001";
pub const TOKEN: &str = "sim-token";

pub fn vm(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

pub fn vmss(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )
}

pub fn uai(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// A world with UAIs ID1..ID3 and the given compute resources (YAML list items).
pub fn world(compute_yaml: &str) -> String {
    format!(
        "userAssignedIdentities:\n  - id: {}\n  - id: {}\n  - id: {}\n{compute_yaml}",
        uai("ID1"),
        uai("ID2"),
        uai("ID3")
    )
}

/// Client settings for tests: fast backoff, short inline waits.
pub fn test_client_config(endpoint: &str) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.to_string(),
        max_attempts: 4,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        max_inline_wait: Duration::from_secs(3),
        default_retry_after: Duration::from_secs(1),
        lro_poll_interval: Duration::from_millis(20),
        lro_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

pub const GRAPH_TOKEN: &str = "sim-graph-token";

pub struct Harness {
    pub sim: SimHandle,
    /// The one door to the simulator: ARM, and Graph with its own token.
    pub exec: Executor,
}

impl Harness {
    pub async fn new(world_yaml: &str) -> Harness {
        let seed = WorldSeed::from_yaml_str(world_yaml).expect("world parses");
        Harness::with_config(SimConfig {
            seed,
            ..SimConfig::default()
        })
        .await
    }

    pub async fn with_config(cfg: SimConfig) -> Harness {
        let sim = vmidentity_simulator::start(cfg)
            .await
            .expect("simulator starts");
        let exec = Harness::executor(&sim, TOKEN).with_graph(
            ArmClient::new(
                ClientConfig {
                    token_scope: vmidentity_azure::GRAPH_SCOPE.to_string(),
                    ..test_client_config(&sim.base_url())
                },
                Arc::new(StaticToken::new(GRAPH_TOKEN)),
            )
            .expect("graph client"),
        );
        Harness { sim, exec }
    }

    /// An executor for ARM only, with `token`.
    pub fn executor(sim: &SimHandle, token: &str) -> Executor {
        Executor::new(
            ArmClient::new(
                test_client_config(&sim.base_url()),
                Arc::new(StaticToken::new(token)),
            )
            .expect("client"),
        )
    }

    /// One apply pass over the objects.
    pub async fn apply(&self, objects: &[DesiredObject]) -> Vec<TargetResult> {
        engine::apply(&self.exec, objects.to_vec(), 4).await
    }

    /// Applies, then carries the new ownership records into the returned objects.
    pub async fn converge(
        &self,
        objects: &[DesiredObject],
    ) -> (Vec<TargetResult>, Vec<DesiredObject>) {
        let results = self.apply(objects).await;
        let next = objects
            .iter()
            .map(|o| {
                let rec = results
                    .iter()
                    .filter(|r| r.error.is_none())
                    .find_map(|r| r.applied(&o.object));
                match rec {
                    Some(a) => o.clone().with_applied(a),
                    None => o.clone(),
                }
            })
            .collect();
        (results, next)
    }

    /// Bodies of the PATCH requests the simulator received, in order.
    pub fn patch_bodies(&self) -> Vec<Value> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .filter_map(|r| r.body)
            .collect()
    }

    /// `(type, sorted lower-cased UAI names)` of a target, as a 2018-06-01 GET shows it.
    pub fn identity(&self, target: &str) -> (String, Vec<String>) {
        let ident = self.sim.identity_of(target).unwrap_or(Value::Null);
        let ty = ident
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("None")
            .to_string();
        let mut names: Vec<String> = ident
            .get("userAssignedIdentities")
            .and_then(Value::as_object)
            .map(|m| {
                m.keys()
                    .map(|k| {
                        k.rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_lowercase()
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        (ty, names)
    }
}

/// Builds a validated object.
pub fn object(name: &str, target: &str, f: impl FnOnce(&mut RawSpec)) -> DesiredObject {
    let mut raw = RawSpec {
        target: target.to_string(),
        ..Default::default()
    };
    f(&mut raw);
    DesiredObject::new(
        ObjectRef::new("default", name),
        raw.validate().expect("valid spec"),
    )
}

pub fn owned(ids: &[String]) -> Applied {
    Applied {
        user_assigned_identities: ids.to_vec(),
        ..Applied::default()
    }
}
