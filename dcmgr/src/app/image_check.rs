//! What image data really is, decided before the image becomes `available`: the format
//! is read from the data (its header here, then `qemu-img info -f` under limits), never
//! taken from the request; disks that would make a
//! host read another file (a qcow2 backing file or external data file) are refused, and
//! so are tarballs that would write outside the root they are unpacked into.
//!
//! Blocking (runs qemu-img, reads the whole tarball): call it from `spawn_blocking`.

use crate::error::ApiError;
use std::io::Read;
use std::path::Path;
use vdc_schema::ImageFormat;

/// Data refused, with the stable code the API answers and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    /// The answer to the uploader: over a quota is 422 like every quota refusal, the
    /// rest is bad data (400).
    pub fn into_error(self) -> ApiError {
        match self.code {
            "quota_exceeded" => ApiError::Unprocessable { code: self.code, message: self.message },
            _ => ApiError::bad(self.code, self.message),
        }
    }
}

impl From<vdc_bus::rootfs::Refused> for Refusal {
    fn from(r: vdc_bus::rootfs::Refused) -> Refusal {
        Refusal { code: r.code, message: r.message }
    }
}

/// What a tar image's check found: a gzip-compressed tarball whose entries all keep
/// inside the root it is unpacked into (`vdc_bus::rootfs`: the rules hva unpacks with),
/// within the limit of a disk's virtual size unpacked. Its virtual size is the bytes it
/// unpacks to (its tar stream's): a container's root filesystem holds at least that.
pub fn tar_checked(checked: Result<u64, vdc_bus::rootfs::Refused>) -> Result<Inspected, Refusal> {
    checked.map(|n| Inspected { format: ImageFormat::Tar, virtual_size: Some(n) }).map_err(Refusal::from)
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// What the data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub format: ImageFormat,
    /// The disk's size as a guest sees it (disks only).
    pub virtual_size: Option<u64>,
}

/// Inspects the data in `path`, announced as `requested`. Disk images (raw, qcow2) are
/// whatever qemu-img finds, whichever of the two was announced; a `tar` image must be a
/// gzip-compressed tarball (what hosts unpack) with safe entries.
pub fn inspect(path: &Path, requested: ImageFormat, max_virtual: u64) -> Result<Inspected, Refusal> {
    match requested {
        ImageFormat::Tar => tar_checked(vdc_bus::rootfs::check(path, max_virtual)),
        ImageFormat::Raw | ImageFormat::Qcow2 => inspect_disk(path, max_virtual),
        f => Err(refuse(
            "unsupported_format",
            format!("{f} images cannot be uploaded or imported: use qcow2, raw or tar"),
        )),
    }
}

/// qemu-img's limits, as OpenStack sets them for the same call (OSSA-2015-014): a hostile
/// header must not take the host's memory or a core, and a stuck open ends.
const QEMU_IMG_ADDRESS_SPACE: u64 = 1 << 30;
const QEMU_IMG_CPU_SECONDS: u32 = 30;
const QEMU_IMG_WALL_SECONDS: u32 = 60;

fn inspect_disk(path: &Path, max_virtual: u64) -> Result<Inspected, Refusal> {
    let format = match sniff(path)? {
        Sniffed::Raw(len) => {
            return decide_disk(&serde_json::json!({"format": "raw", "virtual-size": len}), max_virtual)
        }
        Sniffed::Qcow2 { .. } => "qcow2",
    };
    // `-f qcow2`, never a probe: the header was read above, so qemu-img reads it as
    // nothing else. It opens neither a backing file nor a data file for `info`, and
    // decide_disk checks its answer for both again.
    let out = limited_qemu_img(&["info", "--output=json", "-f", format], path)?;
    if !out.status.success() {
        // qemu-img names the file: dcmgr's staging path is none of the tenant's business.
        let why = String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "the data");
        let why = match out.status.code() {
            Some(124 | 137) | None => "it took too long or too much memory".to_owned(),
            _ => why.trim().lines().last().unwrap_or("").to_owned(),
        };
        return Err(refuse("invalid_image_data", format!("qemu-img cannot read the data as a disk image: {why}")));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| refuse("inspection_failed", format!("qemu-img info answered something else than JSON: {e}")))?;
    let inspected = decide_disk(&info, max_virtual)?;
    // `info` reads the header only: a qcow2 cut short or with broken tables passes it,
    // and fails later in a guest. `check` reads the metadata (7 ms for a 475 MB Debian
    // image here). Leaked clusters (exit 3) waste space only.
    let out = limited_qemu_img(&["check", "-f", format], path)?;
    match out.status.code() {
        Some(0 | 3) => Ok(inspected),
        Some(124 | 137) | None => {
            Err(refuse("invalid_image_data", "qemu-img check of the data took too long or too much memory"))
        }
        _ => {
            let said = String::from_utf8_lossy(&out.stdout);
            let found = said.lines().find(|l| l.contains("errors were found")).unwrap_or("it could not complete");
            Err(refuse(
                "invalid_image_data",
                format!(
                    "the qcow2 image is damaged (qemu-img check: {}); upload it whole",
                    found.trim_end_matches('.')
                ),
            ))
        }
    }
}

/// `qemu-img ARGS PATH` under [`QEMU_IMG_ADDRESS_SPACE`] and the time limits.
fn limited_qemu_img(args: &[&str], path: &Path) -> Result<std::process::Output, Refusal> {
    std::process::Command::new("timeout")
        .args(["--kill-after=5", &QEMU_IMG_WALL_SECONDS.to_string(), "prlimit"])
        .arg(format!("--as={QEMU_IMG_ADDRESS_SPACE}"))
        .arg(format!("--cpu={QEMU_IMG_CPU_SECONDS}"))
        .arg("--")
        .arg("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| refuse("inspection_failed", format!("cannot run qemu-img: {e}")))
}

enum Sniffed {
    /// With the virtual size its header gives.
    Qcow2 { virtual_size: u64 },
    /// Any other bytes are a raw disk of this many bytes: hosts read them with `-f raw`.
    Raw(u64),
}

/// Reads the data's header before any tool does. qemu-img left to probe opens what a
/// header names: a VMDK descriptor's extents (any host file, or a FIFO it then waits on
/// for ever), a qcow2's backing or data file on an older qemu.
fn sniff(path: &Path) -> Result<Sniffed, Refusal> {
    let cannot = |e: std::io::Error| refuse("inspection_failed", format!("cannot read the data: {e}"));
    let mut f = std::fs::File::open(path).map_err(cannot)?;
    let len = f.metadata().map_err(cannot)?.len();
    let mut head = Vec::with_capacity(vdc_schema::disk::HEAD);
    (&mut f).take(vdc_schema::disk::HEAD as u64).read_to_end(&mut head).map_err(cannot)?;
    sniff_head(&head, len, |at, size| {
        use std::io::{Seek, SeekFrom};
        let mut name = vec![0; size];
        let read = f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut name));
        read.ok().map(|_| String::from_utf8_lossy(&name).into_owned())
    })
}

/// The header check of data of `len` bytes that begins with `head`; `name_at` reads the
/// backing file's name a qcow2 header points to, for the message.
fn sniff_head(head: &[u8], len: u64, name_at: impl FnOnce(u64, usize) -> Option<String>) -> Result<Sniffed, Refusal> {
    // Formats other than qcow2 are refused by name rather than taken for raw.
    match vdc_schema::disk::format_of(head) {
        None => return raw_disk(head, len),
        Some("qcow2") => {}
        Some(name) => return Err(other_format(name)),
    }
    let be32 = |at: usize| head.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap()));
    let be64 = |at: usize| head.get(at..at + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap()));
    let damaged = || refuse("invalid_image_data", "the qcow2 header is cut short");
    let version = be32(4).ok_or_else(damaged)?;
    if !(2..=3).contains(&version) {
        return Err(refuse(
            "unsupported_format",
            format!("the data is a qcow version {version} image; convert it to qcow2 (qemu-img convert -O qcow2)"),
        ));
    }
    let backing_at = be64(8).ok_or_else(damaged)?;
    if backing_at != 0 {
        let size = be32(16).ok_or_else(damaged)?.min(1023);
        return Err(backing_file(&name_at(backing_at, size as usize).unwrap_or_else(|| "?".into())));
    }
    if be32(32).ok_or_else(damaged)? != 0 {
        return Err(refuse("unsupported_format", "the disk image is encrypted: hosts cannot boot it"));
    }
    // Version 3's incompatible features: bit 2 is an external data file.
    if version == 3 && be64(72).ok_or_else(damaged)? & (1 << 2) != 0 {
        return Err(external_data_file(None));
    }
    let virtual_size = be64(24).ok_or_else(damaged)?;
    Ok(Sniffed::Qcow2 { virtual_size })
}

/// Bytes without a known image header are a raw disk, unless they are plainly something
/// else: a web page (a URL that answered with one), a multipart form (`curl -F`), a
/// compressed file or an archive. (A size that is no whole number of 512-byte sectors
/// is not refused: QEMU reads such a file.)
fn raw_disk(head: &[u8], len: u64) -> Result<Sniffed, Refusal> {
    let not =
        |what: &str, fix: &str| refuse("invalid_image_data", format!("the data is {what}, not a disk image: {fix}"));
    let text = String::from_utf8_lossy(&head[..head.len().min(1024)]).to_ascii_lowercase();
    let start = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if start.starts_with("<!doctype html") || start.starts_with("<html") {
        return Err(not(
            "an HTML page",
            "give the disk image file itself (a URL that answers with a web page, or a download that saved one)",
        ));
    }
    if start.starts_with("--") && text.contains("content-disposition:") {
        return Err(not("a multipart form", "send the file itself as the body (curl -T FILE or --data-binary @FILE)"));
    }
    const PACKED: [(&[u8], &str); 5] = [
        (b"\x1f\x8b\x08", "gzip-compressed"),
        (b"\xfd7zXZ\x00", "xz-compressed"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
        (b"BZh", "bzip2-compressed"),
        (b"PK\x03\x04", "a zip archive"),
    ];
    if let Some((_, what)) = PACKED.iter().find(|(magic, _)| head.starts_with(magic)) {
        let what = if what.starts_with('a') { what.to_string() } else { format!("a {what} file") };
        return Err(not(
            &what,
            "decompress it first (qcow2 or raw); a root file system for containers is format tar (.tar.gz)",
        ));
    }
    Ok(Sniffed::Raw(len))
}

/// What [`inspect`] refuses in a disk's header, from its first bytes only (a bundle's
/// plan holds no more of a blob): another format, a qcow2's backing or data file,
/// encryption, and a virtual size beyond `max_virtual`. The import runs the whole check.
pub fn inspect_head(head: &[u8], len: u64, max_virtual: u64) -> Result<Inspected, Refusal> {
    let name_at = |at: u64, size: usize| {
        let at = usize::try_from(at).ok()?;
        head.get(at..at.checked_add(size)?).map(|n| String::from_utf8_lossy(n).into_owned())
    };
    let (format, vsize) = match sniff_head(head, len, name_at)? {
        Sniffed::Raw(len) => ("raw", len),
        Sniffed::Qcow2 { virtual_size } => ("qcow2", virtual_size),
    };
    decide_disk(&serde_json::json!({"format": format, "virtual-size": vsize}), max_virtual)
}

fn other_format(name: &str) -> Refusal {
    refuse(
        "unsupported_format",
        format!("the data is a {name:?} disk image; convert it to qcow2 or raw (qemu-img convert -O qcow2)"),
    )
}

fn backing_file(name: &str) -> Refusal {
    refuse(
        "backing_file",
        format!(
            "the qcow2 image has a backing file ({name:?}): a host would read that file; \
             flatten it first (qemu-img convert -O qcow2 IN OUT)"
        ),
    )
}

fn external_data_file(name: Option<&str>) -> Refusal {
    let named = name.map(|d| format!(" ({d:?})")).unwrap_or_default();
    refuse(
        "external_data_file",
        format!(
            "the qcow2 image keeps its data in an external file{named}: a host would read that file; \
             convert it to a plain qcow2 (qemu-img convert -O qcow2 IN OUT)"
        ),
    )
}

/// The decision on `qemu-img info --output=json`'s answer (pure, for the tests).
pub fn decide_disk(info: &serde_json::Value, max_virtual: u64) -> Result<Inspected, Refusal> {
    let format = match info["format"].as_str().unwrap_or("") {
        "qcow2" => ImageFormat::Qcow2,
        "raw" => ImageFormat::Raw,
        other => return Err(other_format(other)),
    };
    if let Some(b) = info.get("backing-filename").and_then(|b| b.as_str()) {
        return Err(backing_file(b));
    }
    let specific = &info["format-specific"]["data"];
    if let Some(d) = specific.get("data-file").and_then(|d| d.as_str()) {
        return Err(external_data_file(Some(d)));
    }
    if info["encrypted"].as_bool() == Some(true) || specific.get("encrypt").is_some() {
        return Err(refuse("unsupported_format", "the disk image is encrypted: hosts cannot boot it"));
    }
    let Some(vsize) = info["virtual-size"].as_u64() else {
        return Err(refuse("inspection_failed", "qemu-img info gave no virtual size"));
    };
    if vsize == 0 {
        // An empty file (a pipe whose data never came) made an "available" image of nothing.
        return Err(refuse("empty_image", "the disk is empty (0 bytes as a guest sees it): upload the disk's data"));
    }
    if vsize > max_virtual {
        return Err(refuse(
            "virtual_size_too_large",
            format!("the disk is {vsize} bytes as a guest sees it; the limit is {max_virtual} bytes"),
        ));
    }
    Ok(Inspected { format, virtual_size: Some(vsize) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img(args: &[&str]) {
        let st = std::process::Command::new("qemu-img").args(args).status().expect("qemu-img runs");
        assert!(st.success(), "qemu-img {args:?}");
    }

    #[test]
    fn data_that_is_plainly_no_disk_is_refused_as_such() {
        let sector = |b: &[u8]| {
            let mut v = b.to_vec();
            v.resize(4096, 0);
            v
        };
        let why = |b: &[u8], len: u64| inspect_head(b, len, 1 << 40).unwrap_err().message;
        assert!(why(&sector(b"\n<!DOCTYPE html><html>"), 4096).contains("an HTML page"));
        assert!(why(&sector(b"<HTML><body>"), 4096).contains("an HTML page"));
        let form = b"------x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n";
        assert!(why(&sector(form), 4096).contains("a multipart form"));
        assert!(why(&sector(b"\x1f\x8b\x08\x00"), 4096).contains("a gzip-compressed file"));
        assert!(why(&sector(b"\xfd7zXZ\x00"), 4096).contains("xz"));
        assert!(why(&sector(b"PK\x03\x04"), 4096).contains("a zip archive"));
        // A raw disk is whatever else it holds, in whole sectors.
        assert_eq!(inspect_head(&sector(b"\xeb\x63\x90"), 4096, 1 << 40).unwrap().format, ImageFormat::Raw);
        assert_eq!(inspect_head(&sector(b""), 1 << 20, 1 << 40).unwrap().format, ImageFormat::Raw);
    }

    #[test]
    fn a_qcow2_naming_a_host_file_is_refused_and_a_plain_one_is_what_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", &p("backing.qcow2"), "1M"]);
        let e = inspect(Path::new(&p("backing.qcow2")), ImageFormat::Qcow2, 1 << 40).unwrap_err();
        assert_eq!(e.code, "backing_file", "{e}");
        assert!(e.message.contains("/etc/shadow"), "{e}");
        // Announced as raw changes nothing: the format is probed.
        assert_eq!(
            inspect(Path::new(&p("backing.qcow2")), ImageFormat::Raw, 1 << 40).unwrap_err().code,
            "backing_file"
        );

        let data = p("data.raw");
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("data_file={data}"), &p("datafile.qcow2"), "1M"]);
        let e = inspect(Path::new(&p("datafile.qcow2")), ImageFormat::Qcow2, 1 << 40).unwrap_err();
        assert_eq!(e.code, "external_data_file", "{e}");

        qemu_img(&["create", "-q", "-f", "qcow2", &p("plain.qcow2"), "64M"]);
        let ok = inspect(Path::new(&p("plain.qcow2")), ImageFormat::Raw, 1 << 40).unwrap();
        assert_eq!(ok, Inspected { format: ImageFormat::Qcow2, virtual_size: Some(64 << 20) });
        let e = inspect(Path::new(&p("plain.qcow2")), ImageFormat::Qcow2, 32 << 20).unwrap_err();
        assert_eq!(e.code, "virtual_size_too_large");
        // Cut short: its header still reads, its tables do not.
        let whole = std::fs::read(p("plain.qcow2")).unwrap();
        std::fs::write(p("cut.qcow2"), &whole[..300]).unwrap();
        let e = inspect(Path::new(&p("cut.qcow2")), ImageFormat::Qcow2, 1 << 40).unwrap_err();
        assert_eq!(e.code, "invalid_image_data", "{e}");
        assert!(e.message.contains("damaged (qemu-img check: 3 errors were found on the image)"), "{e}");
        // A whole one with data written passes the check.
        qemu_img(&["create", "-q", "-f", "qcow2", &p("leaky.qcow2"), "64M"]);
        let io = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x5a 0 1M", &p("leaky.qcow2")])
            .output()
            .unwrap();
        assert!(io.status.success());
        assert!(inspect(Path::new(&p("leaky.qcow2")), ImageFormat::Qcow2, 1 << 40).is_ok());

        std::fs::write(p("disk.raw"), vec![0u8; 4096]).unwrap();
        let ok = inspect(Path::new(&p("disk.raw")), ImageFormat::Qcow2, 1 << 40).unwrap();
        assert_eq!(ok, Inspected { format: ImageFormat::Raw, virtual_size: Some(4096) });

        qemu_img(&["create", "-q", "-f", "vmdk", &p("disk.vmdk"), "1M"]);
        assert_eq!(
            inspect(Path::new(&p("disk.vmdk")), ImageFormat::Qcow2, 1 << 40).unwrap_err().code,
            "unsupported_format"
        );
        assert_eq!(
            inspect(Path::new(&p("disk.raw")), ImageFormat::Kernel, 1 << 40).unwrap_err().code,
            "unsupported_format"
        );
    }

    #[test]
    fn headers_that_name_host_files_are_refused_before_qemu_img_opens_them() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        // A VMDK descriptor whose extent is a FIFO: qemu-img probing it would open the
        // FIFO and wait for a writer for ever (any host file, equally, would be read).
        let fifo = p("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let descriptor = format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
             RW 2048 FLAT \"{}\" 0\n",
            fifo.display()
        );
        std::fs::write(p("flat.vmdk"), descriptor).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = p("flat.vmdk");
        std::thread::spawn(move || tx.send(inspect(&path, ImageFormat::Raw, 1 << 40)).unwrap());
        let e = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("inspection ends").unwrap_err();
        assert_eq!((e.code, e.message.contains("\"vmdk\"")), ("unsupported_format", true), "{e}");

        // qcow (version 1), and a qcow2 cut off in its header.
        qemu_img(&["create", "-q", "-f", "qcow", p("v1.qcow").to_str().unwrap(), "1M"]);
        let e = inspect(&p("v1.qcow"), ImageFormat::Qcow2, 1 << 40).unwrap_err();
        assert_eq!(e.code, "unsupported_format", "{e}");
        std::fs::write(p("cut.qcow2"), b"QFI\xfb\0\0").unwrap();
        assert_eq!(inspect(&p("cut.qcow2"), ImageFormat::Qcow2, 1 << 40).unwrap_err().code, "invalid_image_data");

        // An encryption method in an otherwise plain qcow2's header.
        qemu_img(&["create", "-q", "-f", "qcow2", p("enc.qcow2").to_str().unwrap(), "1M"]);
        let mut b = std::fs::read(p("enc.qcow2")).unwrap();
        b[35] = 1;
        std::fs::write(p("enc.qcow2"), b).unwrap();
        let e = inspect(&p("enc.qcow2"), ImageFormat::Qcow2, 1 << 40).unwrap_err();
        assert!(e.code == "unsupported_format" && e.message.contains("encrypted"), "{e}");
    }

    #[test]
    fn a_tar_image_must_be_gzip_compressed() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("x.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "init.sh", &b"data"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        std::fs::write(&plain, &tar).unwrap();
        assert_eq!(inspect(&plain, ImageFormat::Tar, u64::MAX).unwrap_err().code, "format_mismatch");
        let gz = tmp.path().join("x.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &tar).unwrap();
        enc.finish().unwrap();
        assert_eq!(inspect(&gz, ImageFormat::Tar, u64::MAX).unwrap().format, ImageFormat::Tar);
        // What it unpacks to is a tar image's virtual size, under the same limit.
        assert_eq!(inspect(&gz, ImageFormat::Tar, 1000).unwrap_err().code, "virtual_size_too_large");
    }
}
