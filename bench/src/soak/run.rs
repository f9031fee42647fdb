//! Running a history: the world, the two controller replicas, each operation, the quiesce
//! checks, and what was counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use chrono::Utc;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vmidentity::crd::VirtualMachineIdentity;
use vmidentity_simulator::{AppConfig, DEFAULT_TENANT_ID, FaultRule, RecordedRequest, SimHandle};
use vmidentity_testkit as kit;

use super::Options;
use super::history::{
    DELETABLE_TARGET, Fault, GROUPS, NAMESPACES, Op, Spec, Step, TARGETS, UAIS, VMS,
};
use super::model::{Model, Violation, has_system, parse_time, uai_keys};

const SUB: &str = "00000000-0000-0000-0000-0000000050a1";
const LEASE_NS: &str = "soak-system";
const CLIENT_ID: &str = "5a0c0000-1111-4222-8333-444444444444";
const CLIENT_SECRET: &str = "soak-secret";
/// The controllers' resync period: drift is repaired within it.
const RESYNC_SECS: u64 = 10;
/// After convergence, the history stays quiet this long and nothing may be written.
const QUIET: Duration = Duration::from_secs(12);
/// How long a quiesce waits for convergence (faults cleared) before it is a violation.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(150);
/// Convergence must hold this long, with no write, before the quiet window starts.
const STABLE: Duration = Duration::from_secs(3);
/// Bounds of the work checks.
const MAX_RSS_KIB: u64 = 64 * 1024;
const MAX_QUIET_RECONCILES_PER_OBJECT_MINUTE: f64 = 15.0;
const MAX_PERIOD_RECONCILES_PER_OBJECT_MINUTE: f64 = 60.0;

pub fn target_id(t: usize) -> String {
    if t < VMS {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-soak/providers/Microsoft.Compute/virtualMachines/vm-{t}"
        )
    } else {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-soak/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-{}",
            t - VMS
        )
    }
}

pub fn uai_id(u: usize) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-soak-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{u}"
    )
}

fn world_yaml() -> String {
    let mut s = String::from("userAssignedIdentities:\n");
    for u in 0..UAIS {
        let _ = writeln!(s, "  - id: {}", uai_id(u));
    }
    s.push_str("virtualMachines:\n");
    for t in 0..VMS {
        let _ = writeln!(s, "  - id: {}", target_id(t));
    }
    s.push_str("virtualMachineScaleSets:\n");
    for t in VMS..TARGETS {
        let _ = writeln!(s, "  - id: {}", target_id(t));
    }
    s.push_str("groups:\n");
    for g in 0..GROUPS {
        let _ = writeln!(s, "  - {{ id: {}, displayName: soak-g{g} }}", group_id(g));
    }
    s
}

fn group_id(g: usize) -> String {
    format!("5a0c0000-0000-4000-8000-00000000000{g}")
}

fn rg_scope() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-soak")
}

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const MONITORING_METRICS_PUBLISHER: &str = "3913510d-42f4-4e42-8a64-420c390055eb";

fn uai_index(k: &str) -> Option<usize> {
    (0..UAIS).find(|u| uai_id(*u).eq_ignore_ascii_case(k))
}

fn target_index(k: &str) -> Option<usize> {
    (0..TARGETS).find(|t| target_id(*t).eq_ignore_ascii_case(k))
}

/// What every run shares: the API server, the binary.
pub struct Env {
    bin: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
}

impl Env {
    pub async fn new(opt: &Options) -> Result<Env> {
        let bin = match &opt.vmidentity {
            Some(p) => p.clone(),
            None => {
                let exe = std::env::current_exe().context("current_exe")?;
                exe.parent()
                    .map(|d| d.join("vmidentity"))
                    .filter(|p| p.is_file())
                    .ok_or_else(|| {
                        anyhow!("vmidentity not found next to {}: cargo build --release -p vmidentity, or --vmidentity PATH", exe.display())
                    })?
            }
        };
        let kubeconfig = match &opt.kubeconfig {
            Some(p) => p.clone(),
            None => tokio::task::spawn_blocking(kit::kubeconfig).await??,
        };
        let client = kit::client(&kubeconfig).await?;
        kit::install_crds(&client).await?;
        Ok(Env {
            bin,
            kubeconfig,
            client,
        })
    }

    /// The API server is tests/apiserver's (its kubeconfig), which the soak may restart.
    pub fn apiserver_is_ours(&self) -> bool {
        let canon = |p: &Path| std::fs::canonicalize(p).ok();
        let dir = std::env::var("KAS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| kit::repo_root().join("target/kube-apiserver"));
        canon(&self.kubeconfig).is_some()
            && canon(&self.kubeconfig) == canon(&dir.join("kubeconfig"))
    }

    fn api(&self, ns: usize) -> Api<VirtualMachineIdentity> {
        Api::namespaced(self.client.clone(), NAMESPACES[ns])
    }
}

/// One `vmidentity controller` replica (restarted under the same identity).
struct Replica {
    identity: String,
    proc: Option<kit::ControllerProc>,
    restart_at: Option<Instant>,
    incarnation: usize,
    /// Reconciles counted by earlier incarnations (counters restart with the process).
    reconciles_before: f64,
    last_reconciles: f64,
    hwm_kib: u64,
}

impl Replica {
    fn start(&mut self, env: &Env, sim: &SimHandle) -> Result<()> {
        self.incarnation += 1;
        let log = kit::repo_root().join("target/soak").join(format!(
            "controller-{}-{}.log",
            self.identity, self.incarnation
        ));
        let url = sim.base_url();
        let proc = kit::ControllerCmd::new(
            &env.bin,
            &env.kubeconfig,
            &url,
            LEASE_NS,
            &self.identity,
            log,
        )?
        .args([
            "--graph-endpoint",
            &url,
            "--resync-seconds",
            &RESYNC_SECS.to_string(),
            "--lease-name",
            "vmidentity-soak",
            "--lease-seconds",
            "4",
            "--lro-poll-ms",
            "50",
            "--namespace-labels=false",
        ])
        .envs([
            ("VMIDENTITY_AUTH", "clientSecret"),
            ("AZURE_TENANT_ID", DEFAULT_TENANT_ID),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", url.as_str()),
        ])
        .rust_log("warn")
        .spawn()?;
        self.reconciles_before += self.last_reconciles;
        self.last_reconciles = 0.0;
        self.proc = Some(proc);
        self.restart_at = None;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(p) = &mut self.proc {
            self.hwm_kib = self.hwm_kib.max(hwm_kib(p.pid));
            p.kill();
        }
        self.proc = None;
    }

    async fn metrics(&self) -> Option<String> {
        self.proc.as_ref()?.metrics().await.ok()
    }

    /// Reconciles by every incarnation so far.
    async fn reconciles(&mut self) -> f64 {
        if let Some(m) = self.metrics().await {
            self.last_reconciles = metric_sum(&m, "vmidentity_reconciles_total");
        }
        self.reconciles_before + self.last_reconciles
    }
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .sum()
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A failed check: where, what, and the request log around it.
#[derive(Debug)]
pub struct Failure {
    pub step: usize,
    pub violations: Vec<Violation>,
    pub log_excerpt: String,
}

impl Failure {
    pub fn print(&self) {
        println!("violations at step {}:", self.step);
        for v in &self.violations {
            println!("  [{}] {}", v.kind, v.message);
        }
        println!("request log around the first one:\n{}", self.log_excerpt);
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Steps executed (the failing quiesce included).
    pub executed: usize,
    pub failure: Option<Failure>,
    pub ops: BTreeMap<&'static str, usize>,
    pub quiesces: usize,
    pub tolerated: BTreeMap<&'static str, usize>,
    pub max_hwm_kib: u64,
    pub max_quiet_rate: f64,
    pub max_period_rate: f64,
    pub max_writes_per_target_period: u64,
    pub converge_secs: Vec<f64>,
    pub controller_writes: u64,
    pub requests: u64,
    pub throttled: u64,
    pub server_errors: u64,
    pub skipped: BTreeMap<&'static str, usize>,
    /// Replica exits the soak did not cause (restarted).
    pub controller_exits: usize,
}

impl Outcome {
    pub fn print_summary(&self, elapsed: Duration) {
        println!(
            "\nsoak summary: {:.1} min, {} steps, {} quiesce checks",
            elapsed.as_secs_f64() / 60.0,
            self.executed,
            self.quiesces
        );
        println!("  operations and faults injected:");
        for (k, n) in &self.ops {
            println!("    {k:<26} {n}");
        }
        if self.controller_exits > 0 {
            println!(
                "    (controller exits the soak did not cause, restarted as the kubelet would: {})",
                self.controller_exits
            );
        }
        for (k, n) in &self.skipped {
            println!("    (skipped {k}: {n})");
        }
        println!(
            "  simulator: {} requests, {} controller VM/VMSS writes applied, {} answered 429, {} answered 5xx",
            self.requests, self.controller_writes, self.throttled, self.server_errors
        );
        let mut c = self.converge_secs.clone();
        c.sort_by(f64::total_cmp);
        if let (Some(max), Some(med)) = (c.last(), c.get(c.len() / 2)) {
            println!(
                "  time to converge after the history quiesced: median {med:.1} s, max {max:.1} s"
            );
        }
        println!(
            "  bounded work: max identity writes per target per period {}, reconciles per object per minute max {:.1} over a period (bound {MAX_PERIOD_RECONCILES_PER_OBJECT_MINUTE}), {:.1} while quiet (bound {MAX_QUIET_RECONCILES_PER_OBJECT_MINUTE}), controller VmHWM max {:.1} MiB (bound 64)",
            self.max_writes_per_target_period,
            self.max_period_rate,
            self.max_quiet_rate,
            self.max_hwm_kib as f64 / 1024.0
        );
        for (k, n) in &self.tolerated {
            println!("  tolerated known open case {k}: {n} time(s)");
        }
    }
}

/// A running history.
struct Runner<'a> {
    env: &'a Env,
    sim: SimHandle,
    replicas: Vec<Replica>,
    model: Model,
    out: Outcome,
    /// Request log entries already checked.
    cursor: usize,
    /// Where the current period began (log index, reconciles, when).
    period_log: usize,
    period_reconciles: f64,
    period_started: Instant,
    /// Targets each operation of the period touched.
    period_touches: Vec<u64>,
    /// Every operation run, with its time (printed for the failing period).
    journal: Vec<String>,
    /// Where the current period begins in the journal.
    period_journal: usize,
    /// Role assignments an out-of-band writer made (names, lower case): never to be deleted.
    oob_grants: BTreeSet<String>,
    /// Violations seen between quiesces (duplicate role assignments).
    pending: Vec<Violation>,
    reported_duplicates: BTreeSet<String>,
}

/// Runs `steps` from an empty world (until `deadline`, then up to the next quiesce).
pub async fn execute(env: &Env, steps: &[Step], deadline: Option<Instant>) -> Result<Outcome> {
    let sim = kit::start_sim(&world_yaml(), |c| {
        c.max_logged_requests = 2_000_000;
        // The controllers sign in with a client secret at the simulator's Entra, so token
        // endpoint outages reach them; tokens last 330 s and are refreshed 5 min before
        // they expire, so about every 30 s.
        c.apps = vec![AppConfig::with_secret(
            CLIENT_ID,
            DEFAULT_TENANT_ID,
            CLIENT_SECRET,
        )];
        c.token_lifetime = Duration::from_secs(330);
    })
    .await?;
    prepare_cluster(env).await?;
    let mut r = Runner {
        env,
        sim,
        replicas: ["soak-r0", "soak-r1"]
            .iter()
            .map(|id| Replica {
                identity: (*id).to_string(),
                proc: None,
                restart_at: None,
                incarnation: 0,
                reconciles_before: 0.0,
                last_reconciles: 0.0,
                hwm_kib: 0,
            })
            .collect(),
        model: Model::new(),
        out: Outcome::default(),
        cursor: 0,
        period_log: 0,
        period_reconciles: 0.0,
        period_started: Instant::now(),
        period_touches: vec![0; TARGETS],
        journal: Vec::new(),
        period_journal: 0,
        oob_grants: BTreeSet::new(),
        pending: Vec::new(),
        reported_duplicates: BTreeSet::new(),
    };
    for i in 0..r.replicas.len() {
        r.replicas[i].start(env, &r.sim)?;
    }
    let result = r.steps(steps, deadline).await;
    for rep in &mut r.replicas {
        rep.kill();
        r.out.max_hwm_kib = r.out.max_hwm_kib.max(rep.hwm_kib);
    }
    let k = r.sim.counters();
    r.out.requests = k.requests;
    r.out.throttled = k.throttled;
    r.out.server_errors = k.server_errors;
    r.out.tolerated = r.model.tolerated.clone();
    cleanup(env).await;
    result?;
    Ok(r.out)
}

async fn prepare_cluster(env: &Env) -> Result<()> {
    kit::apply_namespace(&env.client, LEASE_NS, &[]).await?;
    for (i, ns) in NAMESPACES.iter().enumerate() {
        kit::apply_namespace(&env.client, ns, &[]).await?;
        kit::clear_objects(&env.api(i), 8).await;
    }
    kit::apply_policy(
        &env.client,
        "soak-1",
        &kit::allow_all_policy_for(&NAMESPACES[..2]),
    )
    .await?;
    kit::apply_policy(
        &env.client,
        "soak-2",
        &kit::allow_all_policy_for(&NAMESPACES[2..]),
    )
    .await?;
    Ok(())
}

async fn cleanup(env: &Env) {
    for i in 0..NAMESPACES.len() {
        kit::clear_objects(&env.api(i), 8).await;
    }
}

fn spec_json(target: Option<usize>, s: &Spec) -> Value {
    let uais: Vec<String> = s.uais.iter().map(|u| uai_id(*u)).collect();
    let who = |i: &Option<usize>| i.map_or("SystemAssigned".to_string(), uai_id);
    let roles: Vec<Value> = s
        .roles
        .iter()
        .map(|i| json!({"identity": who(i), "role": "Reader", "scope": rg_scope()}))
        .collect();
    let groups: Vec<Value> = s
        .groups
        .iter()
        .map(|(i, g)| json!({"identity": who(i), "groupObjectId": group_id(*g)}))
        .collect();
    let mut v = json!({
        "roleAssignments": roles,
        "groupMemberships": groups,
        "userAssignedIdentities": uais,
        "systemAssigned": s.system,
        "mode": if s.exact { "Exact" } else { "Merge" },
        "deletionPolicy": if s.retain { "Retain" } else { "Detach" },
        "armApiVersion": s.api,
    });
    if let Some(t) = target {
        v["target"] = json!(target_id(t));
        // A new object: absent, not null.
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, x| !x.is_null());
        }
    }
    v
}

/// Retries a Kubernetes call through API server restarts (up to a minute).
async fn retry_kube<T, F, Fut>(what: &str, mut f: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(kube::Error::Api(e)) if e.code == 409 && what.starts_with("create") => {
                return Ok(None);
            }
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!("{what}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

impl Runner<'_> {
    async fn steps(&mut self, steps: &[Step], deadline: Option<Instant>) -> Result<()> {
        let mut stopping = false;
        for (i, step) in steps.iter().enumerate() {
            if !stopping && deadline.is_some_and(|d| Instant::now() > d) {
                stopping = true;
            }
            if stopping && step.op != Op::Quiesce {
                continue;
            }
            self.out.executed = i + 1;
            *self.out.ops.entry(step.op.kind()).or_default() += 1;
            self.journal.push(format!(
                "{} step {i:>4}: {}",
                Utc::now().format("%H:%M:%S%.3f"),
                step.op
            ));
            if let Some(v) = self.op(i, &step.op).await? {
                self.out.failure = Some(v);
                return Ok(());
            }
            if stopping {
                return Ok(());
            }
            self.pause(Duration::from_millis(step.pause_ms)).await?;
        }
        Ok(())
    }

    /// Sleeps, restarting replicas that are due.
    async fn pause(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        loop {
            self.maintain()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
        }
    }

    /// Never two role assignments for one (role, principal, scope): checked at every tick.
    fn check_duplicates(&mut self) {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.sim.role_assignments() {
            let p = &a["properties"];
            let key = format!(
                "{} {} {}",
                p["roleDefinitionId"]
                    .as_str()
                    .and_then(|r| r.rsplit('/').next())
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                p["principalId"].as_str().unwrap_or("").to_ascii_lowercase(),
                p["scope"]
                    .as_str()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_ascii_lowercase()
            );
            *count.entry(key).or_default() += 1;
        }
        for (k, n) in count {
            if n > 1 && self.reported_duplicates.insert(k.clone()) {
                self.pending.push(Violation {
                    kind: "duplicate-role-assignment",
                    message: format!("{n} role assignments for one (role, principal, scope): {k}"),
                    target: None,
                    at: Some(Utc::now()),
                });
            }
        }
    }

    fn maintain(&mut self) -> Result<()> {
        self.check_duplicates();
        let now = Instant::now();
        for i in 0..self.replicas.len() {
            if self.replicas[i].proc.is_none()
                && self.replicas[i].restart_at.is_some_and(|t| now >= t)
            {
                self.replicas[i].start(self.env, &self.sim)?;
            }
            if let Some(p) = &mut self.replicas[i].proc
                && let Err(e) = p.check_alive()
            {
                // An exit we did not cause (a replica stops when it cannot renew or loses the
                // lease, e.g. across an API server restart): restarted at once, as the kubelet
                // would; counted and printed with the end of its log.
                eprintln!("soak: replica {} exited: {e}", self.replicas[i].identity);
                self.replicas[i].proc = None;
                self.replicas[i].restart_at = Some(now);
                self.out.controller_exits += 1;
            }
        }
        Ok(())
    }

    fn touch(&mut self, t: usize) {
        self.period_touches[t] += 1;
    }

    fn touch_all(&mut self) {
        for t in 0..TARGETS {
            self.period_touches[t] += 1;
        }
    }

    /// Executes one operation; a quiesce returns its failure, if any.
    async fn op(&mut self, step: usize, op: &Op) -> Result<Option<Failure>> {
        let env = self.env;
        match op {
            Op::Create {
                ns,
                name,
                target,
                spec,
            } => {
                let mut body = json!({
                    "apiVersion": "vmidentity.dev/v1alpha1",
                    "kind": "VirtualMachineIdentity",
                    "metadata": {"name": name, "namespace": NAMESPACES[*ns]},
                    "spec": spec_json(Some(*target), spec),
                });
                if let Some(m) = body.as_object_mut() {
                    m.retain(|_, v| !v.is_null());
                }
                let obj: VirtualMachineIdentity =
                    serde_json::from_value(body).context("the soak's object")?;
                let api = env.api(*ns);
                let pp = PostParams::default();
                retry_kube("create", || api.create(&pp, &obj)).await?;
                self.model.create(*ns, name, *target, spec, Utc::now());
                self.touch(*target);
            }
            Op::Edit { ns, name, spec } => {
                let Some(t) = self
                    .model
                    .objects
                    .get(&(*ns, name.clone()))
                    .map(|o| o.target)
                else {
                    return Ok(None);
                };
                let api = env.api(*ns);
                let patch = Patch::Merge(json!({"spec": spec_json(None, spec)}));
                let pp = PatchParams::default();
                let done = retry_kube("edit", || api.patch(name, &pp, &patch)).await?;
                if done.is_some() {
                    self.model.edit(*ns, name, spec, Utc::now());
                }
                self.touch(t);
            }
            Op::Delete { ns, name } => {
                let Some(t) = self
                    .model
                    .objects
                    .get(&(*ns, name.clone()))
                    .map(|o| o.target)
                else {
                    return Ok(None);
                };
                let api = env.api(*ns);
                // What it holds as it goes (a refused object holds its old record, which a
                // Retain delete leaves on the target; seed 11).
                let held: Vec<usize> = retry_kube("get", || api.get(name))
                    .await?
                    .and_then(|o| o.status)
                    .and_then(|st| serde_json::to_value(st.applied).ok())
                    .and_then(|a| a["userAssignedIdentities"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|u| u.as_str().and_then(uai_index))
                    .collect();
                let dp = DeleteParams::default();
                retry_kube("delete", || api.delete(name, &dp)).await?;
                self.model.delete(*ns, name, &held, Utc::now());
                self.touch(t);
            }
            Op::OobAddUai { target, uai } => {
                let key = uai_id(*uai).to_ascii_lowercase();
                let id = uai_id(*uai);
                let r = self.sim.edit_identity(&target_id(*target), |cur| {
                    edited(cur, None, &[id.as_str()], &[], false)
                });
                if let Ok(before) = r {
                    self.model
                        .oob_add(*target, *uai, uai_keys(&before).contains(&key), Utc::now());
                }
                self.touch(*target);
            }
            Op::OobRemoveUai { target, uai } => {
                let id = uai_id(*uai);
                let _ = self.sim.edit_identity(&target_id(*target), |cur| {
                    edited(cur, None, &[], &[id.as_str()], false)
                });
                self.model.oob_remove(*target, *uai, Utc::now());
                self.touch(*target);
            }
            Op::OobSystem { target, on } => {
                if let Ok(before) = self.sim.edit_identity(&target_id(*target), |cur| {
                    edited(cur, Some(*on), &[], &[], false)
                }) {
                    self.model
                        .oob_system(*target, *on, has_system(&before), Utc::now());
                }
                self.touch(*target);
            }
            Op::OobDropIdentity { target } => {
                if self
                    .sim
                    .edit_identity(&target_id(*target), |cur| edited(cur, None, &[], &[], true))
                    .is_ok()
                {
                    self.model.oob_clear(*target, None, Utc::now());
                }
                self.touch(*target);
            }
            Op::OobGrant { uai } => {
                if let Some(p) = self.uai_principal(*uai) {
                    // The same assignment made before (seed 11): Azure refuses it with
                    // RoleAssignmentExists, and the writer's earlier one is the one to keep.
                    match self.sim.create_role_assignment(
                        &rg_scope(),
                        None,
                        MONITORING_METRICS_PUBLISHER,
                        &p,
                    ) {
                        Ok(a) => {
                            if let Some(n) = a["name"].as_str() {
                                self.oob_grants.insert(n.to_ascii_lowercase());
                            }
                        }
                        Err(e) if e.to_string().contains("RoleAssignmentExists") => {}
                        Err(e) => return Err(anyhow!("an out-of-band role assignment: {e}")),
                    }
                }
            }
            Op::OobGroupMember { uai } => {
                if let Some(p) = self.uai_principal(*uai) {
                    self.sim.add_group_member(&group_id(GROUPS - 1), &p);
                }
            }
            Op::RecreateUai { uai } => {
                let id = uai_id(*uai);
                self.sim.delete_user_assigned_identity(&id);
                self.sim
                    .create_user_assigned_identity(&id)
                    .map_err(|e| anyhow!("re-creating {id}: {e}"))?;
                self.touch_all();
            }
            Op::DeleteVm { target } => {
                if *target == DELETABLE_TARGET && self.sim.delete_resource(&target_id(*target)) {
                    self.model.oob_clear(*target, Some(true), Utc::now());
                }
                self.touch(*target);
            }
            Op::RecreateVm { target } => {
                if self.model.targets[*target].deleted {
                    self.sim
                        .create_compute_resource(&target_id(*target), "westeurope")
                        .map_err(|e| anyhow!("re-creating t{target}: {e}"))?;
                    self.model.oob_clear(*target, Some(false), Utc::now());
                }
                self.touch(*target);
            }
            Op::Fault(f) => self.fault(f),
            Op::KillLeader { restart_ms } => {
                let mut leader = None;
                for (i, rep) in self.replicas.iter().enumerate() {
                    if let Some(m) = rep.metrics().await
                        && metric_sum(&m, "vmidentity_leader") >= 1.0
                    {
                        leader = Some(i);
                    }
                }
                match leader {
                    Some(i) => {
                        self.replicas[i].kill();
                        self.replicas[i].restart_at =
                            Some(Instant::now() + Duration::from_millis(*restart_ms));
                    }
                    None => {
                        *self
                            .out
                            .skipped
                            .entry("kill-leader: no leader yet")
                            .or_default() += 1
                    }
                }
                self.touch_all();
            }
            Op::RestartApiserver => {
                if self.env.apiserver_is_ours() {
                    restart_apiserver().await?;
                } else {
                    *self
                        .out
                        .skipped
                        .entry("restart-apiserver-etcd")
                        .or_default() += 1;
                }
                self.touch_all();
            }
            Op::Quiesce => return self.quiesce(step).await,
        }
        Ok(None)
    }

    fn fault(&mut self, f: &Fault) {
        let rule = match *f {
            Fault::Throttle { retry_after, secs } => {
                Some(FaultRule::throttle(retry_after).for_ms(secs * 1000))
            }
            Fault::ServerError { code, secs } => {
                Some(FaultRule::status(code).method("PATCH").for_ms(secs * 1000))
            }
            Fault::Slow { ms, secs } => Some(FaultRule::delay(ms).for_ms(secs * 1000)),
            Fault::Pause { secs } => Some(FaultRule::delay(secs * 1000).for_ms(secs * 1000)),
            Fault::Precondition { times } => Some(
                FaultRule::status(412)
                    .method("PATCH")
                    .path_contains("/providers/Microsoft.Compute/")
                    .times(times),
            ),
            Fault::TokenOutage { secs } => {
                Some(FaultRule::status(503).token_endpoints().for_ms(secs * 1000))
            }
            Fault::PrincipalNotFound { times } => Some(
                FaultRule::error(
                    400,
                    "PrincipalNotFound",
                    "Principal does not exist in the directory. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay.",
                )
                .method("PUT")
                .path_contains("/providers/Microsoft.Authorization/roleAssignments/")
                .times(times),
            ),
            Fault::FailLro { times } => {
                self.sim.fail_next_operations(times);
                None
            }
            Fault::SlowLro { ms, polls } => {
                self.sim
                    .set_min_operation_duration(Duration::from_millis(ms));
                self.sim.set_lro_polls(polls);
                None
            }
        };
        if let Some(r) = rule {
            self.sim.add_fault(r);
        }
        self.touch_all();
    }

    fn uai_principal(&self, u: usize) -> Option<String> {
        self.sim
            .user_assigned_identity(&uai_id(u))
            .and_then(|v| v["properties"]["principalId"].as_str().map(str::to_string))
            .filter(|p| !p.is_empty())
    }

    /// Deletions of role assignments and group memberships nobody recorded, in `log`.
    fn check_grant_removals(&self, log: &[RecordedRequest]) -> Vec<Violation> {
        let g = group_id(GROUPS - 1);
        log.iter()
            .filter(|e| e.method == "DELETE" && (200..300).contains(&e.status))
            .filter(|e| {
                let p = e.path.to_ascii_lowercase();
                (p.contains("/roleassignments/")
                    && p.rsplit('/')
                        .next()
                        .is_some_and(|n| self.oob_grants.contains(n)))
                    || p.contains(&format!("/groups/{g}/members/"))
            })
            .map(|e| Violation {
                kind: "removed-unrecorded-grant",
                message: format!(
                    "{} {} ({}): an out-of-band role assignment or membership no object asked for",
                    e.method, e.path, e.status
                ),
                target: None,
                at: parse_time(&e.timestamp),
            })
            .collect()
    }

    /// Some replica holds the lease and has nothing in flight or queued.
    async fn leader_idle(&self) -> bool {
        for r in &self.replicas {
            if let Some(m) = r.metrics().await
                && metric_sum(&m, "vmidentity_leader") >= 1.0
            {
                return metric_sum(&m, "vmidentity_reconciles_in_flight") == 0.0
                    && metric_sum(&m, "vmidentity_queue_depth") == 0.0;
            }
        }
        false
    }

    async fn total_reconciles(&mut self) -> f64 {
        let mut sum = 0.0;
        for r in &mut self.replicas {
            sum += r.reconciles().await;
        }
        sum
    }

    /// Clears the faults, waits for convergence and checks the model.
    async fn quiesce(&mut self, step: usize) -> Result<Option<Failure>> {
        self.out.quiesces += 1;
        self.sim.clear_faults();
        self.sim.set_min_operation_duration(Duration::ZERO);
        self.sim.set_lro_polls(0);
        self.sim.fail_next_operations(0);
        for r in &mut self.replicas {
            if r.proc.is_none() {
                r.restart_at = Some(Instant::now());
            }
        }
        let started = Instant::now();
        let mut violations;
        // Converged = the model holds, a leader is idle (nothing in flight or queued), and
        // both stay so for STABLE with no write meanwhile: statuses written before a leader
        // change or before the last edits were seen must not pass for convergence.
        let mut stable: Option<(Instant, usize)> = None;
        loop {
            self.maintain()?;
            violations = self.converged().await?;
            let idle = self.leader_idle().await;
            if !idle && violations.is_empty() {
                violations.push(Violation {
                    kind: "controller-busy",
                    message: "no leader, or the leader still has work in flight or queued".into(),
                    target: None,
                    at: None,
                });
            }
            let writes = self.sim.counters();
            let writes = writes.writes + writes.authorization_writes + writes.graph_writes;
            if violations.is_empty() {
                match stable {
                    Some((since, w)) if w == writes as usize => {
                        if since.elapsed() >= STABLE {
                            break;
                        }
                    }
                    _ => stable = Some((Instant::now(), writes as usize)),
                }
            } else {
                stable = None;
            }
            if started.elapsed() > CONVERGE_TIMEOUT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.out.converge_secs.push(started.elapsed().as_secs_f64());
        // The invariants of every moment, on what the controllers sent meanwhile.
        let log = self.sim.requests();
        let mut always = self.model.check_log(
            &log[self.cursor.min(log.len())..],
            &uai_index,
            &target_index,
        );
        always.extend(self.check_grant_removals(&log[self.cursor.min(log.len())..]));
        always.append(&mut self.pending);
        self.cursor = log.len();
        if !violations.is_empty() {
            for v in &mut violations {
                v.message = format!("not converged after {:?}: {}", CONVERGE_TIMEOUT, v.message);
            }
        }
        always.append(&mut violations);
        if !always.is_empty() {
            return Ok(Some(self.failure(step, always, &log)));
        }
        // Bounded work over the period: identity writes per target.
        let mut writes = [0u64; TARGETS];
        for e in &log[self.period_log.min(log.len())..] {
            if e.identity_after.is_some()
                && (200..300).contains(&e.status)
                && let Some(t) = e.resource_id.as_deref().and_then(target_index)
            {
                writes[t] += 1;
            }
        }
        self.out.controller_writes += writes.iter().sum::<u64>();
        let mut bad = Vec::new();
        for (t, &n) in writes.iter().enumerate() {
            self.out.max_writes_per_target_period = self.out.max_writes_per_target_period.max(n);
            // Each operation may cost a write or two (a dead entry's repair is two), and a
            // kill or a 412 one more.
            let bound = 3 + 3 * self.period_touches[t];
            if n > bound {
                bad.push(Violation {
                    kind: "too-many-writes",
                    message: format!(
                        "t{t}: {} identity writes in one period for {} operation(s) touching it (bound {bound})",
                        n, self.period_touches[t]
                    ),
                    target: Some(t),
                    at: None,
                });
            }
        }
        // Quiet: nothing written, not too many reconciles, the same converged state.
        let objects = self.model.objects.len().max(1) as f64;
        let rec0 = self.total_reconciles().await;
        let minutes = self.period_started.elapsed().as_secs_f64() / 60.0;
        let period_rate = (rec0 - self.period_reconciles) / objects / minutes.max(1.0 / 60.0);
        self.out.max_period_rate = self.out.max_period_rate.max(period_rate);
        if period_rate > MAX_PERIOD_RECONCILES_PER_OBJECT_MINUTE && minutes > 0.25 {
            bad.push(Violation {
                kind: "hot-loop",
                message: format!(
                    "{period_rate:.1} reconciles per object per minute over the period (bound {MAX_PERIOD_RECONCILES_PER_OBJECT_MINUTE})"
                ),
                target: None,
                at: None,
            });
        }
        let quiet_from = log.len();
        self.pause(QUIET).await?;
        let rec1 = self.total_reconciles().await;
        let quiet_rate = (rec1 - rec0) / objects / (QUIET.as_secs_f64() / 60.0);
        self.out.max_quiet_rate = self.out.max_quiet_rate.max(quiet_rate);
        if quiet_rate > MAX_QUIET_RECONCILES_PER_OBJECT_MINUTE {
            bad.push(Violation {
                kind: "hot-loop",
                message: format!(
                    "{quiet_rate:.1} reconciles per object per minute while nothing changed (bound {MAX_QUIET_RECONCILES_PER_OBJECT_MINUTE})"
                ),
                target: None,
                at: None,
            });
        }
        let log = self.sim.requests();
        for e in &log[quiet_from.min(log.len())..] {
            let write = e.method != "GET" && (200..300).contains(&e.status);
            let what = e.identity_after.is_some()
                || e.path.contains("roleAssignments")
                || e.path.contains("/members/");
            if write && what {
                bad.push(Violation {
                    kind: "write-while-quiet",
                    message: format!(
                        "{} {} ({}) after convergence, with nothing changed",
                        e.method, e.path, e.status
                    ),
                    target: e.resource_id.as_deref().and_then(target_index),
                    at: e.applied_at.as_deref().and_then(parse_time),
                });
            }
        }
        bad.extend(self.model.check_log(
            &log[self.cursor.min(log.len())..],
            &uai_index,
            &target_index,
        ));
        bad.extend(self.check_grant_removals(&log[self.cursor.min(log.len())..]));
        bad.append(&mut self.pending);
        self.cursor = log.len();
        bad.extend(self.converged().await?);
        for r in &mut self.replicas {
            if let Some(p) = &r.proc {
                r.hwm_kib = r.hwm_kib.max(hwm_kib(p.pid));
            }
            self.out.max_hwm_kib = self.out.max_hwm_kib.max(r.hwm_kib);
            if r.hwm_kib > MAX_RSS_KIB {
                bad.push(Violation {
                    kind: "memory",
                    message: format!(
                        "replica {} VmHWM {} KiB (bound {MAX_RSS_KIB} KiB) at {} objects",
                        r.identity,
                        r.hwm_kib,
                        self.model.objects.len()
                    ),
                    target: None,
                    at: None,
                });
            }
        }
        if !bad.is_empty() {
            return Ok(Some(self.failure(step, bad, &log)));
        }
        println!(
            "  step {step:>4}: quiesce {} passed (converged in {:.1} s; {} objects)",
            self.out.quiesces,
            self.out.converge_secs.last().copied().unwrap_or_default(),
            self.model.objects.values().filter(|o| !o.deleting).count()
        );
        // The next period starts from what was checked.
        self.settle_model();
        self.period_log = log.len();
        self.period_reconciles = self.total_reconciles().await;
        self.period_started = Instant::now();
        self.period_touches = vec![0; TARGETS];
        self.period_journal = self.journal.len();
        Ok(None)
    }

    /// After a passing check: objects gone are forgotten; the system identity and the
    /// identities left as they are now are the next period's starting point.
    fn settle_model(&mut self) {
        self.model.objects.retain(|_, o| !o.deleting);
        for t in 0..TARGETS {
            let Some(ident) = self.sim.identity_of(&target_id(t)) else {
                continue;
            };
            let keys = uai_keys(&ident);
            let tm = &mut self.model.targets[t];
            tm.system = Some(has_system(&ident));
            tm.ambiguous
                .retain(|u| keys.contains(&uai_id(*u).to_ascii_lowercase()));
        }
    }

    /// Every object Ready at its generation (or Stalled as predicted), every target as the
    /// model derives it, no finalizer left on a deleted object. Empty when converged.
    async fn converged(&mut self) -> Result<Vec<Violation>> {
        let mut out = Vec::new();
        let mut live: BTreeMap<(usize, String), Value> = BTreeMap::new();
        for (ns, ns_name) in NAMESPACES.iter().enumerate() {
            let api = self.env.api(ns);
            let lp = kube::api::ListParams::default();
            let list = retry_kube("list", || api.list(&lp))
                .await?
                .map(|l| l.items)
                .unwrap_or_default();
            for o in list {
                let v = serde_json::to_value(&o).unwrap_or(Value::Null);
                let name = o.metadata.name.clone().unwrap_or_default();
                if o.metadata.deletion_timestamp.is_some() {
                    out.push(Violation {
                        kind: "finalizer-left",
                        message: format!(
                            "{}/{name} is deleted but still there (finalizers {:?})",
                            ns_name, o.metadata.finalizers
                        ),
                        target: None,
                        at: None,
                    });
                }
                live.insert((ns, name), v);
            }
        }
        for t in 0..TARGETS {
            let tm = self.model.targets[t].clone();
            let objs: Vec<(&(usize, String), &super::model::Obj)> = self
                .model
                .objects
                .iter()
                .filter(|(_, o)| o.target == t && !o.deleting)
                .collect();
            let state = |k: &(usize, String)| -> (bool, Option<String>, String) {
                let Some(v) = live.get(k) else {
                    return (false, None, "missing".into());
                };
                let gen_ok = v["status"]["observedGeneration"] == v["metadata"]["generation"];
                let conds = v["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let cond = |ty: &str| {
                    conds
                        .iter()
                        .find(|c| c["type"] == ty && c["status"] == "True")
                        .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
                };
                let ready = gen_ok && cond("Ready").is_some();
                let stalled = if gen_ok { cond("Stalled") } else { None };
                let summary = format!(
                    "gen {} observed {} conditions {}",
                    v["metadata"]["generation"],
                    v["status"]["observedGeneration"],
                    conds
                        .iter()
                        .map(|c| format!(
                            "{}={}({})",
                            c["type"].as_str().unwrap_or(""),
                            c["status"].as_str().unwrap_or(""),
                            c["reason"].as_str().unwrap_or("")
                        ))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                (ready, stalled, summary)
            };
            let name = |k: &(usize, String)| format!("{}/{}", NAMESPACES[k.0], k.1);
            if tm.deleted {
                for (k, _) in &objs {
                    let (_, stalled, summary) = state(k);
                    if stalled.as_deref() != Some("TargetNotFound") {
                        out.push(Violation {
                            kind: "status",
                            message: format!(
                                "{} on deleted t{t}: expected Stalled TargetNotFound, {summary}",
                                name(k)
                            ),
                            target: Some(t),
                            at: None,
                        });
                    }
                }
                continue;
            }
            let conflict = |set: &[&super::model::Obj]| {
                (set.len() > 1 && set.iter().any(|o| o.spec.exact))
                    || (set.iter().any(|o| o.spec.system == Some(true))
                        && set.iter().any(|o| o.spec.system == Some(false)))
            };
            let all: Vec<&super::model::Obj> = objs.iter().map(|(_, o)| *o).collect();
            let in_conflict = conflict(&all);
            let mut ready: Vec<&super::model::Obj> = Vec::new();
            let mut refused_uais: BTreeSet<usize> = BTreeSet::new();
            for (k, o) in &objs {
                let (is_ready, stalled, summary) = state(k);
                if is_ready {
                    ready.push(o);
                    continue;
                }
                let conflict_refusal = matches!(stalled.as_deref(), Some("Conflict"));
                if in_conflict && conflict_refusal {
                    // Refused: nothing is written for it, so what it holds (its ownership
                    // record, from before the edit that made the conflict) stays put.
                    if let Some(held) = live.get(*k).and_then(|v| {
                        v["status"]["applied"]["userAssignedIdentities"]
                            .as_array()
                            .cloned()
                    }) {
                        refused_uais
                            .extend(held.iter().filter_map(|u| u.as_str().and_then(uai_index)));
                    }
                    continue;
                }
                out.push(Violation {
                    kind: "status",
                    message: format!(
                        "{} on t{t}: expected Ready{}, {summary}",
                        name(k),
                        if in_conflict {
                            " or Stalled Conflict"
                        } else {
                            ""
                        }
                    ),
                    target: Some(t),
                    at: None,
                });
            }
            if conflict(&ready) {
                out.push(Violation {
                    kind: "status",
                    message: format!("t{t}: conflicting objects are all Ready"),
                    target: Some(t),
                    at: None,
                });
            }
            let Some(ident) = self.sim.identity_of(&target_id(t)) else {
                continue;
            };
            let keys = uai_keys(&ident);
            let principal_of = |u: usize| {
                ident["userAssignedIdentities"]
                    .as_object()
                    .and_then(|m| {
                        m.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&uai_id(u)))
                            .map(|(_, v)| v["principalId"].as_str().unwrap_or("").to_string())
                    })
                    .unwrap_or_default()
            };
            let present = |u: usize| keys.contains(&uai_id(u).to_ascii_lowercase());
            let must: BTreeSet<usize> = ready
                .iter()
                .flat_map(|o| o.spec.uais.iter().copied())
                .collect();
            let exact = ready.iter().any(|o| o.spec.exact);
            let live_set: BTreeSet<usize> = (0..UAIS).filter(|u| present(*u)).collect();
            let mut diff = Vec::new();
            for u in &must {
                if !present(*u) {
                    diff.push(format!("uai-{u} missing (an object lists it)"));
                } else if principal_of(*u).is_empty() {
                    diff.push(format!(
                        "uai-{u} is a dead entry (its identity was re-created)"
                    ));
                }
            }
            for u in &live_set {
                if must.contains(u) {
                    continue;
                }
                let allowed = !exact
                    && (tm.unowned.contains(u)
                        || tm.ambiguous.contains(u)
                        || refused_uais.contains(u));
                if !allowed {
                    diff.push(format!(
                        "uai-{u} present, but no Ready object lists it and nobody else attached it"
                    ));
                }
            }
            if !exact {
                for u in &tm.unowned {
                    if !present(*u) {
                        diff.push(format!(
                            "uai-{u} (attached out of band, never applied by an object) is gone"
                        ));
                    }
                }
            }
            let sys = has_system(&ident);
            let trues = ready.iter().any(|o| o.spec.system == Some(true));
            let falses = ready.iter().any(|o| o.spec.system == Some(false));
            let want_sys = if trues {
                Some(true)
            } else if falses {
                Some(false)
            } else {
                tm.system
            };
            if let Some(w) = want_sys
                && w != sys
            {
                diff.push(format!("system identity {sys}, expected {w}"));
            }
            // Each Ready object's grants, for the identities' current principals.
            let system_principal = ident["principalId"]
                .as_str()
                .filter(|p| !p.is_empty())
                .map(str::to_string);
            let principal = |i: &Option<usize>| match i {
                None => system_principal.clone(),
                Some(u) => self.uai_principal(*u),
            };
            let who = |i: &Option<usize>| i.map_or("system".to_string(), |u| format!("uai-{u}"));
            for o in &ready {
                for r in &o.spec.roles {
                    let Some(p) = principal(r) else {
                        diff.push(format!("Reader for {}: no principal", who(r)));
                        continue;
                    };
                    let found = self.sim.role_assignments_of(&p).iter().any(|a| {
                        let props = &a["properties"];
                        props["roleDefinitionId"]
                            .as_str()
                            .is_some_and(|d| d.to_ascii_lowercase().ends_with(READER))
                            && props["scope"].as_str().is_some_and(|sc| {
                                sc.trim_end_matches('/').eq_ignore_ascii_case(&rg_scope())
                            })
                    });
                    if !found {
                        diff.push(format!("Reader for {} ({p}) missing", who(r)));
                    }
                }
                for (i, g) in &o.spec.groups {
                    let Some(p) = principal(i) else {
                        diff.push(format!("g{g} membership of {}: no principal", who(i)));
                        continue;
                    };
                    let member = self
                        .sim
                        .group_members(&group_id(*g))
                        .unwrap_or_default()
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(&p));
                    if !member {
                        diff.push(format!("{} ({p}) not in g{g}", who(i)));
                    }
                }
            }
            if !diff.is_empty() {
                let objects: Vec<String> = objs
                    .iter()
                    .map(|(k, o)| {
                        let v = live.get(k).cloned().unwrap_or(Value::Null);
                        format!(
                            "{} {{{}}} applied {}",
                            name(k),
                            o.spec,
                            short(&v["status"]["applied"])
                        )
                    })
                    .collect();
                out.push(Violation {
                    kind: "target",
                    message: format!(
                        "t{t}: {}; live: {}; model: unowned {:?} ambiguous {:?} system {:?}; objects: {}",
                        diff.join("; "),
                        short_identity(&ident),
                        tm.unowned,
                        tm.ambiguous,
                        tm.system,
                        objects.join("; ")
                    ),
                    target: Some(t),
                    at: None,
                });
            }
        }
        Ok(out)
    }

    fn failure(&self, step: usize, violations: Vec<Violation>, log: &[RecordedRequest]) -> Failure {
        let first = violations.first();
        let target = first.and_then(|v| v.target);
        let at = first.and_then(|v| v.at);
        let key = target.map(|t| target_id(t).to_ascii_lowercase());
        let mut lines: Vec<String> = Vec::new();
        for e in log
            .iter()
            .filter(|e| e.method != "GET" || e.resource_id.is_some())
        {
            if let Some(k) = &key
                && e.resource_id.as_deref() != Some(k.as_str())
            {
                continue;
            }
            let when = e
                .applied_at
                .as_deref()
                .or(Some(e.timestamp.as_str()))
                .and_then(parse_time);
            if let (Some(at), Some(w)) = (at, when)
                && (w < at - chrono::Duration::seconds(15) || w > at + chrono::Duration::seconds(5))
            {
                continue;
            }
            lines.push(format!(
                "  {} {} {} {} if-match={:?} body={} before={} after={}",
                e.timestamp,
                e.method,
                e.path.rsplit('/').next().unwrap_or(""),
                e.status,
                e.if_match,
                e.body.as_ref().map(Value::to_string).unwrap_or_default(),
                e.identity_before
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default(),
                e.identity_after
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default(),
            ));
        }
        let skip = lines.len().saturating_sub(40);
        let period = self.journal[self.period_journal.min(self.journal.len())..].join("\n  ");
        Failure {
            step,
            violations,
            log_excerpt: format!(
                "{}\nthe operations of the failing period:\n  {period}",
                lines[skip..].join("\n")
            ),
        }
    }
}

/// A JSON value with every ARM id shortened to its last segment.
fn short(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::new();
    for part in text.split('"') {
        if part.starts_with("/subscriptions/") {
            out.push_str(part.rsplit('/').next().unwrap_or(part));
        } else {
            out.push_str(part);
        }
        out.push('"');
    }
    out.pop();
    out
}

/// `type [uai-1, uai-2†]` († a dead entry: no principal).
fn short_identity(v: &Value) -> String {
    if v.is_null() {
        return "(gone)".into();
    }
    let uais: Vec<String> = v["userAssignedIdentities"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, e)| {
                    let name = k.rsplit('/').next().unwrap_or(k).to_string();
                    if e["principalId"].as_str().is_some_and(|p| !p.is_empty()) {
                        name
                    } else {
                        format!("{name}†")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} [{}]",
        v["type"].as_str().unwrap_or("?"),
        uais.join(", ")
    )
}

/// The block an out-of-band writer leaves (the shape `SimHandle::set_identity` takes).
fn edited(
    cur: &Value,
    system: Option<bool>,
    add: &[&str],
    remove: &[&str],
    drop_all: bool,
) -> Value {
    let mut sys = !drop_all && has_system(cur);
    let mut uais: Vec<String> = if drop_all {
        Vec::new()
    } else {
        cur["userAssignedIdentities"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    if let Some(s) = system {
        sys = s;
    }
    uais.retain(|u| !remove.iter().any(|r| r.eq_ignore_ascii_case(u)));
    for a in add {
        if !uais.iter().any(|u| u.eq_ignore_ascii_case(a)) {
            uais.push((*a).to_string());
        }
    }
    let ty = match (sys, !uais.is_empty()) {
        (true, true) => "SystemAssigned, UserAssigned",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (false, false) => "None",
    };
    let mut out = json!({"type": ty});
    if sys && let Some(p) = cur["principalId"].as_str() {
        out["principalId"] = json!(p);
    }
    if !uais.is_empty() {
        out["userAssignedIdentities"] = json!(uais);
    }
    out
}

/// Stops kube-apiserver and etcd and starts them again (same data, same ports).
async fn restart_apiserver() -> Result<()> {
    let dir = kit::repo_root().join("tests/apiserver");
    let down = tokio::process::Command::new("bash")
        .arg(dir.join("kube-down.sh"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .context("kube-down.sh")?;
    if !down.success() {
        return Err(anyhow!("kube-down.sh failed ({down})"));
    }
    let up = tokio::process::Command::new("bash")
        .arg(dir.join("kube-up.sh"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .context("kube-up.sh")?;
    if !up.success() {
        return Err(anyhow!("kube-up.sh failed ({up})"));
    }
    Ok(())
}
