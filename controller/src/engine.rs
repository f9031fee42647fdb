//! The one-shot engine behind `plan`, `apply` and `demo`: group objects by target, read
//! each target once, plan it, send its writes, and report.

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use futures::StreamExt;
use tracing::{debug, info, warn};
use vmidentity_azure::{AzureError, Executor};
use vmidentity_planner::grants::{
    self, GrantPlan, KNOWN_AFTER_APPLY, LiveGrants, LiveRoleAssignment, Resolved,
};
use vmidentity_planner::{
    ApiVersion, Applied, DesiredObject, LiveResource, ObjectRef, PlanError, Refused, TargetPlan,
    Write, group_by_target, plan_target, plan_target_by_seniority,
};

use crate::input::LiveSet;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Azure(#[from] AzureError),
    #[error("no live body for target {0} (give its ARM GET body in --live)")]
    MissingLive(String),
    #[error(
        "groupMemberships need a Microsoft Graph client (configure a Graph endpoint and token)"
    )]
    NoGraph,
    /// The ownership record of a re-planned write could not be recorded before the write:
    /// the write was not sent.
    #[error("cannot record ownership before writing {target}: {message}")]
    Claim { target: String, message: String },
}

impl EngineError {
    /// A stable reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::Plan(p) => p.reason(),
            EngineError::Azure(a) => a.class().reason(),
            EngineError::MissingLive(_) => "MissingLive",
            EngineError::NoGraph => "GraphNotConfigured",
            EngineError::Claim { .. } => "ClaimFailed",
        }
    }
}

/// What happened to one target.
#[derive(Debug)]
pub struct TargetResult {
    /// The target as the objects spell it.
    pub target: String,
    pub objects: Vec<ObjectRef>,
    pub plan: Option<TargetPlan>,
    /// Set when the target was refused or a write failed; nothing after the failure was sent.
    pub error: Option<EngineError>,
    /// The target as ARM answered the write, or as it was read again after a 412 (None when
    /// nothing was written or re-read).
    pub live_after: Option<LiveResource>,
    /// Role assignment and group membership writes (planned offline, or sent by apply).
    pub grant_writes: Vec<Write>,
    /// The final grant plan (records with adopted IDs), when the target has grants.
    pub grants: Option<GrantPlan>,
    /// User-assigned identities ARM refused as nonexistent; the rest was written without
    /// them, and the objects that list them are told.
    pub bad_identities: Vec<vmidentity_planner::ArmId>,
    /// Objects left out because they conflict with objects that held the target first
    /// ([`plan_by_seniority`]); nothing was planned or written for them.
    pub refused: Vec<Refused>,
    /// Role names as the objects wrote them, by role definition GUID (lower-case), for
    /// people: custom roles named in a spec are shown by that name ([`TargetResult::role`]).
    pub role_names: BTreeMap<String, String>,
}

impl TargetResult {
    /// A result for the target of `group` (non-empty): nothing planned, sent or refused yet.
    pub fn for_group(group: &[DesiredObject]) -> TargetResult {
        TargetResult {
            target: group
                .first()
                .map(|o| o.spec.target.to_string())
                .unwrap_or_default(),
            objects: group.iter().map(|o| o.object.clone()).collect(),
            plan: None,
            error: None,
            live_after: None,
            grant_writes: Vec::new(),
            grants: None,
            bad_identities: Vec::new(),
            refused: Vec::new(),
            role_names: BTreeMap::new(),
        }
    }

    pub fn writes(&self) -> usize {
        if self.error.is_some() {
            return 0;
        }
        self.plan.as_ref().map_or(0, |p| p.writes.len()) + self.grant_writes.len()
    }

    /// A role for people: `Reader (acdd72a7-…)` for a built-in role, `Name (guid)` for a
    /// role an object named, else the GUID (from a GUID or a role definition ID).
    pub fn role(&self, guid_or_id: &str) -> String {
        let guid = guid_or_id.rsplit('/').next().unwrap_or(guid_or_id);
        match self.role_names.get(&guid.to_ascii_lowercase()) {
            Some(name) if grants::builtin_role_name(guid).is_none() => format!("{name} ({guid})"),
            _ => grants::role_label(guid),
        }
    }

    /// Every write of the target in the order it is sent: grant removals, the identity
    /// PATCH, grant additions.
    pub fn all_writes(&self) -> Vec<Write> {
        let (removals, additions): (Vec<Write>, Vec<Write>) = self
            .grant_writes
            .iter()
            .cloned()
            .partition(Write::is_removal);
        let mut out = removals;
        if let Some(p) = &self.plan {
            out.extend(p.writes.iter().cloned());
        }
        out.extend(additions);
        out
    }

    /// The new ownership record of an object once this target succeeded.
    pub fn applied(&self, object: &ObjectRef) -> Option<Applied> {
        let plan = self.plan.as_ref()?;
        let mut a = plan.applied.get(object)?.clone();
        if let Some(g) = &self.grants {
            if let Some(r) = g.role_assignments.get(object) {
                a.role_assignments = r.clone();
            }
            if let Some(m) = g.group_memberships.get(object) {
                a.group_memberships = m.clone();
            }
        }
        Some(a)
    }
}

/// The seniority of an object in the one-shot commands: an object that already owns
/// something on its target (in `status.applied` or the `--state` file) held it before one
/// that owns nothing. Objects equally senior that conflict are refused together.
fn one_shot_seniority(o: &DesiredObject) -> bool {
    o.applied.is_empty()
}

/// Plans a group by seniority (see [`plan_target_by_seniority`]): returns the plan of the
/// objects kept, the objects kept, and the refused ones.
pub fn plan_by_seniority(
    group: &[DesiredObject],
    live: &LiveResource,
) -> (
    Result<TargetPlan, PlanError>,
    Vec<DesiredObject>,
    Vec<Refused>,
) {
    let (plan, refused) = plan_target_by_seniority(group, live, one_shot_seniority);
    let kept = group
        .iter()
        .filter(|o| !refused.iter().any(|r| r.object == o.object))
        .cloned()
        .collect();
    (plan, kept, refused)
}

fn has_grants(group: &[DesiredObject]) -> bool {
    group.iter().any(|o| {
        !o.spec.role_assignments.is_empty()
            || !o.spec.group_memberships.is_empty()
            || !o.applied.role_assignments.is_empty()
            || !o.applied.group_memberships.is_empty()
    })
}

/// Principals of the target's identities as `live` shows them.
pub(crate) fn principals_of(live: &LiveResource) -> Resolved {
    let mut r = Resolved::default();
    if live.identity.system_assigned
        && let Some(p) = &live.identity.principal_id
    {
        r.principals.insert("systemassigned".into(), p.clone());
    }
    for (k, u) in &live.identity.user_assigned {
        if let Some(p) = &u.principal_id {
            r.principals.insert(k.clone(), p.clone());
        }
    }
    r
}

/// Fills in the principal (and client) ID of each user-assigned identity `live` shows
/// without one, from the identity itself (`Executor::read_user_assigned`, one GET each),
/// not from a cache and not from a second GET of the target:
///
/// - the entries without a principal are the ones the PATCH just added, and ARM binds an
///   added identity to its current incarnation, which is what its GET shows; a cache by ID
///   could hold the principal of an identity since deleted and re-created under the same
///   name (a new principal), so nothing is kept between passes;
/// - a second GET of the target would break "one GET per target" and costs a Compute read
///   where this costs a Managed Identity read per added identity (adding one is rare);
/// - the right to read an identity comes with the right to assign it (Managed Identity
///   Operator). If the read fails anyway, the principal stays unknown until the next pass
///   (logged, not an error).
///
/// Stale entries (empty principal: the identity behind them was deleted) are left alone.
async fn fill_new_principals(exec: &Executor, live: &mut LiveResource) {
    for u in live.identity.user_assigned.values_mut() {
        if u.principal_id.is_some() || u.stale {
            continue;
        }
        match exec.read_user_assigned(&u.id).await {
            Ok(ids) => {
                debug!(identity = %u.id, principal = ?ids.principal_id, "principal of an identity the PATCH added");
                u.principal_id = ids.principal_id;
                u.client_id = ids.client_id;
            }
            Err(e) => {
                warn!(identity = %u.id, error = %e, "could not read the principal of an identity the PATCH added; it is read at the next pass");
            }
        }
    }
}

/// Offline: principals from the live body, or "(known after apply)" for identities the
/// PATCH creates; roles by GUID, ID or built-in name.
fn resolve_offline(group: &[DesiredObject], live: &LiveResource, plan: &TargetPlan) -> Resolved {
    let mut r = principals_of(live);
    if plan.after.system_assigned && !live.identity.system_assigned {
        r.principals
            .insert("systemassigned".into(), KNOWN_AFTER_APPLY.into());
    }
    for k in plan.after.user_assigned.keys() {
        r.principals
            .entry(k.clone())
            .or_insert_with(|| KNOWN_AFTER_APPLY.into());
    }
    for o in group {
        for ra in &o.spec.role_assignments {
            let text = ra.role.to_string();
            let guid = match &ra.role {
                vmidentity_planner::model::RoleRef::Guid(g) => Some(g.clone()),
                vmidentity_planner::model::RoleRef::DefinitionId(id) => {
                    id.rsplit('/').next().map(str::to_ascii_lowercase)
                }
                vmidentity_planner::model::RoleRef::Name(n) => {
                    grants::builtin_role_guid(n).map(str::to_string)
                }
            };
            if let Some(g) = guid {
                r.roles.insert(
                    (text.to_ascii_lowercase(), ra.scope.to_ascii_lowercase()),
                    g,
                );
            }
        }
    }
    r
}

/// The names the group's objects gave their roles, by the GUID each resolved to.
fn role_names(group: &[DesiredObject], r: &Resolved) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for o in group {
        for ra in &o.spec.role_assignments {
            if let vmidentity_planner::model::RoleRef::Name(n) = &ra.role
                && let Some(g) = r
                    .roles
                    .get(&(n.to_ascii_lowercase(), ra.scope.to_ascii_lowercase()))
            {
                names
                    .entry(g.to_ascii_lowercase())
                    .or_insert_with(|| n.clone());
            }
        }
    }
    names
}

/// Online: resolve every role the group names (cached by the client).
pub(crate) async fn resolve_roles(
    exec: &Executor,
    group: &[DesiredObject],
    r: &mut Resolved,
) -> Result<(), AzureError> {
    for o in group.iter().filter(|o| !o.deleting) {
        for ra in &o.spec.role_assignments {
            let text = ra.role.to_string();
            let key = (text.to_ascii_lowercase(), ra.scope.to_ascii_lowercase());
            if let std::collections::btree_map::Entry::Vacant(slot) = r.roles.entry(key) {
                slot.insert(exec.client().resolve_role(&ra.scope, &text).await?);
            }
        }
    }
    Ok(())
}

pub(crate) fn subscription_of(scope: &str) -> Option<String> {
    let lower = scope.to_ascii_lowercase();
    lower
        .strip_prefix("/subscriptions/")
        .and_then(|rest| rest.split('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Reads what the principals hold: their role assignments in every subscription the group's
/// scopes (and the target) live in, and their group memberships.
async fn read_grants(
    exec: &Executor,
    group: &[DesiredObject],
    target_subscription: &str,
    principals: &BTreeSet<String>,
) -> Result<LiveGrants, EngineError> {
    let mut subs: BTreeSet<String> = BTreeSet::new();
    subs.insert(target_subscription.to_ascii_lowercase());
    let wants_groups = group
        .iter()
        .any(|o| !o.spec.group_memberships.is_empty() || !o.applied.group_memberships.is_empty());
    for o in group {
        subs.extend(
            o.spec
                .role_assignments
                .iter()
                .filter_map(|r| subscription_of(&r.scope)),
        );
        subs.extend(
            o.applied
                .role_assignments
                .iter()
                .filter_map(|r| subscription_of(&r.scope)),
        );
    }
    let mut live = LiveGrants::default();
    for p in principals
        .iter()
        .filter(|p| p.as_str() != KNOWN_AFTER_APPLY)
    {
        for sub in &subs {
            for ra in exec
                .client()
                .list_role_assignments_for_principal(sub, p)
                .await?
            {
                let role_guid = ra.role_guid();
                live.role_assignments.push(LiveRoleAssignment {
                    id: ra.id,
                    scope: ra.scope,
                    role_guid,
                    principal_id: ra.principal_id,
                });
            }
        }
        if wants_groups {
            if !exec.has_graph() {
                return Err(EngineError::NoGraph);
            }
            let groups = exec.member_of(p).await?;
            live.memberships
                .insert(p.clone(), groups.into_iter().collect());
        }
    }
    // The same assignment may be listed from two subscriptions (an inherited scope).
    live.role_assignments
        .sort_by_key(|a| a.id.to_ascii_lowercase());
    live.role_assignments
        .dedup_by(|a, b| a.id.eq_ignore_ascii_case(&b.id));
    Ok(live)
}

/// Sends one grant write through the executor (the one door). For a PUT whose assignment
/// already exists under another name, returns the existing assignment's ID (to adopt it).
async fn send_grant_write(exec: &Executor, w: &Write) -> Result<Option<String>, EngineError> {
    if matches!(
        w,
        Write::GroupMemberAdd { .. } | Write::GroupMemberRemove { .. }
    ) && !exec.has_graph()
    {
        return Err(EngineError::NoGraph);
    }
    Ok(exec.send(w).await?.adopted().map(str::to_string))
}

/// The api-version to read a target with: the newest its objects ask for.
pub fn read_version(objects: &[DesiredObject]) -> ApiVersion {
    objects
        .iter()
        .map(|o| o.spec.api_version.clone())
        .max()
        .unwrap_or_default()
}

/// Plans every target against given live bodies (no I/O).
pub fn plan_offline(objects: Vec<DesiredObject>, lives: &LiveSet) -> Vec<TargetResult> {
    group_by_target(objects)
        .into_iter()
        .map(|(key, mut group)| {
            let target = group[0].spec.target.to_string();
            let objects: Vec<ObjectRef> = group.iter().map(|o| o.object.clone()).collect();
            let mut grant_writes = Vec::new();
            let mut grants_plan = None;
            let mut refused = Vec::new();
            let mut role_names_offline = BTreeMap::new();
            let planned = lives.get(&key).map(|live| {
                let (plan, kept, r) = plan_by_seniority(&group, live);
                refused = r;
                group = kept;
                (live, plan)
            });
            let (plan, error) = match planned {
                None => (None, Some(EngineError::MissingLive(target.clone()))),
                Some((live, planned)) => match planned {
                    Ok(p) => {
                        if has_grants(&group) {
                            // Offline there is nothing to read: existing grants are assumed
                            // to be what the objects recorded.
                            let resolved = resolve_offline(&group, live, &p);
                            role_names_offline = role_names(&group, &resolved);
                            let mut known = LiveGrants::default();
                            for o in &group {
                                for r in &o.applied.role_assignments {
                                    known.role_assignments.push(LiveRoleAssignment {
                                        id: r.id.clone(),
                                        scope: r.scope.clone(),
                                        role_guid: r.role_definition_id.clone(),
                                        principal_id: r.principal_id.clone(),
                                    });
                                }
                                for g in &o.applied.group_memberships {
                                    known
                                        .memberships
                                        .entry(g.principal_id.to_ascii_lowercase())
                                        .or_default()
                                        .insert(g.group_object_id.to_ascii_lowercase());
                                }
                            }
                            let gp = grants::plan_grants(&group, &resolved, &known);
                            grant_writes =
                                gp.removals.iter().chain(&gp.additions).cloned().collect();
                            grants_plan = Some(gp);
                        }
                        (Some(p), None)
                    }
                    Err(e) => (None, Some(e.into())),
                },
            };
            TargetResult {
                target,
                objects,
                plan,
                error,
                live_after: None,
                grant_writes,
                grants: grants_plan,
                bad_identities: Vec::new(),
                refused,
                role_names: role_names_offline,
            }
        })
        .collect()
}

/// Reads, plans and writes every target, `concurrency` targets at a time. Each target gets
/// one GET and at most one PATCH; one target's failure does not stop the others.
pub async fn apply(
    exec: &Executor,
    objects: Vec<DesiredObject>,
    concurrency: usize,
) -> Vec<TargetResult> {
    per_target(objects, concurrency, |group| apply_target(exec, group)).await
}

async fn apply_target(exec: &Executor, group: Vec<DesiredObject>) -> TargetResult {
    let target_id = group[0].spec.target.clone();
    let mut result = TargetResult::for_group(&group);
    let live = match exec.read_target(&target_id, &read_version(&group)).await {
        Ok(l) => l,
        Err(e) => {
            result.error = Some(e.into());
            return result;
        }
    };
    let (plan, group, refused) = plan_by_seniority(&group, &live);
    result.refused = refused;
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            result.error = Some(e.into());
            return result;
        }
    };
    result.plan = Some(plan.clone());
    if let Err(e) = write_target(exec, &group, &live, &plan, &mut result).await {
        result.error = Some(e);
    }
    result
}

/// Plans every target against what Azure says now, writing nothing: one GET per target and,
/// for targets with grants, the reads `apply` makes first (role definitions, the principals'
/// role assignments and group memberships), so the grant writes shown are the ones `apply`
/// would send. Principals that the identity PATCH would create are "(known after apply)".
pub async fn plan_online(
    exec: &Executor,
    objects: Vec<DesiredObject>,
    concurrency: usize,
) -> Vec<TargetResult> {
    per_target(objects, concurrency, |group| {
        plan_target_online(exec, group)
    })
    .await
}

/// Runs `one` for each target's group of objects, `concurrency` targets at a time, and
/// returns the results sorted by target (case-folded).
async fn per_target<F, Fut>(
    objects: Vec<DesiredObject>,
    concurrency: usize,
    one: F,
) -> Vec<TargetResult>
where
    F: FnMut(Vec<DesiredObject>) -> Fut,
    Fut: std::future::Future<Output = TargetResult>,
{
    let groups = group_by_target(objects);
    let mut results: Vec<TargetResult> = futures::stream::iter(groups.into_values())
        .map(one)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.sort_by(|a, b| {
        a.target
            .to_ascii_lowercase()
            .cmp(&b.target.to_ascii_lowercase())
    });
    results
}

async fn plan_target_online(exec: &Executor, group: Vec<DesiredObject>) -> TargetResult {
    match exec
        .read_target(&group[0].spec.target, &read_version(&group))
        .await
    {
        Ok(live) => plan_read_only(exec, group, &live).await,
        Err(e) => {
            let mut result = TargetResult::for_group(&group);
            result.error = Some(e.into());
            result
        }
    }
}

/// Plans one target's group against `live` (read by the caller) as `plan --endpoint` does,
/// writing nothing: role definitions, role assignments and group memberships are read when
/// the group has grants. The controller's observe-only pass uses it, so an observed object's
/// pending writes are the ones `plan -o json` prints.
pub async fn plan_read_only(
    exec: &Executor,
    group: Vec<DesiredObject>,
    live: &LiveResource,
) -> TargetResult {
    let mut result = TargetResult::for_group(&group);
    let read = async {
        // The same seniority rule as `apply`: a newcomer that conflicts is refused.
        let (plan, group, refused) = plan_by_seniority(&group, live);
        let plan = plan?;
        let mut grant_plan = None;
        let mut names = BTreeMap::new();
        if has_grants(&group) {
            let mut resolved = resolve_offline(&group, live, &plan);
            resolved.roles.clear();
            resolve_roles(exec, &group, &mut resolved).await?;
            names = role_names(&group, &resolved);
            let principals = grants::principals_to_read(&group, &resolved);
            let held = read_grants(exec, &group, target_subscription(&plan), &principals).await?;
            grant_plan = Some(grants::plan_grants(&group, &resolved, &held));
        }
        Ok::<_, EngineError>((plan, grant_plan, refused, names))
    };
    match read.await {
        Ok((plan, grant_plan, refused, names)) => {
            result.refused = refused;
            result.role_names = names;
            result.plan = Some(plan);
            if let Some(gp) = grant_plan {
                result.grant_writes = gp.removals.iter().chain(&gp.additions).cloned().collect();
                result.grants = Some(gp);
            }
        }
        Err(e) => result.error = Some(e),
    }
    result
}

/// How often a target's identity write is sent when ARM keeps answering 412 (another
/// writer changes the target between our GET and our PATCH): each 412 is followed by a GET
/// and a new plan; after the last one the error surfaces (and the reconcile is retried).
pub const MAX_CONDITIONAL_WRITE_ATTEMPTS: u32 = 3;

/// Sends a target's writes in order: grant removals (before the identity that holds them
/// goes), the identity PATCH, then grant additions (once the principals exist). On a 412
/// (the target changed since `live` was read) the target is read and planned again, at most
/// [`MAX_CONDITIONAL_WRITE_ATTEMPTS`] sends in all; `result.plan` is the plan finally sent.
pub async fn write_target(
    exec: &Executor,
    group: &[DesiredObject],
    live: &LiveResource,
    plan: &TargetPlan,
    result: &mut TargetResult,
) -> Result<(), EngineError> {
    write_target_claiming(exec, group, live, plan, result, &NoClaim).await
}

/// Records what objects own before a write is sent (see [`write_target_claiming`]).
pub trait Claim: Sync {
    /// Records `plan.claims(group)`; an error stops the write.
    fn claim<'a>(
        &'a self,
        plan: &'a TargetPlan,
        group: &'a [DesiredObject],
    ) -> futures::future::BoxFuture<'a, Result<(), EngineError>>;
}

/// No record to keep (`apply`, `demo`: the state is written after the pass).
pub struct NoClaim;

impl Claim for NoClaim {
    fn claim<'a>(
        &'a self,
        _: &'a TargetPlan,
        _: &'a [DesiredObject],
    ) -> futures::future::BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }
}

/// [`write_target`], with `claim` called before each identity write whose plan was made
/// again after the first (after a 412, or without an identity ARM said does not exist) when
/// that plan's ownership claims ([`TargetPlan::claims`]) differ from the ones already made:
/// the caller records them (the operator widens `status.applied`) before the PATCH is sent,
/// so a re-plan that adds an identity the first plan did not never writes it unclaimed. The
/// caller claims `plan` itself before calling. An error from `claim` stops before the write.
pub async fn write_target_claiming(
    exec: &Executor,
    group: &[DesiredObject],
    live: &LiveResource,
    plan: &TargetPlan,
    result: &mut TargetResult,
    claim: &dyn Claim,
) -> Result<(), EngineError> {
    let grants_too = has_grants(group);
    let mut roles = Resolved::default();
    let mut before = None;
    if grants_too {
        let mut resolved = principals_of(live);
        resolve_roles(exec, group, &mut resolved).await?;
        roles.roles = resolved.roles.clone();
        result.role_names = role_names(group, &resolved);
        let principals = grants::principals_to_read(group, &resolved);
        let held = read_grants(exec, group, target_subscription(plan), &principals).await?;
        let gp = grants::plan_grants(group, &resolved, &held);
        for w in &gp.removals {
            send_grant_write(exec, w).await?;
            result.grant_writes.push(w.clone());
        }
        before = Some((principals, held));
    }
    // The identity write. ARM refuses a whole PATCH that names a user-assigned identity that
    // does not exist: then the rest goes through without it, and its objects are told.
    // The PATCH is conditional on the etag the target was read at (api-versions that have
    // one): if another writer changed the target in between, ARM answers 412 and applies
    // nothing; the target is read again and planned again, so the other writer's change is
    // kept (what it did to identities our objects do not manage is never undone).
    let mut group: Vec<DesiredObject> = group.to_vec();
    let mut plan = plan.clone();
    let mut live = live.clone();
    let mut refused = 0u32;
    let mut reread = false;
    let mut claimed = plan.claims(&group);
    let live_after = loop {
        if plan.is_converged() {
            break live.clone();
        }
        let claims = plan.claims(&group);
        if claims != claimed {
            info!(target = %plan.target, "the new plan changes what the objects own: recording it before the write");
            claim.claim(&plan, &group).await?;
            claimed = claims;
        }
        match exec.execute(&plan).await {
            Ok(outcome) => {
                break match outcome.live {
                    Some(l) => l,
                    None => exec.read_target(&plan.target, &plan.api_version).await?,
                };
            }
            Err(e) if e.class() == vmidentity_azure::ErrorClass::IdentityNotFound => {
                let message = e.message().to_ascii_lowercase();
                let bad: Vec<vmidentity_planner::ArmId> = plan
                    .changes
                    .iter()
                    .filter_map(|c| match c {
                        vmidentity_planner::Change::AddUserAssigned(id) => Some(id.clone()),
                        _ => None,
                    })
                    .filter(|id| {
                        message.contains(id.key())
                            || message.contains(&format!("/{}'", id.name().to_ascii_lowercase()))
                    })
                    .collect();
                if bad.is_empty() || result.bad_identities.len() > 16 {
                    return Err(e.into());
                }
                for o in group.iter_mut() {
                    o.spec.user_assigned.retain(|u| !bad.contains(u));
                    o.spec.role_assignments.retain(|r| !matches!(&r.identity, vmidentity_planner::model::IdentityRef::UserAssigned(u) if bad.contains(u)));
                    o.spec.group_memberships.retain(|g| !matches!(&g.identity, vmidentity_planner::model::IdentityRef::UserAssigned(u) if bad.contains(u)));
                }
                result.bad_identities.extend(bad);
                plan = plan_target(&group, &live)?;
            }
            Err(e)
                if e.class() == vmidentity_azure::ErrorClass::PreconditionFailed
                    && refused + 1 < MAX_CONDITIONAL_WRITE_ATTEMPTS =>
            {
                refused += 1;
                info!(target = %plan.target, refused, "the target changed since it was read (412): reading it again");
                live = exec
                    .read_target(&plan.target, &read_version(&group))
                    .await?;
                reread = true;
                plan = plan_target(&group, &live)?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // ARM answers an identity PATCH before it has bound the user-assigned identities the
    // PATCH adds: each new entry is `{}` there (recorded in the Azure CLI's VM / VMSS
    // identity tests). Their principals are read from Microsoft.ManagedIdentity now, so the
    // grants of a new identity are made, and the status shows its principal, in this pass.
    let mut live_after = live_after;
    if !plan.is_converged()
        && plan.api_version.wire_format() == vmidentity_planner::WireFormat::UserAssignedDictionary
    {
        fill_new_principals(exec, &mut live_after).await;
    }
    let group = group.as_slice();
    let plan = &plan;
    result.plan = Some(plan.clone());
    result.live_after = (!plan.is_converged() || reread).then(|| live_after.clone());
    if let Some((read_before, held_before)) = before {
        let mut resolved = principals_of(&live_after);
        resolved.roles = roles.roles;
        let principals = grants::principals_to_read(group, &resolved);
        // New principals (an identity just attached or enabled) are read afresh.
        let held = if principals == read_before {
            // What was read, less what the removals above took away (so nothing is removed
            // twice).
            let mut h = held_before;
            for w in &result.grant_writes {
                match w {
                    Write::RoleAssignmentDelete { id } => h
                        .role_assignments
                        .retain(|r| !r.id.eq_ignore_ascii_case(id)),
                    Write::GroupMemberRemove {
                        group_id,
                        principal_id,
                    } => {
                        if let Some(groups) =
                            h.memberships.get_mut(&principal_id.to_ascii_lowercase())
                        {
                            groups.remove(&group_id.to_ascii_lowercase());
                        }
                    }
                    _ => {}
                }
            }
            h
        } else {
            read_grants(exec, group, target_subscription(plan), &principals).await?
        };
        let mut gp = grants::plan_grants(group, &resolved, &held);
        for w in gp
            .removals
            .clone()
            .iter()
            .chain(gp.additions.clone().iter())
        {
            let existing = send_grant_write(exec, w).await?;
            result.grant_writes.push(w.clone());
            if let (Some(id), Some(planned)) = (existing, w.role_assignment_id()) {
                // 409 RoleAssignmentExists: someone else made the assignment under another
                // name since the read. An adopting object records it by that name; any other
                // object leaves it alone (not recorded, so never removed by it: it is not
                // vmidentity's), as the planner does for one found when reading.
                held_elsewhere(group, &mut gp, &planned, &id);
            }
        }
        result.grants = Some(gp);
    }
    Ok(())
}

/// A role assignment PUT (planned as `planned`) found the assignment under another name,
/// `existing`: adopting objects' records take that name; other objects' records drop it and
/// it is reported as held ([`grants::GrantPlan::held`]).
fn held_elsewhere(
    group: &[DesiredObject],
    gp: &mut grants::GrantPlan,
    planned: &str,
    existing: &str,
) {
    for o in group {
        let Some(recs) = gp.role_assignments.get_mut(&o.object) else {
            continue;
        };
        let (hit, mut keep): (Vec<_>, Vec<_>) = std::mem::take(recs)
            .into_iter()
            .partition(|r| r.id.eq_ignore_ascii_case(planned));
        for mut r in hit {
            r.id = existing.to_string();
            if o.adopt {
                keep.push(r);
            } else {
                gp.held
                    .entry(o.object.clone())
                    .or_default()
                    .role_assignments
                    .push(r);
            }
        }
        keep.sort();
        *recs = keep;
    }
}

fn target_subscription(plan: &TargetPlan) -> &str {
    plan.target.subscription()
}

/// Ownership records kept between one-shot runs (`apply --state FILE`), keyed `ns/name`.
pub type State = BTreeMap<String, Applied>;

/// Overrides the objects' `status.applied` with the state file's records.
pub fn with_state(objects: Vec<DesiredObject>, state: &State) -> Vec<DesiredObject> {
    objects
        .into_iter()
        .map(|o| match state.get(&o.object.to_string()) {
            Some(a) => o.with_applied(a.clone()),
            None => o,
        })
        .collect()
}

/// The objects with the new ownership records of the targets that succeeded (the next pass's
/// input, as the controller would read them back from `status.applied`).
pub fn carry_ownership(objects: &[DesiredObject], results: &[TargetResult]) -> Vec<DesiredObject> {
    objects
        .iter()
        .map(|o| {
            let rec = results
                .iter()
                .filter(|r| r.error.is_none())
                .find_map(|r| r.applied(&o.object));
            match rec {
                Some(a) => o.clone().with_applied(a),
                None => o.clone(),
            }
        })
        .collect()
}

/// The state after a run: successful targets' new records replace the old ones, exactly as
/// the controller writes `status.applied` (identities, role assignments with the IDs ARM
/// answered, group memberships); objects being deleted are dropped once their target
/// succeeded. The file format is `status.applied` per object, so older files (identities
/// only) still load.
pub fn next_state(mut state: State, objects: &[DesiredObject], results: &[TargetResult]) -> State {
    for r in results {
        let Some(plan) = &r.plan else { continue };
        if r.error.is_some() {
            continue;
        }
        for obj in plan.applied.keys() {
            let applied = r.applied(obj).unwrap_or_default();
            let deleting = objects.iter().any(|o| o.object == *obj && o.deleting);
            if deleting || applied.is_empty() {
                state.remove(&obj.to_string());
            } else {
                state.insert(obj.to_string(), applied);
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    // Test-only: unwrap/expect here are assertions.
    use super::*;
    use vmidentity_planner::grants::AppliedRoleAssignment;
    use vmidentity_planner::{RawSpec, grants::GrantPlan};

    fn object(name: &str) -> DesiredObject {
        let raw = RawSpec {
            target:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
                    .into(),
            ..Default::default()
        };
        DesiredObject::new(ObjectRef::new("ns", name), raw.validate().unwrap())
    }

    /// A PUT answered 409 RoleAssignmentExists: the adopting object records the existing
    /// assignment's name; the other object does not record it and is told it is held.
    #[test]
    fn an_assignment_found_under_another_name_by_a_put_is_recorded_only_by_an_adopter() {
        let planned = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/ours";
        let existing = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/theirs";
        let rec = AppliedRoleAssignment {
            id: planned.to_uppercase(),
            scope: "/subscriptions/s/resourceGroups/rg".into(),
            role_definition_id: "acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
            principal_id: "p".into(),
            identity: "SystemAssigned".into(),
        };
        let other = AppliedRoleAssignment {
            id: format!("{planned}-other"),
            ..rec.clone()
        };
        let adopter = object("a").adopting(true);
        let plain = object("b");
        let mut gp = GrantPlan::default();
        for o in [&adopter, &plain] {
            gp.role_assignments
                .insert(o.object.clone(), vec![rec.clone(), other.clone()]);
        }
        held_elsewhere(
            &[adopter.clone(), plain.clone()],
            &mut gp,
            planned,
            existing,
        );
        let ids = |o: &DesiredObject| -> Vec<String> {
            gp.role_assignments[&o.object]
                .iter()
                .map(|r| r.id.clone())
                .collect()
        };
        assert_eq!(ids(&adopter), vec![other.id.clone(), existing.to_string()]);
        assert_eq!(ids(&plain), vec![other.id.clone()]);
        assert!(!gp.held.contains_key(&adopter.object));
        assert_eq!(gp.held[&plain.object].role_assignments[0].id, existing);
    }
}
