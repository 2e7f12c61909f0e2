//! Workspace automation, reached as `cargo xtask <command>`.
//!
//! Architecture invariant: xtask must not depend on libvirt, because it is
//! what installs libvirt. It depends only on `anyhow`, `serde_json` and
//! `wd-testkit` (which uses the standard library alone).
//!
//! - `cargo xtask test`: installs what the tests need, starts the services,
//!   runs fmt, clippy, the packaged crates, rustdoc and the whole test suite, and stops what it
//!   started.
//! - `cargo xtask demo`: the main job, on a real guest.
//! - `cargo xtask tidy`: the architecture's rules, checked (also the first
//!   step of `cargo xtask test`).
//! - `cargo xtask packaged`: the library crates packaged, and built with
//!   the example driver from their tarballs (also a step of `cargo xtask
//!   test`).
//! - `cargo xtask package`, `cargo xtask image`: the Debian package, and
//!   the container image built from it (also steps of `cargo xtask test`).
//! - `cargo xtask services up|down|status`, `cargo xtask guest`: the pieces,
//!   for a developer's machine.

#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod fuzz;
mod image;
mod package;
mod packaged;
mod setup;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test              tidy, install what is needed, then fmt, clippy, packaged, rustdoc and every test
  tidy [dir]        check the architecture's rules (allowed edges, unsafe, docs, file sizes)
  demo              the main job: a real guest's watchdog fires and its owner is notified
  services up       start libvirtd (with virtlogd) and RabbitMQ on 127.0.0.1
  services down     stop the services recorded under target/wd-services
  services status   show which services answer
  guest             build the watchdog guest's kernel and initramfs
  deps              install the Debian packages the workspace needs
  venv              create target/wd-venv with Ceilometer and Aodh from PyPI
  bench             measure, write target/bench-report.json and docs/performance.md
  fuzz [target] [s] run the cargo-fuzz targets (default: all, 60 s each)
  package [--profile P]  build the wdguard Debian package (cargo-deb; default profile release)
  image [--profile P | --deb FILE] [--uid N]
                    build the container image localhost/wdguard from Debian's archive
                    (mmdebstrap) and the .deb, with podman; no registry needed
  packaged          cargo package the library crates, then build them and the example
                    driver (tests/driver) from the tarballs";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = run(&args) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[&str]) -> Result<()> {
    match args {
        ["test", rest @ ..] => cmd::test(rest),
        ["demo", rest @ ..] => cmd::demo(rest),
        ["tidy"] => tidy::run(&root()),
        ["tidy", dir] => tidy::run(Path::new(dir)),
        ["services", "up"] => setup::services_up().map(|_| ()),
        ["services", "down"] => {
            setup::services_down();
            Ok(())
        }
        ["services", "status"] => {
            setup::services_status();
            Ok(())
        }
        ["guest"] => setup::guest().map(|_| ()),
        ["deps"] => setup::ensure_packages(),
        ["venv"] => setup::venv(),
        ["bench", rest @ ..] => bench::run(rest),
        ["fuzz", rest @ ..] => fuzz::run(rest),
        ["package", rest @ ..] => package::run(rest).map(|_| ()),
        ["image", rest @ ..] => image::run(rest),
        ["packaged", rest @ ..] => packaged::run(rest),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command `{}`\n\n{USAGE}", args.join(" ")),
    }
}

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else `target/` at the
/// root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The cargo that runs xtask (`$CARGO`), in the workspace root.
///
/// Incremental compilation is off unless `CARGO_INCREMENTAL` says
/// otherwise: a clean CI build gains nothing from it, and its caches more
/// than double the size of `target/`.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}
