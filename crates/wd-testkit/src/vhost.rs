//! A private RabbitMQ virtual host per test: every queue and exchange the
//! test, the agent or OpenStack's services declare lives in it, and deleting
//! it removes them all, so repeated runs leave nothing on the shared broker
//! and nothing in the `rabbitmq_*` group can see or collide with them.

use std::process::{Command, Stdio};

use crate::{RabbitMq2, unique_name};

/// Which local RabbitMQ node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The shared node on 127.0.0.1:5672 (`cargo xtask services up`).
    Main,
    /// [`RabbitMq2`] on 127.0.0.1:5673.
    Second,
}

impl Node {
    /// Its AMQP port.
    pub fn port(self) -> u16 {
        match self {
            Node::Main => 5672,
            Node::Second => RabbitMq2::PORT,
        }
    }

    /// Runs `rabbitmqctl ARGS` against this node; its output on failure.
    pub fn ctl(self, args: &[&str]) -> Result<(), String> {
        let mut cmd = Command::new("rabbitmqctl");
        if self == Node::Second {
            cmd.args(["-n", RabbitMq2::NODE]);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run rabbitmqctl {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "rabbitmqctl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// A virtual host created for one test on one or more local nodes (the
/// `guest` account may use it), deleted with everything in it when dropped.
#[derive(Debug)]
pub struct Vhost {
    name: String,
    nodes: Vec<Node>,
}

impl Vhost {
    /// Creates a vhost named `<prefix>-<unique suffix>` on each of `nodes`
    /// (needs `rabbitmqctl`, as root or the `rabbitmq` user).
    pub fn create(prefix: &str, nodes: &[Node]) -> Result<Vhost, String> {
        let vhost = Vhost {
            name: unique_name(prefix),
            nodes: Vec::new(),
        };
        vhost.add(nodes)
    }

    /// Creates the vhost on `nodes` too (for example a node that should
    /// refuse the vhost until now).
    pub fn add_nodes(self, nodes: &[Node]) -> Result<Vhost, String> {
        self.add(nodes)
    }

    fn add(mut self, nodes: &[Node]) -> Result<Vhost, String> {
        for &node in nodes {
            node.ctl(&["add_vhost", &self.name])?;
            // Deleted on drop from here on, even if the next step fails.
            self.nodes.push(node);
            node.ctl(&[
                "set_permissions",
                "-p",
                &self.name,
                "guest",
                ".*",
                ".*",
                ".*",
            ])?;
        }
        Ok(self)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `guest` account's AMQP URL of this vhost on `node`.
    pub fn amqp_url(&self, node: Node) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{}", node.port(), self.name)
    }

    /// The `guest` account's oslo transport URL (`rabbit://`) of this vhost
    /// on `nodes`, in that order.
    pub fn transport_url(&self, nodes: &[Node]) -> String {
        let hosts: Vec<String> = nodes
            .iter()
            .map(|n| format!("guest:guest@127.0.0.1:{}", n.port()))
            .collect();
        format!("rabbit://{}/{}", hosts.join(","), self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Err(e) = node.ctl(&["delete_vhost", &self.name]) {
                eprintln!("could not delete vhost {}: {e}", self.name);
            }
        }
    }
}
