//! Token endpoints: the Microsoft Entra v2.0 token endpoint (client credentials with a
//! secret or a federated JWT assertion) and the IMDS managed-identity endpoint. Tokens
//! they issue are accepted on ARM routes (ARM audience) and Graph routes (Graph
//! audience) until they expire on the simulator's clock.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::CallerConfig;
use crate::errors::ArmError;
use crate::server::{ArmResponse, percent_decode};
use crate::state::State;

/// `client_assertion_type` of a JWT assertion (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience Entra expects in a federated assertion by default.
pub const DEFAULT_FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Default `expires_in` of issued tokens (seconds), as the issue brief's sample shows.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3599;

/// A federated identity credential of an app registration (workload identity
/// federation): an assertion is accepted when `iss` equals `issuer`, `sub` equals
/// `subject` and `aud` contains one of `audiences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
}

fn default_audiences() -> Vec<String> {
    vec![DEFAULT_FEDERATED_AUDIENCE.to_string()]
}

impl FederatedCredential {
    /// A credential with the default audience `api://AzureADTokenExchange`.
    pub fn new(issuer: &str, subject: &str) -> FederatedCredential {
        FederatedCredential {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            audiences: default_audiences(),
        }
    }
}

/// An Entra app registration (with its service principal) that may get tokens from
/// `POST /{tenant}/oauth2/v2.0/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppConfig {
    pub client_id: String,
    /// The tenant the app lives in; the token URL must name it (case-insensitive).
    pub tenant_id: String,
    /// Client secret; `None` = the app has no secret (secrets are refused).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    /// Object id of the app's service principal (the `oid` of its tokens and the
    /// caller's object id on ARM); `None` = uuid v5 of the client id.
    #[serde(default)]
    pub object_id: Option<String>,
}

impl AppConfig {
    /// An app authenticating with a client secret.
    pub fn with_secret(client_id: &str, tenant_id: &str, secret: &str) -> AppConfig {
        AppConfig {
            client_id: client_id.to_string(),
            tenant_id: tenant_id.to_string(),
            secret: Some(secret.to_string()),
            federated_credentials: Vec::new(),
            object_id: None,
        }
    }

    /// An app authenticating with a federated assertion (`iss` = issuer, `sub` = subject,
    /// `aud` = `api://AzureADTokenExchange`).
    pub fn federated(client_id: &str, tenant_id: &str, issuer: &str, subject: &str) -> AppConfig {
        AppConfig {
            client_id: client_id.to_string(),
            tenant_id: tenant_id.to_string(),
            secret: None,
            federated_credentials: vec![FederatedCredential::new(issuer, subject)],
            object_id: None,
        }
    }

    /// Adds a federated credential.
    pub fn with_federated_credential(mut self, credential: FederatedCredential) -> AppConfig {
        self.federated_credentials.push(credential);
        self
    }

    /// The service principal's object id (configured or derived).
    pub fn principal_id(&self) -> String {
        self.object_id
            .clone()
            .unwrap_or_else(|| derived_object_id(&self.client_id))
    }
}

fn derived_object_id(client_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("sp:{}", client_id.to_ascii_lowercase()).as_bytes(),
    )
    .to_string()
}

/// A managed identity IMDS can hand out tokens for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImdsIdentity {
    pub client_id: String,
    /// The identity's principal (object) id.
    pub object_id: String,
    /// ARM id of a user-assigned identity (`msi_res_id` / `mi_res_id` selects it).
    #[serde(default)]
    pub resource_id: Option<String>,
}

impl ImdsIdentity {
    pub fn new(client_id: &str, object_id: &str) -> ImdsIdentity {
        ImdsIdentity {
            client_id: client_id.to_string(),
            object_id: object_id.to_string(),
            resource_id: None,
        }
    }

    pub fn with_resource_id(mut self, resource_id: &str) -> ImdsIdentity {
        self.resource_id = Some(resource_id.to_string());
        self
    }
}

/// The IMDS endpoint `GET /metadata/identity/oauth2/token` (`SimConfig::imds`; `None` =
/// not served). The identities of the simulated VM the caller runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImdsConfig {
    #[serde(default)]
    pub system_assigned: Option<ImdsIdentity>,
    #[serde(default)]
    pub user_assigned: Vec<ImdsIdentity>,
}

impl ImdsConfig {
    /// A VM with only a system-assigned identity.
    pub fn system(identity: ImdsIdentity) -> ImdsConfig {
        ImdsConfig {
            system_assigned: Some(identity),
            user_assigned: Vec::new(),
        }
    }

    /// Adds a user-assigned identity.
    pub fn with_user_assigned(mut self, identity: ImdsIdentity) -> ImdsConfig {
        self.user_assigned.push(identity);
        self
    }
}

/// Which API an issued token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Audience {
    Arm,
    Graph,
    Other,
}

/// The audience a resource (`https://management.azure.com/`) or scope
/// (`https://graph.microsoft.com/.default`) names.
pub(crate) fn audience_of(resource: &str) -> Audience {
    let r = resource
        .trim()
        .trim_end_matches("/.default")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    match r.as_str() {
        "https://management.azure.com" | "https://management.core.windows.net" => Audience::Arm,
        "https://graph.microsoft.com" => Audience::Graph,
        _ => Audience::Other,
    }
}

/// A token the simulator issued.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub audience: Audience,
    /// `aud` as requested (resource).
    pub resource: String,
    pub client_id: String,
    pub object_id: String,
    pub expires_at: Instant,
    pub expires_on: chrono::DateTime<chrono::Utc>,
}

pub(crate) type IssuedTokens = HashMap<String, IssuedToken>;

// ----- base64url / JWT -----

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = ((n >> (18 - 6 * i)) & 0x3f) as usize;
            out.push(char::from(B64[idx]));
        }
    }
    out
}

/// base64url (or standard base64), padding optional. `None` on invalid input.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The claims of a compact JWT (`header.payload.signature`), signature not verified.
pub(crate) fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let _header = parts.next()?;
    let payload = parts.next()?;
    parts.next()?;
    let bytes = base64url_decode(payload)?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        v @ Value::Object(_) => Some(v),
        _ => None,
    }
}

/// Builds an unsigned-looking JWT (`alg: RS256`, signature = random bytes).
pub fn make_jwt(claims: &Value) -> String {
    let header = json!({"typ":"JWT","alg":"RS256","kid":"armsim"});
    let sig = uuid::Uuid::new_v4();
    format!(
        "{}.{}.{}",
        base64url_encode(header.to_string().as_bytes()),
        base64url_encode(claims.to_string().as_bytes()),
        base64url_encode(sig.as_bytes())
    )
}

/// Issues a token (stored as accepted for its audience) and returns it with its
/// lifetime.
pub(crate) fn issue(
    st: &mut State,
    resource: &str,
    tenant: &str,
    client_id: &str,
    object_id: &str,
    lifetime: Duration,
) -> (String, IssuedToken) {
    let now = st.wall_now();
    let exp =
        now + chrono::Duration::from_std(lifetime).unwrap_or_else(|_| chrono::Duration::hours(1));
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "exp": exp.timestamp(),
        "appid": client_id,
        "idtyp": "app",
        "oid": object_id,
        "sub": object_id,
        "tid": tenant,
        "uti": uuid::Uuid::new_v4().to_string(),
        "ver": "1.0",
    });
    let token = make_jwt(&claims);
    let issued = IssuedToken {
        audience: audience_of(resource),
        resource: resource.to_string(),
        client_id: client_id.to_string(),
        object_id: object_id.to_string(),
        expires_at: st.now() + lifetime,
        expires_on: exp,
    };
    st.issued.insert(token.clone(), issued.clone());
    st.counters.tokens_issued += 1;
    (token, issued)
}

// ----- accepting issued tokens -----

fn bearer(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(rest.trim().to_string())
        }
        _ => None,
    }
}

/// .NET's `DateTime.ToString()` in the invariant culture, as ARM prints it.
fn dotnet_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%-m/%-d/%Y %-I:%M:%S %p").to_string()
}

/// Authenticates an ARM request: the static tokens first, then issued tokens.
pub(crate) fn authenticate_arm(st: &State, headers: &HeaderMap) -> Result<CallerConfig, ArmError> {
    let static_err = match crate::auth::check(headers, &st.config.arm_tokens()) {
        Ok(token) => return Ok(st.config.caller(&token)),
        Err(e) => e,
    };
    let Some(token) = bearer(headers) else {
        return Err(static_err);
    };
    let Some(it) = st.issued.get(&token) else {
        return Err(static_err);
    };
    match it.audience {
        Audience::Arm => {
            if st.now() >= it.expires_at {
                let msg = format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    dotnet_time(it.expires_on),
                    dotnet_time(st.wall_now())
                );
                return Err(crate::auth::unauthorized(
                    "ExpiredAuthenticationToken",
                    &msg,
                    &msg,
                ));
            }
            let caller = st
                .config
                .callers
                .iter()
                .find(|c| c.client_id.eq_ignore_ascii_case(&it.client_id))
                .map(|c| CallerConfig {
                    token: token.clone(),
                    ..c.clone()
                })
                .unwrap_or_else(|| CallerConfig {
                    token: token.clone(),
                    object_id: it.object_id.clone(),
                    client_id: it.client_id.clone(),
                    role_assignment_write_scopes: None,
                    compute_write_scopes: None,
                    denied_resource_graph_tables: Vec::new(),
                });
            Ok(caller)
        }
        _ => {
            let msg = format!(
                "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.",
                it.resource
            );
            Err(crate::auth::unauthorized(
                "InvalidAuthenticationTokenAudience",
                &msg,
                &msg,
            ))
        }
    }
}

/// Authenticates a Graph request: the static Graph tokens first, then issued tokens.
pub(crate) fn authenticate_graph(st: &State, headers: &HeaderMap) -> Result<(), ArmError> {
    let static_err = match crate::graph::check_auth(headers, &st.config.graph_tokens) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let Some(it) = bearer(headers).and_then(|t| st.issued.get(&t).cloned()) else {
        return Err(static_err);
    };
    let message = match it.audience {
        Audience::Graph if st.now() < it.expires_at => return Ok(()),
        Audience::Graph => "Lifetime validation failed, the token is expired.",
        _ => "Access token validation failure. Invalid audience.",
    };
    Err(crate::graph::with_challenge(crate::graph::graph_error(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    )))
}

// ----- Entra token endpoint -----

/// `/{tenant}/oauth2/v2.0/token` → the tenant segment.
pub(crate) fn parse_entra_path(path: &str) -> Option<String> {
    let s: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    (s.len() == 5
        && s[0].is_empty()
        && !s[1].is_empty()
        && s[2].eq_ignore_ascii_case("oauth2")
        && s[3].eq_ignore_ascii_case("v2.0")
        && s[4].eq_ignore_ascii_case("token"))
    .then(|| percent_decode(s[1], false))
}

/// `/metadata/identity/oauth2/token`.
pub(crate) fn is_imds_path(path: &str) -> bool {
    path.trim_end_matches('/')
        .eq_ignore_ascii_case("/metadata/identity/oauth2/token")
}

/// Parses `application/x-www-form-urlencoded` (also used for query strings).
pub(crate) fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The form with secrets masked, for the request log.
pub(crate) fn redacted_form(body: &str) -> String {
    body.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == "client_secret" || k == "client_assertion" => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Entra's error body (`{"error","error_description","error_codes",…}`).
fn aad_error(status: StatusCode, error: &str, code: u32, message: &str) -> ArmResponse {
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    ArmResponse::json(
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {now}"
            ),
            "error_codes": [code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn missing(param: &str) -> ArmResponse {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{param}'."),
    )
}

fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn claim_time(claims: &Value, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let secs = claims.get(name).and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })?;
    chrono::DateTime::from_timestamp(secs, 0)
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) fn entra_token(
    st: &mut State,
    method: &Method,
    tenant: &str,
    body: &str,
) -> ArmResponse {
    st.counters.token_requests += 1;
    if *method != Method::POST {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {method} request."
            ),
        );
    }
    let f = form(body);
    let get = |k: &str| f.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(grant) = get("grant_type") else {
        return missing("grant_type");
    };
    if grant != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    let Some(client_id) = get("client_id") else {
        return missing("client_id");
    };
    let Some(scope) = get("scope") else {
        return missing("scope");
    };
    let Some(app) = st
        .config
        .apps
        .iter()
        .find(|a| {
            a.client_id.eq_ignore_ascii_case(client_id) && a.tenant_id.eq_ignore_ascii_case(tenant)
        })
        .cloned()
    else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    // Credentials.
    if let Some(secret) = get("client_secret") {
        if app.secret.as_deref() != Some(secret) {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    app.client_id
                ),
            );
        }
    } else if let Some(assertion) = get("client_assertion") {
        match get("client_assertion_type") {
            None => return missing("client_assertion_type"),
            Some(t) if t != JWT_BEARER_ASSERTION_TYPE => {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    &format!(
                        "Invalid client_assertion_type '{t}'; expected '{JWT_BEARER_ASSERTION_TYPE}'."
                    ),
                );
            }
            Some(_) => {}
        }
        if let Err(resp) = check_assertion(st, &app, assertion) {
            return resp;
        }
    } else {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    // Scope → resource.
    let first = scope.split_whitespace().next().unwrap_or(scope);
    let Some(resource) = first.strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    if audience_of(resource) == Audience::Other {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        );
    }
    let lifetime = st.config.token_lifetime;
    let (token, _) = issue(
        st,
        resource,
        &app.tenant_id,
        &app.client_id,
        &app.principal_id(),
        lifetime,
    );
    let secs = lifetime.as_secs();
    ArmResponse::json(
        StatusCode::OK,
        json!({
            "token_type": "Bearer",
            "expires_in": secs,
            "ext_expires_in": secs,
            "access_token": token,
        }),
    )
    .header(
        HeaderName::from_static("cache-control"),
        "no-store, no-cache",
    )
}

fn check_assertion(st: &State, app: &AppConfig, assertion: &str) -> Result<(), ArmResponse> {
    let Some(claims) = jwt_claims(assertion) else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    let Some(exp) = claim_time(&claims, "exp") else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    let now = st.wall_now();
    let nbf = claim_time(&claims, "nbf")
        .or_else(|| claim_time(&claims, "iat"))
        .unwrap_or(exp - chrono::Duration::hours(1));
    if now >= exp || now < nbf {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                iso(now),
                iso(nbf),
                iso(exp)
            ),
        ));
    }
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    let auds: Vec<String> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let matched = app.federated_credentials.iter().any(|fc| {
        fc.issuer == iss
            && fc.subject == sub
            && fc
                .audiences
                .iter()
                .any(|a| auds.iter().any(|x| x.eq_ignore_ascii_case(a)))
    });
    if !matched {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
                auds.join(",")
            ),
        ));
    }
    Ok(())
}

// ----- IMDS -----

fn imds_error(status: StatusCode, error: &str, description: &str) -> ArmResponse {
    ArmResponse::json(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

/// `GET /metadata/identity/oauth2/token?api-version=…&resource=…[&client_id|object_id|msi_res_id]`.
pub(crate) fn imds_token(
    st: &mut State,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> ArmResponse {
    st.counters.imds_requests += 1;
    let Some(cfg) = st.config.imds.clone() else {
        return imds_error(StatusCode::NOT_FOUND, "not_found", "IMDS is not available.");
    };
    if *method != Method::GET {
        return imds_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            &format!("The requested resource does not support http method '{method}'."),
        );
    }
    let metadata_ok = headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true");
    if !metadata_ok {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let q = form(query.unwrap_or(""));
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    match get("api-version") {
        None => {
            return imds_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Required api-version parameter not specified",
            );
        }
        Some(v) if !supported_imds_version(v) => {
            return imds_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("Invalid api-version '{v}'. Use 2018-02-01 or later."),
            );
        }
        Some(_) => {}
    }
    let Some(resource) = get("resource") else {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let selectors: Vec<(&str, &str)> = ["client_id", "object_id", "msi_res_id", "mi_res_id"]
        .iter()
        .filter_map(|k| get(k).map(|v| (*k, v)))
        .collect();
    if selectors.len() > 1 {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Only one of client_id, object_id, msi_res_id may be specified",
        );
    }
    let all: Vec<&ImdsIdentity> = cfg
        .system_assigned
        .iter()
        .chain(cfg.user_assigned.iter())
        .collect();
    let identity = match selectors.first() {
        Some((k, v)) => all
            .iter()
            .find(|i| match *k {
                "client_id" => i.client_id.eq_ignore_ascii_case(v),
                "object_id" => i.object_id.eq_ignore_ascii_case(v),
                _ => i
                    .resource_id
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(v)),
            })
            .map(|i| (*i).clone()),
        None => match (&cfg.system_assigned, cfg.user_assigned.as_slice()) {
            (Some(s), _) => Some(s.clone()),
            (None, [one]) => Some(one.clone()),
            (None, []) => None,
            (None, _) => {
                return imds_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
                );
            }
        },
    };
    let Some(identity) = identity else {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        );
    };
    let tenant = st.world.tenant_id.clone();
    if audience_of(resource) == Audience::Other {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            &format!(
                "AADSTS50001: The application named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        );
    }
    let lifetime = st.config.token_lifetime;
    let now = st.wall_now();
    let (token, issued) = issue(
        st,
        resource,
        &tenant,
        &identity.client_id,
        &identity.object_id,
        lifetime,
    );
    ArmResponse::json(
        StatusCode::OK,
        json!({
            "access_token": token,
            "client_id": identity.client_id,
            "expires_in": lifetime.as_secs().to_string(),
            "expires_on": issued.expires_on.timestamp().to_string(),
            "not_before": now.timestamp().to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

fn supported_imds_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && v >= "2018-02-01"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "{\"a\":1}"] {
            let e = base64url_encode(s.as_bytes());
            assert!(!e.contains('='));
            assert_eq!(base64url_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(base64url_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_decode("Zm9vYg==").unwrap(), b"foob");
        assert!(base64url_decode("a*b").is_none());
    }

    #[test]
    fn jwt_claims_parse() {
        let t = make_jwt(&json!({"exp": 5, "sub": "x"}));
        assert_eq!(jwt_claims(&t).unwrap()["sub"], "x");
        assert!(jwt_claims("nope").is_none());
        assert!(jwt_claims("a.b").is_none());
    }

    #[test]
    fn audiences() {
        assert_eq!(audience_of("https://management.azure.com/"), Audience::Arm);
        assert_eq!(
            audience_of("https://management.azure.com/.default"),
            Audience::Arm
        );
        assert_eq!(
            audience_of("https://management.core.windows.net/"),
            Audience::Arm
        );
        assert_eq!(audience_of("https://graph.microsoft.com"), Audience::Graph);
        assert_eq!(audience_of("https://vault.azure.net"), Audience::Other);
    }

    #[test]
    fn form_decoding_and_redaction() {
        let f = form("scope=https%3A%2F%2Fmanagement.azure.com%2F.default&a=b+c");
        assert_eq!(f["scope"], "https://management.azure.com/.default");
        assert_eq!(f["a"], "b c");
        assert_eq!(
            redacted_form("client_id=x&client_secret=s3cr3t"),
            "client_id=x&client_secret=***"
        );
    }
}
