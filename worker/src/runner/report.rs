//! Events of one job attempt: [`Reporter`] builds and publishes them, [`Heartbeat`] sends a
//! `heartbeat` every few seconds for the whole attempt with the current phase and the age of the
//! last resume checkpoint.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use refit_proto::{Event, EventKind, JobId, WorkerId};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, warn};

use refit_io::queue::{Publisher, QueueError};

/// Publishes one attempt's events.
#[derive(Clone)]
pub(crate) struct Reporter {
    publisher: Arc<Publisher>,
    job_id: JobId,
    attempt: u32,
    worker_id: WorkerId,
}

impl Reporter {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        job_id: JobId,
        attempt: u32,
        worker_id: WorkerId,
    ) -> Self {
        Self {
            publisher,
            job_id,
            attempt,
            worker_id,
        }
    }

    /// Publishes an event (confirmed); one try.
    pub(crate) async fn send(&self, kind: EventKind) -> Result<(), QueueError> {
        let event = Event {
            job_id: self.job_id,
            attempt: self.attempt,
            worker_id: self.worker_id.clone(),
            at: Utc::now(),
            kind,
        };
        self.publisher.publish_event(&event).await
    }

    /// Publishes an event whose loss costs only information (progress, heartbeat): failures are
    /// logged, not returned.
    pub(crate) async fn send_best_effort(&self, kind: EventKind) {
        let name = kind.name();
        if let Err(error) = self.send(kind).await {
            warn!(%error, event = name, "failed to publish an event");
        }
    }
}

/// What the heartbeat reports; updated by the job as it goes.
#[derive(Clone)]
pub(crate) struct JobStatus(Arc<Mutex<StatusInner>>);

struct StatusInner {
    phase: &'static str,
    last_checkpoint: Option<Instant>,
}

impl JobStatus {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(StatusInner {
            phase: "download",
            last_checkpoint: None,
        })))
    }

    pub(crate) fn set_phase(&self, phase: &'static str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).phase = phase;
    }

    pub(crate) fn checkpointed(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_checkpoint = Some(Instant::now());
    }

    /// The phase and the age of the last resume checkpoint, in seconds.
    pub(crate) fn snapshot(&self) -> (&'static str, Option<f64>) {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (
            inner.phase,
            inner.last_checkpoint.map(|t| t.elapsed().as_secs_f64()),
        )
    }
}

/// Sends heartbeats until dropped.
pub(crate) struct Heartbeat {
    _stop: DropGuard,
}

impl Heartbeat {
    pub(crate) fn start(reporter: Reporter, status: JobStatus, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await; // the first tick is immediate; `started` says as much
                loop {
                    tokio::select! {
                        biased;
                        _ = token.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    let (phase, checkpoint_age_secs) = status.snapshot();
                    debug!(phase, ?checkpoint_age_secs, "heartbeat");
                    reporter
                        .send_best_effort(EventKind::Heartbeat {
                            phase: phase.to_owned(),
                            checkpoint_age_secs,
                        })
                        .await;
                }
            }
            .in_current_span(),
        );
        Self {
            _stop: stop.drop_guard(),
        }
    }
}
