//! `Microsoft.Compute/virtualMachines` and `virtualMachineScaleSets`: GET, PATCH, PUT, DELETE.

use axum::http::{HeaderName, StatusCode};
use serde_json::{Map, Value};

use crate::LroMode;
use crate::errors::ArmError;
use crate::identity::{self, IdentityState, Mode, Shape};
use crate::ids::{ResourceId, ResourceKind};
use crate::lro;
use crate::server::{ArmResponse, api_version_error};
use crate::state::State;
use crate::world::ComputeResource;

/// Compute api-versions the simulator serves: those Microsoft.Compute publishes for VMs and
/// scale sets (the one list, [`vmidentity_arm_versions::COMPUTE`], with its sources).
/// Before 2018-06-01 (2017-12-01, 2018-04-01) the identity block uses `identityIds`; from
/// 2018-06-01 on, the `userAssignedIdentities` dictionary.
pub const COMPUTE_API_VERSIONS: &[&str] = vmidentity_arm_versions::COMPUTE;

/// The first Compute api-version with the `userAssignedIdentities` dictionary
/// (`compute/2018-06-01/compute.json`).
const DICTIONARY_API_VERSION: &str = "2018-06-01";

/// The first Compute api-version with entity tags: `etag` on VM / VMSS bodies (and the
/// `ETag` header), `If-Match` / `If-None-Match` on PUT and PATCH. Added to the
/// `virtualMachine.json` / `virtualMachineScaleSet.json` specs by Azure/azure-rest-api-specs
/// PR #26368 ("Etag support in crp", 2023-09-01); older api-versions have neither.
pub const ETAG_API_VERSION: &str = "2023-09-01";

/// True when `api_version` (a served Compute api-version) has entity tags.
pub fn has_etag(api_version: &str) -> bool {
    api_version.to_ascii_lowercase().as_str() >= ETAG_API_VERSION
}

/// The conditional-request headers of a PUT / PATCH (ignored below [`ETAG_API_VERSION`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Preconditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

/// True when the comma-separated entity-tag list `header` names `etag` (or is `*`).
/// Strong comparison (RFC 9110 §13.1.1): a weak tag (`W/"3"`) never matches.
fn list_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag)
}

/// Evaluates `If-Match` / `If-None-Match` against the resource as it is (`None`: absent).
/// Called after the request was validated: RFC 9110 §13.2.1 has a request that would fail
/// anyway answered with that failure, not 412.
fn check_preconditions(
    pre: Preconditions<'_>,
    api_version: &str,
    current: Option<&ComputeResource>,
) -> Result<(), ArmError> {
    if !has_etag(api_version) {
        return Ok(());
    }
    if let Some(h) = pre.if_match {
        match current {
            Some(r) if list_matches(h, &r.etag_value()) => {}
            Some(r) => {
                return Err(ArmError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "PreconditionFailed",
                    format!(
                        "Etag provided in if-match header {h} does not match etag {} of resource.",
                        r.etag_value()
                    ),
                ));
            }
            None => {
                return Err(ArmError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "PreconditionFailed",
                    format!(
                        "Etag provided in if-match header {h} does not match: the resource does not exist."
                    ),
                ));
            }
        }
    }
    if let (Some(h), Some(r)) = (pre.if_none_match, current)
        && list_matches(h, &r.etag_value())
    {
        return Err(ArmError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            format!(
                "Etag provided in if-none-match header {h} matches etag {} of resource.",
                r.etag_value()
            ),
        ));
    }
    Ok(())
}

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
            let shape = if v.to_ascii_lowercase().as_str() < DICTIONARY_API_VERSION {
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

pub(crate) fn get(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
    shape: Shape,
) -> Result<ArmResponse, ArmError> {
    let res = find(st, id)?;
    let etag = has_etag(api_version);
    let resp = ArmResponse::json(StatusCode::OK, st.world.render_compute(res, shape, etag));
    Ok(with_etag_header(resp, res, etag))
}

fn with_etag_header(resp: ArmResponse, res: &ComputeResource, etag: bool) -> ArmResponse {
    if etag {
        resp.header(HeaderName::from_static("etag"), &res.etag_value())
    } else {
        resp
    }
}

pub(crate) fn patch(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
    shape: Shape,
    body: Option<&Value>,
    pre: Preconditions<'_>,
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
            "identity" | "id" | "name" | "type" | "location" | "etag" => {}
            "tags" => updated.tags = if v.is_null() { None } else { Some(v.clone()) },
            "properties" => merge_properties(&mut updated.properties, v)?,
            _ => {
                updated.extra.insert(k.clone(), v.clone());
            }
        }
    }
    let fresh = added_entries(Some(&current), &new_identity);
    updated.set_identity(new_identity);
    let changed = updated != current;
    check_preconditions(pre, api_version, Some(&current))?;
    Ok(commit_write(
        st,
        api_version,
        shape,
        updated,
        changed,
        false,
        &fresh,
    ))
}

pub(crate) fn put(
    st: &mut State,
    id: &ResourceId,
    api_version: &str,
    shape: Shape,
    body: Option<&Value>,
    pre: Preconditions<'_>,
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
            "identity" | "id" | "name" | "type" | "location" | "etag" => {}
            "tags" => updated.tags = if v.is_null() { None } else { Some(v.clone()) },
            "properties" => merge_properties(&mut updated.properties, v)?,
            _ => {
                updated.extra.insert(k.clone(), v.clone());
            }
        }
    }
    let fresh = added_entries(existing.as_ref(), &new_identity);
    updated.set_identity(new_identity);
    check_preconditions(pre, api_version, existing.as_ref())?;
    Ok(commit_write(
        st,
        api_version,
        shape,
        updated,
        true,
        created,
        &fresh,
    ))
}

/// The user-assigned entries a write adds (by key): the ones its answer shows as `{}`.
fn added_entries(before: Option<&ComputeResource>, after: &IdentityState) -> Vec<String> {
    after
        .user
        .iter()
        .filter(|e| before.is_none_or(|b| !b.identity.user.iter().any(|o| o.key == e.key)))
        .map(|e| e.id.clone())
        .collect()
}

/// Shows the entries `fresh` as `{}` in a write's answer: ARM answers an identity PATCH
/// before the new user-assigned identities are bound, and only a later GET shows their
/// `principalId` / `clientId` (recorded at 2018-06-01 and 2024-07-01 in the Azure CLI's VM
/// identity tests, and at 2024-11-01 for a scale set in
/// `src/azure-cli/azure/cli/command_modules/vm/tests/latest/recordings/test_vmss_explicit_msi.yaml`,
/// Azure/azure-cli commit 0151a1baa6e087378dbbbc374a9806098d6314c8). Entries that were
/// already there keep theirs.
fn blank_fresh_entries(body: &mut Value, fresh: &[String]) {
    if fresh.is_empty() {
        return;
    }
    if let Some(d) = body
        .get_mut("identity")
        .and_then(|i| i.get_mut("userAssignedIdentities"))
        .and_then(Value::as_object_mut)
    {
        for id in fresh {
            if let Some(v) = d.get_mut(id) {
                *v = Value::Object(Map::new());
            }
        }
    }
}

/// Whether a write's answer shows **every** user-assigned entry as `{}`, not only the ones it
/// adds: recorded for a scale set at 2018-10-01 (Azure/azure-cli
/// `src/command_modules/azure-cli-vm/azure/cli/command_modules/vm/tests/latest/recordings/test_vmss_explicit_msi.yaml`,
/// commit 60895270c87da16aa22f0f5f86a977e990fe2fbf: the entry already assigned is `{}` beside
/// the new one, and the entry kept by a removal is `{}`). At 2024-11-01 only new entries are
/// (see [`blank_fresh_entries`]); a VM at 2019-03-01 also shows only new ones. Where the
/// switch lies between 2018-10-01 and 2024-11-01 is not recorded: CHOSEN at 2019-03-01, the
/// first version recorded with the narrower answer.
fn blanks_every_entry(res: &ComputeResource, api_version: &str) -> bool {
    res.id.kind == ResourceKind::VirtualMachineScaleSet && api_version < "2019-03-01"
}

/// Stores the written resource and answers per the LRO mode (see [`crate::LroMode`]). Every
/// accepted write of an existing resource bumps its entity tag by one, even one that changes
/// nothing (CHOSEN); a created one starts at `"1"`. Completing the operation leaves the tag
/// as it is (recorded: `"2"` in the PATCH answer and in the GET after the operation, the
/// same scale-set recording). `fresh`: the user-assigned entries the write adds, shown as
/// `{}` while the operation runs.
fn commit_write(
    st: &mut State,
    api_version: &str,
    shape: Shape,
    mut res: ComputeResource,
    changed: bool,
    created: bool,
    fresh: &[String],
) -> ArmResponse {
    let key = res.id.key();
    let ok_status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if !created {
        res.bump_etag();
    }
    let etag = has_etag(api_version);
    let etag_value = res.etag_value();
    let tag = |resp: ArmResponse| {
        if etag {
            resp.header(HeaderName::from_static("etag"), &etag_value)
        } else {
            resp
        }
    };
    let mode = st.config.lro;
    let immediate = !changed && st.config.noop_patch_completes_immediately;
    if mode == LroMode::Sync || immediate {
        if mode == LroMode::Sync {
            res.provisioning_state = "Succeeded".to_string();
            res.current_op = None;
        }
        let body = st.world.render_compute(&res, shape, etag);
        st.world.compute.insert(key.clone(), res);
        st.world.sync_compute_principals(&key);
        return tag(ArmResponse::json(ok_status, body));
    }
    let op = lro::start(st, &key);
    res.current_op = Some(op.clone());
    res.provisioning_state = if created { "Creating" } else { "Updating" }.to_string();
    let async_url = lro::status_url(st, &res.id.subscription, &res.location, &op, api_version);
    let monitor_url = lro::monitor_url(st, &res.id.subscription, &res.location, &op, api_version);
    let retry_after = st.config.retry_after_secs.to_string();
    let mut body = st.world.render_compute(&res, shape, etag);
    if shape == Shape::Dictionary {
        if blanks_every_entry(&res, api_version) {
            let all: Vec<String> = res.identity.user.iter().map(|e| e.id.clone()).collect();
            blank_fresh_entries(&mut body, &all);
        } else {
            blank_fresh_entries(&mut body, fresh);
        }
    }
    st.world.compute.insert(key.clone(), res);
    st.world.sync_compute_principals(&key);
    let resp = match mode {
        LroMode::Async202 => ArmResponse::empty(StatusCode::ACCEPTED)
            .header(HeaderName::from_static("location"), &monitor_url),
        _ => ArmResponse::json(ok_status, body),
    };
    let resp = tag(resp).header(HeaderName::from_static("azure-asyncoperation"), &async_url);
    if mode.sends_retry_after() {
        resp.header(HeaderName::from_static("retry-after"), &retry_after)
    } else {
        resp
    }
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
