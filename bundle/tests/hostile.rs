//! Hostile bundles: every refusal has its stable code, and nothing is yielded before the
//! manifest is verified.

use vdc_bundle::*;
#[path = "support/image.rs"]
mod image;

use image::raw_image;
use vdc_schema::state::{Direction, HypervisorKind, ImageFormat, Protocol};

fn model_with_image(key: &SigningKey, data: &[u8]) -> (Manifest, Vec<Vec<u8>>) {
    let (blob, chunks) = chunk_blob(data).unwrap();
    let parts: Vec<Vec<u8>> = data.chunks(CHUNK_SIZE).map(|c| c.to_vec()).collect();
    let m = Manifest {
        format_version: FORMAT_VERSION,
        source: Source {
            site_key: key_hex(&key.verifying_key()),
            vdc_id: "a-src".into(),
            exported_at: "2026-01-01T00:00:00Z".into(),
        },
        model: Model {
            networks: vec![Network {
                id: "nw-1".into(),
                name: "net".into(),
                cidr: "10.0.0.0/24".into(),
                gateway: "10.0.0.1".into(),
                dhcp_start: "10.0.0.10".into(),
                dhcp_end: "10.0.0.200".into(),
            }],
            security_groups: vec![SecurityGroup {
                id: "sg-1".into(),
                name: "web".into(),
                description: String::new(),
                rules: vec![Rule {
                    direction: Direction::Ingress,
                    protocol: Protocol::Tcp,
                    port_min: Some(22),
                    port_max: Some(22),
                    cidr: None,
                    group: Some("sg-1".into()),
                }],
            }],
            images: vec![raw_image("img-1", "disk", blob)],
            instances: vec![Instance {
                id: "i-1".into(),
                name: "web".into(),
                hostname: "web".into(),
                image: "img-1".into(),
                hypervisor: HypervisorKind::Qemu,
                cpus: 1,
                memory_mib: 64,
                root_disk_size: None,
                keypair: None,
                user_data: None,
                interfaces: vec![Interface {
                    network: "nw-1".into(),
                    ip: "10.0.0.10".into(),
                    mac: "52:54:00:00:00:01".into(),
                    security_groups: vec!["sg-1".into()],
                }],
                root_disk: None,
                root_disk_format: None,
                stopped: false,
                zone: None,
                host_labels: Default::default(),
                server_group: None,
            }],
            ..Default::default()
        },
        chunks,
    };
    (m, parts)
}

fn write(key: &SigningKey, m: &Manifest, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), m, key).unwrap();
    for p in parts {
        w.write_chunk(p).unwrap();
    }
    w.finish(parts.len() as u64).unwrap()
}

/// Reads the whole bundle; the code of the first refusal.
fn read(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<(Manifest, Vec<Chunk>), BundleError> {
    let mut r = Reader::open(bytes, trusted, &Limits::default())?;
    let mut chunks = vec![];
    r.for_each_chunk(|c| {
        chunks.push(c);
        Ok(())
    })?;
    Ok((r.manifest().clone(), chunks))
}

fn code(r: Result<(Manifest, Vec<Chunk>), BundleError>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(e) => e.code(),
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_bundle_reads_back_as_written_with_chunks_bounded() {
    let key = generate_key();
    let d = data(CHUNK_SIZE * 2 + 1000);
    let (m, parts) = model_with_image(&key, &d);
    assert_eq!(m.chunks.len(), 3);
    let bytes = write(&key, &m, &parts);
    let (back, chunks) = read(&bytes, &[key.verifying_key()]).unwrap();
    assert_eq!(back, m);
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(joined, d);
    assert!(chunks.iter().all(|c| c.data.len() <= CHUNK_SIZE));
}

#[test]
fn signature_and_trust_are_checked() {
    let key = generate_key();
    let (m, parts) = model_with_image(&key, &data(1000));
    let bytes = write(&key, &m, &parts);
    assert_eq!(code(read(&bytes, &[generate_key().verifying_key()])), "bundle_untrusted_key");
    // One bit of the manifest flipped.
    let mut bad = bytes.clone();
    bad[8 + 5 + 20] ^= 1;
    assert_eq!(code(read(&bad, &[key.verifying_key()])), "bundle_bad_signature");
    // Signed by a trusted key that is not the manifest's source.
    let other = generate_key();
    let bytes = write(&other, &m, &parts);
    assert_eq!(code(read(&bytes, &[other.verifying_key()])), "bundle_invalid_manifest");
}

#[test]
fn chunks_are_checked_against_the_manifest() {
    let key = generate_key();
    let trusted = [key.verifying_key()];
    let (m, parts) = model_with_image(&key, &data(1000));
    let good = write(&key, &m, &parts);
    // The header of the one chunk frame: after magic, manifest and signature frames.
    let json_len = u32::from_be_bytes(good[9..13].try_into().unwrap()) as usize;
    let chunk_at = 8 + 5 + json_len + 5 + 96;
    assert_eq!(good[chunk_at], b'C');

    // Bytes that do not match their hash (the compressed payload's last byte flipped).
    let end_at = good.len() - 13;
    let mut bad = good.clone();
    bad[end_at - 1] ^= 0xff;
    // zstd may find the corrupted block would overrun the listed size before any hash.
    let c = code(read(&bad, &trusted));
    assert!(c == "bundle_chunk_mismatch" || c == "bundle_chunk_too_large", "{c}");

    // A chunk the manifest does not list.
    let mut bad = good[..end_at].to_vec();
    let extra = b"not listed";
    let z = zstd::bulk::compress(extra, 1).unwrap();
    bad.push(b'C');
    bad.extend_from_slice(&((32 + z.len()) as u32).to_be_bytes());
    bad.extend_from_slice(&hex::decode(sha256_hex(extra)).unwrap());
    bad.extend_from_slice(&z);
    bad.extend_from_slice(&good[end_at..]);
    assert_eq!(code(read(&bad, &trusted)), "bundle_chunk_unlisted");

    // The same chunk twice.
    let mut bad = good[..end_at].to_vec();
    bad.extend_from_slice(&good[chunk_at..end_at]);
    bad.extend_from_slice(&good[end_at..]);
    assert_eq!(code(read(&bad, &trusted)), "bundle_chunk_duplicate");

    // A listed chunk that never comes.
    let mut bad = good[..chunk_at].to_vec();
    bad.extend_from_slice(&good[end_at..]);
    assert_eq!(code(read(&bad, &trusted)), "bundle_chunk_missing");

    // Truncated anywhere: never accepted, never a panic.
    for cut in 0..good.len() {
        let c = code(read(&good[..cut], &trusted));
        assert!(c == "bundle_truncated" || c == "bundle_bad_magic", "cut at {cut}: {c}");
    }
    // A bit flip anywhere is refused, or (in zstd's framing, which the hash does not
    // cover) yields exactly the signed manifest and the hashed bytes.
    let (m0, c0) = read(&good, &trusted).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        if let Ok((m, c)) = read(&bad, &trusted) {
            assert!(i > chunk_at && i < end_at, "flip at {i} accepted outside a chunk payload");
            assert_eq!(m, m0);
            assert_eq!(c.iter().map(|c| &c.data).collect::<Vec<_>>(), c0.iter().map(|c| &c.data).collect::<Vec<_>>());
        }
    }
}

#[test]
fn a_zstd_bomb_stops_at_the_listed_size() {
    let key = generate_key();
    let trusted = [key.verifying_key()];
    let (m, parts) = model_with_image(&key, &data(1000));
    let good = write(&key, &m, &parts);
    let json_len = u32::from_be_bytes(good[9..13].try_into().unwrap()) as usize;
    let chunk_at = 8 + 5 + json_len + 5 + 96;
    let end_at = good.len() - 13;
    // Under the listed chunk's hash: 1 GiB of zeros, compressed to a few KiB.
    let zeros = vec![0u8; 64 << 20];
    let z = zstd::bulk::compress(&zeros, 19).unwrap();
    assert!(z.len() < 1 << 20);
    let mut bad = good[..chunk_at].to_vec();
    bad.push(b'C');
    bad.extend_from_slice(&((32 + z.len()) as u32).to_be_bytes());
    bad.extend_from_slice(&good[chunk_at + 5..chunk_at + 5 + 32]);
    bad.extend_from_slice(&z);
    bad.extend_from_slice(&good[end_at..]);
    assert_eq!(code(read(&bad, &trusted)), "bundle_chunk_too_large");
}

fn resign(key: &SigningKey, f: impl FnOnce(&mut Manifest)) -> &'static str {
    let (mut m, parts) = model_with_image(key, &data(1000));
    f(&mut m);
    let bytes = write(key, &m, &parts);
    code(read(&bytes, &[key.verifying_key()]))
}

#[test]
fn signed_but_malformed_manifests_are_refused() {
    let key = generate_key();
    assert_eq!(resign(&key, |_| {}), "accepted");
    assert_eq!(resign(&key, |m| m.format_version = FORMAT_VERSION + 1), "bundle_unsupported_version");
    assert_eq!(resign(&key, |m| m.model.networks[0].name = "../etc".into()), "bundle_invalid_name");
    assert_eq!(resign(&key, |m| m.model.networks[0].name = "a/b".into()), "bundle_invalid_name");
    assert_eq!(resign(&key, |m| m.model.instances[0].name = "x\u{7}".into()), "bundle_invalid_name");
    assert_eq!(resign(&key, |m| m.model.images[0].id = "../../x".into()), "bundle_invalid_name");
    assert_eq!(resign(&key, |m| m.model.instances[0].image = "img-404".into()), "bundle_dangling_reference");
    assert_eq!(
        resign(&key, |m| m.model.security_groups[0].rules[0].group = Some("sg-x".into())),
        "bundle_dangling_reference"
    );
    assert_eq!(
        resign(&key, |m| m.model.instances[0].interfaces[0].network = "nw-x".into()),
        "bundle_dangling_reference"
    );
    // Host classes as vdc takes them.
    assert_eq!(resign(&key, |m| m.model.instances[0].zone = Some("z-1.a".into())), "accepted");
    assert_eq!(resign(&key, |m| m.model.instances[0].zone = Some("../x".into())), "bundle_invalid_manifest");
    assert_eq!(resign(&key, |m| m.model.instances[0].zone = Some(String::new())), "bundle_invalid_manifest");
    let label = |k: &str, v: &str| {
        let (k, v) = (k.to_string(), v.to_string());
        move |m: &mut Manifest| {
            m.model.instances[0].host_labels.insert(k, v);
        }
    };
    assert_eq!(resign(&key, label("disk/type", "ssd")), "accepted");
    assert_eq!(resign(&key, label("a,b", "x")), "bundle_invalid_manifest");
    assert_eq!(resign(&key, label("k", "x=y")), "bundle_invalid_manifest");
    let many = |m: &mut Manifest| {
        m.model.instances[0].host_labels = (0..17).map(|n| (format!("k{n}"), String::new())).collect();
    };
    assert_eq!(resign(&key, many), "bundle_invalid_manifest");
    // Attachments: to an instance of the bundle, never a container, at most 16 to one.
    let volume = |n: usize, to: &str| Volume {
        id: format!("vol-{n}"),
        name: format!("v{n}"),
        size_mib: 1,
        data: None,
        data_format: None,
        attached_to: Some(to.into()),
    };
    assert_eq!(resign(&key, |m| m.model.volumes.push(volume(1, "i-1"))), "accepted");
    assert_eq!(resign(&key, |m| m.model.volumes.push(volume(1, "i-x"))), "bundle_dangling_reference");
    let lxc = |m: &mut Manifest| {
        m.model.instances[0].hypervisor = HypervisorKind::Lxc;
        m.model.volumes.push(volume(1, "i-1"))
    };
    assert_eq!(resign(&key, lxc), "bundle_invalid_manifest");
    assert_eq!(resign(&key, |m| m.model.volumes.extend((0..16).map(|n| volume(n, "i-1")))), "accepted");
    assert_eq!(resign(&key, |m| m.model.volumes.extend((0..17).map(|n| volume(n, "i-1")))), "bundle_invalid_manifest");
    assert_eq!(
        resign(&key, |m| {
            let n = m.model.networks[0].clone();
            m.model.networks.push(n)
        }),
        "bundle_duplicate_id"
    );
    assert_eq!(
        resign(&key, |m| {
            let n = m.model.networks[0].clone();
            m.model.networks = (0..5000).map(|i| Network { id: format!("nw-{i}"), ..n.clone() }).collect();
        }),
        "bundle_too_many"
    );
    // An image referring to a chunk the manifest does not list.
    assert_eq!(
        resign(&key, |m| m.model.images[0].blob.as_mut().unwrap().chunks.push("ab".repeat(32))),
        "bundle_chunk_missing"
    );
    // Sizes that do not add up.
    assert_eq!(resign(&key, |m| m.model.images[0].blob.as_mut().unwrap().size += 1), "bundle_invalid_manifest");
}

#[test]
fn garbage_is_not_a_bundle() {
    assert_eq!(code(read(b"PK\x03\x04 something else", &[])), "bundle_bad_magic");
    assert_eq!(code(read(b"", &[])), "bundle_truncated");
}

/// A container's root travels as a tarball and a virtual machine's as a disk: each is
/// opened by its host as that format, so a root of the other kind is refused.
#[test]
fn a_root_disk_is_of_its_instances_kind() {
    let key = generate_key();
    let d = data(1000);
    let (m, parts) = model_with_image(&key, &d);
    let with = |hv: HypervisorKind, f: ImageFormat| {
        let mut m = m.clone();
        m.model.instances[0].hypervisor = hv;
        m.model.instances[0].root_disk = m.model.images[0].blob.clone();
        m.model.instances[0].root_disk_format = Some(f);
        code(read(&write(&key, &m, &parts), &[key.verifying_key()]))
    };
    assert_eq!(with(HypervisorKind::Lxc, ImageFormat::Tar), "accepted");
    assert_eq!(with(HypervisorKind::Qemu, ImageFormat::Qcow2), "accepted");
    assert_eq!(with(HypervisorKind::Lxc, ImageFormat::Qcow2), "bundle_invalid_manifest");
    assert_eq!(with(HypervisorKind::Lxc, ImageFormat::Dir), "bundle_invalid_manifest");
    assert_eq!(with(HypervisorKind::Kvm, ImageFormat::Tar), "bundle_invalid_manifest");
}
