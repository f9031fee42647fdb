#![allow(dead_code)]

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use vmidentity_simulator::{SimConfig, SimHandle, WorldSeed, start};

pub const SUB: &str = "00000000-0000-0000-0000-000000000001";
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const V2018: &str = "2018-06-01";
pub const V2017: &str = "2017-12-01";
pub const TOKEN: &str = "sim-token";

pub fn uai(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// The same id spelled as the docs do (`resourcegroups` in lower case).
pub fn uai_lower_rg(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourcegroups/rg-apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

pub fn vm(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

pub fn vmss(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )
}

pub fn seed_yaml() -> String {
    format!(
        r#"
tenantId: {TENANT}
userAssignedIdentities:
  - id: {u1}
    location: westeurope
  - id: {u2}
  - id: {u3}
virtualMachines:
  - id: {vm1}
    location: westeurope
  - id: {vm2}
virtualMachineScaleSets:
  - id: {ss1}
    location: westeurope
"#,
        u1 = uai("uai-1"),
        u2 = uai("uai-2"),
        u3 = uai("uai-3"),
        vm1 = vm("vm-1"),
        vm2 = vm("vm-2"),
        ss1 = vmss("vmss-1"),
    )
}

pub fn seed() -> WorldSeed {
    WorldSeed::from_yaml_str(&seed_yaml()).expect("seed parses")
}

pub async fn sim_with(config: SimConfig) -> SimHandle {
    start(config).await.expect("simulator starts")
}

pub async fn sim() -> SimHandle {
    sim_with(SimConfig {
        seed: seed(),
        ..SimConfig::default()
    })
    .await
}

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Client {
    pub fn new(sim: &SimHandle) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: sim.base_url(),
            token: Some(TOKEN.to_string()),
        }
    }

    pub async fn send(&self, method: &str, path_and_query: &str, body: Option<&Value>) -> Resp {
        self.send_with(method, path_and_query, body, &[]).await
    }

    /// `send` with extra request headers.
    pub async fn send_with(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let url = format!("{}{}", self.base, path_and_query);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.expect("body");
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::String(raw.clone()))
        };
        Resp {
            status,
            headers,
            body,
            raw,
        }
    }

    pub async fn get(&self, id: &str, v: &str) -> Resp {
        self.send("GET", &format!("{id}?api-version={v}"), None)
            .await
    }

    pub async fn patch(&self, id: &str, v: &str, body: Value) -> Resp {
        self.send("PATCH", &format!("{id}?api-version={v}"), Some(&body))
            .await
    }

    pub async fn put(&self, id: &str, v: &str, body: Value) -> Resp {
        self.send("PUT", &format!("{id}?api-version={v}"), Some(&body))
            .await
    }

    pub async fn delete(&self, id: &str, v: &str) -> Resp {
        self.send("DELETE", &format!("{id}?api-version={v}"), None)
            .await
    }

    /// Polls an absolute status URL.
    pub async fn poll(&self, url: &str) -> Resp {
        let path = url
            .strip_prefix(&self.base)
            .expect("status URL on the simulator");
        self.send("GET", path, None).await
    }
}

/// The `{"principalId","clientId"}` entry GET shows for a live user-assigned identity.
pub fn live_entry(sim: &SimHandle, id: &str) -> Value {
    let u = sim.user_assigned_identity(id).expect("uai exists");
    json!({
        "principalId": u["properties"]["principalId"],
        "clientId": u["properties"]["clientId"],
    })
}

pub fn error_body(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

pub fn error_body_target(code: &str, message: &str, target: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "target": target } })
}

pub fn is_uuid(s: &str) -> bool {
    uuid_like(s)
}

fn uuid_like(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Client {
    /// PUT to a path that already carries its query string.
    pub async fn put_raw(&self, path_and_query: &str, body: Value) -> Resp {
        self.send("PUT", path_and_query, Some(&body)).await
    }
}
