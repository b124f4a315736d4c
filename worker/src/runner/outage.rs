//! Riding out an object-store outage: [`StorageHealth`] says whether S3 answers, from every call
//! the worker makes through [`WatchedStore`] and from probes ([`watch_storage`]).
//!
//! While S3 is unreachable the worker takes no new job (the job loop pauses its consumer, and a
//! delivery that arrives anyway is handed back before it is claimed, see
//! [`StorageHealth::ready`]), running attempts keep training (a failing resume-checkpoint upload
//! never blocks the training thread; their heartbeats name the trouble), and steps that need
//! the store wait for it (`Retry`'s outage patience) instead of failing the job. When a probe
//! gets an answer again the consumer resumes.
//!
//! Only transient failures (connection refused or reset, timeouts, 5xx, throttling) mean
//! "unreachable": a missing object or a refused request is an answer.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use refit_io::storage::{Download, ObjectMeta, ObjectStore, StorageError, Upload};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The key a probe reads the metadata of (it need not exist: any answer means S3 is there).
const PROBE_KEY: &str = "refit-probe";

/// While S3 is up, how long after the last answer a probe is made (idle workers find an outage
/// before the next delivery; a delivery finds it out itself with [`StorageHealth::ready`]).
pub(crate) const PROBE_IDLE: Duration = Duration::from_secs(10);

/// The longest a readiness probe may take before S3 counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// S3 stopped answering: since when, and the first error.
#[derive(Clone, Debug)]
pub(crate) struct Outage {
    pub since: Instant,
    pub error: String,
}

/// Whether the object store answers.
pub(crate) struct StorageHealth {
    outage: watch::Sender<Option<Outage>>,
    last_answer: Mutex<Option<Instant>>,
}

impl StorageHealth {
    pub(crate) fn new() -> Self {
        Self {
            outage: watch::Sender::new(None),
            last_answer: Mutex::new(None),
        }
    }

    /// Tells an outage's start and end (`None`: S3 answers).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Outage>> {
        self.outage.subscribe()
    }

    pub(crate) fn is_down(&self) -> bool {
        self.outage.borrow().is_some()
    }

    /// "S3 unreachable for 42 s: <error>" during an outage.
    pub(crate) fn describe(&self) -> Option<String> {
        self.outage.borrow().as_ref().map(|o| {
            format!(
                "S3 unreachable for {:.0} s: {}",
                o.since.elapsed().as_secs_f64(),
                o.error
            )
        })
    }

    /// Records the outcome of a call to the store.
    pub(crate) fn observe<T>(&self, result: &Result<T, StorageError>) {
        match result {
            Err(error) if error.is_transient() => self.unreachable(error),
            Ok(_) | Err(_) => self.answered(),
        }
    }

    fn answered(&self) {
        *self
            .last_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.outage.send_if_modified(|outage| match outage.take() {
            Some(ended) => {
                info!(
                    down_secs = ended.since.elapsed().as_secs(),
                    "S3 answers again; taking jobs again"
                );
                true
            }
            None => false,
        });
    }

    fn unreachable(&self, error: &StorageError) {
        self.outage.send_if_modified(|outage| {
            if outage.is_some() {
                return false;
            }
            warn!(%error, "S3 is unreachable; taking no new job until it answers again");
            *outage = Some(Outage {
                since: Instant::now(),
                error: error.to_string(),
            });
            true
        });
    }

    fn since_last_answer(&self) -> Option<Duration> {
        self.last_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    /// Asks the store for a [`PROBE_KEY`]'s metadata and records the outcome; a probe that takes
    /// longer than [`PROBE_TIMEOUT`] counts as unreachable.
    pub(crate) async fn probe(&self, store: &dyn ObjectStore) -> bool {
        let result = match tokio::time::timeout(PROBE_TIMEOUT, store.head(PROBE_KEY)).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Transient {
                op: "probe",
                key: PROBE_KEY.to_owned(),
                detail: format!("no answer within {PROBE_TIMEOUT:?}"),
                source: None,
            }),
        };
        self.observe(&result);
        !self.is_down()
    }

    /// Whether a new job may be claimed now: S3 is not known to be down, and it answered within
    /// [`PROBE_IDLE`] or answers a probe now.
    pub(crate) async fn ready(&self, store: &dyn ObjectStore) -> bool {
        if self.is_down() {
            return false;
        }
        match self.since_last_answer() {
            Some(age) if age < PROBE_IDLE => true,
            _ => self.probe(store).await,
        }
    }
}

impl std::fmt::Debug for StorageHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageHealth")
            .field("down", &self.is_down())
            .finish()
    }
}

/// Probes the store until `stop`: during an outage with a backoff from 1 s up to `max_delay`,
/// until it answers; otherwise when it has not answered for [`PROBE_IDLE`].
pub(crate) async fn watch_storage(
    health: Arc<StorageHealth>,
    store: Arc<dyn ObjectStore>,
    max_delay: Duration,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let wait = if health.is_down() { delay } else { PROBE_IDLE };
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if health.is_down() {
            if health.probe(&*store).await {
                delay = Duration::from_secs(1);
            } else {
                delay = (delay * 2).min(max_delay.max(Duration::from_secs(1)));
            }
        } else if health
            .since_last_answer()
            .is_none_or(|age| age >= PROBE_IDLE)
        {
            health.probe(&*store).await;
        }
    }
}

/// An [`ObjectStore`] that reports every call's outcome to a [`StorageHealth`].
#[derive(Debug)]
pub(crate) struct WatchedStore {
    inner: Arc<dyn ObjectStore>,
    health: Arc<StorageHealth>,
}

impl WatchedStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, health: Arc<StorageHealth>) -> Self {
        Self { inner, health }
    }

    fn seen<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        self.health.observe(&result);
        result
    }
}

#[async_trait]
impl ObjectStore for WatchedStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.seen(self.inner.put(key, data).await)
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<Upload, StorageError> {
        self.seen(self.inner.put_file(key, path).await)
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StorageError> {
        self.seen(self.inner.put_if_absent(key, data).await)
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        self.seen(self.inner.get_at_most(key, limit).await)
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Download, StorageError> {
        self.seen(self.inner.get_to_file(key, path, expected_sha256).await)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.seen(self.inner.head(key).await)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.seen(self.inner.list(prefix).await)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.seen(self.inner.delete(key).await)
    }
}

#[cfg(test)]
mod tests {
    use refit_io::storage::MemoryStore;

    use super::*;

    fn transient() -> StorageError {
        StorageError::Transient {
            op: "get",
            key: "k".into(),
            detail: "connection refused".into(),
            source: None,
        }
    }

    #[tokio::test]
    async fn transient_failures_start_an_outage_and_any_answer_ends_it() {
        let health = Arc::new(StorageHealth::new());
        let mut changes = health.subscribe();
        assert!(!health.is_down());
        health.observe::<()>(&Err(StorageError::NotFound { key: "k".into() }));
        assert!(!health.is_down(), "a missing object is an answer");
        health.observe::<()>(&Err(transient()));
        assert!(health.is_down());
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        let described = health.describe().unwrap();
        assert!(described.contains("connection refused"), "{described}");
        // A second failure changes nothing; the outage keeps its start.
        health.observe::<()>(&Err(transient()));
        assert!(!changes.has_changed().unwrap());
        assert!(!health.ready(&MemoryStore::new()).await);

        let store = WatchedStore::new(Arc::new(MemoryStore::new()), health.clone());
        assert!(store.head("x").await.unwrap().is_none());
        assert!(!health.is_down());
        assert!(changes.has_changed().unwrap());
        assert!(health.ready(&store).await);
    }

    #[tokio::test]
    async fn the_watch_probes_during_an_outage_until_the_store_answers() {
        let health = Arc::new(StorageHealth::new());
        health.observe::<()>(&Err(transient()));
        let mut changes = health.subscribe();
        changes.borrow_and_update();
        let stop = CancellationToken::new();
        let watch = tokio::spawn(watch_storage(
            health.clone(),
            Arc::new(MemoryStore::new()),
            Duration::from_millis(10),
            stop.clone(),
        ));
        // The first probe comes after a second; the store answers it.
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("the outage ends within the first probe")
            .unwrap();
        assert!(!health.is_down());
        stop.cancel();
        watch.await.unwrap();
    }
}
