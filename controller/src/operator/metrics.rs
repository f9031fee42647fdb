//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use vmidentity_azure::{Observer, RequestKind};

use crate::crd::VirtualMachineIdentity;
use crate::operator::conditions::DRIFTED;
use crate::operator::conditions::{READY, RECONCILING, STALLED};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArmLabels {
    pub method: String,
    pub kind: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `Ready`, `Reconciling`, `Stalled` (the condition that is `True`), or `Unknown` (no
    /// status written for the current generation yet).
    pub condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    /// The `x-ms-ratelimit-remaining-*` header ARM answered with.
    pub header: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: String,
}

/// Everything the controller measures.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub arm_requests: Family<ArmLabels, Counter>,
    pub arm_throttled: Counter,
    pub kube_requests: Family<VerbLabels, Counter>,
    pub queue_depth: Gauge,
    pub objects: Gauge,
    pub in_flight: Gauge,
    pub leader: Gauge,
    pub fleet_scans: Counter,
    pub fleet_pages: Counter,
    pub fleet_drifted: Counter,
    /// Objects refused by policy (counted per reconcile pass that refused them).
    pub policy_denied: Counter,
    /// Objects by the condition that is `True` (computed from the cache when scraped).
    pub objects_by_condition: Family<ConditionLabels, Gauge>,
    /// Seconds the longest-`Stalled` object has been `Stalled` (0: none; computed when scraped).
    pub stalled_max_age: Gauge,
    /// Objects under reconcile policy `observe` whose target differs from what they declare
    /// (condition `Drifted` True for the current generation; computed when scraped).
    pub drifted_objects: Gauge,
    /// Grants objects list that their identities held before and that they do not own
    /// (`status.heldNotAdopted` entries: left alone, never removed; computed when scraped).
    pub held_not_adopted_grants: Gauge,
    /// Drift repairs (a write to a target every object on it saw `Ready`), once per target
    /// and pass. No per-target label: a fleet-wide strip would make one series per VM.
    pub drift_repaired: Counter,
    /// Targets whose drift was repaired [`DRIFT_REPEATED`] times or more within
    /// [`DRIFT_WINDOW`] (someone else keeps writing them; computed when scraped).
    pub drift_repeated_targets: Gauge,
    /// Recent repair times per target, only for targets repaired within [`DRIFT_WINDOW`].
    drift_window: std::sync::Mutex<DriftWindow>,
    /// The last `x-ms-ratelimit-remaining-*` value ARM answered, per header.
    pub arm_ratelimit_remaining: Family<BucketLabels, Gauge>,
    /// Token acquisitions that failed, per token scope.
    pub token_failures: Family<ScopeLabels, Counter>,
    /// Resident memory of the process (`VmRSS` of /proc/self/status, read when scraped).
    pub resident_memory: Gauge,
    /// The objects cache, read when scraped (set once the controller has one).
    store: OnceLock<Store<VirtualMachineIdentity>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vmidentity");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let arm_requests = Family::<ArmLabels, Counter>::default();
        let arm_throttled = Counter::default();
        let kube_requests = Family::<VerbLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let objects = Gauge::default();
        let in_flight = Gauge::default();
        let leader = Gauge::default();
        let fleet_scans = Counter::default();
        let fleet_pages = Counter::default();
        let fleet_drifted = Counter::default();
        let policy_denied = Counter::default();
        let objects_by_condition = Family::<ConditionLabels, Gauge>::default();
        let stalled_max_age = Gauge::default();
        let drifted_objects = Gauge::default();
        let held_not_adopted_grants = Gauge::default();
        let drift_repaired = Counter::default();
        let drift_repeated_targets = Gauge::default();
        let arm_ratelimit_remaining = Family::<BucketLabels, Gauge>::default();
        let token_failures = Family::<ScopeLabels, Counter>::default();
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the controller process (VmRSS)",
            resident_memory.clone(),
        );
        registry.register(
            "objects_by_condition",
            "VirtualMachineIdentity objects in the cache by the condition that is True (Unknown: none yet for the current generation)",
            objects_by_condition.clone(),
        );
        registry.register(
            "drifted_objects",
            "Objects under reconcile policy observe whose target differs from what they declare (condition Drifted True)",
            drifted_objects.clone(),
        );
        registry.register(
            "held_not_adopted_grants",
            "Listed role assignments and group memberships held before and not owned by the object that lists them (status.heldNotAdopted; adopt to manage them)",
            held_not_adopted_grants.clone(),
        );
        registry.register(
            "stalled_max_age_seconds",
            "Seconds since the longest-Stalled object became Stalled (0 when none is)",
            stalled_max_age.clone(),
        );
        registry.register(
            "drift_repaired",
            "Drift repairs, one per target and pass (someone else changed what an object declares)",
            drift_repaired.clone(),
        );
        registry.register(
            "drift_repeated_targets",
            "Targets whose drift was repaired at least twice within the last hour (another writer keeps changing them; the controller logs each at WARN)",
            drift_repeated_targets.clone(),
        );
        registry.register(
            "arm_ratelimit_remaining",
            "The last x-ms-ratelimit-remaining-* value ARM answered, by header",
            arm_ratelimit_remaining.clone(),
        );
        registry.register(
            "token_failures",
            "Failed Entra token acquisitions by scope",
            token_failures.clone(),
        );
        registry.register(
            "policy_denied",
            "Objects refused by a VirtualMachineIdentityPolicy (per reconcile pass)",
            policy_denied.clone(),
        );
        registry.register("fleet_scans", "Resource Graph resyncs", fleet_scans.clone());
        registry.register(
            "fleet_pages",
            "Resource Graph pages read",
            fleet_pages.clone(),
        );
        registry.register(
            "fleet_drifted",
            "Targets found drifted or missing by Resource Graph resyncs",
            fleet_drifted.clone(),
        );
        registry.register(
            "reconciles",
            "Target reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one target reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "arm_requests",
            "Requests sent to ARM by method, kind and HTTP status",
            arm_requests.clone(),
        );
        registry.register(
            "arm_throttled",
            "429 responses from ARM",
            arm_throttled.clone(),
        );
        registry.register(
            "kube_requests",
            "Writes to the Kubernetes API by verb",
            kube_requests.clone(),
        );
        registry.register(
            "queue_depth",
            "Targets waiting to be reconciled",
            queue_depth.clone(),
        );
        registry.register(
            "objects",
            "VirtualMachineIdentity objects in the cache",
            objects.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Target reconciles running now",
            in_flight.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the leader lease",
            leader.clone(),
        );
        // Every result label exists from the start (at 0), so rates and ratios over them have
        // data before the first error (Prometheus' "Instrumentation" practices: avoid missing
        // metrics). The labels are decide::Outcome::label's and "error".
        for result in ["converged", "applied", "retry", "stalled", "idle", "error"] {
            drop(reconciles.get_or_create(&ResultLabels {
                result: result.to_string(),
            }));
        }
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            arm_requests,
            arm_throttled,
            kube_requests,
            queue_depth,
            objects,
            in_flight,
            leader,
            fleet_scans,
            fleet_pages,
            fleet_drifted,
            policy_denied,
            objects_by_condition,
            stalled_max_age,
            drifted_objects,
            held_not_adopted_grants,
            drift_repaired,
            drift_repeated_targets,
            drift_window: Default::default(),
            arm_ratelimit_remaining,
            token_failures,
            resident_memory,
            store: OnceLock::new(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn fleet_scanned(&self, _targets: usize, pages: u32, drifted: usize, missing: usize) {
        self.fleet_scans.inc();
        self.fleet_pages.inc_by(u64::from(pages));
        self.fleet_drifted.inc_by((drifted + missing) as u64);
    }

    pub fn kube_write(&self, verb: &str) {
        self.kube_requests
            .get_or_create(&VerbLabels {
                verb: verb.to_string(),
            })
            .inc();
    }

    /// A drift repair on `target`. Objects of one target are told in the same pass: repairs
    /// closer together than [`DRIFT_SAME_PASS`] count once (None for the repeats). Returns
    /// how many repairs the target has had within [`DRIFT_WINDOW`], this one included.
    pub fn drift_repaired(&self, target: &str) -> Option<usize> {
        let now = std::time::Instant::now();
        let Ok(mut window) = self.drift_window.lock() else {
            return None;
        };
        let times = window.entry(target.to_ascii_lowercase()).or_default();
        if times
            .last()
            .is_some_and(|t| now.duration_since(*t) < DRIFT_SAME_PASS)
        {
            return None;
        }
        times.push(now);
        self.drift_repaired.inc();
        let n = times.len();
        prune_drift(&mut window, now);
        self.drift_repeated_targets
            .set(repeated_targets(&window) as i64);
        Some(n)
    }

    /// Drops repairs older than [`DRIFT_WINDOW`] and recounts the repeated targets.
    fn refresh_drift(&self, now: std::time::Instant) {
        if let Ok(mut window) = self.drift_window.lock() {
            prune_drift(&mut window, now);
            self.drift_repeated_targets
                .set(repeated_targets(&window) as i64);
        }
    }

    /// The cache `objects_by_condition` and `stalled_max_age_seconds` are computed from at
    /// each scrape (the first call wins).
    pub fn watch_objects(&self, store: Store<VirtualMachineIdentity>) {
        let _ = self.store.set(store);
    }

    /// Recomputes the gauges read off the cache.
    fn refresh_objects(&self, now: k8s_openapi::jiff::Timestamp) {
        let Some(store) = self.store.get() else {
            return;
        };
        let objects = store.state();
        let counts = count_conditions(objects.iter().map(|o| o.as_ref()), now);
        self.objects.set(objects.len() as i64);
        for (condition, n) in [
            (READY, counts.ready),
            (RECONCILING, counts.reconciling),
            (STALLED, counts.stalled),
            ("Unknown", counts.unknown),
        ] {
            self.objects_by_condition
                .get_or_create(&ConditionLabels {
                    condition: condition.to_string(),
                })
                .set(n);
        }
        self.stalled_max_age.set(counts.stalled_max_age_secs);
        self.drifted_objects.set(counts.drifted);
        self.held_not_adopted_grants.set(counts.held_not_adopted);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        self.refresh_objects(k8s_openapi::jiff::Timestamp::now());
        self.refresh_drift(std::time::Instant::now());
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(vm_rss_bytes)
        {
            self.resident_memory.set(rss);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `VmRSS` of a /proc/<pid>/status text, in bytes ("VmRSS:\t  123 kB", proc(5)).
fn vm_rss_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Objects by the condition that is `True`, and the age of the oldest `Stalled`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConditionCounts {
    pub ready: i64,
    pub reconciling: i64,
    pub stalled: i64,
    pub unknown: i64,
    pub stalled_max_age_secs: i64,
    /// Observed objects whose `Drifted` condition is True (counted besides their kstatus
    /// condition).
    pub drifted: i64,
    /// Entries of the objects' `status.heldNotAdopted` (whatever their condition).
    pub held_not_adopted: i64,
}

/// Counts `objects` by condition. An object whose status was written for an older generation
/// (or never) counts as `Unknown`: what it says is not about the current spec.
pub fn count_conditions<'a>(
    objects: impl Iterator<Item = &'a VirtualMachineIdentity>,
    now: k8s_openapi::jiff::Timestamp,
) -> ConditionCounts {
    let mut c = ConditionCounts::default();
    for o in objects {
        let Some(status) = o.status.as_ref() else {
            c.unknown += 1;
            continue;
        };
        if status.observed_generation != o.metadata.generation {
            c.unknown += 1;
            continue;
        }
        let is_true = |t: &str| {
            status
                .conditions
                .iter()
                .find(|x| x.type_ == t && x.status == "True")
        };
        if is_true(DRIFTED).is_some() {
            c.drifted += 1;
        }
        if let Some(h) = &status.held_not_adopted {
            c.held_not_adopted += (h.role_assignments.len() + h.group_memberships.len()) as i64;
        }
        if let Some(s) = is_true(STALLED) {
            c.stalled += 1;
            let age = now.as_second() - s.last_transition_time.0.as_second();
            c.stalled_max_age_secs = c.stalled_max_age_secs.max(age.max(0));
        } else if is_true(RECONCILING).is_some() {
            c.reconciling += 1;
        } else if is_true(READY).is_some() {
            c.ready += 1;
        } else {
            c.unknown += 1;
        }
    }
    c
}

impl Observer for Metrics {
    fn on_response(
        &self,
        method: &str,
        kind: RequestKind,
        status: Option<u16>,
        _elapsed: Duration,
    ) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        if status == "429" {
            self.arm_throttled.inc();
        }
        self.arm_requests
            .get_or_create(&ArmLabels {
                method: method.to_string(),
                kind: kind.as_str().to_string(),
                status,
            })
            .inc();
    }

    fn on_rate_limit_remaining(&self, header: &str, remaining: f64) {
        self.arm_ratelimit_remaining
            .get_or_create(&BucketLabels {
                header: header.to_string(),
            })
            .set(remaining as i64);
    }

    fn on_token_error(&self, scope: &str) {
        self.token_failures
            .get_or_create(&ScopeLabels {
                scope: scope.to_string(),
            })
            .inc();
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves the endpoints until the process ends.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(m);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}

/// How far back repairs of one target are remembered, and how many make it "repeated".
pub const DRIFT_WINDOW: Duration = Duration::from_secs(3600);
pub const DRIFT_REPEATED: usize = 2;
/// Repairs of one target closer together than this are one pass (each object is told).
pub const DRIFT_SAME_PASS: Duration = Duration::from_secs(5);

type DriftWindow = std::collections::HashMap<String, Vec<std::time::Instant>>;

fn prune_drift(window: &mut DriftWindow, now: std::time::Instant) {
    window.retain(|_, times| {
        times.retain(|t| now.duration_since(*t) < DRIFT_WINDOW);
        !times.is_empty()
    });
}

fn repeated_targets(window: &DriftWindow) -> usize {
    window
        .values()
        .filter(|t| t.len() >= DRIFT_REPEATED)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{VirtualMachineIdentitySpec, VirtualMachineIdentityStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn object(generation: i64, status: Option<(i64, &str, &str)>) -> VirtualMachineIdentity {
        let spec: VirtualMachineIdentitySpec = serde_json::from_value(serde_json::json!({
            "target": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v"
        }))
        .unwrap();
        let mut o = VirtualMachineIdentity::new("o", spec);
        o.metadata.generation = Some(generation);
        o.status = status.map(
            |(observed, true_type, since)| VirtualMachineIdentityStatus {
                observed_generation: Some(observed),
                conditions: [READY, RECONCILING, STALLED]
                    .iter()
                    .map(|t| Condition {
                        type_: t.to_string(),
                        status: if *t == true_type { "True" } else { "False" }.into(),
                        reason: "R".into(),
                        message: String::new(),
                        observed_generation: Some(observed),
                        last_transition_time: Time(ts(since)),
                    })
                    .collect(),
                ..Default::default()
            },
        );
        o
    }

    #[test]
    fn counts_objects_by_the_true_condition_and_the_oldest_stall() {
        let objects = [
            object(1, Some((1, READY, "2026-01-01T00:00:00Z"))),
            object(2, Some((2, RECONCILING, "2026-01-01T00:00:00Z"))),
            object(3, Some((3, STALLED, "2026-01-01T00:00:00Z"))),
            object(1, Some((1, STALLED, "2026-01-01T00:50:00Z"))),
            // Stalled, but for an older generation: not about the current spec.
            object(4, Some((3, STALLED, "2025-01-01T00:00:00Z"))),
            object(1, None),
        ];
        let c = count_conditions(objects.iter(), ts("2026-01-01T01:00:00Z"));
        assert_eq!(
            c,
            ConditionCounts {
                ready: 1,
                reconciling: 1,
                stalled: 2,
                unknown: 2,
                stalled_max_age_secs: 3600,
                drifted: 0,
                held_not_adopted: 0,
            }
        );
        // Observed and drifted: counted as drifted besides its Ready.
        let mut drifted = object(1, Some((1, READY, "2026-01-01T00:00:00Z")));
        if let Some(st) = drifted.status.as_mut() {
            st.conditions.push(Condition {
                type_: DRIFTED.into(),
                status: "True".into(),
                reason: "PendingWrites".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(ts("2026-01-01T00:00:00Z")),
            });
        }
        let c = count_conditions([drifted].iter(), ts("2026-01-01T01:00:00Z"));
        assert_eq!((c.ready, c.drifted), (1, 1));
        // Grants held, not adopted: each entry counted.
        let mut held = object(1, Some((1, READY, "2026-01-01T00:00:00Z")));
        if let Some(st) = held.status.as_mut() {
            st.held_not_adopted = Some(crate::crd::HeldNotAdopted {
                role_assignments: vec![Default::default(), Default::default()],
                group_memberships: vec![Default::default()],
            });
        }
        let c = count_conditions([held].iter(), ts("2026-01-01T01:00:00Z"));
        assert_eq!((c.ready, c.held_not_adopted), (1, 3));
    }

    #[test]
    fn resident_memory_from_proc_status() {
        assert_eq!(
            vm_rss_bytes("Name:\tvmidentity\nVmRSS:\t   20480 kB\nThreads:\t4\n"),
            Some(20480 * 1024)
        );
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
        let m = Metrics::new();
        assert!(
            m.encode()
                .contains("vmidentity_process_resident_memory_bytes ")
        );
        assert!(m.resident_memory.get() > 0, "read off /proc/self/status");
    }

    #[test]
    fn observer_hooks_show_in_the_exposition() {
        let m = Metrics::new();
        m.on_rate_limit_remaining("x-ms-ratelimit-remaining-subscription-reads", 11999.0);
        m.on_token_error("https://management.azure.com/.default");
        let v = "/subscriptions/S/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v";
        assert_eq!(m.drift_repaired(v), Some(1));
        // Another object of the same target told in the same pass: still one repair.
        assert_eq!(m.drift_repaired(&v.to_ascii_lowercase()), None);
        let text = m.encode();
        assert!(text.contains(
            "vmidentity_arm_ratelimit_remaining{header=\"x-ms-ratelimit-remaining-subscription-reads\"} 11999"
        ));
        assert!(text.contains(
            "vmidentity_token_failures_total{scope=\"https://management.azure.com/.default\"} 1"
        ));
        assert!(
            text.contains("vmidentity_drift_repaired_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("vmidentity_drift_repeated_targets 0\n"),
            "{text}"
        );
    }

    #[test]
    fn repeated_drift_is_counted_per_target_within_the_hour() {
        let now = std::time::Instant::now();
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s)).expect("uptime");
        let mut w = DriftWindow::new();
        w.insert("a".into(), vec![ago(3000), ago(10)]);
        w.insert("b".into(), vec![ago(10)]);
        w.insert("c".into(), vec![ago(4000), ago(10)]);
        w.insert("d".into(), vec![ago(5000)]);
        prune_drift(&mut w, now);
        assert_eq!(
            repeated_targets(&w),
            1,
            "only a: two repairs within the hour"
        );
        assert_eq!(w["c"].len(), 1, "c's older repair is forgotten");
        assert!(
            !w.contains_key("d"),
            "targets with no recent repair take no memory"
        );
    }
}
