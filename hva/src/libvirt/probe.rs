//! What this host can run, found out rather than assumed. KVM is usable only if a guest
//! really boots under it: on some nested hosts `/dev/kvm` opens but guests hang.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Boots the tiny kernel under `-accel kvm` and waits for its console line.
pub fn kvm_usable(builtin: Option<&Path>, timeout: Duration) -> (bool, String) {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return (false, "/dev/kvm cannot be opened".into());
    }
    let Some(dir) = builtin.filter(|d| d.join("vmlinuz").exists()) else {
        return (false, "no probe kernel (build the tiny image) to test /dev/kvm with".into());
    };
    if timeout.is_zero() {
        return (false, "probe disabled".into());
    }
    let log = std::env::temp_dir().join(format!("vdc-kvm-probe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-m", "128", "-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initrd.gz"))
        .args(["-append", "console=ttyS0 panic=-1 quiet vdc.instance_id=kvm-probe"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return (false, "qemu-system-x86_64 is not installed".into()) };
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < timeout {
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("instance-id=kvm-probe")) {
            ok = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    if ok {
        (true, format!("a guest booted under KVM in {:.1} s", start.elapsed().as_secs_f64()))
    } else {
        (false, format!("no guest output under KVM within {} s", timeout.as_secs()))
    }
}
