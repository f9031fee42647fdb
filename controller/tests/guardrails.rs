//! Tenancy guardrails end to end, as an attacker would try them: the real API server and etcd,
//! the ARM simulator, the real `vmidentity controller` process and a
//! `VirtualMachineIdentityPolicy`. Every refusal must come with its message and no write.

#[path = "e2e/harness.rs"]
mod harness;

use harness::*;
use serde_json::{Value, json};
use vmidentity::crd::VirtualMachineIdentity;

const ALLOWED_GROUP: &str = "0f6c5a1e-1111-4c7a-9e21-0d4b5a6c7e81";
const OTHER_GROUP: &str = "0f6c5a1e-2222-4c7a-9e21-0d4b5a6c7e82";

fn rg() -> String {
    format!("{SUB}/resourceGroups/rg-e2e")
}

fn other_vm() -> String {
    format!("{SUB}/resourceGroups/rg-other/providers/Microsoft.Compute/virtualMachines/vmx")
}

fn team_policy(ns: &str, uais: &[&str]) -> Value {
    json!({
        "namespaces": {"names": [ns]},
        "targets": {"resourceGroups": [rg()]},
        "userAssignedIdentities": {"ids": uais.iter().map(|u| uai(u)).collect::<Vec<_>>()},
        "roleAssignments": [
            {"roles": ["Reader"], "scopes": [format!("{}/**", rg())]},
            // A rule alone does not lift the built-in deny list.
            {"roles": ["Owner"], "scopes": ["/**"]}
        ],
        "groups": [ALLOWED_GROUP],
    })
}

fn denied_with(o: &VirtualMachineIdentity, fragment: &str) -> bool {
    stalled_with(o, "PolicyDenied")
        && o.status.as_ref().is_some_and(|s| {
            s.observed_generation == o.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.message.contains(fragment))
        })
}

/// Writes the simulator saw against `id` (VM PATCH/PUT) or anywhere for grants.
fn writes_to(env: &Env, id: &str) -> usize {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| {
            r.method != "GET"
                && r.path
                    .to_ascii_lowercase()
                    .contains(&id.to_ascii_lowercase())
        })
        .count()
}

#[tokio::test]
async fn the_attackers_list_is_refused_with_its_message_and_no_write() {
    let extra = format!(
        "  - id: {}\ngroups:\n  - id: {ALLOWED_GROUP}\n    displayName: allowed\n  - id: {OTHER_GROUP}\n    displayName: admins\n",
        other_vm()
    );
    let vms = ["vm1", "vm2", "vm3", "vm4", "vm5", "vm6", "vm7"];
    let env = Env::new("e2e-guard", &world(&vms, &extra)).await;
    env.set_policy(team_policy(&env.ns, &["u1", "u2"])).await;
    let _c = env.controller("a");

    let sub = SUB.to_string();
    let attempts: Vec<(&str, Value, &str)> = vec![
        (
            "other-rg",
            json!({"target": other_vm(), "userAssignedIdentities": [uai("u1")]}),
            "is not among the allowed targets",
        ),
        (
            "bad-uai",
            json!({"target": vm("vm2"), "userAssignedIdentities": [uai("u3")]}),
            "u3 is not among the allowed user-assigned identities",
        ),
        (
            "owner",
            json!({"target": vm("vm3"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "Owner", "scope": sub}]}),
            "Owner is on the built-in deny list",
        ),
        (
            "reader-at-sub",
            json!({"target": vm("vm4"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": sub}]}),
            "is not allowed at scope",
        ),
        (
            "group",
            json!({"target": vm("vm5"), "userAssignedIdentities": [uai("u1")],
                   "groupMemberships": [{"identity": uai("u1"), "groupObjectId": OTHER_GROUP}]}),
            "is not allowed (policy",
        ),
        (
            "exact",
            json!({"target": vm("vm6"), "mode": "Exact", "userAssignedIdentities": [uai("u1")]}),
            "mode: Exact is not allowed",
        ),
        (
            "system-off",
            json!({"target": vm("vm7"), "systemAssigned": false}),
            "systemAssigned: false",
        ),
    ];
    for (name, spec, _) in &attempts {
        env.create(name, spec.clone()).await.expect(name);
    }
    // The one that is allowed converges (the policy is not simply "deny everything").
    env.create(
        "ok",
        json!({"target": vm("vm1"), "systemAssigned": true, "userAssignedIdentities": [uai("u1")],
               "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": rg()}],
               "groupMemberships": [{"identity": uai("u1"), "groupObjectId": ALLOWED_GROUP}]}),
    )
    .await
    .expect("ok");
    for (name, _, fragment) in &attempts {
        let o = env
            .wait_for(name, 30, fragment, |o| denied_with(o, fragment))
            .await;
        let msg = o
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap()
            .message;
        // The message names the policy and the rule.
        assert!(msg.contains(&env.policy_name()), "{name}: {msg}");
        assert!(msg.contains("(policy "), "{name}: {msg}");
        // Never claimed: no finalizer, no ownership record.
        let o = env.get(name).await.unwrap();
        assert!(
            o.metadata.finalizers.unwrap_or_default().is_empty(),
            "{name}"
        );
    }
    // Each refusal also left a Warning Event on its object.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let denied_events: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PolicyDenied"))
        .filter_map(|e| e.regarding.and_then(|r| r.name))
        .collect();
    for (name, _, _) in &attempts {
        assert!(
            denied_events.iter().any(|n| n == name),
            "no PolicyDenied event for {name}: {denied_events:?}"
        );
    }
    let ok = env.wait_for("ok", 30, "Ready", is_ready).await;
    let u1 = ok
        .status
        .unwrap()
        .principals
        .unwrap()
        .user_assigned
        .get(&uai("u1"))
        .expect("u1's principal")
        .to_string();

    // No write to any denied target, no grant beyond the allowed object's.
    for v in ["vm2", "vm3", "vm4", "vm5", "vm6", "vm7"] {
        assert_eq!(writes_to(&env, &vm(v)), 0, "{v}");
        assert_eq!(env.identity(&vm(v)), ("None".into(), vec![]), "{v}");
    }
    assert_eq!(writes_to(&env, &other_vm()), 0);
    assert_eq!(env.sim.role_assignments_of(&u1).len(), 1);
    assert_eq!(env.sim.member_of(&u1), vec![ALLOWED_GROUP.to_string()]);

    // The policy is tightened after "ok" converged: u1 is no longer allowed. The object goes
    // Stalled with the reason; nothing it applied is removed by the denial.
    let writes_before = env.sim.counters().writes;
    let grants_before = env.sim.counters().authorization_writes + env.sim.counters().graph_writes;
    env.set_policy(team_policy(&env.ns, &["u2"])).await;
    env.wait_for("ok", 30, "denied after tightening", |o| {
        denied_with(o, "u1 is not among the allowed user-assigned identities")
    })
    .await;
    // A few resyncs (3 s) later: still nothing removed, nothing written.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert_eq!(
        env.identity(&vm("vm1")),
        ("SystemAssigned, UserAssigned".into(), vec!["u1".into()])
    );
    assert_eq!(env.sim.role_assignments_of(&u1).len(), 1);
    assert_eq!(env.sim.member_of(&u1), vec![ALLOWED_GROUP.to_string()]);
    assert_eq!(env.sim.counters().writes, writes_before);
    assert_eq!(
        env.sim.counters().authorization_writes + env.sim.counters().graph_writes,
        grants_before
    );
    let o = env.get("ok").await.unwrap();
    assert_eq!(
        o.status.unwrap().applied.unwrap().user_assigned_identities,
        vec![uai("u1")],
        "the ownership record is kept"
    );

    // While "ok" is denied, an allowed object in Exact mode (which removes what no object
    // wants) must not take u1 away: the denied object still holds its place on vm1, so the
    // Exact object is refused as sharing the target, and nothing is written.
    let mut exact_allowed = team_policy(&env.ns, &["u2"]);
    exact_allowed["allowExactMode"] = json!(true);
    env.set_policy(exact_allowed).await;
    env.create(
        "exact-co",
        json!({"target": vm("vm1"), "mode": "Exact", "systemAssigned": true,
               "userAssignedIdentities": [uai("u2")]}),
    )
    .await
    .expect("exact-co");
    env.wait_for("exact-co", 30, "Conflict", |o| stalled_with(o, "Conflict"))
        .await;
    assert_eq!(
        env.identity(&vm("vm1")),
        ("SystemAssigned, UserAssigned".into(), vec!["u1".into()]),
        "u1 is held by the denied object"
    );
    assert_eq!(env.sim.counters().writes, writes_before);
    env.api
        .delete("exact-co", &Default::default())
        .await
        .expect("delete exact-co");
    env.wait_gone("exact-co", 30).await;
    let writes_before = env.sim.counters().writes;

    // Loosened again: Ready without a write (it was all still there).
    env.set_policy(team_policy(&env.ns, &["u1", "u2"])).await;
    env.wait_for("ok", 30, "Ready again", is_ready).await;
    assert_eq!(env.sim.counters().writes, writes_before);
    env.cleanup().await;
    env.delete_policy().await;
}

#[tokio::test]
async fn a_namespace_no_policy_covers_may_do_nothing_until_one_does() {
    let env = Env::new("e2e-nopolicy", &world(&["vm1"], "")).await;
    env.delete_policy().await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("create");
    env.wait_for("web", 30, "denied", |o| {
        denied_with(o, "no VirtualMachineIdentityPolicy covers namespace")
    })
    .await;
    assert_eq!(env.sim.counters().writes, 0);
    assert_eq!(env.sim.counters().reads, 0, "not even read");
    // A policy appears: the object is looked at again without any edit of its own.
    env.set_policy(allow_all_policy(&env.ns)).await;
    env.wait_for("web", 30, "Ready", is_ready).await;
    assert_eq!(
        env.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["u1".into()])
    );
    env.cleanup().await;
    env.delete_policy().await;
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const TEAM_CLIENT: &str = "bbbbbbbb-0000-0000-0000-00000000000a";

async fn put_secret(env: &Env, data: Value) {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let body = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vmidentity-credential"}, "stringData": data});
    api.patch(
        "vmidentity-credential",
        &kube::api::PatchParams::apply("vmidentity-e2e").force(),
        &kube::api::Patch::Apply(&body),
    )
    .await
    .expect("secret");
}

fn patch_attempts(env: &Env, id: &str) -> usize {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.eq_ignore_ascii_case(id))
        .count()
}

/// Azure's own RBAC confines the team: the controller acts for the namespace with the
/// namespace's credential, so what that credential may not do fails with Azure's 403, which
/// is reported and not retried in a storm.
#[tokio::test]
async fn a_namespace_credential_confines_the_team_to_its_own_azure_rights() {
    use vmidentity_simulator::{AppConfig, CallerConfig};
    let env = Env::with_config("e2e-nscred", &world(&["vm1", "vm2", "vm3"], ""), |c| {
        c.apps = vec![AppConfig::with_secret(TEAM_CLIENT, TENANT, "team-secret")];
        let mut team = CallerConfig::new("team-a-placeholder-token")
            .with_role_assignment_write_scopes(&[])
            .with_compute_write_scopes(&[&vm("vm1"), &vm("vm3")]);
        team.client_id = TEAM_CLIENT.to_string();
        c.callers = vec![team];
    })
    .await;
    // The platform admin binds the team's identity to its namespace.
    env.set_policy(allow_all_binding(&env.ns, &[TEAM_CLIENT]))
        .await;
    let _c = env.controller_requiring_credentials("a", false);
    // No Secret yet, and credentials are required: refused, nothing sent to ARM.
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for("web", 30, "NoCredential", |o| {
        stalled_with(o, "NoCredential")
    })
    .await;
    assert_eq!(env.sim.counters().requests, 0);

    put_secret(
        &env,
        json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": TEAM_CLIENT, "AZURE_CLIENT_SECRET": "team-secret"}),
    )
    .await;
    // Allowed by the team's own rights (vm1): converges with the team's token.
    env.wait_for("web", 30, "Ready with the namespace's credential", is_ready)
        .await;
    // vm2 is outside the team's rights: Azure says 403, the object says why.
    env.create(
        "db",
        json!({"target": vm("vm2"), "userAssignedIdentities": [uai("u2")]}),
    )
    .await
    .expect("db");
    let o = env
        .wait_for("db", 30, "Stalled AuthorizationFailed", |o| {
            stalled_with(o, "AuthorizationFailed")
        })
        .await;
    let msg = o
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message;
    assert!(
        msg.contains(TEAM_CLIENT),
        "names the team's identity: {msg}"
    );
    assert!(
        msg.contains("Microsoft.Compute/virtualMachines/write"),
        "{msg}"
    );
    // A role assignment the team's identity may not create: 403 on the PUT.
    env.create(
        "grant",
        json!({"target": vm("vm3"), "userAssignedIdentities": [uai("u3")],
               "roleAssignments": [{"identity": uai("u3"), "role": "Reader", "scope": format!("{SUB}/resourceGroups/rg-e2e")}]}),
    )
    .await
    .expect("grant");
    env.wait_for(
        "grant",
        30,
        "Stalled AuthorizationFailed (role assignment)",
        |o| stalled_with(o, "AuthorizationFailed"),
    )
    .await;
    // Not retried in a storm: at most one attempt per resync period (3 s here, jittered).
    let before = patch_attempts(&env, &vm("vm2"));
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let during = patch_attempts(&env, &vm("vm2")) - before;
    assert!(during <= 4, "{during} PATCH attempts on vm2 in 7 s");
    assert_eq!(env.identity(&vm("vm2")), ("None".into(), vec![]));
    env.cleanup().await;
    env.delete_policy().await;
}

/// The chart's ValidatingAdmissionPolicy (rendered from the template by hand, bound to this
/// test's namespace only) refuses at admission what the policy does not allow.
#[tokio::test]
async fn the_admission_policy_refuses_at_create_with_the_rule_in_the_message() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let env = Env::new("e2e-vap", &world(&["vm1"], "")).await;
    env.set_policy(team_policy(&env.ns, &["u1"])).await;
    let name = format!("vmidentity-{}", env.ns);
    let (vap, mut binding) = render_admission(&name);
    binding["spec"]["matchResources"] =
        json!({"namespaceSelector": {"matchLabels": {"vmidentity-e2e/ns": env.ns}}});
    let vaps: kube::Api<ValidatingAdmissionPolicy> = kube::Api::all(env.client.clone());
    let bindings: kube::Api<ValidatingAdmissionPolicyBinding> = kube::Api::all(env.client.clone());
    let pp = kube::api::PatchParams::apply("vmidentity-e2e").force();
    vaps.patch(
        &format!("{name}-guardrails"),
        &pp,
        &kube::api::Patch::Apply(&vap),
    )
    .await
    .expect("the chart's ValidatingAdmissionPolicy is accepted by the API server");
    bindings
        .patch(
            &format!("{name}-guardrails"),
            &pp,
            &kube::api::Patch::Apply(&binding),
        )
        .await
        .expect("binding");
    let refusals: Vec<(&str, Value, &str)> = vec![
        (
            "bad-uai",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u2")]}),
            "spec.userAssignedIdentities",
        ),
        (
            "other-rg",
            json!({"target": other_vm()}),
            "is not among the allowed targets",
        ),
        (
            "owner",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "owner", "scope": SUB}]}),
            "built-in deny list",
        ),
        (
            "owner-by-guid",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "scope": SUB}]}),
            "built-in deny list",
        ),
        (
            "reader-at-sub",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": SUB}]}),
            "not allowed at its scope",
        ),
        (
            "group",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "groupMemberships": [{"identity": uai("u1"), "groupObjectId": OTHER_GROUP}]}),
            "spec.groups",
        ),
        (
            "exact",
            json!({"target": vm("vm1"), "mode": "Exact"}),
            "mode: Exact is not allowed",
        ),
        (
            "system-off",
            json!({"target": vm("vm1"), "systemAssigned": false}),
            "systemAssigned: false",
        ),
    ];
    // The binding takes a moment to be enforced.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match env.create("probe", refusals[0].1.clone()).await {
            Err(_) => break,
            Ok(_) => {
                env.cleanup().await;
                assert!(
                    std::time::Instant::now() < deadline,
                    "the admission policy is never enforced"
                );
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }
    }
    for (name, spec, fragment) in &refusals {
        let err = env
            .create(name, spec.clone())
            .await
            .expect_err(&format!("{name} must be refused at admission"));
        let msg = err.to_string();
        assert!(msg.contains(fragment), "{name}: {msg}");
        assert!(
            msg.contains(&env.policy_name()),
            "{name}: names the policy: {msg}"
        );
    }
    // What the policy allows is admitted, Reader at the resource group included.
    env.create(
        "ok",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
               "roleAssignments": [{"identity": uai("u1"), "role": "acdd72a7-3385-48ef-bd42-f606fba81ae7", "scope": rg()}],
               "groupMemberships": [{"identity": uai("u1"), "groupObjectId": ALLOWED_GROUP}]}),
    )
    .await
    .expect("an allowed object is admitted");
    // Tightened later: admission does not block the controller's finalizer/status updates
    // (only spec changes are checked), so deleting still works.
    env.set_policy(team_policy(&env.ns, &["u2"])).await;
    let api = env.api.clone();
    api.patch(
        "ok",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": ["example.com/x"]}})),
    )
    .await
    .expect("a metadata-only update is not refused");
    api.patch(
        "ok",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("finalizer removal");
    let _ = bindings
        .delete(&format!("{name}-guardrails"), &Default::default())
        .await;
    let _ = vaps
        .delete(&format!("{name}-guardrails"), &Default::default())
        .await;
    env.cleanup().await;
    env.delete_policy().await;
}

/// `charts/vmidentity/templates/admission.yaml` with its few template expressions filled in.
fn render_admission(fullname: &str) -> (Value, Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/vmidentity/templates/admission.yaml");
    let text = std::fs::read_to_string(path).expect("admission template");
    let rendered: String = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("{{- if") || t.starts_with("{{- end") || t.starts_with("{{- $"))
        })
        .map(|l| {
            if l.contains("include \"vmidentity.labels\"") {
                "    app.kubernetes.io/name: vmidentity".to_string()
            } else if l.contains(".Values.admission.validationActions") {
                "    - Deny".to_string()
            } else {
                l.replace("{{ $fullname }}", fullname)
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!rendered.contains("{{"), "unrendered template: {rendered}");
    let docs: Vec<Value> = rendered
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).expect("admission YAML"))
        .collect();
    (docs[0].clone(), docs[1].clone())
}

/// A tiny HTTP server standing in for an attacker's Entra authority: counts every connection
/// (and answers 400), so a test can prove the controller never called it.
async fn attacker_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (url, hits)
}

fn stalled_message(o: &VirtualMachineIdentity) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Attacks 1 and 3 of the security review: a tenant's credential Secret may not change the
/// controller's own token settings (authority host, token file), and may not name an Azure
/// identity the platform admin did not bind to the namespace — another team's, or the
/// controller's own — even though all of them trust the controller's federated token.
#[tokio::test]
async fn a_tenant_secret_cannot_redirect_the_controllers_token_or_borrow_an_identity() {
    use std::sync::atomic::Ordering;
    use vmidentity_simulator::AppConfig;
    const CONTROLLER_CLIENT: &str = "cccccccc-0000-0000-0000-0000000000c0";
    const OTHER_TEAM_CLIENT: &str = "cccccccc-0000-0000-0000-0000000000c2";
    let issuer = "https://oidc.example/cluster/";
    let subject = "system:serviceaccount:vmidentity-system:vmidentity";
    let env = Env::with_config("e2e-secret", &world(&["vm1"], ""), |c| {
        // Every identity trusts the controller's service account (as it must, for workload
        // identity): only the binding stops a tenant from choosing one that is not theirs.
        c.apps = [CONTROLLER_CLIENT, TEAM_CLIENT, OTHER_TEAM_CLIENT]
            .iter()
            .map(|id| AppConfig::federated(id, TENANT, issuer, subject))
            .collect();
    })
    .await;
    env.set_policy(allow_all_binding(
        &env.ns,
        &[TEAM_CLIENT, CONTROLLER_CLIENT],
    ))
    .await;
    let token_file = federated_token_file(issuer, subject, "sa-token");
    let (evil, evil_hits) = attacker_server().await;
    let url = env.sim.base_url();
    let c = ControllerProc::start_with_env(
        &env.ns,
        &env.sim,
        "a",
        &REQUIRED_CREDENTIALS_FLAGS,
        &[
            ("VMIDENTITY_AUTH", "workloadIdentity"),
            ("AZURE_AUTHORITY_HOST", &url),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CONTROLLER_CLIENT),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    let secret = |extra: Value| {
        let mut d = json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": TEAM_CLIENT});
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        d
    };
    env.put_secret_in(
        &env.ns,
        "vmidentity-credential",
        secret(json!({"AZURE_AUTHORITY_HOST": evil})),
    )
    .await;
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    // 1a. The authority host: refused, and the attacker's server never hears from us.
    let o = env
        .wait_for("web", 30, "CredentialInvalid (authority)", |o| {
            stalled_with(o, "CredentialInvalid")
                && stalled_message(o).contains("AZURE_AUTHORITY_HOST")
        })
        .await;
    assert!(
        stalled_message(&o).contains("not allowed"),
        "{}",
        stalled_message(&o)
    );
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "the federated token went to the attacker"
    );
    // 1b. The token file (any file of the pod; /dev/zero to exhaust memory): refused unread.
    for (file, fragment) in [
        ("/dev/zero", "AZURE_FEDERATED_TOKEN_FILE"),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "AZURE_FEDERATED_TOKEN_FILE",
        ),
    ] {
        env.put_secret_in(
            &env.ns,
            "vmidentity-credential",
            secret(
                json!({"AZURE_FEDERATED_TOKEN_FILE": file, "VMIDENTITY_AUTH": "workloadIdentity"}),
            ),
        )
        .await;
        env.wait_for("web", 30, "CredentialInvalid (token file)", |o| {
            stalled_with(o, "CredentialInvalid")
                && stalled_message(o).contains(fragment)
                && stalled_message(o).contains("VMIDENTITY_AUTH")
        })
        .await;
    }
    assert!(
        !c.metrics().await.is_empty(),
        "the controller is still alive"
    );
    // 3a. Another team's identity (it trusts the controller's token too): not bound here.
    env.put_secret_in(
        &env.ns,
        "vmidentity-credential",
        json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": OTHER_TEAM_CLIENT}),
    )
    .await;
    let o = env
        .wait_for("web", 30, "CredentialNotBound (other team)", |o| {
            stalled_with(o, "CredentialNotBound") && stalled_message(o).contains(OTHER_TEAM_CLIENT)
        })
        .await;
    assert!(
        stalled_message(&o).contains("spec.credentials.clientIds"),
        "{}",
        stalled_message(&o)
    );
    // 3b. The controller's own identity, even though the (careless) policy lists it.
    env.put_secret_in(
        &env.ns,
        "vmidentity-credential",
        json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CONTROLLER_CLIENT}),
    )
    .await;
    env.wait_for("web", 30, "CredentialNotBound (controller's own)", |o| {
        stalled_with(o, "CredentialNotBound")
            && stalled_message(o).contains("controller's own identity")
    })
    .await;
    // No token was ever asked for an identity that is not the team's, and nothing was
    // written to ARM.
    assert_eq!(env.logins_for(OTHER_TEAM_CLIENT), 0);
    assert_eq!(writes_to(&env, &vm("vm1")), 0);
    // The bound identity works: Ready, through the controller's federated token.
    env.put_secret_in(&env.ns, "vmidentity-credential", secret(json!({})))
        .await;
    env.wait_for("web", 30, "Ready with the team's identity", is_ready)
        .await;
    assert!(env.logins_for(TEAM_CLIENT) >= 1);
    assert_eq!(evil_hits.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_file(&token_file);
    env.cleanup().await;
    env.delete_policy().await;
}

/// Attack 6: `status.applied` is writable by whoever may write the status subresource. A
/// record forged there naming another principal's role assignment and group membership must
/// not make the controller read, delete or un-assign them.
#[tokio::test]
async fn a_forged_status_record_cannot_remove_another_principals_grants() {
    const VICTIM: &str = "dddddddd-0000-0000-0000-0000000000d1";
    const GROUP: &str = "dddddddd-0000-0000-0000-0000000000f1";
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    let scope = rg();
    let victim_name = vmidentity_planner::grants::assignment_name(&scope, READER, VICTIM);
    let victim_id =
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{victim_name}");
    let extra = format!(
        "principals:\n  - id: {VICTIM}\n    type: ServicePrincipal\n    displayName: victim\ngroups:\n  - id: {GROUP}\n    displayName: prod-admins\n    members: [{VICTIM}]\nroleAssignments:\n  - name: {victim_name}\n    scope: {scope}\n    roleDefinitionId: {READER}\n    principalId: {VICTIM}\n"
    );
    let env = Env::new("e2e-forged", &world(&["vm1"], &extra)).await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
               "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": scope}]}),
    )
    .await
    .expect("web");
    let o = env.wait_for("web", 30, "Ready", is_ready).await;
    // The attacker (who may write status) adds the victim's grants to the record.
    let mut applied = serde_json::to_value(o.status.unwrap().applied.unwrap()).unwrap();
    applied["roleAssignments"].as_array_mut().unwrap().push(
        json!({"id": victim_id, "scope": scope, "roleDefinitionId": READER,
                     "principalId": VICTIM, "identity": uai("u1")}),
    );
    applied["groupMemberships"] = json!([{"groupObjectId": GROUP, "principalId": VICTIM,
                                          "identity": uai("u1")}]);
    env.api
        .patch_status(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"applied": applied}})),
        )
        .await
        .expect("forge status");
    // A spec edit makes the controller plan the record at once (a resync would too).
    env.patch_spec(
        "web",
        json!({"userAssignedIdentities": [uai("u1"), uai("u2")],
        "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": scope}]}),
    )
    .await;
    env.wait_for("web", 30, "Ready with u2", |o| {
        is_ready(o) && env.identity(&vm("vm1")).1 == vec!["u1".to_string(), "u2".to_string()]
    })
    .await;
    // Two more resync periods for good measure.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert_eq!(
        env.sim.role_assignments_of(VICTIM).len(),
        1,
        "the victim's role assignment was deleted"
    );
    assert!(
        env.sim
            .group_members(GROUP)
            .unwrap_or_default()
            .iter()
            .any(|m| m.eq_ignore_ascii_case(VICTIM)),
        "the victim was removed from the group"
    );
    let touched = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| {
            let q = r.query.clone().unwrap_or_default().to_ascii_lowercase();
            r.path.to_ascii_lowercase().contains(VICTIM) || q.contains(VICTIM)
        })
        .count();
    assert_eq!(touched, 0, "the victim's grants were not even read");
    // The forged records leave the record, with a Warning saying why.
    let o = env.get("web").await.unwrap();
    let rec = o.status.unwrap().applied.unwrap();
    assert!(
        rec.role_assignments
            .iter()
            .all(|r| r.principal_id != VICTIM)
    );
    assert!(rec.group_memberships.is_empty());
    env.cleanup().await;
    env.delete_policy().await;
}

/// Attack 2 at the earliest door: the CRD's CEL rules refuse dot segments, '%' and '\' in a
/// role assignment's scope (and in targets and identity IDs) before anything is stored.
#[tokio::test]
async fn dot_segments_in_ids_and_scopes_are_refused_at_admission() {
    let env = Env::new("e2e-dots", &world(&["vm1"], "")).await;
    let escape = format!("{}/providers/../../../resourceGroups/rg-prod", rg());
    let attempts: Vec<(&str, Value)> = vec![
        (
            "scope-dots",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": escape}]}),
        ),
        (
            "scope-percent",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "Reader",
                       "scope": format!("{}/providers/%2e%2e/%2e%2e/%2e%2e/resourceGroups/rg-prod", rg())}]}),
        ),
        (
            "scope-backslash",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
                   "roleAssignments": [{"identity": uai("u1"), "role": "Reader",
                       "scope": format!("{}/providers\\..\\..\\..\\resourceGroups\\rg-prod", rg())}]}),
        ),
        (
            "target-dots",
            json!({"target": format!("{SUB}/resourceGroups/rg-e2e/providers/Microsoft.Compute/virtualMachines/.."), "systemAssigned": true}),
        ),
        (
            "uai-dots",
            json!({"target": vm("vm1"), "userAssignedIdentities": [format!("{SUB}/resourceGroups/rg-e2e/providers/Microsoft.ManagedIdentity/userAssignedIdentities/..")]}),
        ),
    ];
    for (name, spec) in attempts {
        let err = env
            .create_raw(
                json!({"apiVersion": "vmidentity.dev/v1alpha1", "kind": "VirtualMachineIdentity",
                "metadata": {"name": name}, "spec": spec}),
            )
            .await
            .expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains("Invalid") || msg.contains("invalid"),
            "{name}: {msg}"
        );
    }
    assert_eq!(env.sim.counters().requests, 0);
    env.cleanup().await;
    env.delete_policy().await;
}

/// The example tenant roles (examples/rbac/tenant-roles.yaml), bound to a tenant user on the
/// real API server: the tenant manages its objects but cannot write their status (the
/// ownership record the controller acts on) nor policies.
#[tokio::test]
async fn the_example_tenant_roles_do_not_grant_the_status_subresource() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
    use kube::api::{Patch, PatchParams};
    use serde::Deserialize;
    let env = Env::new("e2e-rbac", &world(&["vm1"], "")).await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rbac/tenant-roles.yaml"),
    )
    .expect("example roles");
    let roles: kube::Api<ClusterRole> = kube::Api::all(env.client.clone());
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let role = ClusterRole::deserialize(doc).expect("a ClusterRole");
        let name = role.metadata.name.clone().expect("name");
        roles
            .patch(
                &name,
                &PatchParams::apply("vmidentity-e2e").force(),
                &Patch::Apply(&role),
            )
            .await
            .expect("apply role");
    }
    let user = format!("tenant-{}", env.ns);
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tenant-edit", "namespace": env.ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "vmidentity-tenant-edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    kube::Api::<RoleBinding>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "tenant-edit",
            &PatchParams::apply("vmidentity-e2e").force(),
            &Patch::Apply(&binding),
        )
        .await
        .expect("binding");
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.auth_info.impersonate = Some(user.clone());
    let tenant = kube::Client::try_from(cfg).expect("tenant client");
    let api: kube::Api<VirtualMachineIdentity> = kube::Api::namespaced(tenant.clone(), &env.ns);
    // RBAC bindings take effect within a moment.
    let spec: vmidentity::crd::VirtualMachineIdentitySpec =
        serde_json::from_value(json!({"target": vm("vm1"), "systemAssigned": true})).unwrap();
    let obj = VirtualMachineIdentity::new("mine", spec);
    let mut created = None;
    for _ in 0..50 {
        match api.create(&Default::default(), &obj).await {
            Ok(o) => {
                created = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(created.is_some(), "the tenant may create its objects");
    let forged = api
        .patch_status(
            "mine",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"applied": {"userAssignedIdentities": [uai("u1")]}}})),
        )
        .await
        .expect_err("the tenant may not write status");
    assert!(
        matches!(forged, kube::Error::Api(ref e) if e.code == 403),
        "{forged}"
    );
    let policies: kube::Api<vmidentity::crd::VirtualMachineIdentityPolicy> = kube::Api::all(tenant);
    let p = serde_json::from_value(json!({"apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentityPolicy", "metadata": {"name": format!("{}-mine", env.ns)},
        "spec": allow_all_policy(&env.ns)}))
    .unwrap();
    let err = policies
        .create(&Default::default(), &p)
        .await
        .expect_err("the tenant may not write policies");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 403),
        "{err}"
    );
    env.cleanup().await;
    env.delete_policy().await;
}
