//! Role definitions and role assignments against the simulator.

mod common;

use std::time::Duration;

use common::*;
use vmidentity_azure::{AzureError, ErrorClass, RoleAssignment, Sent};
use vmidentity_planner::grants::{assignment_name, role_definition_id};
use vmidentity_simulator::{CallerConfig, FaultRule, SimConfig};

fn created(r: Result<Sent, AzureError>) -> RoleAssignment {
    match r {
        Ok(Sent::RoleAssignment(a)) => a,
        other => panic!("expected Created, got {other:?}"),
    }
}

#[tokio::test]
async fn resolves_role_names_once_per_subscription() {
    let sim = start_default().await;
    let arm = arm(&sim);
    sim.reset_counters();

    assert_eq!(
        arm.resolve_role(&rg("rg-a"), "Reader").await.unwrap(),
        READER
    );
    assert_eq!(sim.counters().authorization_reads, 1);
    // The filter is percent-encoded, quotes included.
    let req = &sim.requests()[0];
    assert_eq!(req.method, "GET");
    assert!(
        req.path
            .ends_with("/resourceGroups/rg-a/providers/Microsoft.Authorization/roleDefinitions"),
        "{}",
        req.path
    );
    let q = req.query.clone().unwrap_or_default();
    assert!(q.contains("api-version=2022-04-01"), "{q}");
    assert!(q.contains("$filter=roleName%20eq%20%27Reader%27"), "{q}");

    // Same subscription, other scope, other case, a clone: served from the cache.
    assert_eq!(
        arm.resolve_role(&rg("rg-b"), "reader").await.unwrap(),
        READER
    );
    assert_eq!(
        arm.clone()
            .resolve_role(&sub_scope().to_uppercase(), "READER")
            .await
            .unwrap(),
        READER
    );
    assert_eq!(sim.counters().authorization_reads, 1);

    // Another subscription is another cache entry.
    let other = format!("/subscriptions/{SUB2}/resourceGroups/rg-c");
    assert_eq!(arm.resolve_role(&other, "Reader").await.unwrap(), READER);
    assert_eq!(sim.counters().authorization_reads, 2);

    // A management group scope is keyed by itself.
    let mg = "/providers/Microsoft.Management/managementGroups/mg1";
    assert_eq!(
        arm.resolve_role(mg, "Contributor").await.unwrap(),
        CONTRIBUTOR
    );
    assert_eq!(
        arm.resolve_role(mg, "contributor").await.unwrap(),
        CONTRIBUTOR
    );
    assert_eq!(sim.counters().authorization_reads, 3);

    // Custom roles too.
    assert_eq!(
        arm.resolve_role(&rg("rg-a"), "identity auditor")
            .await
            .unwrap(),
        CUSTOM_ROLE
    );
    assert_eq!(sim.counters().authorization_reads, 4);

    // GUIDs and role definition ids need no request.
    assert_eq!(
        arm.resolve_role(&rg("rg-a"), &READER.to_uppercase())
            .await
            .unwrap(),
        READER
    );
    assert_eq!(
        arm.resolve_role(
            &rg("rg-a"),
            &format!(
                "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}",
                CONTRIBUTOR.to_uppercase()
            )
        )
        .await
        .unwrap(),
        CONTRIBUTOR
    );
    assert_eq!(
        arm.resolve_role(
            "/",
            &format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}")
        )
        .await
        .unwrap(),
        READER
    );
    assert_eq!(sim.counters().authorization_reads, 4);
}

#[tokio::test]
async fn unknown_role_name_is_role_not_found_and_not_cached() {
    let sim = start_default().await;
    let arm = arm(&sim);
    sim.reset_counters();
    let err = arm
        .resolve_role(&rg("rg-a"), "No Such Role")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RoleNotFound);
    assert_eq!(err.class().reason(), "RoleNotFound");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("No Such Role") && msg.contains(&rg("rg-a")),
        "{msg}"
    );
    // A custom role not assignable in SUB2 is unknown there.
    let err = arm
        .resolve_role(&format!("/subscriptions/{SUB2}"), "Identity Auditor")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RoleNotFound);
    let _ = arm.resolve_role(&rg("rg-a"), "No Such Role").await;
    assert_eq!(sim.counters().authorization_reads, 3);
    // Malformed ids are refused without a request.
    let err = arm
        .resolve_role(&rg("rg-a"), "/subscriptions/x/providers/Foo/bar")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RoleNotFound);
    assert_eq!(sim.counters().authorization_reads, 3);
}

#[tokio::test]
async fn put_creates_reput_is_idempotent_and_other_names_conflict() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    let scope = rg("rg-a");
    let name = assignment_name(&scope, READER, UAI_PRINCIPAL);
    assert_eq!(
        name,
        assignment_name(&scope.to_uppercase(), READER, UAI_PRINCIPAL)
    );

    let a = created(put_role(&exec, &scope, &name, READER, UAI_PRINCIPAL, None).await);
    assert_eq!(a.name, name);
    assert_eq!(a.role_guid(), READER);
    assert_eq!(a.principal_id, UAI_PRINCIPAL);
    assert_eq!(a.principal_type.as_deref(), Some("ServicePrincipal"));
    assert!(a.scope.eq_ignore_ascii_case(&scope));
    assert!(a.matches(&scope, READER));
    assert_eq!(
        a.id,
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
    );
    // The PUT body names the role by a subscription-prefixed definition id.
    let put = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        put.body.as_ref().unwrap()["properties"]["roleDefinitionId"],
        role_definition_id(&scope, READER).as_str()
    );
    assert!(
        put.body.as_ref().unwrap()["properties"]
            .get("principalType")
            .is_none()
    );
    assert_eq!(
        put.query.as_deref(),
        Some("api-version=2022-04-01"),
        "{put:?}"
    );

    // Identical re-PUT: 200, still Created, still one assignment.
    let again = created(
        put_role(
            &exec,
            &scope,
            &name,
            READER,
            UAI_PRINCIPAL,
            Some("ServicePrincipal"),
        )
        .await,
    );
    assert_eq!(again.name, name);
    assert_eq!(sim.role_assignments().len(), 1);

    // The same (scope, role, principal) under another name, made out of band → Exists,
    // and the listing finds it for adoption.
    let scope_b = rg("rg-b");
    let theirs = sim
        .create_role_assignment(&scope_b, None, CONTRIBUTOR, UAI_PRINCIPAL)
        .unwrap();
    let ours = assignment_name(&scope_b, CONTRIBUTOR, UAI_PRINCIPAL);
    let r = put_role(&exec, &scope_b, &ours, CONTRIBUTOR, UAI_PRINCIPAL, None)
        .await
        .unwrap();
    // The executor adopts it: it lists the principal's assignments and names the one found.
    match &r {
        Sent::RoleAssignmentExists(Some(a)) => {
            assert_eq!(a.name, theirs["name"].as_str().unwrap());
            assert_eq!(r.adopted(), Some(a.id.as_str()));
        }
        other => panic!("expected RoleAssignmentExists, got {other:?}"),
    }
    let listed = arm
        .list_role_assignments_for_principal(SUB, UAI_PRINCIPAL)
        .await
        .unwrap();
    let adopted: Vec<_> = listed
        .iter()
        .filter(|a| a.matches(&scope_b, CONTRIBUTOR))
        .collect();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].name, theirs["name"].as_str().unwrap());
    assert_eq!(arm.stats().writes, 3);
}

#[tokio::test]
async fn unknown_role_guid_on_put_is_role_not_found() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    let scope = rg("rg-a");
    let bogus = "99999999-9999-4999-8999-999999999999";
    let err = put_role(
        &exec,
        &scope,
        &assignment_name(&scope, bogus, UAI_PRINCIPAL),
        bogus,
        UAI_PRINCIPAL,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RoleNotFound);
    assert_eq!(err.code(), Some("RoleDefinitionDoesNotExist"));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn principal_not_replicated_is_retryable_and_principal_type_skips_the_lookup() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    sim.set_principal_replication_delay(Duration::from_secs(600));
    let uai = sim
        .create_user_assigned_identity(&format!(
            "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-new",
            rg("rg-a")
        ))
        .unwrap();
    let principal = uai["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    let scope = rg("rg-a");
    let name = assignment_name(&scope, READER, &principal);

    let err = put_role(&exec, &scope, &name, READER, &principal, None)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::PrincipalNotReplicated);
    assert_eq!(err.class().reason(), "PrincipalNotReplicated");
    assert!(err.is_retryable());
    assert_eq!(err.code(), Some("PrincipalNotFound"));
    // Not retried inline (a requeue, not a held worker).
    assert_eq!(arm.stats().retries, 0);

    let a = created(
        put_role(
            &exec,
            &scope,
            &name,
            READER,
            &principal,
            Some("ServicePrincipal"),
        )
        .await,
    );
    assert_eq!(a.principal_type.as_deref(), Some("ServicePrincipal"));
}

#[tokio::test]
async fn caller_without_rights_on_the_scope_is_forbidden() {
    let sim = start(SimConfig {
        callers: vec![
            CallerConfig::new(ARM_TOKEN).with_role_assignment_write_scopes(&[&rg("rg-a")]),
        ],
        ..SimConfig::default()
    })
    .await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    let b = rg("rg-b");
    let err = put_role(
        &exec,
        &b,
        &assignment_name(&b, READER, UAI_PRINCIPAL),
        READER,
        UAI_PRINCIPAL,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert_eq!(err.class().reason(), "AuthorizationFailed");
    assert!(!err.is_retryable());
    assert_eq!(err.status(), Some(403));

    let theirs = sim
        .create_role_assignment(&b, None, READER, UAI_PRINCIPAL)
        .unwrap();
    let err = delete_role(&exec, theirs["id"].as_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);

    // Allowed where granted.
    let a = rg("rg-a");
    created(
        put_role(
            &exec,
            &a,
            &assignment_name(&a, READER, UAI_PRINCIPAL),
            READER,
            UAI_PRINCIPAL,
            None,
        )
        .await,
    );
}

#[tokio::test]
async fn delete_accepts_200_204_and_404() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    let scope = rg("rg-a");
    let a = created(
        put_role(
            &exec,
            &scope,
            &assignment_name(&scope, READER, USER),
            READER,
            USER,
            None,
        )
        .await,
    );
    assert_eq!(a.principal_type.as_deref(), Some("User"));
    sim.reset_counters();

    delete_role(&exec, &a.id).await.unwrap();
    assert!(sim.role_assignments().is_empty());
    delete_role(&exec, &a.id).await.unwrap();
    sim.add_fault(FaultRule::status(404).method("DELETE").times(1));
    delete_role(&exec, &a.id).await.unwrap();
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 204, 404]);
    assert_eq!(arm.stats().deletes, 3);
    assert_eq!(sim.counters().authorization_writes, 3);

    // Not a role assignment id: refused, nothing sent.
    let vm = format!("{scope}/providers/Microsoft.Compute/virtualMachines/vm1");
    let err = delete_role(&exec, &vm).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid);
    assert!(matches!(err, AzureError::InvalidArgument { .. }));
    assert_eq!(sim.requests().len(), 3);
}

#[tokio::test]
async fn delete_retries_transient_errors() {
    let sim = start_default().await;
    let arm = arm(&sim);
    let exec = exec_with(&arm, &sim);
    let scope = rg("rg-a");
    let a = created(
        put_role(
            &exec,
            &scope,
            &assignment_name(&scope, READER, USER),
            READER,
            USER,
            None,
        )
        .await,
    );
    sim.add_fault(FaultRule::status(503).method("DELETE").times(2));
    delete_role(&exec, &a.id).await.unwrap();
    assert_eq!(arm.stats().retries, 2);
    assert!(sim.role_assignments().is_empty());
}

#[tokio::test]
async fn lists_follow_next_link() {
    let sim = start(SimConfig {
        role_assignment_page_size: 2,
        ..SimConfig::default()
    })
    .await;
    let arm = arm(&sim);
    for (scope, role) in [
        (sub_scope(), READER),
        (rg("rg-a"), READER),
        (rg("rg-b"), READER),
        (rg("rg-a"), CONTRIBUTOR),
        (sub_scope(), CUSTOM_ROLE),
    ] {
        sim.create_role_assignment(&scope, None, role, UAI_PRINCIPAL)
            .unwrap();
        sim.create_role_assignment(&scope, None, role, USER)
            .unwrap();
    }
    // Another subscription's assignment is not listed.
    sim.create_role_assignment(
        &format!("/subscriptions/{SUB2}/resourceGroups/rg-c"),
        None,
        READER,
        UAI_PRINCIPAL,
    )
    .unwrap();
    sim.reset_counters();

    let mut got = arm
        .list_role_assignments_for_principal(SUB, &UAI_PRINCIPAL.to_uppercase())
        .await
        .unwrap();
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(got.iter().all(|a| a.principal_id == UAI_PRINCIPAL));
    got.sort_by(|a, b| {
        (a.scope.to_lowercase(), a.role_guid()).cmp(&(b.scope.to_lowercase(), b.role_guid()))
    });
    assert!(got[0].matches(&sub_scope(), CUSTOM_ROLE));
    assert!(got[4].matches(&rg("rg-b"), READER));
    // 5 items at 2 per page = 3 requests, the first with the encoded filter.
    assert_eq!(sim.counters().authorization_reads, 3);
    let reqs = sim.requests();
    let q0 = reqs[0].query.clone().unwrap_or_default();
    assert!(
        q0.contains(&format!(
            "$filter=principalId%20eq%20%27{}%27",
            UAI_PRINCIPAL.to_uppercase()
        )),
        "{q0}"
    );
    assert!(
        reqs[1]
            .query
            .as_deref()
            .unwrap_or_default()
            .contains("skipToken")
    );
    assert_eq!(arm.stats().reads, 3);

    // Nothing for an unknown principal.
    let none = arm
        .list_role_assignments_for_principal(SUB, "77777777-7777-4777-8777-777777777777")
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn throttled_list_honours_retry_after() {
    let sim = start_default().await;
    let arm = arm(&sim);
    sim.add_fault(
        FaultRule::throttle(1)
            .path_contains("Microsoft.Authorization/roleAssignments")
            .times(1),
    );
    let started = std::time::Instant::now();
    let got = arm
        .list_role_assignments_for_principal(SUB, UAI_PRINCIPAL)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(arm.stats().throttled, 1);
    assert_eq!(arm.stats().retries, 1);
}
