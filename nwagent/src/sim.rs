//! The simulated network agent: remembers which interfaces it was asked to plug and
//! reports them active after a delay. Keeps nothing across restarts: dcmgr re-sends every
//! interface when the agent registers, exactly what a real nwagent relies on too.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vdc_bus::sim::SimKnobs;
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, NetworkAgent};
use vdc_schema::bus::{InterfaceReport, InterfaceSpec, ObjectReport};
use vdc_schema::id::VifId;
use vdc_schema::ObservedInterface;

pub struct SimNetwork {
    sink: ReportSink,
    knobs: SimKnobs,
    ports: Arc<Mutex<HashMap<VifId, InterfaceSpec>>>,
    /// How many ensures each interface received (tests check what a change re-sends).
    ensures: Mutex<HashMap<VifId, u64>>,
}

impl SimNetwork {
    pub fn new(sink: ReportSink, knobs: SimKnobs) -> Self {
        SimNetwork { sink, knobs, ports: Default::default(), ensures: Default::default() }
    }

    /// How many ensures of `id` this agent received.
    pub fn ensures_of(&self, id: &VifId) -> u64 {
        self.ensures.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// The spec of a plugged interface (tests check security group updates with it).
    pub fn port(&self, id: &VifId) -> Option<InterfaceSpec> {
        self.ports.lock().unwrap().get(id).cloned()
    }

    fn report(&self, id: VifId, spec_gen: u64, state: ObservedInterface, reason: Option<String>) {
        self.sink.report(ObjectReport::Interface(InterfaceReport { id, spec_gen, state, reason }));
    }
}

#[async_trait]
impl NetworkAgent for SimNetwork {
    async fn ensure_interface(&self, spec: InterfaceSpec) -> Result<(), AgentError> {
        *self.ensures.lock().unwrap().entry(spec.id.clone()).or_default() += 1;
        if self.knobs.should_drop() {
            return Ok(());
        }
        tokio::time::sleep(self.knobs.delay / 4).await;
        let (id, gen) = (spec.id.clone(), spec.spec_gen);
        self.ports.lock().unwrap().insert(id.clone(), spec);
        if self.knobs.should_fail() {
            self.report(id, gen, ObservedInterface::Failed, Some("injected failure (sim fail_rate)".into()));
        } else {
            self.report(id, gen, ObservedInterface::Active, None);
        }
        Ok(())
    }

    async fn ensure_interface_absent(&self, id: VifId, spec_gen: u64) -> Result<(), AgentError> {
        {
            let mut ports = self.ports.lock().unwrap();
            if ports.get(&id).is_some_and(|p| crate::ovs::superseded(p.spec_gen, spec_gen)) {
                return Ok(());
            }
            ports.remove(&id);
        }
        self.report(id, spec_gen, ObservedInterface::Absent, None);
        Ok(())
    }

    async fn report_all(&self) -> Result<(), AgentError> {
        let ports: Vec<(VifId, u64)> =
            self.ports.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.spec_gen)).collect();
        for (id, gen) in ports {
            self.report(id, gen, ObservedInterface::Active, None);
        }
        Ok(())
    }
}
