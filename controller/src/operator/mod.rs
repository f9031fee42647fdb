//! `vmidentity controller`: the in-cluster controller. Thin: it gathers objects per target,
//! calls the planner, hands the plan to the executor and writes status.

pub mod conditions;
pub mod credentials;
pub mod decide;
pub mod events;
pub mod fleet;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod reconcile;
pub mod refusals;
pub mod target;
#[cfg(test)]
mod test_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{ReconcileReason, ReconcileRequest, applier};
use kube::runtime::utils::{CancelableJoinHandle, StreamBackoff};
use kube::runtime::watcher::DefaultBackoff;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};
use tracing::Instrument;
use tracing::{error, info, warn};
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};

use crate::crd::{VirtualMachineIdentity, VirtualMachineIdentityPolicy};
use crate::error::CliError;
use leader::{Elector, LeaderConfig};
use metrics::Metrics;
use policy::PolicyView;
use reconcile::{Context, error_policy, reconcile};
use target::{objects_on, representative, target_key};

/// How the periodic resync finds drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResyncMode {
    /// One Resource Graph query per 1,000 targets; only drifted targets get a GET.
    ResourceGraph,
    /// One GET per target per resync (no Resource Graph rights needed).
    Get,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// ARM endpoint.
    #[arg(long, env = "VMIDENTITY_ARM_ENDPOINT", default_value = vmidentity_azure::client::PUBLIC_ARM_ENDPOINT)]
    pub arm_endpoint: String,
    /// Bearer token for ARM (static token source). Without it, VMIDENTITY_AUTH chooses:
    /// workloadIdentity (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE),
    /// managedIdentity (IMDS), or clientSecret (AZURE_CLIENT_SECRET).
    #[arg(long, env = "AZURE_ACCESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Microsoft Graph endpoint (group memberships).
    #[arg(
        long,
        env = "VMIDENTITY_GRAPH_ENDPOINT",
        default_value = "https://graph.microsoft.com"
    )]
    pub graph_endpoint: String,
    /// Bearer token for Microsoft Graph (static token source); without it groupMemberships
    /// are refused with reason GraphNotConfigured.
    #[arg(long, env = "AZURE_GRAPH_ACCESS_TOKEN", hide_env_values = true)]
    pub graph_token: Option<String>,
    /// Seconds between full resyncs (drift detection and repair).
    #[arg(long, env = "VMIDENTITY_RESYNC_SECONDS", default_value_t = 600)]
    pub resync_seconds: u64,
    /// How resyncs detect drift.
    #[arg(
        long,
        env = "VMIDENTITY_RESYNC_MODE",
        value_enum,
        default_value = "resource-graph"
    )]
    pub resync_mode: ResyncMode,
    /// Targets reconciled at once.
    #[arg(long, env = "VMIDENTITY_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Milliseconds to wait for more changes to a target before reconciling it (trailing
    /// edge: each new change of the target restarts the wait), so objects applied together
    /// (`kubectl apply -f dir/`) cost one PATCH per VM. 0 reconciles at once.
    #[arg(long, env = "VMIDENTITY_DEBOUNCE_MS", default_value_t = DEFAULT_DEBOUNCE_MS)]
    pub debounce_ms: u64,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "VMIDENTITY_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz. Loopback by default, so a controller run
    /// by hand on a shared machine does not publish its metrics; in a pod the chart sets the
    /// pod's address (`0.0.0.0:8080`).
    #[arg(
        long,
        env = "VMIDENTITY_METRICS_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub metrics_addr: SocketAddr,
    /// Disable leader election (a single replica).
    #[arg(long, env = "VMIDENTITY_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "VMIDENTITY_LEASE_NAME",
        default_value = "vmidentity-leader"
    )]
    pub lease_name: String,
    /// Namespace of the leader Lease. Default: POD_NAMESPACE (the controller's own namespace
    /// in a pod); outside a pod, the one namespace watched (--namespace), else
    /// "vmidentity-system" (the chart's namespace; it must exist). Never "default".
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Watch Namespace metadata so policies can select namespaces by label. Off: label
    /// selectors match nothing (policies then cover namespaces by name only).
    #[arg(
        long,
        env = "VMIDENTITY_NAMESPACE_LABELS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub namespace_labels: bool,
    /// Use a namespace's own Azure credential (a Secret in that namespace, see
    /// --namespace-credential-secret) for its objects: off (the controller's own for all),
    /// optional (the namespace's when it has one), required (namespaces without one are
    /// refused, reason NoCredential).
    #[arg(
        long,
        env = "VMIDENTITY_NAMESPACE_CREDENTIALS",
        value_enum,
        default_value = "off"
    )]
    pub namespace_credentials: credentials::Mode,
    /// Name of the per-namespace credential Secret (keys AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// optionally AZURE_CLIENT_SECRET; without a secret: workload identity with the
    /// controller's federated token).
    #[arg(
        long,
        env = "VMIDENTITY_NAMESPACE_CREDENTIAL_SECRET",
        default_value = "vmidentity-credential"
    )]
    pub namespace_credential_secret: String,
    /// Seconds a namespace's credential Secret (or its absence) is cached.
    #[arg(long, default_value_t = 60, hide = true)]
    pub namespace_credential_ttl_seconds: u64,
    /// Milliseconds between ARM LRO polls when ARM gives no Retry-After.
    #[arg(long, default_value_t = 5000, hide = true)]
    pub lro_poll_ms: u64,
}

/// Where the leader Lease lives outside a pod when nothing names a namespace: the namespace
/// the chart installs the controller in.
pub const DEFAULT_LEASE_NAMESPACE: &str = "vmidentity-system";

/// The namespace of the leader Lease and how it was chosen: `--lease-namespace` or
/// `POD_NAMESPACE` (the controller's own namespace in a pod), else the one namespace it
/// watches, else [`DEFAULT_LEASE_NAMESPACE`].
pub fn lease_namespace(args: &ControllerArgs) -> (String, &'static str) {
    match (&args.lease_namespace, &args.namespace) {
        (Some(ns), _) if !ns.is_empty() => (ns.clone(), "--lease-namespace or POD_NAMESPACE"),
        (_, Some(ns)) if !ns.is_empty() => (ns.clone(), "the watched namespace (--namespace)"),
        _ => (
            DEFAULT_LEASE_NAMESPACE.to_string(),
            "the default outside a pod",
        ),
    }
}

/// The watch scope, as the start-up log line states it.
pub fn watch_scope(args: &ControllerArgs) -> String {
    match &args.namespace {
        Some(ns) if !ns.is_empty() => format!("namespace {ns}"),
        _ => "all namespaces".to_string(),
    }
}

/// How long running reconciles may go on after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The default coalescing window (`--debounce-ms`): `kubectl apply -f dir/` creates objects
/// some 10-30 ms apart, one after the other, so 200 ms covers a directory of a few objects per
/// VM, and it is small beside an ARM PATCH (seconds for a VM) and the resync period.
pub const DEFAULT_DEBOUNCE_MS: u64 = 200;

fn identity(args: &ControllerArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "vmidentity".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Runs the controller until SIGTERM/SIGINT or until leadership is lost.
pub async fn run(args: ControllerArgs) -> Result<i32, CliError> {
    let client = Client::try_default()
        .await
        .map_err(|e| CliError::Other(format!("cannot reach the Kubernetes API: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    {
        let m = metrics.clone();
        let addr = args.metrics_addr;
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m).await {
                error!(%addr, error = %e, "metrics server stopped");
            }
        });
    }
    let doors = azure_doors(&args, &metrics)?;
    let exec = doors.exec.clone();
    let me = identity(&args);
    let (lease_ns, lease_ns_from) = lease_namespace(&args);
    let scope = watch_scope(&args);
    info!(
        watching = %scope,
        metrics_addr = %args.metrics_addr,
        leader_election = !args.no_leader_election,
        lease = %format!("{lease_ns}/{}", args.lease_name),
        lease_namespace_from = lease_ns_from,
        identity = %me,
        arm_endpoint = %args.arm_endpoint,
        resync_seconds = args.resync_seconds,
        "starting the controller: watching {scope}"
    );
    let elector = (!args.no_leader_election).then(|| {
        Elector::new(
            client.clone(),
            LeaderConfig {
                name: args.lease_name.clone(),
                namespace: lease_ns.clone(),
                identity: me.clone(),
                lease_duration: Duration::from_secs(args.lease_seconds.max(2)),
                retry_period: Duration::from_secs((args.lease_seconds / 5).max(1)),
            },
        )
    });
    metrics.set_ready(true);
    if let Some(el) = &elector {
        info!(identity = %me, lease = %format!("{lease_ns}/{}", args.lease_name), "waiting for the leader lease");
        el.acquire().await;
    }
    metrics.leader.set(1);

    let api: Api<VirtualMachineIdentity> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    metrics.watch_objects(reader.clone());
    let recorder = events::EventRecorder::new(client.clone(), "vmidentity", &me);
    let resync = Duration::from_secs(args.resync_seconds.max(1));

    let (view, retrigger_rx) = guardrail_caches(&client, &args, &reader).await;

    let mut ctx = Context::new(
        client.clone(),
        reader.clone(),
        exec,
        recorder,
        metrics.clone(),
        view,
    );
    ctx.resync = resync;
    ctx.credentials = namespace_credentials(&args, &client, &ctx, &doors, &metrics);
    ctx.per_target_resync = args.resync_mode == ResyncMode::Get;
    let ctx = Arc::new(ctx);
    // Resource Graph resync: a scanner triggers only the targets that drifted.
    let (scan_tx, scan_rx) = futures::channel::mpsc::unbounded();
    if args.resync_mode == ResyncMode::ResourceGraph {
        tokio::spawn(fleet::scan_loop(
            ctx.clone(),
            doors.arm.clone(),
            scan_tx,
            resync,
        ));
    }

    // Work is keyed by target: every event becomes a trigger for its target's representative.
    let map_ctx = ctx.clone();
    let map_reader = reader.clone();
    let triggers = watcher(api, watcher::Config::default())
        .default_backoff()
        // The cache keeps what reconciles read. Nothing reads an object's labels or
        // annotations (policies select namespaces) but vmidentity.dev/abandon, and
        // managedFields and the annotations that kubectl, Argo CD or Helm add are most of an
        // object's bytes.
        .modify(|o| {
            let m = &mut o.metadata;
            m.managed_fields = None;
            m.annotations = m
                .annotations
                .take()
                .map(|mut a| {
                    a.retain(|k, _| k == reconcile::ABANDON_ANNOTATION);
                    a
                })
                .filter(|a| !a.is_empty());
            m.labels = None;
        })
        .reflect(writer)
        .touched_objects()
        // Our own status and finalizer writes do not change the generation: they must not
        // trigger another pass (deletion does bump it). Setting vmidentity.dev/abandon does
        // not either, and must.
        .predicate_filter(generation_or_abandon, Default::default())
        .map_ok(move |obj| {
            let key = target_key(&obj);
            map_ctx.mark_dirty(&key);
            match representative(&objects_on(&map_reader, &key)) {
                Some(rep) => (*rep).clone(),
                None => obj,
            }
        });

    let (stop_rx, lost_flag) = stop_signals(elector);
    info!(watching = %scope, resync_seconds = args.resync_seconds, "controller running: watching {scope}");
    // On a stop signal the controller starts no new reconciles; running ones get a grace
    // period, then the process goes (a write cut short is safe: ownership was claimed first,
    // and the next leader plans again from what ARM says).
    let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
    let queue = trigger_queue(triggers, scan_rx, retrigger_rx);
    let queue = StreamBackoff::new(queue, DefaultBackoff::default()).take_until(async move {
        let _ = stop_rx.await;
        let _ = grace_tx.send(());
    });
    let controller = applier(
        |obj, ctx| {
            CancelableJoinHandle::spawn(
                reconcile(obj, ctx).in_current_span(),
                &tokio::runtime::Handle::current(),
            )
        },
        error_policy,
        ctx,
        reader,
        queue,
        kube::runtime::controller::Config::default()
            .concurrency(args.concurrency)
            // The scheduler debounces per object reference; triggers are keyed by the
            // target's representative, so this coalesces per target.
            .debounce(Duration::from_millis(args.debounce_ms)),
    )
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "controller event");
        }
    });
    let grace = async move {
        if grace_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = controller => {}
        _ = grace => warn!("reconciles still running after {SHUTDOWN_GRACE:?}: stopping anyway"),
    }
    metrics.leader.set(0);
    if lost_flag.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(1);
    }
    info!("controller stopped");
    Ok(0)
}

/// kube-runtime's `Controller` with its parts spelled out (`applier`, as `Controller::run`
/// calls it), so each trigger carries its own reason into the `reconciling object` span:
/// `object updated` for watch events, and what the resync scanner or a policy change found
/// (`Controller::reconcile_on` would label both `unknown`).
/// The watch's change filter: the generation (spec edits and deletion bump it) and whether
/// the object is annotated `vmidentity.dev/abandon: "true"` (the way out of a deletion that
/// cannot release, which changes no generation).
fn generation_or_abandon(o: &VirtualMachineIdentity) -> Option<u64> {
    let abandon = reconcile::abandoned(o);
    predicates::generation(o).map(|g| g.wrapping_mul(2) | u64::from(abandon))
}

fn trigger_queue(
    triggers: impl futures::Stream<Item = Result<VirtualMachineIdentity, watcher::Error>>
    + Send
    + 'static,
    scan_rx: futures::channel::mpsc::UnboundedReceiver<
        reflector::ObjectRef<VirtualMachineIdentity>,
    >,
    retrigger_rx: futures::channel::mpsc::UnboundedReceiver<
        reflector::ObjectRef<VirtualMachineIdentity>,
    >,
) -> impl futures::Stream<Item = Result<ReconcileRequest<VirtualMachineIdentity>, watcher::Error>> + Send
{
    futures::stream::select_all([
        triggers
            .map_ok(|obj| ReconcileRequest {
                obj_ref: reflector::ObjectRef::from_obj(&obj),
                reason: ReconcileReason::ObjectUpdated,
            })
            .boxed(),
        scan_rx
            .map(|obj_ref| {
                Ok(ReconcileRequest {
                    obj_ref,
                    reason: ReconcileReason::Custom {
                        reason: "resync found drift".into(),
                    },
                })
            })
            .boxed(),
        retrigger_rx
            .map(|obj_ref| {
                Ok(ReconcileRequest {
                    obj_ref,
                    reason: ReconcileReason::Custom {
                        reason: "policy or namespace labels changed".into(),
                    },
                })
            })
            .boxed(),
    ])
}

/// Stops the controller on SIGTERM/SIGINT (releasing the Lease) or when leadership is lost:
/// the receiver fires then, and the flag says whether leadership was lost (exit code 1).
fn stop_signals(
    elector: Option<Elector>,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let lost = async move {
        match &elector {
            Some(el) => {
                tokio::select! {
                    _ = el.hold() => {
                        warn!("leadership lost: stopping");
                        true
                    }
                    _ = shutdown_signal() => {
                        el.release().await;
                        false
                    }
                }
            }
            None => {
                shutdown_signal().await;
                false
            }
        }
    };
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<bool>();
    tokio::spawn(async move {
        let _ = lost_tx.send(lost.await);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let lost_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let lost_flag = lost_flag.clone();
        tokio::spawn(async move {
            if let Ok(lost) = lost_rx.await {
                lost_flag.store(lost, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = stop_tx.send(());
        });
    }
    (stop_rx, lost_flag)
}

/// The controller's own door to Azure, and the client settings namespace credentials reuse.
struct AzureDoors {
    exec: Executor,
    arm: ArmClient,
    arm_config: ClientConfig,
    graph_config: ClientConfig,
}

/// Credentials: a static token (--token / AZURE_ACCESS_TOKEN), or what VMIDENTITY_AUTH
/// chooses (workload identity, managed identity, client secret); ARM, and Graph when there is
/// a token for it.
fn azure_doors(args: &ControllerArgs, metrics: &Arc<Metrics>) -> Result<AzureDoors, CliError> {
    let tokens: Arc<dyn vmidentity_azure::TokenSource> = match &args.token {
        Some(t) => Arc::new(StaticToken::new(t.clone())),
        None => vmidentity_azure::token::from_env(&|k| std::env::var(k).ok())
            .map_err(|e| CliError::Other(format!("Azure credentials: {e}")))?,
    };
    let arm_config = ClientConfig {
        endpoint: args.arm_endpoint.clone(),
        max_attempts: 3,
        max_inline_wait: Duration::ZERO,
        lro_poll_interval: Duration::from_millis(args.lro_poll_ms),
        ..ClientConfig::default()
    };
    let graph_config = ClientConfig {
        max_attempts: 3,
        max_inline_wait: Duration::ZERO,
        ..ClientConfig::graph(&args.graph_endpoint)
    };
    let arm = ArmClient::new(arm_config.clone(), tokens.clone())
        .map_err(|e| CliError::Other(e.to_string()))?
        .with_observer(metrics.clone());
    // Graph: its own static token if given; otherwise the same source (a different audience).
    let graph_tokens: Option<Arc<dyn vmidentity_azure::TokenSource>> =
        match (&args.graph_token, &args.token) {
            (Some(t), _) => Some(Arc::new(StaticToken::new(t.clone()))),
            (None, Some(_)) => None,
            (None, None) => Some(tokens.clone()),
        };
    // The controller's own door: ARM, and Graph when it has a token for it.
    let mut exec = Executor::new(arm.clone());
    if let Some(t) = graph_tokens {
        exec = exec.with_graph(
            ArmClient::new(graph_config.clone(), t)
                .map_err(|e| CliError::Other(e.to_string()))?
                .with_observer(metrics.clone()),
        );
    }
    Ok(AzureDoors {
        exec,
        arm,
        arm_config,
        graph_config,
    })
}

/// Policies (and namespace labels for their selectors), cached and ready before the first
/// reconcile, so nothing is refused (or allowed) for want of a cache; and the stream of
/// objects to look at again when they change.
async fn guardrail_caches(
    client: &Client,
    args: &ControllerArgs,
    reader: &reflector::Store<VirtualMachineIdentity>,
) -> (
    PolicyView,
    futures::channel::mpsc::UnboundedReceiver<reflector::ObjectRef<VirtualMachineIdentity>>,
) {
    let (policy_reader, policy_writer) = reflector::store::<VirtualMachineIdentityPolicy>();
    let policy_events = watcher(
        Api::<VirtualMachineIdentityPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(policy_writer)
    .map_ok(|e| changed(&e))
    .boxed();
    let (ns_reader, ns_events) = if args.namespace_labels {
        let (r, w) = reflector::store::<PartialObjectMeta<Namespace>>();
        let events = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(w)
        .map_ok(|e| changed(&e))
        .boxed();
        (Some(r), Some(events))
    } else {
        (None, None)
    };
    let view = PolicyView {
        policies: policy_reader.clone(),
        namespaces: ns_reader.clone(),
    };
    let (retrigger_tx, retrigger_rx) = futures::channel::mpsc::unbounded();
    {
        let view = view.clone();
        let objects = reader.clone();
        let mut events = match ns_events {
            Some(ns) => futures::stream::select(policy_events, ns).boxed(),
            None => policy_events,
        };
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let mut any = match ev {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "policy or namespace watch failed (retrying)");
                        false
                    }
                };
                // A burst (a relist, many namespaces labelled at once) is one re-check.
                while let Some(Some(more)) = events.next().now_or_never() {
                    any |= more.unwrap_or(false);
                }
                if !any {
                    continue;
                }
                for r in policy::affected(&objects, &view) {
                    if retrigger_tx.unbounded_send(r).is_err() {
                        return;
                    }
                }
            }
        });
    }
    wait_ready(
        "VirtualMachineIdentityPolicy (is its CRD installed?)",
        policy_reader.wait_until_ready(),
    )
    .await;
    if let Some(r) = &ns_reader {
        wait_ready("Namespace metadata", r.wait_until_ready()).await;
    }
    (view, retrigger_rx)
}

/// `--namespace-credentials`: which Azure credential reconciles which namespace.
fn namespace_credentials(
    args: &ControllerArgs,
    client: &Client,
    ctx: &Context,
    doors: &AzureDoors,
    metrics: &Arc<Metrics>,
) -> Option<Arc<credentials::Credentials>> {
    if args.namespace_credentials == credentials::Mode::Off {
        return None;
    }
    let mut creds = credentials::Credentials::new(
        args.namespace_credentials,
        args.namespace_credential_secret.clone(),
        client.clone(),
        ctx.exec.clone(),
        doors.arm_config.clone(),
        Some(doors.graph_config.clone()),
        metrics.clone(),
        credentials::TokenSettings::from_env(),
        ctx.policy.clone(),
    );
    creds.ttl = Duration::from_secs(args.namespace_credential_ttl_seconds);
    info!(mode = ?args.namespace_credentials, secret = %args.namespace_credential_secret, "namespace credentials on");
    Some(Arc::new(creds))
}

fn changed<K>(e: &watcher::Event<K>) -> bool {
    !matches!(e, watcher::Event::Init | watcher::Event::InitApply(_))
}

/// Waits for a reflector's first list, saying every 30 s what it is waiting for.
async fn wait_ready<F, E>(what: &str, ready: F)
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(ready);
    loop {
        tokio::select! {
            _ = &mut ready => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                warn!("still waiting for the first list of {what}; nothing is reconciled until then");
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The controller's flags alone (the operator does not import the CLI module).
    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        controller: ControllerArgs,
    }

    fn args(extra: &[&str]) -> ControllerArgs {
        let argv = ["vmidentity"].iter().chain(extra.iter());
        match Flags::try_parse_from(argv) {
            Ok(f) => f.controller,
            Err(e) => panic!("not a controller command line: {e}"),
        }
    }

    // These read POD_NAMESPACE / VMIDENTITY_* from the environment as the binary does; the
    // test environment sets none of them.
    #[test]
    fn metrics_bind_to_loopback_unless_told_otherwise() {
        assert_eq!(args(&[]).metrics_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            args(&["--metrics-addr", "0.0.0.0:9090"])
                .metrics_addr
                .to_string(),
            "0.0.0.0:9090"
        );
    }

    #[test]
    fn the_lease_never_lands_in_default_outside_a_pod() {
        assert_eq!(lease_namespace(&args(&[])).0, "vmidentity-system");
        assert_eq!(
            lease_namespace(&args(&["--namespace", "team-web"])).0,
            "team-web"
        );
        assert_eq!(
            lease_namespace(&args(&[
                "--namespace",
                "team-web",
                "--lease-namespace",
                "ops"
            ]))
            .0,
            "ops"
        );
    }

    #[test]
    fn the_start_up_line_states_the_watch_scope() {
        assert_eq!(watch_scope(&args(&[])), "all namespaces");
        assert_eq!(
            watch_scope(&args(&["--namespace", "team-web"])),
            "namespace team-web"
        );
    }
}
