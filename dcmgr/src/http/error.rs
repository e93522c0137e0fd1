//! The one mapping of [`ApiError`] to HTTP: status and `{"error": {code, message}}` body.
//!
//! Status policy: 400 bad input, 401 no or bad token, 403 not allowed (admin only),
//! 404 unknown *or not yours* (the same answer for both), 409 state conflict,
//! 422 quota or capacity, 429 over the request rate (with `Retry-After`), 503 an agent (or the database) is unavailable.
//! `Internal` keeps its detail for the log and tells the client only that it happened.

use crate::error::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vdc_schema::api::{ErrorBody, ErrorDetail};

/// The error code of an error answer, as a response extension.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) | ApiError::TokenRefused { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Denied { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } | ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Busy(_) => "the database is busy; retry the request".to_owned(),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal error; the server log has the details".to_owned()
            }
            other => other.to_string(),
        };
        let code = self.code().to_owned();
        let body = ErrorBody { error: ErrorDetail { code: code.clone(), message } };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let ApiError::RateLimited { retry_after_secs } = self {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, retry_after_secs.into());
        }
        // For the audit log, which records the code without parsing the body.
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}
