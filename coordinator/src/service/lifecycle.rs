//! The coordinator's side of "one job, one version": the tasks that move jobs on without a
//! worker event.
//!
//! - `run_lease_sweep`: lets go of leases that lapsed (the holder crashed or was cut off),
//!   counts a failure and queues the job again, or marks it dead (`store::leases`), and tells
//!   the old holder, in case it is only cut off, that it lost the job.
//! - `run_committer`: commits the version a lease holder reported uploaded, by writing its
//!   manifest (`Registry::commit`): the coordinator is the only writer of versions. A commit the
//!   store cannot take now is retried; an upload that cannot be committed counts as a failed
//!   attempt; a number that turned out to be another job's fails the job.
//! - `run_janitor`: once a job has ended, closes its reservation, deletes the uploads of
//!   attempts that did not become the version and the job's resume checkpoints; a job that died
//!   by the lease rules (`coordinator.max_failures` crashes) goes to the dead-letter exchange.
//! - `run_lost_sweep`: publishes again the published jobs that stayed `queued` past
//!   `republish_after_secs` while their pool's queue holds fewer messages than there are such
//!   jobs (their messages were lost); a duplicate is refused at its claim.
//! - `recover`: at start, re-creates jobs the job store does not know from the reservations in
//!   the object store (a lost or rolled-back store), so queued and running jobs run again and no
//!   version number is ever used twice.
//!
//! They all run only while this coordinator is active (holds the events queue); a standby
//! coordinator leaves them to the active one.

use std::time::Duration;

use refit_io::queue::Publisher;
use refit_io::registry::RegistryError;
use refit_proto::{Control, keys};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::App;
use crate::store::{Lapse, closing_state};

/// Ended jobs closed per pass.
const CLOSE_BATCH: u32 = 50;

/// Waits `every` (or until woken by `wake`, when given), then says whether to go on.
async fn tick(
    shutdown: &CancellationToken,
    every: Duration,
    wake: Option<&tokio::sync::Notify>,
) -> bool {
    let woken = async {
        match wake {
            Some(wake) => wake.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = woken => true,
        () = tokio::time::sleep(every) => true,
    }
}

/// Lets lapsed leases go, every quarter lease.
pub(super) async fn run_lease_sweep(app: App, shutdown: CancellationToken) {
    let settings = app.config.lease_settings();
    let every = Duration::from_millis((settings.lease_secs * 250).clamp(250, 5_000));
    let mut replies: Option<Publisher> = None;
    while tick(&shutdown, every, None).await {
        if !app.is_active() {
            continue;
        }
        let expired = match app.store.expire_leases(settings).await {
            Ok(expired) => expired,
            Err(error) => {
                warn!(%error, "lease sweep failed");
                continue;
            }
        };
        for lapse in expired {
            let outcome = match lapse.lapse {
                Lapse::Requeued => "requeued",
                Lapse::Dead => "dead",
                Lapse::Cancelled => "cancelled",
            };
            app.metrics.lease_lapses.with_label_values(&[outcome]).inc();
            warn!(
                job_id = %lapse.job_id,
                attempt = %lapse.attempt,
                outcome,
                "a lease lapsed: its attempt crashed or was cut off"
            );
            if lapse.lapse == Lapse::Requeued {
                app.outbox_wake.notify_one();
            }
            let (Some(inbox), Ok(job_id)) = (&lapse.inbox, lapse.job_id.parse()) else {
                continue;
            };
            let revoked = Control::Revoked {
                job_id,
                attempt_id: lapse.attempt,
                reason: "the lease lapsed: no event from this attempt in time".into(),
            };
            send(&app, &mut replies, inbox, &revoked).await;
        }
    }
    if let Some(publisher) = replies {
        publisher.close().await;
    }
}

/// Every quarter of `republish_after_secs` (at most a minute): for each pool, the published
/// jobs still `queued` since before `republish_after_secs` ago; when the pool's queue holds
/// fewer messages (ready + unacknowledged, as far as known) than there are of them, some were
/// lost, and all of them go back to the outbox.
pub(super) async fn run_lost_sweep(app: App, shutdown: CancellationToken) {
    let after = app.config.coordinator.republish_after_secs;
    if after == 0 {
        return;
    }
    let every = Duration::from_millis((after * 250).clamp(250, 60_000));
    while tick(&shutdown, every, None).await {
        if !app.is_active() {
            continue;
        }
        let before = chrono::Utc::now() - chrono::Duration::seconds(after as i64);
        let stale = match app.store.stale_published(before).await {
            Ok(stale) => stale,
            Err(error) => {
                warn!(%error, "cannot look for lost job messages");
                continue;
            }
        };
        let mut by_pool: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (id, pool) in stale {
            by_pool.entry(pool).or_default().push(id);
        }
        for (pool, ids) in by_pool {
            let queued = match app.queues.snapshot(&app, std::slice::from_ref(&pool)).await {
                Ok(views) => {
                    // The pool's job queue and its priority queue.
                    let names = app.broker.topology().job_queues_for(&pool);
                    let held: u64 = views
                        .iter()
                        .filter(|q| names.contains(&q.name))
                        .map(|q| q.ready + q.unacked.unwrap_or(0))
                        .sum();
                    Some(held)
                }
                Err(error) => {
                    debug!(%error, %pool, "cannot read the job queue's depth");
                    continue;
                }
            };
            // A missing queue holds nothing.
            let queued = queued.unwrap_or(0);
            if queued >= ids.len() as u64 {
                continue;
            }
            match app.store.republish(ids.clone()).await {
                Ok(n) => {
                    warn!(
                        %pool,
                        jobs = n,
                        in_queue = queued,
                        "published jobs not started and missing from their queue: publishing \
                         them again"
                    );
                    app.metrics.republished.inc_by(n as u64);
                    app.outbox_wake.notify_one();
                }
                Err(error) => warn!(%error, "cannot put lost jobs back in the outbox"),
            }
        }
    }
}

/// Sends a control message to an inbox, best effort (the worker learns from the answer to its
/// next event anyway).
pub(super) async fn send(
    app: &App,
    publisher: &mut Option<Publisher>,
    inbox: &str,
    control: &Control,
) {
    if publisher.is_none() {
        match Publisher::new(&app.broker).await {
            Ok(p) => *publisher = Some(p),
            Err(error) => {
                debug!(%error, "cannot open a channel to answer a worker");
                return;
            }
        }
    }
    let Some(p) = publisher.as_ref() else { return };
    if let Err(error) = p.send_control(inbox, control).await {
        debug!(%error, message = control.name(), "cannot send a control message");
        *publisher = None;
    }
}

/// Commits reported versions as they come (woken by the event consumer) and every few seconds
/// (retrying what failed), then carries out the committed jobs' `promote_to` (see `promotion`).
pub(super) async fn run_committer(app: App, shutdown: CancellationToken) {
    let settings = app.config.lease_settings();
    let every = Duration::from_secs(5);
    loop {
        if app.is_active() {
            commit_pending(&app, settings).await;
            app.promote_pending().await;
        }
        if !tick(&shutdown, every, Some(&app.commit_wake)).await {
            return;
        }
    }
}

async fn commit_pending(app: &App, settings: crate::store::LeaseSettings) {
    let pending = match app.store.pending_commits().await {
        Ok(pending) => pending,
        Err(error) => {
            warn!(%error, "cannot read the commits to make");
            return;
        }
    };
    for job in pending {
        let spec = &job.spec;
        let committed = app
            .registry
            .commit(spec, job.attempt, &job.draft_sha256)
            .await;
        let (outcome, result) = match committed {
            Ok(manifest) => {
                info!(
                    job_id = %job.job_id,
                    model = %spec.model,
                    version = %spec.output_version,
                    attempt = %job.attempt,
                    "version committed"
                );
                let result = app.store.commit_succeeded(job.job_id.clone()).await;
                if let Ok(Some((secs, timings))) = &result {
                    let mode = manifest.mode.as_str();
                    app.metrics
                        .job_duration
                        .with_label_values(&[mode, "succeeded"])
                        .observe(*secs);
                    for (phase, secs) in timings.iter().filter(|(p, _)| *p != "total") {
                        app.metrics
                            .phase_duration
                            .with_label_values(&[phase.as_str()])
                            .observe(*secs);
                    }
                }
                ("committed", result.map(|_| ()))
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, job_id = %job.job_id, "cannot commit now; retrying");
                continue;
            }
            Err(e @ RegistryError::Conflict { .. }) => {
                warn!(error = %e, job_id = %job.job_id, "the version number is another job's");
                let result = app
                    .store
                    .commit_failed(job.job_id.clone(), e.to_string(), false, settings)
                    .await;
                ("conflict", result.map(|_| ()))
            }
            Err(e) => {
                warn!(
                    error = %e,
                    job_id = %job.job_id,
                    "the attempt's upload cannot be committed; queueing the job again"
                );
                let result = app
                    .store
                    .commit_failed(job.job_id.clone(), e.to_string(), true, settings)
                    .await;
                app.outbox_wake.notify_one();
                ("retried", result.map(|_| ()))
            }
        };
        app.metrics.commits.with_label_values(&[outcome]).inc();
        if let Err(error) = result {
            warn!(%error, job_id = %job.job_id, "cannot record a commit's outcome; retrying");
        }
    }
}

/// Closes ended jobs in the object store, every few seconds.
pub(super) async fn run_janitor(app: App, shutdown: CancellationToken) {
    let every = Duration::from_secs(5);
    let mut publisher: Option<Publisher> = None;
    while tick(&shutdown, every, None).await {
        if !app.is_active() {
            continue;
        }
        let jobs = match app.store.closing(CLOSE_BATCH).await {
            Ok(jobs) => jobs,
            Err(error) => {
                warn!(%error, "cannot read the jobs to close");
                continue;
            }
        };
        for job in jobs {
            let spec = &job.spec;
            let closed = async {
                if job.dead_letter {
                    if publisher.is_none() {
                        publisher = Some(Publisher::new(&app.broker).await?);
                    }
                    if let Some(p) = &publisher {
                        p.dead_letter_job(spec).await?;
                    }
                    app.store.mark_dead_lettered(job.job_id.clone()).await?;
                    warn!(job_id = %job.job_id, "dead-lettered a job whose attempts kept failing");
                }
                if job.reserved {
                    app.registry
                        .close_reservation(
                            &spec.model,
                            spec.output_version,
                            spec.id,
                            closing_state(job.state),
                        )
                        .await?;
                    app.registry
                        .delete_stray_attempts(&spec.model, spec.output_version)
                        .await?;
                }
                let prefix = keys::job_prefix(spec.id);
                for object in app.registry.store().list(&prefix).await? {
                    app.registry.store().delete(&object.key).await?;
                }
                anyhow::Ok(())
            }
            .await;
            match closed {
                Ok(()) => {
                    if let Err(error) = app.store.mark_closed(job.job_id.clone()).await {
                        warn!(%error, job_id = %job.job_id, "cannot record a closed job");
                    }
                }
                Err(error) => {
                    debug!(error = %format!("{error:#}"), job_id = %job.job_id, "cannot close an ended job yet");
                    // A broken channel is opened again next time.
                    publisher = None;
                }
            }
        }
    }
    if let Some(publisher) = publisher {
        publisher.close().await;
    }
}

/// Re-creates the jobs of open reservations the job store does not know (see the module docs).
/// Returns how many were recovered.
pub(super) async fn recover(app: &App) -> anyhow::Result<usize> {
    let deployment = app.broker.topology().prefix().to_owned();
    let (found, unreadable) = app.registry.reservations(&deployment).await?;
    if unreadable > 0 {
        warn!(unreadable, "reservations that do not parse were skipped");
    }
    let mut recovered = 0;
    for found in found {
        let id = found.reservation.job_id;
        let version = found.reservation.spec.output_version;
        let model = found.reservation.spec.model.clone();
        if app
            .store
            .recover(found.reservation, found.committed)
            .await?
        {
            recovered += 1;
            app.metrics.recovered_jobs.inc();
            warn!(
                job_id = %id,
                %model,
                %version,
                committed = found.committed,
                "recovered a job the job store did not know from its reservation"
            );
        }
    }
    if recovered > 0 {
        app.outbox_wake.notify_one();
    }
    Ok(recovered)
}
