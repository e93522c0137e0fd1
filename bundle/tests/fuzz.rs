//! The reader under hostile input (issue 13, point 7): a few thousand fuzz cases on
//! every `cargo test` (the example `fuzz` runs millions), and one regression test per
//! refusal the fuzzer made the reader add.

#[path = "support/fuzz.rs"]
mod fuzz;

use fuzz::{Corpus, Want};
use std::collections::BTreeMap;

/// Cases per `cargo test`; `VDC_FUZZ_CASES` asks for more, `VDC_FUZZ_SEED` another seed.
fn cases() -> u64 {
    std::env::var("VDC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

#[test]
fn the_reader_refuses_mutated_bundles_with_a_code_never_a_panic() {
    let c = corpus();
    let seed = std::env::var("VDC_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..cases() {
        let (case, res, _) = fuzz::run_case(c, seed, i);
        match res {
            Ok(code) => *codes.entry(code).or_default() += 1,
            Err(why) => panic!("{}", fuzz::report(seed, i, &case, &why)),
        }
    }
    eprintln!("{codes:?}");
    // The mutations reach the checks behind the signature, not only the framing.
    for code in [
        "ok",
        "bundle_truncated",
        "bundle_bad_signature",
        "bundle_untrusted_key",
        "bundle_invalid_name",
        "bundle_dangling_reference",
        "bundle_duplicate_id",
        "bundle_chunk_too_large",
        "bundle_chunk_mismatch",
        "bundle_too_many",
        "bundle_invalid_manifest",
    ] {
        assert!(codes.contains_key(code), "no case ended as {code}: {codes:?}");
    }
}

#[test]
fn the_seeds_read_back_and_pass_the_invariants() {
    let c = corpus();
    for s in &c.seeds {
        let (got, peaks) = fuzz::read(&s.bytes, c);
        let (m, chunks) = got.unwrap();
        assert_eq!(m, s.manifest);
        assert_eq!(chunks, s.chunks);
        fuzz::invariants(&m, &chunks, &c.limits).unwrap();
        assert!(peaks.chunk < fuzz::chunk_bound());
    }
    // The judge itself: a refusal that was not wanted is a failure.
    let case = fuzz::Case { what: "none".into(), seed: 0, bytes: c.seeds[0].bytes.clone(), want: Want::Refuse(&[]) };
    let (got, peaks) = fuzz::read(&case.bytes, c);
    assert!(fuzz::judge(c, &case, &got, peaks).is_some());
}

/// Each bomb is refused as too large, and reading it holds at most a chunk's worth of heap.
#[test]
fn zstd_bombs_are_refused_within_bounded_memory() {
    let c = corpus();
    let s = &c.seeds[0];
    let f = *s.frames.iter().find(|f| f.tag == b'C').unwrap();
    let hash = &s.bytes[f.at + 5..f.at + 5 + 32];
    for (name, z) in &c.bombs {
        let mut v = s.bytes[..f.at].to_vec();
        v.push(b'C');
        v.extend_from_slice(&((32 + z.len()) as u32).to_be_bytes());
        v.extend_from_slice(hash);
        v.extend_from_slice(z);
        v.extend_from_slice(&s.bytes[f.at + 5 + f.len..]);
        let (got, peaks) = fuzz::read(&v, c);
        assert_eq!(got.err().map(|e| e.code()), Some("bundle_chunk_too_large"), "{name}");
        assert!(peaks.chunk < 2 * vdc_bundle::MAX_COMPRESSED, "{name}: {} bytes", peaks.chunk);
    }
}

fn corpus() -> &'static Corpus {
    static C: std::sync::OnceLock<Corpus> = std::sync::OnceLock::new();
    C.get_or_init(Corpus::new)
}

/// The code of reading the full seed with its manifest changed by `f` (re-signed).
fn resigned_code(f: impl FnOnce(&mut vdc_bundle::Manifest)) -> &'static str {
    let c = corpus();
    let s = &c.seeds[0];
    let mut m = s.manifest.clone();
    f(&mut m);
    let bytes = fuzz::resigned(s, &serde_json::to_vec(&m).unwrap(), &c.key);
    match fuzz::read(&bytes, c).0 {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

/// Regressions: what the reader accepted before the fuzzer and now refuses.
#[test]
fn names_with_bidi_or_invisible_characters_are_refused_as_the_api_refuses_them() {
    for bad in [
        "\u{202E}gnp.exe",
        "zero\u{200B}width",
        "nb\u{A0}sp",
        "bom\u{FEFF}",
        "iso\u{2066}late",
        "a\u{034F}b",
        "private\u{E000}",
        "filler\u{3164}",
    ] {
        assert_eq!(resigned_code(|m| m.model.networks[0].name = bad.into()), "bundle_invalid_name", "{bad:?}");
    }
    assert_eq!(resigned_code(|m| m.model.instances[0].name = "café ☕".into()), "ok");
    // A description, as the API takes it.
    assert_eq!(
        resigned_code(|m| m.model.security_groups[0].description = "a\u{202E}b".into()),
        "bundle_invalid_manifest"
    );
    assert_eq!(resigned_code(|m| m.model.security_groups[0].description = "❤️ ok".into()), "ok");
}

/// Raw volume data larger than its volume: refused at the plan, not failed at the end of
/// the import (red team, 2026-12-06).
#[test]
fn raw_volume_data_fits_its_volume() {
    assert_eq!(resigned_code(|m| m.model.volumes[0].size_mib = 0), "bundle_invalid_manifest");
    assert_eq!(resigned_code(|m| m.model.volumes[0].size_mib = 1), "ok");
}

#[test]
fn kernel_references_cannot_chain_or_cycle() {
    assert_eq!(resigned_code(|m| m.model.images[0].kernel_id = Some("img-disk".into())), "bundle_invalid_manifest");
    assert_eq!(
        resigned_code(|m| {
            m.model.images[1].kernel_id = Some("img-pub".into());
            m.model.images[2].kernel_id = Some("img-disk".into());
        }),
        "bundle_invalid_manifest"
    );
    assert_eq!(
        resigned_code(|m| m.model.images[0].format = vdc_schema::state::ImageFormat::Raw),
        "bundle_invalid_manifest"
    );
}

#[test]
fn hostnames_times_and_plain_fields_are_checked() {
    assert_eq!(resigned_code(|m| m.model.instances[0].hostname = "a b".into()), "bundle_invalid_name");
    assert_eq!(resigned_code(|m| m.model.instances[0].hostname = "-x".into()), "bundle_invalid_name");
    assert_eq!(resigned_code(|m| m.source.exported_at = "now".into()), "bundle_invalid_manifest");
    assert_eq!(resigned_code(|m| m.source.exported_at = "2026-12-01T03:00:00+02:00".into()), "ok");
    assert_eq!(resigned_code(|m| m.source.vdc_id = "a\u{202E}b".into()), "bundle_invalid_manifest");
    assert_eq!(resigned_code(|m| m.model.images[0].os = Some("x\u{202E}".into())), "bundle_invalid_manifest");
    assert_eq!(
        resigned_code(|m| m.model.instances[0].interfaces[0].ip = "1".repeat(1 << 16)),
        "bundle_invalid_manifest"
    );
    assert_eq!(
        resigned_code(|m| m.model.instances[0].interfaces[0].mac = "52:54:00:00:00:01 x".into()),
        "bundle_invalid_manifest"
    );
    assert_eq!(
        resigned_code(|m| m.model.security_groups[0].rules[0].cidr = Some("0.0.0.0/0 or 1=1".into())),
        "bundle_invalid_manifest"
    );
}
