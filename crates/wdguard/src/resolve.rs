//! `wdguard resolve`: a guest's watchdog setting, where it came from, and its
//! libvirt devices.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use serde::Serialize;
use wd_policy::{Resolved, Source, WatchdogAction};
use wd_xml::{LibvirtVersion, Target, WatchdogDevice, devices};

use crate::guest_args::GuestArgs;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolveFormat {
    /// The provenance line, then one line per device.
    Text,
    /// One JSON object.
    Json,
    /// The device elements, one per line.
    Xml,
}

/// `wdguard resolve` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    guest: GuestArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ResolveFormat::Text)]
    format: ResolveFormat,
}

/// The JSON output.
#[derive(Debug, Serialize)]
struct Report<'a> {
    /// The action, or null when disabled.
    action: Option<WatchdogAction>,
    /// `disabled` or the action.
    setting: String,
    source: Source,
    key: Option<&'static str>,
    arch: &'a str,
    machine: &'a str,
    libvirt_version: LibvirtVersion,
    devices: &'a [WatchdogDevice],
}

/// Renders the output for a resolved setting on a target.
fn render(resolved: &Resolved, target: &Target, format: ResolveFormat) -> Result<String> {
    let devices = devices(resolved.setting, target)?;
    let mut out = String::new();
    match format {
        ResolveFormat::Text => {
            out.push_str(&format!("{resolved}\n"));
            if devices.is_empty() {
                out.push_str("device: none\n");
            }
            for d in &devices {
                out.push_str(&format!("device: {} action={}\n", d.model, d.action));
            }
        }
        ResolveFormat::Json => {
            let report = Report {
                action: resolved.setting.action(),
                setting: resolved.setting.to_string(),
                source: resolved.source,
                key: resolved.key,
                arch: &target.arch,
                machine: &target.machine,
                libvirt_version: target.libvirt,
                devices: &devices,
            };
            out = serde_json::to_string(&report)?;
            out.push('\n');
        }
        ResolveFormat::Xml => {
            for d in &devices {
                out.push_str(&format!("{d}\n"));
            }
        }
    }
    Ok(out)
}

/// Runs `wdguard resolve`.
pub fn run(args: Args) -> Result<()> {
    let resolved = args.guest.resolve()?;
    let target = Target::new(
        args.guest.arch.as_deref().unwrap_or(Target::DEFAULT_ARCH),
        args.guest
            .machine
            .as_deref()
            .unwrap_or(Target::DEFAULT_MACHINE),
        args.guest.libvirt_version()?,
    );
    let out = render(&resolved, &target, args.format)?;
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wd_policy::{OperatorPolicy, resolve};

    fn check(image: &str, machine: &str, libvirt: &str, format: ResolveFormat, expected: &str) {
        let resolved = resolve(
            [("hw:watchdog_action", "reset")],
            [("hw_watchdog_action", image)],
            &OperatorPolicy::default(),
        )
        .unwrap();
        let target = Target::new("x86_64", machine, libvirt.parse().unwrap());
        assert_eq!(render(&resolved, &target, format).unwrap(), expected);
    }

    #[test]
    fn formats() {
        check(
            "pause",
            "pc",
            "9.0.0",
            ResolveFormat::Text,
            "watchdog=pause (image property hw_watchdog_action)\ndevice: i6300esb action=pause\n",
        );
        check(
            "disabled",
            "pc",
            "9.0.0",
            ResolveFormat::Text,
            "watchdog=disabled (image property hw_watchdog_action)\ndevice: none\n",
        );
        check(
            "disabled",
            "q35",
            "9.1.0",
            ResolveFormat::Json,
            "{\"action\":null,\"setting\":\"disabled\",\"source\":\"image\",\"key\":\"hw_watchdog_action\",\"arch\":\"x86_64\",\"machine\":\"q35\",\"libvirt_version\":\"9.1.0\",\"devices\":[{\"model\":\"itco\",\"action\":\"none\"}]}\n",
        );
        check(
            "poweroff",
            "q35",
            "9.1.0",
            ResolveFormat::Xml,
            "<watchdog model='i6300esb' action='poweroff'/>\n<watchdog model='itco' action='poweroff'/>\n",
        );
        check("disabled", "pc", "9.1.0", ResolveFormat::Xml, "");
    }
}
