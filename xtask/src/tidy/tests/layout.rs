//! The layout rules on fixture trees: the top level, where packages live,
//! what is published, and packaged files that reach outside their crate.

use super::{Fixture, expect_one};

#[test]
fn the_root_manifest_stays_virtual() {
    let f = Fixture::clean();
    f.edit(
        "Cargo.toml",
        "[workspace]\n",
        "[package]\nname = \"wd-root\"\nversion = \"0.1.0\"\n\n[lib]\npath = \"root.rs\"\n\n[workspace]\n",
    );
    f.write("root.rs", "//! A package at the root.\n");
    let got = f.check();
    assert!(
        got.iter().any(|v| v.starts_with("Cargo.toml: ")
            && v.contains(
                "the root manifest is the package `wd-root`; keep it a virtual manifest"
            )),
        "{got:#?}"
    );
}

#[test]
fn catches_a_missing_or_extra_top_level_directory() {
    let f = Fixture::clean();
    f.write("scripts/run.sh", "#!/bin/sh\n");
    expect_one(&f, "scripts", "a top-level directory outside the layout");
    std::fs::remove_dir_all(f.path().join("scripts")).unwrap();
    // Build output, cargo-fuzz's project and hidden directories are fine.
    f.write("target/x", "");
    f.write("fuzz/README.md", "fuzzing\n");
    f.write(".cargo/config.toml", "");
    assert_eq!(f.check(), Vec::<String>::new());
    std::fs::remove_dir_all(f.path().join("docs")).unwrap();
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.starts_with("docs: missing; the layout is")),
        "{got:#?}"
    );
}

#[test]
fn catches_a_package_in_the_wrong_place() {
    let f = Fixture::clean();
    // A folder named unlike its crate.
    f.edit("crates/wd-kit/Cargo.toml", "\"wd-kit\"", "\"wd-toolkit\"");
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.starts_with("crates/wd-kit/Cargo.toml: ")
                && v.contains(
                    "`wd-toolkit` lives at `crates/wd-kit/`, which should hold `wd-kit`"
                )),
        "{got:#?}"
    );
    // A library at the top level, as a member.
    let f = Fixture::clean();
    f.edit("Cargo.toml", "\"xtask\"]", "\"xtask\", \"lib2\"]");
    f.write(
        "lib2/Cargo.toml",
        "[package]\nname = \"lib2\"\nversion = \"0.1.0\"\n",
    );
    f.write("lib2/src/lib.rs", "//! Misplaced.\n");
    let got = f.check();
    assert!(
        got.iter()
            .any(|v| v.starts_with("lib2/Cargo.toml: ") && v.contains("`lib2` lives at `lib2/`")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|v| v.starts_with("lib2: a top-level directory"))
    );
}

#[test]
fn the_end_to_end_crate_is_at_tests() {
    let f = Fixture::clean();
    f.edit("tests/Cargo.toml", "\"wd-e2e\"", "\"wd-tests\"");
    f.edit("docs/ARCHITECTURE.md", "`wd-e2e`", "`wd-tests`");
    f.edit("README.md", "`wd-e2e`", "`wd-tests`");
    let got = f.check();
    for needle in [
        "tests/Cargo.toml: `wd-tests` lives at `tests/`, which should hold `wd-e2e`",
        "tests/Cargo.toml: the workspace has no `wd-e2e` at tests/",
    ] {
        assert!(got.iter().any(|v| v.starts_with(needle)), "{got:#?}");
    }
}

#[test]
fn libraries_are_publishable_and_nothing_else() {
    let f = Fixture::clean();
    f.edit(
        "crates/wd-kit/Cargo.toml",
        "version = \"0.1.0\"\n",
        "version = \"0.1.0\"\npublish = false\n",
    );
    expect_one(
        &f,
        "crates/wd-kit/Cargo.toml",
        "`wd-kit` is a library crate, so it must be publishable",
    );
    let f = Fixture::clean();
    f.edit("crates/wdguard/Cargo.toml", "publish = false\n", "");
    expect_one(
        &f,
        "crates/wdguard/Cargo.toml",
        "`wdguard` must not be published",
    );
}

#[test]
fn catches_a_packaged_file_that_reaches_outside_its_crate() {
    let f = Fixture::clean();
    // Inside the crate, from src/ or tests/: fine.
    f.write(
        "crates/wd-high/src/data.rs",
        "//! Data.\nconst X: &str = include_str!(\"../tests/fixtures/x.xml\");\nconst P: &str = \"../../etc/passwd\"; // test data, not a file\n",
    );
    f.write(
        "crates/wd-high/tests/it.rs",
        "//! A test.\nconst X: &str = include_str!(\"fixtures/x.xml\");\nconst D: &str = concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/tests/fixtures/x.xml\");\n",
    );
    // An unpublished crate may reach the workspace.
    f.write(
        "crates/wdguard/tests/cli.rs",
        "//! A test.\nconst X: &str = include_str!(\"../../wd-high/tests/fixtures/x.xml\");\n",
    );
    assert_eq!(f.check(), Vec::<String>::new());
    for (file, text, line) in [
        (
            "crates/wd-high/tests/it.rs",
            "//! A test.\nfn doc() {\n    let _ = concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../../docs/x.md\");\n}\n",
            3,
        ),
        (
            "crates/wd-high/benches/b.rs",
            "//! A bench.\nfn out() { let _ = dir.join(\"../../target/x.json\"); }\n",
            2,
        ),
        (
            "crates/wd-high/src/data.rs",
            "//! Data.\nconst X: &str = include_str!(\"../../wd-low/x.xml\");\n",
            2,
        ),
        (
            "crates/wd-high/examples/e.rs",
            "//! An example.\nconst X: &[u8] = include_bytes!(\"../../../README.md\");\n",
            2,
        ),
    ] {
        let f = Fixture::clean();
        f.write(file, text);
        expect_one(
            &f,
            &format!("{file}:{line}"),
            "is outside `crates/wd-high`, so the packaged crate cannot reach it",
        );
    }
}
