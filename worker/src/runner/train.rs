//! The bridge between an attempt and the training thread: training runs on a blocking thread
//! (`spawn_blocking`) with a [`JobObserver`]; its progress and epoch-boundary checkpoints come
//! back over a channel, and this side publishes `progress` events and uploads resume
//! checkpoints (reported in `checkpointed` events) while training goes on. Neither ever holds
//! the training thread up: both run beside the channel's loop, one at a time, keeping only the
//! newest of what waits; a checkpoint whose upload failed (S3 away) is tried again when S3
//! answers, and the heartbeats name it meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use refit_engine::EngineError;
use refit_engine::trainer::{NluModel, Progress, TrainOptions};
use refit_proto::data::TrainingData;
use refit_proto::{EventKind, ResumePoint};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::attempt::StopReason;
use super::fault;
use super::job::Job;
use super::observer::{JobObserver, TrainCounters, TrainMsg};
use super::resume;
use super::retry::JobError;

/// Resume checkpoints an attempt keeps (the newest is the one its last `checkpointed` event
/// named; the one before, in case the coordinator has not read that event yet).
const KEEP_CHECKPOINTS: usize = 2;

impl Job<'_> {
    /// Trains on a blocking thread, forwarding progress and resume checkpoints.
    pub(super) async fn train(
        &self,
        mut model: NluModel,
        data: Arc<TrainingData>,
        total_epochs: u32,
        start_epoch: u64,
    ) -> Result<NluModel, JobError> {
        let settings = &self.shared.settings;
        let vocab = Bytes::from(model.featurizer.vocab().to_json());
        let (tx, mut rx) = mpsc::channel(8);
        let mut observer = JobObserver::new(
            self.stop.token().clone(),
            tx,
            total_epochs,
            start_epoch,
            settings.resume_every_epochs,
            settings.resume_every_secs,
        );
        observer.slow_step = fault::slow_step();
        observer.counters = Some(TrainCounters {
            steps: self.shared.metrics.train_steps.clone(),
            examples: self.shared.metrics.train_examples.clone(),
            per_epoch: data.len(),
            counted: None,
        });
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
        let written = Mutex::new(Vec::new());
        // Resume checkpoints go up beside the training loop, one at a time, and never hold it
        // up: one that arrives meanwhile replaces the one waiting, and one whose upload failed
        // waits for S3 to answer again (unless a newer one came).
        let mut waiting: Option<Pending> = None;
        let mut uploading: Option<Pin<Box<dyn Future<Output = Option<Pending>> + Send + '_>>> =
            None;
        let mut storage = self.shared.health.subscribe();
        // Progress events likewise go out one at a time beside the loop (a broker that is away
        // makes a publish wait), the newest waiting in `unsent`.
        let mut unsent: Option<Progress> = None;
        let mut publishing: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        loop {
            if uploading.is_none()
                && !self.shared.health.is_down()
                && let Some(next) = waiting.take()
            {
                uploading = Some(Box::pin(self.upload_resume(&written, next, &vocab)));
            }
            if publishing.is_none()
                && let Some(p) = unsent.take()
            {
                publishing = Some(Box::pin(self.progress(p)));
            }
            tokio::select! {
                // Ends when the training thread drops the observer's sender.
                msg = rx.recv() => match msg {
                    Some(TrainMsg::Progress(p)) => {
                        self.status.set_examples_per_sec(p.examples_per_sec);
                        unsent = Some(p);
                    }
                    Some(TrainMsg::Checkpoint { epochs_done, step, bytes }) => {
                        waiting = Some(Pending { epochs_done, step, bytes: Bytes::from(bytes) });
                    }
                    None => break,
                },
                failed = async { uploading.as_mut().expect("the branch's condition").await },
                    if uploading.is_some() =>
                {
                    uploading = None;
                    if let Some(failed) = failed {
                        waiting.get_or_insert(failed);
                    }
                }
                () = async { publishing.as_mut().expect("the branch's condition").await },
                    if publishing.is_some() =>
                {
                    publishing = None;
                }
                Ok(()) = storage.changed() => {}
            }
        }
        drop(publishing);
        // The version is written next (or the latest epoch's checkpoint, on a hand-back): an
        // unfinished resume checkpoint is moot.
        drop(uploading);
        let (model, result, snapshot, pending) = handle
            .await
            .map_err(|e| JobError::Permanent(format!("the training thread failed: {e}")))?;
        match result {
            Ok(report) => {
                if let Some(p) = pending.or(unsent) {
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
            Err(EngineError::Cancelled) => {
                // Handing back: leave the latest epoch's checkpoint for the next attempt.
                // (The snapshot is newer than any checkpoint handed to the uploader.)
                let latest = snapshot
                    .map(|checkpoint| Pending {
                        epochs_done: checkpoint.state.epochs_done,
                        step: checkpoint.state.step,
                        bytes: Bytes::from(checkpoint.to_bytes()),
                    })
                    .or(waiting);
                if self.stop.reason() == Some(StopReason::HandBack)
                    && let Some(latest) = latest
                {
                    self.status.set_phase("checkpoint");
                    self.upload_resume(&written, latest, &vocab).await;
                }
                Err(JobError::Stopped)
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

    /// Uploads a resume checkpoint under the attempt's prefix, reports it (`checkpointed` with
    /// its resume point), then deletes this attempt's checkpoints older than the last
    /// [`KEEP_CHECKPOINTS`]. A failed upload is logged, named in the heartbeats, and given back.
    async fn upload_resume(
        &self,
        written: &Mutex<Vec<ResumePoint>>,
        checkpoint: Pending,
        vocab: &Bytes,
    ) -> Option<Pending> {
        let store = &*self.shared.store;
        let owner = (self.job.id, self.reporter.attempt_id());
        let Pending {
            epochs_done, step, ..
        } = checkpoint;
        let point = resume::write(
            store,
            &self.shared.retry.impatient(),
            owner,
            (epochs_done, step),
            checkpoint.bytes.clone(),
            vocab.clone(),
        )
        .await;
        let point = match point {
            Ok(point) => point,
            Err(err) => {
                let (_, age) = self.status.snapshot();
                warn!(
                    error = %err,
                    epochs_done,
                    last_checkpoint_age_secs = ?age,
                    "failed to write a resume checkpoint; training goes on"
                );
                self.status.set_trouble(Some(format!(
                    "the resume checkpoint after epoch {epochs_done} cannot be uploaded: {err}"
                )));
                return Some(checkpoint);
            }
        };
        self.status.checkpointed();
        self.status.set_trouble(None);
        info!(epochs_done, step, "resume checkpoint written");
        let event = EventKind::Checkpointed {
            epoch: epochs_done as f64,
            step,
            resume: Some(point.clone()),
        };
        if let Err(error) = self.reporter.send(event).await {
            // The coordinator keeps the previous point: keep its files too.
            warn!(%error, "failed to report a resume checkpoint");
            return None;
        }
        let keep = {
            let mut written = written.lock().unwrap_or_else(PoisonError::into_inner);
            written.push(point);
            if written.len() <= KEEP_CHECKPOINTS {
                return None;
            }
            written.remove(0);
            written.clone()
        };
        resume::prune(store, owner, &keep).await;
        None
    }
}

/// A resume checkpoint not uploaded yet.
struct Pending {
    epochs_done: u64,
    step: u64,
    bytes: Bytes,
}
