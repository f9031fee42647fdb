//! `bench controller`: the real `vmidentity controller` process against a real Kubernetes API
//! server (tests/apiserver/kube-up.sh: kube-apiserver + etcd on loopback) and the ARM simulator
//! running in this process. Prints numbers, never asserts.
//!
//! 1. Apply-to-PATCH latency of single objects on an idle controller.
//! 2. For each `--objects` count: time to converge, ARM reads/writes, controller RSS (VmRSS and
//!    VmHWM), and Kubernetes API writes per reconcile while converging; then, after a
//!    controller restart, the same for a pass with nothing to do and for one timer resync.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use vmidentity::crd::{VirtualMachineIdentity, VirtualMachineIdentitySpec};
use vmidentity_simulator::{Counters, LroMode, SimConfig, SimHandle, WorldSeed};

const TOKEN: &str = "sim-token";
const CRD_NAME: &str = "virtualmachineidentities.vmidentity.dev";
/// Resync period of a controller that must not resync during the measurement.
const NO_RESYNC_SECS: u64 = 3600;

/// What `bench controller` was asked to do.
pub struct Options {
    pub samples: usize,
    pub objects: Vec<usize>,
    pub timeout: Duration,
    pub kubeconfig: Option<PathBuf>,
    pub vmidentity: Option<PathBuf>,
    pub create_concurrency: usize,
    pub controller_concurrency: u16,
    pub resync_secs: u64,
    /// Values of the controller's `--resync-mode` to measure a resync with.
    pub resync_modes: Vec<String>,
    pub identities: usize,
    /// VMs per simulated subscription (0: all in one). The controller's ARM client paces
    /// requests per subscription at ARM's limits.
    pub vms_per_subscription: usize,
    pub lro: LroMode,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sub(k: usize) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-{:012x}",
        0xbe00_0000 + k
    )
}

/// The id of VM `i`: `per_sub` VMs per subscription (0: all in the first).
fn vm(i: usize, per_sub: usize) -> String {
    let k = i.checked_div(per_sub).unwrap_or(0);
    format!(
        "{}/resourceGroups/rg-bench/providers/Microsoft.Compute/virtualMachines/vm-{i}",
        sub(k)
    )
}

/// The pool of user-assigned identities lives in the first subscription.
fn uai(i: usize) -> String {
    format!(
        "{}/resourceGroups/rg-bench-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{i}",
        sub(0)
    )
}

/// A world with VMs 0..vms (no identity yet) and `pool` UAIs.
fn world_yaml(vms: usize, per_sub: usize, pool: usize) -> String {
    let mut s = String::from("userAssignedIdentities:\n");
    for i in 0..pool.max(1) {
        let _ = writeln!(s, "  - id: {}", uai(i));
    }
    s.push_str("virtualMachines:\n");
    for i in 0..vms {
        let _ = writeln!(s, "  - id: {}", vm(i, per_sub));
    }
    s
}

/// The object on VM `i`: one UAI of the pool, and the system-assigned identity on every
/// other object.
fn object(name: &str, i: usize, opt: &Options) -> Result<VirtualMachineIdentity> {
    let mut spec = json!({
        "target": vm(i, opt.vms_per_subscription),
        "userAssignedIdentities": [uai(i % opt.identities.max(1))],
    });
    if i.is_multiple_of(2) {
        spec["systemAssigned"] = json!(true);
    }
    let spec: VirtualMachineIdentitySpec = serde_json::from_value(spec).context("object spec")?;
    Ok(VirtualMachineIdentity::new(name, spec))
}

// ------------------------------------------------------------------------ environment

async fn kubeconfig(opt: &Options) -> Result<PathBuf> {
    if let Some(p) = &opt.kubeconfig {
        return Ok(p.clone());
    }
    if let Ok(p) = std::env::var("VMIDENTITY_E2E_KUBECONFIG") {
        return Ok(PathBuf::from(p));
    }
    let script = root().join("tests/apiserver/kube-up.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

async fn client(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("kubeconfig")?;
    Client::try_from(cfg).context("Kubernetes client")
}

/// Server-side applies the CRDs from crds/ and waits until they are Established.
async fn install_crd(client: &Client) -> Result<()> {
    install_one_crd(
        client,
        "vmidentity.dev_virtualmachineidentities.yaml",
        CRD_NAME,
    )
    .await?;
    install_one_crd(
        client,
        "vmidentity.dev_virtualmachineidentitypolicies.yaml",
        "virtualmachineidentitypolicies.vmidentity.dev",
    )
    .await
}

/// A policy that lets the bench's namespaces do what the bench asks (the controller fails
/// closed without one).
async fn allow_namespaces(client: &Client, name: &str, namespaces: &[String]) -> Result<()> {
    // kube-apiserver refuses objects in a namespace that does not exist.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in namespaces {
        let body =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        nss.patch(
            ns,
            &PatchParams::apply("vmidentity-bench").force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    }
    let api: Api<vmidentity::crd::VirtualMachineIdentityPolicy> = Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentityPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaces": {"names": namespaces},
            "targets": {"patterns": ["**"]},
            "userAssignedIdentities": {"patterns": ["**"]},
        },
    });
    api.patch(
        name,
        &PatchParams::apply("vmidentity-bench").force(),
        &Patch::Apply(&body),
    )
    .await
    .context("applying the bench's VirtualMachineIdentityPolicy")?;
    Ok(())
}

async fn install_one_crd(client: &Client, file: &str, crd_name: &str) -> Result<()> {
    let path = root().join("crds").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).context("CRD YAML")?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        crd_name,
        &PatchParams::apply("vmidentity-bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying a CRD")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = api.get(crd_name).await.context("reading the CRD")?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        if Instant::now() > deadline {
            bail!("the CRD is not Established after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API server needs a moment before it serves a new (or updated) schema.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn vmidentity_binary(opt: &Options) -> Result<PathBuf> {
    if let Some(p) = &opt.vmidentity {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    let candidate = dir.join("vmidentity");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: build it first (cargo build --release -p vmidentity) or pass --vmidentity PATH",
            candidate.display()
        )
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_sim(vms: usize, opt: &Options) -> Result<SimHandle> {
    let yaml = world_yaml(vms, opt.vms_per_subscription, opt.identities);
    let seed = WorldSeed::from_yaml_str(&yaml).map_err(|e| anyhow!("world seed: {e}"))?;
    vmidentity_simulator::start(SimConfig {
        seed,
        lro: opt.lro,
        max_logged_requests: 200_000,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| anyhow!("starting the simulator: {e}"))
}

// ------------------------------------------------------------------------ the controller

/// Resident set size of a process (from /proc/<pid>/status).
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    rss_kib: u64,
    hwm_kib: u64,
}

/// Everything the phases share.
struct Bench {
    opt: Options,
    bin: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
}

/// A running `vmidentity controller`.
struct ControllerProc {
    child: Child,
    pid: u32,
    metrics_addr: String,
    log: PathBuf,
}

impl ControllerProc {
    async fn start(
        b: &Bench,
        ns: &str,
        sim: &SimHandle,
        resync_secs: u64,
        extra: &[String],
        log_name: &str,
    ) -> Result<ControllerProc> {
        let (bin, opt) = (&b.bin, &b.opt);
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let log_dir = root().join("target/bench");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log = log_dir.join(format!("controller-{log_name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "controller",
            "--namespace",
            ns,
            "--arm-endpoint",
            &sim.base_url(),
            "--resync-seconds",
            &resync_secs.to_string(),
            "--concurrency",
            &opt.controller_concurrency.to_string(),
            "--metrics-addr",
            &metrics_addr,
            "--lease-namespace",
            ns,
            "--identity",
            "bench",
            "--no-leader-election",
            // Policies name the bench's namespaces; no label selectors to watch.
            "--namespace-labels=false",
        ]);
        if opt.lro != LroMode::Sync {
            cmd.args(["--lro-poll-ms", "50"]);
        }
        cmd.args(extra);
        let child = cmd
            .env("KUBECONFIG", &b.kubeconfig)
            .env("AZURE_ACCESS_TOKEN", TOKEN)
            .env("VMIDENTITY_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the controller exited at once"))?;
        let mut c = ControllerProc {
            child,
            pid,
            metrics_addr,
            log,
        };
        // Up when /metrics answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            c.check_alive()?;
            if c.metrics().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not serve /metrics within 30 s (log: {})",
                    c.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(c)
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the controller exited ({status}); log {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    fn rss(&self) -> Result<Rss> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(Rss {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&self.pid.to_string()).unwrap_or(0.0)
    }

    async fn metrics(&self) -> Result<Prom> {
        let text = tokio::time::timeout(Duration::from_secs(5), http_get(&self.metrics_addr))
            .await
            .map_err(|_| anyhow!("GET /metrics timed out"))??;
        Ok(Prom::parse(&text))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// User + system CPU seconds of process `pid` ("self" for this one) so far.
fn cpu_secs_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces):
    // state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
    // /proc reports in USER_HZ, which is 100 on Linux.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU seconds used so far by this process (the simulator and the object creation), and by
/// tests/apiserver's apiserver and etcd when the bench talks to them.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSnap {
    bench: Option<f64>,
    apiserver: Option<f64>,
    etcd: Option<f64>,
}

impl CpuSnap {
    fn take(b: &Bench) -> CpuSnap {
        let dir = root().join("target/kube-apiserver");
        let canon = |p: &Path| std::fs::canonicalize(p).ok();
        let ours = canon(&b.kubeconfig).is_some()
            && canon(&b.kubeconfig) == canon(&dir.join("kubeconfig"));
        let of = |name: &str| -> Option<f64> {
            if !ours {
                return None;
            }
            let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok()?;
            cpu_secs_of(pid.trim())
        };
        CpuSnap {
            bench: cpu_secs_of("self"),
            apiserver: of("kube-apiserver"),
            etcd: of("etcd"),
        }
    }

    fn since(&self, before: &CpuSnap) -> CpuSnap {
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        CpuSnap {
            bench: d(self.bench, before.bench),
            apiserver: d(self.apiserver, before.apiserver),
            etcd: d(self.etcd, before.etcd),
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A tiny HTTP/1.0 GET of /metrics (plain HTTP on loopback).
async fn http_get(addr: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "/metrics answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

/// Samples of a Prometheus text exposition.
#[derive(Debug, Clone, Default)]
struct Prom {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Prom {
    fn parse(text: &str) -> Prom {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            for kv in labels.split(',').filter(|s| !s.is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    map.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                }
            }
            samples.push((name.to_string(), map, value));
        }
        Prom { samples }
    }

    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.samples {
            if n == name {
                let key = l.get(label).cloned().unwrap_or_default();
                *out.entry(key).or_insert(0.0) += v;
            }
        }
        out
    }

    fn reconciles(&self) -> f64 {
        self.sum("vmidentity_reconciles_total", &[])
    }

    fn kube_writes(&self) -> BTreeMap<String, f64> {
        self.by_label("vmidentity_kube_requests_total", "verb")
    }

    fn in_flight(&self) -> f64 {
        self.sum("vmidentity_reconciles_in_flight", &[])
    }

    fn scans(&self) -> f64 {
        self.sum("vmidentity_fleet_scans_total", &[])
    }
}

/// The sum of the values (0.0, not the -0.0 an empty float `sum()` gives).
fn total(m: &BTreeMap<String, f64>) -> f64 {
    m.values().fold(0.0, |a, v| a + v)
}

/// `after - before` per key.
fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// Waits until the controller has been idle for `quiet` (no reconcile running, counters
/// unchanged). Returns the last snapshot and whether it went quiet before `deadline`.
async fn wait_quiet(
    c: &mut ControllerProc,
    quiet: Duration,
    deadline: Instant,
) -> Result<(Prom, bool)> {
    let mut last: Option<(f64, f64, Instant)> = None;
    loop {
        c.check_alive()?;
        let m = c.metrics().await?;
        let now = Instant::now();
        let rec = m.reconciles();
        let writes = total(&m.kube_writes());
        let idle = m.in_flight() == 0.0;
        match last {
            Some((r, w, since)) if r == rec && w == writes && idle => {
                if now.duration_since(since) >= quiet {
                    return Ok((m, true));
                }
            }
            _ => last = Some((rec, writes, now)),
        }
        if now > deadline {
            return Ok((m, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------ objects

async fn create_with_retry(api: &Api<VirtualMachineIdentity>, o: &VirtualMachineIdentity) -> bool {
    for attempt in 0..5u32 {
        match api.create(&PostParams::default(), o).await {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 409 => return true,
            Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await,
        }
    }
    false
}

/// Names of the objects of the namespace.
async fn names(api: &Api<VirtualMachineIdentity>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list_metadata(&lp).await.context("listing objects")?;
        out.extend(page.items.into_iter().filter_map(|o| o.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Removes every object of the namespace (finalizers first) and the Events there.
async fn cleanup(client: &Client, ns: &str, concurrency: usize) {
    let api: Api<VirtualMachineIdentity> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        let Ok(list) = names(&api).await else { break };
        if list.is_empty() {
            break;
        }
        stream::iter(list)
            .map(|name| {
                let api = api.clone();
                async move {
                    let _ = api
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
        // One request instead of one per object.
        let _ = api
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        let _ = events
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        match events.list_metadata(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => break,
            _ => {}
        }
    }
}

/// Objects of the namespace whose Ready condition is True for their generation.
async fn count_ready(api: &Api<VirtualMachineIdentity>) -> Result<usize> {
    let mut ready = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.context("listing objects")?;
        ready += page
            .items
            .iter()
            .filter(|o| {
                o.status.as_ref().is_some_and(|s| {
                    s.observed_generation == o.metadata.generation
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(ready);
        }
    }
}

fn parse_ts(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&chrono::Utc)))
}

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// When the simulator received the first PATCH of `vm_id` (None on timeout).
async fn patch_arrival(sim: &SimHandle, vm_id: &str, deadline: Instant) -> Option<SystemTime> {
    let key = vm_id.to_ascii_lowercase();
    loop {
        // writes_for counts on arrival; the log entry is added when the answer is ready.
        if sim.writes_for(vm_id) > 0
            && let Some(t) = sim
                .requests()
                .iter()
                .rev()
                .find(|r| r.method == "PATCH" && r.resource_id.as_deref() == Some(key.as_str()))
                .and_then(|r| parse_ts(&r.timestamp))
        {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ------------------------------------------------------------------------ phase 1: latency

struct Latency {
    ms: Vec<f64>,
    timed_out: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn latency_phase(b: &Bench, ns: &str) -> Result<Latency> {
    let (opt, client) = (&b.opt, &b.client);
    // VMs 0..samples for the samples, VM `samples` for the warm-up.
    let warm_vm = opt.samples;
    let sim = start_sim(opt.samples + 1, opt).await?;
    let mut c = ControllerProc::start(b, ns, &sim, NO_RESYNC_SECS, &[], ns).await?;
    let api: Api<VirtualMachineIdentity> = Api::namespaced(client.clone(), ns);
    let result = async {
        // Warm-up: the watch is established and connections are open.
        let warm = object("warmup", warm_vm, opt)?;
        api.create(&PostParams::default(), &warm)
            .await
            .context("creating the warm-up object")?;
        let per_sample = opt.timeout.min(Duration::from_secs(60));
        if patch_arrival(
            &sim,
            &vm(warm_vm, opt.vms_per_subscription),
            Instant::now() + per_sample,
        )
        .await
        .is_none()
        {
            bail!(
                "the controller did not PATCH the warm-up VM within {per_sample:?} (log: {})",
                c.log.display()
            );
        }
        wait_quiet(
            &mut c,
            Duration::from_millis(300),
            Instant::now() + per_sample,
        )
        .await?;
        let mut ms = Vec::new();
        let mut timed_out = 0;
        for i in 0..opt.samples {
            let o = object(&format!("o-{i}"), i, opt)?;
            api.create(&PostParams::default(), &o)
                .await
                .with_context(|| format!("creating o-{i}"))?;
            let created = SystemTime::now();
            let id = vm(i, opt.vms_per_subscription);
            match patch_arrival(&sim, &id, Instant::now() + per_sample).await {
                Some(t) => ms.push(ms_between(created, t)),
                None => timed_out += 1,
            }
            // Let the reconcile finish (status, event, the follow-up no-op reconcile).
            wait_quiet(
                &mut c,
                Duration::from_millis(150),
                Instant::now() + per_sample,
            )
            .await?;
        }
        Ok(Latency { ms, timed_out })
    }
    .await;
    c.stop().await;
    cleanup(client, ns, opt.create_concurrency).await;
    sim.shutdown().await;
    result
}

// ------------------------------------------------------------------------ phase 2: scale

#[derive(Default)]
struct Pass {
    reconciles: f64,
    writes: BTreeMap<String, f64>,
    arm_reads: u64,
    arm_writes: u64,
    /// Resource Graph queries the simulator answered.
    arg_queries: u64,
    /// Resource Graph resyncs the controller counted (`vmidentity_fleet_scans_total`).
    scans: f64,
    secs: f64,
    complete: bool,
}

/// A controller restarted with `--resync-mode <mode>`: its start-up pass and one resync.
struct ResyncRun {
    mode: String,
    /// The controller's --resync-seconds.
    period: u64,
    restart: Pass,
    resync: Pass,
    rss: Rss,
    error: Option<String>,
}

#[derive(Default)]
struct Scale {
    n: usize,
    created: usize,
    create_secs: f64,
    /// First create to the last ARM PATCH (None: not all targets were written in time).
    converge_secs: Option<f64>,
    arm_writes_reached: u64,
    settle_secs: f64,
    settled: bool,
    ready: Option<usize>,
    arm_reads: u64,
    arm_writes: u64,
    rss: Rss,
    cpu_secs: f64,
    /// CPU of the others while converging (first create to idle).
    cpu_others: CpuSnap,
    /// Load average when the controller went idle.
    load: String,
    converge: Pass,
    results: BTreeMap<String, f64>,
    resyncs: Vec<ResyncRun>,
    error: Option<String>,
}

async fn scale_phase(b: &Bench, ns: &str, n: usize) -> Scale {
    let (opt, client) = (&b.opt, &b.client);
    let mut out = Scale {
        n,
        ..Scale::default()
    };
    let sim = match start_sim(n, opt).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            return out;
        }
    };
    if let Err(e) = scale_run(b, ns, n, &sim, &mut out).await {
        out.error = Some(format!("{e:#}"));
    }
    eprintln!("[bench] {n} objects: cleaning up namespace {ns}");
    let t = Instant::now();
    cleanup(client, ns, opt.create_concurrency).await;
    eprintln!(
        "[bench] {n} objects: cleaned up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    sim.shutdown().await;
    out
}

async fn scale_run(b: &Bench, ns: &str, n: usize, sim: &SimHandle, out: &mut Scale) -> Result<()> {
    let (opt, client) = (&b.opt, &b.client);
    let api: Api<VirtualMachineIdentity> = Api::namespaced(client.clone(), ns);
    let mut c = ControllerProc::start(b, ns, sim, NO_RESYNC_SECS, &[], ns).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Converge: create everything while the controller runs.
    eprintln!(
        "[bench] {n} objects: creating (concurrency {})",
        opt.create_concurrency
    );
    let cpu0 = CpuSnap::take(b);
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let deadline = started + opt.timeout;
    let objs = (0..n)
        .map(|i| object(&format!("o-{i}"), i, opt))
        .collect::<Result<Vec<_>>>()?;
    let created = stream::iter(objs)
        .map(|o| {
            let api = api.clone();
            async move { create_with_retry(&api, &o).await }
        })
        .buffer_unordered(opt.create_concurrency.max(1))
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    out.created = created;
    out.create_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "[bench] {n} objects: {created} created in {:.1} s; waiting for {n} ARM PATCHes",
        out.create_secs
    );
    let mut reached = false;
    loop {
        c.check_alive()?;
        let w = sim.counters().writes;
        out.arm_writes_reached = w;
        if w >= n as u64 {
            reached = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if reached {
        // The arrival time of the last PATCH, when the log still holds it.
        let last_patch = sim
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .filter_map(|r| parse_ts(&r.timestamp))
            .max();
        out.converge_secs = Some(match last_patch {
            Some(t) => ms_between(started_wall, t) / 1e3,
            None => started.elapsed().as_secs_f64(),
        });
    }
    eprintln!(
        "[bench] {n} objects: ARM writes {}/{n} after {:.1} s; waiting for the controller to go idle",
        out.arm_writes_reached,
        started.elapsed().as_secs_f64()
    );
    let quiet = Duration::from_secs(2);
    let (m, settled) = wait_quiet(&mut c, quiet, deadline.max(Instant::now() + quiet * 2)).await?;
    out.settled = settled;
    out.settle_secs =
        started.elapsed().as_secs_f64() - if settled { quiet.as_secs_f64() } else { 0.0 };
    out.rss = c.rss()?;
    out.cpu_secs = c.cpu_secs();
    out.cpu_others = CpuSnap::take(b).since(&cpu0);
    out.load = load_average();
    let counters = sim.counters();
    out.arm_reads = counters.reads;
    out.arm_writes = counters.writes;
    out.converge = Pass {
        reconciles: m.reconciles(),
        writes: m.kube_writes(),
        arm_reads: counters.reads,
        arm_writes: counters.writes,
        secs: out.settle_secs,
        complete: reached && settled,
        ..Pass::default()
    };
    out.results = m.by_label("vmidentity_reconciles_total", "result");
    out.ready = count_ready(&api).await.ok();
    c.stop().await;

    // Restart with a short resync period, once per resync mode: the start-up pass and then
    // one resync, both with nothing to change.
    for mode in &opt.resync_modes {
        let mut run = ResyncRun {
            mode: mode.clone(),
            period: resync_period(mode, n, opt.resync_secs),
            restart: Pass::default(),
            resync: Pass::default(),
            rss: Rss::default(),
            error: None,
        };
        if let Err(e) = resync_run(b, ns, n, sim, &mut run).await {
            run.error = Some(format!("{e:#}"));
        }
        out.resyncs.push(run);
    }
    Ok(())
}

/// The resync period a restarted controller gets. In `get` mode every target is reconciled
/// (one GET) per period, so the period is at least one second per 100 targets: a shorter one
/// asks for more than the controller does on 2 cores (about 150-350 reconciles/s at 10,000
/// objects), and an overloaded controller serves some targets again and again while others
/// wait for minutes.
fn resync_period(mode: &str, n: usize, requested: u64) -> u64 {
    if mode == "get" {
        requested.max(n.div_ceil(100) as u64)
    } else {
        requested
    }
}

fn pass_between(m0: &Prom, m1: &Prom, c0: &Counters, c1: &Counters) -> Pass {
    Pass {
        reconciles: m1.reconciles() - m0.reconciles(),
        writes: delta(&m1.kube_writes(), &m0.kube_writes()),
        arm_reads: c1.reads.saturating_sub(c0.reads),
        arm_writes: c1.writes.saturating_sub(c0.writes),
        arg_queries: c1
            .resource_graph_queries
            .saturating_sub(c0.resource_graph_queries),
        scans: m1.scans() - m0.scans(),
        secs: 0.0,
        complete: false,
    }
}

async fn resync_run(
    b: &Bench,
    ns: &str,
    n: usize,
    sim: &SimHandle,
    run: &mut ResyncRun,
) -> Result<()> {
    let opt = &b.opt;
    let mode = run.mode.clone();
    let period = run.period;
    eprintln!(
        "[bench] {n} objects: restarting the controller (--resync-mode {mode} --resync-seconds {period})"
    );
    let base = sim.counters();
    let restarted = Instant::now();
    let mut c = ControllerProc::start(
        b,
        ns,
        sim,
        period,
        &["--resync-mode".to_string(), mode.clone()],
        &format!("{ns}-restart-{mode}"),
    )
    .await?;
    let result = async {
        let empty = Prom::default();
        let deadline = Instant::now() + opt.timeout;
        // The start-up pass is over when every VM has been read again. (Counting reconciles
        // is not enough: with a resync period shorter than the pass, early targets come
        // round again before late ones had their first turn.)
        let ok0 = wait_all_read(&mut c, sim, &base, n, deadline).await?;
        // Let the last reconciles write their status.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m0 = c.metrics().await?;
        let at0 = sim.counters();
        run.restart = Pass {
            secs: restarted.elapsed().as_secs_f64(),
            complete: ok0,
            ..pass_between(&empty, &m0, &base, &at0)
        };
        eprintln!(
            "[bench] {n} objects: start-up pass done ({} reconciles in {:.1} s); waiting for one resync",
            m0.reconciles(),
            run.restart.secs
        );
        let t1 = Instant::now();
        let deadline = t1 + opt.timeout;
        let (m1, ok1) = match mode.as_str() {
            // Every converged target is requeued at the resync period: one GET each.
            "get" => {
                let ok = wait_all_read(&mut c, sim, &at0, n, deadline).await?;
                (c.metrics().await?, ok)
            }
            // One Resource Graph scan, then whatever it triggered.
            "resource-graph" => {
                let (_, ok) = wait_scans(&mut c, m0.scans() + 1.0, deadline).await?;
                let (m, quiet) = wait_quiet(&mut c, Duration::from_secs(1), deadline).await?;
                (m, ok && quiet)
            }
            _ => {
                tokio::time::sleep(Duration::from_secs(period).mul_f64(1.3)).await;
                wait_quiet(&mut c, Duration::from_secs(1), deadline).await?
            }
        };
        let at1 = sim.counters();
        run.resync = Pass {
            secs: t1.elapsed().as_secs_f64(),
            complete: ok1,
            ..pass_between(&m0, &m1, &at0, &at1)
        };
        run.rss = c.rss()?;
        Ok(())
    }
    .await;
    c.stop().await;
    result
}

/// Waits until the controller has counted `target` Resource Graph scans.
async fn wait_scans(
    c: &mut ControllerProc,
    target: f64,
    deadline: Instant,
) -> Result<(Prom, bool)> {
    loop {
        c.check_alive()?;
        let m = c.metrics().await?;
        if m.scans() >= target {
            return Ok((m, true));
        }
        if Instant::now() > deadline {
            return Ok((m, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the simulator has answered a GET of each of the `n` VMs since `since`.
async fn wait_all_read(
    c: &mut ControllerProc,
    sim: &SimHandle,
    since: &Counters,
    n: usize,
    deadline: Instant,
) -> Result<bool> {
    loop {
        c.check_alive()?;
        let now = sim.counters();
        let read = now
            .per_resource
            .iter()
            .filter(|(k, v)| {
                k.contains("/virtualmachines/")
                    && v.reads > since.per_resource.get(*k).map_or(0, |b| b.reads)
            })
            .count();
        if read >= n {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ------------------------------------------------------------------------ report

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn per_reconcile(writes: &BTreeMap<String, f64>, reconciles: f64) -> String {
    let total = total(writes);
    if writes.is_empty() || total == 0.0 {
        return "0.00".into();
    }
    let denom = reconciles.max(1.0);
    writes
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {:.2}", v / denom))
        .collect::<Vec<_>>()
        .join(", ")
}

fn per_object(writes: &BTreeMap<String, f64>, n: usize) -> String {
    let denom = (n as f64).max(1.0);
    let parts: Vec<String> = writes
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {:.2}", v / denom))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn pass_line(p: &Pass) -> String {
    let mut line = format!(
        "{:.0} reconciles in {:.1} s{}, API writes {:.0} ({}/reconcile), ARM GET {} PATCH {}",
        p.reconciles,
        p.secs,
        if p.complete { "" } else { " (TIMED OUT)" },
        total(&p.writes),
        per_reconcile(&p.writes, p.reconciles),
        p.arm_reads,
        p.arm_writes
    );
    if p.scans > 0.0 || p.arg_queries > 0 {
        let _ = write!(
            line,
            ", Resource Graph scans {:.0} queries {}",
            p.scans, p.arg_queries
        );
    }
    line
}

/// The "(resync)" cell: writes per reconcile of each resync mode.
fn resync_cell(runs: &[ResyncRun]) -> String {
    runs.iter()
        .map(|r| {
            let p = &r.resync;
            let what = if r.error.is_some() {
                "failed".to_string()
            } else if p.reconciles > 0.0 {
                per_reconcile(&p.writes, p.reconciles)
            } else {
                format!("{:.0} writes, 0 reconciles", total(&p.writes))
            };
            format!("{}: {what}", r.mode)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn header(opt: &Options) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let subs = if opt.vms_per_subscription == 0 {
        "all VMs in one subscription".to_string()
    } else {
        format!("{} VMs per subscription", opt.vms_per_subscription)
    };
    format!(
        "controller benchmark (kube-apiserver + etcd on loopback, ARM simulator lro={:?}, {subs}, {cores} cores, controller --concurrency {})",
        opt.lro, opt.controller_concurrency
    )
}

fn latency_line(lat: &Result<Latency>) -> String {
    match lat {
        Ok(l) if l.ms.is_empty() && l.timed_out == 0 => {
            "apply-to-PATCH latency: not measured (--samples 0)".to_string()
        }
        Ok(l) => {
            let mut v = l.ms.clone();
            v.sort_by(f64::total_cmp);
            let mean = v.iter().fold(0.0, |a, x| a + x) / (v.len().max(1) as f64);
            format!(
                "apply-to-PATCH latency, single object, idle controller: p50 {:.1} ms  p99 {:.1} ms  (n={}; min {:.1}, mean {:.1}, max {:.1} ms{})",
                percentile(&v, 0.50),
                percentile(&v, 0.99),
                v.len(),
                v.first().copied().unwrap_or(f64::NAN),
                mean,
                v.last().copied().unwrap_or(f64::NAN),
                if l.timed_out > 0 {
                    format!("; {} timed out", l.timed_out)
                } else {
                    String::new()
                }
            )
        }
        Err(e) => format!("apply-to-PATCH latency: failed: {e:#}"),
    }
}

fn table(opt: &Options, scales: &[Scale]) -> String {
    let mut out = String::new();
    if scales.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<11} {:>8} {:>10}   {:<8} {:<9}  {:<60} (resync)",
        "objects",
        "converge",
        "ARM GET",
        "ARM PATCH",
        "RSS",
        "peak RSS",
        "API writes/reconcile (converge)",
    );
    for s in scales {
        let converge = match s.converge_secs {
            Some(t) => format!("{t:.1} s"),
            None => format!(">{:.0} s", opt.timeout.as_secs_f64()),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<11} {:>8} {:>10}   {:<8} {:<9}  {:<60} {}",
            s.n,
            converge,
            s.arm_reads,
            s.arm_writes,
            mib(s.rss.rss_kib),
            mib(s.rss.hwm_kib),
            per_reconcile(&s.converge.writes, s.converge.reconciles),
            resync_cell(&s.resyncs),
        );
    }
    out
}

fn details(s: &Scale) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} objects:", s.n);
    if let Some(e) = &s.error {
        let _ = writeln!(out, "  ERROR: {e}");
    }
    let _ = writeln!(
        out,
        "  created {}/{} in {:.1} s ({:.0}/s); ARM PATCHes {}/{}{}; controller idle {:.1} s after the first create{}; Ready {}",
        s.created,
        s.n,
        s.create_secs,
        s.created as f64 / s.create_secs.max(1e-9),
        s.arm_writes_reached,
        s.n,
        match s.converge_secs {
            Some(t) => format!(" (last at {t:.1} s)"),
            None => " (TIMED OUT)".into(),
        },
        s.settle_secs,
        if s.settled {
            ""
        } else {
            " (NOT idle: timed out)"
        },
        s.ready
            .map_or_else(|| "?".to_string(), |r| format!("{r}/{}", s.n)),
    );
    let results: Vec<String> = s
        .results
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    let _ = writeln!(
        out,
        "  converge: {:.0} reconciles ({:.2}/object: {}); API writes/object: {}",
        s.converge.reconciles,
        s.converge.reconciles / (s.n as f64).max(1.0),
        results.join(", "),
        per_object(&s.converge.writes, s.n),
    );
    let secs = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |v| format!("{v:.1} s"));
    let _ = writeln!(
        out,
        "  CPU while converging ({:.1} s wall): controller {:.1} s, apiserver {}, etcd {}, bench+simulator {}; load average {}",
        s.settle_secs,
        s.cpu_secs,
        secs(s.cpu_others.apiserver),
        secs(s.cpu_others.etcd),
        secs(s.cpu_others.bench),
        s.load
    );
    for r in &s.resyncs {
        let _ = writeln!(out, "  restarted with --resync-mode {}:", r.mode);
        if let Some(e) = &r.error {
            let _ = writeln!(out, "    ERROR: {e}");
        }
        let _ = writeln!(out, "    start-up pass: {}", pass_line(&r.restart));
        let _ = writeln!(out, "    resync ({} s): {}", r.period, pass_line(&r.resync));
        let _ = writeln!(
            out,
            "    RSS after the resync {} (peak {})",
            mib(r.rss.rss_kib),
            mib(r.rss.hwm_kib)
        );
    }
    out
}

// ------------------------------------------------------------------------ entry point

pub async fn run(opt: Options) -> Result<()> {
    let t0 = Instant::now();
    let bin = vmidentity_binary(&opt)?;
    let kubeconfig = kubeconfig(&opt).await?;
    let client = client(&kubeconfig).await?;
    install_crd(&client).await?;
    let b = Bench {
        opt,
        bin,
        kubeconfig,
        client,
    };
    let run_id = std::process::id();
    eprintln!(
        "[bench] controller binary {}, kubeconfig {}",
        b.bin.display(),
        b.kubeconfig.display()
    );
    let latency_ns = format!("bench-{run_id}-latency");
    let scale_ns = |n: usize| format!("bench-{run_id}-n{n}");
    let mut covered = vec![latency_ns.clone()];
    covered.extend(b.opt.objects.iter().map(|n| scale_ns(*n)));
    allow_namespaces(&b.client, &format!("bench-{run_id}"), &covered).await?;
    let phases = async {
        let lat = if b.opt.samples > 0 {
            eprintln!(
                "[bench] latency: {} samples in namespace {latency_ns}",
                b.opt.samples
            );
            latency_phase(&b, &latency_ns).await
        } else {
            Ok(Latency {
                ms: vec![],
                timed_out: 0,
            })
        };
        eprintln!("[bench] {}", latency_line(&lat));
        let mut scales = Vec::new();
        for &n in b.opt.objects.iter().filter(|&&n| n > 0) {
            let ns = scale_ns(n);
            eprintln!("[bench] {n} objects in namespace {ns}");
            let s = scale_phase(&b, &ns, n).await;
            eprint!("{}", details(&s));
            scales.push(s);
        }
        (lat, scales)
    };
    // Ctrl-C drops the phases (which kills the controller: kill_on_drop) and cleans up.
    let (lat, scales) = tokio::select! {
        r = phases => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("[bench] interrupted: removing the objects of this run");
            let mut all = vec![latency_ns.clone()];
            all.extend(b.opt.objects.iter().map(|&n| scale_ns(n)));
            for ns in all {
                cleanup(&b.client, &ns, b.opt.create_concurrency).await;
            }
            bail!("interrupted");
        }
    };
    println!("{}", header(&b.opt));
    println!("{}", latency_line(&lat));
    print!("{}", table(&b.opt, &scales));
    for s in &scales {
        print!("{}", details(s));
    }
    println!("total run time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let p = Prom::parse(
            "# HELP x\nvmidentity_kube_requests_total{verb=\"patch-status\"} 4\n\
             vmidentity_kube_requests_total{verb=\"create-event\"} 2\n\
             vmidentity_reconciles_total{result=\"applied\"} 2\n\
             vmidentity_reconciles_total{result=\"converged\"} 3\n\
             vmidentity_reconciles_in_flight 0\n# EOF\n",
        );
        assert_eq!(p.reconciles(), 5.0);
        assert_eq!(p.kube_writes().get("patch-status"), Some(&4.0));
        assert_eq!(
            per_reconcile(&p.kube_writes(), 2.0),
            "create-event 1.00, patch-status 2.00"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 25.0);
        assert_eq!(percentile(&v, 0.99), 50.0);
    }

    #[test]
    fn world_parses() {
        assert!(WorldSeed::from_yaml_str(&world_yaml(5, 2, 3)).is_ok());
        assert!(vm(5, 2).starts_with(&sub(2)));
        assert!(vm(5, 0).starts_with(&sub(0)));
        assert_eq!(resync_period("get", 10_000, 15), 100);
        assert_eq!(resync_period("get", 1000, 15), 15);
        assert_eq!(resync_period("resource-graph", 10_000, 15), 15);
    }
}
