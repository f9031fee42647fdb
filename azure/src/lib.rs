//! Typed Azure clients for vmidentity. Knows nothing of Kubernetes.
//!
//! - [`token`]: token sources (pluggable; a static token for the simulator and pipelines).
//! - [`client`]: the HTTP client, the one place for retries, `Retry-After`, throttling
//!   gates, long-running-operation polling and `nextLink` paging. ARM by default; the same
//!   client serves Microsoft Graph when built with [`ClientConfig::graph`] (Graph scope).
//! - [`error`]: ARM and Graph errors classified once (retryable / throttled / permanent,
//!   with a reason for Kubernetes conditions).
//! - [`executor`]: the one door for writes: [`Executor`] sends every
//!   [`vmidentity_planner::Write`] (identity PATCHes, role assignment PUT / DELETE, group
//!   membership add / remove) as [`vmidentity_planner::Write::request`] renders it, with one
//!   credential; and reads targets and group memberships.
//! - [`authorization`]: role definitions (name → GUID, cached) and role assignment listings
//!   on [`ArmClient`]; what role assignment answers mean. Names, role definition IDs and the
//!   api-version are the planner's ([`vmidentity_planner::grants`]).
//! - [`graph`]: Entra group memberships of service principals: reads, and what Graph's
//!   answers mean.

pub mod authorization;
pub mod client;
pub mod error;
pub mod executor;
pub mod fair;
pub mod graph;
pub mod records;
pub mod resourcegraph;
pub mod token;

pub use authorization::RoleAssignment;
pub use client::{
    ArmClient, ClientConfig, MAX_RESPONSE_BYTES, Observer, PUBLIC_ARM_ENDPOINT,
    PUBLIC_GRAPH_ENDPOINT, RequestKind, StatsSnapshot,
};
pub use error::{AzureError, ErrorClass};
pub use executor::{Executor, Outcome, Sent, UAI_API_VERSION, UaiIds};
/// The HTTP method type [`ArmClient::send`] and [`ArmClient::write`] take.
pub use reqwest::Method;
pub use token::{ARM_SCOPE, AccessToken, GRAPH_SCOPE, StaticToken, TokenError, TokenSource};
