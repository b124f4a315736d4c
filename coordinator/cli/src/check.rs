//! `refit check`: may a model be fine-tuned on this data? Prints the decision and the exact
//! label-set diff (DESIGN §4), for people or as JSON, and says it in the exit code. The report
//! also lists the words the data labels two ways (`DataConflicts`), which never change the
//! decision.
//!
//! Without a coordinator, the base model is described by the training data it was trained on
//! (`--base`) or by a stored version's `manifest.json` (`--base-manifest`). With `--model NAME`
//! the coordinator decides against the model's stored version (`--base-version`, default the
//! latest): the data is uploaded content-addressed as `refit submit` does, and `POST /v1/check`
//! answers with the decision; no job is queued.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use refit_proto::data::{TrainingData, load_files};
use refit_proto::decision::{Decision, DecisionInput, Policy, decide};
use refit_proto::tokens::word_tokens;
use refit_proto::{ArchSpec, Manifest, Mode, ModelName, Version};

use super::client::Client;
use super::connect::ConnectArgs;
use super::data_source::DataSource;
use super::submit::{mode_parser, policy_parser};
use super::{Output, exit, print_json, print_stdout};
use refit_proto::wire::SubmitRequest;

/// Arguments of `refit check`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # may a model trained on set1.yml be fine-tuned on set1.yml + set2.yml?
  refit check --base set1.yml --data set1.yml set2.yml

  # against a stored version, as JSON for a script
  refit check --base-manifest manifest.json --data nlu.yml --output json

  # ask the coordinator: may the model's latest version (or prod) be fine-tuned on this?
  refit check --model financial --data set1.yml set2.yml
  refit check --model financial --base-version prod --data nlu.yml --output json

The report ends with the words the data labels two ways: the same words annotated as an entity
in one example and bare (or another type) in another, and texts listed under two intents. They
never change the decision, but a model learns both answers: fix them in the data.

Exit codes: 0 fine-tune, 10 scratch, 11 reject, 14 coordinator unreachable, 15 token refused,
1 error.")]
pub struct CheckArgs {
    /// The new training data (Rasa YAML or JSONL); several files are merged. With --model also
    /// a content-addressed key s3://BUCKET/datasets/sha256/<hex>.<ext>.
    #[arg(long, short, required = true, num_args = 1.., value_name = "FILE")]
    data: Vec<PathBuf>,

    /// The training data the base model was trained on (stands in for a stored version).
    #[arg(long, num_args = 1.., conflicts_with = "base_manifest", value_name = "FILE")]
    base: Vec<PathBuf>,

    /// A stored version's manifest.json to compare with.
    #[arg(long, value_name = "PATH")]
    base_manifest: Option<PathBuf>,

    /// Ask the coordinator about this model's stored version instead (no job is queued).
    #[arg(long, short, value_name = "NAME", conflicts_with_all = ["base", "base_manifest", "arch"])]
    model: Option<String>,

    /// With --model: the version to compare with, `v3`, `3` or an alias [default: the latest].
    #[arg(long, value_name = "VERSION|ALIAS", requires = "model")]
    base_version: Option<String>,

    /// What the job asks for: `auto` fine-tunes when allowed and otherwise follows --policy.
    #[arg(long, default_value = "auto", value_parser = mode_parser())]
    mode: Mode,

    /// What `auto` does when fine-tuning is not allowed.
    #[arg(long, default_value = "reject", value_parser = policy_parser())]
    policy: Policy,

    /// The architecture the job would train, as JSON (fields not given keep their defaults).
    /// Default: the base version's architecture.
    #[arg(long, value_name = "PATH")]
    arch: Option<PathBuf>,

    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) fn run(args: CheckArgs) -> Result<ExitCode> {
    if args.model.is_some() {
        return run_remote(args);
    }
    let data = load_files(&args.data)?;

    let (base, base_vocabulary) = if let Some(path) = &args.base_manifest {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest = Manifest::from_json(&bytes)
            .with_context(|| format!("{} is not a refit manifest", path.display()))?;
        (Some(manifest), None)
    } else if !args.base.is_empty() {
        let base_data = load_files(&args.base)?;
        let vocabulary = vocabulary_of(&base_data);
        (Some(manifest_of(&base_data)?), Some(vocabulary))
    } else {
        (None, None)
    };

    let arch = match &args.arch {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let arch: ArchSpec = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an architecture spec", path.display()))?;
            arch
        }
        None => base.as_ref().map(|b| b.arch.clone()).unwrap_or_default(),
    };

    let report = decide(&DecisionInput {
        mode: args.mode,
        policy: args.policy,
        base: base.as_ref(),
        data: &data,
        arch: &arch,
        base_vocabulary: base_vocabulary.as_ref(),
    });

    match args.output {
        Output::Human => print_stdout(report.human().trim_end())?,
        Output::Json => print_stdout(&report.to_json())?,
    }
    Ok(ExitCode::from(exit_code(&report)))
}

/// `refit check --model NAME`: the coordinator's decision against the stored version.
fn run_remote(args: CheckArgs) -> Result<ExitCode> {
    let model = args.model.as_deref().unwrap_or_default().trim();
    let model = ModelName::new(model).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    let data = DataSource::from_args(&args.data, "--data")?;
    let client = Client::from_args(&args.connect)?;
    let dataset = data.upload(&client, "training data")?;
    let answer = client.check(&SubmitRequest {
        model: model.to_string(),
        dataset: Some(dataset),
        mode: Some(args.mode),
        policy: Some(args.policy),
        base: args.base_version.clone(),
        ..SubmitRequest::default()
    })?;
    let report = &answer.value.decision;
    match args.output {
        Output::Human => print_stdout(report.human().trim_end())?,
        Output::Json => print_json(
            answer
                .json
                .get("decision")
                .unwrap_or(&serde_json::Value::Null),
        )?,
    }
    Ok(ExitCode::from(exit_code(report)))
}

fn exit_code(report: &refit_proto::decision::DecisionReport) -> u8 {
    match report.decision {
        Decision::Finetune => exit::OK,
        Decision::Scratch => exit::SCRATCH,
        Decision::Reject => exit::REJECTED,
    }
}

/// The word vocabulary a model trained on `data` knows.
fn vocabulary_of(data: &TrainingData) -> BTreeSet<String> {
    data.examples
        .iter()
        .flat_map(|e| word_tokens(&e.text))
        .collect()
}

/// A stand-in manifest for a model trained on `data` with the default architecture.
fn manifest_of(data: &TrainingData) -> Result<Manifest> {
    if data.is_empty() {
        bail!("the --base data holds no examples");
    }
    let model = ModelName::new("local").expect("a valid literal model name");
    Ok(Manifest::for_data(
        model,
        Version::first(),
        data,
        ArchSpec::default(),
    ))
}
