//! What the operator's unit tests share.

#![cfg(test)]
// Test-only: compiled only under #[cfg(test)]; unwrap/expect here are assertions.

use std::sync::Arc;
use std::time::Duration;

use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_simulator::SimHandle;

/// A fresh client of the in-process simulator (empty caches) that does not retry.
pub(crate) fn sim_exec(sim: &SimHandle) -> Executor {
    Executor::new(
        ArmClient::new(
            ClientConfig {
                endpoint: sim.base_url(),
                max_attempts: 1,
                lro_poll_interval: Duration::from_millis(10),
                request_timeout: Duration::from_secs(10),
                ..ClientConfig::default()
            },
            Arc::new(StaticToken::new("sim-token")),
        )
        .expect("client"),
    )
}
