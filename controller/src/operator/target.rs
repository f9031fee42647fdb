//! The work queue is keyed by target: every event on an object is turned into a trigger for
//! the target's *representative* (the first object on that target, by namespace/name), so
//! kube-runtime's scheduler deduplicates and serialises work per VM/VMSS.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::crd::VirtualMachineIdentity;

/// The key of an object's target: its case-folded `spec.target`.
pub fn target_key(o: &VirtualMachineIdentity) -> String {
    o.spec.target.trim().to_ascii_lowercase()
}

fn order_key(o: &VirtualMachineIdentity) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Whether `o` is on the target `key` (a [`target_key`]). Called for every cached object on
/// every reconcile, so it allocates nothing and compares from the end, where the IDs of a
/// fleet differ (they share their subscription and resource group prefix).
pub fn is_on(o: &VirtualMachineIdentity, key: &str) -> bool {
    let t = o.spec.target.trim().as_bytes();
    t.len() == key.len()
        && t.iter()
            .rev()
            .zip(key.as_bytes().iter().rev())
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// All cached objects on a target, sorted by namespace/name.
pub fn objects_on(
    store: &Store<VirtualMachineIdentity>,
    key: &str,
) -> Vec<Arc<VirtualMachineIdentity>> {
    let mut objs = store.state_filter(|o| is_on(o, key));
    objs.sort_by_key(|o| order_key(o));
    objs
}

/// Picks the representative among the objects of one target.
pub fn representative(objs: &[Arc<VirtualMachineIdentity>]) -> Option<Arc<VirtualMachineIdentity>> {
    objs.iter().min_by_key(|o| order_key(o)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VirtualMachineIdentitySpec;

    fn obj(ns: &str, name: &str, target: &str) -> Arc<VirtualMachineIdentity> {
        let mut o = VirtualMachineIdentity::new(
            name,
            VirtualMachineIdentitySpec {
                target: target.into(),
                arm_api_version: None,
                mode: None,
                system_assigned: None,
                user_assigned_identities: vec![],
                role_assignments: vec![],
                group_memberships: vec![],
                deletion_policy: None,
            },
        );
        o.metadata.namespace = Some(ns.into());
        Arc::new(o)
    }

    #[test]
    fn representative_is_stable_and_case_insensitive() {
        let a = obj(
            "b-ns",
            "x",
            "/subscriptions/S/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/VM",
        );
        let b = obj(
            "a-ns",
            "y",
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm",
        );
        assert_eq!(target_key(&a), target_key(&b));
        assert!(is_on(&a, &target_key(&b)) && is_on(&b, &target_key(&a)));
        let other = obj(
            "a-ns",
            "z",
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm2",
        );
        assert!(!is_on(&other, &target_key(&a)) && !is_on(&a, &target_key(&other)));
        let padded = obj(
            "a-ns",
            "p",
            " /subscriptions/S/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/VM ",
        );
        assert!(is_on(&padded, &target_key(&a)));
        let r = representative(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(r.name_any(), "y");
        assert_eq!(representative(&[b, a]).unwrap().name_any(), "y");
    }
}
