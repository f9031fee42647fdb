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

/// One object listing `Reader at RG` and a group membership for ID1 (principal p1).
fn lists_grants(name: &str, roles: bool, groups: bool) -> DesiredObject {
    obj(name, &vm("myVM"), move |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        if roles {
            r.role_assignments.push(RawRoleAssignment {
                identity: uai("ID1"),
                role: "Reader".into(),
                scope: RG.into(),
            });
        }
        if groups {
            r.group_memberships.push(RawGroupMembership {
                identity: uai("ID1"),
                group_object_id: GROUP.into(),
            });
        }
    })
}

fn resolved_p1() -> Resolved {
    let mut r = Resolved::default();
    r.principals
        .insert(uai("ID1").to_ascii_lowercase(), "p1".into());
    r.roles
        .insert(("reader".into(), RG.to_ascii_lowercase()), READER.into());
    r
}

/// p1 holds Reader at RG under `name` and is a member of GROUP.
fn held_as(name: &str) -> LiveGrants {
    let mut held = LiveGrants::default();
    held.role_assignments.push(LiveRoleAssignment {
        id: format!("{RG}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        scope: RG.into(),
        role_guid: READER.into(),
        principal_id: "p1".into(),
    });
    held.memberships
        .entry("p1".into())
        .or_default()
        .insert(GROUP.into());
    held
}

fn record_of(p: &GrantPlan, o: &DesiredObject) -> Applied {
    Applied {
        user_assigned_identities: vec![uai("ID1")],
        role_assignments: p.role_assignments[&o.object].clone(),
        group_memberships: p.group_memberships[&o.object].clone(),
        ..Applied::default()
    }
}

/// The defect of issue 15's follow-up: an imported object (no adoption) listing a role
/// assignment and a membership Terraform made recorded them, so dropping the lines later
/// deleted them. Now: not created again, not recorded, reported as held, and a later drop
/// sends no DELETE.
#[test]
fn without_adoption_a_listed_grant_someone_else_made_is_not_recorded_and_a_drop_removes_nothing() {
    let theirs = "55555555-5555-5555-5555-555555555555";
    let held = held_as(theirs);
    let r = resolved_p1();
    let o = lists_grants("a", true, true);
    let p = plan_grants(std::slice::from_ref(&o), &r, &held);
    assert!(p.is_empty(), "nothing created again: {p:?}");
    assert!(p.role_assignments[&o.object].is_empty());
    assert!(p.group_memberships[&o.object].is_empty());
    let h = &p.held[&o.object];
    assert_eq!(
        h.role_assignments
            .iter()
            .map(|x| x.id.as_str())
            .collect::<Vec<_>>(),
        vec![format!("{RG}/providers/Microsoft.Authorization/roleAssignments/{theirs}").as_str()]
    );
    assert_eq!(h.group_memberships.len(), 1);
    let (roles, groups) = p.adopted(&o, &p.additions);
    assert!(roles.is_empty() && groups.is_empty(), "nothing adopted");

    // The next pass (its record as saved) is the same: still held, still not recorded.
    let again = o.clone().with_applied(record_of(&p, &o));
    let p2 = plan_grants(std::slice::from_ref(&again), &r, &held);
    assert!(p2.is_empty() && p2.role_assignments[&o.object].is_empty());
    assert_eq!(p2.held[&o.object], *h);

    // The lines dropped: no DELETE, no Graph removal; nothing held is reported any more.
    let dropped = lists_grants("a", false, false).with_applied(record_of(&p, &o));
    let p3 = plan_grants(std::slice::from_ref(&dropped), &r, &held);
    assert!(p3.removals.is_empty(), "{:?}", p3.removals);
    assert!(p3.is_empty() && p3.held.is_empty() && p3.untrusted.is_empty());
    // Deleting the object (Detach) removes nothing either.
    assert!(plan_grants(&[dropped.deleting()], &r, &held).is_empty());
}

/// A role assignment under vmidentity's deterministic name is its own (a previous pass
/// created it and may have lost its status update): recorded without adoption, and removed
/// when dropped. A membership has no name: the same crash leaves it unrecorded (never
/// removed: the planner errs toward not removing what it cannot prove is its own).
#[test]
fn the_deterministic_name_is_recorded_without_adoption_a_bare_membership_is_not() {
    let r = resolved_p1();
    let ours = assignment_name(RG, READER, "p1");
    let held = held_as(&ours);
    let o = lists_grants("a", true, true);
    let p = plan_grants(std::slice::from_ref(&o), &r, &held);
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(
        p.role_assignments[&o.object]
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>(),
        vec![role_assignment_id(RG, &ours)]
    );
    assert!(p.group_memberships[&o.object].is_empty());
    assert!(p.held[&o.object].role_assignments.is_empty());
    assert_eq!(p.held[&o.object].group_memberships.len(), 1);
    // Not news: no Adopted Event for what vmidentity made.
    let (roles, _) = p.adopted(&o, &p.additions);
    assert!(roles.is_empty());

    let dropped = lists_grants("a", false, true).with_applied(record_of(&p, &o));
    let p2 = plan_grants(&[dropped], &r, &held);
    assert_eq!(
        p2.removals,
        vec![Write::RoleAssignmentDelete {
            id: role_assignment_id(RG, &ours)
        }]
    );
}

/// What the object's own record holds stays recorded (the membership it created, a role
/// assignment it adopted under another name), with or without the annotation now; and what
/// another object on the target records is shared, as identities are.
#[test]
fn a_grant_in_the_objects_own_record_or_another_objects_stays_recorded() {
    let theirs = "66666666-6666-6666-6666-666666666666";
    let held = held_as(theirs);
    let r = resolved_p1();
    // Adopted at an earlier pass; the annotation since removed.
    let adopter = lists_grants("a", true, true).adopting(true);
    let p = plan_grants(std::slice::from_ref(&adopter), &r, &held);
    let rec = record_of(&p, &adopter);
    assert_eq!(rec.role_assignments.len(), 1);
    assert_eq!(rec.group_memberships.len(), 1);
    let later = lists_grants("a", true, true).with_applied(rec.clone());
    let p2 = plan_grants(std::slice::from_ref(&later), &r, &held);
    assert_eq!(record_of(&p2, &later), rec);
    assert!(p2.held.is_empty());
    // b lists the same grants without adopting: shared, as a's.
    let b = lists_grants("b", true, true);
    let p3 = plan_grants(&[later.clone(), b.clone()], &r, &held);
    assert_eq!(p3.role_assignments[&b.object], rec.role_assignments);
    assert_eq!(p3.group_memberships[&b.object], rec.group_memberships);
    // A record whose assignment was replaced by someone else's under another name does not
    // carry over to the new one.
    let mut stale = rec.clone();
    stale.role_assignments[0].id = role_assignment_id(RG, "77777777-7777-7777-7777-777777777777");
    let replaced = lists_grants("a", true, true).with_applied(stale);
    let p4 = plan_grants(std::slice::from_ref(&replaced), &r, &held);
    assert!(p4.role_assignments[&replaced.object].is_empty());
    assert_eq!(p4.held[&replaced.object].role_assignments.len(), 1);
    assert!(p4.removals.is_empty(), "{:?}", p4.removals);
}
