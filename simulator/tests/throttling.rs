//! Opt-in ARM subscription and Compute throttling ("Understand how Azure Resource Manager
//! throttles requests",
//! <https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling>;
//! "Compute throttling limits", <https://learn.microsoft.com/azure/virtual-machines/compute-throttling-limits>).
//!
//! Refill rates are slow (one token per 100 s) and time is moved with
//! `SimHandle::advance_clock`, so the wall time a test takes does not matter.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{Bucket, CallerConfig, SimConfig, SimHandle, ThrottleConfig};

const SUB2: &str = "00000000-0000-0000-0000-000000000002";

fn slow(size: u32) -> Bucket {
    Bucket::new(size, 0.01)
}

fn arm_only(reads: u32, writes: u32, deletes: u32) -> ThrottleConfig {
    ThrottleConfig {
        subscription_reads: slow(reads),
        subscription_writes: slow(writes),
        subscription_deletes: slow(deletes),
        compute: None,
    }
}

async fn sim_throttled(t: ThrottleConfig) -> SimHandle {
    sim_with(SimConfig {
        seed: seed(),
        throttling: Some(t),
        ..SimConfig::default()
    })
    .await
}

fn actor() -> String {
    CallerConfig::new(TOKEN).object_id
}

fn arm_429(kind: &str, sub: &str, secs: u64) -> Value {
    error_body(
        "SubscriptionRequestsThrottled",
        &format!(
            "Number of '{kind}' requests for subscription '{sub}' actor '{}' exceeded. Please try again after '{secs}' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling for additional information.",
            actor()
        ),
    )
}

#[tokio::test]
async fn read_burst_beyond_the_bucket_gets_429_with_retry_after_then_refills() {
    let sim = sim_throttled(arm_only(5, 5, 5)).await;
    let c = Client::new(&sim);
    for expected in ["4", "3", "2", "1", "0"] {
        let r = c.get(&vm("vm-1"), V2018).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-ms-ratelimit-remaining-subscription-reads")
                .as_deref(),
            Some(expected)
        );
        // Global bucket = 15 × the per-principal bucket ("Understand how Azure Resource
        // Manager throttles requests").
        let global: u64 = expected.parse::<u64>().unwrap() + 14 * 5;
        assert_eq!(
            r.header("x-ms-ratelimit-remaining-subscription-global-reads"),
            Some(global.to_string())
        );
    }
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 429);
    // One token per 100 s → 100 s until the next one.
    assert_eq!(r.header("retry-after").as_deref(), Some("100"));
    assert_eq!(r.body, arm_429("read", SUB, 100));
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .as_deref(),
        Some("0")
    );
    assert!(r.header("x-ms-request-id").is_some());
    let k = sim.counters();
    assert_eq!(
        (k.throttled, k.throttled_reads, k.throttled_writes),
        (1, 1, 0)
    );
    assert_eq!(k.reads, 6, "a throttled GET is still counted on arrival");

    // Refill: 100 s later one token is back.
    sim.advance_clock(Duration::from_secs(50));
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("50"));
    sim.advance_clock(Duration::from_secs(50));
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .as_deref(),
        Some("0")
    );
    // A long pause fills the bucket to its size, not beyond.
    sim.advance_clock(Duration::from_secs(10_000));
    let levels = sim.bucket_levels(SUB);
    assert!((levels.reads - 5.0).abs() < 1e-9, "{levels:?}");
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .as_deref(),
        Some("4")
    );
}

#[tokio::test]
async fn reads_writes_and_deletes_use_separate_buckets() {
    let sim = sim_throttled(arm_only(3, 2, 2)).await;
    let c = Client::new(&sim);
    for expected in ["1", "0"] {
        let r = c
            .patch(&vm("vm-1"), V2018, json!({"tags":{"n": expected}}))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-ms-ratelimit-remaining-subscription-writes")
                .as_deref(),
            Some(expected)
        );
        assert!(
            r.header("x-ms-ratelimit-remaining-subscription-reads")
                .is_none()
        );
    }
    let r = c.patch(&vm("vm-1"), V2018, json!({"tags":{}})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body, arm_429("write", SUB, 100));
    // PUT is a write too (same bucket).
    let r = c
        .put(
            &uai("uai-new"),
            "2018-11-30",
            json!({"location":"westeurope"}),
        )
        .await;
    assert_eq!(r.status, 429);
    // Reads still have their tokens.
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .as_deref(),
        Some("2")
    );
    // Deletes have their own bucket.
    let r = c.delete(&vm("vm-2"), V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-deletes")
            .as_deref(),
        Some("1")
    );
    let r = c.delete(&uai("uai-3"), "2018-11-30").await;
    assert_eq!(r.status, 200);
    let r = c.delete(&uai("uai-2"), "2018-11-30").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body, arm_429("delete", SUB, 100));
    assert!(sim.user_assigned_identity(&uai("uai-2")).is_some());
    let k = sim.counters();
    assert_eq!(
        (
            k.throttled,
            k.throttled_reads,
            k.throttled_writes,
            k.throttled_deletes
        ),
        (3, 0, 2, 1)
    );
    let levels = sim.bucket_levels(SUB);
    assert!(levels.writes < 1.0 && levels.deletes < 1.0 && levels.reads >= 2.0);
}

#[tokio::test]
async fn another_subscription_is_not_throttled() {
    let sim = sim_throttled(arm_only(2, 2, 2)).await;
    let other_vm = format!(
        "/subscriptions/{SUB2}/resourceGroups/rg-x/providers/Microsoft.Compute/virtualMachines/vm-x"
    );
    sim.create_compute_resource(&other_vm, "westeurope")
        .expect("created");
    let c = Client::new(&sim);
    c.get(&vm("vm-1"), V2018).await;
    c.get(&vm("vm-1"), V2018).await;
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 429);
    let r = c.get(&other_vm, V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .as_deref(),
        Some("1")
    );
    // Subscription ids compare case-insensitively.
    let r = c.get(&vm("vm-1").to_uppercase(), V2018).await;
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn a_throttled_patch_changes_nothing() {
    let sim = sim_throttled(arm_only(10, 1, 1)).await;
    let c = Client::new(&sim);
    assert_eq!(
        c.patch(&vm("vm-1"), V2018, json!({"tags":{"a":"b"}}))
            .await
            .status,
        200
    );
    let before = c.get(&vm("vm-1"), V2018).await.body;
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{uai("uai-1"):{}}},"tags":{"c":"d"}}),
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(sim.identity_of(&vm("vm-1")), Some(json!({"type":"None"})));
    let after = c.get(&vm("vm-1"), V2018).await.body;
    assert_eq!(before, after);
    assert_eq!(sim.requests()[2].status, 429);
}

#[tokio::test]
async fn compute_per_resource_update_limit_is_12_patches() {
    // Published limits, except that the subscription-wide buckets barely refill, so
    // the remaining counts below do not depend on how long the test takes.
    let mut t = ThrottleConfig {
        subscription_writes: slow(200),
        ..ThrottleConfig::default()
    };
    if let Some(c) = t.compute.as_mut() {
        c.vm_update.per_subscription = Bucket::per_minute(1_500, 0.06);
    }
    let sim = sim_throttled(t).await;
    let c = Client::new(&sim);
    for i in 0..12u32 {
        let r = c
            .patch(&vm("vm-1"), V2018, json!({"tags":{"i": i.to_string()}}))
            .await;
        assert_eq!(r.status, 200, "PATCH #{}", i + 1);
        assert_eq!(
            r.header("x-ms-ratelimit-remaining-resource"),
            Some(format!(
                "Microsoft.Compute/UpdateVMResource;{},Microsoft.Compute/UpdateVMSubscription;{}",
                11 - i,
                1499 - i
            ))
        );
    }
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 429);
    // 4 tokens per minute → 15 s for the next one.
    assert_eq!(r.header("retry-after").as_deref(), Some("15"));
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-resource").as_deref(),
        Some("Microsoft.Compute/UpdateVMResource;0")
    );
    // ARM let it through (its write token is spent), CRP refused it.
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-subscription-writes")
            .as_deref(),
        Some("187")
    );
    let e = &r.body["error"];
    assert_eq!(e["code"], "OperationNotAllowed");
    assert_eq!(
        e["message"],
        "The server rejected the request because too many requests have been received for this subscription."
    );
    assert_eq!(e["details"][0]["code"], "TooManyRequests");
    assert_eq!(e["details"][0]["target"], "UpdateVMResource");
    let detail: Value =
        serde_json::from_str(e["details"][0]["message"].as_str().expect("string")).expect("json");
    assert_eq!(detail["operationGroup"], "UpdateVMResource");
    assert_eq!(detail["allowedRequestCount"], 12);
    assert_eq!(
        e["innererror"]["internalErrorCode"],
        "TooManyRequestsReceived"
    );
    assert_eq!(sim.identity_of(&vm("vm-1")), Some(json!({"type":"None"})));

    // Another VM has its own resource bucket; GETs use another policy.
    let r = c.patch(&vm("vm-2"), V2018, json!({"tags":{}})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-resource").as_deref(),
        Some("Microsoft.Compute/UpdateVMResource;11,Microsoft.Compute/UpdateVMSubscription;1487")
    );
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-resource").as_deref(),
        Some(
            "Microsoft.Compute/LowCostGetVMResource;35,Microsoft.Compute/LowCostGetVMSubscription;23999"
        )
    );
    let k = sim.counters();
    assert_eq!(
        (k.throttled, k.throttled_compute, k.throttled_writes),
        (1, 1, 0)
    );
    let res = sim.resource_bucket_levels(&vm("vm-1"));
    assert!(res["UpdateVMResource"] < 1.0, "{res:?}");
    let levels = sim.bucket_levels(SUB);
    assert!(
        (levels.compute["UpdateVMSubscription"] - 1487.0).abs() < 0.1,
        "{levels:?}"
    );

    // 15 s later the VM can be patched once more.
    sim.advance_clock(Duration::from_secs(15));
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        sim.identity_of(&vm("vm-1")).expect("vm")["type"],
        "SystemAssigned"
    );
}

#[tokio::test]
async fn compute_per_subscription_limit() {
    let mut t = ThrottleConfig::default();
    if let Some(c) = t.compute.as_mut() {
        // 3 tokens, 60 per minute.
        c.vm_low_cost_get.per_subscription = Bucket::per_minute(3, 60.0);
    }
    let sim = sim_throttled(t).await;
    let c = Client::new(&sim);
    for id in [vm("vm-1"), vm("vm-2"), vm("vm-1")] {
        assert_eq!(c.get(&id, V2018).await.status, 200);
    }
    let r = c.get(&vm("vm-2"), V2018).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body["error"]["details"][0]["target"],
        "LowCostGetVMSubscription"
    );
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    // Scale sets have their own policy.
    let r = c.get(&vmss("vmss-1"), V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ms-ratelimit-remaining-resource").as_deref(),
        Some(
            "Microsoft.Compute/LowCostGetVMScaleSetResource;35,Microsoft.Compute/LowCostGetVMScaleSetSubscription;2399"
        )
    );
    // UAIs are not Compute resources: no policy, no header.
    let r = c.get(&uai("uai-1"), "2018-11-30").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-ms-ratelimit-remaining-resource").is_none());
    sim.advance_clock(Duration::from_secs(1));
    assert_eq!(c.get(&vm("vm-2"), V2018).await.status, 200);
}

#[tokio::test]
async fn polls_are_charged_to_get_operation() {
    let mut t = ThrottleConfig::default();
    if let Some(c) = t.compute.as_mut()
        && let Some(p) = c.get_operation.as_mut()
    {
        p.per_resource = Bucket::per_minute(1, 1.0);
    }
    let sim = sim_throttled(t).await;
    sim.set_lro_polls(5);
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    let url = r.header("azure-asyncoperation").expect("LRO header");
    let p = c.poll(&url).await;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.header("x-ms-ratelimit-remaining-resource").as_deref(),
        Some(
            "Microsoft.Compute/GetOperationResource;0,Microsoft.Compute/GetOperationSubscription;14999"
        )
    );
    let p = c.poll(&url).await;
    assert_eq!(p.status, 429);
    assert_eq!(
        p.body["error"]["details"][0]["target"],
        "GetOperationResource"
    );
    assert_eq!(p.header("retry-after").as_deref(), Some("60"));
    assert_eq!(sim.counters().polls, 2);
}

#[tokio::test]
async fn throttling_is_off_by_default_and_switchable() {
    let sim = sim().await;
    let c = Client::new(&sim);
    assert!(sim.throttling().is_none());
    for _ in 0..300 {
        assert_eq!(c.get(&vm("vm-1"), "2018-06-01").await.status, 200);
    }
    sim.set_throttling(Some(arm_only(1, 1, 1)));
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 429);
    sim.set_throttling(None);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    assert_eq!(sim.counters().throttled, 1);
}

#[tokio::test]
async fn admin_endpoints_set_throttling_and_show_levels() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let r = http
        .post(format!("{base}/_sim/throttling"))
        .body(r#"{"subscriptionReads":{"size":1,"refillPerSec":0.01}}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let cfg = sim.throttling().expect("on");
    assert_eq!(cfg.subscription_reads, slow(1));
    assert_eq!(cfg.subscription_writes, Bucket::new(200, 10.0));
    assert!(cfg.compute.is_some(), "missing members take the defaults");
    let c = Client::new(&sim);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 429);
    let levels: Value = http
        .get(format!("{base}/_sim/buckets/{SUB}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert!(levels["reads"].as_f64().expect("reads") < 1.0);
    assert!(
        levels["compute"]["LowCostGetVMSubscription"]
            .as_f64()
            .is_some()
    );
    let r = http
        .post(format!("{base}/_sim/clock/advance"))
        .body(r#"{"ms":100000}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 204);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    let r = http
        .post(format!("{base}/_sim/throttling"))
        .body("null")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert!(sim.throttling().is_none());
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    let r = http
        .post(format!("{base}/_sim/throttling"))
        .body(r#"{"bogus":1}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 400);
}

#[test]
fn defaults_and_scaling() {
    let d = ThrottleConfig::default();
    assert_eq!(d.subscription_reads, Bucket::new(250, 25.0));
    assert_eq!(d.subscription_writes, Bucket::new(200, 10.0));
    assert_eq!(d.subscription_deletes, Bucket::new(200, 10.0));
    let c = d.compute.clone().expect("compute");
    assert_eq!(c.vm_update.per_resource.size, 12);
    assert!((c.vm_update.per_resource.refill_per_sec * 60.0 - 4.0).abs() < 1e-9);
    assert_eq!(c.vm_update.per_subscription.size, 1_500);
    assert_eq!(c.vm_low_cost_get.per_subscription.size, 24_000);
    assert_eq!(c.vmss_put.per_subscription.size, 375);
    assert_eq!(c.vmss_delete.per_subscription.size, 525);
    let s = d.scaled(0.1);
    assert_eq!(s.subscription_reads, Bucket::new(25, 2.5));
    let sc = s.compute.expect("compute");
    assert_eq!(sc.vm_update.per_resource.size, 1);
    let a = d.accelerated(60.0);
    assert_eq!(a.subscription_reads, Bucket::new(250, 1500.0));
    let ac = a.compute.expect("compute");
    assert!((ac.vm_update.per_resource.refill_per_sec - 4.0).abs() < 1e-9);
}
