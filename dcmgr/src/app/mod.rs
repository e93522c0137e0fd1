//! Application decisions, per resource: validation of what a request asks, and the
//! decision (already done, apply, refuse) made on the state read inside the request's
//! transaction. Nothing here knows HTTP; SQL lives in [`crate::datastore`].

pub mod floating_ip;
pub mod interface;
pub mod keypair;
pub mod secgroup;

pub use crate::resources::{name_some, page, paging, state_filter, validate_name};
