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

pub fn build(
    tools: &dyn host::CommandRunner,
    spec: &InstanceSpec,
    dir: &Path,
    iso: &Path,
) -> Result<(), super::image::ImageError> {
    let src = dir.join("seed");
    let io = |source| super::image::ImageError::Io { path: src.display().to_string(), source };
    std::fs::create_dir_all(&src).map_err(io)?;
    std::fs::write(src.join("meta-data"), meta_data(spec)).map_err(io)?;
    std::fs::write(src.join("user-data"), spec.user_data.as_deref().unwrap_or("#cloud-config\n")).map_err(io)?;
    tools.run(
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

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_schema::{HypervisorKind, ImageFormat};

    fn spec() -> InstanceSpec {
        let image = crate::testing::image(ImageFormat::Kernel, "/k");
        InstanceSpec {
            ssh_public_keys: vec!["ssh-ed25519 AAAA key: with \"quotes\"".into()],
            ..crate::testing::spec("i-abc", HypervisorKind::Qemu, image)
        }
    }

    #[test]
    fn meta_data_carries_identity_and_quoted_keys() {
        let spec = spec();
        let md = meta_data(&spec);
        assert!(md.starts_with("instance-id: i-abc\nlocal-hostname: web1\n"));
        assert!(md.contains(r#"  - "ssh-ed25519 AAAA key: with \"quotes\"""#), "{md}");
    }

    #[test]
    fn the_seed_is_an_iso_labelled_cidata_of_both_files() {
        let tmp = tempfile::tempdir().unwrap();
        let f = host::FakeRunner::new();
        let mut spec = spec();
        spec.user_data = Some("#cloud-config\nruncmd: [true]\n".into());
        let iso = tmp.path().join("seed.iso");
        build(&*f, &spec, tmp.path(), &iso).unwrap();
        let d = tmp.path().display();
        assert_eq!(
            f.lines(),
            [format!("genisoimage -quiet -output {d}/seed.iso -volid cidata -joliet -rock {d}/seed/user-data {d}/seed/meta-data")]
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("seed/user-data")).unwrap(),
            "#cloud-config\nruncmd: [true]\n"
        );
        assert!(std::fs::read_to_string(tmp.path().join("seed/meta-data"))
            .unwrap()
            .starts_with("instance-id: i-abc\n"));
    }
}
