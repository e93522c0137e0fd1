//! Running the storage tools (zfs, btrfs, tgtadm, qemu-img, cp).
//!
//! Why commands and not libraries: `zfs-core`/`libzetta` need libzfs_core, which zfs-fuse
//! does not ship; tgt has no library API (tgtadm's IPC format is private to tgt); btrfs
//! ioctls would need unsafe code for what `btrfs subvolume` already does well.

use std::process::Stdio;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run {prog}: {err}")]
    Spawn { prog: String, err: String },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// Runs a command and returns its standard output; a non-zero exit is an error carrying
/// the command line and what it printed on standard error.
pub async fn run(prog: &str, args: &[&str]) -> Result<String, CmdError> {
    tracing::debug!("run {prog} {}", args.join(" "));
    let out = tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CmdError::Spawn { prog: prog.into(), err: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let stderr = if stderr.is_empty() { format!("exit status {}", out.status) } else { stderr };
        Err(CmdError::Failed { cmd: format!("{prog} {}", args.join(" ")), stderr })
    }
}

/// Runs `bash -c` for a pipeline (zfs send | zfs receive); every part's arguments must be
/// quoted by the caller with [`quote`].
pub async fn pipeline(script: &str) -> Result<String, CmdError> {
    run("bash", &["-o", "pipefail", "-c", script]).await
}

/// Single-quotes a word for the shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
