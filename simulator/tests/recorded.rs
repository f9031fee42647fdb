//! Smaller differences recorded ARM traffic showed (the Azure CLI's VM / VMSS identity
//! tests, `src/azure-cli/azure/cli/command_modules/vm/tests/latest/recordings/` in
//! Azure/azure-cli), one test each. The PATCH answer and operation of the default LRO mode
//! are tested in `lro.rs`; whole recorded sequences are replayed in
//! `tests/tests/replay.rs`.

mod common;

use common::*;
use serde_json::{Value, json};

/// The published api-versions are served (Compute 2025-04-01 is what current CLIs use for
/// every VM GET; Managed Identity 2018-11-30, 2023-01-31, 2024-11-30 and the 2015-08-31
/// preview); an unknown one is refused listing every supported version.
#[tokio::test]
async fn serves_the_published_api_versions_and_lists_them_when_refusing() {
    let sim = sim().await;
    let c = Client::new(&sim);
    for v in vmidentity_arm_versions::COMPUTE {
        let r = c.get(&vm("vm-1"), v).await;
        assert_eq!(r.status, 200, "Compute {v}");
    }
    for v in ["2025-04-01", "2018-04-01"] {
        assert_eq!(c.get(&vmss("vmss-1"), v).await.status, 200, "{v}");
    }
    for v in vmidentity_arm_versions::MANAGED_IDENTITY {
        let r = c.get(&uai("uai-1"), v).await;
        assert_eq!(r.status, 200, "Managed Identity {v}");
    }
    for (id, list) in [
        (vm("vm-1"), vmidentity_arm_versions::COMPUTE),
        (uai("uai-1"), vmidentity_arm_versions::MANAGED_IDENTITY),
    ] {
        let r = c.get(&id, "2025-04-02").await;
        assert_eq!(r.status, 400);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "The supported api-versions are '{}'",
                list.join(", ")
            )),
            "{message}"
        );
        let r = c.get(&id, "latest").await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "InvalidApiVersionParameter");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&list.join(",")), "{message}");
    }
}

/// 2018-04-01 still has the `identityIds` array (the dictionary came with 2018-06-01).
#[tokio::test]
async fn api_version_2018_04_01_uses_identity_ids() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            "2018-04-01",
            json!({"identity":{"type":"UserAssigned","identityIds":[uai("uai-1")]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["identity"]["identityIds"], json!([uai("uai-1")]));
}

/// A `null` removal whose key is the ID fully lower-cased removes the entry spelled
/// canonically.
#[tokio::test]
async fn a_lower_cased_null_key_removes_the_canonical_entry() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let add = json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-1"):{}, uai("uai-2"):{}}}});
    assert_eq!(c.patch(&vm("vm-1"), V2018, add).await.status, 200);
    let lower = uai("uai-1").to_ascii_lowercase();
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{lower: null}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let g = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(
        g.body["identity"]["userAssignedIdentities"],
        json!({uai("uai-2"): live_entry(&sim, &uai("uai-2"))})
    );
}

/// After a 2017-12-01 `identityIds` replace, GETs show each ID as the request spelled it.
#[tokio::test]
async fn identity_ids_replace_keeps_the_request_spelling() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let add = json!({"identity":{"type":"UserAssigned","identityIds":[uai("uai-1")]}});
    assert_eq!(c.patch(&vm("vm-1"), V2017, add).await.status, 200);
    let again = json!({"identity":{"type":"UserAssigned","identityIds":[uai_lower_rg("uai-1"), uai("uai-2")]}});
    assert_eq!(c.patch(&vm("vm-1"), V2017, again).await.status, 200);
    let g = c.get(&vm("vm-1"), V2017).await;
    assert_eq!(
        g.body["identity"]["identityIds"],
        json!([uai_lower_rg("uai-1"), uai("uai-2")])
    );
    // The entry kept is still bound: a 2018-06-01 GET shows its principal.
    let g = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(
        g.body["identity"]["userAssignedIdentities"][uai_lower_rg("uai-1")],
        live_entry(&sim, &uai("uai-1"))
    );
}

/// The 2024-11-01+ CLI removes every user-assigned identity with
/// `{"type":"SystemAssigned","userAssignedIdentities":null}` or
/// `{"type":"None","userAssignedIdentities":null}`; ARM accepts both.
#[tokio::test]
async fn a_null_dictionary_with_system_or_none_is_accepted() {
    for (ty, want) in [("SystemAssigned", Some("SystemAssigned")), ("None", None)] {
        let sim = sim().await;
        let c = Client::new(&sim);
        let add = json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{uai("uai-1"):{}}}});
        assert_eq!(c.patch(&vm("vm-1"), "2024-11-01", add).await.status, 200);
        let r = c
            .patch(
                &vm("vm-1"),
                "2024-11-01",
                json!({"identity":{"type": ty,"userAssignedIdentities": null}}),
            )
            .await;
        assert_eq!(r.status, 200, "{ty}: {}", r.raw);
        let g = c.get(&vm("vm-1"), "2024-11-01").await;
        assert_eq!(g.body["identity"]["type"].as_str(), want, "{ty}: {}", g.raw);
        assert!(g.body["identity"].get("userAssignedIdentities").is_none());
    }
}

/// A user-assigned identity PUT answers with a `Location` header naming it and, from
/// 2024-11-30 on, `properties.isolationScope`; without tags it shows `"tags": {}`.
#[tokio::test]
async fn uai_put_has_location_and_isolation_scope() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let id = uai("uai-new");
    let r = c
        .put(&id, "2024-11-30", json!({"location": "westeurope"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.header("location"), Some(uai_lower_rg("uai-new")));
    assert_eq!(r.body["tags"], json!({}));
    assert_eq!(r.body["properties"]["isolationScope"], "None");
    assert!(is_uuid(
        r.body["properties"]["principalId"]
            .as_str()
            .unwrap_or_default()
    ));
    let r = c
        .put(
            &id,
            "2024-11-30",
            json!({"location": "westeurope", "tags": {"a": "b"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("location"), Some(uai_lower_rg("uai-new")));
    let old = c.get(&id, "2018-11-30").await;
    assert_eq!(old.status, 200);
    assert_eq!(old.body["properties"].get("isolationScope"), None::<&Value>);
}
