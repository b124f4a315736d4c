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

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use refit_proto::data::{MAX_DATASET_BYTES, load_files};
use refit_proto::decision::{DecisionReport, Policy};
use refit_proto::{Mode, ModelName, keys};

use super::client::{Client, ClientError, ConnectArgs};
use super::jobs::{duration, job_title, metrics_line, progress_line};
use super::{Output, exit, print_json, print_stdout};
use crate::wire::{DatasetBody, JobState, JobView, SubmitRequest};

/// How long `--wait` keeps trying while the coordinator cannot be reached.
const WAIT_RECONNECT: Duration = Duration::from_secs(120);
/// The least time between two progress lines when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Arguments of `refit submit`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # a first version (trained from scratch: the model has none yet)
  refit submit --model financial --data set1.yml --eval test.yml --wait

  # fine-tune it on old + new examples (several files are merged and uploaded as one)
  refit submit --model financial --data set1.yml set2.yml --eval test.yml --wait

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

    /// Higher runs first (0 to 255) [default: 0].
    #[arg(long, value_name = "N")]
    priority: Option<u8>,

    /// The worker pool to queue the job for [default: the coordinator's].
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,

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

/// Polls the job until it is final; returns it typed and as sent.
fn wait(client: &Client, job: JobView, poll: Duration) -> Result<(JobView, serde_json::Value)> {
    let mut display = WaitDisplay::new(&job);
    let mut lost_since: Option<Instant> = None;
    loop {
        std::thread::sleep(poll);
        match client.job(&job.id) {
            Ok(answer) => {
                if lost_since.take().is_some() {
                    display.note("reconnected to the coordinator");
                }
                display.update(&answer.value);
                if answer.value.state.is_final() {
                    display.finish();
                    return Ok((answer.value, answer.json));
                }
            }
            Err(error @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
                let since = *lost_since.get_or_insert_with(|| {
                    display.note(&format!(
                        "lost the coordinator ({error}); retrying for up to {}",
                        duration(WAIT_RECONNECT.as_secs_f64())
                    ));
                    Instant::now()
                });
                if since.elapsed() > WAIT_RECONNECT {
                    display.finish();
                    return Err(anyhow::Error::new(error).context(format!(
                        "stopped waiting for job {}; it may still be running (refit job {})",
                        job.id, job.id
                    )));
                }
            }
            Err(error) => {
                display.finish();
                return Err(error.into());
            }
        }
    }
}

/// `--wait`'s progress on stderr: a bar on a terminal, else occasional lines.
struct WaitDisplay {
    bar: Option<ProgressBar>,
    /// The bar shows epochs (not a spinner) since a total is known.
    bar_has_total: bool,
    id: String,
    last_key: (JobState, Option<String>, u32),
    last_line: Option<Instant>,
}

impl WaitDisplay {
    fn new(job: &JobView) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                    .expect("the template is valid"),
            );
            bar.set_prefix(format!("{} {}", job.model, job.version));
            bar.set_message(job.state.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            bar_has_total: false,
            id: job.id.clone(),
            last_key: (job.state, None, 0),
            last_line: None,
        }
    }

    fn update(&mut self, job: &JobView) {
        let progress = job.progress.as_ref().filter(|_| !job.state.is_final());
        let state = match (job.state, job.attempts) {
            (JobState::Queued, 0) => "queued".to_owned(),
            (s, a) if a > 1 => format!("{s} (attempt {a})"),
            (s, _) => s.to_string(),
        };
        let detail = progress.map(progress_line).unwrap_or_default();
        if let Some(bar) = &self.bar {
            if let Some(p) = progress
                && p.total_epochs > 0.0
            {
                if !self.bar_has_total {
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix} [{bar:20.cyan/blue}] {wide_msg}",
                        )
                        .expect("the template is valid")
                        .progress_chars("=> "),
                    );
                    self.bar_has_total = true;
                }
                bar.set_length((p.total_epochs * 100.0).round() as u64);
                bar.set_position((p.epoch.min(p.total_epochs) * 100.0).round() as u64);
            }
            bar.set_message(format!("{state}  {detail}").trim_end().to_owned());
            return;
        }
        // No terminal: a line when the state or phase changes, or the epoch does (rate-limited).
        let key = (
            job.state,
            progress.and_then(|p| p.phase.clone()),
            progress.map_or(0, |p| p.epoch.floor() as u32),
        );
        let changed_state = key.0 != self.last_key.0 || key.1 != self.last_key.1;
        let changed_epoch = key.2 != self.last_key.2;
        let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_INTERVAL);
        if job.state.is_final() || changed_state || (changed_epoch && due) {
            eprintln!(
                "{}",
                format!("job {}: {state}  {detail}", self.id).trim_end()
            );
            self.last_key = key;
            self.last_line = Some(Instant::now());
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Where a dataset comes from.
#[derive(Debug, PartialEq)]
pub(super) enum DataSource {
    /// Local files, uploaded (merged when several).
    Files(Vec<PathBuf>),
    /// A content-addressed key already in the bucket.
    Key(DatasetBody),
}

impl DataSource {
    /// Reads `--data`-style arguments: local files, or exactly one content-addressed key.
    pub(super) fn from_args(args: &[PathBuf], flag: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for arg in args {
            if let Some(key) = remote_key(arg) {
                keys.push(key.with_context(|| format!("{flag} {}", arg.display()))?);
            }
        }
        match (keys.len(), args.len()) {
            (0, _) => Ok(DataSource::Files(args.to_vec())),
            (1, 1) => Ok(DataSource::Key(keys.remove(0))),
            _ => bail!(
                "{flag}: a dataset key cannot be merged with other files or keys; give one \
                 key, or local files only"
            ),
        }
    }

    /// The dataset as the coordinator knows it, uploading local files first. Notes go to stderr.
    pub(super) fn upload(self, client: &Client, what: &str) -> Result<DatasetBody> {
        let files = match self {
            DataSource::Key(key) => return Ok(key),
            DataSource::Files(files) => files,
        };
        let data = load_files(&files)?;
        if data.is_empty() {
            bail!("the {what} holds no examples");
        }
        let (bytes, ext, shown) = if let [path] = files.as_slice() {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .filter(|e| keys::DATASET_EXTENSIONS.contains(&e.as_str()))
                .with_context(|| {
                    format!(
                        "{}: expected a .yml, .yaml, .jsonl or .json file",
                        path.display()
                    )
                })?;
            let bytes =
                read_file(path).with_context(|| format!("cannot read {}", path.display()))?;
            (bytes, ext, path.display().to_string())
        } else {
            let jsonl = data.to_jsonl();
            let shown = format!("{} files merged as JSONL", files.len());
            (jsonl.into_bytes(), "jsonl".to_owned(), shown)
        };
        let size = bytes.len();
        let dataset = client.upload_dataset(bytes, &ext)?;
        let duplicates = match data.duplicates_dropped {
            0 => String::new(),
            n => format!(", {n} duplicates dropped"),
        };
        eprintln!(
            "{what}: {shown} ({} examples{duplicates}, {}) -> {}",
            data.len(),
            size_text(size),
            dataset.key
        );
        Ok(dataset)
    }
}

/// Reads a whole file, refusing one larger than the coordinator could take.
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() > MAX_DATASET_BYTES {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the limit of {MAX_DATASET_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// `12.3 KiB`.
fn size_text(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// `Some` when `arg` names a dataset in the bucket rather than a local file: `s3://…`, or a
/// `datasets/sha256/…` key that is not a local path.
fn remote_key(arg: &Path) -> Option<Result<DatasetBody>> {
    let text = arg.to_str()?;
    if let Some(rest) = text.strip_prefix("s3://") {
        return Some(match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => content_key(key),
            _ => Err(anyhow::anyhow!(
                "expected s3://BUCKET/datasets/sha256/<sha256>.<ext>"
            )),
        });
    }
    if text.starts_with("datasets/sha256/") && !arg.exists() {
        return Some(content_key(text));
    }
    None
}

/// Checks that `key` is `datasets/sha256/<hex>.<ext>` and takes the sha256 from it.
fn content_key(key: &str) -> Result<DatasetBody> {
    let parsed = key
        .strip_prefix("datasets/sha256/")
        .and_then(|name| name.rsplit_once('.'))
        .and_then(|(hex, ext)| keys::dataset(hex, ext).ok().map(|k| (k, hex)));
    match parsed {
        Some((canonical, hex)) if canonical == key => Ok(DatasetBody {
            key: canonical,
            sha256: hex.to_owned(),
        }),
        _ => bail!(
            "{key:?} is not a content-addressed dataset key. A job names exactly the bytes it \
             trains on, so refit reads datasets from datasets/sha256/<sha256 of the file>.<yml|\
             yaml|jsonl|json> (64 lowercase hex digits). Pass the local file instead (refit \
             submit uploads it under that key), or copy the object to \
             datasets/sha256/$(sha256sum FILE | cut -c1-64).yml"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn content_addressed_keys_are_taken_as_they_are() {
        let key = format!("datasets/sha256/{HEX}.yml");
        let source =
            DataSource::from_args(&[PathBuf::from(format!("s3://refit/{key}"))], "--data").unwrap();
        assert_eq!(
            source,
            DataSource::Key(DatasetBody {
                key: key.clone(),
                sha256: HEX.to_owned()
            })
        );
        let source = DataSource::from_args(&[PathBuf::from(&key)], "--data").unwrap();
        assert!(matches!(source, DataSource::Key(_)));
    }

    #[test]
    fn other_keys_say_what_to_do() {
        for bad in [
            "s3://refit/incoming/nlu.yml".to_owned(),
            format!("s3://refit/datasets/sha256/{}.yml", HEX.to_uppercase()),
            format!("s3://refit/datasets/sha256/{HEX}.txt"),
            format!("datasets/sha256/{}.yml", &HEX[1..]),
            "s3://refit".to_owned(),
        ] {
            let err = DataSource::from_args(&[PathBuf::from(&bad)], "--data").unwrap_err();
            let text = format!("{err:#}");
            assert!(text.starts_with("--data "), "{bad}: {text}");
            assert!(
                text.contains("content-addressed") || text.contains("expected s3://"),
                "{bad}: {text}"
            );
        }
        let key = format!("s3://refit/datasets/sha256/{HEX}.yml");
        let err = DataSource::from_args(&[PathBuf::from(&key), PathBuf::from("a.yml")], "--data")
            .unwrap_err();
        assert!(err.to_string().contains("cannot be merged"), "{err}");
    }

    #[test]
    fn local_files_stay_local() {
        let source =
            DataSource::from_args(&[PathBuf::from("a.yml"), PathBuf::from("b.yml")], "--data")
                .unwrap();
        assert_eq!(
            source,
            DataSource::Files(vec![PathBuf::from("a.yml"), PathBuf::from("b.yml")])
        );
    }

    #[test]
    fn final_states_map_to_exit_codes() {
        assert_eq!(final_exit_code(JobState::Succeeded), exit::OK);
        assert_eq!(final_exit_code(JobState::Failed), exit::JOB_FAILED);
        assert_eq!(final_exit_code(JobState::Dead), exit::JOB_FAILED);
        assert_eq!(final_exit_code(JobState::Cancelled), exit::JOB_CANCELLED);
        assert_eq!(size_text(12), "12 B");
        assert_eq!(size_text(12_595), "12.3 KiB");
    }
}
