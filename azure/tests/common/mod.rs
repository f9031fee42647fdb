//! Shared fixtures for the simulator-backed tests of this crate.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use vmidentity_azure::{ArmClient, AzureError, ClientConfig, Executor, Sent, StaticToken};
use vmidentity_planner::Write;
use vmidentity_planner::grants::role_definition_id;
use vmidentity_simulator::{SimConfig, SimHandle, WorldSeed};

pub const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000a1";
pub const SUB2: &str = "0a1b2c3d-0000-4000-8000-0000000000a2";
pub const UAI_PRINCIPAL: &str = "11111111-1111-4111-8111-111111111111";
pub const USER: &str = "22222222-2222-4222-8222-222222222222";
pub const GROUP: &str = "33333333-3333-4333-8333-333333333333";
pub const CUSTOM_ROLE: &str = "55555555-5555-4555-8555-555555555555";
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
pub const ARM_TOKEN: &str = "sim-token";
pub const GRAPH_TOKEN: &str = "sim-graph-token";

pub fn sub_scope() -> String {
    format!("/subscriptions/{SUB}")
}

pub fn rg(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{name}")
}

pub fn seed() -> WorldSeed {
    let yaml = format!(
        r#"
resourceGroups:
  - id: /subscriptions/{SUB}/resourceGroups/rg-a
  - id: /subscriptions/{SUB}/resourceGroups/rg-b
  - id: /subscriptions/{SUB2}/resourceGroups/rg-c
userAssignedIdentities:
  - id: /subscriptions/{SUB}/resourceGroups/rg-a/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-1
    principalId: {UAI_PRINCIPAL}
principals:
  - {{ id: {USER}, type: User, displayName: Alice }}
groups:
  - {{ id: {GROUP}, displayName: vm-readers }}
roleDefinitions:
  - id: {CUSTOM_ROLE}
    roleName: Identity Auditor
    assignableScopes: [/subscriptions/{SUB}]
    permissions: [{{ actions: ["*/read"] }}]
"#
    );
    match WorldSeed::from_yaml_str(&yaml) {
        Ok(s) => s,
        Err(e) => panic!("seed: {e}"),
    }
}

pub async fn start(cfg: SimConfig) -> SimHandle {
    vmidentity_simulator::start(SimConfig {
        seed: seed(),
        ..cfg
    })
    .await
    .unwrap()
}

pub async fn start_default() -> SimHandle {
    start(SimConfig::default()).await
}

/// Fast retries, short inline waits.
pub fn fast(mut cfg: ClientConfig) -> ClientConfig {
    cfg.max_attempts = 4;
    cfg.base_backoff = Duration::from_millis(10);
    cfg.max_backoff = Duration::from_millis(200);
    cfg.max_inline_wait = Duration::from_secs(3);
    cfg.default_retry_after = Duration::from_secs(1);
    cfg.lro_poll_interval = Duration::from_millis(20);
    cfg.request_timeout = Duration::from_secs(10);
    cfg
}

pub fn arm_config(sim: &SimHandle) -> ClientConfig {
    fast(ClientConfig {
        endpoint: sim.base_url(),
        ..ClientConfig::default()
    })
}

pub fn graph_config(sim: &SimHandle) -> ClientConfig {
    fast(ClientConfig::graph(&sim.base_url()))
}

pub fn arm(sim: &SimHandle) -> ArmClient {
    ArmClient::new(arm_config(sim), Arc::new(StaticToken::new(ARM_TOKEN))).unwrap()
}

pub fn graph_client(sim: &SimHandle) -> ArmClient {
    ArmClient::new(graph_config(sim), Arc::new(StaticToken::new(GRAPH_TOKEN))).unwrap()
}

/// The one door for writes, ARM and Graph (`arm` shares its counters with the executor).
pub fn exec_with(arm: &ArmClient, sim: &SimHandle) -> Executor {
    Executor::new(arm.clone()).with_graph(graph_client(sim))
}

/// An executor with ARM and Graph clients of their own.
pub fn graph(sim: &SimHandle) -> Executor {
    exec_with(&arm(sim), sim)
}

/// The Graph client's counters.
pub fn graph_stats(exec: &Executor) -> vmidentity_azure::StatsSnapshot {
    exec.graph_client().expect("graph client").stats()
}

/// PUT the assignment of `role_guid` to `principal_id` at `scope` under `name`.
pub async fn put_role(
    exec: &Executor,
    scope: &str,
    name: &str,
    role_guid: &str,
    principal_id: &str,
    principal_type: Option<&str>,
) -> Result<Sent, AzureError> {
    exec.send(&Write::RoleAssignmentPut {
        scope: scope.to_string(),
        name: name.to_string(),
        role_definition_id: role_definition_id(scope, role_guid),
        principal_id: principal_id.to_string(),
        principal_type: principal_type.map(str::to_string),
    })
    .await
}

pub async fn delete_role(exec: &Executor, id: &str) -> Result<Sent, AzureError> {
    exec.send(&Write::RoleAssignmentDelete { id: id.to_string() })
        .await
}

pub async fn add_member(exec: &Executor, group: &str, principal: &str) -> Result<Sent, AzureError> {
    exec.send(&Write::GroupMemberAdd {
        group_id: group.to_string(),
        principal_id: principal.to_string(),
    })
    .await
}

pub async fn remove_member(
    exec: &Executor,
    group: &str,
    principal: &str,
) -> Result<Sent, AzureError> {
    exec.send(&Write::GroupMemberRemove {
        group_id: group.to_string(),
        principal_id: principal.to_string(),
    })
    .await
}
