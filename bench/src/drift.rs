//! `bench drift`: drift detection and repair between resyncs on a fleet, against armsim with
//! ARM's and Compute's throttling, Resource Graph's quota and the change feed's ingestion
//! delay on. Time runs `--time-scale` times faster than real time for every clock involved
//! (the simulator's bucket refills, the client's pacing, the feed delay and the poll
//! period); latencies are printed in real-time seconds (measured × scale). Numbers are
//! printed, never asserted.
//!
//! It drives the controller's own code: `operator::changefeed::poll_once` (the feed poll
//! and its bookkeeping), `operator::fleet::scan_targets_with_grants` (the full resync with
//! grants in bulk) and `engine::apply` for the reconciles they trigger (GET, plan, writes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vmidentity::engine;
use vmidentity::operator::changefeed::{now_ms, poll_once};
use vmidentity::operator::fleet::scan_targets_with_grants;
use vmidentity_azure::client::RateLimits;
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_planner::changefeed::{FeedState, RETENTION_MS};
use vmidentity_planner::grants::{assignment_name, role_definition_id};
use vmidentity_planner::model::{RawGroupMembership, RawRoleAssignment};
use vmidentity_planner::{DesiredObject, ObjectRef, RawSpec, group_by_target};
use vmidentity_simulator::{
    ChangeFeedConfig, LroMode, SimConfig, SimHandle, ThrottleConfig, WorldSeed,
};

const SUB: &str = "00000000-0000-0000-0000-00000000d71f";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const BLOB_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const G1: &str = "0f6c5a1e-1111-4c7a-9e21-0d4b5a6c7e81";
const G2: &str = "0f6c5a1e-2222-4c7a-9e21-0d4b5a6c7e82";

pub struct DriftArgs {
    pub vms: usize,
    pub vmss: usize,
    pub time_scale: f64,
    pub poll_secs: f64,
    pub feed_delay_secs: f64,
    pub feed_jitter_secs: f64,
    pub changes: usize,
    pub burst: usize,
    pub concurrency: usize,
}

fn target(i: usize, vms: usize) -> String {
    if i < vms {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-{}/providers/Microsoft.Compute/virtualMachines/vm-{i}",
            i % 100
        )
    } else {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-aks-{}/providers/Microsoft.Compute/virtualMachineScaleSets/pool-{i}-vmss",
            i % 10
        )
    }
}

fn principal(i: usize) -> String {
    format!("5e5e5e5e-0000-4000-8000-{i:012}")
}

fn rg_scope(i: usize, vms: usize) -> String {
    let t = target(i, vms);
    t[..t.find("/providers/").unwrap_or(t.len())].to_string()
}

fn grants_of(i: usize, vms: usize) -> Vec<(String, &'static str)> {
    let rg = rg_scope(i, vms);
    vec![
        (rg.clone(), READER),
        (rg.clone(), BLOB_READER),
        (rg, CONTRIBUTOR),
    ]
}

/// Every target has a system identity; the even ones hold 3 role assignments (at their
/// resource group) and 2 group memberships, already in place.
fn world(targets: usize, vms: usize) -> String {
    let mut s = String::with_capacity(targets * 400);
    let ident = |i: usize| {
        format!(
            "    identity: {{ type: SystemAssigned, principalId: {} }}\n",
            principal(i)
        )
    };
    s.push_str("virtualMachines:\n");
    for i in 0..vms {
        s.push_str(&format!("  - id: {}\n{}", target(i, vms), ident(i)));
    }
    s.push_str("virtualMachineScaleSets:\n");
    for i in vms..targets {
        s.push_str(&format!("  - id: {}\n{}", target(i, vms), ident(i)));
    }
    s.push_str("roleAssignments:\n");
    for i in (0..targets).step_by(2) {
        for (scope, role) in grants_of(i, vms) {
            s.push_str(&format!(
                "  - {{ name: {}, scope: {scope}, roleDefinitionId: {}, principalId: {} }}\n",
                assignment_name(&scope, role, &principal(i)),
                role_definition_id(&scope, role),
                principal(i)
            ));
        }
    }
    let members: Vec<String> = (0..targets).step_by(2).map(principal).collect();
    s.push_str(&format!(
        "groups:\n  - {{ id: {G1}, displayName: readers, members: [{}] }}\n  - {{ id: {G2}, displayName: monitoring, members: [{}] }}\n",
        members.join(", "),
        members.join(", ")
    ));
    s
}

fn objects(targets: usize, vms: usize) -> Vec<DesiredObject> {
    (0..targets)
        .filter_map(|i| {
            let mut raw = RawSpec {
                target: target(i, vms),
                system_assigned: Some(true),
                ..Default::default()
            };
            if i % 2 == 0 {
                raw.role_assignments = grants_of(i, vms)
                    .into_iter()
                    .map(|(scope, role)| RawRoleAssignment {
                        identity: "SystemAssigned".into(),
                        role: role.into(),
                        scope,
                    })
                    .collect();
                raw.group_memberships = [G1, G2]
                    .iter()
                    .map(|g| RawGroupMembership {
                        identity: "SystemAssigned".into(),
                        group_object_id: (*g).into(),
                    })
                    .collect();
            }
            Some(DesiredObject::new(
                ObjectRef::new(format!("team-{}", i % 50), format!("o-{i}")),
                raw.validate().ok()?,
            ))
        })
        .collect()
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(((s.len() - 1) as f64) * p).round() as usize]
}

/// Counters that matter here.
#[derive(Clone, Copy, Default)]
struct Cost {
    arg: u64,
    arm_reads: u64,
    auth_reads: u64,
    writes: u64,
    throttled: u64,
    arg_throttled: u64,
}

fn cost(sim: &SimHandle) -> Cost {
    let c = sim.counters();
    Cost {
        arg: c.resource_graph_queries,
        arm_reads: c.reads,
        auth_reads: c.authorization_reads,
        writes: c.writes + c.authorization_writes + c.graph_writes,
        throttled: c.throttled,
        arg_throttled: c.resource_graph_throttled,
    }
}

fn graph_http(sim: &SimHandle) -> u64 {
    // HTTP requests to Graph: batches, plus reads outside batches are not made by the scan.
    sim.counters().graph_batches
}

fn diff(a: Cost, b: Cost) -> Cost {
    Cost {
        arg: b.arg - a.arg,
        arm_reads: b.arm_reads - a.arm_reads,
        auth_reads: b.auth_reads - a.auth_reads,
        writes: b.writes - a.writes,
        throttled: b.throttled - a.throttled,
        arg_throttled: b.arg_throttled - a.arg_throttled,
    }
}

/// Polls the feed every `period` (scaled) until every target in `pending` is repaired or
/// `deadline` passes; reconciles what each poll names. Returns per-target repair times.
async fn feed_until_repaired(
    exec: &Executor,
    state: &mut FeedState,
    objs: &BTreeMap<String, Vec<DesiredObject>>,
    pending: &BTreeMap<String, Instant>,
    period: Duration,
    deadline: Duration,
    concurrency: usize,
) -> (BTreeMap<String, Instant>, u32) {
    let subs = vec![SUB.to_string()];
    let mut repaired: BTreeMap<String, Instant> = BTreeMap::new();
    let started = Instant::now();
    let mut polls = 0u32;
    let managed = |t: &str| objs.contains_key(t);
    while repaired.len() < pending.len() && started.elapsed() < deadline {
        tokio::time::sleep(period).await;
        polls += 1;
        let p = match poll_once(state, exec.client(), &subs, &managed, now_ms()).await {
            Ok(p) => p,
            Err(e) => {
                println!("    poll failed: {e}");
                continue;
            }
        };
        let todo: Vec<DesiredObject> = p
            .targets
            .iter()
            .filter_map(|k| objs.get(k))
            .flatten()
            .cloned()
            .collect();
        if todo.is_empty() {
            continue;
        }
        let results = engine::apply(exec, todo, concurrency).await;
        let now = Instant::now();
        for r in results {
            if r.error.is_none() {
                let key = r.target.to_ascii_lowercase();
                if pending.contains_key(&key) {
                    repaired.entry(key).or_insert(now);
                }
            } else if let Some(e) = &r.error {
                println!("    reconcile of {} failed: {e}", r.target);
            }
        }
    }
    (repaired, polls)
}

pub async fn run(a: DriftArgs) -> Result<(), String> {
    let targets = a.vms + a.vmss;
    let s = a.time_scale;
    let scaled = |secs: f64| Duration::from_secs_f64(secs / s);
    println!(
        "drift benchmark: {} VMs + {} VMSS = {targets} targets, half with 3 role assignments + 2 group memberships; time x{s}; poll every {} s; feed delay {} s + up to {} s jitter",
        a.vms, a.vmss, a.poll_secs, a.feed_delay_secs, a.feed_jitter_secs
    );
    let t_seed = Instant::now();
    let seed = WorldSeed::from_yaml_str(&world(targets, a.vms)).map_err(|e| e.to_string())?;
    let sim = vmidentity_simulator::start(SimConfig {
        seed,
        lro: LroMode::Async200,
        max_logged_requests: 0,
        throttling: Some(ThrottleConfig::default().accelerated(s)),
        // Resource Graph's documented quota, 15 per 5 s window, on the scaled clock.
        // 15,150 role assignments in one subscription: over Azure's 4,000 per subscription
        // ("Troubleshoot Azure RBAC limits"); a real fleet this size spreads over at least four
        // subscriptions. The limit is lifted here so the scenario fits one.
        role_assignment_limit: 1_000_000,
        resource_graph_quota: 15,
        resource_graph_quota_window: scaled(5.0),
        change_feed: ChangeFeedConfig {
            delay: scaled(a.feed_delay_secs),
            jitter: scaled(a.feed_jitter_secs),
            duplicate_every: 10,
            ..ChangeFeedConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    println!("  world seeded in {:.1} s", t_seed.elapsed().as_secs_f64());
    let mut limits = RateLimits::accelerated(s);
    limits.resource_graph.per_sec *= s;
    limits.graph_reads.per_sec *= s;
    limits.graph_writes.per_sec *= s;
    let cfg = ClientConfig {
        endpoint: sim.base_url(),
        max_inline_wait: Duration::from_secs(60),
        lro_poll_interval: Duration::from_millis(10),
        rate_limits: Some(limits),
        ..ClientConfig::default()
    };
    let arm = ArmClient::new(cfg.clone(), Arc::new(StaticToken::new("sim-token")))
        .map_err(|e| e.to_string())?;
    let graph = ArmClient::new(
        ClientConfig {
            token_scope: vmidentity_azure::GRAPH_SCOPE.to_string(),
            ..cfg
        },
        Arc::new(StaticToken::new("sim-graph-token")),
    )
    .map_err(|e| e.to_string())?;
    let exec = Executor::new(arm.clone()).with_graph(graph);
    let objs = objects(targets, a.vms);
    let groups: BTreeMap<String, Vec<DesiredObject>> = group_by_target(objs.clone())
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();

    // 1. Full resync: identities and grants in bulk.
    let c0 = cost(&sim);
    let g0 = graph_http(&sim);
    let t0 = Instant::now();
    let (scan, pages, gs) = scan_targets_with_grants(&exec, &groups)
        .await
        .map_err(|e| e.to_string())?;
    let c1 = diff(c0, cost(&sim));
    let graph_reqs = graph_http(&sim) - g0;
    let with_grants = groups
        .values()
        .filter(|g| vmidentity_planner::fleet::has_grants(g))
        .count();
    println!(
        "  full resync: {} ARG reads ({pages} identity pages + {} AuthorizationResources pages) = {:.1} per 10,000 targets; {graph_reqs} Graph requests for {with_grants} principals with memberships ({:.2} per 20); {} ARM role-assignment lists; {} to reconcile ({} drifted, {} missing, {} grants differ); {:.1} s (x{s} = {:.0} s real)",
        c1.arg,
        gs.resource_graph_reads,
        c1.arg as f64 * 10_000.0 / targets as f64,
        graph_reqs as f64 * 20.0 / with_grants.max(1) as f64,
        c1.auth_reads,
        scan.to_reconcile().len(),
        scan.drifted.len(),
        scan.missing.len(),
        scan.with_grants.len(),
        t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64() * s
    );

    // 2. Steady state: polls that find nothing.
    let mut state = FeedState::new(
        Some(now_ms()),
        (a.feed_delay_secs + a.feed_jitter_secs + 60.0) as i64 * 1000 / s as i64,
        RETENTION_MS,
    );
    let c0 = cost(&sim);
    let quiet_polls = 10;
    for _ in 0..quiet_polls {
        tokio::time::sleep(scaled(a.poll_secs)).await;
        let p = poll_once(
            &mut state,
            exec.client(),
            &[SUB.to_string()],
            &|t| groups.contains_key(t),
            now_ms(),
        )
        .await
        .map_err(|e| e.to_string())?;
        if !p.targets.is_empty() {
            println!("    quiet poll named {} targets", p.targets.len());
        }
    }
    let c2 = diff(c0, cost(&sim));
    println!(
        "  steady state: {quiet_polls} polls, {} ARG reads ({:.1} per poll), {} ARM reads, {} writes",
        c2.arg,
        c2.arg as f64 / quiet_polls as f64,
        c2.arm_reads,
        c2.writes
    );

    // 3. Out-of-band identity removals spread over time: latency from the change to the repair.
    let c0 = cost(&sim);
    let mut changed: BTreeMap<String, Instant> = BTreeMap::new();
    let spread = a.poll_secs * 4.0;
    let step = spread / a.changes.max(1) as f64;
    let stride = (targets / a.changes.max(1)).max(1);
    let ids: Vec<String> = (0..a.changes)
        .map(|k| target((k * stride + k % 2) % targets, a.vms))
        .collect();
    let writer = async {
        let mut at = BTreeMap::new();
        for id in &ids {
            let _ = sim.set_identity(id, json!({"type": "None"}));
            at.insert(id.to_ascii_lowercase(), Instant::now());
            tokio::time::sleep(scaled(step)).await;
        }
        at
    };
    // The feed runs while the writer writes.
    let deadline = scaled(spread + a.feed_delay_secs + a.feed_jitter_secs + 10.0 * a.poll_secs);
    let feed = async {
        let expected: BTreeMap<String, Instant> = ids
            .iter()
            .map(|id| (id.to_ascii_lowercase(), Instant::now()))
            .collect();
        feed_until_repaired(
            &exec,
            &mut state,
            &groups,
            &expected,
            scaled(a.poll_secs),
            deadline,
            a.concurrency,
        )
        .await
    };
    let ((repaired, polls), at) = tokio::join!(feed, writer);
    changed.extend(at);
    let lat: Vec<f64> = changed
        .iter()
        .filter_map(|(k, t0)| {
            repaired
                .get(k)
                .map(|t1| t1.saturating_duration_since(*t0).as_secs_f64() * s)
        })
        .collect();
    let c3 = diff(c0, cost(&sim));
    println!(
        "  {} out-of-band identity removals over {spread:.0} s: {} repaired; change → repair p50 {:.0} s, p99 {:.0} s, max {:.0} s (real time); {polls} polls, {} ARG reads, {} ARM GETs, {} writes, {} 429s",
        a.changes,
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        c3.arg,
        c3.arm_reads,
        c3.writes,
        c3.throttled
    );

    // 4. A burst: 1,000 out-of-band changes at once.
    let c0 = cost(&sim);
    let t_burst = Instant::now();
    let mut expected = BTreeMap::new();
    for k in 0..a.burst {
        let id = target(
            (k * (targets / a.burst.max(1)).max(1) + 3 + k % 2) % targets,
            a.vms,
        );
        let _ = sim.set_identity(&id, json!({"type": "None"}));
        expected.insert(id.to_ascii_lowercase(), Instant::now());
    }
    let deadline = scaled(a.feed_delay_secs + a.feed_jitter_secs + 3600.0);
    let (repaired, polls) = feed_until_repaired(
        &exec,
        &mut state,
        &groups,
        &expected,
        scaled(a.poll_secs),
        deadline,
        a.concurrency,
    )
    .await;
    let c4 = diff(c0, cost(&sim));
    let lat: Vec<f64> = expected
        .iter()
        .filter_map(|(k, t0)| {
            repaired
                .get(k)
                .map(|t1| t1.saturating_duration_since(*t0).as_secs_f64() * s)
        })
        .collect();
    println!(
        "  burst of {} out-of-band changes: {} repaired in {:.0} s (real time; p99 {:.0} s); {polls} polls, {} ARG reads, {} ARM GETs, {} role-assignment lists, {} writes, 429s: {} (of which Resource Graph {})",
        a.burst,
        repaired.len(),
        t_burst.elapsed().as_secs_f64() * s,
        pct(&lat, 0.99),
        c4.arg,
        c4.arm_reads,
        c4.auth_reads,
        c4.writes,
        c4.throttled,
        c4.arg_throttled
    );
    let c = sim.counters();
    println!(
        "  429s by bucket over the run: ARM reads {}, ARM writes {}, Compute {}, Resource Graph {}; client paced {} requests",
        c.throttled_reads,
        c.throttled_writes,
        c.throttled_compute,
        c.resource_graph_throttled,
        arm.stats().paced
    );

    // 5. The peers' strategies, per hour, on the same fleet.
    let per_hour_feed = 3600.0 / a.poll_secs;
    println!();
    println!(
        "per hour on {targets} targets (nothing drifting), and the worst time to find a removed identity:"
    );
    println!(
        "  vmidentity: {:.0} feed polls x {:.1} ARG reads + 6 full resyncs x {} ARG reads = {:.0} ARG reads, 0 ARM GETs; found within poll + feed delay (p99 above)",
        per_hour_feed,
        c2.arg as f64 / quiet_polls as f64,
        c1.arg,
        per_hour_feed * c2.arg as f64 / quiet_polls as f64 + 6.0 * c1.arg as f64
    );
    println!(
        "  GET every VM every 3 min: {} ARM GETs ({:.0} per s, ARM allows 25 per s per subscription: {:.1}x the budget); found within 180 s",
        targets * 20,
        targets as f64 / 180.0,
        targets as f64 / 180.0 / 25.0
    );
    println!(
        "  PUT every VM every hour: {targets} writes ({:.1} per s against Compute's 8.3 per s Update VM budget: {:.0} % of it); a removal stays up to 3,600 s",
        targets as f64 / 3600.0,
        100.0 * targets as f64 / 3600.0 / (500.0 / 60.0)
    );
    sim.shutdown().await;
    Ok(())
}
