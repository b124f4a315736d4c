//! The outbox publisher: the one place jobs and cancels reach the broker.
//!
//! A submitted job is first stored (`published_at` NULL). Here its reservation is written to the
//! object store (`models/<m>/v<N>/job.json`, once), then it is published with a confirm, then
//! marked published. A crash before the confirm leaves it in the outbox, and the next run
//! publishes it; a crash after the confirm but before the mark publishes it a second time: the
//! duplicate's claim is refused (one lease per job), so it never trains twice. A job queued again
//! after its attempt let it go (`store::leases`) is published anew the same way. Cancels go to the
//! inbox of the attempt that holds the job. Only the active coordinator publishes.
//!
//! An outage (no connection, a timeout) stops a pass, and the next one starts over. A refusal
//! that is about one job (its pool's queue exists with other arguments, a permission is
//! missing) holds back that job only: it is retried with backoff and fails after
//! `coordinator.publish_attempts` refusals with the broker's reason.

use std::collections::HashSet;
use std::time::Duration;

use refit_io::queue::{Publisher, QueueError, close_channel};
use refit_io::registry::RegistryError;
use refit_proto::reservation::Reservation;
use refit_proto::{Control, JobId, JobSpec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::App;

/// Jobs published per pass.
const BATCH: u32 = 100;

struct Link {
    publisher: Publisher,
    /// Pools whose job queue has been declared on this connection.
    pools: HashSet<String>,
}

/// Publishes the outbox until `shutdown`; woken by `app.outbox_wake` and every
/// `outbox_interval_ms`.
pub(super) async fn run(app: App, shutdown: CancellationToken) {
    let interval = Duration::from_millis(app.config.coordinator.outbox_interval_ms);
    let mut link: Option<Link> = None;
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if !app.is_active() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => continue,
            }
        }
        match drain(&app, &mut link).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                // Log the first failure and then every tenth, not every tick of an outage.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(%error, failures, "outbox: cannot publish; will retry");
                }
                link = None;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = app.outbox_wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
    if let Some(link) = link {
        link.publisher.close().await;
    }
    debug!("outbox stopped");
}

async fn connect(app: &App) -> Result<Link, QueueError> {
    let channel = app.broker.channel().await?;
    let topology = app.broker.topology();
    topology.declare(&channel).await?;
    topology.declare_coordinator(&channel).await?;
    close_channel(&channel, "declarations").await;
    let publisher = Publisher::new(&app.broker).await?;
    Ok(Link {
        publisher,
        pools: HashSet::from([topology.pool().to_owned()]),
    })
}

async fn drain(app: &App, link: &mut Option<Link>) -> anyhow::Result<()> {
    let jobs = app.store.outbox(BATCH).await?;
    let cancels = app.store.pending_cancels().await?;
    app.metrics.outbox_jobs.set(jobs.len() as i64);
    if jobs.is_empty() && cancels.is_empty() {
        return Ok(());
    }
    if link.is_none() {
        *link = Some(connect(app).await?);
    }
    let Link { publisher, pools } = link.as_mut().expect("connected above");
    let fetched = jobs.len();
    for job in jobs {
        let (id, pool, spec) = (job.id, job.pool, job.spec);
        let spec = if job.reserved {
            spec
        } else {
            reserve(app, &id, spec, &pool).await?
        };
        let published = async {
            if !pools.contains(&pool) {
                let channel = app.broker.channel().await?;
                let declared = app
                    .broker
                    .topology()
                    .declare_job_queue(&channel, &pool)
                    .await;
                close_channel(&channel, "declarations").await;
                declared?;
                pools.insert(pool.clone());
            }
            publisher.publish_job_to(&pool, &spec).await
        }
        .await;
        match published {
            Ok(()) => {}
            // The broker's answer is about this job (its pool's queue was declared with other
            // arguments, a permission is missing): hold it back and go on with the others.
            Err(error) if !error.is_transient() => {
                refused(app, &id, &pool, &error).await?;
                continue;
            }
            Err(error) => {
                app.store.publish_failed(id.clone()).await?;
                return Err(error.into());
            }
        }
        super::fault::maybe_exit_after_publish();
        app.store.mark_published(id.clone()).await?;
        info!(job_id = %id, model = %spec.model, version = %spec.output_version, %pool, "job published");
    }
    for (id, inbox) in cancels {
        let job_id: JobId = id
            .parse()
            .map_err(|e| anyhow::anyhow!("stored job id {id:?}: {e}"))?;
        // No holder: nobody to tell (a queued job is cancelled at once, and claims are refused).
        if let Some(inbox) = inbox {
            publisher
                .send_control(&inbox, &Control::Cancel { job_id })
                .await?;
            info!(job_id = %id, "cancel sent to the attempt holding the job");
        }
        app.store.set_cancel_published(id.clone(), true).await?;
    }
    if fetched < BATCH as usize {
        app.metrics.outbox_jobs.set(0);
    } else {
        // A full batch: more may wait; the next pass (woken at once) counts them.
        app.outbox_wake.notify_one();
    }
    Ok(())
}

/// Writes the reservation of an unpublished job's version number, first moving the job to a
/// free number if the object store holds another job's reservation or manifest there (a second
/// coordinator numbered a job without knowing of this one). Returns the job's message with the
/// number it keeps.
async fn reserve(app: &App, id: &str, mut spec: JobSpec, pool: &str) -> anyhow::Result<JobSpec> {
    while let Some(owner) = number_taken(app, &spec).await? {
        let latest = app.registry.highest_taken(&spec.model).await?;
        let from = spec.output_version;
        spec = app
            .store
            .renumber(id.to_owned(), latest)
            .await?
            .ok_or_else(|| anyhow::anyhow!("job {id} was reserved or removed meanwhile"))?;
        warn!(
            job_id = %id, model = %spec.model, %from, to = %spec.output_version, %owner,
            "the version number is another job's in the object store; the job takes the next free one"
        );
    }
    app.registry
        .reserve(&Reservation::open(
            spec.clone(),
            app.broker.topology().prefix().to_owned(),
            pool.to_owned(),
        ))
        .await?;
    app.store.mark_reserved(id.to_owned()).await?;
    Ok(spec)
}

/// Who else holds `spec`'s version number in the object store, if anyone: another job's
/// reservation or manifest (a manifest that does not parse counts as taken).
async fn number_taken(app: &App, spec: &JobSpec) -> anyhow::Result<Option<String>> {
    let (model, version) = (&spec.model, spec.output_version);
    if let Some(reservation) = app.registry.reservation(model, version).await? {
        return Ok((reservation.job_id != spec.id).then(|| reservation.job_id.to_string()));
    }
    match app.registry.manifest(model, version).await {
        Ok(manifest) if manifest.job_id == Some(spec.id) => Ok(None),
        Ok(manifest) => Ok(Some(manifest.job_id.map_or_else(
            || "a version written without a job".to_owned(),
            |j| j.to_string(),
        ))),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(RegistryError::Corrupt { .. }) => Ok(Some("a manifest that does not parse".into())),
        Err(error) => Err(error.into()),
    }
}

/// Records the broker's refusal of a job: retried with backoff, failed after
/// `coordinator.publish_attempts` refusals.
async fn refused(app: &App, id: &str, pool: &str, error: &QueueError) -> anyhow::Result<()> {
    let settings = &app.config.coordinator;
    let failed = app
        .store
        .publish_refused(
            id.to_owned(),
            error.to_string(),
            settings.publish_attempts,
            Duration::from_millis(settings.outbox_interval_ms),
        )
        .await?;
    if failed {
        warn!(
            job_id = %id, %pool, %error,
            "the broker keeps refusing the job; it failed"
        );
    } else {
        warn!(
            job_id = %id, %pool, %error,
            "the broker refused the job; retrying it later, the others go on"
        );
    }
    Ok(())
}
