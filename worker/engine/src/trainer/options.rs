//! [`TrainOptions`]: how a run trains.

use refit_proto::Hyperparams;
use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeOptions;

/// How to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Examples per step in a run's first epoch. Default 32.
    pub batch_size: usize,
    /// Examples per step in a run's last epoch: the batch size grows linearly from
    /// `batch_size` to this over the run's epochs, the schedule DIET uses by default (there
    /// 64 → 256). Small, noisy steps early, large ones late, so runs with different seeds end
    /// closer together: over 32 seeds of the demo, 32 → 128 halved the spread of v3's entity
    /// F1 (sd 0.019 → 0.010) and put v2 within ±0.02 of v3 on both metrics in 18 seeds instead
    /// of 11 (BENCHMARKS.md). Equal to `batch_size`: a constant batch size. Default 128.
    pub final_batch_size: usize,
    /// AdamW learning rate. Default 0.003.
    pub learning_rate: f32,
    /// Decoupled weight decay, on every parameter (embedding rows only when a batch uses them).
    /// Default 0.0001.
    pub weight_decay: f32,
    /// Dropout rate on token vectors and hidden layers. Default 0.2.
    pub dropout: f32,
    /// Weight of the entity loss against the intent loss. Default 1.
    pub entity_loss_weight: f32,
    /// Share of a token's input features dropped at random in each step. Default 0.2.
    pub feature_dropout: f32,
    /// Chance, drawn anew each epoch, that a word seen only once in the training data appears
    /// as [`OOV_WORD`](refit_proto::vocab::OOV_WORD) (its n-grams kept for the intent head; the
    /// tagger then sees the unseen-word feature alone), so the model learns what to make of
    /// words it has never seen. Default 0.7.
    pub rare_word_oov: f32,
    /// Chance that the entity tagger sees a token, any token, as an unseen word (the
    /// unseen-word feature alone), drawn anew for every token of every batch: it learns to read
    /// an entity from its neighbours, not only from the word. The intent head still sees the
    /// token. Default 0.25 (entity F1 0.864 → 0.894 over 8 seeds, BENCHMARKS.md).
    pub tagger_word_mask: f32,
    /// Label smoothing of the intent loss: the target puts this share of its weight evenly on
    /// all intents and the rest on the true one. Default 0.1 (over 16 seeds of the demo, intent
    /// weighted-F1 +0.010 on v2 and +0.008 on v3, and the v2 − v3 spread 0.024 → 0.015,
    /// BENCHMARKS.md).
    pub intent_label_smoothing: f32,
    /// Where the graphs run.
    pub runtime: RuntimeOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            final_batch_size: 128,
            learning_rate: 0.003,
            weight_decay: 1e-4,
            dropout: 0.2,
            feature_dropout: 0.2,
            rare_word_oov: 0.7,
            tagger_word_mask: 0.25,
            entity_loss_weight: 1.0,
            intent_label_smoothing: 0.1,
            runtime: RuntimeOptions::default(),
        }
    }
}

impl TrainOptions {
    /// The options a job's hyperparameters ask for: its batch sizes and learning rate, the
    /// defaults for the rest. A job without `final_batch_size` keeps `batch_size` throughout.
    /// (A batch size of 0 trains as 1: the run's `BatchSchedule` clamps both ends.)
    pub fn for_job(hyperparams: &Hyperparams) -> Self {
        Self {
            batch_size: hyperparams.batch_size as usize,
            final_batch_size: hyperparams
                .final_batch_size
                .unwrap_or(hyperparams.batch_size) as usize,
            learning_rate: hyperparams.learning_rate as f32,
            ..Self::default()
        }
    }
}
