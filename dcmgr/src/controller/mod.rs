//! The bus side of dcmgr: agent membership and liveness, the dispatcher that sends
//! ensures, the handler of state reports, and the reconciler.
//!
//! Invariants: dcmgr only ever sends idempotent ensures built from the database; a
//! report is applied only if its generation is newer than the last applied one for that
//! object; durability comes from the database and reconciliation, not the broker.

pub mod dispatch;
pub mod error;
pub mod image;
pub mod instance;
pub mod interface;
pub mod leader;
pub mod membership;
pub mod reconciler;
pub mod reports;
pub mod sent;
pub mod snapshot;
pub mod volume;

pub use error::{Error, Result};
