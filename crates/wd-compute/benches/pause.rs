//! The latency of one watchdog pause through the pipeline with the episode
//! ledger on disk (issue 19): a synthetic live pause of a fresh domain into
//! `Pipeline` (with `NovaDirectory` and `Ledger::open` on a file), then a
//! `Spool` with one fsync per entry, and a `ChannelNotifier`; one firing at
//! a time, from the moment the pipeline is given it to the moment the
//! receiver has it. The floor beside it: one `write` + `fdatasync` of 600
//! bytes. Before issue 19 the ledger's atomic rewrite (two fsyncs) ran
//! before the queue's fsync; after, its append's sync runs beside it.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_main};
use uuid::Uuid;
use wd_compute::{InstanceDirectory, Ledger, NovaDirectory, Pipeline};
use wd_events::{DomainId, Enum, Item, Origin, WatchdogAction, WatchdogEvent};
use wd_notify::{ChannelNotifier, QueueConfig, Spool, SyncMode};

static NEXT: AtomicU64 = AtomicU64::new(1);

fn pause(directory: &NovaDirectory) -> Item {
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    let domain = DomainId {
        uuid: Uuid::from_u64_pair(0x9a, k),
        name: format!("instance-{k:08x}"),
    };
    directory.observe(
        &domain,
        &format!(
            r#"<domain><uuid>{}</uuid><metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:owner><nova:project uuid="p-1">web</nova:project></nova:owner></nova:instance></metadata></domain>"#,
            domain.uuid
        ),
    );
    Item::Watchdog(WatchdogEvent {
        domain,
        run_id: Some(1),
        action: Enum::Known(WatchdogAction::Pause),
        received_at: SystemTime::now(),
        seq: k,
        generation: 1,
        origin: Origin::Live,
        episode: Uuid::new_v4(),
    })
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("pause");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (channel, mut rx) = ChannelNotifier::channel(4096);
    let spool = Arc::new(
        rt.block_on(async {
            Spool::open(
                dir.path().join("q"),
                QueueConfig::default().sync(SyncMode::PerEntry),
                channel,
            )
        })
        .expect("spool"),
    );
    let directory = Arc::new(NovaDirectory::new());
    let (tx, items) = tokio::sync::mpsc::unbounded_channel::<Item>();
    let mut items = Some(items);
    let ledger = Ledger::open(dir.path().join("episodes.json")).expect("ledger");
    let pipeline = Pipeline::new("compute-1", directory.clone(), spool.clone(), ledger);
    let mut items = items.take().expect("items");
    rt.spawn(pipeline.run(
        futures::stream::poll_fn(move |cx| items.poll_recv(cx)),
        std::future::pending(),
    ));
    g.bench_function("file_ledger_spool_per_entry", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let item = pause(&directory);
                    let t0 = Instant::now();
                    tx.send(item).expect("pipeline");
                    rx.recv().await.expect("delivered");
                    total += t0.elapsed();
                }
                total
            })
        });
    });
    let path = dir.path().join("fsync");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("file");
    g.bench_function("floor_write_600B_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&[b'x'; 600]).expect("write");
            f.sync_data().expect("fdatasync");
        });
    });
    g.finish();
    drop(spool);
}

criterion_main!(benches);
