//! The trust store with 1,000 project endpoints: resident memory and the
//! time to build (start) and to build again (a SIGHUP reload), before and
//! after the store is shared, in one run.
//!
//! - **before**: what each endpoint did until the store was shared: its own
//!   reqwest client that loads the system trust store itself
//!   (`tls_built_in_native_certs`), one per endpoint plus the one the
//!   whole-configuration check builds;
//! - **after**: [`WebhookNotifier::split`] of the same 1,000 endpoints (the
//!   check, the routes, the signing secrets and one client each, sharing
//!   one rustls configuration and the store read once per process).
//!
//! Each variant runs in a fresh child process (this binary again), so that
//! one's allocations do not hide the other's. The parent prints a table
//! and writes `target/criterion/trust-store.json` for `cargo xtask bench`.

use std::time::{Duration, Instant};

use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};

const ENDPOINTS: usize = 1_000;

fn config() -> WebhookConfig {
    let secret = Secret::from_bytes(&[7u8; 32]).expect("a valid secret");
    (0..ENDPOINTS).fold(WebhookConfig::default(), |c, i| {
        c.with_project(
            format!("project-{i:04}"),
            Endpoint::new(format!("https://p{i}.example/hook"), [secret.clone()]),
        )
    })
}

/// The resident set size in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The client each endpoint built before: its own copy of the store.
fn old_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

fn build(variant: &str) -> Box<dyn std::any::Any> {
    let c = config();
    match variant {
        "before" => Box::new(
            (0..=ENDPOINTS)
                .map(|_| old_client(c.timeout))
                .collect::<Vec<_>>(),
        ),
        "after" => Box::new(WebhookNotifier::split(c).expect("a valid configuration")),
        other => panic!("unknown variant {other}"),
    }
}

/// One variant, in this process: a JSON line on stdout.
fn child(variant: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let base = rss_kib();
    let t = Instant::now();
    let first = build(variant);
    let start_ms = t.elapsed().as_secs_f64() * 1e3;
    let started = rss_kib();
    // A reload builds the new set beside the old one, then drops the old.
    let t = Instant::now();
    let second = build(variant);
    drop(first);
    let reload_ms = t.elapsed().as_secs_f64() * 1e3;
    let reloaded = rss_kib();
    drop(second);
    println!(
        "{{\"variant\":\"{variant}\",\"endpoints\":{ENDPOINTS},\"start_ms\":{start_ms:.1},\"reload_ms\":{reload_ms:.1},\"rss_start_kib\":{},\"rss_reload_kib\":{}}}",
        started.saturating_sub(base),
        reloaded.saturating_sub(base)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        child(&args[i + 1]);
        return;
    }
    let exe = std::env::current_exe().expect("this binary");
    let mut rows = Vec::new();
    for variant in ["before", "after"] {
        let out = std::process::Command::new(&exe)
            .args(["--variant", variant])
            .output()
            .expect("run a variant");
        assert!(
            out.status.success(),
            "{variant}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).expect("utf-8");
        let line = line.lines().last().expect("a result line").to_owned();
        println!("trust store, {ENDPOINTS} endpoints: {line}");
        rows.push(line);
    }
    let dir = target_dir().join("criterion");
    std::fs::create_dir_all(&dir).expect("create target/criterion");
    std::fs::write(
        dir.join("trust-store.json"),
        format!("[{}]\n", rows.join(",")),
    )
    .expect("write trust-store.json");
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the one this bench was
/// built into (`<target>/<profile>/deps/`), so that the crate reaches nothing
/// outside itself when it is unpacked elsewhere.
fn target_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| "target".into())
}
