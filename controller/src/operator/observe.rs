//! Observe-only (issue 15 part 3), without Kubernetes or Azure: which reconcile policy an
//! object is under, and what an object under `observe` is told (condition `Drifted`,
//! `status.pendingWrites`, the `Drifted` Event). The reconciler reads, plans as it would for
//! `manage`, and hands the result to [`drift_report`] instead of writing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use vmidentity_planner::{LiveResource, Write};

use super::conditions;
use super::decide::{self, Note, Reason, Refusal, Report, Success};
use super::events::EventType;
use crate::crd::{PendingWrite, RECONCILE_POLICY_ANNOTATION, VirtualMachineIdentity};
use crate::engine::TargetResult;

pub use super::conditions::DRIFTED;

/// At most this many writes are listed in `status.pendingWrites` ...
pub const MAX_PENDING_WRITES: usize = 20;
/// ... and at most this many bytes of them (as JSON): a status stays far below etcd's
/// 1.5 MiB object limit whatever the target's plan. The rest is counted in
/// `status.pendingWritesOmitted`.
pub const MAX_PENDING_BYTES: usize = 16 * 1024;

/// What the controller does with an object: `manage` reads, plans and writes; `observe` reads
/// and plans exactly as `manage` would and never writes to ARM, Authorization or Graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReconcilePolicy {
    Manage,
    Observe,
}

impl ReconcilePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcilePolicy::Manage => "manage",
            ReconcilePolicy::Observe => "observe",
        }
    }

    fn parse(s: &str) -> Option<ReconcilePolicy> {
        match s {
            "manage" => Some(ReconcilePolicy::Manage),
            "observe" => Some(ReconcilePolicy::Observe),
            _ => None,
        }
    }
}

/// The object's reconcile policy: its own [`RECONCILE_POLICY_ANNOTATION`], else its
/// Namespace's, else the controller's default. An annotation with another value than
/// `manage` or `observe` refuses the object (Stalled `InvalidReconcilePolicy`, one Warning):
/// the controller never guesses which of the two was meant.
pub fn reconcile_policy(
    object: Option<&str>,
    namespace: Option<&str>,
    namespace_name: &str,
    default: ReconcilePolicy,
) -> Result<ReconcilePolicy, Refusal> {
    let invalid = |value: &str, on: String| Refusal {
        reason: Reason::InvalidReconcilePolicy,
        message: format!(
            "annotation {RECONCILE_POLICY_ANNOTATION} on {on} is {value:?}; it must be \"manage\" or \"observe\" (nothing is read or written for this object until it is)"
        ),
    };
    if let Some(v) = object {
        return ReconcilePolicy::parse(v).ok_or_else(|| invalid(v, "the object".into()));
    }
    if let Some(v) = namespace {
        return ReconcilePolicy::parse(v)
            .ok_or_else(|| invalid(v, format!("namespace {namespace_name}")));
    }
    Ok(default)
}

/// The writes of `result` as `vmidentity plan -o json` prints them (rendered for
/// `graph_endpoint`, the one rendering [`Write::request`]), at most [`MAX_PENDING_WRITES`]
/// and [`MAX_PENDING_BYTES`]; and how many were left out.
pub fn pending_writes(writes: &[Write], graph_endpoint: &str) -> (Vec<PendingWrite>, usize) {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for w in writes {
        let value = serde_json::to_value(w.request(graph_endpoint)).unwrap_or_default();
        let size = value.to_string().len();
        if out.len() == MAX_PENDING_WRITES || bytes + size > MAX_PENDING_BYTES {
            break;
        }
        let Ok(p) = serde_json::from_value::<PendingWrite>(value) else {
            break;
        };
        bytes += size;
        out.push(p);
    }
    let omitted = writes.len() - out.len();
    (out, omitted)
}

/// The `Drifted` condition's summary: how many writes are pending on the target and what they
/// do, in words (the same words as the `Applied` Event).
fn summary(short: &str, changes: &[String]) -> String {
    match changes.len() {
        0 => format!("{short} is as declared"),
        n => format!(
            "{n} change{} pending on {short} (reconcile policy observe: not written): {}",
            if n == 1 { "" } else { "s" },
            changes.join("; ")
        ),
    }
}

fn drifted_condition(
    previous: &[Condition],
    drifted: bool,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if drifted { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == DRIFTED && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: DRIFTED.to_string(),
        status: status.to_string(),
        reason: if drifted {
            "PendingWrites"
        } else {
            "AsDeclared"
        }
        .to_string(),
        message: message.chars().take(32 * 1024).collect(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// What an object under `observe` is told after its target was read and planned (`result`:
/// the plan and grant writes `manage` would send, none sent): Ready `Observed`, `Drifted`
/// True with the summary or False, `status.pendingWrites`, and a `Drifted` Event when the
/// drift appears or changes (a Normal `DriftCleared` when it goes), never on a pass that finds
/// the same drift again. Its ownership record is left as it is: nothing was written.
pub fn drift_report(
    o: &VirtualMachineIdentity,
    result: &TargetResult,
    live: &LiveResource,
    graph_endpoint: &str,
    now: Timestamp,
) -> Report {
    let Some(plan) = &result.plan else {
        return Report::default();
    };
    let short = plan.target.short();
    let changes = Success::new(plan, result, live, []).changes;
    let writes = result.all_writes();
    let drifted = !writes.is_empty();
    let message = summary(&short, &changes);
    let (pending, omitted) = pending_writes(&writes, graph_endpoint);

    let old = o.status.clone().unwrap_or_default();
    let phase = decide::ready(
        Reason::Observed,
        format!("reconcile policy observe: {short} is read and planned, never written"),
    );
    let mut conds = conditions::conditions(&old.conditions, &phase, o.metadata.generation, now);
    conds.push(drifted_condition(
        &old.conditions,
        drifted,
        &message,
        o.metadata.generation,
        now,
    ));
    if conditions::same(&old.conditions, &conds) {
        conds = old.conditions.clone();
    }
    let mut st = old.clone();
    st.observed_generation = o.metadata.generation;
    st.conditions = conds;
    st.target_name = Some(plan.target.name().to_string());
    // The `User` column: how many of the identities it lists the target carries now.
    let present = o
        .spec
        .user_assigned_identities
        .iter()
        .filter(|u| {
            live.identity
                .user_assigned
                .contains_key(&u.to_ascii_lowercase())
        })
        .count();
    st.user_assigned_count = Some(present as i64);
    st.pending_writes = pending;
    st.pending_writes_omitted = (omitted > 0).then_some(omitted as i64);

    let before = old
        .conditions
        .iter()
        .find(|c| c.type_ == DRIFTED)
        .map(|c| (c.status == "True", c.message.as_str()));
    let mut events_after = Vec::new();
    match before {
        Some((true, m)) if drifted && m == message => {}
        _ if drifted => events_after.push(Note {
            type_: EventType::Warning,
            reason: Reason::Drifted,
            note: message.clone(),
        }),
        Some((true, _)) => events_after.push(Note {
            type_: EventType::Normal,
            reason: Reason::DriftCleared,
            note: message.clone(),
        }),
        _ => {}
    }
    Report {
        events: vec![],
        status: (o.status.as_ref() != Some(&st)).then_some(st),
        events_after,
    }
}

/// An object that leaves `observe`: its `Drifted` condition and pending writes go (the next
/// status of a managed object carries neither). True when it has them.
pub fn was_observed(o: &VirtualMachineIdentity) -> bool {
    o.status.as_ref().is_some_and(|s| {
        !s.pending_writes.is_empty() || s.conditions.iter().any(|c| c.type_ == DRIFTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vmidentity_planner::plan_target;

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
    const U1: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn object(uais: &[&str]) -> VirtualMachineIdentity {
        serde_json::from_value(json!({
            "apiVersion": "vmidentity.dev/v1alpha1", "kind": "VirtualMachineIdentity",
            "metadata": {"name": "web", "namespace": "team-a", "generation": 2},
            "spec": {"target": VM, "userAssignedIdentities": uais},
        }))
        .unwrap()
    }

    fn live(uais: &[&str]) -> LiveResource {
        let dict: serde_json::Map<String, serde_json::Value> = uais
            .iter()
            .map(|u| (u.to_string(), json!({"principalId": "p", "clientId": "c"})))
            .collect();
        let identity = if uais.is_empty() {
            json!({"type": "None"})
        } else {
            json!({"type": "UserAssigned", "userAssignedIdentities": dict})
        };
        LiveResource::from_arm_json(&json!({"id": VM, "identity": identity})).unwrap()
    }

    fn result(o: &VirtualMachineIdentity, l: &LiveResource) -> TargetResult {
        let d = o.desired().unwrap();
        let plan = plan_target(std::slice::from_ref(&d), l).unwrap();
        TargetResult {
            target: VM.into(),
            plan: Some(plan),
            ..TargetResult::for_group(std::slice::from_ref(&d))
        }
    }

    fn cond<'a>(st: &'a crate::crd::VirtualMachineIdentityStatus, type_: &str) -> &'a Condition {
        st.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn the_most_specific_policy_wins_and_a_bad_value_is_refused() {
        use ReconcilePolicy::*;
        assert_eq!(reconcile_policy(None, None, "ns", Manage), Ok(Manage));
        assert_eq!(reconcile_policy(None, None, "ns", Observe), Ok(Observe));
        assert_eq!(
            reconcile_policy(None, Some("observe"), "ns", Manage),
            Ok(Observe)
        );
        assert_eq!(
            reconcile_policy(Some("manage"), Some("observe"), "ns", Observe),
            Ok(Manage)
        );
        let bad = reconcile_policy(None, Some("Observe"), "team-a", Manage).unwrap_err();
        assert_eq!(bad.reason, Reason::InvalidReconcilePolicy);
        assert_eq!(
            bad.message,
            "annotation vmidentity.dev/reconcile-policy on namespace team-a is \"Observe\"; it must be \"manage\" or \"observe\" (nothing is read or written for this object until it is)"
        );
        // The object's value is checked even when the namespace's is valid.
        let bad = reconcile_policy(Some("skip"), Some("observe"), "ns", Manage).unwrap_err();
        assert!(bad.message.contains("on the object is \"skip\""), "{bad:?}");
    }

    #[test]
    fn pending_writes_are_the_plan_json_elements_bounded() {
        let o = object(&[U1]);
        let r = result(&o, &live(&[]));
        let writes = r.all_writes();
        let (listed, omitted) = pending_writes(&writes, "https://graph.microsoft.com");
        assert_eq!(omitted, 0);
        // Exactly the `plan -o json` element.
        assert_eq!(
            serde_json::to_value(&listed).unwrap(),
            json!([{"method": "PATCH", "id": VM, "apiVersion": "2025-04-01",
                    "body": {"identity": {"type": "UserAssigned", "userAssignedIdentities": {U1: {}}}}}])
        );
        // Many writes: capped by count, the rest counted.
        let many: Vec<Write> = (0..30)
            .map(|i| Write::RoleAssignmentDelete {
                id: format!(
                    "/subscriptions/s1/providers/Microsoft.Authorization/roleAssignments/{i}"
                ),
            })
            .collect();
        let (listed, omitted) = pending_writes(&many, "https://graph.microsoft.com");
        assert_eq!((listed.len(), omitted), (MAX_PENDING_WRITES, 10));
        assert_eq!(listed[0].body, None);
        // Big writes: capped by bytes.
        let big: Vec<Write> = (0..5)
            .map(|i| Write::RoleAssignmentDelete {
                id: format!("/{i}/{}", "x".repeat(6000)),
            })
            .collect();
        let (listed, omitted) = pending_writes(&big, "https://graph.microsoft.com");
        assert_eq!((listed.len(), omitted), (2, 3));
    }

    #[test]
    fn drift_is_reported_once_then_again_only_when_it_changes_or_clears() {
        let o = object(&[U1]);
        let r = result(&o, &live(&[]));
        let first = drift_report(&o, &r, &live(&[]), "https://graph.microsoft.com", now());
        let st = first.status.clone().unwrap();
        let drifted = cond(&st, DRIFTED);
        assert_eq!(
            (drifted.status.as_str(), drifted.reason.as_str()),
            ("True", "PendingWrites")
        );
        assert_eq!(
            drifted.message,
            format!(
                "1 change pending on vm/vm1 (reconcile policy observe: not written): add user-assigned identity {U1}"
            )
        );
        let ready = cond(&st, conditions::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Observed")
        );
        assert_eq!(st.pending_writes.len(), 1);
        assert_eq!(st.pending_writes_omitted, None);
        assert_eq!(st.user_assigned_count, Some(0));
        assert_eq!(st.target_name.as_deref(), Some("vm1"));
        assert_eq!(st.applied, None, "nothing recorded: nothing was written");
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(first.events_after.len(), 1);
        assert_eq!(first.events_after[0].type_, EventType::Warning);
        assert_eq!(first.events_after[0].reason, Reason::Drifted);

        // The same drift again: no status write, no Event.
        let mut seen = o.clone();
        seen.status = Some(st);
        assert_eq!(
            drift_report(&seen, &r, &live(&[]), "https://graph.microsoft.com", now()),
            Report::default()
        );

        // Another drift: a new Event.
        const U2: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u2";
        let mut two = object(&[U1, U2]);
        two.status = seen.status.clone();
        let r2 = result(&two, &live(&[]));
        let changed = drift_report(&two, &r2, &live(&[]), "https://graph.microsoft.com", now());
        assert_eq!(changed.events_after[0].reason, Reason::Drifted);
        assert!(
            changed.events_after[0]
                .note
                .starts_with("2 changes pending")
        );

        // Cleared (someone made the target as declared): Drifted False, pending writes gone,
        // a Normal DriftCleared.
        let cleared = drift_report(&seen, &result(&o, &live(&[U1])), &live(&[U1]), "g", now());
        let st = cleared.status.unwrap();
        let drifted = cond(&st, DRIFTED);
        assert_eq!(
            (drifted.status.as_str(), drifted.reason.as_str()),
            ("False", "AsDeclared")
        );
        assert_eq!(drifted.message, "vm/vm1 is as declared");
        assert!(st.pending_writes.is_empty());
        assert_eq!(cleared.events_after[0].type_, EventType::Normal);
        assert_eq!(cleared.events_after[0].reason, Reason::DriftCleared);

        // Never drifted and as declared: no Event.
        let fresh = drift_report(&o, &result(&o, &live(&[U1])), &live(&[U1]), "g", now());
        assert!(fresh.events_after.is_empty());
        assert!(!was_observed(&o));
        assert!(was_observed(&seen));
    }
}
