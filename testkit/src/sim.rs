//! The ARM simulator: starting it from a world, reading a target's identity back, clients of
//! it for tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_simulator::{SimConfig, SimHandle, WorldSeed};

use crate::{Error, Result, io};

/// The ARM token the tests present (the simulator accepts any by default).
pub const TOKEN: &str = "sim-token";
/// The Graph token the tests present.
pub const GRAPH_TOKEN: &str = "sim-graph-token";

/// Starts the simulator on loopback with the world `world_yaml`, after `configure` has set the
/// rest of its configuration.
pub async fn start_sim(
    world_yaml: &str,
    configure: impl FnOnce(&mut SimConfig),
) -> Result<SimHandle> {
    let seed = WorldSeed::from_yaml_str(world_yaml)
        .map_err(|e| Error::Simulator(format!("world: {e}")))?;
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    configure(&mut cfg);
    vmidentity_simulator::start(cfg)
        .await
        .map_err(|e| Error::Simulator(format!("starting: {e}")))
}

/// `(type, sorted lower-cased user-assigned identity names)` of a target, as a 2018-06-01 GET
/// shows it (`("None", [])` for a target without identity or not in the world).
pub fn identity_of(sim: &SimHandle, target: &str) -> (String, Vec<String>) {
    let ident = sim.identity_of(target).unwrap_or(Value::Null);
    let ty = ident
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("None")
        .to_string();
    let mut names: Vec<String> = ident
        .get("userAssignedIdentities")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .map(|k| {
                    k.rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_ascii_lowercase()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    (ty, names)
}

/// Client settings for tests: fast backoff, short inline waits.
pub fn test_client_config(endpoint: &str) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.to_string(),
        max_attempts: 4,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        max_inline_wait: Duration::from_secs(3),
        default_retry_after: Duration::from_secs(1),
        lro_poll_interval: Duration::from_millis(20),
        lro_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// An executor of `config` that presents `token`.
pub fn arm_executor(config: ClientConfig, token: &str) -> Result<Executor> {
    let client = ArmClient::new(config, Arc::new(StaticToken::new(token)))
        .map_err(|e| Error::Failed(format!("building the ARM client: {e}")))?;
    Ok(Executor::new(client))
}

/// A federated (service account) token for the simulator's Entra ID, valid for an hour,
/// written to a file named after `name` and this process; returns the file.
pub fn federated_token_file(issuer: &str, subject: &str, name: &str) -> Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::Failed(format!("the clock: {e}")))?
        .as_secs();
    let jwt = vmidentity_simulator::make_jwt(&json!({"iss": issuer, "sub": subject,
        "aud": ["api://AzureADTokenExchange"], "exp": now + 3600, "iat": now}));
    let file = std::env::temp_dir().join(format!("vmidentity-e2e-{name}-{}", std::process::id()));
    std::fs::write(&file, jwt).map_err(io(format!("writing {}", file.display())))?;
    Ok(file)
}
