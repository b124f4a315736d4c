//! Trains on one file and evaluates on another: `cargo run --release -p refit-worker --example
//! train_eval -- TRAIN.yml TEST.yml EPOCHS`.
use std::path::Path;

use refit_proto::ArchSpec;
use refit_proto::data::load_file;
use refit_worker::engine::predict::evaluate_model;
use refit_worker::engine::trainer::{NluModel, Quiet, TrainOptions};

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
    if let Some(v) = env("WD") {
        opts.weight_decay = v.parse()?;
    }
    if let Some(v) = env("BATCH") {
        opts.batch_size = v.parse()?;
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
    let eval = evaluate_model(&model, &test, &opts.runtime)?;
    println!("{eval}");
    println!("{:?}", eval.to_metrics());
    Ok(())
}
