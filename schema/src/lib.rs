//! The vdc contract: every type that crosses a process boundary, and nothing else.
//!
//! - [`id`]: typed, prefixed resource IDs (`i-…`, `vol-…`, …).
//! - [`net`]: addresses: [`net::MacAddr`], and IPv4 addresses and networks (CIDRs) as
//!   `std::net::Ipv4Addr` and `ipnet::Ipv4Net`.
//! - [`api`]: Web API request and response bodies (with OpenAPI derives).
//! - [`bus`]: messages between dcmgr and the agents, carrying [`bus::PROTOCOL_VERSION`].
//! - [`agent`]: one trait per agent API, implemented by the real agent, the simulated agent
//!   and dcmgr's bus adapter alike.
//!
//! This crate does no I/O: no sqlx, axum, virt or tokio here.

pub mod agent;
pub mod api;
pub mod bus;
pub mod id;
pub mod net;
pub mod state;

pub use id::*;
pub use state::*;
