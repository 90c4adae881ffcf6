//! `vessel completions SHELL` and `vessel man`: shell completions and manual pages generated
//! from the command definitions (`clap_complete`, `clap_mangen`), so they always match the
//! verbs and flags of this build.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command};
use clap_complete::Shell;

/// `vessel completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// `vessel man`.
#[derive(Args)]
pub struct ManArgs {
    /// Write a page per verb (vessel.1, vessel-create.1, ...) into this directory instead of
    /// printing vessel(1).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` of the command `cmd`.
pub fn completions(mut cmd: Command, args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Prints the manual page of `cmd`, or writes every verb's page into `args.dir`.
pub fn man(cmd: Command, args: ManArgs) -> anyhow::Result<ExitCode> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
        None => clap_mangen::Man::new(cmd).render(&mut io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}
