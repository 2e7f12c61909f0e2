//! Fleet-scale measurements behind `cargo xtask bench` (parts 5 and 6).
//! Prints one JSON object per line for each figure:
//! `{"name":…,"value":…,"unit":…,"method":…}`; progress goes to stderr.
//!
//! * `bench-scale catchup`: on the system libvirtd, with 100, 1,000 and
//!   5,000 defined Nova-style domains (inactive, plus a few guests paused by
//!   their watchdog): `wdguard watch`'s time from connect to catch-up done,
//!   and its RssAnon. Defines and undefines thousands of domains on the
//!   shared daemon: run it under `flock /tmp/wd-real.lock`.
//! * `bench-scale churn`: in one process, the runtime listening to libvirt's
//!   test driver while 10,000 domains are defined, started, destroyed and
//!   undefined through it: RssAnon before and after.
//! * `bench-scale fanout`: 1,000 projects, each with its own webhook
//!   endpoint on a loopback receiver, one firing each through the runtime:
//!   notifications per second and the p99 from firing to receipt.
//! * `bench-scale masakari`: `wdguard watch` and OpenStack's
//!   `masakari-instancemonitor` side by side (see `masakari.rs`).
//! * `bench-scale baseline`: `wdguard watch` and the Python baseline agent
//!   (`tests/fixtures/baseline_agent.py`) side by side on the system
//!   libvirtd, a real guest firing: latency after `virsh event`, RSS, idle
//!   CPU, CPU per firing. Under the lock too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use wd_e2e::agent::AgentProcess;
use wd_e2e::bench::{figure, median, now, status_kib};
use wd_e2e::virsh::{Guest, virsh};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestAssets, GuestSpec, NovaOwner};

const SECRET: &str = "whsec_YmVuY2gtb25seS1rZXktZG8tbm90LXVzZS1pbi1wcm9kdWN0aW9u";
const PROJECT: &str = "1f2e3d4c5b6a49788695a4b3c2d1e0f9";
/// Agent runs per catch-up size (the median is reported).
const CATCHUP_RUNS: usize = 3;
/// Firings measured side by side with the baseline.
const FIRINGS: usize = 6;
/// The idle measurement window.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn rss_anon_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(status_kib(pid, "RssAnon:")? as f64 / 1024.0)
}

/// VmRSS and RssAnon of each of `pids`, in MiB.
fn memory_mib(pids: &[(&str, u32)]) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let rss = pids
        .iter()
        .map(|(_, p)| status_kib(*p, "VmRSS:").map(|k| k as f64 / 1024.0))
        .collect::<Result<_, _>>()?;
    let anon = pids
        .iter()
        .map(|(_, p)| rss_anon_mib(*p))
        .collect::<Result<_, _>>()?;
    Ok((rss, anon))
}

fn work_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = wd_testkit::target_dir().join("wd-bench").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn owner(i: usize, project: &str) -> NovaOwner {
    NovaOwner {
        display_name: format!("bench-{i}"),
        flavor: "m1.tiny".into(),
        user_id: "9d3c2b1a0f4e4c5d8a7b6e5f4d3c2b1a".into(),
        project_id: project.into(),
    }
}

/// A receipt: when, the domain name it concerns, and the first segment of
/// the path it was posted to (which agent, or which project).
#[derive(Debug, Clone)]
struct Receipt {
    at: f64,
    domain: String,
    who: String,
}

type Receipts = Arc<Mutex<Vec<Receipt>>>;

fn lock(r: &Receipts) -> std::sync::MutexGuard<'_, Vec<Receipt>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// A loopback receiver for any path; it timestamps each POST on receipt and
/// reads the domain name from our CloudEvents body (`data.domain.name`) or
/// the baseline's flat body (`domain`). Returns its base URL.
async fn receiver(receipts: Receipts) -> anyhow::Result<String> {
    let handler = move |UrlPath(path): UrlPath<String>, body: Bytes| {
        let at = now();
        let receipts = receipts.clone();
        async move {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return StatusCode::BAD_REQUEST;
            };
            let domain = v["data"]["domain"]["name"]
                .as_str()
                .or(v["domain"].as_str())
                .unwrap_or("")
                .to_owned();
            let who = path.split('/').next().unwrap_or("").to_owned();
            lock(&receipts).push(Receipt { at, domain, who });
            StatusCode::NO_CONTENT
        }
    };
    let app = axum::Router::new().route("/{*path}", post(handler));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// The agent's configuration file.
fn agent_config(dir: &Path, connect: &str, url: &str) -> anyhow::Result<PathBuf> {
    let text = format!(
        "connect = {connect:?}\nhost = \"bench-host\"\nnotify = [{url:?}]\nspool = {:?}\n\n[coalesce]\nwindow_secs = 0.001\n",
        dir.join("spool").display().to_string(),
    );
    let path = dir.join("watch.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The value of `key=` on the last log line containing `needle`.
fn log_value(log: &str, needle: &str, key: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------- catch-up

/// Domains this bench defined, undefined when dropped.
struct Defined {
    conn: virt::connect::Connect,
    names: Vec<String>,
}

impl Defined {
    fn define(&mut self, xml: &str, name: &str) -> anyhow::Result<()> {
        self.conn
            .define_domain_xml(xml)
            .with_context(|| format!("define {name}"))?;
        self.names.push(name.to_owned());
        Ok(())
    }
}

impl Drop for Defined {
    fn drop(&mut self) {
        let started = Instant::now();
        for name in &self.names {
            if let Ok(d) = self.conn.lookup_domain_by_name(name) {
                let _ = d.undefine();
            }
        }
        eprintln!(
            "bench-scale: undefined {} domains in {:.1} s",
            self.names.len(),
            started.elapsed().as_secs_f64()
        );
    }
}

async fn catchup(assets: &GuestAssets) -> anyhow::Result<()> {
    let dir = work_dir("catchup")?;
    let receipts: Receipts = Arc::default();
    let url = format!("{}/operator", receiver(receipts.clone()).await?);
    let prefix = wd_testkit::unique_name("wdsc");
    let others = virsh(&["list", "--all", "--name"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    // Two real guests paused by their watchdog (TCG, 2 cores: two is what
    // the machine allows beside everything else).
    let mut guests = Vec::new();
    for i in 0..2 {
        let spec =
            GuestSpec::new(&format!("{prefix}-paused-{i}"), "pause").with_nova(owner(i, PROJECT));
        guests.push(Guest::define_and_start(spec, assets, None)?);
    }
    let mut paused = 0;
    for g in &guests {
        if g.wait_state("paused (watchdog)", Duration::from_secs(90))
            .contains("watchdog")
        {
            paused += 1;
        }
    }
    eprintln!("bench-scale: {paused} guests paused by their watchdog");
    let mut defined = Defined {
        conn: virt::connect::Connect::open(Some(Libvirtd::URI))?,
        names: Vec::new(),
    };
    let mut per_domain = Vec::new();
    for n in [100usize, 1_000, 5_000] {
        let t = Instant::now();
        while defined.names.len() < n {
            let i = defined.names.len();
            let name = format!("{prefix}-{i}");
            let mut spec = GuestSpec::new(&name, "pause").with_nova(owner(i, PROJECT));
            spec.action = None;
            defined.define(&spec.domain_xml(assets), &name)?;
        }
        eprintln!(
            "bench-scale: {n} domains defined ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let mut times = Vec::new();
        let mut anon = Vec::new();
        let mut xml = 0.0;
        for run in 0..CATCHUP_RUNS {
            let run_dir = dir.join(format!("{n}-{run}"));
            std::fs::create_dir_all(&run_dir)?;
            let cfg = agent_config(&run_dir, Libvirtd::URI, &url)?;
            let mut agent = AgentProcess::start(&cfg, SECRET, &run_dir.join("agent.log"))?;
            agent
                .wait_log(&["catch-up listing done"], Duration::from_secs(120))
                .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let log = agent.log_text();
            anon.push(rss_anon_mib(agent.pid())?);
            times.push(log_value(&log, "catch-up done", "duration_ms").context("no duration")?);
            xml = log_value(&log, "catch-up done", "xml_fetched").unwrap_or(f64::NAN);
            agent.terminate(Duration::from_secs(10))?;
        }
        let t = median(&mut times);
        per_domain.push(t / n as f64);
        let method = format!(
            "`wdguard watch` (release) on qemu:///system with {n} defined, inactive Nova-style domains of ours, {paused} guests of ours paused by their watchdog and {others} other domains; from the start of the connection attempt to the catch-up's last item queued, as the agent logs it (`catch-up done duration_ms`); median of {CATCHUP_RUNS} fresh agents; {xml} domain XMLs fetched"
        );
        figure(&format!("catchup_{n}_domains_ms"), t, "ms", &method);
        figure(
            &format!("catchup_{n}_domains_rss_anon"),
            median(&mut anon),
            "MiB",
            &format!("{method}; RssAnon from /proc/PID/status 1 s after the catch-up"),
        );
    }
    figure(
        "catchup_per_domain_ratio_1000_vs_100",
        per_domain[1] / per_domain[0],
        "ratio",
        "catch-up time per domain at 1,000 domains / at 100 (1.0 = linear; below 1 the fixed cost of connecting dominates)",
    );
    drop(defined);
    drop(guests);
    Ok(())
}

// ------------------------------------------------------------------- churn

fn test_domain_xml(i: usize, uuid: &str) -> String {
    format!(
        r#"<domain type="test"><name>wdsc-churn-{i}</name><uuid>{uuid}</uuid>
<memory>262144</memory><vcpu>1</vcpu><os><type>hvm</type></os>
<metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>churn-{i}</nova:name><nova:owner>
<nova:user uuid="9d3c2b1a0f4e4c5d8a7b6e5f4d3c2b1a">alice</nova:user>
<nova:project uuid="{PROJECT}">web</nova:project></nova:owner></nova:instance></metadata></domain>"#
    )
}

async fn churn() -> anyhow::Result<()> {
    use wd_compute::{Agent, NovaDirectory};
    const N: usize = 10_000;
    const WARMUP: usize = 500;
    wd_events::init_event_loop()?;
    let pid = std::process::id();
    let directory = Arc::new(NovaDirectory::new());
    let retire_after = wd_compute::DirectoryConfig::default().retire_after;
    let runtime = Agent::builder("bench-host")
        .listener(wd_events::ListenerConfig::default().uri("test:///default"))
        .directory(directory.clone())
        .destination((
            "log".to_owned(),
            Arc::new(wd_notify::LogNotifier::new()) as Arc<dyn wd_notify::Notifier>,
        ))
        .build()
        .start()
        .await?;
    let conn = virt::connect::Connect::open(Some("test:///default"))?;
    let cycle = |from: usize, to: usize| -> anyhow::Result<()> {
        for i in from..to {
            let uuid = format!("7a1b1fd3-54f0-4bdc-8d0a-{i:012x}");
            let dom = conn.define_domain_xml(&test_domain_xml(i, &uuid))?;
            dom.create()?;
            dom.destroy()?;
            dom.undefine()?;
        }
        Ok(())
    };
    // Warm up: allocator pools, libvirt's and the runtime's first-use state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cycle(0, WARMUP)?;
    tokio::time::sleep(retire_after + Duration::from_secs(2)).await;
    directory.stats();
    let start = rss_anon_mib(pid)?;
    // Two waves: the first shows what the process keeps after a churn (the
    // goal), the second whether a further churn grows it again (a leak) or
    // reuses what the allocator kept.
    let mut waves = Vec::new();
    for wave in 0..2 {
        let from = WARMUP + wave * N;
        let t = Instant::now();
        cycle(from, from + N)?;
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = directory.stats();
        let peak = rss_anon_mib(pid)?;
        // The retired entries' grace period passes; the next operation
        // forgets them.
        tokio::time::sleep(retire_after).await;
        let after = directory.stats();
        let end = rss_anon_mib(pid)?;
        waves.push((took, during, peak, after, end));
    }
    let _ = runtime.shutdown().await;
    let (took, during, peak, after, end) = waves[0];
    let end2 = waves[1].4;
    let method = format!(
        "one process: the runtime (listener on libvirt's test driver, pipeline, NovaDirectory with default bounds: retire after {} s) while {N} Nova-style domains are defined, started, destroyed and undefined through the same driver ({:.1} s); RssAnon from /proc/self/status after {WARMUP} warm-up cycles and {} s, then 2 s after the churn (directory: {} entries, {} retired; RssAnon {peak:.2} MiB), then after the grace period (directory: {} entries, {} evicted); the test driver's own domains live in this process too",
        retire_after.as_secs(),
        took.as_secs_f64(),
        retire_after.as_secs() + 2,
        during.entries,
        during.retired,
        after.entries,
        after.evicted_expired,
    );
    figure("churn_rss_anon_start", start, "MiB", &method);
    figure("churn_rss_anon_end", end, "MiB", &method);
    figure("churn_rss_anon_growth", end - start, "MiB", &method);
    figure(
        "churn_rss_anon_growth_second_wave",
        end2 - end,
        "MiB",
        &format!(
            "{method}; then a second wave of {N} the same way: RssAnon at its end minus at the first wave's end"
        ),
    );
    figure(
        "churn_directory_evicted",
        waves[1].3.evicted_expired as f64,
        "entries",
        &method,
    );
    Ok(())
}

// ----------------------------------------------------------------- fan-out

async fn fanout() -> anyhow::Result<()> {
    use wd_compute::Agent;
    use wd_events::{DomainId, DomainInfo, DomainState, Enum, Item, Origin, WatchdogEvent};
    use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};
    const PROJECTS: usize = 1_000;
    let dir = work_dir("fanout")?;
    let receipts: Receipts = Arc::default();
    let base = receiver(receipts.clone()).await?;
    let secret = Secret::parse(SECRET)?;
    let mut webhook = WebhookConfig::default();
    let project = |i: usize| format!("{i:032x}");
    for i in 0..PROJECTS {
        webhook = webhook.with_project(
            project(i),
            Endpoint::new(format!("{base}/p/{i}"), [secret.clone()]),
        );
    }
    // Each endpoint its own destination, routed by owner, as the agent
    // composes them.
    let notifiers: Vec<wd_notify::Destination> = WebhookNotifier::split(webhook)?
        .into_iter()
        .map(|e| {
            let project = e.project.clone().unwrap_or_default();
            wd_notify::Destination::new(
                format!("webhook project {project}"),
                wd_notify::DestinationKind::Project,
                wd_notify::Scope::Project(project),
                Arc::new(e.notifier),
            )
            .key(e.fingerprint)
        })
        .collect();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Item>();
    let runtime = Agent::builder("bench-host")
        .spool_dir(dir.join("spool"))
        .destinations(notifiers)
        .events(rx)
        .build()
        .start()
        .await?;
    let domain = |i: usize| DomainId {
        uuid: uuid::Uuid::from_u128(0xfa00_0000 + i as u128),
        name: format!("wdsc-fan-{i}"),
    };
    let xml = |i: usize| {
        let d = domain(i);
        format!(
            r#"<domain type="kvm"><uuid>{}</uuid><name>{}</name><metadata>
<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>fan-{i}</nova:name><nova:owner><nova:user uuid="u-{i}">u</nova:user>
<nova:project uuid="{}">p</nova:project></nova:owner></nova:instance></metadata></domain>"#,
            d.uuid,
            d.name,
            project(i)
        )
    };
    tx.unbounded_send(Item::InitStart { generation: 1 })?;
    for i in 0..PROJECTS {
        tx.unbounded_send(Item::InitDomain(DomainInfo {
            domain: domain(i),
            id: Some(1),
            state: Enum::Known(DomainState::Running),
            reason: 1,
            xml: Some(xml(i)),
            generation: 1,
        }))?;
    }
    tx.unbounded_send(Item::InitDone {
        generation: 1,
        domains: PROJECTS,
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fired = Vec::with_capacity(PROJECTS);
    let start = now();
    for i in 0..PROJECTS {
        fired.push(now());
        tx.unbounded_send(Item::Watchdog(WatchdogEvent {
            domain: domain(i),
            action: Enum::Known(wd_events::WatchdogAction::Pause),
            received_at: SystemTime::now(),
            seq: i as u64 + 1,
            generation: 1,
            origin: Origin::Live,
            episode: uuid::Uuid::new_v4(),
            run_id: Some(1),
        }))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while lock(&receipts).len() < PROJECTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = lock(&receipts).clone();
    drop(tx);
    let _ = runtime.shutdown().await;
    if got.len() < PROJECTS {
        bail!("only {} of {PROJECTS} notifications arrived", got.len());
    }
    let mut latencies: Vec<f64> = got
        .iter()
        .filter_map(|r| {
            let i: usize = r.domain.strip_prefix("wdsc-fan-")?.parse().ok()?;
            Some((r.at - fired[i]) * 1000.0)
        })
        .collect();
    let last = got.iter().map(|r| r.at).fold(0.0, f64::max);
    let method = format!(
        "{PROJECTS} projects, each with its own webhook endpoint (a distinct URL on one loopback axum receiver), one pause firing each, handed to the runtime (pipeline, coalesce, spool on, fan-out, retry, webhook) back to back after a catch-up that listed their {PROJECTS} domains"
    );
    figure(
        "fanout_notifications_per_s",
        PROJECTS as f64 / (last - start),
        "notifications/s",
        &format!("{method}; {PROJECTS} / (last receipt - first firing)"),
    );
    figure(
        "fanout_p99_ms",
        percentile(&mut latencies, 99.0),
        "ms",
        &format!("{method}; p99 of receipt time - time the firing was handed over"),
    );
    figure(
        "fanout_median_ms",
        median(&mut latencies),
        "ms",
        &format!("{method}; median of receipt time - time the firing was handed over"),
    );
    Ok(())
}

mod baseline;
mod masakari;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    let assets = || wd_testkit::guest::assets().context("no guest assets: run `cargo xtask guest`");
    let needs_libvirtd = || {
        if Libvirtd::is_up() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "needs the system libvirtd: run `cargo xtask services up`"
            ))
        }
    };
    match what.as_str() {
        "catchup" => {
            needs_libvirtd()?;
            catchup(&assets()?).await
        }
        "churn" => churn().await,
        "fanout" => fanout().await,
        "baseline" => {
            needs_libvirtd()?;
            baseline::baseline(&assets()?).await
        }
        "masakari" => {
            needs_libvirtd()?;
            masakari::masakari(&assets()?).await
        }
        _ => bail!("usage: bench-scale catchup|churn|fanout|baseline|masakari"),
    }
}
