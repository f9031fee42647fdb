//! Typed Azure clients for vmidentity. Knows nothing of Kubernetes.
//!
//! - [`token`]: token sources (pluggable; a static token for the simulator and pipelines).
//! - [`client`]: the ARM client, the one place for retries, `Retry-After`, throttling gates
//!   and long-running-operation polling.
//! - [`error`]: ARM errors classified once (retryable / throttled / permanent, with a reason).
//! - [`executor`]: reads targets and sends a [`vmidentity_planner::TargetPlan`]'s writes.

pub mod client;
pub mod error;
pub mod executor;
pub mod token;

pub use client::{ArmClient, ClientConfig, Observer, RequestKind, StatsSnapshot};
pub use error::{AzureError, ErrorClass};
pub use executor::Executor;
pub use token::{AccessToken, StaticToken, TokenError, TokenSource};
