//! Resource Graph tables for `import` / `audit`: `AuthorizationResources` (role assignments,
//! the documented row shape), `Resources` filtered by resource group and tag, AKS clusters'
//! `nodeResourceGroup`, property paths in `where`, and a refused table read (403).

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{CallerConfig, SimConfig, WorldSeed};

const ARG: &str = "/providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
const P1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const P2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const P3: &str = "aaaaaaaa-0000-4000-8000-000000000003";
const OTHER_SUB: &str = "00000000-0000-0000-0000-000000000002";

fn req(query: &str, options: Value) -> Value {
    json!({"subscriptions": [SUB], "query": query, "options": options})
}

fn world() -> WorldSeed {
    let yaml = format!(
        r#"
tenantId: {TENANT}
virtualMachines:
  - id: /subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-1
    tags: {{ env: prod, team: web }}
  - id: /subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-2
    tags: {{ env: dev }}
  - id: /subscriptions/{SUB}/resourceGroups/RG-Data/providers/Microsoft.Compute/virtualMachines/db-1
    tags: {{ env: prod }}
virtualMachineScaleSets:
  - id: /subscriptions/{SUB}/resourceGroups/MC_rg-aks_aks-1_westeurope/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-123-vmss
managedClusters:
  - id: /subscriptions/{SUB}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/aks-1
    location: westeurope
  - id: /subscriptions/{SUB}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/aks-2
    nodeResourceGroup: aks2-nodes
roleAssignments:
  - {{ name: 10000000-0000-4000-8000-000000000001, scope: /subscriptions/{SUB}/resourceGroups/rg-web, roleDefinitionId: {READER}, principalId: {P1}, principalType: ServicePrincipal }}
  - {{ name: 10000000-0000-4000-8000-000000000002, scope: /subscriptions/{SUB}, roleDefinitionId: {OWNER}, principalId: {P1}, principalType: ServicePrincipal }}
  - {{ name: 10000000-0000-4000-8000-000000000003, scope: /subscriptions/{SUB}/resourceGroups/rg-web, roleDefinitionId: {READER}, principalId: {P2}, principalType: ServicePrincipal }}
  - {{ name: 10000000-0000-4000-8000-000000000004, scope: /subscriptions/{SUB}/resourceGroups/rg-web, roleDefinitionId: {READER}, principalId: {P3}, principalType: User }}
  - {{ name: 10000000-0000-4000-8000-000000000005, scope: /subscriptions/{OTHER_SUB}, roleDefinitionId: {READER}, principalId: {P1}, principalType: ServicePrincipal }}
"#
    );
    match WorldSeed::from_yaml_str(&yaml) {
        Ok(w) => w,
        Err(e) => panic!("world: {e}"),
    }
}

async fn start() -> vmidentity_simulator::SimHandle {
    sim_with(SimConfig {
        seed: world(),
        callers: vec![
            CallerConfig::new("no-rbac-read")
                .with_denied_resource_graph_tables(&["AuthorizationResources"]),
        ],
        accepted_tokens: vec![TOKEN.into(), "no-rbac-read".into()],
        ..SimConfig::default()
    })
    .await
}

fn ids(r: &Value) -> Vec<String> {
    r["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn authorization_resources_rows_have_the_documented_shape() {
    let sim = start().await;
    let c = Client::new(&sim);
    // The "getting started" query of the AuthorizationResources announcement, without its
    // extend/join (not in the simulator's subset).
    let q = format!(
        "AuthorizationResources | where type =~ 'microsoft.authorization/roleassignments' | where properties.principalId in~ ('{}', '{P2}') | project id, name, properties | order by id asc",
        P1.to_uppercase()
    );
    let r = c.send("POST", ARG, Some(&req(&q, json!({})))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // P1 twice (the other subscription's row is not in SUB's), P2 once, P3 not asked for.
    assert_eq!(r.body["totalRecords"], json!(3));
    let data = r.body["data"].as_array().expect("data");
    let row = data
        .iter()
        .find(|d| d["name"] == json!("10000000-0000-4000-8000-000000000001"))
        .expect("row");
    assert_eq!(
        row["id"],
        json!(format!(
            "/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Authorization/roleAssignments/10000000-0000-4000-8000-000000000001"
        ))
    );
    assert_eq!(row.as_object().map(|m| m.len()), Some(3));
    let p = &row["properties"];
    assert_eq!(p["principalId"], json!(P1));
    assert_eq!(p["principalType"], json!("ServicePrincipal"));
    assert_eq!(
        p["scope"],
        json!(format!("/subscriptions/{SUB}/resourceGroups/rg-web"))
    );
    assert!(
        p["roleDefinitionId"]
            .as_str()
            .is_some_and(|d| d.ends_with(&format!("/roleDefinitions/{READER}")))
    );
    // Unprojected rows carry the type and the scope's subscription / resource group.
    let q = format!("AuthorizationResources | where properties.principalId == '{P2}'");
    let r = c.send("POST", ARG, Some(&req(&q, json!({})))).await;
    let row = &r.body["data"][0];
    assert_eq!(
        row["type"],
        json!("microsoft.authorization/roleassignments")
    );
    assert_eq!(row["subscriptionId"], json!(SUB));
    assert_eq!(row["resourceGroup"], json!("rg-web"));
    // Case-sensitive `in` does not match the upper-cased principal id.
    let q = format!(
        "AuthorizationResources | where properties.principalId in ('{}')",
        P1.to_uppercase()
    );
    let r = c.send("POST", ARG, Some(&req(&q, json!({})))).await;
    assert_eq!(r.body["totalRecords"], json!(0));
    // Both subscriptions: P1's third grant appears.
    let both = json!({"subscriptions": [SUB, OTHER_SUB], "query": format!("AuthorizationResources | where properties.principalId =~ '{P1}'"), "options": {}});
    let r = c.send("POST", ARG, Some(&both)).await;
    assert_eq!(r.body["totalRecords"], json!(3));
}

#[tokio::test]
async fn authorization_resources_page_with_skip_token() {
    let sim = start().await;
    let c = Client::new(&sim);
    let q = "AuthorizationResources | where type =~ 'microsoft.authorization/roleassignments' | project id, name, properties | order by id asc";
    let p1 = c.send("POST", ARG, Some(&req(q, json!({"$top": 3})))).await;
    assert_eq!(p1.body["count"], json!(3));
    assert_eq!(p1.body["totalRecords"], json!(4));
    let tok = p1.body["$skipToken"].as_str().expect("token").to_string();
    let p2 = c
        .send(
            "POST",
            ARG,
            Some(&req(q, json!({"$top": 3, "$skipToken": tok}))),
        )
        .await;
    assert_eq!(p2.body["count"], json!(1));
    assert!(p2.body.get("$skipToken").is_none());
    let mut all = ids(&p1.body);
    all.extend(ids(&p2.body));
    let mut sorted = all.clone();
    sorted.sort_by_key(|s| s.to_ascii_lowercase());
    assert_eq!(all, sorted);
    assert!(p1.header("x-ms-user-quota-remaining").is_some());
}

#[tokio::test]
async fn resources_by_resource_group_and_tag() {
    let sim = start().await;
    let c = Client::new(&sim);
    let base = "Resources | where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets'";
    let q = format!("{base} | where resourceGroup in~ ('rg-data') | project id, tags");
    let r = c.send("POST", ARG, Some(&req(&q, json!({})))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(ids(&r.body).len(), 1);
    assert!(ids(&r.body)[0].ends_with("/db-1"));
    for (filter, n) in [
        ("tags['env'] == 'prod'", 2),
        ("tags.env == 'prod' and tags['team'] =~ 'WEB'", 1),
        ("tags[\"env\"] != 'prod'", 2),
        ("isnotnull(tags.team)", 1),
    ] {
        let q = format!("{base} | where {filter} | project id");
        let r = c.send("POST", ARG, Some(&req(&q, json!({})))).await;
        assert_eq!(r.status, 200, "{filter}: {}", r.raw);
        assert_eq!(r.body["totalRecords"], json!(n), "{filter}");
    }
    // Resource groups are lower-cased in rows.
    let q = format!("{base} | where resourceGroup == 'RG-Data' | project id");
    let r = c.send("POST", ARG, Some(&req(&q, json!({})))).await;
    assert_eq!(r.body["totalRecords"], json!(0));
}

#[tokio::test]
async fn managed_clusters_show_their_node_resource_group() {
    let sim = start().await;
    let c = Client::new(&sim);
    let q = "Resources | where type =~ 'microsoft.containerservice/managedclusters' | project id, properties | order by id asc";
    let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let data = r.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(
        data[0]["properties"]["nodeResourceGroup"],
        json!("MC_rg-aks_aks-1_westeurope")
    );
    assert_eq!(
        data[1]["properties"]["nodeResourceGroup"],
        json!("aks2-nodes")
    );
    // The VM query does not see them.
    let q = "Resources | where type =~ 'microsoft.compute/virtualmachines' | project id";
    let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
    assert_eq!(r.body["totalRecords"], json!(3));
}

#[tokio::test]
async fn refused_filters_and_denied_table() {
    let sim = start().await;
    let c = Client::new(&sim);
    for q in [
        "Resources | where tags['env' == 'x'",
        "Resources | where nosuchcolumn == 'x'",
        "Resources | where type matches regex 'x'",
        "AuthorizationResources | where properties.principalId in 'x'",
    ] {
        let r = c.send("POST", ARG, Some(&req(q, json!({})))).await;
        assert_eq!(r.status, 400, "{q}: {}", r.raw);
        assert_eq!(r.body["error"]["code"], json!("BadRequest"));
        assert_eq!(r.body["error"]["details"][0]["code"], json!("InvalidQuery"));
    }
    let mut denied = Client::new(&sim);
    denied.token = Some("no-rbac-read".into());
    let r = denied
        .send(
            "POST",
            ARG,
            Some(&req("AuthorizationResources | project id", json!({}))),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.body["error"]["code"], json!("AuthorizationFailed"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Microsoft.Authorization/roleAssignments/read"))
    );
    // The same caller may still read Resources.
    let r = denied
        .send("POST", ARG, Some(&req("Resources | project id", json!({}))))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
}
