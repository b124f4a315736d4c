//! Events of one attempt: [`Reporter`] builds and publishes them (with the attempt's id, its
//! fencing token once granted, and the worker's inbox as `reply_to`), [`Heartbeat`] sends a
//! `heartbeat` every few seconds with the current phase, the age of the last resume checkpoint
//! and what troubles the attempt (a failing checkpoint upload, S3 unreachable).
//!
//! A heartbeat that cannot reach the broker does not stop the attempt: while the broker is away
//! nobody can take the job over (the coordinator gives every lease one more lease time when it
//! gets the broker back), and once the broker is back the coordinator answers the next
//! heartbeat, renewing the lease or revoking it if another attempt took the job meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use refit_io::queue::{Publisher, QueueError};
use refit_proto::{AttemptId, Event, EventKind, JobId, WorkerId};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, warn};

use super::outage::StorageHealth;

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
    began: Instant,
    last_checkpoint: Option<Instant>,
    trouble: Option<String>,
    examples_per_sec: Option<f64>,
}

impl JobStatus {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(StatusInner {
            phase: "download",
            began: Instant::now(),
            last_checkpoint: None,
            trouble: None,
            examples_per_sec: None,
        })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seconds since the attempt began.
    pub(crate) fn age_secs(&self) -> f64 {
        self.inner().began.elapsed().as_secs_f64()
    }

    /// The latest training throughput.
    pub(crate) fn set_examples_per_sec(&self, rate: f64) {
        self.inner().examples_per_sec = Some(rate);
    }

    /// The latest training throughput, once training has reported one.
    pub(crate) fn examples_per_sec(&self) -> Option<f64> {
        self.inner().examples_per_sec
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

    /// What keeps the attempt from saving its work (`None`: nothing any more).
    pub(crate) fn set_trouble(&self, trouble: Option<String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .trouble = trouble;
    }

    /// The phase and the age of the last resume checkpoint, in seconds.
    pub(crate) fn snapshot(&self) -> (&'static str, Option<f64>) {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (
            inner.phase,
            inner.last_checkpoint.map(|t| t.elapsed().as_secs_f64()),
        )
    }

    /// The attempt's own trouble and the store's, for a heartbeat.
    pub(crate) fn trouble(&self, health: &StorageHealth) -> Option<String> {
        let own = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .trouble
            .clone();
        match (own, health.describe()) {
            (Some(own), Some(store)) => Some(format!("{own}; {store}")),
            (own, store) => own.or(store),
        }
    }
}

/// Sends heartbeats until dropped.
pub(crate) struct Heartbeat {
    _stop: DropGuard,
}

impl Heartbeat {
    /// Every `every`, a `heartbeat` (which renews the lease); when none has reached the broker
    /// for `lease`, a warning (once per stretch).
    pub(crate) fn start(
        reporter: Reporter,
        status: JobStatus,
        health: Arc<StorageHealth>,
        every: Duration,
        lease: Duration,
    ) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await; // the first tick is immediate; `started` says as much
                let mut last_ok = Instant::now();
                let mut warned = false;
                loop {
                    tokio::select! {
                        biased;
                        _ = token.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    let (phase, checkpoint_age_secs) = status.snapshot();
                    let trouble = status.trouble(&health);
                    debug!(phase, ?checkpoint_age_secs, ?trouble, "heartbeat");
                    let sent = reporter
                        .send(EventKind::Heartbeat {
                            phase: phase.to_owned(),
                            checkpoint_age_secs,
                            trouble,
                        })
                        .await;
                    match sent {
                        Ok(()) => {
                            if warned {
                                info!("heartbeats reach the broker again");
                            }
                            last_ok = Instant::now();
                            warned = false;
                        }
                        Err(error) => {
                            debug!(%error, "failed to publish a heartbeat");
                            if last_ok.elapsed() >= lease && !warned {
                                warn!(
                                    %error,
                                    lease_secs = lease.as_secs(),
                                    "no heartbeat has reached the broker for a lease; going on \
                                     (the coordinator answers the next one that does)"
                                );
                                warned = true;
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
