//! Consuming what the workers report: events on `<prefix>.events.coordinator`, dead-lettered jobs
//! on `<prefix>.jobs.dead.coordinator`, and a sweep that marks silent running jobs `stalled`.

use std::time::Duration;

use chrono::Utc;
use refit_io::queue::{Consumer, Delivery, QueueError};
use refit_proto::{DecodeError, Event, JobSpec, Message, WorkerStatus};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::App;

/// Events taken at once.
const PREFETCH: u16 = 64;

/// How long to wait before retrying after the job store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

type Subscribe =
    for<'a> fn(&'a App) -> futures::future::BoxFuture<'a, Result<Consumer, QueueError>>;

/// Subscribes with `subscribe`, retrying while the broker is away, until `shutdown`.
async fn subscribe(
    app: &App,
    what: &str,
    shutdown: &CancellationToken,
    subscribe: Subscribe,
) -> Option<Consumer> {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            result = subscribe(app) => match result {
                Ok(consumer) => return Some(consumer),
                Err(error) if error.is_transient() => {
                    warn!(%error, queue = what, retry_in = ?delay, "cannot subscribe; retrying");
                }
                Err(error) => {
                    warn!(%error, queue = what, "cannot subscribe (permanent); retrying slowly");
                    delay = Duration::from_secs(30);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Records every worker event until `shutdown`.
pub(super) async fn run_events(app: App, shutdown: CancellationToken) {
    let Some(mut consumer) = subscribe(&app, "events", &shutdown, |app| {
        Box::pin(Consumer::events(&app.broker, PREFETCH))
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
        match delivery {
            Some(Ok(delivery)) => handle_event(&app, delivery, &shutdown).await,
            Some(Err(error)) => {
                warn!(%error, "events consumer failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => break,
        }
    }
    consumer.close().await;
    debug!("events consumer stopped");
}

async fn handle_event(app: &App, delivery: Delivery, shutdown: &CancellationToken) {
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
    loop {
        match app.store.record_event(event.clone()).await {
            Ok(outcome) => {
                if outcome.recorded {
                    app.metrics.events.with_label_values(&[kind]).inc();
                }
                if let Some((state, secs)) = outcome.finished {
                    let mode = outcome.mode.as_deref().unwrap_or("unknown");
                    app.metrics
                        .job_duration
                        .with_label_values(&[mode, state.as_str()])
                        .observe(secs);
                    info!(%job_id, state = %state, "job finished");
                }
                if outcome.recorded
                    && let refit_proto::EventKind::Succeeded { timings, .. } = &event.kind
                {
                    for (phase, secs) in timings {
                        app.metrics
                            .phase_duration
                            .with_label_values(&[phase.as_str()])
                            .observe(*secs);
                    }
                }
                if outcome.resend_cancel {
                    info!(%job_id, "a cancelled job was started; sending the cancel again");
                    if app
                        .store
                        .set_cancel_published(job_id.clone(), false)
                        .await
                        .is_ok()
                    {
                        app.outbox_wake.notify_one();
                    }
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
                    Ok(false) => debug!(job_id = %spec.id, "dead-lettered job had already ended"),
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
