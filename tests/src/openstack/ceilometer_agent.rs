//! [`CeilometerAgent`]: Ceilometer's notification agent with its stock
//! definitions and pipelines, publishing to files the test reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::script::{Script, log_in};

/// `ceilometer-agent-notification`, run from the venv by
/// `tests/fixtures/openstack/ceilometer_agent.py`: Ceilometer's stock meter
/// definitions (`meters.yaml`), stock event definitions, and stock meter and
/// event pipelines, whose publishers write JSON lines to
/// `WORK/samples.json` and `WORK/events.json`. Its log is
/// `WORK/ceilometer-agent-notification.log`. Stopped when dropped (end of
/// the script's stdin; SIGKILL of the script after 20 s).
pub struct CeilometerAgent {
    script: Script,
    work: PathBuf,
}

/// A log line of oslo.log at WARNING or worse (`DATE TIME PID LEVEL …`).
pub fn is_warning_or_worse(line: &str) -> bool {
    matches!(
        line.split_whitespace().nth(3),
        Some("WARNING" | "ERROR" | "CRITICAL")
    )
}

impl CeilometerAgent {
    /// Starts the agent in `work` (created) on the broker at the oslo
    /// `transport` URL. It reports ready `settle` later (see
    /// [`CeilometerAgent::wait_ready`]).
    pub fn start(
        python: &Path,
        work: &Path,
        transport: &str,
        settle: Duration,
    ) -> Result<CeilometerAgent, String> {
        let settle = settle.as_secs_f64().to_string();
        let args = [work.as_os_str(), transport.as_ref(), settle.as_ref()];
        let script = Script::start(
            python,
            "ceilometer_agent.py",
            &args,
            log_in(work, "ceilometer_agent.log")?,
        )?;
        Ok(CeilometerAgent {
            script,
            work: work.to_owned(),
        })
    }

    /// Waits until the agent runs; an error says it died or timed out, and
    /// where the logs are.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let line = self.script.lines.recv_timeout(timeout).map_err(|_| {
            format!(
                "ceilometer-agent-notification did not start within {timeout:?}; see {}",
                self.work.display()
            )
        })?;
        if line == "READY" {
            Ok(())
        } else {
            Err(format!("{line}; see {}", self.work.display()))
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("ceilometer-agent-notification.log"))
            .unwrap_or_default()
    }

    /// The samples (`sample.as_dict()`) published so far.
    pub fn samples(&self) -> Vec<Value> {
        self.json_lines("samples.json")
    }

    /// The events (`event.as_dict()`) published so far.
    pub fn events(&self) -> Vec<Value> {
        self.json_lines("events.json")
    }

    /// Polls until `done(samples, events)` or `timeout`; the last reading.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value], &[Value]) -> bool,
    ) -> (Vec<Value>, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        loop {
            let (samples, events) = (self.samples(), self.events());
            if done(&samples, &events) || Instant::now() >= deadline {
                return (samples, events);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn json_lines(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.work.join(file))
            .unwrap_or_default()
            .lines()
            // A line being written is not JSON yet; the next poll has it.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn warnings_are_read_from_olsos_level_field() {
        for (line, bad) in [
            (
                "2026-12-07 00:49:49.849 16648 WARNING ceilometer.pipeline.sample [-] x",
                true,
            ),
            (
                "2026-12-07 00:49:44.788 16648 ERROR stevedore.extension [-] x",
                true,
            ),
            (
                "2026-12-07 00:49:44.788 16648 INFO ceilometer WARNING",
                false,
            ),
            ("  key: dsa.DSAPublicKey", false),
            (
                "x.py:14: CryptographyDeprecationWarning: DSA is deprecated",
                false,
            ),
        ] {
            assert_eq!(super::is_warning_or_worse(line), bad, "{line}");
        }
    }
}
