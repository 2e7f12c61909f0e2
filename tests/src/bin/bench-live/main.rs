//! Live measurements behind `cargo xtask bench` (parts 3 and 4), on real
//! guests under the system libvirtd, with the `wdguard watch` agent as a real
//! process. Prints one JSON object per line for each figure:
//! `{"name":…,"value":…,"unit":…,"method":…}`; progress goes to stderr.
//!
//! `bench-live latency`: a `reset` guest fires again and again while
//! `virsh event --event watchdog --loop --timestamp` and the agent listen to
//! the same libvirtd. For each firing: the time from virsh's timestamp to
//! the receipt of our notification by a loopback webhook receiver and by a
//! RabbitMQ consumer (each timestamps on receipt).
//!
//! `bench-live resources`: the agent's RSS and CPU while idle with 0, 10 and
//! 100 defined (inactive) domains, then during a storm of 3 `reset` guests.
//!
//! `bench-live cpu [FIRINGS]` (default 100): first the floors (a bare
//! loopback HTTP request to the same receiver, an append and `fdatasync`);
//! then, with the spool on and again with it off, `reset` guests fire until
//! `virsh event` has counted that many firings, each one announced (a
//! 1 ms coalesce window): each notification's time from the listener's
//! receipt (its CloudEvent `time`) to the endpoint's receipt, the agent's
//! CPU per firing from the scheduler's nanoseconds
//! (`/proc/PID/task/*/schedstat`), and the per-stage latency histograms its
//! `/metrics` kept (`wd_stage_seconds`).
//!
//! It expects a running system libvirtd, RabbitMQ on 127.0.0.1:5672, the
//! guest assets and `wdguard` built next to this binary (the xtask does all
//! that).

mod last_mile;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wd_e2e::agent::AgentProcess;
use wd_e2e::bench::{
    clock_ticks, cpu_ns, cpu_ns_by_thread, cpu_ns_delta_by_name, cpu_ticks, figure, latencies_ms,
    median, now, p99, status_kib,
};
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::virsh::{EventWatch, Guest, virsh};
use wd_notify_webhook::{Secret, sign};
use wd_testkit::guest::{GuestAssets, GuestSpec, NovaOwner};
use wd_testkit::{Libvirtd, RabbitMq};

const SECRET: &str = "whsec_YmVuY2gtb25seS1rZXktZG8tbm90LXVzZS1pbi1wcm9kdWN0aW9u";
const EXCHANGE: &str = "wd-bench";
/// Firings measured for the latency figures.
const FIRINGS: usize = 8;
/// The idle measurement window.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Firings measured for the CPU per firing.
const CPU_FIRINGS: usize = 100;
/// Reset guests firing at once for it.
const CPU_GUESTS: usize = 4;

/// How long `bench-live cpu` measures the agent's idle CPU first, in s.
const IDLE_WINDOW_SECS: u64 = 10;
/// How long the reset storm runs.
const STORM: Duration = Duration::from_secs(30);

/// A receipt: when, the domain name it concerns, and its firing count.
#[derive(Debug, Clone)]
struct Receipt {
    at: f64,
    domain: String,
    count: u64,
}

type Receipts = Arc<Mutex<Vec<Receipt>>>;

fn lock(r: &Receipts) -> std::sync::MutexGuard<'_, Vec<Receipt>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// The end-to-end tests' webhook receiver (it verifies each signature and
/// timestamps each request on arrival) and the URL of its operator endpoint.
async fn webhook() -> anyhow::Result<(Receiver, String)> {
    let receiver = Receiver::start(SECRET).await?;
    let url = receiver.url("/operator");
    Ok((receiver, url))
}

/// What the webhook receiver accepted so far, as receipts.
fn webhook_receipts(receiver: &Receiver) -> Vec<Receipt> {
    receiver
        .accepted()
        .iter()
        .map(|r| Receipt {
            at: r
                .received_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            domain: r.domain_name().to_owned(),
            count: r.count(),
        })
        .collect()
}

/// A RabbitMQ consumer bound to every topic of the bench exchange; it
/// timestamps each delivery on receipt. Returns the connection to keep.
async fn amqp_consumer(receipts: Receipts) -> anyhow::Result<Connection> {
    let conn = Connection::connect(RabbitMq::URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    ch.queue_bind(
        queue.name().as_str().into(),
        EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            queue.name().as_str().into(),
            "wd-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = now();
            // The oslo envelope carries the payload as a JSON string.
            let outer: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
            let inner: Value = outer["oslo.message"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(outer);
            let text = inner.to_string();
            let domain = find_domain(&text);
            lock(&receipts).push(Receipt {
                at,
                domain,
                count: 1,
            });
        }
    });
    Ok(conn)
}

/// The first guest name of this bench (`wdb-…`) in a message.
fn find_domain(text: &str) -> String {
    text.find("wdb-")
        .map(|i| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's configuration file.
fn config(
    dir: &Path,
    connect: &str,
    notify: &[String],
    window_secs: f64,
) -> anyhow::Result<PathBuf> {
    config_with(dir, connect, notify, window_secs, true)
}

/// [`config`], with the spool on (`dir/spool`) or off (queues in memory).
fn config_with(
    dir: &Path,
    connect: &str,
    notify: &[String],
    window_secs: f64,
    spool: bool,
) -> anyhow::Result<PathBuf> {
    let notify: Vec<String> = notify.iter().map(|n| format!("{n:?}")).collect();
    let spool = if spool {
        format!("spool = {:?}\n", dir.join("spool").display().to_string())
    } else {
        String::new()
    };
    let text = format!(
        "connect = {connect:?}\nhost = \"bench-host\"\nnotify = [{}]\n{spool}\n[amqp]\nexchange = {EXCHANGE:?}\n\n[coalesce]\nwindow_secs = {window_secs}\n",
        notify.join(", "),
    );
    let path = dir.join("watch.toml");
    std::fs::write(&path, text)?;
    // A broker URL may carry a password: the agent wants the file private.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(path)
}

fn owner(i: usize) -> NovaOwner {
    NovaOwner {
        display_name: format!("bench-{i}"),
        flavor: "m1.tiny".into(),
        user_id: "9d3c2b1a0f4e4c5d8a7b6e5f4d3c2b1a".into(),
        project_id: "1f2e3d4c5b6a49788695a4b3c2d1e0f9".into(),
    }
}

fn work_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = wd_testkit::target_dir().join("wd-bench").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn latency(assets: &GuestAssets) -> anyhow::Result<()> {
    let dir = work_dir("latency")?;
    let bus: Receipts = Arc::default();
    let (hooks, url) = webhook().await?;
    let _conn = amqp_consumer(bus.clone()).await?;
    let virsh_events = EventWatch::start("watchdog")?;
    let amqp = "amqp://guest@127.0.0.1:5672/%2f".to_owned();
    // A window far below the firing interval: every firing is announced.
    let cfg = config(&dir, Libvirtd::URI, &[url, amqp], 0.001)?;
    let mut agent = start_agent(&cfg, &dir)?;
    agent.wait_ready(Duration::from_secs(30)).await?;

    let name = wd_testkit::unique_name("wdb-lat");
    let guest = Guest::define_and_start(
        GuestSpec::new(&name, "reset").with_nova(owner(0)),
        assets,
        None,
    )?;
    eprintln!("bench-live: waiting for {FIRINGS} firings of {name}");
    let deadline = Instant::now() + Duration::from_secs(180);
    while virsh_events.of(&name).len() < FIRINGS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(guest);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let firings = virsh_events.of(&name);
    if firings.len() < 5 {
        bail!("only {} firings of {name} within 180 s", firings.len());
    }
    let method = format!(
        "one reset guest (TCG) under the system libvirtd fired {} times; per firing, receipt time minus the timestamp `virsh event --event watchdog --loop --timestamp` printed (ms resolution); agent `wdguard watch` with the spool on (group commit, fsync before delivery), coalesce window 1 ms",
        firings.len()
    );
    for (label, receipts, how) in [
        (
            "webhook",
            webhook_receipts(&hooks),
            "loopback webhook receiver (axum, signature verified) timestamps on receipt",
        ),
        (
            "amqp",
            lock(&bus).clone(),
            "RabbitMQ consumer on 127.0.0.1 timestamps each delivery",
        ),
    ] {
        let got: Vec<(f64, &str)> = receipts
            .iter()
            .filter(|r| r.domain == name)
            .map(|r| (r.at, r.domain.as_str()))
            .collect();
        let mut l = latencies_ms(&firings, &got);
        let worst = l.iter().copied().fold(f64::NAN, f64::max);
        let matched = l.len();
        figure(
            &format!("latency_vs_virsh_{label}_median"),
            median(&mut l),
            "ms",
            &format!("{method}; {how}; median of {matched} matched firings"),
        );
        figure(
            &format!("latency_vs_virsh_{label}_worst"),
            worst,
            "ms",
            &format!("{method}; {how}; worst of {matched} matched firings"),
        );
        figure(
            &format!("latency_{label}_notified_firings"),
            matched as f64,
            "firings",
            &format!(
                "firings (of {}) with a {label} notification within 2 s",
                firings.len()
            ),
        );
    }
    agent.terminate(Duration::from_secs(10))?;
    Ok(())
}

fn start_agent(cfg: &Path, dir: &Path) -> anyhow::Result<AgentProcess> {
    AgentProcess::start(cfg, SECRET, &dir.join("agent.log"))
}

/// Defines `n` inactive domains (no watchdog, never started).
fn define_inactive(n: usize, assets: &GuestAssets, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = wd_testkit::unique_name("wdb-idle");
        let mut spec = GuestSpec::new(&name, "pause").with_nova(owner(i));
        spec.action = None;
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(&path, spec.domain_xml(assets))?;
        virsh(&["define", &path.display().to_string()])?;
        names.push(name);
    }
    Ok(names)
}

/// A libvirt test-driver node file with `n` running Nova-style domains.
fn test_node(n: usize, dir: &Path) -> anyhow::Result<String> {
    let mut xml = String::from("<node>\n");
    for i in 0..n {
        xml += &format!(
            r#"  <domain type="test">
    <name>wdb-test-{i}</name>
    <uuid>6a1b1fd3-54f0-4bdc-8d0a-{i:012x}</uuid>
    <memory>262144</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <metadata>
      <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:name>bench-{i}</nova:name>
        <nova:owner>
          <nova:user uuid="9d3c2b1a0f4e4c5d8a7b6e5f4d3c2b1a">alice</nova:user>
          <nova:project uuid="1f2e3d4c5b6a49788695a4b3c2d1e0f9">web</nova:project>
        </nova:owner>
      </nova:instance>
    </metadata>
  </domain>
"#
        );
    }
    xml += "</node>\n";
    let path = dir.join(format!("node-{n}.xml"));
    std::fs::write(&path, xml)?;
    Ok(format!("test://{}", path.display()))
}

/// Runs the agent on `connect` and measures it idle: (VmRSS KiB, RssAnon
/// KiB, CPU ms over the window).
async fn idle_agent(dir: &Path, connect: &str, url: &str) -> anyhow::Result<(u64, u64, f64)> {
    let cfg = config(dir, connect, &[url.to_owned()], 60.0)?;
    let mut agent = start_agent(&cfg, dir)?;
    let pid = agent.pid();
    agent.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let ticks = cpu_ticks(pid)? - t0;
    let rss = status_kib(pid, "VmRSS:")?;
    let anon = status_kib(pid, "RssAnon:")?;
    agent.terminate(Duration::from_secs(10))?;
    Ok((rss, anon, ticks as f64 * 1000.0 / clock_ticks()))
}

fn undefine(names: &[String]) {
    for n in names {
        let _ = virsh(&["undefine", n]);
    }
}

async fn resources(assets: &GuestAssets) -> anyhow::Result<()> {
    let tck = clock_ticks();
    let dir = work_dir("resources")?;
    let (hooks, url) = webhook().await?;
    let others = virsh(&["list", "--all", "--name"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();

    let mut defined: Vec<String> = Vec::new();
    let mut idle = Vec::new();
    for n in [0usize, 10, 100] {
        defined.extend(define_inactive(n - defined.len(), assets, &dir)?);
        let measured = idle_agent(&dir, Libvirtd::URI, &url).await;
        let (rss, anon, cpu_ms) = match measured {
            Ok(m) => m,
            Err(e) => {
                undefine(&defined);
                return Err(e);
            }
        };
        let method = format!(
            "`wdguard watch` on qemu:///system with {n} defined, inactive Nova-style domains of ours ({others} other domains present), spool on, one webhook backend; after the catch-up listing and 2 s of settling: utime+stime from /proc/PID/stat over {} s, VmRSS from /proc/PID/status at the end",
            IDLE_WINDOW.as_secs()
        );
        figure(
            &format!("agent_idle_{n}_domains_rss"),
            rss as f64 / 1024.0,
            "MiB",
            &method,
        );
        figure(
            &format!("agent_idle_{n}_domains_rss_anon"),
            anon as f64 / 1024.0,
            "MiB",
            &format!(
                "{method}; RssAnon: private memory, the rest of VmRSS is the binary and shared libraries"
            ),
        );
        figure(
            &format!("agent_idle_{n}_domains_cpu"),
            cpu_ms,
            "ms CPU per 10 s",
            &method,
        );
        idle.push((n, rss, anon));
    }
    undefine(&defined);
    // The same with libvirt's test driver: running domains, and no other
    // client's guests or events to disturb the measurement.
    for n in [0usize, 10, 100] {
        let uri = test_node(n, &dir)?;
        let (rss, anon, cpu_ms) = idle_agent(&dir, &uri, &url).await?;
        let method = format!(
            "`wdguard watch` on libvirt's test driver (`test:///FILE`, in-process, no daemon) with {n} running Nova-style domains, spool on, one webhook backend; after the catch-up listing and 2 s of settling: utime+stime over {} s, VmRSS at the end",
            IDLE_WINDOW.as_secs()
        );
        figure(
            &format!("agent_idle_test_driver_{n}_domains_rss"),
            rss as f64 / 1024.0,
            "MiB",
            &method,
        );
        figure(
            &format!("agent_idle_test_driver_{n}_domains_rss_anon"),
            anon as f64 / 1024.0,
            "MiB",
            &format!(
                "{method}; RssAnon (the test driver keeps its domains inside the agent's process)"
            ),
        );
        figure(
            &format!("agent_idle_test_driver_{n}_domains_cpu"),
            cpu_ms,
            "ms CPU per 10 s",
            &method,
        );
    }
    if let (Some((_, r0, a0)), Some((_, r100, a100))) = (idle.first(), idle.last()) {
        figure(
            "agent_rss_growth_0_to_100_domains",
            (*r100 as f64 - *r0 as f64) / 1024.0,
            "MiB",
            "VmRSS with 100 domains minus VmRSS with 0, qemu:///system (noise is about ±0.5 MiB)",
        );
        figure(
            "agent_rss_anon_growth_0_to_100_domains",
            (*a100 as f64 - *a0 as f64) / 1024.0,
            "MiB",
            "RssAnon with 100 domains minus RssAnon with 0, qemu:///system",
        );
    }

    // The storm: 3 reset guests firing for 30 s.
    let virsh_events = EventWatch::start("watchdog")?;
    // The default window: every repeat within the storm is folded, and the
    // follow-ups go out when the agent is stopped (it flushes them).
    let window = 60.0;
    let cfg = config(&dir, Libvirtd::URI, std::slice::from_ref(&url), window)?;
    let mut agent = start_agent(&cfg, &dir)?;
    let pid = agent.pid();
    agent.wait_ready(Duration::from_secs(30)).await?;
    let guests = reset_guests("wdb-storm", 3, assets)?;
    let names: Vec<String> = guests.iter().map(|g| g.spec.name.clone()).collect();
    // The window starts with the first firing, not with the guests' boot.
    let boot = Instant::now();
    while names.iter().all(|n| virsh_events.of(n).is_empty())
        && boot.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = cpu_ticks(pid)?;
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < STORM {
        peak = peak.max(status_kib(pid, "VmRSS:")?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(guests);
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid)? - t0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    peak = peak.max(status_kib(pid, "VmRSS:")?);
    // SIGTERM flushes the folded repeats as follow-ups before it exits.
    agent.terminate(Duration::from_secs(20))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let firings: usize = names.iter().map(|n| virsh_events.of(n).len()).sum();
    let got: Vec<Receipt> = webhook_receipts(&hooks)
        .into_iter()
        .filter(|r| names.contains(&r.domain))
        .collect();
    let folded: u64 = got.iter().map(|r| r.count).sum();
    let method = format!(
        "3 reset guests (TCG) firing for {elapsed:.0} s under the system libvirtd, agent with spool on and the default {window} s coalesce window, stopped with SIGTERM after the storm (which flushes folded repeats as follow-ups); firings counted by `virsh event`, notifications by the webhook receiver"
    );
    figure("storm_firings", firings as f64, "firings", &method);
    figure(
        "storm_notifications",
        got.len() as f64,
        "notifications",
        &method,
    );
    figure(
        "storm_occurrences_reported",
        folded as f64,
        "firings",
        &format!(
            "{method}; sum of occurrences.count over the notifications (should equal the firings)"
        ),
    );
    figure(
        "storm_agent_cpu",
        ticks as f64 * 1000.0 / tck / elapsed * 100.0 / 1000.0,
        "% of one core",
        &format!("{method}; utime+stime over the storm"),
    );
    figure(
        "storm_agent_rss_peak",
        peak as f64 / 1024.0,
        "MiB",
        &format!("{method}; VmRSS sampled every 0.5 s"),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if !Libvirtd::is_up() || !RabbitMq::is_up() {
        bail!("needs the system libvirtd and RabbitMQ: run `cargo xtask services up`");
    }
    let assets = wd_testkit::guest::assets().context("no guest assets: run `cargo xtask guest`")?;
    if matches!(what.as_str(), "latency" | "all") {
        latency(&assets).await?;
    }
    if matches!(what.as_str(), "resources" | "all") {
        resources(&assets).await?;
    }
    if what == "floor" {
        let (hooks, url) = webhook().await?;
        last_mile::floors(&hooks, &url, false).await?;
    }
    if matches!(what.as_str(), "cpu" | "all") {
        let n = std::env::args()
            .nth(2)
            .map(|a| {
                a.parse()
                    .with_context(|| format!("a number of firings: `{a}`"))
            })
            .transpose()?
            .unwrap_or(CPU_FIRINGS);
        // The same firings' way with the spool on (fsync before the
        // hand-over) and off, one after the other; the floors first.
        let (hooks, url) = webhook().await?;
        last_mile::floors(&hooks, &url, false).await?;
        last_mile::cpu_per_firing(&assets, n, true).await?;
        last_mile::cpu_per_firing(&assets, n, false).await?;
    }
    Ok(())
}

/// `n` reset guests named `{prefix}{i}-…`, each with its own owner.
fn reset_guests(prefix: &str, n: usize, assets: &GuestAssets) -> anyhow::Result<Vec<Guest>> {
    (0..n)
        .map(|i| {
            let name = wd_testkit::unique_name(&format!("{prefix}{i}"));
            Guest::define_and_start(
                GuestSpec::new(&name, "reset").with_nova(owner(i)),
                assets,
                None,
            )
        })
        .collect()
}
