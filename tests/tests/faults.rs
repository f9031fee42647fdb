//! Faults real fleets see, each asserting the final state, that nothing the controller does
//! not own was removed, and that no system identity was disabled unasked.

use std::time::Duration;

use serde_json::{Value, json};
use vmidentity_planner::DesiredObject;
use vmidentity_simulator::FaultRule;
use vmidentity_tests::*;

/// 12 VMs: even ones carry an unowned UAI (ID3) and a system identity.
fn fleet() -> String {
    let mut s = String::from("virtualMachines:\n");
    for i in 0..12 {
        s.push_str(&format!("  - id: {}\n", vm(&format!("vm{i}"))));
        if i % 2 == 0 {
            s.push_str(&format!(
                "    identity:\n      type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [{}]\n",
                uai("ID3")
            ));
        }
    }
    world(&s)
}

fn fleet_objects() -> Vec<DesiredObject> {
    (0..12)
        .map(|i| {
            object(&format!("o{i}"), &vm(&format!("vm{i}")), |r| {
                r.user_assigned_identities = vec![uai("ID1")]
            })
        })
        .collect()
}

fn principal(h: &Harness, id: &str) -> Option<String> {
    h.sim
        .identity_of(id)?
        .get("principalId")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn assert_fleet_converged(h: &Harness, principals: &[Option<String>]) {
    for (i, before) in principals.iter().enumerate() {
        let id = vm(&format!("vm{i}"));
        let (ty, names) = h.identity(&id);
        if i % 2 == 0 {
            assert_eq!(
                ty, "SystemAssigned, UserAssigned",
                "vm{i}: system identity kept"
            );
            assert_eq!(
                names,
                vec!["id1".to_string(), "id3".into()],
                "vm{i}: unowned ID3 kept"
            );
            assert_eq!(principal(h, &id), *before, "vm{i}: same system principal");
        } else {
            assert_eq!(
                (ty.as_str(), names),
                ("UserAssigned", vec!["id1".to_string()]),
                "vm{i}"
            );
        }
    }
}

#[tokio::test]
async fn a_429_storm_and_5xx_mid_converge_lose_nothing() {
    let h = Harness::new(&fleet()).await;
    let principals: Vec<Option<String>> = (0..12)
        .map(|i| principal(&h, &vm(&format!("vm{i}"))))
        .collect();
    h.sim
        .add_fault(FaultRule::throttle(1).method("PATCH").times(4));
    h.sim
        .add_fault(FaultRule::status(503).method("PATCH").times(3));
    h.sim
        .add_fault(FaultRule::status(500).method("GET").times(3));
    let mut objects = fleet_objects();
    for _ in 0..5 {
        let (results, next) = h.converge(&objects).await;
        objects = next;
        if results.iter().all(|r| r.error.is_none()) {
            break;
        }
    }
    assert_fleet_converged(&h, &principals);
    let ok_patches = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 200)
        .count();
    assert_eq!(ok_patches, 12, "one accepted PATCH per VM");
    let again = h.apply(&objects).await;
    assert!(again.iter().all(|r| r.writes() == 0));
}

#[tokio::test]
async fn another_writer_between_our_get_and_patch_is_not_undone() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n",
        vm("vm1")
    )))
    .await;
    // Our PATCH is held for a moment; meanwhile someone else attaches ID3.
    h.sim
        .add_fault(FaultRule::delay(400).method("PATCH").times(1));
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    });
    let apply = h.apply(std::slice::from_ref(&o));
    let other = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.sim
            .set_identity(
                &vm("vm1"),
                json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID3"): {}}}),
            )
            .expect("other writer");
    };
    let (results, ()) = tokio::join!(apply, other);
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    // The merge kept the other writer's identity; the next pass sees it and leaves it.
    assert_eq!(
        h.identity(&vm("vm1")).1,
        vec!["id1".to_string(), "id3".into()]
    );
    let again = h.apply(&[o]).await;
    assert_eq!(again[0].writes(), 0);
}

#[tokio::test]
async fn a_nonexistent_uai_is_dropped_and_named_and_the_rest_goes_through() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n",
        vm("vm1")
    )))
    .await;
    let good = object("good", &vm("vm1"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID1")];
    });
    let bad = object("bad", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID2"), uai("ghost")]
    });
    let results = h.apply(&[good, bad]).await;
    let r = &results[0];
    assert!(r.error.is_none(), "{:?}", r.error);
    let bad_ids: Vec<String> = r.bad_identities.iter().map(ToString::to_string).collect();
    assert_eq!(bad_ids, vec![uai("ghost")]);
    assert_eq!(
        h.identity(&vm("vm1")),
        (
            "SystemAssigned, UserAssigned".into(),
            vec!["id1".into(), "id2".into()]
        )
    );
    let statuses: Vec<u16> = h
        .sim
        .requests()
        .iter()
        .filter(|q| q.method == "PATCH")
        .map(|q| q.status)
        .collect();
    assert_eq!(
        statuses,
        vec![400, 200],
        "refused whole, then sent without the ghost"
    );
}

#[tokio::test]
async fn a_uai_deleted_and_recreated_under_the_vm_is_detected_and_reattached() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n",
        vm("vm1")
    )))
    .await;
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    });
    let (_, next) = h.converge(&[o]).await;
    // ID1 is deleted and created again with the same name: a new principal; the VM keeps a
    // dead entry.
    assert!(h.sim.delete_user_assigned_identity(&uai("ID1")));
    let recreated = h
        .sim
        .create_user_assigned_identity(&uai("ID1"))
        .expect("recreate");
    let new_principal = recreated["properties"]["principalId"]
        .as_str()
        .expect("principal")
        .to_string();
    let entry = |h: &Harness| {
        h.sim.identity_of(&vm("vm1")).and_then(|i| {
            i["userAssignedIdentities"]
                .as_object()
                .and_then(|m| m.values().next().cloned())
        })
    };
    assert_eq!(
        entry(&h).and_then(|e| e["principalId"].as_str().map(str::to_string)),
        Some(String::new()),
        "stale entry"
    );
    h.sim.clear_requests();
    let (results, after) = h.converge(&next).await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    assert_eq!(
        h.patch_bodies(),
        vec![
            json!({"identity": {"type": "None"}}),
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}}),
        ]
    );
    assert_eq!(
        entry(&h).and_then(|e| e["principalId"].as_str().map(str::to_string)),
        Some(new_principal)
    );
    assert_eq!(h.apply(&after).await[0].writes(), 0);
}
