//! Response bodies no one planned for, through the real client and executor: a body over the
//! client's limit is refused before parsing (announced by `Content-Length` or streamed without
//! one), a 10 MiB VM body with thousands of identities is read, and malformed GET bodies
//! (wrong types, unknown identity types, not JSON) are clear errors — never a panic, and the
//! read never leads to a write (the server sees GETs only).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vmidentity_azure::{
    ArmClient, AzureError, ClientConfig, Executor, MAX_RESPONSE_BYTES, StaticToken,
};
use vmidentity_planner::{ApiVersion, ArmId};

const SUB: &str = "00000000-0000-0000-0000-0000000000b1";

fn vm() -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
    )
}

fn uai(i: usize) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{i:05}"
    )
}

/// How the server frames its answer.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length` and the body.
    Length,
    /// No length: the body until the connection closes.
    Close,
}

/// A loopback server answering every request with 200 and `body`; records request lines.
async fn server(body: Vec<u8>, framing: Framing) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                log.lock()
                    .expect("log")
                    .push(head.lines().next().unwrap_or_default().to_string());
                let head = match framing {
                    Framing::Length => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    ),
                    Framing::Close => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n".to_string(),
                };
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, seen)
}

fn executor(base: &str, limit: usize) -> Executor {
    let arm = ArmClient::new(
        ClientConfig {
            endpoint: base.to_string(),
            max_attempts: 1,
            max_response_bytes: limit,
            ..ClientConfig::default()
        },
        Arc::new(StaticToken::new("t")),
    )
    .expect("client");
    Executor::new(arm)
}

async fn read(
    body: Vec<u8>,
    framing: Framing,
    limit: usize,
) -> (
    Result<vmidentity_planner::LiveResource, AzureError>,
    Vec<String>,
) {
    let (base, seen) = server(body, framing).await;
    let exec = executor(&base, limit);
    let target = ArmId::parse_target(&vm()).expect("target");
    let version = ApiVersion::parse("2025-04-01").expect("version");
    let r = exec.read_target(&target, &version).await;
    let seen = seen.lock().expect("log").clone();
    (r, seen)
}

fn only_gets(seen: &[String]) {
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|l| l.starts_with("GET ")), "{seen:?}");
}

/// A VM body with `n` user-assigned identities, padded with a `properties.padding` string to
/// at least `pad` bytes.
fn big_vm_body(n: usize, pad: usize) -> Vec<u8> {
    let ids: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            (
                uai(i),
                json!({"principalId": format!("p-{i}"), "clientId": format!("c-{i}")}),
            )
        })
        .collect();
    let mut body = json!({
        "id": vm(),
        "etag": "\"7\"",
        "identity": {"type": "SystemAssigned, UserAssigned", "principalId": "sp", "userAssignedIdentities": ids},
        "properties": {"provisioningState": "Succeeded"},
    });
    let len = body.to_string().len();
    if pad > len {
        body["properties"]["padding"] = Value::String("x".repeat(pad - len));
    }
    serde_json::to_vec(&body).expect("json")
}

#[tokio::test]
async fn a_10_mib_body_with_thousands_of_identities_is_read() {
    let body = big_vm_body(5000, 10 * 1024 * 1024);
    assert!(body.len() >= 10 * 1024 * 1024);
    for framing in [Framing::Length, Framing::Close] {
        let (r, seen) = read(body.clone(), framing, MAX_RESPONSE_BYTES).await;
        let live = r.expect("a 10 MiB body is under the limit");
        assert_eq!(live.identity.user_assigned.len(), 5000);
        assert!(live.identity.system_assigned);
        assert_eq!(live.etag.as_deref(), Some("\"7\""));
        only_gets(&seen);
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_parsing() {
    // Not even JSON: had it been parsed, the error would say so.
    let mut body = b"{\"id\": ".to_vec();
    body.resize(2 * 1024 * 1024 + 1, b'x');
    for framing in [Framing::Length, Framing::Close] {
        let (r, seen) = read(body.clone(), framing, 2 * 1024 * 1024).await;
        match r {
            Err(AzureError::InvalidResponse { message, .. }) => {
                assert!(
                    message.contains("larger than 2097152 bytes")
                        && message.contains("refused before parsing"),
                    "{message}"
                );
            }
            other => panic!("expected the body to be refused, got {other:?}"),
        }
        only_gets(&seen);
    }
}

#[tokio::test]
async fn the_default_limit_refuses_an_announced_body_just_over_it() {
    let body = vec![b' '; MAX_RESPONSE_BYTES + 1];
    let (r, _) = read(body, Framing::Length, MAX_RESPONSE_BYTES).await;
    match r {
        Err(AzureError::InvalidResponse { message, .. }) => {
            assert!(message.contains("refused before parsing"), "{message}")
        }
        other => panic!("expected the body to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_get_bodies_are_clear_errors_and_no_write() {
    let id = vm();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not JSON"),
        (b"[1,2]".to_vec(), "is not a JSON object"),
        (json!({"name": "vm1"}).to_string().into_bytes(), "id"),
        (json!({"id": 7}).to_string().into_bytes(), "id"),
        (
            json!({"id": id, "identity": {"type": "SystemAssigned, Both"}}).to_string().into_bytes(),
            "identity.type",
        ),
        (
            json!({"id": id, "identity": {"type": ["UserAssigned"]}}).to_string().into_bytes(),
            "identity.type",
        ),
        (
            json!({"id": id, "identity": "UserAssigned"}).to_string().into_bytes(),
            "identity",
        ),
        (
            json!({"id": id, "identity": {"type": "UserAssigned", "userAssignedIdentities": [uai(1)]}})
                .to_string()
                .into_bytes(),
            "identity.userAssignedIdentities",
        ),
        (
            json!({"id": id, "identity": {"type": "UserAssigned", "userAssignedIdentities": {"not-an-id": {}}}})
                .to_string()
                .into_bytes(),
            "userAssignedIdentities",
        ),
        (
            json!({"id": id, "identity": {"type": "UserAssigned", "identityIds": [7]}})
                .to_string()
                .into_bytes(),
            "identity.identityIds[0]",
        ),
        (json!({"id": id, "etag": {"v": 1}}).to_string().into_bytes(), "etag"),
    ];
    for (body, names) in cases {
        let text = String::from_utf8_lossy(&body).to_string();
        let (r, seen) = read(body, Framing::Length, MAX_RESPONSE_BYTES).await;
        let e = match r {
            Err(e) => e.to_string(),
            Ok(l) => panic!("{text}: read as {l:?}"),
        };
        assert!(e.contains(names), "{text}: {e}");
        only_gets(&seen);
    }
}

/// A Resource Graph page without `data` (required by the 2021-03-01 QueryResponse) is an
/// error, not "no VMs"; rows without a string `id` are skipped, the others read.
#[tokio::test]
async fn resource_graph_pages_without_data_are_refused_and_bad_rows_skipped() {
    for (body, rows) in [
        (json!({"totalRecords": 1, "count": 1}), None),
        (json!({"data": {"id": vm()}}), None),
        (json!({"data": "rows"}), None),
        (
            json!({"data": [{"id": 7, "identity": null}, {"identity": {"type": "None"}}, {"id": vm(), "identity": {"type": "SystemAssigned"}}, {"id": vm().to_uppercase()}]}),
            Some(2),
        ),
    ] {
        let (base, seen) = server(body.to_string().into_bytes(), Framing::Length).await;
        let arm = executor(&base, MAX_RESPONSE_BYTES).client().clone();
        let r = arm.query_identities(&[SUB.to_string()]).await;
        match (r, rows) {
            (Ok((got, pages)), Some(n)) => {
                assert_eq!(got.len(), n, "{body}");
                assert_eq!(pages, 1);
                assert_eq!(got[0].identity, json!({"type": "SystemAssigned"}));
                assert_eq!(got[1].identity, Value::Null);
            }
            (Err(AzureError::InvalidResponse { message, .. }), None) => {
                assert!(message.contains("no `data` array"), "{message}");
            }
            (other, _) => panic!("{body}: {other:?}"),
        }
        let seen = seen.lock().expect("log").clone();
        assert!(seen.iter().all(|l| l.starts_with("POST ")), "{seen:?}");
    }
}
