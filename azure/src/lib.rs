//! Typed Azure clients for vmidentity. Knows nothing of Kubernetes.
//!
//! - [`token`]: token sources (pluggable; a static token for the simulator and pipelines).
//! - [`client`]: the HTTP client, the one place for retries, `Retry-After`, throttling
//!   gates, long-running-operation polling and `nextLink` paging. ARM by default; the same
//!   client serves Microsoft Graph when built with [`ClientConfig::graph`] (Graph scope).
//! - [`error`]: ARM and Graph errors classified once (retryable / throttled / permanent,
//!   with a reason for Kubernetes conditions).
//! - [`executor`]: reads targets and sends a [`vmidentity_planner::TargetPlan`]'s writes.
//! - [`authorization`]: role definitions (name → GUID, cached) and role assignments
//!   (list / PUT / DELETE, deterministic names) on [`ArmClient`].
//! - [`graph`]: [`GraphClient`], Entra group memberships of service principals.

pub mod authorization;
pub mod client;
pub mod error;
pub mod executor;
pub mod fair;
pub mod graph;
pub mod resourcegraph;
pub mod token;

pub use authorization::{
    ASSIGNMENT_NAME_NAMESPACE, AUTHORIZATION_API_VERSION, PutRoleAssignment, RoleAssignment,
    assignment_name, role_definition_id,
};
pub use client::{
    ArmClient, ClientConfig, Observer, PUBLIC_ARM_ENDPOINT, PUBLIC_GRAPH_ENDPOINT, RequestKind,
    StatsSnapshot,
};
pub use error::{AzureError, ErrorClass};
pub use executor::Executor;
pub use graph::{GRAPH_VERSION, GraphClient};
/// The HTTP method type [`ArmClient::send`] and [`ArmClient::write`] take.
pub use reqwest::Method;
pub use token::{ARM_SCOPE, AccessToken, GRAPH_SCOPE, StaticToken, TokenError, TokenSource};
