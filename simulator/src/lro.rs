//! Long-running operations of VM/VMSS PUT/PATCH (declared long-running in
//! `specification/compute/resource-manager/Microsoft.Compute/stable/2018-06-01/compute.json`;
//! status URL and polling as in "Track asynchronous Azure operations",
//! <https://learn.microsoft.com/azure/azure-resource-manager/management/async-operations>) and the
//! Compute operation-status endpoint
//! `/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{id}`.

use std::time::Instant;

use axum::http::{HeaderName, StatusCode};
use serde_json::{Map, Value};

use crate::errors::ArmError;
use crate::server::ArmResponse;
use crate::state::{Operation, State, now_rfc3339};

/// Normalised region name as it appears in the status URL (`West Europe` → `westeurope`).
fn region(location: &str) -> String {
    location
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Starts an operation on the resource `resource_key`; returns its id.
pub(crate) fn start(st: &mut State, resource_key: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let fails = st.config.lro_failures > 0;
    if fails {
        st.config.lro_failures -= 1;
    }
    st.ops.insert(
        id.clone(),
        Operation {
            id: id.clone(),
            resource_key: resource_key.to_string(),
            start_time: now_rfc3339(),
            started: Instant::now(),
            end_time: None,
            polls: 0,
            polls_required: st.config.lro_polls,
            min_duration: st.config.min_operation_duration,
            fails,
        },
    );
    id
}

/// `Azure-AsyncOperation` URL for an operation.
pub(crate) fn status_url(
    st: &State,
    subscription: &str,
    location: &str,
    op_id: &str,
    api_version: &str,
) -> String {
    format!(
        "{}/subscriptions/{subscription}/providers/Microsoft.Compute/locations/{}/operations/{op_id}?api-version={api_version}",
        st.base_url,
        region(location)
    )
}

/// `Location` URL for an operation (`monitor=true`, as Compute sends it).
pub(crate) fn monitor_url(
    st: &State,
    subscription: &str,
    location: &str,
    op_id: &str,
    api_version: &str,
) -> String {
    format!(
        "{}/subscriptions/{subscription}/providers/Microsoft.Compute/locations/{}/operations/{op_id}?monitor=true&api-version={api_version}",
        st.base_url,
        region(location)
    )
}

/// Answers a poll of the status URL. Each poll counts; the first `lro_polls` polls
/// (and any before the minimum duration) answer `InProgress`, then `Succeeded`.
pub(crate) fn poll(st: &mut State, op_id: &str, monitor: bool) -> Result<ArmResponse, ArmError> {
    let retry_after = st.config.retry_after_secs;
    let sends_retry_after = st.config.lro.sends_retry_after();
    let Some(op) = st.ops.get_mut(op_id) else {
        return Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The entity was not found in this Azure location.",
        ));
    };
    let mut finished_now = false;
    if op.end_time.is_none() {
        op.polls = op.polls.saturating_add(1);
        if op.polls > op.polls_required && op.started.elapsed() >= op.min_duration {
            op.end_time = Some(now_rfc3339());
            finished_now = true;
        }
    }
    let op = op.clone();
    if finished_now {
        complete_resource(st, &op);
    }
    let done = op.end_time.is_some();
    if monitor {
        let mut resp = ArmResponse::empty(if done {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        });
        if !done {
            resp = resp.header(
                HeaderName::from_static("retry-after"),
                &retry_after.to_string(),
            );
        }
        return Ok(resp);
    }
    let mut m = Map::new();
    m.insert("startTime".into(), Value::String(op.start_time.clone()));
    if let Some(e) = &op.end_time {
        m.insert("endTime".into(), Value::String(e.clone()));
    }
    let status = match (done, op.fails) {
        (false, _) => "InProgress",
        (true, false) => "Succeeded",
        (true, true) => "Failed",
    };
    m.insert("status".into(), Value::String(status.into()));
    if done && op.fails {
        // The operation-status body of a failed operation: `error` with code and message
        // ("Track asynchronous Azure operations"; the code is one Compute returns, the
        // message CHOSEN).
        m.insert(
            "error".into(),
            serde_json::json!({
                "code": "InternalExecutionError",
                "message": "An internal execution error occurred. Please retry later."
            }),
        );
    }
    m.insert("name".into(), Value::String(op.id.clone()));
    let mut resp = ArmResponse::json(StatusCode::OK, Value::Object(m));
    if !done && sends_retry_after {
        resp = resp.header(
            HeaderName::from_static("retry-after"),
            &retry_after.to_string(),
        );
    }
    Ok(resp)
}

fn complete_resource(st: &mut State, op: &Operation) {
    if let Some(res) = st.world.compute.get_mut(&op.resource_key)
        && res.current_op.as_deref() == Some(op.id.as_str())
    {
        res.current_op = None;
        res.provisioning_state = if op.fails { "Failed" } else { "Succeeded" }.to_string();
    }
}

/// Completes every running operation now (Rust API helper).
pub(crate) fn complete_all(st: &mut State) {
    let pending: Vec<Operation> = st
        .ops
        .values_mut()
        .filter(|o| o.end_time.is_none())
        .map(|o| {
            o.end_time = Some(now_rfc3339());
            o.clone()
        })
        .collect();
    for op in pending {
        complete_resource(st, &op);
    }
}
