//! Azure Resource Graph: the identity blocks of every VM and VMSS of some subscriptions, a
//! page of up to 1,000 rows per request, for bulk drift detection; the role assignments of
//! many principals at once (`AuthorizationResources`); any other query, paged; and the
//! `resourcechanges` change feed between resyncs.
//!
//! Query API: `specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2021-03-01/resourcegraph.json`
//! in Azure/azure-rest-api-specs; paging: "Working with large Azure resource data sets"
//! (<https://learn.microsoft.com/azure/governance/resource-graph/concepts/work-with-data>);
//! the `AuthorizationResources` table: "Azure Resource Graph sample queries by table"
//! (<https://learn.microsoft.com/azure/governance/resource-graph/samples/samples-by-table>);
//! the change feed: "Get resource changes"
//! (<https://learn.microsoft.com/azure/governance/resource-graph/how-to/get-resource-changes>).

use reqwest::Method;
use serde_json::{Value, json};

use vmidentity_planner::changefeed::{
    ChangeKind, ChangeRecord, format_rfc3339_ms, parse_rfc3339_ms,
};

use crate::client::{ArmClient, RequestKind};
use crate::error::AzureError;

/// The Resource Graph api-version used.
pub const RESOURCE_GRAPH_API_VERSION: &str = "2021-03-01";
/// Resource Graph's largest page.
pub const MAX_PAGE: u32 = 1000;
/// Subscriptions per query (Resource Graph recommends grouping at most 300).
pub const SUBSCRIPTIONS_PER_QUERY: usize = 300;

/// Principal IDs per `AuthorizationResources` query (CHOSEN: about 20 KB of query text for
/// 500 GUIDs, well inside a request body; a page holds 1,000 rows, so a chunk of VM
/// identities with two grants each fills about one page).
pub const PRINCIPALS_PER_QUERY: usize = 500;

/// One role assignment as the `AuthorizationResources` table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignmentRow {
    /// The assignment's ARM ID (`{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`).
    pub id: String,
    /// The assignment's name (a GUID).
    pub name: String,
    /// `properties.principalId`.
    pub principal_id: String,
    /// `properties.principalType` (`ServicePrincipal`, `User`, `Group`, ...), empty when absent.
    pub principal_type: String,
    /// `properties.roleDefinitionId` as the table shows it.
    pub role_definition_id: String,
    /// `properties.scope`.
    pub scope: String,
}

impl RoleAssignmentRow {
    /// Reads a row; `None` when it is not a role assignment (no `principalId` / `scope` /
    /// `roleDefinitionId`).
    pub fn from_row(row: &Value) -> Option<RoleAssignmentRow> {
        let props = row.get("properties")?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        Some(RoleAssignmentRow {
            id: s(row.get("id"))?,
            name: s(row.get("name")).unwrap_or_default(),
            principal_id: s(props.get("principalId"))?,
            principal_type: s(props.get("principalType")).unwrap_or_default(),
            role_definition_id: s(props.get("roleDefinitionId"))?,
            scope: s(props.get("scope"))?,
        })
    }
}

/// A KQL string literal: single-quoted, `\` and `'` escaped ("Kusto string data type").
pub fn kql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The KQL query for the role assignments of these principals (case-insensitive `in~`: the
/// principal IDs are GUIDs whose case may differ between Graph and ARM).
pub fn role_assignments_query(principal_ids: &[String]) -> String {
    let list: Vec<String> = principal_ids.iter().map(|p| kql_string(p)).collect();
    format!(
        "AuthorizationResources | where type =~ 'microsoft.authorization/roleassignments' | where properties.principalId in~ ({}) | project id, name, properties | order by id asc",
        list.join(", ")
    )
}

/// One VM or VMSS as Resource Graph shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRow {
    pub id: String,
    /// The identity block, as a GET at 2018-06-01+ shows it (Null when none).
    pub identity: Value,
}

/// The KQL query: VMs and VMSS with their identity, ordered by id (`id` projected so that
/// paging with `$skipToken` works).
pub fn identity_query() -> &'static str {
    "Resources | where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets' | project id, type, identity | order by id asc"
}

impl ArmClient {
    /// Every VM/VMSS identity block of the subscriptions, following `$skipToken`.
    /// Returns the rows and the number of Resource Graph requests it took.
    pub async fn query_identities(
        &self,
        subscriptions: &[String],
    ) -> Result<(Vec<IdentityRow>, u32), AzureError> {
        let mut rows = Vec::new();
        let pages = self
            .query_identities_each(subscriptions, |id, identity| {
                rows.push(IdentityRow {
                    id: id.to_string(),
                    identity: identity.clone(),
                })
            })
            .await?;
        Ok((rows, pages))
    }

    /// Like [`query_identities`](Self::query_identities), but hands each row to `on_row`
    /// (its `id` and identity block, `Null` when none) as its page arrives, so no more than
    /// one page (1,000 rows) is held at a time. Returns the number of requests.
    pub async fn query_identities_each(
        &self,
        subscriptions: &[String],
        mut on_row: impl FnMut(&str, &Value),
    ) -> Result<u32, AzureError> {
        self.query_each(subscriptions, identity_query(), |row| {
            match row.get("id").and_then(Value::as_str) {
                Some(id) => on_row(id, row.get("identity").unwrap_or(&Value::Null)),
                // Its target, if it has one, is then "missing" and read with a GET.
                None => tracing::warn!("Resource Graph row without a string `id`: skipped"),
            }
        })
        .await
    }

    /// The change feed: `resourcechanges` records of VMs and scale sets in the
    /// subscriptions, newer than `since_ms` (ms since the epoch), that create or delete one
    /// or change its identity ([`change_query`]), oldest first, every page. Returns the
    /// records and the number of requests.
    pub async fn query_changes(
        &self,
        subscriptions: &[String],
        since_ms: i64,
    ) -> Result<(Vec<ChangeRecord>, u32), AzureError> {
        let mut out = Vec::new();
        let q = change_query(since_ms);
        let pages = self
            .query_each(subscriptions, &q, |row| {
                if let Some(r) = change_record(row) {
                    out.push(r);
                }
            })
            .await?;
        Ok((out, pages))
    }

    /// The role assignments held by these principals in the subscriptions, from the
    /// `AuthorizationResources` table: one query per [`PRINCIPALS_PER_QUERY`] principals
    /// (duplicates dropped), each paged with `$skipToken`; never one list per principal.
    /// Assignments at management-group or root scope are not in a subscription's rows.
    /// Returns the rows (ordered by id within each chunk) and the number of requests.
    pub async fn query_role_assignments(
        &self,
        subscriptions: &[String],
        principal_ids: &[String],
    ) -> Result<(Vec<RoleAssignmentRow>, u32), AzureError> {
        let mut unique: Vec<String> = principal_ids
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        unique.sort();
        unique.dedup();
        let mut rows = Vec::new();
        let mut pages = 0u32;
        for chunk in unique.chunks(PRINCIPALS_PER_QUERY) {
            let q = role_assignments_query(chunk);
            pages += self
                .query_each(subscriptions, &q, |row| {
                    if let Some(r) = RoleAssignmentRow::from_row(row) {
                        rows.push(r);
                    }
                })
                .await?;
        }
        Ok((rows, pages))
    }

    /// Runs any Resource Graph query over the subscriptions (at most
    /// [`SUBSCRIPTIONS_PER_QUERY`] per request), 1,000 rows a page, following `$skipToken`,
    /// handing each row to `on_row` as its page arrives. The query must project `id` (or not
    /// project at all) for `$skipToken` paging. A page Resource Graph marks
    /// `resultTruncated` without a `$skipToken` is an error, never a silent partial result.
    /// Returns the number of requests.
    pub async fn query_each(
        &self,
        subscriptions: &[String],
        query: &str,
        mut on_row: impl FnMut(&Value),
    ) -> Result<u32, AzureError> {
        let mut pages = 0u32;
        let url = self.url(
            "/providers/Microsoft.ResourceGraph/resources",
            RESOURCE_GRAPH_API_VERSION,
        )?;
        for chunk in subscriptions.chunks(SUBSCRIPTIONS_PER_QUERY) {
            let mut skip_token: Option<String> = None;
            loop {
                let mut options = json!({"$top": MAX_PAGE, "resultFormat": "objectArray"});
                if let Some(t) = &skip_token {
                    options["$skipToken"] = json!(t);
                }
                let body = json!({"subscriptions": chunk, "query": query, "options": options});
                let resp = self
                    .send(Method::POST, &url, Some(&body), RequestKind::Query)
                    .await?;
                pages += 1;
                // `data` is required (QueryResponse in Azure/azure-rest-api-specs
                // `specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2021-03-01/resourcegraph.json`;
                // an array with resultFormat objectArray): a page without it is refused, not
                // read as "no rows" (which would make every target look missing).
                let Some(data) = resp.body.get("data").and_then(Value::as_array) else {
                    return Err(AzureError::InvalidResponse {
                        url: url.to_string(),
                        message:
                            "Resource Graph answer has no `data` array (resultFormat objectArray)"
                                .into(),
                    });
                };
                for row in data {
                    on_row(row);
                }
                let truncated = match resp.body.get("resultTruncated") {
                    Some(Value::String(t)) => t.eq_ignore_ascii_case("true"),
                    Some(Value::Bool(b)) => *b,
                    _ => false,
                };
                skip_token = resp
                    .body
                    .get("$skipToken")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if skip_token.is_none() {
                    if truncated {
                        return Err(AzureError::InvalidResponse {
                            url: url.to_string(),
                            message: "Resource Graph truncated the result without a $skipToken (the query must project `id` to be paged)".into(),
                        });
                    }
                    break;
                }
            }
        }
        Ok(pages)
    }
}

/// The change feed query: the pattern of "Get resource changes"
/// (<https://learn.microsoft.com/azure/governance/resource-graph/how-to/get-resource-changes>:
/// `extend changeTime = todatetime(properties.changeAttributes.timestamp) … | where
/// changeTime > datetime(…)`), narrowed to VMs and scale sets, to creations and deletions and
/// to changes whose property paths name `identity`; oldest first, `id` projected for paging.
pub fn change_query(since_ms: i64) -> String {
    format!(
        "resourcechanges \
| extend changeTime = todatetime(properties.changeAttributes.timestamp), targetResourceId = tostring(properties.targetResourceId), targetResourceType = tostring(properties.targetResourceType), changeType = tostring(properties.changeType), correlationId = tostring(properties.changeAttributes.correlationId), changedProperties = tostring(properties.changes) \
| where changeTime > datetime({}) \
| where targetResourceType in~ ('microsoft.compute/virtualmachines', 'microsoft.compute/virtualmachinescalesets') \
| where changeType in ('Create', 'Delete') or changedProperties contains 'identity' \
| order by changeTime asc \
| project id, name, changeTime, targetResourceId, changeType, correlationId",
        format_rfc3339_ms(since_ms)
    )
}

/// A row of [`change_query`] (projected columns, or the full row's `properties`) as a
/// [`ChangeRecord`]; None without a target or a readable timestamp.
pub fn change_record(row: &Value) -> Option<ChangeRecord> {
    let props = row.get("properties");
    let field = |projected: &str, path: &[&str]| -> Option<String> {
        row.get(projected)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                let mut v = props?;
                for p in path {
                    v = v.get(*p)?;
                }
                v.as_str().map(str::to_string)
            })
    };
    let target = field("targetResourceId", &["targetResourceId"])?;
    let ts = field("changeTime", &["changeAttributes", "timestamp"])?;
    Some(ChangeRecord {
        target,
        kind: ChangeKind::parse(&field("changeType", &["changeType"]).unwrap_or_default()),
        timestamp_ms: parse_rfc3339_ms(&ts)?,
        change_id: row
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        correlation_id: field("correlationId", &["changeAttributes", "correlationId"])
            .unwrap_or_default(),
    })
}
