//! Host commands (`qemu-img`, `genisoimage`, `tar`, `cp`, `ip`), wrapped once: every call
//! is logged with its exact arguments at debug level, and a failure carries its stderr.
//!
//! The driver holds a [`Runner`]: [`SystemRunner`] runs the programs; [`FakeRunner`]
//! records every command line and answers from a script, so the driver's file
//! preparation has unit tests without the tools. (libvirt itself is reached through the
//! `virt` crate, not through commands.) Calls block: make them from `spawn_blocking`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
#[error("{program} {args:?} failed: {detail}")]
pub struct CommandError {
    pub program: String,
    pub args: Vec<String>,
    pub detail: String,
}

impl CommandError {
    fn new(program: &str, args: &[&str], detail: String) -> Self {
        CommandError { program: program.to_owned(), args: args.iter().map(|a| a.to_string()).collect(), detail }
    }
}

/// How hva runs a host command.
pub trait CommandRunner: Send + Sync {
    /// Runs a program to completion; its standard output, or an error carrying the
    /// command line and its exit status and standard error.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandError>;
}

/// What the driver holds.
pub type Runner = Arc<dyn CommandRunner>;

/// The runner of the real programs.
pub fn system() -> Runner {
    Arc::new(SystemRunner)
}

/// Runs the real programs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandError> {
        let tool = program.rsplit('/').next().unwrap_or(program);
        vdc_bus::metrics::time_driver("exec", tool, || run(program, args))
    }
}

/// Runs a program to completion (blocking: call it from `spawn_blocking`).
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    tracing::debug!(program, ?args, "host command");
    let out = Command::new(program).args(args).output().map_err(|e| CommandError::new(program, args, e.to_string()))?;
    if !out.status.success() {
        let detail = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        return Err(CommandError::new(program, args, detail));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
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

    /// Adds a reply to the commands starting with `prefix`: failure with `detail`.
    pub fn fail(&self, prefix: &[&str], detail: &str) -> &Self {
        let err = detail.to_owned();
        self.answer(prefix, move |_| Err(err.clone()))
    }

    /// Adds a reply computed from the command line (program first), which may also do
    /// what the program would (create a file, say).
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

    /// Adds a reply to the commands starting with `prefix` that does what the program
    /// would: success, with the file its command line names last made (holding `content`).
    pub fn creates_last(&self, prefix: &[&str], content: &'static [u8]) -> &Self {
        self.answer(prefix, move |args| {
            std::fs::write(args.last().unwrap(), content).map_err(|e| e.to_string())?;
            Ok(String::new())
        })
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

impl CommandRunner for FakeRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandError> {
        let call: Vec<String> = std::iter::once(program).chain(args.iter().copied()).map(str::to_owned).collect();
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
            Some(f) => f(&call).map_err(|detail| CommandError::new(program, args, detail)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_records_and_answers_by_longest_prefix_in_order() {
        let f = FakeRunner::new();
        f.ok(&["ip"], "any").fail(&["ip", "link", "show"], "Device does not exist").ok(&["ip", "link", "show"], "");
        let e = f.run("ip", &["link", "show", "dev", "vt1"]).unwrap_err();
        assert_eq!(e.to_string(), r#"ip ["link", "show", "dev", "vt1"] failed: Device does not exist"#);
        assert_eq!(f.run("ip", &["link", "show", "dev", "vt1"]).unwrap(), "");
        assert_eq!(f.run("ip", &["link", "set"]).unwrap(), "any");
        assert_eq!(f.run("tar", &["-x"]).unwrap(), "", "unscripted commands succeed");
        assert_eq!(f.lines(), ["ip link show dev vt1", "ip link show dev vt1", "ip link set", "tar -x"]);
    }

    #[test]
    fn the_system_runner_reports_status_and_stderr() {
        let e = SystemRunner.run("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        assert_eq!(e.detail, "exit status: 3: nope");
        assert_eq!(e.args, ["-c", "echo nope >&2; exit 3"]);
        assert_eq!(SystemRunner.run("echo", &["a"]).unwrap(), "a\n");
    }
}
