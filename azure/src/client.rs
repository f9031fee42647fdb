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
        }
    }
}

/// A token bucket: `size` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub size: f64,
    pub per_sec: f64,
}

/// The client's per-subscription buckets (ARM's regional limits per principal, ARM-BEHAVIOUR.md
/// §1.1: reads 250 + 25/s, writes 200 + 10/s, deletes 200 + 10/s). The client also lowers its
/// buckets to what ARM reports in `x-ms-ratelimit-remaining-subscription-*`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub reads: Bucket,
    pub writes: Bucket,
    pub deletes: Bucket,
    /// Compute's per-subscription "Update VM" policy (ARM-BEHAVIOUR.md §2.1: 1,500, then 500
    /// a minute), tighter than ARM's write bucket for VM/VMSS PATCHes.
    pub compute_writes: Bucket,
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
        }
    }

    fn bucket(&self, kind: BucketKind) -> Bucket {
        match kind {
            BucketKind::Reads => self.reads,
            BucketKind::Writes => self.writes,
            BucketKind::Deletes => self.deletes,
            BucketKind::ComputeWrites => self.compute_writes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BucketKind {
    Reads,
    Writes,
    Deletes,
    ComputeWrites,
}

impl BucketKind {
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
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BucketState {
    tokens: f64,
    at: Instant,
}

/// Per (subscription, kind) token buckets. `acquire` reserves a token and says how long to
/// wait for it, so concurrent callers queue fairly without a lock held across the wait.
#[derive(Debug, Default)]
struct Limiter {
    state: Mutex<HashMap<(String, BucketKind), BucketState>>,
}

impl Limiter {
    fn acquire(&self, limits: &RateLimits, sub: &str, kind: BucketKind) -> Option<Duration> {
        let b = limits.bucket(kind);
        let now = Instant::now();
        let mut st = self.state.lock().ok()?;
        let e = st.entry((sub.to_string(), kind)).or_insert(BucketState {
            tokens: b.size,
            at: now,
        });
        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
        e.tokens = (e.tokens + elapsed * b.per_sec).min(b.size);
        e.at = now;
        e.tokens -= 1.0;
        if e.tokens >= 0.0 || b.per_sec <= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-e.tokens / b.per_sec))
        }
    }

    fn observe(&self, sub: &str, kind: BucketKind, remaining: f64) {
        if let Ok(mut st) = self.state.lock()
            && let Some(e) = st.get_mut(&(sub.to_string(), kind))
            && remaining < e.tokens
        {
            e.tokens = remaining;
        }
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
    /// Subscription (case-folded) + kind -> no requests before this instant.
    gates: Arc<Mutex<HashMap<(String, RequestKind), Instant>>>,
    stats: Arc<ClientStats>,
    observer: Option<Arc<dyn Observer>>,
    limiter: Arc<Limiter>,
    /// Role name cache of [`ArmClient::resolve_role`](crate::authorization):
    /// (subscription or scope, role name), case-folded → role definition GUID.
    pub(crate) role_cache: Arc<Mutex<HashMap<String, String>>>,
    pub(crate) role_def_cache:
        Arc<Mutex<HashMap<String, crate::authorization::RoleDefinitionInfo>>>,
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
        Ok(ArmClient {
            http,
            cfg: Arc::new(ClientConfig {
                endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
                ..cfg
            }),
            tokens,
            gates: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(ClientStats::default()),
            observer: None,
            limiter: Arc::new(Limiter::default()),
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

    /// `endpoint + path?api-version=...`
    pub fn url(&self, path: &str, api_version: &str) -> String {
        format!("{}{}?api-version={}", self.cfg.endpoint, path, api_version)
    }

    /// `endpoint + path`, without an api-version (Graph carries its version in the path).
    pub fn endpoint_url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.endpoint, path)
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
        let gates = self.gates.lock().ok()?;
        let until = gates.get(&(sub.to_string(), kind))?;
        let now = Instant::now();
        (*until > now).then(|| *until - now)
    }

    fn close_gate(&self, sub: &str, kind: RequestKind, wait: Duration) {
        if let Ok(mut gates) = self.gates.lock() {
            let until = Instant::now() + wait;
            let e = gates.entry((sub.to_string(), kind)).or_insert(until);
            if *e < until {
                *e = until;
            }
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
        let sub = subscription_of(&path);
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
            if let (Some(sub), Some(limits), Some(bk)) =
                (&sub, &self.cfg.rate_limits, BucketKind::of(kind))
                && let Some(wait) = self.limiter.acquire(limits, sub, bk)
            {
                // Stay under ARM's limit instead of hitting it.
                self.stats.paced.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
            let token = self.tokens.token(&self.cfg.token_scope).await?;
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
            if let (Some(sub), Some(bk)) = (&sub, BucketKind::of(kind))
                && bk != BucketKind::ComputeWrites
                && let Some(remaining) = headers
                    .get(bk.header())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            {
                self.limiter.observe(sub, bk, remaining);
            }
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
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
        let url = self.url(path, api_version);
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
        let url = self.url(path, api_version);
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

    #[test]
    fn reads_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(header_duration(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(header_duration(&h), Some(Duration::from_millis(250)));
    }
}
