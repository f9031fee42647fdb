//! Namespace-scoped Azure credentials: objects in a namespace that holds the credential Secret
//! are reconciled with that namespace's own Azure identity, so Azure RBAC confines each team
//! (the controller can never do more for a team than the team's identity may). Without the
//! Secret the controller's own (global) credential is used, unless the mode is `required`.
//!
//! The Secret (default name `vmidentity-credential`) holds `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID` and either `AZURE_CLIENT_SECRET` (a service principal) or nothing more:
//! then workload identity, with the controller's own federated token
//! (`AZURE_FEDERATED_TOKEN_FILE`) exchanged for the namespace's client ID, as Azure Service
//! Operator does (the team's identity trusts the controller's service account).
//!
//! Secrets are read with a `get` by name (RBAC can limit that to the one name) and cached for
//! a minute per namespace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use vmidentity_azure::{ArmClient, ClientConfig, Executor, GraphClient, TokenSource};

use super::metrics::Metrics;

/// How long a namespace's Secret (or its absence) is trusted before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// `--namespace-credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The controller's own credential for every namespace.
    Off,
    /// A namespace's Secret when it has one, else the controller's own credential.
    Optional,
    /// Only namespaces with a Secret are reconciled (others: Stalled, NoCredential).
    Required,
}

/// The Azure clients to reconcile with, and which credential they stand for.
#[derive(Clone)]
pub struct Chosen {
    /// `global`, or `secret <namespace>/<name>` (targets shared across credentials are refused).
    pub key: String,
    pub exec: Executor,
    pub graph: Option<GraphClient>,
}

/// Why a namespace's objects cannot be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "namespace {ns} has no Secret {name} and the controller runs with --namespace-credentials=required"
    )]
    Missing { ns: String, name: String },
    #[error("Secret {ns}/{name}: {message}")]
    Invalid {
        ns: String,
        name: String,
        message: String,
    },
    #[error("reading Secret {ns}/{name}: {source}")]
    Kube {
        ns: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl CredentialError {
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialError::Missing { .. } => "NoCredential",
            CredentialError::Invalid { .. } => "CredentialInvalid",
            CredentialError::Kube { .. } => "CredentialUnreadable",
        }
    }
}

struct Entry {
    fetched: Instant,
    /// The Secret's resourceVersion and the clients built from it (None: no Secret).
    clients: Option<(String, Chosen)>,
}

/// Chooses the credential per namespace.
pub struct Credentials {
    pub mode: Mode,
    pub secret_name: String,
    client: kube::Client,
    global: Chosen,
    arm_config: ClientConfig,
    graph_config: Option<ClientConfig>,
    metrics: Arc<Metrics>,
    /// `AZURE_AUTHORITY_HOST` and `AZURE_FEDERATED_TOKEN_FILE` of the controller.
    env: HashMap<String, String>,
    cache: Mutex<HashMap<String, Entry>>,
    /// How long a read Secret (or its absence) is used before it is read again.
    pub ttl: Duration,
}

impl Credentials {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: Mode,
        secret_name: String,
        client: kube::Client,
        global: (Executor, Option<GraphClient>),
        arm_config: ClientConfig,
        graph_config: Option<ClientConfig>,
        metrics: Arc<Metrics>,
        env: HashMap<String, String>,
    ) -> Self {
        Credentials {
            mode,
            secret_name,
            client,
            global: Chosen {
                key: "global".into(),
                exec: global.0,
                graph: global.1,
            },
            arm_config,
            graph_config,
            metrics,
            env,
            cache: Mutex::default(),
            ttl: CACHE_TTL,
        }
    }

    /// The controller's own credential.
    pub fn global(&self) -> &Chosen {
        &self.global
    }

    /// The credential for objects in `ns`.
    pub async fn for_namespace(&self, ns: &str) -> Result<Chosen, CredentialError> {
        if self.mode == Mode::Off {
            return Ok(self.global.clone());
        }
        if let Ok(cache) = self.cache.lock()
            && let Some(e) = cache.get(ns)
            && e.fetched.elapsed() < self.ttl
        {
            return self.pick(ns, e.clients.as_ref().map(|(_, c)| c.clone()));
        }
        let name = self.secret_name.clone();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|source| CredentialError::Kube {
                ns: ns.to_string(),
                name: name.clone(),
                source,
            })?;
        let clients = match secret {
            None => None,
            Some(s) => {
                let rv = s.metadata.resource_version.clone().unwrap_or_default();
                let reuse = self.cache.lock().ok().and_then(|c| {
                    c.get(ns)
                        .and_then(|e| e.clients.as_ref())
                        .filter(|(old, _)| *old == rv)
                        .map(|(_, c)| c.clone())
                });
                let chosen = match reuse {
                    Some(c) => c,
                    None => self.build(ns, &s)?,
                };
                Some((rv, chosen))
            }
        };
        let picked = clients.as_ref().map(|(_, c)| c.clone());
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                ns.to_string(),
                Entry {
                    fetched: Instant::now(),
                    clients,
                },
            );
        }
        self.pick(ns, picked)
    }

    fn pick(&self, ns: &str, found: Option<Chosen>) -> Result<Chosen, CredentialError> {
        match (found, self.mode) {
            (Some(c), _) => Ok(c),
            (None, Mode::Required) => Err(CredentialError::Missing {
                ns: ns.to_string(),
                name: self.secret_name.clone(),
            }),
            (None, _) => Ok(self.global.clone()),
        }
    }

    fn build(&self, ns: &str, s: &Secret) -> Result<Chosen, CredentialError> {
        let invalid = |message: String| CredentialError::Invalid {
            ns: ns.to_string(),
            name: self.secret_name.clone(),
            message,
        };
        let mut vars: HashMap<String, String> = self.env.clone();
        for (k, v) in s.data.clone().unwrap_or_default() {
            let v = String::from_utf8(v.0)
                .map_err(|_| invalid(format!("{k} is not UTF-8")))?
                .trim()
                .to_string();
            vars.insert(k, v);
        }
        for (k, v) in s.string_data.clone().unwrap_or_default() {
            vars.insert(k, v.trim().to_string());
        }
        for k in ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"] {
            if vars.get(k).is_none_or(|v| v.is_empty()) {
                return Err(invalid(format!("{k} is missing")));
            }
        }
        let mode = if vars
            .get("AZURE_CLIENT_SECRET")
            .is_some_and(|v| !v.is_empty())
        {
            "clientSecret"
        } else {
            "workloadIdentity"
        };
        vars.insert("VMIDENTITY_AUTH".into(), mode.into());
        let tokens: Arc<dyn TokenSource> =
            vmidentity_azure::token::from_env(&|k| vars.get(k).cloned())
                .map_err(|e| invalid(format!("{mode}: {e}")))?;
        let arm = ArmClient::new(self.arm_config.clone(), tokens.clone())
            .map_err(|e| invalid(e.to_string()))?
            .with_observer(self.metrics.clone());
        let graph = match &self.graph_config {
            Some(cfg) => Some(GraphClient::from_client(
                ArmClient::new(cfg.clone(), tokens)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_observer(self.metrics.clone()),
            )),
            None => None,
        };
        Ok(Chosen {
            key: format!("secret {ns}/{}", self.secret_name),
            exec: Executor::new(arm),
            graph,
        })
    }
}
