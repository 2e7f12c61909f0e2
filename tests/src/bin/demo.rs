//! The demo behind `cargo xtask demo`: the whole story on a real guest.
//!
//! A flavor/image pair resolves to a watchdog; a guest with Nova-style owner
//! metadata is defined and started like Nova does it; it arms its watchdog and
//! hangs; the watchdog fires; the event arrives; libvirt pauses the guest; and
//! the owner's webhook receives a signed CloudEvent, verified here.
//!
//! It expects a running system libvirtd and the guest assets, which `cargo
//! xtask demo` sets up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use wd_compute::Agent;
use wd_e2e::receiver::Receiver;
use wd_e2e::virsh::{Guest, virsh};
use wd_events::{Item, ListenerConfig};
use wd_notify::Notifier;
use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};
use wd_testkit::guest::{GuestSpec, NovaOwner};

const SECRET: &str = "whsec_ZGVtby1vbmx5LWtleS1kby1ub3QtdXNlLWluLXByb2R1Y3Rpb24=";
const PROJECT: &str = "d3m0c0ffee0000000000000000000001";
const USER: &str = "a11ce000000000000000000000000002";

fn step(n: u32, started: Instant, text: &str) {
    println!(
        "\n[{n}/7 +{:>5.1}s] {text}",
        started.elapsed().as_secs_f64()
    );
}

fn libvirt_version() -> anyhow::Result<wd_xml::LibvirtVersion> {
    let out = virsh(&["version"])?;
    let v = out
        .lines()
        .find_map(|l| l.strip_prefix("Using library: libvirt "))
        .context("virsh version printed no library version")?;
    Ok(v.trim().parse()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(assets) = wd_testkit::guest::assets() else {
        bail!("the guest kernel and initramfs are missing; run `cargo xtask guest`");
    };
    if !wd_testkit::Libvirtd::is_up() {
        bail!(
            "libvirtd is not running; run `cargo xtask demo` (it starts it) or `cargo xtask services up`"
        );
    }

    // 1. The policy, where it came from, and the XML.
    step(1, started, "Resolve the watchdog policy through wd-compute");
    let flavor = [("hw:watchdog_action", "poweroff")];
    let image = [("hw_watchdog_action", "pause")];
    println!("      flavor m1.demo   extra specs: {flavor:?}");
    println!("      image  demo-os   properties:  {image:?}");
    let name = wd_testkit::unique_name("wd-demo");
    let spec = GuestSpec {
        action: None,
        ..GuestSpec::new(&name, "pause").with_nova(NovaOwner {
            display_name: "demo-web-1".into(),
            flavor: "m1.demo".into(),
            user_id: USER.into(),
            project_id: PROJECT.into(),
        })
    };
    let version = libvirt_version()?;
    let (xml, resolved) = wd_compute::spawn::patch_domain(
        &spec.domain_xml(&assets),
        flavor,
        image,
        &wd_policy::OperatorPolicy::default(),
        version,
    )?;
    println!("      {resolved}");
    for line in xml.lines().filter(|l| l.contains("<watchdog")) {
        println!("      XML: {}", line.trim());
    }

    // The owner's webhook endpoint, and the agent pipeline.
    let receiver = Receiver::start(SECRET).await?;
    let endpoint = receiver.url(&format!("/projects/{PROJECT}"));
    let webhook = WebhookNotifier::new(
        WebhookConfig::default()
            .with_timeout(Duration::from_secs(5))
            .with_project(
                PROJECT,
                Endpoint::new(endpoint.clone(), [Secret::parse(SECRET)?]),
            ),
    )?;
    let spool = tempfile_dir()?;
    let runtime = Agent::builder("demo-compute-1")
        .listener(ListenerConfig::default())
        .spool_dir(spool.join("spool"))
        .destination(("webhook".to_owned(), Arc::new(webhook) as Arc<dyn Notifier>))
        .build()
        .start()
        .await?;
    // A second listener only to show the raw event as it arrives.
    let mut events = wd_events::listen(ListenerConfig::default())?;

    // 2. Boot like Nova: define persistently, then start.
    step(
        2,
        started,
        &format!("Boot guest {name} for project {PROJECT} (define, then start)"),
    );
    let guest = Guest::define_and_start(spec, &assets, Some(xml))?;
    println!("      instance uuid {}", guest.spec.uuid);
    println!("      owner webhook {endpoint}");

    // 3. The guest arms its watchdog and hangs.
    step(3, started, "The guest arms its watchdog and hangs");
    let console = &guest.spec.serial_log;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !std::fs::read_to_string(console)
        .unwrap_or_default()
        .contains("armed")
    {
        if Instant::now() > deadline {
            bail!(
                "the guest did not arm its watchdog within 40 s; see {}",
                console.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for line in std::fs::read_to_string(console)?
        .lines()
        .filter(|l| l.starts_with("wd-guest"))
    {
        println!("      console: {line}");
    }

    // 4 and 5. The watchdog fires and the event arrives.
    step(
        4,
        started,
        "Waiting for the watchdog to fire (i6300esb, heartbeat 2 s)",
    );
    let fired = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(item) = events.next().await {
            if let Item::Watchdog(ev) = item
                && ev.domain.uuid.to_string() == guest.spec.uuid
            {
                return Some(ev);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("no watchdog event within 40 s")?;
    step(
        5,
        started,
        &format!(
            "Event arrived: watchdog fired on {} with action {} ({})",
            fired.domain, fired.action, fired.origin
        ),
    );

    // 6. libvirt took the action.
    let state = guest.wait_state("paused", Duration::from_secs(10));
    step(
        6,
        started,
        &format!("libvirt took the action: domain state is {state}"),
    );

    // 7. The owner is notified.
    let got = receiver
        .wait_for(Duration::from_secs(20), |r| !r.is_empty())
        .await;
    let Some(first) = got.first() else {
        bail!("the owner's webhook received nothing within 20 s");
    };
    step(
        7,
        started,
        &format!(
            "The owner was notified at {} (signature verified):",
            first.path
        ),
    );
    println!("{}", serde_json::to_string_pretty(&first.event)?);

    drop(events);
    let report = runtime.shutdown().await;
    drop(guest);
    let _ = std::fs::remove_dir_all(&spool);
    println!(
        "\nDone in {:.1} s: firings seen {}, notifications accepted {}; the guest was destroyed and undefined.",
        started.elapsed().as_secs_f64(),
        report.pipeline.firings,
        report.pipeline.accepted
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = wd_testkit::target_dir()
        .join("wd-demo")
        .join(wd_testkit::unique_name("run"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
