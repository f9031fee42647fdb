//! Phase 2: converge N objects, restart, resync.

use super::*;

#[derive(Default)]
pub(super) struct Pass {
    pub(super) reconciles: f64,
    pub(super) writes: BTreeMap<String, f64>,
    pub(super) arm_reads: u64,
    pub(super) arm_writes: u64,
    /// Resource Graph queries the simulator answered.
    pub(super) arg_queries: u64,
    /// Resource Graph resyncs the controller counted (`vmidentity_fleet_scans_total`).
    pub(super) scans: f64,
    pub(super) secs: f64,
    pub(super) complete: bool,
}

/// A controller restarted with `--resync-mode <mode>`: its start-up pass and one resync.
pub(super) struct ResyncRun {
    pub(super) mode: String,
    /// The controller's --resync-seconds.
    pub(super) period: u64,
    pub(super) restart: Pass,
    pub(super) resync: Pass,
    pub(super) rss: Rss,
    pub(super) error: Option<String>,
}

#[derive(Default)]
pub(super) struct Scale {
    pub(super) n: usize,
    pub(super) created: usize,
    pub(super) create_secs: f64,
    /// First create to the last ARM PATCH (None: not all targets were written in time).
    pub(super) converge_secs: Option<f64>,
    pub(super) arm_writes_reached: u64,
    pub(super) settle_secs: f64,
    pub(super) settled: bool,
    pub(super) ready: Option<usize>,
    pub(super) arm_reads: u64,
    pub(super) arm_writes: u64,
    pub(super) rss: Rss,
    pub(super) cpu_secs: f64,
    /// CPU of the others while converging (first create to idle).
    pub(super) cpu_others: CpuSnap,
    /// Load average when the controller went idle.
    pub(super) load: String,
    pub(super) converge: Pass,
    pub(super) results: BTreeMap<String, f64>,
    pub(super) resyncs: Vec<ResyncRun>,
    pub(super) error: Option<String>,
}

pub(super) async fn scale_phase(b: &Bench, ns: &str, n: usize) -> Scale {
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

pub(super) async fn scale_run(
    b: &Bench,
    ns: &str,
    n: usize,
    sim: &SimHandle,
    out: &mut Scale,
) -> Result<()> {
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
pub(super) fn resync_period(mode: &str, n: usize, requested: u64) -> u64 {
    if mode == "get" {
        requested.max(n.div_ceil(100) as u64)
    } else {
        requested
    }
}

pub(super) fn pass_between(m0: &Prom, m1: &Prom, c0: &Counters, c1: &Counters) -> Pass {
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

pub(super) async fn resync_run(
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
pub(super) async fn wait_scans(
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
pub(super) async fn wait_all_read(
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
