//! `bench import`: `vmidentity import` and `vmidentity audit` of a brownfield fleet from the
//! simulator with ARM's throttling on (and Resource Graph's own per-user quota, 15 queries per
//! 5 s): requests by kind, wall time, peak RSS, and the zero-diff check of the import (`plan`
//! of every imported object against the same simulator: writes planned and sent, both 0).
//! Numbers are printed, never asserted.
//!
//! The fleet: `--vms` VMs and `--vmss` scale sets over `--subscriptions` subscriptions (Azure
//! caps role assignments at 4,000 per subscription), every VM with its system-assigned
//! identity, every scale set with one of 200 user-assigned identities; `--assignments` role
//! assignments held by those principals (Reader on the resource group, then Storage Blob Data
//! Reader on the subscription); `--memberships` direct group memberships over 50 groups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmidentity::import::{ImportRequest, NamespaceRule, import};
use vmidentity_azure::client::RateLimits;
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_simulator::{Counters, LroMode, SimConfig, SimHandle, ThrottleConfig, WorldSeed};

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const BLOB_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
const POOL: usize = 200;
const GROUPS: usize = 50;

/// Options of the import benchmark.
pub struct ImportArgs {
    pub vms: usize,
    pub vmss: usize,
    pub assignments: usize,
    pub memberships: usize,
    pub subscriptions: usize,
    /// Refill ARM's buckets this many times faster (1 = real limits).
    pub scale: f64,
    pub concurrency: usize,
    pub skip_plan: bool,
}

fn sub(i: usize) -> String {
    format!("0b0b0b0b-0000-4000-8000-{i:012}")
}

fn uai(i: usize) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{i}",
        sub(0)
    )
}

fn uai_principal(i: usize) -> String {
    format!("2a000000-0000-4000-8000-{i:012}")
}

fn vm_principal(i: usize) -> String {
    format!("1a000000-0000-4000-8000-{i:012}")
}

fn group(i: usize) -> String {
    format!("3a000000-0000-4000-8000-{i:012}")
}

/// (target id, principal, resource group id, subscription) of target `i`.
fn target(i: usize, a: &ImportArgs) -> (String, String, String, String) {
    let s = sub(i % a.subscriptions);
    let rg = format!("/subscriptions/{s}/resourceGroups/rg-{}", i % 100);
    if i < a.vms {
        (
            format!("{rg}/providers/Microsoft.Compute/virtualMachines/VM_{i}.prod"),
            vm_principal(i),
            rg,
            s,
        )
    } else {
        (
            format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-{i}"),
            uai_principal(i % POOL),
            rg,
            s,
        )
    }
}

fn world(a: &ImportArgs) -> String {
    let targets = a.vms + a.vmss;
    let mut y = String::with_capacity(targets * 400 + a.assignments * 200);
    y.push_str("userAssignedIdentities:\n");
    for i in 0..POOL {
        y.push_str(&format!(
            "  - {{ id: {}, principalId: {} }}\n",
            uai(i),
            uai_principal(i)
        ));
    }
    y.push_str("virtualMachines:\n");
    for i in 0..a.vms {
        let (id, p, _, _) = target(i, a);
        y.push_str(&format!(
            "  - {{ id: {id}, identity: {{ type: SystemAssigned, principalId: {p} }} }}\n"
        ));
    }
    y.push_str("virtualMachineScaleSets:\n");
    for i in a.vms..targets {
        let (id, _, _, _) = target(i, a);
        y.push_str(&format!(
            "  - {{ id: {id}, identity: {{ type: UserAssigned, userAssignedIdentities: [{}] }} }}\n",
            uai(i % POOL)
        ));
    }
    // Group memberships: the first `memberships` VM principals, round robin over the groups.
    let mut members: Vec<Vec<String>> = vec![Vec::new(); GROUPS];
    for k in 0..a.memberships.min(a.vms) {
        members[k % GROUPS].push(vm_principal(k));
    }
    y.push_str("groups:\n");
    for (g, m) in members.iter().enumerate() {
        y.push_str(&format!(
            "  - {{ id: {}, displayName: g-{g}, members: [{}] }}\n",
            group(g),
            m.join(", ")
        ));
    }
    // Role assignments: one per VM (Reader on its resource group), then a second one
    // (Storage Blob Data Reader on its subscription) until the count is reached.
    y.push_str("roleAssignments:\n");
    let mut n = 0;
    'outer: for round in 0..2 {
        for i in 0..a.vms {
            if n >= a.assignments {
                break 'outer;
            }
            let (_, p, rg, s) = target(i, a);
            let (scope, role) = if round == 0 {
                (rg, READER)
            } else {
                (format!("/subscriptions/{s}"), BLOB_READER)
            };
            y.push_str(&format!(
                "  - {{ scope: {scope}, roleDefinitionId: {role}, principalId: {p}, principalType: ServicePrincipal }}\n"
            ));
            n += 1;
        }
    }
    y
}

fn rss_mib() -> (u64, u64) {
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

fn diff(after: &Counters, before: &Counters) -> String {
    format!(
        "Resource Graph {} (429: {}), ARM GET {}, Authorization reads {}, Graph reads {}, ARM throttled {}, writes {} (ARM {}, Authorization {}, Graph {})",
        after.resource_graph_queries - before.resource_graph_queries,
        after.resource_graph_throttled - before.resource_graph_throttled,
        after.reads - before.reads,
        after.authorization_reads - before.authorization_reads,
        after.graph_reads - before.graph_reads,
        after.throttled - before.throttled,
        (after.writes - before.writes)
            + (after.authorization_writes - before.authorization_writes)
            + (after.graph_writes - before.graph_writes),
        after.writes - before.writes,
        after.authorization_writes - before.authorization_writes,
        after.graph_writes - before.graph_writes,
    )
}

fn executor(sim: &SimHandle, scale: f64) -> Result<Executor, String> {
    let arm = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            max_inline_wait: Duration::from_secs(120),
            rate_limits: Some(RateLimits::accelerated(scale)),
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new("sim-token")),
    )
    .map_err(|e| e.to_string())?;
    let graph = ArmClient::new(
        ClientConfig {
            max_inline_wait: Duration::from_secs(120),
            ..ClientConfig::graph(&sim.base_url())
        },
        Arc::new(StaticToken::new("sim-graph-token")),
    )
    .map_err(|e| e.to_string())?;
    Ok(Executor::new(arm).with_graph(graph))
}

/// Seeds the fleet, imports it, checks the zero diff, audits it; prints the numbers.
pub async fn run(a: ImportArgs) -> Result<(), String> {
    let targets = a.vms + a.vmss;
    println!(
        "import benchmark: {} VMs + {} VMSS = {targets} targets over {} subscriptions, {} role assignments, {} group memberships; ARM throttling on (limits x{}), Resource Graph quota 15 per 5 s",
        a.vms, a.vmss, a.subscriptions, a.assignments, a.memberships, a.scale
    );
    let t0 = Instant::now();
    let seed = WorldSeed::from_yaml_str(&world(&a)).map_err(|e| e.to_string())?;
    let sim = vmidentity_simulator::start(SimConfig {
        seed,
        lro: LroMode::Async200,
        max_logged_requests: 0,
        throttling: Some(ThrottleConfig::default().accelerated(a.scale)),
        role_assignment_limit: 4000,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let (rss_seeded, _) = rss_mib();
    println!(
        "  world seeded in {:.1} s (RSS {rss_seeded} MiB with the simulator's world)",
        t0.elapsed().as_secs_f64()
    );
    let exec = executor(&sim, a.scale)?;
    let req = ImportRequest {
        subscriptions: (0..a.subscriptions).map(sub).collect(),
        resource_groups: vec![],
        tags: vec![],
        query: None,
        namespace: NamespaceRule::Fixed("fleet".into()),
        with_grants: true,
        with_groups: true,
        adopt: false,
        include_platform: false,
        skip_tags: vec![],
    };

    // Import.
    let before = sim.counters();
    let t = Instant::now();
    let imported = import(&exec, &req).await.map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    let after = sim.counters();
    let (_, hwm) = rss_mib();
    let st = imported.stats;
    println!(
        "\nimport: {} objects ({} skipped), {} role assignments, {} memberships declared",
        imported.objects.len(),
        imported.skipped.len(),
        st.role_assignments,
        st.memberships
    );
    println!("  wall time: {:.2} s", wall.as_secs_f64());
    println!("  requests: {}", diff(&after, &before));
    println!(
        "  Resource Graph pages: {} Resources ({:.2} per 1,000 targets), {} AuthorizationResources ({:.2} per 1,000 assignments); per-VM GETs: {}",
        st.resource_pages,
        st.resource_pages as f64 * 1000.0 / targets.max(1) as f64,
        st.authorization_pages,
        st.authorization_pages as f64 * 1000.0 / st.role_assignments.max(1) as f64,
        after.reads - before.reads
    );
    println!(
        "  Graph $batch requests for memberOf: {} (20 principals each)",
        st.member_of_reads
    );
    println!(
        "  peak RSS (this process, simulator included): {hwm} MiB (after seeding: {rss_seeded} MiB)"
    );

    // Zero diff: plan every imported object against the same simulator.
    if !a.skip_plan {
        let desired: Vec<_> = imported
            .objects
            .iter()
            .filter_map(|o| o.desired().ok())
            .collect();
        let before = sim.counters();
        let t = Instant::now();
        let results = vmidentity::engine::plan_online(&exec, desired, a.concurrency).await;
        let planned: usize = results.iter().map(|r| r.writes()).sum();
        let errors = results.iter().filter(|r| r.error.is_some()).count();
        let after = sim.counters();
        println!(
            "\nzero-diff check (plan of the import against the same simulator, {} targets): {planned} writes planned, {errors} errors, {:.2} s",
            results.len(),
            t.elapsed().as_secs_f64()
        );
        if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
            println!("  first error: {e}");
        }
        println!("  requests: {}", diff(&after, &before));
    }

    // Audit of the same fleet against the imported objects.
    let objects: Vec<vmidentity::audit::AuditObject> = imported
        .objects
        .iter()
        .filter_map(|o| o.desired().ok())
        .map(|desired| vmidentity::audit::AuditObject {
            desired,
            source: None,
            namespace_labels: None,
        })
        .collect();
    let before = sim.counters();
    let t = Instant::now();
    let report = vmidentity::audit::audit(&exec, &req.subscriptions, &objects, None)
        .await
        .map_err(|e| e.to_string())?;
    let after = sim.counters();
    println!(
        "\naudit (against the imported objects): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    println!("  {}", vmidentity::audit::counts_line(&report));
    println!("  requests: {}", diff(&after, &before));
    println!(
        "  role definitions read: {}, Graph $batch requests for memberOf: {}",
        report.stats.role_definition_reads, report.stats.member_of_reads
    );
    let (_, hwm) = rss_mib();
    println!("  peak RSS so far: {hwm} MiB");
    sim.shutdown().await;
    Ok(())
}
