//! Token sources: where bearer tokens for ARM (and later Graph) come from.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

/// The ARM audience, as a scope.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// The Microsoft Graph audience, as a scope.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// A bearer token and when it stops being valid.
#[derive(Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_on: Option<SystemTime>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

impl AccessToken {
    /// True when the token expires within `margin` (or already has).
    pub fn expires_within(&self, margin: Duration) -> bool {
        match self.expires_on {
            None => false,
            Some(t) => t
                .duration_since(SystemTime::now())
                .map(|left| left <= margin)
                .unwrap_or(true),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("no token for scope {scope}: {message}")]
    Unavailable { scope: String, message: String },
}

/// Anything that can hand out bearer tokens for a scope (ARM, Graph).
#[async_trait]
pub trait TokenSource: Send + Sync {
    async fn token(&self, scope: &str) -> Result<AccessToken, TokenError>;
}

/// A fixed token: for the simulator, for tests, and for `--token` / `AZURE_ACCESS_TOKEN` in
/// pipelines that already hold one (for example from `az account get-access-token`).
#[derive(Clone)]
pub struct StaticToken(String);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(token.into())
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn token(&self, scope: &str) -> Result<AccessToken, TokenError> {
        if self.0.is_empty() {
            return Err(TokenError::Unavailable {
                scope: scope.to_string(),
                message: "the configured token is empty".into(),
            });
        }
        Ok(AccessToken {
            token: self.0.clone(),
            expires_on: None,
        })
    }
}
