//! How soon the listener is back on libvirt after an outage, behind
//! `cargo xtask bench` (part 8). Prints one JSON object per line for each
//! figure: `{"name":…,"value":…,"unit":…,"method":…}`; progress goes to
//! stderr.
//!
//! `bench-reconnect [SECONDS…]` (default 2 10 60): for each outage, a
//! listener with the agent's settings (`ListenerConfig::default()`,
//! read-only, as `wdguard watch` runs it) is connected and caught up; the
//! system libvirtd is stopped, kept down that long, and started again. A
//! prober thread opens `qemu:///system` every 10 ms from the moment the
//! start begins: its first successful open is libvirtd's first answer. The
//! figure is the time from that answer to the listener's `InitDone` of the
//! new connection (catch-up done). The 10 s outage runs a second time with
//! the socket watch off (`socket_probe_interval` zero: the backoff alone,
//! as before the watch).
//!
//! It expects a running system libvirtd (the xtask starts it) and stops
//! and restarts it: run it under the machine's libvirtd lock.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use virt::connect::Connect;
use wd_e2e::bench::figure;
use wd_events::{Item, ListenerConfig};
use wd_testkit::Libvirtd;

/// Starts libvirtd again when dropped if a run left it stopped.
struct KeepUp;

impl Drop for KeepUp {
    fn drop(&mut self) {
        if !Libvirtd::is_up() {
            let _ = Libvirtd::start();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let outages: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .with_context(|| format!("an outage in seconds: `{a}`"))
        })
        .collect::<anyhow::Result<_>>()?;
    let outages = if outages.is_empty() {
        vec![2, 10, 60]
    } else {
        outages
    };
    if !Libvirtd::is_up() {
        bail!("libvirtd (qemu:///system) is not answering; `cargo xtask services up`");
    }
    wd_events::quiet_default_errors();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _up = KeepUp;
    let watched = ListenerConfig::default().read_only(true);
    let mut runs: Vec<(u64, ListenerConfig, &str)> =
        outages.iter().map(|&s| (s, watched.clone(), "")).collect();
    runs.push((
        10,
        watched.clone().socket_probe_interval(Duration::ZERO),
        "_backoff_only",
    ));
    for (secs, config, suffix) in runs {
        let ms = rt.block_on(outage(config, Duration::from_secs(secs)))?;
        eprintln!(
            "bench-reconnect: {secs} s outage{suffix}: caught up {ms:.1} ms after libvirtd's first answer"
        );
        let how = if suffix.is_empty() {
            "the socket watch on (100 ms probe, the default)"
        } else {
            "the socket watch off: the backoff alone, as before it"
        };
        figure(
            &format!("reconnect_after_{secs}s_outage{suffix}"),
            ms,
            "ms",
            &format!(
                "in-process listener with wdguard watch's settings ({how}); system libvirtd stopped for {secs} s and started again; from the first successful open by a prober polling every 10 ms to the listener's InitDone of the new connection (catch-up done)"
            ),
        );
    }
    Ok(())
}

/// One outage of `down`; the time from libvirtd's first answer to the
/// catch-up done, in ms (negative if the listener was served first).
async fn outage(config: ListenerConfig, down: Duration) -> anyhow::Result<f64> {
    let mut stream = wd_events::listen(config)?;
    let generation = wait(&mut stream, Duration::from_secs(60), |i| match i {
        Item::InitDone { generation, .. } => Some(*generation),
        _ => None,
    })
    .await
    .context("first catch-up")?;
    let stopped = Instant::now();
    Libvirtd.stop();
    wait(&mut stream, Duration::from_secs(60), |i| {
        matches!(i, Item::Disconnected { .. }).then_some(())
    })
    .await
    .context("the listener saw the loss")?;
    tokio::time::sleep(down.saturating_sub(stopped.elapsed())).await;
    let (answered_tx, answered_rx) = mpsc::channel();
    let prober = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if Connect::open_read_only(Some(Libvirtd::URI)).is_ok() {
                let _ = answered_tx.send(Instant::now());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let starter = std::thread::spawn(Libvirtd::start);
    wait(&mut stream, Duration::from_secs(180), |i| match i {
        Item::InitDone { generation: g, .. } if *g > generation => Some(()),
        _ => None,
    })
    .await
    .context("caught up after the restart")?;
    let done = Instant::now();
    starter
        .join()
        .map_err(|_| anyhow::anyhow!("starter panicked"))?
        .map_err(anyhow::Error::msg)?;
    let _ = prober.join();
    let answered = answered_rx
        .try_recv()
        .context("libvirtd never answered the prober")?;
    Ok(match done.checked_duration_since(answered) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(answered.duration_since(done).as_secs_f64() * 1000.0),
    })
}

/// Items until `pick` returns something, or an error after `within`.
async fn wait<T>(
    stream: &mut wd_events::EventStream,
    within: Duration,
    mut pick: impl FnMut(&Item) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.recv()).await {
            Ok(Some(item)) => {
                if let Some(t) = pick(&item) {
                    return Ok(t);
                }
            }
            Ok(None) => bail!("the listener ended"),
            Err(_) => bail!("nothing within {within:?}"),
        }
    }
}
