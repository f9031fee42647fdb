#![allow(dead_code)]
//! Builders shared by the planner's tests and, through `#[path]`, the scenario tests' harness
//! (`tests/src/lib.rs`).

use serde_json::{Value, json};
use vmidentity_planner::*;

pub const SUB: &str = "00000000-0000-0000-0000-000000000001";

pub fn vm(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

pub fn vmss(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )
}

pub fn uai(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

pub fn obj(name: &str, target: &str, f: impl FnOnce(&mut RawSpec)) -> DesiredObject {
    let mut raw = RawSpec {
        target: target.to_string(),
        ..Default::default()
    };
    f(&mut raw);
    DesiredObject::new(
        ObjectRef::new("default", name),
        raw.validate().expect("valid spec"),
    )
}

pub fn live(target: &str, identity: Value) -> LiveResource {
    LiveResource::from_arm_json(&json!({"id": target, "identity": identity})).expect("live body")
}

pub fn applied(ids: &[String]) -> Applied {
    Applied {
        user_assigned_identities: ids.to_vec(),
        ..Applied::default()
    }
}
