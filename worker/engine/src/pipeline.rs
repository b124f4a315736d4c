//! The one training pipeline: the steps every training run goes through, whoever runs it. The
//! worker's runner (`refit-worker`) and `refit demo` (`refit-cli`) both call these functions, so a
//! version trained by either is made the same way:
//!
//! 1. [`start`]: a new model ([`Start::Scratch`]), or a stored version grown to the data's
//!    vocabulary for a new run ([`Start::Finetune`]);
//! 2. [`epochs`]: the run's epoch budget (for a fine-tune, a fraction of the base's epochs);
//! 3. [`NluModel::train`] with a [`crate::trainer::TrainObserver`] of the caller's;
//! 4. [`evaluate`] on held-out data, if there is any (`evaluation.json`);
//! 5. [`version_files`]: the checkpoint, the inference model and the vocabulary, with the
//!    manifest that lists them, ready for the registry to write (files first, manifest last).
//!
//! What differs between callers stays with them: where data and versions come from and go to
//! (the worker: S3 with retries, resume checkpoints, events; the demo: a local directory in one
//! process), and progress display. Nothing here does I/O.

use std::collections::BTreeMap;

use chrono::Utc;
use refit_proto::data::{SynonymFile, TrainingData};
use refit_proto::evaluation::{EVALUATION_FORMAT, Evaluation};
use refit_proto::manifest::{DataSummary, MANIFEST_FORMAT, VersionFiles};
use refit_proto::vocab::Vocabulary;
use refit_proto::{
    ArchSpec, Budget, DatasetRef, Manifest, Mode, ModelName, REFIT_VERSION, Version, keys,
};

use crate::EngineError;
use crate::checkpoint::Checkpoint;
use crate::predict::{Predictor, Scored, export, score};
use crate::runtime::RuntimeOptions;
use crate::trainer::NluModel;

/// Where a run starts from.
pub enum Start {
    /// A new model for the data, its initial weights drawn from `seed`.
    Scratch {
        /// The architecture.
        arch: ArchSpec,
        /// Seed of the initial weights.
        seed: u64,
    },
    /// A stored model (see [`load`]): its vocabulary grows by the data's new features, the
    /// embedding gains rows for them, and the run's epoch count starts at 0. The data must have
    /// the version's labels.
    Finetune(Box<NluModel>),
}

/// A model ready to train on `data`, from `start`.
pub fn start(start: Start, data: &TrainingData) -> Result<NluModel, EngineError> {
    start_capped(start, data, refit_proto::vocab::DEFAULT_MAX_FEATURES)
}

/// [`start`] with a vocabulary of at most `max_features` features; a dataset with more
/// distinct words and n-grams is [`EngineError::Data`], caught before any tensor is sized.
pub fn start_capped(
    start: Start,
    data: &TrainingData,
    max_features: usize,
) -> Result<NluModel, EngineError> {
    match start {
        Start::Scratch { arch, seed } => NluModel::new_capped(arch, data, seed, max_features),
        Start::Finetune(mut model) => {
            model.extend_for_capped(data, max_features)?;
            model.begin_run();
            Ok(*model)
        }
    }
}

/// Rebuilds a stored model (a version, or a job's resume checkpoint) from its architecture, its
/// vocabulary and its checkpoint's bytes, already checked against their sha256 by whoever read
/// them. A checkpoint that does not parse is [`EngineError::Corrupt`]; one that does not fit the
/// architecture or the vocabulary is [`EngineError::Incompatible`].
pub fn load(
    arch: &ArchSpec,
    vocab: Vocabulary,
    checkpoint: &[u8],
) -> Result<NluModel, EngineError> {
    let checkpoint = Checkpoint::from_bytes(checkpoint).map_err(|e| EngineError::Corrupt {
        file: keys::CHECKPOINT.to_owned(),
        reason: e.to_string(),
    })?;
    NluModel::from_parts(arch.clone(), vocab, checkpoint)
}

/// Why a budget cannot be turned into epochs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// `Epochs(0)`.
    #[error("the job asks for 0 epochs")]
    ZeroEpochs,
    /// A fraction that is not a number above 0.
    #[error("invalid epoch fraction {0}: expected a number above 0")]
    Fraction(f64),
    /// A fraction of nothing: a scratch run has no base epochs to take it of.
    #[error("an epoch-fraction budget needs a base version")]
    NoBase,
}

/// Epochs of a run: `Epochs(n)`, or ⌈f · the base version's epochs⌉ (at least 1) for
/// `EpochFraction(f)`, which needs a base (`base_epochs`, the epochs its manifest records).
pub fn epochs(budget: Budget, base_epochs: Option<f64>) -> Result<u32, BudgetError> {
    match budget {
        Budget::Epochs(0) => Err(BudgetError::ZeroEpochs),
        Budget::Epochs(n) => Ok(n),
        Budget::EpochFraction(f) if !(f.is_finite() && f > 0.0) => Err(BudgetError::Fraction(f)),
        Budget::EpochFraction(f) => {
            let base = base_epochs.ok_or(BudgetError::NoBase)?;
            // The slack keeps 0.3 · 100 (30.000000000000004 in binary floating point) at 30.
            let epochs = (f * base - 1e-9).ceil().clamp(1.0, f64::from(u32::MAX));
            Ok(epochs as u32)
        }
    }
}

/// The model's quality on labelled held-out data, as `rasa test nlu` reports it, with what it
/// got right example by example (see [`Scored::into_evaluation`]).
pub fn evaluate(
    model: &NluModel,
    eval: &TrainingData,
    runtime: &RuntimeOptions,
) -> Result<Scored, EngineError> {
    score(&mut Predictor::for_model(model, runtime)?, eval)
}

impl Scored {
    /// `evaluation.json` of `version` (without comparisons), scored on the eval data `data`.
    pub fn into_evaluation(
        self,
        model: ModelName,
        version: Version,
        data: DatasetRef,
    ) -> Evaluation {
        Evaluation {
            format: EVALUATION_FORMAT,
            model,
            version,
            data,
            report: self.report,
            outcomes: self.outcomes,
            comparisons: Vec::new(),
        }
    }
}

/// What a new version records besides the model itself.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    /// The model.
    pub model: ModelName,
    /// The version to write.
    pub version: Version,
    /// The version it was fine-tuned from; `None` for a scratch run.
    pub base: Option<BaseVersion>,
    /// Epochs trained in this run.
    pub epochs: f64,
    /// The dataset's object key.
    pub dataset_key: String,
    /// The dataset's sha256.
    pub dataset_sha256: String,
    /// Quality on held-out data (`evaluation.json`, and its summary in the manifest).
    pub evaluation: Option<Evaluation>,
    /// Seconds per phase.
    pub timings: BTreeMap<String, f64>,
}

/// What a new version takes from the version it was fine-tuned from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseVersion {
    /// The base version: the new one's parent.
    pub version: Version,
    /// The base's fine-tunes since its last scratch run.
    pub finetune_depth: u32,
}

impl From<&Manifest> for BaseVersion {
    fn from(manifest: &Manifest) -> Self {
        Self {
            version: manifest.version,
            finetune_depth: manifest.finetune_depth,
        }
    }
}

/// A trained model as a version's files: `checkpoint.safetensors`, `model.onnx` (the inference
/// model, exported here), `vocab.json` and `synonyms.json` (the data's entity synonyms), with the
/// manifest that describes them, and `evaluation.json` when the run was evaluated. `data` is
/// what it was trained on (for the manifest's counts and the synonyms).
pub fn version_files(model: &NluModel, data: &TrainingData, info: &VersionInfo) -> VersionFiles {
    let mut files: Vec<(&'static str, Vec<u8>)> = vec![
        (keys::CHECKPOINT, model.checkpoint.to_bytes()),
        (keys::MODEL_ONNX, export(model)),
        (keys::VOCAB, model.featurizer.vocab().to_json()),
        (keys::SYNONYMS, synonyms_json(data)),
    ];
    if let Some(evaluation) = &info.evaluation {
        files.push((keys::EVALUATION, evaluation.to_json()));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        model: info.model.clone(),
        version: info.version,
        parent: info.base.map(|b| b.version),
        mode: if info.base.is_some() {
            Mode::Finetune
        } else {
            Mode::Scratch
        },
        finetune_depth: info.base.map_or(0, |b| b.finetune_depth + 1),
        labels: model.labels(),
        arch: model.arch.clone(),
        arch_fingerprint: model.arch.fingerprint(),
        vocab_size: model.featurizer.vocab().len() as u64,
        data: DataSummary {
            sha256: info.dataset_sha256.clone(),
            key: info.dataset_key.clone(),
            examples: data.len() as u64,
            counts: data.label_counts(),
        },
        epochs: info.epochs,
        metrics: info.evaluation.as_ref().map(|e| e.report.to_metrics()),
        timings: info.timings.clone(),
        files: BTreeMap::new(),
        refit_version: REFIT_VERSION.to_owned(),
        created_at: Utc::now(),
        // Set by the coordinator when it commits a job's upload.
        job_id: None,
        attempt_id: None,
    };
    VersionFiles::new(manifest, files)
}

/// `synonyms.json`: what a server maps extracted entity values through.
fn synonyms_json(data: &TrainingData) -> Vec<u8> {
    let file = SynonymFile {
        synonyms: data.synonym_map(),
    };
    serde_json::to_vec_pretty(&file).expect("strings always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        assert_eq!(epochs(Budget::Epochs(7), None), Ok(7));
        assert_eq!(
            epochs(Budget::Epochs(0), None),
            Err(BudgetError::ZeroEpochs)
        );
        assert_eq!(
            epochs(Budget::EpochFraction(0.3), None),
            Err(BudgetError::NoBase)
        );
        assert!(matches!(
            epochs(Budget::EpochFraction(f64::NAN), Some(100.0)),
            Err(BudgetError::Fraction(_))
        ));
        assert!(epochs(Budget::EpochFraction(-0.5), Some(100.0)).is_err());
    }

    #[test]
    fn fractions_round_up_without_float_noise() {
        let frac = |f: f64, base: f64| epochs(Budget::EpochFraction(f), Some(base)).unwrap();
        assert_eq!(frac(0.3, 100.0), 30);
        assert_eq!(frac(0.34, 3.0), 2);
        assert_eq!(frac(0.01, 10.0), 1);
        assert_eq!(frac(1.0, 7.0), 7);
        assert_eq!(frac(0.3, 0.0), 1);
    }
}
