//! ARM errors, classified once so callers never match on strings.

use std::time::Duration;

use serde_json::Value;

use crate::token::TokenError;

/// What a failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 429: slow down; retry after `retry_after`.
    Throttled,
    /// 5xx, timeouts, connection errors: retry with backoff.
    Transient,
    /// The target resource (or its resource group) does not exist.
    TargetNotFound,
    /// A user-assigned identity named in the request does not exist.
    IdentityNotFound,
    /// 401: the token is missing, invalid or expired.
    Unauthenticated,
    /// 403: the caller lacks rights.
    Forbidden,
    /// Anything else ARM refused: retrying the same request will not help.
    Invalid,
}

impl ErrorClass {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Throttled | ErrorClass::Transient)
    }

    /// A stable reason for status conditions, events and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "Throttled",
            ErrorClass::Transient => "AzureUnavailable",
            ErrorClass::TargetNotFound => "TargetNotFound",
            ErrorClass::IdentityNotFound => "IdentityNotFound",
            ErrorClass::Unauthenticated => "AuthenticationFailed",
            ErrorClass::Forbidden => "AuthorizationFailed",
            ErrorClass::Invalid => "RequestRefused",
        }
    }
}

/// Everything that can go wrong talking to Azure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AzureError {
    #[error("{method} {url}: HTTP {status} {code}: {message}")]
    Arm {
        method: String,
        url: String,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
        class: ErrorClass,
    },
    #[error("{method} {url}: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{url}: unexpected response: {message}")]
    InvalidResponse { url: String, message: String },
    #[error("long-running operation {url} ended {status}: {code}: {message}")]
    OperationFailed {
        url: String,
        status: String,
        code: String,
        message: String,
    },
    #[error("long-running operation {url} still running after {waited:?}")]
    OperationTimedOut { url: String, waited: Duration },
    #[error("subscription {subscription} is throttled for {retry_after:?} more")]
    SubscriptionThrottled {
        subscription: String,
        retry_after: Duration,
    },
}

impl AzureError {
    pub fn class(&self) -> ErrorClass {
        match self {
            AzureError::Arm { class, .. } => *class,
            AzureError::Transport { .. } => ErrorClass::Transient,
            AzureError::Token(_) => ErrorClass::Unauthenticated,
            AzureError::InvalidResponse { .. } => ErrorClass::Transient,
            AzureError::OperationFailed { .. } => ErrorClass::Invalid,
            AzureError::OperationTimedOut { .. } => ErrorClass::Transient,
            AzureError::SubscriptionThrottled { .. } => ErrorClass::Throttled,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }

    /// How long ARM asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AzureError::Arm { retry_after, .. } => *retry_after,
            AzureError::SubscriptionThrottled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// ARM's error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AzureError::Arm { code, .. } | AzureError::OperationFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    /// ARM's error message, or the whole error.
    pub fn message(&self) -> String {
        match self {
            AzureError::Arm { message, .. } | AzureError::OperationFailed { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }
}

/// `{"error":{"code","message"}}` (or the bare `{"code","message"}` some RPs send).
pub fn parse_error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&v);
    let code = e
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("Unknown")
        .to_string();
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    (code, message)
}

/// Classifies an ARM error response. One place, so the controller's conditions, events and
/// metrics never match on strings.
pub fn classify(status: u16, code: &str, message: &str) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    let names_identity = lower.contains("microsoft.managedidentity/userassignedidentities")
        || lower.contains("user assigned identit")
        || lower.contains("userassignedidentities");
    match status {
        429 => ErrorClass::Throttled,
        401 => ErrorClass::Unauthenticated,
        403 => ErrorClass::Forbidden,
        404 if names_identity => ErrorClass::IdentityNotFound,
        404 => ErrorClass::TargetNotFound,
        408 | 500 | 502 | 503 | 504 => ErrorClass::Transient,
        400 if (code == "FailedIdentityOperation"
            || code == "InvalidIdentityValues"
            || code.ends_with("NotFound"))
            && names_identity
            && (lower.contains("not found")
                || lower.contains("notfound")
                || lower.contains("does not exist")
                || lower.contains("could not be found")) =>
        {
            ErrorClass::IdentityNotFound
        }
        409 if code == "AnotherOperationInProgress" || code == "OperationNotAllowed" => {
            ErrorClass::Transient
        }
        _ if code == "RetryableError" || code == "RetryableErrorDueToAnotherOperation" => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(
            classify(429, "OperationNotAllowed", ""),
            ErrorClass::Throttled
        );
        assert_eq!(
            classify(503, "ServiceUnavailable", ""),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(
                404,
                "ResourceNotFound",
                "The Resource 'Microsoft.Compute/virtualMachines/vm1' under resource group 'rg' was not found."
            ),
            ErrorClass::TargetNotFound
        );
        assert_eq!(
            classify(
                400,
                "FailedIdentityOperation",
                "Identity operation for resource '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm' failed with error 'Failed to perform resource identity operation. Status: 'NotFound'. Response: '{\"error\":{\"code\":\"ResourceNotFound\",\"message\":\"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/u9' under resource group 'rg' was not found.\"}}'.'."
            ),
            ErrorClass::IdentityNotFound
        );
        assert_eq!(
            classify(400, "InvalidParameter", "bad"),
            ErrorClass::Invalid
        );
        assert_eq!(
            classify(403, "AuthorizationFailed", ""),
            ErrorClass::Forbidden
        );
        assert_eq!(
            parse_error_body(br#"{"error":{"code":"X","message":"m"}}"#),
            ("X".to_string(), "m".to_string())
        );
    }
}
