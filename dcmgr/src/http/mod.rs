//! The Web API: routes under `/api/v1`, bearer-token authentication, extractors that turn
//! malformed requests into our error body, the OpenAPI document generated from the
//! handler annotations, and (in [`error`]) the one mapping of errors to HTTP.

pub mod error;
pub mod floating_ips;
pub mod keypairs;
pub mod security_groups;

use crate::ctx::{Caller, SharedCtx};
use crate::error::{ApiError, ApiResult};
use crate::resources::{account, image, instance, job, network, node, snapshot, volume};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use utoipa::OpenApi;
use vdc_schema::api::{ApiInfo, ListQuery, API_VERSION, EXTENSIONS};

/// A JSON body; a malformed one answers 400 with what is wrong.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::bad("invalid_body", format!("the request body is not valid: {}", r.body_text()))
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

impl FromRequestParts<SharedCtx> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &SharedCtx) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| ApiError::Unauthorized("send an API token as 'Authorization: Bearer <token>'".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'".into()))?;
        account::authenticate(ctx, token).await
    }
}

#[utoipa::path(get, path = "/api/v1", tag = "meta", responses((status = 200, body = ApiInfo)))]
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

async fn openapi_json(State(_): State<SharedCtx>) -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

pub fn router(ctx: SharedCtx) -> Router {
    let api = Router::new()
        .route("/", get(info))
        .route("/openapi.json", get(openapi_json))
        .route("/accounts", post(account::create).get(account::list))
        .route("/accounts/{id}", get(account::show).delete(account::delete))
        .route("/accounts/{id}/tokens", post(account::create_token))
        .route("/keypairs", post(keypairs::create).get(keypairs::list))
        .route("/keypairs/{id}", get(keypairs::show).delete(keypairs::delete))
        .route("/images", post(image::create).get(image::list))
        .route("/images/{id}", get(image::show).delete(image::delete))
        .route("/networks", post(network::create).get(network::list))
        .route("/networks/{id}", get(network::show).delete(network::delete))
        .route("/security_groups", post(security_groups::create).get(security_groups::list))
        .route("/security_groups/{id}", get(security_groups::show).delete(security_groups::delete))
        .route("/security_groups/{id}/rules", post(security_groups::add_rule))
        .route("/security_groups/{id}/rules/{rule_id}", delete(security_groups::delete_rule))
        .route("/instances", post(instance::create).get(instance::list))
        .route("/instances/{id}", get(instance::show).delete(instance::delete))
        .route("/instances/{id}/start", post(instance::start))
        .route("/instances/{id}/stop", post(instance::stop))
        .route("/instances/{id}/halt", post(instance::halt))
        .route("/instances/{id}/poweron", post(instance::poweron))
        .route("/instances/{id}/reboot", post(instance::reboot))
        .route("/instances/{id}/terminate", post(instance::terminate))
        .route("/instances/{id}/console", get(instance::console))
        .route("/volumes", post(volume::create).get(volume::list))
        .route("/volumes/{id}", get(volume::show).delete(volume::delete))
        .route("/volumes/{id}/attach", post(volume::attach))
        .route("/volumes/{id}/detach", post(volume::detach))
        .route("/volumes/{id}/extend", post(volume::extend))
        .route("/floating-ips", post(floating_ips::create).get(floating_ips::list))
        .route("/floating-ips/{id}", get(floating_ips::show).delete(floating_ips::delete))
        .route("/floating-ips/{id}/associate", post(floating_ips::associate))
        .route("/floating-ips/{id}/disassociate", post(floating_ips::disassociate))
        .route("/snapshots", post(snapshot::create).get(snapshot::list))
        .route("/snapshots/{id}", get(snapshot::show).delete(snapshot::delete))
        .route("/host_nodes", get(node::list_hosts))
        .route("/host_nodes/{id}", get(node::show_host))
        .route("/storage_nodes", get(node::list_storage))
        .route("/storage_nodes/{id}", get(node::show_storage))
        .route("/jobs", get(job::list))
        .route("/jobs/{id}", get(job::show))
        .fallback(fallback);
    Router::new()
        .nest("/api/v1", api)
        .merge(vdc_webui::router())
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

#[derive(OpenApi)]
#[openapi(
    info(title = "vdc API", description = "The vdc datacenter hypervisor Web API. Every call needs `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth),
    paths(
        info,
        account::create, account::list, account::show, account::delete, account::create_token,
        keypairs::create, keypairs::list, keypairs::show, keypairs::delete,
        image::create, image::list, image::show, image::delete,
        network::create, network::list, network::show, network::delete,
        security_groups::create, security_groups::list, security_groups::show, security_groups::delete,
        security_groups::add_rule, security_groups::delete_rule,
        instance::create, instance::list, instance::show, instance::delete, instance::start, instance::stop,
        instance::halt, instance::poweron, instance::reboot, instance::terminate, instance::console,
        volume::create, volume::list, volume::show, volume::delete, volume::attach, volume::detach, volume::extend,
        snapshot::create, snapshot::list, snapshot::show, snapshot::delete,
        floating_ips::create, floating_ips::list, floating_ips::show, floating_ips::delete, floating_ips::associate,
        floating_ips::disassociate,
        node::list_hosts, node::show_host, node::list_storage, node::show_storage,
        job::list, job::show,
    )
)]
pub struct ApiDoc;

/// The OpenAPI document of this dcmgr (checked in as `dcmgr/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
