//! The workspace's shape: the top-level layout, where each package lives,
//! which packages are published, and that a published crate reaches no file
//! outside itself.

use std::collections::BTreeMap;
use std::path::Path;

use super::metadata::Package;
use super::{Violation, violation};

/// The specified top level, beside the virtual `Cargo.toml`.
pub const TOP_DIRS: &[&str] = &["crates", "xtask", "tests", "docs"];

/// Other top-level directories the layout tolerates: cargo's output, and
/// the cargo-fuzz project (outside the workspace, by cargo-fuzz's own
/// convention).
const ALSO_ALLOWED: &[&str] = &["target", "fuzz"];

/// The end-to-end crate, the one package at `tests/`.
pub const E2E: &str = "wd-e2e";

/// The packages that are never published: the command (a Debian package),
/// the end-to-end tests and the automation.
pub const UNPUBLISHED: &[&str] = &[super::names::COMMAND, E2E, "xtask"];

const LAYOUT: &str = "the layout is Cargo.toml (virtual), crates/<name>/ for every library and the command, xtask/, tests/ (wd-e2e) and docs/";

/// The top level and where each package lives.
pub fn check_layout(root: &Path, packages: &BTreeMap<String, Package>, out: &mut Vec<Violation>) {
    for p in packages.values().filter(|p| p.dir.is_empty()) {
        out.push(violation(
            "Cargo.toml",
            format!(
                "the root manifest is the package `{}`; keep it a virtual manifest ([workspace] only)",
                p.name
            ),
        ));
    }
    for dir in TOP_DIRS {
        if !root.join(dir).is_dir() {
            out.push(violation(dir, format!("missing; {LAYOUT}")));
        }
    }
    let mut extra: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| !TOP_DIRS.contains(&n.as_str()) && !ALSO_ALLOWED.contains(&n.as_str()))
        .collect();
    extra.sort();
    for dir in extra {
        out.push(violation(
            &dir,
            format!("a top-level directory outside the layout; {LAYOUT}"),
        ));
    }
    for p in packages.values().filter(|p| !p.dir.is_empty()) {
        let wanted = match p.dir.as_str() {
            "xtask" => "xtask".to_owned(),
            "tests" => E2E.to_owned(),
            _ => p.dir.strip_prefix("crates/").unwrap_or("").to_owned(),
        };
        if p.name != wanted {
            out.push(violation(
                &p.path,
                format!(
                    "`{}` lives at `{}/`, which should hold `{wanted}`; {LAYOUT}",
                    p.name, p.dir
                ),
            ));
        }
    }
    for (name, dir) in [(E2E, "tests"), ("xtask", "xtask")] {
        if !packages.contains_key(name) {
            out.push(violation(
                &format!("{dir}/Cargo.toml"),
                format!("the workspace has no `{name}` at {dir}/; {LAYOUT}"),
            ));
        }
    }
}

/// Library crates are publishable; the command, wd-e2e and xtask are not.
pub fn check_publish(packages: &BTreeMap<String, Package>, out: &mut Vec<Violation>) {
    for p in packages.values() {
        let want = !UNPUBLISHED.contains(&p.name.as_str());
        if p.publishable != want {
            let what = if want {
                "is a library crate, so it must be publishable: drop `publish = false`"
            } else {
                "must not be published: say `publish = false`"
            };
            out.push(violation(&p.path, format!("`{}` {what}", p.name)));
        }
    }
}

/// A publishable crate's sources reach no file outside the crate: a
/// packaged test, bench or example that reads `../../docs/x.md` fails
/// wherever the crate is unpacked. Checked: every `include_str!` /
/// `include_bytes!` path, and in `tests/`, `benches/` and `examples/` every
/// string literal with a `..` component (relative to the file or, when it
/// starts with `/`, to `CARGO_MANIFEST_DIR`).
pub fn check_package_paths(
    packages: &BTreeMap<String, Package>,
    files: &[(String, String)],
    out: &mut Vec<Violation>,
) {
    for p in packages
        .values()
        .filter(|p| p.publishable && !p.dir.is_empty())
    {
        let prefix = format!("{}/", p.dir);
        for (rel, text) in files {
            let Some(inner) = rel.strip_prefix(&prefix) else {
                continue;
            };
            if !inner.ends_with(".rs") {
                continue;
            }
            // The file's directory, in components relative to the crate.
            let file_dir: Vec<&str> = inner
                .rsplit_once('/')
                .map(|(dir, _)| dir.split('/').collect())
                .unwrap_or_default();
            let dev_target = matches!(file_dir.first(), Some(&("tests" | "benches" | "examples")));
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                let include = line.contains("include_str!") || line.contains("include_bytes!");
                for lit in quoted(line).filter(|l| l.split('/').any(|c| c == "..")) {
                    let escapes = if include {
                        escapes(&file_dir, lit)
                    } else if !dev_target {
                        continue;
                    } else if let Some(from_root) = lit.strip_prefix('/') {
                        escapes(&[], from_root)
                    } else {
                        escapes(&file_dir, lit) && escapes(&[], lit)
                    };
                    if escapes {
                        out.push(violation(
                            &format!("{rel}:{}", n + 1),
                            format!(
                                "`{lit}` is outside `{}`, so the packaged crate cannot reach it; move the file into the crate or the test into tests/ (wd-e2e)",
                                p.dir
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// The contents of the `"…"` literals on a line (escapes are not undone;
/// enough for paths).
fn quoted(line: &str) -> impl Iterator<Item = &str> {
    line.split('"').skip(1).step_by(2)
}

/// Whether `rel`, taken from the directory `base` (components below the
/// crate root), leaves the crate.
fn escapes(base: &[&str], rel: &str) -> bool {
    let mut depth = base.len();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}
