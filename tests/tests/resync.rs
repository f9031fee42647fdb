//! The Resource Graph resync against a Resource Graph that lags behind ARM (by seconds to
//! minutes in real fleets): a change the controller made recently shows in a GET but not yet
//! in Resource Graph. The stale rows may make the scan name targets, but those are only
//! re-read (GET) and found converged: nothing is "repaired" from a stale row.
//!
//! The scan is the controller's own (`operator::fleet::scan_targets`, which `scan_once`
//! runs); the triggered reconciles go through the engine (`engine::apply`: GET, plan,
//! `write_target`), the same read-plan-write path `reconcile_target` takes.

use std::collections::BTreeSet;
use std::time::Duration;

use vmidentity::operator::fleet::scan_targets;
use vmidentity_planner::{DesiredObject, group_by_target};
use vmidentity_tests::*;

/// vm0..vm3 (vm0 and vm2 with a system identity and an unowned ID3) and vmss0.
fn fleet() -> String {
    let mut s = fleet_vms(4);
    s.push_str(&format!(
        "virtualMachineScaleSets:\n  - id: {}\n",
        vmss("vmss0")
    ));
    world(&s)
}

fn targets() -> Vec<String> {
    let mut t: Vec<String> = (0..4).map(|i| vm(&format!("vm{i}"))).collect();
    t.push(vmss("vmss0"));
    t
}

/// Every target wants ID1; vm1 also a system identity (the converge creates its principal).
fn objects() -> Vec<DesiredObject> {
    targets()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            object(&format!("o{i}"), t, |r| {
                r.user_assigned_identities = vec![uai("ID1")];
                if i == 1 {
                    r.system_assigned = Some(true);
                }
            })
        })
        .collect()
}

/// `(identity as GET shows it, system principal history)` of every target.
/// The objects whose target a resync scan asked to reconcile.
fn triggered(objs: &[DesiredObject], keys: &BTreeSet<String>) -> Vec<DesiredObject> {
    objs.iter()
        .filter(|o| keys.contains(o.spec.target.key()))
        .cloned()
        .collect()
}

fn snapshot(h: &Harness) -> Vec<(serde_json::Value, Vec<String>)> {
    targets()
        .iter()
        .map(|t| {
            (
                h.sim.identity_of(t).expect("target exists"),
                h.sim.system_principal_history(t),
            )
        })
        .collect()
}

#[tokio::test]
async fn stale_resource_graph_rows_trigger_gets_only() {
    let h = Harness::new(&fleet()).await;
    let (results, objs) = h.converge(&objects()).await;
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");
    assert!(results.iter().all(|r| r.writes() == 1));
    let converged = snapshot(&h);

    // Resource Graph is a minute behind: it still shows every target as seeded.
    h.sim.set_resource_graph_lag(Duration::from_secs(60));
    h.sim.reset_counters();
    let groups = group_by_target(objs.clone());
    let (scan, pages) = scan_targets(h.exec.client(), &groups)
        .await
        .expect("Resource Graph query");
    assert_eq!(pages, 1);
    // The stale rows disagree with the objects (otherwise this test would test nothing).
    assert_eq!(scan.drifted.len(), targets().len(), "{scan:?}");
    assert!(scan.missing.is_empty());
    let keys = scan.to_reconcile();
    let results = h.apply(&triggered(&objs, &keys)).await;
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.writes() == 0 && r.plan.as_ref().is_some_and(|p| p.is_converged())),
        "confirmed by a GET: nothing to write"
    );

    // One GET per triggered target, and not a single PATCH / PUT / DELETE anywhere.
    let c = h.sim.counters();
    assert_eq!(c.resource_graph_queries, 1);
    assert_eq!(c.reads, targets().len() as u64);
    assert_eq!(c.writes, 0);
    assert_eq!(c.authorization_writes, 0);
    assert_eq!(c.graph_writes, 0);
    let methods: Vec<String> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "POST")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(methods.is_empty(), "{methods:?}");
    for t in targets() {
        assert_eq!(h.sim.reads_for(&t), 1, "{t}");
    }
    assert_eq!(snapshot(&h), converged, "still converged, same principals");

    // Once Resource Graph catches up, the scan finds nothing to do.
    h.sim.set_resource_graph_lag(Duration::ZERO);
    let (scan, _) = scan_targets(h.exec.client(), &groups)
        .await
        .expect("Resource Graph query");
    assert_eq!(scan.converged, targets().len(), "{scan:?}");
    assert!(scan.to_reconcile().is_empty());
}

#[tokio::test]
async fn rows_showing_our_previous_change_trigger_gets_only() {
    let h = Harness::new(&fleet()).await;
    let (_, objs) = h.converge(&objects()).await;
    let first_done = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The objects change: o0 swaps ID1 for ID2, o1 gives up its system identity.
    let changed: Vec<DesiredObject> = objs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut o = o.clone();
            match i {
                0 => {
                    o.spec.user_assigned =
                        vec![vmidentity_planner::ArmId::parse_uai(&uai("ID2")).expect("id")]
                }
                1 => o.spec.system_assigned = Some(false),
                _ => {}
            }
            o
        })
        .collect();
    let second_start = std::time::Instant::now();
    let (results, objs) = h.converge(&changed).await;
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");
    assert_eq!(results.iter().map(|r| r.writes()).sum::<usize>(), 2);
    let converged = snapshot(&h);
    // Resource Graph shows the first change but not the second: halfway between them.
    let gap = second_start - first_done;
    h.sim
        .set_resource_graph_lag(second_start.elapsed() + gap / 2);
    h.sim.reset_counters();
    let groups = group_by_target(objs.clone());
    let (scan, _) = scan_targets(h.exec.client(), &groups)
        .await
        .expect("Resource Graph query");
    let keys = scan.to_reconcile();
    let expected: BTreeSet<String> = [vm("vm0"), vm("vm1")]
        .iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    assert_eq!(keys, expected, "the rows still show the first change");
    let results = h.apply(&triggered(&objs, &keys)).await;
    assert!(
        results.iter().all(|r| r.error.is_none() && r.writes() == 0),
        "{results:?}"
    );
    let c = h.sim.counters();
    assert_eq!((c.reads, c.writes), (2, 0));
    assert_eq!(snapshot(&h), converged);
}
