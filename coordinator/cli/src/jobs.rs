//! `refit jobs`, `refit job ID` and `refit cancel ID`: the coordinator's job store, for people
//! (tables, a job's details and events) or as the API's JSON (`--output json`). Also the
//! formatting of states, progress, metrics and times that `refit submit --wait` shares.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use refit_proto::Metrics;

use super::client::{Client, JobQuery};
use super::connect::ConnectArgs;
use super::{Output, exit, print_json, print_stdout, table};
use refit_proto::wire::{EventView, JobState, JobView, ProgressView};

/// The most jobs one `refit jobs` fetches.
const MAX_LIMIT: u32 = 10_000;
/// The API's page size limit.
const PAGE: u32 = 500;

/// Arguments of `refit jobs`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  refit jobs                               # the latest 20 jobs
  refit jobs --model financial --state failed --limit 100
  refit jobs --state running --output json | jq -r '.jobs[].id'

States: queued, running, stalled (no heartbeat lately), succeeded, failed, cancelled, dead
(dead-lettered). --output json prints {\"jobs\": [JobView, ...], \"next_cursor\": ...}.")]
pub struct JobsArgs {
    /// Only this model's jobs.
    #[arg(long, short)]
    model: Option<String>,

    /// Only jobs in this state.
    #[arg(long, short, value_parser = state_parser())]
    state: Option<JobState>,

    /// At most this many jobs, newest first.
    #[arg(long, short = 'n', default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    limit: u32,

    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// `--state`: one of [`JobState::ALL`] (listed in `--help` and in completions).
fn state_parser() -> impl TypedValueParser<Value = JobState> {
    PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .try_map(|s| s.parse::<JobState>())
}

/// Arguments of `refit job`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  refit job 0190f5c2-7a1e-7c3b-9d2f-1b2c3d4e5f60
  refit job ID --all-events              # progress and heartbeat events too
  refit job ID --output json | jq '{state, version, metrics}'

--output json prints the job as the API has it (id, model, state, mode, version, attempts,
metrics, events, ...).")]
pub struct JobArgs {
    /// The job id (as `refit submit` or `refit jobs` printed it).
    #[arg(value_name = "ID")]
    id: String,

    /// Show every event; by default progress and heartbeat events are only counted.
    #[arg(long)]
    all_events: bool,

    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// Arguments of `refit cancel`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  refit cancel 0190f5c2-7a1e-7c3b-9d2f-1b2c3d4e5f60
  refit cancel ID --output json

A queued job is cancelled at once; a running job when its worker stops it (refit job ID shows
when). Cancelling a job that already ended is an error (exit code 1).")]
pub struct CancelArgs {
    /// The job id.
    #[arg(value_name = "ID")]
    id: String,

    /// Output format: `json` prints the job after the request.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) fn run_list(args: JobsArgs) -> Result<ExitCode> {
    let client = Client::from_args(&args.connect)?;
    let mut jobs: Vec<JobView> = Vec::new();
    let mut raw: Vec<serde_json::Value> = Vec::new();
    let mut cursor = None;
    loop {
        let remaining = args.limit - jobs.len() as u32;
        let answer = client.jobs(&JobQuery {
            model: args.model.clone(),
            state: args.state,
            limit: remaining.min(PAGE),
            cursor: cursor.take(),
        })?;
        if let Some(page) = answer.json.get("jobs").and_then(|j| j.as_array()) {
            raw.extend(page.iter().cloned());
        }
        let got = answer.value.jobs.len();
        jobs.extend(answer.value.jobs);
        cursor = answer.value.next_cursor;
        if got == 0 || cursor.is_none() || jobs.len() as u32 >= args.limit {
            break;
        }
    }
    match args.output {
        Output::Json => {
            print_json(&serde_json::json!({ "jobs": raw, "next_cursor": cursor }))?;
        }
        Output::Human => {
            if jobs.is_empty() {
                print_stdout("no jobs")?;
            } else {
                print_stdout(&jobs_table(&jobs, Utc::now()))?;
                if cursor.is_some() {
                    eprintln!("(more jobs: raise --limit, now {})", args.limit);
                }
            }
        }
    }
    Ok(ExitCode::from(exit::OK))
}

pub(super) fn run_show(args: JobArgs) -> Result<ExitCode> {
    let client = Client::from_args(&args.connect)?;
    let answer = client.job(args.id.trim())?;
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human => {
            let job = &answer.value;
            let mut text = job_details(job, args.all_events, Utc::now());
            // The comparisons the job's evaluation made (best effort: the job view stands alone).
            if job.state == JobState::Succeeded
                && job.metrics.is_some()
                && let Ok(evaluation) = client.evaluation(&job.model, &job.version)
                && !evaluation.value.comparisons.is_empty()
            {
                text.push_str(
                    "\n\ncompared on the eval data (refit versions MODEL --compare A B):",
                );
                for c in &evaluation.value.comparisons {
                    text.push_str(&format!("\n  {}", comparison_line(c)));
                }
            }
            print_stdout(&text)?;
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// One comparison in a line: against what, the headline deltas, the negative flips.
pub(super) fn comparison_line(c: &refit_proto::evaluation::Comparison) -> String {
    let roles = if c.roles.is_empty() {
        String::new()
    } else {
        format!(" ({})", c.roles.join(", "))
    };
    format!(
        "vs {}{roles}: intent wF1 {:+.3}, entity F1 {:+.3}, {} negative flips ({:.1} %), {} positive",
        c.before,
        c.deltas.intent_weighted_f1,
        c.deltas.entity_f1,
        c.negative_flips.examples,
        c.negative_flips.rate * 100.0,
        c.positive_flips.examples
    )
}

pub(super) fn run_cancel(args: CancelArgs) -> Result<ExitCode> {
    let client = Client::from_args(&args.connect)?;
    let answer = client.cancel(args.id.trim())?;
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human => {
            let job = &answer.value;
            let line = match job.state {
                JobState::Cancelled => format!("job {} cancelled", job.id),
                state => format!(
                    "job {}: cancel requested ({state}); its worker stops it shortly \
                     (refit job {} shows when)",
                    job.id, job.id
                ),
            };
            print_stdout(&line)?;
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// The `refit jobs` table.
fn jobs_table(jobs: &[JobView], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.model.clone(),
                j.version.clone(),
                j.mode.to_string(),
                j.state.to_string(),
                j.attempts.to_string(),
                status_note(j),
                ago(j.submitted_at, now),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "model",
            "version",
            "mode",
            "state",
            "attempts",
            "progress / metrics",
            "submitted",
        ],
        &rows,
    )
}

/// What a job is up to, in a few words: progress while running, metrics once succeeded, the
/// error once failed.
pub(super) fn status_note(job: &JobView) -> String {
    match job.state {
        JobState::Queued if !job.published => "waiting to be published".to_owned(),
        JobState::Queued => "waiting for a worker".to_owned(),
        JobState::Running | JobState::Stalled => match &job.progress {
            Some(p) => progress_line(p),
            None => "starting".to_owned(),
        },
        JobState::Succeeded => match &job.metrics {
            Some(m) => format!(
                "intent wF1 {:.3}  entity F1 {:.3}",
                m.intent_weighted_f1, m.entity_f1
            ),
            None => "no eval data".to_owned(),
        },
        JobState::Failed | JobState::Dead => {
            shorten(job.error.as_deref().unwrap_or("no error recorded"), 60)
        }
        JobState::Cancelled => String::new(),
    }
}

/// `train epoch 3.2/30  loss 0.4123  ETA 42s`.
pub(super) fn progress_line(p: &ProgressView) -> String {
    let mut parts = Vec::new();
    if let Some(phase) = &p.phase {
        parts.push(phase.clone());
    }
    if p.total_epochs > 0.0 {
        parts.push(format!(
            "epoch {}/{}",
            epochs(p.epoch),
            epochs(p.total_epochs)
        ));
    } else if p.epoch > 0.0 {
        parts.push(format!("epoch {}", epochs(p.epoch)));
    }
    if p.step > 0 {
        parts.push(format!("loss {:.4}", p.loss));
    }
    if let Some(eta) = p.eta_secs {
        parts.push(format!("ETA {}", duration(eta)));
    }
    if let Some(trouble) = &p.trouble {
        parts.push(format!("({})", shorten(trouble, 120)));
    }
    parts.join("  ")
}

/// `3`, `3.2`: an epoch count without float noise.
fn epochs(e: f64) -> String {
    let rounded = (e * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// `intent accuracy 0.912  intent macro-F1 …  entity F1 0.871  (112 held-out examples)`.
pub(super) fn metrics_line(m: &Metrics) -> String {
    format!(
        "intent accuracy {:.3}  intent macro-F1 {:.3}  intent weighted-F1 {:.3}  \
         entity F1 {:.3} (P {:.3}, R {:.3})  on {} held-out examples",
        m.intent_accuracy,
        m.intent_macro_f1,
        m.intent_weighted_f1,
        m.entity_f1,
        m.entity_precision,
        m.entity_recall,
        m.examples
    )
}

/// `42s`, `3m07s`, `2h05m`.
pub(super) fn duration(secs: f64) -> String {
    let secs = if secs.is_finite() {
        secs.max(0.0).round() as u64
    } else {
        0
    };
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub(super) fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `2025-01-02 03:04:05 UTC (5m ago)`.
fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", at.format("%Y-%m-%d %H:%M:%S UTC"), ago(at, now))
}

/// At most `max` characters, on one line.
fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// `financial v2 (finetune from v1)`.
pub(super) fn job_title(job: &JobView) -> String {
    match &job.base_version {
        Some(base) => format!("{} {} ({} from {base})", job.model, job.version, job.mode),
        None => format!("{} {} ({})", job.model, job.version, job.mode),
    }
}

/// `refit job ID`: the job's fields, then its events.
fn job_details(job: &JobView, all_events: bool, now: DateTime<Utc>) -> String {
    let mut lines = vec![format!("job {}: {}  {}", job.id, job_title(job), job.state)];
    let mut field = |name: &str, value: String| lines.push(format!("  {name:<11} {value}"));
    let requested = if job.requested_mode == job.mode {
        String::new()
    } else {
        format!(" (requested {})", job.requested_mode)
    };
    field("mode", format!("{}{requested}", job.mode));
    if let Some(decision) = &job.decision {
        let reasons = if decision.reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", decision.reasons.join(", "))
        };
        field("decision", format!("{}{reasons}", decision.decision));
    }
    field(
        "dataset",
        format!(
            "{} (sha256 {})",
            job.dataset.key,
            short_sha(&job.dataset.sha256)
        ),
    );
    field("pool", job.pool.clone());
    let mut attempts = job.attempts.to_string();
    if let Some(worker) = &job.worker {
        attempts.push_str(&format!(" (worker {worker})"));
    }
    field("attempts", attempts);
    if let Some(schedule) = &job.schedule {
        field("schedule", schedule.clone());
    }
    if job.state == JobState::Queued && !job.published {
        field("published", "not yet (in the outbox)".to_owned());
    }
    field("submitted", when(job.submitted_at, now));
    if let Some(at) = job.started_at {
        field("started", when(at, now));
    }
    if let Some(at) = job.finished_at {
        let took = (at - job.submitted_at).num_milliseconds() as f64 / 1000.0;
        field(
            "finished",
            format!("{} after {}", when(at, now), duration(took)),
        );
    }
    if let Some(at) = job.last_heartbeat_at
        && !job.state.is_final()
    {
        field("heartbeat", ago(at, now));
    }
    if let Some(at) = job.last_checkpoint_at {
        field("checkpoint", when(at, now));
    }
    if let Some(p) = &job.progress
        && !job.state.is_final()
    {
        field("progress", progress_line(p));
    }
    if let Some(m) = &job.metrics {
        field("metrics", metrics_line(m));
    } else if job.state == JobState::Succeeded {
        field("metrics", "none (the job had no eval data)".to_owned());
    }
    if !job.timings.is_empty() {
        field("timings", timings_line(&job.timings));
    }
    match (&job.promotion, &job.promote_to) {
        (Some(p), _) => field("promotion", format!("{}: {}", p.outcome, p.summary)),
        (None, Some(alias)) if job.state == JobState::Succeeded => {
            field(
                "promotion",
                format!("{alias}: the gate's decision is pending"),
            );
        }
        (None, Some(alias)) if !job.state.is_final() => {
            field(
                "promote to",
                format!("{alias}, if the new version passes its gate"),
            );
        }
        _ => {}
    }
    if let Some(error) = &job.error {
        field("error", error.clone());
    }

    lines.push(String::new());
    lines.push(format!("events ({}):", job.events.len()));
    let mut hidden: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &job.events {
        if !all_events && matches!(event.kind.as_str(), "progress" | "heartbeat") {
            *hidden.entry(event.kind.as_str()).or_default() += 1;
            continue;
        }
        lines.push(event_line(event));
    }
    if job.events.is_empty() {
        lines.push("  (none yet)".to_owned());
    }
    if !hidden.is_empty() {
        let counts: Vec<String> = hidden.iter().map(|(k, n)| format!("{n} {k}")).collect();
        lines.push(format!(
            "  ({} events not shown; --all-events shows them)",
            counts.join(", ")
        ));
    }
    lines.join("\n")
}

/// The stages in the order a job goes through them (others follow, by name).
const STAGES: [&str; 8] = [
    "queue_wait",
    "download",
    "load",
    "train",
    "evaluate",
    "export",
    "upload",
    "total",
];

/// `queue_wait 0.01s, download 0.05s, load 0.02s, train 41.0s, …` in stage order.
fn timings_line(timings: &BTreeMap<String, f64>) -> String {
    let rank = |stage: &str| {
        STAGES
            .iter()
            .position(|s| *s == stage)
            .unwrap_or(STAGES.len())
    };
    let mut stages: Vec<_> = timings.iter().collect();
    stages.sort_by_key(|(stage, _)| (rank(stage), stage.as_str()));
    stages
        .iter()
        .map(|(stage, secs)| match **secs {
            s if s < 1.0 => format!("{stage} {s:.2}s"),
            s => format!("{stage} {s:.1}s"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first 12 hex digits of a sha256.
pub(super) fn short_sha(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

/// `  #3  12:00:01  attempt 1  worker-a  progress  epoch 1, loss 0.5231`.
fn event_line(event: &EventView) -> String {
    format!(
        "  #{:<4} {}  attempt {}  {}  {:<12} {}",
        event.seq,
        event.at.format("%H:%M:%S"),
        event.attempt,
        event.worker,
        event.kind,
        event_summary(&event.kind, &event.body)
    )
    .trim_end()
    .to_owned()
}

/// The event's fields in a few words; unknown shapes as compact JSON.
fn event_summary(kind: &str, body: &serde_json::Value) -> String {
    let num = |key: &str| body.get(key).and_then(serde_json::Value::as_f64);
    let text = |key: &str| body.get(key).and_then(serde_json::Value::as_str);
    match kind {
        "started" => {
            let mut s = match num("total_epochs") {
                Some(total) if total > 0.0 => format!("{} epochs", epochs(total)),
                _ => String::new(),
            };
            if let Some(from) = num("resumed_from_epoch") {
                s.push_str(&format!(", resumed after epoch {}", epochs(from)));
            }
            s
        }
        "progress" => {
            let mut s = format!(
                "epoch {}, loss {:.4}",
                epochs(num("epoch").unwrap_or(0.0)),
                num("loss").unwrap_or(0.0)
            );
            if let Some(eta) = num("eta_secs") {
                s.push_str(&format!(", ETA {}", duration(eta)));
            }
            s
        }
        "heartbeat" => match text("trouble") {
            Some(trouble) => format!("{}: {trouble}", text("phase").unwrap_or_default()),
            None => text("phase").unwrap_or_default().to_owned(),
        },
        "checkpointed" => format!("after epoch {}", epochs(num("epoch").unwrap_or(0.0))),
        "succeeded" => {
            let version = body
                .get("version")
                .map(|v| match v.as_u64() {
                    Some(n) => format!("v{n}"),
                    None => v.to_string(),
                })
                .unwrap_or_default();
            let metrics = body
                .get("metrics")
                .and_then(|m| serde_json::from_value::<Metrics>(m.clone()).ok())
                .map(|m| {
                    format!(
                        ", intent wF1 {:.3}, entity F1 {:.3}",
                        m.intent_weighted_f1, m.entity_f1
                    )
                })
                .unwrap_or_default();
            format!("{version}{metrics}")
        }
        "failed" => format!(
            "{} ({})",
            shorten(text("error").unwrap_or("?"), 200),
            text("error_kind").unwrap_or("?")
        ),
        "cancelled" => String::new(),
        _ if body.as_object().is_some_and(|o| o.is_empty()) => String::new(),
        _ => shorten(&body.to_string(), 200),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_read_in_stage_order() {
        let timings: BTreeMap<String, f64> = [
            ("upload", 0.06),
            ("train", 55.43),
            ("queue_wait", 0.011),
            ("total", 55.6),
            ("load", 0.02),
            ("download", 0.05),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(
            timings_line(&timings),
            "queue_wait 0.01s, download 0.05s, load 0.02s, train 55.4s, upload 0.06s, total 55.6s"
        );
    }

    #[test]
    fn durations_and_ages_read_well() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(187.0), "3m07s");
        assert_eq!(duration(7500.0), "2h05m");
        assert_eq!(duration(f64::NAN), "0s");
        let now = Utc::now();
        assert_eq!(ago(now - chrono::Duration::seconds(5), now), "5s ago");
        assert_eq!(ago(now - chrono::Duration::minutes(5), now), "5m ago");
        assert_eq!(ago(now - chrono::Duration::hours(30), now), "1d ago");
        assert_eq!(ago(now + chrono::Duration::seconds(5), now), "0s ago");
    }

    #[test]
    fn progress_reads_without_float_noise() {
        let p = ProgressView {
            epoch: 3.0000001,
            total_epochs: 30.000000000000004,
            step: 12,
            loss: 0.41234,
            examples_per_sec: 100.0,
            eta_secs: Some(42.0),
            phase: Some("train".into()),
            trouble: None,
        };
        assert_eq!(progress_line(&p), "train  epoch 3/30  loss 0.4123  ETA 42s");
        let troubled = ProgressView {
            trouble: Some("S3 unreachable for 12 s: connection refused".into()),
            ..p
        };
        assert_eq!(
            progress_line(&troubled),
            "train  epoch 3/30  loss 0.4123  ETA 42s  (S3 unreachable for 12 s: connection refused)"
        );
        assert_eq!(epochs(3.25), "3.3");
        assert_eq!(shorten("a\nb   c", 3), "a b…");
    }

    #[test]
    fn events_are_summarised() {
        let body = serde_json::json!({"error": "no such\nfile", "error_kind": "permanent"});
        assert_eq!(event_summary("failed", &body), "no such file (permanent)");
        let body = serde_json::json!({"version": 2, "metrics": null, "timings": {}});
        assert_eq!(event_summary("succeeded", &body), "v2");
        assert_eq!(event_summary("cancelled", &serde_json::json!({})), "");
        assert_eq!(
            event_summary("new_kind", &serde_json::json!({"a": 1})),
            "{\"a\":1}"
        );
    }
}
