//! The top-level commands.

use anyhow::{Context, Result, bail};

use crate::cargo;
use crate::setup::{self, ServicesGuard, cmd_ok};

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Each transport of `wd-compute` builds alone, and pulls in nothing of the
/// other: a bus-only driver compiles no HTTP client, a webhook-only one no
/// AMQP client.
fn transport_features() -> Result<()> {
    for (feature, absent) in [("amqp", "reqwest"), ("webhook", "lapin"), ("", "reqwest")] {
        let shown = if feature.is_empty() {
            "no transport"
        } else {
            feature
        };
        eprintln!("xtask: wd-compute with {shown} alone");
        let only = [
            "-p",
            "wd-compute",
            "--no-default-features",
            "--features",
            feature,
        ];
        cmd_ok(cargo().args(["check", "--lib"]).args(only))?;
        let tree = cargo()
            .args(["tree", "-e", "normal", "--prefix", "none"])
            .args(only)
            .output()
            .context("run cargo tree")?;
        let text = String::from_utf8_lossy(&tree.stdout);
        if !tree.status.success() || text.is_empty() {
            bail!("cargo tree for wd-compute with {shown} failed");
        }
        if text.lines().any(|l| l.starts_with(&format!("{absent} "))) {
            bail!("wd-compute with {shown} alone depends on {absent}");
        }
    }
    Ok(())
}

/// `cargo xtask test [nextest filters…]`.
pub fn test(filters: &[&str]) -> Result<()> {
    eprintln!("xtask: tidy");
    crate::tidy::run(&crate::root())?;
    setup::ensure_packages()?;
    setup::guest()?;
    setup::venv()?;
    setup::prometheus_venv()?;
    setup::nova_venv()?;

    eprintln!("xtask: cargo fmt --check");
    cmd_ok(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs; run `cargo fmt --all`")?;
    eprintln!("xtask: cargo clippy");
    cmd_ok(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    transport_features()?;
    // The libraries as another repository gets them: packaged, and built
    // from their tarballs with the example driver (about 10 s once the
    // third-party crates are built; see xtask/src/packaged.rs).
    crate::packaged::check()?;
    eprintln!("xtask: cargo doc");
    cmd_ok(
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;

    // nextest does not run doc tests. Run them first, so that the test
    // runner's summary is the last thing this command prints.
    let nextest = has_nextest();
    if nextest && filters.is_empty() {
        eprintln!("xtask: doc tests");
        cmd_ok(cargo().args(["test", "--workspace", "--all-features", "--doc"]))?;
    }
    // Build every test before starting services, so they run for less time.
    if nextest {
        cmd_ok(cargo().args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-run",
        ]))?;
    }
    // The operator test (wd-e2e, `libvirtd_package_*`) installs this .deb;
    // the dev profile reuses the wdguard the tests use, so no release build.
    let deb = crate::package::build("dev", true)?;
    // The container test (wd-e2e, `libvirtd_container_*`) runs the image
    // built from that .deb: its base once (about a minute), then seconds.
    crate::image::build(&deb, wd_testkit::container::DEFAULT_UID)?;
    let _services = ServicesGuard(setup::services_up()?);

    eprintln!("xtask: running the tests");
    let mut run = cargo();
    if nextest {
        run.args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ]);
        if !filters.is_empty() {
            run.arg("--").args(filters);
        }
    } else {
        eprintln!(
            "xtask: cargo-nextest is missing, so tests run one at a time with cargo test; install it with:\n  cargo install cargo-nextest --locked"
        );
        run.args(["test", "--workspace", "--all-features", "--no-fail-fast"]);
        run.arg("--").args(filters).arg("--test-threads=1");
    }
    run.env(wd_testkit::REQUIRE_REAL_ENV, "1");
    cmd_ok(&mut run).context("tests failed")?;

    Ok(())
}

/// `cargo xtask demo`: sets up what is missing (packages, the libvirt host,
/// the guest, libvirtd), runs the story on a real guest, and stops the
/// libvirtd it started.
pub fn demo(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("`cargo xtask demo` takes no arguments");
    }
    if !setup::is_root() {
        bail!(
            "the demo starts libvirtd and a QEMU guest, which needs root; as root run:\n  \
             apt-get update && apt-get install -y --no-install-recommends {}\n  cargo xtask demo",
            setup::PACKAGES.join(" ")
        );
    }
    setup::ensure_packages()?;
    setup::guest()?;
    eprintln!("xtask: building the demo");
    cmd_ok(cargo().args(["build", "--quiet", "--package", "wd-e2e", "--bin", "demo"]))?;
    let started = setup::libvirtd_up()?;
    let _guard = ServicesGuard(setup::Started {
        libvirtd: started,
        ..setup::Started::default()
    });
    cmd_ok(cargo().args(["run", "--quiet", "--package", "wd-e2e", "--bin", "demo"]))
        .context("the demo failed")
}
