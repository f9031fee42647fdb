//! Reconciler tests of issue 15 parts 2 and 3 (adoption, observe-only), on the mocked API
//! server and the in-process simulator of `reconcile_tests` (whose helpers they use).

#![cfg(test)]
// Test-only: compiled only under #[cfg(test)]; unwrap/expect here are assertions.

use super::*;
use crate::crd::{ADOPT_ANNOTATION, RECONCILE_POLICY_ANNOTATION};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;

fn annotated(mut o: VirtualMachineIdentity, key: &str, value: &str) -> VirtualMachineIdentity {
    o.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    o
}

/// Reconciles `o` with `context`'s view plus Namespace metadata (`ns_annotations` on NS).
async fn run_in_namespace(
    o: VirtualMachineIdentity,
    ns_annotations: &[(&str, &str)],
    sim: &Arc<SimHandle>,
) -> Vec<Seen> {
    let (client, log, server) = mock_client(sim.clone(), &o);
    let ctx = context(
        client,
        exec(sim),
        std::slice::from_ref(&o),
        &[policy(allow_all_policy(NS))],
    );
    let (ns_store, mut ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let mut ns = PartialObjectMeta::<Namespace>::default();
    ns.metadata.name = Some(NS.into());
    ns.metadata.annotations = Some(
        ns_annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    ns_writer.apply_watcher_event(&watcher::Event::Apply(ns));
    let mut ctx = Arc::try_unwrap(ctx).ok().expect("one owner");
    ctx.policy.namespaces = Some(ns_store);
    tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(o), Arc::new(ctx)),
    )
    .await
    .expect("reconcile finishes")
    .expect("reconcile succeeds");
    server.abort();
    log.lock().unwrap().clone()
}

/// The writes of the simulator's request log as `plan -o json` elements (method, path,
/// api-version, body) — what `status.pendingWrites` must equal.
fn sent_as_plan_json(sim: &SimHandle) -> Vec<Value> {
    arm_writes(sim)
        .into_iter()
        .map(|r| {
            let version = r
                .query
                .as_deref()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api-version=")))
                .unwrap_or_default()
                .to_string();
            let mut v = json!({"method": r.method, "id": r.path, "apiVersion": version});
            if let Some(b) = r.body {
                v["body"] = b;
            }
            if let Some(t) = r.if_match {
                v["ifMatch"] = json!(t);
            }
            v
        })
        .collect()
}

/// Observe: read and planned, never written; Drifted, pendingWrites, one Warning. Then the
/// object switched to manage sends exactly the pending writes, one PATCH, nothing more.
#[tokio::test]
async fn an_observed_object_writes_nothing_then_manage_sends_exactly_the_pending_writes() {
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}]}}",
        uai("uai-b")
    )))
    .await;
    let o = annotated(
        object(
            "web",
            json!({"target": vm(), "systemAssigned": true, "userAssignedIdentities": [uai("uai-a")]}),
        ),
        RECONCILE_POLICY_ANNOTATION,
        "observe",
    );
    let (action, seen) = run(o.clone(), &[policy(allow_all_policy(NS))], &sim).await;

    // No ARM, Authorization or Graph write; only the GET of the target.
    assert_eq!(arm_writes(&sim).len(), 0, "{:#?}", sim.requests());
    assert!(sim.requests().iter().all(|r| r.method == "GET"));
    // No finalizer (nothing is ever released for it): a status PATCH and a Drifted Event.
    assert!(
        !seen.iter().any(|s| s.path == object_path("web")),
        "no finalizer: {seen:#?}"
    );
    let status = status_patches(&seen, NS, "web");
    assert_eq!(status.len(), 1, "{seen:#?}");
    let body = &status[0].body;
    let drifted = condition(body, "Drifted");
    assert_eq!(drifted["status"], "True", "{drifted}");
    assert_eq!(drifted["reason"], "PendingWrites", "{drifted}");
    let message = drifted["message"].as_str().unwrap();
    assert!(
        message.starts_with("2 changes pending on vm/vm1")
            && message.contains("enable system-assigned identity")
            && message.contains(&format!("add user-assigned identity {}", uai("uai-a"))),
        "{message}"
    );
    assert_eq!(condition(body, "Ready")["reason"], "Observed");
    assert_eq!(body["status"]["applied"], Value::Null, "nothing recorded");
    let pending = body["status"]["pendingWrites"].clone();
    assert_eq!(
        pending,
        json!([{"method": "PATCH", "id": vm(), "apiVersion": "2025-04-01",
                "body": {"identity": {"type": "SystemAssigned, UserAssigned",
                                      "userAssignedIdentities": {uai("uai-a"): {}}}},
                "ifMatch": "\"1\""}]),
    );
    let events = events_about(&seen, "web");
    assert_eq!(events.len(), 1, "{seen:#?}");
    assert_event(events[0], "Warning", "Drifted");
    assert_requeue_at_resync(&action);

    // The same pass again (status as written): nothing new to say, still no write.
    let mut again = o.clone();
    again.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
    let (_, seen2) = run(again.clone(), &[policy(allow_all_policy(NS))], &sim).await;
    assert!(seen2.is_empty(), "no status write, no Event: {seen2:#?}");
    assert_eq!(arm_writes(&sim).len(), 0);

    // observe -> manage (the annotation changed; same generation): exactly the pending
    // writes are sent, one PATCH for the target.
    let managed = annotated(again, RECONCILE_POLICY_ANNOTATION, "manage");
    let (_, seen3) = run(managed, &[policy(allow_all_policy(NS))], &sim).await;
    assert_eq!(sent_as_plan_json(&sim), pending.as_array().unwrap().clone());
    // Told as Applied (not as a drift repair), Drifted and pendingWrites gone.
    let last = status_patches(&seen3, NS, "web")
        .pop()
        .unwrap()
        .body
        .clone();
    assert_eq!(condition(&last, "Ready")["reason"], "Converged");
    assert!(
        last["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "Drifted"),
        "{last}"
    );
    assert_eq!(last["status"]["pendingWrites"], Value::Null, "{last}");
    let events = events_about(&seen3, "web");
    assert_eq!(events.len(), 1, "{seen3:#?}");
    assert_event(events[0], "Normal", "Applied");
}

/// The Namespace's annotation applies to objects that say nothing; the object's own wins.
#[tokio::test]
async fn the_namespace_annotation_applies_and_the_object_annotation_wins() {
    let sim = sim(None).await;
    let o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    let seen = run_in_namespace(o.clone(), &[(RECONCILE_POLICY_ANNOTATION, "observe")], &sim).await;
    assert_eq!(arm_writes(&sim).len(), 0);
    let status = status_patches(&seen, NS, "web");
    assert_eq!(condition(&status[0].body, "Drifted")["status"], "True");

    let managed = annotated(o, RECONCILE_POLICY_ANNOTATION, "manage");
    run_in_namespace(managed, &[(RECONCILE_POLICY_ANNOTATION, "observe")], &sim).await;
    assert_eq!(arm_writes(&sim).len(), 1, "the object's manage wins");
}

/// An invalid policy value is one Stalled reason and one Warning, with no Azure request and
/// no hot loop (looked at again at resync).
#[tokio::test]
async fn an_invalid_reconcile_policy_is_stalled_without_azure() {
    let sim = sim(None).await;
    let o = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    let seen = run_in_namespace(o, &[(RECONCILE_POLICY_ANNOTATION, "Observe")], &sim).await;
    assert_eq!(sim.requests().len(), 0, "{:#?}", sim.requests());
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_event(&seen[0], "Warning", "InvalidReconcilePolicy");
    let stalled = condition(&seen[1].body, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidReconcilePolicy");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("on namespace team-a is \"Observe\""),
        "{stalled}"
    );
}

/// Adoption: the pre-existing identity the object lists is recorded without a write, with an
/// Adopted Event; dropped from the spec later, it is removed like anything the object added.
/// Without the annotation it is never recorded (Merge never removes what was there before).
#[tokio::test]
async fn adoption_records_without_writing_and_a_later_removal_detaches() {
    let brownfield = format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}, {}]}}",
        uai("uai-a"),
        uai("uai-b")
    );
    // Without adoption: nothing recorded.
    let sim0 = sim(Some(&brownfield)).await;
    let plain = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    let (_, seen) = run(plain.clone(), &[policy(allow_all_policy(NS))], &sim0).await;
    let last = status_patches(&seen, NS, "web").pop().unwrap().body.clone();
    assert_eq!(
        last["status"]["applied"],
        json!({"userAssignedIdentities": []})
    );
    assert!(events_about(&seen, "web").is_empty(), "{seen:#?}");

    let sim = sim(Some(&brownfield)).await;
    let o = annotated(plain, ADOPT_ANNOTATION, "true");
    let (_, seen) = run(o.clone(), &[policy(allow_all_policy(NS))], &sim).await;
    assert_eq!(arm_writes(&sim).len(), 0, "adoption writes nothing to ARM");
    let last = status_patches(&seen, NS, "web").pop().unwrap().body.clone();
    assert_eq!(
        last["status"]["applied"],
        json!({"userAssignedIdentities": [uai("uai-a")]})
    );
    let events = events_about(&seen, "web");
    assert_eq!(events.len(), 1, "{seen:#?}");
    assert_event(events[0], "Normal", "Adopted");
    let note = events[0].body["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("user-assigned identity {}", uai("uai-a")))
            && !note.contains("uai-b"),
        "{note}"
    );

    // Dropped from the spec: removed from the VM (uai-b, never listed, stays).
    let mut dropped = object("web", json!({"target": vm(), "userAssignedIdentities": []}));
    dropped.metadata.finalizers = Some(vec![FINALIZER.into()]);
    dropped.status = Some(serde_json::from_value(last["status"].clone()).unwrap());
    let dropped = annotated(dropped, ADOPT_ANNOTATION, "true");
    run(dropped, &[policy(allow_all_policy(NS))], &sim).await;
    let writes = arm_writes(&sim);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    let body = writes[0].body.clone().unwrap_or_default();
    assert_eq!(
        body,
        json!({"identity": {"type": "UserAssigned",
                            "userAssignedIdentities": {uai("uai-a"): null}}})
    );
    let identity = sim.identity_of(&vm()).unwrap().to_string();
    assert!(
        !identity.contains("uai-a") && identity.contains("uai-b"),
        "{identity}"
    );
}

/// The tenancy policy applies to adoption as to creation: a policy that does not allow the
/// identity refuses the object, and nothing is adopted (nor read from Azure).
#[tokio::test]
async fn a_policy_that_refuses_an_identity_refuses_adopting_it() {
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}]}}",
        uai("uai-a")
    )))
    .await;
    let mut spec = allow_all_policy(NS);
    spec["userAssignedIdentities"] = json!({"patterns": [uai("uai-b")]});
    let o = annotated(
        object(
            "web",
            json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
        ),
        ADOPT_ANNOTATION,
        "true",
    );
    let (_, seen) = run(o, &[policy(spec)], &sim).await;
    assert_eq!(sim.requests().len(), 0, "{:#?}", sim.requests());
    assert_event(&seen[0], "Warning", "PolicyDenied");
    let st = &seen[1].body["status"];
    assert_eq!(st["applied"], Value::Null, "nothing adopted: {st}");
    assert_eq!(
        condition(&seen[1].body, "Stalled")["reason"],
        "PolicyDenied"
    );
}

/// A bad adopt value is an InvalidSpec naming the annotation.
#[tokio::test]
async fn a_bad_adopt_value_is_an_invalid_spec() {
    let sim = sim(None).await;
    let o = annotated(
        object(
            "web",
            json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
        ),
        ADOPT_ANNOTATION,
        "yes",
    );
    let (_, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;
    assert_eq!(sim.requests().len(), 0);
    let stalled = condition(&seen[1].body, "Stalled");
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("metadata.annotations[vmidentity.dev/adopt]"),
        "{stalled}"
    );
}

const PA: &str = "aaaaaaaa-0000-4000-8000-0000000000a1";
const GROUP: &str = "11111111-1111-4111-8111-1111111111a1";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const THEIRS: &str = "44444444-4444-4444-8444-444444444444";

/// vm1 carrying uai-a (principal PA), which holds Reader at rg-a under a name vmidentity
/// would not choose (made by hand); a group.
async fn sim_with_grants() -> Arc<SimHandle> {
    let world = format!(
        "resourceGroups:\n  - id: {rg}\nuserAssignedIdentities:\n  - {{id: {a}, principalId: {PA}}}\nvirtualMachines:\n  - id: {vm}\n    identity: {{type: UserAssigned, userAssignedIdentities: [{a}]}}\ngroups:\n  - {{id: {GROUP}, displayName: readers}}\nroleAssignments:\n  - {{name: {THEIRS}, scope: {rg}, roleDefinitionId: {READER}, principalId: {PA}}}\n",
        rg = rg(),
        a = uai("uai-a"),
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

/// The simulator's executor with Graph.
fn exec_with_graph(sim: &SimHandle) -> Executor {
    use vmidentity_azure::{ArmClient, ClientConfig, StaticToken};
    exec(sim).with_graph(
        ArmClient::new(
            ClientConfig {
                max_attempts: 1,
                ..ClientConfig::graph(&sim.base_url())
            },
            Arc::new(StaticToken::new("sim-graph-token")),
        )
        .expect("graph client"),
    )
}

async fn run_with_graph(o: VirtualMachineIdentity, sim: &Arc<SimHandle>) -> Vec<Seen> {
    let (client, log, server) = mock_client(sim.clone(), &o);
    let ctx = context(
        client,
        exec_with_graph(sim),
        std::slice::from_ref(&o),
        &[policy(allow_all_policy(NS))],
    );
    tokio::time::timeout(Duration::from_secs(20), reconcile(Arc::new(o), ctx))
        .await
        .expect("reconcile finishes")
        .expect("reconcile succeeds");
    server.abort();
    log.lock().unwrap().clone()
}

/// Writes of the simulator's log (ARM, Authorization and Graph): what is neither a GET nor a
/// read sent as a POST (Resource Graph queries, Graph `getMemberGroups`-style reads).
fn writes_sent(sim: &SimHandle) -> Vec<vmidentity_simulator::RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .filter(|r| {
            !r.path.contains("Microsoft.ResourceGraph") && !r.path.ends_with("getMemberGroups")
        })
        .collect()
}

/// Observe with grants: no PUT, DELETE or Graph POST; the pending writes are the role
/// assignment PUT and the group POST (the Reader assignment that exists is not re-created).
/// Switched to manage, exactly those are sent (method, path, api-version, body). The existing
/// Reader assignment (someone else's) is not recorded without adoption: it is reported in
/// `status.heldNotAdopted` and one `NotAdopted` Event. (Until issue 15's follow-up it was
/// recorded and named in an Adopted Event without the annotation: the defect.)
#[tokio::test]
async fn observe_with_grants_writes_nothing_and_manage_sends_exactly_the_pending_grant_writes() {
    let sim = sim_with_grants().await;
    let spec = json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")],
        "roleAssignments": [
            {"identity": uai("uai-a"), "role": "Reader", "scope": rg()},
            {"identity": uai("uai-a"), "role": "Storage Blob Data Reader", "scope": rg()}],
        "groupMemberships": [{"identity": uai("uai-a"), "groupObjectId": GROUP}]});
    let o = annotated(object("web", spec), RECONCILE_POLICY_ANNOTATION, "observe");
    let seen = run_with_graph(o.clone(), &sim).await;
    assert!(writes_sent(&sim).is_empty(), "{:#?}", writes_sent(&sim));
    let status = status_patches(&seen, NS, "web");
    let st = status[0].body["status"].clone();
    let pending = st["pendingWrites"].as_array().cloned().unwrap_or_default();
    let methods: Vec<&str> = pending
        .iter()
        .filter_map(|w| w["method"].as_str())
        .collect();
    assert_eq!(methods, ["PUT", "POST"], "{pending:#?}");
    assert!(
        !pending
            .iter()
            .any(|w| w["id"].as_str().is_some_and(|i| i.contains(THEIRS))),
        "the existing assignment is not re-created: {pending:#?}"
    );

    let mut managed = annotated(o, RECONCILE_POLICY_ANNOTATION, "manage");
    managed.status = Some(serde_json::from_value(st).unwrap());
    let seen = run_with_graph(managed, &sim).await;
    let sent: Vec<Value> = writes_sent(&sim)
        .into_iter()
        .map(|r| {
            let version = r
                .query
                .as_deref()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api-version=")))
                .map(str::to_string);
            // Graph: the version is the path's first segment, as `plan -o json` splits it.
            let (version, id) = match version {
                Some(v) => (v, r.path.clone()),
                None => {
                    let rest = r.path.trim_start_matches('/');
                    let (v, id) = rest.split_once('/').unwrap_or((rest, ""));
                    (v.to_string(), format!("/{id}"))
                }
            };
            json!({"method": r.method, "id": id, "apiVersion": version, "body": r.body})
        })
        .collect();
    // pendingWrites render Graph's @odata.id for the Graph the controller talks to (here the
    // simulator's), as `plan -o json --graph-endpoint` does: byte for byte what was sent.
    assert_eq!(sent, pending);
    let last = status_patches(&seen, NS, "web").pop().unwrap().body.clone();
    let recorded = last["status"]["applied"]["roleAssignments"].clone();
    assert_eq!(
        recorded.as_array().map(Vec::len),
        Some(1),
        "only the one it created: {recorded:#}"
    );
    assert!(!recorded.to_string().contains(THEIRS), "{recorded:#}");
    let held = last["status"]["heldNotAdopted"]["roleAssignments"].clone();
    assert!(
        held.as_array()
            .is_some_and(|h| h.len() == 1 && h[0]["id"].as_str().unwrap().ends_with(THEIRS)),
        "{:#}",
        last["status"]
    );
    let events = events_about(&seen, "web");
    assert!(
        !events.iter().any(|e| e.body["reason"] == "Adopted"),
        "{events:#?}"
    );
    let not_adopted: Vec<&&Seen> = events
        .iter()
        .filter(|e| e.body["reason"] == "NotAdopted")
        .collect();
    assert_eq!(not_adopted.len(), 1, "{seen:#?}");
    assert_eq!(not_adopted[0].body["type"], "Normal");
    let note = not_adopted[0].body["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("role Reader ({READER}) at {}", rg()))
            && note.contains(THEIRS)
            && note.contains("held, not adopted"),
        "{note}"
    );
}

/// The follow-up's regression (reconciler): an imported object without adoption lists a role
/// assignment someone else made; it is told once (NotAdopted, status.heldNotAdopted), not on
/// the next pass; dropping the line sends no DELETE (the assignment stays in Azure). With
/// the annotation, the same assignment is recorded by its name, named in an Adopted Event,
/// and a later drop deletes exactly it.
#[tokio::test]
async fn a_listed_grant_someone_else_made_is_left_alone_unless_adopted() {
    let sim = sim_with_grants().await;
    let with_reader = json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")],
        "roleAssignments": [{"identity": uai("uai-a"), "role": "Reader", "scope": rg()}]});
    let without = json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]});
    let theirs_id = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{THEIRS}",
        rg()
    );
    let held_by_sim = |sim: &SimHandle| {
        sim.role_assignments_of(PA).iter().any(|a| {
            a["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&theirs_id))
        })
    };
    let with_status = |mut o: VirtualMachineIdentity, st: &Value| {
        o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        o.status = Some(serde_json::from_value(st.clone()).unwrap());
        o
    };

    let o = object("web", with_reader.clone());
    let seen = run_with_graph(o.clone(), &sim).await;
    assert!(writes_sent(&sim).is_empty(), "{:#?}", writes_sent(&sim));
    let st = status_patches(&seen, NS, "web").pop().unwrap().body["status"].clone();
    assert_eq!(st["applied"].get("roleAssignments"), None, "{st:#}");
    assert!(st["heldNotAdopted"].to_string().contains(THEIRS), "{st:#}");
    let reasons: Vec<Value> = events_about(&seen, "web")
        .iter()
        .map(|e| e.body["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("NotAdopted")], "{seen:#?}");

    // The next pass: as declared, nothing said again, no status write.
    let again = with_status(o.clone(), &st);
    let seen = run_with_graph(again, &sim).await;
    assert!(events_about(&seen, "web").is_empty(), "{seen:#?}");
    assert!(status_patches(&seen, NS, "web").is_empty(), "{seen:#?}");

    // Dropped from the spec: no DELETE; the assignment stays; nothing held any more.
    let dropped = with_status(object("web", without.clone()), &st);
    let seen = run_with_graph(dropped, &sim).await;
    assert!(writes_sent(&sim).is_empty(), "{:#?}", writes_sent(&sim));
    assert!(held_by_sim(&sim), "someone else's assignment stays");
    let st2 = status_patches(&seen, NS, "web").pop().unwrap().body["status"].clone();
    assert!(st2["heldNotAdopted"].is_null(), "{st2:#}");

    // Adopted: recorded by its own name without a write, named in the Adopted Event.
    let adopting = annotated(
        with_status(object("web", with_reader), &st),
        ADOPT_ANNOTATION,
        "true",
    );
    let seen = run_with_graph(adopting, &sim).await;
    assert!(writes_sent(&sim).is_empty(), "{:#?}", writes_sent(&sim));
    let st3 = status_patches(&seen, NS, "web").pop().unwrap().body["status"].clone();
    assert!(
        st3["applied"]["roleAssignments"][0]["id"]
            .as_str()
            .is_some_and(|i| i.eq_ignore_ascii_case(&theirs_id)),
        "{st3:#}"
    );
    assert!(st3["heldNotAdopted"].is_null(), "{st3:#}");
    let events = events_about(&seen, "web");
    assert_eq!(events.len(), 1, "{seen:#?}");
    assert_event(events[0], "Normal", "Adopted");
    assert!(events[0].body["note"].as_str().unwrap().contains(THEIRS));

    // Then dropped: exactly that assignment is deleted.
    let dropped = annotated(
        with_status(object("web", without), &st3),
        ADOPT_ANNOTATION,
        "true",
    );
    run_with_graph(dropped, &sim).await;
    let sent = writes_sent(&sim);
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].method, "DELETE");
    assert!(sent[0].path.eq_ignore_ascii_case(&theirs_id), "{sent:#?}");
    assert!(!held_by_sim(&sim));
}

/// An object deleted under observe releases nothing (observe never writes): its finalizer
/// goes, and what it recorded stays on the VM.
#[tokio::test]
async fn an_object_deleted_under_observe_releases_nothing() {
    let sim = sim(Some(&format!(
        "{{type: UserAssigned, userAssignedIdentities: [{}]}}",
        uai("uai-a")
    )))
    .await;
    let mut o = annotated(
        object(
            "web",
            json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
        ),
        RECONCILE_POLICY_ANNOTATION,
        "observe",
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
    let (_, seen) = run(o, &[policy(allow_all_policy(NS))], &sim).await;
    assert!(sim.requests().is_empty(), "{:#?}", sim.requests());
    assert_eq!(seen.len(), 1, "only the finalizer's removal: {seen:#?}");
    assert_request(&seen[0], "PATCH", &object_path("web"));
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"finalizers": [], "resourceVersion": "7"}})
    );
    assert!(
        sim.identity_of(&vm())
            .unwrap()
            .to_string()
            .contains("uai-a")
    );
}

/// One VM, a managed object and an observed one: the managed one is written (one PATCH, its
/// identity only), the observed one's own change is not made and it is told the drift that
/// remains; its pendingWrites were the target's writes as `plan` prints them.
#[tokio::test]
async fn on_a_shared_target_the_managed_object_is_written_and_the_observed_one_is_not() {
    let sim = sim(None).await;
    let managed = object(
        "web",
        json!({"target": vm(), "userAssignedIdentities": [uai("uai-a")]}),
    );
    let observed = annotated(
        object(
            "obs",
            json!({"target": vm(), "userAssignedIdentities": [uai("uai-b")]}),
        ),
        RECONCILE_POLICY_ANNOTATION,
        "observe",
    );
    let seen = run_all(
        vec![managed, observed],
        &[policy(allow_all_policy(NS))],
        &sim,
    )
    .await;
    let writes = arm_writes(&sim);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(
        writes[0].body.clone().unwrap_or_default(),
        json!({"identity": {"type": "UserAssigned",
                            "userAssignedIdentities": {uai("uai-a"): {}}}})
    );
    let identity = sim.identity_of(&vm()).unwrap().to_string();
    assert!(
        identity.contains("uai-a") && !identity.contains("uai-b"),
        "{identity}"
    );
    // The observed object: no finalizer, Drifted with both additions pending (as `plan`
    // prints the target's writes for both objects, read before the managed write).
    assert!(
        !seen.iter().any(|s| s.path == object_path("obs")),
        "{seen:#?}"
    );
    let obs = status_patches(&seen, NS, "obs");
    assert_eq!(obs.len(), 1, "{seen:#?}");
    let pending = obs[0].body["status"]["pendingWrites"].clone();
    assert_eq!(
        pending,
        json!([{"method": "PATCH", "id": vm(), "apiVersion": "2025-04-01",
                "body": {"identity": {"type": "UserAssigned", "userAssignedIdentities": {
                    uai("uai-a"): {}, uai("uai-b"): {}}}},
                "ifMatch": "\"1\""}])
    );
    assert_eq!(condition(&obs[0].body, "Drifted")["status"], "True");
    // The managed object: Ready, its identity recorded.
    let web = status_patches(&seen, NS, "web").pop().unwrap().body.clone();
    assert_eq!(condition(&web, "Ready")["reason"], "Converged");
    assert_eq!(
        web["status"]["applied"]["userAssignedIdentities"],
        json!([uai("uai-a")])
    );
}
