//! The coordinator service: one [`App`] shared by the HTTP API and the background tasks.
//!
//! Tasks, all stopped by the root cancellation token:
//! - `outbox`: writes each stored job's reservation, then publishes it with a confirm, retrying
//!   until the broker takes it; sends cancels to the lease holders; the only place jobs are
//!   published
//! - `consumer`: answers claims, records the lease holders' events, drops the rest; records
//!   dead-lettered jobs; marks silent jobs `stalled`
//! - `lifecycle`: lapsed leases, version commits, closing ended jobs, recovering lost jobs
//! - `scheduler`: `[[schedule]]` retraining
//! - the HTTP server (`crate::api`)
//!
//! ## Active and standby
//!
//! The events queue is consumed exclusively: while one coordinator consumes it, a second one
//! (a double deployment, a copy of the job store) is refused and stands by, retrying. Only the
//! active one publishes, grants leases, commits versions and sweeps; a standby serves the API
//! from its own store and takes over when the active one's consumer goes away.

mod consumer;
pub mod fault;
mod lifecycle;
pub(crate) mod metrics;
mod outbox;
mod promotion;
pub(crate) mod queues;
mod scheduler;
mod submit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use refit_io::Secret;
use refit_io::queue::Broker;
use refit_io::registry::Registry;
use refit_io::storage::{ObjectStore, S3Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use submit::{SubmitError, dataset_ref};

use crate::config::CoordinatorConfig;
use crate::store::Store;

/// Everything the API and the tasks share. Cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The settings.
    pub config: Arc<CoordinatorConfig>,
    /// The job store.
    pub store: Store,
    /// Datasets (and, through `registry`, models).
    pub objects: Arc<dyn ObjectStore>,
    /// Models, versions and aliases, in `objects`.
    pub registry: Registry,
    /// The broker connection (reconnects by itself).
    pub broker: Broker,
    /// Wakes the outbox publisher.
    pub outbox_wake: Arc<Notify>,
    /// Wakes the committer.
    pub commit_wake: Arc<Notify>,
    /// Whether this coordinator holds the events queue (see the module docs).
    pub active: Arc<AtomicBool>,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Queue depths, from the broker.
    pub queues: Arc<queues::QueueStats>,
    /// The API token.
    pub token: Arc<Secret>,
    /// The token `/metrics` requires, if one is configured.
    pub metrics_token: Option<Arc<Secret>>,
    /// Held while an alias moves (gate, alias, history), so that moves do not interleave.
    pub alias_moves: Arc<tokio::sync::Mutex<()>>,
}

impl App {
    /// Builds the app from a validated config: opens the job store, the object store and the
    /// broker connection (which keeps trying in the background if the broker is down).
    pub async fn new(config: CoordinatorConfig) -> anyhow::Result<Self> {
        let token = config.token()?;
        let metrics_token = config.metrics_token()?.map(Arc::new);
        let store = Store::open(&config.coordinator.database).with_context(|| {
            format!(
                "cannot open the job store {}",
                config.coordinator.database.display()
            )
        })?;
        let objects: Arc<dyn ObjectStore> =
            Arc::new(S3Store::new(config.s3.clone()).context("cannot set up the object store")?);
        let broker = Broker::new(&config.queue).context("cannot set up the broker connection")?;
        let queues = Arc::new(queues::QueueStats::new(&config));
        Ok(Self {
            config: Arc::new(config),
            store,
            registry: Registry::new(objects.clone()),
            objects,
            broker,
            outbox_wake: Arc::new(Notify::new()),
            commit_wake: Arc::new(Notify::new()),
            active: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(metrics::Metrics::new()),
            queues,
            token: Arc::new(token),
            metrics_token,
            alias_moves: Arc::default(),
        })
    }
}

impl App {
    /// Whether this coordinator is the active one (see the module docs).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
        self.metrics.active.set(i64::from(active));
    }
}

/// Runs the coordinator until `shutdown` is cancelled: the background tasks and the HTTP API on
/// `coordinator.listen`.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = config.coordinator.listen;
    let deadline = Duration::from_secs(config.coordinator.shutdown_deadline_secs);
    let app = App::new(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr().unwrap_or(listen);
    info!(%local, "coordinator listening");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(outbox::run(app.clone(), shutdown.clone()));
    tasks.spawn(consumer::run_events(app.clone(), shutdown.clone()));
    tasks.spawn(consumer::run_dead_letters(app.clone(), shutdown.clone()));
    tasks.spawn(consumer::run_stall_sweep(app.clone(), shutdown.clone()));
    tasks.spawn(lifecycle::run_lease_sweep(app.clone(), shutdown.clone()));
    tasks.spawn(lifecycle::run_committer(app.clone(), shutdown.clone()));
    tasks.spawn(lifecycle::run_janitor(app.clone(), shutdown.clone()));
    tasks.spawn(lifecycle::run_lost_sweep(app.clone(), shutdown.clone()));
    tasks.spawn(scheduler::run(app.clone(), shutdown.clone()));

    let router = crate::api::router(app.clone());
    let server_shutdown = shutdown.clone();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(async move { server_shutdown.cancelled().await });
    let result = server.await.context("the HTTP server failed");
    shutdown.cancel();
    // Let the tasks finish their current step (a publish, an event) within the deadline.
    if tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("background tasks did not stop within the deadline");
        tasks.abort_all();
    }
    app.broker.close().await;
    result
}
