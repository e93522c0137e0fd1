//! The `vdc` command-line client, and [`client::Client`], the typed Web API client that
//! the CLI, integration tests and tools share.

pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod external;
pub mod output;
pub mod parse;
pub mod push;
pub mod resolve;
pub mod ssh;
pub mod up;

#[cfg(test)]
mod testutil;

pub use client::{Client, ClientError};
