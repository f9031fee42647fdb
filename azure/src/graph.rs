//! Microsoft Graph v1.0 group memberships of managed identities (service principals).
//!
//! The [`Executor`](crate::Executor) holds a Graph client: an [`ArmClient`] built with
//! [`ClientConfig::graph`](crate::ClientConfig::graph), with the same retries with jittered
//! backoff, `Retry-After` on 429, 5xx handling, counters and observer, and tokens for the
//! Graph scope. Membership writes are [`Write`](vmidentity_planner::Write)s rendered by the
//! planner and sent by the executor; this module reads memberships and interprets the
//! answers. Errors are classified by the same [`classify`](crate::error::classify); a 404 is
//! then attributed by the id Graph names (the group → `GroupNotFound`, the member being
//! added → `PrincipalNotReplicated`).
//!
//! Paths are sent as written: `$ref` stays a literal `$` (reqwest / `url` do not encode `$`
//! in paths). Group object IDs and principal IDs must be GUIDs (principal IDs can come from a
//! tenant-writable status record): anything else is refused with
//! [`AzureError::InvalidArgument`] before a URL is built from it, and URLs are built segment
//! by segment ([`ArmClient::endpoint_url`]).
//!
//! - add (`POST /v1.0/groups/{gid}/members/$ref` with
//!   `{"@odata.id":"{endpoint}/v1.0/directoryObjects/{pid}"}`, the configured endpoint:
//!   `https://graph.microsoft.com` in the public cloud): 204 → done; "One or more added
//!   object references already exist" (400) → done (already a member). A 404 naming the
//!   group → class `GroupNotFound`; naming the principal → `PrincipalNotReplicated` (Graph
//!   does not know it yet, or it was deleted; retryable).
//! - remove (`DELETE /v1.0/groups/{gid}/members/{pid}/$ref`): 204 → done; 404 → done (Graph
//!   answers 404 naming the group both when the principal is not a member and when the
//!   group does not exist; either way the principal is not a member); the 400 "One or more
//!   removed object references do not exist" some tenants answer → done.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tracing::{debug, warn};
use vmidentity_planner::grants::GRAPH_VERSION;

use crate::authorization::is_guid;
use crate::client::{ArmClient, RequestKind, Response};
use crate::error::{AzureError, ErrorClass, classify};
use crate::records::Sent;

/// Requests per JSON batch ("Combine multiple HTTP requests using JSON batching",
/// <https://learn.microsoft.com/graph/json-batching>: up to 20).
pub const MAX_BATCH: usize = 20;
/// Rounds of a batch's throttled members re-sent after their `Retry-After`.
const BATCH_ROUNDS: u32 = 4;

/// `@odata.type` of a group in `memberOf` answers.
const GROUP_TYPE: &str = "#microsoft.graph.group";

/// Ids (lower-cased) of the groups the principal is a **direct** member of (read through
/// [`Executor::member_of`](crate::Executor::member_of)):
/// `GET /v1.0/servicePrincipals/{pid}/memberOf`, following `@odata.nextLink`; entries
/// other than `#microsoft.graph.group` (directory roles, administrative units) are
/// skipped.
///
/// A 404 for the principal gives an **empty list**: Graph does not know the object
/// (deleted, or not replicated yet: Graph answers 404 `Request_ResourceNotFound`), and
/// an object Graph does not know is a member of nothing. Adding it as a member then
/// answers `PrincipalNotReplicated`. The principal ID must be a GUID
/// ([`AzureError::InvalidArgument`], nothing sent, otherwise).
pub(crate) async fn member_of(
    graph: &ArmClient,
    principal_id: &str,
) -> Result<Vec<String>, AzureError> {
    require_guid("principal ID", principal_id)?;
    let url = graph.endpoint_url(&format!(
        "/{GRAPH_VERSION}/servicePrincipals/{principal_id}/memberOf"
    ))?;
    let items = match graph.get_all_pages(&url, "@odata.nextLink").await {
        Ok(items) => items,
        Err(e) if e.status() == Some(404) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(items
        .iter()
        .filter(|o| o.get("@odata.type").and_then(Value::as_str) == Some(GROUP_TYPE))
        .filter_map(|o| o.get("id").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect())
}

/// The answer to adding a member (see the module documentation).
pub(crate) fn add_answer(
    sent: Result<Response, AzureError>,
    group_id: &str,
    principal_id: &str,
) -> Result<Sent, AzureError> {
    match sent {
        Ok(_) => Ok(Sent::Done),
        Err(e) if e.status() == Some(400) && already_member(&e) => Ok(Sent::Done),
        Err(e) if e.status() == Some(404) => Err(attribute_404(e, group_id, principal_id)),
        Err(e) => Err(e),
    }
}

/// The answer to removing a member (see the module documentation).
pub(crate) fn remove_answer(sent: Result<Response, AzureError>) -> Result<Sent, AzureError> {
    match sent {
        Ok(_) => Ok(Sent::Done),
        Err(e) if e.status() == Some(404) => Ok(Sent::Done),
        Err(e)
            if e.status() == Some(400)
                && e.message()
                    .to_ascii_lowercase()
                    .contains("removed object references do not exist") =>
        {
            Ok(Sent::Done)
        }
        Err(e) => Err(e),
    }
}

/// Graph object IDs vmidentity sends are GUIDs; anything else (a path, a `..`, an encoded
/// slash) is refused before a URL is built from it.
pub(crate) fn require_guid(what: &str, id: &str) -> Result<(), AzureError> {
    if is_guid(id) {
        Ok(())
    } else {
        Err(AzureError::InvalidArgument {
            message: format!("{what} {id:?} is not a GUID; no Graph request is built from it"),
        })
    }
}

fn already_member(e: &AzureError) -> bool {
    e.message()
        .to_ascii_lowercase()
        .contains("added object references already exist")
}

/// A Graph 404 on add names the object it could not find: the group or the member.
fn attribute_404(e: AzureError, group_id: &str, principal_id: &str) -> AzureError {
    let msg = e.message().to_ascii_lowercase();
    let names = |id: &str| !id.is_empty() && msg.contains(&id.to_ascii_lowercase());
    if names(principal_id) && !names(group_id) {
        e.with_class(ErrorClass::PrincipalNotReplicated)
    } else if names(group_id) {
        e.with_class(ErrorClass::GroupNotFound)
    } else {
        e
    }
}

/// The direct groups of many principals ([`member_of`] for each), 20 `memberOf` reads per
/// `POST /v1.0/$batch` ("Combine multiple HTTP requests using JSON batching",
/// <https://learn.microsoft.com/graph/json-batching>). Each request in a batch answers on its
/// own: 200 → its groups (later pages, rare with `$top=999`, read with `@odata.nextLink`);
/// 404 → no groups (as [`member_of`]); 429 → re-sent in a later batch after its
/// `Retry-After` (the longest of the round, at most the client's `max_backoff`; Graph
/// evaluates each request of a batch against its limits, "Microsoft Graph throttling
/// guidance", <https://learn.microsoft.com/graph/throttling>), up to four rounds, then a
/// throttled error carrying `retry_after`; any other status → that principal's classified
/// error. An error of the batch POST itself fails every principal of that batch.
/// Returns one result per distinct principal (lower-cased) and the number of HTTP requests.
pub(crate) async fn member_of_many(
    graph: &ArmClient,
    principal_ids: &[String],
) -> (BTreeMap<String, Result<Vec<String>, AzureError>>, u32) {
    let mut out: BTreeMap<String, Result<Vec<String>, AzureError>> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    for p in principal_ids {
        let p = p.to_ascii_lowercase();
        if out.contains_key(&p) || pending.contains(&p) {
            continue;
        }
        match require_guid("principal ID", &p) {
            Ok(()) => pending.push(p),
            Err(e) => {
                out.insert(p, Err(e));
            }
        }
    }
    let mut requests = 0u32;
    let url = match graph.endpoint_url(&format!("/{GRAPH_VERSION}/$batch")) {
        Ok(u) => u,
        Err(e) => {
            for p in pending {
                out.insert(p, Err(e.clone()));
            }
            return (out, requests);
        }
    };
    for round in 1..=BATCH_ROUNDS {
        let mut throttled: Vec<(String, Duration)> = Vec::new();
        for chunk in pending.chunks(MAX_BATCH) {
            let body = json!({
                "requests": chunk.iter().enumerate().map(|(i, p)| json!({
                    "id": i.to_string(),
                    "method": "GET",
                    "url": format!("/servicePrincipals/{p}/memberOf?$top=999"),
                })).collect::<Vec<_>>()
            });
            // The POST takes one read token; the other requests of the batch one each.
            graph.pace_graph_reads(chunk.len().saturating_sub(1)).await;
            requests += 1;
            let resp = match graph
                .send(Method::POST, &url, Some(&body), RequestKind::Read)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    for p in chunk {
                        out.insert(p.clone(), Err(e.clone()));
                    }
                    continue;
                }
            };
            let answers: BTreeMap<String, &Value> = resp
                .body
                .get("responses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| Some((r.get("id")?.as_str()?.to_string(), r)))
                .collect();
            for (i, p) in chunk.iter().enumerate() {
                let Some(a) = answers.get(&i.to_string()) else {
                    out.insert(
                        p.clone(),
                        Err(AzureError::InvalidResponse {
                            url: url.clone(),
                            message: format!("the batch has no response for request {i}"),
                        }),
                    );
                    continue;
                };
                let status = a.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                let item_url = format!("{url} [{p}/memberOf]");
                match status {
                    200 => {
                        let mut groups = groups_of(a.get("body"));
                        if let Some(next) = a
                            .get("body")
                            .and_then(|b| b.get("@odata.nextLink"))
                            .and_then(Value::as_str)
                        {
                            match graph.get_all_pages(next, "@odata.nextLink").await {
                                Ok(items) => {
                                    requests += 1;
                                    groups.extend(groups_of(Some(&json!({"value": items}))));
                                }
                                Err(e) => {
                                    out.insert(p.clone(), Err(e));
                                    continue;
                                }
                            }
                        }
                        out.insert(p.clone(), Ok(groups));
                    }
                    404 => {
                        out.insert(p.clone(), Ok(Vec::new()));
                    }
                    _ => {
                        let headers = a.get("headers");
                        let header = |n: &str| {
                            headers.and_then(|h| {
                                h.as_object()?
                                    .iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                                    .and_then(|(_, v)| v.as_str())
                                    .and_then(|v| v.trim().parse::<f64>().ok())
                            })
                        };
                        let retry_after = header("retry-after")
                            .filter(|s| s.is_finite() && *s >= 0.0)
                            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
                        let err = a.get("body").and_then(|b| b.get("error"));
                        let field = |k: &str| {
                            err.and_then(|e| e.get(k))
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string()
                        };
                        let (code, message) = (field("code"), field("message"));
                        let class = classify(status, &code, &message);
                        if class == ErrorClass::Throttled && round < BATCH_ROUNDS {
                            throttled.push((
                                p.clone(),
                                retry_after.unwrap_or(graph.config().default_retry_after),
                            ));
                            continue;
                        }
                        out.insert(
                            p.clone(),
                            Err(AzureError::Arm {
                                method: "GET".into(),
                                url: item_url,
                                status,
                                code,
                                message,
                                retry_after,
                                class,
                            }),
                        );
                    }
                }
            }
        }
        if throttled.is_empty() {
            break;
        }
        let wait = throttled.iter().map(|(_, d)| *d).max().unwrap_or_default();
        if wait
            > graph
                .config()
                .max_backoff
                .max(graph.config().max_inline_wait)
        {
            warn!(
                ?wait,
                principals = throttled.len(),
                "Graph throttled batch members for longer than the client waits"
            );
            for (p, d) in throttled {
                out.insert(
                    p.clone(),
                    Err(AzureError::SubscriptionThrottled {
                        subscription: "microsoft-graph".into(),
                        retry_after: d,
                    }),
                );
            }
            break;
        }
        debug!(
            ?wait,
            principals = throttled.len(),
            "re-sending throttled batch members after Retry-After"
        );
        tokio::time::sleep(wait).await;
        pending = throttled.into_iter().map(|(p, _)| p).collect();
    }
    (out, requests)
}

/// Group ids (lower-cased) of a `memberOf` page body.
fn groups_of(body: Option<&Value>) -> Vec<String> {
    body.and_then(|b| b.get("value"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|o| o.get("@odata.type").and_then(Value::as_str) == Some(GROUP_TYPE))
        .filter_map(|o| o.get("id").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect()
}
