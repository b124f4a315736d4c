//! The end of a job's life in the store: versions waiting to be committed and their outcome,
//! ended jobs waiting to be closed in the object store, and jobs recovered from reservations.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refit_proto::reservation::{Reservation, ReservationState};
use refit_proto::wire::JobState;
use refit_proto::{Alias, AttemptId, JobSpec, Mode, ModelName, Version, decode, encode};
use rusqlite::{OptionalExtension, params};

use super::leases::{self, Lapse, LeaseSettings};
use super::{Store, StoreError, ts};

/// A version a lease holder reported uploaded, to commit.
#[derive(Clone, Debug)]
pub struct PendingCommit {
    /// The job.
    pub job_id: String,
    /// Its message (model, version, data, base).
    pub spec: JobSpec,
    /// The attempt whose upload it is.
    pub attempt: AttemptId,
    /// Its draft manifest's sha256.
    pub draft_sha256: String,
}

/// An ended job whose reservation is not closed yet.
#[derive(Clone, Debug)]
pub struct Closing {
    /// The job.
    pub job_id: String,
    /// Its message.
    pub spec: JobSpec,
    /// How it ended.
    pub state: JobState,
    /// The attempt whose files are the version, for a committed job.
    pub committed: Option<AttemptId>,
    /// Whether its reservation was written (else there is nothing in the store to close).
    pub reserved: bool,
    /// Dead by the lease rules (its attempts kept crashing): its message goes to the
    /// dead-letter exchange when it is closed.
    pub dead_letter: bool,
}

fn spec_of(bytes: &[u8]) -> Result<JobSpec, StoreError> {
    decode(bytes).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))
}

fn attempt_of(text: &str) -> Result<AttemptId, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("attempt id: {e}")))
}

/// A succeeded job whose `promote_to` is not carried out yet.
#[derive(Clone, Debug)]
pub struct PendingPromotion {
    /// The job.
    pub job_id: String,
    /// Its model.
    pub model: ModelName,
    /// The alias to move.
    pub alias: Alias,
    /// Its version.
    pub version: Version,
}

impl Store {
    /// Succeeded jobs with a `promote_to` and no promotion recorded, oldest first.
    pub async fn pending_promotions(&self) -> Result<Vec<PendingPromotion>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, model, promote_to, version FROM jobs WHERE state = 'succeeded' \
                 AND promote_to IS NOT NULL AND promotion IS NULL ORDER BY finished_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (job_id, model, alias, version) = row?;
                let corrupt = |what: &str, e: &dyn std::fmt::Display| {
                    StoreError::Corrupt(format!("job {job_id} {what}: {e}"))
                };
                out.push(PendingPromotion {
                    model: ModelName::new(model).map_err(|e| corrupt("model", &e))?,
                    alias: Alias::new(alias).map_err(|e| corrupt("promote_to", &e))?,
                    version: u32::try_from(version)
                        .ok()
                        .and_then(|v| Version::new(v).ok())
                        .ok_or_else(|| corrupt("version", &version))?,
                    job_id,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Versions to commit, oldest first.
    pub async fn pending_commits(&self) -> Result<Vec<PendingCommit>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, spec, commit_attempt, commit_draft FROM jobs WHERE \
                 commit_attempt IS NOT NULL AND state IN ('running', 'stalled') \
                 ORDER BY submitted_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (job_id, spec, attempt, draft_sha256) = row?;
                out.push(PendingCommit {
                    job_id,
                    spec: spec_of(&spec)?,
                    attempt: attempt_of(&attempt)?,
                    draft_sha256,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The version is committed: the job succeeded. Returns its seconds since submission
    /// (`None` when it had already ended).
    pub async fn commit_succeeded(
        &self,
        job_id: String,
    ) -> Result<Option<(f64, BTreeMap<String, f64>)>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let now = Utc::now();
            let Some(job) = super::jobs::get_job(&tx, &job_id)? else {
                return Ok(None);
            };
            if job.view.state.is_final() {
                return Ok(None);
            }
            let mut progress = job.view.progress.clone().unwrap_or_default();
            progress.phase = Some("done".into());
            if progress.total_epochs > 0.0 {
                progress.epoch = progress.total_epochs;
            }
            leases::clear(&tx, &job_id)?;
            // The worker's phases, and the wait from the submit to the first lease.
            let mut timings = job.view.timings.clone();
            if let Some(started) = job.view.started_at {
                let wait = (started - job.view.submitted_at).num_milliseconds().max(0);
                timings.insert("queue_wait".to_owned(), wait as f64 / 1000.0);
            }
            tx.execute(
                "UPDATE jobs SET state = 'succeeded', error = NULL, finished_at = ?2, \
                 updated_at = ?2, progress = ?3, timings = ?4 WHERE id = ?1",
                params![
                    job_id,
                    ts(now),
                    serde_json::to_string(&progress).expect("progress serialises"),
                    serde_json::to_string(&timings).expect("timings serialise"),
                ],
            )?;
            let since = since_submitted(&tx, &job_id, now)?;
            tx.commit()?;
            Ok(Some((since, timings)))
        })
        .await
    }

    /// The attempt's upload cannot be committed (`retry`: another attempt may do better; the
    /// failure counts as a lapse) or the job cannot have its version at all (not `retry`: it
    /// fails). Returns what became of the job.
    pub async fn commit_failed(
        &self,
        job_id: String,
        reason: String,
        retry: bool,
        settings: LeaseSettings,
    ) -> Result<Option<JobState>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let now = Utc::now();
            tx.execute(
                "UPDATE jobs SET commit_attempt = NULL, commit_draft = NULL, error = ?2 \
                 WHERE id = ?1",
                params![job_id, reason],
            )?;
            let Some(row) = leases::lease_row(&tx, &job_id)? else {
                return Ok(None);
            };
            let state = if retry {
                match leases::lapse(&tx, &job_id, &row, now, settings)? {
                    Lapse::Requeued => JobState::Queued,
                    Lapse::Dead => JobState::Dead,
                    Lapse::Cancelled => JobState::Cancelled,
                }
            } else {
                leases::clear(&tx, &job_id)?;
                tx.execute(
                    "UPDATE jobs SET state = 'failed', finished_at = ?2 WHERE id = ?1",
                    params![job_id, ts(now)],
                )?;
                JobState::Failed
            };
            tx.commit()?;
            Ok(Some(state))
        })
        .await
    }

    /// Ended jobs whose reservation and files are not closed yet, oldest first.
    pub async fn closing(&self, limit: u32) -> Result<Vec<Closing>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, spec, state, commit_attempt, reserved, dead_letter FROM jobs \
                 WHERE closed = 0 AND \
                 state IN ('succeeded', 'failed', 'cancelled', 'dead') ORDER BY finished_at \
                 LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![i64::from(limit)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (job_id, spec, state, committed, reserved, dead_letter) = row?;
                let state: JobState = state
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("state: {e}")))?;
                out.push(Closing {
                    job_id,
                    spec: spec_of(&spec)?,
                    committed: match (state, committed) {
                        (JobState::Succeeded, Some(a)) => Some(attempt_of(&a)?),
                        _ => None,
                    },
                    state,
                    reserved,
                    dead_letter,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The job's reservation is closed and its leftovers deleted.
    pub async fn mark_closed(&self, job_id: String) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute("UPDATE jobs SET closed = 1 WHERE id = ?1", params![job_id])?;
            Ok(())
        })
        .await
    }

    /// The dead job's message is in the dead-letter exchange (it is not sent again).
    pub async fn mark_dead_lettered(&self, job_id: String) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE jobs SET dead_letter = 0 WHERE id = ?1",
                params![job_id],
            )?;
            Ok(())
        })
        .await
    }

    /// The job's reservation is in the object store: it may be published.
    pub async fn mark_reserved(&self, job_id: String) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE jobs SET reserved = 1 WHERE id = ?1",
                params![job_id],
            )?;
            Ok(())
        })
        .await
    }

    /// Adds a job found in the object store's reservations that this store does not know (it
    /// was lost). An open reservation of an uncommitted version becomes a queued job (published
    /// again); a committed one a succeeded job. Its decision report and events are gone. Returns
    /// whether it was added.
    pub async fn recover(
        &self,
        reservation: Reservation,
        committed: bool,
    ) -> Result<bool, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let spec = reservation.spec;
            let id = spec.id.to_string();
            let known: Option<String> = tx
                .query_row("SELECT id FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let taken: Option<String> = tx
                .query_row(
                    "SELECT id FROM jobs WHERE model = ?1 AND version = ?2",
                    params![spec.model.as_str(), i64::from(spec.output_version.get())],
                    |r| r.get(0),
                )
                .optional()?;
            if known.is_some() || taken.is_some() {
                return Ok(false);
            }
            let (state, closed) = match (committed, reservation.state) {
                // Closed already: only the record comes back.
                (true, ReservationState::Succeeded) => ("succeeded", true),
                (true, _) => ("succeeded", false),
                (false, ReservationState::Open) => ("queued", false),
                // Ended without a version: nothing to run, nothing to close.
                (false, _) => return Ok(false),
            };
            let now = ts(Utc::now());
            tx.execute(
                "INSERT INTO jobs (id, model, version, base_version, mode, requested_mode, pool, \
                 state, spec, dataset_key, dataset_sha256, submitted_at, updated_at, reserved, \
                 closed, error, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, 1, ?13, ?14, ?15)",
                params![
                    id,
                    spec.model.as_str(),
                    i64::from(spec.output_version.get()),
                    spec.base_version.map(|v| i64::from(v.get())),
                    if spec.mode == Mode::Auto {
                        Mode::Auto.as_str()
                    } else {
                        spec.mode.as_str()
                    },
                    reservation.pool,
                    state,
                    encode(&spec),
                    spec.dataset.key,
                    spec.dataset.sha256,
                    ts(spec.submitted_at),
                    now,
                    i64::from(closed),
                    "recovered from its reservation after the job store was lost",
                    (state == "succeeded").then(|| now.clone()),
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

fn since_submitted(
    tx: &rusqlite::Transaction<'_>,
    job_id: &str,
    now: DateTime<Utc>,
) -> Result<f64, StoreError> {
    let submitted: Option<String> = tx
        .query_row(
            "SELECT submitted_at FROM jobs WHERE id = ?1",
            params![job_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(submitted) = submitted else {
        return Ok(0.0);
    };
    let at = super::parse_ts(&submitted)?;
    Ok((now - at).num_milliseconds().max(0) as f64 / 1000.0)
}

/// The reservation state a final job state closes with.
pub fn closing_state(state: JobState) -> ReservationState {
    if state == JobState::Succeeded {
        ReservationState::Succeeded
    } else {
        ReservationState::Closed
    }
}
