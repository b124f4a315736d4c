//! Leases (DESIGN §6 "Ownership"): which attempt holds a job, and everything that moves a job
//! between attempts.
//!
//! - **Claim** ([`claim`]): a worker that took a delivery asks for the job. Granted to the first
//!   attempt while nobody holds a live lease, with the next **fencing token** (`fence`, one
//!   larger per grant) and the job's resume point; refused to any other (a duplicate delivery,
//!   an outbox republish, a job that is done, cancelled or being committed). A repeated claim of
//!   the holder gets the same grant again.
//! - **Holder**: every other event counts only when it carries the holder's attempt id and
//!   fence ([`is_holder`]); it renews the lease (`lease_secs` from when the coordinator received
//!   it: the workers' clocks play no part).
//! - **Adoption** ([`adoptable`], [`adopt`]): a running attempt whose grant this store does not
//!   remember (the store was lost and recovered from the reservations, or is an older copy that
//!   took over from another coordinator) keeps the job if nobody holds a live lease here and its
//!   fence is above every fence this store granted. Only liveness events (`started`,
//!   `progress`, `heartbeat`, `checkpointed`) adopt; a result never does. It is the claim the
//!   attempt would have made, so a job keeps running across a lost store instead of restarting.
//! - **Lapse** ([`expire`]): a lease not renewed in time is let go, counted as a failure (the
//!   worker crashed, or was cut off), and the job is queued again (published anew) or, at
//!   `max_failures`, marked dead. A `released` from the holder (a worker shutting down) queues
//!   it again without counting; a transient `failed` counts like a lapse.
//!
//! All of it runs in the caller's transaction, so a grant, a renewal and a lapse of one job are
//! serialised by the job store.

use chrono::{DateTime, Utc};
use refit_proto::wire::JobState;
use refit_proto::{AttemptId, Control, JobId, ResumePoint};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{StoreError, parse_ts_opt, ts};

/// The lease rules' settings (`coordinator.lease_secs`, `coordinator.max_failures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lasts without an event from its holder.
    pub lease_secs: u64,
    /// Lapsed leases and transient failures a job may have; the next one makes it dead.
    pub max_failures: u32,
}

/// The lease columns of a job.
#[derive(Clone, Debug)]
pub(super) struct LeaseRow {
    pub state: JobState,
    pub cancel_requested: bool,
    pub attempt: Option<AttemptId>,
    pub fence: u64,
    pub expires_at: Option<DateTime<Utc>>,
    pub committing: bool,
    pub failures: u32,
    pub resume: Option<ResumePoint>,
}

pub(super) fn lease_row(tx: &Transaction<'_>, id: &str) -> Result<Option<LeaseRow>, StoreError> {
    let row = tx
        .query_row(
            "SELECT state, cancel_requested, lease_attempt, fence, lease_expires_at, \
             commit_attempt IS NOT NULL, failures, resume FROM jobs WHERE id = ?1",
            params![id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, bool>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            },
        )
        .optional()?;
    let Some((state, cancel, attempt, fence, expires, committing, failures, resume)) = row else {
        return Ok(None);
    };
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("jobs.{what} of {id}: {e}"))
    };
    Ok(Some(LeaseRow {
        state: state.parse().map_err(|e| corrupt("state", &e))?,
        cancel_requested: cancel != 0,
        attempt: attempt
            .map(|a| a.parse().map_err(|e| corrupt("lease_attempt", &e)))
            .transpose()?,
        fence: u64::try_from(fence).unwrap_or(0),
        expires_at: parse_ts_opt(expires)?,
        committing,
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        resume: resume
            .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("resume", &e)))
            .transpose()?,
    }))
}

/// Whether an event of `attempt` with `fence` comes from the job's lease holder.
pub(super) fn is_holder(row: &LeaseRow, attempt: AttemptId, fence: Option<u64>) -> bool {
    row.attempt == Some(attempt) && fence == Some(row.fence)
}

/// Whether nobody holds a live lease on the job at `now`.
fn unheld(row: &LeaseRow, now: DateTime<Utc>) -> bool {
    row.attempt.is_none() || row.expires_at.is_none_or(|at| at <= now)
}

/// Whether an event of an attempt that is not the holder may adopt the job (see the module
/// docs): the job is open, nobody holds a live lease, and `fence` is above every fence granted.
pub(super) fn adoptable(row: &LeaseRow, fence: Option<u64>, now: DateTime<Utc>) -> bool {
    !row.state.is_final()
        && !row.cancel_requested
        && !row.committing
        && unheld(row, now)
        && fence.is_some_and(|f| f > row.fence)
}

/// Gives the lease to `attempt` with the `fence` it already holds (checked by [`adoptable`]); a
/// lapsed lease of another attempt is counted first, as a claim would.
pub(super) fn adopt(
    tx: &Transaction<'_>,
    id: &str,
    row: &LeaseRow,
    (attempt, worker, inbox, fence): (AttemptId, &str, Option<&str>, u64),
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<bool, StoreError> {
    if row.attempt.is_some() && lapse(tx, id, row, now, settings)? != Lapse::Requeued {
        return Ok(false);
    }
    hold(tx, id, (attempt, worker, inbox, fence), now, settings)?;
    super::events::coordinator_event(
        tx,
        id,
        "lease_adopted",
        serde_json::json!({ "attempt_id": attempt.to_string(), "fence": fence, "worker": worker }),
        now,
    )?;
    Ok(true)
}

fn expiry(now: DateTime<Utc>, settings: LeaseSettings) -> String {
    let secs = i64::try_from(settings.lease_secs).unwrap_or(i64::MAX / 4);
    ts(now + chrono::Duration::seconds(secs))
}

/// What a claim got.
pub(super) enum ClaimOutcome {
    /// The attempt holds the lease; answer with this.
    Granted(Control),
    /// Refused, for this reason.
    Refused(String),
}

/// Grants or refuses `attempt`'s claim of job `id` (see the module docs). `inbox` is where the
/// worker reads its answers.
pub(super) fn claim(
    tx: &Transaction<'_>,
    id: &str,
    row: &LeaseRow,
    (attempt, worker, inbox): (AttemptId, &str, Option<&str>),
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<ClaimOutcome, StoreError> {
    let job_id: JobId = id
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("job id {id}: {e}")))?;
    if row.state.is_final() {
        return Ok(ClaimOutcome::Refused(format!("the job is {}", row.state)));
    }
    if row.cancel_requested {
        return Ok(ClaimOutcome::Refused("the job is cancelled".into()));
    }
    if row.committing {
        return Ok(ClaimOutcome::Refused(
            "another attempt finished the job; its version is being committed".into(),
        ));
    }
    let grant = |fence: u64| Control::Granted {
        job_id,
        attempt_id: attempt,
        fence,
        lease_secs: settings.lease_secs,
        resume: row.resume.clone(),
    };
    if row.attempt == Some(attempt) {
        // A repeated claim (its answer was lost): the same grant again.
        tx.execute(
            "UPDATE jobs SET lease_inbox = COALESCE(?2, lease_inbox), lease_expires_at = ?3 \
             WHERE id = ?1",
            params![id, inbox, expiry(now, settings)],
        )?;
        return Ok(ClaimOutcome::Granted(grant(row.fence)));
    }
    if !unheld(row, now) {
        return Ok(ClaimOutcome::Refused(
            "another attempt holds the job's lease".into(),
        ));
    }
    if row.attempt.is_some() {
        // A lapsed lease the sweep has not let go yet: it counts as the sweep would count it.
        if lapse(tx, id, row, now, settings)? != Lapse::Requeued {
            let state = lease_row(tx, id)?.map_or(JobState::Dead, |r| r.state);
            return Ok(ClaimOutcome::Refused(format!("the job is {state}")));
        }
    }
    let fence = row.fence + 1;
    hold(tx, id, (attempt, worker, inbox, fence), now, settings)?;
    Ok(ClaimOutcome::Granted(grant(fence)))
}

/// Gives the lease to `attempt` with `fence`, from `now`: the job runs. A holder proves the
/// broker had the job's message, whether or not its publish was recorded (the coordinator may
/// have died between the confirm and the record), so the job counts as published too.
fn hold(
    tx: &Transaction<'_>,
    id: &str,
    (attempt, worker, inbox, fence): (AttemptId, &str, Option<&str>, u64),
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET lease_attempt = ?2, lease_worker = ?3, lease_inbox = ?4, \
         lease_expires_at = ?5, fence = ?6, state = 'running', worker = ?3, \
         started_at = COALESCE(started_at, ?7), last_heartbeat_at = ?7, updated_at = ?7, \
         published_at = COALESCE(published_at, ?7) WHERE id = ?1",
        params![
            id,
            attempt.to_string(),
            worker,
            inbox,
            expiry(now, settings),
            i64::try_from(fence).unwrap_or(i64::MAX),
            ts(now),
        ],
    )?;
    Ok(())
}

/// Renews the holder's lease from `now`; a new inbox (after the worker reconnected) replaces
/// the old one.
pub(super) fn renew(
    tx: &Transaction<'_>,
    id: &str,
    inbox: Option<&str>,
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET lease_expires_at = ?2, lease_inbox = COALESCE(?3, lease_inbox), \
         last_heartbeat_at = ?4 WHERE id = ?1",
        params![id, expiry(now, settings), inbox, ts(now)],
    )?;
    Ok(())
}

/// Lets the lease go without a verdict (the holder ended the attempt itself).
pub(super) fn clear(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET lease_attempt = NULL, lease_worker = NULL, lease_inbox = NULL, \
         lease_expires_at = NULL WHERE id = ?1",
        params![id],
    )?;
    Ok(())
}

/// What happened to a job whose attempt ended without a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lapse {
    /// Queued again: the outbox publishes it anew.
    Requeued,
    /// Past `max_failures`: dead.
    Dead,
    /// A cancel was pending: cancelled.
    Cancelled,
}

/// Queues the job again (`queued`, unpublished), or ends it as cancelled when a cancel is
/// pending. Clears the lease.
pub(super) fn requeue(
    tx: &Transaction<'_>,
    id: &str,
    row: &LeaseRow,
    now: DateTime<Utc>,
) -> Result<Lapse, StoreError> {
    clear(tx, id)?;
    let now = ts(now);
    if row.cancel_requested {
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = COALESCE(finished_at, ?2), \
             updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        return Ok(Lapse::Cancelled);
    }
    tx.execute(
        "UPDATE jobs SET state = 'queued', published_at = NULL, updated_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(Lapse::Requeued)
}

/// Counts a failure of the attempt (a lapsed lease, a transient failure, an upload that cannot
/// be committed) and queues the job again, or marks it dead at `max_failures`.
pub(super) fn lapse(
    tx: &Transaction<'_>,
    id: &str,
    row: &LeaseRow,
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<Lapse, StoreError> {
    let failures = row.failures.saturating_add(1);
    tx.execute(
        "UPDATE jobs SET failures = ?2 WHERE id = ?1",
        params![id, i64::from(failures)],
    )?;
    if failures >= settings.max_failures && !row.cancel_requested {
        clear(tx, id)?;
        let now = ts(now);
        tx.execute(
            "UPDATE jobs SET state = 'dead', finished_at = ?2, updated_at = ?2, dead_letter = 1, \
             error = COALESCE(error || ' — ', '') || ?3 WHERE id = ?1",
            params![
                id,
                now,
                format!(
                    "{failures} attempts crashed, were cut off or failed transiently (limit \
                     coordinator.max_failures = {})",
                    settings.max_failures
                )
            ],
        )?;
        return Ok(Lapse::Dead);
    }
    requeue(tx, id, row, now)
}

/// A lease that lapsed, for [`super::Store::expire_leases`]'s caller.
#[derive(Clone, Debug)]
pub struct Expired {
    /// The job.
    pub job_id: String,
    /// The attempt that held it.
    pub attempt: AttemptId,
    /// Its worker's inbox, to tell it (if it is there to hear).
    pub inbox: Option<String>,
    /// What became of the job.
    pub lapse: Lapse,
}

/// Lets go of every lease that lapsed before `now` (see [`lapse`]).
pub(super) fn expire(
    tx: &Transaction<'_>,
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<Vec<Expired>, StoreError> {
    let due: Vec<(String, Option<String>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, lease_inbox FROM jobs WHERE lease_attempt IS NOT NULL AND \
             commit_attempt IS NULL AND lease_expires_at < ?1 AND state IN ('running', 'stalled')",
        )?;
        stmt.query_map(params![ts(now)], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (id, inbox) in due {
        let Some(row) = lease_row(tx, &id)? else {
            continue;
        };
        let Some(attempt) = row.attempt else { continue };
        let lapse = lapse(tx, &id, &row, now, settings)?;
        super::events::coordinator_event(
            tx,
            &id,
            "lease_lapsed",
            serde_json::json!({
                "attempt_id": attempt.to_string(),
                "fence": row.fence,
                "outcome": format!("{lapse:?}").to_lowercase(),
            }),
            now,
        )?;
        out.push(Expired {
            job_id: id,
            attempt,
            inbox,
            lapse,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_attempt_with_the_current_fence_is_the_holder() {
        let attempt = AttemptId::new();
        let row = LeaseRow {
            state: JobState::Running,
            cancel_requested: false,
            attempt: Some(attempt),
            fence: 3,
            expires_at: None,
            committing: false,
            failures: 0,
            resume: None,
        };
        assert!(is_holder(&row, attempt, Some(3)));
        assert!(!is_holder(&row, attempt, Some(2)));
        assert!(!is_holder(&row, attempt, None));
        assert!(!is_holder(&row, AttemptId::new(), Some(3)));
    }
}
