//! The bridge between an attempt and the training thread: training runs on a blocking thread
//! (`spawn_blocking`) with a [`JobObserver`]; its progress and epoch-boundary checkpoints come
//! back over a channel, and this side publishes `progress` events and uploads resume
//! checkpoints while training goes on.

use std::sync::Arc;

use bytes::Bytes;
use refit_engine::EngineError;
use refit_engine::trainer::{NluModel, Progress, TrainOptions};
use refit_proto::EventKind;
use refit_proto::data::TrainingData;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::job::Job;
use super::observer::{JobObserver, TrainMsg};
use super::resume::{self, ResumeMarker};
use super::retry::JobError;

impl Job<'_> {
    /// Trains on a blocking thread, forwarding progress and resume checkpoints.
    pub(super) async fn train(
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
