//! # refit-cli
//!
//! The `refit` command line: argument parsing, output formats and exit codes. The remote commands
//! talk to the coordinator over HTTP (bodies from `refit_proto::wire`); `demo`, `predict` and the
//! offline `check` work locally with the engine (`refit-engine`) and the registry over a local
//! directory (`refit-io`). It reaches into no service's internals.
//!
//! ## Layout
//! - `exit`: the documented exit codes
//! - `connect`: where the coordinator is and which token to send (flags, env or config file)
//! - `client`: the coordinator's HTTP API, a blocking client
//! - `submit`: `refit submit`, a training job; `data_source`: where `--data`/`--eval` come
//!   from (local files uploaded, or a key in the bucket); `wait`: `--wait` following the job
//! - `jobs`: `refit jobs`, `refit job ID`, `refit cancel ID`
//! - `models`: `refit models`, `refit versions MODEL`, `refit alias MODEL ALIAS VERSION`
//! - `check`: `refit check`, the fine-tune decision for a dataset (offline, or asking the
//!   coordinator with `--model`)
//! - `demo`: `refit demo`, the seed experiment (scratch, fine-tune, retrain) in one process
//! - `predict`: `refit predict`, intents and entities of texts from a stored version
//! - `serve`: `refit serve`, Rasa's NLU HTTP API over stored versions, following aliases
//! - `pull`: `refit pull`, a stored version's files copied into a folder, checked
//! - `completions`: `refit completions SHELL`, the shell completion script
//!
//! Results go to stdout (through `print_stdout`, so `refit … | head` is fine); progress,
//! notes and errors go to stderr.

mod check;
pub mod client;
mod completions;
pub mod connect;
mod data_source;
mod demo;
pub mod exit;
mod jobs;
mod models;
mod predict;
mod pull;
mod serve;
mod submit;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// What `refit --help` ends with: a first session, then the exit codes.
fn top_help() -> String {
    format!(
        "\
Examples:
  # train a first version, then fine-tune it on more data, following the job
  refit submit --model financial --data set1.yml --wait
  refit submit --model financial --data set1.yml set2.yml --eval test.yml --wait

  # what is running, and the lineage of a model's versions
  refit jobs --state running
  refit versions financial

  # offline: may a model trained on set1.yml be fine-tuned on set1 + set2?
  refit check --base set1.yml --data set1.yml set2.yml

The coordinator's address and token come from --url/--token, REFIT_URL/REFIT_TOKEN or
~/.config/refit/cli.toml (deploy/local/up.sh prints the export lines for a local stack).
`refit COMMAND --help` shows each command's flags and examples.

{}",
        exit::HELP
    )
}

/// refit keeps NLU models fresh: it decides whether a stored model may be fine-tuned on new
/// training data and runs the training as a job on a pool of workers.
#[derive(Debug, Parser)]
#[command(name = "refit", version, about, long_about = None)]
#[command(after_help = top_help())]
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
    /// Submit a training job: upload the data, print the decision and the job id.
    Submit(submit::SubmitArgs),
    /// Decide whether a model may be fine-tuned on new training data; show the label diff and
    /// the words the data labels two ways.
    Check(check::CheckArgs),
    /// List jobs, newest first.
    Jobs(jobs::JobsArgs),
    /// Show one job: its state, progress, metrics and events.
    Job(jobs::JobArgs),
    /// Cancel a queued or running job.
    Cancel(jobs::CancelArgs),
    /// List the models the coordinator knows.
    Models(models::ModelsArgs),
    /// List a model's stored versions with their lineage and metrics.
    Versions(models::VersionsArgs),
    /// Point an alias (e.g. `prod`) of a model at a stored version.
    Alias(models::AliasArgs),
    /// Print the intents and entities a stored version finds in texts.
    Predict(predict::PredictArgs),
    /// Serve stored versions over Rasa's NLU HTTP API (POST /model/parse), following aliases.
    Serve(serve::ServeArgs),
    /// Copy a stored version's files into a folder, each checked against its sha256.
    Pull(pull::PullArgs),
    /// Train v1 on set1, fine-tune it on set1 + set2 (v2), retrain from scratch (v3), compare.
    Demo(demo::DemoArgs),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
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
        Command::Submit(args) => submit::run(args),
        Command::Check(args) => check::run(args),
        Command::Jobs(args) => jobs::run_list(args),
        Command::Job(args) => jobs::run_show(args),
        Command::Cancel(args) => jobs::run_cancel(args),
        Command::Models(args) => models::run_models(args),
        Command::Versions(args) => models::run_versions(args),
        Command::Alias(args) => models::run_alias(args),
        Command::Predict(args) => predict::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Completions(args) => completions::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            // A coordinator error carries its own exit code (unreachable, token refused, …).
            error
                .downcast_ref::<client::ClientError>()
                .map_or(exit::ERROR, client::ClientError::exit_code)
                .into()
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

/// Writes `bytes` to stdout as they are; a closed pipe is not an error ([`print_stdout`]).
pub(crate) fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints a JSON value, pretty, as the one document on stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    print_stdout(&serde_json::to_string_pretty(value).expect("a JSON value serialises"))
}

/// A plain-text table: a header row and left-aligned columns two spaces apart, trailing
/// spaces trimmed.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (cell, width) in cells.zip(&widths) {
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
        }
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(&mut header.iter().copied())];
    for row in rows {
        lines.push(line(&mut row.iter().map(String::as_str)));
    }
    lines.join("\n")
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["v1".to_owned(), "-".to_owned(), "scratch".to_owned()],
            vec!["v10".to_owned(), "v1".to_owned(), "finetune".to_owned()],
        ];
        assert_eq!(
            table(&["version", "parent", "mode"], &rows),
            "version  parent  mode\nv1       -       scratch\nv10      v1      finetune"
        );
    }
}
