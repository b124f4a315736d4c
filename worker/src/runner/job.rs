//! One delivery, from decoding to settling: [`handle`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use refit_proto::data::{Format, TrainingData, parse_bytes};
use refit_proto::{
    ArchSpec, Budget, DatasetRef, ErrorKind, EventKind, JobId, JobSpec, Manifest, Metrics, Mode,
    Version,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::Shared;
use super::observer::{JobObserver, TrainMsg};
use super::report::{Heartbeat, JobStatus, Reporter};
use super::resume::{self, Expect, ResumeMarker};
use super::retry::JobError;
use crate::engine::EngineError;
use crate::engine::predict::evaluate_model;
use crate::engine::runtime::RuntimeOptions;
use crate::engine::trainer::{NluModel, Progress, TrainOptions};
use crate::queue::{Delivery, QueueError};
use crate::version::{
    VersionError, VersionInfo, read_manifest, read_version, version_files, write_version,
};

/// How often a running job checks that its delivery's channel is still open.
const DELIVERY_CHECK: Duration = Duration::from_millis(250);

/// Handles one delivery and settles it: exactly one of ack, nack with requeue, or reject.
pub(crate) async fn handle(shared: Arc<Shared>, delivery: Delivery) {
    let attempt = delivery.attempt();
    let job: JobSpec = match delivery.decode() {
        Ok(job) => job,
        Err(err) => {
            // The message id is the job id for refit's publishers: tell the coordinator.
            let job_id = delivery
                .message_id()
                .and_then(|id| id.parse::<JobId>().ok());
            error!(error = %err, job_id = ?job_id, attempt, "cannot decode a job message; dead-lettering it");
            if let Some(job_id) = job_id {
                let reporter = Reporter::new(
                    shared.publisher.clone(),
                    job_id,
                    attempt,
                    shared.worker_id.clone(),
                );
                let kind = EventKind::Failed {
                    error: format!("undecodable job message: {err}"),
                    error_kind: ErrorKind::Permanent,
                };
                publish_final(&shared, &reporter, kind).await;
            }
            settled("reject", delivery.reject().await);
            return;
        }
    };
    let span = info_span!(
        "job",
        job_id = %job.id,
        attempt,
        worker_id = %shared.worker_id,
        model = %job.model,
        version = %job.output_version,
    );
    run(shared, delivery, job, attempt).instrument(span).await;
}

async fn run(shared: Arc<Shared>, delivery: Delivery, job: JobSpec, attempt: u32) {
    let cancel = shared.register(job.id);
    let reporter = Reporter::new(
        shared.publisher.clone(),
        job.id,
        attempt,
        shared.worker_id.clone(),
    );
    let status = JobStatus::new();
    let heartbeat = Heartbeat::start(
        reporter.clone(),
        status.clone(),
        Duration::from_secs(shared.settings.heartbeat_secs),
    );
    info!(mode = %job.mode, redelivered = delivery.redelivered(), "job received");
    // Stops the attempt at its next step, as a shutdown does: the worker's shutdown, or the loss
    // of the delivery's channel (see `watch_delivery`).
    let handback = shared.shutdown.child_token();
    let lost = CancellationToken::new();
    let done = CancellationToken::new();
    let work = async {
        let outcome = Job {
            shared: &shared,
            job: &job,
            reporter: &reporter,
            status: &status,
            cancel: &cancel,
            handback: &handback,
            lost: &lost,
        }
        .execute()
        .await;
        done.cancel();
        outcome
    };
    let (outcome, ()) = tokio::join!(work, watch_delivery(&delivery, &done, &lost, &handback));
    drop(heartbeat);
    shared.unregister(job.id);

    let store = &*shared.store;
    match outcome {
        Ok(()) => {
            settled("ack", delivery.ack().await);
            resume::delete(store, job.id).await;
        }
        Err(JobError::Cancelled) => {
            info!("job cancelled");
            publish_final(&shared, &reporter, EventKind::Cancelled).await;
            settled("ack", delivery.ack().await);
            resume::delete(store, job.id).await;
        }
        Err(JobError::Shutdown) => {
            info!("handing the job back to the queue for another worker");
            settled("nack", delivery.nack_requeue().await);
        }
        Err(JobError::Lost) => {
            info!("stopped: the broker has requeued the job and delivers it again");
            // Fails (the channel is gone); kept for a channel that only looked closed.
            settled("nack", delivery.nack_requeue().await);
        }
        Err(JobError::Permanent(reason)) => {
            error!(%reason, "job failed permanently; dead-lettering it");
            let kind = EventKind::Failed {
                error: reason,
                error_kind: ErrorKind::Permanent,
            };
            publish_final(&shared, &reporter, kind).await;
            settled("reject", delivery.reject().await);
            resume::delete(store, job.id).await;
        }
        Err(JobError::Transient(reason)) => {
            warn!(%reason, "job failed transiently; requeueing it");
            let kind = EventKind::Failed {
                error: reason,
                error_kind: ErrorKind::Transient,
            };
            publish_final(&shared, &reporter, kind).await;
            settled("nack", delivery.nack_requeue().await);
        }
    }
}

/// Watches the delivery's channel until `done`. When it closes (the connection to RabbitMQ was
/// lost, or the broker closed the channel, e.g. at its consumer timeout), the broker has
/// requeued the job already and delivers it again, here or to another worker, while an ack from
/// this attempt can no longer reach it. Training on would run the job twice at once and report
/// `succeeded` twice; so the attempt stops at its next step, uploads its latest epoch-boundary
/// checkpoint as on shutdown, and the redelivery resumes from it (or, if the version got stored,
/// reports `succeeded` without training).
async fn watch_delivery(
    delivery: &Delivery,
    done: &CancellationToken,
    lost: &CancellationToken,
    handback: &CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = done.cancelled() => return,
            () = tokio::time::sleep(DELIVERY_CHECK) => {}
        }
        if !delivery.is_live() {
            warn!(
                "the job's delivery was lost with its channel (broker connection lost?); \
                 stopping this attempt, the broker delivers the job again"
            );
            lost.cancel();
            handback.cancel();
            return;
        }
    }
}

/// Publishes an attempt's last event with retries; a failure is logged (the delivery is settled
/// regardless: the dead-letter queue or the redelivery keeps the job).
async fn publish_final(shared: &Shared, reporter: &Reporter, kind: EventKind) {
    let name = kind.name();
    if let Err(err) = shared
        .retry
        .run("publish event", || reporter.send(kind.clone()))
        .await
    {
        error!(error = %err, event = name, "failed to publish an event");
    }
}

fn settled(op: &'static str, result: Result<(), QueueError>) {
    match result {
        Ok(()) => {}
        // The channel is gone; the broker delivers the job again, and the redelivery finds the
        // stored version (or the resume checkpoint).
        Err(err) => {
            warn!(error = %err, op, "failed to settle the delivery; the broker will redeliver it")
        }
    }
}

/// One attempt of one job.
struct Job<'a> {
    shared: &'a Shared,
    job: &'a JobSpec,
    reporter: &'a Reporter,
    status: &'a JobStatus,
    cancel: &'a CancellationToken,
    /// Cancelled on shutdown or when the delivery is lost: stop and leave a resume checkpoint.
    handback: &'a CancellationToken,
    /// Cancelled when the delivery is lost (its channel closed).
    lost: &'a CancellationToken,
}

impl Job<'_> {
    async fn execute(&self) -> Result<(), JobError> {
        let job = self.job;
        let store = &*self.shared.store;
        let retry = &self.shared.retry;
        let started = Instant::now();
        let mut timings = BTreeMap::new();

        // At least once: a redelivered job whose version is stored is done.
        let existing = retry
            .run("check for the output version", || {
                read_manifest(store, &job.model, job.output_version)
            })
            .await;
        match existing {
            Ok(manifest) => return self.already_done(manifest).await,
            Err(VersionError::NotFound { .. }) => {}
            Err(e) => {
                return Err(JobError::version(format!(
                    "failed to check for output version {}",
                    job.output_version
                ))(e));
            }
        }
        self.check_stop()?;

        let mode = match (job.mode, job.base_version) {
            (Mode::Auto, Some(_)) => Mode::Finetune,
            (Mode::Auto, None) => Mode::Scratch,
            (mode, _) => mode,
        };
        let base = match (mode, job.base_version) {
            (Mode::Finetune, Some(version)) => {
                let manifest = retry
                    .run("read the base manifest", || {
                        read_manifest(store, &job.model, version)
                    })
                    .await
                    .map_err(JobError::version(format!("base version {version}")))?;
                Some(manifest)
            }
            (Mode::Finetune, None) => {
                return Err(JobError::Permanent(
                    "a finetune job needs a base version".into(),
                ));
            }
            _ => None,
        };
        let total_epochs = budget_epochs(job.hyperparams.budget, base.as_ref())?;
        let arch = base.as_ref().map(|m| m.arch.clone()).unwrap_or_default();

        let data = Arc::new(self.dataset(&job.dataset, "dataset").await?);
        let eval = match &job.eval_dataset {
            Some(d) => Some(self.dataset(d, "eval dataset").await?),
            None => None,
        };
        self.check_stop()?;

        let expect = Expect {
            job_id: job.id,
            dataset_sha256: &job.dataset.sha256,
            total_epochs,
            arch_fingerprint: arch.fingerprint(),
        };
        let (model, resumed_from) = match resume::load(store, retry, &expect).await? {
            Some((model, marker)) => (model, Some(marker.epochs_done)),
            None => (self.fresh_model(base.as_ref(), &arch, &data).await?, None),
        };
        timings.insert("download".to_owned(), started.elapsed().as_secs_f64());
        self.check_stop()?;

        self.reporter
            .send_best_effort(EventKind::Started {
                resumed_from_epoch: resumed_from.map(|e| e as f64),
                total_epochs: f64::from(total_epochs),
            })
            .await;
        info!(total_epochs, resumed_from_epoch = ?resumed_from, examples = data.len(), "training");
        self.status.set_phase("train");
        let train_started = Instant::now();
        let marker = ResumeMarker {
            job_id: job.id,
            epochs_done: 0,
            total_epochs,
            step: 0,
            dataset_sha256: job.dataset.sha256.clone(),
            arch: arch.clone(),
            checkpoint_sha256: String::new(),
            vocab_sha256: String::new(),
            checkpoint_file: String::new(),
            vocab_file: String::new(),
            written_at: chrono::Utc::now(),
        };
        let model = self
            .train(
                model,
                data.clone(),
                total_epochs,
                resumed_from.unwrap_or(0),
                marker,
            )
            .await?;
        timings.insert("train".to_owned(), train_started.elapsed().as_secs_f64());

        match eval {
            Some(eval) => {
                self.status.set_phase("evaluate");
                let t = Instant::now();
                let runtime = self.shared.runtime.clone();
                let (model_back, metrics) = blocking(move || {
                    let metrics = evaluate_on(&model, &eval, &runtime);
                    (model, metrics)
                })
                .await?;
                let metrics = metrics.map_err(JobError::engine("evaluation failed"))?;
                timings.insert("evaluate".to_owned(), t.elapsed().as_secs_f64());
                self.upload(
                    model_back,
                    &data,
                    base.as_ref(),
                    total_epochs,
                    Some(metrics),
                    timings,
                    started,
                )
                .await
            }
            None => {
                self.upload(
                    model,
                    &data,
                    base.as_ref(),
                    total_epochs,
                    None,
                    timings,
                    started,
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        model: NluModel,
        data: &Arc<TrainingData>,
        base: Option<&Manifest>,
        total_epochs: u32,
        metrics: Option<Metrics>,
        mut timings: BTreeMap<String, f64>,
        started: Instant,
    ) -> Result<(), JobError> {
        let job = self.job;
        self.status.set_phase("upload");
        let t = Instant::now();
        let info = VersionInfo {
            model: job.model.clone(),
            version: job.output_version,
            parent: base.map(|m| m.version),
            mode: if base.is_some() {
                Mode::Finetune
            } else {
                Mode::Scratch
            },
            finetune_depth: base.map_or(0, |m| m.finetune_depth + 1),
            dataset_key: job.dataset.key.clone(),
            dataset_sha256: job.dataset.sha256.clone(),
            epochs: f64::from(total_epochs),
            metrics: metrics.clone(),
            timings: timings.clone(),
        };
        let data = data.clone();
        let files = blocking(move || version_files(&model, &data, &info)).await?;
        let store = &*self.shared.store;
        self.shared
            .retry
            .run("upload the version", || write_version(store, &files))
            .await
            .map_err(JobError::version("failed to upload the version"))?;
        timings.insert("upload".to_owned(), t.elapsed().as_secs_f64());
        timings.insert("total".to_owned(), started.elapsed().as_secs_f64());
        info!(version = %job.output_version, "version stored");
        self.succeed(job.output_version, metrics, timings).await
    }

    async fn already_done(&self, manifest: Manifest) -> Result<(), JobError> {
        if manifest.data.sha256 != self.job.dataset.sha256 {
            return Err(JobError::Permanent(format!(
                "output version {} of model {} already exists and was trained on other data \
                 (sha256 {}, this job's is {})",
                manifest.version, manifest.model, manifest.data.sha256, self.job.dataset.sha256
            )));
        }
        info!("the output version is already stored; reporting success again without training");
        self.succeed(manifest.version, manifest.metrics, manifest.timings)
            .await
    }

    /// `succeeded`, confirmed by the broker (the delivery is acked only after it).
    async fn succeed(
        &self,
        version: Version,
        metrics: Option<Metrics>,
        timings: BTreeMap<String, f64>,
    ) -> Result<(), JobError> {
        if self.lost.is_cancelled() {
            // The redelivery reports it (it finds the stored version), and acks.
            return Err(JobError::Lost);
        }
        let kind = EventKind::Succeeded {
            version,
            metrics,
            timings,
        };
        self.shared
            .retry
            .run("publish succeeded", || self.reporter.send(kind.clone()))
            .await
            .map_err(JobError::queue("failed to publish the succeeded event"))
    }

    fn check_stop(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(JobError::Cancelled)
        } else if self.lost.is_cancelled() {
            Err(JobError::Lost)
        } else if self.handback.is_cancelled() {
            Err(JobError::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Downloads a dataset, checks its sha256 and parses it.
    async fn dataset(&self, d: &DatasetRef, what: &'static str) -> Result<TrainingData, JobError> {
        let store = &*self.shared.store;
        let bytes: Bytes = self
            .shared
            .retry
            .run("download a dataset", || {
                store.get_verified(&d.key, &d.sha256)
            })
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
                let arch = arch.clone();
                let seed = self.job.hyperparams.seed;
                blocking(move || NluModel::new(arch, &data, seed))
                    .await?
                    .map_err(JobError::engine("cannot build a model for the dataset"))
            }
            Some(manifest) => {
                let store = &*self.shared.store;
                let version = manifest.version;
                let (_, mut model) = self
                    .shared
                    .retry
                    .run("download the base version", || {
                        read_version(store, &self.job.model, version)
                    })
                    .await
                    .map_err(JobError::version(format!("base version {version}")))?;
                let model = blocking(move || {
                    model.extend_for(&data)?;
                    model.begin_run();
                    Ok::<_, EngineError>(model)
                })
                .await?
                .map_err(JobError::engine(format!(
                    "cannot fine-tune base version {version} on the dataset"
                )))?;
                Ok(model)
            }
        }
    }

    /// Trains on a blocking thread, forwarding progress and resume checkpoints.
    async fn train(
        &self,
        mut model: NluModel,
        data: Arc<TrainingData>,
        total_epochs: u32,
        start_epoch: u64,
        marker: ResumeMarker,
    ) -> Result<NluModel, JobError> {
        let settings = &self.shared.settings;
        let vocab = Bytes::from(model.featurizer.vocab().to_json());
        let (tx, mut rx) = mpsc::channel(8);
        let observer = JobObserver::new(
            self.cancel.clone(),
            self.handback.clone(),
            tx,
            total_epochs,
            start_epoch,
            settings.resume_every_epochs,
            settings.resume_every_secs,
        );
        let opts = TrainOptions {
            runtime: self.shared.runtime.clone(),
            ..TrainOptions::for_job(&self.job.hyperparams)
        };
        let handle = tokio::task::spawn_blocking(move || {
            let mut observer = observer;
            let result = model.train(&data, total_epochs, &opts, &mut observer);
            let JobObserver {
                snapshot, pending, ..
            } = observer;
            (model, result, snapshot, pending)
        });
        // Ends when the training thread drops the observer's sender.
        while let Some(msg) = rx.recv().await {
            match msg {
                TrainMsg::Progress(p) => self.progress(p).await,
                TrainMsg::Checkpoint {
                    epochs_done,
                    step,
                    bytes,
                } => {
                    self.upload_resume(&marker, epochs_done, step, bytes, &vocab)
                        .await
                }
            }
        }
        let (model, result, snapshot, pending) = handle
            .await
            .map_err(|e| JobError::Permanent(format!("the training thread failed: {e}")))?;
        match result {
            Ok(report) => {
                if let Some(p) = pending {
                    self.progress(p).await;
                }
                info!(
                    epochs = report.epochs,
                    steps = report.steps,
                    final_loss = report.final_loss,
                    seconds = report.seconds,
                    "training done"
                );
                Ok(model)
            }
            Err(EngineError::Cancelled) if self.cancel.is_cancelled() => Err(JobError::Cancelled),
            Err(EngineError::Cancelled) => {
                if let Some(checkpoint) = snapshot {
                    self.status.set_phase("checkpoint");
                    let bytes = checkpoint.to_bytes();
                    let state = &checkpoint.state;
                    self.upload_resume(&marker, state.epochs_done, state.step, bytes, &vocab)
                        .await;
                }
                if self.lost.is_cancelled() {
                    Err(JobError::Lost)
                } else {
                    Err(JobError::Shutdown)
                }
            }
            Err(e) => Err(JobError::engine("training failed")(e)),
        }
    }

    async fn progress(&self, p: Progress) {
        self.reporter
            .send_best_effort(EventKind::Progress {
                epoch: p.epoch,
                step: p.step,
                loss: p.loss,
                examples_per_sec: p.examples_per_sec,
                eta_secs: Some(p.eta_secs),
            })
            .await;
    }

    async fn upload_resume(
        &self,
        base: &ResumeMarker,
        epochs_done: u64,
        step: u64,
        checkpoint: Vec<u8>,
        vocab: &Bytes,
    ) {
        let mut marker = base.clone();
        marker.epochs_done = epochs_done;
        marker.step = step;
        let store = &*self.shared.store;
        let written = resume::write(
            store,
            &self.shared.retry,
            &marker,
            Bytes::from(checkpoint),
            vocab.clone(),
        )
        .await;
        match written {
            Ok(_) => {
                self.status.checkpointed();
                info!(epochs_done, step, "resume checkpoint written");
                self.reporter
                    .send_best_effort(EventKind::Checkpointed {
                        epoch: epochs_done as f64,
                        step,
                    })
                    .await;
            }
            Err(err) => {
                let (_, age) = self.status.snapshot();
                warn!(
                    error = %err,
                    epochs_done,
                    last_checkpoint_age_secs = ?age,
                    "failed to write a resume checkpoint; training goes on"
                );
            }
        }
    }
}

/// Epochs of this run: `Epochs(n)`, or ⌈f · the base's epochs⌉ (at least 1).
fn budget_epochs(budget: Budget, base: Option<&Manifest>) -> Result<u32, JobError> {
    match budget {
        Budget::Epochs(0) => Err(JobError::Permanent("the job asks for 0 epochs".into())),
        Budget::Epochs(n) => Ok(n),
        Budget::EpochFraction(f) if !(f.is_finite() && f > 0.0) => Err(JobError::Permanent(
            format!("invalid epoch fraction {f}: expected a number above 0"),
        )),
        Budget::EpochFraction(f) => {
            let Some(base) = base else {
                return Err(JobError::Permanent(
                    "an epoch-fraction budget needs a base version".into(),
                ));
            };
            // The slack keeps 0.3 · 100 (30.000000000000004) at 30.
            let epochs = (f * base.epochs - 1e-9)
                .ceil()
                .clamp(1.0, f64::from(u32::MAX));
            Ok(epochs as u32)
        }
    }
}

fn evaluate_on(
    model: &NluModel,
    eval: &TrainingData,
    runtime: &RuntimeOptions,
) -> Result<Metrics, EngineError> {
    Ok(evaluate_model(model, eval, runtime)?.to_metrics())
}

/// Runs CPU-bound work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobError::Permanent(format!("a worker thread failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        assert_eq!(budget_epochs(Budget::Epochs(7), None).unwrap(), 7);
        assert!(budget_epochs(Budget::Epochs(0), None).is_err());
        assert!(budget_epochs(Budget::EpochFraction(0.3), None).is_err());
        assert!(budget_epochs(Budget::EpochFraction(f64::NAN), None).is_err());
    }
}
