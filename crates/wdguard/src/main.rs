//! `wdguard`: the operator's command line for guest watchdogs.
//!
//! `wdguard resolve` shows which watchdog a flavor, an image and an operator
//! policy give a guest, and the libvirt devices that follow; `wdguard patch`
//! puts them into a domain document. Each subcommand lives in its own module
//! (`resolve`, `patch`, `watch`), with the flags they share in `guest`; a new one
//! (such as `watch`) is a new module and a new [`Command`] variant.
//!
//! Like `wd-compute`, this binary may depend on every `wd` crate, but not
//! on libvirt: it reaches libvirt only through `wd-events` and
//! `wd-compute`'s agent, and stays free of `unsafe`.
//!
//! Every error exits with status 2 and one line on stderr
//! (`wdguard: <message>`), and leaves stdout empty.
#![forbid(unsafe_code)]

mod assets;
mod filemode;
mod guest_args;
mod logging;
mod patch;
mod queue;
mod resolve;
mod serve;
mod status;
mod systemd;
mod watch;
#[cfg(test)]
mod watch_settings_tests;

use std::io::Write as _;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

/// Guest watchdog tools for libvirt/KVM compute hosts.
#[derive(Debug, Parser)]
#[command(name = "wdguard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve a guest's watchdog setting and show its libvirt devices.
    Resolve(resolve::Args),
    /// Put a guest's watchdog devices into a libvirt domain document.
    Patch(patch::Args),
    /// Run the agent: listen to libvirt's watchdog events and notify owners.
    #[command(after_long_help = watch::LONG_HELP)]
    Watch(watch::Args),
    /// Write the man pages and shell completions into a directory (used
    /// when building the package).
    #[command(hide = true)]
    GenerateAssets(assets::Args),
    /// Show each delivery destination's backlog, oldest entry and last error.
    Status(status::Args),
    /// Deliver or drop the backlog of a removed (retired or orphaned)
    /// destination.
    Queue(queue::Args),
}

/// `err` and its causes on one line ([`wd_notify::error_chain`]).
fn one_line(err: &anyhow::Error) -> String {
    wd_notify::error_chain(&**err)
}

/// clap's own error, without its usage and hints, on one line.
fn clap_message(err: &clap::Error) -> String {
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a subcommand is required (resolve, patch, watch, status, queue); see wdguard --help"
            .to_owned();
    }
    let text = err.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let head = text.split("\n\n").next().unwrap_or(text);
    head.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fail(message: &str) -> ExitCode {
    eprintln!("wdguard: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            // Help and version are answers, not errors.
            let _ = write!(std::io::stdout(), "{err}");
            return ExitCode::SUCCESS;
        }
        Err(err) => return fail(&clap_message(&err)),
    };
    let result = match cli.command {
        Command::Resolve(args) => resolve::run(args),
        Command::Patch(args) => patch::run(args),
        Command::Watch(args) => watch::run(args),
        Command::GenerateAssets(args) => {
            assets::run(args, <Cli as clap::CommandFactory>::command())
        }
        Command::Status(args) => status::run(args),
        Command::Queue(args) => queue::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&one_line(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_become_one_line_without_repeats() {
        let check = |err: anyhow::Error, expected: &str| {
            assert_eq!(one_line(&err), expected);
        };
        check(anyhow::anyhow!("plain"), "plain");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        check(
            anyhow::Error::new(io).context("cannot read `x`"),
            "cannot read `x`: gone",
        );
        check(
            anyhow::anyhow!("first line\n  second line").context("outer"),
            "outer: first line second line",
        );
        let repeated = anyhow::anyhow!("tag not closed").context("syntax error: tag not closed");
        check(repeated, "syntax error: tag not closed");
    }

    #[test]
    fn clap_errors_lose_usage_and_hints() {
        let check = |args: &[&str], expected: &str| {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(clap_message(&err), expected);
        };
        check(
            &["wdguard", "resolve", "--bogus"],
            "unexpected argument '--bogus' found",
        );
        check(
            &["wdguard"],
            "a subcommand is required (resolve, patch, watch, status, queue); see wdguard --help",
        );
        check(
            &["wdguard", "resolve", "--format", "yaml"],
            "invalid value 'yaml' for '--format <FORMAT>' [possible values: text, json, xml]",
        );
    }
}
