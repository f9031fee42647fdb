//! The client and engine against the simulator: coalescing, ownership, errors, retries,
//! throttling and long-running operations.

use std::time::Duration;

use serde_json::json;
use vmidentity_azure::{ErrorClass, Method};
use vmidentity_simulator::{FaultRule, LroMode, SimConfig, WorldSeed};
use vmidentity_tests::*;

fn one_vm(identity: &str) -> String {
    let ident = if identity.is_empty() {
        String::new()
    } else {
        format!("    identity:\n      {identity}\n")
    };
    world(&format!("virtualMachines:\n  - id: {}\n{ident}", vm("vm1")))
}

fn class_of(r: &vmidentity::engine::TargetResult) -> Option<ErrorClass> {
    match &r.error {
        Some(vmidentity::engine::EngineError::Azure(a)) => Some(a.class()),
        _ => None,
    }
}

#[tokio::test]
async fn two_objects_on_one_vm_get_one_get_and_one_patch() {
    let h = Harness::new(&one_vm("")).await;
    let a = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    });
    let b = object("b", &vm("vm1").to_lowercase(), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID2")];
    });
    let results = h.apply(&[a, b]).await;
    assert_eq!(results.len(), 1);
    assert_eq!(h.sim.reads_for(&vm("vm1")), 1);
    assert_eq!(h.sim.writes_for(&vm("vm1")), 1);
    assert_eq!(
        h.patch_bodies(),
        vec![json!({"identity": {"type": "SystemAssigned, UserAssigned",
            "userAssignedIdentities": {uai("ID1"): {}, uai("ID2"): {}}}})]
    );
}

#[tokio::test]
async fn identities_nobody_applied_survive_and_live_spelling_is_used_for_removal() {
    let live_id1 = uai("ID1").to_lowercase();
    let h = Harness::new(&one_vm(&format!(
        "type: UserAssigned\n      userAssignedIdentities: [{live_id1}, {}]",
        uai("ID3")
    )))
    .await;
    let o = object("a", &vm("vm1"), |_| {}).with_applied(owned(&[uai("ID1")]));
    let results = h.apply(&[o]).await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    // ID1 is removed under the spelling ARM has; ID3 (nobody applied it) stays.
    assert_eq!(
        h.patch_bodies(),
        vec![
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {live_id1: null}}})
        ]
    );
    assert_eq!(
        h.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["id3".into()])
    );
}

#[tokio::test]
async fn a_user_assigned_identity_that_does_not_exist_is_refused_then_left_out() {
    let h = Harness::new(&one_vm("type: SystemAssigned")).await;
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1"), uai("nope")]
    });
    let results = h.apply(&[o]).await;
    // ARM refuses the whole PATCH (nothing applied), then the rest goes without the bad ID.
    let statuses = h.patch_statuses();
    assert_eq!(statuses, vec![400, 200]);
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    let bad: Vec<String> = results[0]
        .bad_identities
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(bad, vec![uai("nope")]);
    assert_eq!(
        h.identity(&vm("vm1")),
        ("SystemAssigned, UserAssigned".into(), vec!["id1".into()])
    );
}

#[tokio::test]
async fn a_missing_target_is_target_not_found() {
    let h = Harness::new(&one_vm("")).await;
    let o = object("a", &vm("gone"), |r| r.system_assigned = Some(true));
    let results = h.apply(&[o]).await;
    assert_eq!(class_of(&results[0]), Some(ErrorClass::TargetNotFound));
    assert_eq!(h.sim.counters().writes, 0);
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated_and_writes_nothing() {
    let h = Harness::new(&one_vm("")).await;
    let exec = Harness::executor(&h.sim, "not-the-token");
    let o = object("a", &vm("vm1"), |r| r.system_assigned = Some(true));
    let results = vmidentity::engine::apply(&exec, vec![o], 1).await;
    assert_eq!(class_of(&results[0]), Some(ErrorClass::Unauthenticated));
    assert_eq!(h.sim.counters().writes, 0);
}

#[tokio::test]
async fn throttling_with_a_short_retry_after_is_waited_out() {
    let h = Harness::new(&one_vm("")).await;
    h.sim
        .add_fault(FaultRule::throttle(1).method("PATCH").times(1));
    let o = object("a", &vm("vm1"), |r| r.system_assigned = Some(true));
    let started = std::time::Instant::now();
    let results = h.apply(&[o]).await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    let stats = h.exec.client().stats();
    assert_eq!(stats.throttled, 1);
    let patches = h.patch_statuses();
    assert_eq!(patches, vec![429, 200]);
    assert_eq!(h.identity(&vm("vm1")).0, "SystemAssigned");
}

#[tokio::test]
async fn a_long_retry_after_is_returned_and_gates_the_subscription() {
    let h = Harness::new(&one_vm("")).await;
    h.sim
        .add_fault(FaultRule::throttle(30).method("PATCH").times(1));
    let o = object("a", &vm("vm1"), |r| r.system_assigned = Some(true));
    let results = h.apply(std::slice::from_ref(&o)).await;
    let err = match &results[0].error {
        Some(vmidentity::engine::EngineError::Azure(a)) => a.clone(),
        other => panic!("expected a throttling error, got {other:?}"),
    };
    assert_eq!(err.class(), ErrorClass::Throttled);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    // The subscription's writes are held back without asking ARM again; reads still go.
    let before = h.sim.counters().requests;
    let again = h.apply(&[o]).await;
    assert_eq!(class_of(&again[0]), Some(ErrorClass::Throttled));
    let after = h.sim.counters().requests;
    assert_eq!(after - before, 1, "only the GET reached ARM");
}

#[tokio::test]
async fn server_errors_are_retried_and_the_patch_applied_once() {
    let h = Harness::new(&one_vm("")).await;
    h.sim
        .add_fault(FaultRule::status(503).method("PATCH").times(2));
    h.sim.add_fault(
        FaultRule::status(500)
            .method("GET")
            .path_contains("virtualMachines")
            .times(1),
    );
    let o = object("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("ID1")]
    });
    let results = h.apply(&[o]).await;
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    let ok_patches = h.patches().filter(|r| r.status == 200).count();
    assert_eq!(ok_patches, 1);
    assert_eq!(
        h.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["id1".into()])
    );
}

async fn lro_case(mode: LroMode, polls: u32, min: Duration) {
    let seed = WorldSeed::from_yaml_str(&one_vm("")).expect("world");
    let h = Harness::with_config(SimConfig {
        seed,
        lro: mode,
        lro_polls: polls,
        min_operation_duration: min,
        ..SimConfig::default()
    })
    .await;
    let o = object("a", &vm("vm1"), |r| r.system_assigned = Some(true));
    let results = h.apply(&[o]).await;
    assert!(
        results[0].error.is_none(),
        "{mode:?}: {:?}",
        results[0].error
    );
    let live = results[0].live_after.as_ref().expect("final body");
    assert!(live.identity.system_assigned);
    assert!(
        live.identity.principal_id.is_some(),
        "{mode:?}: principal known after the write"
    );
    assert_eq!(
        h.sim.writes_for(&vm("vm1")),
        1,
        "{mode:?}: the PATCH is never re-sent"
    );
    assert_eq!(
        h.sim.provisioning_state_of(&vm("vm1")).as_deref(),
        Some("Succeeded")
    );
}

#[tokio::test]
async fn long_running_operations_are_polled_not_resent() {
    lro_case(LroMode::Sync, 0, Duration::ZERO).await;
    lro_case(LroMode::Async200, 3, Duration::ZERO).await;
    lro_case(LroMode::Async202, 2, Duration::ZERO).await;
    lro_case(LroMode::Async200, 1, Duration::from_millis(600)).await;
}

#[tokio::test]
async fn a_conditional_write_sends_if_match_and_a_412_is_sent_once() {
    let h = Harness::new(&one_vm("")).await;
    let client = h.exec.client();
    let body = json!({"identity": {"type": "SystemAssigned"}});
    let err = client
        .write_if_match(
            Method::PATCH,
            &vm("vm1"),
            "2024-11-01",
            &body,
            Some("\"9\""),
        )
        .await
        .expect_err("stale tag refused");
    assert_eq!(err.class(), ErrorClass::PreconditionFailed);
    assert_eq!(err.status(), Some(412));
    assert_eq!(err.code(), Some("PreconditionFailed"));
    // Not retried by the client: the precondition would not hold the second time either.
    assert_eq!(h.sim.writes_for(&vm("vm1")), 1);
    assert_eq!(h.identity(&vm("vm1")).0, "None", "nothing applied");
    let answer = client
        .write_if_match(
            Method::PATCH,
            &vm("vm1"),
            "2024-11-01",
            &body,
            Some("\"1\""),
        )
        .await
        .expect("current tag accepted");
    assert_eq!(answer["etag"], "\"2\"");
    let sent: Vec<Option<String>> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.if_match)
        .collect();
    assert_eq!(sent, vec![Some("\"9\"".into()), Some("\"1\"".into())]);
}
