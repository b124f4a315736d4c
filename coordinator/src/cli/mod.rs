//! The `refit` command line: argument parsing, output formats and exit codes.
//!
//! Layout:
//! - `exit`: the documented exit codes
//! - `check`: `refit check`, the fine-tune decision for a dataset

mod check;
pub mod exit;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// refit keeps NLU models fresh: it decides whether a stored model may be fine-tuned on new
/// training data and runs the training as a job on a pool of workers.
#[derive(Debug, Parser)]
#[command(name = "refit", version, about, long_about = None)]
#[command(after_help = exit::HELP)]
pub struct Cli {
    /// Log filter for messages on stderr, e.g. `info` or `refit_proto=debug`.
    #[arg(long, global = true, env = "REFIT_LOG", default_value = "warn")]
    pub log: String,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decide whether a model may be fine-tuned on new training data, and show the label diff.
    Check(check::CheckArgs),
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Human,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Check(args) => check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit::ERROR.into()
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}
