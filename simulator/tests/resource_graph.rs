//! Azure Resource Graph: the controller's identity query, paging, quota, lag, errors.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::SimConfig;

const ARG: &str = "/providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01";
const Q: &str = "Resources | where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets' | project id, type, identity | order by id asc";

fn req(query: &str, options: Value) -> Value {
    json!({"subscriptions": [SUB], "query": query, "options": options})
}

#[tokio::test]
async fn identity_query_shape_and_paging() {
    let sim = sim().await;
    let c = Client::new(&sim);
    c.patch(
        &vm("vm-1"),
        V2018,
        json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai("uai-1"): {}}}}),
    )
    .await;
    let r = c.send("POST", ARG, Some(&req(Q, json!({})))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["totalRecords"], json!(3));
    assert_eq!(r.body["count"], json!(3));
    assert_eq!(r.body["resultTruncated"], json!("false"));
    assert_eq!(r.body["facets"], json!([]));
    assert!(r.body.get("$skipToken").is_none());
    let data = r.body["data"].as_array().expect("data");
    let ids: Vec<&str> = data.iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(
        ids,
        vec![
            vm("vm-1").as_str(),
            vm("vm-2").as_str(),
            vmss("vmss-1").as_str()
        ]
    );
    assert_eq!(data[0]["type"], json!("microsoft.compute/virtualmachines"));
    assert_eq!(data[0].as_object().map(|m| m.len()), Some(3));
    // The identity block is the one GET shows.
    assert_eq!(
        Some(data[0]["identity"].clone()),
        sim.identity_of(&vm("vm-1"))
    );
    assert_eq!(data[1]["identity"], Value::Null);
    assert_eq!(r.header("x-ms-user-quota-remaining").as_deref(), Some("14"));
    assert!(
        r.header("x-ms-user-quota-resets-after")
            .is_some_and(|v| v.starts_with("00:00:0"))
    );

    // $top 2 → $skipToken → second page.
    let p1 = c.send("POST", ARG, Some(&req(Q, json!({"$top": 2})))).await;
    assert_eq!(p1.body["count"], json!(2));
    assert_eq!(p1.body["totalRecords"], json!(3));
    let tok = p1.body["$skipToken"]
        .as_str()
        .expect("skip token")
        .to_string();
    let p2 = c
        .send(
            "POST",
            ARG,
            Some(&req(Q, json!({"$top": 2, "$skipToken": tok}))),
        )
        .await;
    assert_eq!(p2.body["count"], json!(1));
    assert_eq!(p2.body["data"][0]["id"], json!(vmss("vmss-1")));
    assert!(p2.body.get("$skipToken").is_none());

    // Without id no token: truncated.
    let r = c
        .send(
            "POST",
            ARG,
            Some(&req("Resources | project name", json!({"$top": 1}))),
        )
        .await;
    assert_eq!(r.body["resultTruncated"], json!("true"));
    assert!(r.body.get("$skipToken").is_none());

    // Subscription filter in the query and in the scope.
    let other =
        "Resources | where subscriptionId in ('00000000-0000-0000-0000-00000000ffff') | project id";
    let r = c.send("POST", ARG, Some(&req(other, json!({})))).await;
    assert_eq!(r.body["totalRecords"], json!(0));
    let r = c
        .send(
            "POST",
            ARG,
            Some(&json!({"subscriptions": ["00000000-0000-0000-0000-00000000ffff"], "query": Q})),
        )
        .await;
    // No subscription of the request can hold resources: 400 (observed, Azure/aztfexport#491).
    assert_eq!(r.status, 400, "{}", r.raw);
    assert_eq!(
        r.body["error"]["details"][0]["code"],
        json!("NoValidSubscriptionsInQueryRequest")
    );

    // table format.
    let r = c
        .send("POST", ARG, Some(&req(Q, json!({"resultFormat": "table"}))))
        .await;
    assert_eq!(
        r.body["data"]["columns"][0],
        json!({"name": "id", "type": "string"})
    );
    assert_eq!(r.body["data"]["rows"].as_array().map(Vec::len), Some(3));
    assert_eq!(sim.counters().resource_graph_queries, 7);
}

#[tokio::test]
async fn unsupported_queries_and_options() {
    let sim = sim().await;
    let c = Client::new(&sim);
    for q in [
        "Resources | summarize count() by type",
        "ResourceContainers | project id",
        "Resources | project id, properties.hardwareProfile",
    ] {
        let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.body["error"]["code"], json!("BadRequest"));
        assert_eq!(r.body["error"]["details"][0]["code"], json!("InvalidQuery"));
    }
    let r = c
        .send("POST", ARG, Some(&req(Q, json!({"$top": 1001}))))
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .send(
            "POST",
            "/providers/Microsoft.ResourceGraph/resources",
            Some(&req(Q, json!({}))),
        )
        .await;
    assert_eq!(r.body["error"]["code"], json!("MissingApiVersionParameter"));
}

#[tokio::test]
async fn quota_429_and_reset() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        resource_graph_quota: 2,
        resource_graph_quota_window: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let r1 = c.send("POST", ARG, Some(&req(Q, json!({})))).await;
    assert_eq!(r1.header("x-ms-user-quota-remaining").as_deref(), Some("1"));
    let r2 = c.send("POST", ARG, Some(&req(Q, json!({})))).await;
    assert_eq!(r2.header("x-ms-user-quota-remaining").as_deref(), Some("0"));
    let r3 = c.send("POST", ARG, Some(&req(Q, json!({})))).await;
    assert_eq!(r3.status, 429);
    assert_eq!(r3.header("retry-after").as_deref(), Some("1"));
    assert_eq!(r3.header("x-ms-user-quota-remaining").as_deref(), Some("0"));
    assert_eq!(r3.body["error"]["code"], json!("RateLimiting"));
    let k = sim.counters();
    assert_eq!((k.resource_graph_throttled, k.throttled), (1, 1));
    assert_eq!(sim.resource_graph_quota_remaining(TOKEN), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r4 = c.send("POST", ARG, Some(&req(Q, json!({})))).await;
    assert_eq!(r4.status, 200);
    // Run-time change.
    sim.set_resource_graph_quota(100, Duration::from_secs(5));
    let r5 = c.send("POST", ARG, Some(&req(Q, json!({})))).await;
    assert_eq!(
        r5.header("x-ms-user-quota-remaining").as_deref(),
        Some("99")
    );
}

#[tokio::test]
async fn lag_shows_stale_rows() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.set_resource_graph_lag(Duration::from_millis(400));
    c.patch(
        &vm("vm-2"),
        V2018,
        json!({"identity": {"type": "SystemAssigned"}}),
    )
    .await;
    assert!(sim.delete_resource(&vmss("vmss-1")));
    let q = "Resources | project id, identity | order by id asc";
    let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
    // Still the seeded world: vm-2 without identity, vmss-1 present.
    assert_eq!(r.body["totalRecords"], json!(3), "{}", r.raw);
    assert_eq!(r.body["data"][1]["identity"], Value::Null);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
    assert_eq!(r.body["totalRecords"], json!(2));
    assert_eq!(
        r.body["data"][1]["identity"]["type"],
        json!("SystemAssigned")
    );
    // Lag 0 = live.
    sim.set_resource_graph_lag(Duration::ZERO);
    c.patch(&vm("vm-2"), V2018, json!({"identity": {"type": "None"}}))
        .await;
    let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
    assert_eq!(r.body["data"][1]["identity"], Value::Null);
}
