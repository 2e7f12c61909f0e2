//! `cargo xtask tidy`: the architecture's rules, checked.
//!
//! Like rust-analyzer's `xtask/src/tidy.rs`, this turns the invariants that
//! `docs/ARCHITECTURE.md` states into a check that fails, so they do not
//! drift. Standard library only. It fails when:
//!
//! - a crate depends on a workspace crate that the allowed-edges table in
//!   `docs/ARCHITECTURE.md` does not list for it (normal and build
//!   dependencies in the "may depend on" column; dev-dependencies in either
//!   column; a dev-dependency on itself, to turn on features, is fine), or a
//!   crate is missing from that table;
//! - `unsafe` appears (as code, not in a comment or a string) outside
//!   `crates/wd-events/src/ffi.rs`;
//! - a Rust source file does not open with a `//!` comment;
//! - the README's crate map disagrees with the manifests: a crate missing or
//!   extra, or a crate's listed `wd-*` dependencies not exactly its normal
//!   ones;
//! - a file under `crates/*/src` is longer than [`MAX_LINES`] lines (move
//!   tests into a `tests.rs` module file).
//!
//! The workspace crates are `crates/*` and `xtask`. Rust sources are every
//! `.rs` file under `crates/`, `xtask/` and `fuzz/`, outside `target/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The longest a file under `crates/*/src` may be.
pub const MAX_LINES: usize = 800;

/// The one file allowed to contain `unsafe`.
const UNSAFE_ALLOWED: &str = "crates/wd-events/src/ffi.rs";

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
    let crates = crates(root, &mut out);
    check_edges(root, &crates, &mut out);
    check_readme(root, &crates, &mut out);
    for file in rust_files(root) {
        let rel = relative(root, &file);
        let Ok(text) = std::fs::read_to_string(&file) else {
            out.push(violation(&rel, "cannot be read as UTF-8"));
            continue;
        };
        check_source(&rel, &text, &mut out);
    }
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

/// One workspace crate's manifest, reduced to what tidy checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's path, relative to the root.
    pub path: String,
    /// `[package] name`.
    pub name: String,
    /// Normal and build dependencies (all names, not only ours).
    pub deps: BTreeSet<String>,
    /// Dev-dependencies.
    pub dev_deps: BTreeSet<String>,
}

/// The workspace crates: `crates/*/Cargo.toml`, `tests/Cargo.toml` and `xtask/Cargo.toml`, by
/// package name.
fn crates(root: &Path, out: &mut Vec<Violation>) -> BTreeMap<String, Manifest> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().join("Cargo.toml"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    for top in ["tests", "xtask"] {
        let manifest = root.join(top).join("Cargo.toml");
        if manifest.is_file() {
            paths.push(manifest);
        }
    }
    paths.sort();
    let mut crates = BTreeMap::new();
    for path in paths {
        let rel = relative(root, &path);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut m = parse_manifest(&text);
                m.path = rel.clone();
                if m.name.is_empty() {
                    out.push(violation(&rel, "no `[package] name`"));
                } else {
                    crates.insert(m.name.clone(), m);
                }
            }
            Err(e) => out.push(violation(&rel, format!("cannot be read: {e}"))),
        }
    }
    crates
}

/// Reads the package name and dependency names of a `Cargo.toml`. A small
/// line-based reader, enough for the forms this workspace uses:
/// `name.workspace = true`, `name = "1"`, `name = { … }` (on one line or
/// more) and `[dependencies.name]`, also under `[target.….dependencies]`.
pub fn parse_manifest(text: &str) -> Manifest {
    let mut m = Manifest::default();
    let mut section = String::new();
    let mut depth = 0i32; // open brackets and braces of a value spanning lines
    for raw in text.lines() {
        let line = strip_toml_comment(raw).trim().to_owned();
        if depth == 0 && line.starts_with('[') {
            section = line
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_owned();
            if let Some((kind, name)) = dependency_section(&section) {
                insert(&mut m, kind, name);
            }
            continue;
        }
        let at_top = depth == 0;
        depth += nesting(&line);
        if !at_top || line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        if section == "package" && key == "name" {
            m.name = value.trim().trim_matches('"').to_owned();
        } else if let Some(kind) = dependency_kind(&section) {
            let name = key
                .split('.')
                .next()
                .unwrap_or(key)
                .trim()
                .trim_matches('"');
            insert(&mut m, kind, name);
        }
    }
    m
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Dev,
}

fn insert(m: &mut Manifest, kind: Kind, name: &str) {
    let set = match kind {
        Kind::Normal => &mut m.deps,
        Kind::Dev => &mut m.dev_deps,
    };
    set.insert(name.to_owned());
}

/// The kind of a `[…dependencies]` section (with or without a `target.…`
/// prefix).
fn dependency_kind(section: &str) -> Option<Kind> {
    let last = section.rsplit('.').next().unwrap_or(section);
    match last {
        "dependencies" | "build-dependencies" => Some(Kind::Normal),
        "dev-dependencies" => Some(Kind::Dev),
        _ => None,
    }
}

/// `[dependencies.name]` and the like: the kind and the name.
fn dependency_section(section: &str) -> Option<(Kind, &str)> {
    let (table, name) = section.rsplit_once('.')?;
    Some((dependency_kind(table)?, name.trim_matches('"')))
}

fn strip_toml_comment(line: &str) -> &str {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Net opening brackets and braces on a line, outside strings.
fn nesting(line: &str) -> i32 {
    let mut in_str = false;
    let mut n = 0;
    for c in line.chars() {
        match c {
            '"' => in_str = !in_str,
            '[' | '{' if !in_str => n += 1,
            ']' | '}' if !in_str => n -= 1,
            _ => {}
        }
    }
    n
}

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

fn check_edges(root: &Path, crates: &BTreeMap<String, Manifest>, out: &mut Vec<Violation>) {
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

fn check_readme(root: &Path, crates: &BTreeMap<String, Manifest>, out: &mut Vec<Violation>) {
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

/// Every `.rs` file under `crates/`, `tests/`, `xtask/` and `fuzz/`, outside
/// `target/` and hidden directories, sorted.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for top in ["crates", "tests", "xtask", "fuzz"] {
        walk(&root.join(top), &mut files);
    }
    files.sort();
    files
}

/// The per-file rules: `//!` opening, no `unsafe`, length.
fn check_source(rel: &str, text: &str, out: &mut Vec<Violation>) {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    if !first.is_some_and(|l| l.starts_with("//!")) {
        out.push(violation(
            rel,
            "does not open with a `//!` comment saying what the file is for",
        ));
    }
    if rel != UNSAFE_ALLOWED {
        let code = code_only(text);
        for (n, line) in code.lines().enumerate() {
            if has_word(line, "unsafe") {
                out.push(violation(
                    &format!("{rel}:{}", n + 1),
                    format!("`unsafe` outside {UNSAFE_ALLOWED}"),
                ));
            }
        }
    }
    let in_src = rel.starts_with("crates/") && rel.split('/').nth(2) == Some("src");
    let lines = text.lines().count();
    if in_src && lines > MAX_LINES {
        out.push(violation(
            rel,
            format!(
                "{lines} lines, more than {MAX_LINES}; split it (tests can move into a `tests.rs` module file)"
            ),
        ));
    }
}

fn has_word(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// Rust source with comments and the insides of string and character
/// literals blanked out (newlines kept, so line numbers hold). Lifetimes
/// (`'a`) stay code.
pub fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        // Line comment.
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        // Block comment, nested.
        if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br"…", cr"…".
        let prev_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if !prev_ident && matches!(c[i], 'r' | 'b' | 'c') {
            let mut j = i;
            if c[j] != 'r' && c.get(j + 1) == Some(&'r') {
                j += 1;
            }
            if c[j] == 'r' {
                let mut k = j + 1;
                let mut hashes = 0;
                while c.get(k) == Some(&'#') {
                    hashes += 1;
                    k += 1;
                }
                if c.get(k) == Some(&'"') {
                    for &ch in &c[i..=k] {
                        out.push(ch);
                    }
                    i = k + 1;
                    while i < c.len() {
                        if c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#')) {
                            break;
                        }
                        out.push(blank(c[i]));
                        i += 1;
                    }
                    // The closing quote and hashes, if any.
                    for _ in 0..=hashes {
                        if i < c.len() {
                            out.push(c[i]);
                            i += 1;
                        }
                    }
                    continue;
                }
            }
        }
        // Ordinary strings (and b"…", c"…": the prefix is kept as code).
        if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(' ');
                    out.push(blank(c[i + 1]));
                    i += 2;
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
            continue;
        }
        // Character literals; a lifetime or label stays.
        if c[i] == '\'' {
            let end = if next == Some('\\') {
                // The escaped character is at i + 2; the quote comes after.
                (i + 3..c.len().min(i + 13)).find(|&k| c[k] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.push('\'');
                for _ in i + 1..end {
                    out.push(' ');
                }
                out.push('\'');
                i = end + 1;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
