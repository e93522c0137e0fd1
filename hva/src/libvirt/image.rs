//! The per-host image cache: each image is copied in once, verified against its SHA-256
//! and kept under its checksum; instances get a qcow2 overlay (or a copy of the root
//! filesystem) on top.

use super::host;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use vdc_bus::blob::touch;
use vdc_bus::idmap::IdMap;
use vdc_schema::bus::ImageSpec;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image source {0:?} is not a local path: this host reads file paths and file:// URLs")]
    Unsupported(String),
    #[error("image source {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("image {id} is corrupt: its checksum is sha256:{got}, the image record says {want}")]
    Checksum { id: String, want: String, got: String },
    #[error("root_disk_size {want} bytes is below image {id}'s own size of {have} bytes")]
    TooSmall { id: String, want: u64, have: u64 },
    #[error(transparent)]
    Command(#[from] host::CommandError),
    #[error("image data from dcmgr: {0}")]
    Blob(#[from] vdc_bus::blob::BlobError),
    #[error("root filesystem tarball {path}: {refused}")]
    Tarball { path: String, refused: vdc_bus::rootfs::Refused },
}

pub struct ImageCache {
    pub dir: PathBuf,
    /// Where `builtin:NAME` sources live (the output of packaging/build-tiny-image.sh).
    pub builtin_dir: Option<PathBuf>,
    /// Runs qemu-img.
    pub tools: host::Runner,
    /// Held (shared) while an instance's files are made from cached images, and
    /// (exclusively) while the cache is pruned, so no image goes between its fetch and
    /// the overlay that is based on it.
    pub using: std::sync::RwLock<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.display().to_string(), source }
}

pub fn sha256_file(p: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(p).map_err(io(p))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(p))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The backing file a qcow2 names in its header, read directly (no qemu-img per disk).
pub fn qcow2_backing(p: &Path) -> Option<PathBuf> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(p).ok()?;
    let mut h = [0u8; 20];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"QFI\xfb" {
        return None;
    }
    let off = u64::from_be_bytes(h[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(h[16..20].try_into().ok()?) as usize;
    if off == 0 || len == 0 || len > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(off)).ok()?;
    let mut name = vec![0u8; len];
    f.read_exact(&mut name).ok()?;
    Some(PathBuf::from(String::from_utf8(name).ok()?))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ImageCache {
    /// The local path of a source string.
    pub fn resolve(&self, source: &str) -> Result<PathBuf, ImageError> {
        if let Some(name) = source.strip_prefix("builtin:") {
            let dir = self.builtin_dir.as_ref().ok_or_else(|| ImageError::Unsupported(source.to_owned()))?;
            let file = match name {
                "tiny-kernel" => "vmlinuz",
                "tiny-initrd" => "initrd.gz",
                "tiny-rootfs" => "rootfs.tar.gz",
                _ => return Err(ImageError::Unsupported(source.to_owned())),
            };
            return Ok(dir.join(file));
        }
        let p = source.strip_prefix("file://").unwrap_or(source);
        if !p.starts_with('/') {
            return Err(ImageError::Unsupported(source.to_owned()));
        }
        Ok(PathBuf::from(p))
    }

    /// Copies `source` into the cache (once) and checks it; returns the cached file.
    pub fn fetch(&self, image_id: &str, source: &str, checksum: Option<&str>) -> Result<PathBuf, ImageError> {
        let src = self.resolve(source)?;
        let want = checksum.map(|c| c.trim_start_matches("sha256:").to_ascii_lowercase());
        if let Some(w) = &want {
            let cached = self.dir.join(w);
            if cached.exists() {
                touch(&cached);
                return Ok(cached);
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // Unique per call: two guests of one image may fetch it at the same time.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".incoming-{image_id}-{}-{n}", std::process::id()));
        std::fs::copy(&src, &tmp).map_err(io(&src))?;
        let got = sha256_file(&tmp)?;
        if let Some(w) = &want {
            if *w != got {
                let _ = std::fs::remove_file(&tmp);
                return Err(ImageError::Checksum { id: image_id.to_owned(), want: format!("sha256:{w}"), got });
            }
        }
        let dest = self.dir.join(&got);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(dest)
    }

    /// Removes the least recently used cached images until the cache holds at most
    /// `max_bytes`, except those `in_use` (the bases of instances' disks). Returns what
    /// it removed.
    pub fn prune(&self, max_bytes: u64, in_use: &std::collections::HashSet<PathBuf>) -> Vec<PathBuf> {
        vdc_bus::blob::prune_cache(&self.dir, max_bytes, in_use)
    }

    /// The cached data of an image: fetched from dcmgr's store when it keeps the data
    /// (resumable, verified as it streams), else copied from its host file.
    pub fn fetch_image(&self, img: &ImageSpec) -> Result<PathBuf, ImageError> {
        let Some(blob) = &img.blob else {
            return self.fetch(img.id.as_str(), &img.source, img.checksum.as_deref());
        };
        let fetch = vdc_bus::blob::fetch(blob, &self.dir);
        // Called from blocking threads: those of the agent's runtime, or none (tests).
        let (path, fetched) = match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(fetch),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io(&self.dir))?
                .block_on(fetch),
        }?;
        if fetched {
            tracing::info!(image = %img.id, blob = %blob.sha256, bytes = blob.size, "fetched from dcmgr");
        } else {
            touch(&path);
        }
        Ok(path)
    }

    /// A qcow2 overlay on a cached disk image.
    pub fn overlay(&self, base: &Path, format: &str, dest: &Path) -> Result<(), ImageError> {
        if dest.exists() {
            return Ok(());
        }
        // Made beside and renamed: a create cut short (hva stopped) leaves no header
        // fragment that a later ensure would take for the guest's disk.
        let partial = dest.with_extension("partial");
        self.tools.run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-b", &host::path(base), "-F", format, &host::path(&partial)],
        )?;
        std::fs::rename(&partial, dest).map_err(io(dest))
    }

    /// Grows `disk` (an instance's overlay) to `size` bytes; refuses to shrink it below the
    /// image's own size. Idempotent: a disk already that big is left alone.
    pub fn grow(&self, disk: &Path, size: u64, image_id: &str) -> Result<(), ImageError> {
        // The overlay is hva's own qcow2: named, never probed (a guest writes inside it).
        let info = self.tools.run("qemu-img", &["info", "--output=json", "-U", "-f", "qcow2", &host::path(disk)])?;
        let have =
            serde_json::from_str::<serde_json::Value>(&info).ok().and_then(|v| v["virtual-size"].as_u64()).ok_or_else(
                || ImageError::Unsupported(format!("qemu-img info of {} gave no virtual-size", disk.display())),
            )?;
        if size < have {
            return Err(ImageError::TooSmall { id: image_id.to_owned(), want: size, have });
        }
        if size > have {
            self.tools.run("qemu-img", &["resize", "-q", "-f", "qcow2", &host::path(disk), &size.to_string()])?;
        }
        Ok(())
    }

    /// Unpacks a root filesystem tarball for a container, each entry checked by the rules
    /// and the parser dcmgr checked it with (`vdc_bus::rootfs`), not by another tar.
    /// At most `max` bytes of tar stream are read: a root filesystem's size.
    pub fn unpack(&self, tarball: &Path, dest: &Path, map: Option<&IdMap>, max: u64) -> Result<(), ImageError> {
        self.make_rootfs(dest, map, |partial| {
            std::fs::create_dir_all(partial).map_err(io(partial))?;
            vdc_bus::rootfs::unpack(tarball, partial, max)
                .map_err(|refused| ImageError::Tarball { path: tarball.display().to_string(), refused })
        })
    }

    /// A container's own copy of a host directory (an admin's `dir` image), made once.
    pub fn copy_rootfs(&self, src: &Path, dest: &Path, map: Option<&IdMap>) -> Result<(), ImageError> {
        self.make_rootfs(dest, map, |partial| {
            self.tools.run("cp", &["-a", &host::path(src), &host::path(partial)])?;
            Ok(())
        })
    }

    /// Makes a container's root filesystem once: in `DEST.partial`, renamed to `dest`
    /// when complete. A rootfs that exists is the container's own from then on: a later
    /// ensure (a start, a reboot, a restarted hva) must never write the image over the
    /// files the guest changed, and a copy cut short is made again rather than used.
    /// With `map`, its owners are shifted to the container's user namespace before the
    /// rename (`vdc_bus::idmap`).
    fn make_rootfs(
        &self,
        dest: &Path,
        map: Option<&IdMap>,
        make: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        if dest.exists() {
            return Ok(());
        }
        let partial = dest.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        make(&partial)?;
        if let Some(m) = map {
            vdc_bus::idmap::shift_to_host(&partial, m).map_err(io(&partial))?;
        }
        std::fs::rename(&partial, dest).map_err(io(dest))
    }
}

/// The cached kernel and initrd of a `kernel` image.
pub fn kernel_pair(cache: &ImageCache, img: &ImageSpec) -> Result<(PathBuf, Option<PathBuf>), ImageError> {
    let kernel = cache.fetch(img.id.as_str(), &img.source, img.checksum.as_deref())?;
    let initrd = match &img.initrd {
        Some(i) => Some(cache.fetch(img.id.as_str(), i, None)?),
        None => None,
    };
    Ok((kernel, initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path) -> ImageCache {
        ImageCache { dir: dir.join("images"), builtin_dir: None, tools: host::system(), using: Default::default() }
    }

    #[test]
    fn images_are_verified_and_cached_under_their_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("disk.img");
        std::fs::write(&src, b"not really a disk").unwrap();
        let sum = sha256_file(&src).unwrap();
        let c = cache(tmp.path());
        let got = c.fetch("img-a", src.to_str().unwrap(), Some(&format!("sha256:{sum}"))).unwrap();
        assert_eq!(got, c.dir.join(&sum));
        // A wrong checksum is refused and leaves no partial file behind.
        let bad = c.fetch("img-b", &format!("file://{}", src.display()), Some(&format!("sha256:{}", "1".repeat(64))));
        assert!(matches!(bad, Err(ImageError::Checksum { .. })), "{bad:?}");
        let names: Vec<_> = std::fs::read_dir(&c.dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from(&sum)]);
        // Only local sources.
        assert!(matches!(c.fetch("img-c", "http://example.com/x", None), Err(ImageError::Unsupported(_))));
    }

    #[test]
    fn the_least_recently_used_images_go_first_and_bases_in_use_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path());
        let mut cached = vec![];
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let src = tmp.path().join(name);
            std::fs::write(&src, vec![i as u8; 1000]).unwrap();
            let sum = sha256_file(&src).unwrap();
            cached.push(c.fetch("img", src.to_str().unwrap(), Some(&format!("sha256:{sum}"))).unwrap());
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i as u64 * 10);
            std::fs::File::options().write(true).open(cached.last().unwrap()).unwrap().set_modified(t).unwrap();
        }
        // "a" was used again: it is now the most recent, and fetching it copied nothing.
        let sum_a = cached[0].file_name().unwrap().to_str().unwrap().to_owned();
        std::fs::remove_file(tmp.path().join("a")).unwrap();
        assert_eq!(c.fetch("img", "/nonexistent", Some(&format!("sha256:{sum_a}"))).unwrap(), cached[0]);
        // "b" is the base of an instance's disk: kept whatever its age.
        let overlay = tmp.path().join("root.qcow2");
        c.overlay(&cached[1], "raw", &overlay).unwrap();
        let base = qcow2_backing(&overlay).unwrap();
        assert_eq!(base, cached[1]);
        let removed = c.prune(2000, &[base].into_iter().collect());
        assert_eq!(removed, [cached[2].clone(), cached[3].clone()], "c then d (least recently used first)");
        assert!(cached[0].exists() && cached[1].exists());
        assert!(c.prune(2000, &Default::default()).is_empty(), "under the cap: nothing goes");
    }

    #[test]
    fn the_root_disk_is_a_qcow2_overlay_on_the_cached_image() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        host::run("qemu-img", &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "64M"]).unwrap();
        let c = cache(tmp.path());
        let cached = c.fetch("img-q", base.to_str().unwrap(), None).unwrap();
        let root = tmp.path().join("root.qcow2");
        c.overlay(&cached, "qcow2", &root).unwrap();
        let info = host::run("qemu-img", &["info", "--output=json", root.to_str().unwrap()]).unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename"], cached.display().to_string());
        assert_eq!(info["virtual-size"], 64 << 20);
    }

    #[test]
    fn the_root_disk_grows_and_never_shrinks() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        host::run("qemu-img", &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "64M"]).unwrap();
        let c = cache(tmp.path());
        let root = tmp.path().join("root.qcow2");
        c.overlay(&base, "qcow2", &root).unwrap();
        let size = |p: &Path| {
            let info = host::run("qemu-img", &["info", "--output=json", p.to_str().unwrap()]).unwrap();
            serde_json::from_str::<serde_json::Value>(&info).unwrap()["virtual-size"].as_u64().unwrap()
        };
        c.grow(&root, 128 << 20, "img-q").unwrap();
        assert_eq!(size(&root), 128 << 20);
        assert_eq!(size(&base), 64 << 20, "the cached image is untouched");
        c.grow(&root, 128 << 20, "img-q").unwrap();
        assert_eq!(size(&root), 128 << 20, "again: nothing changes");
        let e = c.grow(&root, 32 << 20, "img-q").unwrap_err();
        assert_eq!(e.to_string(), "root_disk_size 33554432 bytes is below image img-q's own size of 134217728 bytes");
    }

    #[test]
    fn the_overlay_and_the_unpacking_are_made_once_with_these_commands() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        let c = ImageCache {
            dir: tmp.path().join("images"),
            builtin_dir: None,
            tools: f.clone(),
            using: Default::default(),
        };
        f.creates_last(&["qemu-img", "create"], b"qcow2");
        let (base, root) = (tmp.path().join("images/abc"), tmp.path().join("i-a/root.qcow2"));
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        // A create cut short left its fragment beside: it is never the disk.
        std::fs::write(tmp.path().join("i-a/root.partial"), b"QFI").unwrap();
        c.overlay(&base, "raw", &root).unwrap();
        assert_eq!(std::fs::read(&root).unwrap(), b"qcow2");
        assert!(!tmp.path().join("i-a/root.partial").exists());
        let (tarball, rootfs) = (tmp.path().join("images/def"), tmp.path().join("i-b/rootfs"));
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "init.sh", &b"#!\n"[..]).unwrap();
        std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
        std::fs::write(&tarball, b.into_inner().unwrap().finish().unwrap()).unwrap();
        c.unpack(&tarball, &rootfs, None, u64::MAX).unwrap();
        let t = tmp.path().display();
        // The tarball is unpacked in-process (vdc_bus::rootfs), not by a command.
        assert_eq!(f.lines(), [format!("qemu-img create -q -f qcow2 -b {t}/images/abc -F raw {t}/i-a/root.partial")]);
        assert_eq!(std::fs::read(rootfs.join("init.sh")).unwrap(), b"#!\n");
        assert!(rootfs.is_dir() && !tmp.path().join("i-b/rootfs.partial").exists());
        // Already there (a repeated ensure, a start, a restarted hva): nothing runs, so
        // what the container changed stays (any image, not only those with an init.sh).
        f.clear();
        std::fs::write(rootfs.join("etc-hostname"), b"changed in the guest").unwrap();
        c.overlay(&base, "raw", &root).unwrap();
        c.unpack(&tarball, &rootfs, None, u64::MAX).unwrap();
        assert!(f.calls().is_empty(), "{:?}", f.lines());
        assert_eq!(std::fs::read(rootfs.join("etc-hostname")).unwrap(), b"changed in the guest");
    }

    #[test]
    fn a_rootfs_cut_short_is_made_again_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let c = ImageCache {
            dir: tmp.path().join("images"),
            builtin_dir: None,
            tools: host::system(),
            using: Default::default(),
        };
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/os-release"), b"ID=test\n").unwrap();
        let tarball = tmp.path().join("rootfs.tar.gz");
        let ok = std::process::Command::new("tar")
            .args(["-czf", tarball.to_str().unwrap(), "-C", src.to_str().unwrap(), "."])
            .status()
            .unwrap();
        assert!(ok.success());
        // An hva killed while unpacking left half a tree.
        let rootfs = tmp.path().join("i-a/rootfs");
        std::fs::create_dir_all(tmp.path().join("i-a/rootfs.partial/usr")).unwrap();
        c.unpack(&tarball, &rootfs, None, u64::MAX).unwrap();
        assert_eq!(std::fs::read(rootfs.join("etc/os-release")).unwrap(), b"ID=test\n");
        assert!(!rootfs.join("usr").exists(), "the partial tree was thrown away");
        assert!(!tmp.path().join("i-a/rootfs.partial").exists());
        // A failed unpack leaves no rootfs that a later ensure would take as complete.
        let other = tmp.path().join("i-b/rootfs");
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        std::fs::write(tmp.path().join("bad.tar.gz"), b"not a tarball").unwrap();
        assert!(c.unpack(&tmp.path().join("bad.tar.gz"), &other, None, u64::MAX).is_err());
        assert!(!other.exists());
    }

    #[test]
    fn a_hostile_tarball_is_refused_and_leaves_no_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let c = ImageCache {
            dir: tmp.path().join("images"),
            builtin_dir: None,
            tools: host::FakeRunner::new(),
            using: Default::default(),
        };
        // What dcmgr refuses, hva refuses too, should it ever be given it.
        let tarball = tmp.path().join("evil.tar.gz");
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(1).unwrap();
        h.set_size(0);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "dev/mem", std::io::empty()).unwrap();
        std::fs::write(&tarball, b.into_inner().unwrap().finish().unwrap()).unwrap();
        let rootfs = tmp.path().join("i-a/rootfs");
        std::fs::create_dir_all(rootfs.parent().unwrap()).unwrap();
        let e = c.unpack(&tarball, &rootfs, None, u64::MAX).unwrap_err();
        assert!(matches!(&e, ImageError::Tarball { refused, .. } if refused.code == "unsafe_tar"), "{e}");
        assert!(e.to_string().contains("dev/mem"), "{e}");
        assert!(!rootfs.exists());
        assert!(!tmp.path().join("i-a/rootfs.partial/dev/mem").exists());
    }
}
