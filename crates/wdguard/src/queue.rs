//! `wdguard queue drain|drop DIR`: deliver or drop the backlog of a
//! destination that a reload removed (`retired`), or that a restart found
//! on disk with no destination (`orphaned`).
//!
//! It asks the running agent on its local socket (`POST /queue/drain` or
//! `/queue/drop`, which the agent answers there only, never on its TCP
//! address). Configured destinations are refused: remove one from the
//! config (and reload) first. When no agent runs, `drop --spool DIR`
//! deletes the queue directory itself, unless something holds its lock.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// `wdguard queue` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Deliver a retired destination's backlog (with the settings it had
    /// when it was removed), then close its queue.
    Drain(Target),
    /// Delete a retired or orphaned destination's backlog; prints how many
    /// entries were dropped.
    Drop(Target),
}

/// `wdguard queue` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Which queue, and where to reach the agent.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The destination: its queue directory (`dir` in `wdguard status
    /// --format json`, e.g. `project-<hex>`), or its name as `wdguard
    /// status` shows it.
    #[arg(value_name = "DIR")]
    name: String,
    /// The agent's local status socket (`wdguard watch --status-socket`).
    #[arg(long, value_name = "PATH", default_value = crate::status::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// With `drop`, when no agent answers: the spool directory whose
    /// `dest/DIR` is deleted (only if no process holds its lock).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
}

/// Runs `wdguard queue`.
pub fn run(args: Args) -> Result<()> {
    let (op, t) = match &args.command {
        Command::Drain(t) => ("drain", t),
        Command::Drop(t) => ("drop", t),
    };
    let query: String = url::form_urlencoded::byte_serialize(t.name.as_bytes()).collect();
    let answer = if t.socket.exists() {
        Some(crate::status::ask_socket_for(
            &t.socket,
            &format!("POST /queue/{op}?name={query}"),
        ))
    } else {
        None
    };
    let line = match (answer, op, &t.spool) {
        (Some(Ok(v)), "drop", _) => dropped_line(&v, &t.name),
        (Some(Ok(_)), _, _) => format!(
            "{}: draining; its queue closes once empty (see `wdguard status`)",
            t.name
        ),
        // The agent answered and refused: that is the answer.
        (Some(Err(e)), _, _) if !is_unreachable(&e) => return Err(e),
        (_, "drop", Some(spool)) => {
            let n = drop_offline(spool, &t.name)?;
            format!("{}: dropped {n} entries (agent not running)", t.name)
        }
        (Some(Err(e)), _, _) => return Err(e),
        (None, _, _) => bail!(
            "no agent answers on `{}` (give --socket PATH{})",
            t.socket.display(),
            if op == "drop" {
                ", or --spool DIR when the agent is not running"
            } else {
                ""
            }
        ),
    };
    writeln!(std::io::stdout(), "{line}").context("write to stdout")
}

fn dropped_line(v: &Value, name: &str) -> String {
    format!(
        "{name}: dropped {} entries",
        v["dropped"].as_u64().unwrap_or(0)
    )
}

/// Whether `e` says no agent listens (rather than that one refused).
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        })
    })
}

/// Deletes `spool/dest/DIR` with the agent stopped: only a queue
/// directory (one path component), only when no process holds its lock.
fn drop_offline(spool: &std::path::Path, dir: &str) -> Result<u64> {
    if dir.is_empty() || dir.contains('/') || dir == "." || dir == ".." {
        bail!(
            "`{dir}` is not a queue directory; allowed offline: a `dir` as `wdguard status --spool` lists it (e.g. project-<hex>)"
        );
    }
    let path = spool.join("dest").join(dir);
    if !path.is_dir() {
        bail!(
            "no queue `{dir}` in `{}`; allowed: a directory listed by `wdguard status --spool {}`",
            spool.join("dest").display(),
            spool.display()
        );
    }
    wd_notify::drop_queue_dir(&path)
        .with_context(|| format!("cannot drop the queue `{}`", path.display()))
}
