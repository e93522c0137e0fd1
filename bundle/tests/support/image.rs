//! A raw QEMU image entry of a test manifest, shared by the bundle tests.

use vdc_bundle::{BlobRef, Image};
use vdc_schema::state::{Arch, BootMode, HypervisorKind, ImageFormat};

pub fn raw_image(id: &str, name: &str, blob: BlobRef) -> Image {
    Image {
        id: id.into(),
        name: name.into(),
        format: ImageFormat::Raw,
        arch: Arch::X86_64,
        hypervisors: vec![HypervisorKind::Qemu],
        boot_mode: BootMode::Bios,
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        default_user: None,
        blob: Some(blob),
        deleted: false,
    }
}
