//! Token sources against the simulator's Entra token endpoint and IMDS: each works, and each
//! failure is a clear error (never a panic, never silence).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use vmidentity_azure::token::{EntraToken, ImdsToken, from_env};
use vmidentity_azure::{ARM_SCOPE, ArmClient, ClientConfig, GRAPH_SCOPE, TokenSource};
use vmidentity_simulator::{AppConfig, ImdsConfig, ImdsIdentity, SimConfig, make_jwt};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ISSUER: &str = "https://oidc.prod-aks.azure.com/tenant/cluster/";
const SUBJECT: &str = "system:serviceaccount:vmidentity-system:vmidentity";

async fn sim() -> vmidentity_simulator::SimHandle {
    vmidentity_simulator::start(SimConfig {
        apps: vec![
            AppConfig::with_secret("11111111-0000-0000-0000-000000000001", TENANT, "s3cret"),
            AppConfig::federated(
                "11111111-0000-0000-0000-000000000002",
                TENANT,
                ISSUER,
                SUBJECT,
            ),
        ],
        imds: Some(ImdsConfig::system(ImdsIdentity::new(
            "22222222-0000-0000-0000-000000000001",
            "33333333-0000-0000-0000-000000000001",
        ))),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn assertion(exp: u64) -> String {
    make_jwt(
        &json!({"iss": ISSUER, "sub": SUBJECT, "aud": ["api://AzureADTokenExchange"], "exp": exp, "iat": now(), "nbf": now()}),
    )
}

/// The token works against ARM (a 404 for a missing resource group, not a 401).
async fn works_on_arm(sim: &vmidentity_simulator::SimHandle, tokens: Arc<dyn TokenSource>) {
    let arm = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            max_attempts: 1,
            ..ClientConfig::default()
        },
        tokens,
    )
    .expect("client");
    let err = arm
        .get("/subscriptions/00000000-0000-0000-0000-000000000009/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "2024-11-01")
        .await
        .expect_err("no such VM");
    assert_eq!(
        err.class(),
        vmidentity_azure::ErrorClass::TargetNotFound,
        "{err}"
    );
}

#[tokio::test]
async fn client_secret_tokens_work_and_are_cached_per_scope() {
    let sim = sim().await;
    let src = Arc::new(EntraToken::client_secret(
        &sim.base_url(),
        TENANT,
        "11111111-0000-0000-0000-000000000001",
        "s3cret",
    ));
    let a = src.token(ARM_SCOPE).await.expect("token");
    let b = src.token(ARM_SCOPE).await.expect("cached");
    assert_eq!(a.token, b.token);
    assert!(a.expires_on.is_some());
    let g = src.token(GRAPH_SCOPE).await.expect("graph token");
    assert_ne!(a.token, g.token, "one token per audience");
    assert_eq!(sim.counters().tokens_issued, 2);
    works_on_arm(&sim, src).await;
}

#[tokio::test]
async fn a_wrong_secret_says_so() {
    let sim = sim().await;
    let src = EntraToken::client_secret(
        &sim.base_url(),
        TENANT,
        "11111111-0000-0000-0000-000000000001",
        "nope",
    );
    let e = src.token(ARM_SCOPE).await.expect_err("refused").to_string();
    assert!(e.contains("AADSTS7000215") && e.contains("401"), "{e}");
}

#[tokio::test]
async fn workload_identity_reads_the_federated_token_file_and_reports_an_expired_one() {
    let sim = sim().await;
    let file = std::env::temp_dir().join(format!("vmidentity-fed-{}", std::process::id()));
    std::fs::write(&file, assertion(now() + 3600)).expect("write");
    let src = Arc::new(EntraToken::workload_identity(
        &sim.base_url(),
        TENANT,
        "11111111-0000-0000-0000-000000000002",
        &file,
    ));
    src.token(ARM_SCOPE).await.expect("federated token");
    works_on_arm(&sim, src.clone()).await;
    // The kubelet rotates the file; an expired one is refused with AADSTS700024.
    std::fs::write(&file, assertion(now() - 60)).expect("write");
    let fresh = EntraToken::workload_identity(
        &sim.base_url(),
        TENANT,
        "11111111-0000-0000-0000-000000000002",
        &file,
    );
    let e = fresh
        .token(ARM_SCOPE)
        .await
        .expect_err("expired")
        .to_string();
    assert!(e.contains("AADSTS700024"), "{e}");
    std::fs::remove_file(&file).expect("rm");
    let e = fresh
        .token(GRAPH_SCOPE)
        .await
        .expect_err("no file")
        .to_string();
    assert!(e.contains("cannot read the federated token file"), "{e}");
}

#[tokio::test]
async fn imds_tokens_work_and_a_missing_imds_is_a_clear_error() {
    let sim = sim().await;
    let src = Arc::new(ImdsToken::new(&sim.base_url(), None));
    src.token(ARM_SCOPE).await.expect("imds token");
    works_on_arm(&sim, src).await;
    // Nothing listens there.
    let gone = ImdsToken::new("http://127.0.0.1:9", None);
    let started = std::time::Instant::now();
    let e = gone
        .token(ARM_SCOPE)
        .await
        .expect_err("no IMDS")
        .to_string();
    assert!(
        e.contains("instance metadata service") && e.contains("does not answer"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_environment_chooses_the_source_and_names_what_is_missing() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert!(from_env(&env(&[("AZURE_ACCESS_TOKEN", "t")])).is_ok());
    let e = from_env(&env(&[
        ("VMIDENTITY_AUTH", "clientSecret"),
        ("AZURE_TENANT_ID", "t"),
    ]))
    .err()
    .expect("incomplete");
    assert_eq!(e, "AZURE_CLIENT_ID is not set");
    let e = from_env(&env(&[("VMIDENTITY_AUTH", "magic")]))
        .err()
        .expect("unknown");
    assert!(e.contains("expected workloadIdentity"), "{e}");
    assert!(
        from_env(&env(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c")
        ]))
        .is_ok()
    );
}
