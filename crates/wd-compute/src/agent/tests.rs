//! Unit tests of the agent: configuration in, destinations and runtime
//! settings out, errors that name what is wrong, and a start, reload and
//! shutdown on libvirt's in-process test driver.

use std::time::Duration;

use wd_notify::{DestinationKind, Scope};

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn parse(text: &str) -> AgentSettings {
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
[queue]
max_entries = 1000
attempt_timeout_secs = 9
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
    assert_eq!(p1.scope, Scope::Project("p1".into()));
    let queue = p1.queue.as_ref().expect("p1 has its own limits");
    assert_eq!(
        (queue.max_entries, queue.retry_max_delay),
        (50, Duration::from_secs(20))
    );
    assert!(agent.destinations()[2].queue.is_none());
    let r = agent.config();
    assert_eq!(r.host, "compute-7");
    assert_eq!(r.listener.uri, "qemu:///system");
    assert!(r.listener.read_only, "read-only by default");
    assert_eq!(r.coalesce.window, Duration::from_secs(30));
    assert_eq!(r.queue.max_entries, 1000);
    assert_eq!(r.queue.attempt_timeout, Duration::from_secs(9));
    assert!(r.spool_dir.is_none());
    assert!(!agent.waits());
    let d = agent.directory_config();
    assert_eq!(
        (d.retire_after, d.max_entries),
        (Duration::from_secs(120), 500)
    );
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
        "notify = [\"log\"]\n[queue]\nsync = \"sometimes\"\n",
        &[],
        "allowed: group-commit, per-entry",
    );
    check(
        "notify = [\"log\"]\n[queue]\nmax_bytes = 4096\n",
        &[],
        "config key `queue.max_bytes` is 4096; allowed: at least 1048576",
    );
    check(
        "notify = [\"log\"]\n[queue]\nmax_entries = 0\n",
        &[],
        "config key `queue.max_entries` is 0; allowed: at least 1",
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
        check(
            "notify = [\"log\"]",
            &[(FAULT_ENV, "spool-fault=eio:read:/tmp/flag")],
            "spool-fault=enospc|eio|erofs:write|fsync|create|all:FLAG_FILE",
        );
    }
    check(
        "notify = [\"log\"]\n[connect_auth]\nusername = \"nova\"\n",
        &[],
        "config key `connect_auth.password` is missing",
    );
    check(
        "notify = [\"log\"]\n[connect_auth]\npassword = \"s3cret\"\n",
        &[],
        "config key `connect_auth.username` is missing",
    );
    check(
        "notify = [\"log\"]\n[connect_auth]\nusername = \" \"\npassword = \"s3cret\"\n",
        &[],
        "config key `connect_auth.username` must not be empty",
    );
    let e = toml::from_str::<AgentSettings>("conect = \"x\"").unwrap_err();
    assert!(e.to_string().contains("unknown field `conect`"), "{e}");
}

#[test]
fn debug_output_and_secrets() {
    let cfg = parse(&format!(
        "notify = [\"amqp://u:s3cret@h/%2f\", \"https://ops.example/tenant-7f3/hook\"]\n[webhook]\nsecrets = [\"{SECRET}\"]\n[amqp]\npassword = \"s3cret\"\n"
    ));
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("MfKQ9r8") && !shown.contains("tenant-7f3"),
        "{shown}"
    );
    assert!(shown.contains("https://ops.example #"), "{shown}");
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
    // libvirt's SASL password.
    let cfg = parse("[connect_auth]\nusername = \"nova\"\npassword = \"s3cret\"\n");
    assert_eq!(cfg.secret_keys(), ["connect_auth.password"]);
    let shown = format!("{cfg:?} {cfg:#?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("nova"),
        "{shown}"
    );
    let creds = cfg.connect_auth.credentials().unwrap().unwrap();
    assert_eq!((creds.username(), creds.password()), ("nova", "s3cret"));
    assert!(!format!("{creds:?}").contains("s3cret"));
    assert_eq!(parse("").connect_auth.credentials(), Ok(None));
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
        assert_eq!(running.status().len(), 1);
        // Every destination is metered under its kind from the start.
        let text = running.metrics().encode();
        assert!(text.contains("destination=\"log\""), "{text}");

        // A new destination starts; the running one is kept.
        let project = format!(
            "[[webhook.projects]]\nproject = \"p1\"\nurl = \"http://127.0.0.1:9/p1\"\nsecrets = [\"{SECRET}\"]\n"
        );
        let next = parse(&format!("{base}notify = [\"log\"]\n{project}"));
        let done = running.reload(&next, &|_| None).unwrap();
        assert_eq!(done.updated, ["log"]);
        let p1 = wd_notify_webhook::display_url("http://127.0.0.1:9/p1");
        assert_eq!(done.added, [format!("webhook project p1 {p1}")]);
        assert!(p1.starts_with("http://127.0.0.1:9 #"), "{p1}");
        assert_eq!(running.status().len(), 2);
        let text = running.metrics().encode();
        assert!(text.contains("destination=\"project\""), "{text}");

        // A configuration a start would refuse is refused with the error a
        // start gives, and changes nothing.
        let refused = |running: &mut RunningAgent, text: String| {
            let start = Agent::new(&parse(&text), &|_| None).unwrap_err().to_string();
            let reload = running.reload(&parse(&text), &|_| None).unwrap_err().to_string();
            assert_eq!(reload, start);
            assert_eq!(running.status().len(), 2);
            reload
        };
        refused(&mut running, format!("{base}notify = [\"smtp://x\"]\n"));
        let e = refused(
            &mut running,
            format!("{base}notify = [\"log\"]\n[queue]\nmax_bytes = 4096\n"),
        );
        assert!(e.contains("queue.max_bytes"), "{e}");
        let e = refused(
            &mut running,
            format!("{base}notify = [\"log\"]\n{project}max_entries = 0\n"),
        );
        assert!(e.contains("webhook.projects.max_entries"), "{e}");
        // The same project block twice: refused at start and at reload alike.
        let twice = format!("{base}notify = [\"log\"]\n{project}{project}");
        let start = rt_start_error(&twice).await;
        let reload = running.reload(&parse(&twice), &|_| None).unwrap_err().to_string();
        assert_eq!(reload, start);
        assert!(reload.contains("each destination once"), "{reload}");
        assert_eq!(running.status().len(), 2);

        // A restart-only change is reported as such; a removed destination
        // stays in the status, retired, with its backlog.
        let moved = parse(&format!("{base}host = \"elsewhere\"\nnotify = [\"log\"]\n"));
        let done = running.reload(&moved, &|_| None).unwrap();
        assert_eq!(done.needs_restart, ["host"]);
        assert_eq!(done.removed, [format!("webhook project p1 {p1}")]);
        let states: Vec<_> = running.status().iter().map(|s| s.state).collect();
        assert_eq!(states, [wd_notify::DestinationState::Active, wd_notify::DestinationState::Retired]);
        let bounded = parse(&format!(
            "{base}host = \"elsewhere\"\nnotify = [\"log\"]\n[directory]\nmax_entries = 10\n[coalesce]\nwindow_secs = 7\n[queue]\nmax_entries = 50\n"
        ));
        let done = running.reload(&bounded, &|_| None).unwrap();
        assert_eq!(
            done.needs_restart,
            ["host", "coalesce", "directory", "queue settings of destination log"]
        );

        let report = running.shutdown().await;
        assert_eq!(report.pipeline.firings, 0);
    });
}

/// The error starting an agent from `text` gives (on the test driver, with
/// no libvirt probe in the way).
async fn rt_start_error(text: &str) -> String {
    let agent = Agent::new(&parse(text), &|_| None).unwrap().wait(true);
    agent.start().await.unwrap_err().to_string()
}
