//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use vmidentity_azure::{Observer, RequestKind};

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

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
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
