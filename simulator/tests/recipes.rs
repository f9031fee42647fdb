//! The documented REST recipes ("Configure managed identities on Azure virtual machines
//! (VMs)", REST tab,
//! <https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-configure-managed-identities?pivots=qs-configure-rest-vm>,
//! and its scale-set counterpart,
//! <https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-configure-managed-identities-scale-sets?pivots=qs-configure-rest-vmss>),
//! for a VM and a VMSS, at api-versions 2018-06-01 (dictionary) and 2017-12-01 (array).

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{LroMode, SimConfig, SimHandle};

async fn sync_sim() -> SimHandle {
    sim_with(SimConfig {
        seed: seed(),
        lro: LroMode::Sync,
        ..SimConfig::default()
    })
    .await
}

fn system_principal(identity: &Value) -> String {
    let p = identity["principalId"]
        .as_str()
        .expect("principalId")
        .to_string();
    assert!(is_uuid(&p), "principalId {p} is a uuid");
    p
}

async fn patch_ok(c: &Client, id: &str, v: &str, body: Value) -> Value {
    let r = c.patch(id, v, body.clone()).await;
    assert_eq!(r.status, 200, "PATCH {body} -> {}", r.raw);
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    r.body
}

async fn identity_at(c: &Client, id: &str, v: &str) -> Value {
    let r = c.get(id, v).await;
    assert_eq!(r.status, 200, "GET -> {}", r.raw);
    r.body.get("identity").cloned().unwrap_or(Value::Null)
}

async fn recipes_2018(id: &str) {
    let sim = sync_sim().await;
    let c = Client::new(&sim);
    let id1 = uai_lower_rg("uai-1"); // spelled as in the docs
    let id2 = uai_lower_rg("uai-2");

    // Enable the system identity: {"identity":{"type":"SystemAssigned"}}
    patch_ok(&c, id, V2018, json!({"identity":{"type":"SystemAssigned"}})).await;
    let ident = identity_at(&c, id, V2018).await;
    let p1 = system_principal(&ident);
    assert_eq!(
        ident,
        json!({"principalId": p1, "tenantId": TENANT, "type": "SystemAssigned"})
    );

    // Add ID1 and ID2 while keeping the system identity.
    patch_ok(
        &c,
        id,
        V2018,
        json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{id1.clone():{}, id2.clone():{}}}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2018).await,
        json!({
            "principalId": p1, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
            "userAssignedIdentities": {
                id1.clone(): live_entry(&sim, &id1),
                id2.clone(): live_entry(&sim, &id2),
            }
        })
    );

    // Remove ID2 with null; ID1 is not listed and is kept.
    patch_ok(
        &c,
        id,
        V2018,
        json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{id2.clone():null}}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2018).await,
        json!({
            "principalId": p1, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
            "userAssignedIdentities": { id1.clone(): live_entry(&sim, &id1) }
        })
    );

    // Disable the system identity keeping the user-assigned ones.
    patch_ok(
        &c,
        id,
        V2018,
        json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{id1.clone():{}}}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2018).await,
        json!({"type": "UserAssigned", "userAssignedIdentities": { id1.clone(): live_entry(&sim, &id1) }})
    );

    // Re-enable the system identity the way `az vm identity assign` does (type only):
    // a fresh principal, user-assigned entries kept by the merge.
    patch_ok(
        &c,
        id,
        V2018,
        json!({"identity":{"type":"SystemAssigned,UserAssigned"}}),
    )
    .await;
    let ident = identity_at(&c, id, V2018).await;
    let p2 = system_principal(&ident);
    assert_ne!(p1, p2, "disable + enable gives a new principal");
    assert_eq!(
        ident,
        json!({
            "principalId": p2, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
            "userAssignedIdentities": { id1.clone(): live_entry(&sim, &id1) }
        })
    );

    // Drop all user-assigned identities, keep the system one (the type change that removes the last one).
    patch_ok(&c, id, V2018, json!({"identity":{"type":"SystemAssigned"}})).await;
    assert_eq!(
        identity_at(&c, id, V2018).await,
        json!({"principalId": p2, "tenantId": TENANT, "type": "SystemAssigned"})
    );

    // Remove everything.
    let body = patch_ok(&c, id, V2018, json!({"identity":{"type":"None"}})).await;
    assert!(
        body.get("identity").is_none(),
        "PATCH response omits identity"
    );
    assert_eq!(identity_at(&c, id, V2018).await, Value::Null);
    assert_eq!(sim.identity_of(id), Some(json!({"type":"None"})));
    assert_eq!(sim.system_principal_history(id), vec![p1, p2]);

    // First user-assigned identity on a resource without identity, then remove the last
    // one by changing the type to None.
    patch_ok(
        &c,
        id,
        V2018,
        json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{id1.clone():{}}}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2018).await,
        json!({"type": "UserAssigned", "userAssignedIdentities": { id1.clone(): live_entry(&sim, &id1) }})
    );
    // The same state at 2017-12-01 reads as an array.
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"type": "UserAssigned", "identityIds": [id1.clone()]})
    );
    patch_ok(&c, id, V2018, json!({"identity":{"type":"None"}})).await;
    assert_eq!(identity_at(&c, id, V2018).await, Value::Null);
}

async fn recipes_2017(id: &str) {
    let sim = sync_sim().await;
    let c = Client::new(&sim);
    let id1 = uai_lower_rg("uai-1");
    let id2 = uai_lower_rg("uai-2");

    patch_ok(&c, id, V2017, json!({"identity":{"type":"SystemAssigned"}})).await;
    let ident = identity_at(&c, id, V2017).await;
    let p1 = system_principal(&ident);
    assert_eq!(
        ident,
        json!({"principalId": p1, "tenantId": TENANT, "type": "SystemAssigned"})
    );

    // Add ID1 + ID2 keeping system: the array lists everything to keep.
    patch_ok(
        &c,
        id,
        V2017,
        json!({"identity":{"type":"SystemAssigned, UserAssigned","identityIds":[id1.clone(), id2.clone()]}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"principalId": p1, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
               "identityIds": [id1.clone(), id2.clone()]})
    );
    // ... and the 2018-06-01 view of the same resource.
    assert_eq!(
        identity_at(&c, id, V2018).await,
        json!({"principalId": p1, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
               "userAssignedIdentities": { id1.clone(): live_entry(&sim, &id1), id2.clone(): live_entry(&sim, &id2) }})
    );

    // Remove ID2: send only the ones to keep.
    patch_ok(
        &c,
        id,
        V2017,
        json!({"identity":{"type":"SystemAssigned, UserAssigned","identityIds":[id1.clone()]}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"principalId": p1, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
               "identityIds": [id1.clone()]})
    );

    // Disable system keeping the user-assigned ones.
    patch_ok(
        &c,
        id,
        V2017,
        json!({"identity":{"type":"UserAssigned","identityIds":[id1.clone()]}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"type": "UserAssigned", "identityIds": [id1.clone()]})
    );

    // Re-enable system with the doc's "SystemAssigned,UserAssigned" spelling: new principal.
    patch_ok(
        &c,
        id,
        V2017,
        json!({"identity":{"type":"SystemAssigned,UserAssigned","identityIds":[id1.clone(), id2.clone()]}}),
    )
    .await;
    let ident = identity_at(&c, id, V2017).await;
    let p2 = system_principal(&ident);
    assert_ne!(p1, p2);

    // Remove all user-assigned identities (type change), keep system.
    patch_ok(&c, id, V2017, json!({"identity":{"type":"SystemAssigned"}})).await;
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"principalId": p2, "tenantId": TENANT, "type": "SystemAssigned"})
    );

    // Remove everything.
    patch_ok(&c, id, V2017, json!({"identity":{"type":"None"}})).await;
    assert_eq!(identity_at(&c, id, V2017).await, Value::Null);

    // First user-assigned identity, with the doc's lower-case "userAssigned".
    patch_ok(
        &c,
        id,
        V2017,
        json!({"identity":{"type":"userAssigned","identityIds":[id1.clone()]}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"type": "UserAssigned", "identityIds": [id1.clone()]})
    );
    // A 2017-12-01 PATCH without identityIds keeps the set (it replaces only when present).
    patch_ok(&c, id, V2017, json!({"tags":{"a":"b"}})).await;
    assert_eq!(
        identity_at(&c, id, V2017).await,
        json!({"type": "UserAssigned", "identityIds": [id1.clone()]})
    );
    assert_eq!(sim.system_principal_history(id), vec![p1, p2]);
}

#[tokio::test]
async fn vm_recipes_2018_06_01() {
    recipes_2018(&vm("vm-1")).await;
}

#[tokio::test]
async fn vmss_recipes_2018_06_01() {
    recipes_2018(&vmss("vmss-1")).await;
}

#[tokio::test]
async fn vm_recipes_2017_12_01() {
    recipes_2017(&vm("vm-1")).await;
}

#[tokio::test]
async fn vmss_recipes_2017_12_01() {
    recipes_2017(&vmss("vmss-1")).await;
}

#[tokio::test]
async fn later_api_versions_use_the_dictionary() {
    let sim = sync_sim().await;
    let c = Client::new(&sim);
    let id1 = uai("uai-1");
    for v in ["2019-07-01", "2021-03-01", "2024-11-01"] {
        let r = c
            .patch(
                &vm("vm-2"),
                v,
                json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{id1.clone():{}}}}),
            )
            .await;
        assert_eq!(r.status, 200, "{v}: {}", r.raw);
        assert_eq!(
            r.body["identity"],
            json!({"type":"UserAssigned","userAssignedIdentities":{id1.clone(): live_entry(&sim, &id1)}})
        );
    }
}

#[tokio::test]
async fn key_in_another_spelling_is_the_same_identity() {
    let sim = sync_sim().await;
    let c = Client::new(&sim);
    let stored = uai("uai-1");
    patch_ok(
        &c,
        &vm("vm-1"),
        V2018,
        json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{stored.clone():{}}}}),
    )
    .await;
    // Adding it again in lower case keeps one entry with the stored spelling.
    patch_ok(
        &c,
        &vm("vm-1"),
        V2018,
        json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{stored.to_lowercase():{}}}}),
    )
    .await;
    assert_eq!(
        identity_at(&c, &vm("vm-1"), V2018).await,
        json!({"type":"UserAssigned","userAssignedIdentities":{stored.clone(): live_entry(&sim, &stored)}})
    );
    // Removing it in upper case removes it (and type None clears the rest).
    patch_ok(
        &c,
        &vm("vm-1"),
        V2018,
        json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{stored.to_uppercase():null, uai("uai-2"):{}}}}),
    )
    .await;
    let ident = identity_at(&c, &vm("vm-1"), V2018).await;
    assert_eq!(
        ident["userAssignedIdentities"],
        json!({uai("uai-2"): live_entry(&sim, &uai("uai-2"))})
    );
}

#[tokio::test]
async fn put_creates_and_replaces_with_identity() {
    let sim = sync_sim().await;
    let c = Client::new(&sim);
    let id = vm("vm-new");
    let id1 = uai("uai-1");
    let r = c
        .put(
            &id,
            V2018,
            json!({"location":"westeurope","identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{id1.clone():{}}},
                   "properties":{"hardwareProfile":{"vmSize":"Standard_D2_v2"}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let p = system_principal(&r.body["identity"]);
    assert_eq!(r.body["name"], "vm-new");
    assert_eq!(r.body["type"], "Microsoft.Compute/virtualMachines");
    assert_eq!(r.body["id"], id);
    assert_eq!(
        r.body["properties"]["hardwareProfile"],
        json!({"vmSize":"Standard_D2_v2"})
    );
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");

    // PUT replaces: the system identity is kept (same principal), the set is replaced.
    let id2 = uai("uai-2");
    let r = c
        .put(
            &id,
            V2018,
            json!({"location":"westeurope","identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{id2.clone():{}}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.body["identity"],
        json!({"principalId": p, "tenantId": TENANT, "type":"SystemAssigned, UserAssigned",
               "userAssignedIdentities": {id2.clone(): live_entry(&sim, &id2)}})
    );
    assert!(r.body["properties"].get("hardwareProfile").is_none());

    // PUT without location on create.
    let r = c.put(&vm("vm-nolocation"), V2018, json!({})).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "LocationRequired",
            "The location property is required for this definition."
        )
    );
    // PUT into a missing resource group.
    let r = c
        .put(
            &format!("/subscriptions/{SUB}/resourceGroups/rg-nope/providers/Microsoft.Compute/virtualMachines/x"),
            V2018,
            json!({"location":"westeurope"}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            "ResourceGroupNotFound",
            "Resource group 'rg-nope' could not be found."
        )
    );
}

#[tokio::test]
async fn patch_without_identity_leaves_it_alone_and_merges_tags() {
    let sim = sync_sim().await;
    let c = Client::new(&sim);
    let id = vm("vm-1");
    patch_ok(
        &c,
        &id,
        V2018,
        json!({"identity":{"type":"SystemAssigned"}}),
    )
    .await;
    let before = identity_at(&c, &id, V2018).await;
    let body = patch_ok(&c, &id, V2018, json!({"tags":{"env":"prod"}})).await;
    assert_eq!(body["tags"], json!({"env":"prod"}));
    assert_eq!(identity_at(&c, &id, V2018).await, before);
}
