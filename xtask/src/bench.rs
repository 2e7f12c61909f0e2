//! `cargo xtask bench [--no-live]`: runs each part of the bench, then writes
//! `target/bench-report.json` (one entry per figure: name, value, unit,
//! method) and the figures of `docs/performance.md`, keeping that file's
//! hand-written "Method" section, which says how each part measures and how
//! to read it.
//!
//! One module per part, listed in [`PARTS`]: `xml` (1), `pipeline` (2),
//! `isolation` (5), `live` (3 and 4, on real guests; not with `--no-live`)
//! `scale` (6 and 7), `reconnect` (8, live), `trust_store` (9) and
//! `listener` (10). A new part is a module with a `PART` constant (its
//! sections of the doc and its runner) and a line in [`PARTS`].
//!
//! Steps on the system libvirtd run under `flock $WD_BENCH_LOCK` when that
//! variable is set (a machine shared by several developers).

mod criterion;
mod examples;
mod goals;
mod isolation;
mod listener;
mod live;
mod masakari;
mod pipeline;
mod reconnect;
mod report;
mod scale;
mod trust_store;
mod xml;

use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::{root, target_dir};

/// One measured figure.
#[derive(Debug, Clone)]
struct Figure {
    /// The section of `docs/performance.md` it goes to.
    part: u8,
    name: String,
    value: f64,
    unit: String,
    method: String,
}

/// One part of the bench.
pub struct Part {
    /// The sections of `docs/performance.md` its figures go to: number and
    /// title.
    sections: &'static [(u8, &'static str)],
    /// Measures, and pushes the figures to the run.
    run: fn(&mut Run) -> Result<()>,
}

/// Every part, in the order they run.
const PARTS: &[Part] = &[
    xml::PART,
    pipeline::PART,
    isolation::PART,
    live::PART,
    scale::PART,
    reconnect::PART,
    trust_store::PART,
    listener::PART,
];

/// One run of the bench.
pub struct Run {
    /// The figures measured so far.
    figures: Vec<Figure>,
    /// When the run started: criterion output older than this is stale.
    since: SystemTime,
    /// Whether the parts on real guests run (`--no-live` turns them off).
    live: bool,
}

/// `cargo xtask bench [--no-live]`.
pub fn run(args: &[&str]) -> Result<()> {
    let live = match args {
        [] => true,
        ["--no-live"] => false,
        _ => bail!("usage: cargo xtask bench [--no-live]"),
    };
    let started = Instant::now();
    let doc = root().join("docs").join("performance.md");
    // The method section is hand-written: read it first, so a run never
    // loses it.
    let old = std::fs::read_to_string(&doc).unwrap_or_default();
    let method = report::method_section(&old)
        .with_context(|| {
            format!(
                "{} has no `{}` section to keep; restore it from git",
                doc.display(),
                report::METHOD
            )
        })?
        .to_owned();
    let mut run = Run {
        figures: Vec::new(),
        since: SystemTime::now(),
        live,
    };
    // Every part runs even when one fails, and what was measured is
    // written; the first failure is the result.
    let mut result = Ok(());
    for part in PARTS {
        if let Err(e) = (part.run)(&mut run) {
            eprintln!("xtask: bench: {e:#}");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    let figures = run.figures;
    let env = report::environment();
    let report_path = target_dir().join("bench-report.json");
    std::fs::write(&report_path, report::report_json(&figures, &env))
        .with_context(|| format!("write {}", report_path.display()))?;
    std::fs::write(&doc, report::markdown(&figures, &env, live, &method))
        .with_context(|| format!("write {}", doc.display()))?;
    eprintln!(
        "xtask: {} figures in {:.0} s; wrote {} and {}",
        figures.len(),
        started.elapsed().as_secs_f64(),
        report_path.display(),
        doc.display()
    );
    for f in &figures {
        println!(
            "{:<48} {:>14} {}",
            f.name,
            report::fmt_value(f.value),
            f.unit
        );
    }
    result
}

fn push(figures: &mut Vec<Figure>, part: u8, name: &str, value: f64, unit: &str, method: &str) {
    figures.push(Figure {
        part,
        name: name.to_owned(),
        value,
        unit: unit.to_owned(),
        method: method.to_owned(),
    });
}

#[cfg(test)]
mod tests;
