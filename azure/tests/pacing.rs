//! The client's pacing holds when requests arrive in bunches and the process is starved of
//! CPU: a burst of VM PATCHes released at once, with the runtime blocked in the middle, meets
//! no 429 from ARM's or Compute's buckets, and the request rate the simulator sees stays
//! within Compute's per-subscription "Update VM" policy.
//!
//! Found with `bench fleet` under load (145 Compute 429s): the client's Compute write bucket
//! (`RateLimits::compute_writes`) was defined but never taken, so VM PATCHes were paced by
//! ARM's write bucket alone (10 s⁻¹ sustained, above Compute's 500 min⁻¹); any bunching once
//! Compute's bucket was low turned into 429s.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vmidentity_azure::client::{Bucket, RateLimits};
use vmidentity_azure::{ArmClient, ClientConfig, Method, StaticToken};
use vmidentity_simulator::{LroMode, SimConfig, ThrottleConfig, WorldSeed};

const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000c7";
const VMS: usize = 60;

fn vm(i: usize) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-p/providers/Microsoft.Compute/virtualMachines/vm-{i}"
    )
}

fn uai() -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-p/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-p"
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_vm_patches_under_a_starved_scheduler_meets_no_429() {
    let mut yaml = format!(
        "userAssignedIdentities:\n  - id: {}\nvirtualMachines:\n",
        uai()
    );
    for i in 0..VMS {
        yaml.push_str(&format!("  - id: {}\n", vm(i)));
    }
    // Compute's "Update VM" per-subscription bucket: 10 tokens, 40 s⁻¹ (the shape of the
    // published 1,500 / 500 min⁻¹, scaled so the test takes about a second). ARM's write
    // bucket is far larger: only Compute's can throttle.
    let mut throttle = ThrottleConfig::default();
    if let Some(c) = throttle.compute.as_mut() {
        c.vm_update.per_subscription = vmidentity_simulator::Bucket::new(10, 40.0);
    }
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&yaml).unwrap(),
        lro: LroMode::Sync,
        throttling: Some(throttle),
        ..Default::default()
    })
    .await
    .unwrap();
    let limits = RateLimits {
        compute_writes: Bucket {
            size: 10.0,
            per_sec: 40.0 * 0.92,
        },
        ..RateLimits::default()
    };
    let client = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            max_attempts: 1,
            rate_limits: Some(limits),
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new("sim-token")),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..VMS {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai(): {}}}});
            c.write(Method::PATCH, &vm(i), "2024-11-01", &body).await
        }));
    }
    // The scheduler is starved twice: nothing runs (neither the client's dispatcher nor the
    // simulator) for 300 ms, then everything that waited is released at once.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.unwrap().is_err() {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let c = sim.counters();
    assert_eq!(
        (c.throttled, c.throttled_compute, c.throttled_writes),
        (0, 0, 0),
        "429s seen"
    );
    assert_eq!(failed, 0);
    assert_eq!(c.writes, VMS as u64);
    // The rate the simulator saw: at most the bucket plus its refill over the run.
    assert!(
        (VMS as f64) <= 10.0 + 40.0 * elapsed + 1.0,
        "{VMS} PATCHes in {elapsed:.2} s"
    );
    assert!(client.stats().paced > 0, "the client held requests back");
}

/// Resource Graph's quota headers are followed: with a quota tighter than the client's own
/// bucket (5 queries per 2 s window), `x-ms-user-quota-remaining: 0` lowers the bucket and
/// `x-ms-user-quota-resets-after` gates the next query, so no query meets a 429.
#[tokio::test]
async fn resource_graph_quota_headers_keep_queries_under_the_quota() {
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&format!("virtualMachines:\n  - id: {}\n", vm(0))).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    sim.set_resource_graph_quota(5, Duration::from_secs(2));
    let client = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            max_inline_wait: Duration::from_secs(5),
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new("sim-token")),
    )
    .unwrap();
    for _ in 0..12 {
        let (rows, pages) = client.query_identities(&[SUB.to_string()]).await.unwrap();
        assert_eq!((rows.len(), pages), (1, 1));
    }
    let c = sim.counters();
    assert_eq!(
        (c.resource_graph_queries, c.resource_graph_throttled),
        (12, 0)
    );
    assert!(client.stats().paced > 0);
}
