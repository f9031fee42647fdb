//! `Microsoft.Compute/virtualMachines` and `virtualMachineScaleSets`: GET, PATCH, PUT, DELETE.

use axum::http::{HeaderName, StatusCode};
use serde_json::{Map, Value};

use crate::LroMode;
use crate::errors::ArmError;
use crate::identity::{self, Mode, Shape};
use crate::ids::{ResourceId, ResourceKind};
use crate::lro;
use crate::server::{ArmResponse, api_version_error};
use crate::state::State;
use crate::world::ComputeResource;

/// Compute api-versions the simulator serves. 2017-12-01 uses `identityIds`; the rest
/// use the `userAssignedIdentities` dictionary introduced in 2018-06-01.
pub const COMPUTE_API_VERSIONS: &[&str] = &[
    "2017-12-01",
    "2018-06-01",
    "2018-10-01",
    "2019-03-01",
    "2019-07-01",
    "2019-12-01",
    "2020-06-01",
    "2020-12-01",
    "2021-03-01",
    "2021-04-01",
    "2021-07-01",
    "2021-11-01",
    "2022-03-01",
    "2022-08-01",
    "2022-11-01",
    "2023-03-01",
    "2023-07-01",
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
];

/// Read-only members of `properties` that a client may echo back; ignored on writes.
const READ_ONLY_PROPERTIES: &[&str] = &[
    "provisioningState",
    "vmId",
    "uniqueId",
    "instanceView",
    "timeCreated",
];

/// Validates the api-version; returns it and the identity shape it implies.
pub(crate) fn check_api_version(
    api_version: Option<&str>,
    location: &str,
) -> Result<(String, Shape), ArmError> {
    match api_version {
        Some(v)
            if COMPUTE_API_VERSIONS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(v)) =>
        {
            let shape = if v == "2017-12-01" {
                Shape::IdentityIds
            } else {
                Shape::Dictionary
            };
            Ok((v.to_string(), shape))
        }
        other => Err(api_version_error(
            other,
            COMPUTE_API_VERSIONS,
            "virtualMachines",
            location,
        )),
    }
}

fn find<'a>(st: &'a State, id: &ResourceId) -> Result<&'a ComputeResource, ArmError> {
    if !st.world.group_exists(id) {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    }
    st.world
        .compute
        .get(&id.key())
        .filter(|r| r.id.kind == id.kind)
        .ok_or_else(|| {
            ArmError::resource_not_found(id.kind.arm_type(), &id.name, &id.resource_group)
        })
}

fn get_ci<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn body_object(body: Option<&Value>, kind: ResourceKind) -> Result<&Map<String, Value>, ArmError> {
    match body {
        Some(Value::Object(m)) => Ok(m),
        None => Err(ArmError::invalid_content("The request content was empty")),
        Some(_) => Err(ArmError::invalid_content(format!(
            "Error converting value to type '{}'. Path ''",
            match kind {
                ResourceKind::VirtualMachineScaleSet => "VirtualMachineScaleSet",
                _ => "VirtualMachine",
            }
        ))),
    }
}

fn merge_properties(target: &mut Map<String, Value>, v: &Value) -> Result<(), ArmError> {
    match v {
        Value::Null => Ok(()),
        Value::Object(p) => {
            for (k, pv) in p {
                if READ_ONLY_PROPERTIES
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(k))
                {
                    continue;
                }
                target.insert(k.clone(), pv.clone());
            }
            Ok(())
        }
        _ => Err(ArmError::invalid_content(
            "Error converting value to type 'VirtualMachineProperties'. Path 'properties'",
        )),
    }
}

pub(crate) fn get(st: &mut State, id: &ResourceId, shape: Shape) -> Result<ArmResponse, ArmError> {
    let res = find(st, id)?;
    Ok(ArmResponse::json(
        StatusCode::OK,
        st.world.render_compute(res, shape),
    ))
}

pub(crate) fn patch(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
    shape: Shape,
    body: Option<&Value>,
) -> Result<ArmResponse, ArmError> {
    let current = find(st, id)?.clone();
    let obj = body_object(body, id.kind)?;
    let new_identity = identity::resolve(
        &st.world,
        &current,
        get_ci(obj, "identity"),
        shape,
        Mode::Patch,
    )?;
    let mut updated = current.clone();
    for (k, v) in obj {
        match k.to_ascii_lowercase().as_str() {
            "identity" | "id" | "name" | "type" | "location" => {}
            "tags" => updated.tags = if v.is_null() { None } else { Some(v.clone()) },
            "properties" => merge_properties(&mut updated.properties, v)?,
            _ => {
                updated.extra.insert(k.clone(), v.clone());
            }
        }
    }
    updated.set_identity(new_identity);
    let changed = updated != current;
    Ok(commit_write(
        st,
        api_version,
        shape,
        updated,
        changed,
        false,
    ))
}

pub(crate) fn put(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
    shape: Shape,
    body: Option<&Value>,
) -> Result<ArmResponse, ArmError> {
    let Some(group) = st.world.groups.get(&id.group_key()).cloned() else {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    };
    let obj = body_object(body, id.kind)?;
    let existing = st
        .world
        .compute
        .get(&id.key())
        .filter(|r| r.id.kind == id.kind)
        .cloned();
    let created = existing.is_none();
    let location = match (get_ci(obj, "location"), &existing) {
        (_, Some(e)) => e.location.clone(),
        (Some(Value::String(l)), None) if !l.trim().is_empty() => l.clone(),
        _ => {
            return Err(ArmError::bad_request(
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
    };
    let base = existing.clone().unwrap_or_else(|| {
        let canonical = ResourceId {
            subscription: group.subscription.clone(),
            resource_group: group.name.clone(),
            kind: id.kind,
            name: id.name.clone(),
        };
        ComputeResource::new(canonical, &location)
    });
    let new_identity =
        identity::resolve(&st.world, &base, get_ci(obj, "identity"), shape, Mode::Put)?;
    let mut updated = base.clone();
    updated.tags = None;
    updated.extra = Map::new();
    updated.properties = Map::new();
    for (k, v) in obj {
        match k.to_ascii_lowercase().as_str() {
            "identity" | "id" | "name" | "type" | "location" => {}
            "tags" => updated.tags = if v.is_null() { None } else { Some(v.clone()) },
            "properties" => merge_properties(&mut updated.properties, v)?,
            _ => {
                updated.extra.insert(k.clone(), v.clone());
            }
        }
    }
    updated.set_identity(new_identity);
    Ok(commit_write(st, api_version, shape, updated, true, created))
}

/// Stores the written resource and answers per the LRO mode (ARM-BEHAVIOUR.md §3).
fn commit_write(
    st: &mut State,
    api_version: &str,
    shape: Shape,
    mut res: ComputeResource,
    changed: bool,
    created: bool,
) -> ArmResponse {
    let key = res.id.key();
    let ok_status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mode = st.config.lro;
    let immediate = !changed && st.config.noop_patch_completes_immediately;
    if mode == LroMode::Sync || immediate {
        if mode == LroMode::Sync {
            res.provisioning_state = "Succeeded".to_string();
            res.current_op = None;
        }
        let body = st.world.render_compute(&res, shape);
        st.world.compute.insert(key.clone(), res);
        st.world.sync_compute_principals(&key);
        return ArmResponse::json(ok_status, body);
    }
    let op = lro::start(st, &key);
    res.current_op = Some(op.clone());
    res.provisioning_state = if created { "Creating" } else { "Updating" }.to_string();
    let async_url = lro::status_url(st, &res.id.subscription, &res.location, &op, api_version);
    let monitor_url = lro::monitor_url(st, &res.id.subscription, &res.location, &op, api_version);
    let retry_after = st.config.retry_after_secs.to_string();
    let body = st.world.render_compute(&res, shape);
    st.world.compute.insert(key.clone(), res);
    st.world.sync_compute_principals(&key);
    let resp = match mode {
        LroMode::Async202 => ArmResponse::empty(StatusCode::ACCEPTED)
            .header(HeaderName::from_static("location"), &monitor_url),
        _ => ArmResponse::json(ok_status, body),
    };
    resp.header(HeaderName::from_static("azure-asyncoperation"), &async_url)
        .header(HeaderName::from_static("retry-after"), &retry_after)
}

pub(crate) fn delete(st: &mut State, id: &ResourceId) -> Result<ArmResponse, ArmError> {
    if !st.world.group_exists(id) {
        return Err(ArmError::resource_group_not_found(&id.resource_group));
    }
    let key = id.key();
    let exists = st
        .world
        .compute
        .get(&key)
        .is_some_and(|r| r.id.kind == id.kind);
    if exists {
        st.world.remove_compute(&key);
        Ok(ArmResponse::empty(StatusCode::OK))
    } else {
        Ok(ArmResponse::empty(StatusCode::NO_CONTENT))
    }
}
