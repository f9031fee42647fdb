//! Bulk drift detection: compare Resource Graph rows (every VM/VMSS identity block of a
//! subscription, a thousand per page) with what the objects want, and name only the targets
//! that need a closer look. A row never leads to a write by itself: Resource Graph lags
//! behind ARM, so a drifted target is re-read with a GET before anything is planned.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::live::LiveResource;
use crate::model::DesiredObject;
use crate::plan::plan_target;

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Targets (case-folded IDs) whose row disagrees with the objects.
    pub drifted: BTreeSet<String>,
    /// Targets with no row (deleted, or too new for Resource Graph).
    pub missing: BTreeSet<String>,
    /// Targets whose grants (role assignments, group memberships) Resource Graph cannot show:
    /// they are re-read at every scan.
    pub with_grants: BTreeSet<String>,
    /// Targets that agree.
    pub converged: usize,
}

impl Scan {
    /// Every target that needs a reconcile.
    pub fn to_reconcile(&self) -> BTreeSet<String> {
        self.drifted
            .iter()
            .chain(&self.missing)
            .chain(&self.with_grants)
            .cloned()
            .collect()
    }
}

/// Compares `rows` (`(id, identity block)` as Resource Graph returns them) with `groups`
/// (objects by case-folded target ID).
pub fn scan(groups: &BTreeMap<String, Vec<DesiredObject>>, rows: &[(String, Value)]) -> Scan {
    let rows: BTreeMap<String, &(String, Value)> =
        rows.iter().map(|r| (r.0.to_ascii_lowercase(), r)).collect();
    let mut out = Scan::default();
    for (key, group) in groups {
        let has_grants = group.iter().any(|o| {
            !o.spec.role_assignments.is_empty()
                || !o.spec.group_memberships.is_empty()
                || !o.applied.role_assignments.is_empty()
                || !o.applied.group_memberships.is_empty()
        });
        if has_grants {
            out.with_grants.insert(key.clone());
        }
        let Some((id, identity)) = rows.get(key).map(|r| (&r.0, &r.1)) else {
            out.missing.insert(key.clone());
            continue;
        };
        let live = match LiveResource::from_arm_json(&json!({"id": id, "identity": identity})) {
            Ok(l) => l,
            Err(_) => {
                out.drifted.insert(key.clone());
                continue;
            }
        };
        match plan_target(group, &live) {
            Ok(p) if p.is_converged() && !group.iter().any(|o| o.deleting) => out.converged += 1,
            // A refused plan (a conflict) is not drift: its objects are already Stalled.
            Err(_) => {}
            Ok(_) => {
                out.drifted.insert(key.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectRef, RawSpec};

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm";
    const U1: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";

    fn groups(n: usize) -> BTreeMap<String, Vec<DesiredObject>> {
        (0..n)
            .map(|i| {
                let raw = RawSpec {
                    target: format!("{VM}{i}"),
                    user_assigned_identities: vec![U1.into()],
                    ..Default::default()
                };
                let o = DesiredObject::new(
                    ObjectRef::new("ns", format!("o{i}")),
                    raw.validate().unwrap(),
                );
                (format!("{VM}{i}").to_ascii_lowercase(), vec![o])
            })
            .collect()
    }

    #[test]
    fn only_drifted_and_missing_targets_are_named() {
        let g = groups(4);
        let ok = json!({"type": "UserAssigned", "userAssignedIdentities": {U1.to_lowercase(): {"principalId": "p", "clientId": "c"}}});
        let rows = vec![
            (format!("{VM}0"), ok.clone()),
            (
                format!("{VM}1")
                    .to_uppercase()
                    .replace("/SUBSCRIPTIONS/", "/subscriptions/"),
                ok,
            ),
            (format!("{VM}2"), Value::Null),
        ];
        let s = scan(&g, &rows);
        assert_eq!(s.converged, 2);
        assert_eq!(s.drifted.len(), 1);
        assert!(s.drifted.iter().next().unwrap().ends_with("vm2"));
        assert!(s.missing.iter().next().unwrap().ends_with("vm3"));
        assert_eq!(s.to_reconcile().len(), 2);
    }
}
