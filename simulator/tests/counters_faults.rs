//! Counters, request log, fault injection, admin API, rate-limit headers, case-insensitive paths.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{FaultAction, FaultRule};

#[tokio::test]
async fn counters_per_resource_any_spelling() {
    let sim = sim().await;
    let c = Client::new(&sim);
    c.get(&vm("vm-1"), V2018).await;
    c.get(&vm("vm-1").to_uppercase(), V2018).await;
    c.patch(&vm("vm-1"), V2018, json!({"tags":{"a":"b"}})).await;
    c.get(&vmss("vmss-1"), V2018).await;
    c.get(&vm("missing"), V2018).await; // 404s count too

    assert_eq!(sim.reads_for(&vm("vm-1")), 2);
    assert_eq!(sim.reads_for(&vm("vm-1").to_lowercase()), 2);
    assert_eq!(sim.writes_for(&vm("vm-1")), 1);
    assert_eq!(sim.reads_for(&vmss("vmss-1")), 1);
    assert_eq!(sim.writes_for(&vmss("vmss-1")), 0);
    assert_eq!(sim.reads_for(&vm("missing")), 1);
    let k = sim.counters();
    assert_eq!(
        (k.reads, k.writes, k.polls, k.throttled, k.server_errors),
        (4, 1, 0, 0, 0)
    );

    // The log keeps the exact body sent and the status.
    let log = sim.requests();
    assert_eq!(log.len(), 5);
    let patch = &log[2];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.path, vm("vm-1"));
    assert_eq!(patch.query.as_deref(), Some("api-version=2018-06-01"));
    assert_eq!(patch.body, Some(json!({"tags":{"a":"b"}})));
    assert_eq!(patch.status, 200);
    assert_eq!(
        patch.resource_id.as_deref(),
        Some(vm("vm-1").to_lowercase().as_str())
    );
    assert_eq!(log[4].status, 404);
    assert_eq!(log[0].body, None);

    sim.reset_counters();
    assert_eq!(sim.counters(), Default::default());
    assert!(sim.requests().is_empty());
    assert_eq!(sim.reads_for(&vm("vm-1")), 0);
}

#[tokio::test]
async fn throttle_fault_with_retry_after_and_times() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.add_fault(
        FaultRule::throttle(7)
            .method("patch")
            .path_contains("VM-1")
            .times(1),
    );
    let body = json!({"identity":{"type":"SystemAssigned"}});
    let r = c.patch(&vm("vm-1"), V2018, body.clone()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("7"));
    assert_eq!(r.body["error"]["code"], "OperationNotAllowed");
    assert_eq!(
        r.body["error"]["message"],
        "The server rejected the request because too many requests have been received for this subscription."
    );
    assert_eq!(r.body["error"]["details"][0]["code"], "TooManyRequests");
    assert_eq!(r.body["error"]["details"][0]["target"], "PutVM3Min");
    let detail: Value = serde_json::from_str(
        r.body["error"]["details"][0]["message"]
            .as_str()
            .expect("message"),
    )
    .expect("detail JSON");
    assert_eq!(detail["operationGroup"], "PutVM3Min");
    assert_eq!(
        r.body["error"]["innererror"],
        json!({"internalErrorCode":"TooManyRequestsReceived"})
    );
    // The throttled PATCH applied nothing.
    assert_eq!(sim.identity_of(&vm("vm-1")), Some(json!({"type":"None"})));
    // GET is not matched by the rule; the next PATCH goes through.
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    let r = c.patch(&vm("vm-1"), V2018, body).await;
    assert_eq!(r.status, 200);
    let k = sim.counters();
    assert_eq!(k.throttled, 1);
    assert_eq!(k.writes, 2);
}

#[tokio::test]
async fn status_faults_500_503_and_clear() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.add_fault(FaultRule::status(500).times(2));
    for _ in 0..2 {
        let r = c.get(&vm("vm-1"), V2018).await;
        assert_eq!(r.status, 500);
        assert_eq!(r.body["error"]["code"], "InternalServerError");
    }
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);

    sim.add_fault(FaultRule::status(503).path_contains("virtualMachineScaleSets"));
    for _ in 0..3 {
        let r = c.get(&vmss("vmss-1"), V2018).await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            error_body(
                "ServiceUnavailable",
                "The service is currently unavailable. Please try again later."
            )
        );
    }
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    sim.clear_faults();
    assert_eq!(c.get(&vmss("vmss-1"), V2018).await.status, 200);
    assert_eq!(sim.counters().server_errors, 5);
}

#[tokio::test]
async fn delay_fault() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.add_fault(FaultRule::delay(250).times(1));
    let t = Instant::now();
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    let t = Instant::now();
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(250));
}

#[tokio::test]
async fn admin_http_api() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let rule = json!({"method":"GET","pathContains":"vm-2","action":{"type":"throttle","retryAfterSecs":3},"times":1});
    let r = http
        .post(format!("{base}/_sim/faults"))
        .json(&rule)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 201);
    let bad = http
        .post(format!("{base}/_sim/faults"))
        .json(&json!({"action":{"type":"explode"}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status().as_u16(), 400);

    let r = c.get(&vm("vm-2"), V2018).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("3"));
    assert_eq!(c.get(&vm("vm-2"), V2018).await.status, 200);

    let counters: Value = http
        .get(format!("{base}/_sim/counters"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(counters["reads"], 2);
    assert_eq!(counters["throttled"], 1);
    assert_eq!(
        counters["perResource"][vm("vm-2").to_lowercase()]["reads"],
        2
    );

    let requests: Value = http
        .get(format!("{base}/_sim/requests"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(requests.as_array().map(Vec::len), Some(2));
    assert_eq!(requests[0]["status"], 429);

    let r = http
        .post(format!("{base}/_sim/reset-counters"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(sim.counters().reads, 0);

    sim.add_fault(FaultRule::new(FaultAction::Status { code: 500 }));
    let r = http
        .delete(format!("{base}/_sim/faults"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(c.get(&vm("vm-2"), V2018).await.status, 200);

    let world: Value = http
        .get(format!("{base}/_sim/world"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(world["tenantId"], TENANT);
    assert_eq!(world["virtualMachines"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        world["userAssignedIdentities"].as_array().map(Vec::len),
        Some(3)
    );
    // Admin endpoints need no token and are not counted.
    assert_eq!(sim.counters().requests, 1);
}

#[tokio::test]
async fn rate_limit_and_request_id_headers() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .as_deref(),
        Some("249")
    );
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-global-reads")
            .as_deref(),
        Some("3749")
    );
    assert!(r.header("x-ms-request-id").is_some_and(|v| is_uuid(&v)));
    let r = c.patch(&vm("vm-1"), V2018, json!({"tags":{}})).await;
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-writes")
            .as_deref(),
        Some("199")
    );
}

#[tokio::test]
async fn paths_are_case_insensitive() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let odd = format!(
        "/SUBSCRIPTIONS/{SUB}/resourcegroups/RG-APPS/PROVIDERS/microsoft.compute/VIRTUALMACHINES/VM-1"
    );
    let r = c.get(&odd, V2018).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["id"], vm("vm-1"));
    assert_eq!(r.body["name"], "vm-1");
    let r = c
        .patch(&odd, V2018, json!({"identity":{"type":"SystemAssigned"}}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.writes_for(&vm("vm-1")), 1);
    assert_eq!(
        sim.identity_of(&vm("vm-1")).map(|i| i["type"].clone()),
        Some(json!("SystemAssigned"))
    );
    let r = c
        .get(
            &format!("/subscriptions/{SUB}/resourceGroups/rg-apps/providers/MICROSOFT.MANAGEDIDENTITY/userassignedidentities/UAI-1"),
            "2018-11-30",
        )
        .await;
    assert_eq!(r.status, 200);
    // Unknown routes.
    let r = c.get(&format!("/subscriptions/{SUB}/resourceGroups/rg-apps/providers/Microsoft.Network/networkInterfaces/nic"), V2018).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "NotFound");
}

/// `POST /_sim/identity`: someone else changes a VM's identity out of band (add and remove a
/// user-assigned identity, enable and disable the system identity, drop the whole block); a
/// GET shows each change, the system principal is kept while the system identity stays on,
/// the entity tag moves, and the edits are neither counted nor logged.
#[tokio::test]
async fn admin_identity_edits() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let edit = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/_sim/identity");
        async move {
            let r = http.post(url).json(&body).send().await.expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let etag0 = sim.etag_of(&vm("vm-1"));

    // Enable the system identity and attach uai-1 (spelled in lower case, as the docs do).
    let (status, id) = edit(json!({"id": vm("vm-1"), "systemAssigned": true, "addUserAssigned": [uai_lower_rg("uai-1")]})).await;
    assert_eq!(status, 200, "{id}");
    assert_eq!(id["type"], "SystemAssigned, UserAssigned");
    let principal = id["principalId"]
        .as_str()
        .expect("system principal")
        .to_string();
    let got = c.get(&vm("vm-1"), V2018).await.body;
    assert_eq!(got["identity"]["type"], "SystemAssigned, UserAssigned");
    assert_eq!(
        got["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.len()),
        Some(1)
    );
    assert_ne!(sim.etag_of(&vm("vm-1")), etag0);

    // Add uai-2, remove uai-1: the system principal is kept.
    let (status, id) = edit(json!({"id": vm("vm-1"), "addUserAssigned": [uai("uai-2")], "removeUserAssigned": [uai("uai-1")]})).await;
    assert_eq!(status, 200, "{id}");
    let keys: Vec<String> = id["userAssignedIdentities"]
        .as_object()
        .map(|m| m.keys().map(|k| k.to_lowercase()).collect())
        .unwrap_or_default();
    assert_eq!(keys, vec![uai("uai-2").to_lowercase()]);
    assert_eq!(id["principalId"], principal.as_str());

    // Disable the system identity: only the user-assigned one is left.
    let (status, id) = edit(json!({"id": vm("vm-1"), "systemAssigned": false})).await;
    assert_eq!(status, 200, "{id}");
    assert_eq!(id["type"], "UserAssigned");
    assert!(id.get("principalId").is_none(), "{id}");

    // Drop the whole block.
    let (status, id) = edit(json!({"id": vm("vm-1"), "removeIdentity": true})).await;
    assert_eq!(status, 200, "{id}");
    assert_eq!(id, json!({"type": "None"}));
    assert!(
        c.get(&vm("vm-1"), V2018)
            .await
            .body
            .get("identity")
            .is_none()
    );

    // Scale sets too.
    let (status, id) = edit(json!({"id": vmss("vmss-1"), "addUserAssigned": [uai("uai-3")]})).await;
    assert_eq!(status, 200, "{id}");
    assert_eq!(id["type"], "UserAssigned");

    // Unknown resources and bad bodies are refused.
    let (status, _) = edit(json!({"id": vm("vm-nope"), "systemAssigned": true})).await;
    assert_eq!(status, 404);
    let (status, body) = edit(json!({"id": vm("vm-1"), "enable": true})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "InvalidIdentityEdit");
    // A user-assigned identity is no VM or VMSS.
    let (status, _) = edit(json!({"id": uai("uai-1"), "systemAssigned": true})).await;
    assert_eq!(status, 404);

    // Out of band: not counted as ARM traffic (only the two GETs above were).
    assert_eq!(sim.counters().requests, 2);
    assert_eq!(sim.counters().writes, 0);
}

#[tokio::test]
async fn fault_for_ms_expires() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.add_fault(FaultRule::status(503).path_contains("vm-1").for_ms(300));
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 503);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 503);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Expired: answered normally, and dropped from the list.
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    let listed: Value = reqwest::get(format!("{}/_sim/faults", sim.base_url()))
        .await
        .expect("GET /_sim/faults")
        .json()
        .await
        .expect("json");
    assert_eq!(listed, json!([]));
    // The admin API takes it too.
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.base_url()))
        .body(r#"{"action":{"type":"delay","ms":1},"forMs":60000}"#)
        .send()
        .await
        .expect("POST /_sim/faults");
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn request_log_records_identity_before_and_after_each_compute_write() {
    let sim = sim().await;
    let c = Client::new(&sim);
    c.patch(
        &vm("vm-1"),
        V2018,
        json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{(uai("uai-1")):{}}}}),
    )
    .await;
    // Out of band: not logged, but the next logged write starts from it.
    sim.set_identity(
        &vm("vm-1"),
        json!({"type":"SystemAssigned, UserAssigned","userAssignedIdentities":[uai("uai-1")]}),
    )
    .expect("out-of-band edit");
    c.patch(
        &vm("vm-1"),
        V2018,
        json!({"identity":{"type":"UserAssigned"}}),
    )
    .await;
    c.get(&vm("vm-1"), V2018).await;
    sim.add_fault(FaultRule::status(500).method("PATCH").times(1));
    c.patch(&vm("vm-1"), V2018, json!({"identity":{"type":"None"}}))
        .await;
    c.delete(&vm("vm-2"), V2018).await;
    let log = sim.requests();
    assert_eq!(log.len(), 5);
    let ty = |v: &Option<Value>| v.as_ref().map(|v| v["type"].clone());
    assert_eq!(ty(&log[0].identity_before), Some(json!("None")));
    assert_eq!(ty(&log[0].identity_after), Some(json!("UserAssigned")));
    assert!(
        log[0].identity_after.as_ref().expect("after")["userAssignedIdentities"]
            .as_object()
            .is_some_and(|m| m.len() == 1)
    );
    assert_eq!(
        ty(&log[1].identity_before),
        Some(json!("SystemAssigned, UserAssigned"))
    );
    assert_eq!(ty(&log[1].identity_after), Some(json!("UserAssigned")));
    assert!(log[1].applied_at.as_deref() >= Some(log[1].timestamp.as_str()));
    assert!(log[1].applied_at.as_deref() > log[0].applied_at.as_deref());
    // A read, and a write refused by an injected fault, carry neither.
    assert_eq!(
        (&log[2].identity_before, &log[2].identity_after),
        (&None, &None)
    );
    assert_eq!(log[3].status, 500);
    assert_eq!(
        (&log[3].identity_before, &log[3].identity_after),
        (&None, &None)
    );
    // DELETE: after is null (gone).
    assert_eq!(log[4].identity_after, Some(Value::Null));
    assert_eq!(ty(&log[4].identity_before), Some(json!("None")));
}

#[tokio::test]
async fn edit_identity_reads_and_writes_in_one_step() {
    let sim = sim().await;
    sim.set_identity(&vm("vm-1"), json!({"type":"SystemAssigned"}))
        .expect("seed");
    let before = sim
        .edit_identity(&vm("vm-1"), |cur| {
            let mut v = cur.clone();
            v["type"] = json!("SystemAssigned, UserAssigned");
            v["userAssignedIdentities"] = json!([uai("uai-2")]);
            v
        })
        .expect("edit");
    assert_eq!(before["type"], "SystemAssigned");
    let now = sim.identity_of(&vm("vm-1")).expect("vm-1");
    assert_eq!(now["type"], "SystemAssigned, UserAssigned");
    // The system principal is kept (the edit passed it through).
    assert_eq!(now["principalId"], before["principalId"]);
    assert!(sim.edit_identity(&vm("nope"), |v| v.clone()).is_err());
    // The admin route answers 404 for an unknown VM and for an id that is not one.
    for id in [vm("nope"), uai("uai-1")] {
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/identity", sim.base_url()))
            .body(json!({"id": id, "systemAssigned": true}).to_string())
            .send()
            .await
            .expect("POST /_sim/identity");
        assert_eq!(r.status(), 404, "{id}");
    }
}

#[tokio::test]
async fn custom_error_fault() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.add_fault(
        FaultRule::error(
            400,
            "PrincipalNotFound",
            "Principal 11111111-2222-3333-4444-555555555555 does not exist in the directory.",
        )
        .method("PUT")
        .path_contains("roleAssignments")
        .times(1),
    );
    let path = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/0f1e2d3c-0000-4000-8000-000000000001?api-version=2022-04-01"
    );
    let body = json!({"properties": {
        "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"),
        "principalId": "11111111-2222-3333-4444-555555555555"}});
    let r = c.send("PUT", &path, Some(&body)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "PrincipalNotFound");
    // Used up: a GET was never matched (method), and the rule is gone.
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    let listed: Value = reqwest::get(format!("{}/_sim/faults", sim.base_url()))
        .await
        .expect("GET /_sim/faults")
        .json()
        .await
        .expect("json");
    assert_eq!(listed[0]["remaining"], 0);
    // The admin API takes it as JSON.
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.base_url()))
        .body(r#"{"action":{"type":"error","status":409,"errorCode":"Conflict","message":"m"}}"#)
        .send()
        .await
        .expect("POST /_sim/faults");
    assert_eq!(r.status(), 201);
}
