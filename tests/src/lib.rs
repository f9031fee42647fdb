//! Shared harness for scenario tests: the ARM simulator on loopback, a client pointed at it,
//! and helpers to build objects and read what the simulator received. What the controller's
//! end-to-end tests and the bench use too comes from `vmidentity-testkit`.

use std::sync::Arc;

use serde_json::Value;
use vmidentity::engine::{self, TargetResult};
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_planner::DesiredObject;
use vmidentity_simulator::{RecordedRequest, SimConfig, SimHandle};
pub use vmidentity_testkit::{GRAPH_TOKEN, TOKEN, test_client_config};

/// The planner tests' builders, one file for both suites: ARM IDs in subscription [`SUB`]
/// (`vm`, `vmss`, `uai`), a validated object (`object`) and an ownership record (`owned`).
#[path = "../../planner/tests/common/mod.rs"]
mod builders;
pub use builders::{SUB, applied as owned, obj as object, uai, vm, vmss};

/// A world with UAIs ID1..ID3 and the given compute resources (YAML list items).
pub fn world(compute_yaml: &str) -> String {
    format!(
        "userAssignedIdentities:\n  - id: {}\n  - id: {}\n  - id: {}\n{compute_yaml}",
        uai("ID1"),
        uai("ID2"),
        uai("ID3")
    )
}

/// `virtualMachines:` vm0..vm<n-1> as world YAML; the even ones carry a system identity and
/// an unowned UAI (ID3).
pub fn fleet_vms(n: usize) -> String {
    let mut s = String::from("virtualMachines:\n");
    for i in 0..n {
        s.push_str(&format!("  - id: {}\n", vm(&format!("vm{i}"))));
        if i % 2 == 0 {
            s.push_str(&format!(
                "    identity:\n      type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [{}]\n",
                uai("ID3")
            ));
        }
    }
    s
}

pub struct Harness {
    pub sim: SimHandle,
    /// The one door to the simulator: ARM, and Graph with its own token.
    pub exec: Executor,
}

impl Harness {
    pub async fn new(world_yaml: &str) -> Harness {
        let sim = vmidentity_testkit::start_sim(world_yaml, |_| {})
            .await
            .expect("simulator starts");
        Harness::on(sim)
    }

    pub async fn with_config(cfg: SimConfig) -> Harness {
        let sim = vmidentity_simulator::start(cfg)
            .await
            .expect("simulator starts");
        Harness::on(sim)
    }

    fn on(sim: SimHandle) -> Harness {
        let graph = ClientConfig {
            token_scope: vmidentity_azure::GRAPH_SCOPE.to_string(),
            ..test_client_config(&sim.base_url())
        };
        let exec = Harness::executor(&sim, TOKEN).with_graph(
            ArmClient::new(graph, Arc::new(StaticToken::new(GRAPH_TOKEN))).expect("graph client"),
        );
        Harness { sim, exec }
    }

    /// An executor for ARM only, with `token`.
    pub fn executor(sim: &SimHandle, token: &str) -> Executor {
        vmidentity_testkit::arm_executor(test_client_config(&sim.base_url()), token)
            .expect("client")
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
        let next = engine::carry_ownership(objects, &results);
        (results, next)
    }

    /// The PATCH requests the simulator received, in order.
    pub fn patches(&self) -> impl Iterator<Item = RecordedRequest> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
    }

    /// Bodies of the PATCH requests the simulator received, in order.
    pub fn patch_bodies(&self) -> Vec<Value> {
        self.patches().filter_map(|r| r.body).collect()
    }

    /// Statuses of the answers to the PATCH requests the simulator received, in order.
    pub fn patch_statuses(&self) -> Vec<u16> {
        self.patches().map(|r| r.status).collect()
    }

    /// `(type, sorted lower-cased UAI names)` of a target, as a 2018-06-01 GET shows it.
    pub fn identity(&self, target: &str) -> (String, Vec<String>) {
        vmidentity_testkit::identity_of(&self.sim, target)
    }
}
