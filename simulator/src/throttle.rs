//! Opt-in throttling: ARM's per-subscription token buckets ("Understand how Azure Resource
//! Manager throttles requests",
//! <https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling>)
//! and Compute's per-resource / per-subscription policies ("Compute throttling limits",
//! <https://learn.microsoft.com/azure/virtual-machines/compute-throttling-limits>). Off (`None`) by default;
//! the subscription buckets are then only reported in headers, as before.
//!
//! Time comes from [`crate::state::State::now`] (tokio's clock plus a virtual offset that
//! `SimHandle::advance_clock` moves), so tests can refill buckets without sleeping.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderName, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::errors::ArmError;
use crate::ids::ResourceKind;
use crate::server::{ArmResponse, Route};
use crate::state::State;

/// A token bucket's shape: `size` tokens at most, refilled continuously at
/// `refill_per_sec` tokens per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bucket {
    pub size: u32,
    pub refill_per_sec: f64,
}

impl Bucket {
    pub fn new(size: u32, refill_per_sec: f64) -> Bucket {
        Bucket {
            size,
            refill_per_sec,
        }
    }

    /// A bucket refilled by `refill_per_min` tokens per minute (Compute's unit).
    pub fn per_minute(size: u32, refill_per_min: f64) -> Bucket {
        Bucket::new(size, refill_per_min / 60.0)
    }

    fn scaled(self, size_factor: f64, time_factor: f64) -> Bucket {
        let size = (f64::from(self.size) * size_factor).round().max(1.0);
        Bucket {
            size: if size >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                size as u32
            },
            refill_per_sec: self.refill_per_sec * size_factor * time_factor,
        }
    }
}

/// One Compute throttling policy ("Compute throttling limits"): a per-resource and a
/// per-subscription bucket. `name` is what `x-ms-ratelimit-remaining-resource` and the
/// 429 body show, suffixed `Resource` / `Subscription` (names **CHOSEN**).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputePolicy {
    pub name: String,
    pub per_resource: Bucket,
    pub per_subscription: Bucket,
}

impl ComputePolicy {
    /// A policy with per-minute refills: `(resource refill, resource max)`,
    /// `(subscription refill, subscription max)`, as "Compute throttling limits" tabulates them.
    pub fn per_minute(name: &str, resource: (u32, u32), subscription: (u32, u32)) -> Self {
        ComputePolicy {
            name: name.to_string(),
            per_resource: Bucket::per_minute(resource.1, f64::from(resource.0)),
            per_subscription: Bucket::per_minute(subscription.1, f64::from(subscription.0)),
        }
    }

    /// Name of the per-resource bucket (`UpdateVMResource`).
    pub fn resource_bucket_name(&self) -> String {
        format!("{}Resource", self.name)
    }

    /// Name of the per-subscription bucket (`UpdateVMSubscription`).
    pub fn subscription_bucket_name(&self) -> String {
        format!("{}Subscription", self.name)
    }

    fn scaled(&self, size_factor: f64, time_factor: f64) -> ComputePolicy {
        ComputePolicy {
            name: self.name.clone(),
            per_resource: self.per_resource.scaled(size_factor, time_factor),
            per_subscription: self.per_subscription.scaled(size_factor, time_factor),
        }
    }
}

/// Compute (CRP) policies for VMs and scale sets ("Compute throttling limits",
/// <https://learn.microsoft.com/azure/virtual-machines/compute-throttling-limits>).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ComputeLimits {
    /// VM GET ("Low Cost Get VM": 12/min, max 36 per VM; 8,000/min, max 24,000 per sub).
    pub vm_low_cost_get: ComputePolicy,
    /// VM PATCH, and PUT of an existing VM ("Update VM": 4/12; 500/1,500).
    pub vm_update: ComputePolicy,
    /// VM PUT creating it ("Put VM": 4/12; 500/1,500).
    pub vm_put: ComputePolicy,
    /// VM DELETE ("Delete VM": 4/12; 500/1,500).
    pub vm_delete: ComputePolicy,
    /// VMSS GET ("Low Cost Get": 12/36; 800/2,400).
    pub vmss_low_cost_get: ComputePolicy,
    /// VMSS PATCH, and PUT of an existing VMSS ("Update": 4/12; 500/1,500).
    pub vmss_update: ComputePolicy,
    /// VMSS PUT creating it ("Put": 4/12; 125/375).
    pub vmss_put: ComputePolicy,
    /// VMSS DELETE ("Delete": 4/12; 175/525).
    pub vmss_delete: ComputePolicy,
    /// Polls of the operation-status URL ("Get Operation": 15/45; 5,000/15,000); the
    /// resource is the operation's VM/VMSS. `None` = polls are not charged.
    pub get_operation: Option<ComputePolicy>,
}

impl Default for ComputeLimits {
    fn default() -> Self {
        let p = ComputePolicy::per_minute;
        ComputeLimits {
            vm_low_cost_get: p("LowCostGetVM", (12, 36), (8_000, 24_000)),
            vm_update: p("UpdateVM", (4, 12), (500, 1_500)),
            vm_put: p("PutVM", (4, 12), (500, 1_500)),
            vm_delete: p("DeleteVM", (4, 12), (500, 1_500)),
            vmss_low_cost_get: p("LowCostGetVMScaleSet", (12, 36), (800, 2_400)),
            vmss_update: p("UpdateVMScaleSet", (4, 12), (500, 1_500)),
            vmss_put: p("PutVMScaleSet", (4, 12), (125, 375)),
            vmss_delete: p("DeleteVMScaleSet", (4, 12), (175, 525)),
            get_operation: Some(p("GetOperation", (15, 45), (5_000, 15_000))),
        }
    }
}

impl ComputeLimits {
    fn scaled(&self, size_factor: f64, time_factor: f64) -> ComputeLimits {
        let s = |p: &ComputePolicy| p.scaled(size_factor, time_factor);
        ComputeLimits {
            vm_low_cost_get: s(&self.vm_low_cost_get),
            vm_update: s(&self.vm_update),
            vm_put: s(&self.vm_put),
            vm_delete: s(&self.vm_delete),
            vmss_low_cost_get: s(&self.vmss_low_cost_get),
            vmss_update: s(&self.vmss_update),
            vmss_put: s(&self.vmss_put),
            vmss_delete: s(&self.vmss_delete),
            get_operation: self.get_operation.as_ref().map(s),
        }
    }
}

/// Enforced throttling (`SimConfig::throttling`). `Default` = the published limits:
/// "Understand how Azure Resource Manager throttles requests" (subscription reads
/// 250 / 25 s⁻¹, writes 200 / 10 s⁻¹, deletes 200 / 10 s⁻¹) and the Compute policies of
/// "Compute throttling limits".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ThrottleConfig {
    pub subscription_reads: Bucket,
    pub subscription_writes: Bucket,
    pub subscription_deletes: Bucket,
    /// Compute policies on VM/VMSS routes (and polls); `None` = ARM buckets only.
    pub compute: Option<ComputeLimits>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            subscription_reads: Bucket::new(250, 25.0),
            subscription_writes: Bucket::new(200, 10.0),
            subscription_deletes: Bucket::new(200, 10.0),
            compute: Some(ComputeLimits::default()),
        }
    }
}

impl ThrottleConfig {
    /// ARM subscription buckets only (no Compute policies).
    pub fn arm_only() -> ThrottleConfig {
        ThrottleConfig {
            compute: None,
            ..ThrottleConfig::default()
        }
    }

    /// Every bucket size **and** refill rate multiplied by `factor` (sizes rounded, at
    /// least 1): `scaled(0.1)` = a tenth of the limits, same time to refill.
    pub fn scaled(&self, factor: f64) -> ThrottleConfig {
        self.rescaled(factor, 1.0)
    }

    /// Refill rates multiplied by `factor` (sizes unchanged): time runs `factor`× faster.
    pub fn accelerated(&self, factor: f64) -> ThrottleConfig {
        self.rescaled(1.0, factor)
    }

    fn rescaled(&self, size_factor: f64, time_factor: f64) -> ThrottleConfig {
        ThrottleConfig {
            subscription_reads: self.subscription_reads.scaled(size_factor, time_factor),
            subscription_writes: self.subscription_writes.scaled(size_factor, time_factor),
            subscription_deletes: self.subscription_deletes.scaled(size_factor, time_factor),
            compute: self
                .compute
                .as_ref()
                .map(|c| c.scaled(size_factor, time_factor)),
        }
    }
}

/// Current bucket levels of one subscription (`SimHandle::bucket_levels`): tokens left
/// (fractional, refilled up to now).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketLevels {
    pub reads: f64,
    pub writes: f64,
    pub deletes: f64,
    /// Compute per-subscription buckets by name (`UpdateVMSubscription` → tokens), only
    /// those used so far (an unused bucket is full).
    pub compute: BTreeMap<String, f64>,
}

/// A live token bucket.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    pub capacity: f64,
    pub refill_per_sec: f64,
    pub tokens: f64,
    pub last: Instant,
}

impl TokenBucket {
    pub fn new(spec: Bucket, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(spec.size),
            refill_per_sec: spec.refill_per_sec.max(0.0),
            tokens: f64::from(spec.size),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
    }

    /// Tokens now (refilled).
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes one token (never below zero) and returns what remains (reporting only).
    pub fn take_reported(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
        self.tokens.floor() as u64
    }

    /// True when a whole token is available.
    pub fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token that `has_token` said is there; returns the whole tokens left.
    pub fn take(&mut self) -> u64 {
        self.tokens = (self.tokens - 1.0).max(0.0);
        self.tokens.floor() as u64
    }

    /// Whole seconds until a token is available (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        if self.refill_per_sec <= 0.0 {
            return 3600;
        }
        let secs = ((1.0 - self.tokens).max(0.0) / self.refill_per_sec).ceil();
        if secs.is_finite() {
            (secs as u64).max(1)
        } else {
            3600
        }
    }
}

/// The ARM buckets of one subscription.
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionBuckets {
    pub reads: TokenBucket,
    pub writes: TokenBucket,
    pub deletes: TokenBucket,
}

impl SubscriptionBuckets {
    pub fn new(cfg: &ThrottleConfig, now: Instant) -> SubscriptionBuckets {
        SubscriptionBuckets {
            reads: TokenBucket::new(cfg.subscription_reads, now),
            writes: TokenBucket::new(cfg.subscription_writes, now),
            deletes: TokenBucket::new(cfg.subscription_deletes, now),
        }
    }
}

/// ARM's operation kinds for rate limiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Read,
    Write,
    Delete,
}

impl OpKind {
    pub fn of(method: &Method) -> OpKind {
        if *method == Method::GET || *method == Method::HEAD {
            OpKind::Read
        } else if *method == Method::DELETE {
            OpKind::Delete
        } else {
            OpKind::Write
        }
    }

    fn word(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Delete => "delete",
        }
    }

    fn header(self) -> &'static str {
        match self {
            OpKind::Read => "x-ms-ratelimit-remaining-subscription-reads",
            OpKind::Write => "x-ms-ratelimit-remaining-subscription-writes",
            OpKind::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
        }
    }

    fn bucket(self, b: &mut SubscriptionBuckets) -> &mut TokenBucket {
        match self {
            OpKind::Read => &mut b.reads,
            OpKind::Write => &mut b.writes,
            OpKind::Delete => &mut b.deletes,
        }
    }
}

/// Pushes the subscription rate header(s) for `remaining` (and the global read header,
/// 15 × the bucket: the global subscription limit of "Understand how Azure Resource Manager
/// throttles requests"; the header `x-ms-ratelimit-remaining-subscription-global-reads` was
/// observed in Azure/azure-powershell#26256).
fn rate_headers(resp: &mut ArmResponse, kind: OpKind, remaining: u64, capacity: f64) {
    push(resp, kind.header(), &remaining.to_string());
    if kind == OpKind::Read {
        let global = remaining + 14 * (capacity as u64);
        push(
            resp,
            "x-ms-ratelimit-remaining-subscription-global-reads",
            &global.to_string(),
        );
    }
}

fn push(resp: &mut ArmResponse, name: &'static str, value: &str) {
    if let Ok(v) = axum::http::HeaderValue::from_str(value) {
        resp.headers.push((HeaderName::from_static(name), v));
    }
}

fn has_rate_header(resp: &ArmResponse) -> bool {
    resp.headers.iter().any(|(k, _)| {
        k.as_str()
            .starts_with("x-ms-ratelimit-remaining-subscription-")
    })
}

/// The default (reporting-only) bucket shapes when throttling is off.
fn reporting_config() -> ThrottleConfig {
    ThrottleConfig::arm_only()
}

fn subscription_buckets<'a>(st: &'a mut State, sub: &str) -> &'a mut SubscriptionBuckets {
    let now = st.now();
    let cfg = st
        .config
        .throttling
        .clone()
        .unwrap_or_else(reporting_config);
    st.buckets
        .entry(sub.to_string())
        .or_insert_with(|| SubscriptionBuckets::new(&cfg, now))
}

/// Adds the subscription rate headers to a response that has none yet. Throttling off:
/// takes a token (never refusing; today's behaviour). Throttling on: the request did
/// not reach the bucket (refused earlier: auth, fault) — reports the level untouched.
pub(crate) fn add_rate_headers(st: &mut State, method: &Method, sub: &str, resp: &mut ArmResponse) {
    if has_rate_header(resp) {
        return;
    }
    let kind = OpKind::of(method);
    let enforcing = st.config.throttling.is_some();
    let now = st.now();
    let b = kind.bucket(subscription_buckets(st, sub));
    let remaining = if enforcing {
        b.level(now).floor() as u64
    } else {
        b.take_reported(now)
    };
    let cap = b.capacity;
    rate_headers(resp, kind, remaining, cap);
}

/// Which Compute policy (and per-resource key) a request is charged to.
fn compute_policy(
    limits: &ComputeLimits,
    st: &State,
    method: &Method,
    route: &Route,
) -> Option<(ComputePolicy, Option<String>)> {
    match route {
        Route::Resource(id) if id.kind.is_compute() => {
            let vm = id.kind == ResourceKind::VirtualMachine;
            let exists = st.world.compute.contains_key(&id.key());
            let p = match (method.as_str(), vm) {
                ("GET" | "HEAD", true) => &limits.vm_low_cost_get,
                ("GET" | "HEAD", false) => &limits.vmss_low_cost_get,
                ("PATCH", true) => &limits.vm_update,
                ("PATCH", false) => &limits.vmss_update,
                ("PUT", true) if exists => &limits.vm_update,
                ("PUT", false) if exists => &limits.vmss_update,
                ("PUT", true) => &limits.vm_put,
                ("PUT", false) => &limits.vmss_put,
                ("DELETE", true) => &limits.vm_delete,
                ("DELETE", false) => &limits.vmss_delete,
                _ => return None,
            };
            Some((p.clone(), Some(id.key())))
        }
        Route::Operation { op_id, .. } if *method == Method::GET => {
            let p = limits.get_operation.as_ref()?;
            let res = st.ops.get(op_id).map(|o| o.resource_key.clone());
            Some((p.clone(), res))
        }
        _ => None,
    }
}

/// What the throttling step decided.
pub(crate) enum Verdict {
    /// Proceed; add these headers to the eventual response.
    Proceed(Vec<(HeaderName, axum::http::HeaderValue)>),
    /// Refused with this response (429).
    Refused(ArmResponse),
}

/// Charges an ARM request to its subscription's bucket and, for Compute routes, to the
/// Compute policy buckets. Only called when throttling is on and the route has a
/// subscription. `actor` = the caller's object id (named in ARM's 429 message).
pub(crate) fn charge(
    st: &mut State,
    method: &Method,
    route: &Route,
    sub: &str,
    actor: &str,
) -> Verdict {
    let Some(cfg) = st.config.throttling.clone() else {
        return Verdict::Proceed(Vec::new());
    };
    let now = st.now();
    let kind = OpKind::of(method);
    let mut headers = ArmResponse::empty(StatusCode::OK);
    // 1. ARM front door.
    {
        let b = kind.bucket(subscription_buckets(st, sub));
        if !b.has_token(now) {
            let retry = b.retry_after_secs();
            let cap = b.capacity;
            match kind {
                OpKind::Read => st.counters.throttled_reads += 1,
                OpKind::Write => st.counters.throttled_writes += 1,
                OpKind::Delete => st.counters.throttled_deletes += 1,
            }
            let mut resp: ArmResponse = arm_throttled(kind, sub, actor, retry).into();
            rate_headers(&mut resp, kind, 0, cap);
            return Verdict::Refused(resp);
        }
        let remaining = b.take();
        let cap = b.capacity;
        rate_headers(&mut headers, kind, remaining, cap);
    }
    // 2. Compute (the RP) — after ARM let it through.
    if let Some(limits) = &cfg.compute
        && let Some((policy, resource)) = compute_policy(limits, st, method, route)
    {
        let sub_name = policy.subscription_bucket_name();
        let res_name = policy.resource_bucket_name();
        let sub_key = (sub_name.clone(), sub.to_string());
        let sb = st
            .compute_buckets
            .entry(sub_key.clone())
            .or_insert_with(|| TokenBucket::new(policy.per_subscription, now));
        let sub_ok = sb.has_token(now);
        let res_key = resource.map(|r| (res_name.clone(), r));
        let res_ok = match &res_key {
            Some(k) => st
                .compute_buckets
                .entry(k.clone())
                .or_insert_with(|| TokenBucket::new(policy.per_resource, now))
                .has_token(now),
            None => true,
        };
        if !(sub_ok && res_ok) {
            // Report the exhausted bucket (the resource one first).
            let (name, key, spec) = if res_ok {
                (sub_name, sub_key, policy.per_subscription)
            } else {
                match res_key {
                    Some(k) => (res_name, k, policy.per_resource),
                    None => (sub_name, sub_key, policy.per_subscription),
                }
            };
            let retry = st
                .compute_buckets
                .get(&key)
                .map_or(1, TokenBucket::retry_after_secs);
            st.counters.throttled_compute += 1;
            let mut resp: ArmResponse = crp_throttled(&name, spec.size, retry).into();
            resp.headers.extend(headers.headers);
            return Verdict::Refused(resp);
        }
        let mut parts = Vec::new();
        if let Some(k) = &res_key
            && let Some(b) = st.compute_buckets.get_mut(k)
        {
            parts.push(format!("Microsoft.Compute/{};{}", k.0, b.take()));
        }
        if let Some(b) = st.compute_buckets.get_mut(&sub_key) {
            parts.push(format!("Microsoft.Compute/{};{}", sub_key.0, b.take()));
        }
        push(
            &mut headers,
            "x-ms-ratelimit-remaining-resource",
            &parts.join(","),
        );
    }
    Verdict::Proceed(headers.headers)
}

/// ARM's subscription throttling 429 (message as captured in Azure/ARO-HCP test data).
fn arm_throttled(kind: OpKind, sub: &str, actor: &str, retry: u64) -> ArmError {
    ArmError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "SubscriptionRequestsThrottled",
        format!(
            "Number of '{}' requests for subscription '{sub}' actor '{actor}' exceeded. Please try again after '{retry}' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling for additional information.",
            kind.word()
        ),
    )
    .with_header(HeaderName::from_static("retry-after"), &retry.to_string())
}

/// CRP's 429 naming the exhausted bucket (body as in `faults::throttle_error`).
fn crp_throttled(bucket: &str, allowed: u32, retry: u64) -> ArmError {
    let start = chrono::Utc::now();
    let end = start + chrono::Duration::seconds(i64::try_from(retry).unwrap_or(3600));
    let detail = json!({
        "operationGroup": bucket,
        "startTime": start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        "endTime": end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        "allowedRequestCount": allowed,
        "measuredRequestCount": u64::from(allowed) + 1,
    })
    .to_string();
    let message = "The server rejected the request because too many requests have been received for this subscription.";
    ArmError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "OperationNotAllowed",
        message,
    )
    .with_body(json!({
        "error": {
            "code": "OperationNotAllowed",
            "message": message,
            "details": [{ "code": "TooManyRequests", "target": bucket, "message": detail }],
            "innererror": { "internalErrorCode": "TooManyRequestsReceived" }
        }
    }))
    .with_header(HeaderName::from_static("retry-after"), &retry.to_string())
    .with_header(
        HeaderName::from_static("x-ms-ratelimit-remaining-resource"),
        &format!("Microsoft.Compute/{bucket};0"),
    )
}

/// Levels of a subscription's buckets (full when never used).
pub(crate) fn levels(st: &mut State, sub: &str) -> BucketLevels {
    let now = st.now();
    let sub = sub.to_ascii_lowercase();
    let b = subscription_buckets(st, &sub);
    let reads = b.reads.level(now);
    let writes = b.writes.level(now);
    let deletes = b.deletes.level(now);
    let compute = st
        .compute_buckets
        .iter_mut()
        .filter(|((_, owner), _)| *owner == sub)
        .map(|((name, _), b)| (name.clone(), b.level(now)))
        .collect();
    BucketLevels {
        reads,
        writes,
        deletes,
        compute,
    }
}

/// Levels of the Compute per-resource buckets of one VM/VMSS (used ones only).
pub(crate) fn resource_levels(st: &mut State, resource_key: &str) -> BTreeMap<String, f64> {
    let now = st.now();
    st.compute_buckets
        .iter_mut()
        .filter(|((_, owner), _)| owner == resource_key)
        .map(|((name, _), b)| (name.clone(), b.level(now)))
        .collect()
}

/// Compute buckets: (bucket name, owner key: subscription or case-folded resource id).
pub(crate) type ComputeBuckets = HashMap<(String, String), TokenBucket>;
