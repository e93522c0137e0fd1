//! The audit layer and `GET /api/v1/audit`.
//!
//! [`layer`] wraps every route under `/api/v1`: it names each request with an
//! `x-request-id` (on every answer) and, for POST, PUT, PATCH and DELETE, records one
//! audit entry once the handler has answered, refusals included (401, 403, 409, 422…).
//! Who called comes from the [`Caller`] extractor through a [`Who`] slot (a call refused
//! before its token resolved has no user); the operation from the route's OpenAPI
//! `operationId`; the error code from the answer's [`ErrorCode`] extension; a create's
//! new ID from its JSON answer.

use crate::app::audit as app;
use crate::app::session::Witness;
use crate::ctx::{Caller, SharedCtx};
use crate::error::{ApiError, ApiResult};
use crate::http::error::ErrorCode;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use vdc_schema::api::{AuditEntry, AuditQuery, ErrorBody, Page};
use vdc_schema::id::{AccountId, AuditId, RequestId, TokenId, UserId};

/// Where the [`Caller`] extractor leaves who is calling, for [`layer`] to read after the
/// handler (set before authorization, so a refused call still names its user). A token
/// refused as revoked or expired leaves its own IDs; a sign-in leaves its user and the
/// session it made.
#[derive(Clone, Default)]
pub struct Who(Arc<Mutex<Seen>>);

#[derive(Clone, Default)]
struct Seen {
    user: Option<UserId>,
    token: Option<TokenId>,
    account: Option<AccountId>,
}

impl Who {
    pub fn set(&self, caller: &Caller) {
        self.saw(Some(&caller.user_id), caller.token_id.as_ref(), Some(&caller.account_id));
    }
    fn get(&self) -> Seen {
        self.0.lock().unwrap().clone()
    }
}

impl crate::app::session::Witness for Who {
    fn saw(&self, user: Option<&UserId>, token: Option<&TokenId>, account: Option<&AccountId>) {
        let mut s = self.0.lock().unwrap();
        s.user = user.cloned().or(s.user.take());
        s.token = token.cloned().or(s.token.take());
        s.account = account.cloned().or(s.account.take());
    }
}

/// A witness for calls the audit layer does not wrap (reads).
pub struct Nobody;

impl crate::app::session::Witness for Nobody {
    fn saw(&self, _: Option<&UserId>, _: Option<&TokenId>, _: Option<&AccountId>) {}
}

/// A created object's ID in a JSON answer larger than this is not looked for.
const MAX_SCANNED_BODY: u64 = 1 << 20;

/// Kinds of objects, as the operations' IDs start (`security_group_add_rule`).
const KINDS: &[&str] = &[
    "security_group",
    "server_group",
    "host_node",
    "floating_ip",
    "account",
    "session",
    "bundle",
    "image",
    "instance",
    "keypair",
    "network",
    "snapshot",
    "token",
    "user",
    "volume",
];

/// `instance_create` → `instance.create`; a token minted through its account is a token.
pub fn action_of(operation_id: &str) -> String {
    if operation_id == "account_create_token" {
        return "token.create".into();
    }
    for k in KINDS {
        if let Some(verb) = operation_id.strip_prefix(k).and_then(|r| r.strip_prefix('_')) {
            return format!("{k}.{verb}");
        }
    }
    operation_id.to_owned()
}

/// (method, route under `/api/v1`) → action, from the OpenAPI document: an operation
/// added to the API has its action without a table to keep in step.
fn actions() -> &'static HashMap<(String, String), String> {
    static MAP: OnceLock<HashMap<(String, String), String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let doc = crate::http::openapi();
        let mut map = HashMap::new();
        for (path, item) in doc.paths.paths {
            let route = path.strip_prefix("/api/v1").unwrap_or(&path).to_owned();
            let export = (route == crate::app::authz::EXPORT).then_some(item.get).flatten();
            for (method, op) in [
                ("POST", item.post),
                ("PUT", item.put),
                ("PATCH", item.patch),
                ("DELETE", item.delete),
                ("GET", export),
            ] {
                if let Some(id) = op.and_then(|o| o.operation_id) {
                    map.insert((method.to_owned(), route.clone()), action_of(&id));
                }
            }
        }
        map
    })
}

/// The value of the `{id}` segment of `route` in `path` (both under `/api/v1`).
fn path_id(route: &str, path: &str) -> Option<String> {
    let at = route.split('/').position(|s| s == "{id}")?;
    let raw = path.split('/').nth(at)?;
    Some(raw.chars().take(64).collect())
}

/// The ID a create answered with: its `id`, or that of the object it wraps
/// (`resource` of a 202 rather than its `job`; `keypair`, `token`, `account`).
fn created_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let wrapped = || {
        let obj = v.as_object()?;
        obj.get("resource")
            .and_then(|r| r["id"].as_str())
            .or_else(|| obj.iter().filter(|(k, _)| *k != "job").find_map(|(_, x)| x["id"].as_str()))
    };
    let id = v["id"].as_str().or_else(wrapped)?;
    Some(id.chars().take(64).collect())
}

pub async fn layer(State(ctx): State<SharedCtx>, req: Request, next: Next) -> Response {
    let request_id = RequestId::generate();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|m| strip_api(m.as_str()));
    // An export is a GET that captures disks and stops instances (`authz::EXPORT`).
    let export = method == Method::GET && route.as_deref() == Some(crate::app::authz::EXPORT);
    if !export && !matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        let mut resp = next.run(req).await;
        set_request_id(&mut resp, &request_id);
        return resp;
    }
    // On a task of its own: a client that hangs up drops this future, and the change it
    // asked for may be committed already; the task still ends and records it (red team,
    // 2026-12-07: of 10 key pairs made by requests whose clients hung up, 7 were audited).
    use tracing::Instrument;
    let span = tracing::Span::current();
    let task = tokio::spawn(audited(ctx, req, next, request_id, route, method).instrument(span));
    match task.await {
        Ok(resp) => resp,
        Err(e) => ApiError::internal(format!("the request's task ended: {e}")).into_response(),
    }
}

/// Runs a state-changing request and records it in the audit log.
async fn audited(
    ctx: SharedCtx,
    mut req: Request,
    next: Next,
    request_id: RequestId,
    route: Option<String>,
    method: Method,
) -> Response {
    let started = std::time::Instant::now();
    let time = chrono::Utc::now();
    let who = Who::default();
    req.extensions_mut().insert(who.clone());
    let path = strip_api(req.uri().path());
    let source = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_default();

    let mut resp = next.run(req).await;

    let action = route
        .as_ref()
        .and_then(|r| actions().get(&(method.as_str().to_owned(), r.clone())))
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    let resource_kind = action.split_once('.').map(|(k, _)| k.to_owned()).unwrap_or_default();
    let mut resource_id = route.as_deref().and_then(|r| path_id(r, &path));
    let status = resp.status();
    let is_create = action.ends_with(".create") || (method == Method::POST && resource_id.is_none());
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.is_success()
        && is_create
        && json
        && resp.body().size_hint().exact().is_some_and(|n| n <= MAX_SCANNED_BODY)
    {
        let (parts, body) = resp.into_parts();
        // An in-memory body of a known size: reading it cannot fail or grow.
        let bytes = axum::body::to_bytes(body, MAX_SCANNED_BODY as usize).await.unwrap_or_default();
        if let Some(id) = created_id(&bytes) {
            resource_id = Some(id);
        }
        resp = Response::from_parts(parts, Body::from(bytes));
    }
    let seen = who.get();
    let entry = AuditEntry {
        id: AuditId::generate(),
        time,
        user_id: seen.user,
        token_id: seen.token,
        account_id: seen.account,
        action,
        resource_kind,
        resource_id,
        status: status.as_u16(),
        error_code: resp.extensions().get::<ErrorCode>().map(|c| c.0.clone()),
        request_id: request_id.clone(),
        source,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    app::record(&ctx, entry).await;
    set_request_id(&mut resp, &request_id);
    resp
}

fn strip_api(p: &str) -> String {
    p.strip_prefix("/api/v1").unwrap_or(p).to_owned()
}

fn set_request_id(resp: &mut Response, id: &RequestId) {
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

/// The audit query; unknown or malformed parameters answer 400 `invalid_query`.
pub struct AuditParams(AuditQuery);

impl<S: Send + Sync> FromRequestParts<S> for AuditParams {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let q = Query::<AuditQuery>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::bad("invalid_query", r.body_text()))?;
        Ok(AuditParams(q.0))
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", operation_id = "audit_list",
    summary = "The audit log, newest first: every state-changing request, answered or refused (an account's \
        owner: that account's; an admin: every account's)",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of entries, newest first; `next_cursor` leads to older ones",
            body = Page<AuditEntry>),
        (status = 400, description = "`invalid_query` (an unknown parameter, a malformed time or ID, `until` \
            before `since`), `invalid_limit`, `invalid_cursor`", body = ErrorBody),
        (status = 403, description = "`owner_only`: only an owner of the account, or an admin, reads its audit log",
            body = ErrorBody),
        (status = 404, description = "`not_found`: `account` is another account (for a non-admin)", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    AuditParams(q): AuditParams,
) -> ApiResult<Json<Page<AuditEntry>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_changing_operation_has_a_kind_and_a_verb() {
        let map = actions();
        assert!(map.len() > 40, "{map:?}");
        for ((method, route), action) in map {
            let (kind, verb) = action.split_once('.').unwrap_or_else(|| panic!("{method} {route}: {action}"));
            assert!(KINDS.contains(&kind) && !verb.is_empty(), "{method} {route}: {action}");
        }
        assert_eq!(map[&("POST".into(), "/instances".into())], "instance.create");
        assert_eq!(map[&("POST".into(), "/accounts/{id}/tokens".into())], "token.create");
        assert_eq!(
            map[&("DELETE".into(), "/security_groups/{id}/rules/{rule_id}".into())],
            "security_group.delete_rule"
        );
    }

    #[test]
    fn ids_from_paths_and_answers() {
        assert_eq!(path_id("/instances/{id}/start", "/instances/i-abc/start").as_deref(), Some("i-abc"));
        assert_eq!(path_id("/instances", "/instances"), None);
        assert_eq!(created_id(br#"{"job":{"id":"job-1"},"resource":{"id":"i-1"}}"#).as_deref(), Some("i-1"));
        assert_eq!(created_id(br#"{"account":{"id":"a-1"},"token":"vdc_x"}"#).as_deref(), Some("a-1"));
        assert_eq!(created_id(br#"{"token":{"id":"tok-1"},"secret":"s"}"#).as_deref(), Some("tok-1"));
        assert_eq!(created_id(br#"{"keypair":{"id":"ssh-1"},"private_key":null}"#).as_deref(), Some("ssh-1"));
        assert_eq!(created_id(br#"{"job":{"id":"job-1"}}"#), None);
        assert_eq!(created_id(b"[]"), None);
    }
}
