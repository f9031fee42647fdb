//! Turns plans into requests: read a target's live state, send its writes in order.

use reqwest::Method;
use serde_json::Value;
use tracing::debug;
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
        let url = self.arm.url(target.as_str(), api_version.as_str())?;
        let body = self.arm.get(target.as_str(), api_version.as_str()).await?;
        parse_live(&url, &body)
    }

    /// Sends the plan's writes in order. Stops at the first failure (later writes depend on
    /// earlier ones: a principal must exist before it is granted anything).
    ///
    /// A write with [`Write::if_match`](vmidentity_planner::Write) is sent with `If-Match`:
    /// the tag the plan was made against for the first write to a target, and for a later
    /// one the tag ARM answered the previous write to that target with (our own write
    /// changed it). If that answer carried no tag, the later write goes unconditional.
    /// A 412 surfaces as [`ErrorClass::PreconditionFailed`](crate::ErrorClass): nothing of
    /// that write was applied; the caller re-reads the target and plans again.
    pub async fn execute(&self, plan: &TargetPlan) -> Result<Outcome, AzureError> {
        let mut live = None;
        // (target, the etag ARM answered our last write to it with)
        let mut last: Option<(String, Option<String>)> = None;
        for w in &plan.writes {
            let method = Method::from_bytes(w.method.as_bytes()).map_err(|_| {
                AzureError::InvalidResponse {
                    url: w.id.clone(),
                    message: format!("unknown method {}", w.method),
                }
            })?;
            let if_match = match (&w.if_match, &last) {
                (None, _) => None,
                (Some(_), Some((id, answered))) if id.eq_ignore_ascii_case(&w.id) => {
                    if answered.is_none() {
                        debug!(target = %w.id, "the previous write's answer carried no etag: sending the next one unconditionally");
                    }
                    answered.clone()
                }
                (Some(planned), _) => Some(planned.clone()),
            };
            let answer = self
                .arm
                .write_if_match(method, &w.id, &w.api_version, &w.body, if_match.as_deref())
                .await?;
            if w.method == "PATCH" {
                live = self
                    .arm
                    .url(&w.id, &w.api_version)
                    .and_then(|url| parse_live(&url, &answer))
                    .ok();
            }
            let etag = answer
                .get("etag")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            last = Some((w.id.clone(), etag));
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
