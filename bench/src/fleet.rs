//! `bench fleet`: the engine over a fleet, against the ARM simulator with ARM's and Compute's
//! throttling switched on, in four scenarios (cold converge, steady state, 1 % drift, one
//! UAI added everywhere), side by side with what the usual strategies would cost.
//!
//! It drives the same code the controller runs: `engine::apply` for targets to reconcile
//! (one GET, at most one PATCH each) and `ArmClient::query_identities` + `fleet::scan` for
//! the Resource Graph resync. Numbers are printed, never asserted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmidentity::engine;
use vmidentity_azure::client::RateLimits;
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_planner::{DesiredObject, ObjectRef, RawSpec, fleet, group_by_target};
use vmidentity_simulator::{LroMode, SimConfig, SimHandle, ThrottleConfig, WorldSeed};

const SUB: &str = "00000000-0000-0000-0000-00000000f1ee";
const TOKEN: &str = "sim-token";

fn uai(i: usize) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{i}"
    )
}

fn target(i: usize, vms: usize) -> String {
    if i < vms {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-{}/providers/Microsoft.Compute/virtualMachines/vm-{i}",
            i % 100
        )
    } else {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-aks-{}/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool-{i}-vmss",
            i % 10
        )
    }
}

/// Options of the fleet benchmark.
pub struct FleetArgs {
    pub vms: usize,
    pub vmss: usize,
    pub objects: usize,
    /// Refill ARM's and Compute's buckets (and the client's) this many times faster to keep
    /// the run short (bucket sizes stay real); rates are reported against the scaled budget.
    pub scale: f64,
    pub concurrency: usize,
}

fn world(targets: usize, vms: usize, pool: usize) -> String {
    let mut s = String::with_capacity(targets * 160);
    s.push_str("userAssignedIdentities:\n");
    for i in 0..pool {
        s.push_str(&format!("  - id: {}\n", uai(i)));
    }
    s.push_str("virtualMachines:\n");
    for i in 0..vms {
        s.push_str(&format!("  - id: {}\n", target(i, vms)));
    }
    s.push_str("virtualMachineScaleSets:\n");
    for i in vms..targets {
        s.push_str(&format!("  - id: {}\n", target(i, vms)));
    }
    s
}

fn objects(targets: usize, vms: usize, n: usize, pool: usize) -> Vec<DesiredObject> {
    (0..n)
        .filter_map(|k| {
            let t = k % targets;
            let raw = RawSpec {
                target: target(t, vms),
                user_assigned_identities: vec![uai((t + k / targets) % pool)],
                ..Default::default()
            };
            let spec = raw.validate().ok()?;
            Some(DesiredObject::new(
                ObjectRef::new(format!("team-{}", t % 50), format!("o-{k}")),
                spec,
            ))
        })
        .collect()
}

fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:") / 1024, kb("VmHWM:") / 1024)
}

struct Row {
    name: &'static str,
    reads: u64,
    polls: u64,
    queries: u64,
    writes: u64,
    throttled: u64,
    wall: Duration,
    writes_per_sec: f64,
    budget: f64,
}

fn carry(objs: &[DesiredObject], results: &[engine::TargetResult]) -> Vec<DesiredObject> {
    let mut by: BTreeMap<ObjectRef, vmidentity_planner::Applied> = BTreeMap::new();
    for r in results.iter().filter(|r| r.error.is_none()) {
        for o in &r.objects {
            if let Some(a) = r.applied(o) {
                by.insert(o.clone(), a);
            }
        }
    }
    objs.iter()
        .map(|o| match by.get(&o.object) {
            Some(a) => o.clone().with_applied(a.clone()),
            None => o.clone(),
        })
        .collect()
}

async fn converge(
    exec: &Executor,
    objs: &[DesiredObject],
    concurrency: usize,
) -> (Vec<engine::TargetResult>, usize) {
    let results = engine::apply(exec, objs.to_vec(), concurrency).await;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    (results, failed)
}

fn snapshot(sim: &SimHandle) -> (u64, u64, u64, u64, u64) {
    let c = sim.counters();
    (
        c.reads,
        c.resource_graph_queries,
        c.writes,
        c.throttled,
        c.polls,
    )
}

/// Runs the four scenarios and prints the table.
pub async fn run(a: FleetArgs) -> Result<(), String> {
    let targets = a.vms + a.vmss;
    let pool = 50;
    println!(
        "fleet benchmark: {} VMs + {} VMSS = {targets} targets, {} objects, ARM + Compute throttling on (limits x{})",
        a.vms, a.vmss, a.objects, a.scale
    );
    let started = Instant::now();
    let seed = WorldSeed::from_yaml_str(&world(targets, a.vms, pool)).map_err(|e| e.to_string())?;
    let sim = vmidentity_simulator::start(SimConfig {
        seed,
        lro: LroMode::Async200,
        lro_polls: 0,
        max_logged_requests: 0,
        throttling: Some(ThrottleConfig::default().accelerated(a.scale)),
        // Resource Graph: a page per request; its per-user quota is its own.
        resource_graph_quota: 1000,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    println!("  world seeded in {:.1} s", started.elapsed().as_secs_f64());
    let client = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            max_inline_wait: Duration::from_secs(60),
            lro_poll_interval: Duration::from_millis(10),
            rate_limits: Some(RateLimits::accelerated(a.scale)),
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new(TOKEN)),
    )
    .map_err(|e| e.to_string())?;
    let exec = Executor::new(client.clone());
    // The write budget for VM/VMSS PATCHes: Compute's "Update" policy per subscription
    // (500 a minute), below ARM's 10 writes a second.
    let budget = a.scale * 500.0 / 60.0;
    let mut rows = Vec::new();

    let mut objs = objects(targets, a.vms, a.objects, pool);
    // 1. Cold converge: every target needs a PATCH.
    let before = snapshot(&sim);
    let t0 = Instant::now();
    let (results, failed) = converge(&exec, &objs, a.concurrency).await;
    let wall = t0.elapsed();
    let after = snapshot(&sim);
    if failed > 0 {
        println!(
            "  cold converge: {failed} targets failed (first: {:?})",
            results
                .iter()
                .find_map(|r| r.error.as_ref().map(ToString::to_string))
        );
    }
    objs = carry(&objs, &results);
    let writes = after.2 - before.2;
    // The first writes ride the buckets' burst; the rate that matters is the sustained one.
    let burst = 1500.0_f64.min(writes as f64);
    let sustained = (writes as f64 - burst) / wall.as_secs_f64().max(0.001);
    rows.push(Row {
        name: "cold converge",
        reads: after.0 - before.0,
        polls: after.4 - before.4,
        queries: after.1 - before.1,
        writes,
        throttled: after.3 - before.3,
        wall,
        writes_per_sec: sustained,
        budget,
    });

    // 2. Steady state: one Resource Graph pass, nothing drifted.
    let groups = group_by_target(objs.clone());
    let subs = vec![SUB.to_string()];
    let before = snapshot(&sim);
    let t0 = Instant::now();
    let (rowsg, pages) = client
        .query_identities(&subs)
        .await
        .map_err(|e| e.to_string())?;
    let scan = fleet::scan(
        &groups,
        &rowsg
            .into_iter()
            .map(|r| (r.id, r.identity))
            .collect::<Vec<_>>(),
    );
    let to_reconcile: Vec<DesiredObject> = objs
        .iter()
        .filter(|o| scan.to_reconcile().contains(o.spec.target.key()))
        .cloned()
        .collect();
    let (results, _) = converge(&exec, &to_reconcile, a.concurrency).await;
    objs = carry(&objs, &results);
    let after = snapshot(&sim);
    println!(
        "  steady state: {pages} Resource Graph pages, {} drifted, {} missing",
        scan.drifted.len(),
        scan.missing.len()
    );
    rows.push(Row {
        name: "steady state (resync)",
        reads: after.0 - before.0,
        polls: after.4 - before.4,
        queries: after.1 - before.1,
        writes: after.2 - before.2,
        throttled: after.3 - before.3,
        wall: t0.elapsed(),
        writes_per_sec: 0.0,
        budget,
    });

    // 3. 1 % drift out of band: someone strips the identity of every 100th target.
    for i in (0..targets).step_by(100) {
        sim.set_identity(&target(i, a.vms), json!({"type": "None"}))
            .map_err(|e| e.to_string())?;
    }
    let before = snapshot(&sim);
    let t0 = Instant::now();
    let (rowsg, _) = client
        .query_identities(&subs)
        .await
        .map_err(|e| e.to_string())?;
    let scan = fleet::scan(
        &groups,
        &rowsg
            .into_iter()
            .map(|r| (r.id, r.identity))
            .collect::<Vec<_>>(),
    );
    let keys = scan.to_reconcile();
    let to_reconcile: Vec<DesiredObject> = objs
        .iter()
        .filter(|o| keys.contains(o.spec.target.key()))
        .cloned()
        .collect();
    let (results, _) = converge(&exec, &to_reconcile, a.concurrency).await;
    objs = carry(&objs, &results);
    let after = snapshot(&sim);
    rows.push(Row {
        name: "1 % drift repaired",
        reads: after.0 - before.0,
        polls: after.4 - before.4,
        queries: after.1 - before.1,
        writes: after.2 - before.2,
        throttled: after.3 - before.3,
        wall: t0.elapsed(),
        writes_per_sec: 0.0,
        budget,
    });

    // 4. One more UAI on every target (every object edited: the controller reconciles each
    //    changed object's target).
    for o in objs.iter_mut() {
        if let Ok(extra) = vmidentity_planner::ArmId::parse_uai(&uai(pool - 1))
            && !o.spec.user_assigned.contains(&extra)
        {
            o.spec.user_assigned.push(extra);
        }
    }
    let before = snapshot(&sim);
    let t0 = Instant::now();
    let (results, failed) = converge(&exec, &objs, a.concurrency).await;
    let wall = t0.elapsed();
    let after = snapshot(&sim);
    if failed > 0 {
        println!("  one UAI added: {failed} targets failed");
    }
    let _ = carry(&objs, &results);
    let writes = after.2 - before.2;
    let wall_rate = (writes as f64 - 1500.0_f64.min(writes as f64)) / wall.as_secs_f64().max(0.001);
    println!(
        "  one UAI added everywhere: {} targets changed",
        results.iter().filter(|r| r.writes() > 0).count()
    );
    rows.push(Row {
        name: "one UAI added everywhere",
        reads: after.0 - before.0,
        polls: after.4 - before.4,
        queries: after.1 - before.1,
        writes,
        throttled: after.3 - before.3,
        wall,
        writes_per_sec: wall_rate,
        budget,
    });

    let c = sim.counters();
    println!(
        "  429s by bucket: ARM reads {}, ARM writes {}, Compute {}",
        c.throttled_reads, c.throttled_writes, c.throttled_compute
    );
    let (rss_now, rss_peak) = rss();
    let stats = client.stats();
    println!();
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>24}",
        "scenario",
        "ARM GETs",
        "LRO polls",
        "ARG pages",
        "writes",
        "429s",
        "wall",
        "writes/s vs budget"
    );
    for r in &rows {
        let rate = if r.writes_per_sec > 0.0 {
            format!(
                "{:.1}/{:.1} ({:.0} %)",
                r.writes_per_sec,
                r.budget,
                100.0 * r.writes_per_sec / r.budget
            )
        } else {
            "-".to_string()
        };
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8.1}s {:>24}",
            r.name,
            r.reads,
            r.polls,
            r.queries,
            r.writes,
            r.throttled,
            r.wall.as_secs_f64(),
            rate
        );
    }
    println!();
    println!(
        "peers' strategy in the same world, per resync of {targets} targets (nothing changed):"
    );
    let reads_budget = a.scale * 25.0;
    println!(
        "  one GET per target:  {targets} ARM reads ({:.0} s of the read budget)  vs vmidentity: {} Resource Graph pages, 0 GETs",
        targets as f64 / reads_budget,
        rows[1].queries
    );
    println!(
        "  one PUT per target:  {targets} ARM writes ({:.0} s of the write budget) vs vmidentity: {} writes",
        targets as f64 / budget,
        rows[1].writes
    );
    println!();
    println!(
        "client: paced {} requests to stay under the limits, {} retries; bench process RSS {} MiB (peak {} MiB, engine + simulator + {} objects); total {:.0} s",
        stats.paced,
        stats.retries,
        rss_now,
        rss_peak,
        a.objects,
        started.elapsed().as_secs_f64()
    );
    sim.shutdown().await;
    let _ = Value::Null;
    Ok(())
}
