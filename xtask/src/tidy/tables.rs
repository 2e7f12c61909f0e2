//! The two tables that state the crate graph, checked against the
//! manifests: the allowed edges in `docs/ARCHITECTURE.md` and the crate map
//! in `README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::metadata::Package;
use super::{Violation, violation};

/// The names written in backticks in a markdown table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The rows (cells, outer pipes dropped) of the first markdown table after
/// the heading `heading`, header and separator rows skipped.
fn table_after(text: &str, heading: &str) -> Option<Vec<Vec<String>>> {
    let mut lines = text.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in lines.by_ref() {
        let t = line.trim();
        if t.starts_with("## ") || t.starts_with("# ") {
            break;
        }
        if t.starts_with('|') {
            in_table = true;
            let cells: Vec<String> = t
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            rows.push(cells);
        } else if in_table {
            break;
        }
    }
    if !in_table {
        return None;
    }
    // Header and the `|---|` separator.
    Some(rows.into_iter().skip(2).collect())
}

const ARCHITECTURE: &str = "docs/ARCHITECTURE.md";
const EDGES_HEADING: &str = "## Allowed edges";

pub fn check_edges(root: &Path, crates: &BTreeMap<String, Package>, out: &mut Vec<Violation>) {
    let Ok(text) = std::fs::read_to_string(root.join(ARCHITECTURE)) else {
        out.push(violation(ARCHITECTURE, "missing"));
        return;
    };
    let Some(rows) = table_after(&text, EDGES_HEADING) else {
        out.push(violation(
            ARCHITECTURE,
            format!("no table under `{EDGES_HEADING}`"),
        ));
        return;
    };
    // crate -> (may depend on, may also dev-depend on)
    let mut allowed: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for row in rows {
        let Some(name) = row.first().and_then(|c| ticked(c).into_iter().next()) else {
            continue;
        };
        let normal = row.get(1).map(|c| ticked(c)).unwrap_or_default();
        let dev = row.get(2).map(|c| ticked(c)).unwrap_or_default();
        for n in normal.iter().chain(&dev) {
            if !crates.contains_key(n) {
                out.push(violation(
                    ARCHITECTURE,
                    format!(
                        "allowed-edges table: `{name}` lists `{n}`, which is not a workspace crate"
                    ),
                ));
            }
        }
        if !crates.contains_key(&name) {
            out.push(violation(
                ARCHITECTURE,
                format!("allowed-edges table lists `{name}`, which is not a workspace crate"),
            ));
        }
        allowed.insert(
            name,
            (normal.into_iter().collect(), dev.into_iter().collect()),
        );
    }
    for (name, m) in crates {
        let Some((normal, dev)) = allowed.get(name) else {
            out.push(violation(
                &m.path,
                format!(
                    "`{name}` is not in the allowed-edges table of {ARCHITECTURE}; add its row"
                ),
            ));
            continue;
        };
        // A crate may dev-depend on itself, to turn on a feature for its
        // own integration tests.
        let ours = |d: &&String| crates.contains_key(*d) && *d != name;
        for dep in m.deps.iter().filter(ours) {
            if !normal.contains(dep) {
                out.push(violation(
                    &m.path,
                    format!(
                        "`{name}` depends on `{dep}`, which the allowed-edges table of {ARCHITECTURE} does not allow (allowed: {})",
                        list(normal)
                    ),
                ));
            }
        }
        for dep in m.dev_deps.iter().filter(ours) {
            if !normal.contains(dep) && !dev.contains(dep) {
                out.push(violation(
                    &m.path,
                    format!(
                        "`{name}` dev-depends on `{dep}`, which the allowed-edges table of {ARCHITECTURE} does not allow (allowed in tests: {})",
                        list(normal.union(dev))
                    ),
                ));
            }
        }
    }
}

fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

const README: &str = "README.md";
const CRATE_MAP_HEADING: &str = "## Crate map";

pub fn check_readme(root: &Path, crates: &BTreeMap<String, Package>, out: &mut Vec<Violation>) {
    let Ok(text) = std::fs::read_to_string(root.join(README)) else {
        out.push(violation(README, "missing"));
        return;
    };
    let Some(rows) = table_after(&text, CRATE_MAP_HEADING) else {
        out.push(violation(
            README,
            format!("no table under `{CRATE_MAP_HEADING}`"),
        ));
        return;
    };
    let mut listed = BTreeSet::new();
    for row in rows {
        let Some(name) = row.first().and_then(|c| ticked(c).into_iter().next()) else {
            continue;
        };
        let deps_cell = row.last().cloned().unwrap_or_default();
        // The words of the "depends on" cell that name one of our crates (or
        // look like one): third-party names are free text.
        let said: BTreeSet<String> = deps_cell
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|w| w.trim_matches(|c: char| c == '`' || c == '(' || c == ')' || c == ';'))
            .filter(|w| crates.contains_key(*w) || w.starts_with("wd-"))
            .map(str::to_owned)
            .collect();
        let Some(m) = crates.get(&name) else {
            out.push(violation(
                README,
                format!("crate map lists `{name}`, which is not a workspace crate"),
            ));
            continue;
        };
        listed.insert(name.clone());
        let actual: BTreeSet<String> = m
            .deps
            .iter()
            .filter(|d| crates.contains_key(*d))
            .cloned()
            .collect();
        if said != actual {
            out.push(violation(
                README,
                format!(
                    "crate map says `{name}` depends on {}, but {} says {}",
                    list(&said),
                    m.path,
                    list(&actual)
                ),
            ));
        }
    }
    for name in crates.keys().filter(|n| !listed.contains(*n)) {
        out.push(violation(
            README,
            format!("crate map does not list `{name}`"),
        ));
    }
}
