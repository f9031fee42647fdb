//! One target's reconcile: gather its objects, read it once, plan, write once, report.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use tracing::{debug, info, warn};
use vmidentity_azure::{AzureError, ErrorClass, Executor};
use vmidentity_planner::{
    ApiVersion, DesiredObject, LiveResource, TargetPlan, plan_target_by_seniority,
};

use super::credentials::{Chosen, Credentials};
use super::decide::{self, Outcome, Part, Reason, Refusal, Report, Success};
use super::events::{EventRecorder, EventType, Published};
use super::metrics::Metrics;
use super::observe::{self, ReconcilePolicy};
use super::policy::PolicyView;
use super::target::{objects_on, target_key};
use crate::crd::{
    RECONCILE_POLICY_ANNOTATION, VirtualMachineIdentity, VirtualMachineIdentityStatus,
};
use crate::engine::{
    Claim, EngineError, TargetResult, plan_read_only, read_version, write_target_claiming,
};

pub const FINALIZER: &str = "vmidentity.dev/finalizer";

/// The way out for an object being deleted that cannot release what it applied (its
/// namespace lost the credential Secret the controller requires): with this annotation set to
/// `"true"` the controller removes its finalizer without touching Azure, leaving what it
/// applied on the target, and says so in a Warning Event (`docs/runbooks.md`).
pub const ABANDON_ANNOTATION: &str = "vmidentity.dev/abandon";

/// The object is being let go without releasing: annotated [`ABANDON_ANNOTATION`]`: "true"`.
pub fn abandoned(o: &VirtualMachineIdentity) -> bool {
    o.annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `spec.deletionPolicy: Retain`: deleting the object releases nothing.
fn retains(o: &VirtualMachineIdentity) -> bool {
    o.spec.deletion_policy == Some(vmidentity_planner::DeletionPolicy::Retain)
}

/// What an object's ownership record leaves on its target, for the Event that says so.
fn left_on_target(o: &VirtualMachineIdentity) -> String {
    let a = o.applied();
    let mut parts = Vec::new();
    if !a.user_assigned_identities.is_empty() {
        parts.push(format!(
            "user-assigned identities {}",
            a.user_assigned_identities.join(", ")
        ));
    }
    if a.system_assigned == Some(true) {
        parts.push("the system-assigned identity (enabled)".to_string());
    }
    if !a.role_assignments.is_empty() {
        let ids: Vec<&str> = a.role_assignments.iter().map(|r| r.id.as_str()).collect();
        parts.push(format!("role assignments {}", ids.join(", ")));
    }
    if !a.group_memberships.is_empty() {
        let groups: Vec<&str> = a
            .group_memberships
            .iter()
            .map(|g| g.group_object_id.as_str())
            .collect();
        parts.push(format!("memberships of groups {}", groups.join(", ")));
    }
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join("; ")
    }
}

/// Shared state of the running controller.
pub struct Context {
    pub client: kube::Client,
    pub store: Store<VirtualMachineIdentity>,
    /// The controller's own door to Azure (ARM, and Graph for group memberships when
    /// configured).
    pub exec: Executor,
    pub recorder: EventRecorder,
    pub metrics: Arc<Metrics>,
    /// Policies and namespace labels: checked before any write.
    pub policy: PolicyView,
    /// Which Azure credential reconciles which namespace (default: the controller's own).
    pub credentials: Option<Arc<Credentials>>,
    pub resync: Duration,
    /// Requeue every converged target at the resync period (GET-based resync). When false,
    /// the Resource Graph scanner triggers drifted targets instead.
    pub per_target_resync: bool,
    /// `--default-reconcile-policy`: for objects whose own annotation and Namespace's say
    /// nothing.
    pub default_policy: ReconcilePolicy,
    /// Consecutive retryable failures per target (for backoff).
    attempts: Mutex<HashMap<String, u32>>,
    /// A safety net: at most one pass per target at a time, even while a target's
    /// representative changes hands.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Targets triggered and not yet started (the queue depth gauge).
    dirty: Mutex<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Context {
    pub fn new(
        client: kube::Client,
        store: Store<VirtualMachineIdentity>,
        exec: Executor,
        recorder: EventRecorder,
        metrics: Arc<Metrics>,
        policy: PolicyView,
    ) -> Self {
        Context {
            client,
            store,
            exec,
            recorder,
            metrics,
            policy,
            credentials: None,
            resync: Duration::from_secs(600),
            per_target_resync: true,
            default_policy: ReconcilePolicy::Manage,
            attempts: Mutex::default(),
            locks: Mutex::default(),
            dirty: Mutex::default(),
        }
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.locks.lock() {
            Ok(mut m) => m.entry(key.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Forgets a target's lock once nobody holds or waits for it, so the map holds the
    /// targets being worked on rather than every target ever seen. Clones are only taken
    /// under the map's lock, so a count of 2 (the map's and `lock`) means no one else has it.
    fn release_lock(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        if let Ok(mut m) = self.locks.lock()
            && Arc::strong_count(&lock) == 2
        {
            m.remove(key);
            if sparse(m.len(), m.capacity()) {
                m.shrink_to_fit();
            }
        }
    }

    /// Records that a target was triggered (for the queue depth gauge).
    pub fn mark_dirty(&self, key: &str) {
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(key.to_string());
            self.metrics.queue_depth.set(d.len() as i64);
        }
    }

    fn mark_started(&self, key: &str) {
        if let Ok(mut d) = self.dirty.lock() {
            d.remove(key);
            if sparse(d.len(), d.capacity()) {
                d.shrink_to_fit();
            }
            self.metrics.queue_depth.set(d.len() as i64);
        }
    }

    /// The next backoff of `key` (before jitter).
    fn backoff(&self, key: &str) -> Duration {
        let n = match self.attempts.lock() {
            Ok(mut a) => {
                let n = a.entry(key.to_string()).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => 1,
        };
        let base = Duration::from_secs(5).saturating_mul(1 << n.min(6).saturating_sub(1));
        base.min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut a) = self.attempts.lock() {
            a.remove(key);
        }
    }

    fn api(&self, o: &VirtualMachineIdentity) -> Api<VirtualMachineIdentity> {
        Api::namespaced(self.client.clone(), &o.namespace().unwrap_or_default())
    }

    async fn event(
        &self,
        o: &VirtualMachineIdentity,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let published = self
            .recorder
            .publish(&o.object_ref(&()), type_, "Reconcile", reason, &note)
            .await;
        match published {
            Ok(Published::Created) => self.metrics.kube_write("create-event"),
            Ok(Published::Counted) => self.metrics.kube_write("patch-event"),
            Err(e) => warn!(object = %super::refusals::key(o), error = %e, "cannot publish event"),
        }
    }

    async fn set_finalizer(&self, o: &VirtualMachineIdentity, present: bool) -> Result<(), Error> {
        let mut list: Vec<String> = o.finalizers().to_vec();
        let has = list.iter().any(|f| f == FINALIZER);
        if has == present {
            return Ok(());
        }
        if present {
            list.push(FINALIZER.to_string());
        } else {
            list.retain(|f| f != FINALIZER);
        }
        let patch =
            json!({"metadata": {"finalizers": list, "resourceVersion": o.resource_version()}});
        match self
            .api(o)
            .patch(
                &o.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.metrics.kube_write("patch-finalizer");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn patch_status(
        &self,
        o: &VirtualMachineIdentity,
        status: &VirtualMachineIdentityStatus,
    ) -> Result<(), Error> {
        if o.status.as_ref() == Some(status) {
            return Ok(());
        }
        // A merge patch keeps what it does not mention: fields the new status leaves out
        // (an emptied list, a cleared field) must be sent as null, or the old value stays.
        let old = o
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let new = serde_json::to_value(status).unwrap_or(serde_json::Value::Null);
        let patch = json!({ "status": merge_patch(&old, &new) });
        match self
            .api(o)
            .patch_status(
                &o.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.metrics.kube_write("patch-status");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: `new` with every key of
/// `old` that `new` lacks set to null, recursively in objects present in both.
fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in n {
                let patched = match o.get(k) {
                    Some(ov) => merge_patch(ov, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), patched);
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..=1.2))
}

impl Context {
    /// Writes what was decided about one object: its Events and its status.
    async fn report(&self, o: &VirtualMachineIdentity, r: Report) -> Result<(), Error> {
        for n in r.events {
            self.event(o, n.type_, n.reason.as_str(), n.note).await;
        }
        if let Some(st) = &r.status {
            super::refusals::log_new(o, st);
            self.patch_status(o, st).await?;
        }
        for n in r.events_after {
            if n.reason == Reason::DriftRepaired
                && let Some(repairs) = self.metrics.drift_repaired(&o.spec.target)
                && repairs >= super::metrics::DRIFT_REPEATED
            {
                warn!(
                    target = %o.spec.target,
                    repairs,
                    "drift repaired {repairs} times on this target within an hour: another writer keeps changing it"
                );
            }
            self.event(o, n.type_, n.reason.as_str(), n.note).await;
        }
        Ok(())
    }

    /// Writes what was decided about each object, in order.
    async fn report_all(
        &self,
        reports: Vec<(&VirtualMachineIdentity, Report)>,
    ) -> Result<(), Error> {
        for (o, r) in reports {
            self.report(o, r).await?;
        }
        Ok(())
    }
}

/// What `decide` makes of each of `members`.
fn each<'m>(
    members: impl Iterator<Item = &'m Member>,
    decide: impl Fn(&VirtualMachineIdentity) -> Report,
) -> Vec<(&'m VirtualMachineIdentity, Report)> {
    members.map(|m| (&*m.obj, decide(&m.obj))).collect()
}

/// One object of the target, with what the planner makes of it.
struct Member {
    obj: Arc<VirtualMachineIdentity>,
    desired: Result<DesiredObject, Refusal>,
    deleting: bool,
    has_finalizer: bool,
    /// The Azure credential of the object's namespace, once the object is allowed.
    credential: Option<Chosen>,
    /// Under reconcile policy `observe` (see [`Member::observing`]).
    observe: bool,
}

impl Member {
    fn new(obj: Arc<VirtualMachineIdentity>) -> Member {
        Member {
            desired: obj.desired().map_err(|errs| Refusal::invalid(&errs)),
            deleting: obj.is_deleting(),
            has_finalizer: obj.finalizers().iter().any(|f| f == FINALIZER),
            credential: None,
            observe: false,
            obj,
        }
    }

    /// Allowed and under reconcile policy `observe`: planned as if managed, never written
    /// for. In the target's write it only keeps what it holds (as a refused object does).
    fn observing(&self) -> bool {
        self.observe && !self.deleting && self.desired.is_ok()
    }

    /// For a refused object being deleted: what it releases (with Detach), from its record.
    fn releasing(&self) -> Option<DesiredObject> {
        let applied = self.obj.applied();
        let mut d = self.obj.holding(&applied)?;
        d.deleting = true;
        Some(d.with_applied(applied))
    }

    /// For a refused object that stays: it keeps holding what it put on the target and is
    /// still there, so no other object's change removes it and the refusal itself removes
    /// nothing; nothing is added or restored on its behalf. Its role assignments and group
    /// memberships are left out of planning (neither removed nor re-created).
    fn held(&self, live: &LiveResource) -> Option<DesiredObject> {
        let applied = decide::held_record(self.obj.applied(), live)?;
        let mut d = self.obj.holding(&applied)?;
        d.spec.system_assigned = applied.system_assigned;
        Some(d.with_applied(applied))
    }

    /// Owns something on the target (its ownership record is not empty).
    fn owns_something(&self) -> bool {
        !self.obj.applied().is_empty()
    }

    fn part(&self) -> Part {
        if self.observing() {
            return if self.owns_something() {
                Part::Held
            } else {
                Part::Excluded
            };
        }
        decide::part(
            self.deleting,
            self.desired.is_ok(),
            self.credential.is_some(),
            self.owns_something(),
        )
    }

    /// Allowed, not being deleted: the object's own spec is planned.
    fn is_active(&self) -> bool {
        // `part() == Part::Allowed`, without reading the ownership record.
        !self.deleting && self.desired.is_ok() && !self.observe
    }
}

/// The controller's reconcile: `rep` stands for its whole target.
pub async fn reconcile(
    rep: Arc<VirtualMachineIdentity>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let key = target_key(&rep);
    ctx.mark_started(&key);
    let lock = ctx.lock_for(&key);
    let guard = lock.lock().await;
    ctx.metrics.in_flight.inc();
    let started = std::time::Instant::now();
    let objs = objects_on(&ctx.store, &key);
    // Azure requests of this pass draw on the subscription's budget as the namespace's: when
    // namespaces compete for it, each gets a fair share (vmidentity_azure::fair).
    let tenant = rep.namespace().unwrap_or_default();
    let result =
        vmidentity_azure::fair::with_tenant(tenant, reconcile_target(&key, objs, &ctx)).await;
    ctx.metrics.in_flight.dec();
    drop(guard);
    ctx.release_lock(&key, lock);
    ctx.metrics.objects.set(ctx.store.len() as i64);
    let label = result.as_ref().map_or("error", |o| o.label());
    ctx.metrics.reconciled(label, started.elapsed());
    let outcome = result?;
    if outcome.succeeded() {
        ctx.succeeded(&key);
    }
    Ok(match outcome.requeue(ctx.resync, ctx.per_target_resync) {
        Some(after) => Action::requeue(jitter(after)),
        None => Action::await_change(),
    })
}

/// A table left mostly empty by a burst (10,000 targets triggered at start-up) keeps its
/// size until shrunk.
fn sparse(len: usize, capacity: usize) -> bool {
    capacity > 64 && len < capacity / 4
}

/// Kubernetes API failures (status or finalizer writes): back off and try again.
pub fn error_policy(rep: Arc<VirtualMachineIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(object = %super::refusals::key(&rep), error = %err, "reconcile failed");
    Action::requeue(jitter(ctx.backoff(&target_key(&rep))))
}

async fn reconcile_target(
    key: &str,
    objs: Vec<Arc<VirtualMachineIdentity>>,
    ctx: &Context,
) -> Result<Outcome, Error> {
    let mut members: Vec<Member> = objs
        .into_iter()
        .map(Member::new)
        .filter(|m| decide::considered(m.deleting, m.has_finalizer))
        .collect();
    if members.is_empty() {
        return Ok(Outcome::Idle);
    }
    if let Some(outcome) = guardrails(key, &mut members, ctx).await? {
        return Ok(outcome);
    }
    // Objects that owned nothing and are gone (or cannot be released) need nothing more.
    // (Objects deleted under observe let go in `guardrails`.)
    for m in members
        .iter()
        .filter(|m| m.deleting && !m.observe && !m.owns_something())
    {
        ctx.set_finalizer(&m.obj, false).await?;
    }
    // Objects being deleted that are let go without releasing: annotated abandon, or with
    // deletionPolicy Retain (which releases nothing) and no credential. What they applied
    // stays on the target; a Warning Event says what.
    for m in members
        .iter_mut()
        .filter(|m| m.deleting && m.has_finalizer && m.owns_something())
    {
        let how = if abandoned(&m.obj) {
            format!("annotation {ABANDON_ANNOTATION}=true")
        } else if retains(&m.obj) && m.credential.is_none() {
            "deletionPolicy Retain, and no credential to read the target with".to_string()
        } else {
            continue;
        };
        let note = format!(
            "finalizer removed without releasing ({how}): left on {}: {}; remove by hand what is no longer wanted",
            m.obj.spec.target,
            left_on_target(&m.obj)
        );
        warn!(object = %super::refusals::key(&m.obj), "{note}");
        ctx.event(&m.obj, EventType::Warning, "Abandoned", note)
            .await;
        ctx.set_finalizer(&m.obj, false).await?;
        m.credential = None;
        m.has_finalizer = false;
    }
    // Observed objects stay: they are planned (as if managed) and told their drift.
    members.retain(|m| m.part() != Part::Excluded || m.observing());

    // One credential per target: the writers' (allowed objects and releasing ones). A refused
    // object that still holds identities is planned with them but never written for.
    // The most senior writers' credential is the target's; a newcomer with another one is
    // refused, never the object that held the target first.
    let writers: Vec<_> = members
        .iter()
        .filter_map(|m| {
            let c = m.credential.as_ref()?;
            Some((
                m.obj.planner_ref(),
                decide::seniority(&m.obj),
                c.key.as_str(),
            ))
        })
        .collect();
    match decide::credential_by_seniority(&writers) {
        Err(r) => {
            let now = Timestamp::now();
            let reports = each(members.iter().filter(|m| m.is_active()), |o| {
                decide::refusal(o, &r, now)
            });
            ctx.report_all(reports).await?;
            return Ok(Outcome::Stalled);
        }
        Ok(refused) => {
            let now = Timestamp::now();
            for (object, r) in refused {
                if let Some(m) = members.iter_mut().find(|m| m.obj.planner_ref() == object) {
                    // Logged at WARN once, when new, by `ctx.report` (refusals::log_new).
                    debug!(%object, reason = %r.reason, "{}", r.message);
                    ctx.report(&m.obj, decide::refusal(&m.obj, &r, now)).await?;
                    m.credential = None;
                    if !m.deleting {
                        m.desired = Err(r);
                    }
                }
            }
            // A refused object being deleted keeps its finalizer until it can release.
            members.retain(|m| m.part() != Part::Excluded || m.observing());
        }
    }
    let Some(az) = members.iter().find_map(|m| m.credential.clone()) else {
        // Nobody writes: only refused objects that hold what they applied.
        return Ok(Outcome::Stalled);
    };

    // Observed objects: read and planned as `manage` would, told the drift, never written.
    let observed = if members.iter().any(Member::observing) {
        match observe_target(key, &members, &az, ctx).await? {
            Some(failed) => return Ok(failed),
            None => Some(Outcome::Converged),
        }
    } else {
        None
    };

    let Some((mut desired, version)) = planner_input(&members, false) else {
        // Nothing to write: every object is refused or observed (or, being deleted, never
        // applied anything the controller could release).
        for m in members.iter().filter(|m| m.deleting) {
            ctx.set_finalizer(&m.obj, false).await?;
        }
        return Ok(observed.unwrap_or(Outcome::Stalled));
    };

    let target = desired[0].spec.target.clone();
    let live = match az.exec.read_target(&target, &read_version(&desired)).await {
        Ok(l) => l,
        Err(e) if e.class() == ErrorClass::TargetNotFound => {
            let now = Timestamp::now();
            for m in members.iter().filter(|m| m.deleting) {
                info!(object = %m.obj.name_any(), %target, "target is gone; releasing the object");
                ctx.set_finalizer(&m.obj, false).await?;
            }
            let target = target.to_string();
            let detail = e.message();
            let reports = each(members.iter().filter(|m| m.is_active()), |o| {
                decide::target_not_found(o, &target, &detail, now)
            });
            ctx.report_all(reports).await?;
            return Ok(Outcome::Stalled);
        }
        Err(e) => return azure_failure(key, &members, &e, ctx).await,
    };

    for m in members.iter().filter(|m| m.part() == Part::Held) {
        desired.extend(m.held(&live).map(|mut d| {
            d.spec.api_version = version.clone();
            d
        }));
    }

    // A conflict refuses the objects that came last, never one that held the target first.
    let (plan, refused) = plan_target_by_seniority(&desired, &live, |d| {
        members
            .iter()
            .find(|m| m.obj.planner_ref() == d.object)
            // What a held object (refused, say by policy) still holds is never taken from it
            // by another object's change: it ranks above every writer (None sorts first).
            .and_then(|m| (m.part() != Part::Held).then(|| decide::seniority(&m.obj)))
    });
    if !refused.is_empty() {
        let now = Timestamp::now();
        for r in &refused {
            desired.retain(|d| d.object != r.object);
            let Some(m) = members.iter_mut().find(|m| m.obj.planner_ref() == r.object) else {
                continue;
            };
            if m.desired.is_err() {
                // Already refused (it only held what it applied): nothing more to say.
                continue;
            }
            debug!(object = %r.object, %target, reason = vmidentity_planner::Refused::REASON, kept_by = ?r.kept_by.iter().map(ToString::to_string).collect::<Vec<_>>(), "{r}");
            let refusal = decide::conflict_refusal(r);
            ctx.report(&m.obj, decide::refusal(&m.obj, &refusal, now))
                .await?;
            m.desired = Err(refusal);
        }
    }
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            stall_active(&members, (&e).into(), e.to_string(), ctx).await?;
            // No write to this target until an object changes.
            return Ok(Outcome::Idle);
        }
    };
    // Claim before the first write to ARM (an object refused above is not claimed).
    for m in members.iter().filter(|m| m.is_active()) {
        ctx.set_finalizer(&m.obj, true).await?;
    }

    if !plan.is_converged() {
        widen_records(&mut members, &plan, &desired, ctx).await?;
        info!(%target, changes = plan.changes.len(), "writing the target");
    }
    let mut result = TargetResult {
        target: target.to_string(),
        plan: Some(plan.clone()),
        ..TargetResult::for_group(&desired)
    };
    // A plan made again inside write_target (after a 412) is claimed before its PATCH too.
    // It widens the members' own records too, so a failed write reports on top of them.
    let claimer = Claimer {
        members: tokio::sync::Mutex::new(&mut members[..]),
        ctx,
        failed: Mutex::new(None),
    };
    let written =
        write_target_claiming(&az.exec, &desired, &live, &plan, &mut result, &claimer).await;
    let Claimer { failed, .. } = claimer;
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    match written {
        Ok(()) => {}
        Err(EngineError::Azure(e)) => return azure_failure(key, &members, &e, ctx).await,
        Err(e) => {
            stall_active(&members, (&e).into(), e.to_string(), ctx).await?;
            return Ok(Outcome::Stalled);
        }
    }
    let live_after = result.live_after.clone().unwrap_or(live);
    // The plan that was written (without identities ARM refused as nonexistent).
    let plan = result.plan.clone().unwrap_or(plan);
    report_success(&members, &plan, &desired, &result, &live_after, ctx).await?;
    Ok(decide::success_outcome(&plan, &result))
}

/// The planner's input from the objects that write: the allowed objects' specs and what
/// releasing objects release, with the api-version the writers chose. None when nobody
/// writes. `as_managed`: observed objects count as allowed (what `manage` would plan).
fn planner_input(members: &[Member], as_managed: bool) -> Option<(Vec<DesiredObject>, ApiVersion)> {
    let mut desired = Vec::new();
    for m in members {
        let part = if as_managed && m.observing() {
            Part::Allowed
        } else {
            m.part()
        };
        match part {
            Part::Allowed => desired.extend(m.desired.clone().ok()),
            Part::Releasing if m.desired.is_err() => desired.extend(m.releasing()),
            Part::Releasing => desired.extend(m.desired.clone().ok()),
            Part::Held | Part::Excluded => {}
        }
    }
    if desired.is_empty() {
        return None;
    }
    // Released and held objects use the wire format the writers chose (they state nothing
    // of their own, so they never make an api-version conflict).
    let writers: Vec<DesiredObject> = desired.iter().filter(|d| !d.deleting).cloned().collect();
    let version = read_version(if writers.is_empty() {
        &desired
    } else {
        &writers
    });
    for d in desired.iter_mut() {
        if d.deleting && d.spec.api_version.wire_format() != version.wire_format() {
            d.spec.api_version = version.clone();
        }
    }
    Some((desired, version))
}

/// Widens the ownership records of a plan made again inside the write (after a 412) before
/// it is sent; the Kubernetes error that stopped it is kept for the reconcile to return.
struct Claimer<'a> {
    members: tokio::sync::Mutex<&'a mut [Member]>,
    ctx: &'a Context,
    failed: Mutex<Option<Error>>,
}

impl Claim for Claimer<'_> {
    fn claim<'a>(
        &'a self,
        plan: &'a TargetPlan,
        group: &'a [DesiredObject],
    ) -> futures::future::BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let mut members = self.members.lock().await;
            widen_records(&mut members, plan, group, self.ctx)
                .await
                .map_err(|e| {
                    let claim = EngineError::Claim {
                        target: plan.target.to_string(),
                        message: e.to_string(),
                    };
                    if let Ok(mut failed) = self.failed.lock() {
                        *failed = Some(e);
                    }
                    claim
                })
        })
    }
}

/// Widens the ownership records before writing: a crash after the PATCH must not orphan
/// what it added. Each member then carries its widened record, so a failed write reports on
/// top of it: the write may have been applied (a long-running operation that ended
/// `Failed`, a timeout), and only a later pass that reads the target narrows the record.
async fn widen_records(
    members: &mut [Member],
    plan: &TargetPlan,
    desired: &[DesiredObject],
    ctx: &Context,
) -> Result<(), Error> {
    let claims = plan.claims(desired);
    for m in members.iter_mut().filter(|m| m.is_active()) {
        if let Some(claim) = claims.get(&m.obj.planner_ref()) {
            let mut st = m.obj.status.clone().unwrap_or_default();
            let claim = claim.clone();
            if st.applied.as_ref() != Some(&claim) {
                st.applied = Some(claim);
                ctx.patch_status(&m.obj, &st).await?;
                let mut widened = (*m.obj).clone();
                widened.status = Some(st);
                m.obj = Arc::new(widened);
            }
        }
    }
    Ok(())
}

/// Guardrails first, each object on its own: its validity (Member::new), the policy without
/// Azure, its namespace's credential, then the policy with the role definitions read with
/// that credential. A refusal concerns only the refused object: an object that is invalid or
/// denied and owns nothing takes no part in credential choice or planning, so it can never
/// stall or freeze another tenant's objects on the same target. Returns the pass's outcome
/// when Azure failed.
async fn guardrails(
    key: &str,
    members: &mut [Member],
    ctx: &Context,
) -> Result<Option<Outcome>, Error> {
    let policies = ctx.policy.policies();
    for m in members.iter_mut() {
        match reconcile_policy_of(&m.obj, ctx) {
            Ok(p) => m.observe = p == ReconcilePolicy::Observe,
            Err(r) if !m.deleting => m.desired = Err(r),
            // Being deleted: released as managed (the annotation is no reason to orphan).
            Err(_) => {}
        }
    }
    // Deleted under observe: nothing is released (observe never writes); the finalizer goes.
    for m in members.iter().filter(|m| m.deleting && m.observe) {
        info!(object = %super::refusals::key(&m.obj), "deleted under reconcile policy observe: nothing is released");
        ctx.set_finalizer(&m.obj, false).await?;
    }
    for m in members.iter_mut().filter(|m| !m.deleting) {
        let Ok(d) = &m.desired else { continue };
        let ns = d.object.namespace.clone();
        if let Err(denied) = ctx.policy.check_static(&policies, &ns, &d.spec) {
            ctx.metrics.policy_denied.inc();
            m.desired = Err(Refusal {
                reason: Reason::PolicyDenied,
                message: denied.to_string(),
            });
            continue;
        }
        let az = match credential_for(&ns, ctx).await {
            Ok(c) => c,
            Err(r) => {
                m.desired = Err(r);
                continue;
            }
        };
        match ctx.policy.check(&policies, &az.exec, &ns, &d.spec).await {
            Ok(Ok(())) => m.credential = Some(az),
            Ok(Err(denied)) => {
                ctx.metrics.policy_denied.inc();
                m.desired = Err(Refusal {
                    reason: Reason::PolicyDenied,
                    message: denied.to_string(),
                });
            }
            Err(e) => {
                return azure_failure(key, std::slice::from_ref(m), &e, ctx)
                    .await
                    .map(Some);
            }
        }
    }
    // Objects being deleted release what they applied, with their own namespace's credential.
    for m in members
        .iter_mut()
        .filter(|m| m.deleting && !m.observe && m.owns_something())
    {
        if abandoned(&m.obj) {
            // Let go without releasing (reconcile_target): no credential needed.
            continue;
        }
        let ns = m.obj.namespace().unwrap_or_default();
        match credential_for(&ns, ctx).await {
            Ok(c) => m.credential = Some(c),
            Err(_) if retains(&m.obj) => {
                // Retain releases nothing: let go without a credential (reconcile_target).
            }
            Err(mut r) => {
                // Cannot release without a credential: keep the finalizer, say why and what
                // the way out is.
                r.message = format!(
                    "{}; the object is being deleted and keeps its finalizer until it can release what it applied: restore the Secret, or leave what it applied on the target and let the object go: kubectl annotate virtualmachineidentity {} -n {ns} {ABANDON_ANNOTATION}=true",
                    r.message,
                    m.obj.name_any()
                );
                warn!(object = %m.obj.name_any(), reason = %r.reason, "cannot release: {}", r.message);
                ctx.report(&m.obj, decide::refusal(&m.obj, &r, Timestamp::now()))
                    .await?;
            }
        }
    }
    let now = Timestamp::now();
    for m in members.iter().filter(|m| !m.deleting) {
        if let Err(r) = &m.desired {
            ctx.report(&m.obj, decide::refusal(&m.obj, r, now)).await?;
        }
    }
    Ok(None)
}

/// The object's reconcile policy: its annotation, its Namespace's, the controller's default.
fn reconcile_policy_of(
    o: &VirtualMachineIdentity,
    ctx: &Context,
) -> Result<ReconcilePolicy, Refusal> {
    let ns = o.namespace().unwrap_or_default();
    let ns_value = ctx
        .policy
        .namespace_annotation(&ns, RECONCILE_POLICY_ANNOTATION);
    observe::reconcile_policy(
        o.annotation(RECONCILE_POLICY_ANNOTATION),
        ns_value.as_deref(),
        &ns,
        ctx.default_policy,
    )
}

/// The observe pass of a target: reads it and plans every allowed object as `manage` would
/// (the same planning as `vmidentity plan --endpoint`), writes nothing to Azure, and tells
/// each observed object its drift. Returns the pass's outcome when it cannot go on (Azure
/// failed); None when the managed objects of the target may be written next.
async fn observe_target(
    key: &str,
    members: &[Member],
    az: &Chosen,
    ctx: &Context,
) -> Result<Option<Outcome>, Error> {
    let observers = || members.iter().filter(|m| m.observing());
    let Some((mut group, version)) = planner_input(members, true) else {
        return Ok(None);
    };
    let target = group[0].spec.target.clone();
    let live = match az.exec.read_target(&target, &read_version(&group)).await {
        Ok(l) => l,
        Err(e) if e.class() == ErrorClass::TargetNotFound => {
            let now = Timestamp::now();
            let (target, detail) = (target.to_string(), e.message());
            let reports = each(observers(), |o| {
                decide::target_not_found(o, &target, &detail, now)
            });
            ctx.report_all(reports).await?;
            return Ok(Some(Outcome::Stalled));
        }
        Err(e) => return azure_failure(key, members, &e, ctx).await.map(Some),
    };
    for m in members
        .iter()
        .filter(|m| m.part() == Part::Held && !m.observing())
    {
        group.extend(m.held(&live).map(|mut d| {
            d.spec.api_version = version.clone();
            d
        }));
    }
    let result = plan_read_only(&az.exec, group, &live).await;
    let now = Timestamp::now();
    if let Some(e) = &result.error {
        if let EngineError::Azure(a) = e {
            return azure_failure(key, members, a, ctx).await.map(Some);
        }
        let (reason, message) = (Reason::from(e), e.to_string());
        let reports = each(observers(), |o| {
            decide::stall(o, reason, message.clone(), message.clone(), now)
        });
        ctx.report_all(reports).await?;
        return Ok(Some(Outcome::Stalled));
    }
    let graph = az.exec.graph_endpoint().to_string();
    for m in observers() {
        let report = match result
            .refused
            .iter()
            .find(|r| r.object == m.obj.planner_ref())
        {
            Some(r) => decide::refusal(&m.obj, &decide::conflict_refusal(r), now),
            None => observe::drift_report(&m.obj, &result, &live, &graph, now),
        };
        ctx.report(&m.obj, report).await?;
    }
    Ok(None)
}

/// Stalls every allowed object of the target (a plan or engine error).
async fn stall_active(
    members: &[Member],
    reason: Reason,
    message: String,
    ctx: &Context,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let reports = each(members.iter().filter(|m| m.is_active()), |o| {
        decide::stall(o, reason, message.clone(), message.clone(), now)
    });
    ctx.report_all(reports).await
}

async fn report_success(
    members: &[Member],
    plan: &TargetPlan,
    desired: &[DesiredObject],
    result: &TargetResult,
    live: &LiveResource,
    ctx: &Context,
) -> Result<(), Error> {
    let allowed = members.iter().filter(|m| m.is_active()).map(|m| &*m.obj);
    let success = Success::new(plan, result, live, allowed).with_adopted(desired);
    if success.wrote() {
        // The target-wide summary; each object's status and Events tell its own part.
        info!(target = %plan.target, drift = success.drift, changes = %success.changes.join("; "), "target written");
    }
    let now = Timestamp::now();
    for m in members {
        if m.deleting {
            let d = m.desired.clone().ok().or_else(|| m.releasing());
            if let Some(n) = d.and_then(|d| success.released(&d)) {
                ctx.event(&m.obj, n.type_, n.reason.as_str(), n.note).await;
            }
            ctx.set_finalizer(&m.obj, false).await?;
            continue;
        }
        if m.observing() {
            // Told by the observe pass.
            continue;
        }
        let Ok(d) = &m.desired else { continue };
        ctx.report(&m.obj, success.report(&m.obj, d, now)).await?;
    }
    debug!(target = %plan.target, writes = plan.writes.len() + result.grant_writes.len(), "target reconciled");
    Ok(())
}

/// The credential objects of namespace `ns` reconcile with: the controller's own, or the
/// namespace's when namespace credentials are on.
async fn credential_for(ns: &str, ctx: &Context) -> Result<Chosen, Refusal> {
    let Some(creds) = &ctx.credentials else {
        return Ok(Chosen {
            key: "global".into(),
            exec: ctx.exec.clone(),
        });
    };
    creds.for_namespace(ns).await.map_err(|e| Refusal {
        reason: (&e).into(),
        message: e.to_string(),
    })
}

/// An Azure failure: tells the members whose spec is valid, and says when to look again.
async fn azure_failure(
    key: &str,
    members: &[Member],
    e: &AzureError,
    ctx: &Context,
) -> Result<Outcome, Error> {
    let class = e.class();
    let message = e.to_string();
    warn!(target = key, reason = class.reason(), error = %message, "ARM request failed");
    let now = Timestamp::now();
    let reports = each(members.iter().filter(|m| m.desired.is_ok()), |o| {
        decide::azure_failure(o, class, &message, now)
    });
    ctx.report_all(reports).await?;
    Ok(decide::azure_outcome(class, e.retry_after(), || {
        ctx.backoff(key)
    }))
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn a_status_patch_clears_what_the_new_status_leaves_out() {
        let old = json!({"observedGeneration": 2, "applied": {
            "systemAssigned": true, "userAssignedIdentities": ["a"],
            "groupMemberships": [{"groupObjectId": "g"}]}, "principals": {"systemAssigned": "p"}});
        let new = json!({"observedGeneration": 3, "applied": {"userAssignedIdentities": []}});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"observedGeneration": 3, "applied": {
                "userAssignedIdentities": [], "systemAssigned": null, "groupMemberships": null},
                "principals": null})
        );
        // Applying it as a merge patch gives exactly the new status.
        let mut doc = old.clone();
        apply(&mut doc, &merge_patch(&old, &new));
        assert_eq!(doc, new);
    }

    /// RFC 7386 application, for the test.
    fn apply(doc: &mut serde_json::Value, patch: &serde_json::Value) {
        match (doc.as_object_mut(), patch.as_object()) {
            (Some(d), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        d.remove(k);
                    } else if v.is_object() && d.get(k).is_some_and(|x| x.is_object()) {
                        apply(d.get_mut(k).unwrap(), v);
                    } else {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
            _ => *doc = patch.clone(),
        }
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod reconcile_tests;
