//! Microsoft Graph v1.0 group memberships of managed identities.

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{FaultRule, SimConfig, WorldSeed};

const G1: &str = "11111111-2222-4333-8444-555555555555";
const G2: &str = "22222222-2222-4333-8444-555555555555";
const USER: &str = "ce2ce14e-85d7-4629-bdbc-454d0519d987";
const MISSING: &str = "99999999-2222-4333-8444-555555555555";

async fn gsim(cfg: SimConfig) -> (vmidentity_simulator::SimHandle, Client) {
    let yaml = format!(
        r#"{base}
principals:
  - id: {USER}
    type: User
    displayName: Alice
groups:
  - id: {G1}
    displayName: vm-readers
    members: [{USER}]
  - id: {G2}
    displayName: secrets-users
"#,
        base = seed_yaml()
    );
    let sim = sim_with(SimConfig {
        seed: WorldSeed::from_yaml_str(&yaml).expect("seed"),
        ..cfg
    })
    .await;
    let mut c = Client::new(&sim);
    c.token = Some("sim-graph-token".into());
    (sim, c)
}

fn pid(sim: &vmidentity_simulator::SimHandle, name: &str) -> String {
    live_entry(sim, &uai(name))["principalId"]
        .as_str()
        .expect("pid")
        .to_string()
}

fn odata(id: &str) -> Value {
    json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")})
}

fn not_found(r: &Resp, id: &str) {
    assert_eq!(r.status, 404, "{}", r.raw);
    assert_eq!(r.body["error"]["code"], json!("Request_ResourceNotFound"));
    assert_eq!(
        r.body["error"]["message"],
        json!(format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ))
    );
    assert!(r.body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn graph_auth_is_separate() {
    let (sim, _) = gsim(SimConfig::default()).await;
    let arm = Client::new(&sim);
    let r = arm
        .send("GET", &format!("/v1.0/groups/{G1}/members"), None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], json!("InvalidAuthenticationToken"));
    assert_eq!(
        r.body["error"]["message"],
        json!("Access token validation failure.")
    );
    let mut none = Client::new(&sim);
    none.token = None;
    let r = none
        .send("GET", &format!("/v1.0/groups/{G1}/members"), None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["message"], json!("Access token is empty."));
    // The Graph token is not an ARM token.
    let mut g = Client::new(&sim);
    g.token = Some("sim-graph-token".into());
    assert_eq!(g.get(&vm("vm-1"), V2018).await.status, 401);
}

#[tokio::test]
async fn add_remove_and_list_members() {
    let (sim, c) = gsim(SimConfig::default()).await;
    let p1 = pid(&sim, "uai-1");
    let add = format!("/v1.0/groups/{G1}/members/$ref");
    let r = c.send("POST", &add, Some(&odata(&p1))).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert!(r.raw.is_empty());
    assert_eq!(
        sim.group_members(G1),
        Some(vec![USER.to_string(), p1.clone()])
    );

    let r = c.send("POST", &add, Some(&odata(&p1))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], json!("Request_BadRequest"));
    assert_eq!(
        r.body["error"]["message"],
        json!(
            "One or more added object references already exist for the following modified properties: 'members'."
        )
    );
    // Unknown member / group.
    not_found(&c.send("POST", &add, Some(&odata(MISSING))).await, MISSING);
    not_found(
        &c.send(
            "POST",
            &format!("/v1.0/groups/{MISSING}/members/$ref"),
            Some(&odata(&p1)),
        )
        .await,
        MISSING,
    );

    // v1.0 omits service principals (known issue); beta and $expand=members do not.
    let r = c
        .send("GET", &format!("/v1.0/groups/{G1}/members"), None)
        .await;
    assert_eq!(r.status, 200);
    let ids: Vec<&str> = r.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids, vec![USER]);
    assert_eq!(
        r.body["@odata.context"],
        json!("https://graph.microsoft.com/v1.0/$metadata#directoryObjects")
    );
    let r = c
        .send("GET", &format!("/beta/groups/{G1}/members"), None)
        .await;
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(2));
    let r = c
        .send("GET", &format!("/v1.0/groups/{G1}?$expand=members"), None)
        .await;
    assert_eq!(r.body["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        r.body["members"][1]["servicePrincipalType"],
        json!("ManagedIdentity")
    );

    // Remove (path `$ref` may arrive encoded).
    let del = format!("/v1.0/groups/{G1}/members/{p1}/%24ref");
    assert_eq!(c.send("DELETE", &del, None).await.status, 204);
    not_found(&c.send("DELETE", &del, None).await, G1);
    assert_eq!(sim.group_members(G1), Some(vec![USER.to_string()]));
    let k = sim.counters();
    assert_eq!((k.graph_writes, k.graph_reads), (6, 3));
}

#[tokio::test]
async fn service_principal_and_member_of_paging() {
    let (sim, c) = gsim(SimConfig {
        graph_page_size: 1,
        ..SimConfig::default()
    })
    .await;
    let p1 = pid(&sim, "uai-1");
    for g in [G1, G2] {
        let r = c
            .send(
                "POST",
                &format!("/v1.0/groups/{g}/members/$ref"),
                Some(&odata(&p1)),
            )
            .await;
        assert_eq!(r.status, 204);
    }
    let sp = c
        .send("GET", &format!("/v1.0/servicePrincipals/{p1}"), None)
        .await;
    assert_eq!(sp.status, 200);
    assert_eq!(sp.body["id"], json!(p1));
    assert_eq!(sp.body["servicePrincipalType"], json!("ManagedIdentity"));
    let u = sim.user_assigned_identity(&uai("uai-1")).expect("uai");
    assert_eq!(sp.body["appId"], u["properties"]["clientId"]);
    let by_app = c
        .send(
            "GET",
            &format!(
                "/v1.0/servicePrincipals(appId='{}')",
                u["properties"]["clientId"].as_str().unwrap_or("")
            ),
            None,
        )
        .await;
    assert_eq!(by_app.body["id"], json!(p1));
    not_found(
        &c.send("GET", &format!("/v1.0/servicePrincipals/{MISSING}"), None)
            .await,
        MISSING,
    );

    // Paged with the configured page size, then with $top.
    let mut seen = Vec::new();
    let mut next = Some(format!("/v1.0/servicePrincipals/{p1}/memberOf"));
    while let Some(url) = next {
        let r = c.send("GET", &url, None).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let v = r.body["value"].as_array().expect("value");
        assert!(v.len() <= 1);
        for g in v {
            assert_eq!(g["@odata.type"], json!("#microsoft.graph.group"));
            assert_eq!(g["securityEnabled"], json!(true));
            seen.push(g["id"].as_str().unwrap_or("").to_string());
        }
        next = r.body["@odata.nextLink"]
            .as_str()
            .map(|l| l.strip_prefix(&c.base).expect("same server").to_string());
    }
    seen.sort();
    assert_eq!(seen, vec![G1.to_string(), G2.to_string()]);
    let r = c
        .send(
            "GET",
            &format!("/v1.0/servicePrincipals/{p1}/memberOf?$top=999"),
            None,
        )
        .await;
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(2));
    assert!(r.body.get("@odata.nextLink").is_none());
    let r = c
        .send(
            "GET",
            &format!("/v1.0/servicePrincipals/{p1}/memberOf?$top=1000"),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(sim.member_of(&p1).len(), 2);
}

#[tokio::test]
async fn deleted_identity_leaves_groups_and_throttling_fault() {
    let (sim, c) = gsim(SimConfig::default()).await;
    let p1 = pid(&sim, "uai-1");
    assert!(sim.add_group_member(G2, &p1));
    // Deleting the identity deletes its service principal and its memberships.
    let arm = Client::new(&sim);
    assert_eq!(arm.delete(&uai("uai-1"), "2018-11-30").await.status, 200);
    assert_eq!(sim.group_members(G2), Some(vec![]));
    not_found(
        &c.send("GET", &format!("/v1.0/servicePrincipals/{p1}"), None)
            .await,
        &p1,
    );

    // The existing fault rules throttle Graph paths with Graph's 429.
    sim.add_fault(FaultRule::throttle(10).path_contains("/v1.0/").times(1));
    let r = c
        .send("GET", &format!("/v1.0/groups/{G2}/members"), None)
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("10"));
    assert_eq!(r.body["error"]["code"], json!("TooManyRequests"));
    assert_eq!(sim.counters().throttled, 1);
    let r = c
        .send("GET", &format!("/v1.0/groups/{G2}/members"), None)
        .await;
    assert_eq!(r.status, 200);
    // Unknown segment.
    let r = c.send("GET", "/v1.0/applications", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["error"]["message"],
        json!("Resource not found for the segment 'applications'.")
    );
}
