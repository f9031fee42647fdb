//! Entity tags on VMs / VMSS: `etag` + `ETag` from 2023-09-01 on, bumped by every write,
//! `If-Match` / `If-None-Match` honoured on PUT and PATCH (412 `PreconditionFailed`), and
//! both absent / ignored on older api-versions.

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{COMPUTE_API_VERSIONS, ETAG_API_VERSION, has_etag};

const V2024: &str = "2024-11-01";

fn etag(r: &Resp) -> Option<String> {
    r.body
        .get("etag")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn patch_if(c: &Client, id: &str, v: &str, if_match: &str, body: Value) -> Resp {
    c.send_with(
        "PATCH",
        &format!("{id}?api-version={v}"),
        Some(&body),
        &[("If-Match", if_match)],
    )
    .await
}

fn add_uai(name: &str) -> Value {
    json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai(name): {}}}})
}

#[tokio::test]
async fn etag_only_from_2023_09_01() {
    let sim = sim().await;
    let c = Client::new(&sim);
    assert_eq!(ETAG_API_VERSION, "2023-09-01");
    for v in COMPUTE_API_VERSIONS {
        for id in [vm("vm-1"), vmss("vmss-1")] {
            let r = c.get(&id, v).await;
            assert_eq!(r.status, 200, "{v}: {}", r.raw);
            if has_etag(v) {
                assert_eq!(etag(&r).as_deref(), Some("\"1\""), "{v}");
                assert_eq!(r.header("etag").as_deref(), Some("\"1\""), "{v}");
            } else {
                assert_eq!(r.body.get("etag"), None, "{v}");
                assert_eq!(r.header("etag"), None, "{v}");
            }
        }
    }
    assert!(!has_etag("2023-07-01") && !has_etag("2018-06-01") && !has_etag("2017-12-01"));
    assert!(has_etag("2023-09-01") && has_etag("2024-03-01") && has_etag(V2024));
    // Key order as compute/2024-11-01/examples/VirtualMachine_Get.json: after tags.
    let keys: Vec<String> = c
        .get(&vm("vm-1"), V2024)
        .await
        .body
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(&keys[..5], ["name", "id", "type", "location", "etag"]);
}

#[tokio::test]
async fn every_write_bumps_the_etag() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let id = vm("vm-1");
    let r = c.patch(&id, V2024, add_uai("uai-1")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(etag(&r).as_deref(), Some("\"2\""));
    assert_eq!(r.header("etag").as_deref(), Some("\"2\""));
    // A write at an old api-version bumps it too; its answer does not show it.
    let r = c.patch(&id, V2018, add_uai("uai-2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.get("etag"), None);
    assert_eq!(r.header("etag"), None);
    assert_eq!(etag(&c.get(&id, V2024).await).as_deref(), Some("\"3\""));
    // A PATCH that changes nothing is still a write (CHOSEN).
    let r = c.patch(&id, V2024, add_uai("uai-2")).await;
    assert_eq!(etag(&r).as_deref(), Some("\"4\""));
    // Out-of-band writers bump it.
    sim.set_identity(&id, json!({"type": "SystemAssigned"}))
        .expect("set identity");
    assert_eq!(sim.etag_of(&id).as_deref(), Some("\"5\""));
    // PUT of an existing resource bumps it; a created one starts at "1".
    let r = c
        .put(
            &id,
            V2024,
            json!({"location": "westeurope", "tags": {"a": "b"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(etag(&r).as_deref(), Some("\"6\""));
    let r = c
        .put(&vm("vm-new"), V2024, json!({"location": "westeurope"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(etag(&r).as_deref(), Some("\"1\""));
    // Completing the operation is no write of the caller's: the tag stays.
    sim.complete_operations();
    assert_eq!(sim.etag_of(&id).as_deref(), Some("\"6\""));
    // An etag in a PUT / PATCH body is read-only: ignored, not stored.
    let r = c
        .patch(&id, V2024, json!({"etag": "\"99\"", "tags": {"c": "d"}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(etag(&r).as_deref(), Some("\"7\""));
}

#[tokio::test]
async fn if_match_mismatch_is_412_and_applies_nothing() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let id = vm("vm-1");
    let seen = etag(&c.get(&id, V2024).await).expect("etag");
    // Another writer changes the VM between our GET and our PATCH.
    sim.set_identity(&id, json!({"type": "SystemAssigned"}))
        .expect("other writer");
    let principal = sim.identity_of(&id).expect("vm")["principalId"].clone();
    let r = patch_if(&c, &id, V2024, &seen, add_uai("uai-1")).await;
    assert_eq!(r.status, 412, "{}", r.raw);
    assert_eq!(
        r.body,
        error_body(
            "PreconditionFailed",
            "Etag provided in if-match header \"1\" does not match etag \"2\" of resource."
        )
    );
    assert_eq!(
        sim.identity_of(&id).expect("vm"),
        json!({"principalId": principal, "tenantId": TENANT, "type": "SystemAssigned"}),
        "nothing applied"
    );
    assert_eq!(sim.etag_of(&id).as_deref(), Some("\"2\""));
    assert_eq!(sim.requests().last().expect("logged").if_match, Some(seen));
    // The current tag, `*`, or a list naming it pass.
    let r = patch_if(&c, &id, V2024, "\"2\"", add_uai("uai-1")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = patch_if(&c, &id, V2024, "*", add_uai("uai-2")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = patch_if(&c, &id, V2024, "\"9\", \"4\"", add_uai("uai-3")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // Strong comparison: a weak tag never matches.
    let r = patch_if(&c, &id, V2024, "W/\"5\"", add_uai("uai-3")).await;
    assert_eq!(r.status, 412, "{}", r.raw);
}

#[tokio::test]
async fn a_request_that_fails_anyway_is_not_answered_412() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = patch_if(
        &c,
        &vm("vm-1"),
        V2024,
        "\"7\"",
        json!({"identity": {"type": "Both"}}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.raw);
    let r = patch_if(&c, &vm("vm-gone"), V2024, "\"1\"", add_uai("uai-1")).await;
    assert_eq!(r.status, 404, "{}", r.raw);
}

#[tokio::test]
async fn old_api_versions_ignore_if_match() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = patch_if(&c, &vm("vm-1"), V2018, "\"999\"", add_uai("uai-1")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = patch_if(
        &c,
        &vmss("vmss-1"),
        V2017,
        "\"999\"",
        json!({"identity": {"type": "UserAssigned", "identityIds": [uai("uai-1")]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = patch_if(
        &c,
        &vmss("vmss-1"),
        "2023-07-01",
        "\"999\"",
        add_uai("uai-2"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[tokio::test]
async fn put_preconditions_and_vmss() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let put = |id: String, h: &'static str, v: &'static str| {
        let c = &c;
        async move {
            c.send_with(
                "PUT",
                &format!("{id}?api-version={V2024}"),
                Some(&json!({"location": "westeurope"})),
                &[(h, v)],
            )
            .await
        }
    };
    // If-Match on a resource that does not exist fails, even `*`.
    let r = put(vm("vm-new"), "If-Match", "*").await;
    assert_eq!(r.status, 412, "{}", r.raw);
    assert_eq!(r.body["error"]["code"], "PreconditionFailed");
    assert!(sim.identity_of(&vm("vm-new")).is_none(), "not created");
    // If-None-Match: * creates only.
    let r = put(vm("vm-new"), "If-None-Match", "*").await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let r = put(vm("vm-new"), "If-None-Match", "*").await;
    assert_eq!(r.status, 412, "{}", r.raw);
    assert_eq!(
        r.body,
        error_body(
            "PreconditionFailed",
            "Etag provided in if-none-match header * matches etag \"1\" of resource."
        )
    );
    // VMSS: same rules.
    let r = put(vmss("vmss-1"), "If-Match", "\"2\"").await;
    assert_eq!(r.status, 412, "{}", r.raw);
    let r = put(vmss("vmss-1"), "If-Match", "\"1\"").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.header("etag").as_deref(), Some("\"2\""));
    let r = patch_if(&c, &vmss("vmss-1"), V2024, "\"1\"", add_uai("uai-1")).await;
    assert_eq!(r.status, 412, "{}", r.raw);
}
