//! `cargo xtask tidy`: the architecture's rules, checked.
//!
//! Like rust-analyzer's `xtask/src/tidy.rs`, this turns the invariants that
//! `docs/ARCHITECTURE.md` states into a check that fails, so they do not
//! drift. Cargo itself reads the manifests (`cargo metadata --no-deps`,
//! [`metadata`]). It fails when:
//!
//! - a crate depends on a workspace crate that the allowed-edges table in
//!   `docs/ARCHITECTURE.md` does not list for it (normal and build
//!   dependencies in the "may depend on" column; dev-dependencies in either
//!   column; a dev-dependency on itself, to turn on features, is fine), or a
//!   crate is missing from that table; or the README's crate map disagrees
//!   with the manifests ([`tables`]);
//! - the layout is not the specified one: a virtual `Cargo.toml`,
//!   `crates/<name>/` for every library crate and the command, `xtask/`,
//!   `tests/` (the end-to-end crate `wd-e2e`) and `docs/`; or a library
//!   crate is not publishable, or the command, `wd-e2e` or `xtask` is; or a
//!   publishable crate's sources point at a file outside the crate
//!   ([`layout`]);
//! - the command is not `wdguard` (crate, binary, Debian package, systemd
//!   unit), a line names util-linux's tool without saying whose it is, a
//!   type that must be unique (`DestinationStatus`) is defined twice, or a
//!   retired design's name (`Fanout`) comes back ([`names`]);
//! - `unsafe` appears (as code, not in a comment or a string) outside
//!   `crates/wd-events/src/ffi.rs`, or a Rust source file does not open
//!   with a `//!` comment ([`source`]);
//! - any file of the tree (Rust, docs, scripts, manifests; lock files
//!   aside) is longer than [`MAX_LINES`] lines.
//!
//! The files checked are every text file under the root outside `target/`,
//! hidden directories and cargo-fuzz's generated ones.

mod layout;
pub mod metadata;
mod names;
mod source;
mod tables;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The longest any file of the tree may be.
pub const MAX_LINES: usize = 800;

/// Generated files, exempt from the length rule.
const GENERATED: &[&str] = &["Cargo.lock"];

/// Directories never walked: build output and cargo-fuzz's generated data.
const SKIP_DIRS: &[&str] = &["target", "fuzz/corpus", "fuzz/artifacts", "fuzz/coverage"];

/// One broken rule: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The file, relative to the workspace root.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// `cargo xtask tidy`: checks the workspace at `root`, prints every
/// violation, and fails if there is one.
pub fn run(root: &Path) -> Result<()> {
    let violations = check(root);
    if violations.is_empty() {
        eprintln!("xtask: tidy: ok");
        return Ok(());
    }
    for v in &violations {
        eprintln!("tidy: {v}");
    }
    bail!("tidy: {} violation(s)", violations.len())
}

/// Every violation in the tree at `root`, sorted.
pub fn check(root: &Path) -> Vec<Violation> {
    let mut out = Vec::new();
    let files = text_files(root, &mut out);
    match metadata::packages(root) {
        Ok(packages) => {
            tables::check_edges(root, &packages, &mut out);
            tables::check_readme(root, &packages, &mut out);
            layout::check_layout(root, &packages, &mut out);
            layout::check_publish(&packages, &mut out);
            layout::check_package_paths(&packages, &files, &mut out);
            names::check_command(root, &packages, &mut out);
        }
        Err(e) => out.push(violation("Cargo.toml", e)),
    }
    let mut defs = BTreeMap::new();
    for (rel, text) in &files {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let lines = text.lines().count();
        if lines > MAX_LINES && !GENERATED.contains(&name) {
            out.push(violation(
                rel,
                format!(
                    "{lines} lines, more than {MAX_LINES}; split it (by concern; tests can move into a `tests.rs` module file)"
                ),
            ));
        }
        if rel.ends_with(".rs") {
            source::check_source(rel, text, &mut out);
            names::type_definitions(rel, text, &mut defs);
        }
        names::check_text(rel, text, &mut out);
    }
    names::check_one_type(&defs, &mut out);
    out.sort();
    out.dedup();
    out
}

fn violation(path: &str, message: impl Into<String>) -> Violation {
    Violation {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Every text file under `root` (path relative to it, and contents), outside
/// [`SKIP_DIRS`] and hidden directories, sorted. A `.rs` file that is not
/// UTF-8 is a violation; other binary files are skipped.
fn text_files(root: &Path, out: &mut Vec<Violation>) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let rel = relative(root, &path);
                let skipped = SKIP_DIRS
                    .iter()
                    .any(|s| rel == *s || (!s.contains('/') && name == *s));
                if !skipped && !name.starts_with('.') {
                    walk(root, &path, files);
                }
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, root, &mut paths);
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = relative(root, &path);
        match std::fs::read(&path).map(String::from_utf8) {
            Ok(Ok(text)) => files.push((rel, text)),
            _ if rel.ends_with(".rs") => out.push(violation(&rel, "cannot be read as UTF-8")),
            _ => {}
        }
    }
    files
}

#[cfg(test)]
mod tests;
