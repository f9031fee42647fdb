//! Adoption (`vmidentity.dev/adopt: "true"`, issue 15 part 2): an adopting object records the
//! listed identities that were on the target before and that no object owns, so dropping one
//! later removes it; it never takes what another object owns, and a non-adopting object still
//! never records (so never removes) what was there before.

mod common;

use common::*;
use serde_json::json;
use vmidentity_planner::grants::*;
use vmidentity_planner::model::{AppliedRoleAssignment, RawGroupMembership, RawRoleAssignment};
use vmidentity_planner::*;

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const GROUP: &str = "6f1c8a2e-3b5d-4c7a-9e21-0d4b5a6c7e80";
const RG: &str =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/myResourceGroup";

/// myVM carrying ID1 and ID2 (made by hand before any object).
fn brownfield() -> LiveResource {
    live(
        &vm("myVM"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {
            uai("ID1"): {"principalId": "p1", "clientId": "c1"},
            uai("ID2"): {"principalId": "p2", "clientId": "c2"}}}),
    )
}

fn lists(name: &str, ids: &[&str]) -> DesiredObject {
    let ids: Vec<String> = ids.iter().map(|i| uai(i)).collect();
    obj(name, &vm("myVM"), move |r| {
        r.user_assigned_identities = ids.clone()
    })
}

fn recorded(p: &TargetPlan, o: &DesiredObject) -> Vec<String> {
    p.applied[&o.object].user_assigned_identities.clone()
}

#[test]
fn without_adoption_what_was_there_before_is_not_recorded_and_never_removed() {
    let o = lists("a", &["ID1"]);
    let p = plan_target(std::slice::from_ref(&o), &brownfield()).unwrap();
    assert!(p.is_converged());
    assert_eq!(recorded(&p, &o), Vec::<String>::new());
    assert!(p.adopted(std::slice::from_ref(&o)).is_empty());
    // Dropped from the spec: still not removed.
    let dropped = lists("a", &[]).with_applied(p.applied[&o.object].clone());
    let p2 = plan_target(&[dropped], &brownfield()).unwrap();
    assert!(p2.is_converged(), "{:?}", p2.writes);
}

#[test]
fn an_adopting_object_records_the_listed_pre_existing_identities_without_writing() {
    let o = lists("a", &["ID1"]).adopting(true);
    let p = plan_target(std::slice::from_ref(&o), &brownfield()).unwrap();
    // Nothing written: adoption only records.
    assert!(p.is_converged(), "{:?}", p.writes);
    assert_eq!(recorded(&p, &o), vec![uai("ID1")]);
    let adopted = p.adopted(std::slice::from_ref(&o));
    assert_eq!(adopted.len(), 1);
    assert_eq!(
        adopted[&o.object]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![uai("ID1")]
    );
    // ID2, not listed, is not adopted.
    assert!(!recorded(&p, &o).contains(&uai("ID2")));

    // Next pass: already recorded, nothing adopted again.
    let again = o.clone().with_applied(p.applied[&o.object].clone());
    let p2 = plan_target(std::slice::from_ref(&again), &brownfield()).unwrap();
    assert!(p2.adopted(std::slice::from_ref(&again)).is_empty());

    // Dropping the adopted entry removes it, exactly: ID1 out, ID2 kept.
    let dropped = lists("a", &[])
        .adopting(true)
        .with_applied(p.applied[&o.object].clone());
    let p3 = plan_target(&[dropped], &brownfield()).unwrap();
    assert_eq!(
        p3.patch_body(),
        Some(&json!({"identity": {"type": "UserAssigned",
            "userAssignedIdentities": {uai("ID1"): null}}}))
    );
}

#[test]
fn adoption_never_takes_what_another_object_owns() {
    // b owns ID1 (it added it); a adopts and lists ID1 and ID2.
    let owner = lists("b", &["ID1"]).with_applied(Applied {
        user_assigned_identities: vec![uai("ID1")],
        ..Applied::default()
    });
    let adopter = lists("a", &["ID1", "ID2"]).adopting(true);
    let objects = [adopter.clone(), owner.clone()];
    let p = plan_target(&objects, &brownfield()).unwrap();
    // a adopts only ID2, the unowned one; b keeps ID1.
    let adopted = p.adopted(&objects);
    assert_eq!(
        adopted[&adopter.object]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![uai("ID2")]
    );
    assert!(!adopted.contains_key(&owner.object));
    assert_eq!(recorded(&p, &owner), vec![uai("ID1")]);
    // a dropping ID1 never removes it while b wants it.
    let a2 = lists("a", &["ID2"])
        .adopting(true)
        .with_applied(p.applied[&adopter.object].clone());
    let b2 = owner.with_applied(p.applied[&objects[1].object].clone());
    let p2 = plan_target(&[a2, b2], &brownfield()).unwrap();
    assert!(p2.is_converged(), "{:?}", p2.writes);
}

#[test]
fn a_deleting_adopter_adopts_nothing_and_an_identity_it_adds_is_not_adopted() {
    // ID3 is not on the target: it is added (recorded as created), not adopted.
    let o = lists("a", &["ID1", "ID3"]).adopting(true);
    let p = plan_target(std::slice::from_ref(&o), &brownfield()).unwrap();
    assert_eq!(
        p.adopted(std::slice::from_ref(&o))[&o.object]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![uai("ID1")]
    );
    assert_eq!(p.writes.len(), 1);
    let gone = lists("a", &["ID1"]).adopting(true).deleting();
    let p = plan_target(std::slice::from_ref(&gone), &brownfield()).unwrap();
    assert!(p.adopted(std::slice::from_ref(&gone)).is_empty());
}

#[test]
fn grants_held_before_are_named_as_adopted_by_their_existing_assignment_name() {
    let o = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.role_assignments.push(RawRoleAssignment {
            identity: uai("ID1"),
            role: "Reader".into(),
            scope: RG.into(),
        });
        r.group_memberships.push(RawGroupMembership {
            identity: uai("ID1"),
            group_object_id: GROUP.into(),
        });
    })
    .adopting(true);
    let mut r = Resolved::default();
    r.principals
        .insert(uai("ID1").to_ascii_lowercase(), "p1".into());
    r.roles
        .insert(("reader".into(), RG.to_ascii_lowercase()), READER.into());
    // Made by hand: a role assignment under a name vmidentity would not choose, a membership.
    let theirs = format!(
        "{RG}/providers/Microsoft.Authorization/roleAssignments/44444444-4444-4444-4444-444444444444"
    );
    let mut held = LiveGrants::default();
    held.role_assignments.push(LiveRoleAssignment {
        id: theirs.clone(),
        scope: RG.into(),
        role_guid: READER.into(),
        principal_id: "p1".into(),
    });
    held.memberships
        .entry("p1".into())
        .or_default()
        .insert(GROUP.into());
    let p = plan_grants(std::slice::from_ref(&o), &r, &held);
    // No PUT (no 409, no duplicate), no POST: recorded by the existing name.
    assert!(p.is_empty(), "{p:?}");
    let (roles, groups) = p.adopted(&o, &p.additions);
    assert_eq!(
        roles,
        vec![AppliedRoleAssignment {
            id: theirs.clone(),
            scope: RG.into(),
            role_definition_id: READER.into(),
            principal_id: "p1".into(),
            identity: uai("ID1"),
        }]
    );
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_object_id, GROUP);

    // Recorded: nothing more is adopted; dropped from the spec: deleted by that very name.
    let rec = Applied {
        user_assigned_identities: vec![uai("ID1")],
        role_assignments: p.role_assignments[&o.object].clone(),
        group_memberships: p.group_memberships[&o.object].clone(),
        ..Applied::default()
    };
    let again = o.clone().with_applied(rec.clone());
    let p2 = plan_grants(std::slice::from_ref(&again), &r, &held);
    let (r2, g2) = p2.adopted(&again, &p2.additions);
    assert!(r2.is_empty() && g2.is_empty());
    let dropped = obj("a", &vm("myVM"), |x| {
        x.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(rec);
    let p3 = plan_grants(&[dropped], &r, &held);
    assert_eq!(
        p3.removals,
        vec![
            Write::RoleAssignmentDelete { id: theirs },
            Write::GroupMemberRemove {
                group_id: GROUP.into(),
                principal_id: "p1".into()
            }
        ]
    );
    // A grant this plan creates is not adopted.
    let p4 = plan_grants(std::slice::from_ref(&o), &r, &LiveGrants::default());
    assert_eq!(p4.additions.len(), 2);
    let (r4, g4) = p4.adopted(&o, &p4.additions);
    assert!(r4.is_empty() && g4.is_empty());
}
