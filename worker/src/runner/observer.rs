//! [`JobObserver`]: the training loop's callbacks, on the blocking training thread. It forwards
//! progress (throttled) and resume checkpoints (every K epochs or T seconds) to the job's async
//! task through a channel, stops the run within one step once the attempt is stopped (cancelled,
//! its lease lost, or the worker shutting down), and keeps the latest epoch-boundary checkpoint
//! for a shutdown.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use refit_engine::checkpoint::Checkpoint;
use refit_engine::trainer::{NluModel, Progress, TrainObserver};

/// The least time between two `progress` events.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the training thread tells the job's task.
pub(crate) enum TrainMsg {
    Progress(Progress),
    /// A serialised epoch-boundary checkpoint to upload as the resume checkpoint.
    Checkpoint {
        epochs_done: u64,
        step: u64,
        bytes: Vec<u8>,
    },
}

pub(crate) struct JobObserver {
    /// Cancelled when the attempt stops.
    pub stop: CancellationToken,
    /// A test-only delay before each step (`REFIT_FAULT=slow-step=<ms>`).
    pub slow_step: Option<Duration>,
    pub tx: mpsc::Sender<TrainMsg>,
    pub total_epochs: u32,
    pub every_epochs: u32,
    pub every: Option<Duration>,
    last_progress: Option<Instant>,
    /// The latest progress not sent (throttled), sent at the end.
    pub pending: Option<Progress>,
    last_checkpoint_epoch: u64,
    last_checkpoint_at: Instant,
    /// The latest epoch-boundary checkpoint not handed to the uploader.
    pub snapshot: Option<Checkpoint>,
    /// The worker's step and example counters (`/metrics`), if counted.
    pub counters: Option<TrainCounters>,
}

/// Counts a run's steps and examples into the worker's metrics as they happen.
pub(crate) struct TrainCounters {
    pub steps: prometheus::IntCounter,
    pub examples: prometheus::IntCounter,
    /// Examples per epoch.
    pub per_epoch: usize,
    /// The step and the examples (epochs × `per_epoch`, rounded down) counted so far; `None`
    /// until the first progress (a resumed run starts past zero).
    pub counted: Option<(u64, u64)>,
}

impl TrainCounters {
    fn count(&mut self, progress: &Progress) {
        let examples = (progress.epoch * self.per_epoch as f64).max(0.0) as u64;
        if let Some((step, done)) = self.counted {
            self.steps.inc_by(progress.step.saturating_sub(step));
            self.examples.inc_by(examples.saturating_sub(done));
        }
        self.counted = Some((progress.step, examples));
    }
}

impl JobObserver {
    pub(crate) fn new(
        stop: CancellationToken,
        tx: mpsc::Sender<TrainMsg>,
        total_epochs: u32,
        start_epoch: u64,
        every_epochs: u32,
        every_secs: u64,
    ) -> Self {
        Self {
            stop,
            slow_step: None,
            tx,
            total_epochs,
            every_epochs,
            every: (every_secs > 0).then(|| Duration::from_secs(every_secs)),
            last_progress: None,
            pending: None,
            last_checkpoint_epoch: start_epoch,
            last_checkpoint_at: Instant::now(),
            snapshot: None,
            counters: None,
        }
    }

    fn checkpoint_due(&self, epochs_done: u64) -> bool {
        if epochs_done >= u64::from(self.total_epochs) {
            // The version itself is written next.
            return false;
        }
        let by_epochs = self.every_epochs > 0
            && epochs_done - self.last_checkpoint_epoch >= u64::from(self.every_epochs);
        let by_time = self
            .every
            .is_some_and(|every| self.last_checkpoint_at.elapsed() >= every);
        by_epochs || by_time
    }
}

impl TrainObserver for JobObserver {
    fn progress(&mut self, progress: &Progress) {
        if let Some(counters) = &mut self.counters {
            counters.count(progress);
        }
        let due = self
            .last_progress
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if due {
            // A full channel means the publisher lags: drop this one rather than slow training.
            let _ = self.tx.try_send(TrainMsg::Progress(progress.clone()));
            self.last_progress = Some(Instant::now());
            self.pending = None;
        } else {
            self.pending = Some(progress.clone());
        }
    }

    fn should_stop(&mut self) -> bool {
        if let Some(delay) = self.slow_step {
            std::thread::sleep(delay);
        }
        self.stop.is_cancelled()
    }

    fn epoch_end(&mut self, model: &NluModel) -> ControlFlow<()> {
        let epochs_done = model.checkpoint.state.epochs_done;
        if self.checkpoint_due(epochs_done) {
            let msg = TrainMsg::Checkpoint {
                epochs_done,
                step: model.checkpoint.state.step,
                bytes: model.checkpoint.to_bytes(),
            };
            // Waits while the uploader is busy (at most a few checkpoints queue up); fails only
            // when the job's task is gone, and then nobody needs the checkpoint.
            let _ = self.tx.blocking_send(msg);
            self.last_checkpoint_epoch = epochs_done;
            self.last_checkpoint_at = Instant::now();
            self.snapshot = None;
        } else if epochs_done > self.last_checkpoint_epoch
            && epochs_done < u64::from(self.total_epochs)
        {
            // Cheap next to an epoch; lets a shutdown checkpoint lose at most one epoch.
            self.snapshot = Some(model.checkpoint.clone());
        }
        ControlFlow::Continue(())
    }
}
