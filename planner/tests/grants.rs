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

/// Someone else's assignment (a name vmidentity does not choose) for a listed grant: never
/// created again (no PUT, no 409, no duplicate), and recorded only by an adopting object.
/// (Until issue 15's follow-up it was recorded without adoption, so a later drop deleted it.)
#[test]
fn an_existing_assignment_under_another_name_is_left_alone_unless_adopted() {
    let mut live = LiveGrants::default();
    live.role_assignments.push(LiveRoleAssignment {
        id: format!("{}/providers/Microsoft.Authorization/roleAssignments/11111111-1111-1111-1111-111111111111", sa()),
        scope: sa().to_uppercase().replace("/SUBSCRIPTIONS/", "/subscriptions/"),
        role_guid: BLOB.into(),
        principal_id: "UAI-P".into(),
    });
    let r = resolved(None, Some("uai-p"));
    let o = with_grants(false);
    let p = plan_grants(std::slice::from_ref(&o), &r, &live);
    assert_eq!(
        p.additions.len(),
        1,
        "only the group membership: {:?}",
        p.additions
    );
    assert!(p.role_assignments[&o.object].is_empty(), "not recorded");
    let held = &p.held[&o.object];
    assert!(
        held.role_assignments[0]
            .id
            .ends_with("11111111-1111-1111-1111-111111111111")
    );
    let adopting = with_grants(false).adopting(true);
    let p = plan_grants(std::slice::from_ref(&adopting), &r, &live);
    assert_eq!(p.additions.len(), 1);
    assert!(
        p.role_assignments[&adopting.object][0]
            .id
            .ends_with("11111111-1111-1111-1111-111111111111")
    );
    assert!(p.held.is_empty());
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
        .map(|w| {
            let r = w.request(PUBLIC_GRAPH_ENDPOINT);
            (r.method.to_string(), r.id().to_string())
        })
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
    assert!(
        matches!(&p.additions[0], Write::RoleAssignmentPut { principal_id, .. } if principal_id == "new-p"),
        "{:?}",
        p.additions
    );
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
    assert_eq!(p.removals[0], Write::RoleAssignmentDelete { id: theirs });
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

#[test]
fn role_definition_ids_name_the_subscription_of_the_scope() {
    let g = "ACDD72A7-3385-48EF-BD42-F606FBA81AE7";
    let want =
        format!("/subscriptions/sub/providers/Microsoft.Authorization/roleDefinitions/{READER}");
    assert_eq!(
        role_definition_id("/subscriptions/SUB/resourceGroups/rg", g),
        want
    );
    assert_eq!(role_definition_id("sub", g), want);
    // A full definition ID is reduced to its GUID.
    assert_eq!(
        role_definition_id(
            "/subscriptions/sub",
            &format!("/providers/Microsoft.Authorization/roleDefinitions/{g}")
        ),
        want
    );
    let tenant = format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}");
    assert_eq!(
        role_definition_id("/providers/Microsoft.Management/managementGroups/mg", g),
        tenant
    );
    assert_eq!(role_definition_id("/", g), tenant);
}

#[test]
fn assignment_names_are_uuid_v5_in_vmidentity_s_namespace() {
    let a = assignment_name(
        "/subscriptions/S/resourceGroups/RG",
        &READER.to_uppercase(),
        "P",
    );
    // The namespace is part of the contract: names of existing assignments derive from it.
    let ns = uuid::Uuid::from_u128(0x6d1c_57a0_2a3c_4c6e_9f0b_7e5d_1a2b_3c4d);
    assert_eq!(ASSIGNMENT_NAME_NAMESPACE, ns);
    let expected = uuid::Uuid::new_v5(
        &ns,
        format!("/subscriptions/s/resourcegroups/rg|{READER}|p").as_bytes(),
    );
    assert_eq!(a, expected.to_string());
    assert_ne!(a, assignment_name("/subscriptions/s", READER, "p"));
}

#[test]
fn every_write_renders_to_its_request() {
    let put = Write::RoleAssignmentPut {
        scope: RG.into(),
        name: "n1".into(),
        role_definition_id: role_definition_id(RG, READER),
        principal_id: "p1".into(),
        principal_type: Some(SERVICE_PRINCIPAL.into()),
    };
    let r = put.request("https://graph.example");
    assert_eq!(
        (r.service, r.method, r.api_version.as_deref()),
        (Service::Arm, "PUT", Some(AUTHORIZATION_API_VERSION))
    );
    assert_eq!(
        r.path,
        format!("{RG}/providers/Microsoft.Authorization/roleAssignments/n1")
    );
    assert!(r.headers.is_empty());
    assert_eq!(
        serde_json::to_string(r.body.as_ref().unwrap()).unwrap(),
        format!(
            r#"{{"properties":{{"roleDefinitionId":"/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.Authorization/roleDefinitions/{READER}","principalId":"p1","principalType":"ServicePrincipal"}}}}"#
        )
    );
    assert_eq!(put.role_assignment_id().as_deref(), Some(r.path.as_str()));
    // Without a principal type, none is sent.
    let mut bare = put.clone();
    if let Write::RoleAssignmentPut { principal_type, .. } = &mut bare {
        *principal_type = None;
    }
    assert!(
        bare.request("x").body.unwrap()["properties"]
            .get("principalType")
            .is_none()
    );

    let del = Write::RoleAssignmentDelete { id: r.path.clone() };
    let d = del.request("x");
    assert_eq!((d.method, d.body.as_ref()), ("DELETE", None));
    assert_eq!(d.path, r.path);
    assert!(del.is_removal());

    // Graph: the version leads the path, no api-version; `@odata.id` names the endpoint
    // the writes are for (a trailing '/' is not doubled).
    let add = Write::GroupMemberAdd {
        group_id: GROUP.into(),
        principal_id: "p1".into(),
    };
    let a = add.request("http://127.0.0.1:8080/");
    assert_eq!(
        (a.service, a.method, a.api_version.as_deref()),
        (Service::Graph, "POST", None)
    );
    assert_eq!(a.path, format!("/v1.0/groups/{GROUP}/members/$ref"));
    assert_eq!(
        a.body,
        Some(json!({"@odata.id": "http://127.0.0.1:8080/v1.0/directoryObjects/p1"}))
    );
    // The plan element keeps its shape: Graph's version as apiVersion, the rest as id.
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        json!({"method": "POST", "id": format!("/groups/{GROUP}/members/$ref"), "apiVersion": "v1.0",
               "body": {"@odata.id": "http://127.0.0.1:8080/v1.0/directoryObjects/p1"}})
    );
    // `Write`'s own JSON is for the public cloud.
    assert_eq!(
        serde_json::to_value(&add).unwrap()["body"]["@odata.id"],
        "https://graph.microsoft.com/v1.0/directoryObjects/p1"
    );
    let rm = Write::GroupMemberRemove {
        group_id: GROUP.into(),
        principal_id: "p1".into(),
    };
    let m = rm.request("x");
    assert_eq!(m.path, format!("/v1.0/groups/{GROUP}/members/p1/$ref"));
    assert_eq!((m.method, m.body.as_ref()), ("DELETE", None));
    assert_eq!(
        serde_json::to_value(&rm).unwrap(),
        json!({"method": "DELETE", "id": format!("/groups/{GROUP}/members/p1/$ref"), "apiVersion": "v1.0", "body": null})
    );
    assert!(rm.is_removal() && !add.is_removal());
}

/// Roles for people: built-in roles by name (and GUID) from a GUID or a full role definition
/// ID, in any case; names resolve back to the same GUIDs; other roles by GUID.
#[test]
fn built_in_roles_are_named_both_ways() {
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    assert_eq!(builtin_role_guid("reader"), Some(READER));
    assert_eq!(
        builtin_role_guid("Storage Blob Data Reader"),
        Some("2a2b9908-6ea1-4ae2-8e65-a410df84e7d1")
    );
    assert_eq!(builtin_role_name(&READER.to_uppercase()), Some("Reader"));
    assert_eq!(
        role_label(&format!(
            "/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/{READER}"
        )),
        format!("Reader ({READER})")
    );
    let custom = "11111111-2222-4333-8444-555555555555";
    assert_eq!(role_label(custom), custom);
}
