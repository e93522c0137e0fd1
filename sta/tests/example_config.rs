//! The example environment file of sta's systemd unit (`packaging/examples/sta.env`) holds
//! arguments this very binary accepts (`--check-config`), and a mistake is refused. An
//! integration test of the crate itself, so that a plain `cargo test` builds the binary.

use std::process::Command;

#[test]
fn example_arguments_are_accepted() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let env = std::fs::read_to_string(repo.join("packaging/examples/sta.env")).unwrap();
    let line = env.lines().find_map(|l| l.strip_prefix("STA_ARGS=")).expect("sta.env sets STA_ARGS");
    let args: Vec<&str> = line.trim_matches('"').split_whitespace().collect();
    let bin = env!("CARGO_BIN_EXE_sta");
    let out = Command::new(bin).args(&args).arg("--check-config").output().unwrap();
    assert!(
        out.status.success(),
        "sta refused its example arguments {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    let bad = Command::new(bin).args(&args).args(["--no-such-flag", "--check-config"]).output().unwrap();
    assert!(!bad.status.success(), "sta accepted an unknown flag");
}
