//! vmidentity's decision logic, pure: desired state + live ARM state -> plan.
//!
//! No I/O, no async, no clock. The crate boundary keeps it so: its dependencies are serde,
//! serde_json, thiserror and uuid (name-based v5 UUIDs only: the deterministic role
//! assignment names), plus schemars behind the optional `schema` feature (the JSON schema of
//! the policy spec, for the CRD generator). None of them does I/O.
//!
//! - [`id`]: ARM resource IDs and scopes, parsed, classified and compared case-insensitively.
//! - [`model`]: what objects ask for (`RawSpec` -> validated [`Spec`]) and their ownership
//!   record ([`Applied`]).
//! - [`live`]: the live identity block of a VM / VMSS, from either wire format.
//! - [`plan`]: [`plan_target`] plans all objects on one target into at most one PATCH;
//!   [`Write`] is a typed write, and [`Write::request`] the one rendering of it to HTTP.
//! - [`grants`]: role assignments and group memberships; the deterministic assignment names,
//!   role definition IDs and API versions (defined here only).
//! - [`policy`]: tenancy guardrails (what objects in a namespace may ask for).
//! - [`credential`]: what a namespace credential Secret may say, and its binding by policy.
//! - [`changefeed`]: the Resource Graph change feed's watermark, deduplication and
//!   fallback to a full resync.
//! - [`fleet`]: bulk drift detection from Azure Resource Graph rows (which targets to re-read).
//! - [`render`]: human-readable plans.
//! - [`arm`]: a reference model of ARM's PATCH semantics, used to prove the planner right.

pub mod arm;
pub mod changefeed;
pub mod credential;
pub mod fleet;
pub mod grants;
pub mod id;
pub mod live;
pub mod model;
pub mod plan;
pub mod policy;
pub mod render;

pub use id::{ArmId, IdError, ResourceKind};
pub use live::{IdentityType, LiveError, LiveIdentity, LiveResource, LiveUai};
pub use model::{
    ApiVersion, Applied, DEFAULT_API_VERSION, DeletionPolicy, DesiredObject, FieldError, Mode,
    ObjectRef, RawSpec, Spec, WireFormat,
};
pub use plan::{
    Change, IF_MATCH, IdentityState, MAX_IDENTITIES_PER_REQUEST, PlanError, Refused, Request,
    Service, TargetPlan, Write, group_by_target, plan_target, plan_target_by_seniority,
};
/// The published api-versions (one list, shared with the simulator and the CRD).
pub use vmidentity_arm_versions as arm_versions;
