//! Tests written against the mutants `cargo mutants` found alive in the planner
//! (`scripts/mutants.sh`): the change list that Events print, the 150-identities-per-request
//! boundary, `LiveIdentity::contains`, `principals_to_read`, stale-entry detection, the
//! methods and IDs of writes, grouping by target, lower-cased principals in records, label
//! selectors' `NotIn` / `DoesNotExist`, and the emptiness of policy sets.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;
use vmidentity_planner::grants::{
    GrantPlan, LiveGrants, Resolved, plan_grants, principals_to_read,
};
use vmidentity_planner::model::{IdentityRef, RawGroupMembership, RawRoleAssignment};
use vmidentity_planner::policy::{
    CredentialBinding, LabelSelector, LabelSelectorRequirement, ResourceSet,
};
use vmidentity_planner::*;

#[test]
fn the_change_list_names_each_change() {
    // Enable: only that.
    let o = obj("a", &vm("v"), |r| r.system_assigned = Some(true));
    let p = plan_target(&[o], &live(&vm("v"), json!({"type": "None"}))).expect("plan");
    assert_eq!(p.changes, vec![Change::EnableSystemAssigned]);
    assert_eq!(p.changes[0].to_string(), "enable system-assigned identity");
    // Disable: only that.
    let o = obj("a", &vm("v"), |r| r.system_assigned = Some(false));
    let p = plan_target(&[o], &live(&vm("v"), json!({"type": "SystemAssigned"}))).expect("plan");
    assert_eq!(p.changes, vec![Change::DisableSystemAssigned]);
    assert_eq!(p.changes[0].to_string(), "disable system-assigned identity");
    // Already on, a UAI added: no system change.
    let o = obj("a", &vm("v"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID1")];
    });
    let p = plan_target(&[o], &live(&vm("v"), json!({"type": "SystemAssigned"}))).expect("plan");
    let id1 = ArmId::parse_uai(&uai("ID1")).expect("id");
    assert_eq!(p.changes, vec![Change::AddUserAssigned(id1.clone())]);
    assert_eq!(
        p.changes[0].to_string(),
        format!("add user-assigned identity {}", uai("ID1"))
    );
    // Off and staying off while a UAI is removed (Exact): no system change.
    let o = obj("a", &vm("v"), |r| {
        r.system_assigned = Some(false);
        r.mode = Some(Mode::Exact);
    });
    let p = plan_target(
        &[o],
        &live(
            &vm("v"),
            json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
        ),
    )
    .expect("plan");
    assert_eq!(p.changes, vec![Change::RemoveUserAssigned(id1.clone())]);
    assert_eq!(
        p.changes[0].to_string(),
        format!("remove user-assigned identity {}", uai("ID1"))
    );
    assert_eq!(
        Change::RepairUserAssigned(id1).to_string(),
        format!("re-attach stale user-assigned identity {}", uai("ID1"))
    );
}

#[test]
fn exactly_150_identities_in_one_request_are_allowed() {
    let ids: Vec<String> = (0..150).map(|i| uai(&format!("u{i}"))).collect();
    let o = obj("a", &vm("v"), |r| r.user_assigned_identities = ids);
    let p = plan_target(&[o], &live(&vm("v"), json!({"type": "None"})))
        .expect("150 is the limit, not over it");
    let body = p.patch_body().expect("PATCH");
    assert_eq!(
        body["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.len()),
        Some(150)
    );
}

#[test]
fn live_identity_contains_by_case_folded_id() {
    let l = live(
        &vm("v"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}),
    );
    assert!(
        l.identity.contains(
            &ArmId::parse_uai(
                &uai("id1")
                    .to_uppercase()
                    .replace("/SUBSCRIPTIONS/", "/subscriptions/")
            )
            .expect("id")
        )
    );
    assert!(
        l.identity
            .contains(&ArmId::parse_uai(&uai("ID1")).expect("id"))
    );
    assert!(
        !l.identity
            .contains(&ArmId::parse_uai(&uai("ID2")).expect("id"))
    );
    assert_eq!(
        IdentityType::SystemAndUserAssigned.to_string(),
        "SystemAssigned, UserAssigned"
    );
    assert_eq!(IdentityType::None.to_string(), "None");
}

#[test]
fn an_entry_is_stale_only_when_both_principal_and_client_are_empty() {
    let l = live(
        &vm("v"),
        json!({"type": "UserAssigned", "userAssignedIdentities": {
            uai("A"): {"principalId": "", "clientId": ""},
            uai("B"): {"principalId": "", "clientId": "c"},
            uai("C"): {"principalId": "p", "clientId": ""},
        }}),
    );
    let stale = |n: &str| l.identity.user_assigned[&uai(n).to_ascii_lowercase()].stale;
    assert!(stale("A"));
    assert!(!stale("B"));
    assert!(!stale("C"));
}

fn resolved(principals: &[(&str, &str)], roles: &[(&str, &str, &str)]) -> Resolved {
    Resolved {
        principals: principals
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        roles: roles
            .iter()
            .map(|(r, s, g)| {
                (
                    (r.to_ascii_lowercase(), s.to_ascii_lowercase()),
                    g.to_string(),
                )
            })
            .collect(),
    }
}

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const G1: &str = "00000000-0000-0000-0000-0000000000a1";

fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/myResourceGroup")
}

fn granting(name: &str) -> DesiredObject {
    obj(name, &vm("v"), |r| {
        r.user_assigned_identities = vec![uai("ID1")];
        r.role_assignments = vec![RawRoleAssignment {
            identity: uai("ID1"),
            role: "Reader".into(),
            scope: rg(),
        }];
        r.group_memberships = vec![RawGroupMembership {
            identity: uai("ID1"),
            group_object_id: G1.into(),
        }];
    })
}

#[test]
fn principals_to_read_are_the_known_principals_of_objects_that_stay() {
    let key = uai("ID1").to_ascii_lowercase();
    let r = resolved(&[(&key, "PRINCIPAL-1")], &[]);
    let o = granting("a");
    let read = principals_to_read(std::slice::from_ref(&o), &r);
    assert_eq!(
        read.into_iter().collect::<Vec<_>>(),
        vec!["principal-1".to_string()]
    );
    // An object being deleted asks for nothing new (its records are read through the
    // target's own principals, not its spec).
    let mut d = o.clone();
    d.deleting = true;
    assert!(principals_to_read(&[d], &r).is_empty());
    // Unknown principal: nothing to read.
    assert!(principals_to_read(&[o], &resolved(&[], &[])).is_empty());
}

#[test]
fn records_hold_principals_lower_cased_and_the_plan_is_not_empty() {
    let key = uai("ID1").to_ascii_lowercase();
    let r = resolved(&[(&key, "PRINCIPAL-1")], &[("Reader", &rg(), READER)]);
    let o = granting("a");
    let gp = plan_grants(std::slice::from_ref(&o), &r, &LiveGrants::default());
    let roles = &gp.role_assignments[&o.object];
    assert_eq!(roles.len(), 1, "{gp:?}");
    assert_eq!(roles[0].principal_id, "principal-1");
    let groups = &gp.group_memberships[&o.object];
    assert_eq!(groups.len(), 1, "{gp:?}");
    assert_eq!(groups[0].principal_id, "principal-1");
    assert_eq!(gp.additions.len(), 2);
    assert!(gp.removals.is_empty());
    assert!(!gp.is_empty(), "additions only");
    let only_removals = GrantPlan {
        removals: gp.additions.clone(),
        ..GrantPlan::default()
    };
    assert!(!only_removals.is_empty(), "removals only");
    assert!(GrantPlan::default().is_empty());
    // The writes: PUT and POST, and the PUT's assignment ID.
    let methods: Vec<&str> = gp.additions.iter().map(Write::method).collect();
    assert_eq!(methods, vec!["PUT", "POST"]);
    let put_id = gp.additions[0]
        .role_assignment_id()
        .expect("a PUT has an ID");
    assert!(
        put_id.starts_with(&format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/",
            rg()
        )),
        "{put_id}"
    );
    let delete = Write::RoleAssignmentDelete { id: put_id.clone() };
    assert_eq!(delete.method(), "DELETE");
    assert_eq!(delete.role_assignment_id(), Some(put_id));
    let remove = Write::GroupMemberRemove {
        group_id: G1.into(),
        principal_id: "p".into(),
    };
    assert_eq!(remove.method(), "DELETE");
    assert_eq!(remove.role_assignment_id(), None);
    let _ = IdentityRef::SystemAssigned;
}

#[test]
fn group_by_target_folds_case_and_sorts_each_group() {
    let upper = vm("V1")
        .replace("virtualMachines/V1", "virtualMachines/v1")
        .to_uppercase()
        .replace("/SUBSCRIPTIONS/", "/subscriptions/");
    let objects = vec![
        obj("b", &vm("v1"), |_| {}),
        obj("a", &upper, |_| {}),
        obj("c", &vm("v2"), |_| {}),
    ];
    let groups = group_by_target(objects);
    assert_eq!(groups.len(), 2);
    let g1 = &groups[&vm("v1").to_ascii_lowercase()];
    assert_eq!(
        g1.iter()
            .map(|o| o.object.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert_eq!(groups[&vm("v2").to_ascii_lowercase()].len(), 1);
}

#[test]
fn set_header_replaces_and_removes() {
    let o = obj("a", &vm("v"), |r| r.system_assigned = Some(true));
    let l = LiveResource::from_arm_json(
        &json!({"id": vm("v"), "etag": "\"3\"", "identity": {"type": "None"}}),
    )
    .expect("live");
    let p = plan_target(&[o], &l).expect("plan");
    let mut req = p.writes[0].request("https://graph.microsoft.com");
    assert_eq!(req.header(IF_MATCH), Some("\"3\""));
    req.set_header("if-match", Some("\"4\"".into()));
    assert_eq!(req.header(IF_MATCH), Some("\"4\""));
    assert_eq!(
        req.headers.len(),
        1,
        "replaced, not added: {:?}",
        req.headers
    );
    req.set_header(IF_MATCH, None);
    assert_eq!(req.header(IF_MATCH), None);
    assert!(req.headers.is_empty());
}

#[test]
fn label_selectors_not_in_and_does_not_exist() {
    let labels: BTreeMap<String, String> = [("tier".to_string(), "web".to_string())]
        .into_iter()
        .collect();
    let sel = |op: &str, values: &[&str], key: &str| LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    };
    assert!(sel("NotIn", &["db"], "tier").matches(&labels));
    assert!(!sel("NotIn", &["web"], "tier").matches(&labels));
    assert!(sel("NotIn", &["web"], "absent").matches(&labels));
    assert!(sel("DoesNotExist", &[], "absent").matches(&labels));
    assert!(!sel("DoesNotExist", &[], "tier").matches(&labels));
    assert!(
        !sel("Sometimes", &[], "tier").matches(&labels),
        "unknown operator: fail closed"
    );
}

#[test]
fn resource_sets_and_credential_bindings_are_empty_only_when_every_list_is() {
    assert!(ResourceSet::default().is_empty());
    for set in [
        ResourceSet {
            subscriptions: vec![SUB.into()],
            ..Default::default()
        },
        ResourceSet {
            resource_groups: vec![rg()],
            ..Default::default()
        },
        ResourceSet {
            ids: vec![vm("v")],
            ..Default::default()
        },
        ResourceSet {
            patterns: vec!["**".into()],
            ..Default::default()
        },
    ] {
        assert!(!set.is_empty(), "{set:?}");
    }
    assert!(CredentialBinding::default().is_empty());
    assert!(
        !CredentialBinding {
            client_ids: vec![G1.into()],
            ..Default::default()
        }
        .is_empty()
    );
    assert!(
        !CredentialBinding {
            tenant_ids: vec![G1.into()],
            ..Default::default()
        }
        .is_empty()
    );
}
