//! [`JobError`], what a failed job step means for its delivery, and [`Retry`], the in-process
//! retry of transient S3 and broker failures (exponential backoff with full jitter).

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
    /// The store or the broker stayed unreachable through the in-process retries:
    /// `failed{transient}`; the coordinator queues the job again (counting a failure).
    #[error("{0}")]
    Transient(String),
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
                JobError::Transient(message)
            } else {
                JobError::Permanent(message)
            }
        }
    }

    pub(crate) fn queue(context: impl std::fmt::Display) -> impl FnOnce(QueueError) -> Self {
        move |e| {
            // An event the broker refuses to route is no reason to drop the job: hand it back.
            JobError::Transient(format!("{context}: {e}"))
        }
    }

    pub(crate) fn registry(context: impl std::fmt::Display) -> impl FnOnce(RegistryError) -> Self {
        move |e| match e {
            RegistryError::Storage(e) => JobError::storage(context)(e),
            e @ (RegistryError::NotFound { .. }
            | RegistryError::Corrupt { .. }
            | RegistryError::Commit { .. }
            | RegistryError::Conflict { .. }
            | RegistryError::BadAlias { .. }) => JobError::Permanent(format!("{context}: {e}")),
        }
    }

    pub(crate) fn engine(context: impl std::fmt::Display) -> impl FnOnce(EngineError) -> Self {
        move |e| match e.kind() {
            // Another worker (with a working ONNX Runtime or GPU) may succeed.
            EngineErrorKind::Setup => JobError::Transient(format!("{context}: {e}")),
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

/// Exponential backoff with full jitter: try `attempts` times, sleeping a random time up to
/// `initial · 2^n` (capped at `max`) between tries. A shutdown ends the waiting early with the
/// last error.
#[derive(Clone, Debug)]
pub(crate) struct Retry {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub shutdown: CancellationToken,
}

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

    /// Runs `op` until it succeeds, fails permanently, or the tries are used up.
    pub(crate) async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        E: Transient + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if error.transient() && n < self.attempts => {
                    let delay = self.delay(n);
                    warn!(%error, attempt = n, retry_in = ?delay, "{what} failed; retrying");
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
            shutdown: CancellationToken::new(),
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
                Err(StorageError::Transient {
                    op: "get",
                    key: "k".into(),
                    detail: "down".into(),
                    source: None,
                })
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
}
