//! `wdctl generate-assets DIR` (hidden): the man pages and shell completions,
//! generated from the clap definitions when the Debian package is built
//! (`cargo xtask package`), so they never drift from the binary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Flags of `wdctl generate-assets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write `man/*.1` and `completions/{wdctl.bash,_wdctl,wdctl.fish}`.
    #[arg(value_name = "DIR")]
    out: PathBuf,
}

/// Writes every man page (`wdctl.1`, `wdctl-watch.1`, …) and the bash, zsh
/// and fish completions for `cmd`.
pub fn run(args: Args, cmd: clap::Command) -> Result<()> {
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("create `{}`", dir.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("write man pages into `{}`", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "wdctl", &completions).with_context(|| {
            format!("write {shell} completions into `{}`", completions.display())
        })?;
    }
    Ok(())
}
