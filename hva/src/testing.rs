//! The specs hva's tests (and the suite's, for a simulated host's own guests) build their
//! instances from.

use vdc_schema::bus::{ImageSpec, InstanceSpec};
use vdc_schema::{DesiredPower, HypervisorKind, ImageFormat};

/// An operator's image `img-x` of `format` at `source` on the host.
pub fn image(format: ImageFormat, source: &str) -> ImageSpec {
    ImageSpec::host_file("img-x".parse().unwrap(), format, source)
}

/// Instance `id` running `image`: one vCPU, 128 MiB, hostname `web1`, spec generation 1,
/// and nothing else.
pub fn spec(id: &str, hypervisor: HypervisorKind, image: ImageSpec) -> InstanceSpec {
    InstanceSpec {
        id: id.parse().unwrap(),
        spec_gen: 1,
        power: DesiredPower::Running,
        hypervisor,
        cpus: 1,
        memory_mib: 128,
        hostname: "web1".into(),
        image,
        nics: vec![],
        ssh_public_keys: vec![],
        user_data: None,
        volumes: vec![],
        reboot_gen: 0,
        root_disk_size: None,
    }
}
