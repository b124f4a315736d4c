//! Submitting a job: resolve the base version, read the dataset, decide (DESIGN §4), store the
//! job in the outbox. Shared by `POST /v1/jobs`, `POST /v1/check` and the scheduler.

use std::collections::BTreeSet;

use chrono::Utc;
use refit_io::registry::RegistryError;
use refit_io::storage::{StorageError, validate_key};
use refit_proto::data::{Format, TrainingData, parse_bytes};
use refit_proto::decision::{Decision, DecisionInput, DecisionReport, Policy, decide};
use refit_proto::wire::{DatasetBody, SubmitRequest};
use refit_proto::{
    Alias, ArchSpec, Budget, DatasetRef, Hyperparams, JobId, JobSpec, Manifest, Mode, ModelName,
    Version, keys,
};

use super::App;
use crate::config::dataset_extension;
use crate::store::{NewJob, StoreError, StoredJob};

/// Why a submission was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The dataset cannot be used (missing, too big, does not parse, no examples).
    #[error("{0}")]
    Dataset(String),
    /// The named base version or alias does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The decision is reject.
    #[error("not fine-tunable: {}", .0.codes().join(", "))]
    Rejected(Box<DecisionReport>),
    /// The object store failed; worth retrying.
    #[error("object store: {0}")]
    Storage(#[from] StorageError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The request's `promote_to` alias, checked: a valid alias name, and eval data to gate on.
fn promote_to(request: &SubmitRequest) -> Result<Option<Alias>, SubmitError> {
    let Some(alias) = &request.promote_to else {
        return Ok(None);
    };
    let alias =
        Alias::new(alias.as_str()).map_err(|e| SubmitError::Invalid(format!("promote_to: {e}")))?;
    if request.eval_dataset.is_none() {
        return Err(SubmitError::Invalid(format!(
            "promote_to {alias:?} needs eval data (eval_dataset, `refit submit --eval`): the \
             gate compares the new version with the alias's on it"
        )));
    }
    Ok(Some(alias))
}

impl From<RegistryError> for SubmitError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Storage(e) => SubmitError::Storage(e),
            RegistryError::NotFound { .. } => SubmitError::NotFound(e.to_string()),
            RegistryError::BadAlias { .. } | RegistryError::BadHistory { .. } => {
                SubmitError::Dataset(e.to_string())
            }
            RegistryError::Corrupt { .. }
            | RegistryError::Commit { .. }
            | RegistryError::Conflict { .. } => {
                SubmitError::Dataset(format!("the base version cannot be read: {e}"))
            }
        }
    }
}

/// Runs CPU-heavy work (parsing a dataset, the decision: seconds for a large one) on the blocking
/// pool, so that the API's other requests are not held up; a panic in it goes on as a panic.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the runtime stopped during a blocking task: {e}"),
        },
    }
}

/// What a submission was decided on.
pub struct Evaluated {
    /// The model.
    pub model: ModelName,
    /// The decision.
    pub report: DecisionReport,
    /// The base version's manifest, if the model has one.
    pub base: Option<Manifest>,
    /// The training data.
    pub dataset: DatasetRef,
    /// The held-out data.
    pub eval_dataset: Option<DatasetRef>,
}

/// The job's last-epoch batch size: the request's; none (a constant batch size) when the
/// request names only `batch_size`, as asked; else the default schedule's.
fn final_batch_size(request: &SubmitRequest, defaults: &Hyperparams) -> Option<u32> {
    match (request.batch_size, request.final_batch_size) {
        (_, Some(last)) => Some(last),
        (Some(_), None) => None,
        (None, None) => defaults.final_batch_size,
    }
}

fn invalid(message: impl Into<String>) -> SubmitError {
    SubmitError::Invalid(message.into())
}

/// Checks a dataset reference: a content-addressed key whose hash is the given sha256.
pub fn dataset_ref(body: &DatasetBody) -> Result<DatasetRef, SubmitError> {
    validate_key(&body.key).map_err(|e| invalid(format!("dataset key: {e}")))?;
    let ext = dataset_extension(&body.key).map_err(invalid)?;
    let expected = keys::dataset(&body.sha256, ext).map_err(|e| invalid(e.to_string()))?;
    if expected != body.key {
        return Err(invalid(format!(
            "dataset key {:?} is not the content address of sha256 {}: expected {expected:?} \
             (upload it with POST /v1/datasets or `refit submit --data FILE`)",
            body.key, body.sha256
        )));
    }
    Ok(DatasetRef {
        key: body.key.clone(),
        sha256: body.sha256.clone(),
    })
}

impl App {
    /// Reads and parses a stored dataset, checking its size and sha256.
    pub async fn load_dataset(&self, dataset: &DatasetRef) -> Result<TrainingData, SubmitError> {
        let max = self.config.coordinator.max_dataset_bytes;
        let meta = self.objects.head(&dataset.key).await?.ok_or_else(|| {
            SubmitError::Dataset(format!(
                "dataset {} does not exist in the object store; upload it first",
                dataset.key
            ))
        })?;
        if meta.size > max {
            return Err(SubmitError::Dataset(format!(
                "dataset {} is {} bytes; the limit is {max} (coordinator.max_dataset_bytes)",
                dataset.key, meta.size
            )));
        }
        // Bounded again while reading: the object may have been replaced since the HEAD.
        let bytes = self
            .objects
            .get_verified_at_most(&dataset.key, &dataset.sha256, max)
            .await?;
        let format = Format::from_path(std::path::Path::new(&dataset.key))
            .ok_or_else(|| invalid("unknown dataset format"))?;
        let key = dataset.key.clone();
        let data = blocking(move || parse_bytes(&bytes, &key, format))
            .await
            .map_err(|e| SubmitError::Dataset(format!("dataset does not parse: {e}")))?;
        if data.is_empty() {
            return Err(SubmitError::Dataset(format!(
                "dataset {} holds no training examples",
                dataset.key
            )));
        }
        Ok(data)
    }

    /// The version `base` names (`v3`, `3` or an alias), or the newest stored one.
    async fn resolve_base(
        &self,
        model: &ModelName,
        base: Option<&str>,
        versions: &[Version],
    ) -> Result<Option<Version>, SubmitError> {
        let Some(base) = base.map(str::trim).filter(|b| !b.is_empty()) else {
            return Ok(versions.last().copied());
        };
        let version = match base.parse::<Version>() {
            Ok(version) => version,
            Err(_) => {
                let alias = Alias::new(base).map_err(|e| invalid(format!("base: {e}")))?;
                self.registry.alias(model, &alias).await?.ok_or_else(|| {
                    SubmitError::NotFound(format!("model {model} has no alias {alias}"))
                })?
            }
        };
        if !versions.contains(&version) {
            return Err(SubmitError::NotFound(format!(
                "model {model} has no stored version {version}"
            )));
        }
        Ok(Some(version))
    }

    /// The base version's word vocabulary, for the report's new-word count. Best effort: a
    /// version whose `vocab.json` cannot be read is decided on without it (the worker checks the
    /// files again before training).
    async fn base_words(&self, manifest: &Manifest) -> Option<BTreeSet<String>> {
        let vocab = self.registry.vocabulary(manifest).await.ok()?;
        Some(vocab.words())
    }

    /// Decides what a submission would do, without storing anything.
    pub async fn evaluate(
        &self,
        request: &SubmitRequest,
        force_scratch: bool,
    ) -> Result<Evaluated, SubmitError> {
        let model =
            ModelName::new(request.model.clone()).map_err(|e| invalid(format!("model: {e}")))?;
        let dataset = dataset_ref(
            request
                .dataset
                .as_ref()
                .ok_or_else(|| invalid("dataset is required"))?,
        )?;
        let eval_dataset = request.eval_dataset.as_ref().map(dataset_ref).transpose()?;
        if let Some(f) = request.epoch_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(invalid("epoch_fraction must be above 0 and at most 1"));
        }
        if request.epochs == Some(0)
            || request.batch_size == Some(0)
            || request.final_batch_size == Some(0)
        {
            return Err(invalid(
                "epochs, batch_size and final_batch_size must be at least 1",
            ));
        }
        if let Some(lr) = request.learning_rate
            && !(lr > 0.0 && lr.is_finite())
        {
            return Err(invalid("learning_rate must be a positive number"));
        }
        if let Some(pool) = &request.pool {
            refit_io::queue::check_pool(pool).map_err(invalid)?;
        }
        promote_to(request)?;

        let versions = self.registry.versions(&model).await?;
        let base_version = self
            .resolve_base(&model, request.base.as_deref(), &versions)
            .await?;
        let base = match base_version {
            Some(v) => Some(self.registry.manifest(&model, v).await?),
            None => None,
        };
        let data = self.load_dataset(&dataset).await?;
        if let Some(eval) = &eval_dataset {
            self.load_dataset(eval).await?;
        }
        let requested = request.mode.unwrap_or(Mode::Auto);
        let (mode, policy) = if force_scratch && requested != Mode::Finetune {
            (Mode::Scratch, Policy::Scratch)
        } else {
            (requested, request.policy.unwrap_or(Policy::Reject))
        };
        let arch = base
            .as_ref()
            .map(|b| b.arch.clone())
            .unwrap_or_else(ArchSpec::default);
        let base_vocabulary = match &base {
            Some(manifest) => self.base_words(manifest).await,
            None => None,
        };
        let (report, base) = blocking(move || {
            let report = decide(&DecisionInput {
                mode,
                policy,
                base: base.as_ref(),
                data: &data,
                arch: &arch,
                base_vocabulary: base_vocabulary.as_ref(),
            });
            (report, base)
        })
        .await;
        self.metrics.record_decision(&report);
        Ok(Evaluated {
            model,
            report,
            base,
            dataset,
            eval_dataset,
        })
    }

    /// Decides and, unless rejected, stores the job in the outbox and wakes the publisher.
    pub async fn submit(
        &self,
        request: &SubmitRequest,
        schedule: Option<String>,
        force_scratch: bool,
    ) -> Result<(StoredJob, DecisionReport), SubmitError> {
        let evaluated = self.evaluate(request, force_scratch).await?;
        let report = evaluated.report;
        let mode = match report.decision {
            Decision::Finetune => Mode::Finetune,
            Decision::Scratch => Mode::Scratch,
            Decision::Reject => return Err(SubmitError::Rejected(Box::new(report))),
        };
        let c = &self.config.coordinator;
        let budget = match (mode, request.epochs) {
            (_, Some(epochs)) => Budget::Epochs(epochs),
            (Mode::Finetune, None) => {
                Budget::EpochFraction(request.epoch_fraction.unwrap_or(c.default_epoch_fraction))
            }
            (_, None) => Budget::Epochs(c.default_epochs),
        };
        let defaults = Hyperparams::default();
        let spec = JobSpec {
            id: JobId::new(),
            model: evaluated.model,
            mode,
            base_version: match mode {
                Mode::Finetune => evaluated.base.as_ref().map(|b| b.version),
                _ => None,
            },
            // Replaced by the store with the next free version.
            output_version: Version::first(),
            dataset: evaluated.dataset,
            eval_dataset: evaluated.eval_dataset,
            hyperparams: Hyperparams {
                budget,
                batch_size: request.batch_size.unwrap_or(defaults.batch_size),
                final_batch_size: final_batch_size(request, &defaults),
                learning_rate: request.learning_rate.unwrap_or(defaults.learning_rate),
                seed: request.seed.unwrap_or(defaults.seed),
            },
            priority: request.priority.unwrap_or(0),
            submitted_at: Utc::now(),
            deadline: None,
            promote_to: promote_to(request)?,
        };
        let pool = request
            .pool
            .clone()
            .unwrap_or_else(|| self.config.queue.pool.clone());
        // Above every manifest and every reservation in the store (not only what this job store
        // remembers): a number is never used twice, even after the job store was lost.
        let taken = self.registry.highest_taken(&spec.model).await?;
        let (stored, spec) = self
            .store
            .insert_job(
                NewJob {
                    spec,
                    requested_mode: request.mode.unwrap_or(Mode::Auto),
                    pool,
                    decision: Some(report.clone()),
                    schedule,
                },
                taken,
            )
            .await?;
        tracing::info!(
            job_id = %spec.id,
            model = %spec.model,
            version = %spec.output_version,
            mode = %spec.mode,
            "job stored"
        );
        crate::service::fault::maybe_exit_after_store();
        self.outbox_wake.notify_one();
        Ok((stored, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_size_given_alone_is_kept_for_the_whole_run() {
        let defaults = Hyperparams::default();
        let ask = |batch_size, final_batch_size| SubmitRequest {
            batch_size,
            final_batch_size,
            ..SubmitRequest::default()
        };
        assert_eq!(
            final_batch_size(&ask(None, None), &defaults),
            defaults.final_batch_size
        );
        assert_eq!(final_batch_size(&ask(Some(16), None), &defaults), None);
        assert_eq!(
            final_batch_size(&ask(Some(16), Some(64)), &defaults),
            Some(64)
        );
        assert_eq!(final_batch_size(&ask(None, Some(64)), &defaults), Some(64));
    }
}
