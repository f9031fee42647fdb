//! `ArmClient::query_role_assignments`: the role assignments of many principals from
//! Resource Graph's `AuthorizationResources`, chunked and paged; `query_each` refusals.

mod common;

use std::fmt::Write as _;

use common::*;
use vmidentity_azure::resourcegraph::{PRINCIPALS_PER_QUERY, kql_string, role_assignments_query};
use vmidentity_simulator::{SimConfig, WorldSeed};

fn principal(i: usize) -> String {
    format!("aaaaaaaa-0000-4000-8000-{i:012}")
}

/// `n` principals with two assignments each (resource group and subscription), plus one
/// assignment of a principal nobody asks about.
fn world(n: usize) -> WorldSeed {
    let mut y = String::from("roleAssignments:\n");
    let mut k = 0;
    for i in 0..n {
        for scope in [rg("rg-a"), sub_scope()] {
            k += 1;
            let _ = writeln!(
                y,
                "  - {{ name: 10000000-0000-4000-8000-{k:012}, scope: {scope}, roleDefinitionId: {READER}, principalId: {}, principalType: ServicePrincipal }}",
                principal(i)
            );
        }
    }
    let _ = writeln!(
        y,
        "  - {{ name: 20000000-0000-4000-8000-000000000001, scope: {}, roleDefinitionId: {READER}, principalId: {USER}, principalType: User }}",
        sub_scope()
    );
    let mut seed = match WorldSeed::from_yaml_str(&y) {
        Ok(s) => s,
        Err(e) => panic!("world: {e}"),
    };
    let base = common::seed();
    seed.resource_groups = base.resource_groups;
    seed.principals = base.principals;
    seed
}

#[tokio::test]
async fn role_assignments_of_many_principals_in_few_pages() {
    let n = PRINCIPALS_PER_QUERY + 100;
    let sim = vmidentity_simulator::start(SimConfig {
        seed: world(n),
        role_assignment_limit: 100_000,
        resource_graph_quota: 1000,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let client = arm(&sim);
    // Upper case and duplicates in the input: one query per chunk of distinct principals.
    let mut asked: Vec<String> = (0..n).map(|i| principal(i).to_uppercase()).collect();
    asked.push(principal(0));
    let (rows, pages) = client
        .query_role_assignments(&[SUB.to_string()], &asked)
        .await
        .expect("query");
    assert_eq!(rows.len(), 2 * n);
    // 500 principals → 1,000 rows → one page; 100 → 200 rows → one page.
    assert_eq!(pages, 2);
    assert_eq!(sim.counters().resource_graph_queries, 2);
    assert!(rows.iter().all(|r| r.principal_id != USER));
    let r0: Vec<_> = rows
        .iter()
        .filter(|r| r.principal_id == principal(0))
        .collect();
    assert_eq!(r0.len(), 2);
    assert!(r0.iter().any(|r| r.scope == rg("rg-a")));
    assert!(r0.iter().all(|r| r.principal_type == "ServicePrincipal"
        && r.role_definition_id.to_ascii_lowercase().ends_with(READER)
        && r.id.ends_with(&r.name)));
}

#[tokio::test]
async fn denied_table_and_refused_query_are_errors() {
    let sim = vmidentity_simulator::start(SimConfig {
        seed: world(2),
        callers: vec![
            vmidentity_simulator::CallerConfig::new(ARM_TOKEN)
                .with_denied_resource_graph_tables(&["AuthorizationResources"]),
        ],
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let client = arm(&sim);
    let e = client
        .query_role_assignments(&[SUB.to_string()], &[principal(0)])
        .await
        .expect_err("403");
    assert!(e.to_string().contains("AuthorizationFailed"), "{e}");
    let e = client
        .query_each(&[SUB.to_string()], "Resources | where nope == 'x'", |_| {})
        .await
        .expect_err("400");
    assert!(e.to_string().contains("400"), "{e}");
}

#[test]
fn kql_literals_are_escaped() {
    assert_eq!(kql_string("a'b\\c"), "'a\\'b\\\\c'");
    let q = role_assignments_query(&["x".into(), "y".into()]);
    assert!(q.contains("properties.principalId in~ ('x', 'y')"), "{q}");
    assert!(q.starts_with(
        "AuthorizationResources | where type =~ 'microsoft.authorization/roleassignments'"
    ));
}
