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

/// The rules that refuse one entry of `userAssignedIdentities` name that entry (with
/// `messageExpression`), so the API server's answer is not only `Invalid value: "array"`.
/// (The roleAssignments/groupMemberships identity rules keep a fixed message: a
/// messageExpression that finds the entry costs more than the API server's CEL budget for
/// the schema allows; kube-apiserver 1.34 refuses the CRD.)
#[test]
fn list_rules_name_the_entry_they_refuse() {
    let dup = uai("u1").replace("resourceGroups", "resourcegroups");
    let o = object(|s| s.user_assigned_identities = vec![uai("u1"), uai("u2"), dup.clone()]);
    let msgs = broken(&o);
    assert!(
        msgs.iter().any(|m| m.starts_with(
            "userAssignedIdentities must not list the same identity twice (resource IDs are case-insensitive); listed more than once: "
        ) && (m.ends_with(&uai("u1")) || m.ends_with(&dup))),
        "{msgs:?}"
    );
    let vm2 = format!("{SUB}/resourceGroups/rg-a/providers/Microsoft.Compute/virtualMachines/vm2");
    let o = object(|s| s.user_assigned_identities = vec![uai("u1"), vm2.clone()]);
    let msgs = broken(&o);
    assert!(
        msgs.iter().any(|m| m
            .starts_with("each userAssignedIdentities entry must be a user-assigned identity ID")
            && m.ends_with(&format!("this one is not: {vm2}"))),
        "{msgs:?}"
    );
}

/// Every field `kubectl explain` shows, in both CRDs (`status.applied.*` included), has a
/// description that is whole sentences: it starts with a capital letter, a code span or its
/// own field name (the Kubernetes convention of `Condition`), ends with a full stop, and has
/// no line break inside a paragraph (which reads as a sentence cut off).
#[test]
fn every_field_of_both_crds_has_a_whole_sentence_description() {
    fn check(node: &serde_json::Value, path: &str, field: &str, bad: &mut Vec<String>) {
        if !field.is_empty() {
            match node.get("description").and_then(|d| d.as_str()) {
                None => bad.push(format!("{path}: no description")),
                Some(d) => {
                    let d = d.trim();
                    let starts_well = d.starts_with(|c: char| c.is_ascii_uppercase() || c == '`')
                        || d.starts_with(field);
                    let single_breaks = d.replace("\n\n", "").contains('\n');
                    if d.is_empty() || !starts_well || !d.ends_with('.') || single_breaks {
                        bad.push(format!("{path}: {d:?}"));
                    }
                }
            }
        }
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                check(v, &format!("{path}.{k}"), k, bad);
            }
        }
        if let Some(items) = node.get("items") {
            // An array's entries are explained by the array field's own description.
            if let Some(props) = items.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in props {
                    check(v, &format!("{path}[].{k}"), k, bad);
                }
            }
        }
        if let Some(props) = node
            .get("additionalProperties")
            .and_then(|a| a.get("properties"))
            .and_then(|p| p.as_object())
        {
            for (k, v) in props {
                check(v, &format!("{path}{{}}.{k}"), k, bad);
            }
        }
    }
    let mut bad = Vec::new();
    for (name, yaml) in [
        (
            "VirtualMachineIdentity",
            vmidentity::crd::crd_yaml().expect("crd"),
        ),
        (
            "VirtualMachineIdentityPolicy",
            vmidentity::crd::policy_crd_yaml().expect("crd"),
        ),
    ] {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let root = schema["description"].as_str().unwrap_or_default();
        if !root.ends_with('.') {
            bad.push(format!("{name}: {root:?}"));
        }
        for part in ["spec", "status"] {
            if let Some(node) = schema["properties"].get(part) {
                check(node, &format!("{name}.{part}"), part, &mut bad);
            }
        }
    }
    assert!(
        bad.is_empty(),
        "fields without a whole-sentence description:\n{}",
        bad.join("\n")
    );
}
