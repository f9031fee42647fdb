//! Azure Resource Graph query API (`POST /providers/Microsoft.ResourceGraph/resources`,
//! api-version 2021-03-01): a small KQL subset over two tables, paging, per-caller quota
//! (`x-ms-user-quota-*`) and a configurable lag.
//! - `Resources`: the VMs / VMSS of the world (with their tags) and the seeded AKS clusters
//!   (`microsoft.containerservice/managedclusters` with `properties.nodeResourceGroup`).
//! - `AuthorizationResources`: the role assignments (`microsoft.authorization/roleassignments`,
//!   "Announcing AuthorizationResources in Azure Resource Graph",
//!   <https://techcommunity.microsoft.com/t5/azure-governance-and-management/announcing-authorizationresources-in-azure-resource-graph/ba-p/3813912>,
//!   and "Azure Resource Graph sample queries by table",
//!   <https://learn.microsoft.com/azure/governance/resource-graph/samples/samples-by-table>).
//!
//! Spec: `specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2021-03-01/resourcegraph.json`
//! and its examples in Azure/azure-rest-api-specs; paging: "Working with large Azure resource
//! data sets" (<https://learn.microsoft.com/azure/governance/resource-graph/concepts/work-with-data>);
//! quota: "Guidance for throttled requests in Azure Resource Graph"
//! (<https://learn.microsoft.com/azure/governance/resource-graph/concepts/guidance-for-throttled-requests>).

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderName, StatusCode};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::errors::ArmError;
use crate::server::{ArmResponse, api_version_error, query_decoded};
use crate::state::State;

/// Resource Graph api-versions served.
pub const RESOURCE_GRAPH_API_VERSIONS: &[&str] = &[
    "2019-04-01",
    "2020-04-01-preview",
    "2021-03-01",
    "2021-06-01-preview",
    "2022-10-01",
    "2024-04-01",
];

/// Default / maximum `$top`: 100 rows by default ("Working with large Azure resource data
/// sets"); `$top` ranges over 1–1000 (`QueryRequestOptions` in the 2021-03-01 spec).
pub const ARG_DEFAULT_TOP: usize = 100;
pub const ARG_MAX_TOP: usize = 1000;

/// How many snapshots per resource the lag history keeps.
const HISTORY_PER_RESOURCE: usize = 256;

/// Snapshots of ARG rows per resource, for the lag: `(time, row)`; `None` row = deleted;
/// `None` time = seeded (present since forever).
#[derive(Debug, Clone, Default)]
pub(crate) struct RowHistory {
    pub rows: HashMap<String, Vec<Snapshot>>,
}

/// `(time, row)`: `None` time = seeded, `None` row = deleted.
pub(crate) type Snapshot = (Option<Instant>, Option<Value>);

impl RowHistory {
    pub fn record(&mut self, key: &str, at: Option<Instant>, row: Option<Value>) {
        let v = self.rows.entry(key.to_string()).or_default();
        v.push((at, row));
        if v.len() > HISTORY_PER_RESOURCE {
            // Keep the newest; the oldest kept entry becomes the baseline.
            let drop = v.len() - HISTORY_PER_RESOURCE;
            v.drain(..drop);
        }
    }

    /// The newest row recorded for `key` (None: none, or deleted).
    pub fn latest(&self, key: &str) -> Option<Value> {
        self.rows.get(key)?.last()?.1.clone()
    }

    /// Rows as they were at `t`.
    pub fn at(&self, t: Instant) -> Vec<Value> {
        self.rows
            .values()
            .filter_map(|v| {
                v.iter()
                    .rev()
                    .find(|(at, _)| at.is_none_or(|a| a <= t))
                    .and_then(|(_, r)| r.clone())
            })
            .collect()
    }
}

/// Per-caller quota window.
#[derive(Debug, Clone)]
pub(crate) struct QuotaWindow {
    pub start: Instant,
    pub used: u32,
}

fn arg_error(status: StatusCode, code: &str, message: &str, details: Vec<Value>) -> ArmError {
    let mut inner = Map::new();
    inner.insert("code".into(), json!(code));
    inner.insert("message".into(), json!(message));
    if !details.is_empty() {
        inner.insert("details".into(), Value::Array(details));
    }
    ArmError::new(status, code, message).with_body(json!({ "error": Value::Object(inner) }))
}

fn support_message() -> String {
    format!(
        "Please provide below info when asking for support: timestamp = {}, correlationId = {}.",
        crate::state::now_rfc3339(),
        uuid::Uuid::new_v4()
    )
}

/// 400 for a query outside the supported subset: ARG's `BadRequest` with an
/// `InvalidQuery` detail (CHOSEN shape, see README.md).
fn invalid_query(reason: &str) -> ArmError {
    arg_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &support_message(),
        vec![
            json!({"code": "InvalidQuery", "message": "Query is invalid. Please refer to the documentation for the Azure Resource Graph service and fix the error before retrying."}),
            json!({"code": "UnsupportedQuery", "message": reason}),
        ],
    )
}

fn bad_request(message: &str) -> ArmError {
    arg_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &support_message(),
        vec![json!({"code": "InvalidRequest", "message": message})],
    )
}

/// The row ARG shows for a VM/VMSS: `type` and `resourceGroup` lower-cased (examples),
/// `identity` as the 2018-06-01+ GET shows it (`null` when none).
pub(crate) fn row_of(world: &crate::world::World, key: &str) -> Option<Value> {
    let r = world.compute.get(key)?;
    Some(json!({
        "id": r.id.to_string(),
        "name": r.id.name,
        "type": r.id.kind.arm_type().to_ascii_lowercase(),
        "tenantId": world.tenant_id,
        "kind": "",
        "location": r.location,
        "resourceGroup": r.id.resource_group.to_ascii_lowercase(),
        "subscriptionId": r.id.subscription,
        "tags": r.tags.clone().unwrap_or_else(|| json!({})),
        "identity": world
            .render_identity(r, crate::identity::Shape::Dictionary)
            .unwrap_or(Value::Null),
    }))
}

// ---------------------------------------------------------------------------
// KQL subset
// ---------------------------------------------------------------------------

/// A column, or a property inside one (`properties.principalId`, `tags['env']`,
/// `tags.env`): the column name first, then the keys.
type Path = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    /// `field =~ 'v'` (case-insensitive) / `field == 'v'` (exact) / `!=`, `!~`.
    Cmp {
        field: Path,
        value: String,
        ci: bool,
        negate: bool,
    },
    /// `field in ('a','b')` / `in~`.
    In {
        field: Path,
        values: Vec<String>,
        ci: bool,
    },
    /// `isnotnull(field)` / `isnull(field)`.
    NotNull {
        field: Path,
        negate: bool,
    },
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Where(Cond),
    Project(Vec<String>),
    Order { field: Path, desc: bool },
    Limit(usize),
}

/// The columns of both tables (the subset of the documented columns the simulator fills).
const FIELDS: &[&str] = &[
    "id",
    "name",
    "type",
    "tenantId",
    "kind",
    "location",
    "resourceGroup",
    "subscriptionId",
    "tags",
    "identity",
    "properties",
];

/// The tables served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Resources,
    AuthorizationResources,
}

impl Table {
    fn parse(name: &str) -> Option<Table> {
        if name.eq_ignore_ascii_case("resources") {
            Some(Table::Resources)
        } else if name.eq_ignore_ascii_case("authorizationresources") {
            Some(Table::AuthorizationResources)
        } else {
            None
        }
    }

    /// The table's name as the documentation spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Resources => "Resources",
            Table::AuthorizationResources => "AuthorizationResources",
        }
    }
}

fn column(name: &str) -> Result<String, ArmError> {
    FIELDS
        .iter()
        .find(|f| **f == name)
        .map(|f| f.to_string())
        .ok_or_else(|| {
            invalid_query(&format!(
                "The simulator supports the columns {} only; got '{name}'.",
                FIELDS.join(", ")
            ))
        })
}

/// A column or a property path: `col`, `col.key.key`, `col['key']`, `col["key"]` (mixed).
fn field(text: &str) -> Result<Path, ArmError> {
    let t = text.trim();
    let end = t.find(['.', '[']).unwrap_or(t.len());
    let mut path = vec![column(&t[..end])?];
    let mut rest = &t[end..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid_query(&format!("Invalid property access '{t}'.")));
            }
            path.push(key.to_string());
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r
                .find(']')
                .ok_or_else(|| invalid_query(&format!("Expected ']' in '{t}'.")))?;
            path.push(literal(&r[..close])?);
            rest = &r[close + 1..];
        } else {
            return Err(invalid_query(&format!("Invalid property access '{t}'.")));
        }
    }
    Ok(path)
}

/// Splits on `sep` (a word or symbol) outside single/double quotes and parentheses,
/// case-insensitively, requiring whitespace around word separators.
fn split_top(s: &str, sep: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let sep_chars: Vec<char> = sep.chars().collect();
    let word = sep.chars().all(|c| c.is_ascii_alphabetic());
    let (mut depth, mut quote) = (0i32, None::<char>);
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            },
        }
        if quote.is_none() && depth == 0 && i + sep_chars.len() <= chars.len() {
            let cand: String = chars[i..i + sep_chars.len()].iter().collect();
            let bounded = !word
                || ((i == 0 || chars[i - 1].is_whitespace())
                    && chars
                        .get(i + sep_chars.len())
                        .is_none_or(|c| c.is_whitespace()));
            if cand.eq_ignore_ascii_case(sep) && bounded {
                out.push(cur.trim().to_string());
                cur.clear();
                i += sep_chars.len();
                continue;
            }
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur.trim().to_string());
    out
}

fn literal(s: &str) -> Result<String, ArmError> {
    let s = s.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return Ok(inner.to_string());
        }
    }
    Err(invalid_query(&format!(
        "Expected a string literal, got '{s}'."
    )))
}

fn strip_parens(s: &str) -> &str {
    let t = s.trim();
    if t.starts_with('(') && t.ends_with(')') && split_top(t, "|").len() == 1 {
        // Only when the parentheses enclose the whole expression.
        let inner = &t[1..t.len() - 1];
        let mut depth = 0i32;
        for c in inner.chars() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return t;
                    }
                }
                _ => {}
            }
        }
        if depth == 0 {
            return inner.trim();
        }
    }
    t
}

/// `a or b` / `a and b` at the top level (`or` binds loosest), each side parsed by `parse`;
/// None when `s` is neither.
fn parse_bool<C>(
    s: &str,
    parse: fn(&str) -> Result<C, ArmError>,
    or: fn(Vec<C>) -> C,
    and: fn(Vec<C>) -> C,
) -> Option<Result<C, ArmError>> {
    for (sep, join) in [("or", or), ("and", and)] {
        let parts = split_top(s, sep);
        if parts.len() > 1 {
            return Some(
                parts
                    .iter()
                    .map(|x| parse(x))
                    .collect::<Result<_, _>>()
                    .map(join),
            );
        }
    }
    None
}

/// `lhs in (…)` / `lhs in~ (…)`: the left side, the literals and whether case is ignored.
#[allow(clippy::type_complexity)]
fn parse_in(s: &str, lower: &str) -> Option<Result<(String, Vec<String>, bool), ArmError>> {
    let (idx, op, ci) = [(" in~ ", true), (" in ", false)]
        .into_iter()
        .find_map(|(op, ci)| lower.find(op).map(|idx| (idx, op, ci)))?;
    let list = s[idx + op.len()..].trim();
    let Some(inner) = list.strip_prefix('(').and_then(|x| x.strip_suffix(')')) else {
        return Some(Err(invalid_query("Expected '(' after 'in'.")));
    };
    Some(
        split_top(inner, ",")
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| literal(v))
            .collect::<Result<Vec<_>, _>>()
            .map(|values| (s[..idx].trim().to_string(), values, ci)),
    )
}

/// `lhs =~ 'v'`, `!~`, `==`, `!=`: the left side, the literal, ignore case, negate.
#[allow(clippy::type_complexity)]
fn parse_str_cmp(s: &str) -> Option<Result<(String, String, bool, bool), ArmError>> {
    let (idx, ci, negate) = [
        ("=~", true, false),
        ("!~", true, true),
        ("==", false, false),
        ("!=", false, true),
    ]
    .into_iter()
    .find_map(|(op, ci, negate)| s.find(op).map(|idx| (idx, ci, negate)))?;
    Some(literal(&s[idx + 2..]).map(|value| (s[..idx].trim().to_string(), value, ci, negate)))
}

fn parse_cond(s: &str) -> Result<Cond, ArmError> {
    let s = strip_parens(s);
    if let Some(c) = parse_bool(s, parse_cond, Cond::Or, Cond::And) {
        return c;
    }
    let lower = s.to_ascii_lowercase();
    for (prefix, negate) in [("isnotnull(", false), ("isnull(", true)] {
        if let Some(inner) = lower.strip_prefix(prefix).and_then(|x| x.strip_suffix(')')) {
            let name = &s[prefix.len()..prefix.len() + inner.len()];
            return Ok(Cond::NotNull {
                field: field(name.trim())?,
                negate,
            });
        }
    }
    if let Some(r) = parse_in(s, &lower) {
        let (lhs, values, ci) = r?;
        return Ok(Cond::In {
            field: field(&lhs)?,
            values,
            ci,
        });
    }
    if let Some(r) = parse_str_cmp(s) {
        let (lhs, value, ci, negate) = r?;
        return Ok(Cond::Cmp {
            field: field(&lhs)?,
            value,
            ci,
            negate,
        });
    }
    Err(invalid_query(&format!("Unsupported condition '{s}'.")))
}

fn parse_query(q: &str) -> Result<(Table, Vec<Op>), ArmError> {
    let parts = split_top(q, "|");
    let name = parts.first().map(String::as_str).unwrap_or("");
    let Some(table) = Table::parse(name) else {
        return Err(invalid_query(&format!(
            "The simulator serves the tables 'Resources' and 'AuthorizationResources' only; got '{name}'."
        )));
    };
    let mut ops = Vec::new();
    for p in &parts[1..] {
        let (kw, rest) = p
            .split_once(char::is_whitespace)
            .unwrap_or((p.as_str(), ""));
        let rest = rest.trim();
        match kw.to_ascii_lowercase().as_str() {
            "where" => ops.push(Op::Where(parse_cond(rest)?)),
            "project" => ops.push(Op::Project(
                split_top(rest, ",")
                    .iter()
                    .map(|f| column(f))
                    .collect::<Result<_, _>>()?,
            )),
            "order" | "sort" => {
                let by = rest
                    .strip_prefix("by ")
                    .or_else(|| rest.strip_prefix("BY "))
                    .ok_or_else(|| invalid_query("Expected 'by' after 'order'."))?;
                let mut it = by.split_whitespace();
                let f = field(it.next().unwrap_or(""))?;
                // KQL's default sort order is descending.
                let desc = match it.next().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("desc") => true,
                    Some("asc") => false,
                    Some(o) => return Err(invalid_query(&format!("Unknown sort order '{o}'."))),
                };
                ops.push(Op::Order { field: f, desc });
            }
            "limit" | "take" => ops
                .push(Op::Limit(rest.parse().map_err(|_| {
                    invalid_query(&format!("Expected a number after '{kw}'."))
                })?)),
            other => {
                return Err(invalid_query(&format!(
                    "The simulator does not support the operator '{other}'."
                )));
            }
        }
    }
    Ok((table, ops))
}

fn value_at<'a>(row: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(row, |v, k| v.get(k.as_str()))
}

fn value_str(row: &Value, f: &str) -> Option<String> {
    path_str(row, &[f.to_string()])
}

fn path_str(row: &Value, path: &[String]) -> Option<String> {
    match value_at(row, path) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(v) => Some(v.to_string()),
    }
}

fn eval(c: &Cond, row: &Value) -> bool {
    match c {
        Cond::Cmp {
            field,
            value,
            ci,
            negate,
        } => {
            let v = path_str(row, field).unwrap_or_default();
            let eq = if *ci {
                v.eq_ignore_ascii_case(value)
            } else {
                v == *value
            };
            eq != *negate
        }
        Cond::In { field, values, ci } => {
            let v = path_str(row, field).unwrap_or_default();
            values.iter().any(|x| {
                if *ci {
                    x.eq_ignore_ascii_case(&v)
                } else {
                    *x == v
                }
            })
        }
        Cond::NotNull { field, negate } => {
            value_at(row, field).is_some_and(|v| !v.is_null()) != *negate
        }
        Cond::And(cs) => cs.iter().all(|c| eval(c, row)),
        Cond::Or(cs) => cs.iter().any(|c| eval(c, row)),
    }
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

/// `Resources`: the VMs / VMSS (as they were `lag` ago) and the seeded AKS clusters.
fn resources_rows(st: &State) -> Vec<Value> {
    let lag = st.config.arg_lag;
    let mut rows: Vec<Value> = if lag.is_zero() {
        st.world
            .compute
            .keys()
            .filter_map(|k| row_of(&st.world, k))
            .collect()
    } else {
        let t = Instant::now().checked_sub(lag).unwrap_or_else(Instant::now);
        st.world.arg_history.at(t)
    };
    rows.extend(st.world.managed_clusters.values().cloned());
    rows
}

/// `AuthorizationResources`: one row per role assignment, shaped as the table documents it:
/// `id`, `name`, `type` `microsoft.authorization/roleassignments` (lower case, as every
/// Resource Graph `type`), `subscriptionId` / `resourceGroup` of the assignment's scope
/// (empty above a subscription), and `properties` as the Authorization API renders it
/// (`principalId`, `principalType`, `roleDefinitionId`, `scope`, `createdOn`, ...). Served
/// from the current state, without the lag (CHOSEN). Assignments at management-group or root
/// scope are not in a subscription's rows (a query by `subscriptions` does not see them;
/// real Resource Graph needs a `managementGroups` scope for them).
fn authorization_rows(st: &State) -> Vec<Value> {
    st.world
        .authz
        .assignments
        .values()
        .map(|a| authorization_row(&st.world.tenant_id, a))
        .collect()
}

pub(crate) fn authorization_row(tenant_id: &str, a: &crate::authz::RoleAssignment) -> Value {
    use crate::scope::ScopeLevel;
    let rendered = a.render();
    let (sub, rg) = match &a.scope.level {
        ScopeLevel::Root | ScopeLevel::ManagementGroup(_) => (String::new(), String::new()),
        ScopeLevel::Subscription(s) => (s.clone(), String::new()),
        ScopeLevel::ResourceGroup {
            subscription,
            resource_group,
        }
        | ScopeLevel::Resource {
            subscription,
            resource_group,
        } => (subscription.clone(), resource_group.to_ascii_lowercase()),
    };
    json!({
        "id": rendered.get("id").cloned().unwrap_or(Value::Null),
        "name": a.name,
        "type": "microsoft.authorization/roleassignments",
        "tenantId": tenant_id,
        "kind": "",
        "location": "",
        "resourceGroup": rg,
        "subscriptionId": sub,
        "tags": {},
        "identity": Value::Null,
        "properties": rendered.get("properties").cloned().unwrap_or(Value::Null),
    })
}

/// A subscription the world has something in (a resource group, a resource, a role
/// assignment at or below it).
fn subscription_known(st: &State, sub: &str) -> bool {
    st.world
        .groups
        .values()
        .any(|g| g.subscription.eq_ignore_ascii_case(sub))
        || st.world.authz.assignments.values().any(|a| {
            a.scope
                .subscription()
                .is_some_and(|s| s.eq_ignore_ascii_case(sub))
        })
}

/// 400 when none of the request's subscriptions can hold resources (observed:
/// `NoValidSubscriptionsInQueryRequest`, "There must be at least one subscription that is
/// eligible to contain resources. Given: '…'.", Azure/aztfexport#491 and #385). A request
/// with some known subscriptions answers for those (CHOSEN).
fn no_valid_subscriptions(subs: &[String]) -> ArmError {
    arg_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &support_message(),
        vec![json!({
            "code": "NoValidSubscriptionsInQueryRequest",
            "message": format!(
                "There must be at least one subscription that is eligible to contain resources. Given: '{}'.",
                subs.join(", ")
            ),
        })],
    )
}

/// 403 `AuthorizationFailed` for a caller without read rights on a table's rows (for
/// `AuthorizationResources`: `Microsoft.Authorization/roleAssignments/read`).
fn table_denied(caller: &crate::CallerConfig, table: Table) -> ArmError {
    let action = match table {
        Table::Resources => "Microsoft.Resources/subscriptions/resources/read",
        Table::AuthorizationResources => "Microsoft.Authorization/roleAssignments/read",
    };
    let message = format!(
        "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '/providers/Microsoft.ResourceGraph' or the scope is invalid. If access was recently granted, please refresh your credentials.",
        caller.client_id, caller.object_id
    );
    arg_error(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        &message,
        vec![],
    )
}

// ---------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------

fn hms(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Takes one query from the caller's quota. Returns (allowed, remaining, resets-after).
pub(crate) fn take_quota(st: &mut State, token: &str) -> (bool, u32, Duration) {
    let quota = st.config.arg_quota;
    let window = st.config.arg_quota_window;
    let now = Instant::now();
    let w = st
        .arg_quota
        .entry(token.to_string())
        .or_insert(QuotaWindow {
            start: now,
            used: 0,
        });
    if now.duration_since(w.start) >= window {
        w.start = now;
        w.used = 0;
    }
    let resets = window.saturating_sub(now.duration_since(w.start));
    if w.used >= quota {
        return (false, 0, resets);
    }
    w.used += 1;
    (true, quota - w.used, resets)
}

/// Answers a query POST (quota handled by the caller).
pub(crate) fn query(
    st: &mut State,
    caller: Option<&crate::CallerConfig>,
    query_string: Option<&str>,
    body: Option<&Value>,
) -> Result<ArmResponse, ArmError> {
    match query_decoded(query_string, "api-version") {
        Some(v)
            if RESOURCE_GRAPH_API_VERSIONS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&v)) => {}
        other => {
            return Err(api_version_error(
                other.as_deref(),
                RESOURCE_GRAPH_API_VERSIONS,
                "resources",
                "global",
            ));
        }
    }
    let Some(Value::Object(req)) = body else {
        return Err(bad_request(
            "The request body must be a QueryRequest object.",
        ));
    };
    let q = req
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("The 'query' property is required."))?;
    let subs: Option<Vec<String>> = req.get("subscriptions").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect()
    });
    let options = req.get("options").cloned().unwrap_or(Value::Null);
    let top = match options.get("$top") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=ARG_MAX_TOP as u64).contains(&n) => Some(n as usize),
            _ => {
                return Err(bad_request(&format!(
                    "The '$top' option must be between 1 and {ARG_MAX_TOP}; got {v}."
                )));
            }
        },
    };
    let explicit_skip = options.get("$skip").and_then(Value::as_u64);
    let token_skip = match options.get("$skipToken").and_then(Value::as_str) {
        None => None,
        Some(t) => Some(decode_token(t).ok_or_else(|| bad_request("Invalid $skipToken."))?),
    };
    let table_format = match options.get("resultFormat").and_then(Value::as_str) {
        None => false,
        Some(f) if f.eq_ignore_ascii_case("objectArray") => false,
        Some(f) if f.eq_ignore_ascii_case("table") => true,
        Some(f) => return Err(bad_request(&format!("Unknown resultFormat '{f}'."))),
    };
    if split_top(q, "|")
        .first()
        .is_some_and(|t| t.eq_ignore_ascii_case("resourcechanges"))
    {
        let rows = st.world.changes.visible(
            &st.config.change_feed,
            Instant::now(),
            st.wall_now(),
            &st.world.tenant_id,
        );
        let (rows, columns) = query_changes(q, rows, subs.as_deref())?;
        return Ok(respond(
            rows,
            columns,
            token_skip,
            explicit_skip,
            top,
            table_format,
        ));
    }
    let (table, ops) = parse_query(q)?;
    if let Some(caller) = caller
        && caller
            .denied_resource_graph_tables
            .iter()
            .any(|t| t.eq_ignore_ascii_case(table.name()))
    {
        return Err(table_denied(caller, table));
    }

    let mut rows: Vec<Value> = match table {
        Table::Resources => resources_rows(st),
        Table::AuthorizationResources => authorization_rows(st),
    };
    if let Some(subs) = &subs {
        if !subs.is_empty() && !subs.iter().any(|s| subscription_known(st, s)) {
            return Err(no_valid_subscriptions(subs));
        }
        rows.retain(|r| {
            value_str(r, "subscriptionId").is_some_and(|s| subs.contains(&s.to_ascii_lowercase()))
        });
    }
    // Stable default order: by id (CHOSEN; paging needs a stable order).
    rows.sort_by_key(|r| value_str(r, "id").unwrap_or_default().to_ascii_lowercase());
    let mut projected: Option<Vec<String>> = None;
    for op in &ops {
        match op {
            Op::Where(c) => rows.retain(|r| eval(c, r)),
            Op::Order { field, desc } => {
                rows.sort_by_key(|r| path_str(r, field).unwrap_or_default().to_ascii_lowercase());
                if *desc {
                    rows.reverse();
                }
            }
            Op::Limit(n) => rows.truncate(*n),
            Op::Project(fields) => {
                rows = rows
                    .into_iter()
                    .map(|r| {
                        let mut m = Map::new();
                        for f in fields {
                            m.insert(f.clone(), r.get(f).cloned().unwrap_or(Value::Null));
                        }
                        Value::Object(m)
                    })
                    .collect();
                projected = Some(fields.clone());
            }
        }
    }
    let columns: Vec<String> =
        projected.unwrap_or_else(|| FIELDS.iter().map(|s| s.to_string()).collect());
    Ok(respond(
        rows,
        columns,
        token_skip,
        explicit_skip,
        top,
        table_format,
    ))
}

/// A page of `rows` (already filtered, ordered and projected to `columns`), in the object
/// array or table format, with `$skipToken` when more remain and `id` is projected.
fn respond(
    rows: Vec<Value>,
    columns: Vec<String>,
    token_skip: Option<(usize, usize)>,
    explicit_skip: Option<u64>,
    top: Option<usize>,
    table: bool,
) -> ArmResponse {
    let has_id = columns.iter().any(|c| c == "id");
    let total = rows.len();
    let (skip, page) = match token_skip {
        Some((s, p)) => (explicit_skip.map_or(s, |x| x as usize), top.unwrap_or(p)),
        None => (
            explicit_skip.unwrap_or(0) as usize,
            top.unwrap_or(ARG_DEFAULT_TOP),
        ),
    };
    let data: Vec<Value> = rows.into_iter().skip(skip).take(page).collect();
    let more = skip + data.len() < total;
    let mut out = Map::new();
    out.insert("totalRecords".into(), json!(total));
    out.insert("count".into(), json!(data.len()));
    // Without `id` no $skipToken can be issued and the result is truncated ("Working with
    // large Azure resource data sets": the query must project `id` for paging).
    out.insert(
        "resultTruncated".into(),
        json!(if more && !has_id { "true" } else { "false" }),
    );
    if more && has_id {
        out.insert(
            "$skipToken".into(),
            json!(encode_token(skip + data.len(), page)),
        );
    }
    let data = if table {
        json!({
            "columns": columns.iter().map(|c| json!({"name": c, "type": column_type(c)})).collect::<Vec<_>>(),
            "rows": data.iter().map(|r| columns.iter().map(|c| r.get(c).cloned().unwrap_or(Value::Null)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })
    } else {
        Value::Array(data)
    };
    out.insert("data".into(), data);
    out.insert("facets".into(), json!([]));
    ArmResponse::json(StatusCode::OK, Value::Object(out))
}

fn column_type(c: &str) -> &'static str {
    match c {
        "tags" | "identity" | "properties" | "changedProperties" => "object",
        "changeTime" => "datetime",
        _ => "string",
    }
}

/// Opaque-looking continuation token: hex of `skip:page` (CHOSEN).
fn encode_token(skip: usize, page: usize) -> String {
    format!("{skip}:{page}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(t: &str) -> Option<(usize, usize)> {
    if !t.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    let s = String::from_utf8(bytes?).ok()?;
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// ARG's 429 (CHOSEN body, see README.md) with `Retry-After`.
pub(crate) fn throttled(resets: Duration) -> ArmError {
    let secs = resets.as_secs() + u64::from(resets.subsec_nanos() > 0);
    arg_error(
        StatusCode::TOO_MANY_REQUESTS,
        "RateLimiting",
        &support_message(),
        vec![json!({"code": "RateLimiting", "message": "Client application has been throttled and should not attempt to repeat the request until an amount of time has elapsed. Please see https://aka.ms/resourcegraph-throttling for help."})],
    )
    .with_header(HeaderName::from_static("retry-after"), &secs.max(1).to_string())
}

/// Quota headers for every ARG response.
pub(crate) fn quota_headers(resp: &mut ArmResponse, remaining: u32, resets: Duration) {
    *resp = std::mem::replace(resp, ArmResponse::empty(StatusCode::OK))
        .header(
            HeaderName::from_static("x-ms-user-quota-remaining"),
            &remaining.to_string(),
        )
        .header(
            HeaderName::from_static("x-ms-user-quota-resets-after"),
            &hms(resets),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_controller_query() {
        let (table, ops) = parse_query(
            "Resources | where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets' | where subscriptionId in ('a', 'b') | project id, type, identity | order by id asc",
        )
        .unwrap();
        assert_eq!(table, Table::Resources);
        assert_eq!(ops.len(), 4);
        assert!(matches!(&ops[0], Op::Where(Cond::Or(v)) if v.len() == 2));
        assert!(matches!(&ops[1], Op::Where(Cond::In { values, .. }) if values.len() == 2));
        assert_eq!(
            ops[3],
            Op::Order {
                field: vec!["id".into()],
                desc: false
            }
        );
        assert!(parse_query("Resources | summarize count()").is_err());
        assert!(parse_query("ResourceContainers").is_err());
        assert!(parse_query("Resources | project foo").is_err());
        let row = json!({"type": "microsoft.compute/virtualmachines", "subscriptionId": "A"});
        assert!(eval(
            &parse_cond("type =~ 'Microsoft.Compute/virtualMachines'").unwrap(),
            &row
        ));
        assert!(!eval(
            &parse_cond("type == 'Microsoft.Compute/virtualMachines'").unwrap(),
            &row
        ));
        assert!(eval(
            &parse_cond("(subscriptionId in~ ('a') and type != 'x')").unwrap(),
            &row
        ));
        assert_eq!(decode_token(&encode_token(200, 100)), Some((200, 100)));
        // Property paths: dotted and bracketed.
        assert_eq!(
            field("tags['cost-center']").unwrap(),
            vec!["tags".to_string(), "cost-center".to_string()]
        );
        assert_eq!(
            field("properties.principalId").unwrap(),
            vec!["properties".to_string(), "principalId".to_string()]
        );
        assert!(field("tags[").is_err());
        assert!(field("nope.x").is_err());
        let ra = json!({"properties": {"principalId": "AbC"}, "tags": {"env": "prod"}});
        assert!(eval(
            &parse_cond("properties.principalId in~ ('x', 'abc')").unwrap(),
            &ra
        ));
        assert!(!eval(
            &parse_cond("properties.principalId in ('x', 'abc')").unwrap(),
            &ra
        ));
        assert!(eval(&parse_cond("tags['env'] == 'prod'").unwrap(), &ra));
        assert!(eval(&parse_cond("isnull(tags.team)").unwrap(), &ra));
        let (t, _) = parse_query("authorizationresources | where type =~ 'x'").unwrap();
        assert_eq!(t, Table::AuthorizationResources);
        assert_eq!(hms(Duration::from_millis(4500)), "00:00:05");
    }
}

// ---------------------------------------------------------------------------
// `resourcechanges` (a separate KQL subset: the pattern of "Get resource changes",
// <https://learn.microsoft.com/azure/governance/resource-graph/how-to/get-resource-changes>)
// ---------------------------------------------------------------------------

/// A value from a dotted path of a row (`properties.changeAttributes.timestamp`).
fn path_value<'a>(row: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = row;
    for seg in path.split('.') {
        v = v.get(seg)?;
    }
    Some(v)
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

/// `datetime(…)` / `datetime('…')` or `ago(Nd|h|m|s|ms)`.
fn time_literal(s: &str) -> Result<chrono::DateTime<chrono::Utc>, ArmError> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if let Some(inner) = lower
        .strip_prefix("datetime(")
        .and_then(|x| x.strip_suffix(')'))
    {
        let raw = &t["datetime(".len().."datetime(".len() + inner.len()];
        let raw = raw.trim().trim_matches(|c| c == '\'' || c == '"');
        return parse_time(raw).ok_or_else(|| invalid_query(&format!("Invalid datetime '{raw}'.")));
    }
    if let Some(inner) = lower.strip_prefix("ago(").and_then(|x| x.strip_suffix(')')) {
        let inner = inner.trim();
        let split = inner
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(inner.len());
        let n: f64 = inner[..split]
            .parse()
            .map_err(|_| invalid_query(&format!("Invalid timespan '{inner}'.")))?;
        let secs = match &inner[split..] {
            "d" => n * 86400.0,
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1000.0,
            u => return Err(invalid_query(&format!("Unknown timespan unit '{u}'."))),
        };
        return Ok(chrono::Utc::now() - chrono::Duration::milliseconds((secs * 1000.0) as i64));
    }
    Err(invalid_query(&format!(
        "Expected datetime(…) or ago(…), got '{t}'."
    )))
}

#[derive(Debug, Clone)]
enum ChangeCond {
    Str {
        col: String,
        value: String,
        ci: bool,
        negate: bool,
    },
    In {
        col: String,
        values: Vec<String>,
        ci: bool,
    },
    Time {
        col: String,
        op: &'static str,
        at: chrono::DateTime<chrono::Utc>,
    },
    Contains {
        col: String,
        value: String,
    },
    And(Vec<ChangeCond>),
    Or(Vec<ChangeCond>),
}

fn parse_change_cond(s: &str) -> Result<ChangeCond, ArmError> {
    let s = strip_parens(s);
    if let Some(c) = parse_bool(s, parse_change_cond, ChangeCond::Or, ChangeCond::And) {
        return c;
    }
    let lower = s.to_ascii_lowercase();
    for op in [" contains ", " has "] {
        if let Some(idx) = lower.find(op) {
            return Ok(ChangeCond::Contains {
                col: s[..idx].trim().to_string(),
                value: literal(&s[idx + op.len()..])?,
            });
        }
    }
    if let Some(r) = parse_in(s, &lower) {
        let (col, values, ci) = r?;
        return Ok(ChangeCond::In { col, values, ci });
    }
    if let Some(r) = parse_str_cmp(s) {
        let (col, value, ci, negate) = r?;
        return Ok(ChangeCond::Str {
            col,
            value,
            ci,
            negate,
        });
    }
    for op in [">=", "<=", ">", "<"] {
        if let Some(idx) = s.find(op) {
            return Ok(ChangeCond::Time {
                col: s[..idx].trim().to_string(),
                op,
                at: time_literal(&s[idx + op.len()..])?,
            });
        }
    }
    Err(invalid_query(&format!("Unsupported condition '{s}'.")))
}

fn eval_change(c: &ChangeCond, row: &Value) -> bool {
    match c {
        ChangeCond::Str {
            col,
            value,
            ci,
            negate,
        } => {
            let v = as_text(path_value(row, col));
            let eq = if *ci {
                v.eq_ignore_ascii_case(value)
            } else {
                v == *value
            };
            eq != *negate
        }
        ChangeCond::In { col, values, ci } => {
            let v = as_text(path_value(row, col));
            values.iter().any(|x| {
                if *ci {
                    x.eq_ignore_ascii_case(&v)
                } else {
                    *x == v
                }
            })
        }
        ChangeCond::Time { col, op, at } => {
            let Some(t) = parse_time(&as_text(path_value(row, col))) else {
                return false;
            };
            match *op {
                ">" => t > *at,
                ">=" => t >= *at,
                "<" => t < *at,
                _ => t <= *at,
            }
        }
        ChangeCond::Contains { col, value } => as_text(path_value(row, col))
            .to_ascii_lowercase()
            .contains(&value.to_ascii_lowercase()),
        ChangeCond::And(cs) => cs.iter().all(|c| eval_change(c, row)),
        ChangeCond::Or(cs) => cs.iter().any(|c| eval_change(c, row)),
    }
}

/// `name = expr` of an `extend`: `expr` is a dotted path, optionally wrapped in
/// `todatetime(…)`, `tostring(…)` or `toguid(…)` (the doc's pattern). `tostring` of an
/// object gives its JSON text.
fn extend_value(row: &Value, expr: &str) -> Result<Value, ArmError> {
    let e = expr.trim();
    let lower = e.to_ascii_lowercase();
    for f in ["todatetime(", "tostring(", "toguid("] {
        if let Some(inner) = lower.strip_prefix(f).and_then(|x| x.strip_suffix(')')) {
            let path = &e[f.len()..f.len() + inner.len()];
            let v = path_value(row, path.trim()).cloned().unwrap_or(Value::Null);
            return Ok(if f == "tostring(" && !v.is_null() && !v.is_string() {
                Value::String(v.to_string())
            } else {
                v
            });
        }
    }
    if e.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        return Ok(path_value(row, e).cloned().unwrap_or(Value::Null));
    }
    Err(invalid_query(&format!("Unsupported expression '{e}'.")))
}

/// Runs a `resourcechanges | …` query over the visible change rows: `extend`, `where`,
/// `order by` / `sort by`, `project`, `limit` / `take`. Returns the rows and the columns.
fn query_changes(
    q: &str,
    mut rows: Vec<Value>,
    subs: Option<&[String]>,
) -> Result<(Vec<Value>, Vec<String>), ArmError> {
    if let Some(subs) = subs {
        rows.retain(|r| subs.contains(&as_text(r.get("subscriptionId")).to_ascii_lowercase()));
    }
    let parts = split_top(q, "|");
    let mut columns: Vec<String> = [
        "id",
        "name",
        "type",
        "tenantId",
        "location",
        "resourceGroup",
        "subscriptionId",
        "properties",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in &parts[1..] {
        let (kw, rest) = p
            .split_once(char::is_whitespace)
            .unwrap_or((p.as_str(), ""));
        let rest = rest.trim();
        match kw.to_ascii_lowercase().as_str() {
            "extend" => {
                for assignment in split_top(rest, ",") {
                    let (name, expr) = assignment.split_once('=').ok_or_else(|| {
                        invalid_query(&format!("Expected 'name = expr', got '{assignment}'."))
                    })?;
                    let name = name.trim().to_string();
                    for r in rows.iter_mut() {
                        let v = extend_value(r, expr)?;
                        if let Value::Object(m) = r {
                            m.insert(name.clone(), v);
                        }
                    }
                    if !columns.contains(&name) {
                        columns.push(name);
                    }
                }
            }
            "where" => {
                let c = parse_change_cond(rest)?;
                rows.retain(|r| eval_change(&c, r));
            }
            "order" | "sort" => {
                let by = rest
                    .strip_prefix("by ")
                    .or_else(|| rest.strip_prefix("BY "))
                    .ok_or_else(|| invalid_query("Expected 'by' after 'order'."))?;
                let mut it = by.split_whitespace();
                let col = it.next().unwrap_or("").to_string();
                let desc = match it.next().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("desc") => true,
                    Some("asc") => false,
                    Some(o) => return Err(invalid_query(&format!("Unknown sort order '{o}'."))),
                };
                // Timestamps in RFC 3339 with one offset sort as text.
                rows.sort_by_key(|r| as_text(path_value(r, &col)));
                if desc {
                    rows.reverse();
                }
            }
            "project" => {
                let cols: Vec<String> = split_top(rest, ",")
                    .iter()
                    .map(|c| c.trim().to_string())
                    .collect();
                rows = rows
                    .into_iter()
                    .map(|r| {
                        let mut m = Map::new();
                        for c in &cols {
                            m.insert(c.clone(), path_value(&r, c).cloned().unwrap_or(Value::Null));
                        }
                        Value::Object(m)
                    })
                    .collect();
                columns = cols;
            }
            "limit" | "take" => {
                let n: usize = rest
                    .parse()
                    .map_err(|_| invalid_query(&format!("Expected a number after '{kw}'.")))?;
                rows.truncate(n);
            }
            other => {
                return Err(invalid_query(&format!(
                    "The simulator does not support the operator '{other}' on resourcechanges."
                )));
            }
        }
    }
    Ok((rows, columns))
}
