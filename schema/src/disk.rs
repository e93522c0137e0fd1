//! What a disk's first bytes say it is. dcmgr refuses data announced as raw that another
//! format's header opens (qemu-img left to probe would read it as that format); sta
//! sends a volume whose blocks begin with such a header as qcow2, so they keep their
//! meaning: bytes of a raw disk, not the image they look like.

/// How many leading bytes [`format_of`] needs.
pub const HEAD: usize = 512;

/// Formats qemu knows by their first bytes: (offset, magic, name).
const MAGIC: &[(usize, &[u8], &str)] = &[
    (0, b"QFI\xfb", "qcow2"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0x40, &[0x7f, 0x10, 0xda, 0xbe], "vdi"),
    (0, b"QED\0", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
];

/// The image format whose header `head` (a disk's first [`HEAD`] bytes) begins with, or
/// `None` for bytes that are only a raw disk. `qcow2` covers qcow version 1 too.
pub fn format_of(head: &[u8]) -> Option<&'static str> {
    MAGIC.iter().find(|(at, magic, _)| head.get(*at..at + magic.len()) == Some(*magic)).map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_from_raw_bytes() {
        assert_eq!(format_of(b"QFI\xfb\0\0\0\x03"), Some("qcow2"));
        assert_eq!(format_of(b"KDMV"), Some("vmdk"));
        let mut vdi = vec![0u8; 0x44];
        vdi[0x40..].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(format_of(&vdi), Some("vdi"));
        assert_eq!(format_of(&[0u8; HEAD]), None);
        assert_eq!(format_of(b"QFI"), None, "cut short");
        assert_eq!(format_of(b""), None);
    }
}
