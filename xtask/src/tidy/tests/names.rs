//! The name rules on fixture trees: the command's name, one type per name,
//! retired designs.

use super::{Fixture, expect_one};

/// util-linux's tool, spelled so that this file does not trip the rule.
fn taken() -> String {
    format!("wd{}", "ctl")
}

#[test]
fn the_command_is_wdguard_in_every_place() {
    let f = Fixture::clean();
    f.edit(
        "crates/wdguard/Cargo.toml",
        "publish = false\n",
        "publish = false\n\n[[bin]]\nname = \"wd\"\npath = \"src/main.rs\"\n",
    );
    expect_one(
        &f,
        "crates/wdguard/Cargo.toml",
        "`wdguard` has no binary named `wdguard`",
    );
    let f = Fixture::clean();
    f.edit(
        "crates/wdguard/Cargo.toml",
        "name = \"wdguard\"\nsystemd",
        "name = \"wd\"\nsystemd",
    );
    expect_one(
        &f,
        "crates/wdguard/Cargo.toml",
        "[package.metadata.deb] name is `wd`, not `wdguard`",
    );
    let f = Fixture::clean();
    f.edit(
        "crates/wdguard/Cargo.toml",
        "unit-name = \"wdguard\"",
        "unit-name = \"wd\"",
    );
    expect_one(&f, "crates/wdguard/Cargo.toml", "unit-name is `wd`, not");
    let f = Fixture::clean();
    std::fs::remove_file(f.path().join("crates/wdguard/debian/wdguard.service")).unwrap();
    expect_one(&f, "crates/wdguard/debian/wdguard.service", "missing");
}

#[test]
fn the_old_name_only_where_a_doc_says_whose_it_is() {
    let f = Fixture::clean();
    // The fixture's README already names it beside util-linux.
    assert_eq!(f.check(), Vec::<String>::new());
    for (file, text) in [
        (
            "docs/ops.md",
            format!("# Ops\n\nRun `{} status`.\n", taken()),
        ),
        (
            "crates/wdguard/src/main.rs",
            format!(
                "//! The command.\nfn main() {{ eprintln!(\"{}: oops\"); }}\n",
                taken()
            ),
        ),
        (
            "crates/wdguard/debian/postinst",
            format!("#!/bin/sh\n\n{}\n", taken().to_uppercase()),
        ),
    ] {
        let f = Fixture::clean();
        f.write(file, &text);
        let line = text
            .lines()
            .position(|l| l.to_lowercase().contains(&taken()))
            .unwrap()
            + 1;
        expect_one(
            &f,
            &format!("{file}:{line}"),
            "is util-linux's tool; the command is `wdguard`",
        );
    }
}

#[test]
fn exactly_one_destination_status() {
    let f = Fixture::clean();
    f.write(
        "crates/wd-high/src/metrics.rs",
        "//! Metrics.\n// A comment about DestinationStatus is fine, and so is a use.\nuse wd_low::DestinationStatus;\npub enum DestinationStatus { Up }\n",
    );
    expect_one(
        &f,
        "crates/wd-high/src/metrics.rs:4",
        "`DestinationStatus` is defined again at crates/wd-low/src/lib.rs:12",
    );
    let f = Fixture::clean();
    f.edit(
        "crates/wd-low/src/lib.rs",
        "pub struct DestinationStatus;",
        "pub struct Status;",
    );
    expect_one(&f, "crates", "no type named `DestinationStatus`");
}

#[test]
fn no_fanout() {
    let f = Fixture::clean();
    // The changelog keeps the history, and a lower-case word is prose.
    f.write("CHANGELOG.md", "# Changes\n\n- Removed `Fanout`.\n");
    f.write("docs/notes.md", "Events fanout to every destination.\n");
    assert_eq!(f.check(), Vec::<String>::new());
    f.write(
        "crates/wd-high/src/fanout.rs",
        "//! Old.\npub struct Fanout;\nimpl Fanout {}\n",
    );
    expect_one(
        &f,
        "crates/wd-high/src/fanout.rs:2",
        "`Fanout` is a retired design (and 1 more line(s))",
    );
    let f = Fixture::clean();
    f.write(
        "crates/wd-high/src/cfg.rs",
        "//! Config.\npub use x::FanoutConfig;\n",
    );
    expect_one(
        &f,
        "crates/wd-high/src/cfg.rs:2",
        "`Fanout` is a retired design",
    );
    let f = Fixture::clean();
    f.write("docs/delivery.md", "A [`Fanout`] sends to all.\n");
    expect_one(&f, "docs/delivery.md:1", "retired");
}
