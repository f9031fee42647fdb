//! vmidentity benchmarks: numbers printed, never asserted.
//!
//! `cargo run --release -p bench -- plan --targets 10000` plans that many targets (1-3 objects
//! each, a pool of user-assigned identities, a mix of live states) and prints plans per second.
//!
//! `cargo run --release -p bench -- import` imports and audits a brownfield fleet from the
//! simulator (10,000 VMs + 100 VMSS, 20,000 role assignments, 5,000 memberships) and checks
//! that the import plans to nothing.
//!
//! `cargo run --release -p bench -- controller` runs the real controller process against the
//! test API server (tests/apiserver) and the ARM simulator; see bench/README.md.
//!
//! `cargo run --release -p bench -- soak --seed S --minutes M` is the seeded chaos soak: two
//! controller replicas, a random history of edits, out-of-band writes and faults, checked
//! against a model (exit 1 on a violation, with the shortest failing history found).

mod controller;
mod drift;
mod fleet;
mod import;
mod soak;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};
use vmidentity_planner::{
    DesiredObject, LiveResource, ObjectRef, RawSpec, group_by_target, plan_target,
};

#[derive(Parser)]
#[command(name = "bench", about = "vmidentity benchmarks (print numbers)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Plan many targets in memory (the pure planner).
    Plan {
        #[arg(long, default_value_t = 10_000)]
        targets: usize,
        /// Size of the user-assigned identity pool.
        #[arg(long, default_value_t = 200)]
        identities: usize,
        /// Repetitions (the best and the median are printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The fleet: cold converge, steady state, 1 % drift, one UAI added everywhere, against
    /// the simulator with ARM's and Compute's throttling on; beside the peers' strategies.
    Fleet {
        #[arg(long, default_value_t = 10_000)]
        vms: usize,
        #[arg(long, default_value_t = 100)]
        vmss: usize,
        #[arg(long, default_value_t = 20_000)]
        objects: usize,
        /// Multiply ARM's and Compute's limits by this (ratios are unaffected; 1 = real limits,
        /// which makes a cold converge of 10,000 PATCHes take about 20 minutes).
        #[arg(long, default_value_t = 20.0)]
        scale: f64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// `vmidentity import` and `audit` of a brownfield fleet from the simulator with ARM's
    /// throttling on: requests by kind, wall time, peak RSS, the zero-diff check.
    Import {
        #[arg(long, default_value_t = 10_000)]
        vms: usize,
        #[arg(long, default_value_t = 100)]
        vmss: usize,
        #[arg(long, default_value_t = 20_000)]
        assignments: usize,
        #[arg(long, default_value_t = 5_000)]
        memberships: usize,
        /// Subscriptions the fleet spreads over (Azure allows 4,000 role assignments each).
        #[arg(long, default_value_t = 5)]
        subscriptions: usize,
        /// Multiply ARM's limits by this (1 = real limits).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Targets planned at once in the zero-diff check.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Skip the zero-diff check (a plan of every imported object).
        #[arg(long)]
        skip_plan: bool,
    },
    /// Drift between resyncs: the change feed finds out-of-band identity removals, the full
    /// resync reads identities and grants in bulk; latency, reads per poll / resync, 429s,
    /// beside the peers' strategies.
    Drift {
        #[arg(long, default_value_t = 10_000)]
        vms: usize,
        #[arg(long, default_value_t = 100)]
        vmss: usize,
        /// Every clock runs this many times faster (the simulator's buckets and quota, the
        /// client's pacing, the feed delay, the poll period); latencies print in real time.
        #[arg(long, default_value_t = 10.0)]
        time_scale: f64,
        /// --change-poll-seconds.
        #[arg(long, default_value_t = 30.0)]
        poll_secs: f64,
        /// The change feed's ingestion delay (the documentation: records "should be
        /// available in less than five minutes").
        #[arg(long, default_value_t = 15.0)]
        feed_delay_secs: f64,
        /// Plus up to this much, per record (so records arrive out of order).
        #[arg(long, default_value_t = 10.0)]
        feed_jitter_secs: f64,
        /// Out-of-band identity removals spread over four poll periods (latency).
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Out-of-band identity removals at once.
        #[arg(long, default_value_t = 1000)]
        burst: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// The `vmidentity controller` process against a real API server and the ARM simulator:
    /// apply-to-PATCH latency, converge time, RSS, API writes per reconcile.
    /// The `vmidentity controller` process against a real API server and the ARM simulator:
    /// apply-to-PATCH latency, converge time, RSS, API writes per reconcile.
    Controller {
        /// Single-object apply-to-PATCH samples (0 skips the latency phase).
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// Pairs of objects created one right after the other on one VM (as `kubectl apply
        /// -f dir/` does), in the latency phase: PATCHes per VM and apply-to-PATCH latency.
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// The controller's --debounce-ms (default: the controller's default).
        #[arg(long)]
        debounce_ms: Option<u64>,
        /// Object counts to converge (one object per VM), comma-separated; 0 skips.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        objects: Vec<usize>,
        /// Give up waiting (for convergence, for a resync pass) after this long.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Kubeconfig of the API server (default: $VMIDENTITY_E2E_KUBECONFIG, else what
        /// tests/apiserver/kube-up.sh prints).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The `vmidentity` binary (default: next to this binary; `cargo build --release -p vmidentity`).
        #[arg(long)]
        vmidentity: Option<PathBuf>,
        /// Object creations in flight at once.
        #[arg(long, default_value_t = 32)]
        create_concurrency: usize,
        /// The controller's --concurrency (targets reconciled at once).
        #[arg(long, default_value_t = 8)]
        concurrency: u16,
        /// The controller's --resync-seconds for the resync measurement (in `get` mode at least
        /// one second per 100 objects, which the controller can keep up with).
        #[arg(long, default_value_t = 15)]
        resync_secs: u64,
        /// The controller's --resync-mode values to measure a resync with, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "resource-graph,get")]
        resync_modes: Vec<String>,
        /// Size of the user-assigned identity pool in the simulated world.
        #[arg(long, default_value_t = 20)]
        identities: usize,
        /// VMs per simulated subscription; 0 puts all of them in one subscription. The
        /// controller paces ARM requests per subscription (reads 250 + 25/s, writes
        /// 200 + 10/s), so with one subscription converge measures that pacing.
        #[arg(long, default_value_t = 100)]
        vms_per_subscription: usize,
        /// How the simulator answers PATCH: sync, async200 or async202.
        #[arg(long, default_value = "sync")]
        lro: vmidentity_simulator::LroMode,
    },
    /// The seeded chaos soak: two `vmidentity controller` replicas on the test API server and
    /// the simulator, a random history (creates, edits, deletes, out-of-band writers, 429
    /// storms, 5xx, slow and long operations, 412s, leader kills, API server restarts, network
    /// pauses) checked against a model. Exit 1 on a violation.
    Soak {
        /// The seed: the same seed is the same history.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long to run (then up to the next quiesce check).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Kubeconfig of the API server (default: $VMIDENTITY_E2E_KUBECONFIG, else what
        /// tests/apiserver/kube-up.sh prints).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The `vmidentity` binary (default: next to this binary).
        #[arg(long)]
        vmidentity: Option<PathBuf>,
        /// Re-runs the shrinker may spend on a failure (each replays a history prefix).
        #[arg(long, default_value_t = 6)]
        shrink_runs: usize,
        /// Never restart kube-apiserver and etcd (on by default when the API server is
        /// tests/apiserver's own).
        #[arg(long)]
        no_apiserver_restarts: bool,
    },
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-0000000000b1";

fn uai(i: usize) -> String {
    format!(
        "{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{i}"
    )
}

fn target(i: usize) -> String {
    if i.is_multiple_of(10) {
        format!(
            "{SUB}/resourceGroups/rg-{}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-{i}",
            i % 50
        )
    } else {
        format!(
            "{SUB}/resourceGroups/rg-{}/providers/Microsoft.Compute/virtualMachines/vm-{i}",
            i % 50
        )
    }
}

fn world(targets: usize, pool: usize) -> (Vec<DesiredObject>, Vec<LiveResource>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut objects = Vec::new();
    let mut lives = Vec::new();
    for t in 0..targets {
        let id = target(t);
        let n_objects = 1 + rng.below(3);
        for o in 0..n_objects {
            let uais: Vec<String> = (0..1 + rng.below(3))
                .map(|_| uai(rng.below(pool)))
                .collect();
            let mut uais_dedup: Vec<String> = Vec::new();
            for u in uais {
                if !uais_dedup.contains(&u) {
                    uais_dedup.push(u);
                }
            }
            let raw = RawSpec {
                target: id.clone(),
                system_assigned: (o == 0 && rng.below(2) == 0).then_some(true),
                user_assigned_identities: uais_dedup,
                ..Default::default()
            };
            if let Ok(spec) = raw.validate() {
                objects.push(DesiredObject::new(
                    ObjectRef::new(format!("ns-{}", t % 20), format!("o-{t}-{o}")),
                    spec,
                ));
            }
        }
        // Live: a third converged-ish, a third empty, a third with unrelated identities.
        let mut ident = Map::new();
        match t % 3 {
            0 => {
                ident.insert("type".into(), json!("None"));
            }
            1 => {
                let dict: Map<String, Value> = (0..3)
                    .map(|_| {
                        (
                            uai(rng.below(pool)),
                            json!({"principalId": "p", "clientId": "c"}),
                        )
                    })
                    .collect();
                ident.insert("type".into(), json!("SystemAssigned, UserAssigned"));
                ident.insert("principalId".into(), json!("sys"));
                ident.insert("userAssignedIdentities".into(), Value::Object(dict));
            }
            _ => {
                ident.insert("type".into(), json!("SystemAssigned"));
                ident.insert("principalId".into(), json!("sys"));
            }
        }
        if let Ok(l) =
            LiveResource::from_arm_json(&json!({"id": id, "identity": Value::Object(ident)}))
        {
            lives.push(l);
        }
    }
    (objects, lives)
}

fn bench_plan(targets: usize, pool: usize, rounds: usize) {
    let (objects, lives) = world(targets, pool);
    let groups: Vec<Vec<DesiredObject>> = group_by_target(objects.clone()).into_values().collect();
    println!(
        "planner: {} targets, {} objects, identity pool {}, {} rounds",
        groups.len(),
        objects.len(),
        pool,
        rounds
    );
    let mut times: Vec<Duration> = Vec::new();
    let mut writes = 0usize;
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        let mut w = 0usize;
        // Grouping is part of the work a resync does.
        let groups = group_by_target(black_box(objects.clone()));
        for (g, live) in groups.values().zip(lives.iter()) {
            if let Ok(p) = plan_target(black_box(g), black_box(live)) {
                w += p.writes.len();
            }
        }
        times.push(started.elapsed());
        writes = w;
    }
    times.sort();
    let best = times[0];
    let median = times[times.len() / 2];
    let per_sec = |d: Duration| groups.len() as f64 / d.as_secs_f64();
    println!("  writes planned per pass: {writes}");
    println!(
        "  best:   {:>8.1} ms  {:>12.0} plans/s  ({:.2} µs/plan)",
        best.as_secs_f64() * 1e3,
        per_sec(best),
        best.as_secs_f64() * 1e6 / groups.len() as f64
    );
    println!(
        "  median: {:>8.1} ms  {:>12.0} plans/s",
        median.as_secs_f64() * 1e3,
        per_sec(median)
    );
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Fleet {
            vms,
            vmss,
            objects,
            scale,
            concurrency,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(fleet::run(fleet::FleetArgs {
                vms,
                vmss,
                objects,
                scale,
                concurrency,
            }))
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        Cmd::Soak {
            seed,
            minutes,
            kubeconfig,
            vmidentity,
            shrink_runs,
            no_apiserver_restarts,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(soak::run(soak::Options {
                seed,
                minutes,
                kubeconfig,
                vmidentity,
                shrink_runs,
                apiserver_restarts: !no_apiserver_restarts,
            }))?;
        }
        Cmd::Drift {
            vms,
            vmss,
            time_scale,
            poll_secs,
            feed_delay_secs,
            feed_jitter_secs,
            changes,
            burst,
            concurrency,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(drift::run(drift::DriftArgs {
                vms,
                vmss,
                time_scale,
                poll_secs,
                feed_delay_secs,
                feed_jitter_secs,
                changes,
                burst,
                concurrency,
            }))
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        Cmd::Plan {
            targets,
            identities,
            rounds,
        } => bench_plan(targets, identities, rounds),
        Cmd::Import {
            vms,
            vmss,
            assignments,
            memberships,
            subscriptions,
            scale,
            concurrency,
            skip_plan,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(import::run(import::ImportArgs {
                vms,
                vmss,
                assignments,
                memberships,
                subscriptions: subscriptions.max(1),
                scale,
                concurrency,
                skip_plan,
            }))
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        Cmd::Controller {
            samples,
            pairs,
            debounce_ms,
            objects,
            timeout_secs,
            kubeconfig,
            vmidentity,
            create_concurrency,
            concurrency,
            resync_secs,
            resync_modes,
            identities,
            vms_per_subscription,
            lro,
        } => {
            // Multi-threaded: the simulator serves the controller from this process.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(controller::run(controller::Options {
                samples,
                pairs,
                debounce_ms,
                objects,
                timeout: Duration::from_secs(timeout_secs),
                kubeconfig,
                vmidentity,
                create_concurrency,
                controller_concurrency: concurrency,
                resync_secs,
                resync_modes,
                identities,
                vms_per_subscription,
                lro,
            }))?;
        }
    }
    Ok(())
}
