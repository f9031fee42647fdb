//! Role definitions and role assignments (Microsoft.Authorization, api-version
//! [`AUTHORIZATION_API_VERSION`]) on [`ArmClient`]: same retries, `Retry-After`,
//! per-subscription gates and paging as every other ARM call.
//!
//! Role definitions are compared **by GUID only**: ARM answers `roleDefinitionId` as
//! `/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}` or as
//! `/providers/Microsoft.Authorization/roleDefinitions/{guid}` depending on the endpoint
//! and version, so [`RoleAssignment::role_guid`] is what callers should compare.
//!
//! Role assignment names are deterministic ([`assignment_name`]), which makes a PUT
//! idempotent: a re-sent PUT of the same assignment answers 200, and the same
//! (scope, role, principal) created by someone else under another name answers 409
//! `RoleAssignmentExists` ([`PutRoleAssignment::Exists`]; list the principal's assignments
//! to adopt it — the 409 body does not name the existing assignment).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use uuid::Uuid;
use vmidentity_planner::policy::{Escalation, PermissionBlock};

use crate::client::{ArmClient, RequestKind, percent_encode, subscription_of};
use crate::error::AzureError;

/// The Microsoft.Authorization api-version used for role definitions and assignments.
pub const AUTHORIZATION_API_VERSION: &str = "2022-04-01";

/// Namespace of [`assignment_name`]'s UUIDv5 (vmidentity's own; never change it: names of
/// existing assignments are derived from it).
pub const ASSIGNMENT_NAME_NAMESPACE: Uuid =
    Uuid::from_u128(0x6d1c_57a0_2a3c_4c6e_9f0b_7e5d_1a2b_3c4d);

const PROVIDER: &str = "/providers/Microsoft.Authorization";
const ROLE_DEFINITIONS_MARKER: &str = "/providers/microsoft.authorization/roledefinitions/";
const ROLE_ASSIGNMENTS_MARKER: &str = "/providers/microsoft.authorization/roleassignments/";

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

/// What a role-assignment PUT did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRoleAssignment {
    /// Created (201), or already present under the same name (200).
    Created(RoleAssignment),
    /// 409 `RoleAssignmentExists`: the same (scope, role, principal) exists under another
    /// name. ARM does not say which; list the principal's assignments to adopt it.
    Exists,
}

/// The deterministic name (a GUID) of the assignment of `role_guid` to `principal_id` at
/// `scope`: UUIDv5 in [`ASSIGNMENT_NAME_NAMESPACE`] over exactly
/// `format!("{}|{}|{}", scope.to_ascii_lowercase(), role_guid.to_ascii_lowercase(), principal_id.to_ascii_lowercase())`
/// (no other normalisation: pass the scope without a trailing `/` and the role as a bare
/// GUID). The planner computes the same string; keep both in step.
pub fn assignment_name(scope: &str, role_guid: &str, principal_id: &str) -> String {
    let input = format!(
        "{}|{}|{}",
        scope.to_ascii_lowercase(),
        role_guid.to_ascii_lowercase(),
        principal_id.to_ascii_lowercase()
    );
    Uuid::new_v5(&ASSIGNMENT_NAME_NAMESPACE, input.as_bytes()).to_string()
}

/// The `roleDefinitionId` to send in a PUT for `role_guid` at `scope`:
/// `/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}` when
/// the scope lies in a subscription (`scope` may also be a bare subscription id), else
/// (management group, root) `/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
pub fn role_definition_id(scope: &str, role_guid: &str) -> String {
    let guid = last_segment(role_guid).to_ascii_lowercase();
    let scope = scope.trim();
    let sub = if !scope.is_empty() && !scope.contains('/') {
        Some(scope.to_ascii_lowercase())
    } else {
        subscription_of(scope)
    };
    match sub {
        Some(sub) => format!("/subscriptions/{sub}{PROVIDER}/roleDefinitions/{guid}"),
        None => format!("{PROVIDER}/roleDefinitions/{guid}"),
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

fn last_segment(s: &str) -> &str {
    s.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// `{scope}` as a path prefix: leading `/`, no trailing `/`; the root scope is `""`.
fn scope_prefix(scope: &str) -> String {
    let t = scope.trim().trim_end_matches('/');
    if t.is_empty() {
        String::new()
    } else if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    }
}

fn same_scope(a: &str, b: &str) -> bool {
    scope_prefix(a).eq_ignore_ascii_case(&scope_prefix(b))
}

/// OData string literal content: single quotes doubled.
fn odata_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Cache key of a role name: the scope's subscription (or the scope itself for
/// management-group / root scopes) and the name, case-folded.
fn role_cache_key(scope: &str, role: &str) -> String {
    let at = match subscription_of(scope) {
        Some(sub) => format!("/subscriptions/{sub}"),
        None => scope_prefix(scope).to_ascii_lowercase(),
    };
    format!("{at}|{}", role.to_ascii_lowercase())
}

/// The scope ARM answered a PUT with must be the one requested: a mismatch means the
/// assignment landed elsewhere (a path resolved on the way), and recording the requested
/// scope would never match the live one again.
fn check_scope_echo(url: &str, requested: &str, a: &RoleAssignment) -> Result<(), AzureError> {
    if same_scope(&a.scope, requested) {
        Ok(())
    } else {
        Err(AzureError::ScopeMismatch {
            url: url.to_string(),
            requested: requested.to_string(),
            applied: a.scope.clone(),
            id: a.id.clone(),
        })
    }
}

fn invalid(url: &str, message: String) -> AzureError {
    AzureError::InvalidResponse {
        url: url.to_string(),
        message,
    }
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

/// A cached value read less than `ttl` ago.
fn cache_get<V: Clone>(
    cache: &Mutex<HashMap<String, (Instant, V)>>,
    key: &str,
    ttl: Duration,
) -> Option<V> {
    let c = cache.lock().ok()?;
    let (at, v) = c.get(key)?;
    (at.elapsed() < ttl).then(|| v.clone())
}

/// Caches `v` (unless `ttl` is zero), dropping the entries that have expired.
fn cache_put<V>(cache: &Mutex<HashMap<String, (Instant, V)>>, key: String, v: V, ttl: Duration) {
    if ttl.is_zero() {
        return;
    }
    if let Ok(mut c) = cache.lock() {
        c.retain(|_, (at, _)| at.elapsed() < ttl);
        c.insert(key, (Instant::now(), v));
    }
}

/// The permission blocks of a role definition answer (`properties.permissions`), all four
/// lists of each. Anything else than an array of objects whose lists are arrays of strings is
/// malformed: the caller cannot judge the role and must not guess.
fn permission_blocks(body: &Value) -> Result<Vec<PermissionBlock>, String> {
    let blocks = body
        .pointer("/properties/permissions")
        .and_then(Value::as_array)
        .ok_or("the answer has no properties.permissions array")?;
    let list = |b: &Value, i: usize, name: &str| -> Result<Vec<String>, String> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        format!("properties.permissions[{i}].{name} holds a non-string: {x}")
                    })
                })
                .collect(),
            Some(other) => Err(format!(
                "properties.permissions[{i}].{name} is not an array: {other}"
            )),
        }
    };
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if !b.is_object() {
                return Err(format!("properties.permissions[{i}] is not an object"));
            }
            Ok(PermissionBlock {
                actions: list(b, i, "actions")?,
                not_actions: list(b, i, "notActions")?,
                data_actions: list(b, i, "dataActions")?,
                not_data_actions: list(b, i, "notDataActions")?,
            })
        })
        .collect()
}

impl ArmClient {
    /// A role given as a name (built-in or custom, case-insensitive), a GUID or a full
    /// role definition id → its GUID, lower-cased. Names are looked up with
    /// `GET {scope}/providers/Microsoft.Authorization/roleDefinitions?$filter=roleName eq '…'`
    /// and cached per (subscription of the scope, or the scope itself outside
    /// subscriptions; name) in the client, shared by its clones, for
    /// [`ClientConfig::role_cache_ttl`](crate::ClientConfig::role_cache_ttl) (a renamed or
    /// re-created custom role is then looked up again). An unknown name →
    /// [`AzureError::RoleNotFound`] (class `RoleNotFound`, not cached).
    pub async fn resolve_role(&self, scope: &str, role: &str) -> Result<String, AzureError> {
        let role = role.trim();
        let not_found = || AzureError::RoleNotFound {
            role: role.to_string(),
            scope: scope.to_string(),
        };
        if is_guid(role) {
            return Ok(role.to_ascii_lowercase());
        }
        if role.contains('/') {
            let guid = last_segment(role);
            return if role.to_ascii_lowercase().contains(ROLE_DEFINITIONS_MARKER) && is_guid(guid) {
                Ok(guid.to_ascii_lowercase())
            } else {
                Err(not_found())
            };
        }
        if role.is_empty() {
            return Err(not_found());
        }
        let key = role_cache_key(scope, role);
        let ttl = self.config().role_cache_ttl;
        if let Some(g) = cache_get(&self.role_cache, &key, ttl) {
            return Ok(g);
        }
        let url = format!(
            "{}&$filter={}",
            self.url(
                &format!("{}{PROVIDER}/roleDefinitions", scope_prefix(scope)),
                AUTHORIZATION_API_VERSION
            )?,
            percent_encode(&format!("roleName eq {}", odata_quote(role)))
        );
        let defs = self.get_all_pages(&url, "nextLink").await?;
        let guid = defs
            .iter()
            .filter(|d| {
                d.pointer("/properties/roleName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(role))
            })
            .find_map(|d| {
                d.get("name")
                    .and_then(Value::as_str)
                    .filter(|n| is_guid(n))
                    .or_else(|| {
                        d.get("id")
                            .and_then(Value::as_str)
                            .map(last_segment)
                            .filter(|n| is_guid(n))
                    })
                    .map(str::to_ascii_lowercase)
            })
            .ok_or_else(not_found)?;
        cache_put(&self.role_cache, key, guid.clone(), ttl);
        Ok(guid)
    }

    /// The definition of a role given as a name, GUID or definition ID, as the policy check
    /// needs it: GUID, name, permission blocks and whether they let a holder escalate
    /// ([`vmidentity_planner::policy::escalation`]). Names go through [`Self::resolve_role`];
    /// the definition is read with
    /// `GET {sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}` and cached like
    /// role names, for [`ClientConfig::role_cache_ttl`](crate::ClientConfig::role_cache_ttl):
    /// a custom role edited in Azure is judged again once its entry expires.
    ///
    /// A 404 → [`AzureError::RoleNotFound`]. An answer that is not a role definition of that
    /// GUID with well-formed permission blocks → [`AzureError::InvalidResponse`] (never read
    /// as "no permissions": the caller fails closed).
    pub async fn role_definition(
        &self,
        scope: &str,
        role: &str,
    ) -> Result<RoleDefinitionInfo, AzureError> {
        let guid = self.resolve_role(scope, role).await?;
        let key = role_cache_key(scope, &format!("definition:{guid}"));
        let ttl = self.config().role_cache_ttl;
        if let Some(hit) = cache_get(&self.role_def_cache, &key, ttl) {
            return Ok(hit);
        }
        let at = match subscription_of(scope) {
            Some(sub) => format!("/subscriptions/{sub}"),
            None => scope_prefix(scope),
        };
        let path = format!("{at}{PROVIDER}/roleDefinitions/{guid}");
        let body = match self.get(&path, AUTHORIZATION_API_VERSION).await {
            Ok(b) => b,
            Err(e) if e.status() == Some(404) => {
                return Err(AzureError::RoleNotFound {
                    role: role.to_string(),
                    scope: scope.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        let malformed = |why: String| invalid(&path, format!("role definition {guid}: {why}"));
        if let Some(name) = body.get("name").and_then(Value::as_str)
            && !name.eq_ignore_ascii_case(&guid)
        {
            return Err(malformed(format!("the answer is the definition of {name}")));
        }
        let permissions = permission_blocks(&body).map_err(malformed)?;
        let info = RoleDefinitionInfo {
            guid,
            name: body
                .pointer("/properties/roleName")
                .and_then(Value::as_str)
                .map(str::to_string),
            escalation: vmidentity_planner::policy::escalation(&permissions),
            permissions,
        };
        cache_put(&self.role_def_cache, key, info.clone(), ttl);
        Ok(info)
    }

    /// Every role assignment of `principal_id` in the subscription (at, above and below
    /// the subscription scope): `GET /subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments?$filter=principalId eq '{id}'`,
    /// following `nextLink`.
    pub async fn list_role_assignments_for_principal(
        &self,
        subscription_id: &str,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, AzureError> {
        let url = format!(
            "{}&$filter={}",
            self.url(
                &format!(
                    "/subscriptions/{}{PROVIDER}/roleAssignments",
                    percent_encode(subscription_id)
                ),
                AUTHORIZATION_API_VERSION
            )?,
            percent_encode(&format!("principalId eq {}", odata_quote(principal_id)))
        );
        let items = self.get_all_pages(&url, "nextLink").await?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let a: RoleAssignment = serde_json::from_value(item)
                .map_err(|e| invalid(&url, format!("role assignment: {e}")))?;
            if a.principal_id.eq_ignore_ascii_case(principal_id) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{name}` with
    /// `{"properties":{"roleDefinitionId","principalId"[,"principalType"]}}`. Send
    /// `principal_type` (e.g. `ServicePrincipal`) for principals created moments ago:
    /// without it ARM looks the principal up and may answer `PrincipalNotFound` (class
    /// `PrincipalNotReplicated`, retryable) until Entra has replicated it.
    /// 200/201 → [`PutRoleAssignment::Created`]; 409 `RoleAssignmentExists` →
    /// [`PutRoleAssignment::Exists`]; other failures are classified errors.
    ///
    /// Refused without sending: a `name` that is not a GUID, a scope with `.`/`..`/empty
    /// segments, `%`, `\`, `?`, `#` or control characters ([`ArmClient::url`]). When ARM
    /// answers with another `properties.scope` than `scope` (compared case-insensitively,
    /// trailing `/` ignored), the answer is [`AzureError::ScopeMismatch`], not `Created`:
    /// the assignment is not where it was asked for, and must not be recorded as such.
    pub async fn put_role_assignment(
        &self,
        scope: &str,
        name: &str,
        role_guid: &str,
        principal_id: &str,
        principal_type: Option<&str>,
    ) -> Result<PutRoleAssignment, AzureError> {
        let mut props = Map::new();
        props.insert(
            "roleDefinitionId".into(),
            Value::String(role_definition_id(scope, role_guid)),
        );
        props.insert("principalId".into(), Value::String(principal_id.into()));
        if let Some(t) = principal_type {
            props.insert("principalType".into(), Value::String(t.into()));
        }
        let mut body = Map::new();
        body.insert("properties".into(), Value::Object(props));
        let body = Value::Object(body);
        if !is_guid(name) {
            return Err(AzureError::InvalidArgument {
                message: format!("role assignment name {name:?} is not a GUID"),
            });
        }
        let url = self.url(
            &format!("{}{PROVIDER}/roleAssignments/{name}", scope_prefix(scope)),
            AUTHORIZATION_API_VERSION,
        )?;
        match self
            .send(Method::PUT, &url, Some(&body), RequestKind::Write)
            .await
        {
            Ok(resp) => {
                let a: RoleAssignment = serde_json::from_value(resp.body).map_err(|e| {
                    invalid(&url, format!("HTTP {} role assignment: {e}", resp.status))
                })?;
                check_scope_echo(&url, scope, &a)?;
                Ok(PutRoleAssignment::Created(a))
            }
            Err(e) if e.status() == Some(409) && e.code() == Some("RoleAssignmentExists") => {
                Ok(PutRoleAssignment::Exists)
            }
            Err(e) => Err(e),
        }
    }

    /// `DELETE {id}` of a role assignment by its full id. 200, 204 (already gone) and
    /// 404 are success. Refuses (without sending anything) an id that is not a role
    /// assignment id.
    pub async fn delete_role_assignment(&self, id: &str) -> Result<(), AzureError> {
        let lower = id.to_ascii_lowercase();
        let valid = id.starts_with('/')
            && !id.contains('?')
            && !id.contains('#')
            && lower.rfind(ROLE_ASSIGNMENTS_MARKER).is_some_and(|i| {
                let name = &id[i + ROLE_ASSIGNMENTS_MARKER.len()..];
                !name.is_empty() && !name.contains('/')
            });
        if !valid {
            return Err(AzureError::InvalidArgument {
                message: format!("'{id}' is not a role assignment id"),
            });
        }
        let url = self.url(id, AUTHORIZATION_API_VERSION)?;
        match self
            .send(Method::DELETE, &url, None, RequestKind::Delete)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic() {
        let a = assignment_name(
            "/subscriptions/S/resourceGroups/RG",
            "ACDD72A7-3385-48EF-BD42-F606FBA81AE7",
            "P",
        );
        let b = assignment_name(
            "/subscriptions/s/resourcegroups/rg",
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "p",
        );
        assert_eq!(a, b);
        assert!(is_guid(&a));
        let expected = Uuid::new_v5(
            &Uuid::from_u128(0x6d1c_57a0_2a3c_4c6e_9f0b_7e5d_1a2b_3c4d),
            b"/subscriptions/s/resourcegroups/rg|acdd72a7-3385-48ef-bd42-f606fba81ae7|p",
        );
        assert_eq!(a, expected.to_string());
        assert_ne!(
            a,
            assignment_name(
                "/subscriptions/s",
                "acdd72a7-3385-48ef-bd42-f606fba81ae7",
                "p"
            )
        );
    }

    #[test]
    fn role_definition_ids() {
        let g = "ACDD72A7-3385-48EF-BD42-F606FBA81AE7";
        assert_eq!(
            role_definition_id("/subscriptions/SUB/resourceGroups/rg", g),
            "/subscriptions/sub/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        );
        assert_eq!(
            role_definition_id("sub", g),
            "/subscriptions/sub/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        );
        assert_eq!(
            role_definition_id("/providers/Microsoft.Management/managementGroups/mg", g),
            "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        );
        assert_eq!(
            role_definition_id("/", g),
            "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        );
    }

    #[test]
    fn parses_assignments_and_compares_by_guid() {
        let v = serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/n1",
            "name": "n1",
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "roleDefinitionId": "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/ACDD72A7-3385-48EF-BD42-F606FBA81AE7",
                "principalId": "p",
                "principalType": "ServicePrincipal",
                "scope": "/subscriptions/s/resourceGroups/rg"
            }
        });
        let a: RoleAssignment = serde_json::from_value(v).unwrap();
        assert_eq!(a.role_guid(), "acdd72a7-3385-48ef-bd42-f606fba81ae7");
        assert!(a.matches(
            "/subscriptions/S/resourcegroups/RG/",
            "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        ));
        assert!(!a.matches("/subscriptions/s", "acdd72a7-3385-48ef-bd42-f606fba81ae7"));
        // No scope, no name: derived from the id.
        let v = serde_json::json!({
            "id": "/subscriptions/s/providers/Microsoft.Authorization/roleAssignments/n2",
            "properties": {"roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/x", "principalId": "p"}
        });
        let a: RoleAssignment = serde_json::from_value(v).unwrap();
        assert_eq!(a.scope, "/subscriptions/s");
        assert_eq!(a.name, "n2");
        assert_eq!(a.principal_type, None);
    }

    #[test]
    fn the_scope_arm_answers_must_be_the_one_requested() {
        let answer = |scope: &str| -> RoleAssignment {
            serde_json::from_value(serde_json::json!({
                "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignments/n1"),
                "properties": {
                    "roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/x",
                    "principalId": "p",
                    "scope": scope
                }
            }))
            .unwrap()
        };
        let requested = "/subscriptions/S/resourceGroups/rg-a";
        // Case and a trailing '/' do not matter.
        check_scope_echo(
            "u",
            requested,
            &answer("/subscriptions/s/resourcegroups/RG-A/"),
        )
        .unwrap();
        let err = check_scope_echo(
            "u",
            requested,
            &answer("/subscriptions/S/resourceGroups/rg-prod"),
        )
        .unwrap_err();
        assert!(matches!(err, AzureError::ScopeMismatch { .. }), "{err:?}");
        assert_eq!(err.class(), crate::ErrorClass::Invalid);
        let msg = err.to_string();
        assert!(msg.contains("differs from the one requested"), "{msg}");
        assert!(msg.contains("rg-prod") && msg.contains("rg-a"), "{msg}");
        // A scope derived from the id (ARM omitted properties.scope) is checked too.
        let a: RoleAssignment = serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/S/resourceGroups/rg-prod/providers/Microsoft.Authorization/roleAssignments/n1",
            "properties": {"roleDefinitionId": "x", "principalId": "p"}
        }))
        .unwrap();
        assert!(check_scope_echo("u", requested, &a).is_err());
    }

    #[test]
    fn filters_and_cache_keys() {
        assert_eq!(odata_quote("O'Brien"), "'O''Brien'");
        assert_eq!(
            percent_encode(&format!("roleName eq {}", odata_quote("O'Brien"))),
            "roleName%20eq%20%27O%27%27Brien%27"
        );
        assert_eq!(
            role_cache_key("/subscriptions/S/resourceGroups/a", "Reader"),
            role_cache_key("/subscriptions/s/resourceGroups/b/", "reader")
        );
        assert_eq!(
            role_cache_key(
                "/providers/Microsoft.Management/managementGroups/MG",
                "Reader"
            ),
            "/providers/microsoft.management/managementgroups/mg|reader"
        );
        assert_eq!(scope_prefix("/"), "");
        assert_eq!(scope_prefix("subscriptions/s/"), "/subscriptions/s");
    }
}
