//! Turns plans into requests: read a target's live state, send its writes in order.

use reqwest::Method;
use serde_json::Value;
use vmidentity_planner::{ApiVersion, ArmId, LiveResource, TargetPlan};

use crate::client::ArmClient;
use crate::error::AzureError;

/// What sending a plan did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Writes sent (each once; retries of failed attempts not counted).
    pub writes: usize,
    /// The target as ARM answered the last write, when it could be read.
    pub live: Option<LiveResource>,
}

/// Sends plans through an [`ArmClient`].
#[derive(Debug, Clone)]
pub struct Executor {
    arm: ArmClient,
}

impl Executor {
    pub fn new(arm: ArmClient) -> Self {
        Executor { arm }
    }

    pub fn client(&self) -> &ArmClient {
        &self.arm
    }

    /// GET the target's live state at the given api-version.
    pub async fn read_target(
        &self,
        target: &ArmId,
        api_version: &ApiVersion,
    ) -> Result<LiveResource, AzureError> {
        let body = self.arm.get(target.as_str(), api_version.as_str()).await?;
        parse_live(&self.arm.url(target.as_str(), api_version.as_str()), &body)
    }

    /// Sends the plan's writes in order. Stops at the first failure (later writes depend on
    /// earlier ones: a principal must exist before it is granted anything).
    pub async fn execute(&self, plan: &TargetPlan) -> Result<Outcome, AzureError> {
        let mut live = None;
        for w in &plan.writes {
            let method = Method::from_bytes(w.method.as_bytes()).map_err(|_| {
                AzureError::InvalidResponse {
                    url: w.id.clone(),
                    message: format!("unknown method {}", w.method),
                }
            })?;
            let answer = self
                .arm
                .write(method, &w.id, &w.api_version, &w.body)
                .await?;
            if w.method == "PATCH" {
                live = parse_live(&self.arm.url(&w.id, &w.api_version), &answer).ok();
            }
        }
        Ok(Outcome {
            writes: plan.writes.len(),
            live,
        })
    }
}

fn parse_live(url: &str, body: &Value) -> Result<LiveResource, AzureError> {
    LiveResource::from_arm_json(body).map_err(|e| AzureError::InvalidResponse {
        url: url.to_string(),
        message: e.to_string(),
    })
}
