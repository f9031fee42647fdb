//! `vmidentity import` on the simulator: zero diff (a property test over random fleets, and
//! the binary's own `plan`), platform skips, names, `--adopt`, and every bad input as one
//! line with exit 1 and nothing printed as if complete.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use vmidentity::crd::ADOPT_ANNOTATION;
use vmidentity::import::{ImportRequest, Imported, NamespaceRule, import};
use vmidentity_azure::{ArmClient, ClientConfig, Executor, Method, StaticToken};
use vmidentity_simulator::{CallerConfig, FaultRule, SimConfig, SimHandle, WorldSeed};

const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000a1";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const MI_OPERATOR: &str = "f1a07417-d97a-45cb-824c-7a7467783830";
/// Held by a group only: what its members inherit must never be imported.
const KV_SECRETS_USER: &str = "4633458b-17de-408a-b874-0445c86b69e6";
const GROUP_A: &str = "6a000000-0000-4000-8000-00000000000a";
const GROUP_B: &str = "6b000000-0000-4000-8000-00000000000b";
const GROUP_HOLDER: &str = "6c000000-0000-4000-8000-00000000000c";

fn sub() -> String {
    format!("/subscriptions/{SUB}")
}

fn rg(name: &str) -> String {
    format!("{}/resourceGroups/{name}", sub())
}

fn uai_id(i: usize) -> String {
    format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{i}",
        rg("rg-ids")
    )
}

/// The same ID as a hand-written tool might have spelled it.
fn odd_case(id: &str, variant: u8) -> String {
    match variant % 3 {
        0 => id.to_string(),
        1 => id
            .replace("/resourceGroups/", "/resourcegroups/")
            .replace("Microsoft.ManagedIdentity", "microsoft.managedidentity"),
        _ => id
            .replace("/subscriptions/", "/SUBSCRIPTIONS/")
            .replace("userAssignedIdentities", "USERASSIGNEDIDENTITIES"),
    }
}

fn principal(kind: &str, i: usize) -> String {
    let k = if kind == "sys" { 1 } else { 2 };
    format!("{k}0000000-0000-4000-8000-{i:012}")
}

async fn start(seed: WorldSeed, callers: Vec<CallerConfig>) -> SimHandle {
    let mut accepted = vec!["sim-token".to_string()];
    accepted.extend(callers.iter().map(|c| c.token.clone()));
    vmidentity_simulator::start(SimConfig {
        seed,
        callers,
        accepted_tokens: accepted,
        resource_graph_quota: 1000,
        ..SimConfig::default()
    })
    .await
    .expect("simulator")
}

fn executor(sim: &SimHandle, token: &str) -> Executor {
    let fast = |mut c: ClientConfig| {
        c.max_attempts = 3;
        c.base_backoff = std::time::Duration::from_millis(5);
        c.max_backoff = std::time::Duration::from_millis(50);
        c.lro_poll_interval = std::time::Duration::from_millis(5);
        c
    };
    let arm = ArmClient::new(
        fast(ClientConfig {
            endpoint: sim.base_url(),
            ..ClientConfig::default()
        }),
        Arc::new(StaticToken::new(token)),
    )
    .expect("arm client");
    let graph = ArmClient::new(
        fast(ClientConfig::graph(&sim.base_url())),
        Arc::new(StaticToken::new("sim-graph-token")),
    )
    .expect("graph client");
    Executor::new(arm).with_graph(graph)
}

fn request() -> ImportRequest {
    ImportRequest {
        subscriptions: vec![SUB.to_string()],
        resource_groups: vec![],
        tags: vec![],
        query: None,
        namespace: NamespaceRule::Fixed("fleet".into()),
        with_grants: true,
        with_groups: true,
        adopt: false,
        include_platform: false,
        skip_tags: vec![],
    }
}

/// Plans the imported objects against the same simulator, as `vmidentity plan` does.
async fn plan_writes(exec: &Executor, imported: &Imported) -> Vec<String> {
    let desired: Vec<_> = imported
        .objects
        .iter()
        .map(|o| o.desired().expect("imported object is valid"))
        .collect();
    let results = vmidentity::engine::plan_online(exec, desired, 4).await;
    let mut out = Vec::new();
    for r in &results {
        if let Some(e) = &r.error {
            out.push(format!("{}: error {e}", r.target));
        }
        for refused in &r.refused {
            out.push(format!("{}: refused {refused}", r.target));
        }
        for w in r.all_writes() {
            out.push(format!(
                "{}: {} {}",
                r.target,
                w.method(),
                w.request("").id()
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Zero diff: random fleets
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct TargetSpec {
    vmss: bool,
    name_variant: u8,
    rg_upper: bool,
    system: bool,
    /// Which of the UAIs it carries, and how each ID is spelled.
    uais: Vec<(bool, u8)>,
    /// Role assignments of its system principal: (role index, scope index).
    system_grants: Vec<(u8, u8)>,
    system_groups: (bool, bool),
    /// Written last at api-version 2017-12-01 (`identityIds`), not seeded.
    via_2017: bool,
}

#[derive(Debug, Clone)]
struct FleetSpec {
    targets: Vec<TargetSpec>,
    uai_grants: Vec<Vec<(u8, u8)>>,
    uai_groups: Vec<(bool, bool)>,
    /// UAI deleted after it was attached: its entries become stale.
    deleted_uai: Option<usize>,
    /// Principal IDs in role assignments upper-cased.
    upper_principals: bool,
}

const UAIS: usize = 3;

fn target_strategy() -> impl Strategy<Value = TargetSpec> {
    (
        any::<bool>(),
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((any::<bool>(), 0u8..3), UAIS),
        proptest::collection::vec((0u8..3, 0u8..3), 0..3),
        (any::<bool>(), any::<bool>()),
        proptest::bool::weighted(0.3),
    )
        .prop_map(
            |(
                vmss,
                name_variant,
                rg_upper,
                system,
                uais,
                system_grants,
                system_groups,
                via_2017,
            )| {
                TargetSpec {
                    vmss,
                    name_variant,
                    rg_upper,
                    system,
                    uais,
                    system_grants,
                    system_groups,
                    via_2017,
                }
            },
        )
}

fn fleet_strategy() -> impl Strategy<Value = FleetSpec> {
    (
        proptest::collection::vec(target_strategy(), 1..6),
        proptest::collection::vec(proptest::collection::vec((0u8..3, 0u8..3), 0..3), UAIS),
        proptest::collection::vec((any::<bool>(), any::<bool>()), UAIS),
        proptest::option::weighted(0.3, 0..UAIS),
        any::<bool>(),
    )
        .prop_map(
            |(targets, uai_grants, uai_groups, deleted_uai, upper_principals)| FleetSpec {
                targets,
                uai_grants,
                uai_groups,
                deleted_uai,
                upper_principals,
            },
        )
}

fn target_id(i: usize, t: &TargetSpec) -> String {
    let name = match t.name_variant {
        0 => format!("vm-{i}"),
        1 => format!("Web_{i}"),
        2 => format!("app.{i}.Prod"),
        _ => "dup".to_string(), // collides with every other "dup"
    };
    let group = match (t.name_variant, t.rg_upper) {
        (3, _) => format!("rg-dup-{i}"),
        (_, true) => "RG-Apps".to_string(),
        (_, false) => "rg-apps".to_string(),
    };
    let kind = if t.vmss {
        "virtualMachineScaleSets"
    } else {
        "virtualMachines"
    };
    format!("{}/providers/Microsoft.Compute/{kind}/{name}", rg(&group))
}

fn role(i: u8) -> &'static str {
    [READER, CONTRIBUTOR, MI_OPERATOR][usize::from(i) % 3]
}

/// Scope 0: resource group rg-data; 1: the subscription (a parent scope); 2: the target.
fn scope(i: u8, target: &str) -> String {
    match i % 3 {
        0 => rg("rg-data"),
        1 => sub(),
        _ => target.to_string(),
    }
}

fn fleet_seed(f: &FleetSpec) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "resourceGroups:\n  - id: {}", rg("rg-data"));
    y.push_str("userAssignedIdentities:\n");
    for u in 0..UAIS {
        let _ = writeln!(
            y,
            "  - id: {}\n    principalId: {}",
            uai_id(u),
            principal("uai", u)
        );
    }
    let mut vms = String::new();
    let mut sss = String::new();
    let mut members_a: Vec<String> = Vec::new();
    let mut members_b: Vec<String> = Vec::new();
    let mut members_holder: Vec<String> = Vec::new();
    let mut grants: Vec<(String, String, String)> = Vec::new();
    let pid = |p: String| {
        if f.upper_principals {
            p.to_uppercase()
        } else {
            p
        }
    };
    for (i, t) in f.targets.iter().enumerate() {
        let id = target_id(i, t);
        let carried: Vec<String> = t
            .uais
            .iter()
            .enumerate()
            .filter(|(_, (on, _))| *on)
            .map(|(u, (_, v))| odd_case(&uai_id(u), *v))
            .collect();
        let ty = match (t.system, !carried.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => "None",
        };
        let mut entry = format!("  - id: {id}\n");
        if !t.via_2017 && ty != "None" {
            let _ = write!(entry, "    identity:\n      type: \"{ty}\"\n");
            if t.system {
                let _ = writeln!(entry, "      principalId: {}", principal("sys", i));
            }
            if !carried.is_empty() {
                let _ = writeln!(
                    entry,
                    "      userAssignedIdentities: [{}]",
                    carried.join(", ")
                );
            }
        }
        if t.vmss {
            sss.push_str(&entry);
        } else {
            vms.push_str(&entry);
        }
        if t.system && !t.via_2017 {
            let p = principal("sys", i);
            for (r, s) in &t.system_grants {
                grants.push((scope(*s, &id), role(*r).to_string(), pid(p.clone())));
            }
            if t.system_groups.0 {
                members_a.push(p.clone());
            }
            if t.system_groups.1 {
                members_b.push(p.clone());
            }
            members_holder.push(p);
        }
    }
    for u in 0..UAIS {
        let p = principal("uai", u);
        for (r, s) in &f.uai_grants[u] {
            // Scope 2 (a target) is the first target for identities.
            let first = target_id(0, &f.targets[0]);
            grants.push((scope(*s, &first), role(*r).to_string(), pid(p.clone())));
        }
        if f.uai_groups[u].0 {
            members_a.push(p.clone());
        }
        if f.uai_groups[u].1 {
            members_b.push(p.clone());
        }
        members_holder.push(p);
    }
    if !vms.is_empty() {
        y.push_str("virtualMachines:\n");
        y.push_str(&vms);
    }
    if !sss.is_empty() {
        y.push_str("virtualMachineScaleSets:\n");
        y.push_str(&sss);
    }
    y.push_str("groups:\n");
    for (g, m) in [
        (GROUP_A, &members_a),
        (GROUP_B, &members_b),
        (GROUP_HOLDER, &members_holder),
    ] {
        let _ = writeln!(
            y,
            "  - id: {g}\n    displayName: g-{}\n    members: [{}]",
            &g[..2],
            m.join(", ")
        );
    }
    y.push_str("roleAssignments:\n");
    // The group holds a role its members inherit.
    let _ = writeln!(
        y,
        "  - {{ scope: {}, roleDefinitionId: {KV_SECRETS_USER}, principalId: {GROUP_HOLDER}, principalType: Group }}",
        rg("rg-data")
    );
    let mut seen = BTreeSet::new();
    for (s, r, p) in grants {
        if seen.insert((s.to_ascii_lowercase(), r.clone(), p.to_ascii_lowercase())) {
            let _ = writeln!(
                y,
                "  - {{ scope: {s}, roleDefinitionId: {r}, principalId: {p}, principalType: ServicePrincipal }}"
            );
        }
    }
    y
}

type RoleKey = (String, String, String);
type GroupKey = (String, String);

/// The grants the fleet's identities hold directly: (holder, role, scope) keyed by the
/// target (system) or the identity ID, and (holder, group).
fn expected_grants(f: &FleetSpec) -> (BTreeSet<RoleKey>, BTreeSet<GroupKey>) {
    let mut roles = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for (i, t) in f.targets.iter().enumerate() {
        if !t.system || t.via_2017 {
            continue;
        }
        let id = target_id(i, t);
        let key = id.to_ascii_lowercase();
        for (r, s) in &t.system_grants {
            roles.insert((
                key.clone(),
                role(*r).to_string(),
                scope(*s, &id).to_ascii_lowercase(),
            ));
        }
        for (on, g) in [
            (t.system_groups.0, GROUP_A),
            (t.system_groups.1, GROUP_B),
            (true, GROUP_HOLDER),
        ] {
            if on {
                groups.insert((key.clone(), g.to_string()));
            }
        }
    }
    for u in 0..UAIS {
        let in_use = f.targets.iter().any(|t| t.uais[u].0) && f.deleted_uai != Some(u);
        if !in_use {
            continue;
        }
        let key = uai_id(u).to_ascii_lowercase();
        let first = target_id(0, &f.targets[0]);
        for (r, s) in &f.uai_grants[u] {
            roles.insert((
                key.clone(),
                role(*r).to_string(),
                scope(*s, &first).to_ascii_lowercase(),
            ));
        }
        for (on, g) in [
            (f.uai_groups[u].0, GROUP_A),
            (f.uai_groups[u].1, GROUP_B),
            (true, GROUP_HOLDER),
        ] {
            if on {
                groups.insert((key.clone(), g.to_string()));
            }
        }
    }
    (roles, groups)
}

async fn zero_diff_case(f: FleetSpec) -> Result<(), String> {
    let yaml = fleet_seed(&f);
    let seed = WorldSeed::from_yaml_str(&yaml).map_err(|e| format!("seed: {e}\n{yaml}"))?;
    let sim = start(seed, vec![]).await;
    let exec = executor(&sim, "sim-token");
    // Targets written at 2017-12-01 (`identityIds`), as an old tool would have.
    for (i, t) in f.targets.iter().enumerate() {
        if !t.via_2017 {
            continue;
        }
        let ids: Vec<String> = t
            .uais
            .iter()
            .enumerate()
            .filter(|(_, (on, _))| *on)
            .map(|(u, (_, v))| odd_case(&uai_id(u), *v))
            .collect();
        let ty = match (t.system, !ids.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => continue,
        };
        let mut identity = json!({"type": ty});
        if !ids.is_empty() {
            identity["identityIds"] = json!(ids);
        }
        exec.client()
            .write(
                Method::PATCH,
                &target_id(i, t),
                "2017-12-01",
                &json!({ "identity": identity }),
            )
            .await
            .map_err(|e| format!("2017-12-01 PATCH: {e}"))?;
    }
    if let Some(u) = f.deleted_uai {
        sim.delete_user_assigned_identity(&uai_id(u));
    }
    sim.reset_counters();

    let imported = import(&exec, &request())
        .await
        .map_err(|e| format!("import: {e}"))?;
    let c = sim.counters();
    if c.reads != 0 {
        return Err(format!("import made {} ARM GETs (must be 0)", c.reads));
    }
    // Every target, once; names unique.
    if imported.objects.len() != f.targets.len() {
        return Err(format!(
            "{} objects for {} targets",
            imported.objects.len(),
            f.targets.len()
        ));
    }
    let names: BTreeSet<_> = imported
        .objects
        .iter()
        .map(|o| o.metadata.name.clone())
        .collect();
    if names.len() != imported.objects.len() {
        return Err("duplicate object names".into());
    }
    for o in &imported.objects {
        // What a group holds is inherited, never declared.
        if o.spec
            .role_assignments
            .iter()
            .any(|r| r.role == KV_SECRETS_USER)
        {
            return Err(format!(
                "{:?} declares an inherited (group-held) role",
                o.metadata.name
            ));
        }
        // Stale entries are left out.
        if let Some(u) = f.deleted_uai
            && o.spec
                .user_assigned_identities
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&uai_id(u)))
        {
            return Err(format!("{:?} declares a stale entry", o.metadata.name));
        }
        // Canonical spelling.
        for x in &o.spec.user_assigned_identities {
            if !x.contains("/resourceGroups/")
                || !x.contains("Microsoft.ManagedIdentity/userAssignedIdentities/")
            {
                return Err(format!("not in ARM's spelling: {x}"));
            }
        }
    }
    // Exactly the direct grants and memberships of the identities in use are declared.
    let (want_roles, want_groups) = expected_grants(&f);
    let mut got_roles = BTreeSet::new();
    let mut got_groups = BTreeSet::new();
    for o in &imported.objects {
        let who = |identity: &str| {
            if identity == "SystemAssigned" {
                o.spec.target.to_ascii_lowercase()
            } else {
                identity.to_ascii_lowercase()
            }
        };
        for r in &o.spec.role_assignments {
            got_roles.insert((
                who(&r.identity),
                r.role.clone(),
                r.scope.to_ascii_lowercase(),
            ));
        }
        for g in &o.spec.group_memberships {
            got_groups.insert((who(&g.identity), g.group_object_id.clone()));
        }
    }
    if got_roles != want_roles {
        return Err(format!(
            "role assignments: got {got_roles:#?}, want {want_roles:#?}"
        ));
    }
    if got_groups != want_groups {
        return Err(format!(
            "memberships: got {got_groups:#?}, want {want_groups:#?}"
        ));
    }

    let writes = plan_writes(&exec, &imported).await;
    if !writes.is_empty() {
        return Err(format!("plan is not empty: {writes:#?}"));
    }
    let c = sim.counters();
    if c.writes + c.authorization_writes + c.graph_writes != 0 {
        return Err(format!("writes were made: {c:?}"));
    }
    sim.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// `plan` of what `import` wrote, against the same Azure, writes nothing.
    #[test]
    fn imported_fleets_plan_to_nothing(f in fleet_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let r = rt.block_on(zero_diff_case(f));
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
    }
}

// ---------------------------------------------------------------------------
// Platform identities, names, adoption
// ---------------------------------------------------------------------------

fn platform_world() -> String {
    format!(
        r#"
userAssignedIdentities:
  - id: {rg_nodes}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aks-1-agentpool
  - id: /subscriptions/{SUB}/resourceGroups/Built-In-Identity-RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/built-in-identity-westeurope
  - id: {app_id}
virtualMachines:
  - id: {rg_apps}/providers/Microsoft.Compute/virtualMachines/App.Server_01
    tags: {{ env: prod }}
    identity:
      type: UserAssigned
      userAssignedIdentities:
        - /subscriptions/{SUB}/resourceGroups/Built-In-Identity-RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/built-in-identity-westeurope
        - {app_id}
  - id: {rg_apps}/providers/Microsoft.Compute/virtualMachines/batch-1
    tags: {{ managed-by: databricks }}
    identity: {{ type: SystemAssigned }}
  - id: {rg_custom_nodes}/providers/Microsoft.Compute/virtualMachines/pool-vm
    identity: {{ type: SystemAssigned }}
virtualMachineScaleSets:
  - id: {rg_nodes}/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-vmss
    identity:
      type: UserAssigned
      userAssignedIdentities: [{rg_nodes}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aks-1-agentpool]
managedClusters:
  - id: {rg_aks}/providers/Microsoft.ContainerService/managedClusters/aks-1
    location: westeurope
  - id: {rg_aks}/providers/Microsoft.ContainerService/managedClusters/aks-2
    nodeResourceGroup: custom-nodes
"#,
        rg_nodes = rg("MC_rg-aks_aks-1_westeurope"),
        rg_custom_nodes = rg("custom-nodes"),
        rg_apps = rg("rg-apps"),
        rg_aks = rg("rg-aks"),
        app_id = uai_id(0),
    )
}

#[tokio::test]
async fn platform_targets_and_identities_are_skipped_unless_included() {
    let seed = WorldSeed::from_yaml_str(&platform_world()).expect("seed");
    let sim = start(seed, vec![]).await;
    let exec = executor(&sim, "sim-token");
    let mut req = request();
    req.skip_tags = vec![("managed-by".into(), Some("databricks".into()))];
    req.adopt = true;
    let out = import(&exec, &req).await.expect("import");
    assert_eq!(out.objects.len(), 1, "{:?}", out.skipped);
    let o = &out.objects[0];
    assert_eq!(o.metadata.name.as_deref(), Some("app-server-01"));
    assert_eq!(o.metadata.namespace.as_deref(), Some("fleet"));
    assert_eq!(
        o.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADOPT_ANNOTATION))
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(o.spec.user_assigned_identities, vec![uai_id(0)]);
    assert_eq!(o.spec.system_assigned, Some(false));
    let reasons: Vec<String> = out
        .skipped
        .iter()
        .map(|s| format!("{} {}", s.id, s.reason))
        .collect();
    assert_eq!(out.skipped.len(), 3, "{reasons:#?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("aks-nodepool1-vmss") && r.contains("MC_"))
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("pool-vm") && r.contains("cluster"))
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("batch-1") && r.contains("--skip-tag"))
    );
    assert!(
        out.dropped
            .iter()
            .any(|d| d.id.contains("built-in-identity") && d.reason.contains("Azure Policy"))
    );
    // The left-out identity does not make a diff (Merge never removes).
    assert!(plan_writes(&exec, &out).await.is_empty());

    req.include_platform = true;
    let all = import(&exec, &req).await.expect("import");
    assert_eq!(all.objects.len(), 4);
    assert!(all.skipped.is_empty() && all.dropped.is_empty());
    assert!(plan_writes(&exec, &all).await.is_empty());
    assert_eq!(sim.counters().writes, 0);
}

#[tokio::test]
async fn filters_narrow_the_targets() {
    let seed = WorldSeed::from_yaml_str(&platform_world()).expect("seed");
    let sim = start(seed, vec![]).await;
    let exec = executor(&sim, "sim-token");
    let mut req = request();
    req.include_platform = true;
    req.tags = vec![("env".into(), "prod".into())];
    let out = import(&exec, &req).await.expect("import");
    assert_eq!(out.objects.len(), 1);
    req.tags.clear();
    req.resource_groups = vec!["CUSTOM-NODES".into()];
    let out = import(&exec, &req).await.expect("import");
    assert_eq!(out.objects.len(), 1);
    assert!(out.objects[0].spec.target.ends_with("/pool-vm"));
    req.resource_groups.clear();
    req.query = Some("where name =~ 'batch-1' or name =~ 'pool-vm'".into());
    let out = import(&exec, &req).await.expect("import");
    assert_eq!(out.objects.len(), 2);
    req.query = None;
    req.namespace = NamespaceRule::FromTag("env".into());
    let out = import(&exec, &req).await.expect("import");
    assert_eq!(out.objects.len(), 1);
    assert_eq!(out.objects[0].metadata.namespace.as_deref(), Some("prod"));
    assert_eq!(out.skipped.len(), 3);
}

// ---------------------------------------------------------------------------
// Refusals: one line, nothing printed as if complete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn denied_authorization_resources_and_a_failed_graph_read_stop_the_import() {
    let seed = WorldSeed::from_yaml_str(&platform_world()).expect("seed");
    let sim = start(
        seed,
        vec![
            CallerConfig::new("reader-without-rbac")
                .with_denied_resource_graph_tables(&["AuthorizationResources"]),
        ],
    )
    .await;
    let exec = executor(&sim, "reader-without-rbac");
    let e = import(&exec, &request()).await.expect_err("403");
    let msg = e.to_string();
    assert!(
        msg.contains("AuthorizationResources") && msg.contains("403"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    // Without --with-grants the same caller imports.
    let mut req = request();
    req.with_grants = false;
    req.with_groups = false;
    assert!(import(&exec, &req).await.is_ok());

    // A memberOf read that fails for one principal fails the whole import.
    let exec = executor(&sim, "sim-token");
    sim.add_fault(FaultRule::status(403).path_contains("memberOf"));
    let e = import(&exec, &request()).await.expect_err("graph 403");
    assert!(e.to_string().contains("Microsoft Graph"), "{e}");
    sim.clear_faults();
    // A Resource Graph page that fails after retries: an error, not a shorter fleet.
    sim.add_fault(FaultRule::status(500).path_contains("Microsoft.ResourceGraph"));
    let e = import(&exec, &request()).await.expect_err("500");
    assert!(e.to_string().contains("Resource Graph"), "{e}");
    sim.clear_faults();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmidentity"))
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmidentity-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn world_file(dir: &Path) -> PathBuf {
    let p = dir.join("world.yaml");
    std::fs::write(&p, platform_world()).expect("world");
    p
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cli_import_then_plan_prints_nothing_to_do() {
    let dir = tmp_dir("plan");
    let world = world_file(&dir);
    let w = world.to_str().expect("utf-8");
    let o = run(&[
        "import",
        "--subscription",
        SUB,
        "--simulator",
        w,
        "--with-grants",
        "--with-groups",
        "--adopt",
        "--include-platform",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let yaml = text(&o.stdout);
    assert_eq!(
        yaml.matches("kind: VirtualMachineIdentity").count(),
        4,
        "{yaml}"
    );
    assert!(yaml.contains("vmidentity.dev/adopt: 'true'"), "{yaml}");
    assert!(
        text(&o.stderr).contains("imported 4 objects"),
        "{}",
        text(&o.stderr)
    );
    let objs = dir.join("objs.yaml");
    std::fs::write(&objs, &yaml).expect("write");
    let p = run(&[
        "plan",
        "-f",
        objs.to_str().expect("utf-8"),
        "--simulator",
        w,
        "-o",
        "json",
    ]);
    assert!(p.status.success(), "{}", text(&p.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&p.stdout).expect("json"),
        json!([])
    );

    // -o json is a v1 List that plan reads too; --out-dir writes one file per object.
    let o = run(&[
        "import",
        "--subscription",
        SUB,
        "--simulator",
        w,
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let list: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(list["kind"], json!("List"));
    // App.Server_01 and batch-1 (no --skip-tag this time); the AKS nodes are skipped.
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    let out = dir.join("out");
    let o = run(&[
        "import",
        "--subscription",
        SUB,
        "--simulator",
        w,
        "--include-platform",
        "--out-dir",
        out.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    let files: Vec<_> = std::fs::read_dir(&out).expect("dir").collect();
    assert_eq!(files.len(), 4);
    assert!(out.join("default_app-server-01.yaml").exists());
    let p = run(&[
        "plan",
        "-f",
        out.to_str().expect("utf-8"),
        "--simulator",
        w,
        "-o",
        "json",
    ]);
    assert!(p.status.success(), "{}", text(&p.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&p.stdout).expect("json"),
        json!([])
    );
}

#[test]
fn cli_bad_input_is_one_line_and_exit_1() {
    let dir = tmp_dir("bad");
    let world = world_file(&dir);
    let w = world.to_str().expect("utf-8");
    for (args, want) in [
        (vec!["--tag", "env"], "--tag \"env\": expected key=value"),
        (
            vec!["--query", "where name matches regex 'x'"],
            "InvalidQuery",
        ),
        (vec!["--namespace", "Not_Valid"], "DNS-1123"),
    ] {
        let mut a = vec!["import", "--subscription", SUB, "--simulator", w];
        a.extend(args.iter().copied());
        let o = run(&a);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o.stdout));
        let err = text(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A subscription the world does not know.
    let o = run(&[
        "import",
        "--subscription",
        "0f0f0f0f-0000-4000-8000-00000000dead",
        "--simulator",
        w,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = text(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("NoValidSubscriptionsInQueryRequest"), "{err}");
    let o = run(&["import", "--subscription", "nope", "--simulator", w]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("GUID"));
}
