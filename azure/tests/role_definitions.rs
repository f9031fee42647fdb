//! Role definitions as the policy check reads them: what they grant (escalation), what a
//! malformed answer gives, and how long they are cached.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use vmidentity_azure::{ArmClient, AzureError, ClientConfig, ErrorClass, StaticToken};
use vmidentity_planner::policy::EscalationKind;
use vmidentity_simulator::FaultRule;

const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";

#[tokio::test]
async fn built_in_definitions_are_judged_by_what_they_grant() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let kind = |d: &vmidentity_azure::authorization::RoleDefinitionInfo| {
        d.escalation.as_ref().map(|e| e.kind)
    };

    let c = arm
        .role_definition(&rg("rg-a"), "Contributor")
        .await
        .unwrap();
    assert_eq!(c.guid, CONTRIBUTOR);
    assert_eq!(c.name.as_deref(), Some("Contributor"));
    // Contributor's notActions take the authorization writes away, not run command.
    assert_eq!(kind(&c), Some(EscalationKind::IdentityTakeover));
    assert!(c.permissions[0].not_actions.len() >= 3);

    let o = arm.role_definition(&rg("rg-a"), OWNER).await.unwrap();
    assert_eq!(kind(&o), Some(EscalationKind::AuthorizationWrite));

    for harmless in [
        "Reader",
        "Storage Blob Data Reader",
        "Managed Identity Operator",
    ] {
        let d = arm.role_definition(&rg("rg-a"), harmless).await.unwrap();
        assert_eq!(d.escalation, None, "{harmless}");
    }
    let vmc = arm
        .role_definition(&rg("rg-a"), "Virtual Machine Contributor")
        .await
        .unwrap();
    assert_eq!(kind(&vmc), Some(EscalationKind::IdentityTakeover));

    // Custom roles too (Identity Auditor: `*/read`).
    let custom = arm.role_definition(&rg("rg-a"), CUSTOM_ROLE).await.unwrap();
    assert_eq!(custom.name.as_deref(), Some("Identity Auditor"));
    assert_eq!(custom.escalation, None);
}

#[tokio::test]
async fn a_forbidden_definition_read_is_an_error_not_a_verdict() {
    let sim = start_default().await;
    let arm = arm(&sim);
    sim.add_fault(FaultRule::status(403).path_contains("/roleDefinitions/"));
    let e = arm.role_definition(&rg("rg-a"), READER).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Forbidden, "{e}");
    assert!(!e.is_retryable());
}

/// A minimal ARM stand-in answering role definition reads with whatever `definition` holds
/// (lists: `{"value": [definition]}`), counting reads of each kind.
struct FakeArm {
    definition: Arc<Mutex<Value>>,
    gets: Arc<AtomicUsize>,
    lists: Arc<AtomicUsize>,
    url: String,
}

async fn fake_arm(definition: Value) -> FakeArm {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let definition = Arc::new(Mutex::new(definition));
    let gets = Arc::new(AtomicUsize::new(0));
    let lists = Arc::new(AtomicUsize::new(0));
    let (d, g, l) = (definition.clone(), gets.clone(), lists.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (d, g, l) = (d.clone(), g.clone(), l.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let target = head.split_whitespace().nth(1).unwrap_or_default();
                let def = d.lock().unwrap().clone();
                let body = if target.contains("filter=") {
                    l.fetch_add(1, Ordering::SeqCst);
                    json!({ "value": [def] })
                } else {
                    g.fetch_add(1, Ordering::SeqCst);
                    def
                }
                .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    FakeArm {
        definition,
        gets,
        lists,
        url,
    }
}

const SHIFTY: &str = "6c1d4d0f-3333-4c54-8b9f-000000000aaa";
const SHIFTY_TOO: &str = "6c1d4d0f-3333-4c54-8b9f-000000000bbb";

fn definition(guid: &str, actions: &[&str]) -> Value {
    json!({
        "id": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
        "name": guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": "Shifty",
            "type": "CustomRole",
            "permissions": [{"actions": actions, "notActions": [], "dataActions": [], "notDataActions": []}],
        },
    })
}

fn client(url: &str, ttl: Duration) -> ArmClient {
    ArmClient::new(
        fast(ClientConfig {
            endpoint: url.to_string(),
            max_attempts: 1,
            role_cache_ttl: ttl,
            ..ClientConfig::default()
        }),
        Arc::new(StaticToken::new(ARM_TOKEN)),
    )
    .unwrap()
}

#[tokio::test]
async fn a_changed_custom_role_is_seen_once_the_cache_expires() {
    let ttl = Duration::from_millis(400);
    let fake = fake_arm(definition(SHIFTY, &["*/read"])).await;
    let arm = client(&fake.url, ttl);
    let scope = rg("rg-a");

    let t0 = Instant::now();
    let first = arm.role_definition(&scope, "Shifty").await.unwrap();
    assert_eq!(first.guid, SHIFTY);
    assert_eq!(first.escalation, None);
    assert_eq!(
        (
            fake.lists.load(Ordering::SeqCst),
            fake.gets.load(Ordering::SeqCst)
        ),
        (1, 1)
    );

    // The role is edited in Azure (it now runs commands on VMs) and its name moved to
    // another definition; within the lifetime the client still answers from its caches.
    *fake.definition.lock().unwrap() = definition(
        SHIFTY_TOO,
        &[
            "*/read",
            "Microsoft.Compute/virtualMachines/runCommand/action",
        ],
    );
    let cached = arm.role_definition(&scope, "Shifty").await.unwrap();
    if t0.elapsed() < ttl {
        assert_eq!(cached, first);
        assert_eq!(
            (
                fake.lists.load(Ordering::SeqCst),
                fake.gets.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
    }

    // After the lifetime both are read again: the new GUID, and what it now grants.
    tokio::time::sleep_until(t0 + ttl + Duration::from_millis(50)).await;
    let fresh = arm.role_definition(&scope, "Shifty").await.unwrap();
    assert_eq!(fresh.guid, SHIFTY_TOO);
    let e = fresh.escalation.expect("now privileged");
    assert_eq!(e.kind, EscalationKind::IdentityTakeover);
    assert_eq!(
        e.operation,
        "Microsoft.Compute/virtualMachines/runCommand/action"
    );
    assert!(fake.lists.load(Ordering::SeqCst) >= 2);
    assert!(fake.gets.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_zero_lifetime_reads_every_time() {
    let fake = fake_arm(definition(SHIFTY, &["*/read"])).await;
    let arm = client(&fake.url, Duration::ZERO);
    for n in 1..=3 {
        arm.role_definition(&rg("rg-a"), SHIFTY).await.unwrap();
        assert_eq!(fake.gets.load(Ordering::SeqCst), n);
    }
    assert_eq!(
        ClientConfig::default().role_cache_ttl,
        Duration::from_secs(600)
    );
}

#[tokio::test]
async fn a_malformed_definition_is_an_invalid_response_and_not_cached() {
    let fake = fake_arm(json!({})).await;
    let arm = client(&fake.url, Duration::from_secs(600));
    let bad = [
        // No permissions at all: not "no permissions".
        json!({"name": SHIFTY, "properties": {"roleName": "Shifty"}}),
        json!({"name": SHIFTY, "properties": {"permissions": {"actions": ["*"]}}}),
        json!({"name": SHIFTY, "properties": {"permissions": [{"actions": "*"}]}}),
        json!({"name": SHIFTY, "properties": {"permissions": [{"actions": ["*/read", 7]}]}}),
        json!({"name": SHIFTY, "properties": {"permissions": ["*"]}}),
        // Another role's definition.
        definition(SHIFTY_TOO, &["*/read"]),
    ];
    for (i, body) in bad.into_iter().enumerate() {
        *fake.definition.lock().unwrap() = body;
        match arm.role_definition(&rg("rg-a"), SHIFTY).await {
            Err(e @ AzureError::InvalidResponse { .. }) => {
                assert!(e.to_string().contains(SHIFTY), "{e}");
            }
            other => panic!("case {i}: expected InvalidResponse, got {other:?}"),
        }
        assert_eq!(
            fake.gets.load(Ordering::SeqCst),
            i + 1,
            "case {i}: not cached"
        );
    }
    // Missing lists are empty lists.
    *fake.definition.lock().unwrap() =
        json!({"name": SHIFTY, "properties": {"permissions": [{"actions": ["*/read"]}]}});
    let ok = arm.role_definition(&rg("rg-a"), SHIFTY).await.unwrap();
    assert_eq!(ok.escalation, None);
    assert_eq!(ok.permissions[0].not_actions, Vec::<String>::new());
}
