//! Callback-to-consumer latency of the listener: from the moment libvirt
//! runs our callback (the event's `received_at`) to the moment the consumer
//! holds the item, through the whole path (trampoline, channel, supervisor
//! thread, state machine, consumer channel). Driven by suspend/resume on
//! libvirt's `test:///default` driver; prints p50/p90/p99/max.
//!
//! `cargo bench -p wd-events -- [SAMPLES [PACE_MICROS]]` (default 2000
//! samples, one event every 2 ms).

use std::time::{Duration, SystemTime};

use wd_events::{Item, ListenerConfig};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let samples = args.next().unwrap_or(2000) as usize;
    let pace = Duration::from_micros(args.next().unwrap_or(2000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut latencies = rt.block_on(async {
        let mut stream =
            wd_events::listen(ListenerConfig::default().uri("test:///default")).expect("listener");
        while !matches!(stream.recv().await, Some(Item::InitDone { .. })) {}
        let conn = stream.connection().expect("connected");
        // The driver thread acts on the listener's own connection.
        let driver = std::thread::spawn(move || {
            let dom = conn.lookup_domain_by_name("test").expect("test domain");
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
        latencies
    });
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "callback-to-consumer latency over {} events: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
}
