//! An Azure Resource Manager simulator for the parts vmidentity uses:
//! Microsoft.Compute VM/VMSS identity (GET/PATCH/PUT at api-versions 2017-12-01,
//! 2018-06-01 and later), Microsoft.ManagedIdentity user-assigned identities,
//! Compute long-running operations, Microsoft.Authorization role definitions and
//! assignments, Microsoft Graph v1.0 group memberships, Azure Resource Graph queries,
//! bearer auth, opt-in ARM / Compute throttling, the Entra and IMDS token endpoints,
//! fault injection, counters.
//!
//! It is an independent implementation of ARM semantics (see README.md for the
//! sources each rule follows). Start one with [`start`]; it serves real HTTP on
//! loopback until [`SimHandle::shutdown`] (or until the handle is dropped).

mod admin;
mod auth;
mod authz;
mod changes;
mod compute;
mod directory;
mod errors;
mod faults;
mod graph;
mod identity;
mod ids;
mod lro;
mod msi;
mod resourcegraph;
mod scope;
mod server;
mod state;
mod throttle;
mod token;
mod world;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::authz::{
    AUTHORIZATION_API_VERSIONS, DEFAULT_ROLE_ASSIGNMENT_LIMIT,
    MANAGEMENT_GROUP_ROLE_ASSIGNMENT_LIMIT, SeedPermission,
};
pub use crate::changes::ChangeFeedConfig;
pub use crate::compute::{COMPUTE_API_VERSIONS, ETAG_API_VERSION, has_etag};
pub use crate::directory::PrincipalKind;
pub use crate::errors::SimError;
pub use crate::faults::{FaultAction, FaultRule};
pub use crate::graph::GRAPH_MAX_PAGE_SIZE;
pub use crate::identity::MAX_UAI_PER_REQUEST;
pub use crate::msi::MSI_API_VERSIONS;
pub use crate::resourcegraph::{ARG_DEFAULT_TOP, ARG_MAX_TOP, RESOURCE_GRAPH_API_VERSIONS};
pub use crate::state::{Counters, RecordedRequest, ResourceCounters};
pub use crate::throttle::{Bucket, BucketLevels, ComputeLimits, ComputePolicy, ThrottleConfig};
pub use crate::token::{
    AppConfig, DEFAULT_FEDERATED_AUDIENCE, DEFAULT_TOKEN_LIFETIME_SECS, FederatedCredential,
    ImdsConfig, ImdsIdentity, JWT_BEARER_ASSERTION_TYPE, base64url_decode, base64url_encode,
    make_jwt,
};
pub use crate::world::{
    DEFAULT_LOCATION, DEFAULT_TENANT_ID, SeedComputeResource, SeedGroup, SeedIdentity,
    SeedManagedCluster, SeedPrincipal, SeedResourceGroup, SeedRoleAssignment, SeedRoleDefinition,
    SeedUserAssignedIdentity, SeedUserIds, WorldSeed,
};

use crate::identity::Shape;
use crate::ids::{ResourceId, ResourceKind, key_of};
use crate::state::{RuntimeConfig, Shared, State};
use crate::world::World;

/// How VM/VMSS PATCH/PUT answer. The Compute spec declares `VirtualMachines_Update` (200, 201)
/// and `VirtualMachineScaleSets_Update` (200) long-running
/// (`specification/compute/resource-manager/Microsoft.Compute/stable/2018-06-01/compute.json`);
/// clients follow "Track asynchronous Azure operations",
/// <https://learn.microsoft.com/azure/azure-resource-manager/management/async-operations>.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LroMode {
    /// 200 with the full resource, `provisioningState: Succeeded`, no LRO headers.
    Sync,
    /// What ARM answers an identity PATCH with (the default): 200 with the full resource,
    /// `provisioningState: Updating`, newly added user-assigned entries `{}`, and an
    /// `Azure-AsyncOperation` header; no `Location`, no `Retry-After` (on the PATCH nor on
    /// the polls). Recorded for VM and scale-set identity PATCHes in the Azure CLI's VM
    /// identity tests (e.g. `test_vmss_explicit_msi.yaml`, Azure/azure-cli commit
    /// 0151a1baa6e087378dbbbc374a9806098d6314c8, api-version 2024-11-01).
    #[default]
    Async200,
    /// [`LroMode::Async200`] with `Retry-After` (`SimConfig::retry_after_secs`) on the
    /// PATCH and on `InProgress` polls: for tests of how a client honours it.
    Async200RetryAfter,
    /// 202 with `Azure-AsyncOperation`, `Location` and `Retry-After`, no body.
    Async202,
}

impl LroMode {
    /// Whether the write's answer and `InProgress` polls carry `Retry-After`.
    pub fn sends_retry_after(self) -> bool {
        matches!(self, LroMode::Async200RetryAfter | LroMode::Async202)
    }
}

impl std::str::FromStr for LroMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sync" => Ok(LroMode::Sync),
            "async200" => Ok(LroMode::Async200),
            "async200-retry-after" => Ok(LroMode::Async200RetryAfter),
            "async202" => Ok(LroMode::Async202),
            other => Err(format!(
                "unknown LRO mode '{other}' (expected sync, async200, async200-retry-after or async202)"
            )),
        }
    }
}

/// Who is behind an ARM bearer token, and where it may write role assignments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerConfig {
    /// The bearer token (accepted on ARM routes in addition to `accepted_tokens`).
    pub token: String,
    /// Object id named in `AuthorizationFailed` messages and `createdBy`.
    pub object_id: String,
    /// Client (application) id named in `AuthorizationFailed` messages.
    pub client_id: String,
    /// Scopes at (and below) which the caller may PUT/DELETE role assignments;
    /// `None` = everywhere (the default for tokens without a `CallerConfig`).
    pub role_assignment_write_scopes: Option<Vec<String>>,
    /// Scopes at (and below) which the caller may write (PATCH/PUT/DELETE) VMs and VM scale
    /// sets; `None` = everywhere. Elsewhere: 403 `AuthorizationFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_write_scopes: Option<Vec<String>>,
    /// Resource Graph tables (`Resources`, `AuthorizationResources`) whose rows the caller may
    /// not read (e.g. its role lacks `Microsoft.Authorization/roleAssignments/read`): a query
    /// of one answers 403 `AuthorizationFailed`. Default empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_resource_graph_tables: Vec<String>,
}

impl CallerConfig {
    /// A caller with ids derived from the token (uuid v5) that may write everywhere.
    pub fn new(token: &str) -> CallerConfig {
        let ns = uuid::Uuid::NAMESPACE_OID;
        CallerConfig {
            token: token.to_string(),
            object_id: uuid::Uuid::new_v5(&ns, format!("object:{token}").as_bytes()).to_string(),
            client_id: uuid::Uuid::new_v5(&ns, format!("client:{token}").as_bytes()).to_string(),
            role_assignment_write_scopes: None,
            compute_write_scopes: None,
            denied_resource_graph_tables: Vec::new(),
        }
    }

    /// Denies this caller the rows of these Resource Graph tables (403 `AuthorizationFailed`).
    pub fn with_denied_resource_graph_tables(mut self, tables: &[&str]) -> CallerConfig {
        self.denied_resource_graph_tables = tables.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Restricts VM / VMSS writes to these scopes (and below); empty = nowhere.
    pub fn with_compute_write_scopes(mut self, scopes: &[&str]) -> CallerConfig {
        self.compute_write_scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Restricts role-assignment writes to these scopes (and below); empty = nowhere.
    pub fn with_role_assignment_write_scopes(mut self, scopes: &[&str]) -> CallerConfig {
        self.role_assignment_write_scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
        self
    }
}

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: WorldSeed,
    /// Bearer tokens accepted on ARM routes.
    pub accepted_tokens: Vec<String>,
    pub lro: LroMode,
    /// Polls answering `InProgress` before `Succeeded`. Default 0: the first poll of an
    /// identity PATCH's operation is often already `Succeeded` on ARM (the Azure CLI's VM
    /// identity recordings); set more for tests of polling.
    pub lro_polls: u32,
    /// `Retry-After` (seconds) on LRO responses and polls, in the modes that send it
    /// ([`LroMode::sends_retry_after`]).
    pub retry_after_secs: u64,
    /// An operation stays `InProgress` at least this long (besides `lro_polls`).
    pub min_operation_duration: Duration,
    /// A PATCH that changes nothing answers 200 without LRO headers (observed:
    /// Azure/azure-sdk-for-ruby#2795, Azure/azure-sdk-for-python#14111). Default true.
    pub noop_patch_completes_immediately: bool,
    /// Size of the request log ring (oldest dropped first). 0 disables the log.
    pub max_logged_requests: usize,
    /// Callers (token → ids and role-assignment write rights). Tokens listed here are
    /// accepted on ARM routes too. Default empty: every accepted token may write
    /// role assignments everywhere.
    pub callers: Vec<CallerConfig>,
    /// Bearer tokens accepted on Graph routes (`/v1.0/…`, `/beta/…`). ARM tokens are not.
    pub graph_tokens: Vec<String>,
    /// A principal younger than this is unknown to role-assignment PUTs without
    /// `principalType` (400 `PrincipalNotFound`). Default 0.
    pub principal_replication_delay: Duration,
    /// Role assignments per list page before `nextLink`. Default 1000.
    pub role_assignment_page_size: usize,
    /// Role assignments per subscription (4000: "Troubleshoot Azure RBAC limits",
    /// <https://learn.microsoft.com/azure/role-based-access-control/troubleshoot-limits>).
    pub role_assignment_limit: usize,
    /// Default Graph page size when `$top` is absent (100: "List servicePrincipal memberOf",
    /// <https://learn.microsoft.com/graph/api/serviceprincipal-list-memberof?view=graph-rest-1.0>).
    pub graph_page_size: usize,
    /// v1.0 `GET /groups/{id}/members` omits service principals (documented in "Known issues
    /// with Microsoft Graph", <https://learn.microsoft.com/graph/known-issues>). Default true;
    /// `/beta` and `$expand=members` (the documented workarounds) always list them.
    pub graph_members_omit_service_principals: bool,
    /// Resource Graph rows show the world as it was this long ago. Default 0.
    pub resource_graph_lag: Duration,
    /// Resource Graph queries per caller per window (15 per 5 s, the example quota of
    /// "Guidance for throttled requests in Azure Resource Graph",
    /// <https://learn.microsoft.com/azure/governance/resource-graph/concepts/guidance-for-throttled-requests>).
    pub resource_graph_quota: u32,
    pub resource_graph_quota_window: Duration,
    /// Resource Graph's `resourcechanges` feed: ingestion delay, jitter, duplicates and
    /// retention (default: at once, no duplicates, 14 days).
    pub change_feed: ChangeFeedConfig,
    /// Enforced ARM / Compute throttling ("Understand how Azure Resource Manager throttles
    /// requests", <https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling>;
    /// "Compute throttling limits", <https://learn.microsoft.com/azure/virtual-machines/compute-throttling-limits>).
    /// Default `None`:
    /// nothing is refused; the subscription rate headers are still reported.
    pub throttling: Option<ThrottleConfig>,
    /// App registrations the Entra token endpoint `POST /{tenant}/oauth2/v2.0/token`
    /// knows. Default empty (every client is unknown).
    pub apps: Vec<AppConfig>,
    /// Lifetime (`expires_in`) of issued access tokens. Default 3599 s.
    pub token_lifetime: Duration,
    /// The IMDS token endpoint `GET /metadata/identity/oauth2/token`. Default `None`:
    /// not served (the path is an unknown route, as before).
    pub imds: Option<ImdsConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: WorldSeed::default(),
            accepted_tokens: vec!["sim-token".to_string()],
            lro: LroMode::Async200,
            lro_polls: 0,
            retry_after_secs: 0,
            min_operation_duration: Duration::ZERO,
            noop_patch_completes_immediately: true,
            max_logged_requests: 100_000,
            callers: Vec::new(),
            graph_tokens: vec!["sim-graph-token".to_string()],
            principal_replication_delay: Duration::ZERO,
            role_assignment_page_size: 1000,
            role_assignment_limit: DEFAULT_ROLE_ASSIGNMENT_LIMIT,
            graph_page_size: 100,
            graph_members_omit_service_principals: true,
            resource_graph_lag: Duration::ZERO,
            resource_graph_quota: 15,
            resource_graph_quota_window: Duration::from_secs(5),
            change_feed: ChangeFeedConfig::default(),
            throttling: None,
            apps: Vec::new(),
            token_lifetime: Duration::from_secs(DEFAULT_TOKEN_LIFETIME_SECS),
            imds: None,
        }
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
            lro_failures: 0,
            noop_patch_completes_immediately: config.noop_patch_completes_immediately,
            max_logged_requests: config.max_logged_requests,
            callers: config.callers,
            graph_tokens: config.graph_tokens,
            principal_replication_delay: config.principal_replication_delay,
            role_assignment_page_size: config.role_assignment_page_size,
            role_assignment_limit: config.role_assignment_limit,
            graph_page_size: config.graph_page_size,
            graph_members_omit_service_principals: config.graph_members_omit_service_principals,
            arg_lag: config.resource_graph_lag,
            arg_quota: config.resource_graph_quota,
            arg_quota_window: config.resource_graph_quota_window,
            change_feed: config.change_feed,
            throttling: config.throttling,
            apps: config.apps,
            token_lifetime: config.token_lifetime,
            imds: config.imds,
        },
        base_url: base_url.clone(),
        counters: Counters::default(),
        log: VecDeque::new(),
        faults: Vec::new(),
        ops: HashMap::new(),
        buckets: HashMap::new(),
        compute_buckets: HashMap::new(),
        clock_offset: Duration::ZERO,
        issued: HashMap::new(),
        arg_quota: HashMap::new(),
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

/// [`SimHandle::identity_of`] on the shared state (also the admin routes').
pub(crate) fn identity_in(shared: &Shared, resource_id: &str) -> Option<Value> {
    let st = shared.lock();
    let res = st.world.compute.get(&key_of(resource_id))?;
    Some(
        st.world
            .render_identity(res, Shape::Dictionary)
            .unwrap_or_else(|| serde_json::json!({ "type": "None" })),
    )
}

/// [`SimHandle::set_identity`] on the shared state (also the admin routes').
pub(crate) fn set_identity_in(
    shared: &Shared,
    resource_id: &str,
    identity: Value,
) -> Result<(), SimError> {
    edit_identity_in(shared, resource_id, |_| identity).map(|_| ())
}

/// Reads the identity block (2018-06-01 GET shape), lets `edit` compute the new one (as
/// [`SimHandle::set_identity`] takes it) and stores it, all under one lock: no request can
/// land between the read and the write, as no ARM request lands inside another writer's
/// single PUT. Returns the block as it was.
pub(crate) fn edit_identity_in(
    shared: &Shared,
    resource_id: &str,
    edit: impl FnOnce(&Value) -> Value,
) -> Result<Value, SimError> {
    let id = compute_id(resource_id)?;
    let mut st = shared.lock();
    let res = st
        .world
        .compute
        .get(&id.key())
        .cloned()
        .ok_or_else(|| SimError::NotFound(resource_id.to_string()))?;
    let before = st
        .world
        .render_identity(&res, Shape::Dictionary)
        .unwrap_or_else(|| serde_json::json!({ "type": "None" }));
    let mut identity = edit(&before);
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
    let state = st.world.out_of_band_identity(&res, &identity, principal)?;
    if let Some(r) = st.world.compute.get_mut(&id.key()) {
        r.set_identity(state);
        r.bump_etag();
    }
    st.world.sync_compute_principals(&id.key());
    Ok(before)
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

    /// The next `n` long-running operations (identity PATCH / PUT answered with an operation,
    /// see [`LroMode`]) end `Failed` with Compute's `InternalExecutionError`, and the
    /// resource's `provisioningState` with them. What the write changed stays applied
    /// (**CHOSEN**: a failed operation does not roll the resource's model back), so a client
    /// that reads again sees its change. 0 turns it off.
    pub fn fail_next_operations(&self, n: u32) {
        self.shared.lock().config.lro_failures = n;
    }

    /// Marks every running operation Succeeded now.
    pub fn complete_operations(&self) {
        lro::complete_all(&mut self.shared.lock());
    }

    /// The identity block as a 2018-06-01 GET shows it; `{"type":"None"}` when the
    /// resource has no identity; `None` when the resource does not exist.
    pub fn identity_of(&self, resource_id: &str) -> Option<Value> {
        identity_in(&self.shared, resource_id)
    }

    /// `properties.provisioningState` of a VM/VMSS.
    pub fn provisioning_state_of(&self, resource_id: &str) -> Option<String> {
        let st = self.shared.lock();
        st.world
            .compute
            .get(&key_of(resource_id))
            .map(|r| r.provisioning_state.clone())
    }

    /// The entity tag of a VM/VMSS as a 2023-09-01+ GET shows it (e.g. `"3"`, quotes
    /// included), whatever api-version the callers use.
    pub fn etag_of(&self, resource_id: &str) -> Option<String> {
        let st = self.shared.lock();
        st.world
            .compute
            .get(&key_of(resource_id))
            .map(|r| r.etag_value())
    }

    /// Out-of-band identity write (2018-06-01 shape, full replace): `type`,
    /// optional `principalId` (forces the system principal), optional
    /// `userAssignedIdentities` (map or array of ids; need not exist → stale entries).
    /// Bumps the resource's entity tag, as any write does.
    pub fn set_identity(&self, resource_id: &str, identity: Value) -> Result<(), SimError> {
        set_identity_in(&self.shared, resource_id, identity)
    }

    /// An out-of-band read-modify-write of the identity block, atomic (one lock): `edit`
    /// gets the block as a 2018-06-01 GET shows it and returns the new one in the shape
    /// [`SimHandle::set_identity`] takes. Returns the block as it was. What another writer's
    /// single PUT does; two calls (`identity_of`, then `set_identity`) could interleave with
    /// a request and undo it.
    pub fn edit_identity(
        &self,
        resource_id: &str,
        edit: impl FnOnce(&Value) -> Value,
    ) -> Result<Value, SimError> {
        edit_identity_in(&self.shared, resource_id, edit)
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
        if !st.world.compute.contains_key(&key) {
            st.world
                .compute
                .insert(key.clone(), world::ComputeResource::new(id, location));
            st.world.sync_compute_principals(&key);
        }
        Ok(())
    }

    /// Deletes a VM, VMSS or user-assigned identity out of band. True if it existed.
    pub fn delete_resource(&self, resource_id: &str) -> bool {
        let key = key_of(resource_id);
        let mut st = self.shared.lock();
        st.world.remove_compute(&key) || st.world.remove_uai(&key)
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
        self.shared.lock().world.remove_uai(&key_of(id))
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

    // ----- Microsoft.Authorization / Graph helpers -----

    /// Every role assignment as GET shows it, in creation order.
    pub fn role_assignments(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let mut v: Vec<_> = st.world.authz.assignments.values().collect();
        v.sort_by_key(|a| a.seq);
        v.into_iter().map(|a| a.render()).collect()
    }

    /// Role assignments of one principal (any scope), in creation order.
    pub fn role_assignments_of(&self, principal_id: &str) -> Vec<Value> {
        self.role_assignments()
            .into_iter()
            .filter(|a| {
                a["properties"]["principalId"]
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case(principal_id))
            })
            .collect()
    }

    /// Creates a role assignment out of band (no caller-rights or replication checks;
    /// the role must exist at the scope). `role_definition` is a GUID or a role
    /// definition id; `name` None = a fresh GUID. Returns the assignment as GET shows it.
    pub fn create_role_assignment(
        &self,
        scope: &str,
        name: Option<&str>,
        role_definition: &str,
        principal_id: &str,
    ) -> Result<Value, SimError> {
        let sc = scope::Scope::parse(scope)
            .ok_or_else(|| SimError::Seed(format!("'{scope}' is not a scope")))?;
        let role_guid = if directory::is_guid(role_definition) {
            role_definition.to_ascii_lowercase()
        } else {
            authz::role_guid_of(role_definition).ok_or_else(|| {
                SimError::Seed(format!("'{role_definition}' is not a role definition id"))
            })?
        };
        let name = name.map_or_else(world::new_uuid, str::to_string);
        let mut st = self.shared.lock();
        let principal_type = st
            .world
            .directory
            .live(principal_id)
            .map_or("ServicePrincipal", |p| p.kind.principal_type())
            .to_string();
        let req = authz::NewAssignment {
            role_guid,
            principal_id: principal_id.to_string(),
            principal_type: Some(principal_type),
            description: None,
            condition: None,
            condition_version: None,
        };
        let resp = authz::create_assignment(&mut st, &sc, &name, req, "armsim".to_string())
            .map_err(|e| SimError::Identity {
                code: e.code.clone(),
                message: e.message.clone(),
            })?;
        Ok(resp.body.unwrap_or(Value::Null))
    }

    /// Deletes a role assignment by name out of band. True if it existed.
    pub fn delete_role_assignment(&self, name: &str) -> bool {
        self.shared
            .lock()
            .world
            .authz
            .assignments
            .remove(&name.to_ascii_lowercase())
            .is_some()
    }

    /// Direct members of an Entra group (object ids as first given, in order added,
    /// service principals included); `None` when the group does not exist.
    pub fn group_members(&self, group_id: &str) -> Option<Vec<String>> {
        let st = self.shared.lock();
        let g = st
            .world
            .directory
            .groups
            .get(&group_id.to_ascii_lowercase())?;
        Some(
            g.members
                .iter()
                .map(|m| {
                    st.world
                        .directory
                        .principals
                        .get(m)
                        .map_or_else(|| m.clone(), |p| p.id.clone())
                })
                .collect(),
        )
    }

    /// Creates an Entra security group (also a principal of type Group). False if a
    /// principal with that id already exists.
    pub fn add_group(&self, group_id: &str, display_name: &str) -> bool {
        let mut st = self.shared.lock();
        if st.world.directory.live(group_id).is_some() {
            return false;
        }
        st.world.directory.register(directory::NewPrincipal {
            id: group_id.to_string(),
            kind: PrincipalKind::Group,
            display_name: display_name.to_string(),
            app_id: None,
            service_principal_type: None,
            alternative_names: Vec::new(),
            seeded: true,
        });
        st.world.directory.groups.insert(
            group_id.to_ascii_lowercase(),
            directory::EntraGroup {
                id: group_id.to_string(),
                description: None,
                members: Vec::new(),
            },
        );
        true
    }

    /// Adds a member out of band. False when the group or principal does not exist or
    /// it already is a member.
    pub fn add_group_member(&self, group_id: &str, member_id: &str) -> bool {
        let mut st = self.shared.lock();
        if st.world.directory.live(member_id).is_none() {
            return false;
        }
        let key = member_id.to_ascii_lowercase();
        match st
            .world
            .directory
            .groups
            .get_mut(&group_id.to_ascii_lowercase())
        {
            Some(g) if !g.members.contains(&key) => {
                g.members.push(key);
                true
            }
            _ => false,
        }
    }

    /// Removes a member out of band. True if it was a member.
    pub fn remove_group_member(&self, group_id: &str, member_id: &str) -> bool {
        let mut st = self.shared.lock();
        let key = member_id.to_ascii_lowercase();
        match st
            .world
            .directory
            .groups
            .get_mut(&group_id.to_ascii_lowercase())
        {
            Some(g) => {
                let before = g.members.len();
                g.members.retain(|m| *m != key);
                g.members.len() != before
            }
            None => false,
        }
    }

    /// A live directory object as Graph v1.0 shows it (`@odata.type`, `id`, …);
    /// `None` when unknown or deleted.
    pub fn principal(&self, object_id: &str) -> Option<Value> {
        let st = self.shared.lock();
        let p = st.world.directory.live(object_id)?;
        Some(st.world.directory.render(p))
    }

    /// True when the principal exists and is older than the replication delay, i.e. a
    /// role-assignment PUT without `principalType` would find it.
    pub fn principal_replicated(&self, object_id: &str) -> bool {
        let st = self.shared.lock();
        let delay = st.config.principal_replication_delay;
        st.world
            .directory
            .live(object_id)
            .is_some_and(|p| p.replicated(delay))
    }

    /// True when the principal existed and has been deleted (identity deleted/disabled).
    pub fn principal_deleted(&self, object_id: &str) -> bool {
        self.shared
            .lock()
            .world
            .directory
            .principals
            .get(&object_id.to_ascii_lowercase())
            .is_some_and(|p| p.deleted)
    }

    /// Ids of the groups the principal is a direct member of.
    pub fn member_of(&self, object_id: &str) -> Vec<String> {
        let st = self.shared.lock();
        st.world
            .directory
            .member_of(object_id)
            .iter()
            .filter_map(|g| st.world.directory.groups.get(g).map(|x| x.id.clone()))
            .collect()
    }

    /// Changes the principal replication delay for subsequent role-assignment PUTs.
    pub fn set_principal_replication_delay(&self, delay: Duration) {
        self.shared.lock().config.principal_replication_delay = delay;
    }

    /// Grants the caller behind `token` role-assignment writes at `scope` (and below).
    /// A token without a `CallerConfig` gets one (it could already write everywhere).
    pub fn grant_role_assignment_write(&self, token: &str, scope: &str) {
        let mut st = self.shared.lock();
        let idx = caller_index(&mut st.config, token);
        let c = &mut st.config.callers[idx];
        let list = c.role_assignment_write_scopes.get_or_insert_with(Vec::new);
        if !list.iter().any(|s| s.eq_ignore_ascii_case(scope)) {
            list.push(scope.to_string());
        }
    }

    /// Revokes a grant made at exactly `scope` (case-insensitive). A caller that could
    /// write everywhere is first restricted to nothing.
    pub fn revoke_role_assignment_write(&self, token: &str, scope: &str) {
        let mut st = self.shared.lock();
        let idx = caller_index(&mut st.config, token);
        let c = &mut st.config.callers[idx];
        let list = c.role_assignment_write_scopes.get_or_insert_with(Vec::new);
        list.retain(|s| {
            !s.trim_end_matches('/')
                .eq_ignore_ascii_case(scope.trim_end_matches('/'))
        });
    }

    /// Sets the caller's write scopes wholesale (`None` = everywhere).
    pub fn set_role_assignment_write_scopes(&self, token: &str, scopes: Option<Vec<String>>) {
        let mut st = self.shared.lock();
        let idx = caller_index(&mut st.config, token);
        st.config.callers[idx].role_assignment_write_scopes = scopes;
    }

    /// Changes the Resource Graph lag for subsequent queries.
    pub fn set_resource_graph_lag(&self, lag: Duration) {
        self.shared.lock().config.arg_lag = lag;
    }

    /// Changes the Resource Graph quota (queries per window per caller); resets the
    /// current windows.
    pub fn set_resource_graph_quota(&self, quota: u32, window: Duration) {
        let mut st = self.shared.lock();
        st.config.arg_quota = quota;
        st.config.arg_quota_window = window;
        st.arg_quota.clear();
    }

    /// Changes how the `resourcechanges` feed delivers records (applies to records already
    /// made, too: visibility is computed at query time).
    pub fn set_change_feed(&self, feed: ChangeFeedConfig) {
        self.shared.lock().config.change_feed = feed;
    }

    /// The number of change records made so far (each once, duplicates not counted).
    pub fn change_count(&self) -> usize {
        self.shared.lock().world.changes.records.len()
    }

    /// Resource Graph queries left in the caller's current window.
    pub fn resource_graph_quota_remaining(&self, token: &str) -> u32 {
        let st = self.shared.lock();
        let quota = st.config.arg_quota;
        match st.arg_quota.get(token) {
            Some(w) if w.start.elapsed() < st.config.arg_quota_window => {
                quota.saturating_sub(w.used)
            }
            _ => quota,
        }
    }

    // ----- Throttling -----

    /// Turns enforced throttling on (`Some`) or off (`None`). Every bucket starts full
    /// again.
    pub fn set_throttling(&self, throttling: Option<ThrottleConfig>) {
        let mut st = self.shared.lock();
        st.config.throttling = throttling;
        st.buckets.clear();
        st.compute_buckets.clear();
    }

    /// The throttling configuration in force.
    pub fn throttling(&self) -> Option<ThrottleConfig> {
        self.shared.lock().config.throttling.clone()
    }

    /// Tokens left in a subscription's buckets now (ARM reads/writes/deletes and the
    /// Compute per-subscription buckets used so far).
    pub fn bucket_levels(&self, subscription: &str) -> BucketLevels {
        throttle::levels(&mut self.shared.lock(), subscription)
    }

    /// Tokens left in the Compute per-resource buckets of a VM/VMSS (used ones only,
    /// keyed by bucket name, e.g. `UpdateVMResource`).
    pub fn resource_bucket_levels(
        &self,
        resource_id: &str,
    ) -> std::collections::BTreeMap<String, f64> {
        throttle::resource_levels(&mut self.shared.lock(), &key_of(resource_id))
    }

    /// Moves the simulator's virtual clock forward: buckets refill and issued tokens
    /// age as if `d` had passed (LRO timing and Resource Graph lag are not affected).
    pub fn advance_clock(&self, d: Duration) {
        self.shared.lock().clock_offset += d;
    }

    // ----- Token endpoints -----

    /// Issues an access token for `resource` (`https://management.azure.com/` → accepted
    /// on ARM routes, `https://graph.microsoft.com` → on Graph routes, anything else →
    /// nowhere) as the app / identity `client_id` (object id from a configured app or
    /// IMDS identity, else derived). `lifetime` `None` = the configured token lifetime.
    pub fn issue_token(
        &self,
        resource: &str,
        client_id: &str,
        lifetime: Option<Duration>,
    ) -> String {
        let mut st = self.shared.lock();
        let object_id = st
            .config
            .apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
            .map(AppConfig::principal_id)
            .or_else(|| {
                st.config.imds.as_ref().and_then(|i| {
                    i.system_assigned
                        .iter()
                        .chain(i.user_assigned.iter())
                        .find(|x| x.client_id.eq_ignore_ascii_case(client_id))
                        .map(|x| x.object_id.clone())
                })
            })
            .unwrap_or_else(|| AppConfig::with_secret(client_id, "", "").principal_id());
        let tenant = st.world.tenant_id.clone();
        let lifetime = lifetime.unwrap_or(st.config.token_lifetime);
        token::issue(&mut st, resource, &tenant, client_id, &object_id, lifetime).0
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().config.token_lifetime = lifetime;
    }

    /// Number of tokens issued so far (Entra, IMDS, `issue_token`).
    pub fn issued_token_count(&self) -> usize {
        self.shared.lock().issued.len()
    }

    /// True when `token` was issued by the simulator and has not expired.
    pub fn token_valid(&self, token: &str) -> bool {
        let st = self.shared.lock();
        let now = st.now();
        st.issued.get(token).is_some_and(|t| now < t.expires_at)
    }

    /// Registers (or replaces, by client id and tenant) an app for the Entra endpoint.
    pub fn add_app(&self, app: AppConfig) {
        let mut st = self.shared.lock();
        st.config.apps.retain(|a| {
            !(a.client_id.eq_ignore_ascii_case(&app.client_id)
                && a.tenant_id.eq_ignore_ascii_case(&app.tenant_id))
        });
        st.config.apps.push(app);
    }

    /// Turns IMDS on (with these identities) or off.
    pub fn set_imds(&self, imds: Option<ImdsConfig>) {
        self.shared.lock().config.imds = imds;
    }

    /// The caller configuration an ARM token maps to.
    pub fn caller(&self, token: &str) -> CallerConfig {
        self.shared.lock().config.caller(token)
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

fn caller_index(cfg: &mut state::RuntimeConfig, token: &str) -> usize {
    if let Some(i) = cfg.callers.iter().position(|c| c.token == token) {
        return i;
    }
    cfg.callers.push(CallerConfig::new(token));
    cfg.callers.len() - 1
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
