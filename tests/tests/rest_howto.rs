//! The REST how-to, step by step ("Configure managed identities on Azure virtual machines
//! (VMs)", REST tab,
//! <https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-configure-managed-identities?pivots=qs-configure-rest-vm>,
//! and its scale-set counterpart,
//! <https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-configure-managed-identities-scale-sets?pivots=qs-configure-rest-vmss>;
//! the PATCH bodies are written out below), through the real client and the ARM simulator:
//! for each example, the exact request
//! body the simulator received and the identity the resource ends up with. Both api-versions,
//! VM and VMSS.

use serde_json::{Value, json};
use vmidentity_planner::RawSpec;
use vmidentity_tests::*;

struct Case {
    name: &'static str,
    /// Seed identity of the target (YAML), or "" for none.
    seed: &'static str,
    spec: fn(&mut RawSpec),
    /// What the object already applied (its status.applied).
    owned: &'static [&'static str],
    /// Expected PATCH body at 2018-06-01 and at 2017-12-01.
    dict: fn() -> Value,
    array: fn() -> Value,
    /// Final (type, UAI names).
    after: (&'static str, &'static [&'static str]),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "enable system-assigned",
            seed: "",
            spec: |r| r.system_assigned = Some(true),
            owned: &[],
            dict: || json!({"identity": {"type": "SystemAssigned"}}),
            array: || json!({"identity": {"type": "SystemAssigned"}}),
            after: ("SystemAssigned", &[]),
        },
        Case {
            name: "assign a first user-assigned identity",
            seed: "",
            spec: |r| r.user_assigned_identities = vec![uai("ID1")],
            owned: &[],
            dict: || json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("ID1"): {}}}}),
            array: || json!({"identity": {"type": "UserAssigned", "identityIds": [uai("ID1")]}}),
            after: ("UserAssigned", &["id1"]),
        },
        Case {
            name: "add a second identity keeping system and the first",
            seed: "type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [ID1]",
            spec: |r| r.user_assigned_identities = vec![uai("ID2")],
            owned: &[],
            dict: || json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("ID2"): {}}}}),
            array: || json!({"identity": {"type": "SystemAssigned, UserAssigned", "identityIds": [uai("ID1"), uai("ID2")]}}),
            after: ("SystemAssigned, UserAssigned", &["id1", "id2"]),
        },
        Case {
            name: "remove one of two",
            seed: "type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [ID1, ID2]",
            spec: |r| r.user_assigned_identities = vec![uai("ID1")],
            owned: &["ID1", "ID2"],
            dict: || json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("ID2"): null}}}),
            array: || json!({"identity": {"type": "SystemAssigned, UserAssigned", "identityIds": [uai("ID1")]}}),
            after: ("SystemAssigned, UserAssigned", &["id1"]),
        },
        Case {
            name: "remove the last user-assigned identity, keeping system",
            seed: "type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [ID1]",
            spec: |_| {},
            owned: &["ID1"],
            dict: || json!({"identity": {"type": "SystemAssigned"}}),
            array: || json!({"identity": {"type": "SystemAssigned"}}),
            after: ("SystemAssigned", &[]),
        },
        Case {
            name: "remove all identities",
            seed: "type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [ID1, ID2]",
            spec: |r| r.system_assigned = Some(false),
            owned: &["ID1", "ID2"],
            dict: || json!({"identity": {"type": "None"}}),
            array: || json!({"identity": {"type": "None"}}),
            after: ("None", &[]),
        },
        Case {
            name: "disable system-assigned, keeping the user-assigned",
            seed: "type: SystemAssigned, UserAssigned\n      userAssignedIdentities: [ID1]",
            spec: |r| r.system_assigned = Some(false),
            owned: &[],
            dict: || json!({"identity": {"type": "UserAssigned"}}),
            array: || json!({"identity": {"type": "UserAssigned", "identityIds": [uai("ID1")]}}),
            after: ("UserAssigned", &["id1"]),
        },
    ]
}

fn seed_yaml(kind: &str, target: &str, seed: &str) -> String {
    let seed = seed
        .replace("[ID1, ID2]", &format!("[{}, {}]", uai("ID1"), uai("ID2")))
        .replace("[ID1]", &format!("[{}]", uai("ID1")));
    let identity = if seed.is_empty() {
        String::new()
    } else {
        format!("    identity:\n      {seed}\n")
    };
    format!("{kind}:\n  - id: {target}\n{identity}")
}

async fn run(kind: &str, target: &str, api: &str) {
    for case in cases() {
        let h = Harness::new(&world(&seed_yaml(kind, target, case.seed))).await;
        let principal_before = h
            .sim
            .identity_of(target)
            .and_then(|i| i.get("principalId").cloned());
        let owned_ids: Vec<String> = case.owned.iter().map(|n| uai(n)).collect();
        let obj = object("o", target, |r| {
            r.arm_api_version = Some(api.to_string());
            (case.spec)(r);
        })
        .with_applied(owned(&owned_ids));
        let (results, next) = h.converge(std::slice::from_ref(&obj)).await;
        assert!(
            results[0].error.is_none(),
            "{}: {:?}",
            case.name,
            results[0].error
        );
        let want = if api == "2017-12-01" {
            (case.array)()
        } else {
            (case.dict)()
        };
        assert_eq!(h.patch_bodies(), vec![want], "{kind} {api}: {}", case.name);
        let (ty, names) = h.identity(target);
        assert_eq!(ty, case.after.0, "{kind} {api}: {}", case.name);
        assert_eq!(names, case.after.1, "{kind} {api}: {}", case.name);
        // A system identity that stays keeps its principal; a new one gets one.
        let principal_after = h
            .sim
            .identity_of(target)
            .and_then(|i| i.get("principalId").cloned());
        if ty.starts_with("SystemAssigned") {
            assert!(principal_after.is_some(), "{}", case.name);
            if principal_before.is_some() {
                assert_eq!(principal_after, principal_before, "{}", case.name);
            }
        }
        // Converged: a second pass sends nothing.
        h.sim.clear_requests();
        let again = h.apply(&next).await;
        assert!(
            again.iter().all(|r| r.error.is_none() && r.writes() == 0),
            "{}",
            case.name
        );
        assert!(
            h.patch_bodies().is_empty(),
            "{kind} {api}: {} wrote again",
            case.name
        );
        h.sim.shutdown().await;
    }
}

#[tokio::test]
async fn vm_2018_06_01() {
    run("virtualMachines", &vm("myVM"), "2018-06-01").await;
}

#[tokio::test]
async fn vm_2017_12_01() {
    run("virtualMachines", &vm("myVM"), "2017-12-01").await;
}

#[tokio::test]
async fn vmss_2018_06_01() {
    run("virtualMachineScaleSets", &vmss("myVMSS"), "2018-06-01").await;
}

#[tokio::test]
async fn vmss_2017_12_01() {
    run("virtualMachineScaleSets", &vmss("myVMSS"), "2017-12-01").await;
}

#[tokio::test]
async fn later_api_versions_behave_as_2018_06_01() {
    run("virtualMachines", &vm("myVM"), "2024-11-01").await;
}
