//! `vmidentity audit` on the simulator: each class found where it is and only there
//! (unmanaged identities / grants / memberships, drift, privileged roles including a custom
//! one read from its definition, policy), read-only (0 writes), and the outputs: an aligned
//! sorted table with counts, JSON, CSV, SARIF 2.1.0's required shape, exit 0 / 3 / 1.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000a1";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
/// A custom role that can write role assignments: privileged by its definition.
const CUSTOM_RBAC_WRITER: &str = "c0000000-0000-4000-8000-0000000000c1";
/// A custom role that only reads: not privileged.
const CUSTOM_READER: &str = "c0000000-0000-4000-8000-0000000000c2";
const GROUP_DECLARED: &str = "6a000000-0000-4000-8000-00000000000a";
const GROUP_EXTRA: &str = "6b000000-0000-4000-8000-00000000000b";
const P_APP: &str = "11111111-1111-4111-8111-111111111111";
const P_OPS: &str = "22222222-2222-4222-8222-222222222222";
const P_SYS_C: &str = "33333333-3333-4333-8333-333333333333";

fn rg(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{name}")
}

fn vm(name: &str) -> String {
    format!(
        "{}/providers/Microsoft.Compute/virtualMachines/{name}",
        rg("rg-apps")
    )
}

fn uai(name: &str) -> String {
    format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
        rg("rg-ids")
    )
}

fn world() -> String {
    format!(
        r#"
roleDefinitions:
  - id: {CUSTOM_RBAC_WRITER}
    roleName: Access Delegator
    assignableScopes: [/subscriptions/{SUB}]
    permissions: [{{ actions: ["Microsoft.Authorization/*/write", "*/read"] }}]
  - id: {CUSTOM_READER}
    roleName: Inventory Reader
    assignableScopes: [/subscriptions/{SUB}]
    permissions: [{{ actions: ["*/read"] }}]
userAssignedIdentities:
  - {{ id: {app}, principalId: {P_APP} }}
  - {{ id: {ops}, principalId: {P_OPS} }}
  - {{ id: {missing} }}
virtualMachines:
  # a: declared exactly, holds Reader (declared) and the custom writer (privileged, undeclared)
  - id: {a}
    identity: {{ type: UserAssigned, userAssignedIdentities: [{app}] }}
  # b: nobody declares it
  - id: {b}
    identity: {{ type: "SystemAssigned, UserAssigned", userAssignedIdentities: [{ops}] }}
  # c: declared, but the object wants more than there is
  - id: {c}
    identity: {{ type: SystemAssigned, principalId: {P_SYS_C} }}
groups:
  - {{ id: {GROUP_DECLARED}, displayName: declared, members: [{P_APP}] }}
  - {{ id: {GROUP_EXTRA}, displayName: extra, members: [{P_APP}, {P_OPS}] }}
roleAssignments:
  - {{ scope: {rg_data}, roleDefinitionId: {READER}, principalId: {P_APP} }}
  - {{ scope: /subscriptions/{SUB}, roleDefinitionId: {CUSTOM_RBAC_WRITER}, principalId: {P_APP} }}
  - {{ scope: /subscriptions/{SUB}, roleDefinitionId: {OWNER}, principalId: {P_OPS} }}
  - {{ scope: {rg_data}, roleDefinitionId: {CUSTOM_READER}, principalId: {P_SYS_C} }}
"#,
        app = uai("uai-app"),
        ops = uai("uai-ops"),
        missing = uai("uai-missing"),
        a = vm("vm-a"),
        b = vm("vm-b"),
        c = vm("vm-c"),
        rg_data = rg("rg-data"),
    )
}

fn objects() -> String {
    format!(
        r#"
apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{ name: vm-a, namespace: team-a }}
spec:
  target: {a}
  userAssignedIdentities: [{app}]
  roleAssignments:
    - {{ identity: {app}, role: Reader, scope: {rg_data} }}
  groupMemberships:
    - {{ identity: {app}, groupObjectId: {GROUP_DECLARED} }}
---
apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{ name: vm-c, namespace: team-c }}
spec:
  target: {c}
  systemAssigned: true
  userAssignedIdentities: [{missing}]
  roleAssignments:
    - {{ identity: SystemAssigned, role: {CUSTOM_READER}, scope: {rg_data} }}
    - {{ identity: SystemAssigned, role: Reader, scope: {rg_data} }}
  groupMemberships:
    - {{ identity: SystemAssigned, groupObjectId: {GROUP_DECLARED} }}
"#,
        a = vm("vm-a"),
        c = vm("vm-c"),
        app = uai("uai-app"),
        missing = uai("uai-missing"),
        rg_data = rg("rg-data"),
    )
}

/// team-a may have its VM; team-c's VM is outside every policy.
fn policy() -> String {
    format!(
        r#"
apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentityPolicy
metadata: {{ name: team-a }}
spec:
  namespaces: {{ names: [team-a, team-c] }}
  targets: {{ patterns: ["{a}"] }}
  userAssignedIdentities: {{ ids: ["{app}"] }}
  roleAssignments:
    - {{ roles: [Reader], scopes: ["{rg_data}"] }}
  groups: [{GROUP_DECLARED}]
"#,
        a = vm("vm-a"),
        app = uai("uai-app"),
        rg_data = rg("rg-data"),
    )
}

/// A directory of its own per call (tests run in parallel).
fn dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("vmidentity-audit-{}-{n}", std::process::id()));
    std::fs::create_dir_all(d.join("objects")).expect("tmp");
    std::fs::create_dir_all(d.join("policies")).expect("tmp");
    std::fs::write(d.join("world.yaml"), world()).expect("world");
    std::fs::write(d.join("objects/objects.yaml"), objects()).expect("objects");
    std::fs::write(d.join("policies/policy.yaml"), policy()).expect("policy");
    d
}

fn audit(extra: &[&str]) -> Output {
    let d = dir();
    let mut args: Vec<String> = vec![
        "audit".into(),
        "--subscription".into(),
        SUB.into(),
        "--simulator".into(),
        d.join("world.yaml").display().to_string(),
        "-f".into(),
        d.join("objects").display().to_string(),
        "--policy".into(),
        d.join("policies").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_vmidentity"))
        .args(&args)
        .output()
        .expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn findings() -> Vec<Value> {
    let o = audit(&["-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    v["findings"].as_array().cloned().expect("findings")
}

fn has(f: &[Value], class: &str, target: &str, contains: &str) -> bool {
    f.iter().any(|x| {
        x["class"] == class
            && x["target"].as_str().is_some_and(|t| t.ends_with(target))
            && x["message"].as_str().is_some_and(|m| m.contains(contains))
    })
}

#[test]
fn each_class_where_it_is() {
    let f = findings();
    let show = serde_json::to_string_pretty(&f).unwrap_or_default();
    // vm-a is declared exactly: only its undeclared grants appear.
    assert!(
        has(
            &f,
            "unmanaged",
            "/vm-a",
            "role assignment no object declares: c0000000"
        ),
        "{show}"
    );
    assert!(
        has(&f, "unmanaged", "/vm-a", &format!("group {GROUP_EXTRA}")),
        "{show}"
    );
    assert!(
        !has(&f, "unmanaged", "/vm-a", "user-assigned identity"),
        "{show}"
    );
    assert!(!has(&f, "drift", "/vm-a", ""), "{show}");
    // The custom role that writes role assignments is privileged (read from its
    // definition); Owner is; the read-only custom role and Reader are not.
    assert!(has(&f, "privileged", "/vm-a", "Access Delegator"), "{show}");
    assert!(has(&f, "privileged", "/vm-b", "Owner"), "{show}");
    assert!(!has(&f, "privileged", "/vm-c", ""), "{show}");
    assert!(!has(&f, "privileged", "/vm-a", "Reader ("), "{show}");
    // vm-b: nobody declares it.
    assert!(
        has(&f, "unmanaged", "/vm-b", "system-assigned identity on"),
        "{show}"
    );
    assert!(
        has(
            &f,
            "unmanaged",
            "/vm-b",
            "user-assigned identity that no object lists"
        ),
        "{show}"
    );
    assert!(has(&f, "unmanaged", "/vm-b", "Owner"), "{show}");
    // vm-c: declared but not there.
    assert!(
        has(&f, "drift", "/vm-c", "add user-assigned identity"),
        "{show}"
    );
    assert!(
        has(&f, "drift", "/vm-c", "role assignment missing: Reader"),
        "{show}"
    );
    assert!(
        has(
            &f,
            "drift",
            "/vm-c",
            &format!("group membership missing: group {GROUP_DECLARED}")
        ),
        "{show}"
    );
    assert!(
        !has(&f, "drift", "/vm-c", "Inventory"),
        "declared and present: {show}"
    );
    // Policy: team-c's VM is not in the policy's targets.
    assert!(has(&f, "policy", "/vm-c", ""), "{show}");
    assert!(!has(&f, "policy", "/vm-a", ""), "{show}");
}

#[test]
fn table_is_sorted_aligned_and_counted() {
    let o = audit(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let t = text(&o.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("CLASS"), "{t}");
    let col = lines[0].find("TARGET").expect("TARGET");
    let rows: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    assert!(rows.len() >= 10, "{t}");
    for r in &rows {
        assert_eq!(r.as_bytes().get(col - 1), Some(&b' '), "aligned: {r}");
        assert_ne!(r.as_bytes().get(col), Some(&b' '), "aligned: {r}");
    }
    let order = ["unmanaged", "drift", "privileged", "policy"];
    let ranks: Vec<usize> = rows
        .iter()
        .map(|r| order.iter().position(|c| r.starts_with(c)).expect("class"))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{t}");
    let last = lines.last().expect("counts");
    assert!(last.starts_with("unmanaged: "), "{t}");
    assert!(
        last.contains("privileged: 2") && last.contains("policy: 1"),
        "{last}"
    );
    assert!(
        last.contains("3 VMs / scale sets, 4 principals, 4 role assignments"),
        "{last}"
    );
}

#[test]
fn csv_and_sarif_shapes() {
    let o = audit(&["-o", "csv"]);
    assert_eq!(o.status.code(), Some(0));
    let csv = text(&o.stdout);
    let mut lines = csv.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(
        lines.next(),
        Some("class,target,identity,principalId,object,message")
    );
    assert_eq!(lines.count(), findings().len());

    let o = audit(&["-o", "sarif"]);
    assert_eq!(o.status.code(), Some(0));
    let s: Value = serde_json::from_slice(&o.stdout).expect("sarif json");
    // SARIF 2.1.0's required properties: sarifLog.version and runs; run.tool.driver.name;
    // result.message; what code-scanning tools also need: ruleId and locations.
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "vmidentity");
    let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
    let ids: Vec<&str> = rules.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["unmanaged", "drift", "privileged", "policy"]);
    let results = run["results"].as_array().expect("results");
    assert_eq!(results.len(), findings().len());
    for r in results {
        let id = r["ruleId"].as_str().expect("ruleId");
        let idx = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(ids[idx], id);
        assert!(r["message"]["text"].as_str().is_some_and(|t| !t.is_empty()));
        let loc = &r["locations"][0];
        assert!(
            loc["physicalLocation"]["artifactLocation"]["uri"].is_string(),
            "{r}"
        );
        assert!(
            loc["logicalLocations"][0]["fullyQualifiedName"].is_string(),
            "{r}"
        );
        assert!(["error", "warning"].contains(&r["level"].as_str().unwrap_or("")));
    }
    // A finding about an object from a file points at the file.
    assert!(results.iter().any(|r| {
        r["ruleId"] == "policy"
            && r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .is_some_and(|u| u.ends_with("objects.yaml"))
    }));
}

#[test]
fn fail_on_exit_codes_and_bad_input() {
    let o = audit(&["--fail-on", "privileged"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("found privileged"));
    let o = audit(&["--fail-on", "unmanaged,drift,policy", "-o", "json"]);
    assert_eq!(o.status.code(), Some(3));
    // Nothing of the class: 0. (No --policy → no policy findings.)
    let d = dir();
    let o = Command::new(env!("CARGO_BIN_EXE_vmidentity"))
        .args([
            "audit",
            "--subscription",
            SUB,
            "--simulator",
            &d.join("world.yaml").display().to_string(),
            "-f",
            &d.join("objects").display().to_string(),
            "--fail-on",
            "policy",
        ])
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = audit(&["--fail-on", "nonsense"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses an unknown class");
    let o = Command::new(env!("CARGO_BIN_EXE_vmidentity"))
        .args([
            "audit",
            "--subscription",
            "0f0f0f0f-0000-4000-8000-00000000dead",
            "--simulator",
            &d.join("world.yaml").display().to_string(),
        ])
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        text(&o.stderr).trim_end().lines().count(),
        1,
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn audit_writes_nothing() {
    use std::sync::Arc;
    use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
    let seed = vmidentity_simulator::WorldSeed::from_yaml_str(&world()).expect("seed");
    let sim = vmidentity_simulator::start(vmidentity_simulator::SimConfig {
        seed,
        ..Default::default()
    })
    .await
    .expect("sim");
    let arm = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new("sim-token")),
    )
    .expect("client");
    let graph = ArmClient::new(
        ClientConfig::graph(&sim.base_url()),
        Arc::new(StaticToken::new("sim-graph-token")),
    )
    .expect("graph");
    let exec = Executor::new(arm).with_graph(graph);
    let objects: Vec<_> = vmidentity::input::parse_objects("t", &objects())
        .expect("objects")
        .iter()
        .map(|l| vmidentity::audit::AuditObject {
            desired: l.to_desired().expect("valid"),
            source: None,
            namespace_labels: None,
        })
        .collect();
    let r = vmidentity::audit::audit(&exec, &[SUB.to_string()], &objects, None)
        .await
        .expect("audit");
    assert!(r.count(vmidentity::audit::Class::Privileged) == 2);
    let c = sim.counters();
    assert_eq!(
        c.writes + c.authorization_writes + c.graph_writes,
        0,
        "{c:?}"
    );
    assert_eq!(c.reads, 0, "no per-VM GET: {c:?}");
}
