//! `armsim`: run the ARM simulator as a standalone server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmidentity_simulator::{
    AppConfig, DEFAULT_TENANT_ID, ImdsConfig, ImdsIdentity, LroMode, SimConfig, ThrottleConfig,
    WorldSeed, start_on,
};

#[derive(Debug, Parser)]
#[command(
    name = "armsim",
    about = "Azure Resource Manager simulator (VM/VMSS identity, MSI, Authorization, Microsoft Graph group memberships, Resource Graph)",
    after_help = "Tokens: ARM routes accept `Authorization: Bearer sim-token` (--token), Microsoft Graph routes (/v1.0/...) `Bearer sim-graph-token` (--graph-token).\nAdmin routes under /_sim/ need no token: counters, requests, faults, world, and POST /_sim/identity for out-of-band identity edits (simulator/README.md)."
)]
struct Args {
    /// World seed YAML (empty world when absent).
    #[arg(long)]
    world: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Accepted ARM bearer token (repeatable). Default: sim-token.
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// Accepted Microsoft Graph bearer token (repeatable), for the /v1.0/... routes (group
    /// memberships; give the controller --graph-token / AZURE_GRAPH_ACCESS_TOKEN). Default:
    /// sim-graph-token. ARM tokens are refused on Graph routes and the other way round.
    #[arg(long = "graph-token")]
    graph_tokens: Vec<String>,
    /// LRO mode: async200 (ARM's: Azure-AsyncOperation only), async200-retry-after, async202 or sync.
    #[arg(long, default_value = "async200")]
    lro: LroMode,
    /// Polls answering InProgress before Succeeded.
    #[arg(long, default_value_t = 0)]
    lro_polls: u32,
    /// Retry-After seconds on LRO responses (async200-retry-after, async202).
    #[arg(long, default_value_t = 0)]
    retry_after: u64,
    /// Minimum operation duration in milliseconds.
    #[arg(long, default_value_t = 0)]
    min_operation_ms: u64,
    /// Enforce ARM subscription and Compute throttling with the published limits.
    #[arg(long)]
    throttling: bool,
    /// With --throttling: multiply every bucket size and refill rate by this factor.
    #[arg(long, requires = "throttling")]
    throttling_scale: Option<f64>,
    /// With --throttling: multiply every refill rate by this factor (time runs faster).
    #[arg(long, requires = "throttling")]
    throttling_accelerate: Option<f64>,
    /// Resource Graph rows show the world as it was this many milliseconds ago.
    #[arg(long, default_value_t = 0)]
    resource_graph_lag_ms: u64,
    /// Entra app in the world's tenant: CLIENT_ID=SECRET (repeatable).
    #[arg(long = "app")]
    apps: Vec<String>,
    /// Entra app with a federated credential: CLIENT_ID,ISSUER,SUBJECT (repeatable).
    #[arg(long = "federated-app")]
    federated_apps: Vec<String>,
    /// Serve IMDS with this user-assigned identity: CLIENT_ID[,OBJECT_ID] (repeatable).
    #[arg(long = "imds-identity")]
    imds_identities: Vec<String>,
    /// Lifetime of issued tokens in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let seed = match &args.world {
        None => WorldSeed::default(),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read world file");
                    return ExitCode::FAILURE;
                }
            };
            match WorldSeed::from_yaml_str(&text) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "invalid world file");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let mut config = SimConfig {
        seed,
        lro: args.lro,
        lro_polls: args.lro_polls,
        retry_after_secs: args.retry_after,
        min_operation_duration: std::time::Duration::from_millis(args.min_operation_ms),
        resource_graph_lag: std::time::Duration::from_millis(args.resource_graph_lag_ms),
        ..SimConfig::default()
    };
    let tenant = seed_tenant(&config.seed);
    for a in &args.apps {
        let Some((id, secret)) = a.split_once('=') else {
            tracing::error!(app = %a, "--app expects CLIENT_ID=SECRET");
            return ExitCode::FAILURE;
        };
        config
            .apps
            .push(AppConfig::with_secret(id, &tenant, secret));
    }
    for a in &args.federated_apps {
        let parts: Vec<&str> = a.splitn(3, ',').collect();
        let [id, issuer, subject] = parts.as_slice() else {
            tracing::error!(app = %a, "--federated-app expects CLIENT_ID,ISSUER,SUBJECT");
            return ExitCode::FAILURE;
        };
        config
            .apps
            .push(AppConfig::federated(id, &tenant, issuer, subject));
    }
    if !args.imds_identities.is_empty() {
        let mut imds = ImdsConfig::default();
        for i in &args.imds_identities {
            let (client, object) = match i.split_once(',') {
                Some((c, o)) => (c.to_string(), o.to_string()),
                None => (i.clone(), uuid_v5(&format!("imds:{i}"))),
            };
            imds = imds.with_user_assigned(ImdsIdentity::new(&client, &object));
        }
        config.imds = Some(imds);
    }
    config.token_lifetime = std::time::Duration::from_secs(args.token_lifetime_secs);
    if args.throttling {
        let mut t = ThrottleConfig::default();
        if let Some(f) = args.throttling_scale {
            t = t.scaled(f);
        }
        if let Some(f) = args.throttling_accelerate {
            t = t.accelerated(f);
        }
        config.throttling = Some(t);
    }
    if !args.tokens.is_empty() {
        config.accepted_tokens = args.tokens;
    }
    if !args.graph_tokens.is_empty() {
        config.graph_tokens = args.graph_tokens;
    }
    let handle = match start_on(config, args.listen).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start armsim");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(base_url = %handle.base_url(), "armsim ready; Ctrl-C to stop");
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot wait for Ctrl-C");
    }
    handle.shutdown().await;
    ExitCode::SUCCESS
}

fn seed_tenant(seed: &WorldSeed) -> String {
    seed.tenant_id
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT_ID.to_string())
}

/// A stable object id for an IMDS identity given without one.
fn uuid_v5(name: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}
