//! Azure Resource Graph: the identity blocks of every VM and VMSS of some subscriptions, a
//! page of up to 1,000 rows per request, for bulk drift detection.

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{ArmClient, RequestKind};
use crate::error::AzureError;

/// The Resource Graph api-version used.
pub const RESOURCE_GRAPH_API_VERSION: &str = "2021-03-01";
/// Resource Graph's largest page.
pub const MAX_PAGE: u32 = 1000;
/// Subscriptions per query (Resource Graph recommends grouping at most 300).
pub const SUBSCRIPTIONS_PER_QUERY: usize = 300;

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
                let body =
                    json!({"subscriptions": chunk, "query": identity_query(), "options": options});
                let resp = self
                    .send(Method::POST, &url, Some(&body), RequestKind::Query)
                    .await?;
                pages += 1;
                // `data` is required (QueryResponse in Azure/azure-rest-api-specs
                // `specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2021-03-01/resourcegraph.json`;
                // an array with resultFormat objectArray): a page without it is refused, not
                // read as "no VMs" (which would make every target look missing).
                let Some(data) = resp.body.get("data").and_then(Value::as_array) else {
                    return Err(AzureError::InvalidResponse {
                        url: url.clone(),
                        message:
                            "Resource Graph answer has no `data` array (resultFormat objectArray)"
                                .into(),
                    });
                };
                for row in data {
                    match row.get("id").and_then(Value::as_str) {
                        Some(id) => on_row(id, row.get("identity").unwrap_or(&Value::Null)),
                        // Its target, if it has one, is then "missing" and read with a GET.
                        None => {
                            tracing::warn!(url, "Resource Graph row without a string `id`: skipped")
                        }
                    }
                }
                skip_token = resp
                    .body
                    .get("$skipToken")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if skip_token.is_none() {
                    break;
                }
            }
        }
        Ok(pages)
    }
}
