//! An Azure Resource Manager simulator for the parts vmidentity uses:
//! Microsoft.Compute VM/VMSS identity (GET/PATCH/PUT at api-versions 2017-12-01,
//! 2018-06-01 and later), Microsoft.ManagedIdentity user-assigned identities,
//! Compute long-running operations, bearer auth, fault injection, counters.
//!
//! It is an independent implementation of ARM semantics (see README.md for the
//! sources each rule follows). Start one with [`start`]; it serves real HTTP on
//! loopback until [`SimHandle::shutdown`] (or until the handle is dropped).

mod admin;
mod auth;
mod compute;
mod errors;
mod faults;
mod identity;
mod ids;
mod lro;
mod msi;
mod server;
mod state;
mod world;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::compute::COMPUTE_API_VERSIONS;
pub use crate::errors::SimError;
pub use crate::faults::{FaultAction, FaultRule};
pub use crate::identity::MAX_UAI_PER_REQUEST;
pub use crate::msi::MSI_API_VERSIONS;
pub use crate::state::{Counters, RecordedRequest, ResourceCounters};
pub use crate::world::{
    DEFAULT_LOCATION, DEFAULT_TENANT_ID, SeedComputeResource, SeedIdentity, SeedResourceGroup,
    SeedUserAssignedIdentity, SeedUserIds, WorldSeed,
};

use crate::identity::Shape;
use crate::ids::{ResourceId, ResourceKind, key_of};
use crate::state::{RuntimeConfig, Shared, State};
use crate::world::World;

/// How VM/VMSS PATCH/PUT answer (ARM-BEHAVIOUR.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LroMode {
    /// 200 with the full resource, `provisioningState: Succeeded`, no LRO headers.
    Sync,
    /// 200 with the full resource, `provisioningState: Updating`, `Azure-AsyncOperation`.
    #[default]
    Async200,
    /// 202 with `Azure-AsyncOperation` and `Location`, no body.
    Async202,
}

impl std::str::FromStr for LroMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sync" => Ok(LroMode::Sync),
            "async200" => Ok(LroMode::Async200),
            "async202" => Ok(LroMode::Async202),
            other => Err(format!(
                "unknown LRO mode '{other}' (expected sync, async200 or async202)"
            )),
        }
    }
}

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: WorldSeed,
    /// Bearer tokens accepted on ARM routes.
    pub accepted_tokens: Vec<String>,
    pub lro: LroMode,
    /// Polls answering `InProgress` before `Succeeded`.
    pub lro_polls: u32,
    /// `Retry-After` (seconds) on LRO responses and polls.
    pub retry_after_secs: u64,
    /// An operation stays `InProgress` at least this long (besides `lro_polls`).
    pub min_operation_duration: Duration,
    /// A PATCH that changes nothing answers 200 without LRO headers (ARM-BEHAVIOUR.md §3,
    /// [A14]/[A15]). Default true.
    pub noop_patch_completes_immediately: bool,
    /// Size of the request log ring (oldest dropped first). 0 disables the log.
    pub max_logged_requests: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: WorldSeed::default(),
            accepted_tokens: vec!["sim-token".to_string()],
            lro: LroMode::Async200,
            lro_polls: 1,
            retry_after_secs: 0,
            min_operation_duration: Duration::ZERO,
            noop_patch_completes_immediately: true,
            max_logged_requests: 100_000,
        }
    }
}

/// Namespace type for callers that prefer `Simulator::start(config)`.
pub struct Simulator;

impl Simulator {
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        start(config).await
    }
}

/// Starts a simulator on `127.0.0.1:0`.
pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
    start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts a simulator on the given address.
pub async fn start_on(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
    let world = World::from_seed(&config.seed)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let base_url = format!("http://{local}");
    let state = State {
        world,
        config: RuntimeConfig {
            accepted_tokens: config.accepted_tokens,
            lro: config.lro,
            lro_polls: config.lro_polls,
            retry_after_secs: config.retry_after_secs,
            min_operation_duration: config.min_operation_duration,
            noop_patch_completes_immediately: config.noop_patch_completes_immediately,
            max_logged_requests: config.max_logged_requests,
        },
        base_url: base_url.clone(),
        counters: Counters::default(),
        log: VecDeque::new(),
        faults: Vec::new(),
        ops: HashMap::new(),
        buckets: HashMap::new(),
    };
    let shared = Shared(Arc::new(Mutex::new(state)));
    let app = admin::router()
        .fallback(server::arm_entry)
        .with_state(shared.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "armsim server stopped with an error");
        }
    });
    tracing::info!(%base_url, "armsim listening");
    Ok(SimHandle {
        shared,
        addr: local,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    shared: Shared,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn compute_id(resource_id: &str) -> Result<ResourceId, SimError> {
    let id = ResourceId::parse(resource_id).map_err(|_| SimError::InvalidResourceId {
        id: resource_id.to_string(),
        reason: "not a Microsoft.Compute virtualMachines / virtualMachineScaleSets id".into(),
    })?;
    if !id.kind.is_compute() {
        return Err(SimError::InvalidResourceId {
            id: resource_id.to_string(),
            reason: "not a Microsoft.Compute virtualMachines / virtualMachineScaleSets id".into(),
        });
    }
    Ok(id)
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Clears the request log only.
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// PATCH/PUT/DELETE requests that addressed this resource (any id spelling).
    pub fn writes_for(&self, resource_id: &str) -> u64 {
        let key = key_of(resource_id);
        self.shared
            .lock()
            .counters
            .per_resource
            .get(&key)
            .map_or(0, |c| c.writes)
    }

    /// GET requests that addressed this resource (any id spelling).
    pub fn reads_for(&self, resource_id: &str) -> u64 {
        let key = key_of(resource_id);
        self.shared
            .lock()
            .counters
            .per_resource
            .get(&key)
            .map_or(0, |c| c.reads)
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Resets all counters AND clears the request log.
    pub fn reset_counters(&self) {
        let mut st = self.shared.lock();
        st.counters = Counters::default();
        st.log.clear();
    }

    pub fn add_fault(&self, rule: FaultRule) {
        faults::add(&mut self.shared.lock(), rule);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Changes the LRO mode for subsequent writes.
    pub fn set_lro_mode(&self, mode: LroMode) {
        self.shared.lock().config.lro = mode;
    }

    /// Changes the number of `InProgress` polls for subsequent operations.
    pub fn set_lro_polls(&self, polls: u32) {
        self.shared.lock().config.lro_polls = polls;
    }

    /// Changes the minimum operation duration for subsequent operations.
    pub fn set_min_operation_duration(&self, d: Duration) {
        self.shared.lock().config.min_operation_duration = d;
    }

    /// Marks every running operation Succeeded now.
    pub fn complete_operations(&self) {
        lro::complete_all(&mut self.shared.lock());
    }

    /// The identity block as a 2018-06-01 GET shows it; `{"type":"None"}` when the
    /// resource has no identity; `None` when the resource does not exist.
    pub fn identity_of(&self, resource_id: &str) -> Option<Value> {
        let st = self.shared.lock();
        let res = st.world.compute.get(&key_of(resource_id))?;
        Some(
            st.world
                .render_identity(res, Shape::Dictionary)
                .unwrap_or_else(|| serde_json::json!({ "type": "None" })),
        )
    }

    /// `properties.provisioningState` of a VM/VMSS.
    pub fn provisioning_state_of(&self, resource_id: &str) -> Option<String> {
        let st = self.shared.lock();
        st.world
            .compute
            .get(&key_of(resource_id))
            .map(|r| r.provisioning_state.clone())
    }

    /// Out-of-band identity write (2018-06-01 shape, full replace): `type`,
    /// optional `principalId` (forces the system principal), optional
    /// `userAssignedIdentities` (map or array of ids; need not exist → stale entries).
    pub fn set_identity(&self, resource_id: &str, identity: Value) -> Result<(), SimError> {
        let id = compute_id(resource_id)?;
        let mut identity = identity;
        let mut principal = None;
        if let Value::Object(m) = &mut identity {
            if let Some(Value::String(p)) = m.get("principalId") {
                principal = Some(p.clone());
            }
            if let Some(Value::Array(a)) = m.get("userAssignedIdentities") {
                let d: serde_json::Map<String, Value> = a
                    .iter()
                    .filter_map(|v| v.as_str().map(|s| (s.to_string(), serde_json::json!({}))))
                    .collect();
                m.insert("userAssignedIdentities".into(), Value::Object(d));
            }
        }
        let mut st = self.shared.lock();
        let res = st
            .world
            .compute
            .get(&id.key())
            .cloned()
            .ok_or_else(|| SimError::NotFound(resource_id.to_string()))?;
        let state = st.world.out_of_band_identity(&res, &identity, principal)?;
        if let Some(r) = st.world.compute.get_mut(&id.key()) {
            r.set_identity(state);
        }
        Ok(())
    }

    /// Creates a VM or VMSS out of band (no identity; the resource group is implied).
    pub fn create_compute_resource(
        &self,
        resource_id: &str,
        location: &str,
    ) -> Result<(), SimError> {
        let id = compute_id(resource_id)?;
        let mut st = self.shared.lock();
        st.world
            .ensure_group(&id.subscription, &id.resource_group, location);
        let key = id.key();
        st.world
            .compute
            .entry(key)
            .or_insert_with(|| world::ComputeResource::new(id, location));
        Ok(())
    }

    /// Deletes a VM, VMSS or user-assigned identity out of band. True if it existed.
    pub fn delete_resource(&self, resource_id: &str) -> bool {
        let key = key_of(resource_id);
        let mut st = self.shared.lock();
        st.world.compute.remove(&key).is_some() || st.world.uais.remove(&key).is_some()
    }

    /// Creates a user-assigned identity (fresh principalId/clientId) and returns it as
    /// GET shows it; returns the existing one unchanged if it already exists.
    pub fn create_user_assigned_identity(&self, id: &str) -> Result<Value, SimError> {
        let rid = ResourceId::parse_kind(id, ResourceKind::UserAssignedIdentity).map_err(|_| {
            SimError::InvalidResourceId {
                id: id.to_string(),
                reason: "expected /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}".into(),
            }
        })?;
        let mut st = self.shared.lock();
        let loc = st.world.default_location.clone();
        st.world.put_uai(&rid, &loc, None, None, None);
        let u = st
            .world
            .uais
            .get(&rid.key())
            .ok_or_else(|| SimError::NotFound(id.to_string()))?;
        Ok(st.world.render_uai(u))
    }

    /// Deletes a user-assigned identity out of band. True if it existed.
    pub fn delete_user_assigned_identity(&self, id: &str) -> bool {
        self.shared.lock().world.uais.remove(&key_of(id)).is_some()
    }

    /// A user-assigned identity as GET shows it.
    pub fn user_assigned_identity(&self, id: &str) -> Option<Value> {
        let st = self.shared.lock();
        st.world
            .uais
            .get(&key_of(id))
            .map(|u| st.world.render_uai(u))
    }

    /// Every system-assigned principal id the resource has had, oldest first.
    pub fn system_principal_history(&self, resource_id: &str) -> Vec<String> {
        self.shared
            .lock()
            .world
            .compute
            .get(&key_of(resource_id))
            .map(|r| r.principal_history.clone())
            .unwrap_or_default()
    }

    /// The tenant id of the world.
    pub fn tenant_id(&self) -> String {
        self.shared.lock().world.tenant_id.clone()
    }

    /// The whole world as JSON (same as `GET /_sim/world`).
    pub fn world_dump(&self) -> Value {
        self.shared.lock().world.dump()
    }

    /// Stops the server and waits (up to 5 s) for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
