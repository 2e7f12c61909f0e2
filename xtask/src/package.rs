//! `cargo xtask package`: the `wdguard` Debian package, built with cargo-deb.
//!
//! 1. Builds `wdguard` (release, or the profile given).
//! 2. Runs `wdguard generate-assets` to write the man pages (gzipped) and
//!    the bash, zsh and fish completions from the clap definitions into
//!    `target/<profile>/wdguard-package`. The package installs the program
//!    as `/usr/bin/wdguard`, a name no Debian 12 package uses
//!    (`/usr/bin/wdctl` is util-linux's, `/usr/bin/wd` node-wikibase-cli's).
//! 3. Runs `cargo deb -p wdguard --no-build`, which packs them with the unit,
//!    the commented `/etc/wd/wd.toml` and the maintainer scripts from
//!    `crates/wdguard/debian/` (see `[package.metadata.deb]` there).
//! 4. Runs lintian on the result, when it is installed, and fails on any
//!    error or warning that the overrides file does not explain.
//!
//! `cargo xtask test` packages with the `dev` profile, whose `wdguard` the
//! tests build anyway, so the operator test finds the .deb without a
//! release build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cargo;
use crate::setup::cmd_ok;

/// Where cargo puts a profile's artifacts.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Installs cargo-deb from crates.io unless `cargo deb` already works.
fn ensure_cargo_deb() -> Result<()> {
    let works = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("xtask: installing cargo-deb (cargo install cargo-deb --locked)");
        cmd_ok(cargo().args(["install", "cargo-deb", "--locked"]))?;
    }
    Ok(())
}

/// Where `cargo xtask package` leaves the .deb for `profile`.
pub fn deb_dir(profile: &str) -> PathBuf {
    crate::target_dir().join("debian").join(profile)
}

/// `cargo xtask package [--profile NAME]`: builds the .deb and returns its
/// path.
pub fn run(args: &[&str]) -> Result<PathBuf> {
    let profile = match args {
        [] => "release",
        ["--profile", p] => p,
        _ => bail!("usage: cargo xtask package [--profile NAME]"),
    };
    build(profile, false)
}

/// Builds the package with `profile`. With `unified`, wdguard is built with
/// the whole workspace's features, as the test build has it, so that the
/// test run reuses those artifacts instead of compiling a second copy of
/// every dependency.
pub fn build(profile: &str, unified: bool) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    eprintln!("xtask: building wdguard ({profile})");
    let mut build = cargo();
    build.args(["build", "--profile", profile]);
    if unified {
        build.args(["--workspace", "--all-features", "--bins"]);
    } else {
        build.args(["--package", "wdguard"]);
    }
    cmd_ok(&mut build)?;
    let bin_dir = crate::target_dir().join(profile_dir(profile));
    let assets = bin_dir.join("wdguard-package");
    if assets.exists() {
        std::fs::remove_dir_all(&assets).with_context(|| format!("clear {}", assets.display()))?;
    }
    cmd_ok(
        Command::new(bin_dir.join("wdguard"))
            .arg("generate-assets")
            .arg(&assets),
    )?;
    // Debian wants man pages gzipped at maximum compression, without a
    // timestamp (-n) so the package is reproducible.
    for entry in std::fs::read_dir(assets.join("man")).context("read the man pages")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            cmd_ok(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&path))?;
        }
    }
    let out = deb_dir(profile);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    eprintln!("xtask: cargo deb");
    cmd_ok(
        cargo()
            .args([
                "deb",
                "--package",
                "wdguard",
                "--no-build",
                "--profile",
                profile,
            ])
            .arg("--output")
            .arg(&out),
    )?;
    let deb = newest_deb(&out)?;
    lintian(&deb)?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

fn newest_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop()
        .map(|(_, p)| p)
        .with_context(|| format!("cargo deb left no .deb in {}", dir.display()))
}

/// Runs lintian when it is installed (`cargo xtask test` installs it).
fn lintian(deb: &Path) -> Result<()> {
    if Command::new("lintian").arg("--version").output().is_err() {
        eprintln!("xtask: lintian is not installed; skipping the package check");
        return Ok(());
    }
    eprintln!("xtask: lintian");
    // --fail-on warning: an error or warning that no override explains fails.
    let status = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--tag-display-limit",
            "0",
        ])
        .arg(deb)
        .status()
        .context("run lintian")?;
    if !status.success() {
        bail!(
            "lintian found problems in {}; fix them or explain each in crates/wdguard/debian/lintian-overrides",
            deb.display()
        );
    }
    Ok(())
}
