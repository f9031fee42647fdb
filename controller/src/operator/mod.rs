//! `vmidentity controller`: the in-cluster controller. Thin: it gathers objects per target,
//! calls the planner, hands the plan to the executor and writes status.

pub mod changefeed;
pub mod conditions;
pub mod credentials;
pub mod decide;
pub mod events;
pub mod fleet;
pub mod leader;
pub mod metrics;
pub mod observe;
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
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
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
    /// Seconds between polls of Resource Graph's change feed (`resourcechanges`): a VM or
    /// scale set whose identity another writer changed (or that was deleted or re-created)
    /// is reconciled at the next poll, between full resyncs. 0 turns the feed off (drift is
    /// then found at the resync only). Needs --resync-mode resource-graph.
    #[arg(long, env = "VMIDENTITY_CHANGE_POLL_SECONDS", default_value_t = 30)]
    pub change_poll_seconds: u64,
    /// Seconds each change feed poll reads back before its watermark: records may show up
    /// late (the documentation says within five minutes) and out of order.
    #[arg(long, env = "VMIDENTITY_CHANGE_OVERLAP_SECONDS", default_value_t = 360)]
    pub change_overlap_seconds: u64,
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
    /// The reconcile policy of objects whose own `vmidentity.dev/reconcile-policy`
    /// annotation and whose Namespace's say nothing: manage (read, plan and write) or observe
    /// (read and plan, never write to Azure; report the drift in condition Drifted and
    /// status.pendingWrites). The Namespace annotation is read from the Namespace metadata
    /// watch (--namespace-labels, on by default); without it only the object's counts.
    #[arg(
        long,
        env = "VMIDENTITY_DEFAULT_RECONCILE_POLICY",
        value_enum,
        default_value = "manage"
    )]
    pub default_reconcile_policy: observe::ReconcilePolicy,
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
    ctx.default_policy = args.default_reconcile_policy;
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

    // Change feed between resyncs.
    let (feed_tx, feed_rx) = futures::channel::mpsc::unbounded();
    if args.resync_mode == ResyncMode::ResourceGraph && args.change_poll_seconds > 0 {
        let period = Duration::from_secs(args.change_poll_seconds);
        let overlap = Duration::from_secs(args.change_overlap_seconds);
        // The watermark lives on the leader Lease (see `changefeed`); one replica without
        // election keeps it in memory.
        let store = if args.no_leader_election {
            changefeed::WatermarkStore::Memory(changefeed::MemoryStore::default())
        } else {
            changefeed::WatermarkStore::Lease(Box::new(changefeed::LeaseStore {
                api: Api::namespaced(client.clone(), &lease_ns),
                name: args.lease_name.clone(),
            }))
        };
        tokio::spawn(changefeed::poll_loop(
            ctx.clone(),
            doors.arm.clone(),
            feed_tx,
            period,
            overlap,
            store,
        ));
    }

    // Work is keyed by target: every event becomes a trigger for its target's representative.
    let map_ctx = ctx.clone();
    let map_reader = reader.clone();
    let triggers = watcher(api, watcher::Config::default())
        .default_backoff()
        // The cache keeps what reconciles read. Nothing reads an object's labels (policies
        // select namespaces) or annotations but vmidentity's own (adopt, reconcile-policy, abandon), and managedFields and the
        // annotations that kubectl, Argo CD or Helm add are most of an object's bytes.
        .modify(|o| {
            let m = &mut o.metadata;
            m.managed_fields = None;
            m.annotations = own_annotations(m.annotations.take());
            m.labels = None;
        })
        .reflect(writer)
        .touched_objects()
        // Our own status and finalizer writes change neither the generation nor our
        // annotations: they must not trigger another pass (deletion does bump the
        // generation). A new spec, or `vmidentity.dev/adopt` / `reconcile-policy` / `abandon` set
        // or changed, does.
        .predicate_filter(
            Predicate::<VirtualMachineIdentity>::combine(
                predicates::generation,
                predicates::annotations,
            ),
            Default::default(),
        )
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
    let queue = trigger_queue(triggers, scan_rx, retrigger_rx, feed_rx);
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

/// The annotations a reconcile reads ([`crate::crd::ADOPT_ANNOTATION`],
/// [`crate::crd::RECONCILE_POLICY_ANNOTATION`]); None when the object has neither.
fn own_annotations(
    all: Option<std::collections::BTreeMap<String, String>>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let own: std::collections::BTreeMap<String, String> = all?
        .into_iter()
        .filter(|(k, _)| {
            k == crate::crd::ADOPT_ANNOTATION
                || k == crate::crd::RECONCILE_POLICY_ANNOTATION
                || k == reconcile::ABANDON_ANNOTATION
        })
        .collect();
    (!own.is_empty()).then_some(own)
}

/// Namespaces whose `vmidentity.dev/reconcile-policy` annotation changed with `e` (`seen`:
/// the value last seen per namespace, kept up to date). A relist (`Init*`) refreshes `seen`
/// and reports the namespaces whose value differs from before.
fn namespace_policy_changes(
    seen: &mut std::collections::HashMap<String, Option<String>>,
    e: &watcher::Event<PartialObjectMeta<Namespace>>,
) -> Vec<String> {
    let value = |n: &PartialObjectMeta<Namespace>| {
        n.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::crd::RECONCILE_POLICY_ANNOTATION))
            .cloned()
    };
    let mut changed = Vec::new();
    // On the first list nothing has changed yet: every object is reconciled at start.
    let mut note = |n: &PartialObjectMeta<Namespace>, v: Option<String>, first_seen_counts| {
        let name = n.metadata.name.clone().unwrap_or_default();
        let before = seen.insert(name.clone(), v.clone());
        let differs = match before {
            Some(b) => b != v,
            None => first_seen_counts && v.is_some(),
        };
        if differs {
            changed.push(name);
        }
    };
    match e {
        watcher::Event::Apply(n) => note(n, value(n), true),
        watcher::Event::InitApply(n) => note(n, value(n), false),
        watcher::Event::Delete(n) => note(n, None, false),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
    changed
}

/// The representative of every target with an object in one of `namespaces`.
fn in_namespaces(
    objects: &reflector::Store<VirtualMachineIdentity>,
    namespaces: &[String],
) -> Vec<reflector::ObjectRef<VirtualMachineIdentity>> {
    use kube::ResourceExt;
    let keys: std::collections::BTreeSet<String> = objects
        .state()
        .iter()
        .filter(|o| namespaces.contains(&o.namespace().unwrap_or_default()))
        .map(|o| target_key(o))
        .collect();
    keys.iter()
        .filter_map(|k| representative(&objects_on(objects, k)))
        .map(|rep| reflector::ObjectRef::from_obj(&*rep))
        .collect()
}

/// kube-runtime's `Controller` with its parts spelled out (`applier`, as `Controller::run`
/// calls it), so each trigger carries its own reason into the `reconciling object` span:
/// `object updated` for watch events, and what the resync scanner or a policy change found
/// (`Controller::reconcile_on` would label both `unknown`).
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
    feed_rx: futures::channel::mpsc::UnboundedReceiver<
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
        feed_rx
            .map(|obj_ref| {
                Ok(ReconcileRequest {
                    obj_ref,
                    reason: ReconcileReason::Custom {
                        reason: "change feed".into(),
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
    // The controller's own principal, when the environment names it: a namespace credential
    // naming the same app then shares its budgets.
    let budget_key = match (
        std::env::var("AZURE_TENANT_ID"),
        std::env::var("AZURE_CLIENT_ID"),
    ) {
        (Ok(t), Ok(c)) if !t.is_empty() && !c.is_empty() => {
            Some(format!("{t}/{c}").to_ascii_lowercase())
        }
        _ => Some("controller".to_string()),
    };
    let arm_config = ClientConfig {
        budget_key: budget_key.clone(),
        endpoint: args.arm_endpoint.clone(),
        max_attempts: 3,
        max_inline_wait: Duration::ZERO,
        lro_poll_interval: Duration::from_millis(args.lro_poll_ms),
        ..ClientConfig::default()
    };
    let graph_config = ClientConfig {
        budget_key,
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
    .map_ok(|e| (changed(&e), Vec::new()))
    .boxed();
    let (ns_reader, ns_events) = if args.namespace_labels {
        let (r, w) = reflector::store::<PartialObjectMeta<Namespace>>();
        let events = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(w)
        .map_ok({
            // The reconcile-policy annotation of each namespace as last seen: when it
            // changes, the namespace's objects are reconciled again at once.
            let mut seen = std::collections::HashMap::new();
            move |e| (changed(&e), namespace_policy_changes(&mut seen, &e))
        })
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
                let (mut any, mut namespaces) = match ev {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "policy or namespace watch failed (retrying)");
                        (false, Vec::new())
                    }
                };
                // A burst (a relist, many namespaces labelled at once) is one re-check.
                while let Some(Some(more)) = events.next().now_or_never() {
                    if let Ok((c, ns)) = more {
                        any |= c;
                        namespaces.extend(ns);
                    }
                }
                let mut again = if any {
                    policy::affected(&objects, &view)
                } else {
                    Vec::new()
                };
                if !namespaces.is_empty() {
                    info!(namespaces = %namespaces.join(","), "reconcile-policy annotation changed: reconciling their objects");
                    again.extend(in_namespaces(&objects, &namespaces));
                }
                again.sort_by_key(ToString::to_string);
                again.dedup();
                for r in again {
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
    fn the_cache_keeps_only_vmidentity_annotations() {
        let all: std::collections::BTreeMap<String, String> = [
            ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
            ("vmidentity.dev/adopt", "true"),
            ("vmidentity.dev/reconcile-policy", "observe"),
            ("argocd.argoproj.io/tracking-id", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let own = own_annotations(Some(all)).unwrap();
        assert_eq!(
            own.keys().map(String::as_str).collect::<Vec<_>>(),
            ["vmidentity.dev/adopt", "vmidentity.dev/reconcile-policy"]
        );
        assert_eq!(own_annotations(None), None);
        assert_eq!(
            own_annotations(Some([("a".to_string(), "b".to_string())].into())),
            None
        );
    }

    #[test]
    fn a_namespace_reconcile_policy_change_is_noticed_once() {
        fn ns(name: &str, policy: Option<&str>) -> PartialObjectMeta<Namespace> {
            let mut n = PartialObjectMeta::<Namespace>::default();
            n.metadata.name = Some(name.into());
            n.metadata.annotations = policy.map(|p| {
                [(
                    crate::crd::RECONCILE_POLICY_ANNOTATION.to_string(),
                    p.to_string(),
                )]
                .into()
            });
            n
        }
        let mut seen = std::collections::HashMap::new();
        // The first list: nothing changed.
        assert!(
            namespace_policy_changes(
                &mut seen,
                &watcher::Event::InitApply(ns("a", Some("observe")))
            )
            .is_empty()
        );
        assert!(namespace_policy_changes(&mut seen, &watcher::Event::InitDone).is_empty());
        // A label change (same annotation): nothing.
        assert!(
            namespace_policy_changes(&mut seen, &watcher::Event::Apply(ns("a", Some("observe"))))
                .is_empty()
        );
        // observe -> manage: a.
        assert_eq!(
            namespace_policy_changes(&mut seen, &watcher::Event::Apply(ns("a", Some("manage")))),
            vec!["a".to_string()]
        );
        // Removed: a again; a new namespace annotated: b.
        assert_eq!(
            namespace_policy_changes(&mut seen, &watcher::Event::Apply(ns("a", None))),
            vec!["a".to_string()]
        );
        assert_eq!(
            namespace_policy_changes(&mut seen, &watcher::Event::Apply(ns("b", Some("observe")))),
            vec!["b".to_string()]
        );
        // A relist that finds b changed while the watch was down: b.
        assert_eq!(
            namespace_policy_changes(&mut seen, &watcher::Event::InitApply(ns("b", None))),
            vec!["b".to_string()]
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
