//! One trait per agent API. The real agent, the simulated agent and dcmgr's bus adapter
//! all implement the same trait, so dcmgr cannot tell them apart.
//!
//! Every `ensure_*` is idempotent and returns once the request is accepted; the outcome
//! arrives later as a state report.

use crate::bus::{CaptureSpec, InstanceSpec, InterfaceSpec, SnapshotImageSpec, SnapshotSpec, VolumeSpec};
use crate::id::*;
use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent could not be reached or did not answer.
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    /// The agent does not know the object asked about.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request cannot be carried out as given.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend failed.
    #[error("driver error: {0}")]
    Driver(String),
}

/// hva: runs instances.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    async fn ensure_instance(&self, spec: InstanceSpec) -> Result<(), AgentError>;
    async fn ensure_instance_absent(&self, id: InstanceId, spec_gen: u64) -> Result<(), AgentError>;
    /// Re-report every instance on the host.
    async fn report_all(&self) -> Result<(), AgentError>;
    /// The serial console output kept for an instance.
    async fn console_log(&self, id: InstanceId) -> Result<String, AgentError>;
    /// Starts a capture of a powered-off instance's root disk; the outcome goes to dcmgr
    /// over HTTP (the upload, or a failure), not as a report.
    async fn capture_instance(&self, spec: CaptureSpec) -> Result<(), AgentError>;
    /// Waits for the work its commands started to end (at shutdown, once no more
    /// commands come): a removal cut short by the process's exit is left half done.
    async fn drain(&self) {}
}

/// nwagent: plugs interfaces into virtual networks.
#[async_trait]
pub trait NetworkAgent: Send + Sync {
    async fn ensure_interface(&self, spec: InterfaceSpec) -> Result<(), AgentError>;
    /// Removes an interface's port, unless it is held at a generation newer than
    /// `spec_gen` (dcmgr decided the removal before the interface was placed here again);
    /// `spec_gen` 0 removes whatever is held.
    async fn ensure_interface_absent(&self, id: VifId, spec_gen: u64) -> Result<(), AgentError>;
    async fn report_all(&self) -> Result<(), AgentError>;
    /// Waits for the work its commands started to end (at shutdown, once no more
    /// commands come): a removal cut short by the process's exit is left half done.
    async fn drain(&self) {}
}

/// sta: keeps volumes and snapshots, and exports volumes to hosts.
#[async_trait]
pub trait StorageAgent: Send + Sync {
    async fn ensure_volume(&self, spec: VolumeSpec) -> Result<(), AgentError>;
    async fn ensure_volume_absent(&self, id: VolumeId, spec_gen: u64) -> Result<(), AgentError>;
    async fn ensure_snapshot(&self, spec: SnapshotSpec) -> Result<(), AgentError>;
    async fn ensure_snapshot_absent(&self, id: SnapshotId, volume_id: VolumeId) -> Result<(), AgentError>;
    async fn report_all(&self) -> Result<(), AgentError>;
    /// Starts sending a snapshot's data as an image's; the outcome goes to dcmgr over
    /// HTTP (the upload, or a failure), not as a report.
    async fn image_from_snapshot(&self, spec: SnapshotImageSpec) -> Result<(), AgentError>;
    /// Waits for the work its commands started to end (at shutdown, once no more
    /// commands come): a removal cut short by the process's exit is left half done.
    async fn drain(&self) {}
}
