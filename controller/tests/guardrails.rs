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
    let ok = env.wait_for("ok", 30, "Ready", is_ready).await;
    let u1 = ok.status.unwrap().principals.unwrap().user_assigned[&uai("u1")].clone();

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
