//! Microsoft Graph group memberships against the simulator.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use vmidentity_azure::{
    ARM_SCOPE, AccessToken, ArmClient, ClientConfig, ErrorClass, Executor, GRAPH_SCOPE,
    StaticToken, TokenError, TokenSource,
};
use vmidentity_simulator::{FaultRule, SimConfig};

const UNKNOWN: &str = "66666666-6666-4666-8666-666666666666";

#[tokio::test]
async fn adds_a_member_once_and_tolerates_already_member() {
    let sim = start_default().await;
    let graph = graph(&sim);
    sim.reset_counters();

    add_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    assert_eq!(
        sim.group_members(GROUP).unwrap(),
        vec![UAI_PRINCIPAL.to_string()]
    );
    let reqs = sim.requests();
    assert_eq!(reqs[0].method, "POST");
    // `$ref` went out literally, not as %24ref.
    assert_eq!(reqs[0].path, format!("/v1.0/groups/{GROUP}/members/$ref"));
    assert_eq!(reqs[0].status, 204);
    let odata_id = reqs[0].body.as_ref().unwrap()["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        odata_id,
        format!("{}/v1.0/directoryObjects/{UAI_PRINCIPAL}", sim.base_url())
    );

    // Already a member: Graph's 400 counts as success.
    add_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    assert_eq!(sim.requests()[1].status, 400);
    assert_eq!(sim.group_members(GROUP).unwrap().len(), 1);
    assert_eq!(sim.counters().graph_writes, 2);
    assert_eq!(graph_stats(&graph).writes, 2);
}

#[tokio::test]
async fn removes_a_member_and_tolerates_not_member() {
    let sim = start_default().await;
    let graph = graph(&sim);
    assert!(sim.add_group_member(GROUP, UAI_PRINCIPAL));
    sim.reset_counters();

    remove_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    assert!(sim.group_members(GROUP).unwrap().is_empty());
    // Not a member any more: Graph's 404 counts as success.
    remove_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    // Unknown group: nothing to remove either.
    remove_member(&graph, UNKNOWN, UAI_PRINCIPAL).await.unwrap();
    let reqs = sim.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![204, 404, 404]
    );
    assert_eq!(reqs[0].method, "DELETE");
    assert_eq!(
        reqs[0].path,
        format!("/v1.0/groups/{GROUP}/members/{UAI_PRINCIPAL}/$ref")
    );
    assert_eq!(graph_stats(&graph).deletes, 3);
}

#[tokio::test]
async fn unknown_group_and_unknown_member_are_classified() {
    let sim = start_default().await;
    let graph = graph(&sim);

    let err = add_member(&graph, UNKNOWN, UAI_PRINCIPAL)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::GroupNotFound);
    assert_eq!(err.class().reason(), "GroupNotFound");
    assert!(!err.is_retryable());
    assert_eq!(err.code(), Some("Request_ResourceNotFound"));
    assert_eq!(err.status(), Some(404));

    // The member is unknown to Graph (not replicated yet, or deleted): retryable.
    let err = add_member(&graph, GROUP, UNKNOWN).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::PrincipalNotReplicated);
    assert!(err.is_retryable());
    assert!(sim.group_members(GROUP).unwrap().is_empty());
}

#[tokio::test]
async fn member_of_follows_next_link_and_keeps_groups_only() {
    let sim = start(SimConfig {
        graph_page_size: 2,
        ..SimConfig::default()
    })
    .await;
    let graph = graph(&sim);
    let mut want = vec![GROUP.to_string()];
    assert!(sim.add_group_member(GROUP, UAI_PRINCIPAL));
    for i in 0..4 {
        let gid = format!("abcdef0{i}-0000-4000-8000-00000000000{i}").to_uppercase();
        assert!(sim.add_group(&gid, &format!("g{i}")));
        assert!(sim.add_group_member(&gid, UAI_PRINCIPAL));
        want.push(gid.to_lowercase());
    }
    sim.reset_counters();

    let mut got = graph.member_of(UAI_PRINCIPAL).await.unwrap();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // 5 groups at 2 per page.
    assert_eq!(sim.counters().graph_reads, 3);
    let reqs = sim.requests();
    assert_eq!(
        reqs[0].path,
        format!("/v1.0/servicePrincipals/{UAI_PRINCIPAL}/memberOf")
    );
    assert!(
        reqs[1]
            .query
            .as_deref()
            .unwrap_or_default()
            .contains("$skiptoken=2")
    );

    // A principal Graph does not know is a member of nothing.
    assert!(graph.member_of(UNKNOWN).await.unwrap().is_empty());
    // Not a member anywhere.
    assert!(graph.member_of(USER).await.unwrap().is_empty());
}

/// Hands out a token per scope and records the scopes asked for.
struct PerScope {
    asked: Mutex<Vec<String>>,
}

#[async_trait]
impl TokenSource for PerScope {
    async fn token(&self, scope: &str) -> Result<AccessToken, TokenError> {
        self.asked.lock().unwrap().push(scope.to_string());
        let token = match scope {
            ARM_SCOPE => ARM_TOKEN,
            GRAPH_SCOPE => GRAPH_TOKEN,
            other => {
                return Err(TokenError::Unavailable {
                    scope: other.to_string(),
                    message: "unknown scope".into(),
                });
            }
        };
        Ok(AccessToken {
            token: token.to_string(),
            expires_on: None,
        })
    }
}

#[tokio::test]
async fn graph_and_arm_use_their_own_tokens() {
    let sim = start_default().await;

    // One token source for both: each client asks for its own scope.
    let tokens = Arc::new(PerScope {
        asked: Mutex::new(Vec::new()),
    });
    let arm = ArmClient::new(arm_config(&sim), tokens.clone()).unwrap();
    let graph = Executor::new(arm.clone())
        .with_graph(ArmClient::new(graph_config(&sim), tokens.clone()).unwrap());
    arm.resolve_role(&rg("rg-a"), "Reader").await.unwrap();
    add_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    assert_eq!(
        *tokens.asked.lock().unwrap(),
        vec![ARM_SCOPE.to_string(), GRAPH_SCOPE.to_string()]
    );

    // Static tokens per client: the ARM token is refused by Graph and vice versa.
    let wrong_graph = Executor::new(arm.clone()).with_graph(
        ArmClient::new(graph_config(&sim), Arc::new(StaticToken::new(ARM_TOKEN))).unwrap(),
    );
    let err = wrong_graph.member_of(UAI_PRINCIPAL).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unauthenticated);
    assert_eq!(err.code(), Some("InvalidAuthenticationToken"));
    let wrong_arm =
        ArmClient::new(arm_config(&sim), Arc::new(StaticToken::new(GRAPH_TOKEN))).unwrap();
    let err = wrong_arm
        .resolve_role(&rg("rg-b"), "Contributor")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unauthenticated);

    // The right static tokens work.
    assert_eq!(
        common::graph(&sim).member_of(UAI_PRINCIPAL).await.unwrap(),
        vec![GROUP.to_string()]
    );
}

#[tokio::test]
async fn graph_429_honours_retry_after() {
    let sim = start_default().await;
    let graph = graph(&sim);
    sim.add_fault(FaultRule::throttle(1).path_contains("/v1.0/").times(1));
    let started = std::time::Instant::now();
    add_member(&graph, GROUP, UAI_PRINCIPAL).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stats = graph_stats(&graph);
    assert_eq!((stats.throttled, stats.retries, stats.writes), (1, 1, 2));
    assert_eq!(sim.counters().throttled, 1);
    assert_eq!(sim.group_members(GROUP).unwrap().len(), 1);

    // Longer than the client may wait inline: returned with the wait, for a requeue.
    let no_wait = Executor::new(arm(&sim)).with_graph(
        ArmClient::new(
            ClientConfig {
                max_inline_wait: Duration::ZERO,
                ..graph_config(&sim)
            },
            Arc::new(StaticToken::new(GRAPH_TOKEN)),
        )
        .unwrap(),
    );
    sim.add_fault(FaultRule::throttle(7).path_contains("/v1.0/").times(1));
    let err = no_wait.member_of(UAI_PRINCIPAL).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Throttled);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.code(), Some("TooManyRequests"));
}

#[tokio::test]
async fn graph_5xx_is_retried() {
    let sim = start_default().await;
    let graph = graph(&sim);
    sim.add_fault(FaultRule::status(503).path_contains("/v1.0/").times(2));
    assert!(sim.add_group_member(GROUP, UAI_PRINCIPAL));
    assert_eq!(
        graph.member_of(UAI_PRINCIPAL).await.unwrap(),
        vec![GROUP.to_string()]
    );
    assert_eq!(graph_stats(&graph).retries, 2);
}

#[tokio::test]
async fn without_a_graph_client_membership_writes_are_refused_before_sending() {
    let sim = start_default().await;
    let exec = Executor::new(arm(&sim));
    sim.reset_counters();
    for err in [
        add_member(&exec, GROUP, UAI_PRINCIPAL).await.unwrap_err(),
        remove_member(&exec, GROUP, UAI_PRINCIPAL)
            .await
            .unwrap_err(),
        exec.member_of(UAI_PRINCIPAL).await.unwrap_err(),
    ] {
        assert_eq!(err.class(), ErrorClass::Invalid, "{err}");
        assert!(
            err.to_string().contains("no Microsoft Graph client"),
            "{err}"
        );
    }
    assert!(sim.requests().is_empty());
}
