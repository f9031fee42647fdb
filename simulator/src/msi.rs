//! `Microsoft.ManagedIdentity/userAssignedIdentities`: GET, PUT (create/update), DELETE.
//! Body shape per `msi/2018-11-30/ManagedIdentity.json` and its examples.

use axum::http::StatusCode;
use serde_json::Value;

use crate::errors::ArmError;
use crate::ids::ResourceId;
use crate::server::{ArmResponse, api_version_error};
use crate::state::State;

/// Microsoft.ManagedIdentity api-versions served: those the provider publishes (the one
/// list, [`vmidentity_arm_versions::MANAGED_IDENTITY`], with its sources).
pub const MSI_API_VERSIONS: &[&str] = vmidentity_arm_versions::MANAGED_IDENTITY;

pub(crate) fn check_api_version(
    api_version: Option<&str>,
    location: &str,
) -> Result<String, ArmError> {
    match api_version {
        Some(v) if MSI_API_VERSIONS.iter().any(|k| k.eq_ignore_ascii_case(v)) => Ok(v.to_string()),
        other => Err(api_version_error(
            other,
            MSI_API_VERSIONS,
            "userAssignedIdentities",
            location,
        )),
    }
}

/// The first Microsoft.ManagedIdentity api-version whose bodies carry
/// `properties.isolationScope` (`ManagedIdentity/stable/2024-11-30/ManagedIdentity.json`;
/// observed as `"isolationScope": "None"` in a 2024-11-30 PUT answer of the Azure CLI's
/// recording `test_vm_explicit_msi.yaml`, Azure/azure-cli commit 0088c878b2ee9514b99eda3da2912257494cb3ee).
const ISOLATION_SCOPE_API_VERSION: &str = "2024-11-30";

/// A user-assigned identity as the api-version shows it.
fn render(st: &State, u: &crate::world::Uai, api_version: &str) -> Value {
    let mut v = st.world.render_uai(u);
    if api_version.to_ascii_lowercase().as_str() < ISOLATION_SCOPE_API_VERSION {
        return v;
    }
    // An identity without tags shows `"tags": {}` (the same recording, identity `id2`).
    if let Some(m) = v.as_object_mut()
        && !m.contains_key("tags")
    {
        m.insert("tags".into(), Value::Object(serde_json::Map::new()));
    }
    if let Some(p) = v.get_mut("properties").and_then(Value::as_object_mut) {
        let mut props = serde_json::Map::new();
        props.insert("isolationScope".into(), Value::String("None".into()));
        props.extend(std::mem::take(p));
        *p = props;
    }
    v
}

pub(crate) fn get(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
) -> Result<ArmResponse, ArmError> {
    if !st.world.group_exists(id) {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    }
    let u = st.world.uais.get(&id.key()).ok_or_else(|| {
        ArmError::resource_not_found(id.kind.arm_type(), &id.name, &id.resource_group)
    })?;
    Ok(ArmResponse::json(
        StatusCode::OK,
        render(st, u, api_version),
    ))
}

/// Create or update. The answer carries a `Location` header naming the identity (its id as
/// Microsoft.ManagedIdentity spells it, `resourcegroups` lower-case), as recorded for
/// 2024-11-30 PUTs (201) in the Azure CLI's `test_vm_explicit_msi.yaml` (Azure/azure-cli
/// commit 0088c878b2ee9514b99eda3da2912257494cb3ee).
pub(crate) fn put(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
    body: Option<&Value>,
) -> Result<ArmResponse, ArmError> {
    let Some(group) = st.world.groups.get(&id.group_key()).cloned() else {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    };
    let obj = match body {
        Some(Value::Object(m)) => m,
        None => return Err(ArmError::invalid_content("The request content was empty")),
        Some(_) => {
            return Err(ArmError::invalid_content(
                "Error converting value to type 'Identity'. Path ''",
            ));
        }
    };
    let location = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string);
    let tags = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("tags"))
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_null());
    let exists = st.world.uais.contains_key(&id.key());
    let location = match (location, exists) {
        (_, true) => String::new(),
        (Some(l), false) if !l.trim().is_empty() => l,
        _ => {
            return Err(ArmError::bad_request(
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
    };
    let canonical = ResourceId {
        subscription: group.subscription.clone(),
        resource_group: group.name.clone(),
        kind: id.kind,
        name: id.name.clone(),
    };
    let created = st.world.put_uai(&canonical, &location, tags, None, None);
    let u = st.world.uais.get(&id.key()).ok_or_else(|| {
        ArmError::resource_not_found(id.kind.arm_type(), &id.name, &id.resource_group)
    })?;
    let location = u.id.msi_spelling();
    Ok(ArmResponse::json(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        render(st, u, api_version),
    )
    .header(axum::http::HeaderName::from_static("location"), &location))
}

pub(crate) fn delete(st: &mut State, id: &ResourceId) -> Result<ArmResponse, ArmError> {
    if !st.world.group_exists(id) {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    }
    // 200 when deleted, 204 when it did not exist (msi/2018-11-30/examples/IdentityDelete.json).
    if st.world.remove_uai(&id.key()) {
        Ok(ArmResponse::empty(StatusCode::OK))
    } else {
        Ok(ArmResponse::empty(StatusCode::NO_CONTENT))
    }
}
