//! Microsoft.Authorization (api-version 2022-04-01): role definitions and role
//! assignments. Spec: `specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/`
//! (`authorization-RoleAssignmentsCalls.json`, `authorization-RoleDefinitionsCalls.json` and
//! their examples) in Azure/azure-rest-api-specs; error codes and messages: "Troubleshoot
//! Azure RBAC" (<https://learn.microsoft.com/azure/role-based-access-control/troubleshooting>)
//! and captured ARM responses (see the simulator's README.md for each rule's source).

use std::collections::BTreeMap;

use axum::http::{HeaderName, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::CallerConfig;
use crate::directory::is_guid;
use crate::errors::ArmError;
use crate::scope::{Scope, ScopeLevel, at_or_above};
use crate::server::{ArmResponse, api_version_error, query_decoded};
use crate::state::{State, now_rfc3339};

/// Microsoft.Authorization api-versions served for role assignments / definitions.
pub const AUTHORIZATION_API_VERSIONS: &[&str] = &[
    "2015-07-01",
    "2018-01-01-preview",
    "2018-09-01-preview",
    "2020-04-01-preview",
    "2020-10-01-preview",
    "2022-04-01",
];

/// Role assignments per subscription ("Troubleshoot Azure RBAC limits",
/// <https://learn.microsoft.com/azure/role-based-access-control/troubleshoot-limits>).
pub const DEFAULT_ROLE_ASSIGNMENT_LIMIT: usize = 4000;
/// Role assignments per management group (same page).
pub const MANAGEMENT_GROUP_ROLE_ASSIGNMENT_LIMIT: usize = 500;

const RA_TYPE: &str = "Microsoft.Authorization/roleAssignments";
const RD_TYPE: &str = "Microsoft.Authorization/roleDefinitions";

/// A role definition's permission block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedPermission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

/// A role definition (built-in or custom).
#[derive(Debug, Clone)]
pub(crate) struct RoleDefinition {
    /// Case-folded GUID (the definition's `name`).
    pub guid: String,
    pub role_name: String,
    pub description: String,
    pub builtin: bool,
    pub permissions: Vec<SeedPermission>,
    /// Case-folded assignable scopes (`/` for built-in roles).
    pub assignable_scopes: Vec<String>,
    pub assignable_scopes_raw: Vec<String>,
}

impl RoleDefinition {
    /// Visible (and assignable) at the scope: built-in roles everywhere, custom roles at
    /// and below their assignable scopes.
    pub fn visible_at(&self, scope_key: &str) -> bool {
        self.assignable_scopes
            .iter()
            .any(|a| at_or_above(a, scope_key))
    }

    /// Rendered as `GetRoleDefinitionByName.json` shows it. The id is
    /// `/subscriptions/{sub}/providers/…/{guid}` when the request scope lies in a
    /// subscription, else `/providers/…/{guid}` (CHOSEN).
    pub fn render(&self, scope: &Scope) -> Value {
        let prefix = scope
            .subscription()
            .map(|s| format!("/subscriptions/{s}"))
            .unwrap_or_default();
        json!({
            "properties": {
                "roleName": self.role_name,
                "type": if self.builtin { "BuiltInRole" } else { "CustomRole" },
                "description": self.description,
                "assignableScopes": self.assignable_scopes_raw,
                "permissions": self.permissions,
            },
            "id": format!("{prefix}/providers/{RD_TYPE}/{}", self.guid),
            "type": RD_TYPE,
            "name": self.guid,
        })
    }
}

fn perm(actions: &[&str], not_actions: &[&str], data: &[&str]) -> SeedPermission {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    SeedPermission {
        actions: v(actions),
        not_actions: v(not_actions),
        data_actions: v(data),
        not_data_actions: Vec::new(),
    }
}

/// Built-in roles present in every world: real GUIDs and names; `actions` abbreviated to
/// the characteristic entries (CHOSEN).
pub(crate) fn builtin_roles() -> Vec<RoleDefinition> {
    let table: Vec<(&str, &str, &str, SeedPermission)> = vec![
        (
            "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            "Owner",
            "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
            perm(&["*"], &[], &[]),
        ),
        (
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            "Contributor",
            "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC, manage assignments in Azure Blueprints, or share image galleries.",
            perm(
                &["*"],
                &[
                    "Microsoft.Authorization/*/Delete",
                    "Microsoft.Authorization/*/Write",
                    "Microsoft.Authorization/elevateAccess/Action",
                    "Microsoft.Blueprint/blueprintAssignments/write",
                    "Microsoft.Blueprint/blueprintAssignments/delete",
                    "Microsoft.Compute/galleries/share/action",
                ],
                &[],
            ),
        ),
        (
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "Reader",
            "View all resources, but does not allow you to make any changes.",
            perm(&["*/read"], &[], &[]),
        ),
        (
            "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
            "User Access Administrator",
            "Lets you manage user access to Azure resources.",
            perm(
                &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
                &[],
                &[],
            ),
        ),
        (
            "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
            "Role Based Access Control Administrator",
            "Manage access to Azure resources by assigning roles using Azure RBAC. This role does not allow you to manage access using other ways, such as Azure Policy.",
            perm(
                &[
                    "Microsoft.Authorization/roleAssignments/write",
                    "Microsoft.Authorization/roleAssignments/delete",
                    "*/read",
                    "Microsoft.Support/*",
                ],
                &[],
                &[],
            ),
        ),
        (
            "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
            "Storage Blob Data Reader",
            "Read and list Azure Storage containers and blobs.",
            perm(
                &[
                    "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                    "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
                ],
                &[],
                &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
            ),
        ),
        (
            "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
            "Storage Blob Data Contributor",
            "Read, write, and delete Azure Storage containers and blobs.",
            perm(
                &[
                    "Microsoft.Storage/storageAccounts/blobServices/containers/delete",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/write",
                    "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
                ],
                &[],
                &[
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action",
                    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
                ],
            ),
        ),
        (
            "4633458b-17de-408a-b874-0445c86b69e6",
            "Key Vault Secrets User",
            "Read secret contents. Only works for key vaults that use the 'Azure role-based access control' permission model.",
            perm(
                &[],
                &[],
                &[
                    "Microsoft.KeyVault/vaults/secrets/getSecret/action",
                    "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
                ],
            ),
        ),
        (
            "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
            "Virtual Machine Contributor",
            "Create and manage virtual machines, manage disks, install and run software, reset password of the root user of the virtual machine using VM extensions, and manage local user accounts using VM extensions. This role does not grant you management access to the virtual network or storage account the virtual machines are connected to. This role does not allow you to assign roles in Azure RBAC.",
            perm(
                &[
                    "Microsoft.Authorization/*/read",
                    "Microsoft.Compute/virtualMachines/*",
                    "Microsoft.Compute/virtualMachineScaleSets/*",
                    "Microsoft.Compute/disks/*",
                    "Microsoft.Network/networkInterfaces/*",
                    "Microsoft.Resources/subscriptions/resourceGroups/read",
                    "Microsoft.Support/*",
                ],
                &[],
                &[],
            ),
        ),
        (
            "f1a07417-d97a-45cb-824c-7a7467783830",
            "Managed Identity Operator",
            "Read and Assign User Assigned Identity",
            perm(
                &[
                    "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
                    "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
                    "Microsoft.Authorization/*/read",
                    "Microsoft.Insights/alertRules/*",
                    "Microsoft.Resources/subscriptions/resourceGroups/read",
                    "Microsoft.Resources/deployments/*",
                    "Microsoft.Support/*",
                ],
                &[],
                &[],
            ),
        ),
        (
            "3913510d-42f4-4e42-8a64-420c390055eb",
            "Monitoring Metrics Publisher",
            "Enables publishing metrics against Azure resources",
            perm(
                &[
                    "Microsoft.Insights/Register/Action",
                    "Microsoft.Support/*",
                    "Microsoft.Resources/subscriptions/resourceGroups/read",
                ],
                &[],
                &[
                    "Microsoft.Insights/Metrics/Write",
                    "Microsoft.Insights/Telemetry/Write",
                ],
            ),
        ),
    ];
    table
        .into_iter()
        .map(|(guid, name, desc, p)| RoleDefinition {
            guid: guid.to_string(),
            role_name: name.to_string(),
            description: desc.to_string(),
            builtin: true,
            permissions: vec![p],
            assignable_scopes: vec!["/".into()],
            assignable_scopes_raw: vec!["/".into()],
        })
        .collect()
}

/// A role assignment.
#[derive(Debug, Clone)]
pub(crate) struct RoleAssignment {
    /// The name (GUID) as first given.
    pub name: String,
    pub scope: Scope,
    /// Case-folded role definition GUID.
    pub role_guid: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: Option<String>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub created_on: String,
    pub updated_on: String,
    pub created_by: Option<String>,
    /// Creation order (list order).
    pub seq: u64,
}

impl RoleAssignment {
    pub fn id(&self) -> String {
        format!("{}/providers/{RA_TYPE}/{}", self.scope.prefix(), self.name)
    }

    /// Rendered as the 2022-04-01 examples show it; `roleDefinitionId` is the tenant-level
    /// form `/providers/Microsoft.Authorization/roleDefinitions/{guid}` exactly as in every
    /// example response (CHOSEN: clients should compare role definitions by GUID).
    pub fn render(&self) -> Value {
        let mut p = Map::new();
        p.insert(
            "roleDefinitionId".into(),
            json!(format!("/providers/{RD_TYPE}/{}", self.role_guid)),
        );
        p.insert("principalId".into(), json!(self.principal_id));
        p.insert("principalType".into(), json!(self.principal_type));
        p.insert("scope".into(), json!(self.scope.raw));
        if let Some(d) = &self.description {
            p.insert("description".into(), json!(d));
        }
        if let Some(c) = &self.condition {
            p.insert("condition".into(), json!(c));
            p.insert("conditionVersion".into(), json!(self.condition_version));
        }
        p.insert("createdOn".into(), json!(self.created_on));
        p.insert("updatedOn".into(), json!(self.updated_on));
        p.insert("createdBy".into(), json!(self.created_by));
        p.insert("updatedBy".into(), json!(self.created_by));
        json!({
            "properties": Value::Object(p),
            "id": self.id(),
            "type": RA_TYPE,
            "name": self.name,
        })
    }
}

/// Role definitions and assignments of a world.
#[derive(Debug, Clone)]
pub(crate) struct Authorization {
    pub definitions: BTreeMap<String, RoleDefinition>,
    /// By case-folded name: names are globally unique ("Troubleshoot Azure RBAC",
    /// <https://learn.microsoft.com/azure/role-based-access-control/troubleshooting>).
    pub assignments: BTreeMap<String, RoleAssignment>,
    pub next_seq: u64,
}

impl Default for Authorization {
    fn default() -> Self {
        Authorization {
            definitions: builtin_roles()
                .into_iter()
                .map(|d| (d.guid.clone(), d))
                .collect(),
            assignments: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

/// What an authorization path addresses.
#[derive(Debug, Clone)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum AuthzTarget {
    RoleAssignments,
    RoleAssignment(String),
    RoleDefinitions,
    RoleDefinition(String),
}

const AUTHZ_MARKER: &str = "/providers/microsoft.authorization/";

/// Splits `{scope}/providers/Microsoft.Authorization/{roleAssignments|roleDefinitions}[/{name}]`.
/// `Some((None, target))` when the scope part is not a valid scope.
pub(crate) fn parse_path(path: &str) -> Option<(Option<Scope>, AuthzTarget)> {
    let lower = path.to_ascii_lowercase();
    let idx = lower.rfind(AUTHZ_MARKER)?;
    let rest = path[idx + AUTHZ_MARKER.len()..].trim_end_matches('/');
    let segs: Vec<&str> = rest.split('/').collect();
    let target = match segs.as_slice() {
        [t] if t.eq_ignore_ascii_case("roleAssignments") => AuthzTarget::RoleAssignments,
        [t, n] if t.eq_ignore_ascii_case("roleAssignments") && !n.is_empty() => {
            AuthzTarget::RoleAssignment(n.to_string())
        }
        [t] if t.eq_ignore_ascii_case("roleDefinitions") => AuthzTarget::RoleDefinitions,
        [t, n] if t.eq_ignore_ascii_case("roleDefinitions") && !n.is_empty() => {
            AuthzTarget::RoleDefinition(n.to_string())
        }
        _ => return None,
    };
    Some((Scope::parse(&path[..idx]), target))
}

/// Parses a role definition id (`[{scope}]/providers/Microsoft.Authorization/roleDefinitions/{guid}`)
/// and returns the case-folded GUID.
pub(crate) fn role_guid_of(id: &str) -> Option<String> {
    match parse_path(id) {
        Some((Some(_), AuthzTarget::RoleDefinition(g))) if is_guid(&g) => {
            Some(g.to_ascii_lowercase())
        }
        _ => None,
    }
}

pub(crate) fn check_api_version(v: Option<&str>, type_name: &str) -> Result<(), ArmError> {
    match v {
        Some(v)
            if AUTHORIZATION_API_VERSIONS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(v)) =>
        {
            Ok(())
        }
        other => Err(api_version_error(
            other,
            AUTHORIZATION_API_VERSIONS,
            type_name,
            "global",
        )),
    }
}

/// Entry point for authorization routes.
pub(crate) fn dispatch(
    st: &mut State,
    method: &Method,
    scope: Option<&Scope>,
    target: &AuthzTarget,
    query: Option<&str>,
    body: Option<&Value>,
    caller: &CallerConfig,
) -> Result<ArmResponse, ArmError> {
    // api-version and body syntax were checked by the caller (server::dispatch).
    let Some(scope) = scope else {
        return Err(ArmError::bad_request(
            "InvalidScope",
            "The scope of the request is not valid. Valid scopes are '/', '/providers/Microsoft.Management/managementGroups/{name}', '/subscriptions/{subscriptionId}', '/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}' and resource ids.",
        ));
    };
    match (method.clone(), target) {
        (Method::GET, AuthzTarget::RoleDefinitions) => list_definitions(st, scope, query),
        (Method::GET, AuthzTarget::RoleDefinition(g)) => get_definition(st, scope, g),
        (Method::GET, AuthzTarget::RoleAssignments) => list_assignments(st, scope, query),
        (Method::GET, AuthzTarget::RoleAssignment(n)) => get_assignment(st, scope, n),
        (Method::PUT, AuthzTarget::RoleAssignment(n)) => put_assignment(st, scope, n, body, caller),
        (Method::DELETE, AuthzTarget::RoleAssignment(n)) => delete_assignment(st, scope, n, caller),
        (m, _) => Err(ArmError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("The requested resource does not support http method '{m}'."),
        )),
    }
}

/// `roleName eq 'X'` / `type eq 'BuiltInRole'` (RoleDefinitionFilter), joined by `and`.
fn list_definitions(
    st: &State,
    scope: &Scope,
    query: Option<&str>,
) -> Result<ArmResponse, ArmError> {
    let filter = query_decoded(query, "$filter");
    let mut role_name: Option<String> = None;
    let mut role_type: Option<String> = None;
    if let Some(f) = filter.as_deref().filter(|f| !f.trim().is_empty()) {
        for term in split_and(f) {
            let (field, value) = parse_eq(&term).ok_or_else(|| bad_filter(f))?;
            match field.to_ascii_lowercase().as_str() {
                "rolename" => role_name = Some(value),
                "type" => role_type = Some(value),
                _ => return Err(bad_filter(f)),
            }
        }
    }
    let key = scope.key();
    let value: Vec<Value> = st
        .world
        .authz
        .definitions
        .values()
        .filter(|d| d.visible_at(&key))
        .filter(|d| {
            role_name
                .as_deref()
                .is_none_or(|n| d.role_name.eq_ignore_ascii_case(n))
        })
        .filter(|d| {
            role_type.as_deref().is_none_or(|t| {
                t.eq_ignore_ascii_case(if d.builtin {
                    "BuiltInRole"
                } else {
                    "CustomRole"
                })
            })
        })
        .map(|d| d.render(scope))
        .collect();
    Ok(ArmResponse::json(StatusCode::OK, json!({ "value": value })))
}

fn role_not_found(status: StatusCode, guid: &str) -> ArmError {
    // Captured ARM messages print the GUID without dashes (see README.md).
    ArmError::new(
        status,
        "RoleDefinitionDoesNotExist",
        format!(
            "The specified role definition with ID '{}' does not exist.",
            guid.replace('-', "")
        ),
    )
}

fn get_definition(st: &State, scope: &Scope, guid: &str) -> Result<ArmResponse, ArmError> {
    let d = st
        .world
        .authz
        .definitions
        .get(&guid.to_ascii_lowercase())
        .filter(|d| d.visible_at(&scope.key()))
        .ok_or_else(|| role_not_found(StatusCode::NOT_FOUND, guid))?;
    Ok(ArmResponse::json(StatusCode::OK, d.render(scope)))
}

fn bad_filter(f: &str) -> ArmError {
    // CHOSEN code/message (ARM's text for an unsupported $filter was not found).
    ArmError::bad_request(
        "InvalidFilterInQueryString",
        format!("The filter '{f}' is not supported."),
    )
}

/// Splits on ` and ` (case-insensitive) outside quotes.
fn split_and(f: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let chars: Vec<char> = f.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            in_quote = !in_quote;
        }
        if !in_quote && c == ' ' {
            let rest: String = chars[i..].iter().take(5).collect();
            if rest.eq_ignore_ascii_case(" and ") {
                out.push(cur.trim().to_string());
                cur.clear();
                i += 5;
                continue;
            }
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur.trim().to_string());
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or(v)
        .to_string()
}

/// `field eq value` (value optionally quoted).
fn parse_eq(term: &str) -> Option<(String, String)> {
    let lower = term.to_ascii_lowercase();
    let idx = lower.find(" eq ")?;
    Some((term[..idx].trim().to_string(), unquote(&term[idx + 4..])))
}

#[derive(Debug, Default)]
struct RaFilter {
    at_scope: bool,
    principal: Option<String>,
    assigned_to: Option<String>,
}

fn parse_ra_filter(f: &str) -> Result<RaFilter, ArmError> {
    let mut out = RaFilter::default();
    for term in split_and(f) {
        let lower = term.to_ascii_lowercase().replace(' ', "");
        if lower == "atscope()" {
            out.at_scope = true;
        } else if let Some(inner) = lower
            .strip_prefix("assignedto(")
            .and_then(|s| s.strip_suffix(')'))
        {
            out.assigned_to = Some(unquote(inner));
        } else if let Some((field, value)) = parse_eq(&term) {
            if field.eq_ignore_ascii_case("principalId") {
                out.principal = Some(value.to_ascii_lowercase());
            } else {
                return Err(bad_filter(f));
            }
        } else {
            return Err(bad_filter(f));
        }
    }
    Ok(out)
}

/// Lists per the spec's `$filter` text: `atScope()` → at or above; `principalId eq {id}`
/// → at, above or below for the principal; `assignedTo('{id}')` → like principalId but
/// also through (nested) group membership; no filter → at, above and below (CHOSEN).
fn list_assignments(
    st: &State,
    scope: &Scope,
    query: Option<&str>,
) -> Result<ArmResponse, ArmError> {
    let filter = match query_decoded(query, "$filter") {
        Some(f) if !f.trim().is_empty() => parse_ra_filter(&f)?,
        _ => RaFilter::default(),
    };
    let key = scope.key();
    let assigned: Option<Vec<String>> = filter
        .assigned_to
        .as_ref()
        .map(|id| st.world.directory.transitive_ids(id));
    let mut rows: Vec<&RoleAssignment> = st
        .world
        .authz
        .assignments
        .values()
        .filter(|a| {
            let ak = a.scope.key();
            let above = at_or_above(&ak, &key);
            let below = at_or_above(&key, &ak);
            if filter.at_scope {
                above
            } else {
                above || below
            }
        })
        .filter(|a| {
            filter
                .principal
                .as_deref()
                .is_none_or(|p| a.principal_id.eq_ignore_ascii_case(p))
        })
        .filter(|a| {
            assigned
                .as_ref()
                .is_none_or(|ids| ids.contains(&a.principal_id.to_ascii_lowercase()))
        })
        .collect();
    rows.sort_by_key(|a| a.seq);
    let page = st.config.role_assignment_page_size.max(1);
    let skip: usize = query_decoded(query, "$skipToken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let value: Vec<Value> = rows
        .iter()
        .skip(skip)
        .take(page)
        .map(|a| a.render())
        .collect();
    let mut body = Map::new();
    body.insert("value".into(), Value::Array(value));
    if skip + page < rows.len() {
        let mut q = vec![format!(
            "api-version={}",
            query_decoded(query, "api-version").unwrap_or_default()
        )];
        if let Some(f) = query_decoded(query, "$filter") {
            q.push(format!("$filter={}", encode(&f)));
        }
        q.push(format!("$skipToken={}", skip + page));
        body.insert(
            "nextLink".into(),
            json!(format!(
                "{}{}/providers/{RA_TYPE}?{}",
                st.base_url,
                scope.prefix(),
                q.join("&")
            )),
        );
    }
    Ok(ArmResponse::json(StatusCode::OK, Value::Object(body)))
}

/// Percent-encodes what a query value must not carry raw.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'\'' => {
                out.push(b as char)
            }
            b'(' | b')' | b'$' | b',' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn not_found_assignment(name: &str) -> ArmError {
    // CHOSEN: no public source gives ARM's answer to a GET of a missing role assignment.
    ArmError::new(
        StatusCode::NOT_FOUND,
        "RoleAssignmentNotFound",
        format!("The role assignment '{name}' is not found."),
    )
}

fn get_assignment(st: &State, scope: &Scope, name: &str) -> Result<ArmResponse, ArmError> {
    let a = st
        .world
        .authz
        .assignments
        .get(&name.to_ascii_lowercase())
        .filter(|a| a.scope.key() == scope.key())
        .ok_or_else(|| not_found_assignment(name))?;
    Ok(ArmResponse::json(StatusCode::OK, a.render()))
}

/// True when the caller may perform role-assignment writes at the scope.
fn caller_may_write(caller: &CallerConfig, scope_key: &str) -> bool {
    match &caller.role_assignment_write_scopes {
        None => true,
        Some(list) => list.iter().any(|g| {
            let gk = Scope::parse(g)
                .map(|s| s.key())
                .unwrap_or_else(|| g.to_ascii_lowercase());
            at_or_above(&gk, scope_key)
        }),
    }
}

/// A VM / VMSS write by a caller without rights there: 403 `AuthorizationFailed` naming the
/// action (`Microsoft.Compute/virtualMachines/write`, or `/delete`) and the resource.
pub(crate) fn check_compute_write(
    caller: &CallerConfig,
    id: &crate::ids::ResourceId,
    method: &Method,
) -> Result<(), ArmError> {
    let Some(list) = &caller.compute_write_scopes else {
        return Ok(());
    };
    let rid = id.to_string();
    let key = rid.to_ascii_lowercase();
    let allowed = list.iter().any(|g| {
        let gk = Scope::parse(g)
            .map(|s| s.key())
            .unwrap_or_else(|| g.to_ascii_lowercase());
        at_or_above(&gk, &key)
    });
    if allowed {
        return Ok(());
    }
    let verb = if *method == Method::DELETE {
        "delete"
    } else {
        "write"
    };
    Err(authorization_failed(
        caller,
        &format!("{}/{verb}", id.kind.arm_type()),
        &rid,
    ))
}

/// 403 `AuthorizationFailed`; scope = the full assignment id (observed: the captured 403 in
/// Azure/azure-powershell#10917).
fn authorization_failed(caller: &CallerConfig, action: &str, assignment_id: &str) -> ArmError {
    ArmError::new(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{assignment_id}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            caller.client_id, caller.object_id
        ),
    )
    .with_header(HeaderName::from_static("x-ms-failure-cause"), "gateway")
}

fn invalid_name(name: &str) -> ArmError {
    ArmError::bad_request(
        "InvalidRoleAssignmentId",
        format!(
            "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
        ),
    )
}

fn check_scope_exists(st: &State, scope: &Scope) -> Result<(), ArmError> {
    match &scope.level {
        ScopeLevel::ResourceGroup {
            subscription,
            resource_group,
        } if !st
            .world
            .groups
            .contains_key(&crate::ids::group_key(subscription, resource_group)) =>
        {
            return Err(ArmError::resource_group_not_found(resource_group));
        }
        ScopeLevel::Resource { .. } => {
            // Only resource types the simulator models are checked (CHOSEN).
            if let Ok(id) = crate::ids::ResourceId::parse(&scope.raw) {
                if !st.world.group_exists(&id) {
                    return Err(ArmError::resource_group_not_found(&id.resource_group));
                }
                let exists = st.world.compute.contains_key(&id.key())
                    || st.world.uais.contains_key(&id.key());
                if !exists {
                    return Err(ArmError::resource_not_found(
                        id.kind.arm_type(),
                        &id.name,
                        &id.resource_group,
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn get_str<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn opt_string(m: &Map<String, Value>, name: &str) -> Result<Option<String>, ArmError> {
    match get_str(m, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ArmError::invalid_content(format!(
            "Error converting value to type 'String'. Path 'properties.{name}'"
        ))),
    }
}

const PRINCIPAL_TYPES: &[&str] = &[
    "User",
    "Group",
    "ServicePrincipal",
    "ForeignGroup",
    "Device",
];

/// The request of a role-assignment PUT, validated.
pub(crate) struct NewAssignment {
    pub role_guid: String,
    pub principal_id: String,
    pub principal_type: Option<String>,
    pub description: Option<String>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
}

fn parse_body(body: Option<&Value>) -> Result<NewAssignment, ArmError> {
    let props = match body {
        Some(Value::Object(m)) => match get_str(m, "properties") {
            Some(Value::Object(p)) => p,
            _ => {
                return Err(ArmError::invalid_content(
                    "Required property 'properties' not found in JSON. Path ''",
                ));
            }
        },
        None => return Err(ArmError::invalid_content("The request content was empty")),
        Some(_) => {
            return Err(ArmError::invalid_content(
                "Error converting value to type 'RoleAssignmentCreateParameters'. Path ''",
            ));
        }
    };
    let role_raw = opt_string(props, "roleDefinitionId")?.unwrap_or_default();
    let role_guid = role_guid_of(&role_raw).ok_or_else(|| {
        // CHOSEN code/message.
        ArmError::bad_request(
            "InvalidRoleDefinitionId",
            format!("The role definition ID '{role_raw}' is not valid."),
        )
    })?;
    let principal_id = opt_string(props, "principalId")?.unwrap_or_default();
    if !is_guid(&principal_id) {
        return Err(ArmError::bad_request(
            "InvalidPrincipalId",
            format!("The Principal ID '{principal_id}' is not valid. Principal ID must be a GUID."),
        ));
    }
    let principal_type = match opt_string(props, "principalType")? {
        None => None,
        Some(t) => Some(
            PRINCIPAL_TYPES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&t))
                .map(|k| k.to_string())
                .ok_or_else(|| {
                    ArmError::invalid_content(format!(
                        "Error converting value \"{t}\" to type 'PrincipalType'. Path 'properties.principalType'"
                    ))
                })?,
        ),
    };
    Ok(NewAssignment {
        role_guid,
        principal_id,
        principal_type,
        description: opt_string(props, "description")?,
        condition: opt_string(props, "condition")?,
        condition_version: opt_string(props, "conditionVersion")?,
    })
}

fn put_assignment(
    st: &mut State,
    scope: &Scope,
    name: &str,
    body: Option<&Value>,
    caller: &CallerConfig,
) -> Result<ArmResponse, ArmError> {
    let id = format!("{}/providers/{RA_TYPE}/{name}", scope.prefix());
    if !caller_may_write(caller, &scope.key()) {
        return Err(authorization_failed(
            caller,
            "Microsoft.Authorization/roleAssignments/write",
            &id,
        ));
    }
    if !is_guid(name) {
        return Err(invalid_name(name));
    }
    check_scope_exists(st, scope)?;
    let req = parse_body(body)?;
    create_assignment(st, scope, name, req, caller.object_id.clone())
}

/// Validates and stores an assignment (shared with the seed / Rust API).
pub(crate) fn create_assignment(
    st: &mut State,
    scope: &Scope,
    name: &str,
    req: NewAssignment,
    created_by: String,
) -> Result<ArmResponse, ArmError> {
    let key = scope.key();
    if !st
        .world
        .authz
        .definitions
        .get(&req.role_guid)
        .is_some_and(|d| d.visible_at(&key))
    {
        return Err(role_not_found(StatusCode::BAD_REQUEST, &req.role_guid));
    }
    let name_key = name.to_ascii_lowercase();
    let now = now_rfc3339();
    if let Some(existing) = st.world.authz.assignments.get_mut(&name_key) {
        let same = existing.scope.key() == key
            && existing.role_guid == req.role_guid
            && existing
                .principal_id
                .eq_ignore_ascii_case(&req.principal_id);
        if !same {
            return Err(ArmError::bad_request(
                "RoleAssignmentUpdateNotPermitted",
                "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
            ));
        }
        // Identical re-PUT under the same name: 200 (CHOSEN); description / condition
        // may change.
        let changed = existing.description != req.description
            || existing.condition != req.condition
            || existing.condition_version != req.condition_version;
        if changed {
            existing.description = req.description;
            existing.condition = req.condition;
            existing.condition_version = req.condition_version;
            existing.updated_on = now;
        }
        return Ok(ArmResponse::json(StatusCode::OK, existing.render()));
    }
    let delay = st.config.principal_replication_delay;
    let tenant = st.world.tenant_id.clone();
    let principal = st
        .world
        .directory
        .live(&req.principal_id)
        .filter(|p| p.replicated(delay));
    let principal_type = match (&req.principal_type, principal) {
        // principalType given: ARM skips the directory lookup, so a principal still
        // replicating is accepted ("Troubleshoot Azure RBAC": set principalType to avoid
        // PrincipalNotFound after a replication delay,
        // https://learn.microsoft.com/azure/role-based-access-control/troubleshooting).
        (Some(t), Some(p)) if !t.eq_ignore_ascii_case(p.kind.principal_type()) => {
            // CHOSEN code/message.
            return Err(ArmError::bad_request(
                "UnmatchedPrincipalType",
                format!(
                    "The PrincipalType provided with the role assignment request is different from the principal type of the principal with id '{}'.",
                    req.principal_id
                ),
            ));
        }
        (Some(t), _) => t.clone(),
        (None, Some(p)) => p.kind.principal_type().to_string(),
        (None, None) => {
            return Err(ArmError::bad_request(
                "PrincipalNotFound",
                format!(
                    "Principal {} does not exist in the directory {tenant}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
                    req.principal_id
                ),
            ));
        }
    };
    if st.world.authz.assignments.values().any(|a| {
        a.scope.key() == key
            && a.role_guid == req.role_guid
            && a.principal_id.eq_ignore_ascii_case(&req.principal_id)
    }) {
        return Err(ArmError::new(
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            "The role assignment already exists.",
        ));
    }
    let (count, limit) = match (&scope.level, scope.subscription()) {
        (ScopeLevel::ManagementGroup(_), _) => (
            st.world
                .authz
                .assignments
                .values()
                .filter(|a| a.scope.key() == key)
                .count(),
            MANAGEMENT_GROUP_ROLE_ASSIGNMENT_LIMIT,
        ),
        (_, Some(sub)) => (
            st.world
                .authz
                .assignments
                .values()
                .filter(|a| {
                    a.scope
                        .subscription()
                        .is_some_and(|s| s.eq_ignore_ascii_case(sub))
                })
                .count(),
            st.config.role_assignment_limit,
        ),
        _ => (0, usize::MAX),
    };
    if count >= limit {
        return Err(ArmError::bad_request(
            "RoleAssignmentLimitExceeded",
            "No more role assignments can be created.",
        ));
    }
    let seq = st.world.authz.next_seq;
    st.world.authz.next_seq += 1;
    let a = RoleAssignment {
        name: name.to_string(),
        scope: scope.clone(),
        role_guid: req.role_guid,
        principal_id: req.principal_id,
        principal_type,
        description: req.description,
        condition: req.condition,
        condition_version: req.condition_version,
        created_on: now.clone(),
        updated_on: now,
        created_by: Some(created_by),
        seq,
    };
    let body = a.render();
    st.world.authz.assignments.insert(name_key, a);
    Ok(ArmResponse::json(StatusCode::CREATED, body))
}

fn delete_assignment(
    st: &mut State,
    scope: &Scope,
    name: &str,
    caller: &CallerConfig,
) -> Result<ArmResponse, ArmError> {
    let id = format!("{}/providers/{RA_TYPE}/{name}", scope.prefix());
    if !caller_may_write(caller, &scope.key()) {
        return Err(authorization_failed(
            caller,
            "Microsoft.Authorization/roleAssignments/delete",
            &id,
        ));
    }
    if !is_guid(name) {
        return Err(invalid_name(name));
    }
    let key = name.to_ascii_lowercase();
    let matches = st
        .world
        .authz
        .assignments
        .get(&key)
        .is_some_and(|a| a.scope.key() == scope.key());
    if !matches {
        // "already deleted or does not exist" (spec, RoleAssignments_Delete 204).
        return Ok(ArmResponse::empty(StatusCode::NO_CONTENT));
    }
    match st.world.authz.assignments.remove(&key) {
        Some(a) => Ok(ArmResponse::json(StatusCode::OK, a.render())),
        None => Ok(ArmResponse::empty(StatusCode::NO_CONTENT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_filters() {
        let (s, t) = parse_path(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/x",
        )
        .unwrap();
        assert_eq!(s.unwrap().raw, "/subscriptions/s/resourceGroups/rg");
        assert!(matches!(t, AuthzTarget::RoleAssignment(n) if n == "x"));
        let (s, _) = parse_path("/providers/Microsoft.Authorization/roleAssignments").unwrap();
        assert_eq!(s.unwrap().raw, "/");
        assert!(
            parse_path("/subscriptions/s/providers/Microsoft.Authorization/denyAssignments")
                .is_none()
        );
        assert_eq!(
            role_guid_of(
                "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/ACDD72A7-3385-48EF-BD42-F606FBA81AE7"
            ),
            Some("acdd72a7-3385-48ef-bd42-f606fba81ae7".into())
        );
        assert_eq!(role_guid_of("acdd72a7-3385-48ef-bd42-f606fba81ae7"), None);
        let f = parse_ra_filter("atScope() and assignedTo('abc')").unwrap();
        assert!(f.at_scope);
        assert_eq!(f.assigned_to.as_deref(), Some("abc"));
        let f = parse_ra_filter("principalId eq 'AbC'").unwrap();
        assert_eq!(f.principal.as_deref(), Some("abc"));
        assert!(parse_ra_filter("foo eq 1").is_err());
        assert_eq!(
            split_and("roleName eq 'A and B' and type eq 'x'"),
            vec!["roleName eq 'A and B'", "type eq 'x'"]
        );
    }
}
