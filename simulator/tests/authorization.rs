//! Microsoft.Authorization 2022-04-01: role definitions, role assignments, caller rights,
//! principal replication delay, list semantics and paging.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{CallerConfig, SimConfig, WorldSeed};

const AV: &str = "api-version=2022-04-01";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const CONTRIB: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const RA1: &str = "05c5a614-a7d6-4502-b150-c2fb455033ff";
const RA2: &str = "96786e4b-dede-4c2e-8736-8ab911987f08";
const RA3: &str = "b0f43c54-e787-4862-89b1-a653fa9cf747";
const RA4: &str = "0d1e2f3a-0000-4000-8000-000000000004";
const USER: &str = "ce2ce14e-85d7-4629-bdbc-454d0519d987";
const GROUP: &str = "11111111-2222-4333-8444-555555555555";
const CUSTOM: &str = "0b5fe924-9a61-425c-96af-cfe6e287ca2d";

fn sub() -> String {
    format!("/subscriptions/{SUB}")
}
fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-apps")
}
fn role_id(guid: &str) -> String {
    format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
}
fn ra_path(scope: &str, name: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}?{AV}")
}
fn body(role: &str, principal: &str) -> Value {
    json!({"properties": {"roleDefinitionId": role_id(role), "principalId": principal}})
}

fn seed_yaml_authz() -> String {
    format!(
        r#"{base}
resourceGroups:
  - id: /subscriptions/{SUB}/resourceGroups/rg-other
principals:
  - id: {USER}
    type: User
    displayName: Alice
groups:
  - id: {GROUP}
    displayName: vm-readers
    members: [{USER}]
roleDefinitions:
  - id: {CUSTOM}
    roleName: Identity Auditor
    assignableScopes: [/subscriptions/{SUB}/resourceGroups/rg-apps]
    permissions: [{{actions: ["Microsoft.ManagedIdentity/*/read"]}}]
"#,
        base = seed_yaml()
    )
}

async fn authz_sim(cfg: SimConfig) -> vmidentity_simulator::SimHandle {
    sim_with(SimConfig {
        seed: WorldSeed::from_yaml_str(&seed_yaml_authz()).expect("seed"),
        ..cfg
    })
    .await
}

#[tokio::test]
async fn role_definitions_builtin_custom_and_filter() {
    let sim = authz_sim(SimConfig::default()).await;
    let c = Client::new(&sim);
    let r = c
        .send(
            "GET",
            &format!(
                "{}/providers/Microsoft.Authorization/roleDefinitions?{AV}&$filter=roleName%20eq%20%27Reader%27",
                sub()
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let v = r.body["value"].as_array().expect("value");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["id"], json!(role_id(READER)));
    assert_eq!(v[0]["name"], json!(READER));
    assert_eq!(
        v[0]["type"],
        json!("Microsoft.Authorization/roleDefinitions")
    );
    assert_eq!(v[0]["properties"]["roleName"], json!("Reader"));
    assert_eq!(v[0]["properties"]["type"], json!("BuiltInRole"));
    assert_eq!(
        v[0]["properties"]["permissions"][0]["actions"],
        json!(["*/read"])
    );

    // Every required built-in is there with its real GUID.
    let all = c
        .send(
            "GET",
            &format!(
                "{}/providers/Microsoft.Authorization/roleDefinitions?{AV}",
                sub()
            ),
            None,
        )
        .await;
    let names: Vec<(String, String)> = all.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or("").to_string(),
                d["properties"]["roleName"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    for (g, n) in [
        ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner"),
        (CONTRIB, "Contributor"),
        (
            "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
            "User Access Administrator",
        ),
        (
            "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
            "Role Based Access Control Administrator",
        ),
        (
            "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
            "Storage Blob Data Reader",
        ),
        (
            "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
            "Storage Blob Data Contributor",
        ),
        (
            "4633458b-17de-408a-b874-0445c86b69e6",
            "Key Vault Secrets User",
        ),
        (
            "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
            "Virtual Machine Contributor",
        ),
        (
            "f1a07417-d97a-45cb-824c-7a7467783830",
            "Managed Identity Operator",
        ),
        (
            "3913510d-42f4-4e42-8a64-420c390055eb",
            "Monitoring Metrics Publisher",
        ),
    ] {
        assert!(
            names.contains(&(g.to_string(), n.to_string())),
            "{n} missing"
        );
    }
    // The custom role is assignable only at/below rg-apps.
    assert!(!names.iter().any(|(g, _)| g == CUSTOM));
    let at_rg = c
        .send(
            "GET",
            &format!(
                "{}/providers/Microsoft.Authorization/roleDefinitions/{CUSTOM}?{AV}",
                rg()
            ),
            None,
        )
        .await;
    assert_eq!(at_rg.status, 200);
    assert_eq!(at_rg.body["properties"]["type"], json!("CustomRole"));

    let missing = c
        .send(
            "GET",
            &format!(
                "{}/providers/Microsoft.Authorization/roleDefinitions/{CUSTOM}?{AV}",
                sub()
            ),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        error_body(
            "RoleDefinitionDoesNotExist",
            "The specified role definition with ID '0b5fe9249a61425c96afcfe6e287ca2d' does not exist."
        )
    );
}

#[tokio::test]
async fn role_assignment_lifecycle_and_refusals() {
    let sim = authz_sim(SimConfig::default()).await;
    let c = Client::new(&sim);
    let uai1 = sim.user_assigned_identity(&uai("uai-1")).expect("uai");
    let p1 = uai1["properties"]["principalId"]
        .as_str()
        .expect("pid")
        .to_string();

    let r = c.put_raw(&ra_path(&rg(), RA1), body(READER, &p1)).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(
        r.body["id"],
        json!(format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{RA1}",
            rg()
        ))
    );
    assert_eq!(r.body["name"], json!(RA1));
    assert_eq!(
        r.body["type"],
        json!("Microsoft.Authorization/roleAssignments")
    );
    let p = &r.body["properties"];
    assert_eq!(
        p["roleDefinitionId"],
        json!(format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{READER}"
        ))
    );
    assert_eq!(p["principalId"], json!(p1));
    assert_eq!(p["principalType"], json!("ServicePrincipal"));
    assert_eq!(p["scope"], json!(rg()));
    assert!(p["createdOn"].is_string());

    // Identical re-PUT under the same name: 200.
    let again = c.put_raw(&ra_path(&rg(), RA1), body(READER, &p1)).await;
    assert_eq!(again.status, 200);
    // Same trio under another name: 409.
    let dup = c.put_raw(&ra_path(&rg(), RA2), body(READER, &p1)).await;
    assert_eq!(dup.status, 409);
    assert_eq!(
        dup.body,
        error_body(
            "RoleAssignmentExists",
            "The role assignment already exists."
        )
    );
    // Same name, other role / scope: 400.
    for (scope, role) in [(rg(), CONTRIB), (sub(), READER)] {
        let upd = c.put_raw(&ra_path(&scope, RA1), body(role, &p1)).await;
        assert_eq!(upd.status, 400);
        assert_eq!(
            upd.body,
            error_body(
                "RoleAssignmentUpdateNotPermitted",
                "Tenant ID, application ID, principal ID, and scope are not allowed to be updated."
            )
        );
    }
    // Name not a GUID.
    let bad = c
        .put_raw(&ra_path(&rg(), "my-assignment"), body(READER, &p1))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body,
        error_body(
            "InvalidRoleAssignmentId",
            "The role assignment ID 'my-assignment' is not valid. The role assignment ID must be a GUID."
        )
    );
    // Principal id not a GUID.
    let bad = c
        .put_raw(&ra_path(&rg(), RA3), body(READER, "not-a-guid"))
        .await;
    assert_eq!(
        bad.body,
        error_body(
            "InvalidPrincipalId",
            "The Principal ID 'not-a-guid' is not valid. Principal ID must be a GUID."
        )
    );
    // Unknown role definition.
    let bad = c
        .put_raw(
            &ra_path(&rg(), RA3),
            body("00000000-0000-4000-8000-0000000000aa", &p1),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body["error"]["code"],
        json!("RoleDefinitionDoesNotExist")
    );
    // Missing resource group.
    let missing_rg = format!("/subscriptions/{SUB}/resourceGroups/rg-nope");
    let bad = c
        .put_raw(&ra_path(&missing_rg, RA3), body(READER, &p1))
        .await;
    assert_eq!(bad.status, 404);
    assert_eq!(bad.body["error"]["code"], json!("ResourceGroupNotFound"));

    // GET / DELETE.
    let g = c.send("GET", &ra_path(&rg(), RA1), None).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, r.body);
    let d = c.send("DELETE", &ra_path(&rg(), RA1), None).await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["name"], json!(RA1));
    let d = c.send("DELETE", &ra_path(&rg(), RA1), None).await;
    assert_eq!(d.status, 204);
    assert!(d.raw.is_empty());
    let g = c.send("GET", &ra_path(&rg(), RA1), None).await;
    assert_eq!(g.status, 404);
    assert!(sim.role_assignments().is_empty());

    // api-version is required.
    let nov = c
        .send(
            "GET",
            &format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{RA1}",
                rg()
            ),
            None,
        )
        .await;
    assert_eq!(
        nov.body["error"]["code"],
        json!("MissingApiVersionParameter")
    );
}

#[tokio::test]
async fn principal_replication_delay_and_principal_type() {
    let sim = authz_sim(SimConfig {
        principal_replication_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    // Seeded identities are old: no delay.
    let seeded = live_entry(&sim, &uai("uai-1"))["principalId"]
        .as_str()
        .expect("pid")
        .to_string();
    assert_eq!(
        c.put_raw(&ra_path(&rg(), RA1), body(READER, &seeded))
            .await
            .status,
        201
    );

    // A fresh identity is not yet visible to ARM.
    let created = c
        .put(
            &uai("uai-new"),
            "2018-11-30",
            json!({"location": "westeurope"}),
        )
        .await;
    assert_eq!(created.status, 201);
    let fresh = created.body["properties"]["principalId"]
        .as_str()
        .expect("pid")
        .to_string();
    assert!(!sim.principal_replicated(&fresh));
    let r = c.put_raw(&ra_path(&rg(), RA2), body(READER, &fresh)).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "PrincipalNotFound",
            &format!(
                "Principal {fresh} does not exist in the directory {TENANT}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype"
            )
        )
    );
    // principalType skips the lookup.
    let mut b = body(READER, &fresh);
    b["properties"]["principalType"] = json!("ServicePrincipal");
    let r = c.put_raw(&ra_path(&rg(), RA2), b).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(
        r.body["properties"]["principalType"],
        json!("ServicePrincipal")
    );

    // After the delay (set to 0 at run time) a PUT without principalType works.
    sim.set_principal_replication_delay(Duration::ZERO);
    assert!(sim.principal_replicated(&fresh));
    let r = c.put_raw(&ra_path(&sub(), RA3), body(READER, &fresh)).await;
    assert_eq!(r.status, 201);

    // A GUID nobody knows.
    let r = c
        .put_raw(
            &ra_path(&sub(), RA4),
            body(READER, "9f7b9c5b-9e7a-4a0e-8f3d-2c1b0a9e8d7c"),
        )
        .await;
    assert_eq!(r.body["error"]["code"], json!("PrincipalNotFound"));
    // A mismatching principalType for a known principal.
    let mut b = body(CONTRIB, USER);
    b["properties"]["principalType"] = json!("ServicePrincipal");
    let r = c.put_raw(&ra_path(&sub(), RA4), b).await;
    assert_eq!(r.body["error"]["code"], json!("UnmatchedPrincipalType"));
    let r = c.put_raw(&ra_path(&sub(), RA4), body(CONTRIB, USER)).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["properties"]["principalType"], json!("User"));
}

#[tokio::test]
async fn list_semantics_filters_and_paging() {
    let sim = authz_sim(SimConfig {
        role_assignment_page_size: 2,
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let a = live_entry(&sim, &uai("uai-1"))["principalId"]
        .as_str()
        .expect("pid")
        .to_string();
    let b = live_entry(&sim, &uai("uai-2"))["principalId"]
        .as_str()
        .expect("pid")
        .to_string();
    let other_rg = format!("/subscriptions/{SUB}/resourceGroups/rg-other");
    for (scope, name, principal) in [
        (sub(), RA1, a.as_str()),
        (rg(), RA2, a.as_str()),
        (vm("vm-1"), RA3, a.as_str()),
        (rg(), RA4, b.as_str()),
        (
            other_rg.clone(),
            "7a3c9e51-0000-4000-8000-000000000005",
            a.as_str(),
        ),
    ] {
        let r = c
            .put_raw(&ra_path(&scope, name), body(READER, principal))
            .await;
        assert_eq!(r.status, 201, "{}", r.raw);
    }
    // Group assignment for assignedTo().
    let gname = "7a3c9e51-0000-4000-8000-000000000006";
    assert_eq!(
        c.put_raw(&ra_path(&rg(), gname), body(READER, GROUP))
            .await
            .status,
        201
    );

    async fn all(c: &Client, first: String) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next {
            let r = c.send("GET", &url, None).await;
            assert_eq!(r.status, 200, "{}", r.raw);
            for v in r.body["value"].as_array().expect("value") {
                out.push(v["name"].as_str().unwrap_or("").to_string());
            }
            assert!(r.body["value"].as_array().expect("value").len() <= 2);
            next = r.body["nextLink"]
                .as_str()
                .map(|l| l.strip_prefix(&c.base).expect("same server").to_string());
        }
        out
    }
    let list = |filter: &str| {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments?{AV}{filter}",
            rg()
        )
    };
    // No filter: at, above and below.
    assert_eq!(all(&c, list("")).await, vec![RA1, RA2, RA3, RA4, gname]);
    // atScope(): at or above.
    assert_eq!(
        all(&c, list("&$filter=atScope()")).await,
        vec![RA1, RA2, RA4, gname]
    );
    // principalId eq: at, above and below, for that principal only.
    assert_eq!(
        all(&c, list(&format!("&$filter=principalId%20eq%20'{a}'"))).await,
        vec![RA1, RA2, RA3]
    );
    // assignedTo(): includes assignments of the principal's groups.
    assert!(sim.add_group_member(GROUP, &b));
    assert_eq!(
        all(&c, list(&format!("&$filter=assignedTo('{b}')"))).await,
        vec![RA4, gname]
    );
    let bad = c.send("GET", &list("&$filter=foo%20eq%201"), None).await;
    assert_eq!(bad.status, 400);
    assert_eq!(sim.role_assignments_of(&a).len(), 4);
}

#[tokio::test]
async fn caller_rights_authorization_failed() {
    let restricted = CallerConfig::new("ops-token").with_role_assignment_write_scopes(&[&rg()]);
    let sim = authz_sim(SimConfig {
        callers: vec![restricted.clone()],
        ..SimConfig::default()
    })
    .await;
    let mut c = Client::new(&sim);
    c.token = Some("ops-token".into());
    let p = live_entry(&sim, &uai("uai-1"))["principalId"]
        .as_str()
        .expect("pid")
        .to_string();
    // Below the granted scope: fine.
    assert_eq!(
        c.put_raw(&ra_path(&vm("vm-1"), RA1), body(READER, &p))
            .await
            .status,
        201
    );
    // Elsewhere: 403 with the full assignment id as scope.
    let r = c.put_raw(&ra_path(&sub(), RA2), body(READER, &p)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-ms-failure-cause").as_deref(), Some("gateway"));
    assert_eq!(
        r.body,
        error_body(
            "AuthorizationFailed",
            &format!(
                "The client '{}' with object id '{}' does not have authorization to perform action 'Microsoft.Authorization/roleAssignments/write' over scope '{}/providers/Microsoft.Authorization/roleAssignments/{RA2}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
                restricted.client_id,
                restricted.object_id,
                sub()
            )
        )
    );
    // Grant at run time, then revoke.
    sim.grant_role_assignment_write("ops-token", &sub());
    assert_eq!(
        c.put_raw(&ra_path(&sub(), RA2), body(READER, &p))
            .await
            .status,
        201
    );
    sim.revoke_role_assignment_write("ops-token", &sub());
    let d = c.send("DELETE", &ra_path(&sub(), RA2), None).await;
    assert_eq!(d.status, 403);
    assert!(
        d.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("'Microsoft.Authorization/roleAssignments/delete'")
    );
    // The default token can still write everywhere; reads need no rights.
    let def = Client::new(&sim);
    assert_eq!(
        def.send("DELETE", &ra_path(&sub(), RA2), None).await.status,
        200
    );
    assert_eq!(
        c.send("GET", &ra_path(&vm("vm-1"), RA1), None).await.status,
        200
    );
    // createdBy is the caller's object id.
    let g = c.send("GET", &ra_path(&vm("vm-1"), RA1), None).await;
    assert_eq!(
        g.body["properties"]["createdBy"],
        json!(restricted.object_id)
    );
}

#[tokio::test]
async fn limit_and_counters() {
    let sim = authz_sim(SimConfig {
        role_assignment_limit: 2,
        ..SimConfig::default()
    })
    .await;
    let c = Client::new(&sim);
    let p = live_entry(&sim, &uai("uai-1"))["principalId"]
        .as_str()
        .expect("pid")
        .to_string();
    assert_eq!(
        c.put_raw(&ra_path(&sub(), RA1), body(READER, &p))
            .await
            .status,
        201
    );
    assert_eq!(
        c.put_raw(&ra_path(&rg(), RA2), body(READER, &p))
            .await
            .status,
        201
    );
    let r = c
        .put_raw(&ra_path(&vm("vm-1"), RA3), body(READER, &p))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "RoleAssignmentLimitExceeded",
            "No more role assignments can be created."
        )
    );
    c.send("GET", &ra_path(&sub(), RA1), None).await;
    let k = sim.counters();
    assert_eq!((k.authorization_writes, k.authorization_reads), (3, 1));
    assert_eq!((k.reads, k.writes), (0, 0));
    // ARM rate headers are reported for authorization calls too.
    let r = c.send("GET", &ra_path(&sub(), RA1), None).await;
    assert!(
        r.header("x-ms-ratelimit-remaining-subscription-reads")
            .is_some()
    );
}

#[tokio::test]
async fn principals_follow_identities() {
    let sim = sim().await;
    let c = Client::new(&sim);
    // A user-assigned identity is a ManagedIdentity service principal with appId = clientId.
    let u = sim.user_assigned_identity(&uai("uai-1")).expect("uai");
    let pid = u["properties"]["principalId"].as_str().expect("pid");
    let sp = sim.principal(pid).expect("principal");
    assert_eq!(
        sp["@odata.type"],
        json!("#microsoft.graph.servicePrincipal")
    );
    assert_eq!(sp["servicePrincipalType"], json!("ManagedIdentity"));
    assert_eq!(sp["appId"], u["properties"]["clientId"]);
    assert_eq!(sp["displayName"], json!("uai-1"));

    // System-assigned: enable → principal; disable → deleted; re-enable → a new one.
    c.patch(
        &vm("vm-1"),
        V2018,
        json!({"identity": {"type": "SystemAssigned"}}),
    )
    .await;
    let first = sim.system_principal_history(&vm("vm-1"))[0].clone();
    assert!(sim.principal(&first).is_some());
    c.patch(&vm("vm-1"), V2018, json!({"identity": {"type": "None"}}))
        .await;
    assert!(sim.principal(&first).is_none());
    assert!(sim.principal_deleted(&first));
    c.patch(
        &vm("vm-1"),
        V2018,
        json!({"identity": {"type": "SystemAssigned"}}),
    )
    .await;
    let second = sim.system_principal_history(&vm("vm-1"))[1].clone();
    assert_ne!(first, second);
    assert!(sim.principal(&second).is_some());
    // Deleting the identity / VM deletes the principal.
    assert!(sim.delete_user_assigned_identity(&uai("uai-1")));
    assert!(sim.principal(pid).is_none());
    assert!(sim.delete_resource(&vm("vm-1")));
    assert!(sim.principal(&second).is_none());
}

#[tokio::test]
async fn out_of_band_assignments() {
    let sim = authz_sim(SimConfig::default()).await;
    let v = sim
        .create_role_assignment(&rg(), Some(RA1), READER, USER)
        .expect("created");
    assert_eq!(v["properties"]["principalType"], json!("User"));
    assert!(
        sim.create_role_assignment(&rg(), Some(RA2), READER, USER)
            .is_err()
    );
    assert!(sim.delete_role_assignment(RA1));
    assert!(!sim.delete_role_assignment(RA1));
}
