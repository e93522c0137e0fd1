//! A newer vdc reads older bundles: a version-1 bundle, written byte for byte as vdc 1
//! wrote it (its manifest has no `stopped`), is read by this version; and a version-2
//! bundle says "upgrade" to a reader that knows only version 1 (the check it runs first).

use ed25519_dalek::Signer;
use vdc_bundle::*;

/// The manifest exactly as a version-1 exporter wrote it: an image with one chunk, an
/// instance whose `root_disk` is null and that has no `stopped` field.
fn v1_manifest(key: &str, chunk: &str, size: usize) -> String {
    format!(
        r#"{{"format_version":1,"source":{{"site_key":"{key}","vdc_id":"a-old","exported_at":"2026-01-01T00:00:00Z"}},"model":{{"networks":[{{"id":"nw-1","name":"net","cidr":"10.0.0.0/24","gateway":"10.0.0.1","dhcp_start":"10.0.0.10","dhcp_end":"10.0.0.200"}}],"security_groups":[],"keypairs":[],"images":[{{"id":"img-1","name":"disk","format":"raw","arch":"x86_64","hypervisors":["qemu"],"boot_mode":"bios","kernel_id":null,"min_disk":null,"min_memory":null,"os":null,"default_user":null,"blob":{{"sha256":"{chunk}","size":{size},"chunks":["{chunk}"]}}}}],"instances":[{{"id":"i-1","name":"web","hostname":"web","image":"img-1","hypervisor":"qemu","cpus":1,"memory_mib":64,"root_disk_size":null,"keypair":null,"user_data":null,"interfaces":[{{"network":"nw-1","ip":"10.0.0.10","mac":"52:54:00:00:00:01","security_groups":[]}}],"root_disk":null}}],"volumes":[{{"id":"vol-1","name":"data","size_mib":1,"data":null}}],"floating_ips":[]}},"chunks":[{{"sha256":"{chunk}","size":{size}}}]}}"#
    )
}

fn frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[test]
fn a_version_1_bundle_is_read_and_its_instances_run() {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let data = b"an old image".to_vec();
    let hash = sha256_hex(&data);
    let json = v1_manifest(&key_hex(&key.verifying_key()), &hash, data.len());
    let sig = key.sign(&[b"vdc-bundle-manifest\0".as_slice(), json.as_bytes()].concat());
    let mut bytes = MAGIC.to_vec();
    frame(&mut bytes, b'M', json.as_bytes());
    frame(&mut bytes, b'S', &[key.verifying_key().as_bytes().as_slice(), &sig.to_bytes()].concat());
    frame(&mut bytes, b'C', &[hex::decode(&hash).unwrap(), zstd::bulk::compress(&data, 1).unwrap()].concat());
    frame(&mut bytes, b'E', &1u64.to_be_bytes());

    let mut r = Reader::open(&bytes[..], &[key.verifying_key()], &Limits::default()).unwrap();
    let m = r.manifest().clone();
    assert_eq!(m.format_version, 1);
    // Version 1 brought instances up and carried no disks.
    assert!(!m.model.instances[0].stopped);
    assert_eq!(m.model.instances[0].root_disk, None);
    assert_eq!(m.model.volumes[0].data, None);
    assert_eq!(r.next_chunk().unwrap().unwrap().data, data);
    assert!(r.next_chunk().unwrap().is_none());
}

#[test]
fn this_version_writes_version_2_and_a_newer_one_is_refused() {
    assert_eq!(FORMAT_VERSION, 2);
    let key = generate_key();
    let m = Manifest {
        format_version: FORMAT_VERSION + 1,
        source: Source {
            site_key: key_hex(&key.verifying_key()),
            vdc_id: "a".into(),
            exported_at: "2026-01-01T00:00:00Z".into(),
        },
        model: Model::default(),
        chunks: vec![],
    };
    let bytes = Writer::new(Vec::new(), &m, &key).unwrap().finish(0).unwrap();
    let e = Reader::open(&bytes[..], &[key.verifying_key()], &Limits::default()).err().unwrap();
    assert_eq!(e.code(), "bundle_unsupported_version");
    assert!(e.to_string().contains("upgrade vdc"), "{e}");
}
