//! `wdguard patch`: put a guest's watchdog devices into a domain document.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use wd_xml::{Target, patch};

use crate::guest_args::GuestArgs;

/// `wdguard patch` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `--arch` and `--machine` override the document's `<os><type>`.
    #[command(flatten)]
    guest: GuestArgs,
    /// The domain document to read [default: stdin].
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Where to write the patched document [default: stdout]. Written to a
    /// temporary file in the same directory, then renamed into place, so it is
    /// never left half-written.
    #[arg(long = "out", value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Runs `wdguard patch`.
pub fn run(args: Args) -> Result<()> {
    let resolved = args.guest.resolve()?;
    let xml = match &args.input {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?,
        None => {
            let mut xml = String::new();
            std::io::stdin()
                .read_to_string(&mut xml)
                .context("cannot read stdin")?;
            xml
        }
    };
    let mut target = Target::for_domain(&xml, args.guest.libvirt_version()?)?;
    if let Some(arch) = &args.guest.arch {
        target.arch.clone_from(arch);
    }
    if let Some(machine) = &args.guest.machine {
        target.machine.clone_from(machine);
    }
    let out = patch(&xml, resolved.setting, &target)?;
    match &args.output {
        Some(path) => write_atomically(path, out.as_bytes())
            .with_context(|| format!("cannot write `{}`", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(out.as_bytes())
            .context("cannot write to stdout"),
    }
}

/// Writes a temporary file next to `path` and renames it over `path`, so
/// readers see the old file or the whole new one. An existing file's
/// permissions are kept.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".wdguard-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", dir.display()))?;
    tmp.write_all(data)?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}
