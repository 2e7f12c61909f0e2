//! The `wdguard watch` agent as a real process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// The `wdguard` binary built in this workspace.
pub fn wdguard_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current exe")?;
    // Test binaries live in target/<profile>/deps; wdguard in target/<profile>.
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("wdguard"))
        .collect::<Vec<_>>();
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "wdguard is not built next to {}; run `cargo build -p wdguard`",
            exe.display()
        )
    })
}

/// The packaged unit, `crates/wdguard/debian/wdguard.service`.
pub fn shipped_unit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/wdguard/debian/wdguard.service")
}

/// The `Nice=` of the packaged unit (0 without one).
pub fn shipped_nice() -> anyhow::Result<i32> {
    let unit = shipped_unit();
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("read {}", unit.display()))?;
    nice_of(&text).with_context(|| format!("{}: Nice=", unit.display()))
}

/// The `Nice=` of a unit's text: the last one counts, as for systemd.
fn nice_of(unit: &str) -> anyhow::Result<i32> {
    let mut nice = 0;
    for value in unit.lines().filter_map(|l| l.trim().strip_prefix("Nice=")) {
        nice = value.trim().parse().context("not an integer")?;
        if !(-20..=19).contains(&nice) {
            bail!("{nice}: allowed are -20 to 19");
        }
    }
    Ok(nice)
}

/// A running agent; killed (SIGKILL) when dropped if still running.
pub struct AgentProcess {
    child: Child,
    /// Where its stderr (the structured log) goes.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `wdguard watch --config CONFIG` with the webhook secret in the
    /// environment, logging to `log`.
    pub fn start(config: &Path, secret: &str, log: &Path) -> anyhow::Result<AgentProcess> {
        let config = config.as_os_str();
        AgentProcess::start_with(
            &["--config".as_ref(), config],
            &[("WD_WEBHOOK_SECRET", secret)],
            log,
        )
    }

    /// As [`AgentProcess::start`], at the scheduling priority the packaged
    /// unit gives it (its `Nice=`, see [`shipped_nice`]), as a host runs it.
    pub fn start_as_shipped(
        config: &Path,
        secret: &str,
        log: &Path,
    ) -> anyhow::Result<AgentProcess> {
        // `nice` execs the agent: the child's pid is the agent's.
        let mut cmd = Command::new("nice");
        cmd.arg(format!("--adjustment={}", shipped_nice()?))
            .arg(wdguard_path()?)
            .args(["watch", "--config"])
            .arg(config)
            .env("WD_WEBHOOK_SECRET", secret);
        AgentProcess::spawn(cmd, log)
    }

    /// Starts `wdguard watch ARGS` with `envs` added to its environment,
    /// logging to `log` (e.g. `--nova-config FILE --spool DIR`).
    pub fn start_with(
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let mut cmd = Command::new(wdguard_path()?);
        cmd.arg("watch").args(args).envs(envs.iter().copied());
        AgentProcess::spawn(cmd, log)
    }

    /// Starts `cmd` (the agent, or a wrapper that execs it) logging to `log`.
    fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<AgentProcess> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {:?}", cmd.get_program()))?;
        Ok(AgentProcess {
            child,
            log: log.to_owned(),
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit; returns the
    /// exit code.
    pub fn terminate(mut self, grace: Duration) -> anyhow::Result<i32> {
        wd_testkit::run_quiet("kill", &["-TERM", &self.child.id().to_string()]);
        let deadline = std::time::Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "wdguard watch did not exit within {grace:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the agent to exit on its own; returns its
    /// exit code (-1 for a signal), or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status.code().unwrap_or(-1)));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the log so far contain every one of `needles`.
    pub fn log_count(&self, needles: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until a log line contains every one of `needles`; fails after
    /// `timeout`, or at once if the agent exits.
    pub async fn wait_log(&mut self, needles: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log_count(needles) > 0 {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "wdguard watch exited ({status}) before logging {needles:?}; log:\n{}",
                    self.log_text()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "wdguard watch did not log {needles:?} within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the agent has connected to libvirt and finished its
    /// catch-up listing (so that it sees every later event), or `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_log(&["catch-up listing done"], timeout).await
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_nice_is_read_as_systemd_does() {
        assert_eq!(nice_of("[Service]\nUser=wd\n").unwrap(), 0);
        assert_eq!(nice_of("Nice=-5\n# Nice=3\nNice=-10\n").unwrap(), -10);
        assert!(nice_of("Nice=low\n").is_err());
        assert!(nice_of("Nice=-21\n").is_err());
        // The packaged unit's own value is one of them.
        assert!((-20..=19).contains(&shipped_nice().unwrap()));
    }
}
