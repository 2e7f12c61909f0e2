//! `cargo xtask fuzz [target] [seconds]`: runs the cargo-fuzz targets in
//! `fuzz/` on the stable toolchain.
//!
//! cargo-fuzz passes nightly-only flags to rustc (`-Z` sanitizer coverage),
//! so this sets `RUSTC_BOOTSTRAP=1`. It installs cargo-fuzz from crates.io
//! when it is missing. Each target starts from the checked-in seeds in
//! `fuzz/seeds/<target>` plus the corpus kept in `fuzz/corpus/<target>`; a
//! crash leaves its input in `fuzz/artifacts/<target>/` and fails the run.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, root};

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[&str] = &["policy", "xml_patch", "xml_parse", "spool_recover"];

const DEFAULT_SECONDS: u64 = 60;

fn ensure_cargo_fuzz() -> Result<()> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; running `cargo install cargo-fuzz --locked`");
    crate::setup::cmd_ok(cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// What one target's run did.
struct Outcome {
    target: String,
    seconds: u64,
    execs: Option<u64>,
    crashed: bool,
}

/// `cargo xtask fuzz [target] [seconds]`.
pub fn run(args: &[&str]) -> Result<()> {
    let (targets, seconds): (Vec<&str>, u64) = match args {
        [] => (TARGETS.to_vec(), DEFAULT_SECONDS),
        [t] if TARGETS.contains(t) => (vec![*t], DEFAULT_SECONDS),
        [s] if s.parse::<u64>().is_ok() => (TARGETS.to_vec(), s.parse()?),
        [t, s] if TARGETS.contains(t) || *t == "all" => {
            let secs = s
                .parse()
                .with_context(|| format!("seconds `{s}`: allowed a whole number"))?;
            let ts = if *t == "all" {
                TARGETS.to_vec()
            } else {
                vec![*t]
            };
            (ts, secs)
        }
        _ => bail!(
            "usage: cargo xtask fuzz [target|all] [seconds]\ntargets: {}",
            TARGETS.join(", ")
        ),
    };
    ensure_cargo_fuzz()?;
    let fuzz = root().join("fuzz");
    let mut outcomes = Vec::new();
    for t in targets {
        outcomes.push(run_one(&fuzz, t, seconds)?);
    }
    println!("\ntarget          seconds   executions   result");
    for o in &outcomes {
        println!(
            "{:<15} {:>7}   {:>10}   {}",
            o.target,
            o.seconds,
            o.execs.map_or("?".to_owned(), |n| n.to_string()),
            if o.crashed {
                "CRASH (see fuzz/artifacts)"
            } else {
                "ok"
            }
        );
    }
    if outcomes.iter().any(|o| o.crashed) {
        bail!("a fuzz target found a crash");
    }
    Ok(())
}

/// libFuzzer's `-dict=` for targets that have a dictionary of tokens
/// (`fuzz/dicts/xml.dict` for the XML targets), so that it builds
/// documents that get past the parser's first checks.
fn dict(fuzz: &Path, target: &str) -> Option<String> {
    let name = if target.starts_with("xml") {
        "xml"
    } else {
        target
    };
    let path = fuzz.join("dicts").join(format!("{name}.dict"));
    path.is_file().then(|| format!("-dict={}", path.display()))
}

fn run_one(fuzz: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let seeds = fuzz.join("seeds").join(target);
    if let Ok(listing) = std::fs::read_dir(&seeds) {
        for entry in listing.flatten() {
            let to = corpus.join(entry.file_name());
            if !to.exists() {
                std::fs::copy(entry.path(), &to)
                    .with_context(|| format!("copy seed {}", entry.path().display()))?;
            }
        }
    }
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let started = Instant::now();
    let out = cargo()
        .current_dir(fuzz)
        .env("RUSTC_BOOTSTRAP", "1")
        // Our code forbids `unsafe`, so AddressSanitizer would find nothing
        // that a panic does not show, at half the speed.
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .arg(&corpus)
        .arg("--")
        .args(dict(fuzz, target))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run cargo fuzz on {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let log_path = fuzz.join("artifacts").join(format!("{target}.log"));
    if let Some(dir) = log_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&log_path, log.as_bytes());
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok());
    let crashed = !out.status.success();
    if crashed {
        // Show the end of the log: the panic and where the input went.
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
    Ok(Outcome {
        target: target.to_owned(),
        seconds: started.elapsed().as_secs(),
        execs,
        crashed,
    })
}
