//! Namespace-scoped Azure credentials: objects in a namespace that holds the credential Secret
//! are reconciled with that namespace's own Azure identity, so Azure RBAC confines each team
//! (the controller can never do more for a team than the team's identity may). Without the
//! Secret the controller's own (global) credential is used, unless the mode is `required`.
//!
//! The Secret (default name `vmidentity-credential`) may hold only `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`; any other key is refused (`CredentialInvalid`).
//! Without a client secret: workload identity, the controller's own federated token exchanged
//! for the namespace's client ID, as Azure Service Operator does (the team's identity trusts
//! the controller's service account). The Entra authority, the federated token file and the
//! endpoints are the controller's configuration, never the Secret's.
//!
//! Which client IDs a namespace may name is the platform admin's decision, not the tenant's:
//! every `VirtualMachineIdentityPolicy` that covers the namespace must list it in
//! `spec.credentials.clientIds` (`CredentialNotBound` otherwise), and the controller's own
//! client ID is never accepted. The binding is checked on every use, so a policy edit takes
//! effect at once; the Secret is read with a `get` by name (RBAC can limit that to the one
//! name) and cached per namespace for [`CACHE_TTL`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use vmidentity_azure::token::EntraToken;
use vmidentity_azure::{ArmClient, ClientConfig, Executor, TokenSource};
use vmidentity_planner::credential::{self, SecretCredential};

use super::metrics::Metrics;
use super::policy::PolicyView;

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

/// The door to Azure to reconcile with, and which credential it stands for.
#[derive(Clone)]
pub struct Chosen {
    /// `global`, or `secret <namespace>/<name>` (targets shared across credentials are refused).
    pub key: String,
    /// Every read and write of the namespace's targets, ARM and (when configured) Graph, with
    /// this credential.
    pub exec: Executor,
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
    #[error("Secret {ns}/{name}: {message}")]
    NotBound {
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
            CredentialError::NotBound { .. } => "CredentialNotBound",
            CredentialError::Kube { .. } => "CredentialUnreadable",
        }
    }
}

/// What a namespace's Secret said, and the clients built from it.
#[derive(Clone)]
struct Built {
    /// The Secret's resourceVersion.
    version: String,
    /// Tenant and client ID (the client secret is not kept here).
    tenant_id: String,
    client_id: String,
    chosen: Chosen,
}

struct Entry {
    fetched: Instant,
    /// None: no Secret. Err: the Secret is invalid (kept so a bad Secret is not re-parsed
    /// until it changes or the entry expires).
    clients: Option<Result<Built, String>>,
}

/// The controller's own token settings, which a namespace credential uses and can never
/// change.
#[derive(Debug, Clone, Default)]
pub struct TokenSettings {
    /// The Entra authority (`AZURE_AUTHORITY_HOST` of the controller, else the public cloud).
    pub authority: String,
    /// The controller's federated token (`AZURE_FEDERATED_TOKEN_FILE`), exchanged for a
    /// namespace's client ID when its Secret holds no client secret.
    pub federated_token_file: Option<PathBuf>,
    /// The controller's own client ID (`AZURE_CLIENT_ID`): never accepted from a Secret.
    pub controller_client_id: Option<String>,
}

impl TokenSettings {
    /// From the controller's environment.
    pub fn from_env() -> TokenSettings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        TokenSettings {
            authority: var("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|| vmidentity_azure::token::PUBLIC_AUTHORITY.to_string()),
            federated_token_file: var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            controller_client_id: var("AZURE_CLIENT_ID"),
        }
    }
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
    tokens: TokenSettings,
    /// Policies bind client IDs to namespaces.
    policy: PolicyView,
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
        global: Executor,
        arm_config: ClientConfig,
        graph_config: Option<ClientConfig>,
        metrics: Arc<Metrics>,
        tokens: TokenSettings,
        policy: PolicyView,
    ) -> Self {
        Credentials {
            mode,
            secret_name,
            client,
            global: Chosen {
                key: "global".into(),
                exec: global,
            },
            arm_config,
            graph_config,
            metrics,
            tokens,
            policy,
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
        let cached = self.cache.lock().ok().and_then(|cache| {
            cache
                .get(ns)
                .filter(|e| e.fetched.elapsed() < self.ttl)
                .map(|e| e.clients.clone())
        });
        let clients = match cached {
            Some(c) => c,
            None => self.read(ns).await?,
        };
        match clients {
            None => self.fallback(ns),
            Some(Err(message)) => Err(self.invalid(ns, message)),
            Some(Ok(b)) => {
                self.bound(ns, &b)?;
                Ok(b.chosen)
            }
        }
    }

    /// Reads the namespace's Secret and builds its clients (reusing them while the Secret's
    /// resourceVersion is unchanged).
    async fn read(&self, ns: &str) -> Result<Option<Result<Built, String>>, CredentialError> {
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
                        .and_then(|e| e.clients.clone())
                        .and_then(Result::ok)
                        .filter(|b| b.version == rv)
                });
                Some(match reuse {
                    Some(b) => Ok(b),
                    None => self.build(ns, rv, &s),
                })
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                ns.to_string(),
                Entry {
                    fetched: Instant::now(),
                    clients: clients.clone(),
                },
            );
        }
        Ok(clients)
    }

    fn invalid(&self, ns: &str, message: String) -> CredentialError {
        CredentialError::Invalid {
            ns: ns.to_string(),
            name: self.secret_name.clone(),
            message,
        }
    }

    /// No Secret: the controller's own credential, unless one is required.
    fn fallback(&self, ns: &str) -> Result<Chosen, CredentialError> {
        match self.mode {
            Mode::Required => Err(CredentialError::Missing {
                ns: ns.to_string(),
                name: self.secret_name.clone(),
            }),
            _ => Ok(self.global.clone()),
        }
    }

    /// The admin's binding of the Secret's identity to the namespace, checked on every use.
    fn bound(&self, ns: &str, b: &Built) -> Result<(), CredentialError> {
        let policies = self.policy.policies();
        let labels = self.policy.labels(ns);
        let cred = SecretCredential {
            tenant_id: b.tenant_id.clone(),
            client_id: b.client_id.clone(),
            client_secret: None,
        };
        credential::check_binding(
            &policies,
            vmidentity_planner::policy::Namespace {
                name: ns,
                labels: labels.as_ref(),
            },
            &cred,
            self.tokens.controller_client_id.as_deref(),
        )
        .map_err(|message| CredentialError::NotBound {
            ns: ns.to_string(),
            name: self.secret_name.clone(),
            message,
        })
    }

    /// The clients of a Secret: only its tenant, client ID and client secret are used; the
    /// authority and the federated token file are the controller's.
    fn build(&self, ns: &str, version: String, s: &Secret) -> Result<Built, String> {
        let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (k, v) in s.data.clone().unwrap_or_default() {
            data.insert(k, v.0);
        }
        for (k, v) in s.string_data.clone().unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        let cred = credential::parse_secret(&data)?;
        let tokens: Arc<dyn TokenSource> = match (
            &cred.client_secret,
            &self.tokens.federated_token_file,
        ) {
            (Some(secret), _) => Arc::new(EntraToken::client_secret(
                &self.tokens.authority,
                &cred.tenant_id,
                &cred.client_id,
                secret,
            )),
            (None, Some(file)) => Arc::new(EntraToken::workload_identity(
                &self.tokens.authority,
                &cred.tenant_id,
                &cred.client_id,
                file,
            )),
            (None, None) => {
                return Err(format!(
                    "no {} and the controller has no federated token (AZURE_FEDERATED_TOKEN_FILE) to exchange for {}: add the identity's client secret, or run the controller with workload identity",
                    credential::CLIENT_SECRET,
                    cred.client_id
                ));
            }
        };
        // Namespaces that name the same app share its budgets (ARM, Resource Graph and
        // Graph count per principal).
        let budget_key =
            Some(format!("{}/{}", cred.tenant_id, cred.client_id).to_ascii_lowercase());
        let arm_config = ClientConfig {
            budget_key: budget_key.clone(),
            ..self.arm_config.clone()
        };
        let arm = ArmClient::new(arm_config, tokens.clone())
            .map_err(|e| e.to_string())?
            .with_observer(self.metrics.clone());
        let mut exec = Executor::new(arm);
        if let Some(cfg) = &self.graph_config {
            let cfg = ClientConfig {
                budget_key,
                ..cfg.clone()
            };
            exec = exec.with_graph(
                ArmClient::new(cfg, tokens)
                    .map_err(|e| e.to_string())?
                    .with_observer(self.metrics.clone()),
            );
        }
        Ok(Built {
            version,
            tenant_id: cred.tenant_id.clone(),
            client_id: cred.client_id.clone(),
            chosen: Chosen {
                key: format!("secret {ns}/{} ({})", self.secret_name, cred.client_id),
                exec,
            },
        })
    }
}
