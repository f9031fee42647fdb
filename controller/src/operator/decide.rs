//! What a reconcile decides, without Kubernetes or Azure: which objects of a target take
//! part, the status and Events of each object for each outcome, and when to look again.
//! The reconciler (`reconcile.rs`) reads, calls these, and writes what they return.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::warn;
use vmidentity_azure::ErrorClass;
use vmidentity_planner::{Applied, DesiredObject, LiveResource, PlanError, TargetPlan, Write};

use super::conditions::{self, Phase};
use super::credentials::CredentialError;
use super::events::EventType;
use crate::crd::{Principals, VirtualMachineIdentity, VirtualMachineIdentityStatus};
use crate::engine::{EngineError, TargetResult};

/// Why an object stands where it stands: the reason of its conditions and Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidSpec,
    PolicyDenied,
    CredentialConflict,
    TargetNotFound,
    IdentityNotFound,
    GrantsPending,
    Applied,
    Converged,
    Detached,
    /// Deleted with `deletionPolicy: Retain`: what it applied stays.
    Retained,
    DriftRepaired,
    /// Pre-existing identities or grants became the object's (issue 15 part 2).
    Adopted,
    /// Listed grants held before, made by someone else, left alone (not adopted).
    NotAdopted,
    /// Reconcile policy `observe`: read and planned, never written (Ready's reason).
    Observed,
    /// Under `observe`: the target differs from what its objects declare.
    Drifted,
    /// Under `observe`: the drift went (someone made the target as declared).
    DriftCleared,
    /// The `vmidentity.dev/reconcile-policy` annotation is neither `manage` nor `observe`.
    InvalidReconcilePolicy,
    /// The namespace's credential cannot be used.
    Credential(&'static str),
    /// Azure refused or failed.
    Azure(ErrorClass),
    /// The planner refused the target.
    Plan(&'static str),
    /// The engine could not write the target (other than an Azure failure).
    Engine(&'static str),
    /// A record of `status.applied` that is not acted on.
    Untrusted(&'static str),
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::PolicyDenied => "PolicyDenied",
            Reason::CredentialConflict => "CredentialConflict",
            Reason::TargetNotFound => "TargetNotFound",
            Reason::IdentityNotFound => "IdentityNotFound",
            Reason::GrantsPending => "GrantsPending",
            Reason::Applied => "Applied",
            Reason::Converged => "Converged",
            Reason::Detached => "Detached",
            Reason::Retained => "Retained",
            Reason::DriftRepaired => "DriftRepaired",
            Reason::Adopted => "Adopted",
            Reason::NotAdopted => "NotAdopted",
            Reason::Observed => "Observed",
            Reason::Drifted => "Drifted",
            Reason::DriftCleared => "DriftCleared",
            Reason::InvalidReconcilePolicy => "InvalidReconcilePolicy",
            Reason::Azure(class) => class.reason(),
            Reason::Credential(r) | Reason::Plan(r) | Reason::Engine(r) | Reason::Untrusted(r) => r,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&CredentialError> for Reason {
    fn from(e: &CredentialError) -> Self {
        Reason::Credential(e.reason())
    }
}

impl From<&PlanError> for Reason {
    fn from(e: &PlanError) -> Self {
        Reason::Plan(e.reason())
    }
}

impl From<&EngineError> for Reason {
    fn from(e: &EngineError) -> Self {
        match e {
            EngineError::Azure(a) => Reason::Azure(a.class()),
            EngineError::Plan(p) => p.into(),
            other => Reason::Engine(other.reason()),
        }
    }
}

/// A phase with its reason.
pub fn ready(reason: Reason, message: String) -> Phase {
    Phase::Ready {
        reason: reason.as_str().into(),
        message,
    }
}

pub fn progressing(reason: Reason, message: String) -> Phase {
    Phase::Progressing {
        reason: reason.as_str().into(),
        message,
    }
}

pub fn stalled(reason: Reason, message: String) -> Phase {
    Phase::Stalled {
        reason: reason.as_str().into(),
        message,
    }
}

/// Why an object is not planned as it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The Stalled reason: InvalidSpec, PolicyDenied, a credential's, CredentialConflict.
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn invalid(errs: &[vmidentity_planner::FieldError]) -> Refusal {
        Refusal {
            reason: Reason::InvalidSpec,
            message: errs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// An Event to publish about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub type_: EventType,
    pub reason: Reason,
    pub note: String,
}

impl Note {
    fn warning(reason: Reason, note: String) -> Note {
        Note {
            type_: EventType::Warning,
            reason,
            note,
        }
    }
}

/// What to write about one object: Events, then its status (None: unchanged), then more
/// Events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub events: Vec<Note>,
    pub status: Option<VirtualMachineIdentityStatus>,
    pub events_after: Vec<Note>,
}

// ---- Participation -------------------------------------------------------------------------

/// What an object is to this pass of its target, once the guardrails have spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Allowed and not being deleted: its own spec is planned and written.
    Allowed,
    /// Being deleted, with a credential: releases what it applied.
    Releasing,
    /// Refused but owning something on the target: keeps holding it, nothing more.
    Held,
    /// Takes no part in credential choice or planning.
    Excluded,
}

/// An object deleted before it was ever claimed (no finalizer) applied nothing: it is not
/// even looked at.
pub fn considered(deleting: bool, has_finalizer: bool) -> bool {
    !deleting || has_finalizer
}

/// The object's part, from its guardrail verdict. A refused object that owns nothing takes
/// no part, so it can never stall or freeze another tenant's objects on the same target.
pub fn part(deleting: bool, allowed: bool, has_credential: bool, owns_something: bool) -> Part {
    match (deleting, allowed) {
        (true, _) if has_credential => Part::Releasing,
        (true, _) => Part::Excluded,
        (false, true) => Part::Allowed,
        (false, false) if owns_something => Part::Held,
        (false, false) => Part::Excluded,
    }
}

/// What a refused object still holds on the target: the identities of its record that the
/// target still carries (no role assignment or group membership). None when that is nothing.
pub fn held_record(mut applied: Applied, live: &LiveResource) -> Option<Applied> {
    applied.user_assigned_identities.retain(|u| {
        live.identity
            .user_assigned
            .contains_key(&u.to_ascii_lowercase())
    });
    applied.system_assigned = applied
        .system_assigned
        .filter(|s| *s && live.identity.system_assigned);
    applied.role_assignments.clear();
    applied.group_memberships.clear();
    (!applied.is_empty()).then_some(applied)
}

/// Who held a target first, when objects on it conflict (smaller: senior; see
/// [`vmidentity_planner::plan_target_by_seniority`]), then the older `creationTimestamp`:
/// 0. working now: its current generation reconciled, not Stalled, and Ready or owning
///    something on the target (a passing error such as a 429 does not demote it);
/// 1. working before an edit: Ready at an older generation, or owning something;
/// 2. the rest (newcomers);
/// 3. objects already refused for a conflict (`Conflict`, `CredentialConflict`), whatever they
///    own, so a refused object never overtakes the one that keeps the target.
///
/// A newcomer, or an object just edited into a conflict, is therefore never preferred to one
/// that works, and the object that works stays senior while it is edited or retried.
pub fn seniority(o: &VirtualMachineIdentity) -> (u8, Option<Timestamp>) {
    let owns = !o.applied().is_empty();
    let generation = o.metadata.generation;
    let conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] =
        o.status.as_ref().map_or(&[], |s| &s.conditions);
    let status_current = o
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == generation);
    // True now; `current`: about the object's current generation. Ready under reconcile
    // policy observe (reason Observed) says nothing was ever written: it counts as not Ready,
    // so an object switched to manage never takes a target from one that works.
    let holds = |type_: &str, current: bool| {
        conds.iter().any(|c| {
            c.type_ == type_
                && c.status == "True"
                && !(type_ == conditions::READY && c.reason == Reason::Observed.as_str())
                && (!current || c.observed_generation == generation || status_current)
        })
    };
    let refused = conds.iter().any(|c| {
        c.type_ == conditions::STALLED
            && c.status == "True"
            && (c.reason == vmidentity_planner::Refused::REASON
                || c.reason == Reason::CredentialConflict.as_str())
    });
    let ready_now = holds(conditions::READY, true);
    let busy_now = holds(conditions::RECONCILING, true) && !holds(conditions::STALLED, false);
    let tier = if refused {
        3
    } else if ready_now || (busy_now && owns) {
        0
    } else if holds(conditions::READY, false) || owns {
        1
    } else {
        2
    };
    (tier, o.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// An object refused because it conflicts with objects that held its target first: Stalled
/// with reason `Conflict`, naming them (a Warning when new).
pub fn conflict_refusal(r: &vmidentity_planner::Refused) -> Refusal {
    Refusal {
        reason: Reason::Plan(vmidentity_planner::Refused::REASON),
        message: r.to_string(),
    }
}

/// The credential clash of a target's writers (credential keys in member order): one PATCH
/// cannot carry two credentials. Names the first and the last differing key.
pub fn credential_clash<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Refusal> {
    let mut first: Option<&str> = None;
    let mut clash = None;
    for k in keys {
        match first {
            None => first = Some(k),
            Some(f) if f != k => {
                clash = Some(format!(
                    "objects of this target reconcile with different Azure credentials ({f} and {k}): one PATCH cannot carry both; keep each VM's objects in namespaces that share a credential"
                ));
            }
            Some(_) => {}
        }
    }
    clash.map(|message| Refusal {
        reason: Reason::CredentialConflict,
        message,
    })
}

/// The credential of a target's writers, by seniority (`writers`: object, its seniority, its
/// credential key): one PATCH carries one credential, so the most senior writers' credential
/// is the target's, and each writer with another credential is refused with
/// `CredentialConflict` naming who keeps the target. `Err` (the whole target refused, as
/// [`credential_clash`] does) when the most senior writers themselves differ.
pub fn credential_by_seniority<K: Ord>(
    writers: &[(vmidentity_planner::ObjectRef, K, &str)],
) -> Result<Vec<(vmidentity_planner::ObjectRef, Refusal)>, Refusal> {
    let Some(senior) = writers.iter().map(|(_, k, _)| k).min() else {
        return Ok(Vec::new());
    };
    let seniors: Vec<&(vmidentity_planner::ObjectRef, K, &str)> =
        writers.iter().filter(|(_, k, _)| k == senior).collect();
    if let Some(clash) = credential_clash(seniors.iter().map(|(_, _, key)| *key)) {
        return Err(clash);
    }
    let key = seniors[0].2;
    let keepers: Vec<String> = writers
        .iter()
        .filter(|(_, _, k)| *k == key)
        .map(|(o, _, _)| o.to_string())
        .collect();
    Ok(writers
        .iter()
        .filter(|(_, _, k)| *k != key)
        .map(|(o, _, k)| {
            (
                o.clone(),
                Refusal {
                    reason: Reason::CredentialConflict,
                    message: format!(
                        "objects of this target reconcile with different Azure credentials ({key} and {k}): one PATCH cannot carry both; {} held the target first and keeps it, so {o} is refused (nothing is written for it); keep each VM's objects in namespaces that share a credential",
                        keepers.join(", ")
                    ),
                },
            )
        })
        .collect())
}

// ---- Status of one object -----------------------------------------------------------------

/// The object's status with the conditions of `phase` (everything else kept); None when the
/// conditions say what they already say.
pub fn phase_status(
    o: &VirtualMachineIdentity,
    phase: &Phase,
    now: Timestamp,
) -> Option<VirtualMachineIdentityStatus> {
    let mut st = o.status.clone().unwrap_or_default();
    let conds = conditions::conditions(&st.conditions, phase, o.metadata.generation, now);
    if conditions::same(&st.conditions, &conds) {
        return None;
    }
    st.conditions = conds;
    if matches!(phase, Phase::Stalled { .. }) {
        st.observed_generation = o.metadata.generation;
    }
    Some(st)
}

/// Stalled is new, or stalled for another reason.
pub fn stalled_changed(o: &VirtualMachineIdentity, phase: &Phase) -> bool {
    let Phase::Stalled { reason, .. } = phase else {
        return true;
    };
    !o.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::STALLED && c.status == "True" && c.reason == *reason)
    })
}

fn stalled_message_changed(o: &VirtualMachineIdentity, message: &str) -> bool {
    !o.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::STALLED && c.message == message)
    })
}

/// Ready for the object's current generation (under `manage`: an object that was only
/// observed never saw its target as declared, so its first write is not a drift repair).
pub fn was_ready(o: &VirtualMachineIdentity) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.observed_generation == o.metadata.generation
            && s.conditions.iter().any(|c| {
                c.type_ == conditions::READY
                    && c.status == "True"
                    && c.reason != Reason::Observed.as_str()
            })
    })
}

/// A refused object: Stalled, with a Warning when the refusal is new.
pub fn refusal(o: &VirtualMachineIdentity, r: &Refusal, now: Timestamp) -> Report {
    let phase = stalled(r.reason, r.message.clone());
    let mut events = Vec::new();
    if stalled_changed(o, &phase) || stalled_message_changed(o, &r.message) {
        events.push(Note::warning(r.reason, r.message.clone()));
    }
    Report {
        events,
        status: phase_status(o, &phase, now),
        events_after: vec![],
    }
}

/// An object stalled by its target (a plan or engine error, a missing target): a Warning
/// (`note`) only when the stall is new.
pub fn stall(
    o: &VirtualMachineIdentity,
    reason: Reason,
    message: String,
    note: String,
    now: Timestamp,
) -> Report {
    let phase = stalled(reason, message);
    let mut events = Vec::new();
    if stalled_changed(o, &phase) {
        events.push(Note::warning(reason, note));
    }
    Report {
        events,
        status: phase_status(o, &phase, now),
        events_after: vec![],
    }
}

/// The target does not exist (or the controller cannot see it).
pub fn target_not_found(
    o: &VirtualMachineIdentity,
    target: &str,
    detail: &str,
    now: Timestamp,
) -> Report {
    stall(
        o,
        Reason::TargetNotFound,
        format!("{target} does not exist (or the controller cannot see it): {detail}"),
        format!("{target} not found"),
        now,
    )
}

/// An Azure failure, for one object: Reconciling when retryable, Stalled otherwise; a
/// Warning the first time.
pub fn azure_failure(
    o: &VirtualMachineIdentity,
    class: ErrorClass,
    message: &str,
    now: Timestamp,
) -> Report {
    let reason = Reason::Azure(class);
    let retryable = class.is_retryable();
    let phase = if retryable {
        progressing(reason, message.to_string())
    } else {
        stalled(reason, message.to_string())
    };
    let first = if retryable {
        !o.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == conditions::RECONCILING && c.reason == reason.as_str())
        })
    } else {
        stalled_changed(o, &phase)
    };
    Report {
        events: if first {
            vec![Note::warning(reason, message.to_string())]
        } else {
            vec![]
        },
        status: phase_status(o, &phase, now),
        events_after: vec![],
    }
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Converged,
    Applied,
    /// Look again after this long (before jitter).
    Retry(Duration),
    /// Needs a human; looked at again at the resync period (an identity or VM may appear).
    Stalled,
    /// Nothing left to do until an object changes.
    Idle,
}

/// Until Azure answers otherwise: how long to wait for a principal Azure has not shown yet.
pub const PENDING_RETRY: Duration = Duration::from_secs(30);

impl Outcome {
    /// The `result` label of the reconcile metrics.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Converged => "converged",
            Outcome::Applied => "applied",
            Outcome::Retry(_) => "retry",
            Outcome::Stalled => "stalled",
            Outcome::Idle => "idle",
        }
    }

    /// The target is as declared (its backoff starts over).
    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::Converged | Outcome::Applied)
    }

    /// When to look at the target again (before jitter); None: when an object changes.
    pub fn requeue(self, resync: Duration, per_target_resync: bool) -> Option<Duration> {
        match self {
            Outcome::Converged | Outcome::Applied => per_target_resync.then_some(resync),
            Outcome::Retry(after) => Some(after),
            Outcome::Stalled => Some(resync),
            Outcome::Idle => None,
        }
    }
}

/// After an Azure failure: Retry-After when Azure gave one (at least a second), else the
/// target's backoff, for a retryable failure; a look at resync when a human may fix it.
pub fn azure_outcome(
    class: ErrorClass,
    retry_after: Option<Duration>,
    backoff: impl FnOnce() -> Duration,
) -> Outcome {
    if class.is_retryable() {
        // Honour Retry-After by requeueing, never by holding a worker.
        return Outcome::Retry(match retry_after {
            Some(d) => d.max(Duration::from_secs(1)),
            None => backoff(),
        });
    }
    match class {
        // May fix itself (rights granted, identity created): look again at resync.
        ErrorClass::Unauthenticated | ErrorClass::Forbidden | ErrorClass::IdentityNotFound => {
            Outcome::Stalled
        }
        _ => Outcome::Idle,
    }
}

/// The outcome of a pass that wrote (or found nothing to write).
pub fn success_outcome(plan: &TargetPlan, result: &TargetResult) -> Outcome {
    let pending = result
        .grants
        .as_ref()
        .is_some_and(|g| !g.pending.is_empty());
    if pending {
        // A principal Azure has not shown yet (a just-created identity): look again soon.
        Outcome::Retry(PENDING_RETRY)
    } else if plan.is_converged() && result.grant_writes.is_empty() {
        Outcome::Converged
    } else {
        Outcome::Applied
    }
}

// ---- A pass that wrote ---------------------------------------------------------------------

/// A written (or already converged) target, as its objects are told. Each object is told
/// its own part of the target's change (its identities, its grants); the target-wide summary
/// ([`Success::changes`]) goes to the logs.
pub struct Success<'a> {
    pub plan: &'a TargetPlan,
    pub result: &'a TargetResult,
    pub live: &'a LiveResource,
    /// Everything written to the target, in words.
    pub changes: Vec<String>,
    /// Every allowed object was Ready, and yet something was written: drift was repaired.
    pub drift: bool,
    /// The user-assigned identities each object adopted in this pass
    /// ([`TargetPlan::adopted`]); empty unless set by [`Success::with_adopted`].
    pub adopted:
        std::collections::BTreeMap<vmidentity_planner::ObjectRef, Vec<vmidentity_planner::ArmId>>,
}

impl<'a> Success<'a> {
    /// `allowed`: the objects whose own spec was planned.
    pub fn new<'o>(
        plan: &'a TargetPlan,
        result: &'a TargetResult,
        live: &'a LiveResource,
        allowed: impl IntoIterator<Item = &'o VirtualMachineIdentity>,
    ) -> Self {
        let mut changes: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
        changes.extend(
            result
                .grant_writes
                .iter()
                .map(|w| describe_grant_write(w, result)),
        );
        let drift = !changes.is_empty() && allowed.into_iter().all(was_ready);
        Success {
            plan,
            result,
            live,
            changes,
            drift,
            adopted: Default::default(),
        }
    }

    /// With what each of `objects` (the target's planner input) adopted in this pass.
    pub fn with_adopted(mut self, objects: &[DesiredObject]) -> Self {
        self.adopted = self.plan.adopted(objects);
        self
    }

    /// What `d` took over in this pass without writing it, in words: the identities it
    /// adopted, and the role assignments (by their existing names) and group memberships the
    /// principals held before that its record now holds. None when nothing.
    pub fn adopted_note(&self, d: &DesiredObject) -> Option<Note> {
        let mut what: Vec<String> = self
            .adopted
            .get(&d.object)
            .into_iter()
            .flatten()
            .map(|id| format!("user-assigned identity {id}"))
            .collect();
        if let Some(g) = &self.result.grants {
            let (roles, groups) = g.adopted(d, &self.result.grant_writes);
            what.extend(roles.iter().map(|r| {
                format!(
                    "role {} at {} (role assignment {})",
                    self.result.role(&r.role_definition_id),
                    r.scope,
                    r.id
                )
            }));
            what.extend(
                groups
                    .iter()
                    .map(|g| format!("membership of group {} ({})", g.group_object_id, g.identity)),
            );
        }
        (!what.is_empty()).then(|| Note {
            type_: EventType::Normal,
            reason: Reason::Adopted,
            note: format!(
                "{}: now owned by this object (removed from the target if dropped from the spec): {}",
                self.plan.target.short(),
                what.join("; ")
            ),
        })
    }

    /// The grants `d` lists that its identities held before and that it does not own (see
    /// [`vmidentity_planner::grants::plan_grants`]): for `status.heldNotAdopted`. None when
    /// there are none.
    pub fn held_not_adopted(&self, d: &DesiredObject) -> Option<crate::crd::HeldNotAdopted> {
        let h = self.result.grants.as_ref()?.held.get(&d.object)?;
        (!h.is_empty()).then(|| crate::crd::HeldNotAdopted {
            role_assignments: h.role_assignments.clone(),
            group_memberships: h.group_memberships.clone(),
        })
    }

    /// The Normal `NotAdopted` Event for `held` (what [`Success::held_not_adopted`] found),
    /// told when it appears or changes (`before`: the object's `status.heldNotAdopted`), not
    /// on every pass.
    pub fn not_adopted_note(
        &self,
        before: Option<&crate::crd::HeldNotAdopted>,
        held: Option<&crate::crd::HeldNotAdopted>,
    ) -> Option<Note> {
        let h = held?;
        if before == Some(h) {
            return None;
        }
        let what: Vec<String> = h
            .role_assignments
            .iter()
            .map(|r| {
                format!(
                    "role {} at {} (role assignment {})",
                    self.result.role(&r.role_definition_id),
                    r.scope,
                    r.id
                )
            })
            .chain(
                h.group_memberships
                    .iter()
                    .map(|g| format!("membership of group {} ({})", g.group_object_id, g.identity)),
            )
            .collect();
        Some(Note {
            type_: EventType::Normal,
            reason: Reason::NotAdopted,
            note: format!(
                "{}: held, not adopted (made before by someone else; left alone, never removed by this object, also when dropped from the spec; annotate {}=true to manage): {}",
                self.plan.target.short(),
                crate::crd::ADOPT_ANNOTATION,
                what.join("; ")
            ),
        })
    }

    pub fn wrote(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The part of the target's change that is `d`'s own, in words: the identities it asks
    /// for (or said to enable or disable) that were added, the ones it recorded and let go
    /// that were removed, and its own role assignments and group memberships (by the new
    /// record for additions, by its old record for removals).
    pub fn changes_of(&self, d: &DesiredObject) -> Vec<String> {
        use vmidentity_planner::Change;
        let wants = |id: &vmidentity_planner::ArmId| {
            !d.deleting && d.spec.user_assigned.iter().any(|u| u.key() == id.key())
        };
        let recorded = d.applied.keys();
        let mut out: Vec<String> = self
            .plan
            .changes
            .iter()
            .filter(|c| match c {
                Change::EnableSystemAssigned => !d.deleting && d.spec.system_assigned == Some(true),
                Change::DisableSystemAssigned => {
                    !d.deleting && d.spec.system_assigned == Some(false)
                }
                Change::AddUserAssigned(id) | Change::RepairUserAssigned(id) => wants(id),
                Change::RemoveUserAssigned(id) => {
                    !wants(id)
                        && (recorded.contains(id.key())
                            || (!d.deleting && d.spec.mode == vmidentity_planner::Mode::Exact))
                }
            })
            .map(ToString::to_string)
            .collect();
        let new = self.result.applied(&d.object).unwrap_or_default();
        let old = &d.applied;
        out.extend(
            self.result
                .grant_writes
                .iter()
                .filter(|w| match w {
                    Write::RoleAssignmentPut {
                        scope,
                        role_definition_id,
                        principal_id,
                        ..
                    } => {
                        let guid = role_definition_id.rsplit('/').next().unwrap_or_default();
                        new.role_assignments.iter().any(|r| {
                            r.principal_id.eq_ignore_ascii_case(principal_id)
                                && r.scope
                                    .trim_end_matches('/')
                                    .eq_ignore_ascii_case(scope.trim_end_matches('/'))
                                && r.role_definition_id
                                    .rsplit('/')
                                    .next()
                                    .is_some_and(|g| g.eq_ignore_ascii_case(guid))
                        })
                    }
                    Write::RoleAssignmentDelete { id } => old
                        .role_assignments
                        .iter()
                        .any(|r| r.id.eq_ignore_ascii_case(id)),
                    Write::GroupMemberAdd {
                        group_id,
                        principal_id,
                    } => new.group_memberships.iter().any(|g| {
                        g.group_object_id.eq_ignore_ascii_case(group_id)
                            && g.principal_id.eq_ignore_ascii_case(principal_id)
                    }),
                    Write::GroupMemberRemove {
                        group_id,
                        principal_id,
                    } => old.group_memberships.iter().any(|g| {
                        g.group_object_id.eq_ignore_ascii_case(group_id)
                            && g.principal_id.eq_ignore_ascii_case(principal_id)
                    }),
                    Write::IdentityPatch { .. } => false,
                })
                .map(|w| describe_grant_write(w, self.result)),
        );
        out
    }

    /// For an object being deleted (its finalizer goes next): what it released, or with
    /// `deletionPolicy: Retain`, what it leaves on the target.
    pub fn released(&self, d: &DesiredObject) -> Option<Note> {
        if d.spec.deletion_policy == vmidentity_planner::DeletionPolicy::Retain {
            return retained(d, &self.plan.target.short(), |g| self.result.role(g));
        }
        let own = self.changes_of(d);
        (!own.is_empty()).then(|| Note {
            type_: EventType::Normal,
            reason: Reason::Detached,
            note: format!("{}: {}", self.plan.target.short(), own.join("; ")),
        })
    }

    /// For an allowed object: its status (ownership record, principals, conditions) and
    /// Events.
    pub fn report(&self, o: &VirtualMachineIdentity, d: &DesiredObject, now: Timestamp) -> Report {
        let (plan, result, live) = (self.plan, self.result, self.live);
        let own = self.changes_of(d);
        let wrote = !own.is_empty();
        let short = plan.target.short();
        let mut events = Vec::new();
        for u in result
            .grants
            .iter()
            .flat_map(|g| g.untrusted.iter())
            .filter(|u| u.object == d.object)
        {
            warn!(object = %d.object, target = %plan.target, reason = u.reason, "{} is recorded in status.applied but not acted on: its principal is not one of the target's identities, or vmidentity did not make it; dropped from the record", u.what);
            events.push(Note::warning(
                Reason::Untrusted(u.reason),
                format!(
                    "{} is recorded in status.applied but not acted on (not one of {short}'s own identities, or not made by vmidentity); dropped from the record",
                    u.what,
                ),
            ));
        }
        let applied = result.applied(&d.object).unwrap_or_default();
        let pending: Vec<String> = result
            .grants
            .iter()
            .flat_map(|g| g.pending.iter())
            .filter(|p| p.object == d.object)
            .map(|p| format!("{} ({})", p.what, p.reason))
            .collect();
        let mut principals = Principals::default();
        if d.spec.system_assigned == Some(true) {
            principals.system_assigned = live.identity.principal_id.clone();
        }
        let mut present = 0i64;
        for id in &d.spec.user_assigned {
            if let Some(u) = live.identity.user_assigned.get(id.key()) {
                present += 1;
                if let Some(p) = &u.principal_id {
                    principals.user_assigned.insert(id.to_string(), p.clone());
                }
            }
        }
        let message = if !wrote {
            format!("{short} is as declared")
        } else {
            format!("{short}: {}", own.join("; "))
        };
        let bad: Vec<String> = d
            .spec
            .user_assigned
            .iter()
            .filter(|u| result.bad_identities.contains(u))
            .map(ToString::to_string)
            .collect();
        let phase = if !bad.is_empty() {
            stalled(
                Reason::IdentityNotFound,
                format!(
                    "user-assigned identity {} does not exist; everything else was applied",
                    bad.join(", ")
                ),
            )
        } else if pending.is_empty() {
            // Ready always says Converged (the target is as declared); what was written is
            // in the message and the Applied Event. A reason that changed with every pass
            // would either cost a status write per pass or stay "Applied" forever.
            ready(Reason::Converged, message)
        } else {
            progressing(
                Reason::GrantsPending,
                format!("waiting for Azure: {}", pending.join("; ")),
            )
        };
        let old = o.status.clone().unwrap_or_default();
        let mut conds = conditions::conditions(&old.conditions, &phase, o.metadata.generation, now);
        // Nothing written and already Ready (Converged) for this generation: keep the
        // conditions as they are (the message of the last change stays), so a restart or a
        // resync pass over converged objects costs no status write. A Ready of an older
        // release ("Applied") turns into "Converged" once.
        let ready_converged = old
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.reason == Reason::Converged.as_str());
        if !wrote
            && (conditions::same(&old.conditions, &conds)
                || (matches!(phase, Phase::Ready { .. }) && was_ready(o) && ready_converged))
        {
            conds = old.conditions.clone();
        }
        let st = VirtualMachineIdentityStatus {
            observed_generation: o.metadata.generation,
            conditions: conds,
            applied: Some(applied.clone()),
            principals: (principals != Principals::default()).then_some(principals),
            target_name: Some(plan.target.name().to_string()),
            user_assigned_count: Some(present),
            held_not_adopted: self.held_not_adopted(d),
            ..Default::default()
        };
        let mut events_after: Vec<Note> = self.adopted_note(d).into_iter().collect();
        events_after.extend(
            self.not_adopted_note(old.held_not_adopted.as_ref(), st.held_not_adopted.as_ref()),
        );
        if wrote {
            let changes = own.join("; ");
            events_after.push(if was_ready(o) {
                Note::warning(
                    Reason::DriftRepaired,
                    format!("{short} had drifted from the declared state; repaired: {changes}"),
                )
            } else {
                Note {
                    type_: EventType::Normal,
                    reason: Reason::Applied,
                    note: format!("{short}: {changes}"),
                }
            });
        }
        Report {
            events,
            status: (o.status.as_ref() != Some(&st)).then_some(st),
            events_after,
        }
    }
}

/// The Event of an object deleted with `deletionPolicy: Retain` that applied something: what
/// it leaves on the target (None when it applied nothing).
pub fn retained(d: &DesiredObject, short: &str, role: impl Fn(&str) -> String) -> Option<Note> {
    let a = &d.applied;
    let mut kept: Vec<String> = Vec::new();
    if a.system_assigned == Some(true) {
        kept.push("the system-assigned identity".into());
    }
    kept.extend(
        a.user_assigned_identities
            .iter()
            .map(|u| format!("user-assigned identity {u}")),
    );
    kept.extend(
        a.role_assignments
            .iter()
            .map(|r| format!("role {} at {}", role(&r.role_definition_id), r.scope)),
    );
    kept.extend(
        a.group_memberships
            .iter()
            .map(|g| format!("membership of group {}", g.group_object_id)),
    );
    (!kept.is_empty()).then(|| Note {
        type_: EventType::Normal,
        reason: Reason::Retained,
        note: format!(
            "deleted with deletionPolicy Retain: {} stay on {short}, no longer managed",
            kept.join("; ")
        ),
    })
}

fn describe_grant_write(w: &Write, result: &TargetResult) -> String {
    match w {
        Write::GroupMemberAdd { group_id, .. } => format!("add to group {group_id}"),
        Write::GroupMemberRemove { group_id, .. } => format!("remove from group {group_id}"),
        Write::RoleAssignmentPut {
            scope,
            role_definition_id,
            ..
        } => format!(
            "assign role {} at {}",
            result.role(role_definition_id),
            scope.trim_end_matches('/')
        ),
        Write::RoleAssignmentDelete { id } => format!("delete role assignment {id}"),
        Write::IdentityPatch { target, .. } => format!("patch {target}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VirtualMachineIdentitySpec;
    use serde_json::json;
    use vmidentity_planner::plan_target;

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
    const U1: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn object(uais: &[&str]) -> VirtualMachineIdentity {
        let mut o = VirtualMachineIdentity::new(
            "a",
            VirtualMachineIdentitySpec {
                target: VM.into(),
                arm_api_version: None,
                mode: None,
                system_assigned: None,
                user_assigned_identities: uais.iter().map(|s| s.to_string()).collect(),
                role_assignments: vec![],
                group_memberships: vec![],
                deletion_policy: None,
            },
        );
        o.metadata.namespace = Some("team-a".into());
        o.metadata.generation = Some(1);
        o
    }

    fn live(uais: &[&str]) -> LiveResource {
        let users: serde_json::Map<String, serde_json::Value> = uais
            .iter()
            .map(|u| {
                (
                    u.to_string(),
                    json!({"principalId": "up", "clientId": "uc"}),
                )
            })
            .collect();
        let identity = if uais.is_empty() {
            json!({"type": "None"})
        } else {
            json!({"type": "UserAssigned", "userAssignedIdentities": users})
        };
        LiveResource::from_arm_json(&json!({"id": VM, "identity": identity})).unwrap()
    }

    fn with_phase(mut o: VirtualMachineIdentity, phase: &Phase) -> VirtualMachineIdentity {
        o.status = phase_status(&o, phase, now());
        o
    }

    fn reason_of(st: &VirtualMachineIdentityStatus, type_: &str) -> (String, String) {
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn reason_strings_are_the_ones_conditions_and_events_always_used() {
        assert_eq!(Reason::InvalidSpec.as_str(), "InvalidSpec");
        assert_eq!(
            Reason::PolicyDenied.as_str(),
            super::super::policy::POLICY_DENIED
        );
        assert_eq!(Reason::CredentialConflict.to_string(), "CredentialConflict");
        assert_eq!(Reason::GrantsPending.as_str(), "GrantsPending");
        assert_eq!(Reason::Azure(ErrorClass::Throttled).as_str(), "Throttled");
        assert_eq!(
            Reason::Azure(ErrorClass::Forbidden).as_str(),
            "AuthorizationFailed"
        );
        assert_eq!(Reason::Credential("NoCredential").as_str(), "NoCredential");
    }

    #[test]
    fn a_refused_newcomer_that_owns_nothing_takes_no_part() {
        // Not deleting, refused (invalid or denied), owns nothing: excluded.
        assert_eq!(part(false, false, false, false), Part::Excluded);
        // The same refusal, but it holds identities on the target: held.
        assert_eq!(part(false, false, false, true), Part::Held);
        assert_eq!(part(false, true, true, false), Part::Allowed);
        // Being deleted: releases with a credential, else takes no part.
        assert_eq!(part(true, true, true, true), Part::Releasing);
        assert_eq!(part(true, false, true, true), Part::Releasing);
        assert_eq!(part(true, true, false, true), Part::Excluded);
        // Deleted before it was ever claimed: not even looked at.
        assert!(!considered(true, false));
        assert!(considered(true, true));
        assert!(considered(false, false));
    }

    #[test]
    fn a_held_object_keeps_only_the_identities_the_target_still_carries() {
        let u2 = U1.replace("u1", "u2");
        let applied = Applied {
            system_assigned: Some(true),
            user_assigned_identities: vec![U1.into(), u2.clone()],
            ..Applied::default()
        };
        let held = held_record(applied.clone(), &live(&[U1])).unwrap();
        assert_eq!(held.user_assigned_identities, vec![U1.to_string()]);
        assert_eq!(held.system_assigned, None);
        assert!(held_record(applied, &live(&[])).is_none());
        // And as the planner sees it: Merge, its own identities only, nothing removed.
        let o = object(&[U1]);
        let d = o.holding(&held).unwrap();
        assert_eq!(d.spec.user_assigned.len(), 1);
        assert_eq!(d.spec.mode, vmidentity_planner::Mode::Merge);
    }

    /// The seniority ranks of issue 14's rule, including the holes a review found: the
    /// object that works stays senior through an edit or a passing error, and an object
    /// refused for a conflict never overtakes it, whatever it owns or however old it is.
    #[test]
    fn the_object_that_works_stays_senior_through_edits_and_passing_errors() {
        let t = |s: &str| -> Option<Timestamp> { Some(s.parse().unwrap()) };
        let owning = |mut o: VirtualMachineIdentity| {
            let st = o.status.get_or_insert_with(Default::default);
            st.applied = Some(vmidentity_planner::Applied {
                system_assigned: Some(true),
                ..Default::default()
            });
            o
        };
        let ready = Phase::Ready {
            reason: "Converged".into(),
            message: String::new(),
        };
        let throttled = Phase::Progressing {
            reason: "Throttled".into(),
            message: String::new(),
        };
        // Ready at its current generation: tier 0.
        let a = with_phase(object(&[]), &ready);
        assert_eq!(seniority(&a).0, 0);
        // A passing error (a 429) at the current generation does not demote what it owns.
        let a_429 = owning(with_phase(object(&[]), &throttled));
        assert_eq!(seniority(&a_429).0, 0);
        // A newcomer hitting the same 429 owns nothing and was never Ready: tier 2.
        let new_429 = with_phase(object(&[]), &throttled);
        assert_eq!(seniority(&new_429).0, 2);
        // Edited since it was Ready: tier 1, below one that works now, above a newcomer.
        let mut edited = owning(with_phase(object(&[]), &ready));
        edited.metadata.generation = Some(2);
        assert_eq!(seniority(&edited).0, 1);
        // Refused for a conflict: the lowest tier, even when it owns something and is older.
        let mut refused = owning(with_phase(
            object(&[]),
            &stalled(
                Reason::Plan(vmidentity_planner::Refused::REASON),
                "conflict".into(),
            ),
        ));
        refused.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2020-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert_eq!(seniority(&refused).0, 3);
        let cred = with_phase(
            object(&[]),
            &stalled(Reason::CredentialConflict, "clash".into()),
        );
        assert_eq!(seniority(&cred).0, 3);
        // A newcomer owns nothing: tier 2.
        assert_eq!(seniority(&object(&[])), (2, None));
        // Only observed so far (Ready, reason Observed): a newcomer too.
        let observed = with_phase(
            object(&[]),
            &super::ready(Reason::Observed, "observe".into()),
        );
        assert_eq!(seniority(&observed).0, 2);
        assert!(!was_ready(&observed));
        // Within a tier the older object is senior.
        let stamp = |mut o: VirtualMachineIdentity, at: &str| {
            o.metadata.creation_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().unwrap()),
            );
            o
        };
        let older = stamp(a.clone(), "2025-01-01T00:00:00Z");
        let younger = stamp(a.clone(), "2026-01-01T00:00:00Z");
        assert!(seniority(&older) < seniority(&younger));
        assert_eq!(seniority(&older).1, t("2025-01-01T00:00:00Z"));
        // The refused object, though the oldest, ranks after a newcomer that works.
        assert!(seniority(&younger) < seniority(&refused));
    }

    #[test]
    fn with_different_credentials_the_senior_writer_keeps_the_target() {
        let (a, b, c) = (
            vmidentity_planner::ObjectRef::new("platform", "ops-agent"),
            vmidentity_planner::ObjectRef::new("sandbox", "new"),
            vmidentity_planner::ObjectRef::new("platform", "other"),
        );
        let refused = credential_by_seniority(&[
            (b.clone(), 2, "ns/sandbox"),
            (a.clone(), 0, "global"),
            (c.clone(), 1, "global"),
        ])
        .unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, b);
        assert_eq!(refused[0].1.reason, Reason::CredentialConflict);
        assert!(
            refused[0]
                .1
                .message
                .contains("platform/ops-agent, platform/other held the target first"),
            "{}",
            refused[0].1.message
        );
        // One credential: nobody is refused; equally senior with two: the whole target.
        assert!(
            credential_by_seniority(&[(a.clone(), 0, "global"), (b.clone(), 1, "global")])
                .unwrap()
                .is_empty()
        );
        let clash = credential_by_seniority(&[(a, 0, "global"), (b, 0, "ns/sandbox")]).unwrap_err();
        assert_eq!(clash.reason, Reason::CredentialConflict);
    }

    #[test]
    fn different_credentials_on_one_target_are_a_conflict() {
        assert_eq!(credential_clash(["global", "global"]), None);
        let r = credential_clash(["ns/a", "global", "ns/a"]).unwrap();
        assert_eq!(r.reason, Reason::CredentialConflict);
        assert!(r.message.contains("(ns/a and global)"), "{}", r.message);
    }

    #[test]
    fn a_refusal_stalls_the_object_and_warns_once() {
        let o = object(&[U1]);
        let r = Refusal {
            reason: Reason::PolicyDenied,
            message: "namespace team-a may not use u1".into(),
        };
        let first = refusal(&o, &r, now());
        assert_eq!(first.events.len(), 1);
        assert_eq!(first.events[0].type_, EventType::Warning);
        assert_eq!(first.events[0].reason, Reason::PolicyDenied);
        let st = first.status.unwrap();
        assert_eq!(
            reason_of(&st, conditions::STALLED),
            ("True".into(), "PolicyDenied".into())
        );
        assert_eq!(reason_of(&st, conditions::READY).0, "False");
        assert_eq!(st.observed_generation, Some(1));
        // The same refusal again: no Event, no write.
        let mut again = o.clone();
        again.status = Some(st);
        let second = refusal(&again, &r, now());
        assert!(second.events.is_empty());
        assert_eq!(second.status, None);
        // Another message: a new Event.
        let other = Refusal {
            message: "something else".into(),
            ..r
        };
        assert_eq!(refusal(&again, &other, now()).events.len(), 1);
    }

    #[test]
    fn an_invalid_spec_is_refused_with_every_field_error() {
        let o = object(&["not-an-id"]);
        let r = Refusal::invalid(&o.desired().unwrap_err());
        assert_eq!(r.reason, Reason::InvalidSpec);
        assert!(
            r.message.contains("spec.userAssignedIdentities[0]"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_retryable_azure_failure_is_progressing_and_retried() {
        let o = object(&[U1]);
        let r = azure_failure(&o, ErrorClass::Throttled, "429", now());
        assert_eq!(r.events.len(), 1);
        let st = r.status.unwrap();
        assert_eq!(
            reason_of(&st, conditions::RECONCILING),
            ("True".into(), "Throttled".into())
        );
        assert_eq!(reason_of(&st, conditions::STALLED).0, "False");
        // Throttled again: no second Event.
        let mut again = o.clone();
        again.status = Some(st);
        assert!(
            azure_failure(&again, ErrorClass::Throttled, "429", now())
                .events
                .is_empty()
        );
        // Retry-After is honoured (at least a second); without it, the backoff.
        let after = Some(Duration::from_millis(10));
        assert_eq!(
            azure_outcome(ErrorClass::Throttled, after, || unreachable!()),
            Outcome::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            azure_outcome(ErrorClass::Transient, None, || Duration::from_secs(20)),
            Outcome::Retry(Duration::from_secs(20))
        );
    }

    #[test]
    fn a_permanent_azure_failure_stalls() {
        let o = object(&[U1]);
        let r = azure_failure(&o, ErrorClass::Forbidden, "no rights", now());
        assert_eq!(r.events[0].reason.as_str(), "AuthorizationFailed");
        let st = r.status.unwrap();
        assert_eq!(
            reason_of(&st, conditions::STALLED),
            ("True".into(), "AuthorizationFailed".into())
        );
        // Rights may be granted: looked at again at resync. A refused request: idle.
        assert_eq!(
            azure_outcome(ErrorClass::Forbidden, None, || unreachable!()),
            Outcome::Stalled
        );
        assert_eq!(
            azure_outcome(ErrorClass::Invalid, None, || unreachable!()),
            Outcome::Idle
        );
    }

    #[test]
    fn a_missing_target_stalls_with_a_short_event() {
        let o = object(&[U1]);
        let r = target_not_found(&o, VM, "ResourceNotFound", now());
        assert_eq!(r.events[0].note, format!("{VM} not found"));
        let st = r.status.unwrap();
        assert_eq!(
            reason_of(&st, conditions::STALLED),
            ("True".into(), "TargetNotFound".into())
        );
        let again = with_phase(o, &stalled(Reason::TargetNotFound, "x".into()));
        assert!(
            target_not_found(&again, VM, "gone", now())
                .events
                .is_empty()
        );
    }

    fn result_of(plan: &TargetPlan) -> TargetResult {
        TargetResult {
            target: VM.into(),
            objects: plan.objects.clone(),
            plan: Some(plan.clone()),
            error: None,
            live_after: None,
            grant_writes: vec![],
            grants: None,
            bad_identities: vec![],
            refused: vec![],
            role_names: Default::default(),
        }
    }

    #[test]
    fn success_reports_applied_with_the_changes_then_converged() {
        let o = object(&[U1]);
        let d = o.desired().unwrap();
        let before = live(&[]);
        let plan = plan_target(std::slice::from_ref(&d), &before).unwrap();
        let result = result_of(&plan);
        let after = live(&[U1]);
        let s = Success::new(&plan, &result, &after, [&o]);
        assert!(s.wrote());
        assert!(!s.drift);
        let r = s.report(&o, &d, now());
        let st = r.status.unwrap();
        // Ready says Converged (the REASON column), the Event says what was Applied.
        assert_eq!(
            reason_of(&st, conditions::READY),
            ("True".into(), "Converged".into())
        );
        assert_eq!(st.user_assigned_count, Some(1));
        assert_eq!(st.target_name.as_deref(), Some("vm1"));
        assert_eq!(
            st.applied.as_ref().unwrap().user_assigned_identities.len(),
            1
        );
        let principals = st.principals.clone().unwrap();
        assert_eq!(principals.user_assigned.len(), 1);
        assert!(r.events.is_empty());
        assert_eq!(r.events_after.len(), 1);
        assert_eq!(r.events_after[0].type_, EventType::Normal);
        assert_eq!(r.events_after[0].reason, Reason::Applied);
        assert!(
            r.events_after[0]
                .note
                .starts_with("vm/vm1: add user-assigned identity"),
            "{}",
            r.events_after[0].note
        );
        assert_eq!(success_outcome(&plan, &result), Outcome::Applied);

        // The next pass finds it as declared: nothing is written, not even the status.
        let mut o2 = o.clone();
        o2.status = Some(st);
        let d2 = o2.desired().unwrap();
        let plan2 = plan_target(std::slice::from_ref(&d2), &after).unwrap();
        let result2 = result_of(&plan2);
        let s2 = Success::new(&plan2, &result2, &after, [&o2]);
        assert!(!s2.wrote());
        assert_eq!(s2.released(&d2), None);
        let r2 = s2.report(&o2, &d2, now());
        assert_eq!(r2, Report::default());
        assert_eq!(success_outcome(&plan2, &result2), Outcome::Converged);

        // A fresh object already as declared: Ready "Converged", "... is as declared".
        let r3 = s2.report(&o, &d, now());
        let st3 = r3.status.unwrap();
        assert_eq!(
            reason_of(&st3, conditions::READY),
            ("True".into(), "Converged".into())
        );
        let ready = st3
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .unwrap();
        assert_eq!(ready.message, "vm/vm1 is as declared");
    }

    #[test]
    fn a_write_to_a_target_every_object_saw_ready_is_drift() {
        let o = with_phase(object(&[U1]), &ready(Reason::Converged, "ok".into()));
        let o = {
            let mut o = o;
            o.status.as_mut().unwrap().observed_generation = Some(1);
            o
        };
        assert!(was_ready(&o));
        let d = o.desired().unwrap();
        let before = live(&[]);
        let plan = plan_target(std::slice::from_ref(&d), &before).unwrap();
        let result = result_of(&plan);
        let s = Success::new(&plan, &result, &before, [&o]);
        assert!(s.drift);
        let r = s.report(&o, &d, now());
        assert_eq!(r.events_after[0].reason, Reason::DriftRepaired);
        assert_eq!(r.events_after[0].type_, EventType::Warning);
    }

    /// A Ready of an older release that said "Applied" becomes "Converged" (once); then the
    /// REASON column never stays "Applied".
    #[test]
    fn an_applied_ready_turns_into_converged() {
        let mut o = with_phase(object(&[U1]), &ready(Reason::Applied, "vm/vm1: add".into()));
        o.status.as_mut().unwrap().observed_generation = Some(1);
        let d = o.desired().unwrap();
        let after = live(&[U1]);
        let plan = plan_target(std::slice::from_ref(&d), &after).unwrap();
        let result = result_of(&plan);
        let s = Success::new(&plan, &result, &after, [&o]);
        let st = s.report(&o, &d, now()).status.expect("rewritten once");
        assert_eq!(
            reason_of(&st, conditions::READY),
            ("True".into(), "Converged".into())
        );
        o.status = Some(st);
        assert_eq!(s.report(&o, &d, now()), Report::default());
    }

    /// Two objects on one VM: each object's status and Event name only its own identities
    /// and grants (issue 14 item 3), roles by name; an object deleted with Detach is told
    /// what it released, one deleted with Retain what it leaves.
    #[test]
    fn each_object_is_told_its_own_part_of_the_change() {
        use vmidentity_planner::grants::{GrantPlan, role_definition_id};
        use vmidentity_planner::model::AppliedRoleAssignment;
        let u2 = U1.replace("u1", "u2");
        let web = object(&[U1]);
        let mut mon = object(&[u2.as_str()]);
        mon.metadata.name = Some("monitoring".into());
        mon.spec.system_assigned = Some(true);
        let (dw, dm) = (web.desired().unwrap(), mon.desired().unwrap());
        let before = live(&[]);
        let plan = plan_target(&[dw.clone(), dm.clone()], &before).unwrap();
        let mut result = result_of(&plan);
        let rg = "/subscriptions/s1/resourceGroups/rg";
        let reader = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
        result.grant_writes = vec![Write::RoleAssignmentPut {
            scope: rg.into(),
            name: "n1".into(),
            role_definition_id: role_definition_id(rg, reader),
            principal_id: "up2".into(),
            principal_type: None,
        }];
        let mut gp = GrantPlan::default();
        gp.role_assignments.insert(
            dm.object.clone(),
            vec![AppliedRoleAssignment {
                id: format!("{rg}/providers/Microsoft.Authorization/roleAssignments/n1"),
                scope: rg.into(),
                role_definition_id: reader.into(),
                principal_id: "up2".into(),
                identity: u2.clone(),
            }],
        );
        result.grants = Some(gp);
        let after = live(&[U1, u2.as_str()]);
        let s = Success::new(&plan, &result, &after, [&web, &mon]);
        let note = |o: &VirtualMachineIdentity, d: &DesiredObject| {
            let r = s.report(o, d, now());
            let ready = r
                .status
                .unwrap()
                .conditions
                .into_iter()
                .find(|c| c.type_ == conditions::READY)
                .unwrap()
                .message;
            (ready, r.events_after[0].note.clone())
        };
        let (ready_w, event_w) = note(&web, &dw);
        for text in [&ready_w, &event_w] {
            assert!(text.contains("/u1") && !text.contains("/u2"), "{text}");
            assert!(!text.contains("system") && !text.contains("role"), "{text}");
        }
        let (ready_m, event_m) = note(&mon, &dm);
        for text in [&ready_m, &event_m] {
            assert!(text.contains("/u2") && !text.contains("/u1"), "{text}");
            assert!(text.contains("enable system-assigned identity"), "{text}");
            assert!(
                text.contains(&format!("assign role Reader ({reader}) at {rg}")),
                "{text}"
            );
        }

        // Deleted: Detach tells what it released; Retain what stays.
        let mut gone = dw.clone().deleting();
        gone.applied = Applied {
            user_assigned_identities: vec![U1.into()],
            ..Applied::default()
        };
        let plan = plan_target(std::slice::from_ref(&gone), &after).unwrap();
        let result = result_of(&plan);
        let s = Success::new(&plan, &result, &after, []);
        let n = s.released(&gone).unwrap();
        assert_eq!(n.reason, Reason::Detached);
        assert!(n.note.contains("remove user-assigned identity") && n.note.contains("/u1"));
        gone.spec.deletion_policy = vmidentity_planner::DeletionPolicy::Retain;
        let plan = plan_target(std::slice::from_ref(&gone), &after).unwrap();
        let result = result_of(&plan);
        let s = Success::new(&plan, &result, &after, []);
        let n = s.released(&gone).unwrap();
        assert_eq!((n.type_, n.reason), (EventType::Normal, Reason::Retained));
        assert!(
            n.note.contains("deletionPolicy Retain") && n.note.contains("/u1"),
            "{}",
            n.note
        );
    }

    /// Adoption (issue 15 part 2): the pass records the pre-existing identity without a
    /// write, and the object is told exactly what it took over, in a Normal Adopted Event;
    /// nothing on the next pass.
    #[test]
    fn an_adopting_object_is_told_what_it_took_over() {
        let mut o = object(&[U1]);
        o.metadata.annotations =
            Some([(crate::crd::ADOPT_ANNOTATION.to_string(), "true".to_string())].into());
        let d = o.desired().unwrap();
        assert!(d.adopt);
        let on_vm = live(&[U1]);
        let plan = plan_target(std::slice::from_ref(&d), &on_vm).unwrap();
        assert!(plan.is_converged());
        let result = result_of(&plan);
        let s = Success::new(&plan, &result, &on_vm, [&o]).with_adopted(std::slice::from_ref(&d));
        let r = s.report(&o, &d, now());
        assert_eq!(
            r.events_after,
            vec![Note {
                type_: EventType::Normal,
                reason: Reason::Adopted,
                note: format!(
                    "vm/vm1: now owned by this object (removed from the target if dropped from the spec): user-assigned identity {U1}"
                ),
            }]
        );
        let st = r.status.unwrap();
        assert_eq!(
            st.applied.as_ref().unwrap().user_assigned_identities,
            vec![U1.to_string()]
        );
        // Next pass: recorded, nothing adopted, nothing said.
        let mut again = o.clone();
        again.status = Some(st);
        let d2 = again.desired().unwrap();
        let plan2 = plan_target(std::slice::from_ref(&d2), &on_vm).unwrap();
        let result2 = result_of(&plan2);
        let s2 = Success::new(&plan2, &result2, &on_vm, [&again])
            .with_adopted(std::slice::from_ref(&d2));
        assert_eq!(s2.report(&again, &d2, now()), Report::default());
        // Without the annotation: nothing recorded, nothing said.
        let plain = object(&[U1]);
        let d3 = plain.desired().unwrap();
        let plan3 = plan_target(std::slice::from_ref(&d3), &on_vm).unwrap();
        let result3 = result_of(&plan3);
        let s3 = Success::new(&plan3, &result3, &on_vm, [&plain])
            .with_adopted(std::slice::from_ref(&d3));
        let r3 = s3.report(&plain, &d3, now());
        assert!(r3.events_after.is_empty());
        assert!(
            r3.status
                .unwrap()
                .applied
                .unwrap()
                .user_assigned_identities
                .is_empty()
        );
    }

    /// A listed grant held before and not adopted (issue 15's follow-up): in
    /// `status.heldNotAdopted` and one Normal NotAdopted Event when it appears; nothing said
    /// on the next pass; said again when the set changes; gone from the status when it goes.
    #[test]
    fn a_grant_held_not_adopted_is_told_once_and_again_only_when_it_changes() {
        use vmidentity_planner::grants::{AppliedRoleAssignment, GrantPlan, HeldGrants};
        let o = object(&[U1]);
        let d = o.desired().unwrap();
        let on_vm = live(&[U1]);
        let plan = plan_target(std::slice::from_ref(&d), &on_vm).unwrap();
        let held = |name: &str| AppliedRoleAssignment {
            id: format!(
                "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/{name}"
            ),
            scope: "/subscriptions/s1/resourceGroups/rg".into(),
            role_definition_id: "acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
            principal_id: "p1".into(),
            identity: U1.into(),
        };
        let with_held = |names: &[&str]| {
            let mut result = result_of(&plan);
            let mut gp = GrantPlan::default();
            if !names.is_empty() {
                gp.held.insert(
                    d.object.clone(),
                    HeldGrants {
                        role_assignments: names.iter().map(|n| held(n)).collect(),
                        group_memberships: vec![],
                    },
                );
            }
            result.grants = Some(gp);
            result
        };
        let report = |o: &VirtualMachineIdentity, result: &TargetResult| {
            Success::new(&plan, result, &on_vm, [o]).report(o, &d, now())
        };
        let first = with_held(&["theirs-1"]);
        let r = report(&o, &first);
        assert_eq!(r.events_after.len(), 1, "{:?}", r.events_after);
        assert_eq!(r.events_after[0].reason, Reason::NotAdopted);
        assert_eq!(r.events_after[0].type_, EventType::Normal);
        assert!(
            r.events_after[0].note.starts_with("vm/vm1: held, not adopted")
                && r.events_after[0].note.contains(
                    "role Reader (acdd72a7-3385-48ef-bd42-f606fba81ae7) at /subscriptions/s1/resourceGroups/rg (role assignment /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/theirs-1)"
                ),
            "{}",
            r.events_after[0].note
        );
        let st = r.status.unwrap();
        assert_eq!(
            st.held_not_adopted.as_ref().unwrap().role_assignments,
            vec![held("theirs-1")]
        );
        assert!(st.applied.as_ref().unwrap().role_assignments.is_empty());
        // The next pass: the same, nothing said, no status write.
        let mut again = o.clone();
        again.status = Some(st);
        assert_eq!(report(&again, &first), Report::default());
        // Another one held: said again, naming both.
        let r = report(&again, &with_held(&["theirs-1", "theirs-2"]));
        assert_eq!(r.events_after.len(), 1);
        assert!(r.events_after[0].note.contains("theirs-2"));
        // None any more (dropped from the spec or adopted): out of the status, nothing said.
        let r = report(&again, &with_held(&[]));
        assert!(r.events_after.is_empty());
        assert_eq!(r.status.unwrap().held_not_adopted, None);
    }

    #[test]
    fn requeue_timing_follows_the_outcome() {
        let resync = Duration::from_secs(600);
        assert_eq!(Outcome::Converged.requeue(resync, true), Some(resync));
        assert_eq!(Outcome::Applied.requeue(resync, false), None);
        assert_eq!(
            Outcome::Retry(PENDING_RETRY).requeue(resync, false),
            Some(PENDING_RETRY)
        );
        assert_eq!(Outcome::Stalled.requeue(resync, false), Some(resync));
        assert_eq!(Outcome::Idle.requeue(resync, true), None);
        assert!(Outcome::Converged.succeeded() && Outcome::Applied.succeeded());
        assert!(!Outcome::Retry(PENDING_RETRY).succeeded());
        assert_eq!(Outcome::Retry(PENDING_RETRY).label(), "retry");
        assert_eq!(Outcome::Idle.label(), "idle");
    }
}
