//! One delivery: decode the job, claim its lease, settle the delivery, run the attempt, report
//! how it ended ([`handle`]).
//!
//! The delivery is settled as soon as the claim is answered: acked when the lease is granted
//! (from then on the lease, not the delivery, keeps the job: the coordinator queues it again if
//! the lease is let go or lapses) or refused (a duplicate, a finished or cancelled job), nacked
//! when the worker shuts down before an answer, rejected (dead-lettered) when it does not decode.

use std::sync::Arc;
use std::time::Duration;

use refit_io::queue::{Delivery, QueueError};
use refit_proto::{AttemptId, Control, ErrorKind, EventKind, JobSpec, ResumePoint};
use tokio::sync::mpsc;
use tracing::{Instrument, error, info, info_span, warn};

use super::Shared;
use super::attempt::{Stop, StopReason};
use super::fault;
use super::job::Job;
use super::metrics::Outcome;
use super::report::{Heartbeat, JobStatus, Reporter};
use super::retry::JobError;

/// How long a claim waits for its answer before it is sent again (the coordinator answers a
/// repeated claim the same way; the repeat carries the current inbox, which changes when the
/// connection does).
const CLAIM_RESEND: Duration = Duration::from_secs(10);

/// Whether a delivery ran as an attempt (its lease was granted), for `--max-jobs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The lease was granted and the attempt ran to an end, whatever the end.
    Ran,
    /// Dead-lettered, refused, or handed back before a lease.
    NotRun,
}

/// Handles one delivery and settles it exactly once: ack, nack with requeue, or reject.
pub(crate) async fn handle(shared: Arc<Shared>, delivery: Delivery) -> Handled {
    let attempt = delivery.attempt();
    let job: JobSpec = match delivery.decode() {
        Ok(job) => job,
        Err(err) => {
            error!(
                error = %err,
                message_id = ?delivery.message_id(),
                attempt,
                "cannot decode a job message; dead-lettering it"
            );
            settled("reject", delivery.reject().await);
            return Handled::NotRun;
        }
    };
    let attempt_id = AttemptId::new();
    let span = info_span!(
        "job",
        job_id = %job.id,
        attempt,
        %attempt_id,
        worker_id = %shared.worker_id,
        model = %job.model,
        version = %job.output_version,
    );
    run(shared, delivery, job, attempt, attempt_id)
        .instrument(span)
        .await
}

/// The coordinator's answer to a claim.
enum Claim {
    Granted {
        fence: u64,
        lease_secs: u64,
        resume: Option<ResumePoint>,
    },
    Refused(String),
    /// The worker shuts down before an answer came.
    Shutdown,
}

async fn run(
    shared: Arc<Shared>,
    delivery: Delivery,
    job: JobSpec,
    attempt: u32,
    attempt_id: AttemptId,
) -> Handled {
    let mut controls = shared.attempts.register(job.id, attempt_id);
    let reporter = Reporter::new(
        shared.publisher.clone(),
        job.id,
        attempt,
        shared.worker_id.clone(),
        attempt_id,
        shared.inbox.clone(),
    );
    if !shared.health.ready(&*shared.store).await {
        // Taking the job now would only hold it: hand it back before claiming it.
        info!("S3 is unreachable; handing the job back unclaimed");
        settled("nack", delivery.nack_requeue().await);
        shared.attempts.unregister(attempt_id);
        return Handled::NotRun;
    }
    info!(mode = %job.mode, redelivered = delivery.redelivered(), "job received; claiming it");
    let (fence, lease_secs, resume) = match claim(&shared, &reporter, &mut controls).await {
        Claim::Granted {
            fence,
            lease_secs,
            resume,
        } => (fence, lease_secs, resume),
        Claim::Refused(reason) => {
            info!(%reason, "the coordinator refused the claim; dropping this delivery");
            settled("ack", delivery.ack().await);
            shared.attempts.unregister(attempt_id);
            return Handled::NotRun;
        }
        Claim::Shutdown => {
            info!("shutting down before the claim was answered; handing the job back");
            // Lets go of a lease granted after all, so the job is not held until it lapses.
            reporter
                .send_best_effort(EventKind::Released {
                    reason: "the worker shut down while claiming the job".into(),
                })
                .await;
            settled("nack", delivery.nack_requeue().await);
            shared.attempts.unregister(attempt_id);
            return Handled::NotRun;
        }
    };
    reporter.set_fence(fence);
    info!(fence, lease_secs, "lease granted");
    // The lease holds the job from here: the coordinator queues it again if the lease lapses.
    shared.before_ack().await;
    settled("ack", delivery.ack().await);
    fault::at("granted").await;

    let stop = Stop::new();
    let watcher = tokio::spawn(watch_controls(
        controls,
        stop.clone(),
        shared.shutdown.clone(),
    ));
    let status = JobStatus::new();
    shared
        .metrics
        .begin(attempt_id, job.id, job.model.as_str(), status.clone());
    let heartbeat = Heartbeat::start(
        reporter.clone(),
        status.clone(),
        shared.health.clone(),
        Duration::from_secs(shared.settings.heartbeat_secs),
        Duration::from_secs(lease_secs.max(1)),
    );
    let outcome = Job {
        shared: &shared,
        job: &job,
        reporter: &reporter,
        status: &status,
        stop: &stop,
        resume: resume.as_ref(),
        downloading: Default::default(),
    }
    .execute()
    .await;
    drop(heartbeat);
    watcher.abort();
    shared.attempts.unregister(attempt_id);

    let (outcome, kind) = match outcome {
        Ok(()) => (Outcome::Succeeded, None),
        Err(JobError::Stopped) => match stop.reason() {
            Some(StopReason::Cancelled) => {
                info!("job cancelled");
                (Outcome::Cancelled, Some(EventKind::Cancelled))
            }
            Some(StopReason::HandBack) => {
                info!("handing the job back for another worker");
                let kind = EventKind::Released {
                    reason: "the worker is shutting down".into(),
                };
                (Outcome::Released, Some(kind))
            }
            Some(StopReason::Revoked(reason)) => {
                warn!(%reason, "stopped: this attempt no longer holds the job's lease");
                (Outcome::Revoked, None)
            }
            None => {
                error!("the attempt stopped without a reason; reporting nothing");
                (Outcome::Revoked, None)
            }
        },
        Err(JobError::Permanent(reason)) => {
            error!(%reason, "job failed permanently");
            let kind = EventKind::Failed {
                error: reason,
                error_kind: ErrorKind::Permanent,
            };
            (Outcome::Failed, Some(kind))
        }
        Err(JobError::Outage(reason)) => {
            warn!(%reason, "S3 or the broker stayed away; handing the job back (not a failure)");
            let kind = EventKind::Released {
                reason: format!("outage: {reason}"),
            };
            (Outcome::Released, Some(kind))
        }
        Err(JobError::Transient(reason)) => {
            warn!(%reason, "job failed transiently; the coordinator queues it again");
            let kind = EventKind::Failed {
                error: reason,
                error_kind: ErrorKind::Transient,
            };
            (Outcome::Failed, Some(kind))
        }
    };
    if let Some(kind) = kind {
        publish_final(&shared, &reporter, kind).await;
    }
    shared.metrics.end(attempt_id, outcome);
    Handled::Ran
}

/// Sends the claim (again every [`CLAIM_RESEND`]) until the coordinator answers or the worker
/// shuts down.
async fn claim(
    shared: &Shared,
    reporter: &Reporter,
    controls: &mut mpsc::UnboundedReceiver<Control>,
) -> Claim {
    loop {
        if let Err(error) = reporter.send(EventKind::Claim).await {
            warn!(%error, "failed to send the claim; trying again");
        }
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return Claim::Shutdown,
            control = controls.recv() => match control {
                Some(Control::Granted { fence, lease_secs, resume, .. }) => {
                    return Claim::Granted { fence, lease_secs, resume };
                }
                Some(Control::Refused { reason, .. } | Control::Revoked { reason, .. }) => {
                    return Claim::Refused(reason);
                }
                Some(Control::Cancel { .. }) => return Claim::Refused("cancelled".into()),
                None => return Claim::Shutdown,
            },
            () = tokio::time::sleep(CLAIM_RESEND) => {}
        }
    }
}

/// Stops the attempt when the coordinator cancels it or takes its lease back, or the worker
/// shuts down.
async fn watch_controls(
    mut controls: mpsc::UnboundedReceiver<Control>,
    stop: Stop,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                stop.stop(StopReason::HandBack);
                return;
            }
            control = controls.recv() => match control {
                Some(Control::Cancel { .. }) => stop.stop(StopReason::Cancelled),
                Some(Control::Revoked { reason, .. }) => stop.stop(StopReason::Revoked(reason)),
                // A repeated grant (the answer to a repeated claim) changes nothing.
                Some(Control::Granted { .. } | Control::Refused { .. }) => {}
                None => return,
            },
        }
    }
}

/// Publishes an attempt's last event with retries; a failure is logged (the coordinator lets the
/// lease lapse and queues the job again).
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
    if let Err(err) = result {
        // The channel is gone; the broker delivers the job again, and the coordinator answers
        // the redelivery's claim.
        warn!(error = %err, op, "failed to settle the delivery; the broker will redeliver it");
    }
}
