//! Unit tests of the agent: configuration in, destinations and runtime
//! settings out, errors that name what is wrong, and a start, reload and
//! shutdown on libvirt's in-process test driver.

use std::time::Duration;

use wd_notify::{DestinationKind, Route};

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn parse(text: &str) -> AgentConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn build(text: &str, env: &[(&str, &str)]) -> Result<Agent, AgentError> {
    let cfg = parse(text);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    rt().block_on(async {
        Agent::new(&cfg, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    })
}

fn err(text: &str, env: &[(&str, &str)]) -> String {
    let e = build(text, env).expect_err("an error").to_string();
    assert!(
        !e.contains("MfKQ9r8") && !e.contains("s3cret"),
        "secret leaked: {e}"
    );
    e
}

#[test]
fn a_whole_configuration_builds_every_destination() {
    let agent = build(
        &format!(
            r#"host = "compute-7"
notify = ["log", "http://127.0.0.1:9/ops", "log"]
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
priority = "warn"
[coalesce]
window_secs = 30
[spool-limits]
max_entries = 1000
[retry]
deadline_secs = 9
[directory]
retire_after_secs = 120
max_entries = 500
"#
        ),
        &[
            ("WD_WEBHOOK_SECRET", SECRET),
            ("WD_AMQP_PASSWORD", "p@ss word"),
        ],
    )
    .unwrap();
    let names: Vec<_> = agent
        .destinations()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "log",
            "amqp amqp://***@127.0.0.1:5672/%2f",
            &*format!(
                "webhook operator {}",
                wd_notify_webhook::display_url("http://127.0.0.1:9/ops")
            ),
            &*format!(
                "webhook project p1 {}",
                wd_notify_webhook::display_url("http://127.0.0.1:9/p1")
            ),
        ]
    );
    let kinds: Vec<_> = agent.destinations().iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            DestinationKind::Log,
            DestinationKind::Bus,
            DestinationKind::Operator,
            DestinationKind::Project
        ]
    );
    let p1 = &agent.destinations()[3];
    assert_eq!(p1.route, Route::Project("p1".into()));
    let queue = p1.queue.as_ref().expect("p1 has its own limits");
    assert_eq!(
        (queue.max_entries, queue.retry_max_delay),
        (50, Duration::from_secs(20))
    );
    assert!(agent.destinations()[2].queue.is_none());
    let r = agent.runtime_config();
    assert_eq!(r.host, "compute-7");
    assert_eq!(r.listener.uri, "qemu:///system");
    assert!(r.listener.read_only, "read-only by default");
    assert_eq!(r.coalesce.window, Duration::from_secs(30));
    assert_eq!(r.spool.max_entries, 1000);
    assert_eq!(r.retry.deadline, Duration::from_secs(9));
    assert!(r.spool_dir.is_none());
    assert!(!agent.waits());
    let d = agent.directory_config();
    assert_eq!(
        (d.retire_after, d.max_entries),
        (Duration::from_secs(120), 500)
    );
    // Every destination is metered under its kind from the start.
    let text = agent.metrics().encode();
    assert!(text.contains("destination=\"project\""), "{text}");
}

#[test]
fn bad_configurations_name_what_is_wrong() {
    let check = |text: &str, env: &[(&str, &str)], expected: &str| {
        let e = err(text, env);
        assert!(e.contains(expected), "{e:?} does not contain {expected:?}");
    };
    check("", &[], "nowhere to notify");
    check(
        "notify = [\"smtp://x\"]",
        &[],
        "unknown notify target `smtp://x`; allowed: log",
    );
    check(
        "notify = [\"amqp://u:s3cret@h1/\", \"rabbit://u@h2/\"]",
        &[],
        "only one AMQP broker may be given; got a second one, `rabbit://***@h2/`",
    );
    check(
        "notify = [\"http://127.0.0.1:9/x\"]",
        &[],
        "needs a signing secret: set WD_WEBHOOK_SECRET",
    );
    check(
        "notify = [\"rabbit://u@h/\"]\n[amqp]\nformat = \"all\"\n",
        &[],
        "config key `amqp.format`: unknown notification format `all`",
    );
    check(
        "notify = [\"log\"]\n[coalesce]\nwindow_secs = -1\n",
        &[],
        "`coalesce.window_secs` must be a positive",
    );
    check(
        "notify = [\"log\"]\n[directory]\nmax_entries = 0\n",
        &[],
        "config key `directory.max_entries` must be at least 1, not 0",
    );
    check(
        "notify = [\"log\"]\n[directory]\nretire_after_secs = -5\n",
        &[],
        "`directory.retire_after_secs` must be a positive number of seconds",
    );
    check(
        "notify = [\"log\"]\nhealth_interval_secs = nan\n",
        &[],
        "`health_interval_secs`",
    );
    check(
        "notify = [\"log\"]\n[spool-limits]\nsync = \"sometimes\"\n",
        &[],
        "allowed: group-commit, per-entry",
    );
    check(
        "notify = [\"http://127.0.0.1:9/x\"]\n[webhook]\nca_file = \"/nonexistent/ca.pem\"\n",
        &[("WD_WEBHOOK_SECRET", SECRET)],
        "cannot read tls ca_file `/nonexistent/ca.pem`",
    );
    if cfg!(debug_assertions) {
        check(
            "notify = [\"log\"]",
            &[(FAULT_ENV, "sometimes")],
            "allowed: pipeline-panic-after-ms=N",
        );
    }
    let e = toml::from_str::<AgentConfig>("conect = \"x\"").unwrap_err();
    assert!(e.to_string().contains("unknown field `conect`"), "{e}");
}

#[test]
fn debug_output_and_secrets() {
    let cfg = parse(&format!(
        "notify = [\"amqp://u:s3cret@h/%2f\"]\n[webhook]\nsecrets = [\"{SECRET}\"]\n[amqp]\npassword = \"s3cret\"\n"
    ));
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("MfKQ9r8"),
        "{shown}"
    );
    assert!(cfg.holds_secrets());
    assert!(parse("notify = [\"amqp://u:s3cret@h/%2f\"]").holds_secrets());
    assert!(parse("[amqp]\nurl = \"rabbit://u@a,u:s3cret@b/\"").holds_secrets());
    assert!(!parse("notify = [\"log\", \"amqp://u@h/\"]").holds_secrets());
    assert!(target_holds_secret("rabbit://a@h1,b:c@h2/"));
    // A webhook URL with a token in its path is a secret too, named by key.
    let cfg = parse(
        "notify = [\"log\", \"https://hooks.slack.com/services/T0/B0/XXXXXXXXXXXXXXXXXXXXXXXX\"]",
    );
    assert_eq!(cfg.secret_keys(), ["notify[1]"]);
    let both = "notify = [\"amqp://u:s3cret@h/%2f\"]\n[amqp]\npassword = \"s3cret\"\nurl = \"amqp://u:p@h/\"";
    assert_eq!(
        parse(both).secret_keys(),
        ["notify[0]", "amqp.password", "amqp.url"]
    );
    assert!(!target_holds_secret("https://ops.example/watchdog"));
}

#[test]
fn an_unreachable_libvirt_fails_the_start_unless_it_waits() {
    let uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    let text = format!("connect = \"{uri}\"\nnotify = [\"log\"]\n");
    let agent = build(&text, &[]).unwrap();
    let e = rt().block_on(agent.start()).unwrap_err();
    assert!(matches!(e, AgentError::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot connect to libvirt at {uri}: ")),
        "{e}"
    );
}

#[test]
fn it_starts_reloads_and_stops_on_the_test_driver() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "connect = \"test:///default\"\nread_only = false\nspool = \"{}\"\n",
        dir.path().join("spool").display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = parse(&format!("{base}notify = [\"log\"]\n"));
        let agent = Agent::new(&cfg, &|_| None).unwrap().named("test agent");
        let mut running = agent.start().await.unwrap();
        assert_eq!(running.runtime().status().len(), 1);

        // A new destination starts; the running one is kept.
        let next = parse(&format!(
            "{base}notify = [\"log\"]\n[[webhook.projects]]\nproject = \"p1\"\nurl = \"http://127.0.0.1:9/p1\"\nsecrets = [\"{SECRET}\"]\n"
        ));
        let done = running.reload(&next, &|_| None).unwrap();
        assert_eq!(done.updated, ["log"]);
        let p1 = wd_notify_webhook::display_url("http://127.0.0.1:9/p1");
        assert_eq!(done.added, [format!("webhook project p1 {p1}")]);
        assert!(p1.starts_with("http://127.0.0.1:9 #"), "{p1}");
        assert_eq!(running.runtime().status().len(), 2);

        // An invalid one changes nothing.
        let bad = parse(&format!("{base}notify = [\"smtp://x\"]\n"));
        assert!(running.reload(&bad, &|_| None).is_err());
        assert_eq!(running.runtime().status().len(), 2);

        // A restart-only change is reported as such.
        let moved = parse(&format!("{base}host = \"elsewhere\"\nnotify = [\"log\"]\n"));
        let done = running.reload(&moved, &|_| None).unwrap();
        assert_eq!(done.needs_restart, ["host"]);
        assert_eq!(done.removed, 1, "the project endpoint retires");
        let bounded = parse(&format!(
            "{base}host = \"elsewhere\"\nnotify = [\"log\"]\n[directory]\nmax_entries = 10\n"
        ));
        let done = running.reload(&bounded, &|_| None).unwrap();
        assert_eq!(done.needs_restart, ["host", "spool-limits/retry/coalesce/directory"]);

        let report = running.shutdown().await;
        assert_eq!(report.pipeline.firings, 0);
    });
}
