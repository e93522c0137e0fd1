//! Flow changes as one OpenFlow 1.3 bundle, sent by `ovs-ofctl --bundle`: a bundle commits
//! all of its deletes and adds atomically, so a packet never meets a half-replaced set.
//!
//! Why ovs-ofctl: the pipeline needs Nicira extensions (ct, NXM registers, set_field on
//! tun_id) whose encoding Open vSwitch's own tool gets right by construction; a
//! hand-written encoder of those would be long and fragile. Only its exit status is read.

use crate::cmd::{self, CmdError, Runner};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, thiserror::Error)]
#[error("flow bundle not applied: {0}")]
pub struct OfctlError(pub String);

impl From<CmdError> for OfctlError {
    fn from(e: CmdError) -> Self {
        OfctlError(e.to_string())
    }
}

pub struct Ofctl {
    /// `unix:<rundir>/<bridge>.mgmt`: the bridge's management socket.
    target: String,
    tools: Runner,
}

/// The bundle replacing, per cookie, every flow of the cookie with the given ones.
fn bundle(sets: &[(u64, Vec<String>)]) -> String {
    let mut text = String::new();
    for (cookie, flows) in sets {
        text.push_str(&format!("delete cookie={cookie:#x}/-1\n"));
        for f in flows {
            text.push_str(&format!("add cookie={cookie:#x},{f}\n"));
        }
    }
    text
}

impl Ofctl {
    pub fn new(rundir: &Path, bridge: &str) -> Self {
        Self::with_runner(rundir, bridge, cmd::system())
    }

    /// [`Ofctl::new`] with the given way of running `ovs-ofctl`.
    pub fn with_runner(rundir: &Path, bridge: &str, tools: Runner) -> Self {
        Ofctl { target: format!("unix:{}", PathBuf::from(rundir).join(format!("{bridge}.mgmt")).display()), tools }
    }

    /// Replaces, in one bundle, every flow of each cookie with the given flows (an empty
    /// list removes them).
    pub async fn replace(&self, sets: &[(u64, Vec<String>)]) -> Result<(), OfctlError> {
        let text = bundle(sets);
        tracing::debug!(target = %self.target, "flow bundle:\n{text}");
        let args = ["-O", "OpenFlow13", "--bundle", "add-flows", &self.target, "-"];
        self.tools.run_with_input("ovs-ofctl", &args, Some(&text)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::FakeRunner;
    use crate::ovs::flows;

    #[tokio::test]
    async fn a_cookie_replacement_is_one_bundle_of_deletes_then_adds() {
        let f = FakeRunner::new();
        let of = Ofctl::with_runner(Path::new("/run/vdc/ovs"), "br-int", f.clone());
        // A tunnel's flows replaced, a removed port's flows deleted, in one bundle.
        let tunnel = flows::cookie(flows::TUNNEL, "10.0.0.2");
        let port = flows::cookie(flows::PORT, "vif-gone");
        of.replace(&[(tunnel, flows::tunnel_flows(7)), (port, vec![])]).await.unwrap();
        let calls = f.calls();
        assert_eq!(calls.len(), 1, "one ovs-ofctl run: {:?}", f.lines());
        assert_eq!(
            calls[0].argv,
            ["ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", "unix:/run/vdc/ovs/br-int.mgmt", "-"]
        );
        let mut want = format!("delete cookie={tunnel:#x}/-1\n");
        for fl in flows::tunnel_flows(7) {
            want.push_str(&format!("add cookie={tunnel:#x},{fl}\n"));
        }
        want.push_str(&format!("delete cookie={port:#x}/-1\n"));
        assert_eq!(calls[0].input.as_deref(), Some(want.as_str()));
        assert!(want.starts_with("delete cookie=0x4"), "the tunnel kind is the cookie's top byte: {want}");
        assert!(want.contains(",in_port=7"), "{want}");
    }

    #[tokio::test]
    async fn a_refused_bundle_is_an_error_naming_the_command() {
        let f = FakeRunner::new();
        f.fail(
            &["ovs-ofctl"],
            "ovs-ofctl: unix:/run/br-int.mgmt: failed to connect to socket (No such file or directory)",
        );
        let of = Ofctl::with_runner(Path::new("/run"), "br-int", f.clone());
        let e = of.replace(&[(flows::BASE, flows::base_flows())]).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "flow bundle not applied: `ovs-ofctl -O OpenFlow13 --bundle add-flows unix:/run/br-int.mgmt -` failed: \
             ovs-ofctl: unix:/run/br-int.mgmt: failed to connect to socket (No such file or directory)"
        );
    }
}
