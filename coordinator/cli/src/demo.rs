//! `refit demo`: the seed experiment (Rasa's incremental-training experiment), in one process and
//! without RabbitMQ or S3.
//!
//! On `DIR/{set1,set2,test}.yml` it trains
//!
//! - **v1** from scratch on `set1` for N epochs,
//! - **v2** by fine-tuning v1 (read back from the store, as a worker would) on `set1 + set2` for
//!   ⌈F·N⌉ epochs, when the fine-tune decision for `set1 + set2` against v1 allows it,
//! - **v3** from scratch on `set1 + set2` for N + ⌈F·N⌉ epochs,
//!
//! evaluates each on `test.yml` and prints a table comparing them, plus v2 against v3.
//!
//! Every version goes to a [`LocalStore`] in the S3 layout (`models/demo/v000001/…`), manifest
//! last, so the output folder can be browsed, copied to a bucket, or served with `refit predict`.
//! Datasets are uploaded content-addressed first: a single file as it is
//! (`datasets/sha256/<hex>.yml`), several files merged into one JSONL file (one example per line;
//! `synonym:`/`regex:`/`lookup:` items are left out, the engine does not use them). Each run
//! starts from an empty `models/demo/`; datasets stay, since their keys are their content.
//!
//! When the decision is not `finetune` (e.g. `set2` adds an intent), v2 is skipped, the
//! scratch retrain becomes v2, and the command exits with code 11 after printing everything.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use refit_engine::pipeline::{self, BaseVersion, Start, VersionInfo};
use refit_engine::runtime;
use refit_engine::trainer::{NluModel, Progress, TrainObserver, TrainOptions, TrainReport};
use refit_io::registry::Registry;
use refit_io::storage::{LocalStore, ObjectStore};
use refit_proto::data::{TrainingData, load_file, load_files};
use refit_proto::decision::{Decision, DecisionInput, DecisionReport, Policy, decide};
use refit_proto::evaluation::{Evaluation, compare};
use refit_proto::keys::sha256_hex;
use refit_proto::{
    ArchSpec, Budget, DatasetRef, Manifest, Metrics, Mode, ModelName, Version, keys,
};
use serde::Serialize;

use super::{Output, exit, print_stdout};

/// The demo data, relative to the current directory or the repository root.
const DEFAULT_DATA: &str = "examples/data/financial-demo";
/// The files the data folder must hold.
const DATA_FILES: [&str; 3] = ["set1.yml", "set2.yml", "test.yml"];
/// The model name the versions are stored under.
const MODEL: &str = "demo";

/// Arguments of `refit demo`.
#[derive(Debug, Args)]
#[command(after_help = "\
What it does, in this process (no RabbitMQ or S3 server needed):
  v1  trains from scratch on set1.yml for N epochs (--epochs)
  v2  fine-tunes v1, read back from the store, on set1 + set2 for ceil(F*N) epochs
      (--epoch-fraction), if the fine-tune decision allows it
  v3  trains from scratch on set1 + set2 for N + ceil(F*N) epochs
Each is evaluated on test.yml and written under --out in the S3 layout
(models/demo/v000001/{manifest.json,checkpoint.safetensors,model.onnx,vocab.json}, datasets under
datasets/sha256/). Needs ONNX Runtime: deploy/onnxruntime.sh installs it.

Examples:
  # the seed experiment on the repo's financial-demo data (100 + 30 epochs)
  deploy/onnxruntime.sh > /dev/null && refit demo

  # your own data: DIR must hold set1.yml (initial training data), set2.yml (new examples)
  # and test.yml (held-out evaluation data), in Rasa YAML
  refit demo --data DIR --out /tmp/refit-demo

  # a quick run, as JSON for a script
  refit demo --epochs 10 --output json

  # then ask the fine-tuned model
  refit predict --model-dir .refit-local/demo/models/demo/v000002 \"send 50 dollars to Bob\"

Exit codes: 0 done, 11 v1 cannot be fine-tuned on set1 + set2 (no fine-tune run), 1 error.")]
pub struct DemoArgs {
    /// Folder with set1.yml, set2.yml and test.yml [default: examples/data/financial-demo, found
    /// from the current directory or the refit checkout the binary was built in].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Epochs of the scratch run on set1 (N).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    epochs: u32,

    /// The fine-tune trains ceil(F*N) epochs, the scratch retrain N + ceil(F*N).
    #[arg(long, value_name = "F", default_value_t = 0.3, value_parser = parse_fraction)]
    epoch_fraction: f64,

    /// The local object store the versions are written to (emptied of models/demo/ first).
    #[arg(long, value_name = "DIR", default_value = ".refit-local/demo")]
    out: PathBuf,

    /// Seed of the initial weights, shuffling and dropout (v1 and v3 use the same one).
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Output format; progress always goes to stderr.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f.is_finite() && f > 0.0 && f <= 10.0 {
        Ok(f)
    } else {
        Err("expected a number above 0 and at most 10, e.g. 0.3".to_owned())
    }
}

/// One row of the results table; also the JSON form of a run.
#[derive(Debug, Serialize)]
struct RunRow {
    name: String,
    mode: &'static str,
    epochs: u32,
    train_examples: u64,
    intent_accuracy: f64,
    intent_macro_f1: f64,
    intent_weighted_f1: f64,
    entity_f1: f64,
    train_seconds: f64,
}

/// A dataset as stored: its key and sha256.
struct StoredData {
    key: String,
    sha256: String,
}

pub(super) fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = data_dir(args.data.as_deref());
    let [set1_path, set2_path, test_path] = data_files(&dir)?;
    let set1 = load_file(&set1_path)?;
    let set12_files = [set1_path.clone(), set2_path];
    let set12 = load_files(&set12_files)?;
    let test = load_file(&test_path)?;
    // Fail on a missing ONNX Runtime before anything is deleted or written.
    runtime::init()?;

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let store = Arc::new(LocalStore::new(&args.out));
    let registry = Registry::new(store.clone());
    let model_name = ModelName::new(MODEL).expect("a valid literal model name");
    let model_dir = args
        .out
        .join(keys::model_prefix(&model_name).trim_end_matches('/'));
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir)
            .with_context(|| format!("cannot empty {}", model_dir.display()))?;
        eprintln!(
            "removed {} (each demo starts from an empty model)",
            model_dir.display()
        );
    }
    let set1_stored = tokio.block_on(upload(&*store, &[set1_path], &set1))?;
    let set12_stored = tokio.block_on(upload(&*store, &set12_files, &set12))?;
    let test_stored = tokio.block_on(upload(&*store, std::slice::from_ref(&test_path), &test))?;

    // The fine-tune's budget as a worker computes it, from v1's epochs.
    let ft_epochs = pipeline::epochs(
        Budget::EpochFraction(args.epoch_fraction),
        Some(f64::from(args.epochs)),
    )?;
    let opts = TrainOptions::default();
    let demo = Demo {
        tokio: &tokio,
        registry: &registry,
        model: model_name,
        test: &test,
        test_stored: &test_stored,
        evaluations: RefCell::default(),
        opts,
    };
    let mut rows = Vec::new();

    // v1: from scratch on set1.
    let v1 = Version::first();
    let scratch = || Start::Scratch {
        arch: ArchSpec::default(),
        seed: args.seed,
    };
    let mut model = pipeline::start(scratch(), &set1)?;
    let report = demo.train(&mut model, &set1, args.epochs, v1, Mode::Scratch)?;
    let target = Target {
        version: v1,
        base: None,
        data: &set1,
        stored: &set1_stored,
    };
    rows.push(demo.finish(&model, &target, &report, Vec::new())?);

    // The fine-tune decision for set1 + set2 against v1, with v1 as a worker would load it.
    let started = Instant::now();
    let stored = tokio.block_on(registry.read_version(&demo.model, v1))?;
    let base = stored.manifest;
    let words = stored.vocab.words();
    let decision = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Reject,
        base: Some(&base),
        data: &set12,
        arch: &base.arch,
        base_vocabulary: Some(&words),
    });
    if args.output == Output::Human {
        print_stdout(&format!(
            "fine-tune decision for set1.yml + set2.yml against {v1}:\n{}\n",
            decision.human().trim_end()
        ))?;
    }

    // v2: v1 fine-tuned on set1 + set2.
    let mut next = v1.next()?;
    if decision.decision == Decision::Finetune {
        let model = pipeline::load(&base.arch, stored.vocab, &stored.checkpoint)?;
        let mut model = pipeline::start(Start::Finetune(Box::new(model)), &set12)?;
        let load = started.elapsed().as_secs_f64();
        let report = demo.train(&mut model, &set12, ft_epochs, next, Mode::Finetune)?;
        let target = Target {
            version: next,
            base: Some(BaseVersion::from(&base)),
            data: &set12,
            stored: &set12_stored,
        };
        rows.push(demo.finish(&model, &target, &report, vec![("load", load)])?);
        next = next.next()?;
    } else {
        eprintln!(
            "no fine-tune: v1 cannot be fine-tuned on set1 + set2 (decision {}: {}); the scratch \
             retrain becomes {next}",
            decision.decision.as_str(),
            decision.codes().join(", ")
        );
    }

    // v3: from scratch on set1 + set2, as long as v1 and v2 together.
    let mut model = pipeline::start(scratch(), &set12)?;
    let report = demo.train(
        &mut model,
        &set12,
        args.epochs + ft_epochs,
        next,
        Mode::Scratch,
    )?;
    let target = Target {
        version: next,
        base: None,
        data: &set12,
        stored: &set12_stored,
    };
    rows.push(demo.finish(&model, &target, &report, Vec::new())?);

    print_results(&args, &rows, &decision, next, (&test_path, test.len()))?;
    Ok(ExitCode::from(if decision.decision == Decision::Finetune {
        exit::OK
    } else {
        exit::REJECTED
    }))
}

/// Where the data is: the given folder, or the default one found from the current directory,
/// the executable's folders (a `target/` inside a checkout) or the checkout this was built in.
fn data_dir(given: Option<&Path>) -> PathBuf {
    if let Some(dir) = given {
        return dir.to_path_buf();
    }
    let relative = Path::new(DEFAULT_DATA);
    if relative.is_dir() {
        return relative.to_path_buf();
    }
    if let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok())
    {
        for ancestor in exe.ancestors().skip(1) {
            if ancestor.join(relative).is_dir() {
                return ancestor.join(relative);
            }
        }
    }
    // coordinator/cli → the checkout's root.
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    if built_in.is_dir() {
        return built_in;
    }
    relative.to_path_buf()
}

/// The three data files, or an error naming every missing one.
fn data_files(dir: &Path) -> Result<[PathBuf; 3]> {
    let paths = DATA_FILES.map(|name| dir.join(name));
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing demo data: {} (the data folder must hold set1.yml, set2.yml and test.yml; \
             choose it with --data DIR)",
            missing.join(", ")
        );
    }
    Ok(paths)
}

/// Uploads a training set content-addressed: one file as it is, several merged into JSONL.
async fn upload(
    store: &dyn ObjectStore,
    files: &[PathBuf],
    merged: &TrainingData,
) -> Result<StoredData> {
    let (bytes, ext) = match files {
        [file] => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let ext = file
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
                .to_ascii_lowercase();
            (bytes, ext)
        }
        _ => {
            let mut jsonl = Vec::new();
            for example in &merged.examples {
                serde_json::to_writer(&mut jsonl, example).expect("an example always serialises");
                jsonl.push(b'\n');
            }
            (jsonl, "jsonl".to_owned())
        }
    };
    let sha256 = sha256_hex(&bytes);
    let key = keys::dataset(&sha256, &ext)?;
    store.put_if_absent(&key, Bytes::from(bytes)).await?;
    Ok(StoredData { key, sha256 })
}

/// What a finished run is stored as.
struct Target<'a> {
    version: Version,
    /// The version it was fine-tuned from.
    base: Option<BaseVersion>,
    data: &'a TrainingData,
    stored: &'a StoredData,
}

/// What every run shares.
struct Demo<'a> {
    tokio: &'a tokio::runtime::Runtime,
    registry: &'a Registry,
    model: ModelName,
    test: &'a TrainingData,
    /// `test.yml` as stored: what the versions' evaluations name.
    test_stored: &'a StoredData,
    /// The versions' evaluations so far, to compare a fine-tune with its parent.
    evaluations: RefCell<BTreeMap<Version, Evaluation>>,
    opts: TrainOptions,
}

impl Demo<'_> {
    fn train(
        &self,
        model: &mut NluModel,
        data: &TrainingData,
        epochs: u32,
        version: Version,
        mode: Mode,
    ) -> Result<TrainReport> {
        let name = version.to_string();
        let mut observer = RunProgress::start(&name, epochs);
        let report = model.train(data, epochs, &self.opts, &mut observer)?;
        observer.finish(&format!(
            "{name} {}: {epochs} epochs on {} examples in {:.1} s (final loss {:.4}, {:.0} examples/s)",
            mode.as_str(),
            data.len(),
            report.seconds,
            report.final_loss,
            report.examples_per_sec
        ));
        Ok(report)
    }

    /// Evaluates a trained model on the test data, stores it, and returns its table row.
    fn finish(
        &self,
        model: &NluModel,
        target: &Target<'_>,
        report: &TrainReport,
        extra_timings: Vec<(&str, f64)>,
    ) -> Result<RunRow> {
        let started = Instant::now();
        let scored = pipeline::evaluate(model, self.test, &self.opts.runtime)?;
        let test = DatasetRef {
            key: self.test_stored.key.clone(),
            sha256: self.test_stored.sha256.clone(),
        };
        let mut evaluation = scored.into_evaluation(self.model.clone(), target.version, test);
        let parent = target
            .base
            .and_then(|b| self.evaluations.borrow().get(&b.version).cloned());
        if let Some(parent) = parent {
            let roles = vec!["parent".to_owned()];
            evaluation.comparisons.push(compare(
                &evaluation,
                &parent,
                roles,
                Some(&self.test.examples),
            )?);
        }
        let metrics = evaluation.report.to_metrics();
        self.evaluations
            .borrow_mut()
            .insert(target.version, evaluation.clone());
        let evaluate_secs = started.elapsed().as_secs_f64();

        let mut timings: BTreeMap<String, f64> = extra_timings
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        timings.insert("train".into(), report.seconds);
        timings.insert("evaluate".into(), evaluate_secs);
        let info = VersionInfo {
            model: self.model.clone(),
            version: target.version,
            base: target.base,
            epochs: f64::from(report.epochs),
            dataset_key: target.stored.key.clone(),
            dataset_sha256: target.stored.sha256.clone(),
            evaluation: Some(evaluation),
            timings,
        };
        let files = pipeline::version_files(model, target.data, &info);
        self.tokio.block_on(self.registry.write_version(&files))?;
        Ok(row(&files.manifest, &metrics, report))
    }
}

fn row(manifest: &Manifest, metrics: &Metrics, report: &TrainReport) -> RunRow {
    RunRow {
        name: manifest.version.to_string(),
        mode: manifest.mode.as_str(),
        epochs: report.epochs,
        train_examples: manifest.data.examples,
        intent_accuracy: metrics.intent_accuracy,
        intent_macro_f1: metrics.intent_macro_f1,
        intent_weighted_f1: metrics.intent_weighted_f1,
        entity_f1: metrics.entity_f1,
        train_seconds: report.seconds,
    }
}

/// The results on stdout: JSON, or the table with the comparison and where the versions are.
fn print_results(
    args: &DemoArgs,
    rows: &[RunRow],
    decision: &DecisionReport,
    last: Version,
    (test_path, test_examples): (&Path, usize),
) -> Result<()> {
    if args.output == Output::Json {
        let json = serde_json::json!({ "runs": rows, "decision": decision });
        return print_stdout(&serde_json::to_string_pretty(&json).expect("plain values serialise"));
    }
    let mut out = format!(
        "evaluated on {} ({test_examples} examples):\n\n{}\n",
        test_path.display(),
        table(rows)
    );
    if let [.., finetuned, scratch] = rows
        && finetuned.mode == Mode::Finetune.as_str()
    {
        out.push_str(&format!("\n{}\n", comparison(finetuned, scratch)));
    }
    let model = ModelName::new(MODEL).expect("a valid literal model name");
    let dir = args
        .out
        .join(keys::version_prefix(&model, last).trim_end_matches('/'));
    out.push_str(&format!(
        "\nversions written to {}\ntry: refit predict --model-dir {} \"send 50 dollars to Bob\"",
        args.out.join("models").join(MODEL).display(),
        dir.display()
    ));
    print_stdout(&out)
}

fn table(rows: &[RunRow]) -> String {
    let mut out = format!(
        "{:<4}  {:<8}  {:>6}  {:>14}  {:>10}  {:>15}  {:>18}  {:>9}  {:>7}\n",
        "name",
        "mode",
        "epochs",
        "train examples",
        "intent acc",
        "intent macro-F1",
        "intent weighted-F1",
        "entity F1",
        "train s"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<4}  {:<8}  {:>6}  {:>14}  {:>10.3}  {:>15.3}  {:>18.3}  {:>9.3}  {:>7.1}\n",
            r.name,
            r.mode,
            r.epochs,
            r.train_examples,
            r.intent_accuracy,
            r.intent_macro_f1,
            r.intent_weighted_f1,
            r.entity_f1,
            r.train_seconds
        ));
    }
    out.trim_end().to_owned()
}

/// "v2 vs v3: …": the fine-tune's F1 minus the retrain's, and its share of the time.
fn comparison(finetuned: &RunRow, scratch: &RunRow) -> String {
    // Rounded first, and `+ 0.0` turns -0.0 into 0.0, so a tie never prints as "-0.000".
    let delta = |a: f64, b: f64| ((a - b) * 1000.0).round() / 1000.0 + 0.0;
    let ratio = finetuned.train_seconds / scratch.train_seconds.max(1e-9);
    format!(
        "{} vs {}: intent macro-F1 {:+.3}, intent weighted-F1 {:+.3}, entity F1 {:+.3}; \
         train time {:.2}x ({:.1} s vs {:.1} s)",
        finetuned.name,
        scratch.name,
        delta(finetuned.intent_macro_f1, scratch.intent_macro_f1),
        delta(finetuned.intent_weighted_f1, scratch.intent_weighted_f1),
        delta(finetuned.entity_f1, scratch.entity_f1),
        ratio,
        finetuned.train_seconds,
        scratch.train_seconds
    )
}

/// Progress of one training run on stderr: a progress bar on a terminal, else nothing until
/// the run's one-line summary.
struct RunProgress {
    bar: Option<ProgressBar>,
}

impl RunProgress {
    fn start(name: &str, epochs: u32) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar =
            ProgressBar::with_draw_target(Some(u64::from(epochs)), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{prefix} [{bar:20.cyan/blue}] epoch {pos}/{len}  {msg}")
                .expect("the template is valid")
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.to_owned());
        Self { bar: Some(bar) }
    }

    fn finish(self, summary: &str) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{summary}");
    }
}

impl TrainObserver for RunProgress {
    fn progress(&mut self, p: &Progress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.epoch.floor() as u64);
            bar.set_message(format!(
                "loss {:.4}  {:.0} ex/s  ETA {}",
                p.loss,
                p.examples_per_sec,
                duration(p.eta_secs)
            ));
        }
    }
}

/// `42s`, `3m07s`.
fn duration(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_outside_the_range_are_refused() {
        assert!(parse_fraction("0.3").is_ok());
        for bad in ["0", "-1", "nan", "inf", "x", "11"] {
            assert!(parse_fraction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn comparison_never_prints_negative_zero() {
        let run = |name: &str, f1: f64, secs: f64| RunRow {
            name: name.into(),
            mode: "scratch",
            epochs: 1,
            train_examples: 1,
            intent_accuracy: f1,
            intent_macro_f1: f1,
            intent_weighted_f1: f1,
            entity_f1: f1,
            train_seconds: secs,
        };
        let line = comparison(&run("v2", 0.79299, 2.5), &run("v3", 0.793, 10.0));
        assert_eq!(
            line,
            "v2 vs v3: intent macro-F1 +0.000, intent weighted-F1 +0.000, entity F1 +0.000; \
             train time 0.25x (2.5 s vs 10.0 s)"
        );
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(duration(4.4), "4s");
        assert_eq!(duration(187.0), "3m07s");
    }
}
