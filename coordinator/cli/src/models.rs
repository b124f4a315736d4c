//! `refit models`, `refit versions MODEL` and `refit alias MODEL ALIAS VERSION`: what the object
//! store holds, as the coordinator reads it: models, each version's lineage (parent, mode,
//! fine-tune depth, training data) and metrics, and the aliases that name versions.

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use refit_proto::{Alias, ModelName, Version};

use super::client::Client;
use super::connect::ConnectArgs;
use super::jobs::{ago, short_sha};
use super::{Output, exit, print_json, print_stdout, table};
use refit_proto::wire::{ModelView, VersionView};

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
job's eval data.")]
pub struct VersionsArgs {
    /// The model.
    #[arg(value_name = "MODEL")]
    model: String,

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
  # serve v3 as prod
  refit alias financial prod v3

  # fine-tune from what prod points at
  refit submit --model financial --base prod --data nlu.yml

The alias is stored at models/<model>/aliases/<alias> in the bucket; the version must exist.")]
pub struct AliasArgs {
    /// The model.
    #[arg(value_name = "MODEL")]
    model: String,

    /// The alias, e.g. `prod` or `staging`.
    #[arg(value_name = "ALIAS")]
    alias: String,

    /// The version it should point at: `v3` or `3`.
    #[arg(value_name = "VERSION")]
    version: String,

    /// Output format: `json` prints the API's {\"model\", \"alias\", \"version\", \"previous\"}.
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
    let answer = client.versions(model.as_str())?;
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human => print_stdout(&versions_table(&answer.value.versions))?,
    }
    Ok(ExitCode::from(exit::OK))
}

pub(super) fn run_alias(args: AliasArgs) -> Result<ExitCode> {
    let model = model_name(&args.model)?;
    let alias = Alias::new(args.alias.trim()).map_err(|e| anyhow::anyhow!("alias: {e}"))?;
    let version: Version = args
        .version
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("version: {e} (expected e.g. v3 or 3)"))?;
    let client = Client::from_args(&args.connect)?;
    let answer = client.set_alias(model.as_str(), alias.as_str(), &version.to_string())?;
    match args.output {
        Output::Json => print_json(&answer.json)?,
        Output::Human => {
            let a = &answer.value;
            let line = match &a.previous {
                Some(previous) if *previous == a.version => {
                    format!("{} {} -> {} (unchanged)", a.model, a.alias, a.version)
                }
                Some(previous) => {
                    format!("{} {} -> {} (was {previous})", a.model, a.alias, a.version)
                }
                None => format!("{} {} -> {} (new alias)", a.model, a.alias, a.version),
            };
            print_stdout(&line)?;
        }
    }
    Ok(ExitCode::from(exit::OK))
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
