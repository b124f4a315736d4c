//! The worker service's job loop: consume `<prefix>.jobs.<pool>`, train, store the version,
//! report, settle the delivery. [`run`] is the entry point; `refit-worker`'s `main` only parses
//! arguments, loads the config and wires SIGINT/SIGTERM to the token it passes.
//!
//! ## A job's life in the worker (DESIGN §2)
//!
//! 1. **Decode.** Garbage or an unknown schema version: `failed{permanent}` when the message id
//!    names a job, then `reject` (→ `<prefix>.jobs.dead`).
//! 2. **Already done?** The output version's manifest exists (written last, it is the commit
//!    marker): publish `succeeded` again with the stored metrics, ack, no training. A manifest
//!    for other data is a permanent failure (the coordinator assigned one version twice).
//! 3. **Download** the dataset (and eval dataset), sha256-checked against the job; for a
//!    fine-tune the base manifest and, unless resuming, the base version (through the registry,
//!    `refit_io::registry`: every file sha256-checked against its manifest).
//! 4. **Resume** from `jobs/<id>/resume/` (see `resume`) when an earlier attempt left a usable
//!    checkpoint; `started.resumed_from_epoch` says from which epoch.
//! 5. **Train** on a blocking thread (`spawn_blocking`). The observer sends `progress` at most
//!    once per second (the first step and the last are always reported; epochs shorter than a
//!    second share one event), stops within one step on cancel or shutdown, and every
//!    `resume_every_epochs` epochs or `resume_every_secs` seconds hands an epoch-boundary
//!    checkpoint to the job's task, which uploads it with the vocabulary and a `resume.json`
//!    marker and publishes `checkpointed`. A failed checkpoint upload is logged with the age of
//!    the last good one (also in every heartbeat) and training goes on.
//! 6. **Evaluate** on `eval_dataset` if the job has one, **export**, **upload** the version's
//!    files with the manifest last, publish `succeeded` with a publisher confirm, and only then
//!    **ack**; the resume checkpoint is deleted after.
//!
//! `heartbeat` events go out every `heartbeat_secs` for the whole attempt, with the phase
//! (`download`, `train`, `evaluate`, `upload`, `checkpoint`) and the resume checkpoint's age.
//! Apart from jobs, the worker reports its presence ([`refit_proto::WorkerStatus`], routing key
//! `worker.<id>.online`) when it starts and every `presence_secs`, and `worker.<id>.stopping` when
//! a shutdown begins, so the coordinator lists idle workers and tells a stopped one from a lost one.
//!
//! ## Failures
//!
//! | what | event | delivery |
//! | --- | --- | --- |
//! | bad data, unknown label, corrupt or missing base checkpoint, bad budget | `failed{permanent}` | `reject` → dead-letter |
//! | S3 or broker still failing after `retry_attempts` tries (backoff with jitter) | `failed{transient}` | `nack` + requeue |
//! | `cancel` on `<prefix>.control` | `cancelled` | `ack` |
//! | SIGTERM / SIGINT | (`checkpointed`) | `nack` + requeue |
//! | the delivery's channel closes (connection lost) | (`checkpointed`) | none possible: the broker has requeued it |
//!
//! Every path settles the delivery explicitly; a failure to settle (channel gone) is logged and
//! the broker redelivers. A job whose delivery's channel closes while it runs (the connection
//! to RabbitMQ dropped; the broker requeues the job at once) stops at its next step as on
//! shutdown, leaving a resume checkpoint, and publishes no `succeeded`: the redelivery, here
//! after the reconnection or on another worker, resumes from the checkpoint or finds the stored
//! version, so the job is neither trained twice at once nor reported twice. A job that keeps
//! failing transiently, or a poison message that kills workers, is dead-lettered by the quorum
//! queue's delivery limit. The worker keeps running after any job failure.
//!
//! ## Jobs longer than the broker's consumer (ack) timeout
//!
//! A delivery stays unacked for the whole job, so a job must finish within RabbitMQ's consumer
//! timeout (30 minutes by default), or the broker closes the worker's channel and redelivers the
//! job. refit's choice is to **raise the timeout above the longest job** rather than ack early
//! with a lease of our own: `queue.consumer_timeout_ms` sets the per-queue `x-consumer-timeout`
//! (RabbitMQ ≥ 3.11.15), and on older brokers the broker-wide `consumer_timeout` is raised
//! (`deploy/README.md`, "Long jobs"). Early ack would make a worker that dies mid-job lose the
//! job, which the at-least-once design forbids. If the timeout is hit anyway, nothing is lost or
//! trained twice at the same time for long: the running attempt sees its channel close and stops
//! at its next step with a resume checkpoint, the redelivered attempt resumes from it instead of
//! restarting, and an
//! attempt that finds the version's manifest stored only reports `succeeded` again. Two attempts
//! writing the same version write the same key layout, the manifest last, so readers never see
//! a half-written version.
//!
//! ## Shutdown
//!
//! On the root token: stop taking deliveries (`basic.cancel`; prefetched ones go back), let
//! running jobs stop at their next training step, upload the latest epoch-boundary checkpoint as
//! the resume checkpoint (at most one epoch of work is lost), nack them with requeue, then close
//! the connection; jobs still running after `shutdown_deadline_secs` are dropped, which requeues
//! their deliveries too.
//!
//! ## Layout
//! - `delivery`: one delivery from decoding to settling (ack, nack, reject)
//! - `job`: one attempt's steps (stored version?, download, start or resume, evaluate, upload)
//! - `train`: the training thread's bridge (progress events, resume-checkpoint uploads)
//! - `observer`: the engine-side observer of a training run; `report`: events and heartbeats
//! - `resume`: resume checkpoints under `jobs/<id>/resume/`; `retry`: `JobError` kinds and
//!   the in-process retry of transient failures

mod delivery;
mod job;
mod observer;
mod report;
mod resume;
mod retry;
mod train;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use refit_proto::{Control, JobId, WorkerId, WorkerState, WorkerStatus};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{WorkerConfig, WorkerSettings};
use refit_engine::runtime::{self, RuntimeOptions};
use refit_io::queue::{Broker, Consumer, Publisher, close_channel};
use refit_io::registry::Registry;
use refit_io::storage::{ObjectStore, S3Store};
use retry::Retry;

/// How long one presence message may take to be confirmed.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many cancelled job ids are remembered for jobs not (yet) running here.
const EARLY_CANCELS: usize = 1024;

/// What every job task shares.
pub(crate) struct Shared {
    /// Datasets and resume checkpoints.
    store: Arc<dyn ObjectStore>,
    /// Versions (the same store).
    registry: Registry,
    publisher: Arc<Publisher>,
    worker_id: WorkerId,
    runtime: RuntimeOptions,
    settings: WorkerSettings,
    retry: Retry,
    shutdown: CancellationToken,
    cancels: Mutex<Cancels>,
}

#[derive(Default)]
struct Cancels {
    running: HashMap<JobId, CancellationToken>,
    /// Cancelled while not running here: a later delivery of the job is cancelled at once.
    early: VecDeque<JobId>,
}

impl Shared {
    fn register(&self, job: JobId) -> CancellationToken {
        let token = CancellationToken::new();
        let mut cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        if cancels.early.contains(&job) {
            token.cancel();
        }
        cancels.running.insert(job, token.clone());
        token
    }

    /// Publishes this worker's presence (the running jobs counted now), waiting up to
    /// [`PRESENCE_TIMEOUT`] for the confirm.
    async fn publish_presence(&self, state: WorkerState, pool: &str) -> anyhow::Result<()> {
        let running = self
            .cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running
            .len();
        let status = WorkerStatus {
            worker_id: self.worker_id.clone(),
            at: chrono::Utc::now(),
            state,
            running: u32::try_from(running).unwrap_or(u32::MAX),
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

    fn unregister(&self, job: JobId) {
        let mut cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        cancels.running.remove(&job);
    }

    fn cancel(&self, job: JobId) {
        let mut cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = cancels.running.get(&job) {
            info!(job_id = %job, "cancelling a running job");
            token.cancel();
        }
        if !cancels.early.contains(&job) {
            if cancels.early.len() >= EARLY_CANCELS {
                cancels.early.pop_front();
            }
            cancels.early.push_back(job);
        }
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
    let store: Arc<dyn ObjectStore> = Arc::new(s3);

    let broker = Broker::connect(&config.queue).await?;
    let channel = broker.channel().await?;
    let topology = broker.topology();
    topology.declare(&channel).await?;
    // Events are published `mandatory`: declaring the coordinator's (durable) events queue here
    // keeps a worker that starts before the coordinator from failing on unroutable events, and
    // keeps the events for the coordinator.
    topology.declare_coordinator(&channel).await?;
    close_channel(&channel, "declarations").await;
    let publisher = Arc::new(Publisher::new(&broker).await?);

    let (attempts, initial, max) = config.retry_delays();
    let shared = Arc::new(Shared {
        registry: Registry::new(store.clone()),
        store,
        publisher,
        worker_id: worker_id.clone(),
        runtime: runtime_options.clone(),
        settings: config.worker.clone(),
        retry: Retry {
            attempts,
            initial,
            max,
            shutdown: shutdown.clone(),
        },
        shutdown: shutdown.clone(),
        cancels: Mutex::new(Cancels::default()),
    });

    // Subscribed before any job is taken, so no cancel for a job of ours is missed.
    let control = Consumer::control(&broker).await?;
    let control_stop = CancellationToken::new();
    let control_task = tokio::spawn(control_loop(control, shared.clone(), control_stop.clone()));
    let pool = broker.topology().pool().to_owned();
    let presence_stop = CancellationToken::new();
    let presence_task = tokio::spawn(presence_loop(
        shared.clone(),
        pool.clone(),
        presence_stop.clone(),
    ));

    let mut jobs = Consumer::jobs(&broker).await?;
    let concurrency = usize::from(config.worker.concurrency.max(1));
    info!(
        %worker_id,
        queue = jobs.queue(),
        concurrency,
        device = ?runtime_options.device,
        intra_threads = runtime_options.intra_threads,
        "worker started"
    );

    let mut tasks = JoinSet::new();
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(err) = joined {
                    error!(error = %err, "a job task failed");
                }
            }
            next = jobs.next(), if tasks.len() < concurrency => match next {
                Some(Ok(delivery)) => {
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
            "jobs still running at the shutdown deadline; dropping them (the broker requeues them)"
        );
        tasks.shutdown().await;
    }
    // Channels closed one by one before the connection: a dropped consumer's channel would close
    // in the background, crossing the connection's close (lapin then logs a connection error).
    control_stop.cancel();
    if let Err(err) = control_task.await {
        error!(error = %err, "the control task failed");
    }
    jobs.close().await;
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

/// Applies `cancel` control messages to this worker's jobs until `stop`, then closes the
/// consumer.
async fn control_loop(mut control: Consumer, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = control.next() => next,
        };
        let Some(next) = next else { break };
        match next {
            Ok(delivery) => {
                match delivery.decode::<Control>() {
                    Ok(Control::Cancel { job_id }) => shared.cancel(job_id),
                    Err(err) => warn!(error = %err, "ignoring an undecodable control message"),
                }
                if let Err(err) = delivery.ack().await {
                    warn!(error = %err, "failed to ack a control message");
                }
            }
            Err(err) => {
                error!(error = %err, "cannot consume control messages; cancels are not applied");
                break;
            }
        }
    }
    control.close().await;
}
