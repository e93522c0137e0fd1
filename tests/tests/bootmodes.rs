//! Boot modes and image properties through the Web API, on both databases: every request
//! that cannot be honoured is refused with its code at create time and records nothing,
//! and a UEFI image is placed only on a host that reported UEFI firmware.

use std::time::Duration;
use vdc_cli::client::ClientError;
use vdc_schema::api::*;
use vdc_schema::bus::{self, subject};
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{on_both_databases, Db, Stack, StackOptions};

on_both_databases!(
    image_boot_properties_are_honoured_or_refused,
    instance_boot_requests_are_checked,
    uefi_goes_only_to_hosts_with_firmware,
    kernel_delete_races_disk_images_naming_it,
);

fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn disk(name: &str) -> CreateImage {
    CreateImage {
        name: name.into(),
        format: ImageFormat::Qcow2,
        arch: Arch::X86_64,
        hypervisors: vec![HypervisorKind::Qemu, HypervisorKind::Kvm],
        source: Some("/var/lib/vdc/images/debian.qcow2".into()),
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: BootMode::Bios,
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        public: true,
        default_user: None,
    }
}

fn inst(image: &ImageId) -> CreateInstance {
    CreateInstance {
        name: None,
        image_id: image.clone(),
        hypervisor: None,
        cpus: 1,
        memory_mib: 256,
        interfaces: vec![],
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

const MIB: u64 = 1 << 20;

async fn image_boot_properties_are_honoured_or_refused(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let op = &s.admin;
    let before = op.list_all_images().await.unwrap().len();
    let refused = |r: CreateImage, code: &'static str| {
        let admin = s.admin.clone();
        async move { assert_eq!(err(admin.create_image(&r).await), (400, code.into()), "{r:?}") }
    };
    // initrd or a command line on a disk image would be ignored: refused.
    let mut r = disk("x");
    r.initrd = Some("/boot/initrd.img".into());
    refused(r, "kernel_options_need_kernel_image").await;
    let mut r = disk("x");
    r.kernel_cmdline = Some("root=/dev/vda1".into());
    refused(r, "kernel_options_need_kernel_image").await;
    // A hypervisor that cannot boot the format.
    let mut r = disk("x");
    r.hypervisors.push(HypervisorKind::Lxc);
    refused(r, "unsupported_format").await;
    let mut r = disk("x");
    (r.format, r.hypervisors) = (ImageFormat::Tar, vec![HypervisorKind::Qemu]);
    refused(r, "unsupported_format").await;
    // UEFI is for disks with a bootloader, not kernels or containers.
    let mut r = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu]);
    r.boot_mode = BootMode::Uefi;
    refused(r, "invalid_boot_mode").await;
    // A root disk minimum means nothing without a root disk.
    let mut r = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu]);
    r.min_disk = Some(MIB);
    refused(r, "invalid_min_disk").await;
    let mut r = disk("x");
    r.min_memory = Some(0);
    refused(r, "invalid_image").await;
    let mut r = disk("x");
    r.os = Some("debian\n12".into());
    refused(r, "invalid_os").await;
    // kernel_id must name a kernel image, on a disk image, and not with uefi.
    let mut r = disk("x");
    r.kernel_id = Some("img-nosuchkernel".parse().unwrap());
    refused(r, "invalid_kernel_id").await;
    let mut r = disk("x");
    r.kernel_id = Some(s.image.clone());
    r.boot_mode = BootMode::Uefi;
    refused(r, "invalid_boot_mode").await;
    let other_disk = op.create_image(&disk("plain")).await.unwrap();
    let mut r = disk("x");
    r.kernel_id = Some(other_disk.id.clone());
    refused(r, "invalid_kernel_id").await;
    let mut r = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu]);
    r.kernel_id = Some(s.image.clone());
    refused(r, "invalid_kernel_id").await;
    assert_eq!(op.list_all_images().await.unwrap().len(), before + 1, "nothing refused was recorded");

    // Accepted, and read back as given.
    let mut r = disk("ami");
    (r.kernel_id, r.min_disk, r.min_memory, r.os) =
        (Some(s.image.clone()), Some(64 * MIB), Some(128 * MIB), Some("debian-12".into()));
    let ami = op.create_image(&r).await.unwrap();
    let got = op.get_image(&ami.id).await.unwrap();
    assert_eq!(got.kernel_id.as_ref(), Some(&s.image));
    assert_eq!((got.min_disk, got.min_memory, got.os.as_deref()), (Some(64 * MIB), Some(128 * MIB), Some("debian-12")));
    assert_eq!(got.boot_mode, BootMode::Bios);
    let mut r = disk("efi");
    r.boot_mode = BootMode::Uefi;
    assert_eq!(op.create_image(&r).await.unwrap().boot_mode, BootMode::Uefi);
    // The kernel may go while a disk image boots with it: hidden, nothing new names it,
    // kept for that image, and removed once that image is gone (its name free again).
    let kernel = op.get_image(&s.image).await.unwrap();
    op.delete_image(&s.image).await.unwrap();
    assert_eq!(err(op.get_image(&s.image).await).0, 404);
    assert_eq!(op.get_image(&ami.id).await.unwrap().kernel_id.as_ref(), Some(&s.image));
    let mut r = disk("late");
    r.kernel_id = Some(s.image.clone());
    refused(r, "invalid_kernel_id").await;
    let mut again = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu]);
    again.name = kernel.name.clone();
    assert_eq!(err(op.create_image(&again).await), (409, "name_taken".into()));
    op.delete_image(&ami.id).await.unwrap();
    vdc_tests::eventually(Duration::from_secs(20), || async { op.create_image(&again).await.ok() })
        .await
        .expect("the kernel is removed once no disk image names it");
    s.stop().await;
}

async fn instance_boot_requests_are_checked(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("boot").await;
    let mut r = disk("ami");
    (r.kernel_id, r.min_disk, r.min_memory) = (Some(s.image.clone()), Some(512 * MIB), Some(128 * MIB));
    let ami = s.admin.create_image(&r).await.unwrap();
    // Memory below the image's minimum.
    let mut i = inst(&ami.id);
    i.memory_mib = 64;
    assert_eq!(err(c.create_instance(&i).await), (400, "memory_below_image_minimum".into()));
    // A root disk below the image's minimum, or on an image without a root disk.
    let mut i = inst(&ami.id);
    i.root_disk_size = Some(256 * MIB);
    assert_eq!(err(c.create_instance(&i).await), (400, "root_disk_too_small".into()));
    let mut i = inst(&s.image);
    i.root_disk_size = Some(GIB);
    assert_eq!(err(c.create_instance(&i).await), (400, "root_disk_not_applicable".into()));
    // An image registered before formats were checked: lxc cannot boot a kernel.
    let mut i = inst(&s.image);
    i.hypervisor = Some(HypervisorKind::Lxc);
    assert_eq!(err(c.create_instance(&i).await).0, 400);
    assert!(c.list_all_instances().await.unwrap().is_empty(), "nothing refused was recorded");
    // Accepted: the size is kept and travels to the host.
    let mut i = inst(&ami.id);
    (i.root_disk_size, i.memory_mib) = (Some(GIB), 128);
    let a = c.create_instance(&i).await.unwrap();
    assert_eq!(a.resource.root_disk_size, Some(GIB));
    let got = vdc_tests::wait_state(&c, &a.resource.id, InstanceState::Running).await;
    assert_eq!(got.root_disk_size, Some(GIB));
    // Stopped and started again, it is checked and placed again the same way.
    let st = c.stop_instance(&got.id).await.unwrap();
    c.wait_job(&st.job.id, Duration::from_secs(30)).await.unwrap();
    let st = c.start_instance(&got.id).await.unwrap();
    assert_eq!(c.wait_job(&st.job.id, Duration::from_secs(30)).await.unwrap().state, JobState::Succeeded);
    assert_eq!(c.get_instance(&got.id).await.unwrap().root_disk_size, Some(GIB));
    // Left out, the root disk is the image's own size grown to its min_disk (this image
    // is a host file whose size dcmgr did not read): never below the minimum.
    let mut i = inst(&ami.id);
    (i.name, i.memory_mib) = (Some("at-minimum".into()), 128);
    assert_eq!(c.create_instance(&i).await.unwrap().resource.root_disk_size, Some(512 * MIB));
    s.stop().await;
}

const GIB: u64 = 1 << 30;

async fn uefi_goes_only_to_hosts_with_firmware(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("efi").await;
    let mut r = disk("efi");
    r.boot_mode = BootMode::Uefi;
    let efi = s.admin.create_image(&r).await.unwrap();
    // The simulated hosts boot BIOS only: the request cannot be honoured anywhere.
    let (status, code) = err(c.create_instance(&inst(&efi.id)).await);
    assert_eq!((status, code.as_str()), (409, "boot_mode_unsupported"));
    assert!(c.list_all_instances().await.unwrap().is_empty());
    // A BIOS image still fits on them.
    let bios = s.admin.create_image(&disk("bios")).await.unwrap();
    let a = c.create_instance(&inst(&bios.id)).await.unwrap();
    let sims: Vec<_> = s.admin.list_all_host_nodes().await.unwrap().into_iter().map(|h| h.id).collect();
    assert!(sims.contains(a.resource.host_node_id.as_ref().unwrap()));
    // A host whose hva found OVMF registers with uefi: UEFI images go there, and only there.
    let host = HostNodeId::generate();
    let reg = bus::Register {
        node_id: host.to_string(),
        kind: bus::AgentKind::Hva,
        agent_version: "x".into(),
        host: Some(bus::HostInfo {
            cpus: 64,
            memory_mib: 1 << 20,
            hypervisors: vec![HypervisorKind::Qemu, HypervisorKind::Kvm],
            capabilities: serde_json::json!({"uefi": true}),
            boot_modes: vec![BootMode::Bios, BootMode::Uefi],
            disk_mib: None,
        }),
        storage: None,
        tunnel_ip: None,
    };
    use vdc_bus::Transport;
    s.bus.request(subject::REGISTER, bus::encode(&reg).into(), Duration::from_secs(5)).await.unwrap();
    for _ in 0..3 {
        let a = c.create_instance(&inst(&efi.id)).await.unwrap();
        assert_eq!(a.resource.host_node_id.as_ref(), Some(&host), "the only host with UEFI firmware");
    }
    s.stop().await;
}

/// A kernel image deleted while disk images that name it are created: the delete wins at
/// once; the disk images created before it keep it (their kernel is never gone), those
/// after it are refused; it is removed once none of them is left.
async fn kernel_delete_races_disk_images_naming_it(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    for round in 0..4 {
        let mut k = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu]);
        k.name = format!("k{round}");
        let kernel = s.admin.create_image(&k).await.unwrap();
        let creates: Vec<_> = (0..6)
            .map(|i| {
                let (op, kernel) = (s.admin.clone(), kernel.id.clone());
                async move {
                    let mut r = disk(&format!("d{round}-{i}"));
                    r.kernel_id = Some(kernel);
                    op.create_image(&r).await.map(|_| ()).map_err(|e| err::<()>(Err(e)))
                }
            })
            .collect();
        let (op, kernel_id) = (s.admin.clone(), kernel.id.clone());
        let del = async move { op.delete_image(&kernel_id).await.map_err(|e| err::<()>(Err(e))) };
        let (created, deleted) = tokio::join!(futures::future::join_all(creates), del);
        assert_eq!(deleted, Ok(()), "round {round}");
        let images = s.admin.list_all_images().await.unwrap();
        assert!(!images.iter().any(|i| i.name == format!("k{round}")), "hidden at once");
        let naming: Vec<_> = images.iter().filter(|i| i.name.starts_with(&format!("d{round}-"))).collect();
        for c in &created {
            if let Err(e) = c {
                assert_eq!(e, &(400, "invalid_kernel_id".into()));
            }
        }
        assert_eq!(naming.len(), created.iter().filter(|c| c.is_ok()).count(), "every accepted one is there");
        assert!(naming.iter().all(|i| i.kernel_id.as_ref() == Some(&kernel.id)));
        for i in &naming {
            s.admin.delete_image(&i.id).await.unwrap();
        }
        vdc_tests::eventually(Duration::from_secs(20), || async { s.admin.create_image(&k).await.ok() })
            .await
            .expect("the kernel is removed once no disk image names it");
    }
    s.stop().await;
}
