//! Admin endpoints under `/_sim/` (no bearer auth): counters, request log, faults, world.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::faults::{self, FaultRule};
use crate::state::{Counters, Shared};
use crate::throttle::ThrottleConfig;

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/_sim/counters", get(counters))
        .route("/_sim/requests", get(requests).delete(clear_requests))
        .route("/_sim/reset-counters", post(reset_counters))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/_sim/operations/complete", post(complete_operations))
        .route("/_sim/world", get(world))
        .route("/_sim/throttling", get(get_throttling).post(set_throttling))
        .route(
            "/_sim/change-feed",
            get(get_change_feed).post(set_change_feed),
        )
        .route("/_sim/buckets/{subscription}", get(bucket_levels))
        .route("/_sim/clock/advance", post(advance_clock))
        .route("/_sim/identity", post(edit_identity))
}

async fn counters(AxState(s): AxState<Shared>) -> Json<Counters> {
    Json(s.lock().counters.clone())
}

async fn requests(AxState(s): AxState<Shared>) -> Response {
    let log: Vec<_> = s.lock().log.iter().cloned().collect();
    Json(log).into_response()
}

async fn clear_requests(AxState(s): AxState<Shared>) -> StatusCode {
    s.lock().log.clear();
    StatusCode::NO_CONTENT
}

async fn reset_counters(AxState(s): AxState<Shared>) -> StatusCode {
    let mut st = s.lock();
    st.counters = Counters::default();
    st.log.clear();
    StatusCode::NO_CONTENT
}

async fn list_faults(AxState(s): AxState<Shared>) -> Response {
    let rules: Vec<_> = s
        .lock()
        .faults
        .iter()
        .map(|f| json!({ "rule": f.rule, "remaining": f.remaining }))
        .collect();
    Json(rules).into_response()
}

async fn add_fault(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultRule>(&body) {
        Ok(rule) => {
            faults::add(&mut s.lock(), rule.clone());
            (StatusCode::CREATED, Json(rule)).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": { "code": "InvalidFaultRule", "message": e.to_string() } })),
        )
            .into_response(),
    }
}

async fn clear_faults(AxState(s): AxState<Shared>) -> StatusCode {
    s.lock().faults.clear();
    StatusCode::NO_CONTENT
}

async fn complete_operations(AxState(s): AxState<Shared>) -> StatusCode {
    crate::lro::complete_all(&mut s.lock());
    StatusCode::NO_CONTENT
}

async fn world(AxState(s): AxState<Shared>) -> Response {
    Json(s.lock().world.dump()).into_response()
}

async fn get_throttling(AxState(s): AxState<Shared>) -> Response {
    Json(s.lock().config.throttling.clone()).into_response()
}

/// Body: a `ThrottleConfig` (missing members take their defaults, `{}` = the published
/// limits) or `null` (off). Buckets start full again.
async fn get_change_feed(AxState(s): AxState<Shared>) -> Response {
    Json(s.lock().config.change_feed).into_response()
}

/// `POST /_sim/change-feed {"delayMs", "jitterMs", "duplicateEvery", "retentionMs"}` (camelCase
/// of [`crate::ChangeFeedConfig`], durations in milliseconds; omitted = default).
async fn set_change_feed(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<crate::ChangeFeedConfig>(&body) {
        Ok(cfg) => {
            s.lock().config.change_feed = cfg;
            Json(cfg).into_response()
        }
        Err(e) => bad_request("InvalidChangeFeedConfig", &e.to_string()),
    }
}

async fn set_throttling(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<Option<ThrottleConfig>>(&body) {
        Ok(cfg) => {
            let mut st = s.lock();
            st.config.throttling = cfg.clone();
            st.buckets.clear();
            st.compute_buckets.clear();
            Json(cfg).into_response()
        }
        Err(e) => bad_request("InvalidThrottlingConfig", &e.to_string()),
    }
}

async fn bucket_levels(AxState(s): AxState<Shared>, Path(sub): Path<String>) -> Response {
    Json(crate::throttle::levels(&mut s.lock(), &sub)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    ms: u64,
}

/// Body `{"ms": 1000}`: moves the virtual clock forward (see `SimHandle::advance_clock`).
async fn advance_clock(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) => {
            s.lock().clock_offset += std::time::Duration::from_millis(a.ms);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_request("InvalidClockAdvance", &e.to_string()),
    }
}

fn bad_request(code: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// Body of `POST /_sim/identity`: an out-of-band edit of a VM's or VMSS's identity, as
/// someone else (the portal, `az vm identity assign`, a script) would make it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdentityEdit {
    /// The VM or VMSS resource ID.
    id: String,
    /// Enable (`true`) or disable (`false`) the system-assigned identity; absent: unchanged.
    #[serde(default)]
    system_assigned: Option<bool>,
    /// User-assigned identity IDs to attach (need not exist: then the entry is stale).
    #[serde(default)]
    add_user_assigned: Vec<String>,
    /// User-assigned identity IDs to detach (compared case-insensitively).
    #[serde(default)]
    remove_user_assigned: Vec<String>,
    /// Drop the whole identity block first (`{"type":"None"}`).
    #[serde(default)]
    remove_identity: bool,
}

/// The identity block `edit` leads to from `current` (as a 2018-06-01 GET shows it), in the
/// shape [`crate::set_identity_in`] takes: a kept system identity keeps its principal.
fn edited_identity(current: &serde_json::Value, edit: &IdentityEdit) -> serde_json::Value {
    let ty = current["type"]
        .as_str()
        .unwrap_or("None")
        .to_ascii_lowercase();
    let mut system = !edit.remove_identity && ty.contains("systemassigned");
    let mut uais: Vec<String> = if edit.remove_identity {
        Vec::new()
    } else {
        current["userAssignedIdentities"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    if let Some(on) = edit.system_assigned {
        system = on;
    }
    uais.retain(|u| {
        !edit
            .remove_user_assigned
            .iter()
            .any(|r| r.eq_ignore_ascii_case(u))
    });
    for a in &edit.add_user_assigned {
        if !uais.iter().any(|u| u.eq_ignore_ascii_case(a)) {
            uais.push(a.clone());
        }
    }
    let ty = match (system, !uais.is_empty()) {
        (true, true) => "SystemAssigned, UserAssigned",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (false, false) => "None",
    };
    let mut out = json!({ "type": ty });
    if system && let Some(p) = current["principalId"].as_str() {
        out["principalId"] = json!(p);
    }
    if !uais.is_empty() {
        out["userAssignedIdentities"] = json!(uais);
    }
    out
}

/// `POST /_sim/identity`: applies an [`IdentityEdit`] out of band (the entity tag changes, as
/// for any write; not counted, not logged) and answers the identity block as a 2018-06-01
/// GET now shows it. 404 for an unknown resource, 400 for a body or identity ARM would refuse.
async fn edit_identity(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let edit = match serde_json::from_slice::<IdentityEdit>(&body) {
        Ok(e) => e,
        Err(e) => return bad_request("InvalidIdentityEdit", &e.to_string()),
    };
    // Read and write under one lock (no request can land in between).
    match crate::edit_identity_in(&s, &edit.id, |current| edited_identity(current, &edit)) {
        Ok(_) => Json(crate::identity_in(&s, &edit.id).unwrap_or(json!({"type": "None"})))
            .into_response(),
        Err(crate::SimError::NotFound(id) | crate::SimError::InvalidResourceId { id, .. }) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": { "code": "ResourceNotFound", "message": format!("no VM or VMSS '{id}' in the simulated world") } })),
        )
            .into_response(),
        Err(e) => bad_request("InvalidIdentityEdit", &e.to_string()),
    }
}
