//! Azure client settings shared by the one-shot commands (`plan`, `apply`, `demo`).

use std::time::Duration;

use vmidentity_azure::ClientConfig;

/// Client settings for one-shot runs: a CLI may wait through short `Retry-After`s.
pub fn cli_client_config(endpoint: &str) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.to_string(),
        max_inline_wait: Duration::from_secs(120),
        lro_poll_interval: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}
