//! The errors of background work (dispatch, reports, reconciliation): nobody reads them
//! but the log and the retry logic, so they say what failed, not what to tell a client.

use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed or was busy; the work is tried again later (the reconciler
    /// re-queues it, or the agent re-sends the report).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The agent could not be reached; it gets everything again when it registers.
    #[error("agent unavailable: {0}")]
    AgentUnavailable(String),
    /// A stored value does not parse: a bug or a hand-edited database.
    #[error("inconsistent model: {0}")]
    Model(String),
}

impl Error {
    pub fn model(e: impl std::fmt::Display) -> Self {
        Error::Model(e.to_string())
    }

    /// Expected while agents come and go: logged quietly.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::AgentUnavailable(_)) || matches!(self, Error::Db(e) if crate::db::is_retryable(e))
    }
}

impl From<vdc_schema::agent::AgentError> for Error {
    fn from(e: vdc_schema::agent::AgentError) -> Self {
        Error::AgentUnavailable(e.to_string())
    }
}

/// Application code shared with the API (e.g. an instance's end) reports in the API's
/// terms; in the background only the kind matters.
impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unavailable { message, .. } => Error::AgentUnavailable(message),
            ApiError::Busy(why) => Error::Db(sqlx::Error::Protocol(format!("busy: {why}"))),
            other => Error::Model(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
