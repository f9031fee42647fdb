//! The one place that talks HTTP to ARM (and to Microsoft Graph, through the same client
//! configured with [`ClientConfig::graph`]): bearer tokens, retries with jittered backoff,
//! `Retry-After`, per-subscription throttling gates, long-running-operation polling and
//! `nextLink` paging.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{AzureError, ErrorClass, classify, parse_error_body};
use crate::token::{ARM_SCOPE, GRAPH_SCOPE, TokenSource};

/// The public cloud's ARM endpoint.
pub const PUBLIC_ARM_ENDPOINT: &str = "https://management.azure.com";
/// The public cloud's Microsoft Graph endpoint (paths carry the version: `/v1.0/…`).
pub const PUBLIC_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";

/// Most pages followed by one listing (a guard against a server that loops).
const MAX_PAGES: usize = 10_000;

/// The largest response body the client reads (the default of
/// [`ClientConfig::max_response_bytes`]): 32 MiB. The largest answers vmidentity asks for are
/// a Resource Graph page (at most 1,000 rows, each an identity block) and a page of role
/// assignments or group members; a VM / VMSS GET is a few kilobytes (a scale set that lists a
/// thousand identities, about 300 kB). A body over the limit is refused before it is parsed
/// (by `Content-Length` when the server sends one, else while it streams), so a broken or
/// hostile endpoint cannot make the controller hold an unbounded body.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How a request is counted and throttled (ARM keeps separate buckets for these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Read,
    Write,
    Delete,
    /// Polling a long-running operation's status URL.
    Poll,
    /// A Resource Graph query.
    Query,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Delete => "delete",
            RequestKind::Poll => "poll",
            RequestKind::Query => "query",
        }
    }
}

/// Tuning of the client. The defaults suit a controller talking to real ARM.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// ARM endpoint, e.g. `https://management.azure.com` or the simulator's URL.
    pub endpoint: String,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` the client sleeps through inside one call. Longer waits are
    /// returned to the caller as a throttling error carrying `retry_after`, so a controller
    /// can requeue instead of holding a worker.
    pub max_inline_wait: Duration,
    /// The client's own per-subscription token buckets, kept under ARM's so that ARM never
    /// has to throttle (None: no pacing).
    pub rate_limits: Option<RateLimits>,
    /// Used when ARM throttles without saying for how long.
    pub default_retry_after: Duration,
    /// Interval between LRO polls when ARM gives no `Retry-After`.
    pub lro_poll_interval: Duration,
    /// Give up polling a long-running operation after this long (it is never re-sent).
    pub lro_timeout: Duration,
    pub request_timeout: Duration,
    /// The scope asked of the token source for every request: [`ARM_SCOPE`] for ARM,
    /// [`GRAPH_SCOPE`] for Microsoft Graph.
    pub token_scope: String,
    /// How long a role name → GUID resolution and a role definition stay cached
    /// ([`ArmClient::resolve_role`], [`ArmClient::role_definition`]); after that they are read
    /// again, so a changed custom role is seen. Zero: never cached.
    pub role_cache_ttl: Duration,
    /// The largest response body read ([`MAX_RESPONSE_BYTES`] by default); a larger one is
    /// an [`AzureError::InvalidResponse`], never parsed.
    pub max_response_bytes: usize,
    /// The principal this client acts as (e.g. `{tenant}/{client id}`): clients with the same
    /// key and endpoint share their token buckets and `Retry-After` gates, in this process.
    /// None: the client (and its clones) has a budget of its own.
    pub budget_key: Option<String>,
}

impl ClientConfig {
    /// Defaults for Microsoft Graph at `endpoint` (e.g. [`PUBLIC_GRAPH_ENDPOINT`] or a
    /// simulator's base URL), with tokens for [`GRAPH_SCOPE`]. Same retry policy as ARM.
    pub fn graph(endpoint: &str) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.to_string(),
            token_scope: GRAPH_SCOPE.to_string(),
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: PUBLIC_ARM_ENDPOINT.to_string(),
            max_attempts: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_inline_wait: Duration::from_secs(0),
            default_retry_after: Duration::from_secs(10),
            lro_poll_interval: Duration::from_secs(5),
            lro_timeout: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(60),
            rate_limits: Some(RateLimits::default()),
            token_scope: ARM_SCOPE.to_string(),
            role_cache_ttl: Duration::from_secs(10 * 60),
            max_response_bytes: MAX_RESPONSE_BYTES,
            budget_key: None,
        }
    }
}

/// A token bucket: `size` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub size: f64,
    pub per_sec: f64,
}

/// The client's per-subscription buckets (ARM's regional limits per principal: reads
/// 250 + 25/s, writes 200 + 10/s, deletes 200 + 10/s, from "Understand how Azure Resource
/// Manager throttles requests",
/// <https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling>).
/// The client also lowers its buckets to what ARM reports in
/// `x-ms-ratelimit-remaining-subscription-*`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub reads: Bucket,
    pub writes: Bucket,
    pub deletes: Bucket,
    /// Compute's per-subscription "Update VM" policy (1,500, then 500 a minute: "Compute
    /// throttling limits", <https://learn.microsoft.com/azure/virtual-machines/compute-throttling-limits>),
    /// tighter than ARM's write bucket for VM/VMSS PATCHes.
    pub compute_writes: Bucket,
    /// Resource Graph queries, per principal: the documented quota is 15 queries per 5 s
    /// window ("Guidance for throttled requests in Azure Resource Graph",
    /// <https://learn.microsoft.com/azure/governance/resource-graph/concepts/guidance-for-throttled-requests>).
    /// The window is fixed, not a refilling bucket, so the bucket is shaped to fit in any
    /// window: `size + per_sec × 5 s` ≤ 15. The client also follows the
    /// `x-ms-user-quota-remaining` / `x-ms-user-quota-resets-after` headers.
    pub resource_graph: Bucket,
    /// Microsoft Graph reads (identity and access, per app per tenant: 3,500 resource units
    /// per 10 s for the smallest tenants, "Microsoft Graph service-specific throttling
    /// limits", <https://learn.microsoft.com/graph/throttling-limits>); `size + per_sec ×
    /// 10 s` ≤ 3,500. Each request of a `$batch` takes its own token ("Combine multiple HTTP
    /// requests using JSON batching": requests in a batch are evaluated individually).
    pub graph_reads: Bucket,
    /// Microsoft Graph writes (identity and access, per app per tenant: 3,000 per 150 s,
    /// same page); `size + per_sec × 150 s` ≤ 3,000.
    pub graph_writes: Bucket,
}

/// The client refills at this fraction of ARM's rates: requests that leave evenly spaced
/// arrive bunched (network and scheduling jitter), and a bucket kept exactly at ARM's rate
/// would then meet an empty one.
pub const RATE_HEADROOM: f64 = 0.92;

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            reads: Bucket {
                size: 250.0,
                per_sec: 25.0 * RATE_HEADROOM,
            },
            writes: Bucket {
                size: 200.0,
                per_sec: 10.0 * RATE_HEADROOM,
            },
            deletes: Bucket {
                size: 200.0,
                per_sec: 10.0 * RATE_HEADROOM,
            },
            compute_writes: Bucket {
                size: 1500.0,
                per_sec: 500.0 / 60.0 * RATE_HEADROOM,
            },
            // 4 + 2 × 5 = 14 ≤ 15 per window.
            resource_graph: Bucket {
                size: 4.0,
                per_sec: 2.0,
            },
            // 1,000 + 230 × 10 = 3,300 ≤ 3,500 per 10 s.
            graph_reads: Bucket {
                size: 1000.0,
                per_sec: 230.0,
            },
            // 500 + 16 × 150 = 2,900 ≤ 3,000 per 150 s.
            graph_writes: Bucket {
                size: 500.0,
                per_sec: 16.0,
            },
        }
    }
}

impl RateLimits {
    /// The same limits times `f` (benchmarks with scaled simulators).
    pub fn scaled(f: f64) -> RateLimits {
        let d = RateLimits::default();
        let s = |b: Bucket| Bucket {
            size: b.size * f,
            per_sec: b.per_sec * f,
        };
        RateLimits {
            reads: s(d.reads),
            writes: s(d.writes),
            deletes: s(d.deletes),
            compute_writes: s(d.compute_writes),
            resource_graph: s(d.resource_graph),
            graph_reads: s(d.graph_reads),
            graph_writes: s(d.graph_writes),
        }
    }

    /// The same bucket sizes, refilled `f` times faster (benchmarks that must not wait
    /// minutes: the burst stays realistic, the sustained rate is scaled).
    pub fn accelerated(f: f64) -> RateLimits {
        let d = RateLimits::default();
        let s = |b: Bucket| Bucket {
            size: b.size,
            per_sec: b.per_sec * f,
        };
        RateLimits {
            reads: s(d.reads),
            writes: s(d.writes),
            deletes: s(d.deletes),
            compute_writes: s(d.compute_writes),
            resource_graph: s(d.resource_graph),
            graph_reads: s(d.graph_reads),
            graph_writes: s(d.graph_writes),
        }
    }

    fn bucket(&self, kind: BucketKind) -> Bucket {
        match kind {
            BucketKind::Reads => self.reads,
            BucketKind::Writes => self.writes,
            BucketKind::Deletes => self.deletes,
            BucketKind::ComputeWrites => self.compute_writes,
            BucketKind::ResourceGraph => self.resource_graph,
            BucketKind::GraphReads => self.graph_reads,
            BucketKind::GraphWrites => self.graph_writes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BucketKind {
    Reads,
    Writes,
    Deletes,
    ComputeWrites,
    ResourceGraph,
    GraphReads,
    GraphWrites,
}

/// The lane of requests that do not name a subscription: Resource Graph queries, Microsoft
/// Graph, and ARM calls at tenant or management-group scope.
const LANE_RESOURCE_GRAPH: &str = "resource-graph";
const LANE_GRAPH: &str = "microsoft-graph";
const LANE_TENANT: &str = "tenant";

impl BucketKind {
    /// The ARM subscription bucket of a request kind (the one ARM reports in
    /// `x-ms-ratelimit-remaining-subscription-*`).
    fn of(kind: RequestKind) -> Option<BucketKind> {
        match kind {
            RequestKind::Read | RequestKind::Poll => Some(BucketKind::Reads),
            RequestKind::Write => Some(BucketKind::Writes),
            RequestKind::Delete => Some(BucketKind::Deletes),
            RequestKind::Query => None,
        }
    }

    fn header(self) -> &'static str {
        match self {
            BucketKind::Reads => "x-ms-ratelimit-remaining-subscription-reads",
            BucketKind::Writes => "x-ms-ratelimit-remaining-subscription-writes",
            BucketKind::Deletes => "x-ms-ratelimit-remaining-subscription-deletes",
            BucketKind::ComputeWrites => "x-ms-ratelimit-remaining-resource",
            BucketKind::ResourceGraph => "x-ms-user-quota-remaining",
            BucketKind::GraphReads | BucketKind::GraphWrites => "retry-after",
        }
    }
}

/// True for a write to a VM or scale set (Compute's "Update VM" / "Put VM" policies).
fn is_compute_write(method: &Method, path: &str) -> bool {
    if *method != Method::PATCH && *method != Method::PUT {
        return false;
    }
    let p = path.to_ascii_lowercase();
    p.contains("/providers/microsoft.compute/virtualmachines/")
        || p.contains("/providers/microsoft.compute/virtualmachinescalesets/")
}

/// The budget lanes a request takes a token from, in order: `(lane, bucket)`. The lane is
/// the subscription for ARM calls (case-folded), else [`LANE_RESOURCE_GRAPH`],
/// [`LANE_GRAPH`] or [`LANE_TENANT`]. A VM/VMSS PATCH or PUT takes from ARM's write bucket
/// **and** Compute's per-subscription write bucket.
fn lanes(
    graph: bool,
    method: &Method,
    path: &str,
    sub: Option<&str>,
    kind: RequestKind,
) -> Vec<(String, BucketKind)> {
    if kind == RequestKind::Query {
        return vec![(LANE_RESOURCE_GRAPH.to_string(), BucketKind::ResourceGraph)];
    }
    if graph {
        let b = if *method == Method::GET || path.ends_with("/$batch") {
            BucketKind::GraphReads
        } else {
            BucketKind::GraphWrites
        };
        return vec![(LANE_GRAPH.to_string(), b)];
    }
    let lane = sub.unwrap_or(LANE_TENANT).to_string();
    let mut out = Vec::new();
    if let Some(b) = BucketKind::of(kind) {
        out.push((lane.clone(), b));
    }
    if kind == RequestKind::Write && is_compute_write(method, path) {
        out.push((lane, BucketKind::ComputeWrites));
    }
    out
}

/// The smallest `Microsoft.Compute/{policy}Subscription;{n}` count of an
/// `x-ms-ratelimit-remaining-resource` header ("Troubleshooting API throttling errors",
/// <https://learn.microsoft.com/azure/virtual-machines/troubleshooting/troubleshooting-throttling-errors>).
fn compute_subscription_remaining(v: &str) -> Option<f64> {
    v.split(',')
        .filter_map(|part| part.trim().split_once(';'))
        .filter(|(name, _)| name.ends_with("Subscription"))
        .filter_map(|(_, n)| n.trim().parse::<f64>().ok())
        .reduce(f64::min)
}

/// `hh:mm:ss` of `x-ms-user-quota-resets-after`.
fn hms_duration(v: &str) -> Option<Duration> {
    let mut it = v.trim().split(':');
    let h: u64 = it.next()?.parse().ok()?;
    let m: u64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    if it.next().is_some() || !s.is_finite() || s < 0.0 {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(s))
}

/// Per (subscription, kind) token buckets, shared fairly between the tenants (namespaces)
/// that wait for them ([`crate::fair`]).
#[derive(Debug, Default)]
struct Limiter {
    fair: crate::fair::FairLimiter<(String, BucketKind)>,
}

impl Limiter {
    /// Takes a token, waiting for the current tenant's fair turn; true when it had to wait.
    async fn acquire(&self, limits: &RateLimits, lane: &str, kind: BucketKind) -> bool {
        let b = limits.bucket(kind);
        self.fair
            .acquire(
                &(lane.to_string(), kind),
                crate::fair::Rate {
                    size: b.size,
                    per_sec: b.per_sec,
                },
                &crate::fair::current_tenant(),
            )
            .await
    }

    fn observe(&self, lane: &str, kind: BucketKind, remaining: f64) {
        self.fair.observe(&(lane.to_string(), kind), remaining);
    }
}

/// What clients of one principal share: the token buckets and the `Retry-After` gates.
#[derive(Debug, Default)]
struct Budget {
    limiter: Limiter,
    /// Lane (subscription, or a service lane) + kind -> no requests before this instant.
    gates: Mutex<HashMap<(String, RequestKind), Instant>>,
}

/// Budgets by (endpoint, [`ClientConfig::budget_key`]): every client built for the same
/// principal and endpoint (the controller's workers, and namespace credentials naming the
/// same app) draws from one budget, as ARM, Resource Graph and Graph count per principal.
type Budgets = Mutex<HashMap<(String, String), Arc<Budget>>>;
static SHARED_BUDGETS: std::sync::LazyLock<Budgets> = std::sync::LazyLock::new(Mutex::default);

fn budget_for(endpoint: &str, key: Option<&str>) -> Arc<Budget> {
    let Some(key) = key else {
        return Arc::new(Budget::default());
    };
    match SHARED_BUDGETS.lock() {
        Ok(mut m) => m
            .entry((endpoint.to_ascii_lowercase(), key.to_string()))
            .or_default()
            .clone(),
        Err(_) => Arc::new(Budget::default()),
    }
}

/// Counters of what the client sent, for the CLI, benchmarks and tests.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub polls: AtomicU64,
    pub queries: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    /// Requests held back by the client's own rate limiter (never sent early).
    pub paced: AtomicU64,
}

/// A point-in-time copy of [`ClientStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
    pub polls: u64,
    pub queries: u64,
    pub retries: u64,
    pub throttled: u64,
    pub paced: u64,
}

impl ClientStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            paced: self.paced.load(Ordering::Relaxed),
        }
    }
}

/// Hook for metrics: told about every HTTP exchange (status None for transport errors).
pub trait Observer: Send + Sync {
    fn on_response(&self, method: &str, kind: RequestKind, status: Option<u16>, elapsed: Duration);

    /// ARM reported `remaining` requests left in the bucket named by `header` (an
    /// `x-ms-ratelimit-remaining-*` response header, e.g.
    /// `x-ms-ratelimit-remaining-subscription-reads`).
    fn on_rate_limit_remaining(&self, _header: &str, _remaining: f64) {}

    /// A token for `scope` could not be acquired (the request was not sent).
    fn on_token_error(&self, _scope: &str) {}
}

/// A successful HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

/// The ARM client. Cheap to clone; clones share the HTTP pool, gates and counters.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    tokens: Arc<dyn TokenSource>,
    stats: Arc<ClientStats>,
    observer: Option<Arc<dyn Observer>>,
    /// Token buckets and `Retry-After` gates (shared by clients of one principal).
    budget: Arc<Budget>,
    /// Role name cache of [`ArmClient::resolve_role`](crate::authorization):
    /// (subscription or scope, role name), case-folded → (when read, role definition GUID).
    pub(crate) role_cache: Arc<Mutex<HashMap<String, (Instant, String)>>>,
    /// Role definition cache of [`ArmClient::role_definition`]: key → (when read, info).
    /// Both expire after [`ClientConfig::role_cache_ttl`].
    pub(crate) role_def_cache:
        Arc<Mutex<HashMap<String, (Instant, crate::records::RoleDefinitionInfo)>>>,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.cfg.endpoint)
            .finish()
    }
}

fn header_duration(headers: &HeaderMap) -> Option<Duration> {
    for (name, ms) in [
        ("retry-after-ms", true),
        ("x-ms-retry-after-ms", true),
        ("retry-after", false),
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(n) = v.trim().parse::<f64>()
            && n.is_finite()
            && n >= 0.0
        {
            let secs = if ms { n / 1000.0 } else { n };
            return Some(Duration::from_secs_f64(secs.min(3600.0)));
        }
    }
    None
}

pub(crate) fn subscription_of(url_path: &str) -> Option<String> {
    let mut it = url_path.split('/');
    while let Some(seg) = it.next() {
        if seg.eq_ignore_ascii_case("subscriptions") {
            return it.next().map(|s| s.to_ascii_lowercase());
        }
    }
    None
}

impl ArmClient {
    pub fn new(cfg: ClientConfig, tokens: Arc<dyn TokenSource>) -> Result<ArmClient, AzureError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vmidentity/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AzureError::Transport {
                method: "-".into(),
                url: cfg.endpoint.clone(),
                message: format!("cannot build HTTP client: {e}"),
            })?;
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        let budget = budget_for(&endpoint, cfg.budget_key.as_deref());
        Ok(ArmClient {
            http,
            cfg: Arc::new(ClientConfig { endpoint, ..cfg }),
            tokens,
            stats: Arc::new(ClientStats::default()),
            observer: None,
            budget,
            role_cache: Arc::new(Mutex::new(HashMap::new())),
            role_def_cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// `endpoint + path?api-version=...`, built segment by segment ([`Self::endpoint_url`]).
    /// Callers may append further query parameters (`&$filter=...`) to the answer.
    pub fn url(&self, path: &str, api_version: &str) -> Result<String, AzureError> {
        let query = format!("api-version={}", percent_encode(api_version));
        build_url(&self.cfg.endpoint, path, Some(&query))
    }

    /// `endpoint + path`, without an api-version (Graph carries its version in the path).
    ///
    /// The URL is built from the endpoint by pushing each `/`-separated segment of `path`
    /// (the `url` crate percent-encodes what a segment may not carry as is; `$` stays
    /// literal). Refused with [`AzureError::InvalidArgument`], before anything is sent, is
    /// a `path` that does not start with `/` or has empty, `.` or `..` segments, `%`, `\`,
    /// `?`, `#` or control characters ([`vmidentity_planner::id::path_problem`]): a URL
    /// parser would resolve or decode those into another path than the one asked for (and
    /// approved by policy). The built URL's path is then checked to be exactly `path`
    /// (after the endpoint's own path, if any).
    pub fn endpoint_url(&self, path: &str) -> Result<String, AzureError> {
        build_url(&self.cfg.endpoint, path, None)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .cfg
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1));
        let cap = exp.min(self.cfg.max_backoff);
        let jitter = rand::rng().random_range(0.5..=1.0);
        cap.mul_f64(jitter)
    }

    fn gate_wait(&self, sub: &str, kind: RequestKind) -> Option<Duration> {
        let gates = self.budget.gates.lock().ok()?;
        let until = gates.get(&(sub.to_string(), kind))?;
        let now = Instant::now();
        (*until > now).then(|| *until - now)
    }

    fn close_gate(&self, sub: &str, kind: RequestKind, wait: Duration) {
        if let Ok(mut gates) = self.budget.gates.lock() {
            let until = Instant::now() + wait;
            let e = gates.entry((sub.to_string(), kind)).or_insert(until);
            if *e < until {
                *e = until;
            }
        }
    }

    /// Lowers the buckets to what the service says is left: ARM's
    /// `x-ms-ratelimit-remaining-subscription-*`, Compute's
    /// `x-ms-ratelimit-remaining-resource` (its per-subscription policies), Resource Graph's
    /// `x-ms-user-quota-remaining` (and, when nothing is left, a gate until
    /// `x-ms-user-quota-resets-after`).
    fn observe_budget_headers(&self, lanes: &[(String, BucketKind)], headers: &HeaderMap) {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        for (lane, bk) in lanes {
            let remaining = match bk {
                BucketKind::Reads | BucketKind::Writes | BucketKind::Deletes => {
                    get(bk.header()).and_then(|v| v.trim().parse::<f64>().ok())
                }
                BucketKind::ComputeWrites => {
                    get(bk.header()).and_then(compute_subscription_remaining)
                }
                BucketKind::ResourceGraph => {
                    let left = get(bk.header()).and_then(|v| v.trim().parse::<f64>().ok());
                    if left.is_some_and(|n| n < 1.0)
                        && let Some(reset) =
                            get("x-ms-user-quota-resets-after").and_then(hms_duration)
                    {
                        self.close_gate(lane, RequestKind::Query, reset);
                    }
                    left
                }
                BucketKind::GraphReads | BucketKind::GraphWrites => None,
            };
            if let Some(r) = remaining {
                self.budget.limiter.observe(lane, *bk, r);
            }
        }
    }

    /// Takes `n` tokens of the Microsoft Graph read budget (the requests inside a `$batch`
    /// beyond the one the batch's own POST takes: Graph evaluates each against its limits).
    pub(crate) async fn pace_graph_reads(&self, n: usize) {
        let Some(limits) = &self.cfg.rate_limits else {
            return;
        };
        let mut waited = false;
        for _ in 0..n {
            waited |= self
                .budget
                .limiter
                .acquire(limits, LANE_GRAPH, BucketKind::GraphReads)
                .await;
        }
        if waited {
            self.stats.paced.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self, kind: RequestKind) {
        let c = match kind {
            RequestKind::Read => &self.stats.reads,
            RequestKind::Write => &self.stats.writes,
            RequestKind::Delete => &self.stats.deletes,
            RequestKind::Poll => &self.stats.polls,
            RequestKind::Query => &self.stats.queries,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one request with the retry policy. `url` is absolute.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        kind: RequestKind,
    ) -> Result<Response, AzureError> {
        self.send_with_headers(method, url, body, kind, &[]).await
    }

    /// [`ArmClient::send`] with extra request headers (e.g. `If-Match`). A 412 is never
    /// re-sent: the precondition will not hold the second time either.
    pub async fn send_with_headers(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        kind: RequestKind,
        extra_headers: &[(&str, &str)],
    ) -> Result<Response, AzureError> {
        let path = url
            .strip_prefix(&self.cfg.endpoint)
            .unwrap_or(url)
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        // The gate lane: the subscription, or the service (Resource Graph, Graph, tenant).
        let graph = self.cfg.token_scope == GRAPH_SCOPE;
        let sub = Some(match (kind, graph, subscription_of(&path)) {
            (RequestKind::Query, _, _) => LANE_RESOURCE_GRAPH.to_string(),
            (_, true, _) => LANE_GRAPH.to_string(),
            (_, false, Some(s)) => s,
            (_, false, None) => LANE_TENANT.to_string(),
        });
        let lanes = lanes(graph, &method, &path, sub.as_deref(), kind);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(sub) = &sub
                && let Some(wait) = self.gate_wait(sub, kind)
            {
                if wait > self.cfg.max_inline_wait {
                    return Err(AzureError::SubscriptionThrottled {
                        subscription: sub.clone(),
                        retry_after: wait,
                    });
                }
                tokio::time::sleep(wait).await;
            }
            if let Some(limits) = &self.cfg.rate_limits {
                let mut waited = false;
                for (lane, bk) in &lanes {
                    waited |= self.budget.limiter.acquire(limits, lane, *bk).await;
                }
                if waited {
                    // Held back to stay under the service's limit instead of hitting it.
                    self.stats.paced.fetch_add(1, Ordering::Relaxed);
                }
            }
            let token = match self.tokens.token(&self.cfg.token_scope).await {
                Ok(t) => t,
                Err(e) => {
                    if let Some(o) = &self.observer {
                        o.on_token_error(&self.cfg.token_scope);
                    }
                    return Err(e.into());
                }
            };
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(&token.token)
                .header("accept", "application/json");
            for (name, value) in extra_headers {
                req = req.header(*name, *value);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            self.count(kind);
            let started = std::time::Instant::now();
            let result = req.send().await;
            let elapsed = started.elapsed();
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    if let Some(o) = &self.observer {
                        o.on_response(method.as_str(), kind, None, elapsed);
                    }
                    if attempt < self.cfg.max_attempts {
                        let d = self.backoff(attempt);
                        warn!(%method, url, attempt, error = %e, "transport error; retrying in {d:?}");
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    return Err(AzureError::Transport {
                        method: method.to_string(),
                        url: url.to_string(),
                        message: e.to_string(),
                    });
                }
            };
            let status = resp.status();
            if let Some(o) = &self.observer {
                o.on_response(method.as_str(), kind, Some(status.as_u16()), elapsed);
            }
            let headers = resp.headers().clone();
            if let (Some(o), Some(bk)) = (&self.observer, BucketKind::of(kind))
                && let Some(remaining) = headers
                    .get(bk.header())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            {
                o.on_rate_limit_remaining(bk.header(), remaining);
            }
            self.observe_budget_headers(&lanes, &headers);
            let bytes = match read_body(resp, self.cfg.max_response_bytes).await {
                Ok(b) => b,
                Err(BodyError::TooLarge(size)) => {
                    warn!(%method, url, status = status.as_u16(), size, limit = self.cfg.max_response_bytes, "response body over the limit: refused");
                    return Err(AzureError::InvalidResponse {
                        url: url.to_string(),
                        message: format!(
                            "HTTP {status} body is larger than {} bytes ({size}): refused before parsing",
                            self.cfg.max_response_bytes
                        ),
                    });
                }
                Err(BodyError::Transport(e)) => {
                    if attempt < self.cfg.max_attempts {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(AzureError::Transport {
                        method: method.to_string(),
                        url: url.to_string(),
                        message: format!("reading the body: {e}"),
                    });
                }
            };
            if status.is_success() {
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).map_err(|e| AzureError::InvalidResponse {
                        url: url.to_string(),
                        message: format!("HTTP {status} body is not JSON: {e}"),
                    })?
                };
                debug!(%method, url, status = status.as_u16(), "ARM ok");
                return Ok(Response {
                    status: status.as_u16(),
                    headers,
                    body,
                });
            }
            let (code, message) = parse_error_body(&bytes);
            let class = classify(status.as_u16(), &code, &message);
            let retry_after = header_duration(&headers);
            if class == ErrorClass::Throttled {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after.unwrap_or(self.cfg.default_retry_after);
                if let Some(sub) = &sub {
                    self.close_gate(sub, kind, wait);
                }
                warn!(%method, url, ?wait, "throttled (429)");
                if wait <= self.cfg.max_inline_wait && attempt < self.cfg.max_attempts {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(AzureError::Arm {
                    method: method.to_string(),
                    url: url.to_string(),
                    status: status.as_u16(),
                    code,
                    message,
                    retry_after: Some(wait),
                    class,
                });
            }
            if class == ErrorClass::Transient && attempt < self.cfg.max_attempts {
                let d = self.backoff(attempt).max(retry_after.unwrap_or_default());
                if d <= self.cfg.max_backoff.max(self.cfg.max_inline_wait) {
                    warn!(%method, url, status = status.as_u16(), %code, attempt, "transient ARM error; retrying in {d:?}");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(d).await;
                    continue;
                }
            }
            return Err(AzureError::Arm {
                method: method.to_string(),
                url: url.to_string(),
                status: status.as_u16(),
                code,
                message,
                retry_after,
                class,
            });
        }
    }

    /// GET a resource.
    pub async fn get(&self, path: &str, api_version: &str) -> Result<Value, AzureError> {
        let url = self.url(path, api_version)?;
        Ok(self
            .send(Method::GET, &url, None, RequestKind::Read)
            .await?
            .body)
    }

    /// PATCH (or PUT) a resource and wait for the long-running operation to finish. The
    /// request is sent once (retries only for failures ARM did not act on); the operation is
    /// then polled, never re-sent. Returns the resource body ARM answered with (a GET is made
    /// only when the answer carried none).
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: &Value,
    ) -> Result<Value, AzureError> {
        self.write_if_match(method, path, api_version, body, None)
            .await
    }

    /// [`ArmClient::write`], conditional on the resource's entity tag when `if_match` is
    /// given (`If-Match`): ARM answers 412 ([`ErrorClass::PreconditionFailed`]) and applies
    /// nothing if the resource changed since that tag was read.
    pub async fn write_if_match(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, AzureError> {
        let url = self.url(path, api_version)?;
        let headers: Vec<(&str, &str)> = if_match.map(|t| ("if-match", t)).into_iter().collect();
        let resp = self
            .send_with_headers(method, &url, Some(body), RequestKind::Write, &headers)
            .await?;
        let final_body = self.wait_for_operation(&url, &resp).await?;
        match final_body {
            Some(b) if !b.is_null() => Ok(b),
            _ => self.get(path, api_version).await,
        }
    }

    /// True when `url` lies on the configured endpoint (so it may receive our token).
    pub(crate) fn same_origin(&self, url: &str) -> bool {
        url.starts_with(&format!("{}/", self.cfg.endpoint))
    }

    /// GETs a list and every following page: the items of each page's `value` array, in
    /// order. `next_field` names the continuation member (`nextLink` for ARM,
    /// `@odata.nextLink` for Graph); it must be an absolute URL on the configured endpoint
    /// (the token is never sent elsewhere) and is used verbatim.
    pub async fn get_all_pages(
        &self,
        first_url: &str,
        next_field: &str,
    ) -> Result<Vec<Value>, AzureError> {
        let mut items = Vec::new();
        let mut url = first_url.to_string();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .send(Method::GET, &url, None, RequestKind::Read)
                .await?
                .body;
            match page.get("value") {
                Some(Value::Array(v)) => items.extend(v.iter().cloned()),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(AzureError::InvalidResponse {
                        url,
                        message: "`value` is not an array".into(),
                    });
                }
            }
            seen.insert(url.clone());
            let next = match page.get(next_field) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => return Ok(items),
            };
            if !self.same_origin(&next) {
                return Err(AzureError::InvalidResponse {
                    url,
                    message: format!(
                        "{next_field} {next} is not on the endpoint {}; not sending a token there",
                        self.cfg.endpoint
                    ),
                });
            }
            if seen.contains(&next) {
                return Err(AzureError::InvalidResponse {
                    url,
                    message: format!("{next_field} {next} repeats an earlier page"),
                });
            }
            url = next;
        }
        Err(AzureError::InvalidResponse {
            url,
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Polls `Azure-AsyncOperation` (or `Location`) until the operation ends.
    async fn wait_for_operation(
        &self,
        resource_url: &str,
        resp: &Response,
    ) -> Result<Option<Value>, AzureError> {
        let header = |n: &str| {
            resp.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (op_url, is_location) = match (header("azure-asyncoperation"), header("location")) {
            (Some(u), _) => (u, false),
            (None, Some(u)) if resp.status == StatusCode::ACCEPTED.as_u16() => (u, true),
            _ => return Ok(Some(resp.body.clone())),
        };
        if !self.same_origin(&op_url) {
            return Err(AzureError::InvalidResponse {
                url: resource_url.to_string(),
                message: format!(
                    "operation URL {op_url} is not on the ARM endpoint; not sending a token there"
                ),
            });
        }
        let started = Instant::now();
        let mut wait = header_duration(&resp.headers).unwrap_or(self.cfg.lro_poll_interval);
        loop {
            if started.elapsed() > self.cfg.lro_timeout {
                return Err(AzureError::OperationTimedOut {
                    url: op_url,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(wait).await;
            let poll = self
                .send(Method::GET, &op_url, None, RequestKind::Poll)
                .await?;
            wait = header_duration(&poll.headers).unwrap_or(self.cfg.lro_poll_interval);
            if is_location {
                if poll.status == StatusCode::ACCEPTED.as_u16() {
                    continue;
                }
                return Ok(Some(poll.body));
            }
            let status = poll
                .body
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("InProgress")
                .to_string();
            match status.as_str() {
                "Succeeded" => {
                    return Ok(if resp.body.is_null() {
                        None
                    } else {
                        Some(succeeded(resp.body.clone()))
                    });
                }
                "Failed" | "Canceled" | "Cancelled" => {
                    let err = poll.body.get("error");
                    let field = |k: &str| {
                        err.and_then(|e| e.get(k))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    return Err(AzureError::OperationFailed {
                        url: op_url,
                        status,
                        code: field("code"),
                        message: field("message"),
                    });
                }
                _ => continue,
            }
        }
    }
}

/// `endpoint` + `path` (+ `?query`), `path` pushed segment by segment. See
/// [`ArmClient::endpoint_url`] for what is refused.
pub(crate) fn build_url(
    endpoint: &str,
    path: &str,
    query: Option<&str>,
) -> Result<String, AzureError> {
    let refuse = |why: String| AzureError::InvalidArgument {
        message: format!("refusing to send a request to path {path:?}: {why}"),
    };
    if let Some(problem) = vmidentity_planner::id::path_problem(path) {
        return Err(refuse(format!(
            "it {problem}; '.' and '..' segments, empty segments, '%', '\\', '?', '#' and control characters are not allowed in request paths"
        )));
    }
    let mut url = url::Url::parse(endpoint)
        .map_err(|e| refuse(format!("the endpoint {endpoint:?} is not a URL: {e}")))?;
    let base = url.path().trim_end_matches('/').to_string();
    {
        let mut segs = url
            .path_segments_mut()
            .map_err(|()| refuse(format!("the endpoint {endpoint:?} cannot carry a path")))?;
        segs.pop_if_empty();
        for seg in path[1..].split('/') {
            segs.push(seg);
        }
    }
    url.set_query(query);
    // The path the request will go to must be exactly the one asked for: nothing resolved,
    // dropped or decoded on the way (`push` silently skips `.` and `..`, for one).
    let wanted = format!("{base}{path}");
    match percent_decode(url.path()) {
        Some(got) if got == wanted => Ok(url.into()),
        _ => Err(refuse(format!(
            "the URL built from it has the path {:?}, not {wanted:?}",
            url.path()
        ))),
    }
}

/// `%XX` sequences decoded; None if that is not valid UTF-8 or a `%` is not followed by two
/// hex digits.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`):
/// for query values (`$filter`) and path segments built from caller input. Spaces become
/// `%20` (never `+`), quotes `%27`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The write's answer with its provisioningState set to the operation's outcome.
fn succeeded(mut body: Value) -> Value {
    if let Some(p) = body.get_mut("properties").and_then(Value::as_object_mut) {
        p.insert(
            "provisioningState".into(),
            Value::String("Succeeded".into()),
        );
    }
    body
}

/// Why a response body was not read.
enum BodyError {
    /// Over the limit: the size announced (`Content-Length`) or read so far.
    TooLarge(u64),
    Transport(reqwest::Error),
}

/// Reads a response body of at most `limit` bytes: refused at once when `Content-Length`
/// says more, else as soon as the chunks read pass the limit (nothing more is read).
async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(BodyError::TooLarge(len));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge((buf.len() + chunk.len()) as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_subscription() {
        assert_eq!(
            subscription_of("/subscriptions/ABC/resourceGroups/rg"),
            Some("abc".into())
        );
        assert_eq!(
            subscription_of("/providers/Microsoft.ResourceGraph/resources"),
            None
        );
    }

    #[test]
    fn percent_encodes() {
        assert_eq!(
            percent_encode("principalId eq 'a-b'"),
            "principalId%20eq%20%27a-b%27"
        );
        assert_eq!(percent_encode("x&y=z/é"), "x%26y%3Dz%2F%C3%A9");
    }

    #[test]
    fn graph_config() {
        let c = ClientConfig::graph(PUBLIC_GRAPH_ENDPOINT);
        assert_eq!(c.token_scope, GRAPH_SCOPE);
        assert_eq!(c.endpoint, "https://graph.microsoft.com");
        assert_eq!(ClientConfig::default().token_scope, ARM_SCOPE);
    }

    const EP: &str = "https://management.azure.com";

    fn refused(path: &str) -> String {
        match build_url(EP, path, Some("api-version=2022-04-01")) {
            Err(AzureError::InvalidArgument { message }) => message,
            other => panic!("{path:?}: expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn builds_urls_segment_by_segment() {
        assert_eq!(
            build_url(
                EP,
                "/subscriptions/S1/resourceGroups/RG-a/providers/Microsoft.Compute/virtualMachines/vm1",
                Some("api-version=2024-11-01"),
            )
            .unwrap(),
            "https://management.azure.com/subscriptions/S1/resourceGroups/RG-a/providers/Microsoft.Compute/virtualMachines/vm1?api-version=2024-11-01"
        );
        // `$` stays literal; a trailing '/' on the endpoint is not doubled.
        assert_eq!(
            build_url(
                "https://graph.microsoft.com/",
                "/v1.0/groups/33333333-3333-4333-8333-333333333333/members/$ref",
                None
            )
            .unwrap(),
            "https://graph.microsoft.com/v1.0/groups/33333333-3333-4333-8333-333333333333/members/$ref"
        );
        // An endpoint with a path keeps it.
        assert_eq!(
            build_url("http://127.0.0.1:8080/arm/", "/subscriptions/s", None).unwrap(),
            "http://127.0.0.1:8080/arm/subscriptions/s"
        );
        // Characters a segment may not carry as is are encoded, and the check still holds.
        assert_eq!(
            build_url(EP, "/subscriptions/s/resourceGroups/r\u{e9}s {x}", None).unwrap(),
            "https://management.azure.com/subscriptions/s/resourceGroups/r%C3%A9s%20%7Bx%7D"
        );
    }

    #[test]
    fn refuses_paths_a_url_parser_would_change() {
        let attack =
            "/subscriptions/S/resourceGroups/rg-a/providers/../../../resourceGroups/rg-prod";
        let m = refused(attack);
        assert!(m.contains("contains a '..' segment"), "{m}");
        assert!(m.contains("not allowed in request paths"), "{m}");
        for (bad, problem) in [
            (
                "/subscriptions/S/resourceGroups/rg-a/providers/Microsoft.Authorization/roleAssignments/..",
                "'..' segment",
            ),
            ("/subscriptions/S/./resourceGroups/rg", "'.' segment"),
            (
                "/subscriptions/S/resourceGroups/rg-a/providers/%2e%2e/%2e%2e/%2e%2e/resourceGroups/rg-prod",
                "'%'",
            ),
            ("/subscriptions/S/resourceGroups/rg-a%2F..%2Frg-prod", "'%'"),
            ("/subscriptions/S/resourceGroups/rg-a%2f", "'%'"),
            (
                "/subscriptions/S/resourceGroups/rg-a/providers\\..\\..\\resourceGroups\\rg-prod",
                "'\\'",
            ),
            ("/subscriptions/S/resourceGroups/.\t.", "control character"),
            (
                "/subscriptions/S/resourceGroups/rg\r\nHost: evil",
                "control character",
            ),
            ("/subscriptions/S/resourceGroups/rg?api-version=x", "'?'"),
            ("/subscriptions/S/resourceGroups/rg#frag", "'#'"),
            ("/subscriptions//resourceGroups/rg", "empty segment"),
            ("/subscriptions/S/", "empty segment"),
            ("subscriptions/S", "does not start with '/'"),
            ("", "does not start with '/'"),
            ("//evil.example/x", "empty segment"),
        ] {
            let m = refused(bad);
            assert!(m.contains(problem), "{bad:?}: {m}");
        }
    }

    #[test]
    fn url_push_drops_dot_segments_which_the_path_check_catches() {
        // Why the refusal comes first and the final check exists: `push` skips `.` and `..`
        // silently, so without them the URL would go to another path.
        let mut u = url::Url::parse(EP).unwrap();
        u.path_segments_mut()
            .unwrap()
            .extend(["subscriptions", "s", "..", "x", "."]);
        assert_eq!(u.path(), "/subscriptions/s/x");
        assert_ne!(percent_decode(u.path()).unwrap(), "/subscriptions/s/../x/.");
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("/a%20b/%C3%A9").as_deref(), Some("/a b/é"));
        assert_eq!(percent_decode("/a%2").as_deref(), None);
        assert_eq!(percent_decode("/a%+1").as_deref(), None);
        assert_eq!(percent_decode("/a%FF").as_deref(), None);
    }

    #[test]
    fn lanes_of_each_service() {
        let vm =
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm";
        assert_eq!(
            lanes(false, &Method::PATCH, vm, Some("s1"), RequestKind::Write),
            vec![
                ("s1".to_string(), BucketKind::Writes),
                ("s1".to_string(), BucketKind::ComputeWrites)
            ]
        );
        assert_eq!(
            lanes(false, &Method::GET, vm, Some("s1"), RequestKind::Read),
            vec![("s1".to_string(), BucketKind::Reads)]
        );
        let ra = "/subscriptions/s1/providers/Microsoft.Authorization/roleAssignments/x";
        assert_eq!(
            lanes(false, &Method::PUT, ra, Some("s1"), RequestKind::Write),
            vec![("s1".to_string(), BucketKind::Writes)]
        );
        assert_eq!(
            lanes(
                false,
                &Method::POST,
                "/providers/Microsoft.ResourceGraph/resources",
                Some(LANE_RESOURCE_GRAPH),
                RequestKind::Query
            ),
            vec![(LANE_RESOURCE_GRAPH.to_string(), BucketKind::ResourceGraph)]
        );
        assert_eq!(
            lanes(
                true,
                &Method::POST,
                "/v1.0/$batch",
                Some(LANE_GRAPH),
                RequestKind::Write
            ),
            vec![(LANE_GRAPH.to_string(), BucketKind::GraphReads)],
            "a batch of memberOf reads takes read tokens"
        );
        assert_eq!(
            lanes(
                true,
                &Method::POST,
                "/v1.0/groups/g/members/$ref",
                Some(LANE_GRAPH),
                RequestKind::Write
            ),
            vec![(LANE_GRAPH.to_string(), BucketKind::GraphWrites)]
        );
    }

    #[test]
    fn documented_budgets_fit_their_windows() {
        let d = RateLimits::default();
        // Resource Graph: 15 per 5 s window; Graph reads 3,500 per 10 s; writes 3,000 per 150 s.
        assert!(d.resource_graph.size + d.resource_graph.per_sec * 5.0 <= 15.0);
        assert!(d.graph_reads.size + d.graph_reads.per_sec * 10.0 <= 3500.0);
        assert!(d.graph_writes.size + d.graph_writes.per_sec * 150.0 <= 3000.0);
        // Compute's "Update VM" per subscription: 500 a minute.
        assert!(d.compute_writes.per_sec * 60.0 <= 500.0);
    }

    #[test]
    fn parses_quota_headers() {
        assert_eq!(
            compute_subscription_remaining(
                "Microsoft.Compute/UpdateVMResource;11,Microsoft.Compute/UpdateVMSubscription;1490"
            ),
            Some(1490.0)
        );
        assert_eq!(compute_subscription_remaining("garbage"), None);
        assert_eq!(hms_duration("00:00:03"), Some(Duration::from_secs(3)));
        assert_eq!(hms_duration("01:02:03"), Some(Duration::from_secs(3723)));
        assert_eq!(hms_duration("1:2"), None);
    }

    #[test]
    fn clients_of_one_principal_share_a_budget() {
        let a = budget_for("http://x", Some("tenant/app"));
        let b = budget_for("HTTP://X", Some("tenant/app"));
        let c = budget_for("http://x", Some("tenant/other"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(!Arc::ptr_eq(
            &budget_for("http://x", None),
            &budget_for("http://x", None)
        ));
    }

    #[test]
    fn reads_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(header_duration(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(header_duration(&h), Some(Duration::from_millis(250)));
    }
}
