//! Role definitions and role assignments (Microsoft.Authorization, api-version
//! [`AUTHORIZATION_API_VERSION`]) on [`ArmClient`]: same retries, `Retry-After`,
//! per-subscription gates and paging as every other ARM call.
//!
//! Role definitions are compared **by GUID only**: ARM answers `roleDefinitionId` as
//! `/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}` or as
//! `/providers/Microsoft.Authorization/roleDefinitions/{guid}` depending on the endpoint
//! and version, so [`RoleAssignment::role_guid`] is what callers should compare.
//!
//! Role assignment writes are [`Write`](vmidentity_planner::Write)s sent by the
//! [`Executor`](crate::Executor); this module interprets their answers. Names are
//! deterministic ([`assignment_name`], the planner's), which makes a PUT idempotent: a
//! re-sent PUT of the same assignment answers 200, and the same (scope, role, principal)
//! created by someone else under another name answers 409 `RoleAssignmentExists`
//! ([`Sent::RoleAssignmentExists`]: the executor lists the principal's assignments to find
//! it — the 409 body does not name the existing assignment; the controller's engine records
//! it under that name only for an object that adopts, `vmidentity.dev/adopt: "true"`).
//!
//! The api-version ([`AUTHORIZATION_API_VERSION`]), the assignment names and the role
//! definition IDs are the planner's ([`vmidentity_planner::grants`]), defined once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use vmidentity_planner::grants::AUTHORIZATION_API_VERSION;
#[cfg(doc)]
use vmidentity_planner::grants::assignment_name;
use vmidentity_planner::policy::PermissionBlock;

use crate::client::{ArmClient, Response, percent_encode, subscription_of};
use crate::error::AzureError;
// Defined in `records` (below `client` and this module); re-exported here, their historical home.
pub(crate) use crate::records::{
    ROLE_ASSIGNMENTS_MARKER, Sent, is_guid, last_segment, same_scope, scope_prefix,
};
pub use crate::records::{RoleAssignment, RoleDefinitionInfo};

const PROVIDER: &str = "/providers/Microsoft.Authorization";
const ROLE_DEFINITIONS_MARKER: &str = "/providers/microsoft.authorization/roledefinitions/";

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
}

/// Refuses, before a URL is built from it, a role assignment name that is not a GUID (the
/// names vmidentity writes are, [`assignment_name`]).
pub(crate) fn check_put(name: &str) -> Result<(), AzureError> {
    if is_guid(name) {
        Ok(())
    } else {
        Err(AzureError::InvalidArgument {
            message: format!("role assignment name {name:?} is not a GUID"),
        })
    }
}

/// Refuses, before anything is sent, a DELETE of something that is not a role assignment
/// ID (`{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`).
pub(crate) fn check_delete(id: &str) -> Result<(), AzureError> {
    let lower = id.to_ascii_lowercase();
    let valid = id.starts_with('/')
        && !id.contains('?')
        && !id.contains('#')
        && lower.rfind(ROLE_ASSIGNMENTS_MARKER).is_some_and(|i| {
            let name = &id[i + ROLE_ASSIGNMENTS_MARKER.len()..];
            !name.is_empty() && !name.contains('/')
        });
    if valid {
        Ok(())
    } else {
        Err(AzureError::InvalidArgument {
            message: format!("'{id}' is not a role assignment id"),
        })
    }
}

/// The answer to a role assignment PUT at `scope` (sent to `url`).
///
/// 200/201 → [`Sent::RoleAssignment`]; when ARM answers with another `properties.scope`
/// than `scope` (compared case-insensitively, trailing `/` ignored) the answer is
/// [`AzureError::ScopeMismatch`] instead: the assignment is not where it was asked for, and
/// must not be recorded as such. 409 `RoleAssignmentExists` (the same scope, role and
/// principal under another name) → the principal's assignments in the scope's subscription
/// are listed and the one granting `role_definition_id` at exactly `scope` is returned to
/// be adopted ([`Sent::RoleAssignmentExists`]). A principal ARM cannot see yet answers 400
/// `PrincipalNotFound`: class `PrincipalNotReplicated`, retryable (send `principalType`
/// for principals created moments ago). Other failures are classified errors.
pub(crate) async fn put_answer(
    arm: &ArmClient,
    url: &str,
    scope: &str,
    role_definition_id: &str,
    principal_id: &str,
    sent: Result<Response, AzureError>,
) -> Result<Sent, AzureError> {
    match sent {
        Ok(resp) => {
            let a: RoleAssignment = serde_json::from_value(resp.body)
                .map_err(|e| invalid(url, format!("HTTP {} role assignment: {e}", resp.status)))?;
            check_scope_echo(url, scope, &a)?;
            Ok(Sent::RoleAssignment(a))
        }
        Err(e) if e.status() == Some(409) && e.code() == Some("RoleAssignmentExists") => {
            let sub = subscription_of(scope).unwrap_or_default();
            let existing = arm
                .list_role_assignments_for_principal(&sub, principal_id)
                .await?
                .into_iter()
                .find(|ra| ra.matches(scope, role_definition_id));
            Ok(Sent::RoleAssignmentExists(existing))
        }
        Err(e) => Err(e),
    }
}

/// The answer to a role assignment DELETE: 200, 204 (already gone) and 404 are success.
pub(crate) fn delete_answer(sent: Result<Response, AzureError>) -> Result<Sent, AzureError> {
    match sent {
        Ok(_) => Ok(Sent::Done),
        Err(e) if e.status() == Some(404) => Ok(Sent::Done),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
