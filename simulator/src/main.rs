//! `armsim`: run the ARM simulator as a standalone server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmidentity_simulator::{LroMode, SimConfig, WorldSeed, start_on};

#[derive(Debug, Parser)]
#[command(
    name = "armsim",
    about = "Azure Resource Manager simulator (VM/VMSS identity, MSI)"
)]
struct Args {
    /// World seed YAML (empty world when absent).
    #[arg(long)]
    world: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Accepted bearer token (repeatable). Default: sim-token.
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// LRO mode: sync, async200 or async202.
    #[arg(long, default_value = "async200")]
    lro: LroMode,
    /// Polls answering InProgress before Succeeded.
    #[arg(long, default_value_t = 1)]
    lro_polls: u32,
    /// Retry-After seconds on LRO responses.
    #[arg(long, default_value_t = 0)]
    retry_after: u64,
    /// Minimum operation duration in milliseconds.
    #[arg(long, default_value_t = 0)]
    min_operation_ms: u64,
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
        ..SimConfig::default()
    };
    if !args.tokens.is_empty() {
        config.accepted_tokens = args.tokens;
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
