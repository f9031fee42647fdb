//! Fault injection: rules matched on method and path substring (case-insensitive).
//! The first matching rule with uses left fires; `times: None` = forever.

use axum::http::{HeaderName, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::errors::ArmError;
use crate::state::{ActiveFault, State, now_rfc3339};

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum FaultAction {
    /// 429 with `Retry-After` and CRP's throttling body, as captured in microsoft/AzureTRE#2777
    /// and Azure/AKS#1187 (observed).
    Throttle { retry_after_secs: u64 },
    /// An error status (500 → `InternalServerError`, 503 → `ServiceUnavailable`, …).
    Status { code: u16 },
    /// Wait, then handle the request normally.
    Delay { ms: u64 },
    /// Any ARM error, as `{"error":{"code","message"}}` with this status: e.g. 400
    /// `PrincipalNotFound` (Entra replication delay, "Troubleshoot Azure RBAC",
    /// <https://learn.microsoft.com/azure/role-based-access-control/troubleshooting>).
    Error {
        status: u16,
        error_code: String,
        message: String,
    },
}

/// A fault rule. JSON (admin API):
/// `{"method":"PATCH","pathContains":"vm-web-1","action":{"type":"throttle","retryAfterSecs":5},"times":2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// HTTP method to match (any when absent), case-insensitive.
    #[serde(default)]
    pub method: Option<String>,
    /// Substring of the request path (e.g. a resource id or name), case-insensitive.
    #[serde(default)]
    pub path_contains: Option<String>,
    pub action: FaultAction,
    /// How many requests it applies to; `None` = forever.
    #[serde(default)]
    pub times: Option<u32>,
    /// How long (milliseconds from when it is added) it applies; `None` = until used up or
    /// cleared. For storms and pauses of a given length (`throttle(5).for_ms(20_000)`: 429s
    /// for 20 s; `delay(3_000).for_ms(10_000)`: a 10 s network pause to ARM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// Match the token endpoints (Entra `/{tenant}/oauth2/v2.0/token` and IMDS) instead of
    /// ARM and Graph: token endpoint outages. Default false (a rule never hits the token
    /// endpoints unless it says so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_endpoints: bool,
}

impl FaultRule {
    /// A rule matching every ARM request, forever.
    pub fn new(action: FaultAction) -> FaultRule {
        FaultRule {
            method: None,
            path_contains: None,
            action,
            times: None,
            for_ms: None,
            token_endpoints: false,
        }
    }

    pub fn throttle(retry_after_secs: u64) -> FaultRule {
        Self::new(FaultAction::Throttle { retry_after_secs })
    }

    pub fn status(code: u16) -> FaultRule {
        Self::new(FaultAction::Status { code })
    }

    pub fn error(status: u16, code: &str, message: &str) -> FaultRule {
        Self::new(FaultAction::Error {
            status,
            error_code: code.to_string(),
            message: message.to_string(),
        })
    }

    pub fn delay(ms: u64) -> FaultRule {
        Self::new(FaultAction::Delay { ms })
    }

    pub fn method(mut self, method: &str) -> FaultRule {
        self.method = Some(method.to_string());
        self
    }

    pub fn path_contains(mut self, fragment: &str) -> FaultRule {
        self.path_contains = Some(fragment.to_string());
        self
    }

    pub fn times(mut self, n: u32) -> FaultRule {
        self.times = Some(n);
        self
    }

    /// Matches the token endpoints instead of ARM and Graph.
    pub fn token_endpoints(mut self) -> FaultRule {
        self.token_endpoints = true;
        self
    }

    /// Applies for `ms` milliseconds from when it is added, then no more.
    pub fn for_ms(mut self, ms: u64) -> FaultRule {
        self.for_ms = Some(ms);
        self
    }

    fn matches(&self, method: &str, path: &str, token_endpoint: bool) -> bool {
        if self.token_endpoints != token_endpoint {
            return false;
        }
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(method)
        {
            return false;
        }
        if let Some(p) = &self.path_contains
            && !path.to_ascii_lowercase().contains(&p.to_ascii_lowercase())
        {
            return false;
        }
        true
    }
}

pub(crate) fn add(st: &mut State, rule: FaultRule) {
    let remaining = rule.times;
    let expires = rule
        .for_ms
        .map(|ms| st.now() + std::time::Duration::from_millis(ms));
    st.faults.push(ActiveFault {
        rule,
        remaining,
        expires,
    });
}

/// Finds the first matching rule with uses and time left, consumes one use and returns its
/// action. Expired rules are dropped.
pub(crate) fn take(
    st: &mut State,
    method: &str,
    path: &str,
    token_endpoint: bool,
) -> Option<FaultAction> {
    let now = st.now();
    st.faults.retain(|f| f.expires.is_none_or(|e| now < e));
    let idx = st.faults.iter().position(|f| {
        f.remaining.is_none_or(|n| n > 0) && f.rule.matches(method, path, token_endpoint)
    })?;
    let f = &mut st.faults[idx];
    if let Some(n) = &mut f.remaining {
        *n -= 1;
    }
    Some(f.rule.action.clone())
}

/// The operation group named in a CRP 429 for this request (names from captured
/// traffic: Azure/AKS#1187, Azure/azure-libraries-for-java#1252, and "Troubleshooting API
/// throttling errors",
/// <https://learn.microsoft.com/azure/virtual-machines/troubleshooting/troubleshooting-throttling-errors>;
/// the pick per request kind is the simulator's).
fn operation_group(method: &str, path: &str) -> &'static str {
    let p = path.to_ascii_lowercase();
    let vmss = p.contains("/virtualmachinescalesets/");
    match (method, vmss) {
        ("GET", true) => "HighCostGetVMScaleSet30Min",
        ("GET", false) => "LowCostGet3Min",
        (_, true) => "VMScaleSetBatchedVMRequests5Min",
        (_, false) => "PutVM3Min",
    }
}

/// The 429 response. Body as Compute sends it (observed: microsoft/AzureTRE#2777 for the
/// `error` envelope, `details` and `innererror`; Azure/AKS#1187 for the top-level code and
/// message; the same fields without the envelope in "Troubleshooting API throttling errors").
pub(crate) fn throttle_error(method: &str, path: &str, retry_after_secs: u64) -> ArmError {
    let group = operation_group(method, path);
    let start = chrono::Utc::now();
    let end = start
        + chrono::Duration::seconds(i64::try_from(retry_after_secs).unwrap_or(i64::MAX / 2_000));
    let detail = json!({
        "operationGroup": group,
        "startTime": start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        "endTime": end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        "allowedRequestCount": 937,
        "measuredRequestCount": 2838,
    })
    .to_string();
    let message = "The server rejected the request because too many requests have been received for this subscription.";
    ArmError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "OperationNotAllowed",
        message,
    )
    .with_body(json!({
        "error": {
            "code": "OperationNotAllowed",
            "message": message,
            "details": [{ "code": "TooManyRequests", "target": group, "message": detail }],
            "innererror": { "internalErrorCode": "TooManyRequestsReceived" }
        }
    }))
    .with_header(
        HeaderName::from_static("retry-after"),
        &retry_after_secs.to_string(),
    )
    .with_header(
        HeaderName::from_static("x-ms-ratelimit-remaining-resource"),
        &format!("Microsoft.Compute/{group};0"),
    )
}

/// An injected error status with an ARM error body.
pub(crate) fn status_error(code: u16) -> ArmError {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (c, msg) = match status.as_u16() {
        500 => (
            "InternalServerError",
            format!(
                "Encountered internal server error. Diagnostic information: timestamp '{}', tracking id '{}'.",
                now_rfc3339(),
                uuid::Uuid::new_v4()
            ),
        ),
        503 => (
            "ServiceUnavailable",
            "The service is currently unavailable. Please try again later.".to_string(),
        ),
        502 => (
            "BadGateway",
            "The gateway did not receive a response from the service.".to_string(),
        ),
        504 => (
            "GatewayTimeout",
            "The gateway did not receive a response within the specified time period.".to_string(),
        ),
        429 => (
            "TooManyRequests",
            "Too many requests. Please try again later.".to_string(),
        ),
        _ => (
            status.canonical_reason().unwrap_or("Error"),
            format!("Injected fault: HTTP {}.", status.as_u16()),
        ),
    };
    let code_str: String = c.chars().filter(|ch| !ch.is_whitespace()).collect();
    ArmError::new(status, &code_str, msg)
}

/// An injected [`FaultAction::Error`].
pub(crate) fn custom_error(status: u16, code: &str, message: &str) -> ArmError {
    ArmError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        code,
        message.to_string(),
    )
}
