//! The one door to Azure: every write vmidentity makes goes through an [`Executor`], built
//! for one credential (the controller's own, or a namespace's).
//!
//! A write is a typed [`Write`] from the planner; [`Write::request`] renders it to its HTTP
//! request (the same rendering `vmidentity plan -o json` prints), and the executor sends that
//! request as is: it prefixes the endpoint of the request's [`Service`] (ARM, or Microsoft
//! Graph when the executor has a Graph client) and adds the `api-version` query. What it
//! adds is behaviour, never content: the long-running operation and entity tags of identity
//! PATCHes, the adoption of a role assignment that exists under another name, and what counts
//! as success for each kind of write.
//!
//! The executor also makes the reads a plan needs: the target, role names, a principal's
//! role assignments ([`Executor::client`]) and group memberships ([`Executor::member_of`]).

use reqwest::Method;
use serde_json::Value;
use tracing::debug;
use vmidentity_planner::grants::PUBLIC_GRAPH_ENDPOINT;
use vmidentity_planner::{
    ApiVersion, ArmId, IF_MATCH, LiveResource, Request, Service, TargetPlan, Write,
};

use crate::authorization;
use crate::client::{ArmClient, RequestKind, Response};
use crate::error::AzureError;
use crate::graph;
pub use crate::records::Sent;

/// The Microsoft.ManagedIdentity api-version user-assigned identities are read at
/// (`specification/msi/resource-manager/Microsoft.ManagedIdentity/ManagedIdentity/stable/2023-01-31/ManagedIdentity.json`;
/// one of [`vmidentity_planner::arm_versions::MANAGED_IDENTITY`]).
pub const UAI_API_VERSION: &str = "2023-01-31";

/// The IDs of a user-assigned identity's service principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UaiIds {
    pub principal_id: Option<String>,
    pub client_id: Option<String>,
}

/// What sending a plan did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Writes sent (each once; retries of failed attempts not counted).
    pub writes: usize,
    /// The target as ARM answered the last write, when it could be read.
    pub live: Option<LiveResource>,
}

/// Sends writes through an [`ArmClient`] (and, for group memberships, a Graph client), all
/// with one credential. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    arm: ArmClient,
    /// An [`ArmClient`] built with [`ClientConfig::graph`](crate::ClientConfig::graph).
    graph: Option<ArmClient>,
}

impl Executor {
    /// An executor for ARM only (group membership writes and reads are refused).
    pub fn new(arm: ArmClient) -> Self {
        Executor { arm, graph: None }
    }

    /// The same executor with a Microsoft Graph client for group memberships: an
    /// [`ArmClient`] built with [`ClientConfig::graph`](crate::ClientConfig::graph) (Graph
    /// endpoint, Graph token scope), normally from the same credential as the ARM client.
    pub fn with_graph(mut self, graph: ArmClient) -> Self {
        self.graph = Some(graph);
        self
    }

    /// The ARM client (reads, stats, config, observer).
    pub fn client(&self) -> &ArmClient {
        &self.arm
    }

    /// The Graph client, when there is one (stats, config).
    pub fn graph_client(&self) -> Option<&ArmClient> {
        self.graph.as_ref()
    }

    /// Whether group memberships can be read and written.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// The Graph endpoint writes are rendered for: the Graph client's, else the public
    /// cloud's.
    pub fn graph_endpoint(&self) -> &str {
        self.graph
            .as_ref()
            .map_or(PUBLIC_GRAPH_ENDPOINT, |g| g.config().endpoint.as_str())
    }

    /// The request a write goes on the wire as ([`Write::request`] for this executor's
    /// Graph endpoint).
    pub fn render(&self, w: &Write) -> Request {
        w.request(self.graph_endpoint())
    }

    /// GET the target's live state at the given api-version.
    pub async fn read_target(
        &self,
        target: &ArmId,
        api_version: &ApiVersion,
    ) -> Result<LiveResource, AzureError> {
        let url = self.arm.url(target.as_str(), api_version.as_str())?;
        let body = self.arm.get(target.as_str(), api_version.as_str()).await?;
        parse_live(&url, &body)
    }

    /// GET a user-assigned identity (Microsoft.ManagedIdentity, [`UAI_API_VERSION`]): its
    /// `properties.principalId` and `clientId`.
    pub async fn read_user_assigned(&self, id: &ArmId) -> Result<UaiIds, AzureError> {
        let body = self.arm.get(id.as_str(), UAI_API_VERSION).await?;
        let field = |k: &str| {
            body.get("properties")
                .and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Ok(UaiIds {
            principal_id: field("principalId"),
            client_id: field("clientId"),
        })
    }

    /// Ids (lower-cased) of the groups the principal is a direct member of (Graph
    /// `memberOf`, paged; a principal Graph does not know is a member of nothing).
    pub async fn member_of(&self, principal_id: &str) -> Result<Vec<String>, AzureError> {
        graph::member_of(self.graph()?, principal_id).await
    }

    /// The direct groups of many principals, 20 `memberOf` reads per Graph `$batch`
    /// ([`crate::graph::member_of_many`]): one result per distinct principal (lower-cased),
    /// and the number of Graph requests made.
    pub async fn member_of_many(
        &self,
        principal_ids: &[String],
    ) -> Result<
        (
            std::collections::BTreeMap<String, Result<Vec<String>, AzureError>>,
            u32,
        ),
        AzureError,
    > {
        Ok(graph::member_of_many(self.graph()?, principal_ids).await)
    }

    /// Sends one write, rendered by [`Write::request`], and waits for it to take effect:
    ///
    /// - identity PATCH: `If-Match` when the write carries a tag (412 →
    ///   [`ErrorClass::PreconditionFailed`](crate::ErrorClass), nothing applied); the
    ///   long-running operation is polled, never re-sent → [`Sent::Identity`].
    /// - role assignment PUT → [`Sent::RoleAssignment`], or [`Sent::RoleAssignmentExists`]
    ///   with the assignment to adopt; an answer at another scope is
    ///   [`AzureError::ScopeMismatch`]; `PrincipalNotFound` is class `PrincipalNotReplicated`
    ///   (retryable). The name must be a GUID.
    /// - role assignment DELETE: 200, 204 and 404 → [`Sent::Done`]. The ID must be a role
    ///   assignment ID.
    /// - group member add / remove (Graph): see [`crate::graph`]. Both IDs must be GUIDs.
    ///
    /// What must not become a URL (a name or Graph ID that is not a GUID, a path with dot
    /// segments, `%`, `\`, ...) is refused with [`AzureError::InvalidArgument`] before
    /// anything is sent. A Graph write without a Graph client is refused the same way.
    pub async fn send(&self, w: &Write) -> Result<Sent, AzureError> {
        self.send_rendered(w, &self.render(w)).await
    }

    /// Sends the plan's identity writes in order. Stops at the first failure (later writes
    /// depend on earlier ones).
    ///
    /// A write with an `if_match` is sent with `If-Match`: the tag the plan was made against
    /// for the first write to a target, and for a later one the tag ARM answered the previous
    /// write to that target with (our own write changed it). If that answer carried no tag,
    /// the later write goes unconditional. A 412 surfaces as
    /// [`ErrorClass::PreconditionFailed`](crate::ErrorClass): nothing of that write was
    /// applied; the caller re-reads the target and plans again.
    pub async fn execute(&self, plan: &TargetPlan) -> Result<Outcome, AzureError> {
        let mut live = None;
        // (request path, the etag ARM answered our last write to it with)
        let mut last: Option<(String, Option<String>)> = None;
        for w in &plan.writes {
            let mut req = self.render(w);
            match (req.header(IF_MATCH), &last) {
                (Some(_), Some((path, answered))) if path.eq_ignore_ascii_case(&req.path) => {
                    if answered.is_none() {
                        debug!(target = %req.path, "the previous write's answer carried no etag: sending the next one unconditionally");
                    }
                    req.set_header(IF_MATCH, answered.clone());
                }
                _ => {}
            }
            let answer = match self.send_rendered(w, &req).await? {
                Sent::Identity(v) => v,
                _ => Value::Null,
            };
            if let Write::IdentityPatch { .. } = w {
                live = self
                    .arm
                    .url(&req.path, req.version())
                    .and_then(|url| parse_live(&url, &answer))
                    .ok();
            }
            let etag = answer
                .get("etag")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            last = Some((req.path, etag));
        }
        Ok(Outcome {
            writes: plan.writes.len(),
            live,
        })
    }

    fn graph(&self) -> Result<&ArmClient, AzureError> {
        self.graph.as_ref().ok_or_else(|| AzureError::InvalidArgument {
            message: "no Microsoft Graph client is configured (a Graph endpoint and token are needed for group memberships)".into(),
        })
    }

    /// Sends `req`, the rendering of `w` (with its `If-Match` possibly re-chained).
    async fn send_rendered(&self, w: &Write, req: &Request) -> Result<Sent, AzureError> {
        match w {
            Write::IdentityPatch { .. } => {}
            Write::RoleAssignmentPut { name, .. } => authorization::check_put(name)?,
            Write::RoleAssignmentDelete { id } => authorization::check_delete(id)?,
            Write::GroupMemberAdd {
                group_id,
                principal_id,
            }
            | Write::GroupMemberRemove {
                group_id,
                principal_id,
            } => {
                graph::require_guid("group object ID", group_id)?;
                graph::require_guid("principal ID", principal_id)?;
            }
        }
        let client = match req.service {
            Service::Arm => &self.arm,
            Service::Graph => self.graph()?,
        };
        let method =
            Method::from_bytes(req.method.as_bytes()).map_err(|_| AzureError::InvalidArgument {
                message: format!("unknown method {}", req.method),
            })?;
        match w {
            Write::IdentityPatch { .. } => {
                let answer = client
                    .write_if_match(
                        method,
                        &req.path,
                        req.api_version.as_deref().unwrap_or_default(),
                        req.body.as_ref().unwrap_or(&Value::Null),
                        req.header(IF_MATCH),
                    )
                    .await?;
                Ok(Sent::Identity(answer))
            }
            Write::RoleAssignmentPut {
                scope,
                role_definition_id,
                principal_id,
                ..
            } => {
                let url = url_of(client, req)?;
                let sent = send_once(client, method, &url, req).await;
                authorization::put_answer(
                    client,
                    &url,
                    scope,
                    role_definition_id,
                    principal_id,
                    sent,
                )
                .await
            }
            Write::RoleAssignmentDelete { .. } => {
                let url = url_of(client, req)?;
                authorization::delete_answer(send_once(client, method, &url, req).await)
            }
            Write::GroupMemberAdd {
                group_id,
                principal_id,
            } => {
                let url = url_of(client, req)?;
                graph::add_answer(
                    send_once(client, method, &url, req).await,
                    group_id,
                    principal_id,
                )
            }
            Write::GroupMemberRemove { .. } => {
                let url = url_of(client, req)?;
                graph::remove_answer(send_once(client, method, &url, req).await)
            }
        }
    }
}

/// The request's URL on `client`'s endpoint: `?api-version=` when it has one, built segment
/// by segment (refused before sending if the path could resolve elsewhere).
fn url_of(client: &ArmClient, req: &Request) -> Result<String, AzureError> {
    match &req.api_version {
        Some(v) => client.url(&req.path, v),
        None => client.endpoint_url(&req.path),
    }
}

/// Sends a rendered request with the client's retry policy (a DELETE counts as a delete, the
/// rest as writes).
async fn send_once(
    client: &ArmClient,
    method: Method,
    url: &str,
    req: &Request,
) -> Result<Response, AzureError> {
    let kind = if method == Method::DELETE {
        RequestKind::Delete
    } else {
        RequestKind::Write
    };
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    client
        .send_with_headers(method, url, req.body.as_ref(), kind, &headers)
        .await
}

fn parse_live(url: &str, body: &Value) -> Result<LiveResource, AzureError> {
    LiveResource::from_arm_json(body).map_err(|e| AzureError::InvalidResponse {
        url: url.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_uai_api_version_is_published() {
        assert!(vmidentity_planner::arm_versions::is_published(
            vmidentity_planner::arm_versions::MANAGED_IDENTITY,
            super::UAI_API_VERSION
        ));
    }
}
