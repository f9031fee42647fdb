//! `Microsoft.ManagedIdentity/userAssignedIdentities`: GET, PUT (create/update), DELETE.
//! Body shape per `msi/2018-11-30/ManagedIdentity.json` and its examples.

use axum::http::StatusCode;
use serde_json::Value;

use crate::errors::ArmError;
use crate::ids::ResourceId;
use crate::server::{ArmResponse, api_version_error};
use crate::state::State;

/// Microsoft.ManagedIdentity api-versions served (2018-11-30 and later).
pub const MSI_API_VERSIONS: &[&str] = &[
    "2018-11-30",
    "2021-09-30-preview",
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
];

pub(crate) fn check_api_version(api_version: Option<&str>, location: &str) -> Result<(), ArmError> {
    match api_version {
        Some(v) if MSI_API_VERSIONS.iter().any(|k| k.eq_ignore_ascii_case(v)) => Ok(()),
        other => Err(api_version_error(
            other,
            MSI_API_VERSIONS,
            "userAssignedIdentities",
            location,
        )),
    }
}

pub(crate) fn get(st: &mut State, id: &ResourceId) -> Result<ArmResponse, ArmError> {
    if !st.world.group_exists(id) {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    }
    let u = st.world.uais.get(&id.key()).ok_or_else(|| {
        ArmError::resource_not_found(id.kind.arm_type(), &id.name, &id.resource_group)
    })?;
    Ok(ArmResponse::json(StatusCode::OK, st.world.render_uai(u)))
}

pub(crate) fn put(
    st: &mut State,
    id: &ResourceId,
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
    Ok(ArmResponse::json(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        st.world.render_uai(u),
    ))
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
