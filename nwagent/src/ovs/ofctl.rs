//! Flow changes as one OpenFlow 1.3 bundle, sent by `ovs-ofctl --bundle`: a bundle commits
//! all of its deletes and adds atomically, so a packet never meets a half-replaced set.
//!
//! Why ovs-ofctl: the pipeline needs Nicira extensions (ct, NXM registers, set_field on
//! tun_id) whose encoding Open vSwitch's own tool gets right by construction; a
//! hand-written encoder of those would be long and fragile. Only its exit status is read.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, thiserror::Error)]
#[error("ovs-ofctl: {0}")]
pub struct OfctlError(pub String);

pub struct Ofctl {
    /// `unix:<rundir>/<bridge>.mgmt`: the bridge's management socket.
    target: String,
}

impl Ofctl {
    pub fn new(rundir: &Path, bridge: &str) -> Self {
        Ofctl { target: format!("unix:{}", PathBuf::from(rundir).join(format!("{bridge}.mgmt")).display()) }
    }

    /// Replaces, in one bundle, every flow of each cookie with the given flows (an empty
    /// list removes them).
    pub async fn replace(&self, sets: &[(u64, Vec<String>)]) -> Result<(), OfctlError> {
        let mut text = String::new();
        for (cookie, flows) in sets {
            text.push_str(&format!("delete cookie={cookie:#x}/-1\n"));
            for f in flows {
                text.push_str(&format!("add cookie={cookie:#x},{f}\n"));
            }
        }
        tracing::debug!(target = %self.target, "flow bundle:\n{text}");
        let mut child = tokio::process::Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "--bundle", "add-flows", &self.target, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| OfctlError(format!("cannot run: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(text.as_bytes()).await.map_err(|e| OfctlError(e.to_string()))?;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(|e| OfctlError(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(OfctlError(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }
}
