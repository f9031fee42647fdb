//! User-assigned identity resources, stale entries, out-of-band writers, seed parsing.

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::{SimError, WorldSeed};

const MSI_V: &str = "2018-11-30";

#[tokio::test]
async fn uai_get_put_delete() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = c.get(&uai("uai-1"), MSI_V).await;
    assert_eq!(r.status, 200);
    let p = r.body["properties"]["principalId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let cl = r.body["properties"]["clientId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(is_uuid(&p) && is_uuid(&cl) && p != cl);
    assert_eq!(
        r.body,
        json!({
            "id": uai_lower_rg("uai-1"),
            "name": "uai-1",
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "location": "westeurope",
            "properties": {"tenantId": TENANT, "principalId": p, "clientId": cl}
        })
    );

    let new = uai("uai-new");
    let r = c
        .put(&new, MSI_V, json!({"location":"eastus","tags":{"k":"v"}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.body["tags"], json!({"k":"v"}));
    assert_eq!(r.body["location"], "eastus");
    let first = r.body["properties"].clone();
    let r = c
        .put(&new, MSI_V, json!({"location":"eastus","tags":{"k":"w"}}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["properties"], first, "an update keeps the ids");

    assert_eq!(c.delete(&new, MSI_V).await.status, 200);
    assert_eq!(c.delete(&new, MSI_V).await.status, 204);
    let r = c.get(&new, MSI_V).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            "ResourceNotFound",
            "The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/uai-new' under resource group 'rg-apps' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        )
    );
    // 2015-08-31-preview is published (and was accepted in 2018); 2015-08-31 is not.
    assert_eq!(c.get(&uai("uai-1"), "2015-08-31-preview").await.status, 200);
    let r = c.get(&uai("uai-1"), "2015-08-31").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "NoRegisteredProviderFound");
}

#[tokio::test]
async fn stale_entry_after_delete_and_recreate() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let id1 = uai("uai-1");
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{id1.clone():{}}}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let old = live_entry(&sim, &id1);

    assert_eq!(c.delete(&id1, MSI_V).await.status, 200);
    let stale = json!({"type":"UserAssigned","userAssignedIdentities":{id1.clone():{"principalId":"","clientId":""}}});
    assert_eq!(c.get(&vm("vm-1"), V2018).await.body["identity"], stale);

    let r = c.put(&id1, MSI_V, json!({"location":"westeurope"})).await;
    assert_eq!(r.status, 201);
    let new = live_entry(&sim, &id1);
    assert_ne!(old, new, "recreated identity has new principalId/clientId");
    assert_eq!(c.get(&vm("vm-1"), V2018).await.body["identity"], stale);

    // Listing it with {} again keeps the stale entry; remove + add re-attaches.
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{id1.clone():{}}}}),
        )
        .await;
    assert_eq!(r.body["identity"], stale);
    c.patch(&vm("vm-1"), V2018, json!({"identity":{"type":"None"}}))
        .await;
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{id1.clone():{}}}}),
        )
        .await;
    // Re-added: `{}` in the PATCH answer (as for any newly added identity), bound to the
    // new principal in the GET.
    assert_eq!(
        r.body["identity"],
        json!({"type":"UserAssigned","userAssignedIdentities":{id1.clone(): {}}})
    );
    assert_eq!(
        c.get(&vm("vm-1"), V2018).await.body["identity"],
        json!({"type":"UserAssigned","userAssignedIdentities":{id1.clone(): new}})
    );
}

#[tokio::test]
async fn out_of_band_writers() {
    let sim = sim().await;
    let id = vm("vm-2");
    sim.set_identity(
        &id,
        json!({"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{uai("uai-2"):{}}}),
    )
    .expect("set");
    let ident = sim.identity_of(&id).expect("exists");
    let p = ident["principalId"].as_str().unwrap_or("").to_string();
    assert!(is_uuid(&p));
    assert_eq!(
        ident,
        json!({"principalId": p, "tenantId": TENANT, "type": "SystemAssigned, UserAssigned",
               "userAssignedIdentities": {uai("uai-2"): live_entry(&sim, &uai("uai-2"))}})
    );
    // Array form, forced principal, a UAI that does not exist (stale).
    sim.set_identity(
        &id,
        json!({"type":"SystemAssigned, UserAssigned","principalId":"11111111-1111-1111-1111-111111111111",
               "userAssignedIdentities":[uai("ghost")]}),
    )
    .expect("set");
    assert_eq!(
        sim.identity_of(&id),
        Some(
            json!({"principalId":"11111111-1111-1111-1111-111111111111","tenantId":TENANT,
                    "type":"SystemAssigned, UserAssigned",
                    "userAssignedIdentities":{uai("ghost"):{"principalId":"","clientId":""}}})
        )
    );
    assert_eq!(
        sim.system_principal_history(&id),
        vec![p, "11111111-1111-1111-1111-111111111111".to_string()]
    );
    // Same validation as ARM for shapes.
    let err = sim
        .set_identity(&id, json!({"type":"UserAssigned"}))
        .expect_err("empty UserAssigned refused");
    assert!(matches!(err, SimError::Identity { .. }), "{err}");
    assert!(matches!(
        sim.set_identity(&vm("nope"), json!({"type":"None"})),
        Err(SimError::NotFound(_))
    ));

    let created = sim
        .create_user_assigned_identity(&uai("fresh"))
        .expect("created");
    assert_eq!(created["name"], "fresh");
    assert!(sim.delete_resource(&uai("fresh")));
    assert!(sim.delete_resource(&id));
    assert!(!sim.delete_resource(&id));
    assert_eq!(sim.identity_of(&id), None);
    let c = Client::new(&sim);
    assert_eq!(c.get(&id, V2018).await.status, 404);
    assert!(sim.create_user_assigned_identity("not-an-id").is_err());
}

#[tokio::test]
async fn seeded_identities_show_on_get() {
    let yaml = format!(
        r#"
userAssignedIdentities:
  - id: {u1}
    principalId: aaaaaaaa-0000-0000-0000-000000000001
    clientId: cccccccc-0000-0000-0000-000000000001
virtualMachines:
  - id: {vm1}
    identity:
      type: systemassigned,userassigned
      principalId: 99999999-0000-0000-0000-000000000009
      userAssignedIdentities: [ "{u1lower}" ]
virtualMachineScaleSets:
  - id: {ss}
    tags: {{ env: prod }}
    identity:
      type: UserAssigned
      userAssignedIdentities:
        {u1}: {{}}
"#,
        u1 = uai("uai-1"),
        u1lower = uai("uai-1").to_lowercase(),
        vm1 = vm("vm-1"),
        ss = vmss("vmss-1"),
    );
    let seed = WorldSeed::from_yaml_str(&yaml).expect("valid");
    let sim = sim_with(vmidentity_simulator::SimConfig {
        seed,
        ..Default::default()
    })
    .await;
    let c = Client::new(&sim);
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(
        r.body["identity"],
        json!({"principalId":"99999999-0000-0000-0000-000000000009",
               "tenantId": vmidentity_simulator::DEFAULT_TENANT_ID,
               "type":"SystemAssigned, UserAssigned",
               "userAssignedIdentities":{uai("uai-1").to_lowercase():{
                   "principalId":"aaaaaaaa-0000-0000-0000-000000000001",
                   "clientId":"cccccccc-0000-0000-0000-000000000001"}}})
    );
    assert_eq!(r.body["location"], "westeurope");
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    let r = c.get(&vmss("vmss-1"), V2018).await;
    assert_eq!(r.body["tags"], json!({"env":"prod"}));
    assert_eq!(r.body["identity"]["type"], "UserAssigned");
    assert_eq!(
        sim.system_principal_history(&vm("vm-1")),
        vec!["99999999-0000-0000-0000-000000000009".to_string()]
    );
}

fn seed_err(yaml: &str) -> String {
    match WorldSeed::from_yaml_str(yaml) {
        Ok(_) => panic!("seed should be refused:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn seed_errors() {
    // Unknown field.
    let e = seed_err("tenantId: x\nvirtualMachine: []\n");
    assert!(e.contains("unknown field `virtualMachine`"), "{e}");
    let e = seed_err(&format!(
        "virtualMachines:\n  - id: {}\n    size: big\n",
        vm("a")
    ));
    assert!(e.contains("unknown field `size`"), "{e}");
    // Wrong type of id.
    let e = seed_err(&format!("virtualMachines:\n  - id: {}\n", vmss("a")));
    assert!(e.contains("virtualMachines[0]"), "{e}");
    assert!(e.starts_with("invalid resource id"), "{e}");
    let e = seed_err("userAssignedIdentities:\n  - id: uai-web\n");
    assert!(e.contains("not a fully qualified resource id"), "{e}");
    // Undeclared identity.
    let e = seed_err(&format!(
        "virtualMachines:\n  - id: {}\n    identity:\n      type: UserAssigned\n      userAssignedIdentities: [\"{}\"]\n",
        vm("a"),
        uai("ghost")
    ));
    assert!(
        e.contains("not declared under userAssignedIdentities"),
        "{e}"
    );
    // Duplicate (two spellings).
    let e = seed_err(&format!(
        "userAssignedIdentities:\n  - id: {}\n  - id: {}\n",
        uai("x"),
        uai("X")
    ));
    assert!(e.contains("duplicate"), "{e}");
    // Bad identity type.
    let e = seed_err(&format!(
        "virtualMachines:\n  - id: {}\n    identity:\n      type: Everything\n",
        vm("a")
    ));
    assert!(e.contains("virtualMachines[0].identity"), "{e}");
    // UserAssigned with nothing.
    let e = seed_err(&format!(
        "virtualMachines:\n  - id: {}\n    identity:\n      type: UserAssigned\n",
        vm("a")
    ));
    assert!(e.contains("must not be null or empty"), "{e}");
    // YAML syntax.
    let e = seed_err("virtualMachines: [\n");
    assert!(e.starts_with("invalid world seed YAML"), "{e}");
    // Empty is an empty world.
    assert_eq!(
        WorldSeed::from_yaml_str("").ok(),
        Some(WorldSeed::default())
    );
}

#[tokio::test]
async fn explicit_resource_group_allows_put_create() {
    let yaml = format!(
        "resourceGroups:\n  - id: /subscriptions/{SUB}/resourceGroups/rg-empty\n    location: northeurope\n"
    );
    let sim = sim_with(vmidentity_simulator::SimConfig {
        seed: WorldSeed::from_yaml_str(&yaml).expect("valid"),
        ..Default::default()
    })
    .await;
    let c = Client::new(&sim);
    let id = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-empty/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u"
    );
    let r = c.put(&id, MSI_V, json!({"location":"northeurope"})).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let vm_id = format!(
        "/subscriptions/{SUB}/resourceGroups/rg-empty/providers/Microsoft.Compute/virtualMachines/v"
    );
    let r = c
        .put(
            &vm_id,
            V2018,
            json!({"location":"northeurope","identity":{"type":"UserAssigned","userAssignedIdentities":{id.clone():{}}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let url = r.header("azure-asyncoperation").unwrap_or_default();
    assert!(url.contains("/locations/northeurope/operations/"), "{url}");
    let _ = Value::Null;
    sim.shutdown().await;
}

#[test]
fn demo_world_file_parses() {
    // Contract with the `vmidentity demo` world (examples/demo/world.yaml).
    let text = include_str!("../../examples/demo/world.yaml");
    let seed = WorldSeed::from_yaml_str(text).expect("demo world parses");
    assert_eq!(seed.virtual_machines.len(), 6);
    assert_eq!(seed.groups.len(), 1);
    assert_eq!(seed.virtual_machine_scale_sets.len(), 1);
}
