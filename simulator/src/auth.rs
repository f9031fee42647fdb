//! Bearer authentication on every ARM route.

use axum::http::{HeaderMap, HeaderName, StatusCode, header};

use crate::errors::ArmError;

fn challenge(description: &str) -> String {
    format!(
        "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\", error_description=\"{description}\""
    )
}

pub(crate) fn unauthorized(code: &str, message: &str, description: &str) -> ArmError {
    ArmError::new(StatusCode::UNAUTHORIZED, code, message).with_header(
        HeaderName::from_static("www-authenticate"),
        &challenge(description),
    )
}

/// Accepts `Authorization: Bearer <token>` (scheme case-insensitive) with an accepted
/// token; returns the token.
pub(crate) fn check(headers: &HeaderMap, accepted: &[String]) -> Result<String, ArmError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
            "The authentication failed because of missing 'Authorization' header.",
        ));
    };
    let raw = value.to_str().unwrap_or("").trim();
    let token = match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => {
            return Err(unauthorized(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
                "The authentication failed because of invalid 'Authorization' header format.",
            ));
        }
    };
    if accepted.iter().any(|t| t == token) {
        Ok(token.to_string())
    } else {
        Err(unauthorized(
            "InvalidAuthenticationToken",
            "The access token is invalid.",
            "The access token is invalid.",
        ))
    }
}
