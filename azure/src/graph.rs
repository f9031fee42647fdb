//! Microsoft Graph v1.0 group memberships of managed identities (service principals).
//!
//! [`GraphClient`] wraps an [`ArmClient`] built with [`ClientConfig::graph`]: the same
//! retries with jittered backoff, `Retry-After` on 429, 5xx handling, counters and
//! observer, with tokens for the Graph scope. Errors are classified by the same
//! [`classify`](crate::error::classify); a 404 is then attributed by the id Graph names
//! (the group → `GroupNotFound`, the member being added → `PrincipalNotReplicated`).
//!
//! Paths are sent as written: `$ref` stays a literal `$` (reqwest / `url` do not encode `$`
//! in paths). Group object IDs and principal IDs must be GUIDs (principal IDs can come from a
//! tenant-writable status record): anything else is refused with
//! [`AzureError::InvalidArgument`] before a URL is built from it, and URLs are built segment
//! by segment ([`ArmClient::endpoint_url`]).

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Map, Value};

use crate::authorization::is_guid;
use crate::client::{ArmClient, ClientConfig, RequestKind};
use crate::error::{AzureError, ErrorClass};
use crate::token::TokenSource;

/// The Graph version every path is under.
pub const GRAPH_VERSION: &str = "v1.0";

/// `@odata.type` of a group in `memberOf` answers.
const GROUP_TYPE: &str = "#microsoft.graph.group";

/// Microsoft Graph client for group memberships. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphClient(ArmClient);

impl GraphClient {
    /// A client for `cfg` (normally [`ClientConfig::graph`]; the token source is asked for
    /// `cfg.token_scope`).
    pub fn new(cfg: ClientConfig, tokens: Arc<dyn TokenSource>) -> Result<GraphClient, AzureError> {
        Ok(GraphClient(ArmClient::new(cfg, tokens)?))
    }

    /// Wraps an existing client (which must point at Graph with a Graph token scope).
    pub fn from_client(client: ArmClient) -> GraphClient {
        GraphClient(client)
    }

    /// The underlying HTTP client (stats, config, observer).
    pub fn client(&self) -> &ArmClient {
        &self.0
    }

    fn url(&self, path: &str) -> Result<String, AzureError> {
        self.0.endpoint_url(&format!("/{GRAPH_VERSION}{path}"))
    }

    /// `POST /v1.0/groups/{gid}/members/$ref` with
    /// `{"@odata.id":"{endpoint}/v1.0/directoryObjects/{pid}"}` (the configured endpoint:
    /// `https://graph.microsoft.com` in the public cloud). 204 → Ok; "One or more added
    /// object references already exist" (400) → Ok (already a member). A 404 naming the
    /// group → class `GroupNotFound`; naming the principal → `PrincipalNotReplicated`
    /// (Graph does not know it yet, or it was deleted; retryable). Both IDs must be GUIDs
    /// ([`AzureError::InvalidArgument`], nothing sent, otherwise).
    pub async fn add_member(&self, group_id: &str, principal_id: &str) -> Result<(), AzureError> {
        require_guid("group object ID", group_id)?;
        require_guid("principal ID", principal_id)?;
        let url = self.url(&format!("/groups/{group_id}/members/$ref"))?;
        let mut body = Map::new();
        body.insert(
            "@odata.id".into(),
            Value::String(self.url(&format!("/directoryObjects/{principal_id}"))?),
        );
        match self
            .0
            .send(
                Method::POST,
                &url,
                Some(&Value::Object(body)),
                RequestKind::Write,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(400) && already_member(&e) => Ok(()),
            Err(e) if e.status() == Some(404) => Err(attribute_404(e, group_id, principal_id)),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1.0/groups/{gid}/members/{pid}/$ref`. 204 → Ok; 404 → Ok (Graph answers
    /// 404 naming the group both when the principal is not a member and when the group
    /// does not exist; either way the principal is not a member); the 400 "One or more
    /// removed object references do not exist" some tenants answer → Ok. Both IDs must be
    /// GUIDs ([`AzureError::InvalidArgument`], nothing sent, otherwise).
    pub async fn remove_member(
        &self,
        group_id: &str,
        principal_id: &str,
    ) -> Result<(), AzureError> {
        require_guid("group object ID", group_id)?;
        require_guid("principal ID", principal_id)?;
        let url = self.url(&format!("/groups/{group_id}/members/{principal_id}/$ref"))?;
        match self
            .0
            .send(Method::DELETE, &url, None, RequestKind::Delete)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e)
                if e.status() == Some(400)
                    && e.message()
                        .to_ascii_lowercase()
                        .contains("removed object references do not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Ids (lower-cased) of the groups the principal is a **direct** member of:
    /// `GET /v1.0/servicePrincipals/{pid}/memberOf`, following `@odata.nextLink`; entries
    /// other than `#microsoft.graph.group` (directory roles, administrative units) are
    /// skipped.
    ///
    /// A 404 for the principal gives an **empty list**: Graph does not know the object
    /// (deleted, or not replicated yet — graph/GRAPH-MEMBERS.md §5), and an object Graph
    /// does not know is a member of nothing. Adding it will then answer the
    /// `PrincipalNotReplicated` error of [`GraphClient::add_member`]. The principal ID must
    /// be a GUID ([`AzureError::InvalidArgument`], nothing sent, otherwise).
    pub async fn member_of(&self, principal_id: &str) -> Result<Vec<String>, AzureError> {
        require_guid("principal ID", principal_id)?;
        let url = self.url(&format!("/servicePrincipals/{principal_id}/memberOf"))?;
        let items = match self.0.get_all_pages(&url, "@odata.nextLink").await {
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
}

/// Graph object IDs vmidentity sends are GUIDs; anything else (a path, a `..`, an encoded
/// slash) is refused before a URL is built from it.
fn require_guid(what: &str, id: &str) -> Result<(), AzureError> {
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
