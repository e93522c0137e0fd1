//! `/api/v1/sessions`: signing in to the console with a user's password, signing out,
//! switching accounts (`app::session`).

use crate::app::session as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::{ApiError, ApiResult};
use crate::http::audit::{Nobody, Who};
use crate::http::{Anonymous, Body};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateSession, ErrorBody, Session, SwitchSession};

/// The source address (for the sign-in limit) and the audit slot of this request.
pub struct Origin {
    addr: Option<std::net::IpAddr>,
    who: Option<Who>,
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let addr = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        Ok(Origin { addr, who: parts.extensions.get::<Who>().cloned() })
    }
}

impl Origin {
    pub(crate) fn witness(&self) -> &dyn app::Witness {
        match &self.who {
            Some(w) => w,
            None => &Nobody,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", operation_id = "session_create",
    summary = "Sign in with a user's name and password: a short-lived token (`[auth] session_ttl_secs`, 12 hours \
        by default) of the user in one of its accounts", security(()), request_body = CreateSession,
    responses(
        (status = 201, description = "The session and its token (shown only here)", body = Session),
        (status = 400, description = "A malformed body (`invalid_body`)", body = ErrorBody),
        (status = 401, description = "`bad_credentials`: no such user, no password set, or a wrong password (one \
            answer for all three)", body = ErrorBody),
        (status = 404, description = "`not_found`: `account` is not one of the user's", body = ErrorBody),
        (status = 422, description = "`no_account`: the user is a member of no account", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many sign-ins for this user name or from this address \
            (`[auth] signin_per_minute`, `signin_burst`; always on); retry after `Retry-After` seconds",
            body = ErrorBody),
        (status = 503, description = "`busy`: the database is busy; retry", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    _: Anonymous,
    origin: Origin,
    Body(req): Body<CreateSession>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let s = app::sign_in(&ctx, req, origin.addr, origin.witness()).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "sessions", operation_id = "session_delete",
    summary = "Sign out: revoke the session of this call (it answers 401 `token_revoked` from now on)",
    responses(
        (status = 204, description = "Signed out"),
        (status = 409, description = "`not_a_session`: this call's token is an API token (revoke it with \
            `DELETE /api/v1/tokens/{id}`)", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller) -> ApiResult<StatusCode> {
    app::sign_out(&ctx, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/sessions/switch", tag = "sessions", operation_id = "session_switch",
    summary = "Switch accounts: a new session in another account of the user; the session of this call is revoked",
    request_body = SwitchSession,
    responses(
        (status = 201, description = "The new session and its token (shown only here)", body = Session),
        (status = 404, description = "`not_found`: not an account of the user", body = ErrorBody),
        (status = 409, description = "`not_a_session`: this call's token is an API token", body = ErrorBody)))]
pub async fn switch(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    origin: Origin,
    Body(req): Body<SwitchSession>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let s = app::switch(&ctx, &caller, req, origin.witness()).await?;
    Ok((StatusCode::CREATED, Json(s)))
}
