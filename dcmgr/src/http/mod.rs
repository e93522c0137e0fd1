//! The Web API: routes under `/api/v1`, bearer-token authentication, extractors that turn
//! malformed requests into our error body, the OpenAPI document generated from the
//! handler annotations, and (in [`error`]) the one mapping of errors to HTTP.

pub mod accounts;
pub mod audit;
pub mod blobs;
pub mod bundles;
pub mod error;
pub mod events;
pub mod floating_ips;
pub mod idempotency;
pub mod images;
pub mod instances;
pub mod jobs;
pub mod keypairs;
pub mod metrics;
pub mod networks;
pub mod nodes;
pub mod security_groups;
pub mod serve;
pub mod server_groups;
pub mod sessions;
pub mod snapshots;
pub mod tokens;
pub mod users;
pub mod volumes;

use crate::ctx::{Caller, SharedCtx};
use crate::error::{ApiError, ApiResult};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use utoipa::OpenApi;
use vdc_schema::api::{ApiInfo, ListQuery, API_VERSION, EXTENSIONS};

/// Whether the request says its body is JSON (`application/json` or `application/*+json`);
/// `None` when it names no type.
pub(crate) fn json_content_type(headers: &axum::http::HeaderMap) -> Option<bool> {
    let v = headers.get(axum::http::header::CONTENT_TYPE)?;
    let m = v.to_str().ok().map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    Some(m.is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))))
}

/// A JSON object body; a malformed one answers 400 with what is wrong. Only an object:
/// serde would also read a struct from an array (`[]` as "all fields absent").
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if json_content_type(req.headers()) != Some(true) {
            return Err(ApiError::bad(
                "invalid_body",
                "the request body is not valid: send it with `Content-Type: application/json`",
            ));
        }
        // The object test looks at the first byte, so the body is parsed once (into `T`,
        // not through a `Value`): this extractor is on every create's path.
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                // axum's default limit of a buffered body.
                ApiError::bad("invalid_body", "the request body is over 2 MiB, the most a JSON body may be")
            } else {
                ApiError::bad("invalid_body", format!("the request body is not valid: {}", e.body_text()))
            }
        })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad("invalid_body", "the request body is not valid: it must be a JSON object"));
        }
        Ok(Body(Json::<T>::from_bytes(&bytes)?.0))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::bad("invalid_body", format!("the request body is not valid: {}", r.body_text()))
    }
}

/// 202 when a request changed something, 200 when it was already as asked.
pub fn status(outcome: crate::app::Outcome) -> axum::http::StatusCode {
    match outcome {
        crate::app::Outcome::Applied => axum::http::StatusCode::ACCEPTED,
        crate::app::Outcome::Already => axum::http::StatusCode::OK,
    }
}

/// Parses a path ID; a malformed ID is simply one that does not exist.
pub fn path_id<T: std::str::FromStr>(kind: &'static str, raw: &str) -> ApiResult<T> {
    raw.parse().map_err(|_| ApiError::not_found(kind, raw.chars().take(64).collect::<String>()))
}

/// List query parameters; unknown or malformed ones answer 400.
pub struct ListParams(pub ListQuery);

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let q = axum::extract::Query::<ListQuery>::from_request_parts(parts, state)
            .await
            .map_err(|r: QueryRejection| ApiError::bad("invalid_query", r.body_text()))?;
        Ok(ListParams(q.0))
    }
}

/// Takes one request from the bucket of the peer's address (calls without a valid token).
fn limit_by_address(parts: &Parts, ctx: &SharedCtx) -> ApiResult<()> {
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
    match (&ctx.rate_limits, peer) {
        (Some(limits), Some(peer)) => limits.check(&crate::app::rate_limit::Key::Addr(peer.0.ip())),
        _ => Ok(()),
    }
}

/// A call that needs no token, under the rate limit of its source address.
pub struct Anonymous;

impl FromRequestParts<SharedCtx> for Anonymous {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &SharedCtx) -> Result<Self, ApiError> {
        limit_by_address(parts, ctx)?;
        Ok(Anonymous)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case: RFC
/// 7235 makes it case-insensitive, and `bearer …` was refused).
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    Some(token.trim()).filter(|t| scheme.eq_ignore_ascii_case("bearer") && !t.is_empty())
}

impl FromRequestParts<SharedCtx> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &SharedCtx) -> Result<Self, ApiError> {
        // Taken already for this request (`idempotency`): not checked, nor counted, twice.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| ApiError::Unauthorized("send an API token as 'Authorization: Bearer <token>'".into()))
            .and_then(|header| {
                bearer(header)
                    .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'".into()))
            });
        // A refused token draws from its address's bucket (guessing tokens is limited
        // too), a valid one from its own.
        let (authenticated, raw) = match token {
            Ok(t) => (crate::app::account::authenticate(ctx, t).await.map(|c| (c, t)), Some(t)),
            Err(e) => (Err(e), None),
        };
        let caller = match authenticated {
            Ok((caller, token)) => {
                if let Some(limits) = &ctx.rate_limits {
                    let key = crate::app::rate_limit::Key::Token(crate::app::account::hash_token(token));
                    limits.check(&key)?;
                }
                caller
            }
            Err(e) => {
                // A revoked or expired token is known: its audit entry names it.
                if let (ApiError::TokenRefused { .. }, Some(t), Some(who)) =
                    (&e, raw, parts.extensions.get::<audit::Who>())
                {
                    let hash = crate::app::account::hash_token(t);
                    if let Ok(Some((id, user, account))) = crate::datastore::user::token_of_hash(&ctx.db, &hash).await {
                        use crate::app::session::Witness;
                        who.saw(user.parse().ok().as_ref(), id.parse().ok().as_ref(), account.parse().ok().as_ref());
                    }
                }
                limit_by_address(parts, ctx)?;
                return Err(e);
            }
        };
        let caller = match parts.headers.get(crate::app::account::ACT_IN_HEADER) {
            Some(h) => {
                let name = h.to_str().map_err(|_| ApiError::bad("invalid_header", "X-Vdc-Account is not text"))?;
                crate::app::account::act_in(ctx, caller, name.trim()).await?
            }
            None => caller,
        };
        if let Some(who) = parts.extensions.get::<audit::Who>() {
            who.set(&caller);
        }
        // Every call is gated here by what its route does (`app::authz`, the one place).
        let route = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_else(|| parts.uri.path().to_owned());
        crate::app::authz::check(&caller, crate::app::authz::route_op(parts.method.as_str(), &route))?;
        Ok(caller)
    }
}

#[utoipa::path(get, path = "/api/v1", tag = "meta", operation_id = "api_info",
    summary = "The API version and the extensions this dcmgr serves",
    responses((status = 200, description = "The API version and extensions", body = ApiInfo)))]
pub async fn info(_caller: Caller) -> Json<ApiInfo> {
    Json(ApiInfo {
        api_version: API_VERSION.to_owned(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
    })
}

async fn fallback() -> ApiError {
    ApiError::NotFound { kind: "route", id: "(see GET /api/v1/openapi.json)".into() }
}

/// A known path with a method it does not take: 405 with the error body every error has
/// (axum adds `Allow`).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let error = vdc_schema::api::ErrorDetail {
        code: "method_not_allowed".into(),
        message: format!("{} does not take {method}; the Allow header lists what it takes", uri.path()),
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, Json(vdc_schema::api::ErrorBody { error })).into_response()
}

/// The one call without a token: clients and tools read the contract before they hold one.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", operation_id = "openapi_document",
    summary = "This OpenAPI document", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
pub async fn openapi_json(_: Anonymous) -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

pub fn router(ctx: SharedCtx) -> Router {
    let api = Router::new()
        .route("/", get(info))
        .route("/openapi.json", get(openapi_json))
        .route("/accounts", post(accounts::create).get(accounts::list))
        .route("/accounts/{id}", get(accounts::show).delete(accounts::delete))
        .route("/accounts/{id}/tokens", post(accounts::create_token))
        .route("/accounts/{id}/members", post(users::add_member).get(users::members))
        .route("/accounts/{id}/members/{user_id}", delete(users::remove_member))
        .route("/accounts/{id}/membership", delete(users::leave))
        .route("/users", post(users::create).get(users::list))
        .route("/users/{id}", get(users::show).delete(users::delete))
        .route("/users/{id}/password", axum::routing::put(users::set_password))
        .route("/sessions", post(sessions::create))
        .route("/sessions/current", delete(sessions::delete))
        .route("/sessions/switch", post(sessions::switch))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", get(tokens::show).delete(tokens::revoke))
        .route("/accounts/{id}/quotas", get(accounts::quotas).put(accounts::set_quotas))
        .route("/quotas", get(accounts::own_quotas))
        .route("/keypairs", post(keypairs::create).get(keypairs::list))
        .route("/keypairs/{id}", get(keypairs::show).delete(keypairs::delete))
        .route("/images", post(images::create).get(images::list))
        .route("/images/{id}", get(images::show).delete(images::delete))
        .route("/images/{id}/file", axum::routing::put(images::upload))
        .route("/images/{id}/members", get(images::members))
        .route("/images/{id}/members/{account_id}", axum::routing::put(images::share).delete(images::unshare))
        .route("/networks", post(networks::create).get(networks::list))
        .route("/networks/{id}", get(networks::show).delete(networks::delete))
        .route("/security_groups", post(security_groups::create).get(security_groups::list))
        .route("/security_groups/{id}", get(security_groups::show).delete(security_groups::delete))
        .route("/security_groups/{id}/rules", post(security_groups::add_rule))
        .route("/security_groups/{id}/rules/{rule_id}", delete(security_groups::delete_rule))
        .route("/server_groups", post(server_groups::create).get(server_groups::list))
        .route("/server_groups/{id}", get(server_groups::show).delete(server_groups::delete))
        .route("/instances", post(instances::create).get(instances::list))
        .route("/instances/{id}", get(instances::show).delete(instances::delete))
        .route("/instances/{id}/start", post(instances::start))
        .route("/instances/{id}/stop", post(instances::stop))
        .route("/instances/{id}/halt", post(instances::halt))
        .route("/instances/{id}/poweron", post(instances::poweron))
        .route("/instances/{id}/reboot", post(instances::reboot))
        .route("/instances/{id}/terminate", post(instances::terminate))
        .route("/instances/{id}/console", get(instances::console))
        .route("/instances/{id}/capture", post(instances::capture))
        .route("/volumes", post(volumes::create).get(volumes::list))
        .route("/volumes/{id}", get(volumes::show).delete(volumes::delete))
        .route("/volumes/{id}/attach", post(volumes::attach))
        .route("/volumes/{id}/detach", post(volumes::detach))
        .route("/volumes/{id}/extend", post(volumes::extend))
        .route("/floating-ips", post(floating_ips::create).get(floating_ips::list))
        .route("/floating-ips/{id}", get(floating_ips::show).delete(floating_ips::delete))
        .route("/floating-ips/{id}/associate", post(floating_ips::associate))
        .route("/floating-ips/{id}/disassociate", post(floating_ips::disassociate))
        .route("/snapshots", post(snapshots::create).get(snapshots::list))
        .route("/snapshots/{id}", get(snapshots::show).delete(snapshots::delete))
        .route("/snapshots/{id}/image", post(snapshots::image))
        .route("/host_nodes", get(nodes::list_hosts))
        .route("/host_nodes/{id}", get(nodes::show_host).patch(nodes::update_host))
        .route("/host_nodes/{id}/instances", get(nodes::host_instances))
        .route("/host_nodes/{id}/evacuate", post(nodes::evacuate_host))
        .route("/storage_nodes", get(nodes::list_storage))
        .route("/storage_nodes/{id}", get(nodes::show_storage))
        .route("/bundle", get(bundles::export))
        .route("/bundle/key", get(bundles::key))
        .route("/bundle/plan", post(bundles::plan))
        .route("/bundle/import", post(bundles::import))
        .route("/bundle/chunks/missing", post(bundles::missing))
        .route("/bundle/chunks/wanted", post(bundles::wanted))
        .route("/bundle/imports", get(bundles::list))
        .route("/bundle/imports/{id}", get(bundles::show))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{id}", get(jobs::show))
        .route("/events", get(events::stream))
        .route("/audit", get(audit::list))
        .route("/whoami", get(users::whoami))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the audit's: a request whose client hung up still ends there too.
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), idempotency::layer))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), audit::layer));
    Router::new()
        .nest("/api/v1", api)
        // For agents, with their node credential: not part of the tenants' API.
        .route("/agent/v1/blobs/{sha256}", get(blobs::get))
        .route("/agent/v1/images/{id}/file", axum::routing::put(blobs::capture_upload))
        .route("/agent/v1/images/{id}/capture-failure", post(blobs::capture_failure))
        // For the operator's Prometheus: not part of the tenants' API (`metrics.rs`).
        .route("/metrics", get(metrics::serve))
        .merge(vdc_webui::router())
        // After every route, so each request is timed under its matched route template.
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(fallback)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The error answers every operation shares because of how a request is taken apart
/// (see `error.rs` for the status policy), added here once rather than in each handler:
///
/// - 401 `unauthorized`, `token_expired`, `token_revoked` on every operation that needs a
///   token (the [`Caller`] extractor);
/// - 403 `read_only` on every one that changes state (a reader's token; `app::authz`);
/// - 503 `busy` on the same ones: resolving the token and every call after it use the
///   database, and a transaction that keeps losing races, or a pool with no free
///   connection, answers 503;
/// - 429 `rate_limited` (with `Retry-After`) on every operation (`app::rate_limit`);
/// - 400 on every operation with a body ([`Body`]: `invalid_body`) or query parameters
///   ([`ListParams`]: `invalid_query` and the paging codes).
///
/// An operation that documents one of these statuses itself (with the codes it adds)
/// keeps its own. Every error answer is an [`vdc_schema::api::ErrorBody`].
struct CommonErrors;

impl CommonErrors {
    const UNAUTHORIZED: &'static str = "Unauthorized";
    const BUSY: &'static str = "Busy";
    const BAD_REQUEST: &'static str = "BadRequest";
    const FORBIDDEN: &'static str = "Forbidden";
    const TOO_MANY_REQUESTS: &'static str = "TooManyRequests";
    const IDEMPOTENCY_IN_USE: &'static str = "IdempotencyKeyInUse";
    const IDEMPOTENCY_REUSED: &'static str = "IdempotencyKeyReused";

    fn error_response(description: &str) -> utoipa::openapi::Response {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build()
    }
}

impl utoipa::Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::Ref;
        let components = doc.components.get_or_insert_with(Default::default);
        components.responses.insert(
            Self::UNAUTHORIZED.into(),
            Self::error_response(
                "`unauthorized`: no `Authorization: Bearer <token>` header, or a token that is not valid; \
                 `token_expired`, `token_revoked`",
            )
            .into(),
        );
        components.responses.insert(
            Self::FORBIDDEN.into(),
            Self::error_response(
                "`read_only`: the token acts with the `reader` role; `owner_only`: only an owner manages members and \
                 other users' tokens",
            )
            .into(),
        );
        let mut too_many = Self::error_response(
            "`rate_limited`: over the request rate of the token (or of the source address without a valid \
             token; dcmgr's `[auth] rate_limit_per_second`); retry after `Retry-After` seconds",
        );
        too_many.headers.insert(
            "Retry-After".into(),
            utoipa::openapi::HeaderBuilder::new()
                .schema(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before the next request is let through"))
                .build(),
        );
        components.responses.insert(Self::TOO_MANY_REQUESTS.into(), too_many.into());
        components.responses.insert(
            Self::BUSY.into(),
            Self::error_response(
                "`busy`: the database is busy; retry the request. (`too_many_connections`: dcmgr holds as many \
                 connections as its `[http]` limits allow, in all or from this address; written before the \
                 connection is closed, on any request)",
            )
            .into(),
        );
        components.responses.insert(
            Self::BAD_REQUEST.into(),
            Self::error_response(
                "The request is not valid: a malformed body (`invalid_body`: not JSON, a missing or unknown field, \
                 a wrong type) or query (`invalid_query`, `invalid_limit`, `invalid_cursor`, `invalid_state_filter`), \
                 or a malformed `Idempotency-Key` (`invalid_idempotency_key`)",
            )
            .into(),
        );
        components.responses.insert(
            Self::IDEMPOTENCY_IN_USE.into(),
            Self::error_response(
                "`idempotency_key_in_use`: a request with this `Idempotency-Key` is under way; retry when it has \
                 ended. `idempotency_secret_not_kept`: the request with this key was done, and its answer held a \
                 secret, shown once and not kept (the message names what was made)",
            )
            .into(),
        );
        components.responses.insert(
            Self::IDEMPOTENCY_REUSED.into(),
            Self::error_response(
                "`idempotency_key_reused`: this `Idempotency-Key` was used for another request (method, path or \
                 body) in the last 24 hours",
            )
            .into(),
        );
        let idempotency_key = {
            use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
            ParameterBuilder::new()
                .name(idempotency::HEADER)
                .parameter_in(ParameterIn::Header)
                .required(utoipa::openapi::Required::False)
                .description(Some(
                    "1 to 255 visible ASCII characters naming this request: a retry with the same key (by the same \
                     user in the same account, within 24 hours) is answered with the first success again, marked \
                     `Idempotent-Replayed: true`, instead of running again. Only a success is kept: a refused or failed \
                     request lets its key go (`invalid_idempotency_key` for a malformed key)",
                ))
                .schema(Some(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::String)
                        .min_length(Some(1))
                        .max_length(Some(idempotency::MAX_KEY))
                        .pattern(Some("^[!-~]+$")),
                ))
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                ("GET", &mut item.get),
                ("PUT", &mut item.put),
                ("POST", &mut item.post),
                ("DELETE", &mut item.delete),
                ("OPTIONS", &mut item.options),
                ("HEAD", &mut item.head),
                ("PATCH", &mut item.patch),
                ("TRACE", &mut item.trace),
            ];
            for (method, op) in operations.into_iter().filter_map(|(m, o)| o.as_mut().map(|o| (m, o))) {
                // `security(())` on an operation: callable without a token.
                let public =
                    op.security.as_ref().is_some_and(|s| s.iter().any(|r| *r == SecurityRequirement::default()));
                let responses = &mut op.responses.responses;
                // Every call, with a token or without, is under a rate limit when one is set.
                responses
                    .entry("429".into())
                    .or_insert_with(|| Ref::from_response_name(Self::TOO_MANY_REQUESTS).into());
                if !public {
                    responses.entry("401".into()).or_insert_with(|| Ref::from_response_name(Self::UNAUTHORIZED).into());
                    responses.entry("503".into()).or_insert_with(|| Ref::from_response_name(Self::BUSY).into());
                    if crate::app::authz::route_op(method, path) != crate::app::authz::Op::Read {
                        responses
                            .entry("403".into())
                            .or_insert_with(|| Ref::from_response_name(Self::FORBIDDEN).into());
                    }
                }
                // A POST with a JSON body, or none, takes an `Idempotency-Key`.
                let json_body =
                    op.request_body.as_ref().is_none_or(|b| b.content.keys().all(|t| t == "application/json"));
                if method == "POST" && !public && json_body {
                    op.parameters.get_or_insert_with(Vec::new).push(idempotency_key.clone());
                    let responses = &mut op.responses.responses;
                    responses
                        .entry("409".into())
                        .or_insert_with(|| Ref::from_response_name(Self::IDEMPOTENCY_IN_USE).into());
                    responses
                        .entry("422".into())
                        .or_insert_with(|| Ref::from_response_name(Self::IDEMPOTENCY_REUSED).into());
                    responses.entry("400".into()).or_insert_with(|| Ref::from_response_name(Self::BAD_REQUEST).into());
                }
                let responses = &mut op.responses.responses;
                let has_query = op.parameters.iter().flatten().any(|p| matches!(p.parameter_in, ParameterIn::Query));
                if op.request_body.is_some() || has_query {
                    responses.entry("400".into()).or_insert_with(|| Ref::from_response_name(Self::BAD_REQUEST).into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vdc API", description = "The vdc datacenter hypervisor Web API. Every call but \
        `GET /api/v1/openapi.json` needs `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\": \"…\", \"message\": \"…\"}}` with \
        400 for bad input, 401 without a valid token, 403 for admin-only calls, 404 for an unknown ID or one of \
        another account (the same answer), 409 for a state conflict, 422 for quota or capacity, 503 when an agent \
        or the database is unavailable. An admin's token acts in another account when a call names it (name or ID) \
        in `X-Vdc-Account`, as an owner there (other tokens naming another account get 403)."),
    modifiers(&BearerAuth, &CommonErrors),
    // What `GET /api/v1/events` carries in each message's `data` (the response documents the message).
    components(schemas(vdc_schema::api::Event)),
    paths(
        info, openapi_json,
        accounts::create, accounts::list, accounts::show, accounts::delete, accounts::create_token,
        users::create, users::list, users::show, users::delete, users::members, users::add_member, users::remove_member,
        users::leave,
        tokens::create, tokens::list, tokens::show, tokens::revoke,
        accounts::quotas, accounts::set_quotas, accounts::own_quotas,
        keypairs::create, keypairs::list, keypairs::show, keypairs::delete,
        images::create, images::list, images::show, images::delete, images::upload,
        images::members, images::share, images::unshare,
        networks::create, networks::list, networks::show, networks::delete,
        security_groups::create, security_groups::list, security_groups::show, security_groups::delete, security_groups::add_rule, security_groups::delete_rule,
        server_groups::create, server_groups::list, server_groups::show, server_groups::delete,
        instances::create, instances::list, instances::show, instances::delete, instances::start, instances::stop,
        instances::halt, instances::poweron, instances::reboot, instances::terminate, instances::console,
        instances::capture,
        volumes::create, volumes::list, volumes::show, volumes::delete, volumes::attach, volumes::detach, volumes::extend,
        snapshots::create, snapshots::list, snapshots::show, snapshots::delete, snapshots::image,
        floating_ips::create, floating_ips::list, floating_ips::show, floating_ips::delete, floating_ips::associate,
        floating_ips::disassociate,
        nodes::list_hosts, nodes::show_host, nodes::update_host, nodes::host_instances, nodes::evacuate_host, nodes::list_storage,
        nodes::show_storage,
        jobs::list, jobs::show,
        events::stream,
        audit::list, users::whoami, users::set_password,
        sessions::create, sessions::delete, sessions::switch,
        bundles::key, bundles::export, bundles::plan, bundles::import, bundles::missing, bundles::wanted, bundles::list, bundles::show,
    )
)]
pub struct ApiDoc;

/// The OpenAPI document of this dcmgr (checked in as `dcmgr/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
