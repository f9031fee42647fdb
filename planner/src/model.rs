//! The planner's input: what objects ask for, validated into domain types.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{ArmId, IdError};

/// The oldest Compute api-version that knows user-assigned identities.
pub const OLDEST_API_VERSION: &str = "2017-12-01";
/// The first api-version with the `userAssignedIdentities` dictionary.
pub const DICTIONARY_API_VERSION: &str = "2018-06-01";
/// The default api-version of an object without `spec.armApiVersion`: the newest
/// Microsoft.Compute api-version whose published spec vmidentity was checked against
/// (Azure/azure-rest-api-specs
/// `specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2025-04-01/virtualMachine.json`
/// and `…/virtualMachineScaleSet.json`). It has the `userAssignedIdentities` dictionary (a
/// PATCH merges, `null` removes an entry) and entity tags (from 2023-09-01: `etag` on the
/// GET, `If-Match` on the PATCH), so a PATCH planned on a stale read is refused with 412
/// instead of undoing another writer's change. 2017-12-01 and 2018-06-01 stay supported
/// when asked for explicitly.
pub const DEFAULT_API_VERSION: &str = "2025-04-01";

/// How an api-version carries user-assigned identities on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// `identity.identityIds`: an array a PATCH replaces whole (2017-12-01 up to 2018-06-01).
    IdentityIdsArray,
    /// `identity.userAssignedIdentities`: a dictionary a PATCH merges (2018-06-01 and later).
    UserAssignedDictionary,
}

/// A Microsoft.Compute api-version (`YYYY-MM-DD` or `YYYY-MM-DD-preview`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiVersion(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiVersionError {
    #[error("api-version {0:?} is not of the form YYYY-MM-DD (optionally -preview)")]
    Malformed(String),
    #[error(
        "api-version {0:?} predates user-assigned identities on Microsoft.Compute (use {OLDEST_API_VERSION} or later; {DICTIONARY_API_VERSION} or later is recommended)"
    )]
    TooOld(String),
    /// Well formed, but not an api-version Microsoft.Compute publishes
    /// ([`vmidentity_arm_versions::COMPUTE`]): ARM would refuse every request.
    #[error(
        "api-version {0:?} is not one Microsoft.Compute publishes for virtual machines and scale sets; the supported versions are {versions}",
        versions = vmidentity_arm_versions::COMPUTE.join(", ")
    )]
    Unpublished(String),
}

impl ApiVersion {
    pub fn parse(s: &str) -> Result<ApiVersion, ApiVersionError> {
        let date = s.strip_suffix("-preview").unwrap_or(s);
        let b = date.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let well_formed = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && digits(0..4)
            && digits(5..7)
            && digits(8..10);
        if !well_formed {
            return Err(ApiVersionError::Malformed(s.to_string()));
        }
        let month: u32 = date[5..7].parse().unwrap_or(0);
        let day: u32 = date[8..10].parse().unwrap_or(0);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return Err(ApiVersionError::Malformed(s.to_string()));
        }
        if date < OLDEST_API_VERSION {
            return Err(ApiVersionError::TooOld(s.to_string()));
        }
        if !vmidentity_arm_versions::is_compute(s) {
            return Err(ApiVersionError::Unpublished(s.to_string()));
        }
        Ok(ApiVersion(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn wire_format(&self) -> WireFormat {
        if self.0.as_str() < DICTIONARY_API_VERSION {
            WireFormat::IdentityIdsArray
        } else {
            WireFormat::UserAssignedDictionary
        }
    }
}

impl Default for ApiVersion {
    fn default() -> Self {
        ApiVersion(DEFAULT_API_VERSION.to_string())
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Merge adds what an object lists; Exact makes the list the whole user-assigned set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Mode {
    #[default]
    Merge,
    Exact,
}

/// What deleting an object does to what it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum DeletionPolicy {
    // Plain comments, not doc comments, on the variants: with these, schemars would describe
    // the enum as a `oneOf` and change the CRD's schema of `spec.deletionPolicy`.
    // Remove the user-assigned identities the object applied and nobody else wants.
    #[default]
    Detach,
    // Leave everything on the target.
    Retain,
}

/// `namespace/name` of a VirtualMachineIdentity object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// A role assignment this object owns (`status.applied.roleAssignments`). A plain comment: the
// CRD's schema of the list's items carries no description.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AppliedRoleAssignment {
    /// The role assignment's ARM ID.
    pub id: String,
    /// The ARM scope the role is assigned at.
    pub scope: String,
    /// The role definition GUID.
    pub role_definition_id: String,
    /// The principal ID (Entra object ID) the role is assigned to.
    pub principal_id: String,
    /// The identity that holds it: `SystemAssigned` or the user-assigned identity ID.
    pub identity: String,
}

// A group membership this object owns (`status.applied.groupMemberships`) (a plain comment,
// as above).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AppliedGroupMembership {
    /// The Entra ID group's object ID.
    pub group_object_id: String,
    /// The member's principal ID (Entra object ID).
    pub principal_id: String,
    /// The identity that is the member: `SystemAssigned` or the user-assigned identity ID.
    pub identity: String,
}

/// The ownership record an object keeps in `status.applied`: what it manages on its target.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The system-assigned identity's state as this object last set it (`true` or `false`),
    /// absent when this object never set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_assigned: Option<bool>,
    /// The user-assigned identity IDs this object added or co-owns; they are removed only
    /// when no object on the target wants them any more.
    #[serde(default)]
    pub user_assigned_identities: Vec<String>,
    /// Role assignments this object created or adopted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<AppliedRoleAssignment>,
    /// Group memberships this object added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_memberships: Vec<AppliedGroupMembership>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.system_assigned.is_none()
            && self.user_assigned_identities.is_empty()
            && self.role_assignments.is_empty()
            && self.group_memberships.is_empty()
    }

    /// The recorded IDs, case-folded (entries that do not parse are kept as folded strings so
    /// a damaged record can still release what it names).
    pub fn keys(&self) -> BTreeSet<String> {
        self.user_assigned_identities
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    }
}

/// Which identity a role assignment or group membership is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityRef {
    SystemAssigned,
    UserAssigned(ArmId),
}

impl fmt::Display for IdentityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityRef::SystemAssigned => f.write_str("SystemAssigned"),
            IdentityRef::UserAssigned(id) => write!(f, "{id}"),
        }
    }
}

/// A role, as a user may name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleRef {
    /// A role name such as `Reader`, resolved through the roleDefinitions list.
    Name(String),
    /// A role definition GUID.
    Guid(String),
    /// A full role definition ID (`.../providers/Microsoft.Authorization/roleDefinitions/<guid>`).
    DefinitionId(String),
}

impl fmt::Display for RoleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleRef::Name(s) | RoleRef::Guid(s) | RoleRef::DefinitionId(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleAssignmentSpec {
    pub identity: IdentityRef,
    pub role: RoleRef,
    /// The ARM scope, case-folded for comparison by [`Self::scope_key`].
    pub scope: String,
}

impl RoleAssignmentSpec {
    pub fn scope_key(&self) -> String {
        self.scope.to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupMembershipSpec {
    pub identity: IdentityRef,
    /// The Entra group's object ID (a GUID, lower-cased).
    pub group_object_id: String,
}

/// The spec of a VirtualMachineIdentity as it arrives (from YAML or the API server), before
/// validation. Mirrors the CRD's `spec` field for field: the CRD's spec type carries the CEL
/// rules (kube's `x_kube` attributes), which this pure crate does not take; its items, enums and
/// the status record are these types. With the `schema` feature the controller's tests check
/// that both have the same fields, types and required ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSpec {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm_api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_assigned: Option<bool>,
    #[serde(default)]
    pub user_assigned_identities: Vec<String>,
    #[serde(default)]
    pub role_assignments: Vec<RawRoleAssignment>,
    #[serde(default)]
    pub group_memberships: Vec<RawGroupMembership>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

// The items of `spec.roleAssignments` and `spec.groupMemberships`: the CRD's schema of them
// comes from these types (the `schema` feature), field docs included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRoleAssignment {
    /// `SystemAssigned` or one of spec.userAssignedIdentities.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 350)))]
    pub identity: String,
    /// A built-in role name (`Reader`), a role definition GUID, or a role definition ID.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 512)))]
    pub role: String,
    /// The ARM scope: a subscription, resource group, resource or management group ID.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 1024)))]
    pub scope: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawGroupMembership {
    /// `SystemAssigned` or one of spec.userAssignedIdentities.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 350)))]
    pub identity: String,
    /// The Entra ID group's object ID.
    #[cfg_attr(
        feature = "schema",
        schemars(regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))
    )]
    pub group_object_id: String,
}

/// A field of a spec that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path such as `spec.userAssignedIdentities[1]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub target: ArmId,
    pub api_version: ApiVersion,
    pub mode: Mode,
    pub system_assigned: Option<bool>,
    /// Unique (case-insensitively), in the order given.
    pub user_assigned: Vec<ArmId>,
    pub role_assignments: Vec<RoleAssignmentSpec>,
    pub group_memberships: Vec<GroupMembershipSpec>,
    pub deletion_policy: DeletionPolicy,
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A role-assignment scope: a subscription, resource group or resource ID, or a management
/// group (`/providers/Microsoft.Management/managementGroups/<id>`). Every form is refused
/// with `.`/`..`/empty segments, `%`, `\`, `?`, `#`, whitespace or control characters
/// ([`crate::id::check_id_path`]): a URL parser would resolve or decode such a scope into
/// another one than the policy approved.
fn parse_scope(s: &str) -> Result<String, String> {
    if s.len() > 1 && s.ends_with('/') {
        return Err(format!("scope {s:?} must not end with '/'"));
    }
    if let Err(e @ IdError::Unsafe { .. }) = crate::id::check_id_path(s) {
        return Err(format!("scope {e}"));
    }
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("/providers/microsoft.management/managementgroups/")
        && !rest.is_empty()
        && !rest.contains('/')
    {
        return Ok(s.to_string());
    }
    match ArmId::parse(s) {
        Ok(_) => Ok(s.to_string()),
        Err(_) => Err(format!(
            "scope {s:?} is not an ARM scope (a subscription, resource group, resource or management group ID)"
        )),
    }
}

fn parse_role(s: &str) -> Result<RoleRef, String> {
    let t = s.trim();
    if t.is_empty() || t != s {
        return Err(format!(
            "role {s:?} must be a role name, a role definition GUID or a role definition ID"
        ));
    }
    if is_guid(t) {
        return Ok(RoleRef::Guid(t.to_ascii_lowercase()));
    }
    if t.starts_with('/') {
        let lower = t.to_ascii_lowercase();
        let guid = lower
            .rsplit_once("/providers/microsoft.authorization/roledefinitions/")
            .map(|(_, g)| g);
        if let Err(e @ IdError::Unsafe { .. }) = crate::id::check_id_path(t) {
            return Err(format!("role {e}"));
        }
        return match guid {
            Some(g) if is_guid(g) => Ok(RoleRef::DefinitionId(t.to_string())),
            _ => Err(format!(
                "role {s:?} looks like an ID but is not .../providers/Microsoft.Authorization/roleDefinitions/<GUID>"
            )),
        };
    }
    Ok(RoleRef::Name(t.to_string()))
}

impl RawSpec {
    /// Checks every field and returns all problems, each naming its field.
    pub fn validate(&self) -> Result<Spec, Vec<FieldError>> {
        let mut errs = Vec::new();
        let target = match ArmId::parse_target(&self.target) {
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(FieldError::new("spec.target", e.to_string()));
                None
            }
        };
        let api_version = match &self.arm_api_version {
            None => Some(ApiVersion::default()),
            Some(v) => match ApiVersion::parse(v) {
                Ok(v) => Some(v),
                Err(e) => {
                    errs.push(FieldError::new("spec.armApiVersion", e.to_string()));
                    None
                }
            },
        };
        let mut user_assigned: Vec<ArmId> = Vec::new();
        // Case-folded key -> index in user_assigned: linear in the list's length, however
        // long a file given to `plan -f` makes it (admission caps it at 150, files do not).
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, raw) in self.user_assigned_identities.iter().enumerate() {
            let field = format!("spec.userAssignedIdentities[{i}]");
            match ArmId::parse_uai(raw) {
                Ok(id) => {
                    if let Some(&j) = index.get(id.key()) {
                        errs.push(FieldError::new(
                            field,
                            format!(
                                "duplicate of spec.userAssignedIdentities[{j}] ({}); resource IDs are case-insensitive",
                                user_assigned[j]
                            ),
                        ));
                    } else {
                        index.insert(id.key().to_string(), user_assigned.len());
                        user_assigned.push(id);
                    }
                }
                Err(IdError::WrongKind { found, .. }) => errs.push(FieldError::new(
                    field,
                    format!(
                        "{raw:?} is a {found} ID, not a Microsoft.ManagedIdentity/userAssignedIdentities ID"
                    ),
                )),
                Err(e) => errs.push(FieldError::new(field, e.to_string())),
            }
        }
        let identity_ref = |field: String, s: &str, errs: &mut Vec<FieldError>| {
            if s == "SystemAssigned" {
                return Some(IdentityRef::SystemAssigned);
            }
            match ArmId::parse_uai(s) {
                Ok(id) if index.contains_key(id.key()) => Some(IdentityRef::UserAssigned(id)),
                _ => {
                    errs.push(FieldError::new(
                        field,
                        format!(
                            "{s:?} must be \"SystemAssigned\" or one of spec.userAssignedIdentities"
                        ),
                    ));
                    None
                }
            }
        };
        let mut role_assignments: Vec<RoleAssignmentSpec> = Vec::new();
        for (i, r) in self.role_assignments.iter().enumerate() {
            let base = format!("spec.roleAssignments[{i}]");
            let identity = identity_ref(format!("{base}.identity"), &r.identity, &mut errs);
            let role = parse_role(&r.role)
                .map_err(|m| errs.push(FieldError::new(format!("{base}.role"), m)))
                .ok();
            let scope = parse_scope(&r.scope)
                .map_err(|m| errs.push(FieldError::new(format!("{base}.scope"), m)))
                .ok();
            if let (Some(identity), Some(role), Some(scope)) = (identity, role, scope) {
                let ra = RoleAssignmentSpec {
                    identity,
                    role,
                    scope,
                };
                let dup = role_assignments.iter().position(|o| {
                    o.identity == ra.identity
                        && o.role
                            .to_string()
                            .eq_ignore_ascii_case(&ra.role.to_string())
                        && o.scope_key() == ra.scope_key()
                });
                match dup {
                    Some(j) => errs.push(FieldError::new(
                        base,
                        format!("duplicate of spec.roleAssignments[{j}]"),
                    )),
                    None => role_assignments.push(ra),
                }
            }
        }
        let mut group_memberships: Vec<GroupMembershipSpec> = Vec::new();
        for (i, g) in self.group_memberships.iter().enumerate() {
            let base = format!("spec.groupMemberships[{i}]");
            let identity = identity_ref(format!("{base}.identity"), &g.identity, &mut errs);
            let group = if is_guid(&g.group_object_id) {
                Some(g.group_object_id.to_ascii_lowercase())
            } else {
                errs.push(FieldError::new(
                    format!("{base}.groupObjectId"),
                    format!(
                        "{:?} is not a GUID (the group's object ID)",
                        g.group_object_id
                    ),
                ));
                None
            };
            if let (Some(identity), Some(group_object_id)) = (identity, group) {
                let gm = GroupMembershipSpec {
                    identity,
                    group_object_id,
                };
                match group_memberships.iter().position(|o| *o == gm) {
                    Some(j) => errs.push(FieldError::new(
                        base,
                        format!("duplicate of spec.groupMemberships[{j}]"),
                    )),
                    None => group_memberships.push(gm),
                }
            }
        }
        if self.system_assigned == Some(false)
            && (self
                .role_assignments
                .iter()
                .any(|r| r.identity == "SystemAssigned")
                || self
                    .group_memberships
                    .iter()
                    .any(|g| g.identity == "SystemAssigned"))
        {
            errs.push(FieldError::new(
                "spec.systemAssigned",
                "is false, but roleAssignments or groupMemberships name the SystemAssigned identity",
            ));
        }
        match (target, api_version) {
            (Some(target), Some(api_version)) if errs.is_empty() => Ok(Spec {
                target,
                api_version,
                mode: self.mode.unwrap_or_default(),
                system_assigned: self.system_assigned,
                user_assigned,
                role_assignments,
                group_memberships,
                deletion_policy: self.deletion_policy.unwrap_or_default(),
            }),
            _ => Err(errs),
        }
    }
}

/// One object's contribution to its target's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredObject {
    pub object: ObjectRef,
    pub spec: Spec,
    /// `status.applied`: what this object manages on the target so far.
    pub applied: Applied,
    /// True once the object has a deletion timestamp: it then wants nothing, and with
    /// `deletionPolicy: Detach` releases what it applied.
    pub deleting: bool,
    /// Adoption (the `vmidentity.dev/adopt: "true"` annotation): the user-assigned
    /// identities the spec lists that were on the target before and that no object on the
    /// target records are recorded as this object's, so dropping one later removes it from
    /// the target as for anything the object added; likewise the listed role assignments
    /// (under their existing names) and group memberships the principals already held
    /// ([`crate::grants::plan_grants`]). Without it (the default), Merge mode never records,
    /// and so never removes, what was on the target before it was asked for: neither an
    /// identity nor a grant someone else made.
    pub adopt: bool,
}

impl DesiredObject {
    pub fn new(object: ObjectRef, spec: Spec) -> Self {
        DesiredObject {
            object,
            spec,
            applied: Applied::default(),
            deleting: false,
            adopt: false,
        }
    }

    /// With adoption on or off (see [`DesiredObject::adopt`]).
    pub fn adopting(mut self, adopt: bool) -> Self {
        self.adopt = adopt;
        self
    }

    pub fn with_applied(mut self, applied: Applied) -> Self {
        self.applied = applied;
        self
    }

    pub fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
    const U1: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";

    fn raw() -> RawSpec {
        RawSpec {
            target: VM.into(),
            user_assigned_identities: vec![U1.into()],
            ..Default::default()
        }
    }

    #[test]
    fn api_versions() {
        assert_eq!(
            ApiVersion::parse("2017-12-01").unwrap().wire_format(),
            WireFormat::IdentityIdsArray
        );
        assert_eq!(
            ApiVersion::parse("2018-04-01").unwrap().wire_format(),
            WireFormat::IdentityIdsArray
        );
        assert_eq!(
            ApiVersion::parse("2018-06-01").unwrap().wire_format(),
            WireFormat::UserAssignedDictionary
        );
        assert_eq!(
            ApiVersion::parse("2024-11-01").unwrap().wire_format(),
            WireFormat::UserAssignedDictionary
        );
        assert_eq!(
            ApiVersion::parse("2025-04-01").unwrap().wire_format(),
            WireFormat::UserAssignedDictionary
        );
        // Well formed but not published: ARM would refuse it, so the planner does.
        for unpublished in ["2024-11-01-preview", "2024-11-02", "2099-01-01"] {
            assert!(
                matches!(
                    ApiVersion::parse(unpublished),
                    Err(ApiVersionError::Unpublished(_))
                ),
                "{unpublished}"
            );
        }
        let message = ApiVersion::parse("2024-11-02").unwrap_err().to_string();
        assert!(
            message.contains("2017-12-01, 2018-04-01, 2018-06-01"),
            "{message}"
        );
        assert!(matches!(
            ApiVersion::parse("2017-03-30"),
            Err(ApiVersionError::TooOld(_))
        ));
        for bad in ["latest", "2018-6-1", "2018-13-01", "2018-06-01x", ""] {
            assert!(
                matches!(ApiVersion::parse(bad), Err(ApiVersionError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn validates_a_good_spec() {
        let mut r = raw();
        r.role_assignments.push(RawRoleAssignment {
            identity: U1.to_uppercase(),
            role: "Reader".into(),
            scope: "/subscriptions/s1/resourceGroups/rg".into(),
        });
        let s = r.validate().unwrap();
        assert_eq!(s.mode, Mode::Merge);
        assert_eq!(s.api_version.as_str(), "2025-04-01");
        assert_eq!(s.api_version.as_str(), DEFAULT_API_VERSION);
        assert_eq!(
            s.api_version.wire_format(),
            WireFormat::UserAssignedDictionary
        );
        assert_eq!(s.user_assigned.len(), 1);
    }

    #[test]
    fn names_each_bad_field() {
        let mut r = raw();
        r.target =
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"
                .into();
        r.user_assigned_identities
            .push(U1.replace("resourceGroups", "resourcegroups"));
        r.user_assigned_identities.push(VM.into());
        r.arm_api_version = Some("2016-01-01".into());
        r.group_memberships.push(RawGroupMembership {
            identity: "nobody".into(),
            group_object_id: "not-a-guid".into(),
        });
        let errs = r.validate().unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.target",
                "spec.armApiVersion",
                "spec.userAssignedIdentities[1]",
                "spec.userAssignedIdentities[2]",
                "spec.groupMemberships[0].identity",
                "spec.groupMemberships[0].groupObjectId"
            ]
        );
        assert!(errs[2].message.contains("duplicate"));
    }

    #[test]
    fn roles_by_name_guid_or_id() {
        assert_eq!(
            parse_role("Reader").unwrap(),
            RoleRef::Name("Reader".into())
        );
        assert!(matches!(
            parse_role("ACDD72A7-3385-48EF-BD42-F606FBA81AE7").unwrap(),
            RoleRef::Guid(_)
        ));
        assert!(matches!(
            parse_role("/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7").unwrap(),
            RoleRef::DefinitionId(_)
        ));
        assert!(parse_role("/subscriptions/s1/foo").is_err());
        assert!(parse_scope("/providers/Microsoft.Management/managementGroups/mg1").is_ok());
        assert!(parse_scope("rg").is_err());
    }

    #[test]
    fn scopes_with_dot_segments_percent_or_backslash_are_refused() {
        let attack =
            "/subscriptions/S/resourceGroups/rg-a/providers/../../../resourceGroups/rg-prod";
        let err = parse_scope(attack).unwrap_err();
        assert!(err.contains("contains a '..' segment"), "{err}");
        assert!(err.contains("not allowed in ARM IDs"), "{err}");
        for (bad, problem) in [
            (
                "/subscriptions/S/resourceGroups/rg-a/providers/%2e%2e/%2e%2e/%2e%2e/resourceGroups/rg-prod",
                "'%'",
            ),
            ("/subscriptions/S/resourceGroups/rg-a%2F..%2Frg-prod", "'%'"),
            (
                "/subscriptions/S/resourceGroups/rg-a/providers\\..\\..\\..\\resourceGroups\\rg-prod",
                "'\\'",
            ),
            ("/subscriptions/S/resourceGroups/.", "'.' segment"),
            (
                "/subscriptions/S/resourceGroups/rg\u{1}",
                "control character",
            ),
            // The management-group form too.
            (
                "/providers/Microsoft.Management/managementGroups/..",
                "'..' segment",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/.",
                "'.' segment",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/%2e%2e",
                "'%'",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/mg\\..",
                "'\\'",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/mg 1",
                "whitespace",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/mg?x",
                "'?'",
            ),
            (
                "/providers/Microsoft.Management/managementGroups/mg#x",
                "'#'",
            ),
            (
                "/providers/Microsoft.Management//managementGroups/mg",
                "empty segment",
            ),
        ] {
            let err = parse_scope(bad).unwrap_err();
            assert!(err.contains(problem), "{bad:?}: {err}");
        }
        assert!(
            parse_scope("/subscriptions/S/resourceGroups/rg-a/")
                .unwrap_err()
                .contains("must not end with '/'")
        );
        // Mixed case and dotted names stay fine.
        for good in [
            "/SUBSCRIPTIONS/S/resourcegroups/RG-A",
            "/subscriptions/S/resourceGroups/rg.a/providers/Microsoft.Storage/storageAccounts/sa",
            "/providers/Microsoft.Management/managementGroups/mg.1",
        ] {
            assert_eq!(parse_scope(good).unwrap(), good);
        }
        assert!(
            parse_role("/subscriptions/s1/providers/../providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7")
                .unwrap_err()
                .contains("'..' segment")
        );
    }

    #[test]
    fn spec_validation_names_the_unsafe_field() {
        let mut r = raw();
        r.role_assignments.push(RawRoleAssignment {
            identity: U1.into(),
            role: "Reader".into(),
            scope: "/subscriptions/s1/resourceGroups/rg/providers/../../../resourceGroups/prod"
                .into(),
        });
        r.user_assigned_identities.push(
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%2e%2e".into(),
        );
        let errs = r.validate().unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.userAssignedIdentities[1]",
                "spec.roleAssignments[0].scope"
            ]
        );
        assert!(errs[0].message.contains("'%'"), "{}", errs[0].message);
        assert!(
            errs[1].message.contains("'..' segment"),
            "{}",
            errs[1].message
        );
        let mut r = raw();
        r.target = format!("{VM}/..");
        let errs = r.validate().unwrap_err();
        assert_eq!(errs[0].field, "spec.target");
        assert!(
            errs[0].message.contains("'..' segment"),
            "{}",
            errs[0].message
        );
    }
}
