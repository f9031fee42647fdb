//! The controller end to end: a real API server and etcd, the ARM simulator, and the real
//! `vmidentity controller` process. Each test has its own namespace, simulator and controller.

#[path = "e2e/harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;
use serde_json::json;
use vmidentity_simulator::FaultRule;

fn seeded_vm(name: &str, identity_yaml: &str) -> String {
    format!("  - id: {}\n    identity:\n{identity_yaml}", vm(name))
}

#[tokio::test]
async fn converges_and_reports_status() {
    let env = Env::new("e2e-converge", &world(&["vm1"], "")).await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "systemAssigned": true, "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("create");
    let o = env.wait_for("web", 30, "Ready", is_ready).await;
    assert_eq!(
        env.identity(&vm("vm1")),
        ("SystemAssigned, UserAssigned".into(), vec!["u1".into()])
    );
    let st = o.status.expect("status");
    assert_eq!(
        st.applied.expect("applied").user_assigned_identities,
        vec![uai("u1")]
    );
    let principals = st.principals.expect("principals");
    assert!(principals.system_assigned.is_some());
    assert!(principals.user_assigned.contains_key(&uai("u1")));
    assert_eq!(st.target_name.as_deref(), Some("vm1"));
    assert_eq!(st.user_assigned_count, Some(1));
    assert!(
        o.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"vmidentity.dev/finalizer".to_string())
    );
    // Resyncs (every 3 s here) find nothing to do.
    let patches = env.accepted_patches().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.accepted_patches().len(), patches);
    env.cleanup().await;
}

#[tokio::test]
async fn two_objects_on_one_vm_give_one_get_and_one_patch() {
    let env = Env::new("e2e-coalesce", &world(&["vm1"], "")).await;
    env.create(
        "a",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("a");
    env.create("b", json!({"target": vm("vm1").to_lowercase(), "systemAssigned": true, "userAssignedIdentities": [uai("u2")]}))
        .await
        .expect("b");
    let _c = env.controller("a");
    env.wait_for("a", 30, "Ready", is_ready).await;
    env.wait_for("b", 30, "Ready", is_ready).await;
    assert_eq!(
        env.accepted_patches(),
        vec![json!({"identity": {"type": "SystemAssigned, UserAssigned",
            "userAssignedIdentities": {uai("u1"): {}, uai("u2"): {}}}})]
    );
    assert_eq!(env.sim.writes_for(&vm("vm1")), 1);
    env.cleanup().await;
}

/// `kubectl apply -f dir/` on a running controller: two objects of one VM created one right
/// after the other are coalesced (the controller's debounce window) into one PATCH.
#[tokio::test]
async fn objects_applied_together_to_a_running_controller_give_one_patch() {
    let env = Env::new("e2e-debounce", &world(&["vm1", "vm0"], "")).await;
    let _c = env.controller("a");
    // The controller is up and watching (its first object converged).
    env.create(
        "warm",
        json!({"target": vm("vm0"), "userAssignedIdentities": [uai("u3")]}),
    )
    .await
    .expect("warm");
    env.wait_for("warm", 30, "Ready", is_ready).await;
    env.create(
        "a",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("a");
    env.create("b", json!({"target": vm("vm1"), "systemAssigned": true}))
        .await
        .expect("b");
    env.wait_for("a", 30, "Ready", is_ready).await;
    env.wait_for("b", 30, "Ready", is_ready).await;
    assert_eq!(env.sim.writes_for(&vm("vm1")), 1);
    assert_eq!(
        env.identity(&vm("vm1")),
        ("SystemAssigned, UserAssigned".into(), vec!["u1".into()])
    );
    env.cleanup().await;
}

#[tokio::test]
async fn editing_an_object_removes_with_null_and_deletion_detaches_or_retains() {
    let env = Env::new("e2e-edit", &world(&["vm1", "vm2"], "")).await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1"), uai("u2")]}),
    )
    .await
    .expect("web");
    env.create("keep", json!({"target": vm("vm2"), "userAssignedIdentities": [uai("u3")], "deletionPolicy": "Retain"}))
        .await
        .expect("keep");
    env.wait_for("web", 30, "Ready", is_ready).await;
    env.wait_for("keep", 30, "Ready", is_ready).await;

    env.patch_spec("web", json!({"userAssignedIdentities": [uai("u1")]}))
        .await;
    env.wait_for("web", 30, "u2 removed", |o| {
        is_ready(o)
            && o.status
                .as_ref()
                .and_then(|s| s.applied.as_ref())
                .is_some_and(|a| a.user_assigned_identities.len() == 1)
    })
    .await;
    assert!(env.accepted_patches().contains(
        &json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uai("u2"): null}}})
    ));
    assert_eq!(env.identity(&vm("vm1")).1, vec!["u1".to_string()]);

    // Detach (default): the object goes, and so does what it applied.
    env.api
        .delete("web", &Default::default())
        .await
        .expect("delete web");
    env.wait_gone("web", 30).await;
    assert_eq!(env.identity(&vm("vm1")), ("None".into(), vec![]));
    // Retain: the object goes, the identity stays.
    env.api
        .delete("keep", &Default::default())
        .await
        .expect("delete keep");
    env.wait_gone("keep", 30).await;
    assert_eq!(env.identity(&vm("vm2")).1, vec!["u3".to_string()]);
    // ... and says so in an Event (issue 14 item 9).
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let retained: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Retained"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("keep"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        retained.len() == 1
            && retained[0].contains("deletionPolicy Retain")
            && retained[0].contains("u3"),
        "{retained:?}"
    );
    env.cleanup().await;
}

/// The object that held the target first keeps it: `on` is Ready when `off` arrives asking
/// for the opposite; `off` is Stalled with reason Conflict naming `on`, `on` stays Ready and
/// nothing more is written. Fixing the newcomer resolves it.
#[tokio::test]
async fn a_conflicting_newcomer_is_refused_and_the_working_object_keeps_the_target() {
    let env = Env::new("e2e-conflict", &world(&["vm1"], "")).await;
    let _c = env.controller("a");
    env.create("on", json!({"target": vm("vm1"), "systemAssigned": true}))
        .await
        .expect("on");
    env.wait_for("on", 30, "Ready", is_ready).await;
    let writes = env.sim.counters().writes;
    env.create("off", json!({"target": vm("vm1"), "systemAssigned": false}))
        .await
        .expect("off");
    let off = env
        .wait_for("off", 30, "Stalled Conflict", |o| {
            stalled_with(o, "Conflict")
        })
        .await;
    let msg = off
        .status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains(&format!("{}/on held the target first and keeps it", env.ns)),
        "{msg}"
    );
    // Several resync periods (3 s): `on` stays Ready, the VM keeps its identity.
    for _ in 0..20 {
        let on = env.get("on").await.expect("on");
        assert!(is_ready(&on), "{:#?}", on.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.identity(&vm("vm1")).0, "SystemAssigned");
    assert_eq!(env.sim.counters().writes, writes);
    // Fixing the newcomer resolves it.
    env.patch_spec("off", json!({"systemAssigned": true})).await;
    env.wait_for("off", 30, "Ready", is_ready).await;
    env.wait_for("on", 30, "Ready", is_ready).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_vm_deleted_under_the_object_stalls_it_and_deletion_never_sticks() {
    let env = Env::new("e2e-vmgone", &world(&["vm1"], "")).await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for("web", 30, "Ready", is_ready).await;
    assert!(env.sim.delete_resource(&vm("vm1")));
    env.wait_for("web", 30, "Stalled TargetNotFound", |o| {
        stalled_with(o, "TargetNotFound")
    })
    .await;
    env.api
        .delete("web", &Default::default())
        .await
        .expect("delete");
    env.wait_gone("web", 30).await;
    // An object that never reconciled (target never existed) deletes as well.
    env.create("never", json!({"target": vm("nope")}))
        .await
        .expect("never");
    env.wait_for("never", 30, "Stalled TargetNotFound", |o| {
        stalled_with(o, "TargetNotFound")
    })
    .await;
    env.api
        .delete("never", &Default::default())
        .await
        .expect("delete");
    env.wait_gone("never", 30).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_429_storm_is_waited_out_by_requeueing_then_converges_with_one_patch() {
    let env = Env::new("e2e-throttle", &world(&["vm1"], "")).await;
    env.sim
        .add_fault(FaultRule::throttle(2).method("PATCH").times(3));
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for("web", 30, "Reconciling Throttled", |o| {
        condition(o, "Reconciling") == Some(("True".into(), "Throttled".into()))
    })
    .await;
    env.wait_for("web", 60, "Ready", is_ready).await;
    assert_eq!(env.accepted_patches().len(), 1, "no extra writes");
    assert_eq!(env.sim.counters().throttled, 3);
    env.cleanup().await;
}

#[tokio::test]
async fn killed_mid_reconcile_then_restarted_converges_without_duplicates() {
    let extra = seeded_vm(
        "vm1",
        &format!(
            "      type: UserAssigned\n      userAssignedIdentities: [{}]\n",
            uai("u4")
        ),
    );
    let env = Env::with_config("e2e-kill", &world(&[], &extra), |c| {
        c.min_operation_duration = Duration::from_secs(3);
    })
    .await;
    let mut c1 = env.controller("first");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1"), uai("u2")]}),
    )
    .await
    .expect("web");
    // The PATCH is accepted; the controller is polling the operation: kill it there.
    env.wait_until(30, "the PATCH to arrive", || {
        !env.accepted_patches().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c1.kill();
    let _c2 = env.controller("second");
    let o = env.wait_for("web", 60, "Ready", is_ready).await;
    assert_eq!(env.accepted_patches().len(), 1, "nothing added twice");
    // u4 was there before and nobody applied it: untouched.
    assert_eq!(
        env.identity(&vm("vm1")).1,
        vec!["u1".to_string(), "u2".into(), "u4".into()]
    );
    let applied = o.status.unwrap().applied.unwrap().user_assigned_identities;
    assert_eq!(applied, vec![uai("u1"), uai("u2")]);
    env.cleanup().await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes() {
    let env = Env::new("e2e-leader", &world(&["vm1"], "")).await;
    let mut a = env.controller("replica-a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = env.controller("replica-b");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for("web", 30, "Ready", is_ready).await;
    let ma = a.metrics().await;
    let mb = b.metrics().await;
    assert!(ma.contains("vmidentity_leader 1"), "{ma}");
    assert!(mb.contains("vmidentity_leader 0"), "{mb}");
    assert!(
        !mb.contains("vmidentity_arm_requests_total{"),
        "the follower sent ARM requests: {mb}"
    );
    // The leader goes away gracefully: the follower takes over.
    let started = std::time::Instant::now();
    assert_eq!(a.terminate().await, Some(0), "graceful exit");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
    env.patch_spec(
        "web",
        json!({"userAssignedIdentities": [uai("u1"), uai("u2")]}),
    )
    .await;
    env.wait_for("web", 30, "Ready after failover", |o| {
        is_ready(o) && o.status.as_ref().and_then(|s| s.user_assigned_count) == Some(2)
    })
    .await;
    assert!(b.metrics().await.contains("vmidentity_leader 1"));
    env.cleanup().await;
}

#[tokio::test]
async fn the_api_server_refuses_bad_objects_with_a_message_that_says_what_to_fix() {
    let env = Env::new("e2e-cel", &world(&[], "")).await;
    // The duplicate is named (messageExpression), not only `Invalid value: "array"`.
    let dup = format!(
        "must not list the same identity twice (resource IDs are case-insensitive); listed more than once: {}",
        uai("u1")
    );
    let bad: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "target",
            json!({"target": uai("u1")}),
            "spec.target must be a VM or VMSS resource ID",
        ),
        (
            "uai",
            json!({"target": vm("vm1"), "userAssignedIdentities": [vm("vm2")]}),
            "each userAssignedIdentities entry must be a user-assigned identity ID",
        ),
        (
            "dup",
            json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1"), uai("u1").to_uppercase().replace("/SUBSCRIPTIONS/", "/subscriptions/")]}),
            &dup,
        ),
        (
            "role",
            json!({"target": vm("vm1"), "roleAssignments": [{"identity": uai("u9"), "role": "Reader", "scope": SUB}]}),
            "each roleAssignments[].identity must be",
        ),
        (
            "group",
            json!({"target": vm("vm1"), "groupMemberships": [{"identity": "Nobody", "groupObjectId": "6f1c8a2e-3b5d-4c7a-9e21-0d4b5a6c7e80"}]}),
            "each groupMemberships[].identity must be",
        ),
        (
            "sysfalse",
            json!({"target": vm("vm1"), "systemAssigned": false, "roleAssignments": [{"identity": "SystemAssigned", "role": "Reader", "scope": SUB}]}),
            "systemAssigned is false",
        ),
        (
            "mode",
            json!({"target": vm("vm1"), "mode": "Replace"}),
            "Unsupported value: \"Replace\"",
        ),
        (
            "policy",
            json!({"target": vm("vm1"), "deletionPolicy": "Orphan"}),
            "Unsupported value: \"Orphan\"",
        ),
        (
            "api",
            json!({"target": vm("vm1"), "armApiVersion": "latest"}),
            "spec.armApiVersion",
        ),
        (
            "unpublished",
            json!({"target": vm("vm1"), "armApiVersion": "2025-04-02"}),
            "spec.armApiVersion must be an api-version Microsoft.Compute publishes",
        ),
    ];
    for (name, spec, want) in bad {
        let obj = json!({"apiVersion": "vmidentity.dev/v1alpha1", "kind": "VirtualMachineIdentity",
                         "metadata": {"name": format!("bad-{name}"), "namespace": env.ns}, "spec": spec});
        let err = env.create_raw(obj).await.expect_err(name);
        let msg = match err {
            kube::Error::Api(e) => {
                assert_eq!(e.code, 422, "{name}: {}", e.message);
                e.message
            }
            other => panic!("{name}: {other}"),
        };
        assert!(
            msg.contains(want),
            "{name}: {msg:?} should contain {want:?}"
        );
    }
    // The target cannot change after creation.
    env.create("ok", json!({"target": vm("vm1")}))
        .await
        .expect("ok");
    let err = env
        .api
        .patch(
            "ok",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"spec": {"target": vm("vm2")}})),
        )
        .await
        .expect_err("immutable");
    assert!(
        err.to_string().contains("spec.target is immutable"),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn drift_is_repaired_at_resync_with_an_event_that_says_what_changed() {
    let env = Env::new("e2e-drift", &world(&["vm1"], "")).await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for("web", 30, "Ready", is_ready).await;
    // Someone removes the identity out of band.
    env.sim
        .set_identity(&vm("vm1"), json!({"type": "None"}))
        .expect("set identity");
    env.wait_until(30, "the drift to be repaired", || {
        env.identity(&vm("vm1")).1 == vec!["u1".to_string()]
    })
    .await;
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.expect("events");
        let drift: Vec<_> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("DriftRepaired"))
            .collect();
        if let Some(e) = drift.first() {
            let note = e.note.clone().unwrap_or_default();
            assert!(
                note.contains("add user-assigned identity") && note.contains("u1"),
                "{note}"
            );
            assert_eq!(
                e.regarding.as_ref().and_then(|r| r.name.as_deref()),
                Some("web")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no DriftRepaired event: {:?}",
            list.items
                .iter()
                .map(|e| e.reason.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn role_assignments_and_group_memberships_through_the_controller() {
    let group = "0f6c5a1e-1111-4c7a-9e21-0d4b5a6c7e81";
    let rg = format!("{SUB}/resourceGroups/rg-e2e");
    let env = Env::new(
        "e2e-grants",
        &world(
            &["vm1"],
            &format!("groups:\n  - id: {group}\n    displayName: readers\n"),
        ),
    )
    .await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "systemAssigned": true, "userAssignedIdentities": [uai("u1")],
               "roleAssignments": [{"identity": "SystemAssigned", "role": "Reader", "scope": rg},
                                   {"identity": uai("u1"), "role": "Storage Blob Data Reader", "scope": rg}],
               "groupMemberships": [{"identity": uai("u1"), "groupObjectId": group}]}),
    )
    .await
    .expect("web");
    let o = env
        .wait_for("web", 30, "Ready with grants", |o| {
            is_ready(o)
                && o.status
                    .as_ref()
                    .and_then(|s| s.applied.as_ref())
                    .is_some_and(|a| {
                        a.role_assignments.len() == 2 && a.group_memberships.len() == 1
                    })
        })
        .await;
    let principals = o.status.unwrap().principals.unwrap();
    let sys = principals.system_assigned.unwrap();
    let u1 = principals
        .user_assigned
        .get(&uai("u1"))
        .expect("u1's principal")
        .to_string();
    assert_eq!(env.sim.role_assignments_of(&sys).len(), 1);
    assert_eq!(env.sim.role_assignments_of(&u1).len(), 1);
    assert_eq!(env.sim.member_of(&u1), vec![group.to_string()]);
    // Detach on deletion: the grants go first, then the identity; the system identity stays.
    env.api
        .delete("web", &Default::default())
        .await
        .expect("delete");
    env.wait_gone("web", 30).await;
    assert!(env.sim.role_assignments_of(&sys).is_empty());
    assert!(env.sim.member_of(&u1).is_empty());
    assert_eq!(env.identity(&vm("vm1")), ("SystemAssigned".into(), vec![]));
    env.cleanup().await;
}

#[tokio::test]
async fn resync_reads_resource_graph_pages_not_every_vm_and_gets_only_the_drifted_one() {
    let vms = ["vm0", "vm1", "vm2", "vm3", "vm4"];
    let env = Env::new("e2e-fleet", &world(&vms, "")).await;
    let _c = env.controller("a");
    for v in vms {
        env.create(
            v,
            json!({"target": vm(v), "userAssignedIdentities": [uai("u1")]}),
        )
        .await
        .expect("create");
    }
    for v in vms {
        env.wait_for(v, 30, "Ready", is_ready).await;
    }
    env.sim.reset_counters();
    // Two resync periods (3 s each) of a converged fleet.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let c = env.sim.counters();
    assert_eq!(
        (c.reads, c.writes),
        (0, 0),
        "steady state: no VM GETs, no writes: {c:?}"
    );
    assert!(c.resource_graph_queries >= 2, "{c:?}");
    // Drift on one VM: it alone is read (GET) and repaired.
    env.sim
        .set_identity(&vm("vm3"), json!({"type": "None"}))
        .expect("drift");
    env.wait_until(30, "vm3 repaired", || {
        env.identity(&vm("vm3")).1 == vec!["u1".to_string()]
    })
    .await;
    for v in ["vm0", "vm1", "vm2", "vm4"] {
        assert_eq!(env.sim.reads_for(&vm(v)), 0, "{v} was not read");
    }
    assert!(env.sim.reads_for(&vm("vm3")) >= 1);
    assert_eq!(env.sim.writes_for(&vm("vm3")), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn workload_identity_logs_in_and_a_wrong_secret_is_reported_in_status() {
    use vmidentity_simulator::AppConfig;
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let issuer = "https://oidc.example/cluster/";
    let subject = "system:serviceaccount:vmidentity-system:vmidentity";
    let env = Env::with_config("e2e-auth", &world(&["vm1", "vm2"], ""), |c| {
        c.apps = vec![
            AppConfig::federated(
                "aaaaaaaa-0000-0000-0000-000000000001",
                tenant,
                issuer,
                subject,
            ),
            AppConfig::with_secret("aaaaaaaa-0000-0000-0000-000000000002", tenant, "right"),
        ];
    })
    .await;
    let file = federated_token_file(issuer, subject, "token");
    let url = env.sim.base_url();
    let _wi = ControllerProc::start_with_env(
        &env.ns,
        &env.sim,
        "wi",
        &[],
        &[
            ("VMIDENTITY_AUTH", "workloadIdentity"),
            ("AZURE_AUTHORITY_HOST", &url),
            ("AZURE_TENANT_ID", tenant),
            ("AZURE_CLIENT_ID", "aaaaaaaa-0000-0000-0000-000000000001"),
            ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
        ],
    );
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for("web", 30, "Ready through workload identity", is_ready)
        .await;
    drop(_wi);
    // A wrong client secret: a clear reason and message in the status, no crash.
    let mut bad = ControllerProc::start_with_env(
        &env.ns,
        &env.sim,
        "secret",
        &[],
        &[
            ("VMIDENTITY_AUTH", "clientSecret"),
            ("AZURE_AUTHORITY_HOST", &url),
            ("AZURE_TENANT_ID", tenant),
            ("AZURE_CLIENT_ID", "aaaaaaaa-0000-0000-0000-000000000002"),
            ("AZURE_CLIENT_SECRET", "wrong"),
        ],
    );
    env.create("db", json!({"target": vm("vm2"), "systemAssigned": true}))
        .await
        .expect("db");
    let o = env
        .wait_for("db", 30, "Stalled AuthenticationFailed", |o| {
            stalled_with(o, "AuthenticationFailed")
        })
        .await;
    let msg = o
        .status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("AADSTS7000215"), "{msg}");
    assert!(
        bad.terminate().await.is_some(),
        "still running until told to stop"
    );
    let _ = std::fs::remove_file(&file);
    env.cleanup().await;
}

/// The controller's event recorder on a real API server: a repeat counts on the first Event
/// (series), a different note is a new Event, and a deleted Event is created afresh.
#[tokio::test]
async fn repeated_events_count_on_one_event() {
    use k8s_openapi::api::events::v1::Event;
    use kube::Resource;
    use vmidentity::operator::events::{EventRecorder, EventType, Published};

    let env = Env::new("e2e-events", &world(&["vm1"], "")).await;
    let o = env
        .create("web", json!({"target": vm("vm1")}))
        .await
        .expect("create");
    let regarding = o.object_ref(&());
    let rec = EventRecorder::new(env.client.clone(), "vmidentity-e2e", "test-instance");
    let publish = |note: &'static str| {
        let rec = &rec;
        let regarding = regarding.clone();
        async move {
            rec.publish(
                &regarding,
                EventType::Warning,
                "Reconcile",
                "ArmThrottled",
                note,
            )
            .await
            .expect("publish")
        }
    };
    assert_eq!(publish("throttled (429)").await, Published::Created);
    assert_eq!(publish("throttled (429)").await, Published::Counted);
    assert_eq!(publish("throttled (429)").await, Published::Counted);
    assert_eq!(publish("unavailable (503)").await, Published::Created);

    let events: kube::Api<Event> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let ours = || async {
        let mut list: Vec<Event> = events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("vmidentity-e2e"))
            .collect();
        list.sort_by_key(|e| e.note.clone());
        list
    };
    let list = ours().await;
    assert_eq!(list.len(), 2, "{list:?}");
    let first = &list[0];
    assert_eq!(first.note.as_deref(), Some("throttled (429)"));
    assert_eq!(first.type_.as_deref(), Some("Warning"));
    assert_eq!(first.reason.as_deref(), Some("ArmThrottled"));
    assert_eq!(first.reporting_instance.as_deref(), Some("test-instance"));
    assert_eq!(
        first.regarding.as_ref().and_then(|r| r.uid.clone()),
        o.metadata.uid
    );
    assert_eq!(first.series.as_ref().map(|s| s.count), Some(3));
    assert!(list[1].series.is_none());

    // The Event goes (expired, or deleted by hand): the next repeat starts a new one.
    let name = first.metadata.name.clone().expect("name");
    events
        .delete(&name, &Default::default())
        .await
        .expect("delete");
    assert_eq!(publish("throttled (429)").await, Published::Created);
    let list = ours().await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_ne!(list[0].metadata.name.as_deref(), Some(name.as_str()));
    assert!(list[0].series.is_none());
    env.cleanup().await;
}

/// A refusal is logged once at WARN, naming the object (namespace/name), the target and the
/// reason, however many resyncs see it again; the text log written into a file has no colour
/// codes; the start-up line states the watch scope.
#[tokio::test]
async fn a_refusal_is_logged_once_at_warn_with_object_target_and_reason() {
    let env = Env::new("e2e-warn", &world(&["vm1"], "")).await;
    env.delete_policy().await;
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("create");
    env.wait_for("web", 30, "denied", |o| stalled_with(o, "PolicyDenied"))
        .await;
    // Two resyncs (every 3 s) look at it again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let path = std::env::temp_dir().join(format!("vmidentity-e2e-{}-a.log", env.ns));
    let log = std::fs::read_to_string(&path).expect("controller log");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("refused:"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    let line = refusals[0];
    assert!(line.contains(&format!("object={}/web", env.ns)), "{line}");
    assert!(line.contains(&format!("target={}", vm("vm1"))), "{line}");
    assert!(line.contains("reason=\"PolicyDenied\""), "{line}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    assert!(
        log.contains(&format!(
            "controller running: watching namespace {}",
            env.ns
        )),
        "{log}"
    );
    env.cleanup().await;
}

/// Issue 15: an object created with `vmidentity.dev/<key>: <value>` and `spec`.
async fn create_annotated(
    env: &Env,
    name: &str,
    annotations: serde_json::Value,
    spec: serde_json::Value,
) {
    env.create_raw(json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentity",
        "metadata": {"name": name, "namespace": env.ns, "annotations": annotations},
        "spec": spec,
    }))
    .await
    .expect("create");
}

async fn annotate(env: &Env, name: &str, annotations: serde_json::Value) {
    env.api
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .expect("annotate");
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Issue 15 part 3 on the real API server: under `observe` the controller writes nothing to
/// ARM, Authorization or Graph (the simulator's write counters stay 0 across resyncs), shows
/// the drift (condition Drifted, status.pendingWrites, vmidentity_drifted_objects 1); switched
/// to `manage` by the annotation alone (no spec change), it sends exactly the pending writes:
/// one identity PATCH, one role assignment PUT, one Graph member POST, nothing more.
#[tokio::test]
async fn observe_writes_nothing_then_manage_sends_exactly_the_pending_writes() {
    const GROUP: &str = "6f1c8a2e-3b5d-4c7a-9e21-0d4b5a6c7e81";
    let rg = format!("{SUB}/resourceGroups/rg-e2e");
    let env = Env::new(
        "e2e-observe",
        &world(
            &["vm1"],
            &format!("groups:\n  - {{id: {GROUP}, displayName: readers}}\n"),
        ),
    )
    .await;
    let c = env.controller("a");
    create_annotated(
        &env,
        "web",
        json!({"vmidentity.dev/reconcile-policy": "observe"}),
        json!({"target": vm("vm1"), "systemAssigned": true, "userAssignedIdentities": [uai("u1")],
               "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": rg}],
               "groupMemberships": [{"identity": uai("u1"), "groupObjectId": GROUP}]}),
    )
    .await;
    let o = env
        .wait_for("web", 30, "Drifted", |o| {
            condition(o, "Drifted").is_some_and(|(s, _)| s == "True")
        })
        .await;
    assert_eq!(condition(&o, "Ready").map(|r| r.1), Some("Observed".into()));
    let st = o.status.expect("status");
    let pending = serde_json::to_value(&st.pending_writes).expect("json");
    let methods: Vec<&str> = pending
        .as_array()
        .expect("pending writes")
        .iter()
        .filter_map(|w| w["method"].as_str())
        .collect();
    assert_eq!(methods, ["PATCH", "PUT", "POST"], "{pending:#}");
    // The default api-version has entity tags: the PATCH is conditional on the etag read.
    let mut first = pending[0].clone();
    let if_match = first
        .as_object_mut()
        .and_then(|m| m.remove("ifMatch"))
        .unwrap_or_default();
    assert!(
        if_match.as_str().is_some_and(|e| !e.is_empty()),
        "{first:#}"
    );
    assert_eq!(
        first,
        json!({"method": "PATCH", "id": vm("vm1"), "apiVersion": "2025-04-01",
               "body": {"identity": {"type": "SystemAssigned, UserAssigned",
                                     "userAssignedIdentities": {uai("u1"): {}}}}})
    );
    // Resyncs (every 3 s) read and write nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = env.sim.counters();
    assert_eq!(
        (n.writes, n.authorization_writes, n.graph_writes),
        (0, 0, 0),
        "{n:?}"
    );
    assert_eq!(
        metric(&c.metrics().await, "vmidentity_drifted_objects"),
        Some(1.0)
    );

    annotate(
        &env,
        "web",
        json!({"vmidentity.dev/reconcile-policy": "manage"}),
    )
    .await;
    let o = env
        .wait_for("web", 30, "Ready Converged without Drifted", |o| {
            is_ready(o) && condition(o, "Drifted").is_none()
        })
        .await;
    let n = env.sim.counters();
    assert_eq!(
        (n.writes, n.authorization_writes, n.graph_writes),
        (1, 1, 1),
        "exactly the pending writes: {n:?}"
    );
    assert_eq!(env.accepted_patches(), vec![pending[0]["body"].clone()]);
    // The PUT is the pending one; u1 was not on the VM yet, so (as `plan` shows it) its
    // principal, and with it the assignment's name, were "(known after apply)".
    let put = env
        .sim
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("a PUT");
    let known_after = "(known after apply)";
    let pending_id = pending[1]["id"].as_str().expect("id");
    assert_eq!(
        pending_id.strip_suffix(known_after),
        put.path
            .rsplit_once('/')
            .map(|(scope, _)| format!("{scope}/"))
            .as_deref(),
        "{pending_id} vs {}",
        put.path
    );
    let body = put.body.expect("PUT body");
    let principal = body["properties"]["principalId"]
        .as_str()
        .expect("principal");
    let mut expected = pending[1]["body"].clone();
    assert_eq!(expected["properties"]["principalId"], known_after);
    expected["properties"]["principalId"] = json!(principal);
    assert_eq!(body, expected);
    assert!(o.status.expect("status").pending_writes.is_empty());
    assert_eq!(
        metric(&c.metrics().await, "vmidentity_drifted_objects"),
        Some(0.0)
    );
    env.cleanup().await;
}

/// Issue 15 part 2 on the real API server: an adopting object records the pre-existing
/// identity it lists without a write; dropping it from the spec then removes it from the VM,
/// and the identity nobody listed stays.
#[tokio::test]
async fn adoption_then_removal_detaches_what_was_adopted() {
    let extra = seeded_vm(
        "vm1",
        &format!(
            "      type: UserAssigned\n      userAssignedIdentities: [{}, {}]\n",
            uai("u1"),
            uai("u2")
        ),
    );
    let env = Env::new("e2e-adopt", &world(&[], &extra)).await;
    let _c = env.controller("a");
    create_annotated(
        &env,
        "web",
        json!({"vmidentity.dev/adopt": "true"}),
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await;
    env.wait_for("web", 30, "u1 adopted", |o| {
        is_ready(o)
            && o.status
                .as_ref()
                .and_then(|s| s.applied.as_ref())
                .is_some_and(|a| a.user_assigned_identities == vec![uai("u1")])
    })
    .await;
    assert_eq!(env.sim.writes_for(&vm("vm1")), 0, "adoption writes nothing");

    env.patch_spec("web", json!({"userAssignedIdentities": []}))
        .await;
    env.wait_until(30, "u1 removed", || {
        env.identity(&vm("vm1")) == ("UserAssigned".into(), vec!["u2".into()])
    })
    .await;
    assert_eq!(env.sim.writes_for(&vm("vm1")), 1);
    env.cleanup().await;
}

/// Issue 15's follow-up on the real API server: an object without adoption lists a role
/// assignment someone else made. Nothing is written to Authorization; the API server keeps
/// `status.heldNotAdopted` (the CRD's schema has it: an unknown status field would be pruned)
/// and there is exactly one `NotAdopted` Event across resyncs; dropping the line from the spec
/// deletes nothing.
#[tokio::test]
async fn a_listed_grant_someone_else_made_is_shown_and_never_removed_without_adoption() {
    use k8s_openapi::api::events::v1::Event;
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const THEIRS: &str = "77777777-7777-4777-8777-7777777777e2";
    let rg = format!("{SUB}/resourceGroups/rg-e2e");
    let extra = seeded_vm(
        "vm1",
        &format!(
            "      type: UserAssigned\n      userAssignedIdentities: [{}]\n",
            uai("u1")
        ),
    );
    let env = Env::new("e2e-held", &world(&[], &extra)).await;
    let identity = env.sim.identity_of(&vm("vm1")).expect("vm1");
    let principal = identity["userAssignedIdentities"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|u| u["principalId"].as_str())
        .expect("u1's principal")
        .to_string();
    let theirs = env
        .sim
        .create_role_assignment(&rg, Some(THEIRS), READER, &principal)
        .expect("made by hand");
    let theirs_id = theirs["id"].as_str().expect("id").to_string();
    let before = env.sim.counters();
    let _c = env.controller("a");
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")],
               "roleAssignments": [{"identity": uai("u1"), "role": "Reader", "scope": rg}]}),
    )
    .await
    .expect("create");
    let o = env
        .wait_for("web", 30, "Ready with heldNotAdopted", |o| {
            is_ready(o)
                && o.status
                    .as_ref()
                    .and_then(|s| s.held_not_adopted.as_ref())
                    .is_some_and(|h| {
                        h.role_assignments.len() == 1
                            && h.role_assignments[0].id.eq_ignore_ascii_case(&theirs_id)
                    })
        })
        .await;
    let st = o.status.expect("status");
    assert!(
        st.applied
            .as_ref()
            .is_none_or(|a| a.role_assignments.is_empty()),
        "not recorded: {:?}",
        st.applied
    );
    // Resyncs (every 3 s) say nothing more.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let events: kube::Api<Event> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let not_adopted: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("NotAdopted"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        not_adopted.len() == 1 && not_adopted[0].contains(THEIRS),
        "{not_adopted:?}"
    );

    env.patch_spec("web", json!({"roleAssignments": []})).await;
    let o = env
        .wait_for("web", 30, "Ready for the new generation", is_ready)
        .await;
    assert!(
        o.status
            .as_ref()
            .is_some_and(|s| s.held_not_adopted.is_none()),
        "{:?}",
        o.status
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = env.sim.counters();
    assert_eq!(
        after.authorization_writes, before.authorization_writes,
        "no role assignment written or deleted: {after:?}"
    );
    assert!(
        env.sim
            .role_assignments_of(&principal)
            .iter()
            .any(|a| a["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&theirs_id))),
        "someone else's assignment stays"
    );
    env.cleanup().await;
}

/// Issue 15 part 3: the Namespace's reconcile-policy annotation is watched. With resyncs
/// 10 minutes apart, only the Namespace watch can notice that it went from `observe` to
/// `manage`: the object converges within seconds, with the one PATCH.
#[tokio::test]
async fn a_namespace_switched_from_observe_to_manage_is_reconciled_at_once() {
    let env = Env::new("e2e-nspolicy", &world(&["vm1"], "")).await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(env.client.clone());
    let set_ns_policy = |value: serde_json::Value| {
        let namespaces = namespaces.clone();
        let ns = env.ns.clone();
        async move {
            namespaces
                .patch(
                    &ns,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                        "vmidentity.dev/reconcile-policy": value}}})),
                )
                .await
                .expect("annotate namespace");
        }
    };
    set_ns_policy(json!("observe")).await;
    // The controller's own default says manage: the Namespace's annotation wins over it.
    let c = ControllerProc::start(
        &env.ns,
        &env.sim,
        "a",
        &["--default-reconcile-policy", "manage"],
    );
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("create");
    env.wait_for("web", 30, "Drifted", |o| {
        condition(o, "Drifted").is_some_and(|(s, _)| s == "True")
    })
    .await;
    assert_eq!(env.sim.writes_for(&vm("vm1")), 0);
    drop(c);
    // Now with resyncs far apart.
    let b = ControllerProc::start(
        &env.ns,
        &env.sim,
        "b",
        &["--resync-seconds", "600", "--resync-mode", "get"],
    );
    // b leads and has made its start-up pass over the object.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = b.metrics().await;
        let passes: f64 = m
            .lines()
            .filter(|l| l.starts_with("vmidentity_reconciles_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if metric(&m, "vmidentity_leader") == Some(1.0) && passes >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never reconciled: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.sim.writes_for(&vm("vm1")), 0, "still observed");
    set_ns_policy(json!("manage")).await;
    env.wait_for("web", 15, "Ready Converged", |o| {
        is_ready(o) && condition(o, "Drifted").is_none()
    })
    .await;
    assert_eq!(env.sim.writes_for(&vm("vm1")), 1);
    set_ns_policy(serde_json::Value::Null).await;
    env.cleanup().await;
}

/// Issue 15: `vmidentity import` of a brownfield world (identities, role assignments and
/// group memberships made by hand), the objects applied to the API server, the controller
/// converges with 0 writes to ARM, Authorization and Graph.
#[tokio::test]
async fn imported_objects_converge_without_a_write() {
    let group = "0f6c5a1e-2222-4c7a-9e21-0d4b5a6c7e81";
    let rg = format!("{SUB}/resourceGroups/rg-e2e");
    let sys1 = "5e000000-0000-4000-8000-000000000001";
    let u1 = "5e000000-0000-4000-8000-0000000000a1";
    let extra = format!(
        r#"
  - id: {vm_a}
    identity:
      type: "SystemAssigned, UserAssigned"
      principalId: {sys1}
      userAssignedIdentities: [{u_1}]
  - id: {vm_b}
    identity: {{ type: UserAssigned, userAssignedIdentities: [{u_1}, {u_2}] }}
virtualMachineScaleSets:
  - id: {SUB}/resourceGroups/rg-e2e/providers/Microsoft.Compute/virtualMachineScaleSets/Pool.One
    identity: {{ type: SystemAssigned }}
groups:
  - {{ id: {group}, displayName: readers, members: [{u1}] }}
roleAssignments:
  - {{ scope: {rg}, roleDefinitionId: acdd72a7-3385-48ef-bd42-f606fba81ae7, principalId: {sys1} }}
  - {{ scope: {SUB}, roleDefinitionId: 2a2b9908-6ea1-4ae2-8e65-a410df84e7d1, principalId: {u1} }}
"#,
        vm_a = vm("Brown_A"),
        vm_b = vm("brown.b"),
        u_1 = uai("u1"),
        u_2 = uai("u2"),
    );
    // u1 gets a known principal: the world's UAIs are re-declared with one.
    let world_yaml = world(&[], &extra)
        .replace(
            &format!("  - id: {}\n", uai("u1")),
            &format!("  - id: {}\n    principalId: {u1}\n", uai("u1")),
        )
        .replace("virtualMachines:\n\n", "virtualMachines:\n");
    let env = Env::new("e2e-import", &world_yaml).await;
    let url = env.sim.base_url();
    let sub_id = SUB.trim_start_matches("/subscriptions/");
    // The simulator serves from this test's runtime: run the binary off it.
    let args: Vec<String> = [
        "import",
        "--subscription",
        sub_id,
        "--namespace",
        &env.ns,
        "--with-grants",
        "--with-groups",
        "--adopt",
        "-o",
        "json",
        "--endpoint",
        &url,
        "--token",
        TOKEN,
        "--graph-endpoint",
        &url,
        "--graph-token",
        vmidentity_testkit::GRAPH_TOKEN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vmidentity"))
            .args(&args)
            .output()
    })
    .await
    .expect("join")
    .expect("import runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let items = list["items"].as_array().cloned().expect("items");
    assert_eq!(items.len(), 3, "{list:#}");
    env.sim.reset_counters();
    for item in items {
        env.create_raw(item)
            .await
            .expect("the API server takes the imported object");
    }
    let _c = env.controller("a");
    let names: Vec<String> = env
        .api
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 3);
    for n in &names {
        env.wait_for(n, 60, "Ready", is_ready).await;
    }
    // A resync later, still nothing written.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = env.sim.counters();
    assert_eq!(
        (c.writes, c.authorization_writes, c.graph_writes),
        (0, 0, 0),
        "{c:?}"
    );
    assert!(env.accepted_patches().is_empty());
    env.cleanup().await;
}

/// With namespace credentials required, an object being deleted whose namespace lost its
/// Secret cannot release what it applied: it keeps its finalizer, is Stalled NoCredential,
/// and its condition says the way out. Annotated `vmidentity.dev/abandon=true`, it goes at
/// once, leaving its identity on the VM, with a Warning Event saying so.
#[tokio::test]
async fn a_deleting_object_without_its_secret_is_let_go_by_the_abandon_annotation() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    use vmidentity_simulator::AppConfig;
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "bbbbbbbb-0000-0000-0000-0000000000c7";
    let env = Env::with_config("e2e-abandon", &world(&["vm1"], ""), |c| {
        c.apps = vec![AppConfig::with_secret(CLIENT, TENANT, "team-secret")]
    })
    .await;
    env.set_policy(allow_all_binding(&env.ns, &[CLIENT])).await;
    env.put_secret_in(
        &env.ns,
        "vmidentity-credential",
        json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT, "AZURE_CLIENT_SECRET": "team-secret"}),
    )
    .await;
    let _c = env.controller_requiring_credentials("a", false);
    env.create(
        "web",
        json!({"target": vm("vm1"), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("create");
    env.wait_for("web", 30, "Ready", is_ready).await;
    assert_eq!(
        env.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["u1".into()])
    );

    // The Secret goes, then the object is deleted: it cannot release u1, so it stays.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .delete("vmidentity-credential", &Default::default())
        .await
        .expect("delete secret");
    tokio::time::sleep(Duration::from_secs(2)).await; // past --namespace-credential-ttl-seconds=1
    env.api
        .delete("web", &Default::default())
        .await
        .expect("delete");
    let stuck = env
        .wait_for("web", 30, "Stalled NoCredential while deleting", |o| {
            o.metadata.deletion_timestamp.is_some() && stalled_with(o, "NoCredential")
        })
        .await;
    let (_, message) = stuck
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .expect("Stalled condition");
    assert!(
        message.contains(&format!(
            "kubectl annotate virtualmachineidentity web -n {} vmidentity.dev/abandon=true",
            env.ns
        )),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.get("web").await.is_some(),
        "kept while it cannot release"
    );
    assert_eq!(
        env.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["u1".into()])
    );

    // The way out: the annotation. The object goes; u1 stays on the VM.
    env.api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"vmidentity.dev/abandon": "true"}}})),
        )
        .await
        .expect("annotate");
    env.wait_gone("web", 30).await;
    assert_eq!(
        env.identity(&vm("vm1")),
        ("UserAssigned".into(), vec!["u1".into()]),
        "left on the VM"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    let abandoned: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Abandoned"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert!(
        abandoned[0].contains("annotation vmidentity.dev/abandon=true")
            && abandoned[0].contains(&uai("u1")),
        "{}",
        abandoned[0]
    );
    env.cleanup().await;
    env.delete_policy().await;
}
