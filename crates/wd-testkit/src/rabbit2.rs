//! A second RabbitMQ node on 127.0.0.1, for broker failover tests.
//!
//! It is independent of the main node on 5672 (which it never touches): its
//! own node name (`wd-rabbit2@localhost`), AMQP port 5673, distribution port
//! 25673 bound to 127.0.0.1, no plugins, and its database and logs under
//! `target/wd-services/rabbit2/`. Two independent brokers, not a cluster:
//! joining the main node into a cluster would change the main node that other
//! tests share, and failover from the client's side is the same either way
//! (oslo's clients reconnect to the next URL host; they do not follow
//! cluster membership).
//!
//! It runs as the `rabbitmq` user, like the main node, so that `rabbitmqctl`
//! (which switches to that user) shares its Erlang cookie. It is started with
//! `rabbitmq-server -detached`, its pid read from its own pid file, and it is
//! stopped by name (`rabbitmqctl -n … shutdown`) and then by that pid.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{daemon_command, pid_alive, run_quiet, stop_pid};
use crate::services::{read_pid, services_dir, wait_until};

/// The second RabbitMQ node.
#[derive(Debug, Clone, Copy)]
pub struct RabbitMq2;

impl RabbitMq2 {
    /// Its Erlang node name.
    pub const NODE: &'static str = "wd-rabbit2@localhost";
    /// Its AMQP port.
    pub const PORT: u16 = 5673;
    /// Its Erlang distribution port.
    pub const DIST_PORT: u16 = 25673;
    /// The AMQP URL of its `guest` account on the default vhost.
    pub const URL: &'static str = "amqp://guest:guest@127.0.0.1:5673/%2f";

    fn dir() -> PathBuf {
        services_dir().join("rabbit2")
    }

    fn pid_path() -> PathBuf {
        Self::dir().join("rabbit2.pid")
    }

    /// Whether it accepts TCP connections on 127.0.0.1:5673.
    pub fn is_up() -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], Self::PORT));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    /// Its pid, from its pid file, if alive.
    pub fn pid() -> Option<u32> {
        read_pid(&Self::pid_path()).filter(|&p| pid_alive(p))
    }

    fn local() -> LocalNode {
        LocalNode {
            node: Self::NODE,
            port: Self::PORT,
            dist_port: Self::DIST_PORT,
            dir: Self::dir(),
            pid_file: Self::pid_path(),
            config: None,
        }
    }

    fn env(cmd: &mut Command) -> &mut Command {
        Self::local().env(cmd)
    }

    fn ctl(args: &[&str]) -> bool {
        Self::local().ctl(args)
    }

    /// Starts it unless it is up, and waits until it is ready (up to 120 s:
    /// a first start on a busy 2-core machine takes about 30 s). Returns
    /// whether this call started it. Needs root (to hand its directory to
    /// the `rabbitmq` user).
    pub fn start() -> Result<bool, String> {
        if Self::is_up() {
            return Ok(false);
        }
        let dir = Self::dir();
        for sub in ["mnesia", "log"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("create {}: {e}", dir.join(sub).display()))?;
        }
        fs::write(dir.join("enabled_plugins"), "[].\n")
            .map_err(|e| format!("write enabled_plugins: {e}"))?;
        if !run_quiet(
            "chown",
            &["-R", "rabbitmq:rabbitmq", &dir.display().to_string()],
        ) {
            return Err(format!("chown -R rabbitmq {} failed", dir.display()));
        }
        let status = Self::env(&mut daemon_command("rabbitmq-server"))
            .arg("-detached")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("start rabbitmq-server ({}): {e}", Self::NODE))?;
        if !status.success() {
            return Err(format!(
                "rabbitmq-server -detached ({}) exited with {status}",
                Self::NODE
            ));
        }
        let ready = wait_until(Duration::from_secs(120), || {
            Self::ctl(&["await_startup", "--timeout", "5"])
        });
        if !ready || !wait_until(Duration::from_secs(10), Self::is_up) {
            return Err(format!(
                "RabbitMQ node {} did not become ready within 120 s; see {}",
                Self::NODE,
                dir.join("log").display()
            ));
        }
        Ok(true)
    }

    /// Stops it: `rabbitmqctl shutdown` (which closes client connections and
    /// waits for the node), then makes sure its pid is gone.
    pub fn stop() {
        let pid = Self::pid();
        if Self::is_up() || pid.is_some() {
            Self::ctl(&["shutdown", "--timeout", "30"]);
        }
        if let Some(pid) = pid {
            stop_pid(pid, Duration::from_secs(10));
        }
    }
}

/// A RabbitMQ node of its own on 127.0.0.1: its name, ports and files, as
/// `rabbitmq-server` and `rabbitmqctl` take them from the environment.
pub(crate) struct LocalNode {
    pub(crate) node: &'static str,
    pub(crate) port: u16,
    pub(crate) dist_port: u16,
    /// Its database (`mnesia/`), logs (`log/`) and `enabled_plugins`.
    pub(crate) dir: PathBuf,
    pub(crate) pid_file: PathBuf,
    /// Its `rabbitmq.conf`, if any.
    pub(crate) config: Option<PathBuf>,
}

impl LocalNode {
    pub(crate) fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("RABBITMQ_NODENAME", self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", &self.pid_file)
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            );
        if let Some(config) = &self.config {
            cmd.env("RABBITMQ_CONFIG_FILE", config);
        }
        cmd
    }

    /// Runs `rabbitmqctl -n NODE ARGS`; whether it succeeded.
    pub(crate) fn ctl(&self, args: &[&str]) -> bool {
        self.env(&mut Command::new("rabbitmqctl"))
            .args(["-n", self.node])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}
