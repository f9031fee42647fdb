//! A user-assigned identity added and granted in the same change converges in one pass.
//!
//! ARM answers the identity PATCH before it has bound the identities it adds: in that
//! answer each new `userAssignedIdentities` entry is `{}` (no `principalId`), and only a
//! GET after the operation shows it (recorded in the Azure CLI's VM / VMSS identity tests;
//! the simulator answers the same way, see `simulator/tests/lro.rs`). The engine reads each
//! such identity from Microsoft.ManagedIdentity after the PATCH, so the role assignment of
//! the new identity is made (and its principal reported) in the same `apply` (the same
//! reconcile), not at the next resync.

use serde_json::Value;
use vmidentity_planner::model::RawRoleAssignment;
use vmidentity_tests::*;

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/myResourceGroup")
}

fn reader_on_rg(identity: &str) -> RawRoleAssignment {
    RawRoleAssignment {
        identity: identity.into(),
        role: "Reader".into(),
        scope: rg(),
    }
}

fn principal_of_uai(h: &Harness, target: &str, u: &str) -> String {
    h.sim
        .identity_of(target)
        .and_then(|i| {
            i["userAssignedIdentities"].as_object().and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(u))
                    .and_then(|(_, v)| v["principalId"].as_str().map(str::to_string))
            })
        })
        .expect("the UAI is bound")
}

fn holds_reader(h: &Harness, principal: &str) -> bool {
    h.sim.role_assignments_of(principal).iter().any(|ra| {
        let p = &ra["properties"];
        p["scope"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(&rg()))
            && p["roleDefinitionId"]
                .as_str()
                .is_some_and(|r| r.to_ascii_lowercase().ends_with(READER))
    })
}

/// Writes the simulator accepted, in order (`GET`s left out).
fn writes(h: &Harness) -> Vec<String> {
    h.sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.status < 400)
        .map(|r| r.method)
        .collect()
}

#[tokio::test]
async fn a_new_uai_and_its_role_assignment_converge_in_one_apply() {
    for (target, kind) in [
        (vm("vm-1"), "virtualMachines"),
        (vmss("ss-1"), "virtualMachineScaleSets"),
    ] {
        // The target already has ID2, so the PATCH answer shows one bound entry and one `{}`.
        let h = Harness::new(&world(&format!(
            "{kind}:\n  - id: {target}\n    identity:\n      type: UserAssigned\n      userAssignedIdentities: [{}]\n",
            uai("ID2")
        )))
        .await;
        let o = object("a", &target, |r| {
            r.arm_api_version = Some("2024-11-01".into());
            r.user_assigned_identities = vec![uai("ID1")];
            r.role_assignments = vec![reader_on_rg(&uai("ID1"))];
        });
        let results = h.apply(std::slice::from_ref(&o)).await;
        assert!(results[0].error.is_none(), "{kind}: {:?}", results[0].error);
        // One pass: the PATCH, then the grant for the identity it added.
        assert_eq!(writes(&h), vec!["PATCH", "PUT"], "{kind}");
        let p = principal_of_uai(&h, &target, &uai("ID1"));
        assert!(
            holds_reader(&h, &p),
            "{kind}: {p} holds Reader on the group"
        );
        // After the PATCH (whose answer showed ID1 as {}), ID1 itself was read; the target
        // was read once, before the plan.
        let log = h.sim.requests();
        let patch_at = log
            .iter()
            .position(|r| r.method == "PATCH")
            .expect("a PATCH");
        assert!(
            log[patch_at + 1..]
                .iter()
                .any(|r| r.method == "GET" && r.path.eq_ignore_ascii_case(&uai("ID1"))),
            "{kind}: a GET of the new identity after the PATCH"
        );
        assert_eq!(h.sim.reads_for(&target), 1, "{kind}: one GET of the target");
        // The status principal of the new identity is known in this pass too.
        let after = results[0]
            .live_after
            .as_ref()
            .expect("live after the write");
        let key = uai("ID1").to_ascii_lowercase();
        assert_eq!(
            after.identity.user_assigned[&key].principal_id.as_deref(),
            Some(p.as_str()),
            "{kind}"
        );
        // Converged: the next pass writes nothing.
        let next = o
            .clone()
            .with_applied(results[0].applied(&o.object).expect("an ownership record"));
        h.sim.clear_requests();
        let again = h.apply(&[next]).await;
        assert_eq!(again[0].writes(), 0, "{kind}: {:?}", again[0].all_writes());
    }
}

/// A PATCH whose answer already carries every principal (enabling the system identity,
/// keeping a bound user-assigned one) is not followed by a read.
#[tokio::test]
async fn no_extra_read_when_the_answer_has_the_principals() {
    let target = vm("vm-1");
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {target}\n    identity:\n      type: UserAssigned\n      userAssignedIdentities: [{}]\n",
        uai("ID2")
    )))
    .await;
    let o = object("a", &target, |r| {
        r.system_assigned = Some(true);
        r.role_assignments = vec![RawRoleAssignment {
            identity: "SystemAssigned".into(),
            role: "Reader".into(),
            scope: rg(),
        }];
    });
    h.sim.reset_counters();
    let results = h.apply(&[o]).await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    assert_eq!(writes(&h), vec!["PATCH", "PUT"]);
    // One GET of the VM before the plan, none after the PATCH.
    assert_eq!(h.sim.counters().reads, 1);
    let ident = h.sim.identity_of(&target).unwrap_or(Value::Null);
    let p = ident["principalId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(holds_reader(&h, &p));
}
