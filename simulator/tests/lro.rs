//! Long-running operation modes (`LroMode`; "Track asynchronous Azure operations",
//! <https://learn.microsoft.com/azure/azure-resource-manager/management/async-operations>).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use vmidentity_simulator::{LroMode, SimConfig};

fn op_url_prefix(base: &str) -> String {
    format!(
        "{base}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/operations/"
    )
}

/// The default mode answers an identity PATCH as ARM does (recorded in the Azure CLI's
/// `test_vmss_explicit_msi.yaml`, Azure/azure-cli commit
/// 0151a1baa6e087378dbbbc374a9806098d6314c8): 200, `Updating`, `Azure-AsyncOperation` and
/// neither `Location` nor `Retry-After`; the etag goes up by one and stays when the
/// operation completes; the first poll may already say `Succeeded`.
#[tokio::test]
async fn the_default_answers_as_recorded() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let before = c.get(&vm("vm-1"), "2024-11-01").await;
    let tag = |r: &Resp| {
        r.body["etag"]
            .as_str()
            .and_then(|t| t.trim_matches('"').parse::<u64>().ok())
            .expect("etag")
    };
    let r = c
        .patch(
            &vm("vm-1"),
            "2024-11-01",
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["properties"]["provisioningState"], "Updating");
    assert!(r.header("azure-asyncoperation").is_some());
    assert!(r.header("location").is_none());
    assert!(r.header("retry-after").is_none());
    assert_eq!(tag(&r), tag(&before) + 1);
    let url = r.header("azure-asyncoperation").unwrap_or_default();
    let p = c.poll(&url).await;
    assert_eq!(p.body["status"], "Succeeded", "the first poll: lro_polls 0");
    assert!(p.header("retry-after").is_none());
    let after = c.get(&vm("vm-1"), "2024-11-01").await;
    assert_eq!(after.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        tag(&after),
        tag(&r),
        "completing the operation keeps the etag"
    );
}

/// Newly added user-assigned identities are `{}` in the PATCH answer (no principal yet);
/// one already there keeps its principal; a later GET shows both filled in. Recorded at
/// 2024-11-01 for a scale set (the same recording) and at 2018-06-01 / 2024-07-01 for VMs.
#[tokio::test]
async fn new_user_assigned_entries_are_empty_in_the_patch_answer() {
    for (target, v) in [(vm("vm-1"), V2018), (vmss("vmss-1"), "2024-07-01")] {
        let sim = sim().await;
        let c = Client::new(&sim);
        let r = c
            .patch(
                &target,
                v,
                json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-1"):{}}}}),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body["identity"]["userAssignedIdentities"],
            json!({uai("uai-1"): {}}),
            "{target}"
        );
        let r = c
            .patch(
                &target,
                v,
                json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-2"):{}}}}),
            )
            .await;
        assert_eq!(
            r.body["identity"]["userAssignedIdentities"],
            json!({uai("uai-1"): live_entry(&sim, &uai("uai-1")), uai("uai-2"): {}}),
            "{target}"
        );
        let g = c.get(&target, v).await;
        assert_eq!(
            g.body["identity"]["userAssignedIdentities"],
            json!({uai("uai-1"): live_entry(&sim, &uai("uai-1")), uai("uai-2"): live_entry(&sim, &uai("uai-2"))}),
            "{target}"
        );
        // Sync mode: the operation is over when it answers, so the entries are filled.
        sim.set_lro_mode(LroMode::Sync);
        let r = c
            .patch(
                &target,
                v,
                json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-3"):{}}}}),
            )
            .await;
        assert_eq!(
            r.body["identity"]["userAssignedIdentities"][uai("uai-3")],
            live_entry(&sim, &uai("uai-3"))
        );
    }
}

/// [`LroMode::Async200RetryAfter`]: the former default, kept for tests of `Retry-After`.
#[tokio::test]
async fn async200_polls_until_succeeded() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        lro: LroMode::Async200RetryAfter,
        lro_polls: 1,
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["properties"]["provisioningState"], "Updating");
    assert_eq!(r.body["identity"]["type"], "SystemAssigned");
    assert_eq!(r.header("retry-after").as_deref(), Some("0"));
    assert!(r.header("location").is_none());
    let url = r
        .header("azure-asyncoperation")
        .expect("Azure-AsyncOperation");
    let prefix = op_url_prefix(&sim.base_url());
    assert!(url.starts_with(&prefix), "{url}");
    assert!(url.ends_with("?api-version=2018-06-01"), "{url}");
    let op_id = url[prefix.len()..]
        .split('?')
        .next()
        .unwrap_or("")
        .to_string();
    assert!(is_uuid(&op_id));

    // The identity change is visible immediately; the resource is Updating.
    let g = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(g.body["identity"]["type"], "SystemAssigned");
    assert_eq!(g.body["properties"]["provisioningState"], "Updating");

    let p = c.poll(&url).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.body["status"], "InProgress");
    assert_eq!(p.body["name"], op_id);
    assert!(p.body["startTime"].is_string());
    assert!(p.body.get("endTime").is_none());
    assert_eq!(p.header("retry-after").as_deref(), Some("0"));

    let p = c.poll(&url).await;
    assert_eq!(p.body["status"], "Succeeded");
    assert!(p.body["endTime"].is_string());
    assert_eq!(
        p.body
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            "startTime".into(),
            "endTime".into(),
            "status".into(),
            "name".into()
        ])
    );
    let g = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(g.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(sim.counters().polls, 2);
    // Polls are not resource reads.
    assert_eq!(sim.reads_for(&vm("vm-1")), 2);
}

#[tokio::test]
async fn async202_answers_without_body_and_with_location() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        lro: LroMode::Async202,
        lro_polls: 2,
        retry_after_secs: 1,
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vmss("vmss-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-1"):{}}}}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(r.raw.is_empty());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    let async_url = r
        .header("azure-asyncoperation")
        .expect("Azure-AsyncOperation");
    let location = r.header("location").expect("Location");
    assert!(location.contains("monitor=true"), "{location}");
    assert!(location.starts_with(&op_url_prefix(&sim.base_url())));
    // Change visible immediately.
    assert_eq!(
        sim.identity_of(&vmss("vmss-1")),
        Some(
            json!({"type":"UserAssigned","userAssignedIdentities":{uai("uai-1"): live_entry(&sim, &uai("uai-1"))}})
        )
    );
    assert_eq!(
        sim.provisioning_state_of(&vmss("vmss-1")).as_deref(),
        Some("Updating")
    );

    // Location polling: 202 while running, 200 when done. Shares the poll count.
    let p = c.poll(&location).await;
    assert_eq!(p.status, 202);
    assert!(p.raw.is_empty());
    let p = c.poll(&async_url).await;
    assert_eq!(p.body["status"], "InProgress");
    let p = c.poll(&location).await;
    assert_eq!(p.status, 200);
    let p = c.poll(&async_url).await;
    assert_eq!(p.body["status"], "Succeeded");
    assert_eq!(
        sim.provisioning_state_of(&vmss("vmss-1")).as_deref(),
        Some("Succeeded")
    );
}

#[tokio::test]
async fn sync_mode_has_no_lro_headers() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        lro: LroMode::Sync,
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    assert!(r.header("azure-asyncoperation").is_none());
    assert!(r.header("retry-after").is_none());
}

#[tokio::test]
async fn lro_polls_and_mode_are_configurable_at_runtime() {
    let sim = sim().await;
    sim.set_lro_polls(3);
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    let url = r.header("azure-asyncoperation").expect("header");
    for _ in 0..3 {
        assert_eq!(c.poll(&url).await.body["status"], "InProgress");
    }
    assert_eq!(c.poll(&url).await.body["status"], "Succeeded");
    // Polling a finished operation keeps answering Succeeded.
    assert_eq!(c.poll(&url).await.body["status"], "Succeeded");

    sim.set_lro_mode(LroMode::Sync);
    let r = c
        .patch(&vm("vm-1"), V2018, json!({"identity":{"type":"None"}}))
        .await;
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    assert!(r.header("azure-asyncoperation").is_none());
}

#[tokio::test]
async fn minimum_operation_duration() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        lro_polls: 0,
        min_operation_duration: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    let url = r.header("azure-asyncoperation").expect("header");
    assert_eq!(c.poll(&url).await.body["status"], "InProgress");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(c.poll(&url).await.body["status"], "Succeeded");
}

#[tokio::test]
async fn noop_patch_completes_immediately_and_put_create_is_201_creating() {
    let sim = sim().await;
    let c = Client::new(&sim);
    // vm-1 has no identity; PATCH to None changes nothing.
    let r = c
        .patch(&vm("vm-1"), V2018, json!({"identity":{"type":"None"}}))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("azure-asyncoperation").is_none());
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");

    let r = c
        .put(&vm("vm-9"), V2018, json!({"location":"westeurope"}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["properties"]["provisioningState"], "Creating");
    assert!(r.header("azure-asyncoperation").is_some());

    // Unknown operation id.
    let r = c
        .send(
            "GET",
            &format!("/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/operations/nope?api-version=2018-06-01"),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            "NotFound",
            "The entity was not found in this Azure location."
        )
    );
}

/// `fail_next_operations`: the next operation ends `Failed` with an `error`, the resource's
/// provisioningState with it; what the write changed stays; the one after succeeds again.
#[tokio::test]
async fn failing_operations() {
    let sim = sim().await;
    let c = Client::new(&sim);
    sim.fail_next_operations(1);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let op = r
        .header("azure-asyncoperation")
        .expect("Azure-AsyncOperation");
    let p = c.poll(&op).await;
    assert_eq!(p.body["status"], "Failed");
    assert_eq!(p.body["error"]["code"], "InternalExecutionError");
    assert_eq!(
        sim.provisioning_state_of(&vm("vm-1")).as_deref(),
        Some("Failed")
    );
    assert_eq!(
        sim.identity_of(&vm("vm-1")).expect("vm-1")["type"],
        "SystemAssigned"
    );
    // Only one: the next operation succeeds.
    let r = c
        .patch(
            &vm("vm-2"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    let op = r
        .header("azure-asyncoperation")
        .expect("Azure-AsyncOperation");
    assert_eq!(c.poll(&op).await.body["status"], "Succeeded");
    assert_eq!(
        sim.provisioning_state_of(&vm("vm-2")).as_deref(),
        Some("Succeeded")
    );
}
