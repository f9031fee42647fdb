//! Errors: `SimError` for the Rust API, `ArmError` for what goes on the wire.
//!
//! Every ARM error body has the envelope `{"error":{"code":"…","message":"…"}}`
//! (optionally with `target`, as CRP sends for `InvalidParameter`).

use axum::http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{Value, json};

/// Errors of the simulator's Rust API (start-up, seeding, out-of-band writers).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The seed YAML could not be parsed (syntax, unknown field, wrong type).
    #[error("invalid world seed YAML: {0}")]
    SeedYaml(String),
    /// The seed parsed but describes an impossible world.
    #[error("invalid world seed: {0}")]
    Seed(String),
    /// A resource id given to the Rust API is not a well-formed id of the expected type.
    #[error("invalid resource id '{id}': {reason}")]
    InvalidResourceId { id: String, reason: String },
    /// The resource does not exist in the simulated world.
    #[error("resource '{0}' does not exist in the simulated world")]
    NotFound(String),
    /// An out-of-band identity write was refused by the same rules ARM applies.
    #[error("identity refused: {code}: {message}")]
    Identity { code: String, message: String },
    /// Binding or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// An ARM error response: status, error code/message, optional target,
/// optional full replacement body (429 with `details`), extra headers.
#[derive(Debug, Clone)]
pub struct ArmError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub target: Option<String>,
    pub body: Option<Box<Value>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ArmError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ArmError {
            status,
            code: code.to_string(),
            message: message.into(),
            target: None,
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_target(mut self, target: &str) -> Self {
        self.target = Some(target.to_string());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn with_body(mut self, body: Value) -> Self {
        self.body = Some(Box::new(body));
        self
    }

    /// The JSON body sent for this error.
    pub fn body_json(&self) -> Value {
        if let Some(b) = &self.body {
            return (**b).clone();
        }
        let mut inner = serde_json::Map::new();
        inner.insert("code".into(), Value::String(self.code.clone()));
        inner.insert("message".into(), Value::String(self.message.clone()));
        if let Some(t) = &self.target {
            inner.insert("target".into(), Value::String(t.clone()));
        }
        json!({ "error": Value::Object(inner) })
    }

    /// `InvalidRequestContent` as ARM/CRP answers for bodies it cannot deserialize.
    pub fn invalid_content(detail: impl Into<String>) -> Self {
        Self::bad_request(
            "InvalidRequestContent",
            format!(
                "The request content was invalid and could not be deserialized: '{}'.",
                detail.into()
            ),
        )
    }

    /// ARM's 404 for a missing tracked resource.
    pub fn resource_not_found(arm_type: &str, name: &str, resource_group: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "The Resource '{arm_type}/{name}' under resource group '{resource_group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    }

    /// ARM's 404 for a missing resource group.
    pub fn resource_group_not_found(resource_group: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            format!("Resource group '{resource_group}' could not be found."),
        )
    }
}
