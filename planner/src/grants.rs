//! Role assignments and group memberships: what the identities of a target must hold,
//! against what they hold, into DELETE / PUT / POST writes. Pure, like the identity planner.
//! What an object records (and so may remove later) is what it created, what is provably
//! vmidentity's, or what it adopts; never a grant someone else made (see [`plan_grants`]).
//!
//! The planner works with resolved role definition GUIDs and known principal IDs; resolving
//! role names and reading principals is the caller's I/O.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DeletionPolicy, DesiredObject, IdentityRef, ObjectRef};
use crate::plan::Write;

// Defined below `grants` (in `model` and `plan`, which `grants` uses); re-exported here, their
// historical home.
pub use crate::model::{AppliedGroupMembership, AppliedRoleAssignment};
pub use crate::plan::{
    AUTHORIZATION_API_VERSION, GRAPH_VERSION, PUBLIC_GRAPH_ENDPOINT, role_assignment_id,
};

/// Shown instead of a principal ID that exists only once the identity is written.
pub const KNOWN_AFTER_APPLY: &str = "(known after apply)";
/// `principalType` of vmidentity's role assignment PUTs (managed identities are service
/// principals; saying so spares ARM a lookup that fails until Entra has replicated them).
pub const SERVICE_PRINCIPAL: &str = "ServicePrincipal";

/// Namespace of [`assignment_name`]'s UUIDv5 (vmidentity's own; never change it: names of
/// existing assignments are derived from it).
pub const ASSIGNMENT_NAME_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d1c_57a0_2a3c_4c6e_9f0b_7e5d_1a2b_3c4d);

/// The deterministic role assignment name (a GUID) for (scope, role, principal): a retried PUT
/// is idempotent, and two controllers agree on the name. UUIDv5 in
/// [`ASSIGNMENT_NAME_NAMESPACE`] over exactly
/// `format!("{}|{}|{}", scope.to_ascii_lowercase(), role_guid.to_ascii_lowercase(), principal_id.to_ascii_lowercase())`
/// (no other normalisation: pass the scope without a trailing `/` and the role as a bare GUID).
pub fn assignment_name(scope: &str, role_guid: &str, principal_id: &str) -> String {
    let input = format!(
        "{}|{}|{}",
        scope.to_ascii_lowercase(),
        role_guid.to_ascii_lowercase(),
        principal_id.to_ascii_lowercase()
    );
    uuid::Uuid::new_v5(&ASSIGNMENT_NAME_NAMESPACE, input.as_bytes()).to_string()
}

impl AppliedRoleAssignment {
    fn key(&self) -> GrantKey {
        GrantKey::role(&self.scope, &self.role_definition_id, &self.principal_id)
    }
}

/// A role assignment as ARM lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRoleAssignment {
    pub id: String,
    pub scope: String,
    pub role_guid: String,
    pub principal_id: String,
}

/// What the principals of a target hold, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveGrants {
    pub role_assignments: Vec<LiveRoleAssignment>,
    /// principal ID (lower-case) -> group IDs (lower-case) it is a member of.
    pub memberships: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum GrantKey {
    Role {
        scope: String,
        role: String,
        principal: String,
    },
    Group {
        group: String,
        principal: String,
    },
}

impl GrantKey {
    fn role(scope: &str, role: &str, principal: &str) -> GrantKey {
        GrantKey::Role {
            scope: scope.trim_end_matches('/').to_ascii_lowercase(),
            role: role.to_ascii_lowercase(),
            principal: principal.to_ascii_lowercase(),
        }
    }
    fn group(group: &str, principal: &str) -> GrantKey {
        GrantKey::Group {
            group: group.to_ascii_lowercase(),
            principal: principal.to_ascii_lowercase(),
        }
    }
}

/// Inputs the caller resolved: principals of the identities and role GUIDs.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// `SystemAssigned` / UAI key (case-folded ID) -> principal ID (None: not known yet).
    pub principals: BTreeMap<String, String>,
    /// (role as written, lower-case; scope, lower-case) -> role definition GUID.
    pub roles: BTreeMap<(String, String), String>,
}

impl Resolved {
    pub fn identity_key(identity: &IdentityRef) -> String {
        match identity {
            IdentityRef::SystemAssigned => "systemassigned".to_string(),
            IdentityRef::UserAssigned(id) => id.key().to_string(),
        }
    }

    pub fn principal(&self, identity: &IdentityRef) -> Option<&str> {
        self.principals
            .get(&Self::identity_key(identity))
            .map(String::as_str)
            .filter(|p| !p.is_empty())
    }

    /// Whether an ownership record names a principal of this target's own identities: its
    /// `identity` is `SystemAssigned` or a user-assigned identity the target carries, and the
    /// recorded principal is that identity's principal as the live target shows it.
    /// `status.applied` can be written by whoever may write the status subresource, so only
    /// such records are ever acted on: a forged record cannot make the controller read,
    /// remove or un-assign another principal's grants.
    pub fn owns_principal(&self, identity: &str, principal: &str) -> bool {
        let key = if identity.eq_ignore_ascii_case("SystemAssigned") {
            "systemassigned".to_string()
        } else {
            identity.to_ascii_lowercase()
        };
        self.principals.get(&key).is_some_and(|p| {
            !p.is_empty() && p != KNOWN_AFTER_APPLY && p.eq_ignore_ascii_case(principal)
        })
    }

    pub fn role(&self, role: &str, scope: &str) -> Option<&str> {
        self.roles
            .get(&(role.to_ascii_lowercase(), scope.to_ascii_lowercase()))
            .map(String::as_str)
    }
}

/// A grant an object wants but that cannot be planned yet, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub object: ObjectRef,
    pub what: String,
    pub reason: &'static str,
}

/// The grant writes for one target, and the new ownership records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrantPlan {
    /// DELETEs of role assignments and group memberships: sent before the identity PATCH.
    pub removals: Vec<Write>,
    /// PUTs and POSTs: sent after the identity PATCH (the principals must exist).
    pub additions: Vec<Write>,
    /// Per object, the records once all writes succeeded. A PUT that ARM answers `409
    /// RoleAssignmentExists` (made by someone else under another name since the read) is
    /// recorded under that name only for an adopting object; the engine moves it to
    /// [`GrantPlan::held`] for the others, as this planner does for one found when reading.
    pub role_assignments: BTreeMap<ObjectRef, Vec<AppliedRoleAssignment>>,
    pub group_memberships: BTreeMap<ObjectRef, Vec<AppliedGroupMembership>>,
    pub pending: Vec<Pending>,
    /// Records not acted on: their principal is not one of the target's identities (see
    /// [`Resolved::owns_principal`]: a forged record, or the principal of a recycled system
    /// identity or of an identity detached by someone else), or the role assignment they
    /// name is neither under the deterministic name nor the one the record adopted. Nothing
    /// is removed for them; they leave the object's record and are reported.
    pub untrusted: Vec<Pending>,
    /// Per object, the grants it lists that its principal already holds and that it does not
    /// own (see [`plan_grants`]): made by someone else (Terraform, a person, the portal), or
    /// not provably by vmidentity. They are left alone: not created again, not recorded, and
    /// so never removed by this object, not even when it drops them from its spec. Reported
    /// so that users know why; the `vmidentity.dev/adopt: "true"` annotation takes them over.
    /// Objects with none are left out.
    pub held: BTreeMap<ObjectRef, HeldGrants>,
}

/// Grants an object lists that were held before and that it does not own ([`GrantPlan::held`]),
/// in the record's shape (a role assignment under its existing ID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldGrants {
    pub role_assignments: Vec<AppliedRoleAssignment>,
    pub group_memberships: Vec<AppliedGroupMembership>,
}

impl HeldGrants {
    pub fn is_empty(&self) -> bool {
        self.role_assignments.is_empty() && self.group_memberships.is_empty()
    }
}

impl GrantPlan {
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.additions.is_empty()
    }

    /// What `o` takes over in this plan without creating it: the role assignments (under
    /// their existing names) and group memberships its new record holds that its old record
    /// did not and that none of `sent` (the grant writes sent for the plan, normally
    /// [`GrantPlan::additions`]) creates, i.e. that the principals held before. Only an
    /// adopting object ([`DesiredObject::adopt`]) adopts: for any other object this is empty
    /// (what it records of a pre-existing grant is provably vmidentity's own, see
    /// [`plan_grants`], and is not news). For the `Adopted` Event.
    pub fn adopted(
        &self,
        o: &DesiredObject,
        sent: &[Write],
    ) -> (Vec<AppliedRoleAssignment>, Vec<AppliedGroupMembership>) {
        if !o.adopt || o.deleting {
            return (Vec::new(), Vec::new());
        }
        let created: BTreeSet<GrantKey> = sent
            .iter()
            .filter_map(|w| match w {
                Write::RoleAssignmentPut {
                    scope,
                    role_definition_id,
                    principal_id,
                    ..
                } => Some(GrantKey::role(
                    scope,
                    role_definition_id.rsplit('/').next().unwrap_or_default(),
                    principal_id,
                )),
                Write::GroupMemberAdd {
                    group_id,
                    principal_id,
                } => Some(GrantKey::group(group_id, principal_id)),
                _ => None,
            })
            .collect();
        let old_roles: BTreeSet<GrantKey> =
            o.applied.role_assignments.iter().map(|r| r.key()).collect();
        let old_groups: BTreeSet<GrantKey> = o
            .applied
            .group_memberships
            .iter()
            .map(|g| GrantKey::group(&g.group_object_id, &g.principal_id))
            .collect();
        let known = |p: &str| p != KNOWN_AFTER_APPLY;
        let roles = self
            .role_assignments
            .get(&o.object)
            .into_iter()
            .flatten()
            .filter(|r| known(&r.principal_id))
            .filter(|r| !old_roles.contains(&r.key()) && !created.contains(&r.key()))
            .cloned()
            .collect();
        let groups = self
            .group_memberships
            .get(&o.object)
            .into_iter()
            .flatten()
            .filter(|g| known(&g.principal_id))
            .filter(|g| {
                let k = GrantKey::group(&g.group_object_id, &g.principal_id);
                !old_groups.contains(&k) && !created.contains(&k)
            })
            .cloned()
            .collect();
        (roles, groups)
    }
}

/// The `roleDefinitionId` to send in a PUT for `role` (a GUID, or anything ending in one) at
/// `scope`: `/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}`
/// when the scope lies in a subscription (`scope` may also be a bare subscription ID), else
/// (management group, root) `/providers/Microsoft.Authorization/roleDefinitions/{guid}`. The
/// subscription and the GUID are lower-cased.
pub fn role_definition_id(scope: &str, role: &str) -> String {
    let guid = role
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let scope = scope.trim();
    let sub = if !scope.is_empty() && !scope.contains('/') {
        Some(scope.to_ascii_lowercase())
    } else {
        let mut segs = scope.split('/');
        segs.by_ref()
            .find(|s| s.eq_ignore_ascii_case("subscriptions"))
            .and_then(|_| segs.next())
            .map(str::to_ascii_lowercase)
    };
    match sub {
        Some(sub) => {
            format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        }
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
    }
}

fn put_role(scope: &str, role_guid: &str, principal: &str) -> Write {
    let name = if principal == KNOWN_AFTER_APPLY {
        KNOWN_AFTER_APPLY.to_string()
    } else {
        assignment_name(scope, role_guid, principal)
    };
    Write::RoleAssignmentPut {
        scope: scope.to_string(),
        name,
        role_definition_id: role_definition_id(scope, role_guid),
        principal_id: principal.to_string(),
        principal_type: Some(SERVICE_PRINCIPAL.to_string()),
    }
}

fn add_member(group: &str, principal: &str) -> Write {
    Write::GroupMemberAdd {
        group_id: group.to_string(),
        principal_id: principal.to_string(),
    }
}

fn remove_member(group: &str, principal: &str) -> Write {
    Write::GroupMemberRemove {
        group_id: group.to_string(),
        principal_id: principal.to_string(),
    }
}

/// Whether a live role assignment is under vmidentity's deterministic name
/// ([`assignment_name`]) for its scope, role and principal: vmidentity made it (a PUT of a
/// previous pass, whatever became of that pass's status).
fn is_deterministic(l: &LiveRoleAssignment) -> bool {
    l.id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .is_some_and(|n| {
            n.eq_ignore_ascii_case(&assignment_name(&l.scope, &l.role_guid, &l.principal_id))
        })
}

/// Plans the grants of one target's objects. `resolved` carries the principals (after the
/// identity write, when known) and the role GUIDs; `live` what those principals hold.
///
/// Invariants:
/// - Only what an object recorded is ever removed, only when no object on the target still
///   lists it, and only if the record is trusted (the target's own principal; for a role
///   assignment, the deterministic name or the very assignment the record holds).
/// - What is listed and not held is created (PUT under the deterministic name, Graph POST)
///   and recorded.
/// - What is listed and already held is never created again, and is recorded (so removed
///   when dropped later) only if the object **owns** it:
///   - a role assignment under vmidentity's deterministic name ([`assignment_name`]): a
///     previous pass created it (and may have lost its status update);
///   - a grant the object's own record already holds (for a role assignment, that very
///     assignment ID);
///   - a grant another object on the target records (shared, as two objects listing one
///     identity both record it);
///   - anything listed, when the object adopts ([`DesiredObject::adopt`]): recorded under
///     the existing assignment name.
///
///   Anything else listed and held (made by Terraform, a person, the portal, or a role
///   assignment under a name vmidentity does not choose) is left alone and reported in
///   [`GrantPlan::held`]: an imported object that later drops it removes nothing.
///
/// The crash window (the write succeeded, the status update that records it was lost) errs
/// toward **never removing what vmidentity cannot prove is its own**: a role assignment is
/// recovered by its deterministic name at the next pass; a group membership has no name,
/// so one created in the lost pass is at the next pass indistinguishable from one someone
/// else made: it is reported as held and not recorded, and stays in the group if the object
/// drops it (a leak, never a removal of someone else's membership). Adopting takes it over.
pub fn plan_grants(objects: &[DesiredObject], resolved: &Resolved, live: &LiveGrants) -> GrantPlan {
    let mut objects: Vec<&DesiredObject> = objects.iter().collect();
    objects.sort_by(|a, b| a.object.cmp(&b.object));
    let mut plan = GrantPlan::default();

    let live_roles: BTreeMap<GrantKey, &LiveRoleAssignment> = live
        .role_assignments
        .iter()
        .map(|r| (GrantKey::role(&r.scope, &r.role_guid, &r.principal_id), r))
        .collect();
    let is_member = |group: &str, principal: &str| {
        live.memberships
            .get(&principal.to_ascii_lowercase())
            .is_some_and(|g| g.contains(&group.to_ascii_lowercase()))
    };

    // What some object (active or deleting) records, with its trusted principal: a grant
    // one object owns is shared by another that lists it. Role assignments by the very
    // assignment ID recorded.
    let recorded_roles: BTreeSet<(GrantKey, String)> = objects
        .iter()
        .flat_map(|o| o.applied.role_assignments.iter())
        .filter(|r| resolved.owns_principal(&r.identity, &r.principal_id))
        .map(|r| (r.key(), r.id.to_ascii_lowercase()))
        .collect();
    let recorded_groups: BTreeSet<GrantKey> = objects
        .iter()
        .flat_map(|o| o.applied.group_memberships.iter())
        .filter(|g| resolved.owns_principal(&g.identity, &g.principal_id))
        .map(|g| GrantKey::group(&g.group_object_id, &g.principal_id))
        .collect();

    // What active objects want, by key (the first object's view of each key wins). A key
    // listed by an active object is never removed, owned by it or not.
    let mut wanted_roles: BTreeMap<GrantKey, AppliedRoleAssignment> = BTreeMap::new();
    let mut wanted_groups: BTreeMap<GrantKey, AppliedGroupMembership> = BTreeMap::new();
    for o in objects.iter().filter(|o| !o.deleting) {
        let mut roles = Vec::new();
        let mut groups = Vec::new();
        let mut held = HeldGrants::default();
        for ra in &o.spec.role_assignments {
            let Some(principal) = resolved.principal(&ra.identity) else {
                plan.pending.push(Pending {
                    object: o.object.clone(),
                    what: format!("role {} at {} for {}", ra.role, ra.scope, ra.identity),
                    reason: "PrincipalUnknown",
                });
                continue;
            };
            let Some(guid) = resolved.role(&ra.role.to_string(), &ra.scope) else {
                plan.pending.push(Pending {
                    object: o.object.clone(),
                    what: format!("role {} at {}", ra.role, ra.scope),
                    reason: "RoleNotResolved",
                });
                continue;
            };
            let key = GrantKey::role(&ra.scope, guid, principal);
            let (id, owned) = match live_roles.get(&key) {
                Some(l) => (
                    l.id.clone(),
                    o.adopt
                        || is_deterministic(l)
                        || recorded_roles.contains(&(key.clone(), l.id.to_ascii_lowercase())),
                ),
                None => (
                    role_assignment_id(&ra.scope, &assignment_name(&ra.scope, guid, principal)),
                    true,
                ),
            };
            let rec = AppliedRoleAssignment {
                id,
                scope: ra.scope.clone(),
                role_definition_id: guid.to_ascii_lowercase(),
                principal_id: if principal == KNOWN_AFTER_APPLY {
                    principal.to_string()
                } else {
                    principal.to_ascii_lowercase()
                },
                identity: ra.identity.to_string(),
            };
            wanted_roles.entry(key).or_insert_with(|| rec.clone());
            if owned {
                roles.push(rec);
            } else {
                held.role_assignments.push(rec);
            }
        }
        for gm in &o.spec.group_memberships {
            let Some(principal) = resolved.principal(&gm.identity) else {
                plan.pending.push(Pending {
                    object: o.object.clone(),
                    what: format!("group {} for {}", gm.group_object_id, gm.identity),
                    reason: "PrincipalUnknown",
                });
                continue;
            };
            let rec = AppliedGroupMembership {
                group_object_id: gm.group_object_id.to_ascii_lowercase(),
                principal_id: if principal == KNOWN_AFTER_APPLY {
                    principal.to_string()
                } else {
                    principal.to_ascii_lowercase()
                },
                identity: gm.identity.to_string(),
            };
            let key = GrantKey::group(&gm.group_object_id, principal);
            let owned = o.adopt
                || !is_member(&gm.group_object_id, principal)
                || recorded_groups.contains(&key);
            wanted_groups.entry(key).or_insert_with(|| rec.clone());
            if owned {
                groups.push(rec);
            } else {
                held.group_memberships.push(rec);
            }
        }
        roles.sort();
        roles.dedup();
        groups.sort();
        groups.dedup();
        plan.role_assignments.insert(o.object.clone(), roles);
        plan.group_memberships.insert(o.object.clone(), groups);
        if !held.is_empty() {
            held.role_assignments.sort();
            held.role_assignments.dedup();
            held.group_memberships.sort();
            held.group_memberships.dedup();
            plan.held.insert(o.object.clone(), held);
        }
    }

    // Additions: wanted and not held.
    for (key, rec) in &wanted_roles {
        if !live_roles.contains_key(key) {
            plan.additions.push(put_role(
                &rec.scope,
                &rec.role_definition_id,
                &rec.principal_id,
            ));
        }
    }
    for rec in wanted_groups.values() {
        if !is_member(&rec.group_object_id, &rec.principal_id) {
            plan.additions
                .push(add_member(&rec.group_object_id, &rec.principal_id));
        }
    }

    // Removals: recorded, released by its object, wanted by nobody, and still held — and
    // only records the controller can trust (the target's own principals; a role assignment
    // under vmidentity's deterministic name, or the very one the record adopted).
    let mut removed: BTreeSet<GrantKey> = BTreeSet::new();
    for o in &objects {
        let detach = !o.deleting || o.spec.deletion_policy == DeletionPolicy::Detach;
        if !detach {
            continue;
        }
        for rec in &o.applied.role_assignments {
            let key = rec.key();
            if wanted_roles.contains_key(&key) {
                continue;
            }
            if !resolved.owns_principal(&rec.identity, &rec.principal_id) {
                plan.untrusted.push(Pending {
                    object: o.object.clone(),
                    what: format!("role assignment {}", rec.id),
                    reason: "PrincipalNotOfTarget",
                });
                continue;
            }
            if !removed.insert(key.clone()) {
                continue;
            }
            if let Some(l) = live_roles.get(&key) {
                if is_deterministic(l) || l.id.eq_ignore_ascii_case(&rec.id) {
                    plan.removals
                        .push(Write::RoleAssignmentDelete { id: l.id.clone() });
                } else {
                    plan.untrusted.push(Pending {
                        object: o.object.clone(),
                        what: format!("role assignment {}", l.id),
                        reason: "AssignmentNotOwned",
                    });
                }
            }
        }
        for rec in &o.applied.group_memberships {
            let key = GrantKey::group(&rec.group_object_id, &rec.principal_id);
            if wanted_groups.contains_key(&key) {
                continue;
            }
            if !resolved.owns_principal(&rec.identity, &rec.principal_id) {
                plan.untrusted.push(Pending {
                    object: o.object.clone(),
                    what: format!(
                        "group {} membership of {}",
                        rec.group_object_id, rec.principal_id
                    ),
                    reason: "PrincipalNotOfTarget",
                });
                continue;
            }
            if !removed.insert(key.clone()) {
                continue;
            }
            if is_member(&rec.group_object_id, &rec.principal_id) {
                plan.removals
                    .push(remove_member(&rec.group_object_id, &rec.principal_id));
            }
        }
    }
    // Deleting objects keep nothing; Retain forgets without removing.
    for o in objects.iter().filter(|o| o.deleting) {
        plan.role_assignments.insert(o.object.clone(), Vec::new());
        plan.group_memberships.insert(o.object.clone(), Vec::new());
    }
    plan
}

/// The principals whose grants must be read to plan: those of the identities now known, and
/// those named in records of the target's own principals.
pub fn principals_to_read(objects: &[DesiredObject], resolved: &Resolved) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for o in objects {
        if !o.deleting {
            for ra in &o.spec.role_assignments {
                if let Some(p) = resolved.principal(&ra.identity) {
                    out.insert(p.to_ascii_lowercase());
                }
            }
            for gm in &o.spec.group_memberships {
                if let Some(p) = resolved.principal(&gm.identity) {
                    out.insert(p.to_ascii_lowercase());
                }
            }
        }
        // Only records of the target's own principals (a forged record naming another
        // principal is not even read).
        out.extend(
            o.applied
                .role_assignments
                .iter()
                .filter(|r| resolved.owns_principal(&r.identity, &r.principal_id))
                .map(|r| r.principal_id.to_ascii_lowercase()),
        );
        out.extend(
            o.applied
                .group_memberships
                .iter()
                .filter(|g| resolved.owns_principal(&g.identity, &g.principal_id))
                .map(|g| g.principal_id.to_ascii_lowercase()),
        );
    }
    out
}

/// Built-in Azure roles, by their names as Azure spells them (roleName of the built-in role
/// definitions; their GUIDs are the same in every tenant). Source: "Azure built-in roles",
/// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
const BUILTIN_ROLES: &[(&str, &str)] = &[
    ("Owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"),
    ("Contributor", "b24988ac-6180-42a0-ab88-20f7382dd24c"),
    ("Reader", "acdd72a7-3385-48ef-bd42-f606fba81ae7"),
    (
        "User Access Administrator",
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    ),
    (
        "Role Based Access Control Administrator",
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
    ),
    (
        "Storage Blob Data Reader",
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    ),
    (
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    ),
    (
        "Key Vault Secrets User",
        "4633458b-17de-408a-b874-0445c86b69e6",
    ),
    (
        "Virtual Machine Contributor",
        "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    ),
    (
        "Managed Identity Operator",
        "f1a07417-d97a-45cb-824c-7a7467783830",
    ),
    (
        "Monitoring Metrics Publisher",
        "3913510d-42f4-4e42-8a64-420c390055eb",
    ),
];

/// Built-in Azure roles by name (their GUIDs are the same in every tenant), so an offline
/// `plan` can show exact role assignment writes. `apply` and the controller resolve names
/// through the roleDefinitions API (which also knows custom roles).
pub fn builtin_role_guid(name: &str) -> Option<&'static str> {
    BUILTIN_ROLES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, g)| *g)
}

/// The name of a built-in role, from its GUID or full role definition ID.
pub fn builtin_role_name(guid_or_id: &str) -> Option<&'static str> {
    let guid = guid_or_id.rsplit('/').next().unwrap_or(guid_or_id);
    BUILTIN_ROLES
        .iter()
        .find(|(_, g)| g.eq_ignore_ascii_case(guid))
        .map(|(n, _)| *n)
}

/// A role for people: `Reader (acdd72a7-…)` for a built-in role, the GUID otherwise (from a
/// GUID or a full role definition ID).
pub fn role_label(guid_or_id: &str) -> String {
    let guid = guid_or_id.rsplit('/').next().unwrap_or(guid_or_id);
    match builtin_role_name(guid) {
        Some(name) => format!("{name} ({guid})"),
        None => guid.to_string(),
    }
}
