//! The fleet resync judges grants in bulk: role assignments from Resource Graph's
//! `AuthorizationResources`, memberships from Graph `$batch`; a target whose grants agree is
//! not reconciled, one whose role assignment or membership was removed by someone else is.

use std::collections::BTreeMap;

use vmidentity::operator::fleet::scan_targets_with_grants;
use vmidentity_planner::DesiredObject;
use vmidentity_planner::model::{RawGroupMembership, RawRoleAssignment};
use vmidentity_tests::*;

const BLOB_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
const G1: &str = "0f6c5a1e-1111-4c7a-9e21-0d4b5a6c7e81";
const G2: &str = "0f6c5a1e-2222-4c7a-9e21-0d4b5a6c7e82";

fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/myResourceGroup")
}

fn objects() -> Vec<DesiredObject> {
    (0..3)
        .map(|i| {
            object(&format!("o{i}"), &vm(&format!("vm{i}")), |r| {
                r.user_assigned_identities = vec![uai("ID1")];
                r.system_assigned = Some(true);
                r.role_assignments = vec![
                    RawRoleAssignment {
                        identity: "SystemAssigned".into(),
                        role: "Reader".into(),
                        scope: rg(),
                    },
                    RawRoleAssignment {
                        identity: "SystemAssigned".into(),
                        role: BLOB_READER.into(),
                        scope: rg(),
                    },
                ];
                r.group_memberships = vec![
                    RawGroupMembership {
                        identity: "SystemAssigned".into(),
                        group_object_id: G1.into(),
                    },
                    RawGroupMembership {
                        identity: "SystemAssigned".into(),
                        group_object_id: G2.into(),
                    },
                ];
            })
        })
        .collect()
}

fn groups(objs: &[DesiredObject]) -> BTreeMap<String, Vec<DesiredObject>> {
    let mut g: BTreeMap<String, Vec<DesiredObject>> = BTreeMap::new();
    for o in objs {
        g.entry(o.spec.target.key().to_string())
            .or_default()
            .push(o.clone());
    }
    g
}

#[tokio::test]
async fn grants_that_agree_cost_two_bulk_reads_and_removed_ones_are_found() {
    let mut yaml = fleet_vms(3);
    yaml.push_str(&format!(
        "groups:\n  - id: {G1}\n    displayName: a\n  - id: {G2}\n    displayName: b\n"
    ));
    let h = Harness::new(&world(&yaml)).await;
    let (results, objs) = h.converge(&objects()).await;
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");
    h.sim.reset_counters();
    let (scan, pages, g) = scan_targets_with_grants(&h.exec, &groups(&objs))
        .await
        .unwrap();
    assert!(scan.to_reconcile().is_empty(), "{scan:?} {g:?}");
    assert_eq!(g.converged, 3);
    assert_eq!((pages, g.resource_graph_reads, g.graph_requests), (1, 1, 1));
    let c = h.sim.counters();
    assert_eq!(
        c.authorization_reads, 0,
        "no role assignment listing per principal"
    );
    assert_eq!(c.graph_batches, 1);

    // Someone removes vm1's Reader assignment, and vm2's principal from G2.
    let ra = objs[1].applied.role_assignments[0].id.clone();
    let name = ra.rsplit('/').next().unwrap().to_string();
    assert!(h.sim.delete_role_assignment(&name));
    let p2 = objs[2].applied.group_memberships[0].principal_id.clone();
    assert!(h.sim.remove_group_member(G2, &p2));
    let (scan, _, g) = scan_targets_with_grants(&h.exec, &groups(&objs))
        .await
        .unwrap();
    let keys = scan.to_reconcile();
    assert_eq!(g.converged, 1);
    assert_eq!(scan.to_reconcile().len(), 2, "{keys:?}");
    assert!(scan.with_grants.contains(objs[1].spec.target.key()));
    assert!(scan.with_grants.contains(objs[2].spec.target.key()));
}
