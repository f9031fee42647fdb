//! The `vmidentity` binary's library: CRD types, input loading, the one-shot engine behind
//! `plan` / `apply` / `demo`, and the CLI.

pub mod audit;
pub mod azure_config;
pub mod cli;
pub mod connect;
pub mod crd;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod engine;
pub mod error;
pub mod grant_scan;
pub mod import;
pub mod input;
pub mod operator;
pub mod out;
