//! How dcmgr and the agents talk.
//!
//! - [`transport`]: the [`Transport`] trait with an in-process and a NATS implementation;
//!   the all-in-one uses the first, a datacenter the second, and nothing above this layer
//!   can tell them apart.
//! - [`adapter`]: dcmgr's side. `HvaClient`, `NwClient` and `StaClient` implement the
//!   agent traits of `vdc_schema::agent` by sending ensure commands over the bus.
//! - [`agent`]: the agent side. Registration, heartbeats, the command loop and the
//!   [`ReportSink`], which journals every state report on disk until dcmgr acks it.
//! - [`journal`]: that on-disk journal.
//! - [`cmd`]: how an agent runs host commands, and the recording fake its tests use.
//! - [`blob`]: how an agent fetches image data from dcmgr's store.
//! - [`rootfs`]: the rules of root filesystem tarballs, checked by dcmgr and by hva as it
//!   unpacks them.
//! - [`coalesce`]: at most one worker per object however often dcmgr re-sends.
//! - [`metrics`]: the process's Prometheus registry.

pub mod adapter;
pub mod agent;
pub mod blob;
pub mod cmd;
pub mod coalesce;
pub mod conn_limits;
pub mod fileio;
pub mod idmap;
pub mod journal;
pub mod metrics;
pub mod room;
pub mod rootfs;
pub mod sim;
pub mod transport;

pub use adapter::{with_trace, HvaClient, NwClient, StaClient};
pub use agent::{AgentConfig, AgentHandle, CommandHandler, ReportSink};
pub use transport::{BusError, InProc, Message, Nats, Subscription, Transport};
