//! Delivery under hostile endpoints, a broker outage and injected faults, at
//! the agent level: the real `wd_compute::Agent` (built from parts) with its per-destination
//! queues on disk, real HTTP servers on 127.0.0.1 (a signature-checking
//! receiver and hostile endpoints), the real RabbitMQ, and a synthetic stream
//! of listener items in place of libvirt (the real-guest version is in
//! `e2e.rs`; these cover the combinations at a fraction of the time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use uuid::Uuid;
use wd_compute::{Agent, AgentBuilder, InstanceDirectory, Owner, RunningAgent};
use wd_e2e::hostile::{Behaviour, Hostile};
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::Scratch;
use wd_events::{DomainId, Enum, Item, Origin, WatchdogAction, WatchdogEvent};
use wd_notify::{Destination, DestinationKind, DestinationStatus, Notifier, QueueConfig, Scope};
use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};

const OPS_SECRET: &str = "whsec_d2QtZTJlIG9wZXJhdG9yIHNlY3JldCAzMiBieXRlcyE=";
const SECRET_A: &str = "whsec_d2QtZTJlIHByb2plY3QgQSBzZWNyZXQgMzIgYnl0ZXM=";
const SECRET_B: &str = "whsec_d2QtZTJlIHByb2plY3QgQiBzZWNyZXQgMzIgYnl0ZXM=";
const A: &str = "hostile-project-a";
const B: &str = "healthy-project-b";

/// Owners by domain UUID: what Nova's metadata would say.
#[derive(Default)]
struct Owners(std::sync::Mutex<HashMap<Uuid, String>>);

impl InstanceDirectory for Owners {
    fn observe(&self, _: &DomainId, _: &str) {}
    fn lookup(&self, domain: &DomainId) -> Option<Owner> {
        let project = self.0.lock().unwrap().get(&domain.uuid).cloned()?;
        Some(Owner {
            display_name: None,
            project_id: project,
            user_id: None,
            flavor: None,
            image: None,
        })
    }
}

/// The queue settings of every test: quick redelivery, small bounds.
fn queue() -> QueueConfig {
    QueueConfig::default()
        .retry_delays(Duration::from_millis(200), Duration::from_secs(2))
        .max_entries(1000)
        .max_bytes(8 << 20)
        .attempt_timeout(Duration::from_secs(30))
}

/// A running agent fed by `fire`.
struct Harness {
    running: RunningAgent,
    items: mpsc::UnboundedSender<Item>,
    owners: Arc<Owners>,
    _spool: Scratch,
}

impl Harness {
    async fn start(
        destinations: Vec<Destination>,
        config: impl FnOnce(AgentBuilder) -> AgentBuilder,
    ) -> Harness {
        let spool = Scratch::new("wd-delivery-spool");
        let (tx, rx) = mpsc::unbounded_channel();
        let items =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let owners = Arc::new(Owners::default());
        let builder = Agent::builder("delivery-test")
            .spool_dir(&spool.0)
            .queue(queue())
            .shutdown_grace(Duration::ZERO)
            .directory(owners.clone())
            .destinations(destinations)
            .events(items);
        let running = config(builder).build().start().await.unwrap();
        Harness {
            running,
            items: tx,
            owners,
            _spool: spool,
        }
    }

    /// A watchdog `reset` firing of a new domain owned by `project`.
    fn fire(&self, project: &str) -> Uuid {
        let uuid = Uuid::new_v4();
        self.owners
            .0
            .lock()
            .unwrap()
            .insert(uuid, project.to_owned());
        self.items
            .send(Item::Watchdog(WatchdogEvent {
                domain: DomainId {
                    uuid,
                    name: format!("instance-{}", &uuid.to_string()[..8]),
                },
                action: Enum::Known(WatchdogAction::Reset),
                received_at: SystemTime::now(),
                seq: 1,
                generation: 1,
                origin: Origin::Live,
                episode: Uuid::new_v4(),
                run_id: Some(1),
            }))
            .unwrap();
        uuid
    }

    fn status(&self, name: &str) -> DestinationStatus {
        self.running
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no destination {name}"))
    }

    /// Whether the agent still runs every core task.
    async fn alive(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(600), self.running.failed())
            .await
            .is_err()
    }
}

fn secret(s: &str) -> Secret {
    Secret::parse(s).unwrap()
}

/// One destination per webhook endpoint, as `wdguard watch` builds them.
fn webhook_destinations(config: WebhookConfig) -> Vec<Destination> {
    WebhookNotifier::split(config)
        .unwrap()
        .into_iter()
        .map(|e| {
            let (name, kind, scope) = match &e.project {
                None => ("ops".to_owned(), DestinationKind::Operator, Scope::All),
                Some(p) => (
                    format!("{p} {}", e.shown),
                    DestinationKind::Project,
                    Scope::Project(p.clone()),
                ),
            };
            let n: Arc<dyn Notifier> = Arc::new(e.notifier);
            Destination::new(name, kind, scope, n).key(e.fingerprint)
        })
        .collect()
}

fn has(got: &[Received], path: &str, uuid: Uuid) -> bool {
    let uuid = uuid.to_string();
    got.iter()
        .any(|r| r.path == path && r.instance_uuid() == uuid)
}

/// Fires B's guest and returns how long until its own endpoint has it.
async fn b_latency(agent: &Harness, receiver: &Receiver) -> Duration {
    let t0 = Instant::now();
    let b = agent.fire(B);
    let got = receiver
        .wait_for(Duration::from_secs(10), |got| has(got, "/b", b))
        .await;
    assert!(has(&got, "/b", b), "project B's notification never arrived");
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_endpoints_of_one_project_delay_no_other_project() {
    let receiver = Receiver::start_with(OPS_SECRET, &[("/b", SECRET_B)])
        .await
        .unwrap();
    let mut hostiles = Vec::new();
    for b in Behaviour::ALL {
        hostiles.push(Hostile::start(b).await.unwrap());
    }
    let mut config = WebhookConfig::default()
        .with_operator(Endpoint::new(receiver.url("/ops"), [secret(OPS_SECRET)]))
        .with_project(B, Endpoint::new(receiver.url("/b"), [secret(SECRET_B)]));
    for h in &hostiles {
        config = config.with_project(A, Endpoint::new(h.url(), [secret(SECRET_A)]));
    }
    let mut agent = Harness::start(webhook_destinations(config), |b| b).await;

    // Project A's guests fire 20 times: every hostile endpoint gets work.
    let fired: Vec<Uuid> = (0..20).map(|_| agent.fire(A)).collect();
    let got = receiver
        .wait_for(Duration::from_secs(10), |got| {
            fired.iter().all(|u| has(got, "/ops", *u))
        })
        .await;
    assert!(
        fired.iter().all(|u| has(&got, "/ops", *u)),
        "the operator has every firing"
    );
    // Let the hostile endpoints do their worst (hang, 503, reset, TLS...).
    tokio::time::sleep(Duration::from_secs(2)).await;

    for _ in 0..3 {
        let took = b_latency(&agent, &receiver).await;
        eprintln!("project B notified in {took:?}");
        assert!(took < Duration::from_secs(1), "project B waited {took:?}");
    }
    assert!(
        !receiver
            .accepted()
            .iter()
            .any(|r| r.path != "/b" && r.path != "/ops")
    );

    let by = |b: Behaviour| {
        let url = hostiles.iter().find(|h| h.behaviour == b).unwrap().url();
        agent.status(&format!("{A} {}", wd_notify_webhook::display_url(url)))
    };
    let hang = by(Behaviour::Hang);
    assert!(hang.backlog > 0 && hang.delivered == 0, "{hang:?}");
    let huge = by(Behaviour::HugeRetryAfter);
    assert!(huge.failed > 0 && huge.backlog > 0, "{huge:?}");
    assert!(
        huge.last_error.as_deref().unwrap().contains("503"),
        "{huge:?}"
    );
    let down = by(Behaviour::Unavailable);
    assert!(down.failed > 0 && down.backlog > 0, "{down:?}");
    let reset = by(Behaviour::Reset);
    assert!(reset.failed > 0 && reset.backlog > 0, "{reset:?}");
    let tls = by(Behaviour::BadTls);
    assert!(tls.failed > 0 && tls.backlog > 0, "{tls:?}");
    // The cause chain reaches the certificate problem.
    let tls_error = tls.last_error.unwrap().to_lowercase();
    assert!(tls_error.contains("certificate"), "{tls_error}");
    let gone = by(Behaviour::Gone);
    assert!(
        gone.dropped_permanent > 0 && gone.delivered == 0,
        "{gone:?}"
    );
    let slow = by(Behaviour::SlowBody);
    assert_eq!(
        slow.delivered, 20,
        "a 200 is delivered, body or not: {slow:?}"
    );

    assert!(agent.alive().await, "every core task still runs");
    let took = b_latency(&agent, &receiver).await;
    assert!(took < Duration::from_secs(1), "project B waited {took:?}");
    agent.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_worker_is_survived_and_the_others_keep_delivering() {
    let receiver = Receiver::start_with(OPS_SECRET, &[("/b", SECRET_B)])
        .await
        .unwrap();
    let config = WebhookConfig::default()
        .with_operator(Endpoint::new(receiver.url("/ops"), [secret(OPS_SECRET)]))
        .with_project(B, Endpoint::new(receiver.url("/b"), [secret(SECRET_B)]));
    let mut agent = Harness::start(webhook_destinations(config), |b| b).await;
    assert!(agent.running.router().inject_worker_panic("ops"));
    let took = b_latency(&agent, &receiver).await;
    assert!(took < Duration::from_secs(1), "project B waited {took:?}");
    let b = agent.fire(B);
    let got = receiver
        .wait_for(Duration::from_secs(10), |got| has(got, "/ops", b))
        .await;
    assert!(has(&got, "/ops", b), "the restarted worker delivers");
    let ops = agent.status("ops");
    assert_eq!(ops.worker_restarts, 1, "{ops:?}");
    assert!(agent.alive().await);
    agent.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pipeline_task_is_reported_as_a_core_failure() {
    let receiver = Receiver::start(OPS_SECRET).await.unwrap();
    let config = WebhookConfig::default()
        .with_operator(Endpoint::new(receiver.url("/ops"), [secret(OPS_SECRET)]));
    let mut agent = Harness::start(webhook_destinations(config), |b| {
        b.fault_pipeline_panic_after(Duration::from_millis(300))
    })
    .await;
    let why = tokio::time::timeout(Duration::from_secs(10), agent.running.failed())
        .await
        .expect("the death is reported");
    assert!(why.contains("pipeline task panicked"), "{why}");
    agent.running.shutdown().await;
}

/// Starts RabbitMQ again when dropped, should a test fail while it is down.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        if !wd_testkit::RabbitMq::is_up()
            && let Err(e) = wd_testkit::RabbitMq::start()
        {
            eprintln!("could not start RabbitMQ again: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_broker_outage_does_not_delay_webhooks() {
    let Some(rabbit) = wd_testkit::rabbitmq() else {
        return;
    };
    let _restart = RestartBroker;
    let receiver = Receiver::start(OPS_SECRET).await.unwrap();
    let exchange = wd_testkit::unique_name("wd-outage");
    let topic = wd_testkit::unique_name("wd-outage-topic");
    let amqp = wd_notify_amqp::AmqpConfig::new(wd_notify_amqp::AmqpUrl::new(rabbit.url()).unwrap())
        .with_exchange(exchange.clone())
        .with_topic(topic.clone())
        .with_format(wd_notify_amqp::NotificationFormat::Versioned)
        // A bound queue takes what is published, as `wdguard watch` sets it.
        .with_declare_queue(true)
        .with_reconnect(Duration::from_millis(200), Duration::from_secs(1));
    let amqp = wd_notify_amqp::AmqpNotifier::new(amqp).unwrap();
    let queues: Vec<String> = amqp.routing_keys().into_iter().map(str::to_owned).collect();
    let bus: Arc<dyn Notifier> = Arc::new(amqp);
    let mut destinations = webhook_destinations(
        WebhookConfig::default()
            .with_operator(Endpoint::new(receiver.url("/ops"), [secret(OPS_SECRET)])),
    );
    destinations.push(Destination::new("bus", DestinationKind::Bus, Scope::All, bus).key("bus"));
    let mut agent = Harness::start(destinations, |b| {
        b.queue(queue().attempt_timeout(Duration::from_secs(5)))
    })
    .await;

    let first = agent.fire(B);
    receiver
        .wait_for(Duration::from_secs(10), |got| has(got, "/ops", first))
        .await;
    let t0 = Instant::now();
    while agent.status("bus").delivered < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the bus never got the first: {:?}",
            agent.status("bus")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::task::spawn_blocking(move || rabbit.stop())
        .await
        .unwrap();
    assert!(!wd_testkit::RabbitMq::is_up(), "the broker is down");
    for _ in 0..5 {
        let t0 = Instant::now();
        let u = agent.fire(B);
        let got = receiver
            .wait_for(Duration::from_secs(10), |got| has(got, "/ops", u))
            .await;
        assert!(has(&got, "/ops", u));
        let took = t0.elapsed();
        eprintln!("webhook during the broker outage: {took:?}");
        assert!(took < Duration::from_secs(1), "the webhook waited {took:?}");
    }
    // All five wait in the bus's own queue. Each queue takes a notification
    // on its own, so the webhook's may have delivered the fifth before the
    // bus's queue has written it down: wait for that, briefly.
    let t0 = Instant::now();
    loop {
        let bus = agent.status("bus");
        if bus.backlog == 5 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{bus:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(agent.alive().await);

    let started = tokio::task::spawn_blocking(wd_testkit::RabbitMq::start)
        .await
        .unwrap();
    assert!(started.is_ok(), "broker restart failed: {started:?}");
    let t0 = Instant::now();
    while agent.status("bus").delivered < 6 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the bus did not catch up: {:?}",
            agent.status("bus")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the bus caught up {:?} after the broker returned",
        t0.elapsed()
    );
    agent.running.shutdown().await;

    // Leave the shared broker as we found it.
    leave_broker_clean(&queues, &exchange).await;
}

/// Records the event ids its inner notifier (the bus) accepted.
struct Accepted<N> {
    inner: N,
    ids: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

#[async_trait::async_trait]
impl<N: Notifier> Notifier for Accepted<N> {
    async fn notify(&self, n: &wd_notify::Notification) -> Result<(), wd_notify::NotifyError> {
        self.inner.notify(n).await?;
        self.ids.lock().unwrap().insert(n.instance.uuid);
        Ok(())
    }
}

/// Noisy neighbour: during a broker outage, one project fires ten times
/// the bus queue's bound; four other projects fire once each in the middle
/// of the flood. The bus queue evicts only the flooding project's own
/// notifications: when the broker returns, every other project's
/// notification reaches the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_flooding_project_evicts_only_its_own_from_the_bus_queue() {
    let Some(rabbit) = wd_testkit::rabbitmq() else {
        return;
    };
    let _restart = RestartBroker;
    let receiver = Receiver::start(OPS_SECRET).await.unwrap();
    let exchange = wd_testkit::unique_name("wd-noisy");
    let topic = wd_testkit::unique_name("wd-noisy-topic");
    let amqp = wd_notify_amqp::AmqpConfig::new(wd_notify_amqp::AmqpUrl::new(rabbit.url()).unwrap())
        .with_exchange(exchange.clone())
        .with_topic(topic.clone())
        .with_format(wd_notify_amqp::NotificationFormat::Versioned)
        .with_declare_queue(true)
        .with_reconnect(Duration::from_millis(200), Duration::from_secs(1));
    let amqp = wd_notify_amqp::AmqpNotifier::new(amqp).unwrap();
    let queues: Vec<String> = amqp.routing_keys().into_iter().map(str::to_owned).collect();
    let bus = Arc::new(Accepted {
        inner: amqp,
        ids: Default::default(),
    });
    const BOUND: usize = 20;
    let mut destinations = webhook_destinations(
        WebhookConfig::default()
            .with_operator(Endpoint::new(receiver.url("/ops"), [secret(OPS_SECRET)])),
    );
    destinations.push(
        Destination::new(
            "bus",
            DestinationKind::Bus,
            Scope::All,
            bus.clone() as Arc<dyn Notifier>,
        )
        .key("bus")
        .queue(
            QueueConfig::default()
                .retry_delays(Duration::from_millis(200), Duration::from_secs(1))
                .max_entries(BOUND),
        ),
    );
    let mut agent = Harness::start(destinations, |b| {
        b.queue(queue().attempt_timeout(Duration::from_secs(2)))
    })
    .await;
    tokio::task::spawn_blocking(move || rabbit.stop())
        .await
        .unwrap();
    assert!(!wd_testkit::RabbitMq::is_up(), "the broker is down");
    let mut quiet = Vec::new();
    for i in 0..BOUND * 10 {
        agent.fire(A);
        if i % 50 == 25 {
            quiet.push(agent.fire(&format!("quiet-project-{i}")));
        }
    }
    // Everything is written down (the bus queue is at its bound).
    let t0 = Instant::now();
    while agent.status("bus").dropped_full < (BOUND * 10 + quiet.len() - BOUND) as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{:?}",
            agent.status("bus")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = tokio::task::spawn_blocking(wd_testkit::RabbitMq::start)
        .await
        .unwrap();
    assert!(started.is_ok(), "broker restart failed: {started:?}");
    let t0 = Instant::now();
    while agent.status("bus").backlog > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the bus did not catch up: {:?}",
            agent.status("bus")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = bus.ids.lock().unwrap().clone();
    for u in &quiet {
        assert!(
            got.contains(u),
            "a quiet project's notification was evicted"
        );
    }
    assert_eq!(got.len(), BOUND, "the flood kept the rest of the bound");
    assert!(agent.alive().await);
    agent.running.shutdown().await;
    leave_broker_clean(&queues, &exchange).await;
}

/// The real `wdguard watch` process (on libvirt's in-process `test:///default`
/// driver, so no shared daemon is touched) exits non-zero with one clear line
/// when a core task dies, here by the debug builds' fault hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wdguard_watch_exits_non_zero_when_a_core_task_dies() {
    let dir = Scratch::new("wd-core-death");
    let config = dir.0.join("wd.toml");
    std::fs::write(
        &config,
        format!(
            "connect = \"test:///default\"\nnotify = [\"log\"]\nspool = \"{}\"\n",
            dir.0.join("spool").display()
        ),
    )
    .unwrap();
    let log = dir.0.join("agent.log");
    let mut agent = wd_e2e::agent::AgentProcess::start_with(
        &["--config".as_ref(), config.as_os_str()],
        &[
            ("WD_WEBHOOK_SECRET", OPS_SECRET),
            ("WD_TEST_FAULT", "pipeline-panic-after-ms=1500"),
        ],
        &log,
    )
    .unwrap();
    agent
        .wait_log(&["wdguard watch started"], Duration::from_secs(20))
        .await
        .unwrap();
    let code = agent.wait_exit(Duration::from_secs(20)).unwrap();
    let text = agent.log_text();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; log:\n{text}"
    );
    assert_eq!(
        agent.log_count(&["ERROR", "core task died", "pipeline task panicked"]),
        1,
        "one clear line; log:\n{text}"
    );
}

/// Leaves the shared broker as the test found it: deletes its queues and
/// exchange (best effort).
async fn leave_broker_clean(queues: &[String], exchange: &str) {
    if let Ok(conn) = lapin::Connection::connect(
        wd_testkit::RabbitMq::URL,
        lapin::ConnectionProperties::default(),
    )
    .await
        && let Ok(ch) = conn.create_channel().await
    {
        for queue in queues {
            let _ = ch
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = ch
            .exchange_delete(
                exchange.into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
}
