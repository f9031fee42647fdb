//! What ARM answers about role assignments and role definitions, and what a sent write did,
//! as vmidentity reads them. Below `client` (whose caches hold [`RoleDefinitionInfo`]),
//! `authorization`, `graph` and `executor`, which all use these types; it uses none of them.

use serde::Deserialize;
use serde_json::Value;
use vmidentity_planner::policy::{Escalation, PermissionBlock};

pub(crate) const ROLE_ASSIGNMENTS_MARKER: &str =
    "/providers/microsoft.authorization/roleassignments/";

/// A role assignment as ARM describes it (the members vmidentity uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireAssignment")]
pub struct RoleAssignment {
    /// Full id: `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    /// The assignment's name (a GUID).
    pub name: String,
    /// `properties.scope` (derived from `id` when ARM omits it).
    pub scope: String,
    /// `properties.roleDefinitionId`, as ARM spelled it.
    pub role_definition_id: String,
    /// `properties.principalId`.
    pub principal_id: String,
    /// `properties.principalType` (`ServicePrincipal`, `User`, `Group`, …).
    pub principal_type: Option<String>,
}

impl RoleAssignment {
    /// The role definition's GUID (last path segment of `roleDefinitionId`), lower-cased.
    pub fn role_guid(&self) -> String {
        last_segment(&self.role_definition_id).to_ascii_lowercase()
    }

    /// True when this assignment grants `role_guid` at exactly `scope` (case-insensitive,
    /// trailing `/` ignored).
    pub fn matches(&self, scope: &str, role_guid: &str) -> bool {
        same_scope(&self.scope, scope)
            && self
                .role_guid()
                .eq_ignore_ascii_case(last_segment(role_guid))
    }
}

#[derive(Deserialize)]
struct WireAssignment {
    id: String,
    #[serde(default)]
    name: Option<String>,
    properties: WireProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireProperties {
    role_definition_id: String,
    principal_id: String,
    #[serde(default)]
    principal_type: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl TryFrom<WireAssignment> for RoleAssignment {
    type Error = String;

    fn try_from(w: WireAssignment) -> Result<Self, Self::Error> {
        let scope = match w.properties.scope {
            Some(s) if !s.is_empty() => s,
            _ => {
                let lower = w.id.to_ascii_lowercase();
                let idx = lower.rfind(ROLE_ASSIGNMENTS_MARKER).ok_or_else(|| {
                    format!("'{}' is not a role assignment id and has no scope", w.id)
                })?;
                let s = &w.id[..idx];
                if s.is_empty() { "/" } else { s }.to_string()
            }
        };
        let name = w
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| last_segment(&w.id).to_string());
        Ok(RoleAssignment {
            id: w.id,
            name,
            scope,
            role_definition_id: w.properties.role_definition_id,
            principal_id: w.properties.principal_id,
            principal_type: w.properties.principal_type,
        })
    }
}

/// True for the canonical 8-4-4-4-12 hex form.
pub(crate) fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub(crate) fn last_segment(s: &str) -> &str {
    s.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// `{scope}` as a path prefix: leading `/`, no trailing `/`; the root scope is `""`.
pub(crate) fn scope_prefix(scope: &str) -> String {
    let t = scope.trim().trim_end_matches('/');
    if t.is_empty() {
        String::new()
    } else if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    }
}

pub(crate) fn same_scope(a: &str, b: &str) -> bool {
    scope_prefix(a).eq_ignore_ascii_case(&scope_prefix(b))
}

/// What the policy check needs to know about a role definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDefinitionInfo {
    /// Lower-cased GUID.
    pub guid: String,
    pub name: Option<String>,
    /// Its permission blocks, as read.
    pub permissions: Vec<PermissionBlock>,
    /// How its permissions let a holder escalate (an authorization write or an identity
    /// takeover, [`vmidentity_planner::policy::escalation`]); None: they do not.
    pub escalation: Option<Escalation>,
}

/// What one write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// An identity PATCH went through (its long-running operation finished): the target as
    /// ARM answered it (read again when the answer carried no body).
    Identity(Value),
    /// A role assignment PUT: created (201), or already present under the same name (200).
    RoleAssignment(RoleAssignment),
    /// A role assignment PUT answered 409 `RoleAssignmentExists`: the same (scope, role,
    /// principal) exists under another name. The executor listed the principal's
    /// assignments: the existing one, to adopt (None when the listing does not show it).
    RoleAssignmentExists(Option<RoleAssignment>),
    /// A DELETE or a group membership change: done (or already so: a 404 on DELETE, an
    /// "already a member" on add).
    Done,
}

impl Sent {
    /// The ID of the existing assignment a PUT adopted instead of creating its own.
    pub fn adopted(&self) -> Option<&str> {
        match self {
            Sent::RoleAssignmentExists(Some(a)) => Some(&a.id),
            _ => None,
        }
    }
}
