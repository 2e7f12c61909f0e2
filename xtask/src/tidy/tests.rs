//! Tidy against fixture trees: a clean one passes, and each kind of
//! violation, planted in a copy, is caught and named.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::source::{code_only, has_word};
use super::*;

/// A throwaway workspace tree under the system temp dir, removed on drop.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    /// A small tidy workspace in the specified layout: `wd-low` (no deps;
    /// the one `DestinationStatus`), `wd-high` (on `wd-low`, tests also on
    /// `wd-kit`), `wd-kit`, `wd-events`, the command `wdguard`, `wd-e2e` at
    /// `tests/` and `xtask` (on `wd-kit`).
    fn clean() -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "wd-tidy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let f = Fixture { root };
        f.write(
            "Cargo.toml",
            "[workspace]\nmembers = [\"crates/*\", \"tests\", \"xtask\"]\n\n\
             [workspace.dependencies]\n\
             wd-low = { path = \"crates/wd-low\", version = \"0.1.0\" }\n\
             wd-kit = { path = \"crates/wd-kit\", version = \"0.1.0\" }\n\
             wd-high = { path = \"crates/wd-high\", version = \"0.1.0\" }\n\
             serde = \"1\"\n",
        );
        f.write(
            "crates/wd-low/Cargo.toml",
            "[package]\nname = \"wd-low\"\nversion = \"0.1.0\"\n\n[dependencies]\nserde = { workspace = true, features = [\n  \"derive\",\n] }\n",
        );
        f.write(
            "crates/wd-low/src/lib.rs",
            "//! The bottom.\n#![forbid(unsafe_code)]\n\n/// Says `unsafe` in a doc comment.\npub fn f() -> &'static str {\n    // unsafe in a comment\n    let _c = '\\'';\n    \"unsafe { in a string }\"\n}\n\n/// The one status type.\npub struct DestinationStatus;\n",
        );
        f.write(
            "crates/wd-high/Cargo.toml",
            "[package]\nname = \"wd-high\" # the top\nversion = \"0.1.0\"\n\n[dependencies]\nwd-low.workspace = true\ntokio = \"1\"\n\n[dev-dependencies]\nwd-kit = { workspace = true }\n",
        );
        f.write(
            "crates/wd-high/src/lib.rs",
            "//! The top.\n\n/* a block /* nested */ comment: unsafe */\npub fn g<'a>(s: &'a str) -> &'a str {\n    let _raw = r#\"unsafe \"quoted\" \"#;\n    s\n}\n",
        );
        f.write("crates/wd-high/tests/it.rs", "//! An integration test.\n");
        f.write(
            "crates/wd-kit/Cargo.toml",
            "[package]\nname = \"wd-kit\"\nversion = \"0.1.0\"\n",
        );
        f.write("crates/wd-kit/src/lib.rs", "//! Test support.\n");
        f.write(
            "crates/wd-events/Cargo.toml",
            "[package]\nname = \"wd-events\"\nversion = \"0.1.0\"\n\n[lib]\npath = \"src/ffi.rs\"\n",
        );
        f.write(
            "crates/wd-events/src/ffi.rs",
            "//! The one unsafe module.\n\n// SAFETY: fixture.\npub unsafe fn raw() {}\n",
        );
        f.write(
            "crates/wdguard/Cargo.toml",
            "[package]\nname = \"wdguard\"\nversion = \"0.1.0\"\npublish = false\n\n\
             [dependencies]\nwd-high.workspace = true\n\n\
             [package.metadata.deb]\nname = \"wdguard\"\n\
             systemd-units = { unit-name = \"wdguard\", enable = false }\n",
        );
        f.write(
            "crates/wdguard/src/main.rs",
            "//! The command.\nfn main() {}\n",
        );
        f.write("crates/wdguard/debian/wdguard.service", "[Service]\n");
        f.write(
            "tests/Cargo.toml",
            "[package]\nname = \"wd-e2e\"\nversion = \"0.1.0\"\npublish = false\n\n\
             [dependencies]\nwd-high.workspace = true\n",
        );
        f.write("tests/src/lib.rs", "//! End-to-end support.\n");
        f.write(
            "xtask/Cargo.toml",
            "[package]\nname = \"xtask\"\nversion = \"0.1.0\"\npublish = false\n\n[dependencies.wd-kit]\nworkspace = true\n",
        );
        f.write("xtask/src/main.rs", "//! Automation.\nfn main() {}\n");
        f.write(
            "docs/ARCHITECTURE.md",
            "# Architecture\n\n## Allowed edges\n\nText.\n\n\
             | crate | may depend on | in tests also on |\n\
             |---|---|---|\n\
             | `wd-low` | — | — |\n\
             | `wd-high` | `wd-low` | `wd-kit` |\n\
             | `wd-kit` | — | — |\n\
             | `wd-events` | — | — |\n\
             | `wdguard` | `wd-high` | — |\n\
             | `wd-e2e` | `wd-high` | — |\n\
             | `xtask` | `wd-kit` | — |\n\n\
             ## Next\n",
        );
        f.write(
            "README.md",
            "# x\n\n## Crate map\n\n\
             | crate | what it is | depends on |\n\
             |---|---|---|\n\
             | `wd-low` | bottom | serde |\n\
             | `wd-high` | top | `wd-low`, tokio |\n\
             | `wd-kit` | support | std only |\n\
             | `wd-events` | ffi | nothing of ours |\n\
             | `wdguard` | the command | `wd-high` |\n\
             | `wd-e2e` | the end-to-end tests | `wd-high` |\n\
             | `xtask` | automation | wd-kit |\n\n\
             More text; util-linux's `wdctl` is another tool.\n",
        );
        f
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let path = self.root.join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{rel} lacks {from:?}");
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    fn path(&self) -> &Path {
        &self.root
    }

    /// The violations, as `path: message` lines.
    fn check(&self) -> Vec<String> {
        check(self.path()).iter().map(ToString::to_string).collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Exactly one violation, at `path`, whose message contains `needle`.
#[track_caller]
fn expect_one(f: &Fixture, path: &str, needle: &str) {
    let got = f.check();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(&format!("{path}: ")) && got[0].contains(needle),
        "{got:#?}"
    );
}

#[test]
fn a_clean_tree_passes() {
    let f = Fixture::clean();
    assert_eq!(f.check(), Vec::<String>::new());
    assert!(run(f.path()).is_ok());
}

#[test]
fn catches_a_dependency_the_table_does_not_allow() {
    let f = Fixture::clean();
    f.edit(
        "crates/wd-low/Cargo.toml",
        "[dependencies]\n",
        "[dependencies]\nwd-high.workspace = true\n",
    );
    // Also a README mismatch, since the map no longer matches.
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.starts_with("crates/wd-low/Cargo.toml: ")
                && v.contains("`wd-low` depends on `wd-high`, which the allowed-edges table")),
        "{got:#?}"
    );
    assert!(run(f.path()).is_err());
}

#[test]
fn catches_a_dev_dependency_the_table_does_not_allow() {
    let f = Fixture::clean();
    f.edit(
        "crates/wd-low/Cargo.toml",
        "[dependencies]\n",
        "[dev-dependencies.wd-kit]\nworkspace = true\n\n[dependencies]\n",
    );
    expect_one(
        &f,
        "crates/wd-low/Cargo.toml",
        "`wd-low` dev-depends on `wd-kit`",
    );
}

#[test]
fn a_test_only_edge_is_not_a_normal_one() {
    let f = Fixture::clean();
    f.edit(
        "crates/wd-high/Cargo.toml",
        "[dev-dependencies]\nwd-kit",
        "[build-dependencies]\nwd-kit",
    );
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.contains("`wd-high` depends on `wd-kit`") && v.contains("allowed: wd-low")),
        "{got:#?}"
    );
}

#[test]
fn catches_a_target_specific_dependency() {
    let f = Fixture::clean();
    f.write(
        "crates/wd-kit/Cargo.toml",
        "[package]\nname = \"wd-kit\"\n\n[target.'cfg(unix)'.dependencies]\nwd-high = { path = \"../wd-high\" }\n",
    );
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.contains("`wd-kit` depends on `wd-high`")),
        "{got:#?}"
    );
}

#[test]
fn a_crate_may_dev_depend_on_itself_for_its_features() {
    let f = Fixture::clean();
    f.edit(
        "crates/wd-high/Cargo.toml",
        "[dev-dependencies]\n",
        "[dev-dependencies]\nwd-high = { path = \".\", features = [\"mock\"] }\n",
    );
    assert_eq!(f.check(), Vec::<String>::new());
}

#[test]
fn catches_a_crate_missing_from_the_table() {
    let f = Fixture::clean();
    f.edit("docs/ARCHITECTURE.md", "| `wd-kit` | — | — |\n", "");
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.starts_with("crates/wd-kit/Cargo.toml: ")
                && v.contains("`wd-kit` is not in the allowed-edges table")),
        "{got:#?}"
    );
}

#[test]
fn catches_a_table_row_for_no_crate() {
    let f = Fixture::clean();
    f.edit(
        "docs/ARCHITECTURE.md",
        "| `xtask` |",
        "| `wd-gone` | `wd-low` | — |\n| `xtask` |",
    );
    expect_one(
        &f,
        "docs/ARCHITECTURE.md",
        "lists `wd-gone`, which is not a workspace crate",
    );
}

#[test]
fn catches_unsafe_outside_the_ffi_module() {
    let f = Fixture::clean();
    f.edit(
        "crates/wd-high/src/lib.rs",
        "    s\n}",
        "    s\n}\n\npub fn h() {\n    unsafe { core::hint::unreachable_unchecked() }\n}",
    );
    expect_one(
        &f,
        "crates/wd-high/src/lib.rs:10",
        "`unsafe` outside crates/wd-events/src/ffi.rs",
    );
}

#[test]
fn catches_unsafe_in_tests_and_xtask_too() {
    let f = Fixture::clean();
    f.write(
        "crates/wd-high/tests/it.rs",
        "//! An integration test.\nunsafe impl Send for X {}\n",
    );
    expect_one(&f, "crates/wd-high/tests/it.rs:2", "`unsafe` outside");
}

#[test]
fn catches_a_missing_opening_comment() {
    let f = Fixture::clean();
    f.write(
        "crates/wd-kit/src/extra.rs",
        "/// Item docs are not enough.\npub fn x() {}\n",
    );
    expect_one(
        &f,
        "crates/wd-kit/src/extra.rs",
        "does not open with a `//!` comment",
    );
    f.write("crates/wd-kit/src/extra.rs", "");
    expect_one(&f, "crates/wd-kit/src/extra.rs", "`//!`");
}

#[test]
fn catches_a_crate_map_that_disagrees_with_the_manifests() {
    let f = Fixture::clean();
    f.edit("README.md", "| `wd-low`, tokio |", "| all of the above |");
    expect_one(
        &f,
        "README.md",
        "crate map says `wd-high` depends on none, but crates/wd-high/Cargo.toml says wd-low",
    );
}

#[test]
fn catches_a_crate_map_naming_a_wrong_crate() {
    let f = Fixture::clean();
    f.edit(
        "README.md",
        "| support | std only |",
        "| support | wd-low |",
    );
    expect_one(&f, "README.md", "`wd-kit` depends on wd-low, but");
}

#[test]
fn catches_a_crate_missing_from_the_map_or_extra() {
    let f = Fixture::clean();
    f.edit("README.md", "| `wd-kit` | support | std only |\n", "");
    expect_one(&f, "README.md", "crate map does not list `wd-kit`");
    f.edit(
        "README.md",
        "| `xtask` |",
        "| `wd-ghost` | gone | — |\n| `xtask` |",
    );
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.contains("crate map lists `wd-ghost`, which is not a workspace crate")),
        "{got:#?}"
    );
}

#[test]
fn catches_a_long_file_anywhere() {
    let f = Fixture::clean();
    let long = format!("//! Long.\n{}", "// line\n".repeat(MAX_LINES));
    for path in [
        "crates/wd-kit/src/long.rs",
        "crates/wd-kit/tests/long.rs",
        "tests/tests/long.rs",
        "xtask/src/long.rs",
    ] {
        f.write(path, &long);
        expect_one(&f, path, "801 lines, more than 800");
        std::fs::remove_file(f.path().join(path)).unwrap();
    }
    f.write("docs/long.md", &"text\n".repeat(MAX_LINES + 1));
    expect_one(&f, "docs/long.md", "801 lines");
    std::fs::remove_file(f.path().join("docs/long.md")).unwrap();
    // A lock file is generated, and build output is not the tree's.
    f.write("Cargo.lock", &"x\n".repeat(MAX_LINES + 1));
    f.write("target/debug/big.rs", &long);
    assert_eq!(f.check(), Vec::<String>::new());
    let just = format!("//! Long.\n{}", "// line\n".repeat(MAX_LINES - 1));
    f.write("xtask/src/long.rs", &just);
    assert_eq!(f.check(), Vec::<String>::new(), "800 lines is fine");
}

#[test]
fn missing_docs_are_violations_not_panics() {
    let f = Fixture::clean();
    std::fs::remove_file(f.path().join("README.md")).unwrap();
    expect_one(&f, "README.md", "missing");
    f.write("README.md", "# no map\n");
    expect_one(&f, "README.md", "no table under `## Crate map`");
}

#[test]
fn a_manifest_cargo_cannot_read_is_a_violation() {
    let f = Fixture::clean();
    f.edit("Cargo.toml", "[workspace]", "[workspace");
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.starts_with("Cargo.toml: cargo metadata failed")),
        "{got:#?}"
    );
}

#[test]
fn code_only_blanks_comments_and_literals() {
    let src =
        "a // unsafe\nb /* x /* y */ unsafe */ c\n\"un\\\"safe\" '\\'' 'x' r##\"a\"#b\"## d<'a>\n";
    let code = code_only(src);
    assert_eq!(code.lines().count(), src.lines().count());
    assert!(!has_word(&code, "unsafe"), "{code}");
    assert!(!code.contains("safe"), "{code}");
    for kept in ["a ", "b ", " c", " d<'a>"] {
        assert!(code.contains(kept), "{kept:?} in {code:?}");
    }
    assert!(has_word("x unsafe {", "unsafe"));
    assert!(!has_word("#![forbid(unsafe_code)]", "unsafe"));
    assert!(!has_word("not_unsafe", "unsafe"));
}

mod layout;
mod names;
