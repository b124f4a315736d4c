//! One delivery, from decoding to settling: [`handle`] decodes the job, runs its attempt (see
//! `job`) while watching the delivery's channel, and settles the delivery exactly once (ack,
//! nack with requeue, or reject) according to how the attempt ended.

use std::sync::Arc;
use std::time::Duration;

use refit_io::queue::{Delivery, QueueError};
use refit_proto::{ErrorKind, EventKind, JobId, JobSpec};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::Shared;
use super::job::Job;
use super::report::{Heartbeat, JobStatus, Reporter};
use super::resume;
use super::retry::JobError;

/// How often a running job checks that its delivery's channel is still open.
const DELIVERY_CHECK: Duration = Duration::from_millis(250);

/// Handles one delivery and settles it: exactly one of ack, nack with requeue, or reject.
pub(crate) async fn handle(shared: Arc<Shared>, delivery: Delivery) {
    let attempt = delivery.attempt();
    let job: JobSpec = match delivery.decode() {
        Ok(job) => job,
        Err(err) => {
            // The message id is the job id for refit's publishers: tell the coordinator.
            let job_id = delivery
                .message_id()
                .and_then(|id| id.parse::<JobId>().ok());
            error!(error = %err, job_id = ?job_id, attempt, "cannot decode a job message; dead-lettering it");
            if let Some(job_id) = job_id {
                let reporter = Reporter::new(
                    shared.publisher.clone(),
                    job_id,
                    attempt,
                    shared.worker_id.clone(),
                );
                let kind = EventKind::Failed {
                    error: format!("undecodable job message: {err}"),
                    error_kind: ErrorKind::Permanent,
                };
                publish_final(&shared, &reporter, kind).await;
            }
            settled("reject", delivery.reject().await);
            return;
        }
    };
    let span = info_span!(
        "job",
        job_id = %job.id,
        attempt,
        worker_id = %shared.worker_id,
        model = %job.model,
        version = %job.output_version,
    );
    run(shared, delivery, job, attempt).instrument(span).await;
}

async fn run(shared: Arc<Shared>, delivery: Delivery, job: JobSpec, attempt: u32) {
    let cancel = shared.register(job.id);
    let reporter = Reporter::new(
        shared.publisher.clone(),
        job.id,
        attempt,
        shared.worker_id.clone(),
    );
    let status = JobStatus::new();
    let heartbeat = Heartbeat::start(
        reporter.clone(),
        status.clone(),
        Duration::from_secs(shared.settings.heartbeat_secs),
    );
    info!(mode = %job.mode, redelivered = delivery.redelivered(), "job received");
    // Stops the attempt at its next step, as a shutdown does: the worker's shutdown, or the loss
    // of the delivery's channel (see `watch_delivery`).
    let handback = shared.shutdown.child_token();
    let lost = CancellationToken::new();
    let done = CancellationToken::new();
    let work = async {
        let outcome = Job {
            shared: &shared,
            job: &job,
            reporter: &reporter,
            status: &status,
            cancel: &cancel,
            handback: &handback,
            lost: &lost,
        }
        .execute()
        .await;
        done.cancel();
        outcome
    };
    let (outcome, ()) = tokio::join!(work, watch_delivery(&delivery, &done, &lost, &handback));
    drop(heartbeat);
    shared.unregister(job.id);

    let store = &*shared.store;
    match outcome {
        Ok(()) => {
            settled("ack", delivery.ack().await);
            resume::delete(store, job.id).await;
        }
        Err(JobError::Cancelled) => {
            info!("job cancelled");
            publish_final(&shared, &reporter, EventKind::Cancelled).await;
            settled("ack", delivery.ack().await);
            resume::delete(store, job.id).await;
        }
        Err(JobError::Shutdown) => {
            info!("handing the job back to the queue for another worker");
            settled("nack", delivery.nack_requeue().await);
        }
        Err(JobError::Lost) => {
            info!("stopped: the broker has requeued the job and delivers it again");
            // Fails (the channel is gone); kept for a channel that only looked closed.
            settled("nack", delivery.nack_requeue().await);
        }
        Err(JobError::Permanent(reason)) => {
            error!(%reason, "job failed permanently; dead-lettering it");
            let kind = EventKind::Failed {
                error: reason,
                error_kind: ErrorKind::Permanent,
            };
            publish_final(&shared, &reporter, kind).await;
            settled("reject", delivery.reject().await);
            resume::delete(store, job.id).await;
        }
        Err(JobError::Transient(reason)) => {
            warn!(%reason, "job failed transiently; requeueing it");
            let kind = EventKind::Failed {
                error: reason,
                error_kind: ErrorKind::Transient,
            };
            publish_final(&shared, &reporter, kind).await;
            settled("nack", delivery.nack_requeue().await);
        }
    }
}

/// Watches the delivery's channel until `done`. When it closes (the connection to RabbitMQ was
/// lost, or the broker closed the channel, e.g. at its consumer timeout), the broker has
/// requeued the job already and delivers it again, here or to another worker, while an ack from
/// this attempt can no longer reach it. Training on would run the job twice at once and report
/// `succeeded` twice; so the attempt stops at its next step, uploads its latest epoch-boundary
/// checkpoint as on shutdown, and the redelivery resumes from it (or, if the version got stored,
/// reports `succeeded` without training).
async fn watch_delivery(
    delivery: &Delivery,
    done: &CancellationToken,
    lost: &CancellationToken,
    handback: &CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = done.cancelled() => return,
            () = tokio::time::sleep(DELIVERY_CHECK) => {}
        }
        if !delivery.is_live() {
            warn!(
                "the job's delivery was lost with its channel (broker connection lost?); \
                 stopping this attempt, the broker delivers the job again"
            );
            lost.cancel();
            handback.cancel();
            return;
        }
    }
}

/// Publishes an attempt's last event with retries; a failure is logged (the delivery is settled
/// regardless: the dead-letter queue or the redelivery keeps the job).
async fn publish_final(shared: &Shared, reporter: &Reporter, kind: EventKind) {
    let name = kind.name();
    if let Err(err) = shared
        .retry
        .run("publish event", || reporter.send(kind.clone()))
        .await
    {
        error!(error = %err, event = name, "failed to publish an event");
    }
}

fn settled(op: &'static str, result: Result<(), QueueError>) {
    match result {
        Ok(()) => {}
        // The channel is gone; the broker delivers the job again, and the redelivery finds the
        // stored version (or the resume checkpoint).
        Err(err) => {
            warn!(error = %err, op, "failed to settle the delivery; the broker will redeliver it")
        }
    }
}
