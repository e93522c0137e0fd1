//! Host commands (`qemu-img`, `genisoimage`, `tar`), wrapped once: every call is logged
//! with its exact arguments at debug level, and a failure carries its stderr.

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("{program} {args:?} failed: {detail}")]
pub struct CommandError {
    pub program: String,
    pub args: Vec<String>,
    pub detail: String,
}

/// Runs a program to completion (blocking: call it from `spawn_blocking`).
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    tracing::debug!(program, ?args, "host command");
    let err = |detail: String| CommandError {
        program: program.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        detail,
    };
    let out = Command::new(program).args(args).output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
}
