//! Admin endpoints under `/_sim/` (no bearer auth): counters, request log, faults, world.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::faults::{self, FaultRule};
use crate::state::{Counters, Shared};

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
