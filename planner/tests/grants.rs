//! Grants: exact writes for role assignments and group memberships, ownership, ordering.

mod common;

use common::*;
use serde_json::json;
use vmidentity_planner::grants::*;
use vmidentity_planner::model::{RawGroupMembership, RawRoleAssignment};
use vmidentity_planner::*;

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const BLOB: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
const GROUP: &str = "6f1c8a2e-3b5d-4c7a-9e21-0d4b5a6c7e80";
const RG: &str =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/myResourceGroup";

fn sa() -> String {
    format!("{RG}/providers/Microsoft.Storage/storageAccounts/sa1")
}

fn resolved(system: Option<&str>, uai1: Option<&str>) -> Resolved {
    let mut r = Resolved::default();
    if let Some(p) = system {
        r.principals.insert("systemassigned".into(), p.into());
    }
    if let Some(p) = uai1 {
        r.principals
            .insert(uai("ID1").to_ascii_lowercase(), p.into());
    }
    r.roles
        .insert(("reader".into(), RG.to_ascii_lowercase()), READER.into());
    r.roles.insert(
        ("storage blob data reader".into(), sa().to_ascii_lowercase()),
        BLOB.into(),
    );
    r
}

fn with_grants(system: bool) -> DesiredObject {
    obj("a", &vm("myVM"), |r| {
        r.system_assigned = Some(system);
        r.user_assigned_identities = vec![uai("ID1")];
        if system {
            r.role_assignments.push(RawRoleAssignment {
                identity: "SystemAssigned".into(),
                role: "Reader".into(),
                scope: RG.into(),
            });
        }
        r.role_assignments.push(RawRoleAssignment {
            identity: uai("ID1"),
            role: "Storage Blob Data Reader".into(),
            scope: sa(),
        });
        r.group_memberships.push(RawGroupMembership {
            identity: uai("ID1"),
            group_object_id: GROUP.into(),
        });
    })
}

#[test]
fn grants_the_system_identity_reader_and_a_uai_a_data_role_and_a_group() {
    let o = with_grants(true);
    let p = plan_grants(
        std::slice::from_ref(&o),
        &resolved(Some("sys-p"), Some("uai-p")),
        &LiveGrants::default(),
    );
    assert!(p.removals.is_empty());
    let name = assignment_name(RG, READER, "sys-p");
    assert_eq!(
        serde_json::to_value(&p.additions).unwrap(),
        json!([
            {"method": "PUT", "id": format!("{RG}/providers/Microsoft.Authorization/roleAssignments/{name}"),
             "apiVersion": "2022-04-01",
             "body": {"properties": {"roleDefinitionId": format!("/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
                                     "principalId": "sys-p", "principalType": "ServicePrincipal"}}},
            {"method": "PUT", "id": format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", sa(), assignment_name(&sa(), BLOB, "uai-p")),
             "apiVersion": "2022-04-01",
             "body": {"properties": {"roleDefinitionId": format!("/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.Authorization/roleDefinitions/{BLOB}"),
                                     "principalId": "uai-p", "principalType": "ServicePrincipal"}}},
            {"method": "POST", "id": format!("/groups/{GROUP}/members/$ref"), "apiVersion": "v1.0",
             "body": {"@odata.id": "https://graph.microsoft.com/v1.0/directoryObjects/uai-p"}},
        ])
    );
    assert_eq!(p.role_assignments[&o.object].len(), 2);
    assert_eq!(p.group_memberships[&o.object].len(), 1);
}

#[test]
fn names_are_deterministic_and_case_insensitive() {
    assert_eq!(
        assignment_name(RG, READER, "P"),
        assignment_name(&RG.to_uppercase(), &READER.to_uppercase(), "p")
    );
    assert_ne!(
        assignment_name(RG, READER, "p1"),
        assignment_name(RG, READER, "p2")
    );
}

fn live_of(p: &GrantPlan, o: &DesiredObject) -> LiveGrants {
    let mut live = LiveGrants::default();
    for r in &p.role_assignments[&o.object] {
        live.role_assignments.push(LiveRoleAssignment {
            id: r.id.clone(),
            scope: r.scope.clone(),
            role_guid: r.role_definition_id.clone(),
            principal_id: r.principal_id.clone(),
        });
    }
    for g in &p.group_memberships[&o.object] {
        live.memberships
            .entry(g.principal_id.clone())
            .or_default()
            .insert(g.group_object_id.clone());
    }
    live
}

#[test]
fn converged_grants_plan_nothing_and_keep_their_records() {
    let o = with_grants(true);
    let r = resolved(Some("sys-p"), Some("uai-p"));
    let first = plan_grants(std::slice::from_ref(&o), &r, &LiveGrants::default());
    let live = live_of(&first, &o);
    let o2 = o.clone().with_applied(Applied {
        role_assignments: first.role_assignments[&o.object].clone(),
        group_memberships: first.group_memberships[&o.object].clone(),
        ..Applied::default()
    });
    let again = plan_grants(std::slice::from_ref(&o2), &r, &live);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        again.role_assignments[&o2.object],
        first.role_assignments[&o.object]
    );
}

#[test]
fn an_existing_assignment_under_another_name_is_adopted() {
    let o = with_grants(false);
    let mut live = LiveGrants::default();
    live.role_assignments.push(LiveRoleAssignment {
        id: format!("{}/providers/Microsoft.Authorization/roleAssignments/11111111-1111-1111-1111-111111111111", sa()),
        scope: sa().to_uppercase().replace("/SUBSCRIPTIONS/", "/subscriptions/"),
        role_guid: BLOB.into(),
        principal_id: "UAI-P".into(),
    });
    let p = plan_grants(
        std::slice::from_ref(&o),
        &resolved(None, Some("uai-p")),
        &live,
    );
    assert_eq!(
        p.additions.len(),
        1,
        "only the group membership: {:?}",
        p.additions
    );
    assert!(
        p.role_assignments[&o.object][0]
            .id
            .ends_with("11111111-1111-1111-1111-111111111111")
    );
}

#[test]
fn removing_a_grant_deletes_only_what_this_object_recorded() {
    let o = with_grants(false);
    let r = resolved(None, Some("uai-p"));
    let first = plan_grants(std::slice::from_ref(&o), &r, &LiveGrants::default());
    let mut live = live_of(&first, &o);
    // Someone else's assignment for the same principal: never touched.
    live.role_assignments.push(LiveRoleAssignment {
        id: format!("{RG}/providers/Microsoft.Authorization/roleAssignments/22222222-2222-2222-2222-222222222222"),
        scope: RG.into(),
        role_guid: READER.into(),
        principal_id: "uai-p".into(),
    });
    live.memberships
        .entry("uai-p".into())
        .or_default()
        .insert("99999999-9999-9999-9999-999999999999".into());
    let applied = Applied {
        user_assigned_identities: vec![uai("ID1")],
        role_assignments: first.role_assignments[&o.object].clone(),
        group_memberships: first.group_memberships[&o.object].clone(),
        ..Applied::default()
    };
    // The spec drops the role and the group.
    let edited = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(applied.clone());
    let p = plan_grants(std::slice::from_ref(&edited), &r, &live);
    let ids: Vec<(String, String)> = p
        .removals
        .iter()
        .map(|w| (w.method.clone(), w.id.clone()))
        .collect();
    assert_eq!(
        ids,
        vec![
            (
                "DELETE".to_string(),
                first.role_assignments[&o.object][0].id.clone()
            ),
            (
                "DELETE".to_string(),
                format!("/groups/{GROUP}/members/uai-p/$ref")
            ),
        ]
    );
    assert!(p.additions.is_empty());
    assert!(p.role_assignments[&edited.object].is_empty());
    // Retain on deletion: nothing removed; Detach: the same removals.
    let mut retain = edited.clone();
    retain.deleting = true;
    retain.spec.deletion_policy = DeletionPolicy::Retain;
    assert!(plan_grants(&[retain], &r, &live).removals.is_empty());
    let detach = o.clone().with_applied(applied).deleting();
    assert_eq!(plan_grants(&[detach], &r, &live).removals.len(), 2);
}

#[test]
fn a_grant_another_object_still_wants_is_kept() {
    let a = with_grants(false);
    let r = resolved(None, Some("uai-p"));
    let first = plan_grants(std::slice::from_ref(&a), &r, &LiveGrants::default());
    let live = live_of(&first, &a);
    let dropped = obj("a", &vm("myVM"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(Applied {
        role_assignments: first.role_assignments[&a.object].clone(),
        group_memberships: first.group_memberships[&a.object].clone(),
        ..Applied::default()
    });
    let mut b = with_grants(false);
    b.object = ObjectRef::new("default", "b");
    let p = plan_grants(&[dropped, b.clone()], &r, &live);
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(p.role_assignments[&b.object].len(), 1);
}

#[test]
fn a_recycled_system_identity_gets_new_assignments_and_the_old_ones_stay_untouched() {
    // The old principal is no longer one of the target's identities: its assignments are
    // not removed (nothing ties that principal to the target any more, and a record is
    // writable by whoever may write the status), only reported and dropped from the record.
    let o = with_grants(true);
    let first = plan_grants(
        std::slice::from_ref(&o),
        &resolved(Some("old-p"), Some("uai-p")),
        &LiveGrants::default(),
    );
    let live = live_of(&first, &o);
    let o2 = o.clone().with_applied(Applied {
        role_assignments: first.role_assignments[&o.object].clone(),
        group_memberships: first.group_memberships[&o.object].clone(),
        ..Applied::default()
    });
    let p = plan_grants(
        std::slice::from_ref(&o2),
        &resolved(Some("new-p"), Some("uai-p")),
        &live,
    );
    assert!(p.removals.is_empty(), "{:?}", p.removals);
    assert_eq!(p.additions.len(), 1);
    assert_eq!(p.additions[0].body["properties"]["principalId"], "new-p");
    assert_eq!(
        p.untrusted.iter().map(|u| u.reason).collect::<Vec<_>>(),
        vec!["PrincipalNotOfTarget"]
    );
    assert!(
        p.role_assignments[&o.object]
            .iter()
            .all(|r| r.principal_id != "old-p")
    );
}

/// A record forged through the status subresource: another team's principal, a role
/// assignment and a group membership it holds. Nothing of it is read or removed.
#[test]
fn a_forged_record_naming_another_principal_is_never_acted_on() {
    let o = with_grants(false);
    let r = resolved(None, Some("uai-p"));
    let victim = "victim-p";
    let victim_assignment = format!(
        "{RG}/providers/Microsoft.Authorization/roleAssignments/{}",
        assignment_name(RG, READER, victim)
    );
    let mut live = LiveGrants::default();
    live.role_assignments.push(LiveRoleAssignment {
        id: victim_assignment.clone(),
        scope: RG.into(),
        role_guid: READER.into(),
        principal_id: victim.into(),
    });
    live.memberships
        .entry(victim.into())
        .or_default()
        .insert(GROUP.into());
    let forged = Applied {
        user_assigned_identities: vec![uai("ID1")],
        role_assignments: vec![AppliedRoleAssignment {
            id: victim_assignment.clone(),
            scope: RG.into(),
            role_definition_id: READER.into(),
            principal_id: victim.into(),
            identity: uai("ID1"),
        }],
        group_memberships: vec![AppliedGroupMembership {
            group_object_id: GROUP.into(),
            principal_id: victim.into(),
            identity: "SystemAssigned".into(),
        }],
        ..Applied::default()
    };
    let edited = obj("a", &vm("myVM"), |x| {
        x.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(forged.clone());
    assert!(
        !principals_to_read(std::slice::from_ref(&edited), &r).contains(victim),
        "another principal is not even read"
    );
    let p = plan_grants(std::slice::from_ref(&edited), &r, &live);
    assert!(p.removals.is_empty(), "{:?}", p.removals);
    assert_eq!(p.untrusted.len(), 2, "{:?}", p.untrusted);
    // Deleting the object (Detach) does not remove them either.
    let gone = o.with_applied(forged).deleting();
    assert!(plan_grants(&[gone], &r, &live).removals.is_empty());
}

/// A record of the target's own principal that names an assignment vmidentity did not make
/// (not under the deterministic name, not the one the record adopted): left alone.
#[test]
fn a_record_of_an_assignment_someone_else_made_does_not_remove_it() {
    let r = resolved(None, Some("uai-p"));
    let theirs = format!(
        "{RG}/providers/Microsoft.Authorization/roleAssignments/33333333-3333-3333-3333-333333333333"
    );
    let mut live = LiveGrants::default();
    live.role_assignments.push(LiveRoleAssignment {
        id: theirs.clone(),
        scope: RG.into(),
        role_guid: READER.into(),
        principal_id: "uai-p".into(),
    });
    let record = |id: String| AppliedRoleAssignment {
        id,
        scope: RG.into(),
        role_definition_id: READER.into(),
        principal_id: "uai-p".into(),
        identity: uai("ID1"),
    };
    let forged = obj("a", &vm("myVM"), |x| {
        x.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(Applied {
        role_assignments: vec![record(format!(
            "{RG}/providers/Microsoft.Authorization/roleAssignments/{}",
            assignment_name(RG, READER, "uai-p")
        ))],
        ..Applied::default()
    });
    let p = plan_grants(std::slice::from_ref(&forged), &r, &live);
    assert!(p.removals.is_empty(), "{:?}", p.removals);
    assert_eq!(p.untrusted[0].reason, "AssignmentNotOwned");
    // Adopted (the record holds exactly that assignment): released as usual.
    let adopted = obj("a", &vm("myVM"), |x| {
        x.user_assigned_identities = vec![uai("ID1")]
    })
    .with_applied(Applied {
        role_assignments: vec![record(theirs.clone())],
        ..Applied::default()
    });
    let p = plan_grants(std::slice::from_ref(&adopted), &r, &live);
    assert_eq!(p.removals.len(), 1);
    assert_eq!(p.removals[0].id, theirs);
}

#[test]
fn unknown_principals_and_roles_are_pending_not_guessed() {
    let o = with_grants(true);
    let mut r = resolved(None, Some("uai-p"));
    r.roles.clear();
    let p = plan_grants(&[o], &r, &LiveGrants::default());
    let reasons: Vec<&str> = p.pending.iter().map(|x| x.reason).collect();
    assert_eq!(reasons, vec!["PrincipalUnknown", "RoleNotResolved"]);
    assert_eq!(
        p.additions.len(),
        1,
        "the group membership still goes: {:?}",
        p.additions
    );
}
