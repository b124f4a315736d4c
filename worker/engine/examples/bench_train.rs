//! refit's side of the training-throughput benchmark (`bench/run.sh`, see `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release -p refit-engine --example bench_train -- train    --data A.yml[,B.yml] [--epochs 20] [--repeats 3] [--threads 2] [--seed 42] [--set KEY=VALUE]
//! cargo run --release -p refit-engine --example bench_train -- features --data A.yml[,B.yml] --out data.json [--init init.safetensors]
//! cargo run --release -p refit-engine --example bench_train -- jsonl    --data A.yml[,B.yml] --out data.jsonl
//! ```
//!
//! - `train` trains a fresh model (`NluModel::new` + `NluModel::train`, default architecture and
//!   options, `intra_threads` = `--threads`: ONNX Runtime runs the step on one thread, a second
//!   prepares batches and shares the copies) for one warm-up epoch plus `--epochs` timed epochs, in
//!   one `train` call, `--repeats` times; it prints one JSON object with the examples/s of each run
//!   (timed epochs only) and their median.
//! - `features` writes the data exactly as refit's trainer sees it (`NluModel::encode`: per
//!   example the feature ids of each token, the intent index and the BILOU tag of each token) with
//!   the unseen-word feature's id and the tokens whose word occurs once (the rare-word swaps), the
//!   model's sizes, its dense parameters (names and shapes: the peers check that they know
//!   them all) and the `TrainOptions` refit trains with (the defaults with intent label smoothing
//!   off and a constant batch size of 64 — see `options` — and `--set`), so
//!   the Python peers (`bench/peers.py`) train the same network on the same inputs with the same
//!   options, without re-implementing the featurizer. `--init` also writes the fresh model's
//!   checkpoint (seed `--seed`), so a peer can start from refit's exact initial parameters
//!   (`peers.py --init`, used to check that both compute the same thing).
//! - `--set KEY=VALUE` (repeatable, `train` and `features`) overrides one of `TrainOptions`'
//!   fields, e.g. `--set dropout=0 --set batch_size=1000` (diagnostics only; the benchmark uses
//!   the defaults with label smoothing off and a batch size of 64 throughout).
//! - `jsonl` writes the parsed examples as JSONL (text, intent, entities with character offsets),
//!   the input of `bench/synth_data.py`.
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use refit_engine::model::dense_params;
use refit_engine::runtime;
use refit_engine::trainer::{NluModel, Progress, TrainObserver, TrainOptions};
use refit_proto::ArchSpec;
use refit_proto::data::{TrainingData, load_files};
use serde_json::json;

/// Records when each epoch ends, and its mean loss.
#[derive(Default)]
struct EpochClock {
    ends: Vec<Instant>,
    loss: f64,
    losses: Vec<f64>,
}

impl TrainObserver for EpochClock {
    fn progress(&mut self, progress: &Progress) {
        self.loss = progress.loss;
    }

    fn epoch_end(&mut self, _model: &NluModel) -> std::ops::ControlFlow<()> {
        self.ends.push(Instant::now());
        self.losses.push(self.loss);
        std::ops::ControlFlow::Continue(())
    }
}

struct Args {
    data: Vec<PathBuf>,
    out: Option<PathBuf>,
    epochs: u32,
    repeats: usize,
    threads: usize,
    seed: u64,
    init: Option<PathBuf>,
    set: Vec<(String, String)>,
}

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        data: Vec::new(),
        out: None,
        epochs: 20,
        repeats: 3,
        threads: 2,
        seed: 42,
        init: None,
        set: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => a.data = value()?.split(',').map(PathBuf::from).collect(),
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--epochs" => a.epochs = value()?.parse()?,
            "--repeats" => a.repeats = value()?.parse()?,
            "--threads" => a.threads = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--init" => a.init = Some(PathBuf::from(value()?)),
            "--set" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').context("--set KEY=VALUE")?;
                a.set.push((k.to_owned(), v.to_owned()));
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.data.is_empty() {
        bail!("--data FILE[,FILE...] is required");
    }
    Ok(a)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn label(data: &[PathBuf]) -> String {
    data.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `TrainOptions::default()` with intent label smoothing off and a batch size of 64
/// throughout, then the `--set` overrides (through serde, so this example does not name the
/// engine's option fields) and `--threads`. Label smoothing only changes the intent targets fed
/// to the step (not the step graph, so not the throughput), and ORT's training API has no
/// smoothed cross-entropy: off, all five frameworks train the same loss. The peers keep one
/// batch size, so refit does too (`final_batch_size` = `batch_size` unless `--set
/// final_batch_size=N`; refit's own default grows 32 → 128): the benchmark compares the same
/// steps, at the size it has always used.
fn options(a: &Args) -> anyhow::Result<TrainOptions> {
    let defaults = TrainOptions {
        intent_label_smoothing: 0.0,
        batch_size: 64,
        ..TrainOptions::default()
    };
    let mut value = serde_json::to_value(defaults)?;
    for (key, v) in &a.set {
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()));
        value[key.as_str()] = v;
    }
    if !a.set.iter().any(|(key, _)| key == "final_batch_size") {
        value["final_batch_size"] = value["batch_size"].clone();
    }
    let mut opts: TrainOptions = serde_json::from_value(value).context("--set")?;
    opts.runtime.intra_threads = a.threads;
    Ok(opts)
}

fn train(a: &Args, data: &TrainingData) -> anyhow::Result<serde_json::Value> {
    let opts = options(a)?;
    let mut runs = Vec::new();
    let mut vocab = 0;
    for rep in 0..a.repeats {
        let mut model = NluModel::new(ArchSpec::default(), data, a.seed + rep as u64)?;
        vocab = model.checkpoint.vocab_rows();
        let mut clock = EpochClock::default();
        let report = model.train(data, a.epochs + 1, &opts, &mut clock)?;
        let (first, last) = (clock.ends[0], *clock.ends.last().expect("epochs ran"));
        let seconds = (last - first).as_secs_f64();
        let examples = data.len() as f64 * a.epochs as f64;
        let run = json!({
            "rep": rep,
            "examples_per_sec": examples / seconds,
            "seconds": seconds,
            "warmup_epoch_seconds": report.seconds - seconds,
            "final_loss": report.final_loss,
            "epoch_losses": clock.losses,
        });
        eprintln!(
            "refit rep{rep}: {:.0} examples/s, {seconds:.2} s, final loss {:.4}",
            examples / seconds,
            report.final_loss
        );
        runs.push(run);
    }
    let eps: Vec<f64> = runs
        .iter()
        .map(|r| r["examples_per_sec"].as_f64().unwrap_or(f64::NAN))
        .collect();
    Ok(json!({
        "framework": "refit",
        "data": label(&a.data),
        "examples": data.len(),
        "vocab_rows": vocab,
        "epochs": a.epochs,
        "warmup_epochs": 1,
        "threads": a.threads,
        "ort_library": runtime::library_path().map(|p| p.display().to_string()),
        "runs": runs,
        "median_examples_per_sec": median(eps),
    }))
}

fn features(a: &Args, data: &TrainingData) -> anyhow::Result<serde_json::Value> {
    let model = NluModel::new(ArchSpec::default(), data, a.seed)?;
    let d = model.dims();
    let encoded = model.encode(data)?;
    if let Some(path) = &a.init {
        std::fs::write(path, model.checkpoint.to_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let examples: Vec<_> = encoded
        .iter()
        .map(|e| json!({"tokens": e.tokens, "intent": e.intent, "tags": e.tags}))
        .collect();
    let mut train_options = serde_json::to_value(options(a)?)?;
    if let Some(o) = train_options.as_object_mut() {
        o.remove("runtime");
    }
    Ok(json!({
        "data": label(&a.data),
        "train_options": train_options,
        "dense_params": dense_params(&d),
        "vocab_rows": model.checkpoint.vocab_rows(),
        "features": model.featurizer.vocab().len(),
        "embed": d.embed,
        "hidden": d.hidden,
        "intents": d.intents,
        "tags": d.tags,
        "window": d.window,
        "oov_id": model.featurizer.vocab().oov_id(),
        "rare_words": model.rare_words(&encoded),
        "examples": examples,
    }))
}

fn write_out(path: &Option<PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None => Ok(std::io::stdout().write_all(bytes)?),
    }
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = argv.first() else {
        bail!("usage: bench_train train|features|jsonl --data FILES [options]");
    };
    let a = parse(&argv[1..])?;
    let data = load_files(&a.data)?;
    match command.as_str() {
        "train" => {
            let out = train(&a, &data)?;
            write_out(&a.out, format!("{out}\n").as_bytes())
        }
        "features" => {
            let out = features(&a, &data)?;
            write_out(&a.out, serde_json::to_vec(&out)?.as_slice())
        }
        "jsonl" => {
            let mut buf = Vec::new();
            for e in &data.examples {
                serde_json::to_writer(&mut buf, e)?;
                buf.push(b'\n');
            }
            write_out(&a.out, &buf)
        }
        other => bail!("unknown command {other} (train, features or jsonl)"),
    }
}
