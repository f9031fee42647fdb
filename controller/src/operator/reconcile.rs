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
    ApiVersion, ArmId, DeletionPolicy, DesiredObject, LiveResource, Mode, ObjectRef, Spec,
    TargetPlan, plan_target,
};

use super::conditions::{self, Phase};
use super::credentials::{Chosen, Credentials};
use super::events::{EventRecorder, EventType, Published};
use super::metrics::Metrics;
use super::policy::{POLICY_DENIED, PolicyView};
use super::target::{objects_on, target_key};
use crate::crd::{
    AppliedIdentities, Principals, VirtualMachineIdentity, VirtualMachineIdentityStatus,
};
use crate::engine::{EngineError, TargetResult, read_version, write_target};

pub const FINALIZER: &str = "vmidentity.dev/finalizer";

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
        jitter(base.min(Duration::from_secs(300)))
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
            Err(e) => warn!(object = %o.name_any(), error = %e, "cannot publish event"),
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

    /// Writes the conditions for `phase`, keeping everything else of the status.
    async fn set_phase(&self, o: &VirtualMachineIdentity, phase: &Phase) -> Result<(), Error> {
        let mut st = o.status.clone().unwrap_or_default();
        let conds =
            conditions::conditions(&st.conditions, phase, o.meta().generation, Timestamp::now());
        if conditions::same(&st.conditions, &conds) {
            return Ok(());
        }
        st.conditions = conds;
        if matches!(phase, Phase::Stalled { .. }) {
            st.observed_generation = o.meta().generation;
        }
        self.patch_status(o, &st).await
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

fn object_ref(o: &VirtualMachineIdentity) -> ObjectRef {
    ObjectRef::new(o.namespace().unwrap_or_default(), o.name_any())
}

/// Why an object is not planned as it asks.
#[derive(Debug, Clone)]
struct Refusal {
    /// The Stalled reason: InvalidSpec or PolicyDenied.
    reason: &'static str,
    message: String,
}

/// One object of the target, with what the planner makes of it.
struct Member {
    obj: Arc<VirtualMachineIdentity>,
    desired: Result<DesiredObject, Refusal>,
    deleting: bool,
    has_finalizer: bool,
    /// The Azure credential of the object's namespace, once the object is allowed.
    credential: Option<Chosen>,
}

impl Member {
    fn new(obj: Arc<VirtualMachineIdentity>) -> Member {
        let deleting = obj.meta().deletion_timestamp.is_some();
        let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
        let desired = obj
            .spec
            .to_raw()
            .validate()
            .map(|spec| {
                let mut d =
                    DesiredObject::new(object_ref(&obj), spec).with_applied(applied_of(&obj));
                d.deleting = deleting;
                d
            })
            .map_err(|errs| Refusal {
                reason: "InvalidSpec",
                message: errs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        Member {
            obj,
            desired,
            deleting,
            has_finalizer,
            credential: None,
        }
    }

    /// For a refused object being deleted: what it releases (with Detach), from its record.
    fn releasing(&self) -> Option<DesiredObject> {
        let applied = applied_of(&self.obj);
        let mut d = self.holding(&applied)?;
        d.deleting = true;
        Some(d.with_applied(applied))
    }

    /// For a refused object that stays: it keeps holding what it put on the target and is
    /// still there, so no other object's change removes it and the refusal itself removes
    /// nothing; nothing is added or restored on its behalf. Its role assignments and group
    /// memberships are left out of planning (neither removed nor re-created).
    fn held(&self, live: &LiveResource) -> Option<DesiredObject> {
        let mut applied = applied_of(&self.obj);
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
        if applied.is_empty() {
            // Holds nothing on the target: takes no part (it cannot stand in anyone's way).
            return None;
        }
        let mut d = self.holding(&applied)?;
        d.spec.system_assigned = applied.system_assigned;
        Some(d.with_applied(applied))
    }

    /// Owns something on the target (its ownership record is not empty).
    fn owns_something(&self) -> bool {
        !applied_of(&self.obj).is_empty()
    }

    /// Allowed, not being deleted: the object's own spec is planned.
    fn is_active(&self) -> bool {
        !self.deleting && self.desired.is_ok()
    }

    fn holding(&self, applied: &vmidentity_planner::Applied) -> Option<DesiredObject> {
        let target = ArmId::parse_target(&self.obj.spec.target).ok()?;
        let spec = Spec {
            target,
            api_version: ApiVersion::default(),
            mode: Mode::Merge,
            system_assigned: None,
            user_assigned: applied
                .user_assigned_identities
                .iter()
                .filter_map(|s| ArmId::parse_uai(s).ok())
                .collect(),
            role_assignments: vec![],
            group_memberships: vec![],
            deletion_policy: match self.obj.spec.deletion_policy {
                Some(crate::crd::DeletionPolicy::Retain) => DeletionPolicy::Retain,
                _ => DeletionPolicy::Detach,
            },
        };
        Some(DesiredObject::new(object_ref(&self.obj), spec))
    }

    /// Reports a refusal (Stalled + an event when it is new).
    async fn refuse(&self, r: &Refusal, ctx: &Context) -> Result<(), Error> {
        let phase = Phase::Stalled {
            reason: r.reason.into(),
            message: r.message.clone(),
        };
        if stalled_changed(&self.obj, &phase) || stalled_message_changed(&self.obj, &r.message) {
            ctx.event(&self.obj, EventType::Warning, r.reason, r.message.clone())
                .await;
        }
        ctx.set_phase(&self.obj, &phase).await
    }
}

fn applied_of(obj: &VirtualMachineIdentity) -> vmidentity_planner::Applied {
    obj.status
        .as_ref()
        .and_then(|s| s.applied.as_ref())
        .map(Into::into)
        .unwrap_or_default()
}

fn stalled_message_changed(o: &VirtualMachineIdentity, message: &str) -> bool {
    !o.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::STALLED && c.message == message)
    })
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
    let label = match &result {
        Ok(Outcome::Converged) => "converged",
        Ok(Outcome::Applied) => "applied",
        Ok(Outcome::Retry(_)) => "retry",
        Ok(Outcome::Stalled) => "stalled",
        Ok(Outcome::Idle) => "idle",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(label, started.elapsed());
    match result {
        Ok(Outcome::Converged | Outcome::Applied) => {
            ctx.succeeded(&key);
            if ctx.per_target_resync {
                Ok(Action::requeue(jitter(ctx.resync)))
            } else {
                Ok(Action::await_change())
            }
        }
        Ok(Outcome::Retry(after)) => Ok(Action::requeue(after)),
        Ok(Outcome::Stalled) => Ok(Action::requeue(jitter(ctx.resync))),
        Ok(Outcome::Idle) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// A table left mostly empty by a burst (10,000 targets triggered at start-up) keeps its
/// size until shrunk.
fn sparse(len: usize, capacity: usize) -> bool {
    capacity > 64 && len < capacity / 4
}

/// Kubernetes API failures (status or finalizer writes): back off and try again.
pub fn error_policy(rep: Arc<VirtualMachineIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(object = %rep.name_any(), error = %err, "reconcile failed");
    Action::requeue(ctx.backoff(&target_key(&rep)))
}

enum Outcome {
    Converged,
    Applied,
    Retry(Duration),
    /// Needs a human; looked at again at the resync period (an identity or VM may appear).
    Stalled,
    /// Nothing left to do until an object changes.
    Idle,
}

async fn reconcile_target(
    key: &str,
    objs: Vec<Arc<VirtualMachineIdentity>>,
    ctx: &Context,
) -> Result<Outcome, Error> {
    // Objects deleted before we ever claimed them applied nothing.
    let mut members: Vec<Member> = objs
        .into_iter()
        .map(Member::new)
        .filter(|m| !m.deleting || m.has_finalizer)
        .collect();
    if members.is_empty() {
        return Ok(Outcome::Idle);
    }

    // Guardrails first, each object on its own: its validity (Member::new), the policy
    // without Azure, its namespace's credential, then the policy with the role definitions
    // read with that credential. A refusal concerns only the refused object: an object that
    // is invalid or denied and owns nothing takes no part in credential choice or planning,
    // so it can never stall or freeze another tenant's objects on the same target.
    let policies = ctx.policy.policies();
    for m in members.iter_mut().filter(|m| !m.deleting) {
        let Ok(d) = &m.desired else { continue };
        let ns = d.object.namespace.clone();
        if let Err(denied) = ctx.policy.check_static(&policies, &ns, &d.spec) {
            ctx.metrics.policy_denied.inc();
            m.desired = Err(Refusal {
                reason: POLICY_DENIED,
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
        match ctx.policy.check(&az.exec, &ns, &d.spec).await {
            Ok(Ok(())) => m.credential = Some(az),
            Ok(Err(denied)) => {
                ctx.metrics.policy_denied.inc();
                m.desired = Err(Refusal {
                    reason: POLICY_DENIED,
                    message: denied.to_string(),
                });
            }
            Err(e) => {
                let members: Vec<&Member> = vec![&*m];
                return azure_failure(key, &members, &e, ctx).await;
            }
        }
    }
    // Objects being deleted release what they applied, with their own namespace's credential.
    for m in members
        .iter_mut()
        .filter(|m| m.deleting && m.owns_something())
    {
        let ns = m.obj.namespace().unwrap_or_default();
        match credential_for(&ns, ctx).await {
            Ok(c) => m.credential = Some(c),
            Err(r) => {
                // Cannot release without a credential: keep the finalizer, say why.
                warn!(object = %m.obj.name_any(), reason = r.reason, "cannot release: {}", r.message);
                m.refuse(&r, ctx).await?;
            }
        }
    }
    for m in members.iter().filter(|m| !m.deleting) {
        if let Err(r) = &m.desired {
            m.refuse(r, ctx).await?;
        }
    }
    // Objects that owned nothing and are gone (or cannot be released) need nothing more.
    for m in members.iter().filter(|m| m.deleting && !m.owns_something()) {
        ctx.set_finalizer(&m.obj, false).await?;
    }
    members.retain(|m| {
        if m.deleting {
            m.credential.is_some()
        } else {
            m.desired.is_ok() || m.owns_something()
        }
    });

    // One credential per target: the writers' (allowed objects and releasing ones). A refused
    // object that still holds identities is planned with them but never written for.
    let az = {
        let mut chosen: Option<Chosen> = None;
        let mut clash: Option<String> = None;
        for c in members.iter().filter_map(|m| m.credential.as_ref()) {
            match &chosen {
                None => chosen = Some(c.clone()),
                Some(first) if first.key != c.key => {
                    clash = Some(format!(
                        "objects of this target reconcile with different Azure credentials ({} and {}): one PATCH cannot carry both; keep each VM's objects in namespaces that share a credential",
                        first.key, c.key
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(message) = clash {
            let r = Refusal {
                reason: "CredentialConflict",
                message,
            };
            for m in members.iter().filter(|m| m.is_active()) {
                m.refuse(&r, ctx).await?;
            }
            return Ok(Outcome::Stalled);
        }
        match chosen {
            Some(c) => c,
            // Nobody writes: only refused objects that hold what they applied.
            None => return Ok(Outcome::Stalled),
        }
    };

    let mut desired = Vec::new();
    for m in &members {
        match &m.desired {
            Ok(d) => desired.push(d.clone()),
            Err(_) if m.deleting => desired.extend(m.releasing()),
            Err(_) => {}
        }
    }
    let refused: Vec<&Member> = members
        .iter()
        .filter(|m| !m.deleting && m.desired.is_err())
        .collect();
    if desired.is_empty() {
        // Nothing to write: every object is refused (or, being deleted, never applied
        // anything the controller could release).
        for m in members.iter().filter(|m| m.deleting) {
            ctx.set_finalizer(&m.obj, false).await?;
        }
        return Ok(Outcome::Stalled);
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

    // Claim before the first write to ARM.
    for m in members.iter().filter(|m| !m.deleting && m.desired.is_ok()) {
        ctx.set_finalizer(&m.obj, true).await?;
    }

    let target = desired[0].spec.target.clone();
    let live = match az.exec.read_target(&target, &read_version(&desired)).await {
        Ok(l) => l,
        Err(e) if e.class() == ErrorClass::TargetNotFound => {
            for m in &members {
                if m.deleting {
                    info!(object = %m.obj.name_any(), %target, "target is gone; releasing the object");
                    ctx.set_finalizer(&m.obj, false).await?;
                } else if m.desired.is_ok() {
                    let phase = Phase::Stalled {
                        reason: "TargetNotFound".into(),
                        message: format!(
                            "{target} does not exist (or the controller cannot see it): {}",
                            e.message()
                        ),
                    };
                    if stalled_changed(&m.obj, &phase) {
                        ctx.event(
                            &m.obj,
                            EventType::Warning,
                            "TargetNotFound",
                            format!("{target} not found"),
                        )
                        .await;
                    }
                    ctx.set_phase(&m.obj, &phase).await?;
                }
            }
            return Ok(Outcome::Stalled);
        }
        Err(e) => return azure_failure(key, &all_of(&members), &e, ctx).await,
    };

    for m in &refused {
        desired.extend(m.held(&live).map(|mut d| {
            d.spec.api_version = version.clone();
            d
        }));
    }
    let all: Vec<&Member> = members.iter().collect();

    let plan = match plan_target(&desired, &live) {
        Ok(p) => p,
        Err(e) => {
            for m in members.iter().filter(|m| !m.deleting && m.desired.is_ok()) {
                let phase = Phase::Stalled {
                    reason: e.reason().to_string(),
                    message: e.to_string(),
                };
                if stalled_changed(&m.obj, &phase) {
                    ctx.event(&m.obj, EventType::Warning, e.reason(), e.to_string())
                        .await;
                }
                ctx.set_phase(&m.obj, &phase).await?;
            }
            // No write to this target until an object changes.
            return Ok(Outcome::Idle);
        }
    };

    if !plan.is_converged() {
        // Widen the ownership records before writing: a crash after the PATCH must not
        // orphan what it added.
        let claims = plan.claims(&desired);
        for m in members.iter().filter(|m| !m.deleting && m.desired.is_ok()) {
            if let Some(claim) = claims.get(&object_ref(&m.obj)) {
                let mut st = m.obj.status.clone().unwrap_or_default();
                let claim = AppliedIdentities::from(claim);
                if st.applied.as_ref() != Some(&claim) {
                    st.applied = Some(claim);
                    ctx.patch_status(&m.obj, &st).await?;
                }
            }
        }
        info!(%target, changes = plan.changes.len(), "writing the target");
    }
    let mut result = TargetResult {
        target: target.to_string(),
        objects: desired.iter().map(|d| d.object.clone()).collect(),
        plan: Some(plan.clone()),
        error: None,
        live_after: None,
        grant_writes: Vec::new(),
        grants: None,
        bad_identities: Vec::new(),
    };
    match write_target(&az.exec, &desired, &live, &plan, &mut result).await {
        Ok(()) => {}
        Err(EngineError::Azure(e)) => return azure_failure(key, &all, &e, ctx).await,
        Err(e) => {
            for m in members.iter().filter(|m| !m.deleting && m.desired.is_ok()) {
                let phase = Phase::Stalled {
                    reason: e.reason().to_string(),
                    message: e.to_string(),
                };
                if stalled_changed(&m.obj, &phase) {
                    ctx.event(&m.obj, EventType::Warning, e.reason(), e.to_string())
                        .await;
                }
                ctx.set_phase(&m.obj, &phase).await?;
            }
            return Ok(Outcome::Stalled);
        }
    }
    let live_after = result.live_after.clone().unwrap_or(live);
    // The plan that was written (without identities ARM refused as nonexistent).
    let plan = result.plan.clone().unwrap_or(plan);
    let pending = result
        .grants
        .as_ref()
        .map(|g| g.pending.clone())
        .unwrap_or_default();
    report_success(&members, &plan, &result, &live_after, ctx).await?;
    if !pending.is_empty() {
        // A principal Azure has not shown yet (a just-created identity): look again soon.
        return Ok(Outcome::Retry(jitter(Duration::from_secs(30))));
    }
    Ok(if plan.is_converged() && result.grant_writes.is_empty() {
        Outcome::Converged
    } else {
        Outcome::Applied
    })
}

fn stalled_changed(o: &VirtualMachineIdentity, phase: &Phase) -> bool {
    let Phase::Stalled { reason, .. } = phase else {
        return true;
    };
    !o.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::STALLED && c.status == "True" && c.reason == *reason)
    })
}

fn was_ready(o: &VirtualMachineIdentity) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.observed_generation == o.meta().generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == conditions::READY && c.status == "True")
    })
}

async fn report_success(
    members: &[Member],
    plan: &TargetPlan,
    result: &TargetResult,
    live: &LiveResource,
    ctx: &Context,
) -> Result<(), Error> {
    let mut changes: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
    changes.extend(result.grant_writes.iter().map(describe_grant_write));
    let wrote = !changes.is_empty();
    let drift = wrote
        && members
            .iter()
            .filter(|m| !m.deleting && m.desired.is_ok())
            .all(|m| was_ready(&m.obj));
    for m in members {
        if m.deleting {
            if wrote {
                ctx.event(&m.obj, EventType::Normal, "Detached", changes.join("; "))
                    .await;
            }
            ctx.set_finalizer(&m.obj, false).await?;
            continue;
        }
        let Ok(d) = &m.desired else { continue };
        for u in result
            .grants
            .iter()
            .flat_map(|g| g.untrusted.iter())
            .filter(|u| u.object == d.object)
        {
            warn!(object = %d.object, target = %plan.target, reason = u.reason, "{} is recorded in status.applied but not acted on: its principal is not one of the target's identities, or vmidentity did not make it; dropped from the record", u.what);
            ctx.event(
                &m.obj,
                EventType::Warning,
                u.reason,
                format!(
                    "{} is recorded in status.applied but not acted on (not one of {}'s own identities, or not made by vmidentity); dropped from the record",
                    u.what,
                    plan.target.short()
                ),
            )
            .await;
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
            format!("{} is as declared", plan.target.short())
        } else {
            format!("{}: {}", plan.target.short(), changes.join("; "))
        };
        let bad: Vec<String> = d
            .spec
            .user_assigned
            .iter()
            .filter(|u| result.bad_identities.contains(u))
            .map(ToString::to_string)
            .collect();
        let phase = if !bad.is_empty() {
            Phase::Stalled {
                reason: "IdentityNotFound".into(),
                message: format!(
                    "user-assigned identity {} does not exist; everything else was applied",
                    bad.join(", ")
                ),
            }
        } else if pending.is_empty() {
            Phase::Ready {
                reason: if wrote { "Applied" } else { "Converged" }.into(),
                message,
            }
        } else {
            Phase::Progressing {
                reason: "GrantsPending".into(),
                message: format!("waiting for Azure: {}", pending.join("; ")),
            }
        };
        let old = m.obj.status.clone().unwrap_or_default();
        let mut conds = conditions::conditions(
            &old.conditions,
            &phase,
            m.obj.meta().generation,
            Timestamp::now(),
        );
        // Nothing written and already Ready for this generation: keep the conditions as they
        // are (an "Applied" Ready does not turn into "Converged"), so a restart or a resync
        // pass over converged objects costs no status write.
        if !wrote
            && (conditions::same(&old.conditions, &conds)
                || (matches!(phase, Phase::Ready { .. }) && was_ready(&m.obj)))
        {
            conds = old.conditions.clone();
        }
        let st = VirtualMachineIdentityStatus {
            observed_generation: m.obj.meta().generation,
            conditions: conds,
            applied: Some(AppliedIdentities::from(&applied)),
            principals: (principals != Principals::default()).then_some(principals),
            target_name: Some(plan.target.name().to_string()),
            user_assigned_count: Some(present),
        };
        ctx.patch_status(&m.obj, &st).await?;
        if wrote {
            let (reason, type_) = if drift {
                ("DriftRepaired", EventType::Warning)
            } else {
                ("Applied", EventType::Normal)
            };
            let note = if drift {
                format!(
                    "{} had drifted from the declared state; repaired: {}",
                    plan.target.short(),
                    changes.join("; ")
                )
            } else {
                format!("{}: {}", plan.target.short(), changes.join("; "))
            };
            ctx.event(&m.obj, type_, reason, note).await;
        }
    }
    debug!(target = %plan.target, writes = plan.writes.len() + result.grant_writes.len(), "target reconciled");
    Ok(())
}

fn describe_grant_write(w: &vmidentity_planner::Write) -> String {
    use vmidentity_planner::Write;
    match w {
        Write::GroupMemberAdd { group_id, .. } => format!("add to group {group_id}"),
        Write::GroupMemberRemove { group_id, .. } => format!("remove from group {group_id}"),
        Write::RoleAssignmentPut {
            scope,
            role_definition_id,
            ..
        } => format!(
            "assign role {} at {}",
            role_definition_id.rsplit('/').next().unwrap_or_default(),
            scope.trim_end_matches('/')
        ),
        Write::RoleAssignmentDelete { id } => format!("delete role assignment {id}"),
        Write::IdentityPatch { target, .. } => format!("patch {target}"),
    }
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
        reason: e.reason(),
        message: e.to_string(),
    })
}

fn all_of(members: &[Member]) -> Vec<&Member> {
    members.iter().collect()
}

async fn azure_failure(
    key: &str,
    members: &[&Member],
    e: &AzureError,
    ctx: &Context,
) -> Result<Outcome, Error> {
    let class = e.class();
    let reason = class.reason().to_string();
    let message = e.to_string();
    let retryable = class.is_retryable();
    warn!(target = key, %reason, error = %message, "ARM request failed");
    for m in members.iter().filter(|m| m.desired.is_ok()) {
        let phase = if retryable {
            Phase::Progressing {
                reason: reason.clone(),
                message: message.clone(),
            }
        } else {
            Phase::Stalled {
                reason: reason.clone(),
                message: message.clone(),
            }
        };
        let first = if retryable {
            !m.obj.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == conditions::RECONCILING && c.reason == reason)
            })
        } else {
            stalled_changed(&m.obj, &phase)
        };
        if first {
            ctx.event(&m.obj, EventType::Warning, &reason, message.clone())
                .await;
        }
        ctx.set_phase(&m.obj, &phase).await?;
    }
    if retryable {
        // Honour Retry-After by requeueing, never by holding a worker.
        let after = match e.retry_after() {
            Some(d) => jitter(d.max(Duration::from_secs(1))),
            None => ctx.backoff(key),
        };
        return Ok(Outcome::Retry(after));
    }
    Ok(match class {
        // May fix itself (rights granted, identity created): look again at resync.
        ErrorClass::Unauthenticated | ErrorClass::Forbidden | ErrorClass::IdentityNotFound => {
            Outcome::Stalled
        }
        _ => Outcome::Idle,
    })
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
