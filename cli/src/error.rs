//! Errors of the `vdc` commands and the exit codes they map to.

use crate::client::ClientError;
use crate::config::ConfigError;
use crate::resolve::ResolveError;
use vdc_schema::api::Job;

/// Exit code for API, transport and other run-time failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for invalid invocations, as clap uses.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or its inputs are wrong.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A name on the command line matched no resource, or several.
    #[error(transparent)]
    Resolve(ResolveError),
    /// A job waited for with `--wait` ended without success.
    #[error("job {} ({} {}) {}: {}", .0.id, .0.action, .0.resource_id, .0.state, .0.message.as_deref().unwrap_or("no message"))]
    JobFailed(Box<Job>),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("cannot encode output: {0}")]
    Encode(String),
    /// The command cannot do what was asked; the message says what would make it work.
    #[error("{0}")]
    Failed(String),
}

impl From<ResolveError> for CliError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Client(c) => CliError::Client(c),
            other => CliError::Resolve(other),
        }
    }
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io { context: context.into(), source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Config(e) if e.is_usage() => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }

    /// The line printed on stderr: `error: <message> (<code>)` for API-side failures.
    pub fn report(&self) -> String {
        match self {
            CliError::Client(e) => format!("error: {e} ({})", e.code()),
            // The code ends the first line, before a list of candidates.
            CliError::Resolve(e) => match e.to_string().split_once('\n') {
                Some((first, rest)) => format!("error: {first} ({})\n{rest}", e.code()),
                None => format!("error: {e} ({})", e.code()),
            },
            CliError::JobFailed(_) => format!("error: {self} (job_failed)"),
            _ => format!("error: {self}"),
        }
    }
}
