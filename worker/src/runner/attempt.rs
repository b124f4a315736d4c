//! The attempts this worker runs. Each has an [`AttemptId`], a slot in [`Attempts`] through which
//! the coordinator's [`Control`] messages for it arrive (read from the worker's inbox), and a
//! [`Stop`] that ends it at its next step and says why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use refit_proto::{AttemptId, Control, JobId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why an attempt stopped before its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The job was cancelled: report `cancelled`.
    Cancelled,
    /// The attempt lost the job's lease: report nothing (another attempt owns the job now).
    Revoked(String),
    /// The worker is shutting down: checkpoint and hand the job back (`released`).
    HandBack,
}

/// Ends an attempt at its next step; the first reason given is the one that counts.
#[derive(Clone)]
pub(crate) struct Stop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stop {
    pub(crate) fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Stops the attempt for `reason`, unless it was already stopped for another.
    pub(crate) fn stop(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if current.is_none() {
            *current = Some(reason);
            self.token.cancel();
        }
    }

    /// Cancelled once the attempt is stopped.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it stopped, once it has.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Slot {
    job_id: JobId,
    tx: mpsc::UnboundedSender<Control>,
}

/// The attempts running here, by id, for routing the coordinator's messages.
#[derive(Default)]
pub(crate) struct Attempts(Mutex<HashMap<AttemptId, Slot>>);

impl Attempts {
    /// Adds an attempt; its control messages arrive on the receiver until [`Self::unregister`].
    pub(crate) fn register(
        &self,
        job_id: JobId,
        attempt: AttemptId,
    ) -> mpsc::UnboundedReceiver<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.slots().insert(attempt, Slot { job_id, tx });
        rx
    }

    pub(crate) fn unregister(&self, attempt: AttemptId) {
        self.slots().remove(&attempt);
    }

    /// How many attempts run here.
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }

    /// Hands `control` to the attempt it names (a `cancel`: to every attempt of its job here).
    /// Returns whether any attempt took it.
    pub(crate) fn route(&self, control: Control) -> bool {
        let slots = self.slots();
        match &control {
            Control::Cancel { job_id } => {
                let mut taken = false;
                for slot in slots.values().filter(|s| s.job_id == *job_id) {
                    taken |= slot.tx.send(control.clone()).is_ok();
                }
                taken
            }
            Control::Granted { attempt_id, .. }
            | Control::Refused { attempt_id, .. }
            | Control::Revoked { attempt_id, .. } => slots
                .get(attempt_id)
                .is_some_and(|slot| slot.tx.send(control).is_ok()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptId, Slot>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_reason_counts() {
        let stop = Stop::new();
        assert!(!stop.is_stopped());
        stop.stop(StopReason::HandBack);
        stop.stop(StopReason::Cancelled);
        assert!(stop.is_stopped());
        assert_eq!(stop.reason(), Some(StopReason::HandBack));
    }

    #[test]
    fn controls_reach_the_attempt_they_name() {
        let attempts = Attempts::default();
        let job = JobId::new();
        let (a, b) = (AttemptId::new(), AttemptId::new());
        let mut rx_a = attempts.register(job, a);
        let mut rx_b = attempts.register(job, b);
        let revoked = Control::Revoked {
            job_id: job,
            attempt_id: b,
            reason: "test".into(),
        };
        assert!(attempts.route(revoked.clone()));
        assert_eq!(rx_b.try_recv().unwrap(), revoked);
        assert!(rx_a.try_recv().is_err());
        // A cancel reaches every attempt of the job.
        assert!(attempts.route(Control::Cancel { job_id: job }));
        assert!(rx_a.try_recv().is_ok() && rx_b.try_recv().is_ok());
        attempts.unregister(a);
        attempts.unregister(b);
        assert!(!attempts.route(Control::Cancel { job_id: job }));
        assert_eq!(attempts.len(), 0);
    }
}
