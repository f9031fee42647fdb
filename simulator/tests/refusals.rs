//! Every refusal: exact status and body, and that nothing was applied.

mod common;

use common::*;
use serde_json::{Value, json};
use vmidentity_simulator::COMPUTE_API_VERSIONS;

async fn assert_unchanged(c: &Client, id: &str, before: &Value) {
    let r = c.get(id, V2018).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.get("identity").cloned().unwrap_or(Value::Null),
        *before
    );
}

/// vm-1 with system + uai-1.
async fn prepared() -> (vmidentity_simulator::SimHandle, Client, Value) {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{uai("uai-1"):{}}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let before = c.get(&vm("vm-1"), V2018).await.body["identity"].clone();
    (sim, c, before)
}

#[tokio::test]
async fn unknown_and_missing_api_version() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = c.get(&vm("vm-1"), "2099-01-01").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "NoRegisteredProviderFound",
            &format!(
                "No registered resource provider found for location 'westeurope' and API version '2099-01-01' for type 'virtualMachines'. The supported api-versions are '{}'. The supported locations are 'eastus, eastus2, westus, centralus, northcentralus, southcentralus, northeurope, westeurope, eastasia, southeastasia, japaneast, japanwest, australiaeast, uksouth, ukwest, francecentral, germanywestcentral, swedencentral, westus2, westus3'.",
                COMPUTE_API_VERSIONS.join(", ")
            )
        )
    );
    let r = c.get(&vm("vm-1"), "latest").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "InvalidApiVersionParameter",
            &format!(
                "The api-version 'latest' is invalid. The supported versions are '{}'.",
                COMPUTE_API_VERSIONS.join(",")
            )
        )
    );
    let r = c.send("GET", &vm("vm-1"), None).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests."
        )
    );
    // A PATCH with an unknown version applies nothing.
    let r = c
        .patch(
            &vm("vm-1"),
            "2099-01-01",
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_unchanged(&c, &vm("vm-1"), &Value::Null).await;
}

#[tokio::test]
async fn missing_resource_and_group() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let r = c.get(&vm("x"), V2018).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            "ResourceNotFound",
            "The Resource 'Microsoft.Compute/virtualMachines/x' under resource group 'rg-apps' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        )
    );
    let r = c
        .patch(&vmss("x"), V2018, json!({"identity":{"type":"None"}}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            "ResourceNotFound",
            "The Resource 'Microsoft.Compute/virtualMachineScaleSets/x' under resource group 'rg-apps' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        )
    );
    let r = c
        .get(
            &format!("/subscriptions/{SUB}/resourceGroups/rg-missing/providers/Microsoft.Compute/virtualMachines/vm-1"),
            V2018,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            "ResourceGroupNotFound",
            "Resource group 'rg-missing' could not be found."
        )
    );
}

#[tokio::test]
async fn user_assigned_identity_that_does_not_exist_applies_nothing() {
    let (sim, c, before) = prepared().await;
    let ghost = uai("ghost");
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-2"):{}, ghost.clone():{}}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    let msg = format!(
        "Identity operation for resource '{}' failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: '{{\"error\":{{\"code\":\"BadRequest\",\"message\":\"Resource '{ghost}' was not found.\"}}}}'.'.",
        vm("vm-1")
    );
    assert_eq!(r.body, error_body("FailedIdentityOperation", &msg));
    assert_unchanged(&c, &vm("vm-1"), &before).await;
    // The refused write is still counted as a write.
    assert_eq!(sim.writes_for(&vm("vm-1")), 2);

    // Same at 2017-12-01.
    let r = c
        .patch(
            &vm("vm-1"),
            V2017,
            json!({"identity":{"type":"UserAssigned","identityIds":[ghost.clone()]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body, error_body("FailedIdentityOperation", &msg));
    assert_unchanged(&c, &vm("vm-1"), &before).await;
}

#[tokio::test]
async fn same_identity_in_two_spellings_in_one_request() {
    let (_sim, c, before) = prepared().await;
    let a = uai("uai-2");
    let b = uai_lower_rg("uai-2");
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{a.clone():{}, b.clone():{}}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body_target(
            "InvalidParameter",
            &format!(
                "ResourceIdentity identityId '{b}' cannot be duplicated in the provided identityIds list."
            ),
            "resourceIdentity.identityIds"
        )
    );
    assert_unchanged(&c, &vm("vm-1"), &before).await;
    let r = c
        .patch(
            &vm("vm-1"),
            V2017,
            json!({"identity":{"type":"UserAssigned","identityIds":[a.clone(), b.clone()]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "InvalidParameter");
    assert_unchanged(&c, &vm("vm-1"), &before).await;
}

#[tokio::test]
async fn user_assigned_identities_with_a_type_without_user_assigned() {
    let (_sim, c, before) = prepared().await;
    for (ty, v, body) in [
        (
            "SystemAssigned",
            V2018,
            json!({"identity":{"type":"SystemAssigned","userAssignedIdentities":{uai("uai-1"):{}}}}),
        ),
        (
            "SystemAssigned",
            V2018,
            json!({"identity":{"type":"SystemAssigned","userAssignedIdentities":{uai("uai-1"):null}}}),
        ),
        (
            "None",
            V2018,
            json!({"identity":{"type":"None","userAssignedIdentities":{uai("uai-1"):{}}}}),
        ),
        (
            "SystemAssigned",
            V2017,
            json!({"identity":{"type":"SystemAssigned","identityIds":[uai("uai-1")]}}),
        ),
    ] {
        let r = c.patch(&vm("vm-1"), v, body).await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            error_body_target(
                "InvalidParameter",
                &format!(
                    "ResourceIdentity identityIds should not be provided if the type is \"{ty}\"."
                ),
                "resourceIdentity.identityIds"
            )
        );
        assert_unchanged(&c, &vm("vm-1"), &before).await;
    }
}

#[tokio::test]
async fn user_assigned_type_that_would_leave_no_identity() {
    let (_sim, c, before) = prepared().await;
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned, UserAssigned","userAssignedIdentities":{uai("uai-1"):null}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body_target(
            "InvalidParameter",
            "The identity ids must not be null or empty for 'SystemAssigned, UserAssigned' identity type.",
            "identity.userAssignedIdentities"
        )
    );
    assert_unchanged(&c, &vm("vm-1"), &before).await;
    // A resource without user-assigned identities, type UserAssigned without a dictionary.
    let r = c
        .patch(
            &vm("vm-2"),
            V2018,
            json!({"identity":{"type":"UserAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["error"]["message"],
        "The identity ids must not be null or empty for 'UserAssigned' identity type."
    );
    let r = c
        .patch(
            &vm("vm-2"),
            V2017,
            json!({"identity":{"type":"UserAssigned","identityIds":[]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body_target(
            "InvalidParameter",
            "The identity ids must not be null or empty for 'UserAssigned' identity type.",
            "identity.identityIds"
        )
    );
}

#[tokio::test]
async fn malformed_identity_ids() {
    let (_sim, c, before) = prepared().await;
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{"uai-1":{}}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "LinkedInvalidPropertyId",
            "Property id 'uai-1' at path 'identity.userAssignedIdentities' is invalid. Expect fully qualified resource Id that start with '/subscriptions/{subscriptionId}' or '/providers/{resourceProviderNamespace}/'."
        )
    );
    let wrong_type = vm("vm-2");
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{wrong_type.clone():{}}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body_target(
            "InvalidParameter",
            &format!(
                "The identity id '{wrong_type}' is not a valid user assigned identity resource id. Expected '/subscriptions/{{subscriptionId}}/resourceGroups/{{resourceGroupName}}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{{identityName}}'."
            ),
            "identity.userAssignedIdentities"
        )
    );
    let r = c
        .patch(
            &vm("vm-1"),
            V2017,
            json!({"identity":{"type":"UserAssigned","identityIds":["uai-1"]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "LinkedInvalidPropertyId");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at path 'identity.identityIds'"))
    );
    // A dictionary value that is neither {} nor null.
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-2"):"yes"}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "InvalidIdentityValues");
    // An unknown identity type.
    let r = c
        .patch(&vm("vm-1"), V2018, json!({"identity":{"type":"Both"}}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body_target(
            "InvalidParameter",
            "The value 'Both' of parameter 'identity.type' is invalid. Allowed values are 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned', 'None'.",
            "identity.type"
        )
    );
    assert_unchanged(&c, &vm("vm-1"), &before).await;
}

#[tokio::test]
async fn wrong_shape_for_the_api_version() {
    let (_sim, c, before) = prepared().await;
    let r = c
        .patch(
            &vm("vm-1"),
            V2017,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":{uai("uai-2"):{}}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'Could not find member 'userAssignedIdentities' on object of type 'VirtualMachineIdentity'. Path 'identity.userAssignedIdentities''."
        )
    );
    let r = c
        .patch(
            &vmss("vmss-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","identityIds":[uai("uai-2")]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'Could not find member 'identityIds' on object of type 'VirtualMachineScaleSetIdentity'. Path 'identity.identityIds''."
        )
    );
    assert_unchanged(&c, &vm("vm-1"), &before).await;
    // Not JSON at all.
    let r = c
        .http
        .patch(format!("{}{}?api-version={V2018}", c.base, vm("vm-1")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "InvalidRequestContent");
}

#[tokio::test]
async fn more_than_150_identities_in_one_request() {
    let sim = sim().await;
    let c = Client::new(&sim);
    let mut dict = serde_json::Map::new();
    for i in 0..151 {
        dict.insert(uai(&format!("bulk-{i}")), json!({}));
    }
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":dict.clone()}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        error_body(
            "BadRequest",
            "User Assigned Identities Number '151' Assign exceed limit '150' in one request."
        )
    );
    assert_unchanged(&c, &vm("vm-1"), &Value::Null).await;
    // 150 existing identities are accepted.
    let mut dict = serde_json::Map::new();
    for i in 0..150 {
        let id = uai(&format!("bulk-{i}"));
        sim.create_user_assigned_identity(&id).expect("created");
        dict.insert(id, json!({}));
    }
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"UserAssigned","userAssignedIdentities":dict}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.body["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.len()),
        Some(150)
    );
}

#[tokio::test]
async fn authentication() {
    let sim = sim().await;
    let mut c = Client::new(&sim);
    c.token = None;
    let r = c.get(&vm("vm-1"), V2018).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        error_body(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing."
        )
    );
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer authorization_uri="),
        "{challenge}"
    );

    c.token = Some("wrong".into());
    let r = c
        .patch(
            &vm("vm-1"),
            V2018,
            json!({"identity":{"type":"SystemAssigned"}}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        error_body("InvalidAuthenticationToken", "The access token is invalid.")
    );
    assert!(r.header("www-authenticate").is_some());

    let r = c
        .http
        .get(format!("{}{}?api-version={V2018}", c.base, vm("vm-1")))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body,
        error_body(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format."
        )
    );
    // Nothing applied by the refused PATCH.
    assert_eq!(sim.identity_of(&vm("vm-1")), Some(json!({"type":"None"})));

    // Other tokens can be configured.
    let sim2 = sim_with(vmidentity_simulator::SimConfig {
        seed: seed(),
        accepted_tokens: vec!["t1".into(), "t2".into()],
        ..Default::default()
    })
    .await;
    let mut c2 = Client::new(&sim2);
    c2.token = Some("t2".into());
    assert_eq!(c2.get(&vm("vm-1"), V2018).await.status, 200);
    c2.token = Some(TOKEN.into());
    assert_eq!(c2.get(&vm("vm-1"), V2018).await.status, 401);
}
