//! HTTP plumbing: the catch-all ARM handler (case-insensitive routing, auth, faults,
//! api-version, counters, request log, ARM headers) and `ArmResponse`.

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::authz::{self, AuthzTarget};
use crate::errors::ArmError;
use crate::faults::{self, FaultAction};
use crate::graph::{self, GraphVersion};
use crate::ids::ResourceId;
use crate::scope::Scope;
use crate::state::{RecordedRequest, Shared, State, now_rfc3339};
use crate::{CallerConfig, compute, lro, msi};

/// A response before it becomes an HTTP response.
#[derive(Debug, Clone)]
pub(crate) struct ArmResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Value>,
}

impl ArmResponse {
    pub fn json(status: StatusCode, body: Value) -> ArmResponse {
        ArmResponse {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    pub fn empty(status: StatusCode) -> ArmResponse {
        ArmResponse {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> ArmResponse {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }
}

impl From<ArmError> for ArmResponse {
    fn from(e: ArmError) -> ArmResponse {
        ArmResponse {
            status: e.status,
            body: Some(e.body_json()),
            headers: e.headers,
        }
    }
}

impl IntoResponse for ArmResponse {
    fn into_response(self) -> Response {
        let mut builder = Response::builder().status(self.status);
        if self.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
        }
        for (k, v) in self.headers {
            builder = builder.header(k, v);
        }
        let body = match self.body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        };
        builder
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// What a path addresses.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Resource(ResourceId),
    Operation {
        subscription: String,
        op_id: String,
    },
    /// `{scope}/providers/Microsoft.Authorization/roleAssignments|roleDefinitions[/{name}]`
    /// (`None` scope: the scope part is not a valid scope).
    Authorization {
        scope: Option<Scope>,
        target: AuthzTarget,
    },
    /// `POST /providers/Microsoft.ResourceGraph/resources`.
    ResourceGraph,
    /// Entra `/{tenant}/oauth2/v2.0/token`.
    EntraToken {
        tenant: String,
    },
    /// IMDS `/metadata/identity/oauth2/token` (only when `SimConfig::imds` is set).
    Imds,
    /// Microsoft Graph `/v1.0/…` or `/beta/…` (decoded segments).
    Graph {
        version: GraphVersion,
        segments: Vec<String>,
    },
    Unknown,
}

impl Route {
    /// The subscription whose ARM rate-limit buckets the request uses.
    pub(crate) fn subscription(&self) -> Option<String> {
        match self {
            Route::Resource(id) => Some(id.subscription.to_ascii_lowercase()),
            Route::Operation { subscription, .. } => Some(subscription.to_ascii_lowercase()),
            Route::Authorization { scope: Some(s), .. } => {
                s.subscription().map(str::to_ascii_lowercase)
            }
            _ => None,
        }
    }
}

pub(crate) fn parse_route(path: &str) -> Route {
    if let Some((version, segments)) = graph::parse_path(path) {
        return Route::Graph { version, segments };
    }
    if let Some(tenant) = crate::token::parse_entra_path(path) {
        return Route::EntraToken { tenant };
    }
    if crate::token::is_imds_path(path) {
        return Route::Imds;
    }
    let t = path.trim_end_matches('/');
    if t.eq_ignore_ascii_case("/providers/Microsoft.ResourceGraph/resources") {
        return Route::ResourceGraph;
    }
    if let Some((scope, target)) = authz::parse_path(path) {
        return Route::Authorization { scope, target };
    }
    if let Ok(id) = ResourceId::parse(path) {
        return Route::Resource(id);
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let s: Vec<&str> = trimmed.split('/').collect();
    // ["", "subscriptions", sub, "providers", "Microsoft.Compute", "locations", loc, "operations", id]
    if s.len() == 9
        && s[0].is_empty()
        && s[1].eq_ignore_ascii_case("subscriptions")
        && s[3].eq_ignore_ascii_case("providers")
        && s[4].eq_ignore_ascii_case("microsoft.compute")
        && s[5].eq_ignore_ascii_case("locations")
        && s[7].eq_ignore_ascii_case("operations")
        && !s[8].is_empty()
    {
        return Route::Operation {
            subscription: s[2].to_string(),
            op_id: s[8].to_string(),
        };
    }
    Route::Unknown
}

/// Percent-decodes (`+` → space when `plus_is_space`); invalid escapes are kept.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query parameter, name and value percent-decoded (`%24filter` = `$filter`); the
/// name compares case-insensitively.
pub(crate) fn query_decoded(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        percent_decode(k, true)
            .eq_ignore_ascii_case(name)
            .then(|| percent_decode(v, true))
    })
}

/// `key=value` pairs of a query string (no percent-decoding needed for what we read).
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// The catch-all handler for ARM routes.
pub(crate) async fn arm_entry(
    AxState(shared): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let timestamp = now_rfc3339();
    let path = uri.path().to_string();
    let query = uri.query().map(str::to_string);
    let (body_json, body_ok) = if body.is_empty() {
        (None, true)
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => (Some(v), true),
            Err(_) => (
                Some(Value::String(String::from_utf8_lossy(&body).into_owned())),
                false,
            ),
        }
    };
    let mut route = parse_route(&path);
    let mut body_json = body_json;
    {
        let mut st = shared.lock();
        if matches!(route, Route::Imds) && st.config.imds.is_none() {
            route = Route::Unknown;
        }
        if let Route::EntraToken { .. } = route {
            // Never keep secrets or assertions in the log.
            body_json = Some(Value::String(crate::token::redacted_form(
                &String::from_utf8_lossy(&body),
            )));
        }
        count_arrival(&mut st, &method, &route);
    }

    let mut change: Option<IdentityChange> = None;
    // Token endpoint outages: only rules that ask for the token endpoints match here.
    let token_fault = if matches!(route, Route::EntraToken { .. } | Route::Imds) {
        faults::take(&mut shared.lock(), method.as_str(), &path, true)
    } else {
        None
    };
    let token_refusal: Option<ArmResponse> = match token_fault {
        Some(FaultAction::Delay { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            None
        }
        // The error bodies are ARM's (CHOSEN: Entra's own are `{"error","error_description"}`;
        // clients act on the status and Retry-After).
        Some(FaultAction::Throttle { retry_after_secs }) => {
            Some(faults::throttle_error(method.as_str(), &path, retry_after_secs).into())
        }
        Some(FaultAction::Status { code }) => Some(faults::status_error(code).into()),
        Some(FaultAction::Error {
            status,
            error_code,
            message,
        }) => Some(faults::custom_error(status, &error_code, &message).into()),
        None => None,
    };
    let mut resp = match &route {
        _ if token_refusal.is_some() => token_refusal
            .unwrap_or_else(|| ArmResponse::empty(axum::http::StatusCode::INTERNAL_SERVER_ERROR)),
        Route::EntraToken { tenant } => crate::token::entra_token(
            &mut shared.lock(),
            &method,
            tenant,
            &String::from_utf8_lossy(&body),
        ),
        Route::Imds => {
            crate::token::imds_token(&mut shared.lock(), &method, query.as_deref(), &headers)
        }
        _ => {
            handle(
                &shared,
                &method,
                &route,
                &path,
                query.as_deref(),
                &headers,
                body_json.as_ref(),
                body_ok,
                &mut change,
            )
            .await
        }
    };

    let mut st = shared.lock();
    add_standard_headers(&mut st, &method, &route, &mut resp);
    if resp.status == StatusCode::TOO_MANY_REQUESTS {
        st.counters.throttled += 1;
    }
    if resp.status.is_server_error() {
        st.counters.server_errors += 1;
    }
    let max = st.config.max_logged_requests;
    if max > 0 {
        while st.log.len() >= max {
            st.log.pop_front();
        }
        st.log.push_back(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: body_json,
            status: resp.status.as_u16(),
            timestamp,
            resource_id: match &route {
                Route::Resource(id) => Some(id.key()),
                _ => None,
            },
            if_match: header_str(&headers, "if-match").map(str::to_string),
            identity_before: change.as_ref().map(|c| c.before.clone()),
            applied_at: change.as_ref().map(|c| c.at.clone()),
            identity_after: change.map(|c| c.after),
        });
    }
    drop(st);
    tracing::debug!(%method, %path, status = resp.status.as_u16(), "arm request");
    resp.into_response()
}

fn count_arrival(st: &mut State, method: &Method, route: &Route) {
    st.counters.requests += 1;
    match route {
        Route::Resource(id) => {
            let per = st.counters.per_resource.entry(id.key()).or_default();
            if *method == Method::GET || *method == Method::HEAD {
                per.reads += 1;
                st.counters.reads += 1;
            } else {
                per.writes += 1;
                st.counters.writes += 1;
            }
        }
        Route::Operation { .. } => st.counters.polls += 1,
        Route::Authorization { .. } => {
            if *method == Method::GET || *method == Method::HEAD {
                st.counters.authorization_reads += 1;
            } else {
                st.counters.authorization_writes += 1;
            }
        }
        Route::Graph { segments, .. } if segments.len() == 1 && segments[0] == "$batch" => {
            // Its requests are counted one by one (`graph::batch`).
            st.counters.graph_batches += 1;
        }
        Route::Graph { .. } => {
            if graph::is_write(method) {
                st.counters.graph_writes += 1;
            } else {
                st.counters.graph_reads += 1;
            }
        }
        Route::ResourceGraph => st.counters.resource_graph_queries += 1,
        Route::EntraToken { .. } | Route::Imds | Route::Unknown => {}
    }
}

fn add_standard_headers(st: &mut State, method: &Method, route: &Route, resp: &mut ArmResponse) {
    if let Route::Graph { .. } = route {
        // Graph names its ids `request-id` / `client-request-id`.
        let rid = uuid::Uuid::new_v4().to_string();
        push_header(resp, "request-id", &rid);
        push_header(resp, "client-request-id", &rid);
        return;
    }
    if let Route::Imds = route {
        return;
    }
    if let Some(sub) = route.subscription() {
        crate::throttle::add_rate_headers(st, method, &sub, resp);
    }
    let rid = uuid::Uuid::new_v4().to_string();
    push_header(resp, "x-ms-request-id", &rid);
    push_header(resp, "x-ms-correlation-request-id", &rid);
}

fn push_header(resp: &mut ArmResponse, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers.push((HeaderName::from_static(name), v));
    }
}

/// What a VM / VMSS write did to the identity block (see `RecordedRequest::identity_before`).
struct IdentityChange {
    before: Value,
    after: Value,
    at: String,
}

/// The identity block of a VM / VMSS as a 2018-06-01 GET shows it; `null` when absent.
fn identity_snapshot(st: &State, id: &ResourceId) -> Value {
    st.world.compute.get(&id.key()).map_or(Value::Null, |r| {
        st.world
            .render_identity(r, crate::identity::Shape::Dictionary)
            .unwrap_or_else(|| serde_json::json!({ "type": "None" }))
    })
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    shared: &Shared,
    method: &Method,
    route: &Route,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Option<&Value>,
    body_ok: bool,
    change: &mut Option<IdentityChange>,
) -> ArmResponse {
    let is_graph = matches!(route, Route::Graph { .. });
    let caller = {
        let st = shared.lock();
        if is_graph {
            match crate::token::authenticate_graph(&st, headers) {
                Ok(()) => None,
                Err(e) => return e.into(),
            }
        } else {
            match crate::token::authenticate_arm(&st, headers) {
                Ok(caller) => Some(caller),
                Err(e) => return e.into(),
            }
        }
    };
    let fault = {
        let mut st = shared.lock();
        faults::take(&mut st, method.as_str(), path, false)
    };
    match fault {
        Some(FaultAction::Delay { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Some(FaultAction::Throttle { retry_after_secs }) if is_graph => {
            return graph::throttle_error(retry_after_secs).into();
        }
        Some(FaultAction::Throttle { retry_after_secs }) => {
            return faults::throttle_error(method.as_str(), path, retry_after_secs).into();
        }
        Some(FaultAction::Status { code }) if is_graph => {
            let e = faults::status_error(code);
            return graph::graph_error(e.status, &e.code, e.message).into();
        }
        Some(FaultAction::Status { code }) => return faults::status_error(code).into(),
        Some(FaultAction::Error {
            status,
            error_code,
            message,
        }) if is_graph => {
            let e = faults::custom_error(status, &error_code, &message);
            return graph::graph_error(e.status, &e.code, e.message).into();
        }
        Some(FaultAction::Error {
            status,
            error_code,
            message,
        }) => return faults::custom_error(status, &error_code, &message).into(),
        None => {}
    }
    let caller = caller.unwrap_or_else(|| CallerConfig::new(""));
    let mut st = shared.lock();
    let mut throttle_headers = Vec::new();
    if st.config.throttling.is_some()
        && let Some(sub) = route.subscription()
    {
        match crate::throttle::charge(&mut st, method, route, &sub, &caller.object_id) {
            crate::throttle::Verdict::Refused(resp) => return resp,
            crate::throttle::Verdict::Proceed(h) => throttle_headers = h,
        }
    }
    if let Route::ResourceGraph = route {
        if *method != Method::POST {
            return method_not_allowed(method).into();
        }
        let (allowed, remaining, resets) = crate::resourcegraph::take_quota(&mut st, &caller.token);
        let mut resp: ArmResponse = if allowed {
            crate::resourcegraph::query(&mut st, Some(&caller), query, body)
                .unwrap_or_else(Into::into)
        } else {
            st.counters.resource_graph_throttled += 1;
            crate::resourcegraph::throttled(resets).into()
        };
        crate::resourcegraph::quota_headers(&mut resp, remaining, resets);
        return resp;
    }
    let pre = compute::Preconditions {
        if_match: header_str(headers, "if-match"),
        if_none_match: header_str(headers, "if-none-match"),
    };
    let compute_write = match route {
        Route::Resource(id) if id.kind.is_compute() && *method != Method::GET => Some(id),
        _ => None,
    };
    let before = compute_write.map(|id| identity_snapshot(&st, id));
    let mut resp = dispatch(
        &mut st, method, route, path, query, body, body_ok, &caller, pre,
    )
    .unwrap_or_else(Into::into);
    if let (Some(id), Some(before)) = (compute_write, before) {
        *change = Some(IdentityChange {
            before,
            after: identity_snapshot(&st, id),
            at: now_rfc3339(),
        });
    }
    resp.headers.extend(throttle_headers);
    resp
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    st: &mut State,
    method: &Method,
    route: &Route,
    path: &str,
    query: Option<&str>,
    body: Option<&Value>,
    body_ok: bool,
    caller: &CallerConfig,
    pre: compute::Preconditions<'_>,
) -> Result<ArmResponse, ArmError> {
    match route {
        Route::Authorization { scope, target } => {
            authz::check_api_version(
                query_decoded(query, "api-version").as_deref(),
                match target {
                    AuthzTarget::RoleAssignments | AuthzTarget::RoleAssignment(_) => {
                        "roleAssignments"
                    }
                    _ => "roleDefinitions",
                },
            )?;
            check_body(*method == Method::PUT, body_ok)?;
            authz::dispatch(st, method, scope.as_ref(), target, query, body, caller)
        }
        Route::Graph { version, segments } => {
            if graph::is_write(method) && !body_ok {
                return Err(graph::graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
                ));
            }
            if segments.len() == 1 && segments[0] == "$batch" && *method == Method::POST {
                return graph::batch(st, *version, body);
            }
            graph::dispatch(st, method, *version, segments, query, body)
        }
        Route::Resource(id) => {
            let api_version = query_param(query, "api-version");
            let location = location_hint(st, id);
            let writes_body = *method == Method::PATCH || *method == Method::PUT;
            // api-version is checked first, then the body.
            if id.kind.is_compute() {
                let (v, shape) = compute::check_api_version(api_version, &location)?;
                check_body(writes_body, body_ok)?;
                if *method != Method::GET {
                    authz::check_compute_write(caller, id, method)?;
                }
                match *method {
                    Method::GET => compute::get(st, id, &v, shape),
                    Method::PATCH => compute::patch(st, id, &v, shape, body, pre),
                    Method::PUT => compute::put(st, id, &v, shape, body, pre),
                    Method::DELETE => compute::delete(st, id),
                    _ => Err(method_not_allowed(method)),
                }
            } else {
                let v = msi::check_api_version(api_version, &location)?;
                check_body(writes_body, body_ok)?;
                match *method {
                    Method::GET => msi::get(st, id, &v),
                    Method::PUT => msi::put(st, id, &v, body),
                    Method::DELETE => msi::delete(st, id),
                    _ => Err(method_not_allowed(method)),
                }
            }
        }
        Route::Operation { op_id, .. } => {
            if *method != Method::GET {
                return Err(method_not_allowed(method));
            }
            let location = st.world.default_location.clone();
            compute::check_api_version(query_param(query, "api-version"), &location)?;
            let monitor =
                query_param(query, "monitor").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            lro::poll(st, op_id, monitor)
        }
        // Answered in `handle` (quota headers) / `arm_entry`; not reached.
        Route::ResourceGraph | Route::EntraToken { .. } | Route::Imds => {
            Err(method_not_allowed(method))
        }
        Route::Unknown => Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("The simulator serves no route for '{method} {path}'."),
        )),
    }
}

/// A request header as text (None when absent or not visible ASCII).
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn check_body(writes_body: bool, body_ok: bool) -> Result<(), ArmError> {
    if writes_body && !body_ok {
        return Err(ArmError::invalid_content(
            "Unexpected character encountered while parsing value. Path '', line 1, position 1.",
        ));
    }
    Ok(())
}

/// The location ARM would name in a `NoRegisteredProviderFound` message.
fn location_hint(st: &State, id: &ResourceId) -> String {
    if let Some(r) = st.world.compute.get(&id.key()) {
        return r.location.clone();
    }
    if let Some(u) = st.world.uais.get(&id.key()) {
        return u.location.clone();
    }
    if let Some(g) = st.world.groups.get(&id.group_key()) {
        return g.location.clone();
    }
    st.world.default_location.clone()
}

fn method_not_allowed(method: &Method) -> ArmError {
    ArmError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("The requested resource does not support http method '{method}'."),
    )
}

/// ARM's answers for a missing / unknown api-version.
pub(crate) fn api_version_error(
    api_version: Option<&str>,
    supported: &[&str],
    type_name: &str,
    location: &str,
) -> ArmError {
    let Some(v) = api_version else {
        return ArmError::bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    };
    let well_formed = {
        let b = v.as_bytes();
        let date = b.len() >= 10
            && b[..10].iter().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            });
        date && (b.len() == 10 || v[10..].starts_with('-'))
    };
    if well_formed {
        ArmError::bad_request(
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location '{location}' and API version '{v}' for type '{type_name}'. The supported api-versions are '{}'. The supported locations are '{}'.",
                supported.join(", "),
                SUPPORTED_LOCATIONS
            ),
        )
    } else {
        ArmError::bad_request(
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions are '{}'.",
                supported.join(",")
            ),
        )
    }
}

const SUPPORTED_LOCATIONS: &str = "eastus, eastus2, westus, centralus, northcentralus, southcentralus, northeurope, westeurope, eastasia, southeastasia, japaneast, japanwest, australiaeast, uksouth, ukwest, francecentral, germanywestcentral, swedencentral, westus2, westus3";
