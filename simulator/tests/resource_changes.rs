//! Resource Graph's `resourcechanges` table: records made from the world's real mutations,
//! the documented row shape and query pattern ("Get resource changes",
//! <https://learn.microsoft.com/azure/governance/resource-graph/how-to/get-resource-changes>),
//! ingestion delay, out-of-order delivery, duplicates and retention.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::ChangeFeedConfig;

const ARG: &str = "/providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01";

/// The query of the page's "Resource changes" examples (`extend` of the change attributes,
/// a time window, newest first, projected columns).
const DOC_QUERY: &str = "resourcechanges | extend changeTime = todatetime(properties.changeAttributes.timestamp), targetResourceId = tostring(properties.targetResourceId), changeType = tostring(properties.changeType), correlationId = properties.changeAttributes.correlationId, changedProperties = properties.changes, changeCount = properties.changeAttributes.changesCount | where changeTime > ago(1d) | order by changeTime desc | project changeTime, targetResourceId, changeType, correlationId, changeCount, changedProperties";

async fn rows(c: &Client, q: &str) -> Vec<Value> {
    let r = c
        .send(
            "POST",
            ARG,
            Some(&json!({"subscriptions": [SUB], "query": q})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn in_band_and_out_of_band_writes_and_deletes_are_recorded_in_the_documented_shape() {
    let sim = sim().await;
    let c = Client::new(&sim);
    assert!(
        rows(&c, DOC_QUERY).await.is_empty(),
        "seeding is not a change"
    );
    // In band: a PATCH adding a user-assigned identity.
    let r = c
        .patch(&vm("vm-1"), V2018, json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("uai-1"): {}}}}))
        .await;
    assert!(r.status < 300, "{}", r.raw);
    // Out of band (admin API): another writer drops the identity block.
    sim.set_identity(&vm("vm-1"), json!({"type": "None"}))
        .unwrap();
    // A delete.
    assert!(sim.delete_resource(&vm("vm-2")));
    let data = rows(&c, DOC_QUERY).await;
    assert_eq!(data.len(), 3, "{data:#?}");
    // Newest first.
    assert_eq!(data[0]["changeType"], "Delete");
    assert_eq!(data[1]["changeType"], "Update");
    assert_eq!(data[2]["changeType"], "Update");
    assert!(
        data[0]["targetResourceId"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&vm("vm-2"))
    );
    let removed = &data[1]["changedProperties"]["identity.type"];
    assert_eq!(removed["previousValue"], "UserAssigned");
    assert_eq!(removed["newValue"], "null");
    assert_eq!(removed["propertyChangeType"], "Remove");
    assert!(data[1]["changeCount"].as_u64().unwrap() >= 1);
    assert!(data[1]["correlationId"].as_str().unwrap().len() == 36);
    let added = data[2]["changedProperties"].as_object().unwrap();
    assert!(
        added
            .keys()
            .any(|k| k.starts_with("identity.userAssignedIdentities.")),
        "{added:?}"
    );
    // The full row carries the change resource's own id and the properties bag.
    let full = rows(&c, "resourcechanges | order by id asc").await;
    assert_eq!(full.len(), 3);
    assert_eq!(full[0]["type"], "microsoft.resources/changes");
    assert!(
        full[0]["id"]
            .as_str()
            .unwrap()
            .contains("/providers/Microsoft.Resources/changes/")
    );
    for k in [
        "targetResourceId",
        "targetResourceType",
        "changeType",
        "changeAttributes",
        "changes",
    ] {
        assert!(full[0]["properties"].get(k).is_some(), "{k}");
    }
}

#[tokio::test]
async fn filters_by_time_type_and_identity_and_pages() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..3 {
        sim.set_identity(
            &vm("vm-1"),
            json!({"type": if i % 2 == 0 { "SystemAssigned" } else { "None" }}),
        )
        .unwrap();
    }
    let q = format!(
        "resourcechanges | extend changeTime = todatetime(properties.changeAttributes.timestamp), targetResourceType = tostring(properties.targetResourceType), changeType = tostring(properties.changeType), changedProperties = tostring(properties.changes) | where changeTime > datetime({since}) | where targetResourceType in~ ('microsoft.compute/virtualmachines', 'microsoft.compute/virtualmachinescalesets') | where changeType in ('Create', 'Delete') or changedProperties contains 'identity' | order by changeTime asc | project id, changeTime, changeType"
    );
    let r = c
        .send(
            "POST",
            ARG,
            Some(&json!({"subscriptions": [SUB], "query": q, "options": {"$top": 2}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["totalRecords"], 3);
    assert_eq!(r.body["count"], 2);
    let token = r.body["$skipToken"]
        .as_str()
        .expect("skip token")
        .to_string();
    let r2 = c
        .send(
            "POST",
            ARG,
            Some(&json!({"subscriptions": [SUB], "query": q, "options": {"$skipToken": token}})),
        )
        .await;
    assert_eq!(r2.body["count"], 1);
    // Before `since`: nothing; another subscription: nothing.
    let none = format!(
        "resourcechanges | where properties.changeAttributes.timestamp < datetime({since})"
    );
    assert!(rows(&c, &none).await.is_empty());
    let other = c
        .send(
            "POST",
            ARG,
            Some(&json!({"subscriptions": ["00000000-0000-0000-0000-0000000000ff"], "query": "resourcechanges"})),
        )
        .await;
    assert_eq!(other.body["count"], 0);
}

#[tokio::test]
async fn ingestion_delay_jitter_duplicates_and_retention() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.set_change_feed(ChangeFeedConfig {
        delay: Duration::from_millis(300),
        jitter: Duration::from_millis(200),
        duplicate_every: 2,
        ..ChangeFeedConfig::default()
    });
    for i in 0..4 {
        sim.set_identity(
            &vm("vm-1"),
            json!({"type": if i % 2 == 0 { "SystemAssigned" } else { "None" }}),
        )
        .unwrap();
    }
    assert!(
        rows(&c, "resourcechanges").await.is_empty(),
        "not ingested yet"
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let all = rows(&c, "resourcechanges").await;
    assert_eq!(all.len(), 6, "every second record twice");
    let mut ids: Vec<&str> = all.iter().filter_map(|r| r["name"].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "duplicates carry the same change id");
    // Retention: 15 days later the records are gone.
    sim.advance_clock(Duration::from_secs(15 * 24 * 3600));
    assert!(rows(&c, "resourcechanges").await.is_empty());
}
