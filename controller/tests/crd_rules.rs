//! The CRD's CEL rules refuse IDs and scopes a URL parser would resolve or decode into
//! another path (`.`/`..` segments, `%`, `\`, control characters, ...), evaluated
//! client-side with kube's CEL validator against the generated schema. The planner refuses
//! the same things (planner/src/id.rs); these rules make the API server say so at admission.

use kube::core::cel::validate_cel;
use vmidentity::crd::{
    GroupMembership, RoleAssignment, VirtualMachineIdentity, VirtualMachineIdentitySpec,
};

const SUB: &str = "/subscriptions/0a1b2c3d-0000-4000-8000-0000000000a1";

fn vm() -> String {
    format!("{SUB}/resourceGroups/rg-a/providers/Microsoft.Compute/virtualMachines/vm1")
}

fn uai(name: &str) -> String {
    format!(
        "{SUB}/resourceGroups/rg-a/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn object(f: impl FnOnce(&mut VirtualMachineIdentitySpec)) -> VirtualMachineIdentity {
    let mut spec = VirtualMachineIdentitySpec {
        target: vm(),
        arm_api_version: None,
        mode: None,
        system_assigned: Some(true),
        user_assigned_identities: vec![uai("u1")],
        role_assignments: vec![RoleAssignment {
            identity: "SystemAssigned".into(),
            role: "Reader".into(),
            scope: format!("{SUB}/resourceGroups/rg-a"),
        }],
        group_memberships: vec![GroupMembership {
            identity: "SystemAssigned".into(),
            group_object_id: "33333333-3333-4333-8333-333333333333".into(),
        }],
        deletion_policy: None,
    };
    f(&mut spec);
    VirtualMachineIdentity::new("o", spec)
}

/// The messages of the rules `o` breaks (empty: none).
fn broken(o: &VirtualMachineIdentity) -> Vec<String> {
    match validate_cel(o) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn bad_spellings(under: &str) -> Vec<String> {
    vec![
        format!("{under}/providers/../../../resourceGroups/rg-prod"),
        format!("{under}/providers/%2e%2e/%2e%2e/%2e%2e/resourceGroups/rg-prod"),
        format!("{under}%2F..%2F..%2FresourceGroups%2Frg-prod"),
        format!("{under}/providers\\..\\..\\..\\resourceGroups\\rg-prod"),
        format!("{under}/x/."),
        format!("{under}/x/.."),
        format!("{under}/x\u{1}"),
        format!("{under}/x\ty"),
        format!("{under}/x y"),
        format!("{under}/x?y"),
        format!("{under}/x#y"),
    ]
}

#[test]
fn a_good_object_passes_every_rule() {
    assert_eq!(broken(&object(|_| {})), Vec::<String>::new());
    // Mixed case, dots inside names, management-group scopes.
    let o = object(|s| {
        s.target = vm()
            .to_uppercase()
            .replace("/SUBSCRIPTIONS/", "/subscriptions/");
        s.user_assigned_identities = vec![uai("u.1"), uai("U-2")];
        s.role_assignments[0].scope =
            "/providers/Microsoft.Management/managementGroups/mg.1".into();
        s.role_assignments.push(RoleAssignment {
            identity: "SystemAssigned".into(),
            role: "Reader".into(),
            scope: format!(
                "{SUB}/resourceGroups/rg..a/providers/Microsoft.Storage/storageAccounts/sa"
            ),
        });
    });
    assert_eq!(broken(&o), Vec::<String>::new());
}

#[test]
fn escaping_role_assignment_scopes_are_refused() {
    for scope in bad_spellings(&format!("{SUB}/resourceGroups/rg-a"))
        .into_iter()
        .chain([
            "".to_string(),
            "subscriptions/x".to_string(),
            format!("{SUB}/resourceGroups/rg-a/"),
            format!("{SUB}//resourceGroups/rg-a"),
            "/providers/Microsoft.Management/managementGroups/..".to_string(),
        ])
    {
        let o = object(|s| s.role_assignments[0].scope = scope.clone());
        let msgs = broken(&o);
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("each roleAssignments[].scope must be an ARM scope ID")),
            "{scope:?}: {msgs:?}"
        );
    }
}

#[test]
fn escaping_targets_and_identities_are_refused() {
    for t in bad_spellings(&format!("{SUB}/resourceGroups/rg-a"))
        .into_iter()
        .map(|s| format!("{s}/providers/Microsoft.Compute/virtualMachines/vm1"))
        .chain([
            format!("{SUB}/resourceGroups/../providers/Microsoft.Compute/virtualMachines/vm1"),
            format!("{SUB}/resourceGroups/rg-a/providers/Microsoft.Compute/virtualMachines/.."),
            format!("{SUB}/resourceGroups/%2e%2e/providers/Microsoft.Compute/virtualMachines/vm1"),
            format!("{SUB}/resourceGroups/rg\\a/providers/Microsoft.Compute/virtualMachines/vm1"),
        ])
    {
        let o = object(|s| s.target = t.clone());
        let msgs = broken(&o);
        assert!(!msgs.is_empty(), "{t:?}");
    }
    // The dedicated rule names the problem even where the shape rule passes.
    let o = object(|s| {
        s.target =
            format!("{SUB}/resourceGroups/..%2F/providers/Microsoft.Compute/virtualMachines/vm1")
    });
    assert!(
        broken(&o)
            .iter()
            .any(|m| m.starts_with("spec.target must not contain '.' or '..' segments")),
        "{:?}",
        broken(&o)
    );
    for name in ["..", ".", "%2e%2e", "u\\..", "u\u{7f}", "u 1"] {
        let o = object(|s| s.user_assigned_identities = vec![uai(name)]);
        assert!(
            broken(&o)
                .iter()
                .any(|m| m.starts_with("each userAssignedIdentities entry must not contain")),
            "{name:?}: {:?}",
            broken(&o)
        );
    }
}
