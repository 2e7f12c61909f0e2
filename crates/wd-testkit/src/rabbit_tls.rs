//! A RabbitMQ node with TLS from a private CA, for the broker TLS tests.
//!
//! Like [`RabbitMq2`](crate::RabbitMq2) it is its own node
//! (`wd-rabbit-tls@localhost`), so the shared brokers on 5672 and 5673 are
//! never touched: plain AMQP on 127.0.0.1:5675 (for administration), AMQP
//! over TLS on 127.0.0.1:5674, distribution on 25674, data under
//! `target/wd-services/rabbit-tls/`. [`RabbitMqTls::start`] makes a fresh
//! private PKI with `openssl` (a CA, a server certificate for `localhost`
//! and `127.0.0.1`, a client certificate, and an unrelated second CA with
//! its own client certificate), writes the node's `rabbitmq.conf`
//! (`ssl_options.verify = verify_peer`, `fail_if_no_peer_cert = false`: a
//! client certificate is optional, and checked when presented), and starts
//! the node; dropping the returned guard stops it and removes its directory.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{daemon_command, pid_alive, run_quiet, stop_pid};
use crate::rabbit2::LocalNode;
use crate::services::{read_pid, services_dir, wait_until};

/// A running TLS node; stopped, and its files removed, when dropped.
#[derive(Debug)]
pub struct RabbitMqTls {
    dir: PathBuf,
}

/// The files of the node's private PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A client certificate from `ca`, and its key.
    pub client_cert: PathBuf,
    /// The key of `client_cert`.
    pub client_key: PathBuf,
    /// An unrelated CA (the "wrong CA").
    pub other_ca: PathBuf,
    /// A client certificate from `other_ca`, and its key.
    pub other_client_cert: PathBuf,
    /// The key of `other_client_cert`.
    pub other_client_key: PathBuf,
}

impl RabbitMqTls {
    /// Its Erlang node name.
    pub const NODE: &'static str = "wd-rabbit-tls@localhost";
    /// Its AMQP-over-TLS port.
    pub const TLS_PORT: u16 = 5674;
    /// Its plain AMQP port (administration).
    pub const PORT: u16 = 5675;
    /// Its Erlang distribution port.
    pub const DIST_PORT: u16 = 25674;

    fn base() -> PathBuf {
        services_dir().join("rabbit-tls")
    }

    /// The private PKI of a node started by [`RabbitMqTls::start`].
    pub fn pki(&self) -> Pki {
        let p = |n: &str| self.dir.join("pki").join(n);
        Pki {
            ca: p("ca.pem"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            other_ca: p("other-ca.pem"),
            other_client_cert: p("other-client.pem"),
            other_client_key: p("other-client.key"),
        }
    }

    /// The plain AMQP URL of its `guest` account on vhost `/`.
    pub fn admin_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", Self::PORT)
    }

    fn up(port: u16) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    fn local(dir: &Path) -> LocalNode {
        LocalNode {
            node: Self::NODE,
            port: Self::PORT,
            dist_port: Self::DIST_PORT,
            dir: dir.to_owned(),
            pid_file: dir.join("rabbit.pid"),
            config: Some(dir.join("rabbitmq.conf")),
        }
    }

    fn ctl(dir: &Path, args: &[&str]) -> bool {
        Self::local(dir).ctl(args)
    }

    /// Makes the PKI and starts the node (stopping a leftover one first),
    /// waiting up to 120 s. Needs root, `openssl` and `rabbitmq-server`.
    pub fn start() -> Result<RabbitMqTls, String> {
        let dir = Self::base();
        if Self::up(Self::PORT) || Self::up(Self::TLS_PORT) {
            Self::stop_node(&dir);
        }
        let _ = fs::remove_dir_all(&dir);
        for sub in ["mnesia", "log", "pki"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("create {}: {e}", dir.join(sub).display()))?;
        }
        // From here on, dropping the guard undoes everything.
        let node = RabbitMqTls { dir: dir.clone() };
        make_pki(&dir.join("pki"))?;
        let pki = dir.join("pki");
        let conf = format!(
            "listeners.ssl.default = 127.0.0.1:{}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            Self::TLS_PORT,
            pki.join("ca.pem").display(),
            pki.join("server.pem").display(),
            pki.join("server.key").display(),
        );
        fs::write(dir.join("rabbitmq.conf"), conf)
            .map_err(|e| format!("write rabbitmq.conf: {e}"))?;
        fs::write(dir.join("enabled_plugins"), "[].\n")
            .map_err(|e| format!("write enabled_plugins: {e}"))?;
        if !run_quiet(
            "chown",
            &["-R", "rabbitmq:rabbitmq", &dir.display().to_string()],
        ) {
            return Err(format!("chown -R rabbitmq {} failed", dir.display()));
        }
        let status = Self::local(&dir)
            .env(&mut daemon_command("rabbitmq-server"))
            .arg("-detached")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("start rabbitmq-server ({}): {e}", Self::NODE))?;
        if !status.success() {
            return Err(format!("rabbitmq-server -detached exited with {status}"));
        }
        let ready = wait_until(Duration::from_secs(120), || {
            Self::ctl(&dir, &["await_startup", "--timeout", "5"])
        });
        if !ready || !wait_until(Duration::from_secs(10), || Self::up(Self::TLS_PORT)) {
            return Err(format!(
                "RabbitMQ node {} did not listen on TLS within 120 s; see {}",
                Self::NODE,
                dir.join("log").display()
            ));
        }
        Ok(node)
    }

    fn stop_node(dir: &Path) {
        let pid = read_pid(&dir.join("rabbit.pid")).filter(|&p| pid_alive(p));
        Self::ctl(dir, &["shutdown", "--timeout", "30"]);
        if let Some(pid) = pid {
            stop_pid(pid, Duration::from_secs(10));
        }
    }
}

impl Drop for RabbitMqTls {
    fn drop(&mut self) {
        Self::stop_node(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A CA `name`, and a certificate `leaf` from it with extensions `ext`.
fn ca(dir: &Path, name: &str) -> Result<(), String> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=wd test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    )
}

fn leaf(dir: &Path, ca: &str, leaf: &str, cn: &str, ext: &str) -> Result<(), String> {
    let ext_file = format!("{leaf}.ext");
    fs::write(dir.join(&ext_file), ext).map_err(|e| format!("write {ext_file}: {e}"))?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &format!("{leaf}.pem"),
        ],
    )
}

fn make_pki(dir: &Path) -> Result<(), String> {
    ca(dir, "ca")?;
    ca(dir, "other-ca")?;
    leaf(
        dir,
        "ca",
        "server",
        "localhost",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    let client =
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
    leaf(dir, "ca", "client", "wd-agent", client)?;
    leaf(dir, "other-ca", "other-client", "wd-agent", client)
}
