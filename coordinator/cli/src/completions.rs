//! `refit completions SHELL`: the shell completion script for every command and flag, generated
//! from the command line's definition with `clap_complete`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, exit, write_stdout};

/// Arguments of `refit completions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # bash (needs the bash-completion package)
  mkdir -p ~/.local/share/bash-completion/completions
  refit completions bash > ~/.local/share/bash-completion/completions/refit

  # zsh: a folder on $fpath, then restart the shell
  mkdir -p ~/.zfunc && refit completions zsh > ~/.zfunc/_refit
  # and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath)

  # fish
  refit completions fish > ~/.config/fish/completions/refit.fish

  # PowerShell: add to $PROFILE
  refit completions powershell | Out-String | Invoke-Expression")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

pub(super) fn run(args: CompletionsArgs) -> Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "refit", &mut script);
    write_stdout(&script)?;
    Ok(ExitCode::from(exit::OK))
}
