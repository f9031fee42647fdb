//! Microsoft Graph v1.0 (and beta) for group memberships of managed identities, served
//! on the same server under `/v1.0/…` (`/beta/…`). Shapes, codes and messages: the
//! Microsoft Graph v1.0 API reference ("Add members", "Remove member", "List group members",
//! "Get servicePrincipal", "List servicePrincipal memberOf" under
//! <https://learn.microsoft.com/graph/api/overview?view=graph-rest-1.0>) and captured Graph
//! responses (see the simulator's README.md for each rule's source).

use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::directory::EntraGroup;
use crate::errors::ArmError;
use crate::server::{ArmResponse, query_decoded};
use crate::state::State;

/// Graph page size ceiling (999: "List servicePrincipal memberOf",
/// <https://learn.microsoft.com/graph/api/serviceprincipal-list-memberof?view=graph-rest-1.0>).
pub const GRAPH_MAX_PAGE_SIZE: usize = 999;

/// Which Graph version a path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GraphVersion {
    V1,
    Beta,
}

impl GraphVersion {
    fn prefix(self) -> &'static str {
        match self {
            GraphVersion::V1 => "v1.0",
            GraphVersion::Beta => "beta",
        }
    }
}

/// Percent-decodes a path segment (`%24ref` → `$ref`).
fn decode_segment(s: &str) -> String {
    crate::server::percent_decode(s, false)
}

/// `/v1.0/…` or `/beta/…` → version and decoded segments.
pub(crate) fn parse_path(path: &str) -> Option<(GraphVersion, Vec<String>)> {
    let mut segs = path.trim_end_matches('/').split('/').skip(1);
    let version = match segs.next()? {
        v if v.eq_ignore_ascii_case("v1.0") => GraphVersion::V1,
        v if v.eq_ignore_ascii_case("beta") => GraphVersion::Beta,
        _ => return None,
    };
    Some((version, segs.map(decode_segment).collect()))
}

/// Graph's error envelope with `innerError` (`date`, `request-id`, `client-request-id`), as
/// in "Microsoft Graph error responses and resource types"
/// (<https://learn.microsoft.com/graph/errors>) and the captured 400 in pnp/pnpframework#139.
pub(crate) fn graph_error(status: StatusCode, code: &str, message: impl Into<String>) -> ArmError {
    let message = message.into();
    let rid = uuid::Uuid::new_v4().to_string();
    let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
    ArmError::new(status, code, message.clone()).with_body(json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": date,
                "request-id": rid,
                "client-request-id": rid,
            }
        }
    }))
}

fn not_found(id: &str) -> ArmError {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn bad_request(message: impl Into<String>) -> ArmError {
    graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
}

/// Bearer check against the Graph token set: 401 `InvalidAuthenticationToken`.
pub(crate) fn check_auth(headers: &HeaderMap, accepted: &[String]) -> Result<(), ArmError> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    let token = match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => "",
    };
    if token.is_empty() {
        return Err(with_challenge(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        )));
    }
    if accepted.iter().any(|t| t == token) {
        Ok(())
    } else {
        Err(with_challenge(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        )))
    }
}

pub(crate) fn with_challenge(e: ArmError) -> ArmError {
    e.with_header(
        HeaderName::from_static("www-authenticate"),
        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
    )
}

/// Graph's 429 with `Retry-After` and code `TooManyRequests` ("Microsoft Graph throttling
/// guidance", <https://learn.microsoft.com/graph/throttling>).
pub(crate) fn throttle_error(retry_after_secs: u64) -> ArmError {
    graph_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Too many requests.",
    )
    .with_header(
        HeaderName::from_static("retry-after"),
        &retry_after_secs.to_string(),
    )
}

/// True for requests that change the directory (counted as Graph writes).
pub(crate) fn is_write(method: &Method) -> bool {
    *method != Method::GET && *method != Method::HEAD
}

pub(crate) fn dispatch(
    st: &mut State,
    method: &Method,
    version: GraphVersion,
    segs: &[String],
    query: Option<&str>,
    body: Option<&Value>,
) -> Result<ArmResponse, ArmError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let allowed = |m: &Method, want: Method| -> Result<(), ArmError> {
        if *m == want {
            Ok(())
        } else {
            Err(graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                "Specified HTTP method is not allowed for the request target.",
            ))
        }
    };
    match s.as_slice() {
        [g, gid] if eq(g, "groups") => {
            allowed(method, Method::GET)?;
            get_group(st, version, gid, query)
        }
        [g, gid, m] if eq(g, "groups") && eq(m, "members") => {
            allowed(method, Method::GET)?;
            list_members(st, version, gid, query)
        }
        [g, gid, m, r] if eq(g, "groups") && eq(m, "members") && eq(r, "$ref") => {
            allowed(method, Method::POST)?;
            add_member(st, gid, body)
        }
        [g, gid, m, mid, r] if eq(g, "groups") && eq(m, "members") && eq(r, "$ref") => {
            allowed(method, Method::DELETE)?;
            remove_member(st, gid, mid)
        }
        [sp, id] if eq(sp, "servicePrincipals") => {
            allowed(method, Method::GET)?;
            get_service_principal(st, version, id)
        }
        [sp] if sp.len() > 17 && sp[..17].eq_ignore_ascii_case("servicePrincipals") => {
            // servicePrincipals(appId='{appId}')
            allowed(method, Method::GET)?;
            let inner = sp[17..]
                .strip_prefix('(')
                .and_then(|x| x.strip_suffix(')'))
                .unwrap_or("");
            let app = inner
                .split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("appId"))
                .map(|(_, v)| v.trim().trim_matches('\'').to_string())
                .ok_or_else(|| bad_request(format!("Invalid key predicate '{inner}'.")))?;
            let p = st
                .world
                .directory
                .by_app_id(&app)
                .ok_or_else(|| not_found(&format!("servicePrincipals(appId='{app}')")))?;
            Ok(entity(
                version,
                "servicePrincipals",
                st.world.directory.render(p),
            ))
        }
        [sp, id, m] if eq(sp, "servicePrincipals") && eq(m, "memberOf") => {
            allowed(method, Method::GET)?;
            member_of(st, version, id, query)
        }
        _ => {
            let seg = s
                .iter()
                .find(|x| {
                    !["groups", "members", "$ref", "servicePrincipals", "memberOf"]
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(x))
                })
                .or(s.first())
                .copied()
                .unwrap_or("");
            Err(graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("Resource not found for the segment '{seg}'."),
            ))
        }
    }
}

fn entity(version: GraphVersion, set: &str, v: Value) -> ArmResponse {
    let mut m = Map::new();
    m.insert(
        "@odata.context".into(),
        json!(format!(
            "https://graph.microsoft.com/{}/$metadata#{set}/$entity",
            version.prefix()
        )),
    );
    if let Value::Object(o) = v {
        for (k, val) in o {
            if k != "@odata.type" {
                m.insert(k, val);
            }
        }
    }
    ArmResponse::json(StatusCode::OK, Value::Object(m))
}

fn group<'a>(st: &'a State, gid: &str) -> Result<&'a EntraGroup, ArmError> {
    st.world
        .directory
        .groups
        .get(&gid.to_ascii_lowercase())
        .ok_or_else(|| not_found(gid))
}

/// Members as listed: on v1.0 service principals are omitted when
/// `graph_members_omit_service_principals` (a known issue: "Known issues with Microsoft
/// Graph", <https://learn.microsoft.com/graph/known-issues>).
fn visible_members(st: &State, g: &EntraGroup, omit_sps: bool) -> Vec<Value> {
    g.members
        .iter()
        .filter_map(|m| st.world.directory.live(m))
        .filter(|p| !(omit_sps && p.kind == crate::directory::PrincipalKind::ServicePrincipal))
        .map(|p| st.world.directory.render(p))
        .collect()
}

fn get_group(
    st: &State,
    version: GraphVersion,
    gid: &str,
    query: Option<&str>,
) -> Result<ArmResponse, ArmError> {
    let g = group(st, gid)?;
    let p = st
        .world
        .directory
        .live(&g.id)
        .ok_or_else(|| not_found(gid))?;
    let mut v = st.world.directory.render(p);
    // `$expand=members` is the documented workaround of the v1.0 known issue: it lists
    // service principals too (https://learn.microsoft.com/graph/known-issues).
    if query_decoded(query, "$expand").is_some_and(|e| e.eq_ignore_ascii_case("members"))
        && let Value::Object(m) = &mut v
    {
        m.insert(
            "members".into(),
            Value::Array(visible_members(st, g, false)),
        );
    }
    Ok(entity(version, "groups", v))
}

/// `$top` (1..=999) or the configured page size; `$skiptoken` = offset.
fn page_params(st: &State, query: Option<&str>) -> Result<(usize, usize), ArmError> {
    let top = match query_decoded(query, "$top") {
        None => st.config.graph_page_size.clamp(1, GRAPH_MAX_PAGE_SIZE),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=GRAPH_MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                // CHOSEN message (Graph's wording for an out-of-range page size).
                return Err(bad_request(format!(
                    "Invalid page size specified: '{t}'. Must be between 1 and {GRAPH_MAX_PAGE_SIZE} inclusive."
                )));
            }
        },
    };
    let skip = query_decoded(query, "$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((top, skip))
}

fn paged(
    st: &State,
    version: GraphVersion,
    path: &str,
    items: Vec<Value>,
    top: usize,
    skip: usize,
    explicit_top: bool,
) -> ArmResponse {
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
    let mut m = Map::new();
    m.insert(
        "@odata.context".into(),
        json!(format!(
            "https://graph.microsoft.com/{}/$metadata#directoryObjects",
            version.prefix()
        )),
    );
    if skip + top < total {
        let top_q = if explicit_top {
            format!("$top={top}&")
        } else {
            String::new()
        };
        m.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "{}/{}/{path}?{top_q}$skiptoken={}",
                st.base_url,
                version.prefix(),
                skip + top
            )),
        );
    }
    m.insert("value".into(), Value::Array(value));
    ArmResponse::json(StatusCode::OK, Value::Object(m))
}

fn list_members(
    st: &State,
    version: GraphVersion,
    gid: &str,
    query: Option<&str>,
) -> Result<ArmResponse, ArmError> {
    let g = group(st, gid)?;
    let (top, skip) = page_params(st, query)?;
    let omit = version == GraphVersion::V1 && st.config.graph_members_omit_service_principals;
    let items = visible_members(st, g, omit);
    Ok(paged(
        st,
        version,
        &format!("groups/{gid}/members"),
        items,
        top,
        skip,
        query_decoded(query, "$top").is_some(),
    ))
}

fn member_of(
    st: &State,
    version: GraphVersion,
    id: &str,
    query: Option<&str>,
) -> Result<ArmResponse, ArmError> {
    let d = &st.world.directory;
    let p = d.live(id).ok_or_else(|| not_found(id))?;
    let (top, skip) = page_params(st, query)?;
    let items: Vec<Value> = d
        .member_of(&p.id)
        .iter()
        .filter_map(|g| d.live(g))
        .map(|g| d.render(g))
        .collect();
    Ok(paged(
        st,
        version,
        &format!("servicePrincipals/{id}/memberOf"),
        items,
        top,
        skip,
        query_decoded(query, "$top").is_some(),
    ))
}

fn get_service_principal(
    st: &State,
    version: GraphVersion,
    id: &str,
) -> Result<ArmResponse, ArmError> {
    let p = st
        .world
        .directory
        .live(id)
        .filter(|p| p.kind == crate::directory::PrincipalKind::ServicePrincipal)
        .ok_or_else(|| not_found(id))?;
    Ok(entity(
        version,
        "servicePrincipals",
        st.world.directory.render(p),
    ))
}

/// The object id named by `@odata.id` (`…/directoryObjects/{id}`, `…/servicePrincipals/{id}`, …).
fn member_id(body: Option<&Value>) -> Result<String, ArmError> {
    let raw = body
        .and_then(|b| b.get("@odata.id"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            // CHOSEN message.
            bad_request("The request body must contain '@odata.id' referencing a directory object.")
        })?;
    let id = raw.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if crate::directory::is_guid(id) {
        Ok(id.to_string())
    } else {
        Err(bad_request(format!("Invalid object identifier '{id}'.")))
    }
}

fn add_member(st: &mut State, gid: &str, body: Option<&Value>) -> Result<ArmResponse, ArmError> {
    let gkey = group(st, gid)?.id.to_ascii_lowercase();
    let mid = member_id(body)?;
    if st.world.directory.live(&mid).is_none() {
        return Err(not_found(&mid));
    }
    let mkey = mid.to_ascii_lowercase();
    let Some(g) = st.world.directory.groups.get_mut(&gkey) else {
        return Err(not_found(gid));
    };
    if g.members.contains(&mkey) {
        return Err(bad_request(
            "One or more added object references already exist for the following modified properties: 'members'.",
        ));
    }
    g.members.push(mkey);
    Ok(ArmResponse::empty(StatusCode::NO_CONTENT))
}

fn remove_member(st: &mut State, gid: &str, mid: &str) -> Result<ArmResponse, ArmError> {
    let gkey = group(st, gid)?.id.to_ascii_lowercase();
    let mkey = mid.to_ascii_lowercase();
    let Some(g) = st.world.directory.groups.get_mut(&gkey) else {
        return Err(not_found(gid));
    };
    let before = g.members.len();
    g.members.retain(|m| *m != mkey);
    if g.members.len() == before {
        // 404 `Request_ResourceNotFound` naming the group (observed:
        // microsoftgraph/microsoft-graph-docs#18714).
        return Err(not_found(gid));
    }
    Ok(ArmResponse::empty(StatusCode::NO_CONTENT))
}

/// Most requests in one JSON batch ("Combine multiple HTTP requests using JSON batching",
/// <https://learn.microsoft.com/graph/json-batching>: "up to 20").
pub const GRAPH_MAX_BATCH: usize = 20;

/// `POST /v1.0/$batch` (JSON batching, same page): `{"requests":[{id, method, url, body?,
/// headers?}]}` → 200 `{"responses":[{id, status, headers, body}]}`, one response per
/// request, each evaluated on its own: its own status, and fault rules matched against its
/// own path (`/v1.0{url}`), so one member can fail or be throttled (429 with `Retry-After` in
/// its `headers`) while the others succeed. Each member counts as a Graph read / write
/// (the page: requests in a batch are evaluated individually against throttling limits);
/// the batch itself counts in `graph_batches`. More than 20 requests, a missing or
/// duplicate `id`, or no `method` / `url` → 400 `BadRequest` for the whole batch (texts
/// **CHOSEN**). `dependsOn` is not modelled.
pub(crate) fn batch(
    st: &mut State,
    version: GraphVersion,
    body: Option<&Value>,
) -> Result<ArmResponse, ArmError> {
    let reqs = body
        .and_then(|b| b.get("requests"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("Invalid batch payload format."))?;
    if reqs.len() > GRAPH_MAX_BATCH {
        return Err(bad_request(format!(
            "Invalid batch payload format: the number of requests ({}) exceeds the maximum of {GRAPH_MAX_BATCH}.",
            reqs.len()
        )));
    }
    let mut ids = std::collections::HashSet::new();
    let mut parsed = Vec::new();
    for r in reqs {
        let field = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(id), Some(m), Some(url)) = (field("id"), field("method"), field("url")) else {
            return Err(bad_request(
                "Invalid batch payload format: each request needs an id, a method and a url.",
            ));
        };
        if !ids.insert(id.clone()) {
            return Err(bad_request(format!(
                "Invalid batch payload format: the id '{id}' is used twice."
            )));
        }
        let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad_request(format!("Invalid method '{m}'.")))?;
        parsed.push((id, method, url, r.get("body").cloned()));
    }
    let mut responses = Vec::new();
    for (id, method, url, body) in parsed {
        let rel = if url.starts_with('/') {
            url.clone()
        } else {
            format!("/{url}")
        };
        let (path, query) = match rel.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (rel.clone(), None),
        };
        let full = format!("/{}{}", version.prefix(), path);
        if is_write(&method) {
            st.counters.graph_writes += 1;
        } else {
            st.counters.graph_reads += 1;
        }
        let resp: ArmResponse = match crate::faults::take(st, method.as_str(), &full, false) {
            Some(crate::faults::FaultAction::Throttle { retry_after_secs }) => {
                st.counters.throttled += 1;
                throttle_error(retry_after_secs).into()
            }
            Some(crate::faults::FaultAction::Status { code }) => {
                let e = crate::faults::status_error(code);
                graph_error(e.status, &e.code, e.message).into()
            }
            _ => match parse_path(&full) {
                Some((v, segs)) => dispatch(st, &method, v, &segs, query.as_deref(), body.as_ref())
                    .unwrap_or_else(Into::into),
                None => graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("Invalid request URL '{url}'."),
                )
                .into(),
            },
        };
        let mut headers = Map::new();
        for (n, v) in &resp.headers {
            if let Ok(v) = v.to_str() {
                headers.insert(n.as_str().to_string(), json!(v));
            }
        }
        if resp.body.is_some() {
            headers.insert("content-type".into(), json!("application/json"));
        }
        let mut item = Map::new();
        item.insert("id".into(), json!(id));
        item.insert("status".into(), json!(resp.status.as_u16()));
        item.insert("headers".into(), Value::Object(headers));
        if let Some(b) = resp.body {
            item.insert("body".into(), b);
        }
        responses.push(Value::Object(item));
    }
    Ok(ArmResponse::json(
        StatusCode::OK,
        json!({ "responses": responses }),
    ))
}
