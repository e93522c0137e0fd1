//! dcmgr, the central controller: it owns the virtual-datacenter model in SQL, serves the
//! Web API, places instances and reconciles the agents toward the recorded intent.
//!
//! - [`api`]: the axum router, authentication, extractors and the OpenAPI document.
//! - [`resources`]: one module per resource (handlers, queries and rules together).
//! - [`scheduler`]: least-usage placement with atomic reservations.
//! - [`controller`]: the bus side: agent membership, ensure dispatch, state reports and
//!   the reconciler.
//! - [`server`]: wires it all up; [`server::Dcmgr::start`] is what `dcmgr` and `vdc up` run.

pub mod api;
pub mod config;
pub mod controller;
pub mod ctx;
pub mod db;
pub mod error;
pub mod resources;
pub mod scheduler;
pub mod server;

pub use config::Config;
pub use server::Dcmgr;
