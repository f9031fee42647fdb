//! Fast reconciler tests: `reconcile` against a mocked Kubernetes API server (a `tower-test`
//! mock behind `kube::Client`) and the in-process ARM simulator, without a cluster.
//!
//! The mocked API server answers every request (a PATCH of an object with the object, an
//! Event POST with the Event) and records it; each test then asserts the requests in order:
//! method, path and JSON body.

#![cfg(test)]
// Test-only: compiled only under #[cfg(test)]; unwrap/expect here are assertions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};
use vmidentity_azure::Executor;
use vmidentity_simulator::{LroMode, SimConfig, SimHandle, WorldSeed};
use vmidentity_testkit::allow_all_policy;

use super::{Context, FINALIZER, reconcile};
use crate::crd::{VirtualMachineIdentity, VirtualMachineIdentityPolicy};
use crate::operator::events::EventRecorder;
use crate::operator::metrics::Metrics;
use crate::operator::policy::PolicyView;

const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000c1";
const NS: &str = "team-a";
const RESYNC: Duration = Duration::from_secs(600);

fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-a")
}

fn vm() -> String {
    format!("{}/providers/Microsoft.Compute/virtualMachines/vm1", rg())
}

fn uai(name: &str) -> String {
    format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
        rg()
    )
}

/// A simulator with vm1 carrying `identity` (YAML flow mapping, or none), and uai-a, uai-b.
async fn sim(identity: Option<&str>) -> Arc<SimHandle> {
    let identity = identity
        .map(|i| format!("\n    identity: {i}"))
        .unwrap_or_default();
    let world = format!(
        "resourceGroups:\n  - id: {rg}\nuserAssignedIdentities:\n  - id: {a}\n  - id: {b}\nvirtualMachines:\n  - id: {vm}{identity}\n",
        rg = rg(),
        a = uai("uai-a"),
        b = uai("uai-b"),
        vm = vm(),
    );
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&world).expect("world"),
        lro: LroMode::Sync,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    Arc::new(sim)
}

use crate::operator::test_support::sim_exec as exec;

/// A `VirtualMachineIdentity` as the API server would store it (no CRD validation here).
fn object(name: &str, spec: Value) -> VirtualMachineIdentity {
    serde_json::from_value(json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentity",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("uid-{name}"),
            "resourceVersion": "7",
            "generation": 3,
        },
        "spec": spec,
    }))
    .expect("object")
}

/// A cluster-scoped policy with this spec.
fn policy(spec: Value) -> VirtualMachineIdentityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentityPolicy",
        "metadata": {"name": "p", "resourceVersion": "1"},
        "spec": spec,
    }))
    .expect("policy")
}

/// A request the mocked API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
    /// How many ARM writes the simulator had received when this request arrived.
    arm_writes: usize,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A `kube::Client` whose API server is a task that records every request and answers it:
/// a PATCH with `object` (what a PATCH of it returns), a POST with its own body (an Event
/// created as sent). Any other request fails the reconcile (the task panics).
fn mock_client(
    sim: Arc<SimHandle>,
    object: &VirtualMachineIdentity,
) -> (kube::Client, Log, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen = log.clone();
    let object = serde_json::to_vec(object).expect("object json");
    let server = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            };
            let answer = match method.as_str() {
                "POST" => bytes.to_vec(),
                "PATCH" if path.contains("/virtualmachineidentities/") => object.clone(),
                _ => panic!("unexpected request {method} {path}"),
            };
            let arm_writes = arm_writes(&sim).len();
            seen.lock().unwrap().push(Seen {
                method,
                path,
                body,
                arm_writes,
            });
            send.send_response(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(answer))
                    .expect("response"),
            );
        }
    });
    (kube::Client::new(service, "default"), log, server)
}

/// The reconciler's context: `objects` in its store, `policies` in the policy view.
fn context(
    client: kube::Client,
    exec: Executor,
    objects: &[VirtualMachineIdentity],
    policies: &[VirtualMachineIdentityPolicy],
) -> Arc<Context> {
    let (store, mut writer) = reflector::store::<VirtualMachineIdentity>();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
    }
    let (policy_store, mut policy_writer): (Store<VirtualMachineIdentityPolicy>, _) =
        reflector::store();
    for p in policies {
        policy_writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
    }
    let recorder = EventRecorder::new(client.clone(), "vmidentity.dev/controller", "test");
    let view = PolicyView {
        policies: policy_store,
        namespaces: None,
    };
    let mut ctx = Context::new(
        client,
        store,
        exec,
        recorder,
        Arc::new(Metrics::new()),
        view,
    );
    ctx.resync = RESYNC;
    Arc::new(ctx)
}

/// Reconciles `o` (alone on its target) and returns its result with the API requests made.
async fn run(
    o: VirtualMachineIdentity,
    policies: &[VirtualMachineIdentityPolicy],
    sim: &Arc<SimHandle>,
) -> (Action, Vec<Seen>) {
    let (client, log, server) = mock_client(sim.clone(), &o);
    let ctx = context(client, exec(sim), std::slice::from_ref(&o), policies);
    let action = tokio::time::timeout(Duration::from_secs(20), reconcile(Arc::new(o), ctx))
        .await
        .expect("reconcile finishes")
        .expect("reconcile succeeds");
    server.abort();
    let seen = log.lock().unwrap().clone();
    (action, seen)
}

fn object_path(name: &str) -> String {
    format!("/apis/vmidentity.dev/v1alpha1/namespaces/{NS}/virtualmachineidentities/{name}")
}

const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

/// The condition `type_` of a status PATCH body.
fn condition<'a>(body: &'a Value, type_: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {body}"))
}

fn assert_request(seen: &Seen, method: &str, path: &str) {
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        (method, path),
        "{seen:?}"
    );
}

fn assert_event(seen: &Seen, type_: &str, reason: &str) {
    assert_request(seen, "POST", EVENTS_PATH);
    assert_eq!(seen.body["type"], type_, "{seen:?}");
    assert_eq!(seen.body["reason"], reason, "{seen:?}");
    assert_eq!(seen.body["regarding"]["kind"], "VirtualMachineIdentity");
    assert_eq!(seen.body["regarding"]["name"], "web");
}

/// The requeue of `a`: the resync period, jittered by ±20%.
fn assert_requeue_at_resync(a: &Action) {
    assert_ne!(*a, Action::await_change());
    // Action keeps its delay private: read it from its Debug form (`Some(601.2s)`).
    let text = format!("{a:?}");
    let secs: f64 = text
        .split("Some(")
        .nth(1)
        .and_then(|s| s.split("s)").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {text}"));
    let resync = RESYNC.as_secs_f64();
    assert!(
        (resync * 0.8..=resync * 1.2).contains(&secs),
        "{text}: not the resync period"
    );
}

/// ARM writes (PATCH/PUT/DELETE) the simulator received.
fn arm_writes(sim: &SimHandle) -> Vec<vmidentity_simulator::RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect()
}

#[tokio::test]
async fn a_new_object_is_claimed_recorded_applied_and_reported() {
    let sim = sim(None).await;
    let o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    let (action, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;
    let path = object_path("web");

    // 1. The finalizer, before anything is written to ARM (with the resourceVersion read).
    assert!(seen.len() >= 4, "{seen:#?}");
    assert_request(&seen[0], "PATCH", &path);
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "7"}})
    );
    assert_eq!(seen[0].arm_writes, 0);
    // 2. The ownership record widened before the ARM PATCH.
    assert_request(&seen[1], "PATCH", &format!("{path}/status"));
    assert_eq!(seen[1].arm_writes, 0, "widened before the write");
    assert_eq!(
        seen[1].body["status"]["applied"],
        json!({"userAssignedIdentities": [uai("uai-a")]}),
        "{:?}",
        seen[1]
    );
    // 3. The ARM PATCH adding uai-a.
    let writes = arm_writes(&sim);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].method, "PATCH");
    assert!(
        writes[0].path.eq_ignore_ascii_case(&vm()),
        "{:?}",
        writes[0]
    );
    let body = writes[0].body.clone().unwrap_or_default();
    assert_eq!(
        body["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect::<Vec<_>>()),
        Some(vec![uai("uai-a").to_ascii_lowercase()]),
        "{body}"
    );
    // 4. Ready=True Converged for this generation (the REASON column never stays "Applied"),
    // and 5. a Normal Applied Event.
    let (status, events): (Vec<&Seen>, Vec<&Seen>) =
        seen[2..].iter().partition(|s| s.path.ends_with("/status"));
    assert_eq!(status.len(), 1, "{seen:#?}");
    assert_request(status[0], "PATCH", &format!("{path}/status"));
    assert_eq!(status[0].arm_writes, 1, "reported after the write");
    let ready = condition(&status[0].body, "Ready");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["reason"], "Converged", "{ready}");
    assert_eq!(status[0].body["status"]["observedGeneration"], 3);
    assert_eq!(
        status[0].body["status"]["applied"]["userAssignedIdentities"],
        json!([uai("uai-a")])
    );
    assert_eq!(events.len(), 1, "{seen:#?}");
    assert_event(events[0], "Normal", "Applied");

    assert_requeue_at_resync(&action);
    // The simulator now has uai-a on vm1.
    let identity = sim.identity_of(&vm()).expect("vm1");
    assert!(
        identity.to_string().to_ascii_lowercase().contains("uai-a"),
        "{identity}"
    );
}

#[tokio::test]
async fn a_denied_object_is_stalled_without_a_claim_or_azure() {
    let sim = sim(None).await;
    // The policy covers the namespace but not this VM.
    let mut spec = allow_all_policy(NS);
    spec["targets"] = json!({"patterns": [format!("{}/providers/Microsoft.Compute/virtualMachines/other-*", rg())]});
    let o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    let (action, seen) = run(o, &[policy(spec)], &sim).await;

    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_event(&seen[0], "Warning", "PolicyDenied");
    assert_request(&seen[1], "PATCH", &format!("{}/status", object_path("web")));
    let stalled = condition(&seen[1].body, "Stalled");
    assert_eq!(stalled["status"], "True", "{stalled}");
    assert_eq!(stalled["reason"], "PolicyDenied", "{stalled}");
    assert!(
        !seen.iter().any(|s| s.path == object_path("web")),
        "no finalizer PATCH: {seen:#?}"
    );
    assert_eq!(sim.requests().len(), 0, "{:#?}", sim.requests());
    assert_requeue_at_resync(&action);
}

#[tokio::test]
async fn an_invalid_spec_is_stalled_without_azure() {
    let sim = sim(None).await;
    // A resource group is not a VM (the CRD would refuse it; the reconciler must too).
    let o = object("web", json!({"target": rg(), "systemAssigned": true}));
    let (action, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;

    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_event(&seen[0], "Warning", "InvalidSpec");
    assert_request(&seen[1], "PATCH", &format!("{}/status", object_path("web")));
    let stalled = condition(&seen[1].body, "Stalled");
    assert_eq!(stalled["status"], "True", "{stalled}");
    assert_eq!(stalled["reason"], "InvalidSpec", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .is_some_and(|m| m.contains("target")),
        "{stalled}"
    );
    assert_eq!(sim.requests().len(), 0, "{:#?}", sim.requests());
    assert_requeue_at_resync(&action);
}

#[tokio::test]
async fn a_deleted_object_detaches_what_it_applied_then_lets_go() {
    // vm1 carries uai-a (this object's) and uai-b (someone else's).
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}, {}]}}",
        uai("uai-a"),
        uai("uai-b")
    )))
    .await;
    let mut o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    o.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    o.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    o.status = Some(crate::crd::VirtualMachineIdentityStatus {
        applied: Some(crate::crd::AppliedIdentities {
            user_assigned_identities: vec![uai("uai-a")],
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_action, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;

    // The ARM PATCH removes uai-a only.
    let writes = arm_writes(&sim);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].method, "PATCH");
    let body = writes[0].body.clone().unwrap_or_default();
    let uais = body["identity"]["userAssignedIdentities"]
        .as_object()
        .unwrap_or_else(|| panic!("no userAssignedIdentities in {body}"));
    let removed: Vec<_> = uais
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    assert_eq!(removed, vec![uai("uai-a").to_ascii_lowercase()], "{body}");
    assert!(
        !uais
            .keys()
            .any(|k| k.eq_ignore_ascii_case(&uai("uai-b")) && !uais[k].is_null()),
        "uai-b left alone: {body}"
    );
    let identity = sim.identity_of(&vm()).expect("vm1").to_string();
    assert!(
        !identity.to_ascii_lowercase().contains("uai-a") && identity.contains("uai-b"),
        "{identity}"
    );

    // Then a Normal Detached Event and the finalizer's removal, last.
    let last = seen.last().expect("a request");
    assert_request(last, "PATCH", &object_path("web"));
    assert_eq!(
        last.body,
        json!({"metadata": {"finalizers": [], "resourceVersion": "7"}})
    );
    let events: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(events.len(), 1, "{seen:#?}");
    assert_event(events[0], "Normal", "Detached");
    assert!(
        seen.iter().all(|s| s.arm_writes == 1),
        "after the write: {seen:#?}"
    );
    assert_eq!(
        seen.len(),
        2,
        "no status PATCH for an object going away: {seen:#?}"
    );
}

fn object_in(ns: &str, name: &str, spec: Value) -> VirtualMachineIdentity {
    let mut o = object(name, spec);
    o.metadata.namespace = Some(ns.into());
    o
}

/// Ready for its generation (3), owning what `applied` says, created at `created`.
fn working(mut o: VirtualMachineIdentity, applied: Value, created: &str) -> VirtualMachineIdentity {
    o.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().expect("timestamp"),
    ));
    o.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 3,
            "applied": applied,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Converged",
                            "message": "vm1 is as declared", "observedGeneration": 3,
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }))
        .expect("status"),
    );
    o
}

/// Reconciles the target of `objects` (the first stands for it) and returns the requests.
async fn run_all(
    objects: Vec<VirtualMachineIdentity>,
    policies: &[VirtualMachineIdentityPolicy],
    sim: &Arc<SimHandle>,
) -> Vec<Seen> {
    let (client, log, server) = mock_client(sim.clone(), &objects[0]);
    let ctx = context(client, exec(sim), &objects, policies);
    tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(objects[0].clone()), ctx),
    )
    .await
    .expect("reconcile finishes")
    .expect("reconcile succeeds");
    server.abort();
    log.lock().unwrap().clone()
}

fn status_patches<'a>(seen: &'a [Seen], ns: &str, name: &str) -> Vec<&'a Seen> {
    let path = format!(
        "/apis/vmidentity.dev/v1alpha1/namespaces/{ns}/virtualmachineidentities/{name}/status"
    );
    seen.iter().filter(|s| s.path == path).collect()
}

fn events_about<'a>(seen: &'a [Seen], name: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.body["regarding"]["name"] == name)
        .collect()
}

/// A newcomer never breaks what already works (issue 14 item 2): `sandbox/newcomer` asks
/// for `systemAssigned: false` on the VM where `platform/ops-agent` has been Ready with the
/// system identity on. Each namespace has its own policy allowing what it asks. Whichever
/// object the pass is for, ops-agent stays Ready and the VM keeps its identity; the newcomer
/// is Stalled with reason Conflict naming platform/ops-agent, with one Warning. The same for
/// a newcomer in Exact mode, and for a newcomer created before an edit (seniority is being
/// Ready first, not only age).
#[tokio::test]
async fn a_newcomer_in_another_namespace_is_refused_and_the_working_object_keeps_the_target() {
    let mut platform = allow_all_policy("platform");
    platform["allowDisableSystemAssigned"] = json!(false);
    let mut sandbox = allow_all_policy("sandbox");
    sandbox["allowExactMode"] = json!(true);
    let mut p2 = policy(sandbox);
    p2.metadata.name = Some("sandbox".into());
    let policies = [policy(platform), p2];
    let newcomers = [
        json!({"target": vm(), "systemAssigned": false}),
        json!({"target": vm(), "mode": "Exact", "userAssignedIdentities": [uai("uai-b")]}),
    ];
    for (i, spec) in newcomers.into_iter().enumerate() {
        for newcomer_first in [true, false] {
            let sim = sim(Some(&format!(
                "{{type: 'SystemAssigned, UserAssigned', userAssignedIdentities: [{}]}}",
                uai("uai-a")
            )))
            .await;
            let ops = working(
                object_in(
                    "platform",
                    "ops-agent",
                    json!({"target": vm(), "systemAssigned": true,
                           "userAssignedIdentities": [uai("uai-a")]}),
                ),
                json!({"systemAssigned": true, "userAssignedIdentities": [uai("uai-a")]}),
                // Created after the newcomer: being Ready as it is comes before age.
                "2026-01-02T00:00:00Z",
            );
            let mut newcomer = object_in("sandbox", "newcomer", spec.clone());
            newcomer.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().expect("timestamp"),
                ));
            let objects = if newcomer_first {
                vec![newcomer, ops]
            } else {
                vec![ops, newcomer]
            };
            let seen = run_all(objects, &policies, &sim).await;
            let case = format!("case {i}, newcomer first: {newcomer_first}");

            assert!(
                arm_writes(&sim).is_empty(),
                "{case}: {:#?}",
                arm_writes(&sim)
            );
            let identity = sim.identity_of(&vm()).expect("vm1").to_string();
            assert!(
                identity.contains("SystemAssigned") && identity.contains("uai-a"),
                "{case}: {identity}"
            );
            for s in status_patches(&seen, "platform", "ops-agent") {
                let ready = condition(&s.body, "Ready");
                assert_eq!(ready["status"], "True", "{case}: {s:?}");
            }
            assert!(
                events_about(&seen, "ops-agent").is_empty(),
                "{case}: {seen:#?}"
            );
            let refused = status_patches(&seen, "sandbox", "newcomer");
            assert_eq!(refused.len(), 1, "{case}: {seen:#?}");
            let stalled = condition(&refused[0].body, "Stalled");
            assert_eq!(stalled["status"], "True", "{case}: {stalled}");
            assert_eq!(stalled["reason"], "Conflict", "{case}: {stalled}");
            let message = stalled["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("platform/ops-agent held the target first and keeps it"),
                "{case}: {message}"
            );
            assert!(
                refused[0].body["status"]["applied"].is_null(),
                "{case}: the newcomer owns nothing: {:?}",
                refused[0]
            );
            assert!(
                !seen
                    .iter()
                    .any(|s| s.path.ends_with("/virtualmachineidentities/newcomer")),
                "{case}: a refused newcomer is not claimed: {seen:#?}"
            );
            let warnings = events_about(&seen, "newcomer");
            assert_eq!(warnings.len(), 1, "{case}: {seen:#?}");
            assert_eq!(warnings[0].body["type"], "Warning");
            assert_eq!(warnings[0].body["reason"], "Conflict");
        }
    }
}

/// Neither object works yet: the older `creationTimestamp` keeps the target, the younger is
/// refused naming it; both equally old are refused together (nothing is written).
#[tokio::test]
async fn between_two_new_objects_the_older_keeps_the_target() {
    let policies = [policy(json!({
        "namespaces": {"names": ["a", "b"]},
        "targets": {"patterns": ["**"]},
        "userAssignedIdentities": {"patterns": ["**"]},
        "allowDisableSystemAssigned": true,
    }))];
    let at = |o: &mut VirtualMachineIdentity, t: &str| {
        o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            t.parse().expect("timestamp"),
        ));
    };
    let sim1 = sim(None).await;
    let mut older = object_in(
        "b",
        "older",
        json!({"target": vm(), "systemAssigned": true}),
    );
    at(&mut older, "2026-01-01T00:00:00Z");
    let mut younger = object_in(
        "a",
        "younger",
        json!({"target": vm(), "systemAssigned": false}),
    );
    at(&mut younger, "2026-01-01T00:00:05Z");
    let seen = run_all(vec![younger.clone(), older.clone()], &policies, &sim1).await;
    assert_eq!(arm_writes(&sim1).len(), 1, "the older one is applied");
    let identity = sim1.identity_of(&vm()).expect("vm1").to_string();
    assert!(identity.contains("SystemAssigned"), "{identity}");
    let refused = status_patches(&seen, "a", "younger");
    let stalled = condition(&refused[0].body, "Stalled");
    assert_eq!(stalled["reason"], "Conflict", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .is_some_and(|m| m.contains("b/older held the target first")),
        "{stalled}"
    );

    // Equally old: both refused, nothing written.
    let sim2 = sim(None).await;
    at(&mut younger, "2026-01-01T00:00:00Z");
    let seen = run_all(vec![younger, older], &policies, &sim2).await;
    assert!(arm_writes(&sim2).is_empty(), "{:#?}", arm_writes(&sim2));
    for (ns, name) in [("a", "younger"), ("b", "older")] {
        let st = status_patches(&seen, ns, name);
        let stalled = condition(&st.last().expect("status").body, "Stalled");
        assert_eq!(stalled["reason"], "Conflict", "{name}: {stalled}");
    }
}

/// What a held object still holds is never taken by another object's change (a review's
/// finding on the seniority rule): `sandbox/held` owns uai-b but its namespace lost its
/// policy (denied, so it only holds); the older `platform/ops` is edited to Exact with only
/// uai-a. Before, the held object lost the conflict on age and the Exact PATCH removed uai-b;
/// now the held object ranks first, ops is refused with Conflict, and nothing is written.
#[tokio::test]
async fn a_held_object_keeps_what_it_holds_against_an_older_exact_edit() {
    let policies = [policy(allow_all_policy("platform"))];
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}, {}]}}",
        uai("uai-a"),
        uai("uai-b")
    )))
    .await;
    let mut ops = working(
        object_in(
            "platform",
            "ops",
            json!({"target": vm(), "mode": "Exact", "userAssignedIdentities": [uai("uai-a")]}),
        ),
        json!({"userAssignedIdentities": [uai("uai-a")]}),
        "2025-01-01T00:00:00Z",
    );
    // Edited since it was Ready (Merge -> Exact): its generation moved on.
    ops.metadata.generation = Some(4);
    let mut held = working(
        object_in(
            "sandbox",
            "held",
            json!({"target": vm(), "userAssignedIdentities": [uai("uai-b")]}),
        ),
        json!({"userAssignedIdentities": [uai("uai-b")]}),
        "2026-01-01T00:00:00Z",
    );
    // Already refused by policy on an earlier pass: Stalled PolicyDenied, no longer Ready.
    held.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 3,
            "applied": {"userAssignedIdentities": [uai("uai-b")]},
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PolicyDenied", "message": "denied",
                 "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Stalled", "status": "True", "reason": "PolicyDenied", "message": "denied",
                 "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }))
        .expect("status"),
    );
    for objects in [vec![ops.clone(), held.clone()], vec![held, ops]] {
        let seen = run_all(objects, &policies, &sim).await;
        assert!(arm_writes(&sim).is_empty(), "{:#?}", arm_writes(&sim));
        let identity = sim.identity_of(&vm()).expect("vm1").to_string();
        assert!(identity.contains("uai-b"), "{identity}");
        let refused = status_patches(&seen, "platform", "ops");
        assert!(
            refused.iter().any(|s| {
                let c = condition(&s.body, "Stalled");
                c["status"] == "True"
                    && c["reason"] == "Conflict"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("sandbox/held"))
            }),
            "{seen:#?}"
        );
    }
}

/// Issue 15 parts 2 and 3 (adoption, observe-only), with these helpers.
#[path = "reconcile_tests_brownfield.rs"]
mod brownfield;

/// A 412 re-plan that adds an identity the first plan did not (another writer removed uai-a,
/// which was on vm1 but not ours, between our GET and our PATCH) widens the ownership record
/// before the second PATCH: a crash between that PATCH and the final status must not leave
/// uai-a attached by us and recorded by no one.
#[tokio::test]
async fn a_replan_after_412_widens_the_claim_before_its_patch() {
    // vm1 carries uai-a, which no object applied.
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}]}}",
        uai("uai-a")
    )))
    .await;
    // No armApiVersion: the default has entity tags, so our PATCH is conditional.
    let o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a"), uai("uai-b")]}),
    );
    // Our first PATCH is held; once our GET is done, another writer removes uai-a.
    sim.add_fault(
        vmidentity_simulator::FaultRule::delay(1500)
            .method("PATCH")
            .times(1),
    );
    let other = {
        let sim = sim.clone();
        tokio::spawn(async move {
            while !sim.requests().iter().any(|r| r.method == "GET") {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sim.set_identity(&vm(), json!({"type": "None"}))
                .expect("other writer");
        })
    };
    let (_, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;
    other.await.expect("other writer ran");

    let writes = arm_writes(&sim);
    assert_eq!(
        writes.iter().map(|w| w.status).collect::<Vec<_>>(),
        vec![412, 200],
        "{writes:#?}"
    );
    let sent: Vec<String> =
        writes[1].body.clone().unwrap_or_default()["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default();
    assert_eq!(
        sent,
        vec![
            uai("uai-a").to_ascii_lowercase(),
            uai("uai-b").to_ascii_lowercase()
        ],
        "the re-plan adds uai-a again"
    );
    let records: Vec<(usize, Value)> = seen
        .iter()
        .filter(|s| s.path.ends_with("/status") && !s.body["status"]["applied"].is_null())
        .map(|s| (s.arm_writes, s.body["status"]["applied"].clone()))
        .collect();
    // First claim: uai-b only (uai-a was there and not ours), before any write.
    assert_eq!(
        records.first(),
        Some(&(0, json!({"userAssignedIdentities": [uai("uai-b")]}))),
        "{records:#?}"
    );
    // After the 412 and before the second PATCH: the claim now covers uai-a too.
    let widened = records
        .iter()
        .find(|(_, applied)| {
            applied["userAssignedIdentities"]
                .as_array()
                .is_some_and(|ids| ids.contains(&json!(uai("uai-a"))))
        })
        .unwrap_or_else(|| panic!("uai-a never recorded: {records:#?}"));
    assert_eq!(
        widened.0, 1,
        "claimed after the 412, before the PATCH: {records:#?}"
    );
    let identity = sim
        .identity_of(&vm())
        .expect("vm1")
        .to_string()
        .to_ascii_lowercase();
    assert!(
        identity.contains("uai-a") && identity.contains("uai-b"),
        "{identity}"
    );
}

/// Found by the chaos soak (seed 2): a PATCH whose long-running operation ended `Failed` had
/// been applied by ARM, but the failure report wrote the object's old ownership record back
/// over the widened one, so the identity it added was owned by nobody and never removed when
/// the object let go of it. The widened record must survive a failed write, and the failure
/// is retried (not left until the spec changes).
#[tokio::test]
async fn a_failed_operation_keeps_the_widened_record_and_is_retried() {
    let sim = sim(None).await;
    sim.set_lro_mode(LroMode::Async200);
    sim.fail_next_operations(1);
    // A working object (it owns nothing yet) edited to list uai-a.
    let o = working(
        object(
            "web",
            json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
        ),
        json!({"userAssignedIdentities": []}),
        "2026-01-01T00:00:00Z",
    );
    let (action, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;
    let path = format!("{}/status", object_path("web"));
    // ARM applied it (the operation failed afterwards).
    let identity = sim.identity_of(&vm()).expect("vm1");
    assert!(
        identity.to_string().to_ascii_lowercase().contains("uai-a"),
        "{identity}"
    );
    assert_eq!(arm_writes(&sim).len(), 1);
    let statuses: Vec<&Seen> = seen.iter().filter(|s| s.path == path).collect();
    assert!(statuses.len() >= 2, "{seen:#?}");
    assert!(statuses[1..].iter().all(|s| s.arm_writes == 1), "{seen:#?}");
    // Widened before the write...
    assert_eq!(statuses[0].arm_writes, 0);
    assert_eq!(
        statuses[0].body["status"]["applied"],
        json!({"userAssignedIdentities": [uai("uai-a")]})
    );
    // ... and no later status patch takes uai-a out of the record.
    for s in &statuses[1..] {
        let applied = &s.body["status"]["applied"];
        assert!(
            applied["userAssignedIdentities"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(uai("uai-a")))),
            "a status patch after the failed write narrowed the record: {s:?}"
        );
    }
    let last = statuses.last().expect("a status after the write");
    assert_eq!(
        condition(&last.body, "Ready")["status"],
        "False",
        "{last:?}"
    );
    assert_eq!(
        condition(&last.body, "Reconciling")["status"],
        "True",
        "retried, not stalled: {last:?}"
    );
    assert_ne!(action, Action::await_change(), "retried");
}

/// The way out for an object being deleted that cannot release (its namespace lost the
/// credential Secret): annotated `vmidentity.dev/abandon: "true"`, its finalizer goes without
/// any request to Azure, and a Warning `Abandoned` Event names what stays on the target.
#[tokio::test]
async fn an_abandoned_object_being_deleted_lets_go_without_touching_azure() {
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}]}}",
        uai("uai-a")
    )))
    .await;
    let mut o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    o.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    o.metadata.annotations = Some(
        [(super::ABANDON_ANNOTATION.to_string(), "true".to_string())]
            .into_iter()
            .collect(),
    );
    o.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    o.status = Some(crate::crd::VirtualMachineIdentityStatus {
        applied: Some(crate::crd::AppliedIdentities {
            user_assigned_identities: vec![uai("uai-a")],
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_action, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;

    assert!(
        sim.requests().is_empty(),
        "no Azure request: {:#?}",
        sim.requests()
    );
    let identity = sim.identity_of(&vm()).expect("vm1").to_string();
    assert!(identity.contains("uai-a"), "left on the target: {identity}");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_event(&seen[0], "Warning", "Abandoned");
    let note = seen[0].body["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(
            "finalizer removed without releasing (annotation vmidentity.dev/abandon=true)"
        ) && note.contains(&uai("uai-a"))
            && note.contains(&vm()),
        "{note}"
    );
    assert_request(&seen[1], "PATCH", &object_path("web"));
    assert_eq!(
        seen[1].body,
        json!({"metadata": {"finalizers": [], "resourceVersion": "7"}})
    );
}
