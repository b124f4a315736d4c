//! `refit check`: may a model be fine-tuned on this data? Prints the decision and the exact
//! label-set diff (DESIGN §4), for people or as JSON, and says it in the exit code.
//!
//! Without a coordinator, the base model is described by the training data it was trained on
//! (`--base`) or by a stored version's `manifest.json` (`--base-manifest`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use refit_proto::data::{TrainingData, load_files};
use refit_proto::decision::{Decision, DecisionInput, Policy, decide, word_tokens};
use refit_proto::{ArchSpec, Manifest, Mode, ModelName, Version};

use super::{Output, exit};

/// Arguments of `refit check`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # may a model trained on set1.yml be fine-tuned on set1.yml + set2.yml?
  refit check --base set1.yml --data set1.yml set2.yml

  # against a stored version, as JSON for a script
  refit check --base-manifest manifest.json --data nlu.yml --output json

Exit codes: 0 fine-tune, 10 scratch, 11 reject, 1 error.")]
pub struct CheckArgs {
    /// The new training data (Rasa YAML or JSONL); several files are merged.
    #[arg(long, short, required = true, num_args = 1..)]
    data: Vec<PathBuf>,

    /// The training data the base model was trained on (stands in for a stored version).
    #[arg(long, num_args = 1.., conflicts_with = "base_manifest")]
    base: Vec<PathBuf>,

    /// A stored version's manifest.json to compare with.
    #[arg(long, value_name = "PATH")]
    base_manifest: Option<PathBuf>,

    /// What the job asks for: `auto` fine-tunes when allowed and otherwise follows --policy.
    #[arg(long, default_value = "auto", value_parser = parse_mode)]
    mode: Mode,

    /// What `auto` does when fine-tuning is not allowed.
    #[arg(long, default_value = "reject", value_parser = parse_policy)]
    policy: Policy,

    /// The architecture the job would train, as JSON (fields not given keep their defaults).
    /// Default: the base version's architecture.
    #[arg(long, value_name = "PATH")]
    arch: Option<PathBuf>,

    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse()
}

pub(super) fn run(args: CheckArgs) -> Result<ExitCode> {
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
        Output::Human => println!("{}", report.human().trim_end()),
        Output::Json => println!("{}", report.to_json()),
    }
    Ok(ExitCode::from(match report.decision {
        Decision::Finetune => exit::OK,
        Decision::Scratch => exit::SCRATCH,
        Decision::Reject => exit::REJECTED,
    }))
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
