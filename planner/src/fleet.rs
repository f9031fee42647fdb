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

/// What one Resource Graph row says about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The row agrees with the objects.
    Converged,
    /// The row disagrees (or cannot be read): the target gets a GET.
    Drifted,
    /// The objects conflict: not drift, their objects are already Stalled.
    Refused,
}

/// Whether Resource Graph cannot tell if `group` is converged: role assignments and group
/// memberships are not in the identity block, so such targets are re-read at every scan.
pub fn has_grants(group: &[DesiredObject]) -> bool {
    group.iter().any(|o| {
        !o.spec.role_assignments.is_empty()
            || !o.spec.group_memberships.is_empty()
            || !o.applied.role_assignments.is_empty()
            || !o.applied.group_memberships.is_empty()
    })
}

/// Compares one row (`id` and its identity block as Resource Graph shows it) with the
/// objects on that target.
pub fn judge(group: &[DesiredObject], id: &str, identity: &Value) -> Verdict {
    let live = match LiveResource::from_arm_json(&json!({"id": id, "identity": identity})) {
        Ok(l) => l,
        Err(_) => return Verdict::Drifted,
    };
    match plan_target(group, &live) {
        Ok(p) if p.is_converged() && !group.iter().any(|o| o.deleting) => Verdict::Converged,
        Err(_) => Verdict::Refused,
        Ok(_) => Verdict::Drifted,
    }
}

impl Scan {
    /// Records a target's verdict (`key`: its case-folded ID).
    pub fn record(&mut self, key: &str, verdict: Verdict) {
        match verdict {
            Verdict::Converged => self.converged += 1,
            Verdict::Drifted => {
                self.drifted.insert(key.to_string());
            }
            Verdict::Refused => {}
        }
    }
}

/// Compares `rows` (`(id, identity block)` as Resource Graph returns them) with `groups`
/// (objects by case-folded target ID). A scan that reads page by page uses [`judge`],
/// [`has_grants`] and [`Scan::record`] instead, and holds no more than a page of rows.
pub fn scan(groups: &BTreeMap<String, Vec<DesiredObject>>, rows: &[(String, Value)]) -> Scan {
    let rows: BTreeMap<String, &(String, Value)> =
        rows.iter().map(|r| (r.0.to_ascii_lowercase(), r)).collect();
    let mut out = Scan::default();
    for (key, group) in groups {
        if has_grants(group) {
            out.with_grants.insert(key.clone());
        }
        match rows.get(key) {
            Some((id, identity)) => out.record(key, judge(group, id, identity)),
            None => {
                out.missing.insert(key.clone());
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
