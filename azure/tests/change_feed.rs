//! The change feed client against armsim's `resourcechanges`: the controller's query names
//! identity changes, creations and deletions of VMs and scale sets since a watermark, paged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vmidentity_azure::{ArmClient, ClientConfig, StaticToken};
use vmidentity_planner::changefeed::{ChangeKind, FeedState, Next, RETENTION_MS};
use vmidentity_simulator::{ChangeFeedConfig, SimConfig, WorldSeed};

const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000f0";

fn vm(i: usize) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-f/providers/Microsoft.Compute/virtualMachines/vm-{i}"
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn the_feed_names_identity_changes_and_deletions_once_each() {
    let mut yaml = String::from("virtualMachines:\n");
    for i in 0..1500 {
        yaml.push_str(&format!(
            "  - id: {}\n    identity: {{ type: SystemAssigned }}\n",
            vm(i)
        ));
    }
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&yaml).unwrap(),
        change_feed: ChangeFeedConfig {
            duplicate_every: 3,
            ..ChangeFeedConfig::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let client = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new("sim-token")),
    )
    .unwrap();
    let mut feed = FeedState::new(Some(now_ms() - 1000), 60_000, RETENTION_MS);
    let Next::Query { since_ms } = feed.next(now_ms()) else {
        panic!("expected a query")
    };
    // 1,200 identity removals (more than a page), one deletion, and a tag-only change that
    // the query leaves out.
    for i in 0..1200 {
        sim.set_identity(&vm(i), json!({"type": "None"})).unwrap();
    }
    assert!(sim.delete_resource(&vm(1400)));
    // Duplicates are delivered a second after the first copy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let polled = now_ms();
    let (records, pages) = client
        .query_changes(&[SUB.to_string()], since_ms)
        .await
        .unwrap();
    assert_eq!(pages, 2, "1,601 rows: two pages of 1,000");
    assert_eq!(
        records.len(),
        1201 + 400,
        "every third record delivered twice"
    );
    assert!(records.iter().any(|r| r.kind == ChangeKind::Delete));
    let targets = feed.absorb(polled, &records, |_| true);
    assert_eq!(targets.len(), 1201, "each target once");
    // Nothing new: the next poll (overlapping) names nothing.
    let Next::Query { since_ms } = feed.next(now_ms()) else {
        panic!("expected a query")
    };
    let (again, _) = client
        .query_changes(&[SUB.to_string()], since_ms)
        .await
        .unwrap();
    assert!(feed.absorb(now_ms(), &again, |_| true).is_empty());
}
