//! dcmgr, the central controller: it owns the virtual-datacenter model in SQL, serves the
//! Web API, places instances and reconciles the agents toward the recorded intent.
//!
//! Four layers, each resource with a module in each that it needs:
//!
//! - [`http`]: routes, extractors, authentication, the OpenAPI annotations and the one
//!   mapping of [`error::ApiError`] to HTTP. Handlers parse the request, call [`app`] and
//!   shape the response; nothing else.
//! - [`app`]: per resource, validate and decide. Decisions are pure functions where they
//!   can be; each state-changing request is one transaction that locks what it decides
//!   on, re-reads it, decides and applies.
//! - [`datastore`]: typed rows and every SQL statement, the pool, row locks and retries.
//! - [`controller`]: the bus side: agent membership, dispatch of ensures built from the
//!   model, state reports folded in (each in one transaction), the reconciler.
//!
//! [`server`] wires it all up; [`server::Dcmgr::start`] is what `dcmgr` and `vdc up` run.

pub mod app;
pub mod blobs;
pub mod config;
pub mod controller;
pub mod ctx;
pub mod datastore;
pub mod error;
pub mod http;
pub mod server;

/// The datastore under its short name, as most code calls it.
pub use datastore as db;

pub use config::Config;
pub use server::Dcmgr;
