//! Graph JSON batching (`POST /v1.0/$batch`, "Combine multiple HTTP requests using JSON
//! batching", <https://learn.microsoft.com/graph/json-batching>): the documented request and
//! response shape, one status per request, the 20-request limit.

use serde_json::{Value, json};
use vmidentity_simulator::{FaultRule, SimConfig, WorldSeed};

const SP: &str = "00000000-0000-4000-8000-000000000001";
const G: &str = "99999999-0000-4000-8000-000000000001";

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1.0/$batch"))
        .bearer_auth("sim-graph-token")
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn batch_answers_each_request_on_its_own() {
    let yaml = format!(
        "principals:\n  - {{ id: {SP}, type: ServicePrincipal }}\ngroups:\n  - {{ id: {G}, displayName: g, members: [{SP}] }}\n"
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&yaml).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    sim.add_fault(
        FaultRule::throttle(7)
            .path_contains(&format!("/groups/{G}"))
            .times(1),
    );
    let (status, body) = post(
        &sim.base_url(),
        &json!({"requests": [
            {"id": "1", "method": "GET", "url": format!("/servicePrincipals/{SP}/memberOf")},
            {"id": "2", "method": "GET", "url": "/servicePrincipals/00000000-0000-4000-8000-0000000000ff/memberOf"},
            {"id": "3", "method": "GET", "url": format!("groups/{G}")},
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let rs = body["responses"].as_array().unwrap();
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0]["id"], "1");
    assert_eq!(rs[0]["status"], 200);
    assert_eq!(rs[0]["body"]["value"][0]["id"], G);
    assert_eq!(rs[1]["status"], 404);
    assert_eq!(rs[1]["body"]["error"]["code"], "Request_ResourceNotFound");
    assert_eq!(rs[2]["status"], 429);
    assert_eq!(rs[2]["headers"]["retry-after"], "7");
    let c = sim.counters();
    assert_eq!((c.graph_batches, c.graph_reads), (1, 3));
    // 21 requests: refused whole.
    let many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/servicePrincipals/{SP}/memberOf")}))
        .collect();
    let (status, body) = post(&sim.base_url(), &json!({"requests": many})).await;
    assert_eq!(status, 400, "{body}");
    // Duplicate ids: refused.
    let (status, _) = post(
        &sim.base_url(),
        &json!({"requests": [{"id": "1", "method": "GET", "url": "/groups/x"}, {"id": "1", "method": "GET", "url": "/groups/y"}]}),
    )
    .await;
    assert_eq!(status, 400);
}
