//! Faults real fleets see, each asserting the final state, that nothing the controller does
//! not own was removed, and that no system identity was disabled unasked.
//!
//! Another writer between our GET and our PATCH: the identity PATCH always carries
//! `identity.type`, so a PATCH planned on a stale read would undo another writer's
//! system-identity toggle (and undoing an enable destroys the principal it created). From
//! Compute api-version 2023-09-01 on, the target's `etag` makes the PATCH conditional
//! (`If-Match`): ARM answers 412 and applies nothing, the engine reads the target again and
//! plans again. On older api-versions (2017-12-01, 2018-06-01 … 2023-07-01) there is no etag:
//! the PATCH is unconditional and the window between GET and PATCH remains, so a toggle of
//! the system identity inside it is undone (a UAI another writer added is still kept by the
//! dictionary merge; with the 2017-12-01 array it is replaced away too). That is a documented
//! limit of those versions, which objects now get only by asking for them: the default
//! api-version (2025-04-01) has etags.

use std::time::Duration;

use serde_json::{Value, json};
use vmidentity_azure::ErrorClass;
use vmidentity_planner::DesiredObject;
use vmidentity_simulator::FaultRule;
use vmidentity_tests::*;

/// 12 VMs: even ones carry an unowned UAI (ID3) and a system identity.
fn fleet() -> String {
    world(&fleet_vms(12))
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
    let ok_patches = h.patches().filter(|r| r.status == 200).count();
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
    let statuses = h.patch_statuses();
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

/// An api-version with entity tags (conditional PATCHes).
const ETAG_VERSION: &str = "2024-11-01";

/// `(status, If-Match)` of every PATCH the simulator received, in order.
fn patches(h: &Harness) -> Vec<(u16, Option<String>)> {
    h.sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.status, r.if_match))
        .collect()
}

/// Runs one apply pass of `o` while `other` changes the target between our GET and our
/// PATCH (the first PATCH is held 400 ms; `other` runs 150 ms in).
async fn apply_racing(
    h: &Harness,
    o: &DesiredObject,
    other: impl FnOnce(),
) -> Vec<vmidentity::engine::TargetResult> {
    h.sim
        .add_fault(FaultRule::delay(400).method("PATCH").times(1));
    let apply = h.apply(std::slice::from_ref(o));
    let race = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        other();
    };
    let (results, ()) = tokio::join!(apply, race);
    results
}

#[tokio::test]
async fn another_writer_enabling_system_between_our_get_and_patch_keeps_its_principal() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n",
        vm("vm1")
    )))
    .await;
    // Our object wants only a UAI; it does not manage the system identity.
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.arm_api_version = Some(ETAG_VERSION.into());
    });
    let results = apply_racing(&h, &o, || {
        h.sim
            .set_identity(&vm("vm1"), json!({"type": "SystemAssigned"}))
            .expect("other writer");
    })
    .await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    let theirs = h.sim.system_principal_history(&vm("vm1"));
    assert_eq!(
        theirs.len(),
        1,
        "one system principal ever: the other writer's"
    );
    // Our planned PATCH (type UserAssigned) would have disabled it: refused, re-read, re-planned.
    assert_eq!(
        patches(&h),
        vec![(412, Some("\"1\"".into())), (200, Some("\"2\"".into()))]
    );
    assert_eq!(
        h.identity(&vm("vm1")),
        (
            "SystemAssigned, UserAssigned".into(),
            vec!["id1".to_string()]
        )
    );
    assert_eq!(principal(&h, &vm("vm1")), Some(theirs[0].clone()));
    assert!(!h.sim.principal_deleted(&theirs[0]));
    let plan = results[0].plan.as_ref().expect("plan");
    assert_eq!(
        plan.patch_body().cloned().expect("a PATCH"),
        json!({"identity": {"type": "SystemAssigned, UserAssigned",
                            "userAssignedIdentities": {uai("ID1"): {}}}})
    );
    assert_eq!(
        results[0]
            .live_after
            .as_ref()
            .and_then(|l| l.identity.principal_id.clone()),
        Some(theirs[0].clone())
    );
    let again = h.apply(&[o]).await;
    assert_eq!(again[0].writes(), 0);
}

#[tokio::test]
async fn another_writer_disabling_system_between_our_get_and_patch_is_not_undone() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n    identity:\n      type: SystemAssigned\n",
        vm("vm1")
    )))
    .await;
    let original = h.sim.system_principal_history(&vm("vm1"));
    assert_eq!(original.len(), 1);
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.arm_api_version = Some(ETAG_VERSION.into());
    });
    let results = apply_racing(&h, &o, || {
        h.sim
            .set_identity(&vm("vm1"), json!({"type": "None"}))
            .expect("other writer");
    })
    .await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    // Our planned PATCH ("SystemAssigned, UserAssigned") would have re-enabled it with a new
    // principal: refused, re-read, re-planned.
    assert_eq!(
        patches(&h),
        vec![(412, Some("\"1\"".into())), (200, Some("\"2\"".into()))]
    );
    assert_eq!(
        h.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["id1".to_string()])
    );
    assert_eq!(principal(&h, &vm("vm1")), None, "system stays disabled");
    assert_eq!(
        h.sim.system_principal_history(&vm("vm1")),
        original,
        "no new system principal"
    );
    let again = h.apply(&[o]).await;
    assert_eq!(again[0].writes(), 0);
}

#[tokio::test]
async fn a_target_that_keeps_refusing_the_precondition_gets_three_patches_then_the_error() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n",
        vm("vm1")
    )))
    .await;
    h.sim.add_fault(FaultRule::status(412).method("PATCH"));
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.arm_api_version = Some(ETAG_VERSION.into());
    });
    let results = h.apply(std::slice::from_ref(&o)).await;
    match &results[0].error {
        Some(vmidentity::engine::EngineError::Azure(e)) => {
            assert_eq!(e.class(), ErrorClass::PreconditionFailed);
            assert!(e.is_retryable(), "the reconcile is retried later");
        }
        other => panic!("expected a 412 to surface, got {other:?}"),
    }
    assert_eq!(
        h.sim.writes_for(&vm("vm1")),
        vmidentity::engine::MAX_CONDITIONAL_WRITE_ATTEMPTS as u64
    );
    // The first GET, then one after each refused PATCH but the last.
    assert_eq!(
        h.sim.reads_for(&vm("vm1")),
        vmidentity::engine::MAX_CONDITIONAL_WRITE_ATTEMPTS as u64
    );
    assert_eq!(h.identity(&vm("vm1")).0, "None");
}

#[tokio::test]
async fn a_stale_entry_repair_chains_the_etags_of_its_two_patches() {
    let h = Harness::new(&world(&format!(
        "virtualMachines:\n  - id: {}\n",
        vm("vm1")
    )))
    .await;
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.arm_api_version = Some(ETAG_VERSION.into());
    });
    let (_, next) = h.converge(&[o]).await;
    assert!(h.sim.delete_user_assigned_identity(&uai("ID1")));
    h.sim
        .create_user_assigned_identity(&uai("ID1"))
        .expect("recreate");
    let tag = h.sim.etag_of(&vm("vm1")).expect("etag");
    assert_eq!(tag, "\"2\"");
    h.sim.clear_requests();
    let (results, after) = h.converge(&next).await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    // The second PATCH is conditional on the tag our first one produced, not the GET's.
    assert_eq!(
        patches(&h),
        vec![(200, Some("\"2\"".into())), (200, Some("\"3\"".into()))]
    );
    assert_eq!(h.apply(&after).await[0].writes(), 0);
}

/// An object without `armApiVersion` gets the default api-version, which has entity tags: its
/// PATCH is conditional, so another writer's system-identity toggle between our GET and our
/// PATCH is refused with 412, read again, planned again, and survives. (With the old default
/// 2018-06-01 the PATCH was unconditional and the toggle was undone.)
#[tokio::test]
async fn with_the_default_api_version_a_system_toggle_between_get_and_patch_survives() {
    for (seed, toggled, expected) in [
        (
            "",
            json!({"type": "SystemAssigned"}),
            "SystemAssigned, UserAssigned",
        ),
        (
            "    identity:\n      type: SystemAssigned\n",
            json!({"type": "None"}),
            "UserAssigned",
        ),
    ] {
        let h = Harness::new(&world(&format!(
            "virtualMachines:\n  - id: {}\n{seed}",
            vm("vm1")
        )))
        .await;
        let before = h.sim.system_principal_history(&vm("vm1"));
        let o = object("a", &vm("vm1"), |r| {
            r.user_assigned_identities = vec![uai("ID1")];
            r.arm_api_version = None;
        });
        let results = apply_racing(&h, &o, || {
            h.sim
                .set_identity(&vm("vm1"), toggled.clone())
                .expect("other writer");
        })
        .await;
        assert!(results[0].error.is_none(), "{:?}", results[0].error);
        assert_eq!(
            patches(&h),
            vec![(412, Some("\"1\"".into())), (200, Some("\"2\"".into()))],
            "the default api-version sends If-Match"
        );
        let query = h
            .sim
            .requests()
            .into_iter()
            .find(|r| r.method == "PATCH")
            .and_then(|r| r.query);
        assert_eq!(
            query.as_deref(),
            Some(format!("api-version={}", vmidentity_planner::DEFAULT_API_VERSION).as_str())
        );
        assert_eq!(
            h.identity(&vm("vm1")),
            (expected.to_string(), vec!["id1".to_string()]),
            "the other writer's toggle survives"
        );
        let after = h.sim.system_principal_history(&vm("vm1"));
        if expected == "UserAssigned" {
            assert_eq!(principal(&h, &vm("vm1")), None, "system stays disabled");
            assert_eq!(after, before, "no new system principal");
        } else {
            assert_eq!(after.len(), 1, "one system principal: the other writer's");
            assert_eq!(principal(&h, &vm("vm1")), Some(after[0].clone()));
        }
        assert_eq!(h.apply(&[o]).await[0].writes(), 0);
    }
}

/// 2018-06-01 and 2017-12-01, asked for explicitly, stay supported: unconditional PATCHes
/// (no etag at those versions), dictionary merge at 2018-06-01, the array at 2017-12-01.
#[tokio::test]
async fn explicit_2018_06_01_and_2017_12_01_still_converge_without_if_match() {
    for (version, ids_key) in [
        ("2018-06-01", "userAssignedIdentities"),
        ("2017-12-01", "identityIds"),
    ] {
        let h = Harness::new(&world(&format!(
            "virtualMachines:\n  - id: {}\n",
            vm("vm1")
        )))
        .await;
        let o = object("a", &vm("vm1"), |r| {
            r.user_assigned_identities = vec![uai("ID1")];
            r.arm_api_version = Some(version.into());
        });
        let results = h.apply(std::slice::from_ref(&o)).await;
        assert!(
            results[0].error.is_none(),
            "{version}: {:?}",
            results[0].error
        );
        assert_eq!(patches(&h), vec![(200, None)], "{version}: no If-Match");
        let body = results[0]
            .plan
            .as_ref()
            .and_then(|p| p.patch_body().cloned())
            .expect("a PATCH");
        assert!(body["identity"].get(ids_key).is_some(), "{version}: {body}");
        assert_eq!(
            h.identity(&vm("vm1")),
            ("UserAssigned".to_string(), vec!["id1".to_string()])
        );
        assert_eq!(h.apply(&[o]).await[0].writes(), 0, "{version}");
    }
}
