//! [`JobError`], what a failed job step means for its delivery, and [`Retry`], the in-process
//! retry of transient S3 and broker failures (exponential backoff with jitter, then, through an
//! outage, a try every `max` for up to `patience`).

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use refit_engine::{EngineError, EngineErrorKind};
use refit_io::queue::QueueError;
use refit_io::registry::RegistryError;
use refit_io::storage::StorageError;

/// How an attempt ended other than with its version uploaded and reported. Each variant maps to
/// one final event (see the [module docs](super)).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// Retrying cannot help (bad data, corrupt or missing checkpoint, incompatible labels):
    /// `failed{permanent}`; the coordinator fails the job.
    #[error("{0}")]
    Permanent(String),
    /// Worth another try, elsewhere perhaps (ONNX Runtime could not be set up, memory ran out):
    /// `failed{transient}`; the coordinator queues the job again, counting a failure, and
    /// marks it dead at `max_failures`.
    #[error("{0}")]
    Transient(String),
    /// The store or the broker stayed unreachable through the retries and the outage patience:
    /// `released`; the coordinator queues the job again without counting a failure (an outage
    /// is not the job's fault).
    #[error("{0}")]
    Outage(String),
    /// The attempt was stopped (cancelled, its lease lost, or the worker shutting down); its
    /// [`StopReason`](super::attempt::StopReason) says what to report.
    #[error("stopped")]
    Stopped,
}

impl JobError {
    pub(crate) fn storage(context: impl std::fmt::Display) -> impl FnOnce(StorageError) -> Self {
        move |e| {
            let message = format!("{context}: {e}");
            if e.is_transient() {
                JobError::Outage(message)
            } else {
                JobError::Permanent(message)
            }
        }
    }

    pub(crate) fn queue(context: impl std::fmt::Display) -> impl FnOnce(QueueError) -> Self {
        move |e| {
            // An event the broker refuses to route is no reason to drop the job: hand it back.
            JobError::Outage(format!("{context}: {e}"))
        }
    }

    pub(crate) fn registry(context: impl std::fmt::Display) -> impl FnOnce(RegistryError) -> Self {
        move |e| match e {
            RegistryError::Storage(e) => JobError::storage(context)(e),
            e @ (RegistryError::NotFound { .. }
            | RegistryError::Corrupt { .. }
            | RegistryError::Commit { .. }
            | RegistryError::Conflict { .. }
            | RegistryError::BadAlias { .. }
            | RegistryError::BadHistory { .. }) => JobError::Permanent(format!("{context}: {e}")),
        }
    }

    pub(crate) fn engine(context: impl std::fmt::Display) -> impl FnOnce(EngineError) -> Self {
        move |e| match e.kind() {
            // Another worker (with a working ONNX Runtime or GPU) may succeed.
            EngineErrorKind::Setup => JobError::Transient(format!("{context}: {e}")),
            // Memory may be free elsewhere, or here later: queued again, counted, so a job that
            // needs more than any worker has ends dead at `max_failures`.
            EngineErrorKind::Resource => JobError::Transient(format!(
                "resource exhausted (retried elsewhere up to max_failures): {context}: {e}"
            )),
            EngineErrorKind::Invalid | EngineErrorKind::Runtime => {
                JobError::Permanent(format!("{context}: {e}"))
            }
        }
    }
}

/// Whether an error is worth another try.
pub(crate) trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for StorageError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for QueueError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for RegistryError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

/// Exponential backoff with jitter: try `attempts` times, sleeping between a half and the whole
/// of `initial · 2^n` (capped at `max`) between tries; then, while the error stays transient
/// (an outage), go on trying every `max` or so until `patience` has passed since the first
/// failure. A shutdown ends the waiting early with the last error.
#[derive(Clone, Debug)]
pub(crate) struct Retry {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// How long an outage is waited out after the tries (`worker.outage_wait_secs`).
    pub patience: Duration,
    pub shutdown: CancellationToken,
}

/// During the outage patience, one warning per this many tries.
const QUIET_TRIES: u32 = 6;

impl Retry {
    /// The delay before try `n + 1` (n from 1).
    fn delay(&self, n: u32) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        let half = cap / 2;
        // Half fixed, half random: never hammer, never line up with other workers.
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// The same tries without the outage patience (for work a later try supersedes, such as a
    /// resume checkpoint).
    pub(crate) fn impatient(&self) -> Self {
        Self {
            patience: Duration::ZERO,
            ..self.clone()
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or the tries and the patience are used
    /// up.
    pub(crate) async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        E: Transient + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut n = 0;
        let mut first_failure = None;
        loop {
            n += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if error.transient() && self.again(n, &mut first_failure) => {
                    let delay = self.delay(n);
                    if n < self.attempts {
                        warn!(%error, attempt = n, retry_in = ?delay, "{what} failed; retrying");
                    } else if (n - self.attempts).is_multiple_of(QUIET_TRIES) {
                        let waited =
                            first_failure.map_or(0, |t: std::time::Instant| t.elapsed().as_secs());
                        warn!(
                            %error,
                            attempt = n,
                            waited_secs = waited,
                            patience_secs = self.patience.as_secs(),
                            "{what} still failing; waiting for the service to come back"
                        );
                    }
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => return Err(error),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether to try again after the `n`th try failed transiently.
    fn again(&self, n: u32, first_failure: &mut Option<std::time::Instant>) -> bool {
        let since = *first_failure.get_or_insert_with(std::time::Instant::now);
        n < self.attempts || since.elapsed() < self.patience
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn retry(attempts: u32) -> Retry {
        Retry {
            attempts,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            patience: Duration::ZERO,
            shutdown: CancellationToken::new(),
        }
    }

    /// The store is away.
    fn down() -> StorageError {
        StorageError::Transient {
            op: "get",
            key: "k".into(),
            detail: "down".into(),
            source: None,
        }
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let r = retry(10);
        for n in 1..12 {
            let d = r.delay(n);
            let cap = Duration::from_millis((100u64 << (n - 1).min(20)).min(1000));
            assert!(d >= cap / 2 && d <= cap, "try {n}: {d:?} vs {cap:?}");
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_permanent_ones_not() {
        let calls = AtomicU32::new(0);
        let fast = Retry {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            ..retry(3)
        };
        let result: Result<(), StorageError> = fast
            .run("get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(down())
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), StorageError> = retry(3)
            .run("get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StorageError::NotFound { key: "k".into() })
            })
            .await;
        assert!(result.unwrap_err().is_not_found());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_outage_is_waited_out_for_the_patience_then_the_error_returns() {
        let calls = AtomicU32::new(0);
        let patient = Retry {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            patience: Duration::from_millis(60),
            ..retry(2)
        };
        let started = std::time::Instant::now();
        let result: Result<(), StorageError> = patient
            .run("get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(down())
            })
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(
            calls.load(Ordering::SeqCst) > 2,
            "kept trying past the tries"
        );
        // Without patience: the tries only.
        calls.store(0, Ordering::SeqCst);
        let _ = patient
            .impatient()
            .run("get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(down())
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
