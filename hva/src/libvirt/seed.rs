//! The cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata` with meta-data
//! (instance-id, hostname, ssh keys) and user-data, made with genisoimage.

use super::host;
use std::path::Path;
use vdc_schema::bus::InstanceSpec;

pub fn meta_data(spec: &InstanceSpec) -> String {
    let mut s = format!("instance-id: {}\nlocal-hostname: {}\n", spec.id, spec.hostname);
    if !spec.ssh_public_keys.is_empty() {
        s.push_str("public-keys:\n");
        for k in &spec.ssh_public_keys {
            // A JSON string is a valid YAML scalar, quoting included.
            s.push_str(&format!("  - {}\n", serde_json::to_string(k).unwrap_or_default()));
        }
    }
    s
}

pub fn build(spec: &InstanceSpec, dir: &Path, iso: &Path) -> Result<(), super::image::ImageError> {
    let src = dir.join("seed");
    let io = |source| super::image::ImageError::Io { path: src.display().to_string(), source };
    std::fs::create_dir_all(&src).map_err(io)?;
    std::fs::write(src.join("meta-data"), meta_data(spec)).map_err(io)?;
    std::fs::write(src.join("user-data"), spec.user_data.as_deref().unwrap_or("#cloud-config\n")).map_err(io)?;
    host::run(
        "genisoimage",
        &[
            "-quiet",
            "-output",
            &host::path(iso),
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            &host::path(&src.join("user-data")),
            &host::path(&src.join("meta-data")),
        ],
    )?;
    Ok(())
}
