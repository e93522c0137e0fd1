//! Running host commands (sta's `zfs`, `btrfs`, `tgtadm`, `qemu-img`; nwagent's
//! `ovs-ofctl`, `ip`, `nft`, `dnsmasq`), wrapped once, behind one small trait shared by
//! the agents.
//!
//! Drivers hold a [`Runner`]: [`SystemRunner`] runs the tools, logging each command line
//! at debug level; [`FakeRunner`] records every command line (and what was written to its
//! standard input) and answers from a script, so driver logic has unit tests without root
//! or the tools.

use async_trait::async_trait;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run {prog}: {err}")]
    Spawn { prog: String, err: String },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

impl CmdError {
    fn failed(prog: &str, args: &[&str], stderr: String) -> Self {
        CmdError::Failed { cmd: command_line(prog, args), stderr }
    }
}

fn command_line(prog: &str, args: &[&str]) -> String {
    std::iter::once(prog).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// How an agent runs a host command.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs a command with `input` on its standard input (none: /dev/null) and returns
    /// its standard output; a non-zero exit is an error carrying the command line and
    /// what it printed on standard error.
    async fn run_with_input(&self, prog: &str, args: &[&str], input: Option<&str>) -> Result<String, CmdError>;

    /// Runs a command with nothing on its standard input.
    async fn run(&self, prog: &str, args: &[&str]) -> Result<String, CmdError> {
        self.run_with_input(prog, args, None).await
    }

    /// Runs `bash -c` for a pipeline (zfs send | zfs receive); every part's arguments
    /// must be quoted by the caller with [`quote`].
    async fn pipeline(&self, script: &str) -> Result<String, CmdError> {
        self.run("bash", &["-o", "pipefail", "-c", script]).await
    }
}

/// Single-quotes a word for the shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What drivers hold.
pub type Runner = Arc<dyn CommandRunner>;

/// The runner of the real tools.
pub fn system() -> Runner {
    Arc::new(SystemRunner)
}

/// Runs the real tools, logging each command line at debug level.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

#[async_trait]
impl CommandRunner for SystemRunner {
    async fn run_with_input(&self, prog: &str, args: &[&str], input: Option<&str>) -> Result<String, CmdError> {
        let started = std::time::Instant::now();
        let r = self.exec(prog, args, input).await;
        // Labelled by the tool (a bounded set), never by its arguments (which hold IDs).
        let tool = prog.rsplit('/').next().unwrap_or(prog);
        crate::metrics::driver_op("exec", tool, started, r.is_ok());
        r
    }
}

impl SystemRunner {
    async fn exec(&self, prog: &str, args: &[&str], input: Option<&str>) -> Result<String, CmdError> {
        match input {
            None => tracing::debug!("run {}", command_line(prog, args)),
            Some(i) => tracing::debug!("run {} with {} bytes on stdin", command_line(prog, args), i.len()),
        }
        let spawn_err = |e: std::io::Error| CmdError::Spawn { prog: prog.into(), err: e.to_string() };
        let mut child = tokio::process::Command::new(prog)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).await.map_err(spawn_err)?;
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let stderr = if stderr.is_empty() { format!("exit status {}", out.status) } else { stderr };
            Err(CmdError::failed(prog, args, stderr))
        }
    }
}

/// One command the fake was asked to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Program first.
    pub argv: Vec<String>,
    pub input: Option<String>,
}

type Action = Arc<dyn Fn(&Call) -> Result<String, String> + Send + Sync>;

struct Rule {
    prefix: Vec<String>,
    /// Used in order; the last one answers every further call.
    replies: Vec<Action>,
    /// The last reply has answered: a reply added now replaces it.
    spent: bool,
}

/// A recording fake: keeps every command (program first, with its standard input) and
/// answers from a script of rules, each a prefix of the command line with its replies.
/// The longest matching prefix answers; its replies are used in order and the last one
/// repeats (until a reply added after it has answered replaces it). A command no rule
/// matches succeeds with no output.
#[derive(Default)]
pub struct FakeRunner {
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeRunner {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeRunner::default())
    }

    /// Adds a reply to the commands starting with `prefix`: success with `stdout`.
    pub fn ok(&self, prefix: &[&str], stdout: &str) -> &Self {
        let out = stdout.to_owned();
        self.answer(prefix, move |_| Ok(out.clone()))
    }

    /// Adds a reply to the commands starting with `prefix`: failure with `stderr`.
    pub fn fail(&self, prefix: &[&str], stderr: &str) -> &Self {
        let err = stderr.to_owned();
        self.answer(prefix, move |_| Err(err.clone()))
    }

    /// Adds a reply computed from the call; `Err` is the tool's stderr.
    pub fn answer(
        &self,
        prefix: &[&str],
        f: impl Fn(&Call) -> Result<String, String> + Send + Sync + 'static,
    ) -> &Self {
        let mut rules = self.rules.lock().unwrap();
        let prefix: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        match rules.iter_mut().find(|r| r.prefix == prefix) {
            Some(r) if r.spent => *r = Rule { prefix, replies: vec![Arc::new(f)], spent: false },
            Some(r) => r.replies.push(Arc::new(f)),
            None => rules.push(Rule { prefix, replies: vec![Arc::new(f)], spent: false }),
        }
        self
    }

    /// Every command run so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Every command run so far, as command lines.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(|c| c.argv.join(" ")).collect()
    }

    /// Forgets the commands run so far (the script stays).
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}

#[async_trait]
impl CommandRunner for FakeRunner {
    async fn run_with_input(&self, prog: &str, args: &[&str], input: Option<&str>) -> Result<String, CmdError> {
        let argv: Vec<String> = std::iter::once(prog).chain(args.iter().copied()).map(str::to_owned).collect();
        let call = Call { argv, input: input.map(str::to_owned) };
        self.calls.lock().unwrap().push(call.clone());
        let action = {
            let mut rules = self.rules.lock().unwrap();
            rules.iter_mut().filter(|r| call.argv.starts_with(&r.prefix)).max_by_key(|r| r.prefix.len()).map(|r| {
                if r.replies.len() > 1 {
                    r.replies.remove(0)
                } else {
                    r.spent = true;
                    r.replies[0].clone()
                }
            })
        };
        match action {
            None => Ok(String::new()),
            Some(f) => f(&call).map_err(|stderr| CmdError::failed(prog, args, stderr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_records_input_and_answers_by_longest_prefix_in_order() {
        let f = FakeRunner::new();
        f.ok(&["ip"], "any").ok(&["ip", "netns", "list"], "a").ok(&["ip", "netns", "list"], "b");
        assert_eq!(f.run("ip", &["netns", "list"]).await.unwrap(), "a");
        assert_eq!(f.run("ip", &["netns", "list"]).await.unwrap(), "b");
        assert_eq!(f.run("ip", &["netns", "list"]).await.unwrap(), "b", "the last reply repeats");
        assert_eq!(f.run("ip", &["link"]).await.unwrap(), "any");
        f.fail(&["nft"], "syntax error");
        let e = f.run_with_input("nft", &["-f", "-"], Some("table ip t\n")).await.unwrap_err();
        assert_eq!(e.to_string(), "`nft -f -` failed: syntax error");
        assert_eq!(f.calls().last().unwrap().input.as_deref(), Some("table ip t\n"));
        assert_eq!(f.lines(), ["ip netns list", "ip netns list", "ip netns list", "ip link", "nft -f -"]);
    }

    #[tokio::test]
    async fn the_system_runner_feeds_stdin_and_reports_failures_with_the_command_line() {
        assert_eq!(SystemRunner.run_with_input("cat", &[], Some("flows\n")).await.unwrap(), "flows\n");
        let e = SystemRunner.run("sh", &["-c", "echo nope >&2; exit 3"]).await.unwrap_err();
        assert_eq!(e.to_string(), "`sh -c echo nope >&2; exit 3` failed: nope");
    }
}
