//! The `refit` command line: argument parsing, output formats and exit codes.
//!
//! Layout:
//! - `exit`: the documented exit codes
//! - `check`: `refit check`, the fine-tune decision for a dataset
//! - `demo`: `refit demo`, the seed experiment (scratch, fine-tune, retrain) in one process
//! - `predict`: `refit predict`, intents and entities of texts from a stored version

mod check;
mod demo;
pub mod exit;
mod predict;

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
    /// Train v1 on set1, fine-tune it on set1 + set2 (v2), retrain from scratch (v3), compare.
    Demo(demo::DemoArgs),
    /// Print the intents and entities a stored version finds in texts.
    Predict(predict::PredictArgs),
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
        Command::Demo(args) => demo::run(args),
        Command::Predict(args) => predict::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit::ERROR.into()
        }
    }
}

/// Prints `text` and a newline on stdout. A closed pipe (`refit … | head`) is not an error: the
/// reader has what it wanted.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
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
