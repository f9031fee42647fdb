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

// ---------------------------------------------------------------------------------------
// Entra ID token sources: client secret, workload identity (federated token file), managed
// identity (IMDS). Written against the OAuth 2.0 endpoints directly so every endpoint can be
// pointed at the simulator (and at sovereign clouds), and so ARM, Graph and tokens share one
// HTTP stack; each caches one token per scope and refreshes it 5 minutes before it expires.
// ---------------------------------------------------------------------------------------

use std::collections::HashMap;
use std::sync::Mutex;

/// Refresh this long before a token expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The public cloud's Entra ID authority.
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The instance metadata service.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Default)]
struct Cache(Mutex<HashMap<String, AccessToken>>);

impl Cache {
    fn get(&self, scope: &str) -> Option<AccessToken> {
        let c = self.0.lock().ok()?;
        c.get(scope)
            .filter(|t| !t.expires_within(REFRESH_MARGIN))
            .cloned()
    }
    fn put(&self, scope: &str, t: &AccessToken) {
        if let Ok(mut c) = self.0.lock() {
            c.insert(scope.to_string(), t.clone());
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

fn unavailable(scope: &str, message: impl Into<String>) -> TokenError {
    TokenError::Unavailable {
        scope: scope.to_string(),
        message: message.into(),
    }
}

fn expiry(v: &serde_json::Value) -> Option<SystemTime> {
    let num = |k: &str| -> Option<u64> {
        match v.get(k)? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    if let Some(on) = num("expires_on") {
        return Some(SystemTime::UNIX_EPOCH + Duration::from_secs(on));
    }
    num("expires_in").map(|s| SystemTime::now() + Duration::from_secs(s))
}

async fn token_response(scope: &str, resp: reqwest::Response) -> Result<AccessToken, TokenError> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| {
        unavailable(
            scope,
            format!("HTTP {status}: unreadable token response: {e}"),
        )
    })?;
    if !status.is_success() {
        let what = body
            .get("error_description")
            .or_else(|| body.get("error"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no error description");
        return Err(unavailable(scope, format!("HTTP {status}: {what}")));
    }
    let token = body
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| unavailable(scope, "token response without access_token"))?;
    Ok(AccessToken {
        token: token.to_string(),
        expires_on: expiry(&body),
    })
}

/// A federated token is a JWT of a few KiB; a file larger than this is refused unread (a
/// misconfigured path such as `/dev/zero` must not exhaust memory).
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads a federated token file without blocking the runtime, at most
/// [`MAX_TOKEN_FILE_BYTES`] of it; refuses a larger file, an empty one and one that is not
/// text.
pub async fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let cannot = |e: std::io::Error| {
        format!(
            "cannot read the federated token file {}: {e}",
            path.display()
        )
    };
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let mut buf = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(cannot)?;
    if buf.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "the federated token file {} is larger than {MAX_TOKEN_FILE_BYTES} bytes: not a token",
            path.display()
        ));
    }
    let text = String::from_utf8(buf).map_err(|_| {
        format!(
            "the federated token file {} is not text: not a token",
            path.display()
        )
    })?;
    let jwt = text.trim();
    if jwt.is_empty() || jwt.chars().any(char::is_control) {
        return Err(format!(
            "the federated token file {} holds no token",
            path.display()
        ));
    }
    Ok(jwt.to_string())
}

/// How an app proves who it is to Entra ID.
#[derive(Clone)]
enum Assertion {
    Secret(String),
    /// A file holding a federated (Kubernetes service account) token, re-read on every request:
    /// the kubelet rotates it.
    FederatedTokenFile(std::path::PathBuf),
}

/// `client_credentials` against `{authority}/{tenant}/oauth2/v2.0/token`.
pub struct EntraToken {
    http: reqwest::Client,
    authority: String,
    tenant_id: String,
    client_id: String,
    assertion: Assertion,
    cache: Cache,
}

impl EntraToken {
    /// A client secret (from a Kubernetes Secret, as `AZURE_CLIENT_SECRET`).
    pub fn client_secret(authority: &str, tenant_id: &str, client_id: &str, secret: &str) -> Self {
        Self::new(
            authority,
            tenant_id,
            client_id,
            Assertion::Secret(secret.to_string()),
        )
    }

    /// Azure workload identity: the federated token in `AZURE_FEDERATED_TOKEN_FILE`.
    pub fn workload_identity(
        authority: &str,
        tenant_id: &str,
        client_id: &str,
        token_file: &std::path::Path,
    ) -> Self {
        Self::new(
            authority,
            tenant_id,
            client_id,
            Assertion::FederatedTokenFile(token_file.to_path_buf()),
        )
    }

    fn new(authority: &str, tenant_id: &str, client_id: &str, assertion: Assertion) -> Self {
        EntraToken {
            http: http(),
            authority: authority.trim_end_matches('/').to_string(),
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            assertion,
            cache: Cache::default(),
        }
    }
}

#[async_trait]
impl TokenSource for EntraToken {
    async fn token(&self, scope: &str) -> Result<AccessToken, TokenError> {
        if let Some(t) = self.cache.get(scope) {
            return Ok(t);
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant_id);
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", scope.to_string()),
        ];
        match &self.assertion {
            Assertion::Secret(s) => form.push(("client_secret", s.clone())),
            Assertion::FederatedTokenFile(path) => {
                let jwt = read_token_file(path)
                    .await
                    .map_err(|message| unavailable(scope, message))?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", jwt));
            }
        }
        let resp = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(scope, format!("{url}: {e}")))?;
        let t = token_response(scope, resp).await?;
        self.cache.put(scope, &t);
        Ok(t)
    }
}

/// A managed identity through the instance metadata service (IMDS), as the VM how-to shows:
/// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...` with `Metadata: true`.
pub struct ImdsToken {
    http: reqwest::Client,
    endpoint: String,
    client_id: Option<String>,
    cache: Cache,
}

impl ImdsToken {
    /// `client_id` picks a user-assigned identity; None uses the system-assigned one.
    pub fn new(endpoint: &str, client_id: Option<&str>) -> Self {
        ImdsToken {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(2))
                .no_proxy()
                .build()
                .unwrap_or_default(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            client_id: client_id.map(str::to_string),
            cache: Cache::default(),
        }
    }
}

#[async_trait]
impl TokenSource for ImdsToken {
    async fn token(&self, scope: &str) -> Result<AccessToken, TokenError> {
        if let Some(t) = self.cache.get(scope) {
            return Ok(t);
        }
        // IMDS takes a resource, not a scope.
        let resource = scope.strip_suffix(".default").unwrap_or(scope);
        let mut req = self
            .http
            .get(format!("{}/metadata/identity/oauth2/token", self.endpoint))
            .header("Metadata", "true")
            .query(&[("api-version", "2018-02-01"), ("resource", resource)]);
        if let Some(c) = &self.client_id {
            req = req.query(&[("client_id", c.as_str())]);
        }
        let resp = req.send().await.map_err(|e| {
            unavailable(
                scope,
                format!("the instance metadata service at {} does not answer (not running on an Azure VM, or blocked?): {e}", self.endpoint),
            )
        })?;
        let t = token_response(scope, resp).await?;
        self.cache.put(scope, &t);
        Ok(t)
    }
}

/// Chooses a token source from the environment (`VMIDENTITY_AUTH`):
/// - `workloadIdentity` (default when `AZURE_FEDERATED_TOKEN_FILE` is set): `AZURE_TENANT_ID`,
///   `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` (what the AKS webhook injects);
/// - `clientSecret`: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`;
/// - `managedIdentity`: IMDS (`VMIDENTITY_IMDS_ENDPOINT`, optional `AZURE_CLIENT_ID`);
/// - `static` (default when `AZURE_ACCESS_TOKEN` is set): that token.
///
/// `AZURE_AUTHORITY_HOST` overrides the Entra authority (sovereign clouds, the simulator).
pub fn from_env(
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<std::sync::Arc<dyn TokenSource>, String> {
    let get = |k: &str| var(k).filter(|v| !v.is_empty());
    let need = |k: &str| get(k).ok_or_else(|| format!("{k} is not set"));
    let mode = get("VMIDENTITY_AUTH").unwrap_or_else(|| {
        if get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            "workloadIdentity".into()
        } else if get("AZURE_ACCESS_TOKEN").is_some() {
            "static".into()
        } else if get("AZURE_CLIENT_SECRET").is_some() {
            "clientSecret".into()
        } else {
            "managedIdentity".into()
        }
    });
    let authority = get("AZURE_AUTHORITY_HOST").unwrap_or_else(|| PUBLIC_AUTHORITY.into());
    Ok(match mode.as_str() {
        "workloadIdentity" => std::sync::Arc::new(EntraToken::workload_identity(
            &authority,
            &need("AZURE_TENANT_ID")?,
            &need("AZURE_CLIENT_ID")?,
            std::path::Path::new(&need("AZURE_FEDERATED_TOKEN_FILE")?),
        )),
        "clientSecret" => std::sync::Arc::new(EntraToken::client_secret(
            &authority,
            &need("AZURE_TENANT_ID")?,
            &need("AZURE_CLIENT_ID")?,
            &need("AZURE_CLIENT_SECRET")?,
        )),
        "managedIdentity" => std::sync::Arc::new(ImdsToken::new(
            &get("VMIDENTITY_IMDS_ENDPOINT").unwrap_or_else(|| IMDS_ENDPOINT.into()),
            get("AZURE_CLIENT_ID").as_deref(),
        )),
        "static" => std::sync::Arc::new(StaticToken::new(need("AZURE_ACCESS_TOKEN")?)),
        other => {
            return Err(format!(
                "VMIDENTITY_AUTH={other:?}: expected workloadIdentity, managedIdentity, clientSecret or static"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_files_are_read_with_a_size_cap() {
        let dir = std::env::temp_dir().join(format!("vmid-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok");
        std::fs::write(&ok, "eyJhbGciOi.x.y\n").unwrap();
        assert_eq!(read_token_file(&ok).await.unwrap(), "eyJhbGciOi.x.y");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        assert!(
            read_token_file(&big)
                .await
                .unwrap_err()
                .contains("larger than")
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(
            read_token_file(&empty)
                .await
                .unwrap_err()
                .contains("no token")
        );
        // An endless file (a tenant once could point the token file at /dev/zero) stops at
        // the cap instead of exhausting memory.
        if std::path::Path::new("/dev/zero").exists() {
            let err = read_token_file(std::path::Path::new("/dev/zero"))
                .await
                .unwrap_err();
            assert!(err.contains("larger than"), "{err}");
        }
        let environ = read_token_file(std::path::Path::new("/proc/self/environ")).await;
        assert!(environ.is_err(), "NUL-separated text is no token");
        std::fs::remove_dir_all(&dir).ok();
    }
}
