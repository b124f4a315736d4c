//! One attempt of one job, step by step, once its lease is granted: read the base and the data,
//! resume (from the resume point the grant carried) or start a model through the training
//! pipeline (`refit_engine::pipeline`), train (see `train`), evaluate (see `evaluate`), upload the version's files
//! under the attempt's own folder (`refit_io::registry`), report `succeeded` with them. The
//! coordinator then commits them as the version.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use refit_engine::pipeline::{self, BaseVersion, Start, VersionInfo};
use refit_engine::trainer::NluModel;
use refit_proto::data::{Format, MAX_DATASET_BYTES, TrainingData, parse_bytes};
use refit_proto::evaluation::Evaluation;
use refit_proto::{ArchSpec, DatasetRef, EventKind, JobSpec, Manifest, Mode, ResumePoint};
use tracing::info;

use super::Shared;
use super::attempt::Stop;
use super::fault;
use super::report::{JobStatus, Reporter};
use super::resume;
use super::retry::JobError;

/// One attempt of one job.
pub(super) struct Job<'a> {
    pub(super) shared: &'a Shared,
    pub(super) job: &'a JobSpec,
    pub(super) reporter: &'a Reporter,
    pub(super) status: &'a JobStatus,
    /// Ends the attempt at its next step (cancel, lease lost, shutdown).
    pub(super) stop: &'a Stop,
    /// Where an earlier attempt left off, from the grant.
    pub(super) resume: Option<&'a ResumePoint>,
    /// Time spent fetching from S3 before training (the rest of that stretch is `load`).
    pub(super) downloading: Mutex<Duration>,
}

impl Job<'_> {
    pub(super) async fn execute(&self) -> Result<(), JobError> {
        let job = self.job;
        let store = &*self.shared.store;
        let registry = &self.shared.registry;
        let retry = &self.shared.retry;
        let started = Instant::now();
        let mut timings = BTreeMap::new();

        let mode = match (job.mode, job.base_version) {
            (Mode::Auto, Some(_)) => Mode::Finetune,
            (Mode::Auto, None) => Mode::Scratch,
            (mode, _) => mode,
        };
        let base = match (mode, job.base_version) {
            (Mode::Finetune, Some(version)) => {
                let manifest = self
                    .downloading(retry.run("read the base manifest", || {
                        registry.manifest(&job.model, version)
                    }))
                    .await
                    .map_err(JobError::registry(format!("base version {version}")))?;
                Some(manifest)
            }
            (Mode::Finetune, None) => {
                return Err(JobError::Permanent(
                    "a finetune job needs a base version".into(),
                ));
            }
            _ => None,
        };
        let total_epochs =
            pipeline::epochs(job.hyperparams.budget, base.as_ref().map(|m| m.epochs))
                .map_err(|e| JobError::Permanent(e.to_string()))?;
        let arch = base.as_ref().map(|m| m.arch.clone()).unwrap_or_default();

        let data = Arc::new(self.dataset(&job.dataset, "dataset").await?);
        let eval = match &job.eval_dataset {
            Some(d) => Some(self.dataset(d, "eval dataset").await?),
            None => None,
        };
        self.check_stop()?;

        let resumed = match self.resume {
            Some(point) => self
                .downloading(resume::load(store, retry, job.id, point, &arch))
                .await?
                .map(|model| (model, point.epochs_done)),
            None => None,
        };
        let (model, resumed_from) = match resumed {
            Some((model, epochs_done)) => (model, Some(epochs_done)),
            None => (self.fresh_model(base.as_ref(), &arch, &data).await?, None),
        };
        // Fetching from S3, then parsing, building or loading the model (`load`).
        let downloading = self
            .downloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_secs_f64();
        let before_training = started.elapsed().as_secs_f64();
        timings.insert("download".to_owned(), downloading);
        timings.insert("load".to_owned(), (before_training - downloading).max(0.0));
        self.check_stop()?;

        self.reporter
            .send_best_effort(EventKind::Started {
                resumed_from_epoch: resumed_from.map(|e| e as f64),
                total_epochs: f64::from(total_epochs),
            })
            .await;
        info!(total_epochs, resumed_from_epoch = ?resumed_from, examples = data.len(), "training");
        self.status.set_phase("train");
        fault::at("train").await;
        let train_started = Instant::now();
        let model = self
            .train(model, data.clone(), total_epochs, resumed_from.unwrap_or(0))
            .await?;
        timings.insert("train".to_owned(), train_started.elapsed().as_secs_f64());

        let (model, evaluation) = match (eval, &job.eval_dataset) {
            (Some(eval), Some(eval_ref)) => {
                self.status.set_phase("evaluate");
                let t = Instant::now();
                let (model, evaluation) =
                    self.evaluate(model, eval, eval_ref, base.as_ref()).await?;
                timings.insert("evaluate".to_owned(), t.elapsed().as_secs_f64());
                (model, Some(evaluation))
            }
            _ => (model, None),
        };
        self.upload(
            model,
            &data,
            base.as_ref(),
            total_epochs,
            evaluation,
            timings,
            started,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        model: NluModel,
        data: &Arc<TrainingData>,
        base: Option<&Manifest>,
        total_epochs: u32,
        evaluation: Option<Evaluation>,
        mut timings: BTreeMap<String, f64>,
        started: Instant,
    ) -> Result<(), JobError> {
        let job = self.job;
        self.check_stop()?;
        self.status.set_phase("export");
        fault::at("upload").await;
        let t = Instant::now();
        let info = VersionInfo {
            model: job.model.clone(),
            version: job.output_version,
            base: base.map(BaseVersion::from),
            epochs: f64::from(total_epochs),
            dataset_key: job.dataset.key.clone(),
            dataset_sha256: job.dataset.sha256.clone(),
            evaluation,
            timings: timings.clone(),
        };
        let data = data.clone();
        let files = blocking(move || pipeline::version_files(&model, &data, &info)).await?;
        let metrics = files.manifest.metrics.clone();
        timings.insert("export".to_owned(), t.elapsed().as_secs_f64());
        self.status.set_phase("upload");
        let t = Instant::now();
        let registry = &self.shared.registry;
        let attempt = self.reporter.attempt_id();
        let uploaded = self
            .shared
            .retry
            .run("upload the version", || {
                registry.upload_attempt(attempt, &files)
            })
            .await
            .map_err(JobError::registry("failed to upload the version"))?;
        timings.insert("upload".to_owned(), t.elapsed().as_secs_f64());
        timings.insert("total".to_owned(), started.elapsed().as_secs_f64());
        self.shared.metrics.observe_timings(&timings);
        info!(version = %job.output_version, "version uploaded; reporting it for commit");
        fault::at("uploaded").await;
        // A lease lost meanwhile: the upload stays an orphan the coordinator deletes.
        self.check_stop()?;
        let kind = EventKind::Succeeded {
            version: job.output_version,
            metrics,
            timings,
            files: uploaded,
        };
        self.shared
            .retry
            .run("publish succeeded", || self.reporter.send(kind.clone()))
            .await
            .map_err(JobError::queue("failed to publish the succeeded event"))?;
        fault::at("succeeded").await;
        Ok(())
    }

    /// Awaits `fetch`, counting its time as `download`.
    async fn downloading<T>(&self, fetch: impl Future<Output = T>) -> T {
        let t = Instant::now();
        let out = fetch.await;
        *self
            .downloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += t.elapsed();
        out
    }

    pub(super) fn check_stop(&self) -> Result<(), JobError> {
        if self.stop.is_stopped() {
            Err(JobError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Downloads a dataset, checks its sha256 and parses it.
    async fn dataset(&self, d: &DatasetRef, what: &'static str) -> Result<TrainingData, JobError> {
        let store = &*self.shared.store;
        let bytes: Bytes = self
            .downloading(self.shared.retry.run("download a dataset", || {
                // No larger than a dataset the coordinator accepts at all.
                store.get_verified_at_most(&d.key, &d.sha256, MAX_DATASET_BYTES as u64)
            }))
            .await
            .map_err(JobError::storage(format!(
                "failed to download the {what} {}",
                d.key
            )))?;
        let format = Format::from_path(Path::new(&d.key)).ok_or_else(|| {
            JobError::Permanent(format!(
                "the {what} {} has no known extension (.yml, .yaml, .jsonl, .json)",
                d.key
            ))
        })?;
        let key = d.key.clone();
        let data = blocking(move || parse_bytes(&bytes, &key, format))
            .await?
            .map_err(|e| JobError::Permanent(format!("bad {what}: {e}")))?;
        if data.is_empty() {
            return Err(JobError::Permanent(format!(
                "bad {what}: {} holds no examples",
                d.key
            )));
        }
        Ok(data)
    }

    /// A model to start training from: new for a scratch job, the base version extended to the
    /// data's vocabulary for a fine-tune (checking the labels match).
    async fn fresh_model(
        &self,
        base: Option<&Manifest>,
        arch: &ArchSpec,
        data: &Arc<TrainingData>,
    ) -> Result<NluModel, JobError> {
        let data = data.clone();
        match base {
            None => {
                let start = Start::Scratch {
                    arch: arch.clone(),
                    seed: self.job.hyperparams.seed,
                };
                let max = self.shared.settings.max_vocab_features;
                blocking(move || pipeline::start_capped(start, &data, max))
                    .await?
                    .map_err(JobError::engine("cannot build a model for the dataset"))
            }
            Some(manifest) => {
                let registry = &self.shared.registry;
                let version = manifest.version;
                let stored = self
                    .downloading(self.shared.retry.run("download the base version", || {
                        registry.read_version(&self.job.model, version)
                    }))
                    .await
                    .map_err(JobError::registry(format!("base version {version}")))?;
                let context = format!("base version {version}");
                let model = blocking(move || {
                    pipeline::load(&stored.manifest.arch, stored.vocab, &stored.checkpoint)
                })
                .await?
                .map_err(JobError::engine(context))?;
                let max = self.shared.settings.max_vocab_features;
                blocking(move || {
                    pipeline::start_capped(Start::Finetune(Box::new(model)), &data, max)
                })
                .await?
                .map_err(JobError::engine(format!(
                    "cannot fine-tune base version {version} on the dataset"
                )))
            }
        }
    }
}

/// Runs CPU-bound work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobError::Permanent(format!("a worker thread failed: {e}")))
}
