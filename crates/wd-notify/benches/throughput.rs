//! Notifications per second through Coalesce + Spool + ChannelNotifier,
//! with one fsync per entry and with group commit, without the spool, and
//! this machine's raw fsync rate for reference.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use tokio::runtime::Runtime;
use uuid::Uuid;
use wd_notify::{
    ChannelNotifier, Coalesce, CoalesceConfig, Domain, Instance, Notification, Notifier,
    QueueConfig, Spool, SyncMode,
};

/// Instance ids never repeat across samples, so coalescing folds nothing
/// unless a bench asks it to.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

fn template() -> Notification {
    let mut instance = Instance::new(Uuid::new_v4());
    instance.name = Some("bench-guest".into());
    instance.project_id = Some("0f3c1d2e4b5a69788796a5b4c3d2e1f0".into());
    Notification::new(
        instance,
        "compute-1",
        Domain::new(Uuid::new_v4(), "instance-0000002a"),
        "reset",
        time::OffsetDateTime::now_utc(),
    )
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A channel notifier with a task draining its receiver.
fn drained_channel(rt: &Runtime) -> ChannelNotifier {
    let (notifier, mut rx) = ChannelNotifier::channel(4096);
    rt.spawn(async move { while rx.recv().await.is_some() {} });
    notifier
}

/// Sends `iters` notifications from `producers` concurrent tasks through
/// `target`; returns the time until every `notify` has returned.
fn drive<N: Notifier + 'static>(
    rt: &Runtime,
    target: Arc<N>,
    iters: u64,
    producers: u64,
    same_instance: bool,
) -> Duration {
    rt.block_on(async move {
        let base = template();
        let start = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let target = target.clone();
                let base = base.clone();
                let share = iters / producers + u64::from(p < iters % producers);
                tokio::spawn(async move {
                    for _ in 0..share {
                        let mut n = base.clone();
                        n.event_id = Uuid::new_v4();
                        if !same_instance {
                            let k = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
                            n.instance.uuid = Uuid::from_u64_pair(0, k);
                        }
                        target.notify(&n).await.expect("accepted");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("producer");
        }
        start.elapsed()
    })
}

fn coalesce_config() -> CoalesceConfig {
    CoalesceConfig::default().max_instances(1 << 22)
}

fn raw_fsync(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut g = c.benchmark_group("raw_fsync");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .expect("file");
    let record = [0x5au8; 400];
    g.bench_function("write_400B_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&record).expect("write");
            f.sync_data().expect("fsync");
        })
    });
    g.finish();
}

fn without_spool(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("coalesce_channel");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, same) in [
        ("distinct_instances", false),
        ("one_instance_coalesced", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let channel = drained_channel(&rt);
                let target =
                    Arc::new(rt.block_on(async { Coalesce::new(channel, coalesce_config()) }));
                drive(&rt, target, iters, 1, same)
            })
        });
    }
    g.finish();
}

fn with_spool(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("coalesce_spool_channel");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let cases = [
        ("per_entry", SyncMode::PerEntry, 1, false),
        ("per_entry", SyncMode::PerEntry, 64, false),
        ("group_commit", SyncMode::GroupCommit, 64, false),
        ("group_commit", SyncMode::GroupCommit, 256, false),
        (
            "group_commit_one_instance_coalesced",
            SyncMode::GroupCommit,
            64,
            true,
        ),
    ];
    for (name, mode, producers, same) in cases {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let channel = drained_channel(&rt);
        let config = QueueConfig::default().sync(mode).max_entries(1 << 20);
        let spool = Arc::new(
            rt.block_on(async { Spool::open(dir.path(), config, channel) })
                .expect("spool"),
        );
        g.bench_with_input(
            BenchmarkId::new(name, format!("{producers}_producers")),
            &producers,
            |b, &producers| {
                b.iter_custom(|iters| {
                    let target = Arc::new(
                        rt.block_on(async { Coalesce::new(spool.clone(), coalesce_config()) }),
                    );
                    drive(&rt, target, iters, producers, same)
                })
            },
        );
        let stats = rt.block_on(spool.shutdown(Duration::from_secs(5)));
        eprintln!(
            "spool {name}/{producers}: accepted {}, delivered {}, dropped_full {}, pending {}",
            stats.accepted, stats.delivered, stats.dropped_full, stats.pending
        );
    }
    g.finish();
}

/// Runs every benchmark in this file (what `criterion_group!` would write,
/// plus a doc comment, which the workspace lints require).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    raw_fsync(&mut c);
    without_spool(&mut c);
    with_spool(&mut c);
}

criterion_main!(benches);
