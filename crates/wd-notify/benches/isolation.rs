//! A healthy destination's delivery latency while other destinations hang:
//! none, 1, and 10 hung destinations, each holding 100 pending entries.
//! Every destination has its own durable queue (group commit) under one
//! router, as `wdguard watch` runs them. One sample is one notification from
//! `Router::notify` until the healthy destination's receiver has it.
//!
//! Criterion reports the median; this bench also measures p50 and p99 over
//! 2,000 notifications per case and writes them, with their ratios to the
//! case with none hung, to `target/criterion/isolation-quantiles.json` for
//! `cargo xtask bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{BenchmarkId, Criterion, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use uuid::Uuid;
use wd_notify::{
    ChannelNotifier, Destination, DestinationKind, Domain, Instance, Notification, Notifier,
    NotifyError, QueueConfig, Router, RouterDefaults, Scope,
};

/// Never answers.
struct Hang;

#[async_trait]
impl Notifier for Hang {
    async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
        std::future::pending().await
    }
}

fn notification(project: &str) -> Notification {
    let mut instance = Instance::new(Uuid::new_v4());
    instance.project_id = Some(project.into());
    Notification::new(
        instance,
        "compute-1",
        Domain::new(Uuid::new_v4(), "instance-0000002a"),
        "reset",
        time::OffsetDateTime::now_utc(),
    )
}

struct Setup {
    router: Router,
    rx: mpsc::Receiver<Notification>,
    _dir: tempfile::TempDir,
}

fn setup(rt: &Runtime, hung: usize) -> Setup {
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (healthy, rx) = ChannelNotifier::channel(4096);
        let mut dests = vec![Destination::new(
            "healthy",
            DestinationKind::Project,
            Scope::Project("healthy".into()),
            Arc::new(healthy),
        )];
        for i in 0..hung {
            dests.push(Destination::new(
                format!("hung-{i}"),
                DestinationKind::Project,
                Scope::Project("hostile".into()),
                Arc::new(Hang),
            ));
        }
        let defaults = RouterDefaults {
            queue: QueueConfig::default().attempt_timeout(Duration::from_secs(3600)),
        };
        let router = Router::open(Some(dir.path()), dests, &defaults).expect("a router");
        for _ in 0..100 {
            router
                .notify(&notification("hostile"))
                .await
                .expect("accepted");
        }
        Setup {
            router,
            rx,
            _dir: dir,
        }
    })
}

async fn one(s: &mut Setup) -> Duration {
    let n = notification("healthy");
    let t0 = Instant::now();
    s.router.notify(&n).await.expect("accepted");
    while let Some(got) = s.rx.recv().await {
        if got.event_id == n.event_id {
            break;
        }
    }
    t0.elapsed()
}

fn quantiles(rt: &Runtime, s: &mut Setup, samples: usize) -> (f64, f64) {
    let mut v: Vec<f64> = rt.block_on(async {
        let mut v = Vec::with_capacity(samples);
        for _ in 0..samples {
            v.push(one(s).await.as_secs_f64() * 1e6);
        }
        v
    });
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("isolation");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut rows = Vec::new();
    for hung in [0usize, 1, 10] {
        let mut s = setup(&rt, hung);
        group.bench_function(BenchmarkId::new("hung", hung), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(one(&mut s));
                }
                total
            });
        });
        let (p50, p99) = quantiles(&rt, &mut s, 2000);
        rows.push((hung, p50, p99));
        rt.block_on(s.router.shutdown(Duration::ZERO));
    }
    group.finish();
    let (base50, base99) = (rows[0].1, rows[0].2);
    let mut json = String::from("[");
    for (i, (hung, p50, p99)) in rows.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"hung\":{hung},\"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\"p50_ratio\":{:.3},\"p99_ratio\":{:.3}}}",
            p50 / base50,
            p99 / base99
        ));
        println!(
            "isolation: {hung} hung destinations: p50 {p50:.1} us ({:.2}x), p99 {p99:.1} us ({:.2}x)",
            p50 / base50,
            p99 / base99
        );
    }
    json.push(']');
    let out = target_dir().join("criterion/isolation-quantiles.json");
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&out, json) {
        eprintln!("cannot write {}: {e}", out.display());
    }
}

/// Cargo's target directory, where criterion writes too: `CARGO_TARGET_DIR`,
/// else the one this bench was built into (`<target>/<profile>/deps/`), so
/// that the crate reaches nothing outside itself when it is unpacked
/// elsewhere.
fn target_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| "target".into())
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

criterion_main!(benches);
