//! vmidentity's decision logic, pure: desired state + live ARM state -> plan.
//!
//! No I/O, no async, no clock. The crate boundary keeps it so: this crate depends on
//! nothing but serde, serde_json and thiserror.
//!
//! - [`model`]: what objects ask for (`RawSpec` -> validated [`Spec`]) and their ownership
//!   record ([`Applied`]).
//! - [`live`]: the live identity block of a VM / VMSS, from either wire format.
//! - [`plan`]: [`plan_target`] plans all objects on one target into at most one PATCH.
//! - [`policy`]: tenancy guardrails (what objects in a namespace may ask for).
//! - [`credential`]: what a namespace credential Secret may say, and its binding by policy.
//! - [`arm`]: a reference model of ARM's PATCH semantics, used to prove the planner right.

pub mod arm;
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
    ApiVersion, Applied, DeletionPolicy, DesiredObject, FieldError, Mode, ObjectRef, RawSpec, Spec,
    WireFormat,
};
pub use plan::{
    Change, IdentityState, MAX_IDENTITIES_PER_REQUEST, PlanError, TargetPlan, Write,
    group_by_target, plan_target,
};
