//! Request paths are built segment by segment and refused when a URL parser could resolve
//! or decode them into another path than the one asked for (the "dot segments escape scope
//! rules" review): nothing reaches the server. Normal IDs, `$ref` Graph paths and paging
//! keep working, and a role assignment ARM answers at another scope is never reported as
//! created.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vmidentity_azure::{
    ArmClient, AzureError, ClientConfig, ErrorClass, Executor, Method, Sent, StaticToken,
};
use vmidentity_planner::grants::assignment_name;
use vmidentity_simulator::{SimConfig, SimHandle};

const AUTHZ: &str = "2022-04-01";
const MSI: &str = "2023-01-31";

/// The review's attack (rg-b standing in for rg-prod): allowed by a rule for `rg-a/**`,
/// resolved by URL parsers to rg-b.
fn attack_scope() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-a/providers/../../../resourceGroups/rg-b")
}

/// Scopes that name a path under rg-a but would reach rg-b once resolved or decoded.
fn escaping_scopes() -> Vec<String> {
    let a = rg("rg-a");
    vec![
        attack_scope(),
        format!("{a}/providers/%2e%2e/%2e%2e/%2E%2E/resourceGroups/rg-b"),
        format!("{a}%2F..%2F..%2FresourceGroups%2Frg-b"),
        format!("{a}/providers\\..\\..\\..\\resourceGroups\\rg-b"),
        format!("{a}/providers/.\t./.\t./.\t./resourceGroups/rg-b"),
        format!("{a}/./x/.."),
    ]
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, AzureError>) -> String {
    match r {
        Err(e @ AzureError::InvalidArgument { .. }) => {
            assert_eq!(e.class(), ErrorClass::Invalid, "{what}");
            assert!(!e.is_retryable(), "{what}");
            e.to_string()
        }
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn assert_nothing_sent(sim: &SimHandle, arm: &ArmClient) {
    assert!(sim.requests().is_empty(), "{:#?}", sim.requests());
    assert_eq!(sim.counters().requests, 0);
    assert_eq!(sim.counters().authorization_writes, 0);
    assert_eq!(sim.counters().graph_writes, 0);
    let s = arm.stats();
    assert_eq!(
        (s.reads, s.writes, s.deletes, s.polls, s.queries),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn escaping_role_assignment_scopes_are_refused_before_sending() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    sim.reset_counters();

    let msg = assert_refused(
        "attack PUT",
        put_role(
            &exec,
            &attack_scope(),
            &assignment_name(&attack_scope(), READER, UAI_PRINCIPAL),
            READER,
            UAI_PRINCIPAL,
            None,
        )
        .await,
    );
    assert!(msg.contains("contains a '..' segment"), "{msg}");
    assert!(msg.contains(&attack_scope()), "{msg}");

    for scope in escaping_scopes() {
        let name = assignment_name(&scope, READER, UAI_PRINCIPAL);
        assert_refused(
            &format!("PUT at {scope:?}"),
            put_role(&exec, &scope, &name, READER, UAI_PRINCIPAL, None).await,
        );
        assert_refused(
            &format!("DELETE at {scope:?}"),
            delete_role(
                &exec,
                &format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            )
            .await,
        );
        assert_refused(
            &format!("role name lookup at {scope:?}"),
            arm.resolve_role(&scope, "Reader").await,
        );
        assert_refused(&format!("GET {scope:?}"), arm.get(&scope, AUTHZ).await);
        assert_refused(
            &format!("PATCH {scope:?}"),
            arm.write(Method::PATCH, &scope, MSI, &json!({})).await,
        );
    }
    // A role assignment name that is not a GUID is not put into a path either.
    assert_refused(
        "PUT with a path as its name",
        put_role(&exec, &rg("rg-a"), "../../x", READER, UAI_PRINCIPAL, None).await,
    );
    // A subscription that is a path is encoded, then refused for its '%'.
    assert_refused(
        "list in a subscription that is a path",
        arm.list_role_assignments_for_principal(&format!("{SUB}/../{SUB2}"), UAI_PRINCIPAL)
            .await,
    );

    assert_nothing_sent(&sim, &arm);
    assert!(sim.role_assignments().is_empty());
}

#[tokio::test]
async fn graph_ids_that_are_not_guids_are_refused_before_sending() {
    let sim = start_default().await;
    let graph = graph(&sim);
    sim.reset_counters();

    for bad in [
        "../../users/22222222-2222-4222-8222-222222222222",
        "%2e%2e",
        "..",
        "33333333-3333-4333-8333-333333333333/../x",
        "33333333-3333-4333-8333-33333333333\\",
        "",
        "not-a-guid",
    ] {
        let msg = assert_refused(
            &format!("add to group {bad:?}"),
            add_member(&graph, bad, UAI_PRINCIPAL).await,
        );
        assert!(msg.contains("group object ID"), "{msg}");
        assert!(msg.contains("is not a GUID"), "{msg}");
        // The principal ID can come from a tenant-writable status record.
        let msg = assert_refused(
            &format!("add principal {bad:?}"),
            add_member(&graph, GROUP, bad).await,
        );
        assert!(msg.contains("principal ID"), "{msg}");
        assert_refused(
            &format!("remove from group {bad:?}"),
            remove_member(&graph, bad, UAI_PRINCIPAL).await,
        );
        assert_refused(
            &format!("remove principal {bad:?}"),
            remove_member(&graph, GROUP, bad).await,
        );
        assert_refused(&format!("memberOf {bad:?}"), graph.member_of(bad).await);
    }

    assert_nothing_sent(&sim, graph.graph_client().unwrap());
    assert!(sim.group_members(GROUP).unwrap().is_empty());
}

#[tokio::test]
async fn mixed_case_ids_go_out_exactly_as_asked() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    sim.reset_counters();

    // Mixed case is kept on the wire, byte for byte.
    let uai = format!(
        "/subscriptions/{SUB}/RESOURCEGROUPS/rg-a/providers/microsoft.managedidentity/userAssignedIdentities/uai-1"
    );
    let body = arm.get(&uai, MSI).await.unwrap();
    assert_eq!(body["properties"]["principalId"], UAI_PRINCIPAL);
    let reqs = sim.requests();
    assert_eq!(reqs[0].path, uai);
    assert_eq!(reqs[0].query.as_deref(), Some("api-version=2023-01-31"));

    let scope = format!("/SUBSCRIPTIONS/{SUB}/resourcegroups/RG-A");
    let name = assignment_name(&scope, READER, UAI_PRINCIPAL);
    let a = match put_role(&exec, &scope, &name, READER, UAI_PRINCIPAL, None)
        .await
        .unwrap()
    {
        Sent::RoleAssignment(a) => a,
        other => panic!("{other:?}"),
    };
    assert!(a.matches(&rg("rg-a"), READER));
    let put = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        put.path,
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
    );
    assert_eq!(put.query.as_deref(), Some("api-version=2022-04-01"));

    // Name lookups with an encoded `$filter` appended to the built URL still work.
    assert_eq!(arm.resolve_role(&scope, "Reader").await.unwrap(), READER);
    let lookup = sim.requests().pop().unwrap();
    assert!(
        lookup
            .query
            .as_deref()
            .unwrap_or_default()
            .contains("$filter=roleName%20eq%20%27Reader%27"),
        "{lookup:?}"
    );

    delete_role(&exec, &a.id).await.unwrap();
    assert!(sim.role_assignments().is_empty());
}

#[tokio::test]
async fn ref_paths_and_paging_still_work() {
    let sim = start(SimConfig {
        graph_page_size: 2,
        role_assignment_page_size: 2,
        ..SimConfig::default()
    })
    .await;
    let arm = arm(&sim);
    let graph = graph(&sim);

    // Graph: `$ref` stays literal, upper-case GUIDs are GUIDs.
    sim.reset_counters();
    add_member(&graph, &GROUP.to_uppercase(), UAI_PRINCIPAL)
        .await
        .unwrap();
    let reqs = sim.requests();
    assert_eq!(
        reqs[0].path,
        format!("/v1.0/groups/{}/members/$ref", GROUP.to_uppercase())
    );
    assert_eq!(
        reqs[0].body.as_ref().unwrap()["@odata.id"],
        format!("{}/v1.0/directoryObjects/{UAI_PRINCIPAL}", sim.base_url()).as_str()
    );
    for i in 0..4 {
        let gid = format!("abcdef0{i}-0000-4000-8000-00000000000{i}");
        assert!(sim.add_group(&gid, &format!("g{i}")));
        assert!(sim.add_group_member(&gid, UAI_PRINCIPAL));
    }
    sim.reset_counters();
    assert_eq!(graph.member_of(UAI_PRINCIPAL).await.unwrap().len(), 5);
    // 5 groups at 2 per page: the server's @odata.nextLink URLs are followed as given.
    assert_eq!(sim.counters().graph_reads, 3);
    remove_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    assert_eq!(
        sim.requests().last().unwrap().path,
        format!("/v1.0/groups/{GROUP}/members/{UAI_PRINCIPAL}/$ref")
    );

    // ARM: nextLink paging of a filtered list.
    for scope in [sub_scope(), rg("rg-a"), rg("rg-b")] {
        sim.create_role_assignment(&scope, None, READER, UAI_PRINCIPAL)
            .unwrap();
    }
    sim.reset_counters();
    let listed = arm
        .list_role_assignments_for_principal(SUB, UAI_PRINCIPAL)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(sim.counters().authorization_reads, 2);
    let q = sim.requests()[1].query.clone().unwrap_or_default();
    assert!(q.contains("skipToken"), "{q}");
}

/// A one-answer HTTP server on loopback: answers every request with `status` and `body`,
/// and records the request lines.
async fn fixed_answer_server(
    status: u16,
    body: serde_json::Value,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let body = body.to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            log.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or_default().to_string());
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(answer.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (base, seen)
}

#[tokio::test]
async fn an_assignment_answered_at_another_scope_is_an_error_not_created() {
    let requested = rg("rg-a");
    let applied = rg("rg-b");
    let name = assignment_name(&requested, READER, UAI_PRINCIPAL);
    let (base, seen) = fixed_answer_server(
        201,
        json!({
            "id": format!("{applied}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            "name": name,
            "properties": {
                "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
                "principalId": UAI_PRINCIPAL,
                "scope": applied,
            }
        }),
    )
    .await;
    let arm = ArmClient::new(
        fast(ClientConfig {
            endpoint: base,
            rate_limits: None,
            ..ClientConfig::default()
        }),
        Arc::new(StaticToken::new(ARM_TOKEN)),
    )
    .unwrap();
    let exec = Executor::new(arm);

    let err = put_role(&exec, &requested, &name, READER, UAI_PRINCIPAL, None)
        .await
        .unwrap_err();
    match &err {
        AzureError::ScopeMismatch {
            requested: r,
            applied: a,
            id,
            ..
        } => {
            assert_eq!(r, &requested);
            assert_eq!(a, &applied);
            assert!(id.contains("rg-b"), "{id}");
        }
        other => panic!("expected ScopeMismatch, got {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Invalid);
    let msg = err.to_string();
    assert!(
        msg.contains("differs from the one requested") && msg.contains(&requested),
        "{msg}"
    );
    // Sent once, to exactly the requested path.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![format!(
            "PUT {requested}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01 HTTP/1.1"
        )]
    );
}
