//! `refit submit`: uploads the training data content-addressed (or names a dataset already in
//! the bucket), asks the coordinator for a job (`POST /v1/jobs`), prints the fine-tune decision
//! and the job id, and with `--wait` follows the job to its end.
//!
//! - One local file is uploaded as it is (`POST /v1/datasets?ext=<its extension>`), so its key is
//!   `datasets/sha256/<sha256sum of the file>.<ext>`. Several files are read and merged as
//!   `refit check` merges them (exact duplicates dropped) and uploaded as one JSONL file.
//! - `s3://BUCKET/datasets/sha256/<hex>.<ext>` (or the bare key) names a dataset already in the
//!   coordinator's bucket; nothing is uploaded. Other keys are refused: a job must name exactly
//!   the bytes it trains on.
//! - `--wait` polls `GET /v1/jobs/{id}` about once a second. On a terminal stderr shows a progress
//!   bar (epoch, loss, ETA); otherwise a line per state, phase or epoch change (at most one every
//!   few seconds). The exit code follows the final state ([`exit`]).
//! - `--output json` prints exactly one JSON document on stdout: the API's `SubmitResponse`
//!   (`{"job", "decision"}`) without `--wait`, the final `JobView` with it, the API's error body
//!   when the decision is reject.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use refit_proto::decision::{DecisionReport, Policy};
use refit_proto::wire::{JobState, JobView, SubmitRequest};
use refit_proto::{Mode, ModelName};

use super::client::{Client, ClientError};
use super::connect::ConnectArgs;
use super::data_source::DataSource;
use super::jobs::{duration, job_title, metrics_line};
use super::wait::wait;
use super::{Output, exit, print_json, print_stdout};

/// Arguments of `refit submit`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # a first version (trained from scratch: the model has none yet)
  refit submit --model financial --data set1.yml --eval test.yml --wait

  # fine-tune it on old + new examples (several files are merged and uploaded as one)
  refit submit --model financial --data set1.yml set2.yml --eval test.yml --wait

  # nightly-style: fine-tune, and move the prod alias to the new version only if it is at
  # least as good as prod's current version on test.yml (the promotion gate)
  refit submit --model financial --data nlu.yml --eval test.yml --promote-to prod --wait

  # a script: train from scratch if the labels changed, read the result as JSON
  refit submit --model financial --data nlu.yml --policy scratch --wait --output json

  # a dataset already in the bucket (content-addressed), fine-tuned from the prod alias
  refit submit --model financial --base prod \\
      --data s3://refit/datasets/sha256/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.yml

--data is the whole training set (old plus new examples): a fine-tune continues from the base
version's weights on all of it, for --epoch-fraction of the base's epochs (default 0.3). The
decision is fine-tune when the labels (intents, entity types, roles, groups) are unchanged;
otherwise --policy says whether to reject the job (exit 11, nothing queued) or train from scratch.

Exit codes: 0 submitted (with --wait: succeeded), 11 rejected, 12 failed or dead-lettered,
13 cancelled, 14 coordinator unreachable, 15 token refused, 1 other errors.")]
pub struct SubmitArgs {
    /// The model to train a new version of (lowercase letters, digits, `-`, `_`).
    #[arg(long, short)]
    model: String,

    /// The whole training set: Rasa YAML or JSONL files (several are merged), or one
    /// content-addressed key `s3://BUCKET/datasets/sha256/<hex>.<ext>` in the coordinator's
    /// bucket.
    #[arg(long, short, required = true, num_args = 1.., value_name = "FILE|KEY")]
    data: Vec<PathBuf>,

    /// Held-out data the new version is evaluated on (files or a key, as for --data).
    #[arg(long, num_args = 1.., value_name = "FILE|KEY")]
    eval: Vec<PathBuf>,

    /// `auto` fine-tunes when the decision allows it and otherwise follows --policy;
    /// `finetune` is rejected when it cannot be honoured; `scratch` always trains new weights
    /// [default: auto].
    #[arg(long, value_parser = mode_parser())]
    mode: Option<Mode>,

    /// What `auto` does when the model cannot be fine-tuned on this data: `reject` the job or
    /// train from `scratch` [default: reject].
    #[arg(long, value_parser = policy_parser())]
    policy: Option<Policy>,

    /// The version to fine-tune from: `v3`, `3` or an alias [default: the latest].
    #[arg(long, value_name = "VERSION|ALIAS")]
    base: Option<String>,

    /// Epochs to train [default: the coordinator's; for a fine-tune --epoch-fraction applies].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    epochs: Option<u32>,

    /// A fine-tune trains this fraction of the base version's epochs [default: 0.3].
    #[arg(long, value_name = "F", value_parser = parse_fraction, conflicts_with = "epochs")]
    epoch_fraction: Option<f64>,

    /// Examples per optimiser step in the first epoch [default: 32]; given alone, it is kept for
    /// the whole run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch_size: Option<u32>,

    /// Examples per step in the last epoch: the batch size grows linearly from --batch-size over
    /// the run, as DIET does [default: 128 when --batch-size is not given either].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    final_batch_size: Option<u32>,

    /// AdamW learning rate [default: 0.003].
    #[arg(long, value_name = "F", value_parser = parse_learning_rate)]
    learning_rate: Option<f64>,

    /// Seed for initialisation, shuffling and dropout.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// 0 to 255: above 0, the job runs before every job of priority 0 waiting in its pool (it
    /// goes to the pool's priority queue, which workers drain first) [default: 0].
    #[arg(long, value_name = "N")]
    priority: Option<u8>,

    /// The worker pool to queue the job for: letters, digits, '-' and '_' [default: the
    /// coordinator's].
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,

    /// When the job succeeds, move this alias to the new version if it passes the alias's gate
    /// (the coordinator's `[promotion]` policy: F1 and per-intent recall not down, few negative
    /// flips, against the alias's current version on the --eval data). Needs --eval.
    #[arg(long, value_name = "ALIAS", requires = "eval")]
    promote_to: Option<String>,

    /// Follow the job until it ends: progress on stderr, then its metrics and version; the exit
    /// code follows its final state.
    #[arg(long)]
    wait: bool,

    /// Output format: `json` prints one JSON document on stdout (the submit response, or with
    /// --wait the final job).
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    /// Milliseconds between two polls with --wait.
    #[arg(long, hide = true, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    poll_ms: u64,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// `--mode`: auto, finetune or scratch (listed in `--help` and in completions).
pub(super) fn mode_parser() -> impl TypedValueParser<Value = Mode> {
    PossibleValuesParser::new(["auto", "finetune", "scratch"]).try_map(|s| s.parse::<Mode>())
}

/// `--policy`: reject or scratch.
pub(super) fn policy_parser() -> impl TypedValueParser<Value = Policy> {
    PossibleValuesParser::new(["reject", "scratch"]).try_map(|s| s.parse::<Policy>())
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f.is_finite() && f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err("expected a number above 0 and at most 1, e.g. 0.3".to_owned())
    }
}

fn parse_learning_rate(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f.is_finite() && f > 0.0 {
        Ok(f)
    } else {
        Err("expected a positive number, e.g. 0.001".to_owned())
    }
}

pub(super) fn run(args: SubmitArgs) -> Result<ExitCode> {
    let model = ModelName::new(args.model.trim()).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    // Everything local is checked before the first request.
    let data = DataSource::from_args(&args.data, "--data")?;
    let eval = if args.eval.is_empty() {
        None
    } else {
        Some(DataSource::from_args(&args.eval, "--eval")?)
    };
    let client = Client::from_args(&args.connect)?;
    let dataset = data.upload(&client, "training data")?;
    let eval_dataset = eval.map(|e| e.upload(&client, "eval data")).transpose()?;

    let request = SubmitRequest {
        model: model.to_string(),
        dataset: Some(dataset),
        eval_dataset,
        mode: args.mode,
        policy: args.policy,
        base: args.base.clone(),
        epochs: args.epochs,
        epoch_fraction: args.epoch_fraction,
        batch_size: args.batch_size,
        final_batch_size: args.final_batch_size,
        learning_rate: args.learning_rate,
        seed: args.seed,
        priority: args.priority,
        pool: args.pool.clone(),
        promote_to: args.promote_to.clone(),
    };
    let answer = match client.submit(&request) {
        Ok(answer) => answer,
        Err(ClientError::Api {
            code,
            body,
            message,
            ..
        }) if code == "rejected" => return rejected(&body, &message, args.output),
        Err(error) => return Err(error.into()),
    };
    let Some(job) = answer.value.job.clone() else {
        bail!("the coordinator accepted the job but did not return it; see `refit jobs`");
    };

    if !args.wait {
        match args.output {
            Output::Json => print_json(&answer.json)?,
            Output::Human => {
                print_stdout(&format!(
                    "{}\njob {}: {}, {}",
                    answer.value.decision.human().trim_end(),
                    job.id,
                    job_title(&job),
                    job.state
                ))?;
                eprintln!(
                    "follow it with `refit job {}` (or submit with --wait)",
                    job.id
                );
            }
        }
        return Ok(ExitCode::from(exit::OK));
    }

    if args.output == Output::Human {
        print_stdout(&format!(
            "{}\njob {}: {}",
            answer.value.decision.human().trim_end(),
            job.id,
            job_title(&job)
        ))?;
    }
    eprintln!(
        "waiting for job {} (Ctrl-C stops waiting, not the job)",
        job.id
    );
    let (last, json) = wait(&client, job, Duration::from_millis(args.poll_ms))?;
    match args.output {
        Output::Json => print_json(&json)?,
        Output::Human => print_stdout(&final_summary(&last))?,
    }
    Ok(ExitCode::from(final_exit_code(last.state)))
}

/// A 409 `rejected`: the decision report (or the error body as JSON), exit code 11.
fn rejected(body: &serde_json::Value, message: &str, output: Output) -> Result<ExitCode> {
    let report = body
        .pointer("/error/details")
        .and_then(|d| serde_json::from_value::<DecisionReport>(d.clone()).ok());
    match output {
        Output::Json => print_json(body)?,
        Output::Human => match &report {
            Some(report) => print_stdout(report.human().trim_end())?,
            None => print_stdout(&format!("decision: reject\n  {message}"))?,
        },
    }
    let hint = match report.as_ref().map(|r| r.mode) {
        Some(Mode::Finetune) => "rerun with --mode scratch (or --mode auto --policy scratch)",
        _ => "rerun with --policy scratch",
    };
    eprintln!("rejected: nothing was queued. To train from scratch instead, {hint}.");
    Ok(ExitCode::from(exit::REJECTED))
}

/// The exit code for a job that ended in `state`.
fn final_exit_code(state: JobState) -> u8 {
    match state {
        JobState::Succeeded => exit::OK,
        JobState::Cancelled => exit::JOB_CANCELLED,
        _ => exit::JOB_FAILED,
    }
}

/// The last lines of `refit submit --wait`.
fn final_summary(job: &JobView) -> String {
    let took = job
        .finished_at
        .map(|at| {
            format!(
                " after {}",
                duration((at - job.submitted_at).num_milliseconds() as f64 / 1000.0)
            )
        })
        .unwrap_or_default();
    let head = format!("job {}: {} {}{took}", job.id, job_title(job), job.state);
    match job.state {
        JobState::Succeeded => match &job.metrics {
            Some(m) => format!("{head}\n  {}", metrics_line(m)),
            None => format!("{head}\n  no metrics: the job had no --eval data"),
        },
        JobState::Failed | JobState::Dead => {
            let error = match (&job.error, job.state) {
                (Some(error), _) => error.as_str(),
                (None, JobState::Dead) => {
                    "dead-lettered without a final event from a worker (past the queue's \
                     delivery limit?)"
                }
                (None, _) => "no error recorded",
            };
            format!(
                "{head}\n  attempts: {}\n  error: {error}\n  (refit job {} shows its events)",
                job.attempts, job.id
            )
        }
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_map_to_exit_codes() {
        assert_eq!(final_exit_code(JobState::Succeeded), exit::OK);
        assert_eq!(final_exit_code(JobState::Failed), exit::JOB_FAILED);
        assert_eq!(final_exit_code(JobState::Dead), exit::JOB_FAILED);
        assert_eq!(final_exit_code(JobState::Cancelled), exit::JOB_CANCELLED);
    }
}
