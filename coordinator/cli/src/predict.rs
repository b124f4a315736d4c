//! `refit predict`: parses texts with a stored version's inference model, the way a serving
//! process would: `model.onnx` + `vocab.json`, with the featurizer settings from `manifest.json`.
//!
//! - The model folder is a version's folder as `refit demo` or a worker writes it
//!   (`models/<name>/v<NNNNNN>/`), e.g. copied down from the bucket. `manifest.json` is optional:
//!   without it the default featurizer settings are used; with it, `model.onnx` and `vocab.json`
//!   must match the sha256 it lists, so files from two versions are never mixed.
//! - Texts come from the arguments, or from stdin (one per line, blank lines skipped) when none
//!   is given.
//! - `--output json` always prints one JSON **array** with one parse object per text, in input
//!   order, even for a single text, so scripts need not special-case it:
//!   `[{"text", "intent": {"name", "confidence"}, "intent_ranking": [...], "entities":
//!   [{"start", "end", "entity"}]}]` (entity offsets are character offsets into `text`).

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use refit_engine::featurizer::{FeatureLimits, Featurizer};
use refit_engine::predict::{Parse, Predictor};
use refit_engine::runtime::RuntimeOptions;
use refit_proto::keys::sha256_hex;
use refit_proto::vocab::Vocabulary;
use refit_proto::{FeaturizerSpec, Manifest, keys};

use super::{Output, exit, print_stdout};

/// Intents shown per text in the human output.
const TOP_INTENTS: usize = 5;

/// Arguments of `refit predict`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # one text, with the model refit demo trained last
  refit predict --model-dir .refit-local/demo/models/demo/v000003 \"send 50 dollars to Bob\"

  # many texts, one per line, as a JSON array
  refit predict --model-dir DIR --output json < texts.txt

The model folder holds model.onnx and vocab.json, and usually manifest.json (its featurizer
settings and sha256 checks are used when present).")]
pub struct PredictArgs {
    /// A stored version's folder: model.onnx, vocab.json and (optional) manifest.json.
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,

    /// Output format: `json` prints an array with one parse per text.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,

    /// The texts to parse. Without any, one text per line is read from stdin.
    #[arg(value_name = "TEXT")]
    texts: Vec<String>,

    /// Benchmarks (bench/serve.sh): parse each text on its own, `--repeat` times after one
    /// warm-up round, and print one JSON line with the per-text parse time (featurize + ONNX
    /// Runtime + decode) instead of the parses.
    #[arg(long, hide = true)]
    timing: bool,

    /// Rounds over the texts with `--timing`.
    #[arg(long, hide = true, default_value_t = 20, value_name = "N")]
    repeat: u32,
}

pub(super) fn run(args: PredictArgs) -> Result<ExitCode> {
    let mut predictor = load(&args.model_dir)?;
    let texts = if args.texts.is_empty() {
        read_stdin()?
    } else {
        args.texts
    };
    if texts.is_empty() {
        bail!("nothing to parse: give texts as arguments or one per line on stdin");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    if args.timing {
        return timing(&mut predictor, &refs, args.repeat);
    }
    let parses = predictor.parse(&refs)?;
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&parses).expect("parses always serialise"),
        Output::Human => {
            let blocks: Vec<String> = parses.iter().map(human).collect();
            blocks.join("\n")
        }
    };
    print_stdout(text.trim_end())?;
    Ok(ExitCode::from(exit::OK))
}

/// `--timing`: the per-text parse time over `repeat` rounds (after a warm-up round), as one
/// JSON line: `{"texts", "parses", "median_us", "p90_us", "p99_us", "mean_us"}`.
fn timing(predictor: &mut Predictor, texts: &[&str], repeat: u32) -> Result<ExitCode> {
    for text in texts {
        predictor.parse(&[text])?;
    }
    let mut micros: Vec<f64> = Vec::with_capacity(texts.len() * repeat as usize);
    for _ in 0..repeat {
        for text in texts {
            let started = std::time::Instant::now();
            predictor.parse(&[text])?;
            micros.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    if micros.is_empty() {
        bail!("--repeat 0: nothing timed");
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    let line = serde_json::json!({
        "texts": texts.len(),
        "parses": micros.len(),
        "median_us": at(0.5),
        "p90_us": at(0.9),
        "p99_us": at(0.99),
        "mean_us": mean,
    });
    print_stdout(&line.to_string())?;
    Ok(ExitCode::from(exit::OK))
}

/// Loads the model folder, checking that the files are there and belong together.
fn load(dir: &Path) -> Result<Predictor> {
    let model_path = dir.join(keys::MODEL_ONNX);
    let vocab_path = dir.join(keys::VOCAB);
    let missing: Vec<String> = [&model_path, &vocab_path]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "not a model folder: missing {} (--model-dir takes a version's folder, e.g. \
             .refit-local/demo/models/demo/v000001)",
            missing.join(" and ")
        );
    }
    let manifest_path = dir.join(keys::MANIFEST);
    let manifest = if manifest_path.is_file() {
        let bytes = read(&manifest_path)?;
        let manifest = Manifest::from_json(&bytes)
            .with_context(|| format!("{} is not a refit manifest", manifest_path.display()))?;
        Some(manifest)
    } else {
        None
    };

    let model = read(&model_path)?;
    let vocab = read(&vocab_path)?;
    if let Some(manifest) = &manifest {
        for (name, bytes) in [(keys::MODEL_ONNX, &model), (keys::VOCAB, &vocab)] {
            let Some(entry) = manifest.files.get(name) else {
                continue;
            };
            if !entry.sha256.eq_ignore_ascii_case(&sha256_hex(bytes)) {
                bail!(
                    "{} does not match the sha256 in {}: the file is damaged or from another version",
                    dir.join(name).display(),
                    manifest_path.display()
                );
            }
        }
    }
    let spec = manifest.map_or_else(FeaturizerSpec::default, |m| m.arch.featurizer);
    let vocab = Vocabulary::from_json(&vocab, &spec)
        .with_context(|| format!("cannot use {}", vocab_path.display()))?;
    let featurizer = Featurizer::new(vocab, FeatureLimits::default());
    Predictor::new(&model, featurizer, &RuntimeOptions::default())
        .with_context(|| format!("cannot load {}", model_path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_stdin() -> Result<Vec<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("reading texts from stdin, one per line (end with Ctrl-D)");
    }
    let mut texts = Vec::new();
    for line in stdin.lock().lines() {
        let line = line.context("cannot read stdin")?;
        let text = line.trim();
        if !text.is_empty() {
            texts.push(text.to_owned());
        }
    }
    Ok(texts)
}

/// One text's parse for people: the top intents and the entities with their words.
fn human(parse: &Parse) -> String {
    let mut out = format!("{:?}\n", parse.text);
    for (i, score) in parse.intent_ranking.iter().take(TOP_INTENTS).enumerate() {
        let label = if i == 0 { "intents: " } else { "" };
        out.push_str(&format!(
            "  {label:<10}{:.3}  {}\n",
            score.confidence, score.name
        ));
    }
    if parse.entities.is_empty() {
        out.push_str("  entities: none\n");
    }
    for (i, entity) in parse.entities.iter().enumerate() {
        let label = if i == 0 { "entities:" } else { "" };
        let words = entity.slice(&parse.text).unwrap_or_default();
        out.push_str(&format!(
            "  {label:<10}[{}..{}] {} {words:?}\n",
            entity.start, entity.end, entity.entity
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_engine::predict::IntentScore;
    use refit_proto::data::Entity;

    #[test]
    fn human_output_shows_top_intents_and_entity_words() {
        let score = |name: &str, confidence| IntentScore {
            name: name.into(),
            confidence,
        };
        let ranking: Vec<IntentScore> = (0..7).map(|i| score(&format!("i{i}"), 0.5)).collect();
        let parse = Parse {
            text: "send 50 dollars to Bob".into(),
            intent: ranking[0].clone(),
            intent_ranking: ranking,
            entities: vec![Entity {
                start: 19,
                end: 22,
                entity: "PERSON".into(),
                value: None,
                role: None,
                group: None,
            }],
        };
        let text = human(&parse);
        assert_eq!(text.matches("0.500").count(), TOP_INTENTS, "{text}");
        assert!(text.contains("  intents:  0.500  i0\n"), "{text}");
        assert!(
            text.contains("  entities: [19..22] PERSON \"Bob\"\n"),
            "{text}"
        );
    }
}
