//! `wdguard generate-assets DIR` (hidden): the man pages and shell completions,
//! generated from the clap definitions when the Debian package is built
//! (`cargo xtask package`), so they never drift from the binary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Flags of `wdguard generate-assets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write `man/*.1` and `completions/{NAME.bash,_NAME,NAME.fish}`.
    #[arg(value_name = "DIR")]
    out: PathBuf,
    /// The command's name on the installed system: the pages are `NAME.1`,
    /// `NAME-watch.1`, … and the completions complete `NAME`.
    #[arg(long, value_name = "NAME", default_value = "wdguard")]
    name: String,
}

/// Writes every man page (`NAME.1`, `NAME-watch.1`, …) and the bash, zsh
/// and fish completions for `cmd`, called `NAME`.
pub fn run(args: Args, cmd: clap::Command) -> Result<()> {
    // clap wants a `&'static str` for a command's name (without its
    // `string` feature); this one-shot command leaks one short string.
    let name: &'static str = Box::leak(args.name.clone().into_boxed_str());
    let cmd = cmd.name(name).bin_name(name);
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("create `{}`", dir.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("write man pages into `{}`", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, name, &completions).with_context(|| {
            format!("write {shell} completions into `{}`", completions.display())
        })?;
    }
    Ok(())
}
