//! Tests of `wdguard watch`'s least-privilege and logging settings: the
//! config file's mode, read-only libvirt, the log format.

use std::path::Path;

use clap::Parser;

use crate::watch::{self, Args};

#[derive(Parser)]
struct T {
    #[command(flatten)]
    args: Args,
}

fn args(argv: &[&str]) -> Args {
    T::parse_from(std::iter::once("watch").chain(argv.iter().copied())).args
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Writes a config file as an operator should: mode 0600.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_config_file_with_secrets_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wd.toml");
    let check = |text: &str, mode: u32| {
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        watch::load_config(&p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let secret = format!("notify = [\"log\"]\n[webhook]\nsecrets = [\"{SECRET}\"]\n");
    let err = check(&secret, 0o644).unwrap_err();
    assert!(
        err.contains("holds secrets (webhook.secrets) but is readable by others (mode 0644)"),
        "{err}"
    );
    assert!(!err.contains("MfKQ9r8"), "secret leaked: {err}");
    check(&secret, 0o600).unwrap();
    // A password in a broker URL is a secret too.
    let err = check("notify = [\"amqp://u:s3cret@h/%2f\"]\n", 0o604).unwrap_err();
    assert!(
        err.contains("(mode 0604)") && !err.contains("s3cret"),
        "{err}"
    );
    let err = check("[amqp]\npassword = \"s3cret\"\n", 0o644).unwrap_err();
    assert!(err.contains("(mode 0644)"), "{err}");
    // Nothing secret: any reader is fine.
    check("notify = [\"log\"]\nread_only = false\n", 0o644).unwrap();
}

#[test]
fn read_write_and_log_format_come_from_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wd.toml");
    write_private(
        &p,
        "notify = [\"log\"]\nread_only = false\nlog_format = \"json\"\n",
    );
    let cfg = watch::load_config(&p).unwrap();
    assert_eq!(cfg.agent.read_only, Some(false));
    assert_eq!(cfg.log_format, Some(crate::logging::LogFormat::Json));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read_only = |argv: &[&str]| {
        let a = args(argv);
        let cfg = watch::config(&a).unwrap().agent;
        rt.block_on(async { wd_compute::Agent::new(&cfg, &|_| None) })
            .unwrap()
            .config()
            .listener
            .read_only
    };
    assert!(read_only(&["--notify", "log"]));
    assert!(!read_only(&["--notify", "log", "--read-write"]));
    assert!(!read_only(&["--config", p.to_str().unwrap()]));
    let a = args(&["--notify", "log", "--log-format", "json"]);
    assert_eq!(a.log_format, Some(crate::logging::LogFormat::Json));
}
