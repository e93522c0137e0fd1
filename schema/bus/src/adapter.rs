//! dcmgr's side: the agent traits implemented by sending commands over the bus. dcmgr
//! holds an `Arc<dyn Hypervisor>` per host and cannot tell this adapter from a driver.

use crate::transport::Transport;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use vdc_schema::agent::{AgentError, Hypervisor, NetworkAgent, StorageAgent};
use vdc_schema::bus::{
    self, subject, AgentKind, CaptureSpec, Command, InstanceSpec, InterfaceSpec, Query, QueryReply, SnapshotImageSpec,
    SnapshotSpec, VolumeSpec,
};
use vdc_schema::id::*;

tokio::task_local! {
    static TRACE: bus::Trace;
}

/// Runs `fut` with `trace` attached to every command it sends, so the agent's span
/// carries the same resource and job IDs as dcmgr's.
pub async fn with_trace<F: std::future::Future>(trace: bus::Trace, fut: F) -> F::Output {
    TRACE.scope(trace, fut).await
}

async fn send(bus: &dyn Transport, kind: AgentKind, node: &str, cmd: &Command) -> Result<(), AgentError> {
    let trace = TRACE.try_with(|t| t.clone()).ok();
    bus.publish(&subject::agent(kind, node), bus::encode_traced(cmd, trace).into())
        .await
        .map_err(|e| AgentError::Unavailable(e.to_string()))
}

pub struct HvaClient {
    pub bus: Arc<dyn Transport>,
    pub node_id: HostNodeId,
}

#[async_trait]
impl Hypervisor for HvaClient {
    async fn ensure_instance(&self, spec: InstanceSpec) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Hva, self.node_id.as_str(), &Command::EnsureInstance(spec)).await
    }

    async fn ensure_instance_absent(&self, id: InstanceId, spec_gen: u64) -> Result<(), AgentError> {
        let cmd = Command::EnsureInstanceAbsent { id, spec_gen };
        send(self.bus.as_ref(), AgentKind::Hva, self.node_id.as_str(), &cmd).await
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Hva, self.node_id.as_str(), &Command::ReportAll).await
    }

    async fn console_log(&self, id: InstanceId) -> Result<String, AgentError> {
        let q = bus::encode(&Query::ConsoleLog { id });
        let subj = subject::agent_query(AgentKind::Hva, self.node_id.as_str());
        let raw = self
            .bus
            .request(&subj, q.into(), Duration::from_secs(5))
            .await
            .map_err(|e| AgentError::Unavailable(e.to_string()))?;
        match bus::decode::<QueryReply>(&raw).map_err(|e| AgentError::Driver(e.to_string()))? {
            QueryReply::ConsoleLog { output } => Ok(output),
            QueryReply::Error { code, message } if code == "not_found" => Err(AgentError::NotFound(message)),
            QueryReply::Error { message, .. } => Err(AgentError::Driver(message)),
        }
    }

    async fn capture_instance(&self, spec: CaptureSpec) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Hva, self.node_id.as_str(), &Command::CaptureInstance(spec)).await
    }
}

pub struct NwClient {
    pub bus: Arc<dyn Transport>,
    pub node_id: HostNodeId,
}

#[async_trait]
impl NetworkAgent for NwClient {
    async fn ensure_interface(&self, spec: InterfaceSpec) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Nwagent, self.node_id.as_str(), &Command::EnsureInterface(spec)).await
    }

    async fn ensure_interface_absent(&self, id: VifId, spec_gen: u64) -> Result<(), AgentError> {
        let cmd = Command::EnsureInterfaceAbsent { id, spec_gen };
        send(self.bus.as_ref(), AgentKind::Nwagent, self.node_id.as_str(), &cmd).await
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Nwagent, self.node_id.as_str(), &Command::ReportAll).await
    }
}

pub struct StaClient {
    pub bus: Arc<dyn Transport>,
    pub node_id: StorageNodeId,
}

#[async_trait]
impl StorageAgent for StaClient {
    async fn ensure_volume(&self, spec: VolumeSpec) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Sta, self.node_id.as_str(), &Command::EnsureVolume(spec)).await
    }

    async fn ensure_volume_absent(&self, id: VolumeId, spec_gen: u64) -> Result<(), AgentError> {
        let cmd = Command::EnsureVolumeAbsent { id, spec_gen };
        send(self.bus.as_ref(), AgentKind::Sta, self.node_id.as_str(), &cmd).await
    }

    async fn ensure_snapshot(&self, spec: SnapshotSpec) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Sta, self.node_id.as_str(), &Command::EnsureSnapshot(spec)).await
    }

    async fn ensure_snapshot_absent(&self, id: SnapshotId, volume_id: VolumeId) -> Result<(), AgentError> {
        let cmd = Command::EnsureSnapshotAbsent { id, volume_id };
        send(self.bus.as_ref(), AgentKind::Sta, self.node_id.as_str(), &cmd).await
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Sta, self.node_id.as_str(), &Command::ReportAll).await
    }

    async fn image_from_snapshot(&self, spec: SnapshotImageSpec) -> Result<(), AgentError> {
        send(self.bus.as_ref(), AgentKind::Sta, self.node_id.as_str(), &Command::ImageFromSnapshot(spec)).await
    }
}
