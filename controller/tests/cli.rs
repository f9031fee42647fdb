//! The `vmidentity` binary as users and pipelines run it: exact outputs, one-line errors with
//! non-zero exits and no writes for bad input, and the CRD in crds/ kept fresh.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000001";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmidentity"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).current_dir(root()).output().expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmidentity-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn vm(name: &str) -> String {
    format!("{SUB}/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn uai(name: &str) -> String {
    format!(
        "{SUB}/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

#[test]
fn crds_directory_is_not_stale() {
    let o = run(&["crd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let checked_in =
        std::fs::read_to_string(root().join("crds/vmidentity.dev_virtualmachineidentities.yaml"))
            .expect("crds/ file");
    assert!(
        stdout(&o) == checked_in,
        "crds/ is stale: run `cargo run -p vmidentity -- crd > crds/vmidentity.dev_virtualmachineidentities.yaml`"
    );
}

#[test]
fn plan_prints_the_exact_patch_as_json() {
    let live = tmp(
        "live-web1.json",
        &json!({"id": vm("vm-web-1"), "identity": {"type": "None"}}).to_string(),
    );
    let o = run(&[
        "plan",
        "-f",
        "examples/vm-web.yaml",
        "--live",
        live.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        got,
        json!([{
            "method": "PATCH",
            "id": vm("vm-web-1"),
            // The default api-version (examples/vm-web.yaml names none).
            "apiVersion": "2025-04-01",
            "body": {"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {
                uai("uai-monitoring"): {}, uai("uai-web"): {}}}}
        }])
    );
}

#[test]
fn plan_is_empty_when_converged_and_reads_status_applied() {
    let objects = tmp(
        "owned.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata: {{name: a, namespace: ns}}\nspec:\n  target: {}\n  userAssignedIdentities: [{}]\nstatus:\n  applied:\n    userAssignedIdentities: [{}, {}]\n",
            vm("vm1"),
            uai("u1"),
            uai("u1"),
            uai("u2")
        ),
    );
    // Live (a map of ID -> body) has u1 and u2; u2 was applied by this object and is no longer
    // wanted: one null. Then, with u2 gone, nothing to do.
    let live = tmp(
        "live-map.json",
        &json!({ vm("vm1"): {"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("u1"): {}, uai("u2").to_lowercase(): {}}}}})
            .to_string(),
    );
    let o = run(&[
        "plan",
        "-f",
        objects.to_str().unwrap(),
        "--live",
        live.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        got[0]["body"],
        json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("u2").to_lowercase(): null}}})
    );
    let live2 = tmp(
        "live-map2.json",
        &json!({ vm("vm1"): {"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("u1"): {}}}}}).to_string(),
    );
    let o = run(&[
        "plan",
        "-f",
        objects.to_str().unwrap(),
        "--live",
        live2.to_str().unwrap(),
        "-o",
        "json",
        "--detailed-exitcode",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[]");
    let o = run(&[
        "plan",
        "-f",
        objects.to_str().unwrap(),
        "--live",
        live.to_str().unwrap(),
        "--detailed-exitcode",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("- "), "{}", stdout(&o));
}

fn doc(spec: &str) -> String {
    format!(
        "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata:\n  name: bad\n  namespace: team\nspec:\n{spec}"
    )
}

#[test]
fn bad_input_gets_one_line_naming_object_and_field() {
    let live = tmp("live-ok.json", &json!({"id": vm("vm1")}).to_string());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "yaml",
            "apiVersion: [unclosed\n".to_string(),
            "YAML does not parse",
        ),
        (
            "unknown-field",
            doc(&format!("  target: {}\n  systemAsigned: true\n", vm("vm1"))),
            "team/bad: spec.systemAsigned: unknown field",
        ),
        (
            "not-a-vm",
            doc(&format!("  target: {}\n", uai("u1"))),
            "team/bad: spec.target: ",
        ),
        (
            "uai-not-uai",
            doc(&format!(
                "  target: {}\n  userAssignedIdentities: [{}]\n",
                vm("vm1"),
                vm("vm2")
            )),
            "team/bad: spec.userAssignedIdentities[0]: ",
        ),
        (
            "api-version",
            doc(&format!(
                "  target: {}\n  armApiVersion: \"2016-04-30\"\n",
                vm("vm1")
            )),
            "team/bad: spec.armApiVersion: ",
        ),
        (
            "bad-mode",
            doc(&format!("  target: {}\n  mode: Replace\n", vm("vm1"))),
            "team/bad: spec.mode: unknown variant `Replace`",
        ),
        (
            "wrong-kind",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_string(),
            "default/x: apiVersion: ",
        ),
    ];
    for (name, text, want) in cases {
        let f = tmp(&format!("{name}.yaml"), &text);
        let o = run(&[
            "plan",
            "-f",
            f.to_str().unwrap(),
            "--live",
            live.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(want),
            "{name}: {err:?} should contain {want:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(stdout(&o).is_empty(), "{name}: nothing planned");
    }
    // A live body without an id.
    let f = tmp("ok.yaml", &doc(&format!("  target: {}\n", vm("vm1"))));
    let nolive = tmp("noid.json", r#"{"identity": {"type": "None"}}"#);
    let o = run(&[
        "plan",
        "-f",
        f.to_str().unwrap(),
        "--live",
        nolive.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("noid.json: id: is missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn conflicting_objects_are_refused_with_their_names_and_no_write() {
    let text = format!(
        "{}---\n{}",
        doc(&format!(
            "  target: {}\n  systemAssigned: true\n",
            vm("vm1")
        )),
        doc(&format!(
            "  target: {}\n  systemAssigned: false\n",
            vm("vm1")
        ))
        .replace("name: bad", "name: other")
    );
    let f = tmp("conflict.yaml", &text);
    let live = tmp("live-c.json", &json!({"id": vm("vm1")}).to_string());
    let o = run(&[
        "plan",
        "-f",
        f.to_str().unwrap(),
        "--live",
        live.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).trim(), "[]");
    assert!(
        stderr(&o).contains("Conflict") && stderr(&o).contains("team/bad, team/other"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn apply_against_the_simulator_converges_and_keeps_state() {
    let state = std::env::temp_dir().join(format!("vmidentity-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let args = [
        "apply",
        "-f",
        "examples",
        "--simulator",
        "examples/demo/world.yaml",
        "--state",
        state.to_str().unwrap(),
        "-o",
        "json",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let writes: Value = serde_json::from_str(&stdout(&o)).expect("json");
    // 7 identity PATCHes, 2 role assignment PUTs, 1 group membership POST.
    assert_eq!(writes.as_array().map(Vec::len), Some(10), "{writes:#}");
    assert!(
        writes
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["result"]["status"] == "Succeeded")
    );
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    assert!(recorded.get("team-web/web-app").is_some(), "{recorded}");
}

#[test]
fn apply_without_credentials_says_how_to_get_them() {
    let o = bin()
        .args(["apply", "-f", "examples/vm-web.yaml"])
        .current_dir(root())
        .env_remove("AZURE_ACCESS_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no ARM credentials"), "{}", stderr(&o));
}

#[test]
fn demo_converges() {
    let o = run(&["demo"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Converged: pass 1 wrote 10 times for 7 targets, passes 2 and 4 wrote 0 and 0, pass 3 wrote 1."), "{out}");
    assert!(
        out.contains("[ok] vm-db-1 still carries uai-legacy"),
        "{out}"
    );
    // The brownfield pass: import of everything (the AKS node pool skipped), applied: 0 writes.
    assert!(
        out.contains("Brownfield: imported 6 objects; applying them wrote 0 times."),
        "{out}"
    );
    assert!(out.contains("skipped /subscriptions/"), "{out}");
    // Then one object adopts (0 writes) and drops an adopted identity (1 PATCH).
    assert!(
        out.contains(
            "Adopted: brownfield import applied with 0 writes, adoption with 0, the drop with 1."
        ),
        "{out}"
    );
}

#[test]
fn policy_crd_is_not_stale() {
    let o = run(&["crd", "--policy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let checked_in = std::fs::read_to_string(
        root().join("crds/vmidentity.dev_virtualmachineidentitypolicies.yaml"),
    )
    .expect("crds/ file");
    assert!(
        stdout(&o) == checked_in,
        "crds/ is stale: run `cargo run -p vmidentity -- crd --policy > crds/vmidentity.dev_virtualmachineidentitypolicies.yaml`"
    );
}

#[test]
fn apply_with_policy_checks_every_object_first_and_writes_nothing_when_one_is_denied() {
    // The examples' own policies allow them.
    let o = run(&[
        "apply",
        "-f",
        "examples",
        "--simulator",
        "examples/demo/world.yaml",
        "--policy",
        "examples/policies",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The web team loses uai-web: both its objects are named, nothing is written.
    let tight = std::fs::read_to_string(root().join("examples/policies/teams.yaml"))
        .expect("policies")
        .replace(
            "userAssignedIdentities/uai-web\n",
            "userAssignedIdentities/uai-nope\n",
        );
    let tight = tmp("tight-policy.yaml", &tight);
    let o = run(&[
        "apply",
        "-f",
        "examples",
        "--simulator",
        "examples/demo/world.yaml",
        "--policy",
        tight.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "team-web/web-app: PolicyDenied: denied by policy: spec.userAssignedIdentities[0]"
        ),
        "{err}"
    );
    assert!(err.contains("team-web/web-2: PolicyDenied"), "{err}");
    assert!(
        err.contains("(policy team-web, spec.userAssignedIdentities)"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(stdout(&o), "");

    // A namespace no policy covers.
    let lonely = tmp(
        "lonely.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata:\n  name: x\n  namespace: nobody\nspec:\n  target: {}\n",
            vm("vm-web-1")
        ),
    );
    let o = run(&[
        "apply",
        "-f",
        lonely.to_str().unwrap(),
        "--simulator",
        "examples/demo/world.yaml",
        "--policy",
        "examples/policies",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no VirtualMachineIdentityPolicy covers namespace \"nobody\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_custom_role_that_can_write_authorization_is_on_the_deny_list() {
    // Offline the definition is unknown, so only the rules apply; apply reads it from Azure
    // (here the simulator) and refuses it.
    let world = std::fs::read_to_string(root().join("examples/demo/world.yaml")).expect("world")
        + "roleDefinitions:\n  - id: 5b0c3c9e-1111-4b43-9a8e-000000000abc\n    roleName: Access Granter\n    assignableScopes: [/subscriptions/00000000-0000-0000-0000-000000000001]\n    permissions:\n      - actions: [Microsoft.Authorization/roleAssignments/write, '*/read']\n";
    let world = tmp("granter-world.yaml", &world);
    let obj = tmp(
        "granter.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata:\n  name: granter\n  namespace: team-data\nspec:\n  target: {}\n  userAssignedIdentities: [{}]\n  roleAssignments:\n    - identity: {}\n      role: Access Granter\n      scope: {SUB}/resourceGroups/rg-data\n",
            vm("vm-reports-1"),
            uai("uai-reports"),
            uai("uai-reports")
        ),
    );
    let policy = tmp(
        "granter-policy.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentityPolicy\nmetadata:\n  name: team-data\nspec:\n  namespaces: {{names: [team-data]}}\n  targets: {{subscriptions: [00000000-0000-0000-0000-000000000001]}}\n  userAssignedIdentities: {{ids: [{}]}}\n  roleAssignments:\n    - roles: ['*']\n      scopes: [{SUB}/resourceGroups/rg-data/**]\n",
            uai("uai-reports")
        ),
    );
    let o = run(&[
        "apply",
        "-f",
        obj.to_str().unwrap(),
        "--simulator",
        world.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "authorization write: its actions grant Microsoft.Authorization/roleAssignments/write"
        ),
        "{}",
        stderr(&o)
    );
}

/// Runs the binary off the async runtime (the simulator keeps serving meanwhile).
async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .expect("runs")
}

/// One typed path from the custom resource to the wire: for the same objects and the same
/// live state, `apply` sends every kind of write (identity PATCH with and without If-Match,
/// role assignment PUT and DELETE, group member add and remove) exactly as `plan -o json`
/// printed it: method, path, api-version, If-Match and body, byte for byte (compact JSON,
/// keys in the order sent), in the same order. Nothing is adopted or renamed at apply time
/// (no assignment exists under another name), so the writes compared are the planned ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_sends_byte_for_byte_what_plan_printed() {
    use vmidentity_simulator::{SimConfig, WorldSeed};

    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
    const PA: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
    const PB: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
    const G1: &str = "11111111-1111-4111-8111-111111111111";
    const G2: &str = "22222222-2222-4222-8222-222222222222";
    let rg = format!("{SUB}/resourceGroups/rg-wire");
    let vm1 = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm-wire-1");
    let vm2 = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm-wire-2");
    let ua = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-a");
    let ub = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-b");
    // What wire-1 recorded earlier and no longer wants: a role assignment under vmidentity's
    // deterministic name, and a group membership.
    let old_name = vmidentity_planner::grants::assignment_name(&rg, CONTRIBUTOR, PA);
    let old_id = format!("{rg}/providers/Microsoft.Authorization/roleAssignments/{old_name}");
    let world = format!(
        "userAssignedIdentities:
  - {{id: {ua}, principalId: {PA}}}
  - {{id: {ub}, principalId: {PB}}}
virtualMachines:
  - id: {vm1}
    identity: {{type: UserAssigned, userAssignedIdentities: [{ua}]}}
  - id: {vm2}
groups:
  - {{id: {G1}, displayName: readers}}
  - {{id: {G2}, displayName: old-team, members: [{PA}]}}
roleAssignments:
  - {{name: {old_name}, scope: {rg}, roleDefinitionId: {CONTRIBUTOR}, principalId: {PA}}}
"
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&world).expect("world"),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let url = sim.base_url();

    // wire-1 (api-version 2024-11-01: the target has an etag) adds uai-b, grants uai-a Reader
    // and group G1, and lets go of the Contributor assignment and G2; wire-2 (2018-06-01,
    // asked for explicitly: no etag) enables the system identity.
    let objects = tmp(
        "wire.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: wire-1, namespace: team}}
spec:
  target: {vm1}
  armApiVersion: \"2024-11-01\"
  userAssignedIdentities: [{ua}, {ub}]
  roleAssignments:
    - {{identity: {ua}, role: Reader, scope: {rg}}}
  groupMemberships:
    - {{identity: {ua}, groupObjectId: {G1}}}
status:
  applied:
    userAssignedIdentities: [{ua}]
    roleAssignments:
      - {{id: {old_id}, scope: {rg}, roleDefinitionId: {CONTRIBUTOR}, principalId: {PA}, identity: {ua}}}
    groupMemberships:
      - {{groupObjectId: {G2}, principalId: {PA}, identity: {ua}}}
---
apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: wire-2, namespace: team}}
spec:
  target: {vm2}
  armApiVersion: \"2018-06-01\"
  systemAssigned: true
"
        ),
    );
    // The live state `plan` is given is what the simulator answers `apply`'s GETs with.
    let arm = vmidentity_azure::ArmClient::new(
        vmidentity_azure::ClientConfig {
            endpoint: url.clone(),
            ..vmidentity_azure::ClientConfig::default()
        },
        std::sync::Arc::new(vmidentity_azure::StaticToken::new("sim-token")),
    )
    .expect("client");
    let live = tmp(
        "wire-live.json",
        &json!({
            vm1.clone(): arm.get(&vm1, "2024-11-01").await.expect("GET vm1"),
            vm2.clone(): arm.get(&vm2, "2018-06-01").await.expect("GET vm2"),
        })
        .to_string(),
    );

    let o = run_async(
        [
            "plan",
            "-f",
            objects.to_str().unwrap(),
            "--live",
            live.to_str().unwrap(),
            "--graph-endpoint",
            &url,
            "-o",
            "json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let planned: Vec<Value> = serde_json::from_str(&stdout(&o)).expect("plan json");

    sim.clear_requests();
    let o = run_async(
        [
            "apply",
            "-f",
            objects.to_str().unwrap(),
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "--graph-endpoint",
            &url,
            "--graph-token",
            "sim-graph-token",
            "--concurrency",
            "1",
            "-o",
            "json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let applied: Vec<Value> = serde_json::from_str(&stdout(&o)).expect("apply json");

    // Every kind of write is in the plan.
    let kinds: Vec<String> = planned
        .iter()
        .map(|p| {
            let graph = p["id"].as_str().unwrap_or_default().starts_with("/groups/");
            let conditional = p.get("ifMatch").is_some();
            format!(
                "{}{}{}",
                p["method"].as_str().unwrap_or_default(),
                if graph { " graph" } else { "" },
                if conditional { " if-match" } else { "" }
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "DELETE",
            "DELETE graph",
            "PATCH if-match",
            "PUT",
            "POST graph",
            "PATCH"
        ],
        "{planned:#?}"
    );

    // The simulator received exactly those writes, in that order, byte for byte.
    let sent: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert_eq!(sent.len(), planned.len(), "{sent:#?}");
    for (p, r) in planned.iter().zip(&sent) {
        let id = p["id"].as_str().expect("id");
        let version = p["apiVersion"].as_str().expect("apiVersion");
        assert_eq!(r.method, p["method"].as_str().unwrap(), "{r:?}");
        assert!(r.status < 300, "{r:?}");
        if id.starts_with("/groups/") {
            // Graph: the version is the path's first segment, no query.
            assert_eq!(r.path, format!("/{version}{id}"));
            assert_eq!(r.query, None);
        } else {
            assert_eq!(r.path, id);
            assert_eq!(
                r.query.as_deref(),
                Some(format!("api-version={version}").as_str())
            );
        }
        assert_eq!(r.if_match.as_deref(), p["ifMatch"].as_str(), "{r:?}");
        let wire = r.body.as_ref().map(|b| serde_json::to_string(b).unwrap());
        let printed = (!p["body"].is_null()).then(|| serde_json::to_string(&p["body"]).unwrap());
        assert_eq!(wire, printed, "{} {}", r.method, r.path);
    }
    // The bodies that went out name what they should.
    assert_eq!(
        planned[3]["body"]["properties"]["roleDefinitionId"],
        format!("{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}").as_str()
    );
    assert_eq!(
        planned[4]["body"]["@odata.id"],
        format!("{url}/v1.0/directoryObjects/{PA}").as_str()
    );
    assert_eq!(planned[0]["id"], old_id.as_str());

    // `apply -o json` prints the same elements, each with its result.
    assert_eq!(applied.len(), planned.len());
    for (a, p) in applied.iter().zip(&planned) {
        let mut a = a.clone();
        assert_eq!(a["result"]["status"], "Succeeded", "{a}");
        a.as_object_mut().unwrap().remove("result");
        assert_eq!(&a, p);
    }

    // And the world is as declared.
    assert_eq!(sim.member_of(PA), vec![G1.to_string()]);
    let roles: Vec<String> = sim
        .role_assignments_of(PA)
        .iter()
        .filter_map(|a| a["properties"]["roleDefinitionId"].as_str())
        .map(|r| r.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(roles, vec![READER.to_string()]);
    sim.shutdown().await;
}

/// `apply --state` records everything an object owns, as `status.applied` does in the
/// cluster: its identities, role assignments and group memberships. Removing a role
/// assignment and a group membership from the file then deletes them from Azure (and from
/// the state); a state file from before (identities only) still loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_state_records_and_releases_grants_too() {
    use vmidentity_simulator::{SimConfig, WorldSeed};

    const PA: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
    const G1: &str = "11111111-1111-4111-8111-111111111111";
    const AUDITOR: &str = "5b0c3c9e-2222-4b43-9a8e-000000000def";
    let rg = format!("{SUB}/resourceGroups/rg-state");
    let vm1 = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm-state-1");
    let ua = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-a");
    let world = format!(
        "userAssignedIdentities:
  - {{id: {ua}, principalId: {PA}}}
virtualMachines:
  - id: {vm1}
groups:
  - {{id: {G1}, displayName: readers}}
roleDefinitions:
  - {{id: {AUDITOR}, roleName: Identity Auditor, assignableScopes: [{rg}], permissions: [{{actions: ['*/read']}}]}}
"
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&world).expect("world"),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let url = sim.base_url();
    let object = |grants: &str| {
        format!(
            "apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: state-1, namespace: team}}
spec:
  target: {vm1}
  userAssignedIdentities: [{ua}]
{grants}"
        )
    };
    let with_grants = tmp(
        "state-grants.yaml",
        &object(&format!(
            "  roleAssignments:
    - {{identity: {ua}, role: Reader, scope: {rg}}}
    - {{identity: {ua}, role: Identity Auditor, scope: {rg}}}
  groupMemberships:
    - {{identity: {ua}, groupObjectId: {G1}}}
"
        )),
    );
    let without = tmp("state-nogrants.yaml", &object(""));
    let state = tmp("state-grants.json", "");
    std::fs::remove_file(&state).expect("no state yet");
    let apply = |file: &Path| {
        [
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "--graph-endpoint",
            &url,
            "--graph-token",
            "sim-graph-token",
            "--state",
            state.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let read_state = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json")
    };
    let roles_of_pa = || sim.role_assignments_of(PA).len();

    let o = run_async(apply(&with_grants)).await;
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    // Roles by name (and GUID) in what apply prints.
    assert!(
        stdout(&o).contains(&format!(
            "+ role Reader (acdd72a7-3385-48ef-bd42-f606fba81ae7) for principal {PA} at {rg}"
        )) && stdout(&o).contains(&format!(
            "+ role Identity Auditor ({AUDITOR}) for principal {PA} at {rg}"
        )),
        "{}",
        stdout(&o)
    );
    assert_eq!(roles_of_pa(), 2);
    assert_eq!(sim.member_of(PA), vec![G1.to_string()]);
    let recorded = read_state();
    let rec = &recorded["team/state-1"];
    assert_eq!(rec["userAssignedIdentities"], json!([ua]), "{recorded:#}");
    let ra = rec["roleAssignments"].as_array().expect("role assignments");
    assert_eq!(ra.len(), 2, "{recorded:#}");
    assert_eq!(ra[0]["principalId"], PA);
    assert!(
        ra[0]["id"]
            .as_str()
            .unwrap_or_default()
            .contains("/providers/Microsoft.Authorization/roleAssignments/"),
        "{recorded:#}"
    );
    assert_eq!(
        rec["groupMemberships"],
        json!([{"groupObjectId": G1, "principalId": PA, "identity": ua}]),
        "{recorded:#}"
    );

    // The same again: nothing to do.
    let o = run_async(apply(&with_grants)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("0 changed"), "{}", stdout(&o));

    // Grants removed from the file: released in Azure and in the state.
    let o = run_async(apply(&without)).await;
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(roles_of_pa(), 0, "{}", stdout(&o));
    assert!(sim.member_of(PA).is_empty(), "{}", stdout(&o));
    let recorded = read_state();
    assert_eq!(
        recorded["team/state-1"],
        json!({"userAssignedIdentities": [ua]}),
        "{recorded:#}"
    );

    // A state file written before grants were recorded still loads.
    std::fs::write(
        &state,
        json!({"team/state-1": {"userAssignedIdentities": [ua]}}).to_string(),
    )
    .expect("old state");
    let o = run_async(apply(&without)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    sim.shutdown().await;
}

/// `plan`/`apply` follow the controller's rule: an object that already owns something on the
/// target (its `status.applied` or the `--state` file) keeps it; a newcomer that conflicts is
/// refused naming it (exit 1), and the senior object's writes still go out.
#[test]
fn a_conflicting_newcomer_is_refused_and_the_owner_keeps_the_target() {
    let text = format!(
        "{}  userAssignedIdentities: [{}]\nstatus:\n  applied:\n    systemAssigned: true\n---\n{}",
        doc(&format!(
            "  target: {}\n  systemAssigned: true\n",
            vm("vm1")
        ))
        .replace("name: bad", "name: ops-agent")
        .replace("namespace: team", "namespace: platform"),
        uai("u1"),
        doc(&format!(
            "  target: {}\n  systemAssigned: false\n",
            vm("vm1")
        ))
        .replace("name: bad", "name: newcomer")
        .replace("namespace: team", "namespace: sandbox")
    );
    let f = tmp("seniority.yaml", &text);
    let live = tmp(
        "live-s.json",
        &json!({"id": vm("vm1"), "identity": {"type": "SystemAssigned", "principalId": "p"}})
            .to_string(),
    );
    let o = run(&[
        "plan",
        "-f",
        f.to_str().unwrap(),
        "--live",
        live.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // ops-agent's own change (adding u1) is planned; the system identity stays on.
    let writes: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(writes.as_array().map(Vec::len), Some(1), "{writes:#}");
    assert_eq!(
        writes[0]["body"]["identity"]["type"], "SystemAssigned, UserAssigned",
        "{writes:#}"
    );
    let err = stderr(&o);
    assert!(
        err.contains("sandbox/newcomer")
            && err.contains("Conflict")
            && err.contains("platform/ops-agent held the target first and keeps it"),
        "{err}"
    );

    // apply: the owner's write goes out, the newcomer is a Refused element, exit 1.
    let world = tmp(
        "world-s.yaml",
        &format!(
            "userAssignedIdentities:\n  - id: {}\nvirtualMachines:\n  - id: {}\n    identity: {{type: SystemAssigned}}\n",
            uai("u1"),
            vm("vm1")
        ),
    );
    let o = run(&[
        "apply",
        "-f",
        f.to_str().unwrap(),
        "--simulator",
        world.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let statuses: Vec<(&str, &str)> = out
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["result"]["status"].as_str().unwrap_or_default(),
                e["method"]
                    .as_str()
                    .or_else(|| e["objects"][0].as_str())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [("Refused", "sandbox/newcomer"), ("Succeeded", "PATCH")],
        "{out:#}"
    );
}

/// `plan` names roles by their names, not only GUIDs.
#[test]
fn plan_names_roles_by_name() {
    let f = tmp(
        "roles.yaml",
        &doc(&format!(
            "  target: {}\n  systemAssigned: true\n  roleAssignments:\n    - {{identity: SystemAssigned, role: Reader, scope: {SUB}/resourceGroups/rg-apps}}\n",
            vm("vm1")
        )),
    );
    let live = tmp(
        "live-roles.json",
        &json!({"id": vm("vm1"), "identity": {"type": "SystemAssigned", "principalId": "p1"}})
            .to_string(),
    );
    let o = run(&[
        "plan",
        "-f",
        f.to_str().unwrap(),
        "--live",
        live.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "+ role Reader (acdd72a7-3385-48ef-bd42-f606fba81ae7) for principal p1 at {SUB}/resourceGroups/rg-apps"
        )),
        "{}",
        stdout(&o)
    );
}

/// `plan` reads live state from an endpoint with `apply`'s credentials: a role assignment
/// recorded in `status.applied` but removed in Azure by someone else is seen (and planned
/// again) only when grants are read from Azure; with `--live` the plan says plainly that they
/// were taken from `status.applied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reads_targets_and_grants_from_an_endpoint() {
    use vmidentity_simulator::{SimConfig, WorldSeed};

    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const PA: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
    let rg = format!("{SUB}/resourceGroups/rg-plan");
    let vm1 = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm-plan-1");
    let ua = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-a");
    let name = vmidentity_planner::grants::assignment_name(&rg, READER, PA);
    let ra_id = format!("{rg}/providers/Microsoft.Authorization/roleAssignments/{name}");
    // Azure: the identity is attached; the Reader assignment is gone (removed out of band).
    let world = format!(
        "userAssignedIdentities:
  - {{id: {ua}, principalId: {PA}}}
virtualMachines:
  - id: {vm1}
    identity: {{type: UserAssigned, userAssignedIdentities: [{ua}]}}
"
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&world).expect("world"),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let url = sim.base_url();
    let objects = tmp(
        "plan-endpoint.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: reader, namespace: team}}
spec:
  target: {vm1}
  userAssignedIdentities: [{ua}]
  roleAssignments:
    - {{identity: {ua}, role: Reader, scope: {rg}}}
status:
  applied:
    userAssignedIdentities: [{ua}]
    roleAssignments:
      - {{id: {ra_id}, scope: {rg}, roleDefinitionId: {READER}, principalId: {PA}, identity: {ua}}}
"
        ),
    );
    let objects = objects.to_str().unwrap().to_string();

    // Online, JSON: exactly the PUT that makes the assignment again, nothing else.
    let o = run_async(
        [
            "plan",
            "-f",
            &objects,
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "-o",
            "json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let writes: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let writes = writes.as_array().expect("array").clone();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0]["method"], "PUT", "{writes:#?}");
    assert!(
        writes[0].to_string().contains(&name),
        "the deterministic name: {writes:#?}"
    );
    assert!(
        stderr(&o).contains("were read from Azure"),
        "{}",
        stderr(&o)
    );
    // Nothing was written: only reads reached the simulator.
    assert_eq!(sim.counters().writes, 0);
    assert!(sim.role_assignments().is_empty());

    // Online, text, --detailed-exitcode: changes (2), and the grant is named.
    let o = run_async(
        [
            "plan",
            "-f",
            &objects,
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "--detailed-exitcode",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("+ role"), "{text}");
    assert!(
        text.contains(
            "Note: Existing role assignments and group memberships were read from Azure."
        ),
        "{text}"
    );

    // Offline (--live): status.applied is believed, so nothing to do — and it says so.
    let live = tmp(
        "plan-endpoint-live.json",
        &json!({
            "id": vm1,
            "identity": {
                "type": "UserAssigned",
                "userAssignedIdentities": {ua.clone(): {"principalId": PA, "clientId": "c0c0c0c0-0000-4000-8000-000000000000"}}
            }
        })
        .to_string(),
    );
    let o = run_async(
        [
            "plan",
            "-f",
            &objects,
            "--live",
            live.to_str().unwrap(),
            "--detailed-exitcode",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(
            "NOT read from Azure: with --live they are taken from the objects' status.applied"
        ),
        "{text}"
    );

    // Without credentials: one line that says how to get them, and no request.
    let o = bin()
        .args(["plan", "-f", &objects, "--endpoint", &url])
        .current_dir(root())
        .env_remove("AZURE_ACCESS_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no ARM credentials"), "{}", stderr(&o));
    sim.shutdown().await;
}

/// `plan --simulator WORLD` plans the bundled examples against the simulator as `apply
/// --simulator` would write them (7 PATCHes, 2 role assignment PUTs, 1 member POST).
#[test]
fn plan_against_the_simulator_shows_what_apply_would_write() {
    let o = run(&[
        "plan",
        "-f",
        "examples",
        "--simulator",
        "examples/demo/world.yaml",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let writes: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let methods: Vec<&str> = writes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|w| w["method"].as_str())
        .collect();
    assert_eq!(
        methods.iter().filter(|m| **m == "PATCH").count(),
        7,
        "{writes:#}"
    );
    assert_eq!(
        methods.iter().filter(|m| **m == "PUT").count(),
        2,
        "{writes:#}"
    );
    assert_eq!(
        methods.iter().filter(|m| **m == "POST").count(),
        1,
        "{writes:#}"
    );
}

/// The text log format written into a file or a pipe carries no ANSI colour codes (colour is
/// for a terminal only).
#[test]
fn text_logs_into_a_pipe_have_no_colour_codes() {
    let o = bin()
        .args([
            "plan",
            "-f",
            "examples/vm-web.yaml",
            "--simulator",
            "examples/demo/world.yaml",
        ])
        .current_dir(root())
        .env("VMIDENTITY_LOG_FORMAT", "text")
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("DEBUG"), "debug logs expected: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape codes in piped logs: {err:?}"
    );
}

/// `apply --state` honours the adopt annotation as the controller does (issue 15 part 2): a
/// listed identity that was on the VM before is recorded in the state only with
/// `vmidentity.dev/adopt: "true"`, without a write; dropped from the file afterwards, it is
/// removed from the VM (the identity nobody listed stays). Without the annotation nothing is
/// recorded and dropping it removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_state_adopts_with_the_annotation_and_a_later_drop_removes() {
    use vmidentity_simulator::{SimConfig, WorldSeed};

    let rg = format!("{SUB}/resourceGroups/rg-adopt");
    let vm1 = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm-adopt-1");
    let ua = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-a");
    let ub = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-b");
    let world = format!(
        "userAssignedIdentities:
  - {{id: {ua}}}
  - {{id: {ub}}}
virtualMachines:
  - id: {vm1}
    identity: {{type: UserAssigned, userAssignedIdentities: [{ua}, {ub}]}}
"
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&world).expect("world"),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let url = sim.base_url();
    let object = |annotations: &str, uais: &str| {
        tmp(
            "adopt.yaml",
            &format!(
                "apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: adopt-1, namespace: team{annotations}}}
spec:
  target: {vm1}
  userAssignedIdentities: [{uais}]
"
            ),
        )
    };
    let state = tmp("adopt-state.json", "");
    std::fs::remove_file(&state).expect("no state yet");
    let apply = |file: &Path| {
        [
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "--state",
            state.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let recorded = || -> Value {
        let text = std::fs::read_to_string(&state).expect("state");
        serde_json::from_str::<Value>(&text).expect("json")["team/adopt-1"].clone()
    };
    let writes = || {
        sim.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .count()
    };
    let adopt = ", annotations: {vmidentity.dev/adopt: \"true\"}";

    // Without the annotation: nothing recorded, and dropping uai-a removes nothing.
    let o = run_async(apply(&object("", &ua))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(recorded(), Value::Null, "owns nothing: not in the state");
    let o = run_async(apply(&object("", ""))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(writes(), 0, "{:#?}", sim.requests());

    // With it: recorded without a write.
    let o = run_async(apply(&object(adopt, &ua))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(writes(), 0, "{:#?}", sim.requests());
    assert_eq!(recorded()["userAssignedIdentities"], json!([ua]));

    // Dropped from the file: removed from the VM; uai-b, never listed, stays.
    let o = run_async(apply(&object(adopt, ""))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(writes(), 1, "{:#?}", sim.requests());
    let identity = sim.identity_of(&vm1).expect("vm").to_string();
    assert!(
        !identity.contains("uai-a") && identity.contains("uai-b"),
        "{identity}"
    );
    assert_eq!(recorded(), Value::Null, "released: owns nothing");

    // A bad value: one line naming the annotation, exit 1, nothing written.
    let o = run_async(apply(&object(
        ", annotations: {vmidentity.dev/adopt: \"yes\"}",
        &ua,
    )))
    .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("metadata.annotations[vmidentity.dev/adopt]"),
        "{}",
        stderr(&o)
    );
    assert_eq!(writes(), 1);
    sim.shutdown().await;
}

/// `apply` never writes for an object under reconcile policy `observe` (issue 15 part 3): the
/// run is refused with one line naming the object and the annotation, exit 1, nothing written;
/// `plan` shows what it would write; an invalid value is refused the same way.
#[test]
fn apply_refuses_observed_objects_and_plan_shows_their_writes() {
    let object = |value: &str| {
        tmp(
            &format!("observed-{value}.yaml"),
            &format!(
                "apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: obs, namespace: team, annotations: {{vmidentity.dev/reconcile-policy: {value}}}}}
spec:
  target: {}
  systemAssigned: true
",
                vm("vm-reports-1")
            ),
        )
    };
    let observed = object("observe");
    let path = observed.to_str().unwrap();
    let o = run(&[
        "apply",
        "-f",
        path,
        "--simulator",
        "examples/demo/world.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "error: {path}#1: team/obs: metadata.annotations[vmidentity.dev/reconcile-policy] is \"observe\": apply never writes for an observed object (see what it would write with `vmidentity plan`, or set it to \"manage\")\nerror: nothing was written\n"
        )
    );
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let o = run(&[
        "plan",
        "-f",
        path,
        "--simulator",
        "examples/demo/world.yaml",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let writes: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(writes.as_array().map(Vec::len), Some(1), "{writes:#}");
    assert_eq!(writes[0]["method"], "PATCH");

    let bad = object("Observe");
    let o = run(&[
        "apply",
        "-f",
        bad.to_str().unwrap(),
        "--simulator",
        "examples/demo/world.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is \"Observe\"; it must be \"manage\" or \"observe\""),
        "{}",
        stderr(&o)
    );
    let managed = object("manage");
    let o = run(&[
        "apply",
        "-f",
        managed.to_str().unwrap(),
        "--simulator",
        "examples/demo/world.yaml",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `apply --state` (issue 15's follow-up): an imported object without adoption lists a role
/// assignment and a group membership someone else made. Nothing is written, nothing is
/// recorded in the state, one `note:` line says they are held, not adopted; dropping the
/// lines later deletes nothing. With `vmidentity.dev/adopt: "true"` they are recorded (the
/// assignment by its existing name) and a later drop removes exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_state_leaves_pre_existing_grants_alone_unless_adopted() {
    use vmidentity_simulator::{SimConfig, WorldSeed};

    const PA: &str = "aaaaaaaa-0000-4000-8000-00000000f0a1";
    const GROUP: &str = "11111111-1111-4111-8111-11111111f0a1";
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const THEIRS: &str = "55555555-5555-4555-8555-55555555f0a1";
    let rg = format!("{SUB}/resourceGroups/rg-held");
    let vm1 = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm-held-1");
    let ua = format!("{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-a");
    let theirs_id = format!("{rg}/providers/Microsoft.Authorization/roleAssignments/{THEIRS}");
    let world = format!(
        "userAssignedIdentities:
  - {{id: {ua}, principalId: {PA}}}
virtualMachines:
  - id: {vm1}
    identity: {{type: UserAssigned, userAssignedIdentities: [{ua}]}}
groups:
  - {{id: {GROUP}, displayName: terraform-readers, members: [{PA}]}}
roleAssignments:
  - {{name: {THEIRS}, scope: {rg}, roleDefinitionId: {READER}, principalId: {PA}}}
"
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&world).expect("world"),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let url = sim.base_url();
    let object = |annotations: &str, grants: bool| {
        let grants = if grants {
            format!(
                "  roleAssignments:\n    - {{identity: {ua}, role: Reader, scope: {rg}}}\n  groupMemberships:\n    - {{identity: {ua}, groupObjectId: {GROUP}}}\n"
            )
        } else {
            String::new()
        };
        tmp(
            "held.yaml",
            &format!(
                "apiVersion: vmidentity.dev/v1alpha1
kind: VirtualMachineIdentity
metadata: {{name: held-1, namespace: team{annotations}}}
spec:
  target: {vm1}
  userAssignedIdentities: [{ua}]
{grants}"
            ),
        )
    };
    let state = tmp("held-state.json", "");
    std::fs::remove_file(&state).expect("no state yet");
    let apply = |file: &Path| {
        [
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "--graph-endpoint",
            &url,
            "--graph-token",
            "sim-graph-token",
            "--state",
            state.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let recorded = || -> Value {
        let text = std::fs::read_to_string(&state).expect("state");
        serde_json::from_str::<Value>(&text).expect("json")["team/held-1"].clone()
    };
    let writes = || -> Vec<(String, String)> {
        sim.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .filter(|r| {
                !r.path.contains("Microsoft.ResourceGraph") && !r.path.ends_with("getMemberGroups")
            })
            .map(|r| (r.method, r.path))
            .collect()
    };
    let still_held = || {
        sim.role_assignments_of(PA).iter().any(|a| {
            a["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&theirs_id))
        })
    };
    let adopt = ", annotations: {vmidentity.dev/adopt: \"true\"}";

    // `plan` reads them: no write planned (`[]`), the same note on stderr.
    let file = object("", true);
    let o = run_async(
        [
            "plan",
            "-f",
            file.to_str().unwrap(),
            "--endpoint",
            &url,
            "--token",
            "sim-token",
            "--graph-endpoint",
            &url,
            "--graph-token",
            "sim-graph-token",
            "-o",
            "json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).expect("json"),
        json!([])
    );
    assert!(stderr(&o).contains("held, not adopted"), "{}", stderr(&o));

    // Without adoption: nothing written or recorded; one note line naming both.
    let o = run_async(apply(&object("", true))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(writes().is_empty(), "{:#?}", writes());
    let rec = recorded();
    assert!(
        rec.get("roleAssignments").is_none() && rec.get("groupMemberships").is_none(),
        "{rec:#}"
    );
    let err = stderr(&o);
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note: ")).collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(
        notes[0].contains("held, not adopted")
            && notes[0].contains(THEIRS)
            && notes[0].contains(&format!("membership of group {GROUP}")),
        "{err}"
    );

    // Dropped from the file: nothing deleted, in ARM or Graph.
    let o = run_async(apply(&object("", false))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(writes().is_empty(), "{:#?}", writes());
    assert!(still_held());

    // Adopted: recorded (the assignment by its own name), still nothing written.
    let o = run_async(apply(&object(adopt, true))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(writes().is_empty(), "{:#?}", writes());
    assert!(!stderr(&o).contains("note: "), "{}", stderr(&o));
    let rec = recorded();
    assert!(
        rec["roleAssignments"][0]["id"]
            .as_str()
            .is_some_and(|i| i.eq_ignore_ascii_case(&theirs_id)),
        "{rec:#}"
    );
    assert_eq!(rec["groupMemberships"][0]["groupObjectId"], GROUP);

    // Then dropped: exactly that assignment and that membership are removed.
    let o = run_async(apply(&object(adopt, false))).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = writes();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].0, "DELETE");
    assert!(sent[0].1.eq_ignore_ascii_case(&theirs_id), "{sent:#?}");
    assert_eq!(sent[1].0, "DELETE");
    assert!(
        sent[1]
            .1
            .contains(&format!("/groups/{GROUP}/members/{PA}/$ref")),
        "{sent:#?}"
    );
    assert!(!still_held());
}
