//! The bundle reader's fuzzer, for millions of cases:
//!
//! ```text
//! cargo run --release -p vdc-bundle --example fuzz -- --cases 1000000 [--seed N] [--case I]
//! ```
//!
//! Prints cases per second and how many cases ended with each code; exits 1 with the
//! seed, the case and its mutation at the first panic, unexpected acceptance, wrong code
//! or heap peak over its bound (`--case I` runs that one case again). See
//! `tests/support/fuzz.rs`.

#[path = "../tests/support/fuzz.rs"]
mod fuzz;

use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let mut cases = 1_000_000u64;
    let mut seed = 1u64;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| usage());
        match a.as_str() {
            "--cases" => cases = num(),
            "--seed" => seed = num(),
            "--case" => only = Some(num()),
            _ => usage(),
        }
    }
    // Panics are caught and reported with their case; the default hook would print each.
    std::panic::set_hook(Box::new(|_| {}));
    let c = fuzz::Corpus::new();
    let range = match only {
        Some(i) => i..i + 1,
        None => 0..cases,
    };
    let t = Instant::now();
    let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut n = 0u64;
    let mut peaks = fuzz::Peaks::default();
    for i in range {
        let (case, res, p) = fuzz::run_case(&c, seed, i);
        peaks.open = peaks.open.max(p.open);
        peaks.chunk = peaks.chunk.max(p.chunk);
        match res {
            Ok(code) => *codes.entry(code).or_default() += 1,
            Err(why) => {
                eprintln!("{}", fuzz::report(seed, i, &case, &why));
                std::process::exit(1);
            }
        }
        n += 1;
        if only.is_some() {
            println!("case {i}: {} → {:?}", case.what, codes);
        }
        if n.is_multiple_of(100_000) {
            eprintln!("{n} cases, {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{n} cases (seed {seed}) in {secs:.1} s: {:.0} cases/s, no panic, no unexpected acceptance",
        n as f64 / secs
    );
    for (code, k) in &codes {
        println!("  {code:<28} {k:>9}");
    }
    println!(
        "reader heap peak: {} KiB opening (bound {} KiB), {} KiB per chunk (bound {} KiB)",
        peaks.open >> 10,
        fuzz::open_bound(&c.limits) >> 10,
        peaks.chunk >> 10,
        fuzz::chunk_bound() >> 10
    );
    let hwm = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
    });
    if let Some(kb) = hwm {
        println!(
            "peak resident memory of the process (with the corpus' 64 MiB bomb inputs): {} MiB",
            kb.parse::<u64>().unwrap_or(0) / 1024
        );
    }
}

fn usage() -> ! {
    eprintln!("usage: fuzz [--cases N] [--seed N] [--case I]");
    std::process::exit(2)
}
