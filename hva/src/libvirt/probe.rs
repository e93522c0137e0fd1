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

/// UEFI firmware for QEMU guests: the OVMF code (read-only) and the template each guest's
/// own variable store is copied from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: std::path::PathBuf,
    pub vars: std::path::PathBuf,
}

/// Where distributions install OVMF (Debian's `ovmf` package first), without Secure Boot:
/// a secure-boot build needs SMM and the q35 machine, and vdc guests are `pc`.
const OVMF_PAIRS: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
];

/// The first OVMF installed on this host, if any: only then can it boot `uefi` images.
pub fn ovmf() -> Option<Ovmf> {
    ovmf_in(OVMF_PAIRS.iter().map(|(c, v)| (Path::new(*c), Path::new(*v))))
}

fn ovmf_in<'a>(pairs: impl IntoIterator<Item = (&'a Path, &'a Path)>) -> Option<Ovmf> {
    pairs.into_iter().find(|(c, v)| c.is_file() && v.is_file()).map(|(c, v)| Ovmf { code: c.into(), vars: v.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovmf_needs_both_code_and_vars() {
        let tmp = tempfile::tempdir().unwrap();
        let (c1, v1, c2, v2) =
            (tmp.path().join("c1"), tmp.path().join("v1"), tmp.path().join("c2"), tmp.path().join("v2"));
        std::fs::write(&c1, b"").unwrap();
        std::fs::write(&c2, b"").unwrap();
        std::fs::write(&v2, b"").unwrap();
        let pairs = [(c1.as_path(), v1.as_path()), (c2.as_path(), v2.as_path())];
        assert_eq!(ovmf_in(pairs), Some(Ovmf { code: c2.clone(), vars: v2.clone() }));
        assert_eq!(ovmf_in([(c1.as_path(), v1.as_path())]), None);
    }
}
