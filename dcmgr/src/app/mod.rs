//! Application decisions, per resource: validation of what a request asks, and the
//! decision (already done, apply, refuse) made on the state read inside the request's
//! transaction. Nothing here knows HTTP; SQL lives in [`crate::datastore`].

pub mod account;
pub mod image;
pub mod instance;
pub mod job;
pub mod keypair;
pub mod lifecycle;
pub mod network;
pub mod node;
pub mod scheduler;
pub mod snapshot;
pub mod volume;

pub use crate::resources::{name_some, page, paging, state_filter, validate_name};

/// What a state-changing request did, for the handler to answer: `Applied` (202, the job
/// follows the change) or `Already` (200, nothing to change, the job already finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Already,
    Applied,
}
