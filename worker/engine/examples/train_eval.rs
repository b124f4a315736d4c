//! Trains on one file and evaluates on another: `cargo run --release -p refit-engine --example
//! train_eval -- TRAIN.yml[,MORE.yml] TEST.yml EPOCHS [LEARNING_RATE]`.
//!
//! Knobs (environment): `SEED`; `THREADS` (`RuntimeOptions::intra_threads`: 1 trains without
//! the batch-preparing thread, with the same result); `DROPOUT`, `FDROP` (feature dropout), `OOV` (rare-word swap rate),
//! `TAGMASK` (tagger word mask), `LS` (intent label smoothing), `WD`, `BATCH`, `BATCH_FINAL`, `ENTW` (training options); `EMBED`, `HIDDEN`, `WINDOW`
//! (architecture). Diagnostics: `SHOW_ERRORS=1` lists the test examples whose entities differ
//! from the gold ones; `SHOW_TAGS="text|other text"` prints each token's three likeliest tags.
use std::path::Path;

use refit_engine::predict::evaluate_model;
use refit_engine::trainer::{NluModel, Quiet, TrainOptions};
use refit_proto::ArchSpec;
use refit_proto::data::load_file;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let files: Vec<std::path::PathBuf> = args[1].split(',').map(Into::into).collect();
    let train = refit_proto::data::load_files(&files)?;
    let test = load_file(Path::new(&args[2]))?;
    let epochs: u32 = args[3].parse()?;
    let mut opts = TrainOptions::default();
    if let Some(lr) = args.get(4) {
        opts.learning_rate = lr.parse()?;
    }
    let env = |k: &str| std::env::var(k).ok();
    if let Some(v) = env("DROPOUT") {
        opts.dropout = v.parse()?;
    }
    if let Some(v) = env("ENTW") {
        opts.entity_loss_weight = v.parse()?;
    }
    if let Some(v) = env("FDROP") {
        opts.feature_dropout = v.parse()?;
    }
    if let Some(v) = env("OOV") {
        opts.rare_word_oov = v.parse()?;
    }
    if let Some(v) = env("LS") {
        opts.intent_label_smoothing = v.parse()?;
    }
    if let Some(v) = env("TAGMASK") {
        opts.tagger_word_mask = v.parse()?;
    }
    if let Some(v) = env("THREADS") {
        opts.runtime.intra_threads = v.parse()?;
    }
    if let Some(v) = env("WD") {
        opts.weight_decay = v.parse()?;
    }
    if let Some(v) = env("BATCH") {
        opts.batch_size = v.parse()?;
    }
    if let Some(v) = env("BATCH_FINAL") {
        opts.final_batch_size = v.parse()?;
    }
    let mut arch = ArchSpec::default();
    if let Some(v) = env("EMBED") {
        arch.embed_dim = v.parse()?;
    }
    if let Some(v) = env("HIDDEN") {
        arch.hidden_dim = v.parse()?;
    }
    if let Some(v) = env("WINDOW") {
        arch.entity_context_window = v.parse()?;
    }
    let seed: u64 = env("SEED").map(|s| s.parse()).transpose()?.unwrap_or(42);
    let mut model = NluModel::new(arch, &train, seed)?;
    let report = model.train(&train, epochs, &opts, &mut Quiet)?;
    println!("{report:?}");
    if let Some(texts) = env("SHOW_TAGS") {
        show_tags(&model, &texts, &opts)?;
    }
    if env("SHOW_ERRORS").is_some() {
        show_entity_errors(&model, &test, &opts)?;
    }
    let eval = evaluate_model(&model, &test, &opts.runtime)?;
    println!("{eval}");
    println!("{:?}", eval.to_metrics());
    Ok(())
}

/// Prints every test example whose predicted entity spans differ from the gold ones.
fn show_entity_errors(
    model: &NluModel,
    test: &refit_proto::data::TrainingData,
    opts: &TrainOptions,
) -> anyhow::Result<()> {
    let mut predictor = refit_engine::predict::Predictor::for_model(model, &opts.runtime)?;
    let texts: Vec<&str> = test.examples.iter().map(|e| e.text.as_str()).collect();
    let span = |text: &str, e: &refit_proto::data::Entity| {
        let s: String = text.chars().skip(e.start).take(e.end - e.start).collect();
        format!("{}={s}", e.entity)
    };
    for (gold, parse) in test.examples.iter().zip(predictor.parse(&texts)?) {
        let g: Vec<String> = gold.entities.iter().map(|e| span(&gold.text, e)).collect();
        let p: Vec<String> = parse.entities.iter().map(|e| span(&gold.text, e)).collect();
        if g != p {
            println!("{:?}: gold {g:?} predicted {p:?}", gold.text);
        }
    }
    Ok(())
}

/// Prints each token's three likeliest tags for `|`-separated texts.
fn show_tags(model: &NluModel, texts: &str, opts: &TrainOptions) -> anyhow::Result<()> {
    let mut predictor = refit_engine::predict::Predictor::for_model(model, &opts.runtime)?;
    let featurized: Vec<_> = texts
        .split('|')
        .map(|t| model.featurizer.featurize(t))
        .collect();
    let raw = predictor.run(&featurized)?;
    let k = model.tags.len();
    for (i, text) in featurized.iter().enumerate() {
        for (j, token) in text.tokens.iter().enumerate() {
            let row = &raw.tag_probs[(raw.offsets[i] + j) * k..(raw.offsets[i] + j + 1) * k];
            let mut best: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: Vec<String> = best[..3]
                .iter()
                .map(|(t, p)| format!("{}={p:.2}", model.tags.name(*t as u32)))
                .collect();
            println!(
                "{:>12} (first id {:?}) {}",
                token.text,
                token.ids.first(),
                top.join(" ")
            );
        }
        println!();
    }
    Ok(())
}
