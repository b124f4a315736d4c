//! The job message: what a worker is asked to train.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Alias, JobId, ModelName, Version};

/// How a job trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fine-tune when the decision allows it, else follow the policy.
    Auto,
    /// Continue training from the base version's checkpoint.
    Finetune,
    /// Train new weights.
    Scratch,
}

impl Mode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Finetune => "finetune",
            Mode::Scratch => "scratch",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "finetune" => Ok(Mode::Finetune),
            "scratch" => Ok(Mode::Scratch),
            other => Err(format!(
                "unknown mode {other:?}: expected auto, finetune or scratch"
            )),
        }
    }
}

/// A dataset in the object store, named by its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Its object key, e.g. `datasets/sha256/<hex>.yml`.
    pub key: String,
    /// sha256 (hex) of its bytes; the worker verifies it after download.
    pub sha256: String,
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A number of epochs.
    Epochs(u32),
    /// A fraction of the base version's epochs (fine-tuning; DESIGN §4 default 0.3).
    EpochFraction(f64),
}

/// Training hyperparameters that may change between fine-tunes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyperparams {
    /// How long to train.
    pub budget: Budget,
    /// Examples per optimiser step (in the first epoch, when `final_batch_size` is set).
    pub batch_size: u32,
    /// Examples per step in the last epoch: the batch size grows linearly from `batch_size` to
    /// this over the run's epochs. `None` (what jobs published before the field existed carry):
    /// `batch_size` throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_batch_size: Option<u32>,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Seed for initialisation, shuffling and dropout.
    pub seed: u64,
}

impl Default for Hyperparams {
    /// The training engine's defaults (`TrainOptions`, checked by a worker test): batch size
    /// 32 growing to 128, learning rate 0.003; 100 epochs, seed 42.
    fn default() -> Self {
        Self {
            budget: Budget::Epochs(100),
            batch_size: 32,
            final_batch_size: Some(128),
            learning_rate: 3e-3,
            seed: 42,
        }
    }
}

/// A training job, as published on `refit.jobs.<pool>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job.
    pub id: JobId,
    /// The model it produces a version of.
    pub model: ModelName,
    /// `finetune` or `scratch`, as decided by the coordinator (`auto` is resolved before
    /// publishing; a worker treats a leftover `auto` as `finetune` when `base_version` is set).
    pub mode: Mode,
    /// The version to fine-tune from.
    #[serde(default)]
    pub base_version: Option<Version>,
    /// The version this job writes; assigned by the coordinator, unique per model.
    pub output_version: Version,
    /// The training data.
    pub dataset: DatasetRef,
    /// Held-out data to evaluate on, if any.
    #[serde(default)]
    pub eval_dataset: Option<DatasetRef>,
    /// Training hyperparameters.
    pub hyperparams: Hyperparams,
    /// Above 0: the job is published to its pool's priority queue, which workers drain before
    /// the other (`refit_io::queue::Topology::job_queues_for`). Default 0.
    #[serde(default)]
    pub priority: u8,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// Give up (as a permanent failure) when not finished by then.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// On success, move this alias to the new version if it passes the alias's gate
    /// (`refit_proto::promotion`). The worker also evaluates the alias's current version on the
    /// job's eval data, so that the gate compares like with like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_to: Option<Alias>,
}
