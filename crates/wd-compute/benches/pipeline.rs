//! Events per second through the whole runtime path: a synthetic listener
//! stream into `Pipeline` (with `NovaDirectory` and an in-memory `Ledger`),
//! then `Coalesce`, optionally a `Spool` (one fsync per entry, or group
//! commit), and a `ChannelNotifier` whose receiver counts deliveries. A
//! sample ends when every notification has reached the receiver. Beside
//! them, this machine's raw fsync rate.
//!
//! One agent runs one pipeline, whose run loop hands the firings of
//! different domains (all of them here) over concurrently, up to 256 in
//! flight, so group commit takes many of them per fsync; one fsync per
//! entry still costs one fsync each. The `8_pipelines` cases show several
//! producers sharing one spool.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_main};
use tokio::runtime::Runtime;
use uuid::Uuid;
use wd_compute::{InstanceDirectory, Ledger, NovaDirectory, Pipeline};
use wd_events::{DomainId, Enum, Item, Origin, WatchdogAction, WatchdogEvent};
use wd_notify::{
    ChannelNotifier, Coalesce, CoalesceConfig, Notifier, QueueConfig, Spool, SyncMode,
};

static NEXT: AtomicU64 = AtomicU64::new(1);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn nova_xml(d: &DomainId) -> String {
    format!(
        r#"<domain type="kvm"><uuid>{}</uuid><name>{}</name><metadata>
  <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
    <nova:name>bench-{}</nova:name>
    <nova:owner>
      <nova:user uuid="9d3c2b1a-0f4e-4c5d-8a7b-6e5f4d3c2b1a">alice</nova:user>
      <nova:project uuid="1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9">web</nova:project>
    </nova:owner>
  </nova:instance></metadata></domain>"#,
        d.uuid, d.name, d.name
    )
}

/// `n` firings of fresh domains, each already known to `directory` (the
/// catch-up listing would have put them there), so none is coalesced and
/// every one is looked up.
fn firings(directory: &NovaDirectory, n: u64) -> Vec<Item> {
    (0..n)
        .map(|_| {
            let k = NEXT.fetch_add(1, Ordering::Relaxed);
            let domain = DomainId {
                uuid: Uuid::from_u64_pair(0xbe, k),
                name: format!("instance-{k:08x}"),
            };
            directory.observe(&domain, &nova_xml(&domain));
            Item::Watchdog(WatchdogEvent {
                domain,
                run_id: Some(1),
                action: Enum::Known(WatchdogAction::Reset),
                received_at: SystemTime::now(),
                seq: k,
                generation: 1,
                origin: Origin::Live,
                episode: Uuid::new_v4(),
            })
        })
        .collect()
}

/// The delivery stack under test, and the count of notifications that
/// reached the receiver.
struct Stack {
    notifier: Arc<dyn Notifier>,
    delivered: Arc<AtomicU64>,
    spool: Option<Arc<Spool>>,
    router: Option<Arc<wd_notify::Router>>,
    _dir: Option<tempfile::TempDir>,
}

/// What delivers: nothing durable, one spool, or a router with one durable
/// queue per destination (here three: the counted channel and two more).
#[derive(Clone, Copy)]
enum Shape {
    Direct,
    Spool(SyncMode),
    Router,
}

fn stack(rt: &Runtime, shape: Shape) -> Stack {
    let (channel, mut rx) = ChannelNotifier::channel(4096);
    let delivered = Arc::new(AtomicU64::new(0));
    let count = delivered.clone();
    rt.spawn(async move {
        while rx.recv().await.is_some() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let coalesce = CoalesceConfig::default().max_instances(1 << 22);
    match shape {
        Shape::Direct => Stack {
            notifier: Arc::new(rt.block_on(async { Coalesce::new(channel, coalesce) })),
            delivered,
            spool: None,
            router: None,
            _dir: None,
        },
        Shape::Router => {
            use wd_notify::{Destination, DestinationKind, Router, RouterDefaults, Scope};
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let drained = |rt: &Runtime| {
                let (n, mut rx) = ChannelNotifier::channel(4096);
                rt.spawn(async move { while rx.recv().await.is_some() {} });
                Arc::new(n) as Arc<dyn Notifier>
            };
            let dests = vec![
                Destination::new(
                    "operator",
                    DestinationKind::Operator,
                    Scope::All,
                    Arc::new(channel),
                ),
                Destination::new("bus", DestinationKind::Bus, Scope::All, drained(rt)),
                Destination::new("log", DestinationKind::Log, Scope::All, drained(rt)),
            ];
            let defaults = RouterDefaults {
                queue: QueueConfig::default().max_entries(1 << 20),
            };
            let router = Arc::new(
                rt.block_on(async { Router::open(Some(dir.path()), dests, &defaults) })
                    .expect("router"),
            );
            let notifier = Arc::new(rt.block_on(async { Coalesce::new(router.clone(), coalesce) }));
            Stack {
                notifier,
                delivered,
                spool: None,
                router: Some(router),
                _dir: Some(dir),
            }
        }
        Shape::Spool(mode) => {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let config = QueueConfig::default().sync(mode).max_entries(1 << 20);
            let spool = Arc::new(
                rt.block_on(async { Spool::open(dir.path(), config, channel) })
                    .expect("spool"),
            );
            let notifier = Arc::new(rt.block_on(async { Coalesce::new(spool.clone(), coalesce) }));
            Stack {
                notifier,
                delivered,
                spool: Some(spool),
                router: None,
                _dir: Some(dir),
            }
        }
    }
}

/// Runs `iters` firings through `pipelines` pipelines sharing one stack and
/// returns the time until the receiver has all of them.
fn drive(rt: &Runtime, stack: &Stack, iters: u64, pipelines: u64) -> Duration {
    let directory = Arc::new(NovaDirectory::new());
    let shards: Vec<Vec<Item>> = (0..pipelines)
        .map(|p| {
            firings(
                &directory,
                iters / pipelines + u64::from(p < iters % pipelines),
            )
        })
        .collect();
    let target = stack.delivered.load(Ordering::Relaxed) + iters;
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = shards
            .into_iter()
            .map(|items| {
                let pipeline = Pipeline::new(
                    "compute-1",
                    directory.clone(),
                    stack.notifier.clone(),
                    Ledger::in_memory(),
                );
                tokio::spawn(pipeline.run(futures::stream::iter(items), std::future::pending()))
            })
            .collect();
        for t in tasks {
            let stats = t.await.expect("pipeline");
            assert_eq!(stats.delivery_errors, 0);
        }
        while stack.delivered.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
        start.elapsed()
    })
}

fn raw_fsync(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut g = c.benchmark_group("pipeline_raw_fsync");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .expect("file");
    let record = [0x5au8; 600];
    g.bench_function("write_600B_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&record).expect("write");
            f.sync_data().expect("fsync");
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let cases = [
        ("no_spool", Shape::Direct, 1),
        ("spool_per_entry", Shape::Spool(SyncMode::PerEntry), 1),
        ("spool_group_commit", Shape::Spool(SyncMode::GroupCommit), 1),
        (
            "spool_per_entry_8_pipelines",
            Shape::Spool(SyncMode::PerEntry),
            8,
        ),
        (
            "spool_group_commit_8_pipelines",
            Shape::Spool(SyncMode::GroupCommit),
            8,
        ),
        // Three destinations, each its own durable queue (group commit),
        // written in parallel: what `wdguard watch --spool` runs.
        ("router_3_queues_8_pipelines", Shape::Router, 8),
    ];
    for (name, shape, pipelines) in cases {
        let stack = stack(&rt, shape);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| drive(&rt, &stack, iters, pipelines))
        });
        if let Some(router) = &stack.router {
            for (dest, stats) in rt.block_on(router.shutdown(Duration::from_secs(5))) {
                eprintln!(
                    "pipeline {name} {dest}: accepted {}, delivered {}, pending {}",
                    stats.accepted, stats.delivered, stats.pending
                );
            }
        }
        if let Some(spool) = &stack.spool {
            let stats = rt.block_on(spool.shutdown(Duration::from_secs(5)));
            eprintln!(
                "pipeline {name}: accepted {}, delivered {}, pending {}",
                stats.accepted, stats.delivered, stats.pending
            );
        }
    }
    g.finish();
}

/// Runs every benchmark in this file (what `criterion_group!` would write,
/// plus a doc comment, which the workspace lints require).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    raw_fsync(&mut c);
    pipeline(&mut c);
}

criterion_main!(benches);
