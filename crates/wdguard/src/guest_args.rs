//! The flags every guest-facing subcommand shares: flavor and image
//! properties, operator policy, architecture, machine type, libvirt version.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use wd_policy::{OperatorPolicy, Resolved, resolve};
use wd_xml::LibvirtVersion;

/// A flavor extra spec / attribute or image property, `KEY=VALUE`.
pub type Property = (String, String);

/// Parses `KEY=VALUE`; the value may be empty or contain `=`.
fn property(s: &str) -> Result<Property, String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Flags that describe a guest.
#[derive(Debug, Args)]
pub struct GuestArgs {
    /// A flavor extra spec or attribute, e.g. hw:watchdog_action=reset (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = property)]
    pub flavor: Vec<Property>,
    /// An image property, e.g. hw_watchdog_action=pause (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = property)]
    pub image: Vec<Property>,
    /// Operator policy, a TOML file: `default = "pause"` and
    /// `[[image_rules]]` tables with `deny` and `scope`.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Guest architecture, as in libvirt's `<os><type arch=…>` [default: x86_64].
    #[arg(long)]
    pub arch: Option<String>,
    /// Machine type, e.g. pc, q35, pc-q35-8.2 [default: pc].
    #[arg(long, value_name = "TYPE")]
    pub machine: Option<String>,
    /// The libvirt version that will define the guest, X.Y.Z [default: the
    /// local libvirt library's].
    #[arg(long, value_name = "X.Y.Z")]
    pub libvirt_version: Option<LibvirtVersion>,
}

impl GuestArgs {
    /// Resolves the guest's setting from the flags and the policy file.
    pub fn resolve(&self) -> Result<Resolved> {
        let policy = match &self.policy {
            Some(path) => load_policy(path)?,
            None => OperatorPolicy::default(),
        };
        Ok(resolve(
            self.flavor.iter().map(|(k, v)| (k, v)),
            self.image.iter().map(|(k, v)| (k, v)),
            &policy,
        )?)
    }

    /// The libvirt version given, or the local library's.
    pub fn libvirt_version(&self) -> Result<LibvirtVersion> {
        match self.libvirt_version {
            Some(v) => Ok(v),
            None => {
                // libvirt prints its errors to stderr by default; we report
                // them ourselves.
                wd_events::quiet_default_errors();
                let v = wd_events::library_version().context(
                    "cannot ask the local libvirt library for its version; pass --libvirt-version",
                )?;
                Ok(LibvirtVersion::from(v))
            }
        }
    }
}

/// Reads an operator policy; unknown keys are errors that name the key.
pub fn load_policy(path: &Path) -> Result<OperatorPolicy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file `{}`", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // toml's own Display spans several lines with a source excerpt.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(" line {l}:")).unwrap_or_default();
        anyhow::anyhow!(
            "invalid policy file `{}`:{at} {}",
            path.display(),
            e.message()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_syntax() {
        let check = |input: &str, expected: Result<(&str, &str), &str>| {
            let got = property(input);
            match expected {
                Ok((k, v)) => assert_eq!(got, Ok((k.to_owned(), v.to_owned())), "{input}"),
                Err(e) => assert_eq!(got, Err(e.to_owned()), "{input}"),
            }
        };
        check(
            "hw:watchdog_action=reset",
            Ok(("hw:watchdog_action", "reset")),
        );
        check("watchdog=", Ok(("watchdog", "")));
        check("a=b=c", Ok(("a", "b=c")));
        check("reset", Err("`reset` is not KEY=VALUE"));
        check("=reset", Err("`=reset` is not KEY=VALUE"));
        check("", Err("`` is not KEY=VALUE"));
    }
}
