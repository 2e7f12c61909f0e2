//! Real guests under the system libvirtd, driven with `virsh` like an
//! operator would, and destroyed and undefined when dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestAssets, GuestSpec};

/// Runs `virsh -c qemu:///system ARGS` and returns its stdout.
pub fn virsh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(Libvirtd::URI)
        .args(args)
        .output()
        .context("run virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A guest this process created.
pub struct Guest {
    /// Its spec (name, UUID, action, owner).
    pub spec: GuestSpec,
    xml_path: std::path::PathBuf,
}

impl Guest {
    /// Defines `spec` persistently and starts it, as Nova does.
    pub fn define_and_start(
        spec: GuestSpec,
        assets: &GuestAssets,
        xml: Option<String>,
    ) -> anyhow::Result<Guest> {
        let xml = xml.unwrap_or_else(|| spec.domain_xml(assets));
        let xml_path = wd_testkit::target_dir()
            .join("wd-guest")
            .join(format!("{}.xml", spec.name));
        std::fs::write(&xml_path, xml).context("write domain XML")?;
        let guest = Guest { spec, xml_path };
        virsh(&["define", &guest.xml_path.display().to_string()])?;
        virsh(&["start", &guest.spec.name])?;
        Ok(guest)
    }

    /// Hard-reboots the guest the way Nova does: `virsh destroy`, then
    /// `virsh start` of the same (defined) domain. The new run has a new
    /// runtime id; the guest boots, arms its watchdog and fires again.
    pub fn hard_reboot(&self) -> anyhow::Result<()> {
        virsh(&["destroy", &self.spec.name])?;
        virsh(&["start", &self.spec.name])?;
        Ok(())
    }

    /// The domain's runtime id (`virsh domid`), `None` when it is not
    /// running.
    pub fn run_id(&self) -> Option<u32> {
        virsh(&["domid", &self.spec.name]).ok()?.parse().ok()
    }

    /// `virsh domstate --reason`, e.g. `paused (watchdog)`; `gone` if the
    /// domain no longer exists.
    pub fn state(&self) -> String {
        virsh(&["domstate", "--reason", &self.spec.name]).unwrap_or_else(|_| "gone".into())
    }

    /// Waits until the state starts with `want`, or `timeout`; returns the
    /// last state seen.
    pub fn wait_state(&self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if s.starts_with(want) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Guest::wait_state`] for async callers: sleeps without blocking the
    /// runtime's worker.
    pub async fn wait_state_async(&self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if s.starts_with(want) || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the guest's console shows that it armed its watchdog
    /// (it fires about 4 s later), or `timeout`; returns whether it did.
    pub async fn wait_armed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let console = std::fs::read_to_string(&self.spec.serial_log).unwrap_or_default();
            if console.contains("wd-guest: armed") {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.spec.name]);
        let _ = virsh(&["undefine", &self.spec.name]);
        let _ = std::fs::remove_file(&self.xml_path);
        // The console log helps explain a failure; otherwise it is litter.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.spec.serial_log);
        }
    }
}

/// One event `virsh event --timestamp` printed.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    /// libvirt's timestamp of the event (UTC, millisecond precision).
    pub at: std::time::SystemTime,
    /// The domain name.
    pub domain: String,
    /// What followed the domain name, e.g. `pause` for a watchdog event.
    pub detail: String,
}

impl SeenEvent {
    /// [`SeenEvent::at`] as seconds since the Unix epoch (0 before it).
    pub fn unix_secs(&self) -> f64 {
        self.at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// `virsh event --event EVENT --loop --timestamp` for every domain, as a
/// child process whose lines are collected; killed when dropped. It is
/// what an operator watching the host sees, independent of the agent.
pub struct EventWatch {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenEvent>>>,
}

impl EventWatch {
    /// Starts watching `event` (e.g. `watchdog`); returns once virsh has
    /// registered (it prints nothing until then, so allow a moment).
    pub fn start(event: &str) -> anyhow::Result<EventWatch> {
        use std::io::BufRead;
        // virsh block-buffers stdout into a pipe; stdbuf makes it
        // line-buffered so that no event waits (or is lost) in its buffer.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "virsh",
                "-c",
                Libvirtd::URI,
                "event",
                "--event",
                event,
            ])
            .args(["--loop", "--timestamp"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start virsh event")?;
        let stdout = child.stdout.take().context("virsh event stdout")?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(e) = parse_event_line(&line) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            }
        });
        // virsh connects and registers in well under a second here.
        std::thread::sleep(Duration::from_millis(700));
        Ok(EventWatch { child, seen })
    }

    /// The events of domain `name` seen so far, in order.
    pub fn of(&self, name: &str) -> Vec<SeenEvent> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.domain == name)
            .cloned()
            .collect()
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `2026-12-02 14:40:01.123+0000: event 'watchdog' for domain
/// 'NAME': pause`.
pub fn parse_event_line(line: &str) -> Option<SeenEvent> {
    let (stamp, rest) = line.split_once("+0000: ")?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
    );
    let at = time::PrimitiveDateTime::parse(stamp, &format)
        .ok()?
        .assume_utc();
    let rest = rest.split_once("for domain '")?.1;
    let (domain, detail) = rest.split_once("': ")?;
    Some(SeenEvent {
        at: at.into(),
        domain: domain.to_owned(),
        detail: detail.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_virsh_event_lines() {
        let e = parse_event_line(
            "2026-12-02 14:40:01.123+0000: event 'watchdog' for domain 'wd-e2e-x': pause",
        )
        .unwrap();
        assert_eq!(e.domain, "wd-e2e-x");
        assert_eq!(e.detail, "pause");
        let secs =
            e.at.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis();
        assert_eq!(secs, 1_796_222_401_123);
        assert!((e.unix_secs() - 1_796_222_401.123).abs() < 1e-6);
        // A Unix timestamp that crosses a leap day, as a civil-date sum
        // would get it wrong by a day.
        let leap =
            parse_event_line("2024-03-01 00:00:00.5+0000: event 'watchdog' for domain 'd': reset")
                .unwrap();
        assert_eq!(leap.unix_secs(), 1_709_251_200.5);
        assert_eq!(leap.detail, "reset");
        assert!(
            parse_event_line("2024-13-01 00:00:00.5+0000: event 'watchdog' for domain 'd': reset")
                .is_none()
        );
        assert!(parse_event_line("event loop ended").is_none());
    }
}
