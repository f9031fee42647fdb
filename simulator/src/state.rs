//! Shared mutable state: world, config, counters, request log, faults, operations,
//! per-subscription rate buckets. One `Arc<Mutex<State>>`, never held across `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::faults::FaultRule;
use crate::throttle::SubscriptionBuckets;
use crate::world::World;
use crate::{CallerConfig, LroMode};

/// Totals and per-resource counts. Every request is counted on arrival (before auth,
/// faults and validation), so a refused or throttled write still counts as a write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// GETs of VM/VMSS/UAI resources.
    pub reads: u64,
    /// PATCH/PUT/DELETE of VM/VMSS/UAI resources.
    pub writes: u64,
    /// GETs of the operation-status URL.
    pub polls: u64,
    /// 429 responses sent.
    pub throttled: u64,
    /// 5xx responses sent.
    pub server_errors: u64,
    /// Every ARM-route request (including unknown routes and Graph).
    pub requests: u64,
    /// GETs of Microsoft.Authorization role assignments / definitions.
    pub authorization_reads: u64,
    /// PUT/DELETE (any non-GET) of Microsoft.Authorization role assignments.
    pub authorization_writes: u64,
    /// GETs of Microsoft Graph routes (`/v1.0/…`, `/beta/…`).
    pub graph_reads: u64,
    /// POST/DELETE (any non-GET) of Microsoft Graph routes (requests inside a `$batch`
    /// counted one by one).
    pub graph_writes: u64,
    /// `POST /v1.0/$batch` requests (JSON batching).
    pub graph_batches: u64,
    /// Resource Graph query POSTs (including throttled ones).
    pub resource_graph_queries: u64,
    /// Resource Graph 429s (quota exceeded; also counted in `throttled`).
    pub resource_graph_throttled: u64,
    /// ARM subscription-bucket 429s of reads (throttling on; also in `throttled`).
    pub throttled_reads: u64,
    /// ARM subscription-bucket 429s of writes (PUT/PATCH/POST).
    pub throttled_writes: u64,
    /// ARM subscription-bucket 429s of deletes.
    pub throttled_deletes: u64,
    /// Compute policy 429s (per-resource or per-subscription bucket empty).
    pub throttled_compute: u64,
    /// Requests to the Entra token endpoint `/{tenant}/oauth2/v2.0/token`.
    pub token_requests: u64,
    /// Requests to the IMDS token endpoint (when IMDS is on).
    pub imds_requests: u64,
    /// Access tokens issued (Entra, IMDS and `SimHandle::issue_token`).
    pub tokens_issued: u64,
    /// Per resource id (case-folded).
    pub per_resource: BTreeMap<String, ResourceCounters>,
}

/// Reads and writes of one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResourceCounters {
    pub reads: u64,
    pub writes: u64,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The body as JSON (a non-JSON body is kept as a JSON string); None when empty.
    pub body: Option<Value>,
    pub status: u16,
    /// RFC 3339 time the request arrived.
    pub timestamp: String,
    /// Case-folded id of the VM/VMSS/UAI addressed, if any.
    pub resource_id: Option<String>,
    /// The `If-Match` header, when the request carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
    /// For a PATCH / PUT / DELETE of a VM or VMSS: its identity block just before the request
    /// was applied, as a 2018-06-01 GET shows it (`{"type":"None"}` without identity, `null`
    /// when the resource did not exist). Taken under the same lock as the write, so
    /// `identity_before` → `identity_after` is exactly what this request changed (the state
    /// history that soak and chaos checks read). Not set for refused-before-dispatch requests
    /// (auth, injected faults, throttling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_before: Option<Value>,
    /// The identity block just after the request was applied (see `identity_before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_after: Option<Value>,
    /// RFC 3339 time (microseconds) the write was applied, under the lock: later than
    /// `timestamp` by any injected delay. Set with `identity_before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}

/// Status of a long-running operation.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub id: String,
    pub resource_key: String,
    pub start_time: String,
    pub started: Instant,
    pub end_time: Option<String>,
    pub polls: u32,
    pub polls_required: u32,
    pub min_duration: Duration,
    /// Ends `Failed` (`SimHandle::fail_next_operations`).
    pub fails: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct RuntimeConfig {
    pub accepted_tokens: Vec<String>,
    pub lro: LroMode,
    pub lro_polls: u32,
    pub retry_after_secs: u64,
    pub min_operation_duration: Duration,
    /// Operations started from now on that end `Failed` (counted down).
    pub lro_failures: u32,
    pub noop_patch_completes_immediately: bool,
    pub max_logged_requests: usize,
    pub callers: Vec<CallerConfig>,
    pub graph_tokens: Vec<String>,
    pub principal_replication_delay: Duration,
    pub role_assignment_page_size: usize,
    pub role_assignment_limit: usize,
    pub graph_page_size: usize,
    pub graph_members_omit_service_principals: bool,
    pub arg_lag: Duration,
    pub arg_quota: u32,
    pub arg_quota_window: Duration,
    pub change_feed: crate::changes::ChangeFeedConfig,
    /// Enforced throttling; `None` = subscription buckets reported only.
    pub throttling: Option<crate::throttle::ThrottleConfig>,
    /// App registrations served by the Entra token endpoint.
    pub apps: Vec<crate::token::AppConfig>,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// IMDS identities; `None` = IMDS not served.
    pub imds: Option<crate::token::ImdsConfig>,
}

impl RuntimeConfig {
    /// The caller behind an accepted ARM token: its configured entry, or a default caller
    /// (ids derived from the token, may write role assignments everywhere).
    pub fn caller(&self, token: &str) -> CallerConfig {
        self.callers
            .iter()
            .find(|c| c.token == token)
            .cloned()
            .unwrap_or_else(|| CallerConfig::new(token))
    }

    /// Every token accepted on ARM routes.
    pub fn arm_tokens(&self) -> Vec<String> {
        let mut t = self.accepted_tokens.clone();
        t.extend(self.callers.iter().map(|c| c.token.clone()));
        t
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ActiveFault {
    pub rule: FaultRule,
    pub remaining: Option<u32>,
    /// When the rule stops applying (`FaultRule::for_ms`), on the simulator's clock.
    pub expires: Option<tokio::time::Instant>,
}

pub(crate) struct State {
    pub world: World,
    pub config: RuntimeConfig,
    pub base_url: String,
    pub counters: Counters,
    pub log: VecDeque<RecordedRequest>,
    pub faults: Vec<ActiveFault>,
    pub ops: HashMap<String, Operation>,
    pub buckets: HashMap<String, SubscriptionBuckets>,
    /// Compute policy buckets (throttling on only).
    pub compute_buckets: crate::throttle::ComputeBuckets,
    /// Added to tokio's clock for throttle buckets and token lifetimes
    /// (`SimHandle::advance_clock`).
    pub clock_offset: Duration,
    /// Tokens issued by the token endpoints (token → audience, expiry, identity).
    pub issued: crate::token::IssuedTokens,
    /// Resource Graph quota windows per caller token.
    pub arg_quota: HashMap<String, crate::resourcegraph::QuotaWindow>,
}

impl State {
    /// The simulator's clock for throttle buckets and token lifetimes: tokio's clock
    /// (pausable in tests) plus the virtual offset.
    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.clock_offset
    }

    /// Wall-clock time on the same virtual clock (for `expires_on`, `exp`).
    pub fn wall_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + chrono::Duration::from_std(self.clock_offset)
                .unwrap_or_else(|_| chrono::Duration::zero())
    }
}

/// Handle to the shared state.
#[derive(Clone)]
pub(crate) struct Shared(pub Arc<Mutex<State>>);

impl Shared {
    /// Locks the state, recovering from a poisoned lock (a panicking test thread must
    /// not take the simulator down with it).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}
