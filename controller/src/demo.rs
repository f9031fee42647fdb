//! `vmidentity demo`: the ARM simulator in-process, the bundled examples applied, then applied
//! again to show convergence (0 writes), then one object edited to show a removal.

use std::sync::Arc;

use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_planner::DesiredObject;
use vmidentity_simulator::SimHandle;

use crate::azure_config::cli_client_config;
use crate::engine::{self, TargetResult};
use crate::error::CliError;
use crate::input;
use crate::out::render_apply;

pub use crate::connect::{SIM_GRAPH_TOKEN, SIM_TOKEN, start_simulator};

/// The bundled world.
pub const DEMO_WORLD: &str = include_str!("../../examples/demo/world.yaml");

/// The bundled objects (`examples/*.yaml`).
pub const DEMO_OBJECTS: &[(&str, &str)] = &[
    (
        "examples/vm-web.yaml",
        include_str!("../../examples/vm-web.yaml"),
    ),
    (
        "examples/vm-web-2.yaml",
        include_str!("../../examples/vm-web-2.yaml"),
    ),
    (
        "examples/vm-db.yaml",
        include_str!("../../examples/vm-db.yaml"),
    ),
    (
        "examples/aks-nodepool.yaml",
        include_str!("../../examples/aks-nodepool.yaml"),
    ),
    (
        "examples/exact-legacy.yaml",
        include_str!("../../examples/exact-legacy.yaml"),
    ),
    (
        "examples/role-storage.yaml",
        include_str!("../../examples/role-storage.yaml"),
    ),
    (
        "examples/group-membership.yaml",
        include_str!("../../examples/group-membership.yaml"),
    ),
];

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000001";

fn system_principal(sim: &SimHandle, id: &str) -> Option<String> {
    sim.identity_of(id)?
        .get("principalId")?
        .as_str()
        .map(str::to_string)
}

fn carries(sim: &SimHandle, target: &str, uai_name: &str) -> bool {
    sim.identity_of(target)
        .and_then(|i| i.get("userAssignedIdentities").cloned())
        .and_then(|d| d.as_object().cloned())
        .is_some_and(|d| {
            d.keys()
                .any(|k| k.to_ascii_lowercase().ends_with(&format!("/{uai_name}")))
        })
}

/// Identities nobody asked us to manage are still there; the existing system principal kept.
fn check_survivors(sim: &SimHandle, web2: &str, principal_before: Option<&str>) -> bool {
    let db =
        format!("{SUB}/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachines/vm-db-1");
    let vmss = format!(
        "{SUB}/resourceGroups/MC_rg-aks_aks-prod_westeurope/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-12345678-vmss"
    );
    let checks = [
        (
            "vm-db-1 still carries uai-legacy (attached by someone else)",
            carries(sim, &db, "uai-legacy"),
        ),
        (
            "the AKS node pool still carries its kubelet identity aks-prod-agentpool",
            carries(sim, &vmss, "aks-prod-agentpool"),
        ),
        (
            "vm-web-2 kept its system-assigned principal",
            principal_before.is_some()
                && system_principal(sim, web2).as_deref() == principal_before,
        ),
    ];
    crate::outln!("   Unmanaged state preserved:");
    for (what, ok) in &checks {
        crate::outln!("     [{}] {what}", if *ok { "ok" } else { "FAILED" });
    }
    checks.iter().all(|(_, ok)| *ok)
}

/// The bundled objects, validated.
pub fn demo_objects() -> Result<Vec<DesiredObject>, CliError> {
    let mut out = Vec::new();
    for (name, text) in DEMO_OBJECTS {
        for o in input::parse_objects(name, text)? {
            out.push(o.to_desired()?);
        }
    }
    Ok(out)
}

struct Pass {
    writes: u64,
    errors: usize,
}

async fn pass(
    title: &str,
    exec: &Executor,
    sim: &SimHandle,
    objects: &[DesiredObject],
) -> (Pass, Vec<TargetResult>) {
    sim.reset_counters();
    crate::outln!("\n== {title}");
    let results = engine::apply(exec, objects.to_vec(), 4).await;
    crate::out!("{}", render_apply(&results, exec.graph_endpoint()));
    let c = sim.counters();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    crate::outln!(
        "   ARM simulator counted: {} GET, {} PATCH, {} operation polls, {} role assignment writes, {} group writes, {} throttled",
        c.reads,
        c.writes,
        c.polls,
        c.authorization_writes,
        c.graph_writes,
        c.throttled
    );
    (
        Pass {
            writes: c.writes + c.authorization_writes + c.graph_writes,
            errors,
        },
        results,
    )
}

pub async fn run() -> Result<i32, CliError> {
    let sim = start_simulator(DEMO_WORLD)
        .await
        .map_err(|e| CliError::Other(format!("cannot start the ARM simulator: {e}")))?;
    let objects = demo_objects()?;
    let targets = vmidentity_planner::group_by_target(objects.clone()).len();
    crate::outln!(
        "vmidentity demo: ARM simulator at {} (no Azure account, no cluster)\n{} objects from examples/ on {} targets (VMs and an AKS node-pool scale set)",
        sim.base_url(),
        objects.len(),
        targets
    );
    let client = ArmClient::new(
        cli_client_config(&sim.base_url()),
        Arc::new(StaticToken::new(SIM_TOKEN)),
    )
    .map_err(|e| CliError::Other(e.to_string()))?;
    let exec = Executor::new(client).with_graph(
        ArmClient::new(
            ClientConfig {
                lro_poll_interval: std::time::Duration::from_millis(200),
                ..ClientConfig::graph(&sim.base_url())
            },
            Arc::new(StaticToken::new(SIM_GRAPH_TOKEN)),
        )
        .map_err(|e| CliError::Other(e.to_string()))?,
    );

    let web2 = format!(
        "{SUB}/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachines/vm-web-2"
    );
    let principal_before = system_principal(&sim, &web2);
    let (p1, r1) = pass(
        "Pass 1: converge (one GET and at most one PATCH per target)",
        &exec,
        &sim,
        &objects,
    )
    .await;
    let survivors = check_survivors(&sim, &web2, principal_before.as_deref());
    let objects = engine::carry_ownership(&objects, &r1);
    let (p2, r2) = pass(
        "Pass 2: apply again (converged: expect 0 writes)",
        &exec,
        &sim,
        &objects,
    )
    .await;
    let mut objects = engine::carry_ownership(&objects, &r2);

    // platform/monitoring-agent stops asking for uai-monitoring on vm-web-1. It applied it, so
    // it goes (a `null` in the dictionary); team-data/db still has it on vm-db-1.
    for o in objects.iter_mut() {
        if o.object.name == "monitoring-agent" {
            o.spec.user_assigned.clear();
        }
    }
    let (p3, r3) = pass(
        "Pass 3: platform/monitoring-agent drops uai-monitoring (only what it applied is removed)",
        &exec,
        &sim,
        &objects,
    )
    .await;
    let objects = engine::carry_ownership(&objects, &r3);
    let (p4, _) = pass(
        "Pass 4: apply again (expect 0 writes)",
        &exec,
        &sim,
        &objects,
    )
    .await;

    let ok = survivors
        && p1.errors + p2.errors + p3.errors + p4.errors == 0
        && p1.writes > 0
        && p2.writes == 0
        && p3.writes == 1
        && p4.writes == 0;
    crate::outln!(
        "\n{}: pass 1 wrote {} times for {} targets, passes 2 and 4 wrote {} and {}, pass 3 wrote {}.",
        if ok { "Converged" } else { "NOT CONVERGED" },
        p1.writes,
        targets,
        p2.writes,
        p4.writes,
        p3.writes
    );
    let brownfield = brownfield(&exec, &sim).await;
    sim.shutdown().await;
    Ok(if ok && brownfield { 0 } else { 1 })
}

/// The brownfield pass: the fleet as the passes above left it, read as if nobody had objects
/// for it (made by hand or by Terraform), imported, applied with 0 writes, then one object
/// adopts what it lists (0 writes) and drops an adopted identity (1 PATCH that removes it
/// and nothing else). Returns whether every step did what it says.
async fn brownfield(exec: &Executor, sim: &SimHandle) -> bool {
    crate::outln!(
        "\n== Brownfield: import the fleet as it stands (Resource Graph, no GET per VM), apply, adopt, drop"
    );
    sim.reset_counters();
    let req = crate::import::ImportRequest {
        subscriptions: vec![SUB.trim_start_matches("/subscriptions/").to_string()],
        resource_groups: Vec::new(),
        tags: Vec::new(),
        query: None,
        namespace: crate::import::NamespaceRule::Fixed("brownfield".into()),
        with_grants: true,
        with_groups: true,
        adopt: false,
        include_platform: false,
        skip_tags: Vec::new(),
    };
    let imported = match crate::import::import(exec, &req).await {
        Ok(i) => i,
        Err(e) => {
            crate::outln!("   import FAILED: {e}");
            return false;
        }
    };
    let c = sim.counters();
    for line in crate::import::report(&imported).lines() {
        crate::outln!("     {line}");
    }
    crate::outln!(
        "     ARM requests during the import: {} GET (Resource Graph and Graph only)",
        c.reads
    );
    let mut objects = Vec::new();
    for o in &imported.objects {
        match o.desired() {
            Ok(d) => objects.push(d),
            Err(errs) => {
                crate::outln!("   imported object FAILED validation: {errs:?}");
                return false;
            }
        }
    }
    let (b1, r1) = pass(
        "Brownfield 1: apply the imported objects (the contract: 0 writes)",
        exec,
        sim,
        &objects,
    )
    .await;
    let mut objects = engine::carry_ownership(&objects, &r1);

    // vm-db-1 carries uai-legacy, which someone attached by hand: its object lists it (import
    // did) but does not own it, so dropping it would remove nothing. Adopt, then drop it.
    let db =
        format!("{SUB}/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachines/vm-db-1");
    let Some(i) = objects
        .iter()
        .position(|o| o.spec.target.to_string().eq_ignore_ascii_case(&db))
    else {
        crate::outln!("   FAILED: no imported object for vm-db-1");
        return false;
    };
    objects[i].adopt = true;
    let (b2, r2) = pass(
        "Brownfield 2: vm-db-1's object adopts what it lists (recorded, 0 writes)",
        exec,
        sim,
        &objects,
    )
    .await;
    let mut objects = engine::carry_ownership(&objects, &r2);
    let adopted_legacy = objects[i]
        .applied
        .user_assigned_identities
        .iter()
        .any(|u| u.to_ascii_lowercase().ends_with("/uai-legacy"));
    objects[i].adopt = false;
    objects[i]
        .spec
        .user_assigned
        .retain(|u| !u.to_string().to_ascii_lowercase().ends_with("/uai-legacy"));
    let (b3, _) = pass(
        "Brownfield 3: vm-db-1's object drops the adopted uai-legacy (1 PATCH removes it)",
        exec,
        sim,
        &objects,
    )
    .await;
    let checks = [
        ("the imported objects applied with 0 writes", b1.writes == 0),
        ("adopting wrote nothing", b2.writes == 0),
        (
            "uai-legacy recorded as vm-db-1's object's own",
            adopted_legacy,
        ),
        ("dropping it wrote once", b3.writes == 1),
        (
            "uai-legacy is gone from vm-db-1",
            !carries(sim, &db, "uai-legacy"),
        ),
        (
            "uai-monitoring (still listed) stays on vm-db-1",
            carries(sim, &db, "uai-monitoring"),
        ),
        ("no errors", b1.errors + b2.errors + b3.errors == 0),
    ];
    for (what, ok) in &checks {
        crate::outln!("     [{}] {what}", if *ok { "ok" } else { "FAILED" });
    }
    let ok = checks.iter().all(|(_, ok)| *ok);
    crate::outln!(
        "Brownfield: imported {} objects; applying them wrote {} times.",
        objects.len(),
        b1.writes
    );
    crate::outln!(
        "{}: brownfield import applied with {} writes, adoption with {}, the drop with {}.",
        if ok { "Adopted" } else { "NOT ADOPTED" },
        b1.writes,
        b2.writes,
        b3.writes
    );
    ok
}
