//! Unit tests of `wdguard watch`'s configuration: flags, file and
//! environment into a plan, and the errors that name what is wrong.

use std::time::Duration;

use super::*;
use clap::Parser;
use wd_compute::AgentError;
use wd_notify_amqp::PASSWORD_ENV as AMQP_PASSWORD_ENV;
use wd_notify_webhook::SECRET_ENV;

/// What `wdguard watch` would run with: the file and flags, then the agent.
fn plan(a: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Agent> {
    let cfg = config(a)?;
    Agent::new(&cfg.agent, env).map_err(|e: AgentError| e.into())
}

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
fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn check_err(argv: &[&str], config: Option<&str>, env: &[(&str, &str)], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    if let Some(text) = config {
        let p = dir.path().join("wd.toml");
        write_private(&p, text);
        argv.push("--config".into());
        argv.push(p.display().to_string());
    }
    let a = args(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(async {
            plan(&a, &|k| {
                env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
            .err()
        })
        .expect("an error");
    let text = crate::one_line(&err);
    assert!(
        text.contains(expected),
        "{text:?} does not contain {expected:?}"
    );
    assert!(!text.contains("MfKQ9r8"), "secret leaked: {text}");
    assert!(!text.contains("s3cret"), "password leaked: {text}");
}

#[test]
fn nova_config_gives_the_bus_and_host() {
    let dir = tempfile::tempdir().unwrap();
    let nova = dir.path().join("nova.conf");
    std::fs::write(
        &nova,
        "[DEFAULT]\nhost = compute-9\ntransport_url = rabbit://nova:s3cret@10.0.0.1:5672,nova:s3cret@10.0.0.2:5672/\n\
         [oslo_messaging_notifications]\ndriver = messagingv2\n",
    )
    .unwrap();
    let a = args(&["--nova-config", &nova.display().to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plan = rt.block_on(async { plan(&a, &|_| None) }).unwrap();
    let names: Vec<_> = plan.destinations().iter().map(|d| d.name.clone()).collect();
    assert_eq!(
        names,
        [format!(
            "amqp rabbit://***@10.0.0.1:5672,***@10.0.0.2:5672/ (from {})",
            nova.display()
        )]
    );
    assert_eq!(plan.config().host, "compute-9");

    // Nova sends nothing (no driver): with nothing else, that is an error
    // naming the file, section and key.
    std::fs::write(&nova, "[DEFAULT]\nhost = compute-9\n").unwrap();
    check_err(
        &["--nova-config", &nova.display().to_string()],
        None,
        &[],
        "[oslo_messaging_notifications] driver is unset or noop",
    );
    std::fs::write(
        &nova,
        "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://nova:s3cret@h:x/\n",
    )
    .unwrap();
    check_err(
        &["--nova-config", &nova.display().to_string()],
        None,
        &[],
        "nova.conf [oslo_messaging_notifications] transport_url: `rabbit://***@h:x/`",
    );
}

/// A Slack-style URL: the token is the last path segment.
const TOKEN_URL: &str =
    "https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/s3cretTokenPart0123456789";

#[test]
fn a_webhook_url_with_a_token_is_refused_on_the_command_line() {
    for url in [
        TOKEN_URL,
        "https://ops:s3cret@ops.example/hook",
        "https://ops.example/hook?token=s3cret",
    ] {
        check_err(
            &["--notify", url],
            None,
            &[],
            "holds a secret (a password, or a webhook URL with user info, a query or a token in its path), which `ps` would show",
        );
    }
}

#[test]
fn a_world_readable_config_with_a_token_url_is_refused_naming_the_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wd.toml");
    let text = format!(
        "[[webhook.projects]]\nproject = \"p1\"\nurl = \"https://p1.example/hook\"\nsecrets = []\n\
         [[webhook.projects]]\nproject = \"p2\"\nurl = \"{TOKEN_URL}\"\nsecrets = []\n"
    );
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = crate::one_line(&load_config(&p).unwrap_err());
    assert!(
        err.contains(
            "holds secrets (webhook.projects[1].url) but is readable by others (mode 0644)"
        ),
        "{err}"
    );
    assert!(
        !err.contains("s3cret") && !err.contains("services"),
        "{err}"
    );
    // The same file closed to others is accepted.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    load_config(&p).unwrap();
}

#[test]
fn bad_configurations_name_what_is_wrong() {
    check_err(&[], None, &[], "nowhere to notify");
    check_err(
        &[
            "--notify",
            "rabbit://guest@127.0.0.1:5673,guest:s3cret@127.0.0.1:5672/",
        ],
        None,
        &[],
        "holds a secret (a password, or a webhook URL with user info, a query or a token in its path), which `ps` would show",
    );
    check_err(
        &["--notify", "rabbit://guest@127.0.0.1/"],
        Some("[amqp]\nformat = \"all\"\n"),
        &[],
        "config key `amqp.format`: unknown notification format `all`",
    );
    check_err(
        &["--notify", "http://127.0.0.1:9/x"],
        None,
        &[],
        "needs a signing secret: set WD_WEBHOOK_SECRET",
    );
    check_err(
        &["--notify", "smtp://x"],
        None,
        &[],
        "unknown notify target `smtp://x`; allowed: log",
    );
    check_err(
        &["--notify", "amqp://guest:s3cret@127.0.0.1/%2f"],
        None,
        &[],
        "holds a secret (a password, or a webhook URL with user info, a query or a token in its path), which `ps` would show",
    );
    check_err(
        &["--notify", "log"],
        Some("conect = \"x\"\n"),
        &[],
        "unknown field `conect`",
    );
    check_err(
        &["--notify", "log"],
        Some("[coalesce]\nwindow_secs = -1\n"),
        &[],
        "`coalesce.window_secs` must be a positive",
    );
    check_err(
        &["--notify", "log"],
        Some("[queue]\nattempt_timeout_secs = 1e30\n"),
        &[],
        "`queue.attempt_timeout_secs` must be a positive number of seconds, at most 86400",
    );
    check_err(
        &["--notify", "log"],
        Some("[webhook]\ntimeout_secs = 1000\n"),
        &[],
        "`webhook.timeout_secs` must be a positive number of seconds, at most 300",
    );
    check_err(
        &["--notify", "log"],
        Some("health_interval_secs = nan\n"),
        &[],
        "`health_interval_secs`",
    );
    check_err(
        &["--notify", "log"],
        Some("[queue]\nsync = \"sometimes\"\n"),
        &[],
        "allowed: group-commit, per-entry",
    );
    check_err(
        &["--notify", "log"],
        Some("[queue]\nretry_min_delay_secs = 10\nretry_max_delay_secs = 2\n"),
        &[],
        "`queue.retry_max_delay_secs` (2s) is below",
    );
    check_err(
        &["--notify", "log"],
        Some("read_only = \"yes\"\n"),
        &[],
        "invalid type: string \"yes\", expected a boolean",
    );
    check_err(
        &["--notify", "log"],
        Some("log_format = \"xml\"\n"),
        &[],
        "unknown variant `xml`, expected `text` or `json`",
    );
    check_err(
        &["--notify", "log"],
        Some("[amqp]\nurl = \"amqp://u@127.0.0.1/%2f\"\npriority = \"LOUD\"\n"),
        &[],
        "amqp.priority",
    );
    check_err(
        &["--notify", "http://127.0.0.1:9/x"],
        None,
        &[(SECRET_ENV, "whsec_!!!")],
        "WD_WEBHOOK_SECRET",
    );
    check_err(
        &["--notify", "log"],
        Some("[webhook]\nsecrets = [\"nope\"]\n"),
        &[],
        "line 2",
    );
    check_err(
        &["--notify", "http://127.0.0.1:9/x"],
        Some("[webhook]\nca_file = \"/nonexistent/ca.pem\"\n"),
        &[(SECRET_ENV, SECRET)],
        "cannot read tls ca_file `/nonexistent/ca.pem`",
    );
    check_err(
        &["--notify", "log"],
        Some("log_level = \"info,[\"\n"),
        &[],
        "config key `log_level`",
    );
}

#[test]
fn a_good_configuration_builds_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wd.toml");
    write_private(
        &p,
        &format!(
            r#"host = "compute-7"
notify = ["log"]
spool = "{spool}"
[webhook]
timeout_secs = 3
[[webhook.projects]]
project = "p1"
url = "http://127.0.0.1:9/p1"
secrets = ["{SECRET}"]
max_entries = 50
max_delay_secs = 20
[amqp]
url = "amqp://guest@127.0.0.1:5672/%2f"
exchange = "nova"
durable = false
priority = "warn"
[coalesce]
window_secs = 30
"#,
            spool = dir.path().join("spool").display()
        ),
    );
    let a = args(&[
        "--config",
        &p.display().to_string(),
        "--notify",
        "http://127.0.0.1:9/ops",
        // Already in the file: must not become a second log notifier.
        "--notify",
        "log",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plan = rt
        .block_on(async {
            plan(&a, &|k| match k {
                SECRET_ENV => Some(SECRET.to_owned()),
                AMQP_PASSWORD_ENV => Some("p@ss word".to_owned()),
                _ => None,
            })
        })
        .unwrap();
    // The flags joined the file: the same `log` from both is one
    // destination; the flag's webhook is the operator endpoint, signed with
    // the environment's secret. (The agent's own tests check each
    // destination's kind, route and queue.)
    let names: Vec<_> = plan
        .destinations()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "log").count(),
        1,
        "{names:?}"
    );
    assert!(
        names.contains(&&*format!(
            "webhook operator {}",
            wd_notify_webhook::display_url("http://127.0.0.1:9/ops")
        )),
        "{names:?}"
    );
    assert_eq!(
        names.len(),
        4,
        "log, the bus, the operator and p1: {names:?}"
    );
    let r = plan.config();
    assert!(r.listener.read_only, "read-only by default");
    assert_eq!(
        r.spool_dir.as_deref(),
        Some(dir.path().join("spool").as_path())
    );
    assert_eq!(
        (r.host.as_str(), r.coalesce.window),
        ("compute-7", Duration::from_secs(30))
    );
    assert!(!plan.waits());
}
