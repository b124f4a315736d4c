//! Consuming what the workers report: events on `<prefix>.events.coordinator` (claims answered,
//! the lease holders' events recorded, the rest dropped and counted; see `store::events`), dead-
//! lettered jobs on `<prefix>.jobs.dead.coordinator`, and a sweep that marks silent running jobs
//! `stalled`. Both queues are consumed exclusively: holding the events queue is what makes this
//! coordinator the active one (`super` module docs).

use std::time::Duration;

use chrono::Utc;
use refit_io::queue::{Consumer, Delivery, Publisher, QueueError};
use refit_proto::{DecodeError, Event, JobSpec, Message, WorkerStatus};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{App, lifecycle};

/// Events taken at once.
const PREFETCH: u16 = 64;

/// How long to wait before retrying after the job store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How often a standby coordinator tries to take the events queue over.
const STANDBY_RETRY: Duration = Duration::from_secs(5);

type Subscribe =
    for<'a> fn(&'a App) -> futures::future::BoxFuture<'a, Result<Consumer, QueueError>>;

/// Subscribes with `subscribe`, retrying while the broker is away or another coordinator
/// consumes the queue, until `shutdown`.
async fn subscribe(
    app: &App,
    what: &str,
    shutdown: &CancellationToken,
    subscribe: Subscribe,
) -> Option<Consumer> {
    let mut delay = Duration::from_millis(200);
    let mut standing_by = false;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        // Not raced against `shutdown`: a subscription dropped half-way leaves its channel to
        // close in the background, where that close can cross the connection's own at shutdown.
        // Subscribing is bounded by the broker's connect timeout.
        match subscribe(app).await {
            Ok(consumer) => {
                if shutdown.is_cancelled() {
                    consumer.close().await;
                    return None;
                }
                if standing_by {
                    info!(
                        queue = what,
                        "took over the queue: this coordinator is now active"
                    );
                }
                return Some(consumer);
            }
            Err(error) if error.is_locked() => {
                if !standing_by {
                    info!(
                        %error,
                        queue = what,
                        "another coordinator is active: standing by"
                    );
                    standing_by = true;
                }
                delay = STANDBY_RETRY;
            }
            Err(error) if error.is_transient() => {
                warn!(%error, queue = what, retry_in = ?delay, "cannot subscribe; retrying");
            }
            Err(error) => {
                warn!(%error, queue = what, "cannot subscribe (permanent); retrying slowly");
                delay = Duration::from_secs(30);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        if !standing_by {
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// Records every worker event until `shutdown`. Holding the events queue makes this coordinator
/// active: first it recovers jobs its store lost from their reservations.
pub(super) async fn run_events(app: App, shutdown: CancellationToken) {
    let mut replies: Option<Publisher> = None;
    // Each pass: stand by until this coordinator holds the events queue, become active, record
    // events until shutdown or until another coordinator holds the queue after a reconnect.
    loop {
        let Some(mut consumer) = subscribe(&app, "events", &shutdown, |app| {
            Box::pin(Consumer::events(&app.broker, PREFETCH))
        })
        .await
        else {
            break;
        };
        activate(&app).await;
        let lost = loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break false,
                next = consumer.next() => next,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    handle_event(&app, &mut replies, delivery, &shutdown).await;
                }
                Some(Err(error)) if error.is_locked() => {
                    warn!(
                        %error,
                        "another coordinator took the events queue while this one reconnected: \
                         standing by"
                    );
                    break true;
                }
                Some(Err(error)) => {
                    warn!(%error, "events consumer failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break false,
            }
        };
        app.set_active(false);
        consumer.close().await;
        if !lost {
            break;
        }
    }
    if let Some(publisher) = replies {
        publisher.close().await;
    }
    debug!("events consumer stopped");
}

/// What a coordinator does when it takes the events queue: recovers the jobs its store lost
/// (`lifecycle::recover`), gives every lease one more lease time (the holders' events of the
/// time it was away are still queued; they must not lapse before it reads them), then marks
/// itself active (outbox, lease sweep, committer and janitor run).
async fn activate(app: &App) {
    match lifecycle::recover(app).await {
        Ok(0) => {}
        Ok(n) => warn!(jobs = n, "recovered jobs from their reservations"),
        Err(error) => warn!(%error, "cannot look for jobs to recover; going on without"),
    }
    match app.store.extend_leases(app.config.lease_settings()).await {
        Ok(0) => {}
        Ok(n) => info!(
            leases = n,
            "extended the leases of running jobs by one lease time"
        ),
        Err(error) => warn!(%error, "cannot extend the leases of running jobs"),
    }
    app.set_active(true);
}

async fn handle_event(
    app: &App,
    replies: &mut Option<Publisher>,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let event: Event = match delivery.decode() {
        Ok(event) => event,
        Err(DecodeError::WrongKind { found, .. }) if found == WorkerStatus::KIND => {
            handle_presence(app, delivery).await;
            return;
        }
        Err(error) => {
            // Garbage cannot become valid by retrying; keep a trace and drop it.
            warn!(
                %error,
                routing_key = delivery.routing_key(),
                bytes = delivery.body().len(),
                "dropping an undecodable event"
            );
            app.metrics.undecodable_messages.inc();
            let _ = delivery.ack().await;
            return;
        }
    };
    let kind = event.kind.name();
    let job_id = event.job_id.to_string();
    let inbox = delivery.reply_to().map(str::to_owned);
    let settings = app.config.lease_settings();
    loop {
        match app
            .store
            .record_event(event.clone(), inbox.clone(), settings)
            .await
        {
            Ok(outcome) => {
                if outcome.recorded {
                    app.metrics.events.with_label_values(&[kind]).inc();
                }
                if let Some(reason) = outcome.dropped {
                    app.metrics
                        .events_dropped
                        .with_label_values(&[reason])
                        .inc();
                    debug!(%job_id, kind, reason, worker = %event.worker_id, "event dropped");
                }
                if let Some(answer) = outcome.claim {
                    app.metrics.claims.with_label_values(&[answer]).inc();
                    info!(%job_id, answer, worker = %event.worker_id, "claim answered");
                }
                if let Some((state, secs)) = outcome.finished {
                    let mode = outcome.mode.as_deref().unwrap_or("unknown");
                    app.metrics
                        .job_duration
                        .with_label_values(&[mode, state.as_str()])
                        .observe(secs);
                    info!(%job_id, state = %state, "job finished");
                }
                if outcome.requeued {
                    if matches!(event.kind, refit_proto::EventKind::Released { .. }) {
                        app.metrics.handbacks.inc();
                    }
                    app.outbox_wake.notify_one();
                }
                if outcome.commit {
                    app.commit_wake.notify_one();
                }
                if let (Some(reply), Some(inbox)) = (&outcome.reply, &inbox) {
                    lifecycle::send(app, replies, inbox, reply).await;
                }
                if let Err(error) = delivery.ack().await {
                    debug!(%error, "cannot ack an event; it will come again");
                }
                return;
            }
            Err(error) => {
                warn!(%error, %job_id, kind, "cannot record an event; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = delivery.nack_requeue().await;
                        return;
                    }
                    () = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
    }
}

/// Records a worker's presence message. A store failure leaves it unacked for a moment and
/// then requeues it; the next one supersedes it anyway.
async fn handle_presence(app: &App, delivery: Delivery) {
    let status: WorkerStatus = match delivery.decode() {
        Ok(status) => status,
        Err(error) => {
            warn!(%error, routing_key = delivery.routing_key(), "dropping an undecodable worker status");
            app.metrics.undecodable_messages.inc();
            let _ = delivery.ack().await;
            return;
        }
    };
    match app.store.record_presence(status).await {
        Ok(()) => {
            let _ = delivery.ack().await;
        }
        Err(error) => {
            warn!(%error, "cannot record a worker's presence; requeueing it");
            tokio::time::sleep(STORE_RETRY).await;
            let _ = delivery.nack_requeue().await;
        }
    }
}

/// Marks dead-lettered jobs `dead` until `shutdown`.
pub(super) async fn run_dead_letters(app: App, shutdown: CancellationToken) {
    let Some(mut consumer) = subscribe(&app, "dead letters", &shutdown, |app| {
        Box::pin(Consumer::dead_letters(&app.broker))
    })
    .await
    else {
        return;
    };
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                warn!(%error, "dead-letter consumer failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => break,
        };
        app.metrics.dead_lettered.inc();
        match delivery.decode::<JobSpec>() {
            Ok(spec) => {
                let reason = format!(
                    "dead-lettered after {} deliveries (rejected by a worker or past the \
                     delivery limit; the message is in the dead-letter queue)",
                    delivery.delivery_count()
                );
                match app.store.mark_dead(spec.id.to_string(), reason).await {
                    Ok(true) => warn!(job_id = %spec.id, "job dead-lettered"),
                    Ok(false) => debug!(
                        job_id = %spec.id,
                        "a dead-lettered copy of a job that has ended or that an attempt holds"
                    ),
                    Err(error) => {
                        warn!(%error, "cannot record a dead-lettered job; retrying");
                        let _ = delivery.nack_requeue().await;
                        tokio::time::sleep(STORE_RETRY).await;
                        continue;
                    }
                }
            }
            Err(error) => warn!(%error, "an undecodable message was dead-lettered"),
        }
        let _ = delivery.ack().await;
    }
    consumer.close().await;
}

/// Marks running jobs without heartbeats `stalled`, every few seconds until `shutdown`.
pub(super) async fn run_stall_sweep(app: App, shutdown: CancellationToken) {
    let stall = chrono::Duration::seconds(
        i64::try_from(app.config.coordinator.stall_after_secs).unwrap_or(i64::MAX / 2),
    );
    let every = Duration::from_secs(app.config.coordinator.stall_after_secs.clamp(1, 5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        match app.store.mark_stalled(Utc::now() - stall).await {
            Ok(0) => {}
            Ok(n) => warn!(jobs = n, "running jobs without heartbeats marked stalled"),
            Err(error) => warn!(%error, "stall sweep failed"),
        }
    }
}
