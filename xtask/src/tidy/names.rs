//! Names: the command's, the one per type, and the retired ones.

use std::collections::BTreeMap;
use std::path::Path;

use super::metadata::Package;
use super::source::{code_only, has_word};
use super::{Violation, violation};

/// The command: its crate, binary, Debian package and systemd unit.
pub const COMMAND: &str = "wdguard";

/// Names our command must not take, each with the words a line that names
/// it must also say (a doc explaining why the name is taken).
pub const TAKEN: &[(&str, &str)] = &[("wdctl", "util-linux")];

/// Types of which the workspace has exactly one: a second type of the same
/// name means two owners of one piece of state.
pub const ONE_TYPE: &[&str] = &["DestinationStatus"];

/// Retired designs: no identifier starting with one of these may come back
/// (the CHANGELOG keeps the history).
pub const RETIRED: &[&str] = &["Fanout"];

/// The files that hold these lists, and so name what they forbid.
const SELF: &str = "xtask/src/tidy";

/// The command is `wdguard` everywhere cargo and cargo-deb see it.
pub fn check_command(root: &Path, packages: &BTreeMap<String, Package>, out: &mut Vec<Violation>) {
    let Some(p) = packages.get(COMMAND) else {
        out.push(violation(
            &format!("crates/{COMMAND}/Cargo.toml"),
            format!("the workspace has no `{COMMAND}` crate (the command)"),
        ));
        return;
    };
    if !p.bins.contains(COMMAND) {
        out.push(violation(
            &p.path,
            format!("`{COMMAND}` has no binary named `{COMMAND}`"),
        ));
    }
    for (what, got) in [
        ("[package.metadata.deb] name", &p.deb_name),
        (
            "[package.metadata.deb] systemd-units.unit-name",
            &p.deb_unit,
        ),
    ] {
        if got.as_deref() != Some(COMMAND) {
            out.push(violation(
                &p.path,
                format!(
                    "{what} is {}, not `{COMMAND}`",
                    got.as_deref().map_or("unset".into(), |g| format!("`{g}`"))
                ),
            ));
        }
    }
    let unit = format!("{}/debian/{COMMAND}.service", p.dir);
    if !root.join(&unit).is_file() {
        out.push(violation(&unit, "missing: the systemd unit of the command"));
    }
}

/// Per-file name rules: a taken name only where a doc explains whose it
/// is; no retired identifier.
pub fn check_text(rel: &str, text: &str, out: &mut Vec<Violation>) {
    if rel.starts_with(SELF) {
        return;
    }
    for (n, line) in text.lines().enumerate() {
        let lower = line.to_lowercase();
        for (name, owner) in TAKEN {
            if lower.contains(name) && !lower.contains(owner) {
                out.push(violation(
                    &format!("{rel}:{}", n + 1),
                    format!(
                        "`{name}` is {owner}'s tool; the command is `{COMMAND}` (name `{name}` only to explain that {owner} owns it)"
                    ),
                ));
            }
        }
    }
    let prose = rel.ends_with(".md") || rel.ends_with(".toml");
    if !(rel.ends_with(".rs") || prose) || rel == "CHANGELOG.md" {
        return;
    }
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for old in RETIRED {
        let lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| {
                line.match_indices(old)
                    .any(|(i, _)| !line[..i].chars().next_back().is_some_and(ident))
            })
            .map(|(n, _)| n + 1)
            .collect();
        if let [first, rest @ ..] = lines.as_slice() {
            let more = if rest.is_empty() {
                String::new()
            } else {
                format!(" (and {} more line(s))", rest.len())
            };
            out.push(violation(
                &format!("{rel}:{first}"),
                format!("`{old}` is a retired design{more}; use the one that replaced it"),
            ));
        }
    }
}

/// Where each of [`ONE_TYPE`] is defined, across the Rust files.
pub fn type_definitions(rel: &str, text: &str, defs: &mut BTreeMap<&'static str, Vec<String>>) {
    if rel.starts_with(SELF) {
        return;
    }
    let code = code_only(text);
    for name in ONE_TYPE {
        if !has_word(&code, name) {
            continue;
        }
        for (n, line) in code.lines().enumerate() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            let defines = words.windows(2).any(|w| {
                matches!(w[0], "struct" | "enum" | "type" | "trait" | "union") && w[1] == *name
            });
            if defines {
                defs.entry(name)
                    .or_default()
                    .push(format!("{rel}:{}", n + 1));
            }
        }
    }
}

/// Exactly one definition of each of [`ONE_TYPE`].
pub fn check_one_type(defs: &BTreeMap<&'static str, Vec<String>>, out: &mut Vec<Violation>) {
    for name in ONE_TYPE {
        match defs.get(name).map(Vec::as_slice).unwrap_or_default() {
            [_] => {}
            [] => out.push(violation(
                "crates",
                format!("no type named `{name}`; the workspace has exactly one"),
            )),
            [first, rest @ ..] => out.push(violation(
                first,
                format!(
                    "`{name}` is defined again at {}; the workspace has exactly one type of that name",
                    rest.join(", ")
                ),
            )),
        }
    }
}
