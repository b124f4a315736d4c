//! The worker service's job loop: take jobs from `<prefix>.jobs.<pool>.high`, then
//! `<prefix>.jobs.<pool>` (priorities), claim each job's lease from the
//! coordinator, train, upload the version's files, report. [`run`] is the entry point;
//! `refit-worker`'s `main` only parses arguments, loads the config and wires SIGINT/SIGTERM to
//! the token it passes.
//!
//! ## A job's life in the worker (DESIGN §2, §6 "Ownership")
//!
//! 1. **Decode.** Garbage or an unknown schema version: `reject` (→ `<prefix>.jobs.dead`, where
//!    the coordinator sees it).
//! 2. **Claim.** The attempt draws an id and sends `claim` with the worker's inbox (an exclusive
//!    queue only this connection reads) as `reply_to`, again every 10 s until the coordinator
//!    answers. `refused` (another attempt holds the job, it is done, cancelled or unknown): ack
//!    the delivery and drop it. `granted`: ack the delivery: from now on the **lease** keeps the
//!    job, not the delivery, so the broker's consumer timeout no longer limits a job's length
//!    and a lost connection does not stop the attempt. Every later event carries the attempt's
//!    id and the lease's fencing token.
//! 3. **Download** the dataset (and eval dataset), sha256-checked against the job; for a
//!    fine-tune the base version (through the registry, `refit_io::registry`: every file
//!    sha256-checked against its manifest).
//! 4. **Resume** from the resume point the grant carried (an earlier attempt's checkpoint, see
//!    `resume`); `started.resumed_from_epoch` says from which epoch.
//! 5. **Train** on a blocking thread (`spawn_blocking`). The observer sends `progress` at most
//!    once per second, stops within one step when the attempt is stopped, and every
//!    `resume_every_epochs` epochs or `resume_every_secs` seconds hands an epoch-boundary
//!    checkpoint to the job's task, which uploads it under the attempt's prefix and reports it
//!    (`checkpointed` with the resume point). Uploads run beside training and never hold it
//!    up; a failed one is logged, named in the heartbeats (`trouble`), and tried again when S3
//!    answers, unless a newer checkpoint came meanwhile.
//! 6. **Evaluate** on `eval_dataset` if the job has one, **export**, **upload** the version's
//!    files under `models/<m>/v<N>/<attempt>/` (the draft manifest last), and publish
//!    `succeeded` with them (confirmed). The coordinator commits them as the version if the
//!    attempt still holds the lease; an upload it does not commit never becomes a version.
//!
//! `heartbeat` events go out every `heartbeat_secs` for the whole attempt, with the phase
//! (`download`, `train`, `evaluate`, `upload`, `checkpoint`) and the resume checkpoint's age; they
//! renew the lease. An attempt stops when the coordinator revokes its lease (it lapsed while the
//! worker was cut off, or another attempt took the job over); heartbeats that cannot reach the
//! broker stop nothing (see `report`). Apart from jobs, the worker reports its presence
//! ([`refit_proto::WorkerStatus`], routing key `worker.<id>.online`) when it starts and every
//! `presence_secs`, and `worker.<id>.stopping` when a shutdown begins.
//!
//! ## How an attempt ends
//!
//! | what | event | the coordinator |
//! | --- | --- | --- |
//! | version uploaded | `succeeded` | commits it (if the attempt holds the lease) |
//! | bad data, unknown label, corrupt or missing base checkpoint, bad budget | `failed{permanent}` | fails the job |
//! | ONNX Runtime cannot be set up here, or runs out of memory | `failed{transient}` | queues the job again, counting a failure (dead at `max_failures`) |
//! | S3 or broker still failing after `retry_attempts` tries and `outage_wait_secs` more | `released` | queues the job again, counting nothing |
//! | `cancel` | `cancelled` | marks the job cancelled |
//! | SIGTERM / SIGINT | (`checkpointed`), `released` | queues the job again, counting nothing |
//! | lease revoked or lapsed | none | (has queued the job again already) |
//! | the worker dies | none | queues the job again when the lease lapses, counting a crash |
//!
//! The worker keeps running after any attempt's failure. Test-only fault hooks: `fault`.
//!
//! ## Outages (`outage`)
//!
//! Every S3 call goes through a store that reports whether S3 answered. While it does not (a
//! transient failure; probes every few seconds tell when it is back) the job loop pauses its
//! consumer and a delivery already taken is handed back before its claim, so no job is taken
//! that could only wait; running attempts train on, and their steps that need S3 wait for it
//! (`outage_wait_secs`) rather than failing. A broker that goes away stops deliveries by
//! itself; the consumer subscribes again when it is back.
//!
//! ## Shutdown
//!
//! On the root token: stop taking deliveries (`basic.cancel`; prefetched ones go back), let
//! running attempts stop at their next training step, upload the latest epoch-boundary
//! checkpoint as a resume checkpoint (at most one epoch of work is lost) and publish `released`,
//! then close the connection; attempts still running after `shutdown_deadline_secs` are dropped
//! (their leases lapse).
//!
//! ## Layout
//! - `delivery`: one delivery: decode, claim, settle, run, report the end
//! - `attempt`: the attempts running here, the routing of their control messages, `Stop`
//! - `job`: one attempt's steps (download, start or resume, evaluate, upload)
//! - `train`: the training thread's bridge (progress events, resume-checkpoint uploads)
//! - `observer`: the engine-side observer of a training run; `report`: events and heartbeats
//! - `resume`: resume checkpoints under `jobs/<id>/attempts/<attempt>/resume/`; `retry`:
//!   `JobError` kinds and the in-process retry of transient failures; `outage`: whether S3
//!   answers, and the probes that tell; `fault`: test-only faults

mod attempt;
mod delivery;
mod evaluate;
mod fault;
mod job;
mod metrics;
mod observer;
mod outage;
mod report;
mod resume;
mod retry;
mod serve;
mod train;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use refit_engine::runtime::{self, RuntimeOptions};
use refit_io::queue::{Broker, Consumer, Publisher, QueueError};
use refit_io::registry::Registry;
use refit_io::storage::{ObjectStore, S3Store};
use refit_proto::{Control, WorkerId, WorkerState, WorkerStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{WorkerConfig, WorkerSettings};
use attempt::Attempts;
pub use metrics::WorkerMetrics;
use outage::{StorageHealth, WatchedStore};
use retry::Retry;

/// How long one presence message may take to be confirmed.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before checking again that the coordinator declared the job queue.
const TOPOLOGY_RETRY: Duration = Duration::from_secs(5);

/// What every job task shares.
pub(crate) struct Shared {
    /// Datasets and resume checkpoints (calls reported to `health`).
    store: Arc<dyn ObjectStore>,
    /// Whether S3 answers.
    health: Arc<StorageHealth>,
    /// Versions (the same store).
    registry: Registry,
    publisher: Arc<Publisher>,
    worker_id: WorkerId,
    runtime: RuntimeOptions,
    settings: WorkerSettings,
    retry: Retry,
    shutdown: CancellationToken,
    /// This worker's inbox: its current queue name (it changes with the connection).
    inbox: watch::Receiver<String>,
    attempts: Attempts,
    /// Asks the job loop for room before a granted delivery is acked (see [`Shared::before_ack`]).
    ack_gate: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// What `/metrics` shows.
    metrics: Arc<WorkerMetrics>,
}

impl Shared {
    /// Called by an attempt whose lease was granted, before it acks its delivery: the job loop
    /// pauses the job consumer if every slot is taken, so that the ack does not let the broker
    /// push the next job to this worker (the prefetch count only covers unacked deliveries),
    /// where it would wait while other workers are idle. Returns at once when the job loop has
    /// stopped.
    async fn before_ack(&self) {
        let (done, wait) = oneshot::channel();
        if self.ack_gate.send(done).is_ok() {
            let _ = wait.await;
        }
    }

    /// Publishes this worker's presence (the attempts running now), waiting up to
    /// [`PRESENCE_TIMEOUT`] for the confirm.
    async fn publish_presence(&self, state: WorkerState, pool: &str) -> anyhow::Result<()> {
        let status = WorkerStatus {
            worker_id: self.worker_id.clone(),
            at: chrono::Utc::now(),
            state,
            running: u32::try_from(self.attempts.len()).unwrap_or(u32::MAX),
            pool: pool.to_owned(),
        };
        // Stale after a few intervals: the next one supersedes it.
        let ttl = Duration::from_secs(self.settings.presence_secs.saturating_mul(4));
        tokio::time::timeout(
            PRESENCE_TIMEOUT,
            self.publisher.publish_worker_status(&status, ttl),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no confirm within {PRESENCE_TIMEOUT:?}"))??;
        Ok(())
    }
}

/// Runs the worker until `shutdown` is cancelled (then stops gracefully and returns `Ok`), or a
/// startup or permanent broker error.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let worker_id = config.worker_id();
    let runtime_options = config.runtime_options();
    tokio::task::spawn_blocking(runtime::init)
        .await
        .context("loading ONNX Runtime panicked")??;

    let s3 = S3Store::new(config.s3.clone()).context("invalid S3 settings")?;
    if let Err(err) = s3.check_bucket().await {
        // Not fatal: jobs retry and requeue while the store is away.
        warn!(error = %err, bucket = s3.bucket(), "the S3 bucket is not reachable yet");
    }
    let health = Arc::new(StorageHealth::new());
    let raw_store: Arc<dyn ObjectStore> = Arc::new(s3);
    let store: Arc<dyn ObjectStore> = Arc::new(WatchedStore::new(raw_store, health.clone()));

    let broker = Broker::connect(&config.queue).await?;
    declare_or_wait(&broker, &shutdown).await?;
    let publisher = Arc::new(Publisher::new(&broker).await?);
    // The inbox exists before any claim names it.
    let (inbox_consumer, inbox) = Consumer::inbox(&broker).await?;

    let concurrency = usize::from(config.worker.concurrency.max(1));
    let pool = broker.topology().pool().to_owned();
    let device = match runtime_options.device {
        runtime::Device::Cpu => "cpu".to_owned(),
        runtime::Device::Cuda(n) => format!("cuda:{n}"),
    };
    let metrics = Arc::new(WorkerMetrics::new(
        worker_id.as_str(),
        &pool,
        &device,
        concurrency,
    ));
    let serve_stop = CancellationToken::new();
    let serve_task = if config.worker.listen.is_empty() {
        None
    } else {
        Some(
            serve::start(
                &config.worker.listen,
                broker.clone(),
                health.clone(),
                metrics.clone(),
                serve_stop.clone(),
            )
            .await?,
        )
    };

    let (attempts, initial, max, patience) = config.retry_delays();
    let (ack_gate, mut ack_requests) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    let shared = Arc::new(Shared {
        registry: Registry::new(store.clone()),
        store,
        health,
        publisher,
        worker_id: worker_id.clone(),
        runtime: runtime_options.clone(),
        settings: config.worker.clone(),
        retry: Retry {
            attempts,
            initial,
            max,
            patience,
            shutdown: shutdown.clone(),
        },
        shutdown: shutdown.clone(),
        inbox,
        attempts: Attempts::default(),
        ack_gate,
        metrics,
    });

    let inbox_stop = CancellationToken::new();
    let inbox_task = tokio::spawn(inbox_loop(
        inbox_consumer,
        shared.clone(),
        inbox_stop.clone(),
    ));
    let presence_stop = CancellationToken::new();
    let presence_task = tokio::spawn(presence_loop(
        shared.clone(),
        pool.clone(),
        presence_stop.clone(),
    ));

    let storage_stop = CancellationToken::new();
    let storage_task = tokio::spawn(outage::watch_storage(
        shared.health.clone(),
        shared.store.clone(),
        max,
        storage_stop.clone(),
    ));
    let mut storage = shared.health.subscribe();

    let mut jobs = Consumer::jobs(&broker).await?;
    let max_jobs = config.worker.max_jobs.map(|n| n as usize);
    info!(
        %worker_id,
        queue = jobs.queue(),
        concurrency,
        device = ?runtime_options.device,
        intra_threads = runtime_options.intra_threads,
        max_jobs,
        "worker started"
    );

    let mut tasks = JoinSet::new();
    let mut failure = None;
    // Deliveries taken that did not end unclaimed (refused, handed back before a lease): with
    // `max_jobs`, the worker stops taking jobs at the limit and exits when they are done.
    let mut taken = 0usize;
    let room_for_more = |taken: usize| max_jobs.is_none_or(|max| taken < max);
    loop {
        if !room_for_more(taken) && tasks.is_empty() {
            info!(jobs = taken, "ran the jobs --max-jobs allows; exiting");
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok(delivery::Handled::Ran) => {}
                Ok(delivery::Handled::NotRun) => taken = taken.saturating_sub(1),
                Err(err) => error!(error = %err, "a job task failed"),
            },
            Ok(()) = storage.changed() => {
                // Down: no new job until S3 answers again (what was prefetched goes back).
                // Back: the next `next` subscribes again.
                let down = storage.borrow_and_update().is_some();
                if down && let Err(err) = jobs.pause().await {
                    warn!(error = %err, "cannot pause the job consumer");
                }
            }
            Some(done) = ack_requests.recv() => {
                if tasks.len() >= concurrency
                    && let Err(err) = jobs.pause().await
                {
                    warn!(error = %err, "cannot pause the job consumer");
                }
                let _ = done.send(());
            }
            next = jobs.next(),
                if tasks.len() < concurrency && room_for_more(taken) && !shared.health.is_down() =>
            match next {
                Some(Ok(delivery)) => {
                    taken += 1;
                    tasks.spawn(delivery::handle(shared.clone(), delivery));
                }
                Some(Err(err)) => {
                    error!(error = %err, "cannot consume jobs any more; stopping");
                    failure = Some(err);
                    shutdown.cancel();
                    break;
                }
                None => break,
            },
        }
    }

    // Attempts granted from now on ack without asking.
    drop(ack_requests);
    // Ordered stop: say so, no new jobs, running ones checkpoint and hand back, then the
    // connection.
    presence_stop.cancel();
    if let Err(err) = presence_task.await {
        error!(error = %err, "the presence task failed");
    }
    if let Err(err) = shared.publish_presence(WorkerState::Stopping, &pool).await {
        warn!(error = %err, "cannot tell the coordinator this worker stops");
    }
    if let Err(err) = jobs.cancel().await {
        warn!(error = %err, "failed to cancel the job consumer");
    }
    let deadline = Duration::from_secs(config.worker.shutdown_deadline_secs);
    if !tasks.is_empty() {
        info!(
            running = tasks.len(),
            ?deadline,
            "waiting for running jobs to hand back"
        );
    }
    let drained = tokio::time::timeout(deadline, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                error!(error = %err, "a job task failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            running = tasks.len(),
            "jobs still running at the shutdown deadline; dropping them (their leases lapse)"
        );
        tasks.shutdown().await;
    }
    // Channels closed one by one before the connection: a dropped consumer's channel would close
    // in the background, crossing the connection's close (lapin then logs a connection error).
    storage_stop.cancel();
    if let Err(err) = storage_task.await {
        error!(error = %err, "the storage watch failed");
    }
    inbox_stop.cancel();
    if let Err(err) = inbox_task.await {
        error!(error = %err, "the inbox task failed");
    }
    jobs.close().await;
    serve_stop.cancel();
    if let Some(task) = serve_task
        && let Err(err) = task.await
    {
        error!(error = %err, "the health and metrics port failed");
    }
    broker.close().await;
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

/// Publishes this worker's presence at once and then every `presence_secs` until `stop`. A failed
/// publish is logged once per outage and retried at the next tick.
async fn presence_loop(shared: Arc<Shared>, pool: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(shared.settings.presence_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let published = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            published = shared.publish_presence(WorkerState::Online, &pool) => published,
        };
        match published {
            Ok(()) if failing => {
                info!("presence messages reach the broker again");
                failing = false;
            }
            Err(err) if !failing => {
                warn!(error = %err, "cannot publish this worker's presence; retrying");
                failing = true;
            }
            Ok(()) | Err(_) => {}
        }
    }
}

/// Declares the topology (a broker user that may configure), or checks that the coordinator has
/// (one that may not): then waits, checking every few seconds, until it has. Returns at shutdown
/// too (the job consumer then fails fast).
async fn declare_or_wait(broker: &Broker, shutdown: &CancellationToken) -> Result<(), QueueError> {
    let topology = broker.topology();
    let channel = broker.channel().await?;
    let declared = async {
        topology.declare(&channel).await?;
        // Events are published `mandatory`: declaring the coordinator's (durable) events queue
        // here keeps a worker that starts before the coordinator from failing on unroutable
        // events, and keeps the events for the coordinator.
        topology.declare_coordinator(&channel).await
    }
    .await;
    match declared {
        Ok(()) => {
            refit_io::queue::close_channel(&channel, "declarations").await;
            return Ok(());
        }
        Err(error) if error.is_access_refused() => {
            debug!(%error, "this broker user may not declare; the coordinator does");
        }
        Err(error) => return Err(error),
    }
    let mut warned = false;
    loop {
        let channel = broker.channel().await?;
        match topology.check_declared(&channel).await {
            Ok(()) => {
                refit_io::queue::close_channel(&channel, "checks").await;
                return Ok(());
            }
            Err(error) if error.is_not_found() => {
                if !warned {
                    warn!(
                        queue = %topology.job_queue(),
                        "the job queue does not exist yet: waiting for the coordinator to \
                         declare it"
                    );
                    warned = true;
                }
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(TOPOLOGY_RETRY) => {}
        }
    }
}

/// Hands the coordinator's messages (from this worker's inbox) to the attempts they are for,
/// until `stop`; then closes the consumer.
async fn inbox_loop(mut inbox: Consumer, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = inbox.next() => next,
        };
        let Some(next) = next else { break };
        match next {
            Ok(delivery) => {
                match delivery.decode::<Control>() {
                    Ok(control) => {
                        let name = control.name();
                        let job_id = control.job_id();
                        if !shared.attempts.route(control) {
                            debug!(%job_id, message = name, "no attempt here for this message");
                        }
                    }
                    Err(err) => warn!(error = %err, "ignoring an undecodable control message"),
                }
                if let Err(err) = delivery.ack().await {
                    warn!(error = %err, "failed to ack a control message");
                }
            }
            Err(err) => {
                error!(error = %err, "cannot read the inbox; leases cannot be granted here");
                break;
            }
        }
    }
    inbox.close().await;
}
