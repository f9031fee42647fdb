//! ARM and Microsoft Graph errors, classified once so callers never match on strings.
//!
//! Both services answer errors as `{"error":{"code","message",…}}` (Graph adds
//! `innerError`), so [`parse_error_body`] and [`classify`] serve both.

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
    /// ARM does not know the principal yet (400 `PrincipalNotFound` on a role-assignment
    /// PUT without `principalType`: Entra → ARM replication lag), or Graph does not know
    /// a member being added. Retryable: requeue with backoff (or send `principalType`).
    PrincipalNotReplicated,
    /// A role definition named by the request does not exist at the scope (unknown role
    /// name, `RoleDefinitionDoesNotExist`). Permanent until the spec changes.
    RoleNotFound,
    /// The Entra group named by a Graph membership call does not exist.
    GroupNotFound,
    /// 412: a conditional write (`If-Match`) found the resource changed since it was read
    /// (another writer got in between). Never re-sent as is: the caller reads the resource
    /// again, plans again and sends the new write (retryable in that sense).
    PreconditionFailed,
}

impl ErrorClass {
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled
                | ErrorClass::Transient
                | ErrorClass::PrincipalNotReplicated
                | ErrorClass::PreconditionFailed
        )
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
            ErrorClass::PrincipalNotReplicated => "PrincipalNotReplicated",
            ErrorClass::RoleNotFound => "RoleNotFound",
            ErrorClass::GroupNotFound => "GroupNotFound",
            ErrorClass::PreconditionFailed => "PreconditionFailed",
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
    /// A `Retry-After` gate is closed. `subscription` names the lane: a subscription, or
    /// `resource-graph`, `microsoft-graph`, `tenant` for requests that name none.
    #[error("{subscription} is throttled for {retry_after:?} more")]
    SubscriptionThrottled {
        subscription: String,
        retry_after: Duration,
    },
    /// A role given by name has no definition visible at the scope (no HTTP error: the
    /// role-definition list came back without it).
    #[error("role definition '{role}' not found at scope '{scope}'")]
    RoleNotFound { role: String, scope: String },
    /// The caller passed something no request can be built from (e.g. a DELETE "by role
    /// assignment id" given another kind of id). Nothing was sent.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// ARM answered a role-assignment PUT with a `properties.scope` other than the one
    /// requested (compared case-insensitively, trailing `/` ignored): the assignment is not
    /// where it was asked for. Not recorded; `id` names what ARM created, for an operator.
    #[error(
        "{url}: the scope ARM applied the role assignment at ({applied:?}) differs from the one requested ({requested:?}); not recording it (ARM's assignment id: {id:?})"
    )]
    ScopeMismatch {
        url: String,
        requested: String,
        applied: String,
        id: String,
    },
}

impl AzureError {
    pub fn class(&self) -> ErrorClass {
        match self {
            AzureError::Arm { class, .. } => *class,
            AzureError::Transport { .. } => ErrorClass::Transient,
            AzureError::Token(_) => ErrorClass::Unauthenticated,
            AzureError::InvalidResponse { .. } => ErrorClass::Transient,
            // ARM accepted the request; the platform failed to carry it out (e.g. Compute's
            // `InternalExecutionError`). Like a 5xx it is retried after a fresh GET (the
            // change may have been applied), never left until the spec changes ("Track
            // asynchronous Azure operations",
            // https://learn.microsoft.com/azure/azure-resource-manager/management/async-operations).
            AzureError::OperationFailed { .. } => ErrorClass::Transient,
            AzureError::OperationTimedOut { .. } => ErrorClass::Transient,
            AzureError::SubscriptionThrottled { .. } => ErrorClass::Throttled,
            AzureError::RoleNotFound { .. } => ErrorClass::RoleNotFound,
            AzureError::InvalidArgument { .. } => ErrorClass::Invalid,
            AzureError::ScopeMismatch { .. } => ErrorClass::Invalid,
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

    /// The HTTP status of an error answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            AzureError::Arm { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// ARM's (or Graph's) error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AzureError::Arm { code, .. } | AzureError::OperationFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Refines the class of an HTTP error answer whose meaning depends on the request
    /// (for example, which id a Graph 404 names). Other errors are returned unchanged.
    pub(crate) fn with_class(self, new: ErrorClass) -> AzureError {
        match self {
            AzureError::Arm {
                method,
                url,
                status,
                code,
                message,
                retry_after,
                ..
            } => AzureError::Arm {
                method,
                url,
                status,
                code,
                message,
                retry_after,
                class: new,
            },
            other => other,
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

/// `{"error":{"code","message"}}` (or the bare `{"code","message"}` some RPs send). The
/// `details[]` of the envelope (`ErrorDetail` in ARM's common types; Resource Graph puts the
/// actual reason there, under a generic "Please provide below info …" message) are appended
/// as ` [code: message; …]`.
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
    let details: Vec<String> = e
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let m = d.get("message").and_then(Value::as_str)?;
            Some(match d.get("code").and_then(Value::as_str) {
                Some(c) => format!("{c}: {m}"),
                None => m.to_string(),
            })
        })
        .collect();
    if details.is_empty() {
        (code, message)
    } else {
        (code, format!("{message} [{}]", details.join("; ")))
    }
}

/// Classifies an ARM or Graph error response. One place, so the controller's conditions,
/// events and metrics never match on strings.
///
/// Graph answers use the same envelope; its codes map as: 429 `TooManyRequests` →
/// Throttled, 5xx → Transient, 401 `InvalidAuthenticationToken` → Unauthenticated, 403
/// `Authorization_RequestDenied` → Forbidden, 404 `Request_ResourceNotFound` →
/// TargetNotFound (the Graph client refines it to GroupNotFound / PrincipalNotReplicated
/// by the id the message names, which only the request knows), anything else → Invalid.
pub fn classify(status: u16, code: &str, message: &str) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    let names_identity = lower.contains("microsoft.managedidentity/userassignedidentities")
        || lower.contains("user assigned identit")
        || lower.contains("userassignedidentities");
    match status {
        429 => ErrorClass::Throttled,
        401 => ErrorClass::Unauthenticated,
        403 => ErrorClass::Forbidden,
        // `PreconditionFailed`: "Etag provided in if-match header … does not match etag … of
        // resource." (CRP, captured in kubernetes-sigs/cloud-provider-azure#9728).
        412 => ErrorClass::PreconditionFailed,
        404 if code == "RoleDefinitionDoesNotExist" => ErrorClass::RoleNotFound,
        404 if names_identity => ErrorClass::IdentityNotFound,
        404 => ErrorClass::TargetNotFound,
        408 | 500 | 502 | 503 | 504 => ErrorClass::Transient,
        // Role-assignment PUT for a principal ARM cannot see yet ("Troubleshoot Azure RBAC",
        // https://learn.microsoft.com/azure/role-based-access-control/troubleshooting).
        400 if code == "PrincipalNotFound" => ErrorClass::PrincipalNotReplicated,
        400 if code == "RoleDefinitionDoesNotExist" => ErrorClass::RoleNotFound,
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

    /// A long-running operation that ended `Failed` is retried (found by the chaos soak,
    /// seed 2: as a refusal it left the object Stalled until its spec changed, although ARM
    /// had applied the change).
    #[test]
    fn a_failed_operation_is_retried() {
        let e = AzureError::OperationFailed {
            url: "http://arm/operations/1".into(),
            status: "Failed".into(),
            code: "InternalExecutionError".into(),
            message: "An internal execution error occurred. Please retry later.".into(),
        };
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.class().is_retryable());
    }

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
            classify(
                400,
                "PrincipalNotFound",
                "Principal 0b3c does not exist in the directory t. Check that you have the correct principal ID."
            ),
            ErrorClass::PrincipalNotReplicated
        );
        assert!(ErrorClass::PrincipalNotReplicated.is_retryable());
        assert_eq!(
            ErrorClass::PrincipalNotReplicated.reason(),
            "PrincipalNotReplicated"
        );
        assert_eq!(
            classify(
                400,
                "RoleDefinitionDoesNotExist",
                "The specified role definition with ID 'abc' does not exist."
            ),
            ErrorClass::RoleNotFound
        );
        assert_eq!(
            classify(404, "RoleDefinitionDoesNotExist", ""),
            ErrorClass::RoleNotFound
        );
        assert!(!ErrorClass::RoleNotFound.is_retryable());
        assert_eq!(ErrorClass::RoleNotFound.reason(), "RoleNotFound");
        assert_eq!(ErrorClass::GroupNotFound.reason(), "GroupNotFound");
        assert_eq!(
            classify(
                412,
                "PreconditionFailed",
                "Etag provided in if-match header \"2\" does not match etag \"3\" of resource."
            ),
            ErrorClass::PreconditionFailed
        );
        assert!(ErrorClass::PreconditionFailed.is_retryable());
        assert!(!ErrorClass::GroupNotFound.is_retryable());
        // Graph bodies.
        assert_eq!(
            classify(
                404,
                "Request_ResourceNotFound",
                "Resource 'g' does not exist or one of its queried reference-property objects are not present."
            ),
            ErrorClass::TargetNotFound
        );
        assert_eq!(
            classify(429, "TooManyRequests", "Too many requests."),
            ErrorClass::Throttled
        );
        assert_eq!(
            classify(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure."
            ),
            ErrorClass::Unauthenticated
        );
        assert_eq!(
            classify(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges"
            ),
            ErrorClass::Forbidden
        );
        assert_eq!(
            classify(
                409,
                "RoleAssignmentExists",
                "The role assignment already exists."
            ),
            ErrorClass::Invalid
        );
        assert_eq!(
            parse_error_body(
                br#"{"error":{"code":"Request_BadRequest","message":"m","innerError":{"date":"d"}}}"#
            ),
            ("Request_BadRequest".to_string(), "m".to_string())
        );
        assert_eq!(
            parse_error_body(br#"{"error":{"code":"X","message":"m","details":[{"code":"D","message":"why"},{"message":"more"}]}}"#),
            ("X".to_string(), "m [D: why; more]".to_string())
        );
        assert_eq!(
            parse_error_body(br#"{"error":{"code":"X","message":"m"}}"#),
            ("X".to_string(), "m".to_string())
        );
    }
}
