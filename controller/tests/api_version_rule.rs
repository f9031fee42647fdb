//! `spec.armApiVersion` is admitted only when Microsoft.Compute publishes it: the CRD's CEL
//! rule (evaluated here client-side with kube's CEL validator against the generated
//! schema) and the planner (`plan` / `apply` / the controller) use the same list,
//! `vmidentity_planner::arm_versions::COMPUTE`, and the same message.

use kube::core::cel::validate_cel;
use vmidentity::crd::{VirtualMachineIdentity, VirtualMachineIdentitySpec};
use vmidentity_planner::arm_versions::{COMPUTE, compute_message};
use vmidentity_planner::{ApiVersion, RawSpec};

const VM: &str = "/subscriptions/0a1b2c3d-0000-4000-8000-0000000000a1/resourceGroups/rg-a/providers/Microsoft.Compute/virtualMachines/vm1";

fn object(version: Option<&str>) -> VirtualMachineIdentity {
    VirtualMachineIdentity::new(
        "o",
        VirtualMachineIdentitySpec {
            target: VM.into(),
            arm_api_version: version.map(str::to_string),
            mode: None,
            system_assigned: Some(true),
            user_assigned_identities: Vec::new(),
            role_assignments: Vec::new(),
            group_memberships: Vec::new(),
            deletion_policy: None,
        },
    )
}

fn broken(o: &VirtualMachineIdentity) -> Vec<String> {
    match validate_cel(o) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn planner_accepts(v: &str) -> bool {
    RawSpec {
        target: VM.into(),
        arm_api_version: Some(v.into()),
        ..RawSpec::default()
    }
    .validate()
    .is_ok()
}

#[test]
fn published_versions_pass_admission_and_the_planner() {
    assert!(broken(&object(None)).is_empty());
    for v in COMPUTE {
        assert_eq!(broken(&object(Some(v))), Vec::<String>::new(), "{v}");
        assert!(planner_accepts(v), "{v}");
    }
    assert!(COMPUTE.contains(&"2025-04-01"));
}

#[test]
fn unpublished_versions_are_refused_with_the_list() {
    for v in [
        "2025-04-02",
        "2024-11-01-preview",
        "2016-04-30-preview",
        "2099-12-31",
    ] {
        assert_eq!(broken(&object(Some(v))), vec![compute_message()], "{v}");
        assert!(!planner_accepts(v), "{v}");
    }
    let err = ApiVersion::parse("2025-04-02").unwrap_err().to_string();
    assert!(err.contains(&COMPUTE.join(", ")), "{err}");
}
