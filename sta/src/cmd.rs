//! Running the storage tools (zfs, btrfs, tgtadm, qemu-img, cp), behind one small trait.
//!
//! Why commands and not libraries: `zfs-core`/`libzetta` need libzfs_core, which zfs-fuse
//! does not ship; tgt has no library API (tgtadm's IPC format is private to tgt); btrfs
//! ioctls would need unsafe code for what `btrfs subvolume` already does well.
//!
//! Drivers hold a [`Runner`]: [`SystemRunner`] runs the tools; [`FakeRunner`] records
//! every command line and answers from a script, so driver logic has unit tests without
//! root or the tools.

use async_trait::async_trait;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

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

/// How sta runs a host command.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs a command and returns its standard output; a non-zero exit is an error
    /// carrying the command line and what it printed on standard error.
    async fn run(&self, prog: &str, args: &[&str]) -> Result<String, CmdError>;

    /// Runs `bash -c` for a pipeline (zfs send | zfs receive); every part's arguments
    /// must be quoted by the caller with [`quote`].
    async fn pipeline(&self, script: &str) -> Result<String, CmdError> {
        self.run("bash", &["-o", "pipefail", "-c", script]).await
    }
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
    async fn run(&self, prog: &str, args: &[&str]) -> Result<String, CmdError> {
        tracing::debug!("run {}", command_line(prog, args));
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
            Err(CmdError::failed(prog, args, stderr))
        }
    }
}

/// Single-quotes a word for the shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

type Action = Arc<dyn Fn(&[String]) -> Result<String, String> + Send + Sync>;

struct Rule {
    prefix: Vec<String>,
    /// Used in order; the last one answers every further call.
    replies: Vec<Action>,
    /// The last reply has answered: a reply added now replaces it.
    spent: bool,
}

/// A recording fake: keeps every command line (program first) and answers from a
/// script of rules, each a prefix of the command line with its replies. The longest
/// matching prefix answers; its replies are used in order and the last one repeats (until
/// a reply added after it has answered replaces it). A command no rule matches succeeds
/// with no output.
#[derive(Default)]
pub struct FakeRunner {
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<Vec<Vec<String>>>,
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

    /// Adds a reply computed from the command line (program first), which may also
    /// do what the tool would (create a file, say); `Err` is the tool's stderr.
    pub fn answer(
        &self,
        prefix: &[&str],
        f: impl Fn(&[String]) -> Result<String, String> + Send + Sync + 'static,
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

    /// Every command run so far, program first.
    pub fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }

    /// Every command run so far, as command lines.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(|c| c.join(" ")).collect()
    }

    /// Forgets the commands run so far (the script stays).
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}

#[async_trait]
impl CommandRunner for FakeRunner {
    async fn run(&self, prog: &str, args: &[&str]) -> Result<String, CmdError> {
        let call: Vec<String> = std::iter::once(prog).chain(args.iter().copied()).map(str::to_owned).collect();
        self.calls.lock().unwrap().push(call.clone());
        let action = {
            let mut rules = self.rules.lock().unwrap();
            rules.iter_mut().filter(|r| call.starts_with(&r.prefix)).max_by_key(|r| r.prefix.len()).map(|r| {
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
    async fn the_fake_records_and_answers_by_longest_prefix_in_order() {
        let f = FakeRunner::new();
        f.ok(&["zfs"], "any").ok(&["zfs", "list"], "first").fail(&["zfs", "list"], "gone");
        assert_eq!(f.run("zfs", &["list", "a"]).await.unwrap(), "first");
        let e = f.run("zfs", &["list", "a"]).await.unwrap_err();
        assert_eq!(e.to_string(), "`zfs list a` failed: gone");
        assert!(f.run("zfs", &["list", "b"]).await.is_err(), "the last reply repeats");
        f.ok(&["zfs", "list"], "back");
        assert_eq!(f.run("zfs", &["list", "c"]).await.unwrap(), "back", "a reply added later replaces a spent one");
        assert_eq!(f.run("zfs", &["get"]).await.unwrap(), "any");
        assert_eq!(f.run("btrfs", &["x"]).await.unwrap(), "", "unscripted commands succeed");
        assert_eq!(f.lines(), ["zfs list a", "zfs list a", "zfs list b", "zfs list c", "zfs get", "btrfs x"]);
    }

    #[tokio::test]
    async fn the_system_runner_reports_the_command_line_of_a_failure() {
        let e = SystemRunner.run("sh", &["-c", "echo nope >&2; exit 3"]).await.unwrap_err();
        assert_eq!(e.to_string(), "`sh -c echo nope >&2; exit 3` failed: nope");
        assert_eq!(SystemRunner.run("echo", &["a", "b"]).await.unwrap(), "a b\n");
    }
}
