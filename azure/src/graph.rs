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

use serde_json::Value;
use vmidentity_planner::grants::GRAPH_VERSION;

use crate::authorization::is_guid;
use crate::client::{ArmClient, Response};
use crate::error::{AzureError, ErrorClass};
use crate::records::Sent;

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
