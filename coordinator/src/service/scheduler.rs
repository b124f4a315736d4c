//! Scheduled retraining (`[[schedule]]`, DESIGN §4).
//!
//! Every `scheduler_tick_secs` each schedule's latest cron slot at or before now is compared with
//! the slot it last ran for (kept in the job store). A newer slot runs once, however many slots
//! were missed while the coordinator was down. A schedule seen for the first time starts from the
//! current slot without running it.
//!
//! A run reads the object at the schedule's `dataset` key and skips when its sha256 is that of
//! the model's latest version (or of a job still queued or running); otherwise it stores a
//! content-addressed copy and submits an `auto` job with the schedule's policy, forcing a scratch
//! run after `full_retrain_every` fine-tunes in a row.
//!
//! Only the active coordinator runs schedules (a standby would submit the same runs again);
//! one that becomes active catches up on a missed slot as after downtime.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refit_io::storage::StorageError;
use refit_proto::ModelName;
use refit_proto::keys::{self, sha256_hex};
use refit_proto::wire::{DatasetBody, SubmitRequest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{App, SubmitError};
use crate::config::{ScheduleConfig, dataset_extension};
use crate::store::ScheduleRun;

/// Runs the schedules until `shutdown`.
pub(super) async fn run(app: App, shutdown: CancellationToken) {
    if app.config.schedule.is_empty() {
        return;
    }
    let tick = Duration::from_secs(app.config.coordinator.scheduler_tick_secs);
    loop {
        for schedule in app.config.schedule.iter().filter(|_| app.is_active()) {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(error) = tick_one(&app, schedule, Utc::now()).await {
                warn!(schedule = %schedule.name, %error, "schedule tick failed; will retry");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
    }
}

/// The latest slot of `schedule` at or before `now`.
fn latest_slot(schedule: &ScheduleConfig, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let cron = schedule.cron().map_err(anyhow::Error::msg)?;
    Ok(cron.find_previous_occurrence(&now, true)?)
}

async fn tick_one(app: &App, schedule: &ScheduleConfig, now: DateTime<Utc>) -> anyhow::Result<()> {
    let slot = latest_slot(schedule, now)?;
    let last = app.store.schedule_run(schedule.name.clone()).await?;
    let Some(last) = last else {
        info!(schedule = %schedule.name, %slot, "schedule registered; it runs from its next slot");
        let baseline = ScheduleRun {
            slot,
            outcome: "registered".into(),
            job_id: None,
        };
        app.store
            .record_schedule_run(schedule.name.clone(), baseline)
            .await?;
        return Ok(());
    };
    if slot <= last.slot {
        return Ok(());
    }
    let (outcome, job_id) = match run_once(app, schedule).await {
        Ok(result) => result,
        Err(RunError::Transient(error)) => {
            // Not recorded: the next tick tries this slot again.
            app.metrics
                .schedule_runs
                .with_label_values(&[schedule.name.as_str(), "error"])
                .inc();
            return Err(error);
        }
        Err(RunError::Permanent(error)) => {
            warn!(schedule = %schedule.name, %error, "scheduled run failed");
            ("error".to_owned(), None)
        }
    };
    app.metrics
        .schedule_runs
        .with_label_values(&[schedule.name.as_str(), outcome.as_str()])
        .inc();
    info!(schedule = %schedule.name, %slot, %outcome, job_id = ?job_id, "scheduled run");
    app.store
        .record_schedule_run(
            schedule.name.clone(),
            ScheduleRun {
                slot,
                outcome,
                job_id,
            },
        )
        .await?;
    Ok(())
}

enum RunError {
    /// Retry at the next tick (the store or broker is away).
    Transient(anyhow::Error),
    /// Give up on this slot (bad data, a missing dataset).
    Permanent(anyhow::Error),
}

impl From<SubmitError> for RunError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Storage(s) if s.is_transient() => RunError::Transient(s.into()),
            SubmitError::Store(s) => RunError::Transient(s.into()),
            other => RunError::Permanent(other.into()),
        }
    }
}

/// Copies `key` to its content address; returns the dataset reference.
async fn content_address(app: &App, key: &str) -> Result<(DatasetBody, String), RunError> {
    let transient = |e: StorageError| {
        if e.is_transient() {
            RunError::Transient(e.into())
        } else {
            RunError::Permanent(anyhow::anyhow!("cannot read {key}: {e}"))
        }
    };
    // Never more than the limit in memory: a huge file is refused from its size, and read
    // bounded in case it grows between the two requests.
    let max = app.config.coordinator.max_dataset_bytes;
    let too_large = |size: u64| {
        RunError::Permanent(anyhow::anyhow!(
            "{key} is {size} bytes; the limit is {max} (coordinator.max_dataset_bytes)"
        ))
    };
    match app.objects.head(key).await.map_err(transient)? {
        Some(meta) if meta.size > max => return Err(too_large(meta.size)),
        Some(_) => {}
        None => {
            return Err(RunError::Permanent(anyhow::anyhow!(
                "cannot read {key}: it does not exist"
            )));
        }
    }
    let bytes: Bytes = match app.objects.get_at_most(key, max).await {
        Ok(bytes) => bytes,
        Err(StorageError::TooLarge { size, .. }) => {
            return Err(too_large(size.unwrap_or(max + 1)));
        }
        Err(e) => return Err(transient(e)),
    };
    let sha = sha256_hex(&bytes);
    let ext = dataset_extension(key).map_err(|e| RunError::Permanent(anyhow::anyhow!(e)))?;
    let address = keys::dataset(&sha, ext).map_err(|e| RunError::Permanent(e.into()))?;
    if app
        .objects
        .head(&address)
        .await
        .map_err(transient)?
        .is_none()
    {
        app.objects.put(&address, bytes).await.map_err(transient)?;
    }
    Ok((
        DatasetBody {
            key: address,
            sha256: sha.clone(),
        },
        sha,
    ))
}

async fn run_once(
    app: &App,
    schedule: &ScheduleConfig,
) -> Result<(String, Option<String>), RunError> {
    let model =
        ModelName::new(schedule.model.clone()).map_err(|e| RunError::Permanent(e.into()))?;
    let (dataset, sha) = content_address(app, &schedule.dataset).await?;
    let versions = app
        .registry
        .versions(&model)
        .await
        .map_err(|e| RunError::Transient(e.into()))?;
    let latest = match versions.last() {
        Some(v) => Some(
            app.registry
                .manifest(&model, *v)
                .await
                .map_err(|e| RunError::Transient(e.into()))?,
        ),
        None => None,
    };
    if latest.as_ref().is_some_and(|m| m.data.sha256 == sha) {
        return Ok(("skipped_unchanged".into(), None));
    }
    if let Some(job) = app
        .store
        .active_job_on(schedule.model.clone(), sha.clone())
        .await
        .map_err(|e| RunError::Transient(e.into()))?
    {
        return Ok(("skipped_active".into(), Some(job)));
    }
    let eval_dataset = match &schedule.eval_dataset {
        Some(key) => Some(content_address(app, key).await?.0),
        None => None,
    };
    let force_scratch = schedule.full_retrain_every > 0
        && latest
            .as_ref()
            .is_some_and(|m| m.finetune_depth >= schedule.full_retrain_every);
    let request = SubmitRequest {
        model: schedule.model.clone(),
        dataset: Some(dataset),
        eval_dataset,
        policy: Some(schedule.policy),
        epochs: schedule.epochs,
        epoch_fraction: schedule.epoch_fraction,
        pool: schedule.pool.clone(),
        promote_to: schedule.promote_to.clone(),
        ..SubmitRequest::default()
    };
    match app
        .submit(&request, Some(schedule.name.clone()), force_scratch)
        .await
    {
        Ok((job, report)) => {
            let outcome = if force_scratch {
                "submitted_full_retrain".to_owned()
            } else {
                format!("submitted_{}", report.decision.as_str())
            };
            Ok((outcome, Some(job.view.id)))
        }
        Err(SubmitError::Rejected(report)) => {
            warn!(
                schedule = %schedule.name,
                reasons = %report.codes().join(","),
                "scheduled run rejected: the labels changed and the policy is reject"
            );
            Ok(("rejected".into(), None))
        }
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str) -> ScheduleConfig {
        ScheduleConfig {
            name: "s".into(),
            model: "m".into(),
            dataset: "in/nlu.yml".into(),
            eval_dataset: None,
            cron: cron.into(),
            policy: refit_proto::decision::Policy::Reject,
            full_retrain_every: 5,
            epoch_fraction: None,
            epochs: None,
            pool: None,
            promote_to: None,
        }
    }

    #[test]
    fn the_latest_slot_is_at_or_before_now_whatever_was_missed() {
        let now: DateTime<Utc> = "2026-11-27T10:17:30Z".parse().unwrap();
        let nightly = latest_slot(&schedule("0 3 * * *"), now).unwrap();
        assert_eq!(
            nightly,
            "2026-11-27T03:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let minutely = latest_slot(&schedule("* * * * *"), now).unwrap();
        assert_eq!(
            minutely,
            "2026-11-27T10:17:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let seconds = latest_slot(&schedule("*/10 * * * * *"), now).unwrap();
        assert_eq!(
            seconds,
            "2026-11-27T10:17:30Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
