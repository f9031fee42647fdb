//! Exact PATCH bodies, following the REST how-to (qs-configure-rest-vm / -vmss): given this
//! VM and these objects, the planner sends exactly this body.

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_planner::*;

fn body(objects: &[DesiredObject], live: &LiveResource) -> Option<Value> {
    plan_target(objects, live)
        .expect("plan")
        .patch_body()
        .cloned()
}

fn if_match(w: &Write) -> Option<&str> {
    match w {
        Write::IdentityPatch { if_match, .. } => if_match.as_deref(),
        other => panic!("not an identity PATCH: {other:?}"),
    }
}

fn with_version(v: &str) -> impl Fn(&mut RawSpec) {
    let v = v.to_string();
    move |r: &mut RawSpec| r.arm_api_version = Some(v.clone())
}

#[test]
fn enable_system_assigned_on_a_vm_without_identity() {
    let o = obj("a", &vm("myVM"), |r| r.system_assigned = Some(true));
    let l = live(&vm("myVM"), json!({"type": "None"}));
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "SystemAssigned"}}))
    );
}

#[test]
fn enable_system_on_a_vm_with_user_assigned_sends_only_the_type() {
    let o = obj("a", &vm("myVM"), |r| r.system_assigned = Some(true));
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}, uai("ID2"): {}}}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned"}}))
    );
}

#[test]
fn first_user_assigned_identity() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    });
    let l = live(&vm("myVM"), json!({"type": "None"}));
    assert_eq!(
        body(&[o], &l),
        Some(
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}})
        )
    );
}

#[test]
fn add_a_second_identity_keeping_system_and_the_first() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1"), uai("ID2")]
    });
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "principalId": "p",
               "userAssignedIdentities": {uai("ID1"): {"principalId": "x", "clientId": "y"}}}),
    );
    // Only the new key: the dictionary is merged by ARM.
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned",
                                 "userAssignedIdentities": {uai("ID2"): {}}}}))
    );
}

#[test]
fn remove_one_of_two_with_null() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(applied(&[uai("ID1"), uai("ID2")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned",
               "userAssignedIdentities": {uai("ID1"): {}, uai("ID2"): {}}}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned",
                                 "userAssignedIdentities": {uai("ID2"): null}}}))
    );
}

#[test]
fn remove_the_last_user_assigned_changes_the_type() {
    let o = obj("a", &vm("myVM"), |_| {}).with_applied(applied(&[uai("ID1")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    assert_eq!(
        body(std::slice::from_ref(&o), &l),
        Some(json!({"identity": {"type": "SystemAssigned"}}))
    );
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    assert_eq!(body(&[o], &l), Some(json!({"identity": {"type": "None"}})));
}

#[test]
fn remove_everything() {
    let o = obj("a", &vm("myVM"), |r| r.system_assigned = Some(false))
        .with_applied(applied(&[uai("ID1")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    assert_eq!(body(&[o], &l), Some(json!({"identity": {"type": "None"}})));
}

#[test]
fn disable_system_keeping_the_user_assigned() {
    let o = obj("a", &vm("myVM"), |r| r.system_assigned = Some(false));
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "UserAssigned"}}))
    );
}

#[test]
fn api_2017_12_01_sends_the_whole_array() {
    let o = obj("a", &vm("myVM"), |r| {
        r.arm_api_version = Some("2017-12-01".into());
        r.user_assigned_identities = vec![uai("ID2")];
    });
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "identityIds": [uai("ID1")]}),
    );
    let p = plan_target(&[o], &l).unwrap();
    assert!(
        matches!(&p.writes[0], Write::IdentityPatch { api_version, .. } if api_version.as_str() == "2017-12-01")
    );
    assert_eq!(
        p.patch_body().cloned(),
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned",
                                 "identityIds": [uai("ID1"), uai("ID2")]}}))
    );
    // Remove one of two: the array of those to keep.
    let o = obj("a", &vm("myVM"), |r| {
        r.arm_api_version = Some("2017-12-01".into());
        r.user_assigned_identities = vec![uai("ID2")];
    })
    .with_applied(applied(&[uai("ID1"), uai("ID2")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "identityIds": [uai("ID1"), uai("ID2")]}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "UserAssigned", "identityIds": [uai("ID2")]}}))
    );
    // Disable system: keep the array, as the docs say.
    let o = obj("a", &vm("myVM"), |r| {
        r.arm_api_version = Some("2017-12-01".into());
        r.system_assigned = Some(false);
    });
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "identityIds": [uai("ID1")]}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(json!({"identity": {"type": "UserAssigned", "identityIds": [uai("ID1")]}}))
    );
}

#[test]
fn vmss_targets_use_the_same_bodies() {
    let o = obj("a", &vmss("mySS"), with_version("2024-11-01"));
    let o = DesiredObject {
        spec: Spec {
            user_assigned: vec![ArmId::parse(&uai("ID1")).unwrap()],
            ..o.spec
        },
        ..o
    };
    let l = live(
        &vmss("mySS"),
        json!({"type": "SystemAssigned", "principalId": "p"}),
    );
    let p = plan_target(&[o], &l).unwrap();
    assert!(
        matches!(&p.writes[0], Write::IdentityPatch { api_version, .. } if api_version.as_str() == "2024-11-01")
    );
    assert_eq!(
        p.patch_body().cloned(),
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned",
                                 "userAssignedIdentities": {uai("ID1"): {}}}}))
    );
}

#[test]
fn converged_means_no_write() {
    let o = obj("a", &vm("myVM"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID1")];
    });
    // Live spells the ID differently: still the same identity.
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned,UserAssigned",
               "userAssignedIdentities": {uai("ID1").to_lowercase(): {}}}),
    );
    let p = plan_target(&[o], &l).unwrap();
    assert!(p.is_converged(), "{:?}", p.writes);
}

#[test]
fn unowned_identities_survive_merge() {
    // ID9 was put there by someone else: dropping ID1 must not touch it.
    let o = obj("a", &vm("myVM"), |_| {}).with_applied(applied(&[uai("ID1")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}, uai("ID9"): {}}}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): null}}})
        )
    );
}

#[test]
fn pre_existing_identity_listed_then_dropped_is_not_removed() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID9")]
    });
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID9"): {}}}),
    );
    let p = plan_target(std::slice::from_ref(&o), &l).unwrap();
    assert!(p.is_converged());
    // Not recorded: we did not put it there.
    assert!(p.applied[&o.object].user_assigned_identities.is_empty());
}

#[test]
fn two_objects_one_patch() {
    let a = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    });
    let b = obj("b", &vm("myVM"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID2"), uai("ID1").to_uppercase()];
    });
    let l = live(&vm("myVM"), json!({"type": "None"}));
    let p = plan_target(&[a, b], &l).unwrap();
    assert_eq!(p.writes.len(), 1);
    // ID1 is sent once, in the first object's spelling.
    assert_eq!(
        p.patch_body().cloned(),
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned",
                                 "userAssignedIdentities": {uai("ID1"): {}, uai("ID2"): {}}}}))
    );
}

#[test]
fn shared_identity_is_kept_until_the_last_owner_lets_go() {
    let a = obj("a", &vm("myVM"), |_| {}).with_applied(applied(&[uai("ID1")]));
    let b = obj("b", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(applied(&[uai("ID1")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    let p = plan_target(&[a.clone(), b.clone()], &l).unwrap();
    assert!(p.is_converged());
    assert!(p.applied[&a.object].user_assigned_identities.is_empty());
    assert_eq!(
        p.applied[&b.object].user_assigned_identities,
        vec![uai("ID1")]
    );
    // Now b lets go too: removed.
    let b2 = obj("b", &vm("myVM"), |_| {}).with_applied(applied(&[uai("ID1")]));
    assert_eq!(body(&[b2], &l), Some(json!({"identity": {"type": "None"}})));
}

#[test]
fn deleting_with_detach_and_retain() {
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    let detach = obj("a", &vm("myVM"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID1")];
    })
    .with_applied(applied(&[uai("ID1")]))
    .deleting();
    let p = plan_target(std::slice::from_ref(&detach), &l).unwrap();
    // The system identity stays: only an explicit false disables it.
    assert_eq!(
        p.patch_body().cloned(),
        Some(json!({"identity": {"type": "SystemAssigned"}}))
    );
    assert!(p.applied[&detach.object].is_empty());
    let retain = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.deletion_policy = Some(DeletionPolicy::Retain);
    })
    .with_applied(applied(&[uai("ID1")]))
    .deleting();
    assert!(plan_target(&[retain], &l).unwrap().is_converged());
}

#[test]
fn exact_removes_everything_else() {
    let o = obj("a", &vm("myVM"), |r| {
        r.mode = Some(Mode::Exact);
        r.user_assigned_identities = vec![uai("ID1")];
    });
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID9"): {}, uai("ID8"): {}}}),
    );
    assert_eq!(
        body(&[o], &l),
        Some(
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {
            uai("ID1"): {}, uai("ID8"): null, uai("ID9"): null}}})
        )
    );
}

#[test]
fn conflicts_name_the_objects_and_write_nothing() {
    let l = live(&vm("myVM"), json!({"type": "None"}));
    let a = obj("a", &vm("myVM"), |r| r.system_assigned = Some(true));
    let b = obj("b", &vm("myVM"), |r| r.system_assigned = Some(false));
    let e = plan_target(&[a.clone(), b], &l).unwrap_err();
    assert_eq!(e.reason(), "Conflict");
    assert!(e.to_string().contains("default/a, default/b"), "{e}");
    let x = obj("x", &vm("myVM"), |r| r.mode = Some(Mode::Exact));
    let e = plan_target(&[a.clone(), x], &l).unwrap_err();
    assert!(e.to_string().contains("Exact"), "{e}");
    let old = obj("o", &vm("myVM"), with_version("2017-12-01"));
    assert!(plan_target(&[a, old], &l).is_err());
}

/// The rule users can predict: the object that held the target first keeps it; the younger
/// one is refused naming the senior, for every conflict kind the planner knows, whichever
/// order the objects come in. Equally young objects are refused together, and with no senior
/// left the whole target is refused.
#[test]
fn the_object_that_held_the_target_first_keeps_it_in_every_conflict_kind() {
    let l = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned, UserAssigned", "principalId": "p",
               "userAssignedIdentities": {uai("ID1"): {"principalId": "p1", "clientId": "c1"}}}),
    );
    let senior = obj("ops-agent", &vm("myVM"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID1")];
    })
    .with_applied(Applied {
        system_assigned: Some(true),
        ..applied(&[uai("ID1")])
    });
    let mut newcomers = [
        (
            "systemAssigned",
            obj("sandbox", &vm("myVM"), |r| r.system_assigned = Some(false)),
        ),
        (
            "Exact",
            obj("sandbox", &vm("myVM"), |r| {
                r.mode = Some(Mode::Exact);
                r.user_assigned_identities = vec![uai("ID2")];
            }),
        ),
        (
            "identity formats",
            obj("sandbox", &vm("myVM"), with_version("2017-12-01")),
        ),
    ];
    for (kind, n) in newcomers.iter_mut() {
        n.object.namespace = "sandbox".into();
        // Seniority: owning something on the target first.
        let rank = |o: &DesiredObject| o.applied.is_empty();
        for order in [
            vec![senior.clone(), n.clone()],
            vec![n.clone(), senior.clone()],
        ] {
            let (plan, refused) = plan_target_by_seniority(&order, &l, rank);
            let plan = plan.unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(plan.objects, vec![senior.object.clone()], "{kind}");
            assert!(
                plan.is_converged(),
                "{kind}: the senior object is untouched"
            );
            assert_eq!(refused.len(), 1, "{kind}");
            assert_eq!(refused[0].object, n.object, "{kind}");
            assert_eq!(refused[0].kept_by, vec![senior.object.clone()], "{kind}");
            let text = refused[0].to_string();
            assert!(
                text.contains(*kind) && text.contains("default/ops-agent held the target first"),
                "{kind}: {text}"
            );
        }
    }

    // Ranks that are not ownership: the older creation time keeps it.
    let a = obj("a", &vm("myVM"), |r| r.system_assigned = Some(false));
    let b = obj("b", &vm("myVM"), |r| r.system_assigned = Some(true));
    let age = |o: &DesiredObject| if o.object.name == "b" { 1 } else { 2 };
    let (plan, refused) = plan_target_by_seniority(&[a.clone(), b.clone()], &l, age);
    assert_eq!(plan.expect("plan").objects, vec![b.object.clone()]);
    assert_eq!(refused[0].object, a.object);

    // Three objects: the two youngest are refused one after the other (conflict by conflict).
    let c = obj("c", &vm("myVM"), |r| r.mode = Some(Mode::Exact));
    let age3 = |o: &DesiredObject| match o.object.name.as_str() {
        "b" => 1,
        "a" => 2,
        _ => 3,
    };
    let (plan, refused) = plan_target_by_seniority(&[a.clone(), b.clone(), c], &l, age3);
    assert_eq!(plan.expect("plan").objects, vec![b.object.clone()]);
    let names: Vec<&str> = refused.iter().map(|r| r.object.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);

    // A youngest object refused first, then the two left equally senior conflict: nobody
    // keeps the target, so no object is told that another "keeps" it (the whole target is
    // refused for every object).
    let d = obj("d", &vm("myVM"), with_version("2017-12-01"));
    let tie = |o: &DesiredObject| if o.object.name == "d" { 1 } else { 0 };
    let (plan, refused) = plan_target_by_seniority(&[a.clone(), b.clone(), d], &l, tie);
    assert_eq!(plan.unwrap_err().reason(), "Conflict");
    assert!(refused.is_empty(), "{refused:?}");

    // Equally young, no senior: the whole target is refused, as plan_target does.
    let (plan, refused) = plan_target_by_seniority(&[a, b], &l, |_| 0);
    assert_eq!(plan.unwrap_err().reason(), "Conflict");
    assert!(refused.is_empty());
}

#[test]
fn too_many_identities_is_refused_before_any_write() {
    let ids: Vec<String> = (0..151).map(|i| uai(&format!("u{i}"))).collect();
    let o = obj("a", &vm("myVM"), |r| r.user_assigned_identities = ids);
    let l = live(&vm("myVM"), json!({"type": "None"}));
    assert_eq!(
        plan_target(&[o], &l).unwrap_err().reason(),
        "TooManyIdentities"
    );
}

#[test]
fn claims_keep_old_and_new_ownership() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID2")]
    })
    .with_applied(applied(&[uai("ID1")]));
    let l = live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    let p = plan_target(std::slice::from_ref(&o), &l).unwrap();
    let claims = p.claims(std::slice::from_ref(&o));
    assert_eq!(
        claims[&o.object].user_assigned_identities,
        vec![uai("ID1"), uai("ID2")]
    );
    assert_eq!(
        p.applied[&o.object].user_assigned_identities,
        vec![uai("ID2")]
    );
}

#[test]
fn the_patch_is_conditional_on_the_etag_it_was_planned_against() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.arm_api_version = Some("2024-11-01".into());
    });
    let with_tag = LiveResource::from_arm_json(
        &json!({"id": vm("myVM"), "etag": "\"7\"", "identity": {"type": "SystemAssigned", "principalId": "p"}}),
    )
    .expect("live");
    let p = plan_target(std::slice::from_ref(&o), &with_tag).expect("plan");
    assert_eq!(p.writes.len(), 1);
    assert_eq!(if_match(&p.writes[0]), Some("\"7\""));
    assert_eq!(
        serde_json::to_value(&p.writes[0]).expect("json"),
        json!({"method": "PATCH", "id": vm("myVM"), "apiVersion": "2024-11-01",
               "body": {"identity": {"type": "SystemAssigned, UserAssigned",
                                     "userAssignedIdentities": {uai("ID1"): {}}}},
               "ifMatch": "\"7\""})
    );
    // Without an etag (older api-versions) the write is unconditional and the JSON unchanged.
    let untagged = live(
        &vm("myVM"),
        json!({"type": "SystemAssigned", "principalId": "p"}),
    );
    let p = plan_target(std::slice::from_ref(&o), &untagged).expect("plan");
    assert_eq!(if_match(&p.writes[0]), None);
    let v = serde_json::to_value(&p.writes[0]).expect("json");
    assert!(v.get("ifMatch").is_none(), "{v}");
    // Converged: nothing to make conditional.
    let done = LiveResource::from_arm_json(&json!({"id": vm("myVM"), "etag": "\"8\"",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {"principalId": "u", "clientId": "c"}}}}))
    .expect("live");
    assert!(plan_target(&[o], &done).expect("plan").writes.is_empty());
}

#[test]
fn both_patches_of_a_stale_repair_carry_the_planned_etag() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.arm_api_version = Some("2024-11-01".into());
    });
    let l = LiveResource::from_arm_json(&json!({"id": vm("myVM"), "etag": "\"2\"",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {"principalId": "", "clientId": ""}}}}))
    .expect("live");
    let p = plan_target(&[o], &l).expect("plan");
    assert_eq!(p.writes.len(), 2);
    // The executor substitutes the tag ARM answered the first PATCH with for the second.
    assert!(p.writes.iter().all(|w| if_match(w) == Some("\"2\"")));
}
