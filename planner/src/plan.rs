//! `plan(desired, live) -> Plan`: the smallest set of writes that makes a target right.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::id::ArmId;
use crate::live::{IdentityType, LiveResource};
use crate::model::{
    ApiVersion, Applied, DeletionPolicy, DesiredObject, Mode, ObjectRef, WireFormat,
};

/// Microsoft.Authorization api-version of role definitions and role assignments (reads and
/// writes): the only definition; the Azure crate uses it.
pub const AUTHORIZATION_API_VERSION: &str = "2022-04-01";
/// Microsoft Graph version every Graph path is under (`/v1.0/...`).
pub const GRAPH_VERSION: &str = "v1.0";
/// The public cloud's Microsoft Graph endpoint: where `@odata.id`s point unless another
/// endpoint is configured.
pub const PUBLIC_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";

/// ARM refuses a request that assigns more user-assigned identities than this.
pub const MAX_IDENTITIES_PER_REQUEST: usize = 150;

/// The identity state of a target, as the planner reasons about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityState {
    pub system_assigned: bool,
    /// Case-folded ID -> ID as it will be (or is) spelled on the target.
    pub user_assigned: BTreeMap<String, ArmId>,
}

impl IdentityState {
    pub fn from_live(live: &LiveResource) -> IdentityState {
        IdentityState {
            system_assigned: live.identity.system_assigned,
            user_assigned: live
                .identity
                .user_assigned
                .iter()
                .map(|(k, u)| (k.clone(), u.id.clone()))
                .collect(),
        }
    }

    pub fn identity_type(&self) -> IdentityType {
        IdentityType::from_parts(self.system_assigned, !self.user_assigned.is_empty())
    }

    /// Same identities (IDs compared case-insensitively).
    pub fn same_as(&self, other: &IdentityState) -> bool {
        self.system_assigned == other.system_assigned
            && self.user_assigned.keys().eq(other.user_assigned.keys())
    }
}

/// One change the plan makes, for humans and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    EnableSystemAssigned,
    DisableSystemAssigned,
    AddUserAssigned(ArmId),
    RemoveUserAssigned(ArmId),
    /// The entry is stale (its identity was deleted, maybe recreated): removed and re-added.
    RepairUserAssigned(ArmId),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::EnableSystemAssigned => f.write_str("enable system-assigned identity"),
            Change::DisableSystemAssigned => f.write_str("disable system-assigned identity"),
            Change::AddUserAssigned(id) => write!(f, "add user-assigned identity {id}"),
            Change::RemoveUserAssigned(id) => write!(f, "remove user-assigned identity {id}"),
            Change::RepairUserAssigned(id) => {
                write!(f, "re-attach stale user-assigned identity {id}")
            }
        }
    }
}

/// One write vmidentity sends, typed: what the planner decided, not yet HTTP. [`Write::request`]
/// renders it to the request that goes on the wire, the one rendering both
/// `vmidentity plan -o json` and the Azure executor use.
///
/// Serialises (with the public cloud's Graph endpoint; [`Request`]'s `Serialize` for another)
/// to the `vmidentity plan -o json` element:
/// `{"method":"PATCH","id":"<resource id>","apiVersion":"<version>","body":{...}}`, plus
/// `"ifMatch":"<etag>"` when the write is conditional.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// `PATCH {target}?api-version={api_version}` with the identity block.
    IdentityPatch {
        /// The target as ARM spells it (the live body's `id`).
        target: ArmId,
        api_version: ApiVersion,
        /// The exact PATCH body (`{"identity":{...}}`, see `identity_patch`).
        body: Value,
        /// Optimistic concurrency: the entity tag of the target the write was planned
        /// against, sent as `If-Match` so ARM refuses it (412) if another writer changed the
        /// target in between. Set when the live body carried an `etag` (Compute 2023-09-01
        /// and later); older api-versions have none, and the write is unconditional. When a
        /// plan has two PATCHes (a stale entry repaired), the executor sends the second with
        /// the tag ARM answered the first with.
        if_match: Option<String>,
    },
    /// `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    RoleAssignmentPut {
        scope: String,
        /// The deterministic name ([`crate::grants::assignment_name`]), or
        /// [`KNOWN_AFTER_APPLY`](crate::grants::KNOWN_AFTER_APPLY) offline.
        name: String,
        /// The full role definition ID as sent ([`crate::grants::role_definition_id`]).
        role_definition_id: String,
        principal_id: String,
        /// `ServicePrincipal` for vmidentity's own writes: ARM then does not look the
        /// principal up (a just-created identity may not have replicated yet). None: omitted.
        principal_type: Option<String>,
    },
    /// `DELETE {id}` of a role assignment by its full ID.
    RoleAssignmentDelete { id: String },
    /// Graph `POST /v1.0/groups/{group_id}/members/$ref`.
    GroupMemberAdd {
        group_id: String,
        principal_id: String,
    },
    /// Graph `DELETE /v1.0/groups/{group_id}/members/{principal_id}/$ref`.
    GroupMemberRemove {
        group_id: String,
        principal_id: String,
    },
}

/// The API a [`Request`] goes to: which endpoint (and token audience) the sender uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Azure Resource Manager (Compute, Microsoft.Authorization): `api-version` query.
    Arm,
    /// Microsoft Graph: the version is the path's first segment (`/v1.0/...`).
    Graph,
}

/// A write rendered to HTTP, endpoint-relative: the sender prefixes its endpoint for
/// `service` and adds `?api-version=` when there is one. Nothing else is added to what goes
/// on the wire but the bearer token and content negotiation headers.
///
/// Serialises to the `vmidentity plan -o json` element:
/// `{"method","id","apiVersion","body"[,"ifMatch"]}`. For ARM `id` is the path and
/// `apiVersion` the query's api-version; for Graph (no api-version) `apiVersion` is the
/// path's version segment and `id` the rest (`"/groups/{g}/members/$ref"`, `"v1.0"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub service: Service,
    /// `PATCH`, `PUT`, `POST` or `DELETE`.
    pub method: &'static str,
    /// Starts with `/`: an ARM resource ID (as spelled), or `/v1.0/...` for Graph.
    pub path: String,
    pub api_version: Option<String>,
    /// Request headers beyond authorization and content type: `If-Match` when conditional.
    pub headers: Vec<(String, String)>,
    /// The JSON body (None: no body).
    pub body: Option<Value>,
}

/// The `If-Match` request header.
pub const IF_MATCH: &str = "If-Match";

impl Request {
    /// A header's value (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets (Some) or removes (None) a header.
    pub fn set_header(&mut self, name: &str, value: Option<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            self.headers.push((name.to_string(), v));
        }
    }

    /// The `apiVersion` of the plan element: the api-version, or Graph's path version.
    pub fn version(&self) -> &str {
        match &self.api_version {
            Some(v) => v,
            None => self.split_version().0,
        }
    }

    /// The `id` of the plan element: the path (ARM), or the path after its version (Graph).
    pub fn id(&self) -> &str {
        match &self.api_version {
            Some(_) => &self.path,
            None => self.split_version().1,
        }
    }

    /// `/v1.0/groups/...` -> (`v1.0`, `/groups/...`).
    fn split_version(&self) -> (&str, &str) {
        let rest = self.path.strip_prefix('/').unwrap_or(&self.path);
        match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    }
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let if_match = self.header(IF_MATCH);
        let mut m = s.serialize_map(Some(if if_match.is_some() { 5 } else { 4 }))?;
        m.serialize_entry("method", self.method)?;
        m.serialize_entry("id", self.id())?;
        m.serialize_entry("apiVersion", self.version())?;
        m.serialize_entry("body", self.body.as_ref().unwrap_or(&Value::Null))?;
        if let Some(t) = if_match {
            m.serialize_entry("ifMatch", t)?;
        }
        m.end()
    }
}

impl Write {
    /// Renders the write to its HTTP request: the one function that decides what goes on the
    /// wire. `graph_endpoint` (e.g. `https://graph.microsoft.com`, or a simulator's URL) is
    /// where Graph directory objects live: a member is added by its `@odata.id`,
    /// `{graph_endpoint}/v1.0/directoryObjects/{principal}`.
    pub fn request(&self, graph_endpoint: &str) -> Request {
        let arm = |method, path: String, api_version: &str, body| Request {
            service: Service::Arm,
            method,
            path,
            api_version: Some(api_version.to_string()),
            headers: Vec::new(),
            body,
        };
        let graph = |method, path: String, body| Request {
            service: Service::Graph,
            method,
            path: format!("/{GRAPH_VERSION}{path}"),
            api_version: None,
            headers: Vec::new(),
            body,
        };
        match self {
            Write::IdentityPatch {
                target,
                api_version,
                body,
                if_match,
            } => {
                let mut r = arm(
                    "PATCH",
                    target.as_str().to_string(),
                    api_version.as_str(),
                    Some(body.clone()),
                );
                r.set_header(IF_MATCH, if_match.clone());
                r
            }
            Write::RoleAssignmentPut {
                scope,
                name,
                role_definition_id,
                principal_id,
                principal_type,
            } => {
                let mut props = Map::new();
                props.insert("roleDefinitionId".into(), json!(role_definition_id));
                props.insert("principalId".into(), json!(principal_id));
                if let Some(t) = principal_type {
                    props.insert("principalType".into(), json!(t));
                }
                arm(
                    "PUT",
                    role_assignment_id(scope, name),
                    AUTHORIZATION_API_VERSION,
                    Some(json!({ "properties": Value::Object(props) })),
                )
            }
            Write::RoleAssignmentDelete { id } => {
                arm("DELETE", id.clone(), AUTHORIZATION_API_VERSION, None)
            }
            Write::GroupMemberAdd {
                group_id,
                principal_id,
            } => graph(
                "POST",
                format!("/groups/{group_id}/members/$ref"),
                Some(json!({
                    "@odata.id": format!(
                        "{}/{GRAPH_VERSION}/directoryObjects/{principal_id}",
                        graph_endpoint.trim_end_matches('/')
                    )
                })),
            ),
            Write::GroupMemberRemove {
                group_id,
                principal_id,
            } => graph(
                "DELETE",
                format!("/groups/{group_id}/members/{principal_id}/$ref"),
                None,
            ),
        }
    }

    /// The HTTP method the write is sent with.
    pub fn method(&self) -> &'static str {
        match self {
            Write::IdentityPatch { .. } => "PATCH",
            Write::RoleAssignmentPut { .. } => "PUT",
            Write::RoleAssignmentDelete { .. } | Write::GroupMemberRemove { .. } => "DELETE",
            Write::GroupMemberAdd { .. } => "POST",
        }
    }

    /// A grant removal (sent before the identity PATCH).
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Write::RoleAssignmentDelete { .. } | Write::GroupMemberRemove { .. }
        )
    }

    /// The full ID of the role assignment a PUT or DELETE is about.
    pub fn role_assignment_id(&self) -> Option<String> {
        match self {
            Write::RoleAssignmentPut { scope, name, .. } => Some(role_assignment_id(scope, name)),
            Write::RoleAssignmentDelete { id } => Some(id.clone()),
            _ => None,
        }
    }
}

impl Serialize for Write {
    /// The `plan -o json` element, with Graph's public-cloud endpoint in `@odata.id`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.request(PUBLIC_GRAPH_ENDPOINT).serialize(s)
    }
}

/// Everything the planner decided for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPlan {
    /// The target as ARM spells it (the live body's `id`).
    pub target: ArmId,
    pub api_version: ApiVersion,
    /// The objects planned together, sorted.
    pub objects: Vec<ObjectRef>,
    pub before: IdentityState,
    pub after: IdentityState,
    pub changes: Vec<Change>,
    /// At most one identity PATCH for the target (two when a stale entry is repaired).
    pub writes: Vec<Write>,
    /// The new ownership record of each object once the writes succeeded. Objects being
    /// deleted get an empty record: their finalizer may go once the writes succeeded.
    pub applied: BTreeMap<ObjectRef, Applied>,
}

impl TargetPlan {
    /// True when the target is already as desired.
    pub fn is_converged(&self) -> bool {
        self.writes.is_empty()
    }

    /// The identity PATCH body, if any.
    pub fn patch_body(&self) -> Option<&Value> {
        self.writes.iter().find_map(|w| match w {
            Write::IdentityPatch { body, .. } => Some(body),
            _ => None,
        })
    }

    /// What each object adopts in this plan (see [`DesiredObject::adopt`]): the user-assigned
    /// identities its new record holds that the target carried before the plan and that
    /// no object on the target recorded (so never what another object owns), in the target's
    /// spelling. Objects that adopt nothing are left out.
    pub fn adopted(&self, objects: &[DesiredObject]) -> BTreeMap<ObjectRef, Vec<ArmId>> {
        let owned: BTreeSet<String> = objects.iter().flat_map(|o| o.applied.keys()).collect();
        objects
            .iter()
            .filter(|o| o.adopt && !o.deleting)
            .filter_map(|o| {
                let record = self.applied.get(&o.object)?;
                let ids: Vec<ArmId> = record
                    .keys()
                    .iter()
                    .filter(|k| !owned.contains(*k))
                    .filter_map(|k| self.before.user_assigned.get(k).cloned())
                    .collect();
                (!ids.is_empty()).then(|| (o.object.clone(), ids))
            })
            .collect()
    }

    /// What each object must record *before* the writes are sent: the union of the old and
    /// the new record. Written first, it keeps ownership if the process dies between the
    /// PATCH and the final status update, so nothing we added is ever orphaned.
    pub fn claims(&self, objects: &[DesiredObject]) -> BTreeMap<ObjectRef, Applied> {
        objects
            .iter()
            .map(|o| {
                let new = self.applied.get(&o.object).cloned().unwrap_or_default();
                let mut ids = o.applied.user_assigned_identities.clone();
                for id in &new.user_assigned_identities {
                    if !ids.iter().any(|x| x.eq_ignore_ascii_case(id)) {
                        ids.push(id.clone());
                    }
                }
                let claim = Applied {
                    system_assigned: new.system_assigned.or(o.applied.system_assigned),
                    user_assigned_identities: ids,
                    role_assignments: o.applied.role_assignments.clone(),
                    group_memberships: o.applied.group_memberships.clone(),
                };
                (o.object.clone(), claim)
            })
            .collect()
    }
}

/// Why a target cannot be planned. No write is sent to such a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("conflict on {target}: {reason} (objects: {})", join(objects))]
    Conflict {
        target: String,
        objects: Vec<ObjectRef>,
        reason: String,
    },
    #[error("{object}: spec.target {target} does not match the live resource {live}")]
    TargetMismatch {
        object: ObjectRef,
        target: String,
        live: String,
    },
    #[error(
        "{target}: the PATCH would assign {count} user-assigned identities in one request; ARM allows at most {MAX_IDENTITIES_PER_REQUEST}"
    )]
    TooManyIdentities { target: String, count: usize },
    #[error("no objects to plan")]
    NoObjects,
}

impl PlanError {
    /// A short, stable reason for conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Conflict { .. } => "Conflict",
            PlanError::TargetMismatch { .. } => "TargetMismatch",
            PlanError::TooManyIdentities { .. } => "TooManyIdentities",
            PlanError::NoObjects => "NoObjects",
        }
    }
}

fn join(objects: &[ObjectRef]) -> String {
    objects
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn conflict(target: &ArmId, objects: Vec<ObjectRef>, reason: impl Into<String>) -> PlanError {
    PlanError::Conflict {
        target: target.to_string(),
        objects,
        reason: reason.into(),
    }
}

/// An object left out of its target's plan: it conflicts with objects that held the target
/// before it, and they keep it (see [`plan_target_by_seniority`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub object: ObjectRef,
    /// The senior objects it conflicts with; they keep the target.
    pub kept_by: Vec<ObjectRef>,
    /// What the conflict is about (the reason of [`PlanError::Conflict`]).
    pub reason: String,
    /// The target as ARM spells it.
    pub target: String,
}

impl Refused {
    /// The stable reason of conditions, Events and metrics: the same as a whole-target
    /// conflict's.
    pub const REASON: &'static str = "Conflict";
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conflict on {}: {}; {} held the target first and keeps it, so {} is refused (nothing is written for it) until the conflict is resolved",
            self.target,
            self.reason,
            join(&self.kept_by),
            self.object
        )
    }
}

/// Plans one target when its objects may conflict, by a rule users can predict: the object
/// that held the target first keeps it. `seniority` ranks the objects (smaller: held the
/// target earlier); on a conflict, the youngest of the objects involved are refused (left out
/// of the plan, each told which senior objects keep the target) and the rest are planned
/// again, until nothing conflicts. Objects that are equally young are refused together; when
/// every object involved is equally young there is no senior to keep the target and the whole
/// target is refused (the `Err`, with no `Refused` entries), as [`plan_target`] does.
///
/// A refused object is left out entirely: what it recorded becomes unowned, and unowned
/// identities are always kept, so a refusal removes nothing.
pub fn plan_target_by_seniority<K: Ord>(
    objects: &[DesiredObject],
    live: &LiveResource,
    seniority: impl Fn(&DesiredObject) -> K,
) -> (Result<TargetPlan, PlanError>, Vec<Refused>) {
    let mut kept: Vec<DesiredObject> = objects.to_vec();
    let mut refused = Vec::new();
    loop {
        let (target, involved, reason) = match plan_target(&kept, live) {
            Err(PlanError::Conflict {
                target,
                objects,
                reason,
            }) => (target, objects, reason),
            other => return (other, refused),
        };
        let ranked: Vec<(&DesiredObject, K)> = kept
            .iter()
            .filter(|o| involved.contains(&o.object))
            .map(|o| (o, seniority(o)))
            .collect();
        let youngest = ranked.iter().map(|(_, k)| k).max();
        let (young, senior): (Vec<_>, Vec<_>) =
            ranked.iter().partition(|(_, k)| Some(k) == youngest);
        if senior.is_empty() {
            // Nobody keeps the target: every object gets the whole-target conflict, and none
            // is told that another "keeps" it.
            return (
                Err(PlanError::Conflict {
                    target,
                    objects: involved,
                    reason,
                }),
                Vec::new(),
            );
        }
        let kept_by: Vec<ObjectRef> = senior.iter().map(|(o, _)| o.object.clone()).collect();
        let young: Vec<ObjectRef> = young.iter().map(|(o, _)| o.object.clone()).collect();
        for object in &young {
            refused.push(Refused {
                object: object.clone(),
                kept_by: kept_by.clone(),
                reason: reason.clone(),
                target: target.clone(),
            });
        }
        kept.retain(|o| !young.contains(&o.object));
    }
}

/// Groups objects by their target (case-folded), each group sorted by object.
pub fn group_by_target(objects: Vec<DesiredObject>) -> BTreeMap<String, Vec<DesiredObject>> {
    let mut groups: BTreeMap<String, Vec<DesiredObject>> = BTreeMap::new();
    for o in objects {
        groups
            .entry(o.spec.target.key().to_string())
            .or_default()
            .push(o);
    }
    for g in groups.values_mut() {
        g.sort_by(|a, b| a.object.cmp(&b.object));
    }
    groups
}

/// Plans one target: all objects that name it, against its live state.
pub fn plan_target(
    objects: &[DesiredObject],
    live: &LiveResource,
) -> Result<TargetPlan, PlanError> {
    if objects.is_empty() {
        return Err(PlanError::NoObjects);
    }
    let mut objects: Vec<&DesiredObject> = objects.iter().collect();
    objects.sort_by(|a, b| a.object.cmp(&b.object));
    let target = &live.id;
    for o in &objects {
        if o.spec.target != *target {
            return Err(PlanError::TargetMismatch {
                object: o.object.clone(),
                target: o.spec.target.to_string(),
                live: target.to_string(),
            });
        }
    }
    let refs = |it: &mut dyn Iterator<Item = &&DesiredObject>| -> Vec<ObjectRef> {
        it.map(|o| o.object.clone()).collect()
    };

    // One api-version for the target: the newest asked for, within one wire format.
    let formats: BTreeSet<_> = objects
        .iter()
        .map(|o| o.spec.api_version.wire_format() == WireFormat::IdentityIdsArray)
        .collect();
    if formats.len() > 1 {
        return Err(conflict(
            target,
            refs(&mut objects.iter()),
            "objects ask for api-versions with different identity formats (2017-12-01 identityIds array vs 2018-06-01+ dictionary)",
        ));
    }
    let api_version = objects
        .iter()
        .map(|o| o.spec.api_version.clone())
        .max()
        .unwrap_or_default();

    let active: Vec<&DesiredObject> = objects.iter().copied().filter(|o| !o.deleting).collect();

    // System-assigned: only ever changed on an explicit word; true and false together conflict.
    let says = |v: bool| -> Vec<ObjectRef> {
        active
            .iter()
            .filter(|o| o.spec.system_assigned == Some(v))
            .map(|o| o.object.clone())
            .collect()
    };
    let (says_true, says_false) = (says(true), says(false));
    if !says_true.is_empty() && !says_false.is_empty() {
        let mut both = says_true.clone();
        both.extend(says_false);
        both.sort();
        return Err(conflict(
            target,
            both,
            "systemAssigned is true in one object and false in another",
        ));
    }
    let before = IdentityState::from_live(live);
    let system_after = if !says_true.is_empty() {
        true
    } else if !says_false.is_empty() {
        false
    } else {
        before.system_assigned
    };

    // Exact owns the whole user-assigned set: it cannot share the target.
    let exact: Vec<&DesiredObject> = active
        .iter()
        .copied()
        .filter(|o| o.spec.mode == Mode::Exact)
        .collect();
    if !exact.is_empty() && active.len() > 1 {
        return Err(conflict(
            target,
            refs(&mut active.iter()),
            "an object with mode Exact shares its target with another object",
        ));
    }

    // wanted: listed by an active object (first spelling, by object order, wins).
    let mut wanted: BTreeMap<String, ArmId> = BTreeMap::new();
    for o in &active {
        for id in &o.spec.user_assigned {
            wanted
                .entry(id.key().to_string())
                .or_insert_with(|| id.clone());
        }
    }
    // managed: recorded by any object; released: recorded but no longer asked for.
    let mut managed: BTreeSet<String> = BTreeSet::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    for o in &objects {
        let recorded = o.applied.keys();
        managed.extend(recorded.iter().cloned());
        let releases: Vec<String> = if o.deleting {
            match o.spec.deletion_policy {
                DeletionPolicy::Detach => recorded.into_iter().collect(),
                DeletionPolicy::Retain => Vec::new(),
            }
        } else {
            let own: BTreeSet<&str> = o.spec.user_assigned.iter().map(ArmId::key).collect();
            recorded
                .into_iter()
                .filter(|k| !own.contains(k.as_str()))
                .collect()
        };
        released.extend(releases);
    }

    let user_after: BTreeMap<String, ArmId> = if let Some(e) = exact.first() {
        e.spec
            .user_assigned
            .iter()
            .map(|id| {
                let spelled = before
                    .user_assigned
                    .get(id.key())
                    .cloned()
                    .unwrap_or_else(|| id.clone());
                (id.key().to_string(), spelled)
            })
            .collect()
    } else {
        let mut m = before.user_assigned.clone();
        m.retain(|k, _| !released.contains(k) || wanted.contains_key(k));
        for (k, id) in &wanted {
            m.entry(k.clone()).or_insert_with(|| id.clone());
        }
        m
    };
    let after = IdentityState {
        system_assigned: system_after,
        user_assigned: user_after,
    };

    // Changes, in a stable order: system first, then additions, then removals.
    let mut changes = Vec::new();
    if !before.system_assigned && after.system_assigned {
        changes.push(Change::EnableSystemAssigned);
    }
    if before.system_assigned && !after.system_assigned {
        changes.push(Change::DisableSystemAssigned);
    }
    let added: Vec<&ArmId> = after
        .user_assigned
        .iter()
        .filter(|(k, _)| !before.user_assigned.contains_key(*k))
        .map(|(_, v)| v)
        .collect();
    let removed: Vec<&ArmId> = before
        .user_assigned
        .iter()
        .filter(|(k, _)| !after.user_assigned.contains_key(*k))
        .map(|(_, v)| v)
        .collect();
    changes.extend(
        added
            .iter()
            .map(|id| Change::AddUserAssigned((*id).clone())),
    );
    changes.extend(
        removed
            .iter()
            .map(|id| Change::RemoveUserAssigned((*id).clone())),
    );

    // A wanted identity the target shows with neither principalId nor clientId was deleted
    // (and maybe recreated with the same name) under the VM: ARM keeps the dead entry, and
    // re-sending it changes nothing. Repair: remove it, then add it again (two PATCHes).
    let stale: Vec<ArmId> = match api_version.wire_format() {
        WireFormat::IdentityIdsArray => Vec::new(),
        WireFormat::UserAssignedDictionary => live
            .identity
            .user_assigned
            .iter()
            .filter(|(k, u)| {
                wanted.contains_key(*k) && after.user_assigned.contains_key(*k) && u.stale
            })
            .map(|(_, u)| u.id.clone())
            .collect(),
    };
    changes.extend(
        stale
            .iter()
            .map(|id| Change::RepairUserAssigned(id.clone())),
    );
    let steps: Vec<(IdentityState, IdentityState)> = if stale.is_empty() {
        vec![(before.clone(), after.clone())]
    } else {
        let mut mid = after.clone();
        for id in &stale {
            mid.user_assigned.remove(id.key());
        }
        vec![(before.clone(), mid.clone()), (mid, after.clone())]
    };
    let mut writes = Vec::new();
    for (from, to) in &steps {
        let added: Vec<&ArmId> = to
            .user_assigned
            .iter()
            .filter(|(k, _)| !from.user_assigned.contains_key(*k))
            .map(|(_, v)| v)
            .collect();
        let removed: Vec<&ArmId> = from
            .user_assigned
            .iter()
            .filter(|(k, _)| !to.user_assigned.contains_key(*k))
            .map(|(_, v)| v)
            .collect();
        if let Some(body) = identity_patch(from, to, &added, &removed, &api_version) {
            let assigned = match api_version.wire_format() {
                WireFormat::UserAssignedDictionary => added.len(),
                WireFormat::IdentityIdsArray => to.user_assigned.len(),
            };
            if assigned > MAX_IDENTITIES_PER_REQUEST {
                return Err(PlanError::TooManyIdentities {
                    target: target.to_string(),
                    count: assigned,
                });
            }
            writes.push(Write::IdentityPatch {
                target: target.clone(),
                api_version: api_version.clone(),
                body,
                if_match: live.etag.clone(),
            });
        }
    }

    // New ownership records.
    let mut applied = BTreeMap::new();
    for o in &objects {
        let record = if o.deleting {
            Applied::default()
        } else {
            let ids: Vec<String> = o
                .spec
                .user_assigned
                .iter()
                .filter(|id| {
                    o.spec.mode == Mode::Exact
                        || managed.contains(id.key())
                        || !before.user_assigned.contains_key(id.key())
                        // Adoption: on the target before, owned by no object (else the
                        // line above shares it, as for any object that lists it).
                        || o.adopt
                })
                .map(|id| id.to_string())
                .collect();
            // Grants are planned by `grants::plan_grants`; the identity plan keeps them.
            Applied {
                system_assigned: o.spec.system_assigned,
                user_assigned_identities: ids,
                role_assignments: o.applied.role_assignments.clone(),
                group_memberships: o.applied.group_memberships.clone(),
            }
        };
        applied.insert(o.object.clone(), record);
    }

    Ok(TargetPlan {
        target: target.clone(),
        api_version,
        objects: objects.iter().map(|o| o.object.clone()).collect(),
        before,
        after,
        changes,
        writes,
        applied,
    })
}

/// The smallest identity PATCH body from `before` to `after`, or None when they agree.
fn identity_patch(
    before: &IdentityState,
    after: &IdentityState,
    added: &[&ArmId],
    removed: &[&ArmId],
    api_version: &ApiVersion,
) -> Option<Value> {
    if before.same_as(after) {
        return None;
    }
    let mut identity = Map::new();
    identity.insert("type".into(), json!(after.identity_type().as_str()));
    if !after.user_assigned.is_empty() {
        match api_version.wire_format() {
            WireFormat::UserAssignedDictionary => {
                // Merge semantics: only what changes. Sorted by case-folded ID.
                let mut entries: Vec<(&str, &str, Value)> = added
                    .iter()
                    .map(|id| (id.key(), id.as_str(), json!({})))
                    .chain(
                        removed
                            .iter()
                            .map(|id| (id.key(), id.as_str(), Value::Null)),
                    )
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                if !entries.is_empty() {
                    let dict: Map<String, Value> = entries
                        .into_iter()
                        .map(|(_, s, v)| (s.to_string(), v))
                        .collect();
                    identity.insert("userAssignedIdentities".into(), Value::Object(dict));
                }
            }
            WireFormat::IdentityIdsArray => {
                // Replace semantics: the whole list, every time the type carries UserAssigned.
                let ids: Vec<Value> = after
                    .user_assigned
                    .values()
                    .map(|id| json!(id.as_str()))
                    .collect();
                identity.insert("identityIds".into(), Value::Array(ids));
            }
        }
    }
    Some(json!({ "identity": Value::Object(identity) }))
}

/// The ARM ID of a role assignment.
pub fn role_assignment_id(scope: &str, name: &str) -> String {
    format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
        scope.trim_end_matches('/')
    )
}
