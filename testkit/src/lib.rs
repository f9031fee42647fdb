//! What the scenario tests (`tests/`), the controller's end-to-end tests
//! (`controller/tests/e2e/harness.rs`), the controller's unit tests and the bench share:
//!
//! - [`cluster`]: the test API server (`VMIDENTITY_E2E_KUBECONFIG` or
//!   `tests/apiserver/kube-up.sh`), the CRDs and policies from `crds/`, namespaces, clearing
//!   the objects of a namespace;
//! - [`controller`]: a `vmidentity controller` process with its flags, its log and its
//!   `/metrics`;
//! - [`sim`]: the ARM simulator (start it from a world, read a target's identity back, clients
//!   for tests).
//!
//! A dev-dependency only (and the bench's): the `vmidentity` binary never links it. It does not
//! depend on the `vmidentity` crate, so the controller's own unit tests can use it without
//! building the controller twice; where a test needs the custom resource's Rust types, the
//! caller passes an `Api<K>` of its own.

pub mod cluster;
pub mod controller;
pub mod sim;

pub use cluster::{
    MANAGER, allow_all_policy, allow_all_policy_for, apply_namespace, apply_policy, clear_objects,
    client, delete_policy, install_crds, kubeconfig, repo_root,
};
pub use controller::{ControllerCmd, ControllerProc, free_port};
pub use sim::{
    GRAPH_TOKEN, TOKEN, arm_executor, federated_token_file, identity_of, start_sim,
    test_client_config,
};

use std::path::PathBuf;

/// What can go wrong while setting up a test or bench environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("{what}: {source}")]
    Yaml {
        what: String,
        source: serde_yaml_ng::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("the ARM simulator: {0}")]
    Simulator(String),
    /// A process or a script failed, or something did not happen in time.
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}
