//! `refit models`, `refit versions MODEL [--compare A B]` and `refit alias MODEL ALIAS [VERSION]`:
//! what the object store holds, as the coordinator reads it: models, each version's lineage
//! (parent, mode, fine-tune depth, training data) and metrics, comparisons between two versions
//! on the same eval data, and the aliases that name versions, moved through the promotion gate.

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use refit_proto::{Alias, ModelName, Version};

use super::client::{Client, ClientError};
use super::connect::ConnectArgs;
use super::jobs::{ago, short_sha};
use super::{Output, exit, print_json, print_stdout, table};
use refit_proto::evaluation::Comparison;
use refit_proto::promotion::{AliasHistory, GateResult};
use refit_proto::wire::{AliasRequest, ModelView, VersionView};

/// Arguments of `refit models`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  refit models
  refit models --output json | jq -r '.models[].name'")]
pub struct ModelsArgs {
    /// Output format: `json` prints the API's {\"models\": [...]}.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// Arguments of `refit versions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  refit versions financial
  refit versions financial --output json | jq '.versions[-1].metrics'

Columns: parent is the version a fine-tune started from (lineage v1 -> v2 -> ...), depth the
fine-tunes since the last scratch run, dataset the first 12 hex digits of the training data's
sha256 (its key is datasets/sha256/<sha256>.<ext>), intent wF1 / entity F1 the metrics on the
job's eval data.

  # v3 against v2 on their common eval data: metric deltas, per-label changes, negative flips
  refit versions financial --compare v2 v3
  refit versions financial --compare v2 v3 --output json | jq '.negative_flips'

--compare OLDER NEWER uses the comparison NEWER's job made (its worker evaluated its parent and
its --promote-to alias's version on the same eval data), else both versions' stored evaluations
when they share eval data. A negative flip is an eval example OLDER got right (intent and
entities) and NEWER gets wrong.")]
pub struct VersionsArgs {
    /// The model.
    #[arg(value_name = "MODEL")]
    model: String,

    /// Compare two versions (older first) instead of listing them.
    #[arg(long, num_args = 2, value_names = ["OLDER", "NEWER"])]
    compare: Option<Vec<String>>,

    /// Output format: `json` prints the API's {\"model\", \"versions\": [...]}.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// Arguments of `refit alias`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # serve v3 as prod, if it passes prod's gate against what prod serves now
  refit alias financial prod v3 --reason \"nightly retrain looks good\"

  # what the gate would say, moving nothing
  refit alias financial prod v3 --check

  # move it although the gate fails (recorded as forced in the history)
  refit alias financial prod v2 --force --reason \"roll back: v3 misroutes transfers\"

  # where prod points, and its history (who, when, from, to, why)
  refit alias financial prod

  # fine-tune from what prod points at
  refit submit --model financial --base prod --data nlu.yml

The gate (the coordinator's [promotion] policy for the alias) compares VERSION with the alias's
current version on the same eval data: intent weighted-F1 and entity F1 not down by more than a
tolerance, no intent's recall down by more than a limit, few negative flips. An alias that points
nowhere yet takes any version; a version without an evaluation fails. A failed gate moves nothing
and exits 16. The alias is stored at models/<model>/aliases/<alias>, its history at
models/<model>/alias-history/<alias>.json.")]
pub struct AliasArgs {
    /// The model.
    #[arg(value_name = "MODEL")]
    model: String,

    /// The alias, e.g. `prod` or `staging`.
    #[arg(value_name = "ALIAS")]
    alias: String,

    /// The version it should point at: `v3` or `3`. Without it: where the alias points and its
    /// history.
    #[arg(value_name = "VERSION")]
    version: Option<String>,

    /// Move it even if the gate fails (recorded in the alias's history).
    #[arg(long, requires = "version", conflicts_with = "check")]
    force: bool,

    /// Only ask the gate; move nothing (exit 16 when it fails).
    #[arg(long, requires = "version")]
    check: bool,

    /// Why, for the alias's history.
    #[arg(long, value_name = "TEXT", requires = "version")]
    reason: Option<String>,

    /// Output format: `json` prints the API's answer (the move with the gate's checks, the
    /// gate's decision with --check, or the history).
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// A model name, checked before anything is sent.
fn model_name(name: &str) -> Result<ModelName> {
    ModelName::new(name.trim()).map_err(|e| anyhow::anyhow!("model: {e}"))
}

pub(super) fn run_models(args: ModelsArgs) -> Result<ExitCode> {
    let client = Client::from_args(&args.connect)?;
    let answer = client.models()?;
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human if answer.value.models.is_empty() => {
            print_stdout(
                "no models yet (refit submit --model NAME --data FILE trains a first version)",
            )?;
        }
        Output::Human => print_stdout(&models_table(&answer.value.models))?,
    }
    Ok(ExitCode::from(exit::OK))
}

pub(super) fn run_versions(args: VersionsArgs) -> Result<ExitCode> {
    let model = model_name(&args.model)?;
    let client = Client::from_args(&args.connect)?;
    if let Some(pair) = &args.compare {
        let [before, after] = [&pair[0], &pair[1]].map(|v| version_arg(v));
        let (before, after) = (before?, after?);
        let answer = client.compare(model.as_str(), &before.to_string(), &after.to_string())?;
        match args.output {
            Output::Json => print_json(&answer.json)?,
            Output::Human => print_stdout(&comparison_text(&answer.value))?,
        }
        return Ok(ExitCode::from(exit::OK));
    }
    let answer = client.versions(model.as_str())?;
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human => print_stdout(&versions_table(&answer.value.versions))?,
    }
    Ok(ExitCode::from(exit::OK))
}

fn version_arg(text: &str) -> Result<Version> {
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("version {text:?}: {e} (expected e.g. v3 or 3)"))
}

/// Who runs this, for the alias history: `user@host`.
fn caller() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "refit-cli".into());
    format!("{user}@{host}")
}

pub(super) fn run_alias(args: AliasArgs) -> Result<ExitCode> {
    let model = model_name(&args.model)?;
    let alias = Alias::new(args.alias.trim()).map_err(|e| anyhow::anyhow!("alias: {e}"))?;
    let client = Client::from_args(&args.connect)?;
    let Some(version) = &args.version else {
        let answer = client.alias_history(model.as_str(), alias.as_str())?;
        match args.output {
            Output::Json => print_json(&answer.json)?,
            Output::Human => print_stdout(&history_text(&model, &alias, &answer.value))?,
        }
        return Ok(ExitCode::from(exit::OK));
    };
    let version = version_arg(version)?;
    if args.check {
        let answer = client.gate(model.as_str(), alias.as_str(), &version.to_string())?;
        match args.output {
            Output::Json => print_json(&answer.json)?,
            Output::Human => print_stdout(&gate_text(&answer.value))?,
        }
        let code = if answer.value.passed {
            exit::OK
        } else {
            exit::GATE_FAILED
        };
        return Ok(ExitCode::from(code));
    }
    let request = AliasRequest {
        version: version.to_string(),
        force: args.force,
        reason: args.reason.clone(),
        by: Some(caller()),
    };
    let answer = match client.set_alias(model.as_str(), alias.as_str(), &request) {
        Ok(answer) => answer,
        Err(ClientError::Api { code, body, .. }) if code == "gate_failed" => {
            match args.output {
                Output::Json => print_json(&body)?,
                Output::Human => {
                    let details = body["error"]["details"].clone();
                    match serde_json::from_value::<GateResult>(details) {
                        Ok(gate) => print_stdout(&format!(
                            "{}\n{model} {alias} did not move (--force moves it anyway)",
                            gate_text(&gate)
                        ))?,
                        Err(_) => print_stdout(&body.to_string())?,
                    }
                }
            }
            return Ok(ExitCode::from(exit::GATE_FAILED));
        }
        Err(e) => return Err(e.into()),
    };
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human => {
            let a = &answer.value;
            let mut line = match &a.previous {
                Some(previous) if *previous == a.version => {
                    format!("{} {} -> {} (unchanged)", a.model, a.alias, a.version)
                }
                Some(previous) => {
                    format!("{} {} -> {} (was {previous})", a.model, a.alias, a.version)
                }
                None => format!("{} {} -> {} (new alias)", a.model, a.alias, a.version),
            };
            if a.forced {
                line.push_str(" — FORCED past a failed gate");
            }
            if let Some(gate) = &a.gate {
                line = format!("{}\n{line}", gate_text(gate));
            }
            print_stdout(&line)?;
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// The gate's decision, one check per line.
pub(super) fn gate_text(gate: &GateResult) -> String {
    let mut out = format!("gate: {}\n", gate.summary());
    for c in &gate.checks {
        let mark = if c.passed { "ok  " } else { "FAIL" };
        out.push_str(&format!("  {mark} {}\n", c.detail));
    }
    out.trim_end().to_owned()
}

fn history_text(model: &ModelName, alias: &Alias, history: &AliasHistory) -> String {
    let Some(last) = history.moves.last() else {
        return format!("{model} {alias}: no moves recorded");
    };
    let mut out = format!("{model} {alias} -> {}\n", last.to);
    let now = Utc::now();
    let rows: Vec<Vec<String>> = history
        .moves
        .iter()
        .rev()
        .map(|m| {
            let gate = match (&m.gate, m.forced) {
                (_, true) => "forced".to_owned(),
                (Some(g), _) if g.passed => "passed".to_owned(),
                (Some(_), _) => "failed".to_owned(),
                (None, _) => "-".to_owned(),
            };
            vec![
                ago(m.at, now),
                m.from.map_or_else(|| "-".into(), |v| v.to_string()),
                m.to.to_string(),
                gate,
                m.by.clone(),
                dash_if_empty(m.reason.clone()),
            ]
        })
        .collect();
    out.push_str(&table(&["when", "from", "to", "gate", "by", "why"], &rows));
    out
}

/// A comparison for people: headline deltas, the labels that changed, the flips.
fn comparison_text(c: &Comparison) -> String {
    let (b, a) = (&c.metrics_before, &c.metrics_after);
    let mut out = format!(
        "{} -> {} on {} eval examples (data {})\n",
        c.before,
        c.after,
        a.examples,
        short_sha(&c.data_sha256)
    );
    let rows = [
        ("intent accuracy", b.intent_accuracy, a.intent_accuracy),
        (
            "intent weighted-F1",
            b.intent_weighted_f1,
            a.intent_weighted_f1,
        ),
        ("intent macro-F1", b.intent_macro_f1, a.intent_macro_f1),
        ("entity F1 (exact spans)", b.entity_f1, a.entity_f1),
    ]
    .map(|(name, before, after)| {
        vec![
            name.to_owned(),
            format!("{before:.3}"),
            format!("{after:.3}"),
            format!("{:+.3}", after - before),
        ]
    });
    out.push_str(&table(&["metric", "before", "after", "delta"], &rows));
    for (title, labels) in [("intent", &c.intents), ("entity", &c.entities)] {
        let changed: Vec<Vec<String>> = labels
            .iter()
            .filter(|d| d.f1_delta().abs() >= 0.005 || d.recall_delta().abs() >= 0.005)
            .map(|d| {
                vec![
                    d.label.clone(),
                    d.support.to_string(),
                    format!("{:.3} -> {:.3}", d.f1_before, d.f1_after),
                    format!("{:.3} -> {:.3}", d.recall_before, d.recall_after),
                ]
            })
            .collect();
        if changed.is_empty() {
            out.push_str(&format!(
                "\n\nno {title} changed its F1 or recall by 0.005 or more"
            ));
        } else {
            out.push_str(&format!("\n\n{title}s that changed:\n"));
            out.push_str(&table(&[title, "support", "F1", "recall"], &changed));
        }
    }
    for (what, flips) in [
        ("negative", &c.negative_flips),
        ("positive", &c.positive_flips),
    ] {
        out.push_str(&format!(
            "\n\n{what} flips: {} ({:.1} %; intent {}, entities {})",
            flips.examples,
            flips.rate * 100.0,
            flips.intent,
            flips.entities
        ));
        for f in &flips.shown {
            let text = f.text.as_deref().unwrap_or("");
            let intent = f.intent.as_deref().unwrap_or("");
            out.push_str(&format!(
                "\n  #{:<4} {:<8} {intent:<20} {text}",
                f.index, f.flipped
            ));
        }
        if flips.examples > flips.shown.len() {
            out.push_str(&format!(
                "\n  … and {} more",
                flips.examples - flips.shown.len()
            ));
        }
    }
    out
}

fn models_table(models: &[ModelView]) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let aliases: Vec<String> = m.aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
            vec![
                m.name.clone(),
                m.latest_version.clone().unwrap_or_else(|| "-".into()),
                m.versions.to_string(),
                dash_if_empty(aliases.join(" ")),
                m.active_jobs.to_string(),
            ]
        })
        .collect();
    table(
        &["model", "latest", "versions", "aliases", "active jobs"],
        &rows,
    )
}

fn versions_table(versions: &[VersionView]) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let (intent, entity) = match &v.metrics {
                Some(m) => (
                    format!("{:.3}", m.intent_weighted_f1),
                    format!("{:.3}", m.entity_f1),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            vec![
                v.version.clone(),
                v.parent.clone().unwrap_or_else(|| "-".into()),
                v.mode.to_string(),
                v.finetune_depth.to_string(),
                v.examples.to_string(),
                short_sha(&v.dataset_sha256),
                intent,
                entity,
                ago(v.created_at, now),
                dash_if_empty(v.aliases.join(" ")),
            ]
        })
        .collect();
    table(
        &[
            "version",
            "parent",
            "mode",
            "depth",
            "examples",
            "dataset",
            "intent wF1",
            "entity F1",
            "created",
            "aliases",
        ],
        &rows,
    )
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use refit_proto::{Metrics, Mode};

    use super::*;

    #[test]
    fn versions_show_lineage() {
        let version = |v: &str, parent: Option<&str>, mode: Mode, depth: u32| VersionView {
            version: v.into(),
            parent: parent.map(Into::into),
            mode,
            finetune_depth: depth,
            dataset_sha256: "ab".repeat(32),
            dataset_key: format!("datasets/sha256/{}.yml", "ab".repeat(32)),
            examples: 367,
            epochs: 100.0,
            metrics: Some(Metrics {
                intent_weighted_f1: 0.8512,
                entity_f1: 0.87,
                ..Metrics::default()
            }),
            timings: BTreeMap::new(),
            aliases: vec![],
            created_at: Utc::now(),
        };
        let mut v2 = version("v2", Some("v1"), Mode::Finetune, 1);
        v2.aliases = vec!["prod".into()];
        v2.metrics = None;
        let text = versions_table(&[version("v1", None, Mode::Scratch, 0), v2]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("version  parent  mode"), "{text}");
        assert!(
            lines[1].starts_with("v1       -       scratch   0"),
            "{text}"
        );
        assert!(lines[1].contains("abababababab  0.851"), "{text}");
        assert!(
            lines[2].starts_with("v2       v1      finetune  1"),
            "{text}"
        );
        assert!(lines[2].ends_with("prod"), "{text}");
    }
}
