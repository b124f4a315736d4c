//! Events of one attempt: [`Reporter`] builds and publishes them (with the attempt's id, its
//! fencing token once granted, and the worker's inbox as `reply_to`), [`Heartbeat`] sends a
//! `heartbeat` every few seconds with the current phase and the age of the last resume
//! checkpoint, and stops the attempt when none has reached the broker for a whole lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use refit_io::queue::{Publisher, QueueError};
use refit_proto::{AttemptId, Event, EventKind, JobId, WorkerId};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, warn};

use super::attempt::{Stop, StopReason};

/// Publishes one attempt's events.
#[derive(Clone)]
pub(crate) struct Reporter {
    publisher: Arc<Publisher>,
    job_id: JobId,
    attempt: u32,
    worker_id: WorkerId,
    attempt_id: AttemptId,
    /// The lease's fencing token; 0 until granted.
    fence: Arc<AtomicU64>,
    /// The worker's inbox (its name changes with the connection).
    inbox: watch::Receiver<String>,
}

impl Reporter {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        job_id: JobId,
        attempt: u32,
        worker_id: WorkerId,
        attempt_id: AttemptId,
        inbox: watch::Receiver<String>,
    ) -> Self {
        Self {
            publisher,
            job_id,
            attempt,
            worker_id,
            attempt_id,
            fence: Arc::new(AtomicU64::new(0)),
            inbox,
        }
    }

    /// Every later event carries `fence`.
    pub(crate) fn set_fence(&self, fence: u64) {
        self.fence.store(fence, Ordering::Relaxed);
    }

    pub(crate) fn attempt_id(&self) -> AttemptId {
        self.attempt_id
    }

    /// Publishes an event (confirmed), with the inbox as `reply_to`; one try.
    pub(crate) async fn send(&self, kind: EventKind) -> Result<(), QueueError> {
        let fence = self.fence.load(Ordering::Relaxed);
        let event = Event {
            job_id: self.job_id,
            attempt: self.attempt,
            worker_id: self.worker_id.clone(),
            at: Utc::now(),
            kind,
            attempt_id: Some(self.attempt_id),
            fence: (fence > 0).then_some(fence),
        };
        let inbox = self.inbox.borrow().clone();
        self.publisher
            .publish_event_replying(&event, Some(&inbox))
            .await
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
    /// Every `every`, a `heartbeat` (which renews the lease). When none has reached the broker
    /// for `lease` (the coordinator has then let the lease go, or will before it hears from us),
    /// the attempt stops: another attempt may hold the job by now.
    pub(crate) fn start(
        reporter: Reporter,
        status: JobStatus,
        every: Duration,
        lease: Duration,
        attempt: Stop,
    ) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await; // the first tick is immediate; `started` says as much
                let mut last_ok = Instant::now();
                loop {
                    tokio::select! {
                        biased;
                        _ = token.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    let (phase, checkpoint_age_secs) = status.snapshot();
                    debug!(phase, ?checkpoint_age_secs, "heartbeat");
                    let sent = reporter
                        .send(EventKind::Heartbeat {
                            phase: phase.to_owned(),
                            checkpoint_age_secs,
                        })
                        .await;
                    match sent {
                        Ok(()) => last_ok = Instant::now(),
                        Err(error) => {
                            warn!(%error, "failed to publish a heartbeat");
                            if last_ok.elapsed() >= lease {
                                attempt.stop(StopReason::Revoked(format!(
                                    "no heartbeat reached the broker for {:.0} s (the lease \
                                     lasts {lease:?})",
                                    last_ok.elapsed().as_secs_f64()
                                )));
                            }
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Self {
            _stop: stop.drop_guard(),
        }
    }
}
