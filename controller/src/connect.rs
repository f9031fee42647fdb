//! Where the one-shot commands (`plan`, `apply`, `import`, `audit`) find Azure: an endpoint
//! and its tokens, or an in-process simulator seeded from a world file. Below the commands, so
//! none of them depends on another to connect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
#[cfg(feature = "simulator")]
use vmidentity_simulator::{LroMode, SimConfig, SimHandle, WorldSeed};

use crate::azure_config::cli_client_config;
use crate::error::CliError;

/// The token the in-process simulator accepts.
pub const SIM_TOKEN: &str = "sim-token";
/// The Microsoft Graph token the in-process simulator accepts.
pub const SIM_GRAPH_TOKEN: &str = "sim-graph-token";

#[cfg(feature = "simulator")]
/// Starts the simulator on loopback, seeded from a world YAML.
pub async fn start_simulator(world_yaml: &str) -> Result<SimHandle, String> {
    let seed = WorldSeed::from_yaml_str(world_yaml).map_err(|e| e.to_string())?;
    vmidentity_simulator::start(SimConfig {
        seed,
        accepted_tokens: vec![SIM_TOKEN.to_string()],
        lro: LroMode::Async200,
        lro_polls: 1,
        retry_after_secs: 0,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// Where `plan` and `apply` find Azure: an endpoint and its tokens, or an in-process
/// simulator.
#[derive(Debug, clap::Args)]
pub struct AzureArgs {
    /// ARM endpoint.
    #[arg(long, env = "VMIDENTITY_ARM_ENDPOINT", default_value = vmidentity_azure::client::PUBLIC_ARM_ENDPOINT)]
    pub endpoint: String,
    /// Bearer token for ARM (for example from `az account get-access-token --query accessToken -o tsv`).
    #[arg(long, env = "AZURE_ACCESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Microsoft Graph endpoint (for groupMemberships; `plan --live` shows the member's
    /// `@odata.id` for it, as `apply` would send it).
    #[arg(
        long,
        env = "VMIDENTITY_GRAPH_ENDPOINT",
        default_value = vmidentity_planner::grants::PUBLIC_GRAPH_ENDPOINT
    )]
    pub graph_endpoint: String,
    /// Bearer token for Microsoft Graph (audience https://graph.microsoft.com), needed for
    /// groupMemberships (for example `az account get-access-token --resource-type ms-graph`).
    #[arg(long, env = "AZURE_GRAPH_ACCESS_TOKEN", hide_env_values = true)]
    pub graph_token: Option<String>,
    /// Run against an in-process ARM simulator seeded from this world file instead of Azure.
    #[arg(long, value_name = "WORLD_YAML", conflicts_with_all = ["endpoint", "token", "graph_endpoint", "graph_token"])]
    pub simulator: Option<PathBuf>,
}

/// The error of `demo` and `apply --simulator` in a build without the ARM simulator (the
/// production image is built with `--no-default-features`).
#[cfg(not(feature = "simulator"))]
pub(crate) fn no_simulator(what: &str) -> CliError {
    CliError::Other(format!(
        "{what} needs the ARM simulator, which this build does not include: rebuild with the cargo feature `simulator` (on by default; e.g. `cargo run -p vmidentity -- demo`)"
    ))
}

/// The door to Azure that `plan` and `apply` use: ARM, Graph when it has a token, and the
/// in-process simulator that serves them (kept alive as long as the door).
pub(crate) struct Azure {
    pub(crate) exec: Executor,
    #[cfg(feature = "simulator")]
    _sim: Option<vmidentity_simulator::SimHandle>,
}

pub(crate) async fn connect(a: &AzureArgs) -> Result<Azure, CliError> {
    #[cfg(feature = "simulator")]
    let mut sim = None;
    let (endpoint, token, graph) = match &a.simulator {
        #[cfg(feature = "simulator")]
        Some(world) => {
            let text = std::fs::read_to_string(world)
                .map_err(|e| CliError::Other(format!("{}: {e}", world.display())))?;
            let handle = start_simulator(&text)
                .await
                .map_err(|e| CliError::Other(format!("{}: {e}", world.display())))?;
            let url = handle.base_url();
            sim = Some(handle);
            (
                url.clone(),
                SIM_TOKEN.to_string(),
                Some((url, SIM_GRAPH_TOKEN.to_string())),
            )
        }
        #[cfg(not(feature = "simulator"))]
        Some(_) => return Err(no_simulator("`--simulator`")),
        None => {
            let token = a.token.clone().ok_or_else(|| {
                CliError::Other(
                    "no ARM credentials: set AZURE_ACCESS_TOKEN or --token (for example `az account get-access-token --query accessToken -o tsv`), or use --simulator WORLD.yaml".into(),
                )
            })?;
            let graph = a.graph_token.clone().map(|t| (a.graph_endpoint.clone(), t));
            (a.endpoint.clone(), token, graph)
        }
    };
    let client = ArmClient::new(
        cli_client_config(&endpoint),
        Arc::new(StaticToken::new(token)),
    )
    .map_err(|e| CliError::Other(e.to_string()))?;
    // One door for every write: ARM, and Graph when it has a token.
    let mut exec = Executor::new(client);
    if let Some((endpoint, token)) = graph {
        exec = exec.with_graph(
            ArmClient::new(
                ClientConfig {
                    max_inline_wait: Duration::from_secs(120),
                    ..ClientConfig::graph(&endpoint)
                },
                Arc::new(StaticToken::new(token)),
            )
            .map_err(|e| CliError::Other(e.to_string()))?,
        );
    }
    Ok(Azure {
        exec,
        #[cfg(feature = "simulator")]
        _sim: sim,
    })
}
