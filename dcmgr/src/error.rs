//! The error of a request's decision: a stable code and a message for the client (the
//! status it maps to is decided in one place, [`crate::http::error`]).

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// 401 with a code of its own: `token_expired`, `token_revoked`.
    #[error("{message}")]
    TokenRefused { code: &'static str, message: String },
    /// 403 with a code of its own (`read_only`, `owner_only`; see `app::authz`).
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// Over the caller's request rate (`app::rate_limit`): 429 with `Retry-After`.
    #[error("too many requests: retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 429 with a code of its own: too many of something held open (`too_many_streams`).
    #[error("{message}")]
    TooMany { code: &'static str, message: String },
    /// Lost a race for a lock or a generated unique value; the whole transaction is
    /// retried by [`crate::db::retry`], and only reaches the client (503) if that fails.
    #[error("the database is busy: {0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into() }
    }
    pub fn too_many(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::TooMany { code, message: message.into() }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict { code, message: message.into() }
    }
    pub fn not_found(kind: &'static str, id: impl std::fmt::Display) -> Self {
        ApiError::NotFound { kind, id: vdc_schema::echoed(&id.to_string()) }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Unavailable { code, .. }
            | ApiError::TokenRefused { code, .. }
            | ApiError::Denied { code, .. }
            | ApiError::TooMany { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Busy(_) => "busy",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_retryable(&e) {
            ApiError::Busy(e.to_string())
        } else {
            ApiError::Internal(format!("database: {e}"))
        }
    }
}
