//! The bridge between an attempt and the training thread: training runs on a blocking thread
//! (`spawn_blocking`) with a [`JobObserver`]; its progress and epoch-boundary checkpoints come
//! back over a channel, and this side publishes `progress` events and uploads resume
//! checkpoints (reported in `checkpointed` events) while training goes on.

use std::sync::Arc;

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
use super::observer::{JobObserver, TrainMsg};
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
        let mut written: Vec<ResumePoint> = Vec::new();
        // Ends when the training thread drops the observer's sender.
        while let Some(msg) = rx.recv().await {
            match msg {
                TrainMsg::Progress(p) => self.progress(p).await,
                TrainMsg::Checkpoint {
                    epochs_done,
                    step,
                    bytes,
                } => {
                    self.upload_resume(&mut written, (epochs_done, step), bytes, &vocab)
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
            Err(EngineError::Cancelled) => {
                // Handing back: leave the latest epoch's checkpoint for the next attempt.
                if self.stop.reason() == Some(StopReason::HandBack)
                    && let Some(checkpoint) = snapshot
                {
                    self.status.set_phase("checkpoint");
                    let bytes = checkpoint.to_bytes();
                    let state = &checkpoint.state;
                    let at = (state.epochs_done, state.step);
                    self.upload_resume(&mut written, at, bytes, &vocab).await;
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
    /// [`KEEP_CHECKPOINTS`]. A failed upload is logged and training goes on.
    async fn upload_resume(
        &self,
        written: &mut Vec<ResumePoint>,
        (epochs_done, step): (u64, u64),
        checkpoint: Vec<u8>,
        vocab: &Bytes,
    ) {
        let store = &*self.shared.store;
        let owner = (self.job.id, self.reporter.attempt_id());
        let point = resume::write(
            store,
            &self.shared.retry,
            owner,
            (epochs_done, step),
            Bytes::from(checkpoint),
            vocab.clone(),
        )
        .await;
        match point {
            Ok(point) => {
                self.status.checkpointed();
                info!(epochs_done, step, "resume checkpoint written");
                let event = EventKind::Checkpointed {
                    epoch: epochs_done as f64,
                    step,
                    resume: Some(point.clone()),
                };
                if let Err(error) = self.reporter.send(event).await {
                    // The coordinator keeps the previous point: keep its files too.
                    warn!(%error, "failed to report a resume checkpoint");
                    return;
                }
                written.push(point);
                if written.len() > KEEP_CHECKPOINTS {
                    written.remove(0);
                    resume::prune(store, owner, written).await;
                }
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
