//! `bench-live cpu`: the last mile. Each notification's way from the
//! listener's receipt to the endpoint's, with the spool on and off, the
//! agent's CPU per firing, the stage histograms of its `/metrics`, and the
//! floors the way is compared with (a bare loopback HTTP request, one
//! `fdatasync`).

use super::*;

/// A free loopback port (bound, then released for the agent to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /metrics` of the agent at `addr`, as text.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The sum of `wd_watchdog_firings_total` over its labels in a scrape.
fn firings_seen(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("wd_watchdog_firings_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One stage of `wd_stage_seconds` in a scrape: `(upper bound, cumulative
/// count)` per bucket, the sum and the count.
fn stage_histogram(text: &str, stage: &str) -> (Vec<(f64, u64)>, f64, u64) {
    let label = format!("stage=\"{stage}\"");
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (f64::NAN, 0);
    for l in text.lines().filter(|l| l.contains(&label)) {
        if l.starts_with("wd_stage_seconds_bucket") {
            let le = l
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(|b| {
                    if b == "+Inf" {
                        f64::INFINITY
                    } else {
                        b.parse().unwrap_or(f64::NAN)
                    }
                });
            if let (Some(le), Some(v)) = (le, value(l)) {
                buckets.push((le, v as u64));
            }
        } else if l.starts_with("wd_stage_seconds_sum") {
            sum = value(l).unwrap_or(f64::NAN);
        } else if l.starts_with("wd_stage_seconds_count") {
            count = value(l).map_or(0, |v| v as u64);
        }
    }
    (buckets, sum, count)
}

/// The bucket bound that holds quantile `q` of cumulative `buckets`.
fn bucket_quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> f64 {
    let target = ((q * count as f64).ceil() as u64).max(1);
    buckets
        .iter()
        .find(|(_, c)| *c >= target)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// The agent's CPU per firing over `n` firings, each announced, from the
/// scheduler's nanoseconds; the stage histograms; and each notification's
/// time from the listener's receipt of the event to the endpoint's receipt.
/// With `spool` off, every figure's name ends in `_no_spool`.
pub(crate) async fn cpu_per_firing(
    assets: &GuestAssets,
    n: usize,
    spool: bool,
) -> anyhow::Result<()> {
    let suffix = if spool { "" } else { "_no_spool" };
    let dir = work_dir(if spool { "cpu" } else { "cpu-no-spool" })?;
    let (hooks, url) = webhook().await?;
    let virsh_events = EventWatch::start("watchdog")?;
    let cfg = config_with(
        &dir,
        Libvirtd::URI,
        std::slice::from_ref(&url),
        0.001,
        spool,
    )?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    // Top-level keys go before the first section.
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(&cfg, format!("metrics = {metrics:?}\n{text}"))?;
    // As a host runs it: at the packaged unit's priority.
    let nice = wd_e2e::agent::shipped_nice()?;
    let mut agent = AgentProcess::start_as_shipped(&cfg, SECRET, &dir.join("agent.log"))?;
    let pid = agent.pid();
    agent.wait_ready(Duration::from_secs(30)).await?;
    // The agent's idle CPU, the same way, to tell what the firings cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle0 = (cpu_ns(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(IDLE_WINDOW_SECS)).await;
    let idle_ns_per_s = (cpu_ns(pid)? - idle0.0) as f64 / idle0.1.elapsed().as_secs_f64();
    let guests = reset_guests("wdb-cpu", CPU_GUESTS, assets)?;
    let names: Vec<String> = guests.iter().map(|g| g.spec.name.clone()).collect();
    let count =
        |names: &[String]| -> usize { names.iter().map(|n| virsh_events.of(n).len()).sum() };
    // Counted from the first firing, not from the guests' boot.
    let boot = Instant::now();
    while count(&names) == 0 && boot.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = count(&names);
    let (ns0, ticks0) = (cpu_ns(pid)?, cpu_ticks(pid)?);
    let threads0 = cpu_ns_by_thread(pid)?;
    let all0 = firings_seen(&scrape(&metrics).await.unwrap_or_default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + 20 * n as u64);
    while count(&names) < first + n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last firing's delivery finish before reading the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ns, ticks) = (cpu_ns(pid)? - ns0, cpu_ticks(pid)? - ticks0);
    let by_thread = cpu_ns_delta_by_name(&threads0, &cpu_ns_by_thread(pid)?);
    let fired = count(&names) - first;
    let elapsed = started.elapsed().as_secs_f64();
    for (name, t) in &by_thread {
        eprintln!(
            "bench-live cpu: thread {name}: {:.3} ms per firing",
            *t as f64 / 1e6 / fired.max(1) as f64
        );
    }
    let scraped = scrape(&metrics).await.unwrap_or_default();
    // What arrived in the window, before the floors add their own load.
    let ours: Vec<_> = hooks
        .accepted()
        .into_iter()
        .filter(|r| names.iter().any(|n| n == r.domain_name()))
        .collect();
    if spool {
        // The floors again, under the load the firings met.
        floors(&hooks, &url, true).await?;
    }
    // The shared libvirtd runs other people's guests too, whose firings
    // the agent also handles (and notifies) in the same window.
    let all = (firings_seen(&scraped) - all0).max(fired as f64);
    eprintln!(
        "bench-live cpu: {fired} firings of our guests, {all} firings handled by the agent in the window"
    );
    drop(guests);
    agent.terminate(Duration::from_secs(20))?;
    if fired == 0 {
        bail!("no firing of {CPU_GUESTS} reset guests within the window");
    }
    let delivered = ours.len();
    let queue = if spool {
        "the spool on (fsync before the hand-over)"
    } else {
        "no spool (queues in memory)"
    };
    let method = format!(
        "{CPU_GUESTS} reset guests (TCG) under the system libvirtd fired {fired} times in {elapsed:.0} s (counted by `virsh event`), {delivered} webhook notifications received; agent `wdguard watch` (release, at the packaged unit's nice {nice}) with {queue} and a 1 ms coalesce window (every firing announced)"
    );
    receipt_latency(&ours, if spool { "spool" } else { "no_spool" }, &method)?;
    figure(
        &format!("cpu_per_firing{suffix}"),
        ns as f64 / 1e6 / fired as f64,
        "ms CPU",
        &format!(
            "{method}; the agent's CPU over the window from /proc/PID/task/*/schedstat (ns, all its threads), divided by the firings"
        ),
    );
    figure(
        &format!("cpu_per_firing_handled{suffix}"),
        (ns as f64 - idle_ns_per_s * elapsed).max(0.0) / 1e6 / all,
        "ms CPU",
        &format!(
            "{method}; as cpu_per_firing_above_idle, divided by every firing the agent handled in the window ({all}: wd_watchdog_firings_total in its /metrics, other people's guests on the shared libvirtd included)"
        ),
    );
    figure(
        &format!("cpu_per_firing_above_idle{suffix}"),
        (ns as f64 - idle_ns_per_s * elapsed).max(0.0) / 1e6 / fired as f64,
        "ms CPU",
        &format!(
            "{method}; as cpu_per_firing, less the agent's idle CPU over the same time (its schedstat nanoseconds over {IDLE_WINDOW_SECS} s before the guests started: {:.3} ms per s)",
            idle_ns_per_s / 1e6
        ),
    );
    figure(
        &format!("cpu_per_firing_ticks{suffix}"),
        ticks as f64 * 1000.0 / clock_ticks() / fired as f64,
        "ms CPU",
        &format!("{method}; utime+stime (10 ms clock ticks) over the same window, the cross-check"),
    );
    for stage in [
        "prepared", "ledgered", "queued", "durable", "sending", "answered",
    ] {
        let (buckets, sum, total) = stage_histogram(&scraped, stage);
        if total == 0 {
            continue;
        }
        let how = format!(
            "{method}; wd_stage_seconds{{stage=\"{stage}\"}} from the agent's /metrics: time from the libvirt callback to this point, over {total} notifications"
        );
        figure(
            &format!("latency_stage_{stage}_mean{suffix}"),
            sum / total as f64 * 1000.0,
            "ms",
            &format!("{how}; mean"),
        );
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            // Above the last bound (+Inf) is no figure.
            let bound = bucket_quantile(&buckets, total, q);
            if bound.is_finite() {
                figure(
                    &format!("latency_stage_{stage}_{label}_bucket{suffix}"),
                    bound * 1000.0,
                    "ms",
                    &format!("{how}; upper bound of the bucket holding {label}"),
                );
            }
        }
    }
    Ok(())
}

/// The time from the listener's receipt of each firing (the notification's
/// CloudEvent `time`, taken in libvirt's event callback) to the endpoint's
/// receipt (the receiver's clock on arrival, the same host clock), in ms:
/// median, p99 (nearest rank) and worst, as `latency_receipt_{label}_…`.
fn receipt_latency(got: &[Received], label: &str, method: &str) -> anyhow::Result<()> {
    let mut ms: Vec<f64> = got
        .iter()
        .filter_map(|r| {
            let fired = OffsetDateTime::parse(r.event["time"].as_str()?, &Rfc3339).ok()?;
            let received = OffsetDateTime::from(r.received_at);
            Some((received - fired).as_seconds_f64() * 1000.0)
        })
        .collect();
    if ms.is_empty() {
        bail!("no notification with a readable `time` to measure ({label})");
    }
    let n = ms.len();
    let p99 = p99(&mut ms);
    let worst = ms[n - 1];
    let median = median(&mut ms);
    let how = format!(
        "{method}; per notification, the receiver's clock on arrival minus the CloudEvent `time` (the listener's receipt in libvirt's event callback), over {n} notifications"
    );
    figure(
        &format!("latency_receipt_{label}_median"),
        median,
        "ms",
        &format!("{how}; median"),
    );
    figure(
        &format!("latency_receipt_{label}_p99"),
        p99,
        "ms",
        &format!("{how}; p99 (nearest rank)"),
    );
    figure(
        &format!("latency_receipt_{label}_worst"),
        worst,
        "ms",
        &format!("{how}; worst"),
    );
    figure(
        &format!("latency_receipt_{label}_notifications"),
        n as f64,
        "notifications",
        &how,
    );
    Ok(())
}

/// The floor requests the receiver has accepted so far.
fn floor_requests_accepted(hooks: &Receiver) -> usize {
    hooks
        .accepted()
        .iter()
        .filter(|r| r.path == "/floor")
        .count()
}

/// Requests for the HTTP floor, after as many to warm up.
const FLOOR_REQUESTS: usize = 200;

/// The floors of a notification's way, measured here and now: one bare
/// HTTP/1.1 request over a kept-alive loopback connection to the same
/// receiver (a signed body of a notification's size; from the first byte
/// written to the end of the response head), and one append of 600 bytes
/// and `fdatasync` in the bench's directory on the spool's file system.
///
/// `loaded` names the figures `…_loaded` and says in their method that the
/// guests were firing meanwhile.
pub(crate) async fn floors(hooks: &Receiver, url: &str, loaded: bool) -> anyhow::Result<()> {
    let suffix = if loaded { "_loaded" } else { "" };
    let when = if loaded {
        "measured right after the firings, with the reset guests still running (the same CPU and disk load)"
    } else {
        "measured before any guest starts"
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("a loopback http URL")?;
    let addr = rest.split('/').next().context("host:port")?.to_owned();
    let accepted_before = floor_requests_accepted(hooks);
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let secret = [Secret::parse(SECRET)?];
    let padding = "x".repeat(1400);
    let mut rtt = Vec::new();
    let mut buf = vec![0u8; 4096];
    for i in 0..2 * FLOOR_REQUESTS {
        let body = format!("{{\"floor\":{i},\"padding\":\"{padding}\"}}");
        let id = format!("floor-{i}");
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let sig = sign(&id, ts, body.as_bytes(), &secret);
        let request = format!(
            "POST /floor HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n\r\n{body}",
            body.len()
        );
        let t = Instant::now();
        stream.write_all(request.as_bytes()).await?;
        let mut got = 0;
        loop {
            let k = stream.read(&mut buf[got..]).await?;
            if k == 0 {
                bail!("the receiver closed the connection");
            }
            got += k;
            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            if got == buf.len() {
                bail!("a response head over {} bytes", buf.len());
            }
        }
        let elapsed = t.elapsed();
        if !buf.starts_with(b"HTTP/1.1 2") {
            bail!(
                "the receiver refused the floor request: {}",
                String::from_utf8_lossy(&buf[..got.min(80)])
            );
        }
        if i >= FLOOR_REQUESTS {
            rtt.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    let accepted = floor_requests_accepted(hooks) - accepted_before;
    if accepted != 2 * FLOOR_REQUESTS {
        bail!(
            "the receiver accepted {accepted} of this call's {} floor requests",
            2 * FLOOR_REQUESTS
        );
    }
    let rtt_p99 = p99(&mut rtt);
    let how = format!(
        "one bare HTTP/1.1 POST (signed, 1.4 KB body) over one kept-alive loopback TCP connection (TCP_NODELAY) to the bench's webhook receiver (axum, signature verified), from the first byte written to the end of the response head; {FLOOR_REQUESTS} requests after {FLOOR_REQUESTS} to warm up; {when}"
    );
    figure(
        &format!("floor_http_round_trip{suffix}"),
        median(&mut rtt),
        "ms",
        &format!("{how}; median"),
    );
    figure(
        &format!("floor_http_round_trip{suffix}_p99"),
        rtt_p99,
        "ms",
        &format!("{how}; p99"),
    );

    let dir = work_dir(&format!("floor{suffix}"))?;
    let fsync = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("fsync"))?;
        let line = [b'x'; 600];
        let mut out = Vec::new();
        for i in 0..2 * FLOOR_REQUESTS {
            let t = Instant::now();
            f.write_all(&line)?;
            f.sync_data()?;
            if i >= FLOOR_REQUESTS {
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(out)
    })
    .await??;
    let mut fsync = fsync;
    let fsync_p99 = p99(&mut fsync);
    let how = format!(
        "append 600 bytes to a file under target/ (the spool's file system) and fdatasync it; {FLOOR_REQUESTS} after {FLOOR_REQUESTS} to warm up; {when} (part 2's raw_fsync_rate is the criterion figure of the same run, on a quiet machine)"
    );
    figure(
        &format!("floor_fsync{suffix}"),
        median(&mut fsync),
        "ms",
        &format!("{how}; median"),
    );
    figure(
        &format!("floor_fsync{suffix}_p99"),
        fsync_p99,
        "ms",
        &format!("{how}; p99"),
    );
    Ok(())
}
