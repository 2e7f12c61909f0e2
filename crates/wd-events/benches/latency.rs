//! Callback-to-consumer latency of the listener: from the moment libvirt
//! runs our callback (the event's `received_at`) to the moment the consumer
//! holds the item, through the whole path (trampoline, inbox, the direct
//! path or the supervisor thread, state machine, the consumer's wake-up on a
//! `current_thread` runtime, as in `wdguard watch`). Driven by
//! suspend/resume on libvirt's `test:///default` driver.
//!
//! `cargo bench -p wd-events --bench latency` measures two variants, each in
//! this process:
//!
//! * `quiet`: nothing else runs;
//! * `busy`: one spinning thread per CPU at normal priority, as the TCG
//!   guests of the live bench keep the cores busy: every thread wake-up on
//!   the way waits for the scheduler to give it a core.
//!
//! It prints p50/p90/p99/max per variant and writes
//! `target/criterion/listener-latency.json` for `cargo xtask bench`.
//! `cargo bench -p wd-events --bench latency -- SAMPLES [PACE_MICROS]`
//! changes the samples per variant (default 2000) and the pace (one event
//! every 2 ms by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use wd_events::{Item, ListenerConfig};

/// One variant's result.
struct Measured {
    latencies: Vec<Duration>,
    /// Events that took the direct path.
    direct: u64,
}

fn measure(samples: usize, pace: Duration) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut stream =
            wd_events::listen(ListenerConfig::default().uri("test:///default")).expect("listener");
        while !matches!(stream.recv().await, Some(Item::InitDone { .. })) {}
        let conn = stream.connection().expect("connected");
        // `test:///default` keeps its state per process: an even number of
        // samples leaves the domain running for the next variant.
        let dom = conn.lookup_domain_by_name("test").expect("test domain");
        let before = stream.stats().direct;
        // The driver thread acts on the listener's own connection.
        let driver = std::thread::spawn(move || {
            for i in 0..samples {
                if i % 2 == 0 {
                    dom.suspend().expect("suspend");
                } else {
                    dom.resume().expect("resume");
                }
                // Pace the events so each measures the path, not a queue.
                std::thread::sleep(pace);
            }
        });
        let mut latencies = Vec::with_capacity(samples);
        while latencies.len() < samples {
            match stream.recv().await {
                Some(Item::Lifecycle(l)) => latencies.push(
                    SystemTime::now()
                        .duration_since(l.received_at)
                        .unwrap_or_default(),
                ),
                Some(_) => {}
                None => break,
            }
        }
        driver.join().expect("driver thread");
        latencies.sort();
        Measured {
            latencies,
            direct: stream.stats().direct - before,
        }
    })
}

/// Runs `f` while one thread per CPU spins.
fn busy<R>(f: impl FnOnce() -> R) -> R {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let r = f();
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().expect("spinner");
    }
    r
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let samples = usize::try_from(args.next().unwrap_or(2000))
        .expect("samples")
        .max(2)
        .next_multiple_of(2);
    let pace = Duration::from_micros(args.next().unwrap_or(2000));
    let mut rows = Vec::new();
    for variant in ["quiet", "busy"] {
        let m = match variant {
            "busy" => busy(|| measure(samples, pace)),
            _ => measure(samples, pace),
        };
        let l = &m.latencies;
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "callback-to-consumer latency, {variant}, over {} events ({} direct): p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            l.len(),
            m.direct,
            pct(0.50),
            pct(0.90),
            pct(0.99),
            l[l.len() - 1]
        );
        rows.push(format!(
            r#"{{"variant":"{variant}","samples":{},"direct":{},"p50_us":{},"p90_us":{},"p99_us":{},"max_us":{}}}"#,
            l.len(),
            m.direct,
            us(pct(0.50)),
            us(pct(0.90)),
            us(pct(0.99)),
            us(l[l.len() - 1]),
        ));
    }
    let dir = target_dir().join("criterion");
    std::fs::create_dir_all(&dir).expect("create target/criterion");
    std::fs::write(
        dir.join("listener-latency.json"),
        format!("[{}]\n", rows.join(",")),
    )
    .expect("write listener-latency.json");
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the one this bench was
/// built into (`<target>/<profile>/deps/`), so that the crate reaches nothing
/// outside itself when it is unpacked elsewhere.
fn target_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| "target".into())
}
