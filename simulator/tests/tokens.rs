//! Entra token endpoint (client secret, federated assertion) and IMDS; issued tokens
//! on ARM and Graph routes; expiry on the simulator's clock.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{
    AppConfig, CallerConfig, ImdsConfig, ImdsIdentity, SimConfig, SimHandle, base64url_decode,
    make_jwt,
};

const APP: &str = "5d3a2f6c-1b2e-4c4f-9a7d-0e1f2a3b4c5d";
const FED_APP: &str = "a1b2c3d4-0000-4000-8000-00000000fed0";
const SECRET: &str = "s3cr3t~value";
const ISSUER: &str = "https://oidc.prod-aks.azure.com/abc/";
const SUBJECT: &str = "system:serviceaccount:vmidentity-system:vmidentity-controller";
const ARM_SCOPE: &str = "https://management.azure.com/.default";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const SYS_CLIENT: &str = "0f0f0f0f-1111-4222-8333-444444444444";
const SYS_OBJECT: &str = "9e9e9e9e-1111-4222-8333-444444444444";
const UAI_CLIENT: &str = "1a1a1a1a-1111-4222-8333-444444444444";
const UAI_OBJECT: &str = "2b2b2b2b-1111-4222-8333-444444444444";

fn apps() -> Vec<AppConfig> {
    vec![
        AppConfig::with_secret(APP, TENANT, SECRET),
        AppConfig::federated(FED_APP, TENANT, ISSUER, SUBJECT),
    ]
}

async fn sim_tokens() -> SimHandle {
    sim_with(SimConfig {
        seed: seed(),
        apps: apps(),
        ..SimConfig::default()
    })
    .await
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn token_request(sim: &SimHandle, tenant: &str, body: String) -> Resp {
    let r = reqwest::Client::new()
        .post(format!("{}/{tenant}/oauth2/v2.0/token", sim.base_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("sent");
    to_resp(r).await
}

async fn to_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let raw = r.text().await.expect("body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::String(raw.clone()));
    Resp {
        status,
        headers,
        body,
        raw,
    }
}

fn secret_form(client: &str, secret: &str, scope: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client),
        ("client_secret", secret),
        ("scope", scope),
    ])
}

fn assertion_form(client: &str, assertion: &str, scope: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
        ("scope", scope),
    ])
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn assertion(iss: &str, sub: &str, aud: &str, exp: i64) -> String {
    make_jwt(
        &json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "nbf": now_secs() - 60, "iat": now_secs() - 60}),
    )
}

fn client_with(sim: &SimHandle, token: &str) -> Client {
    let mut c = Client::new(sim);
    c.token = Some(token.to_string());
    c
}

/// Checks Entra's error envelope and returns the description's first line.
fn aad_error(r: &Resp, status: u16, error: &str, code: u64) -> String {
    assert_eq!(r.status, status, "{}", r.raw);
    assert_eq!(r.body["error"], error, "{}", r.raw);
    assert_eq!(r.body["error_codes"], json!([code]));
    assert_eq!(
        r.body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    for k in ["timestamp", "trace_id", "correlation_id"] {
        assert!(r.body[k].is_string(), "{k} in {}", r.raw);
    }
    let d = r.body["error_description"].as_str().expect("description");
    assert!(d.contains("\r\nTrace ID: "), "{d}");
    let first = d.split("\r\n").next().unwrap_or_default().to_string();
    assert!(first.starts_with(&format!("AADSTS{code}: ")), "{first}");
    first
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("jwt");
    serde_json::from_slice(&base64url_decode(payload).expect("b64")).expect("json")
}

#[tokio::test]
async fn client_secret_gets_an_arm_token_accepted_on_arm_only() {
    let sim = sim_tokens().await;
    let r = token_request(&sim, TENANT, secret_form(APP, SECRET, ARM_SCOPE)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let obj = r.body.as_object().expect("object");
    assert_eq!(
        obj.keys().map(String::as_str).collect::<Vec<_>>(),
        ["token_type", "expires_in", "ext_expires_in", "access_token"]
    );
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 3599);
    assert_eq!(r.body["ext_expires_in"], 3599);
    let token = r.body["access_token"].as_str().expect("token").to_string();
    let c = claims(&token);
    assert_eq!(c["aud"], "https://management.azure.com");
    assert_eq!(c["appid"], APP);
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["oid"], apps()[0].principal_id());
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3599
    );

    let arm = client_with(&sim, &token);
    assert_eq!(arm.get(&vm("vm-1"), V2018).await.status, 200);
    let g = arm.send("GET", "/v1.0/groups/x/members", None).await;
    assert_eq!(g.status, 401);
    assert_eq!(g.body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        g.body["error"]["message"],
        "Access token validation failure. Invalid audience."
    );
    let k = sim.counters();
    assert_eq!((k.token_requests, k.tokens_issued), (1, 1));
    assert_eq!(sim.issued_token_count(), 1);
    assert!(sim.token_valid(&token));
    // Secrets never reach the request log.
    let logged = sim.requests()[0].body.clone().expect("body");
    let logged = logged.as_str().expect("string");
    assert!(
        !logged.contains(SECRET) && logged.contains("client_secret=***"),
        "{logged}"
    );
}

#[tokio::test]
async fn graph_scope_token_is_accepted_on_graph_only() {
    let sim = sim_tokens().await;
    let r = token_request(&sim, TENANT, secret_form(APP, SECRET, GRAPH_SCOPE)).await;
    assert_eq!(r.status, 200);
    let token = r.body["access_token"].as_str().expect("token").to_string();
    assert_eq!(claims(&token)["aud"], "https://graph.microsoft.com");
    let c = client_with(&sim, &token);
    let p = sim.user_assigned_identity(&uai("uai-1")).expect("uai")["properties"]["principalId"]
        .as_str()
        .expect("principal")
        .to_string();
    let g = c
        .send("GET", &format!("/v1.0/servicePrincipals/{p}"), None)
        .await;
    assert_eq!(g.status, 200, "{}", g.raw);
    let a = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.body,
        error_body(
            "InvalidAuthenticationTokenAudience",
            "The access token has been obtained for wrong audience or resource 'https://graph.microsoft.com'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'."
        )
    );
    assert!(a.header("www-authenticate").is_some());
}

#[tokio::test]
async fn wrong_secret_unknown_client_and_wrong_tenant() {
    let sim = sim_tokens().await;
    let r = token_request(&sim, TENANT, secret_form(APP, "nope", ARM_SCOPE)).await;
    let first = aad_error(&r, 401, "invalid_client", 7000215);
    assert_eq!(
        first,
        format!(
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{APP}'."
        )
    );
    let unknown = "99999999-9999-4999-8999-999999999999";
    let r = token_request(&sim, TENANT, secret_form(unknown, SECRET, ARM_SCOPE)).await;
    let first = aad_error(&r, 400, "unauthorized_client", 700016);
    assert_eq!(
        first,
        format!(
            "AADSTS700016: Application with identifier '{unknown}' was not found in the directory '{TENANT}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
        )
    );
    let other_tenant = "11111111-1111-4111-8111-111111111111";
    let r = token_request(&sim, other_tenant, secret_form(APP, SECRET, ARM_SCOPE)).await;
    aad_error(&r, 400, "unauthorized_client", 700016);
    // A secret for an app without one.
    let r = token_request(&sim, TENANT, secret_form(FED_APP, SECRET, ARM_SCOPE)).await;
    aad_error(&r, 401, "invalid_client", 7000215);
    assert_eq!(sim.issued_token_count(), 0);
}

#[tokio::test]
async fn federated_assertion_success_and_failures() {
    let sim = sim_tokens().await;
    let aud = "api://AzureADTokenExchange";
    let ok = assertion(ISSUER, SUBJECT, aud, now_secs() + 600);
    let r = token_request(&sim, TENANT, assertion_form(FED_APP, &ok, ARM_SCOPE)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let token = r.body["access_token"].as_str().expect("token").to_string();
    assert_eq!(claims(&token)["appid"], FED_APP);
    assert_eq!(
        client_with(&sim, &token)
            .get(&vm("vm-1"), V2018)
            .await
            .status,
        200
    );

    // Expired assertion.
    let exp = now_secs() - 10;
    let expired = assertion(ISSUER, SUBJECT, aud, exp);
    let r = token_request(&sim, TENANT, assertion_form(FED_APP, &expired, ARM_SCOPE)).await;
    let first = aad_error(&r, 400, "invalid_client", 700024);
    assert!(
        first.starts_with(
            "AADSTS700024: Client assertion is not within its valid time range. Current time: "
        ),
        "{first}"
    );
    let exp_iso = chrono::DateTime::from_timestamp(exp, 0)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert!(
        first.contains(&format!("expiry time of assertion {exp_iso}")),
        "{first}"
    );
    // An assertion that expires later on the simulator's clock.
    let short = assertion(ISSUER, SUBJECT, aud, now_secs() + 60);
    sim.advance_clock(Duration::from_secs(120));
    let r = token_request(&sim, TENANT, assertion_form(FED_APP, &short, ARM_SCOPE)).await;
    aad_error(&r, 400, "invalid_client", 700024);

    // Wrong issuer / subject / audience.
    let far = now_secs() + 3600;
    for (iss, sub, a) in [
        ("https://evil.example/", SUBJECT, aud),
        (ISSUER, "system:serviceaccount:other:sa", aud),
        (ISSUER, SUBJECT, "api://SomethingElse"),
    ] {
        let bad = assertion(iss, sub, a, far);
        let r = token_request(&sim, TENANT, assertion_form(FED_APP, &bad, ARM_SCOPE)).await;
        let first = aad_error(&r, 400, "invalid_request", 70021);
        assert_eq!(
            first,
            format!(
                "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{a}'. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
            )
        );
    }
    // An app without federated credentials.
    let r = token_request(
        &sim,
        TENANT,
        assertion_form(APP, &assertion(ISSUER, SUBJECT, aud, far), ARM_SCOPE),
    )
    .await;
    aad_error(&r, 400, "invalid_request", 70021);
    // Not a JWT.
    let r = token_request(&sim, TENANT, assertion_form(FED_APP, "garbage", ARM_SCOPE)).await;
    aad_error(&r, 400, "invalid_request", 50027);
    assert_eq!(sim.issued_token_count(), 1);
}

#[tokio::test]
async fn malformed_token_requests() {
    let sim = sim_tokens().await;
    let r = token_request(&sim, TENANT, form(&[("client_id", APP)])).await;
    assert_eq!(
        aad_error(&r, 400, "invalid_request", 900144),
        "AADSTS900144: The request body must contain the following parameter: 'grant_type'."
    );
    let r = token_request(
        &sim,
        TENANT,
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", SECRET),
        ]),
    )
    .await;
    assert!(aad_error(&r, 400, "invalid_request", 900144).ends_with("'scope'."));
    let r = token_request(
        &sim,
        TENANT,
        form(&[("grant_type", "password"), ("client_id", APP)]),
    )
    .await;
    aad_error(&r, 400, "unsupported_grant_type", 70003);
    let r = token_request(
        &sim,
        TENANT,
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("scope", ARM_SCOPE),
        ]),
    )
    .await;
    aad_error(&r, 401, "invalid_client", 7000218);
    let r = token_request(
        &sim,
        TENANT,
        secret_form(
            APP,
            SECRET,
            "https://management.azure.com/user_impersonation",
        ),
    )
    .await;
    aad_error(&r, 400, "invalid_scope", 1002012);
    let r = token_request(
        &sim,
        TENANT,
        secret_form(APP, SECRET, "https://vault.azure.net/.default"),
    )
    .await;
    aad_error(&r, 400, "invalid_resource", 500011);
    let r = reqwest::Client::new()
        .get(format!("{}/{TENANT}/oauth2/v2.0/token", sim.base_url()))
        .send()
        .await
        .expect("sent");
    let r = to_resp(r).await;
    assert_eq!(
        aad_error(&r, 400, "invalid_request", 900561),
        "AADSTS900561: The endpoint only accepts POST, OPTIONS requests. Received a GET request."
    );
    assert_eq!(sim.counters().token_requests, 7);
}

#[tokio::test]
async fn issued_tokens_expire_on_the_simulator_clock() {
    let sim = sim_tokens().await;
    sim.set_token_lifetime(Duration::from_secs(60));
    let r = token_request(&sim, TENANT, secret_form(APP, SECRET, ARM_SCOPE)).await;
    assert_eq!(r.body["expires_in"], 60);
    let arm_token = r.body["access_token"].as_str().expect("token").to_string();
    let r = token_request(&sim, TENANT, secret_form(APP, SECRET, GRAPH_SCOPE)).await;
    let graph_token = r.body["access_token"].as_str().expect("token").to_string();
    let arm = client_with(&sim, &arm_token);
    let graph = client_with(&sim, &graph_token);
    assert_eq!(arm.get(&vm("vm-1"), V2018).await.status, 200);
    sim.advance_clock(Duration::from_secs(59));
    assert_eq!(arm.get(&vm("vm-1"), V2018).await.status, 200);
    sim.advance_clock(Duration::from_secs(2));
    assert!(!sim.token_valid(&arm_token));
    let r = arm.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "ExpiredAuthenticationToken");
    let msg = r.body["error"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with("The access token expiry UTC time '")
            && msg.contains("' is earlier than current UTC time '"),
        "{msg}"
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_token"))
    );
    let g = graph.send("GET", "/v1.0/groups/x/members", None).await;
    assert_eq!(g.status, 401);
    assert_eq!(
        g.body["error"]["message"],
        "Lifetime validation failed, the token is expired."
    );
    // The static tokens never expire.
    assert_eq!(Client::new(&sim).get(&vm("vm-1"), V2018).await.status, 200);
}

#[tokio::test]
async fn issue_token_helper_and_caller_mapping() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        apps: apps(),
        callers: vec![CallerConfig {
            token: "unused-static-token".into(),
            object_id: "0b0b0b0b-0000-4000-8000-000000000001".into(),
            client_id: APP.into(),
            role_assignment_write_scopes: Some(Vec::new()),
            compute_write_scopes: None,
            denied_resource_graph_tables: Vec::new(),
        }],
        ..SimConfig::default()
    })
    .await;
    let t = sim.issue_token("https://management.azure.com/", APP, None);
    assert_eq!(sim.issued_token_count(), 1);
    let c = client_with(&sim, &t);
    assert_eq!(c.get(&vm("vm-1"), V2018).await.status, 200);
    // The issued token acts as the caller configured for its client id.
    let r = c
        .put_raw(
            &format!(
                "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/05c5a614-a7d6-4502-b150-c2fb455033ff?api-version=2022-04-01"
            ),
            json!({"properties": {"roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"), "principalId": "ce2ce14e-85d7-4629-bdbc-454d0519d987"}}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    let msg = r.body["error"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with(&format!(
            "The client '{APP}' with object id '0b0b0b0b-0000-4000-8000-000000000001'"
        )),
        "{msg}"
    );
    // A short-lived token from the helper.
    let t2 = sim.issue_token(
        "https://management.azure.com/",
        "some-client",
        Some(Duration::from_secs(5)),
    );
    assert!(sim.token_valid(&t2));
    sim.advance_clock(Duration::from_secs(5));
    assert!(!sim.token_valid(&t2));
    assert!(sim.token_valid(&t));
    assert_eq!(sim.counters().tokens_issued, 2);
}

// ----- IMDS -----

fn imds() -> ImdsConfig {
    ImdsConfig::system(ImdsIdentity::new(SYS_CLIENT, SYS_OBJECT)).with_user_assigned(
        ImdsIdentity::new(UAI_CLIENT, UAI_OBJECT).with_resource_id(&uai("uai-1")),
    )
}

async fn imds_get(sim: &SimHandle, query: &str, metadata: Option<&str>) -> Resp {
    let mut req = reqwest::Client::new().get(format!(
        "{}/metadata/identity/oauth2/token?{query}",
        sim.base_url()
    ));
    if let Some(m) = metadata {
        req = req.header("Metadata", m);
    }
    to_resp(req.send().await.expect("sent")).await
}

const ARM_Q: &str = "api-version=2018-02-01&resource=https://management.azure.com/";

fn imds_err(description: &str) -> Value {
    json!({"error": "invalid_request", "error_description": description})
}

#[tokio::test]
async fn imds_is_off_by_default() {
    let sim = sim().await;
    let r = imds_get(&sim, ARM_Q, Some("true")).await;
    assert_eq!(r.status, 401, "an unknown route, as before: {}", r.raw);
    sim.set_imds(Some(imds()));
    assert_eq!(imds_get(&sim, ARM_Q, Some("true")).await.status, 200);
    sim.set_imds(None);
    assert_eq!(imds_get(&sim, ARM_Q, Some("true")).await.status, 401);
    assert_eq!(sim.counters().imds_requests, 1);
}

#[tokio::test]
async fn imds_system_identity_token() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        imds: Some(imds()),
        ..SimConfig::default()
    })
    .await;
    let r = imds_get(&sim, ARM_Q, Some("true")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let obj = r.body.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "client_id",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type"
        ]
    );
    assert!(obj.values().all(Value::is_string), "all strings: {}", r.raw);
    assert_eq!(r.body["client_id"], SYS_CLIENT);
    assert_eq!(r.body["resource"], "https://management.azure.com/");
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], "3599");
    let on: i64 = r.body["expires_on"].as_str().unwrap().parse().unwrap();
    let nb: i64 = r.body["not_before"].as_str().unwrap().parse().unwrap();
    assert_eq!(on - nb, 3599);
    let token = r.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&token)["oid"], SYS_OBJECT);
    assert_eq!(claims(&token)["tid"], TENANT);
    assert_eq!(
        client_with(&sim, &token)
            .get(&vm("vm-1"), V2018)
            .await
            .status,
        200
    );
    // Graph resource → a Graph token.
    let r = imds_get(
        &sim,
        "api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com",
        Some("true"),
    )
    .await;
    assert_eq!(r.status, 200);
    let g = client_with(&sim, r.body["access_token"].as_str().unwrap())
        .send("GET", "/v1.0/groups/x/members", None)
        .await;
    assert_ne!(g.status, 401, "{}", g.raw);
    assert_eq!(sim.counters().imds_requests, 2);
}

#[tokio::test]
async fn imds_selects_user_assigned_identities() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        imds: Some(imds()),
        ..SimConfig::default()
    })
    .await;
    for sel in [
        format!("client_id={UAI_CLIENT}"),
        format!("object_id={UAI_OBJECT}"),
        format!("msi_res_id={}", uai("uai-1")),
        format!("mi_res_id={}", uai("uai-1").to_lowercase()),
    ] {
        let r = imds_get(&sim, &format!("{ARM_Q}&{sel}"), Some("true")).await;
        assert_eq!(r.status, 200, "{sel}: {}", r.raw);
        assert_eq!(r.body["client_id"], UAI_CLIENT);
        assert_eq!(
            claims(r.body["access_token"].as_str().unwrap())["oid"],
            UAI_OBJECT
        );
    }
    let r = imds_get(
        &sim,
        &format!("{ARM_Q}&client_id=77777777-7777-4777-8777-777777777777"),
        Some("true"),
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (400, imds_err("Identity not found"))
    );

    // Several user-assigned identities, no system one, no selector.
    sim.set_imds(Some(ImdsConfig {
        system_assigned: None,
        user_assigned: vec![
            ImdsIdentity::new(UAI_CLIENT, UAI_OBJECT),
            ImdsIdentity::new(SYS_CLIENT, SYS_OBJECT),
        ],
    }));
    let r = imds_get(&sim, ARM_Q, Some("true")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        imds_err(
            "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
        )
    );
    // A single user-assigned identity is the default.
    sim.set_imds(Some(ImdsConfig {
        system_assigned: None,
        user_assigned: vec![ImdsIdentity::new(UAI_CLIENT, UAI_OBJECT)],
    }));
    let r = imds_get(&sim, ARM_Q, Some("true")).await;
    assert_eq!(r.body["client_id"], UAI_CLIENT);
    // No identity at all.
    sim.set_imds(Some(ImdsConfig::default()));
    let r = imds_get(&sim, ARM_Q, Some("true")).await;
    assert_eq!((r.status, r.body), (400, imds_err("Identity not found")));
}

#[tokio::test]
async fn imds_refusals() {
    let sim = sim_with(SimConfig {
        seed: seed(),
        imds: Some(imds()),
        ..SimConfig::default()
    })
    .await;
    let header = imds_err("Required metadata header not specified");
    let r = imds_get(&sim, ARM_Q, None).await;
    assert_eq!((r.status, r.body), (400, header.clone()));
    let r = imds_get(&sim, ARM_Q, Some("True")).await;
    assert_eq!((r.status, r.body), (400, header));
    let r = imds_get(&sim, "api-version=2018-02-01", Some("true")).await;
    assert_eq!(
        (r.status, r.body),
        (400, imds_err("Required audience parameter not specified"))
    );
    let r = imds_get(&sim, "resource=https://management.azure.com/", Some("true")).await;
    assert_eq!(r.status, 400);
    let r = imds_get(
        &sim,
        "api-version=2017-09-01&resource=https://management.azure.com/",
        Some("true"),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = imds_get(
        &sim,
        "api-version=2018-02-01&resource=https://vault.azure.net",
        Some("true"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_resource");
    assert_eq!(sim.issued_token_count(), 0);
}
