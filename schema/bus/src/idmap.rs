//! The user namespace a container runs in (libvirt's `<idmap>`): the container's user and
//! group IDs `0..count` are the host's `base..base + count`, so its root is an
//! unprivileged user of the host. Without one a container's root was the host's root:
//! it mounted a cgroup hierarchy of its own and had the host run its `release_agent`,
//! read the host's kernel log, and its image's setuid-root files and file capabilities
//! were the host's (red team, 2026-12-07).
//!
//! A root filesystem is unpacked with the image's owners (container IDs) and then
//! shifted to the host's ([`shift_to_host`]); a capture maps them back as it packs
//! ([`IdMap::to_container`], [`xattr_to_container`]), so an image is the same on every
//! host whatever its map. File capabilities become namespaced ones (revision 3, the
//! namespace's root ID in them: they give nothing outside it) and ACL entries naming
//! users and groups are shifted with the owners.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The container IDs `0..count` as the host's `base..base + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub base: u32,
    pub count: u32,
}

/// What an ID outside the map is seen as inside (the kernel's overflow ID).
const OVERFLOW: u32 = 65_534;

impl IdMap {
    /// Host IDs 100000–165535, as Incus and LXD give unprivileged containers by default.
    pub const DEFAULT: IdMap = IdMap { base: 100_000, count: 65_536 };

    /// The host ID of container ID `id`; `None` for one the map does not cover.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.count).then(|| self.base + id)
    }

    /// The container ID of host ID `id` (the overflow ID for one the map does not cover).
    pub fn to_container(&self, id: u32) -> u32 {
        match id.checked_sub(self.base) {
            Some(c) if c < self.count => c,
            _ => OVERFLOW,
        }
    }

    fn is_host(&self, id: u32) -> bool {
        id.checked_sub(self.base).is_some_and(|c| c < self.count)
    }

    /// The `<idmap>` element of a libvirt LXC domain.
    pub fn libvirt_xml(&self) -> String {
        let (b, c) = (self.base, self.count);
        format!("<idmap><uid start='0' target='{b}' count='{c}'/><gid start='0' target='{b}' count='{c}'/></idmap>")
    }
}

/// `security.capability`'s revision 3 (a namespaced file capability), and its flag bit.
const CAP_V1: u32 = 0x0100_0000;
const CAP_V2: u32 = 0x0200_0000;
const CAP_V3: u32 = 0x0300_0000;
const CAP_REVISION_MASK: u32 = 0xff00_0000;
const CAP_FLAGS_MASK: u32 = !CAP_REVISION_MASK;
/// ACL entry tags that name a user or a group.
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

fn u32_at(v: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(v[at..at + 4].try_into().expect("4 bytes"))
}

/// A file capability (any revision) as a namespaced one whose root is `root`: effective
/// only in a user namespace whose root is that host ID. `None` when it is malformed.
fn capability_for_root(v: &[u8], root: u32) -> Option<Vec<u8>> {
    if v.len() < 12 {
        return None;
    }
    let magic = u32_at(v, 0);
    let (perm_hi, inh_hi) = match (magic & CAP_REVISION_MASK, v.len()) {
        (CAP_V1, 12) => (0, 0),
        (CAP_V2, 20) | (CAP_V3, 24) => (u32_at(v, 12), u32_at(v, 16)),
        _ => return None,
    };
    let mut out = Vec::with_capacity(24);
    for w in [CAP_V3 | (magic & CAP_FLAGS_MASK), u32_at(v, 4), u32_at(v, 8), perm_hi, inh_hi, root] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    Some(out)
}

/// An ACL's entries naming users and groups mapped by `f`.
fn acl_mapped(v: &[u8], f: impl Fn(u32) -> Option<u32>) -> Option<Vec<u8>> {
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut out = v.to_vec();
    for e in out[4..].chunks_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        if tag == ACL_USER || tag == ACL_GROUP {
            let id = f(u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")))?;
            e[4..8].copy_from_slice(&id.to_le_bytes());
        }
    }
    Some(out)
}

/// An extended attribute of a host file in the container's terms, as a capture stores it:
/// a file capability of the container's root as a plain one (revision 2; one of another
/// root gives nothing there and is dropped), ACL entries mapped back. `None`: left out.
pub fn xattr_to_container(map: &IdMap, name: &str, v: &[u8]) -> Option<Vec<u8>> {
    match name {
        "security.capability" => {
            let magic = u32_at(v.get(..4)?, 0);
            let v2 = |v: &[u8]| {
                let mut out = v[..20].to_vec();
                out[..4].copy_from_slice(&(CAP_V2 | (magic & CAP_FLAGS_MASK)).to_le_bytes());
                out
            };
            match (magic & CAP_REVISION_MASK, v.len()) {
                // The namespace's own (a container's `setcap`), or one of every namespace.
                (CAP_V3, 24) if u32_at(v, 20) == map.base => Some(v2(v)),
                (CAP_V2, 20) => Some(v.to_vec()),
                (CAP_V1, 12) => Some(capability_for_root(v, 0).map(|c| v2(&c))?),
                _ => None,
            }
        }
        "system.posix_acl_access" | "system.posix_acl_default" => acl_mapped(v, |id| Some(map.to_container(id))),
        _ => Some(v.to_vec()),
    }
}

/// Whether this process may give files to other users (it runs as root).
pub fn can_shift() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether the root filesystem at `root` is the host's already (its top directory is
/// shifted last).
pub fn is_shifted(root: &Path, map: &IdMap) -> std::io::Result<bool> {
    Ok(map.is_host(std::fs::symlink_metadata(root)?.uid()))
}

/// Gives every file of the root filesystem at `root` the host owner `map` gives its
/// container owner, keeping its mode (a chown clears set-ID bits), its file capability
/// (made the namespace's own) and its ACLs (their IDs shifted too). What is the host's
/// already (a file seen again by another name) is left, and `root` itself is shifted
/// last, so a shift cut short is completed by the next ([`is_shifted`]). An owner the map
/// does not cover becomes the overflow ID. Stays on `root`'s file system. Needs root.
/// The number of entries shifted.
pub fn shift_to_host(root: &Path, map: &IdMap) -> std::io::Result<u64> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut shifted = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() && meta.dev() == dev {
                todo.push(path.clone());
            }
            shifted += shift_one(&path, &meta, map)? as u64;
        }
    }
    shifted += shift_one(root, &std::fs::symlink_metadata(root)?, map)? as u64;
    Ok(shifted)
}

fn shift_one(path: &Path, meta: &std::fs::Metadata, map: &IdMap) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if map.is_host(meta.uid()) && map.is_host(meta.gid()) {
        return Ok(false);
    }
    let host = |id: u32| if map.is_host(id) { id } else { map.to_host(id).unwrap_or(map.base + OVERFLOW) };
    let symlink = meta.file_type().is_symlink();
    // Read before the chown, which removes a file capability.
    let cap = match symlink {
        true => None,
        false => get(path, "security.capability")?,
    };
    std::os::unix::fs::lchown(path, Some(host(meta.uid())), Some(host(meta.gid())))?;
    if symlink {
        return Ok(true);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))?;
    if let Some(c) = cap.and_then(|c| capability_for_root(&c, map.base)) {
        rustix::fs::lsetxattr(path, "security.capability", &c, rustix::fs::XattrFlags::empty())?;
    }
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        if let Some(acl) = get(path, name)? {
            match acl_mapped(&acl, |id| Some(host(id))) {
                Some(a) => rustix::fs::lsetxattr(path, name, &a, rustix::fs::XattrFlags::empty())?,
                None => rustix::fs::lremovexattr(path, name)?,
            }
        }
    }
    Ok(true)
}

/// The extended attribute `name` of `path`, if it has one.
fn get(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways() {
        let m = IdMap::DEFAULT;
        assert_eq!((m.to_host(0), m.to_host(1000), m.to_host(65_536)), (Some(100_000), Some(101_000), None));
        assert_eq!((m.to_container(100_000), m.to_container(165_535)), (0, 65_535));
        assert_eq!((m.to_container(0), m.to_container(165_536)), (OVERFLOW, OVERFLOW));
        assert!(m.libvirt_xml().contains("<uid start='0' target='100000' count='65536'/>"));
    }

    #[test]
    fn file_capabilities_become_the_namespaces_and_back() {
        let m = IdMap::DEFAULT;
        // cap_net_raw, effective, revision 2.
        let mut v2 = Vec::new();
        for w in [CAP_V2 | 1, 1 << 13, 0, 0, 0] {
            v2.extend_from_slice(&w.to_le_bytes());
        }
        let v3 = capability_for_root(&v2, m.base).unwrap();
        assert_eq!((v3.len(), u32_at(&v3, 0), u32_at(&v3, 4), u32_at(&v3, 20)), (24, CAP_V3 | 1, 1 << 13, 100_000));
        assert_eq!(xattr_to_container(&m, "security.capability", &v3), Some(v2.clone()));
        // A revision 3 of the host's root (or any other) is rewritten for the namespace's.
        let mut host_root = v3.clone();
        host_root[20..].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(capability_for_root(&host_root, m.base), Some(v3.clone()));
        let mut other_root = v3.clone();
        other_root[20..].copy_from_slice(&200_000u32.to_le_bytes());
        assert_eq!(xattr_to_container(&m, "security.capability", &other_root), None, "another namespace's");
        assert_eq!(xattr_to_container(&m, "security.capability", &v2), Some(v2.clone()));
        assert_eq!(capability_for_root(&v2[..13], m.base), None);
        // ACL entries of users and groups shift; the others do not.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, id) in [(0x01u16, u32::MAX), (ACL_USER, 1000), (ACL_GROUP, 50)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&7u16.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let host = acl_mapped(&acl, |id| m.to_host(id)).unwrap();
        assert_eq!((u32_at(&host, 8), u32_at(&host, 16), u32_at(&host, 24)), (u32::MAX, 101_000, 100_050));
        assert_eq!(xattr_to_container(&m, "system.posix_acl_access", &host), Some(acl));
    }

    /// A tree with a setuid-root file, a file capability and a symbolic link: shifted,
    /// each is the host's unprivileged user's (the set-ID bit kept, the capability made
    /// the namespace's), a second shift changes nothing, and packed with the map it is the
    /// image it was. Giving files away needs root (CI's tests run as root): as another
    /// user the shift is refused and changes nothing.
    #[test]
    fn a_root_filesystem_is_shifted_and_packed_back_as_it_was() {
        use std::os::unix::fs::PermissionsExt;
        let m = IdMap::DEFAULT;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/su"), b"su").unwrap();
        std::fs::set_permissions(root.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::write(root.join("bin/ping"), b"ping").unwrap();
        std::os::unix::fs::symlink("su", root.join("bin/sudo")).unwrap();
        if !can_shift() {
            assert!(shift_to_host(&root, &m).is_err());
            assert!(!is_shifted(&root, &m).unwrap());
            return;
        }
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        for p in [&root, &root.join("bin"), &root.join("bin/su"), &root.join("bin/ping")] {
            std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
        }
        std::fs::set_permissions(root.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let mut v2 = Vec::new();
        for w in [CAP_V2 | 1, 1 << 13, 0, 0, 0] {
            v2.extend_from_slice(&w.to_le_bytes());
        }
        rustix::fs::lsetxattr(root.join("bin/ping"), "security.capability", &v2, rustix::fs::XattrFlags::empty())
            .unwrap();
        assert!(!is_shifted(&root, &m).unwrap());
        assert_eq!(shift_to_host(&root, &m).unwrap(), 5);
        assert!(is_shifted(&root, &m).unwrap());
        for p in ["", "bin", "bin/su", "bin/ping", "bin/sudo"] {
            assert_eq!(uid(&root.join(p)), 100_000, "{p}");
        }
        let su = std::fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "the set-ID bit is kept, for uid 100000");
        let cap = get(&root.join("bin/ping"), "security.capability").unwrap().unwrap();
        assert_eq!((cap.len(), u32_at(&cap, 20)), (24, 100_000), "the namespace's capability");
        assert_eq!(shift_to_host(&root, &m).unwrap(), 0, "once");

        let tgz = tmp.path().join("back.tar.gz");
        crate::rootfs::pack(&root, &tgz, Some(&m)).unwrap();
        let back = tmp.path().join("back");
        std::fs::create_dir(&back).unwrap();
        crate::rootfs::unpack(&tgz, &back, u64::MAX).unwrap();
        for p in ["bin/su", "bin/ping", "bin/sudo"] {
            assert_eq!(uid(&back.join(p)), 0, "{p}");
        }
        assert_eq!(std::fs::metadata(back.join("bin/su")).unwrap().permissions().mode() & 0o7777, 0o4755);
        assert_eq!(get(&back.join("bin/ping"), "security.capability").unwrap(), Some(v2));
    }
}
