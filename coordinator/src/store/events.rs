//! Recording worker events and moving job states:
//! `queued → running ⇄ stalled → succeeded | failed | cancelled | dead`, with `running` jobs going
//! back to `queued` when their attempt lets the job go (see `leases`).
//!
//! Only the lease holder's events count (its attempt id and fencing token, `leases::is_holder`);
//! a `claim` asks for the lease. Everything else is dropped and counted: events for jobs this
//! store does not know, events without an attempt id (workers older than leases), events of an
//! attempt that no longer holds the lease (answered with `revoked`, so that attempt stops).
//! Events arrive at least once: an event already recorded (same job, attempt, worker, type and
//! timestamp) changes nothing, and a final state is never left. Liveness (lease renewal,
//! `last_heartbeat_at`, workers' `last_seen_at`) uses the time the coordinator received the
//! event, never the worker's clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refit_proto::{
    AttemptId, Control, ErrorKind, Event, EventKind, JobId, WorkerState, WorkerStatus,
};
use rusqlite::{Connection, Transaction, params};

use super::jobs::get_job;
use super::leases::{self, ClaimOutcome, LeaseSettings};
use super::{Store, StoreError, parse_ts, ts};
use refit_proto::wire::{EventView, JobState, WorkerView};

/// What recording an event did, and what the caller should do next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventOutcome {
    /// False for a duplicate or a dropped event (nothing changed).
    pub recorded: bool,
    /// Why the event was dropped: `unknown_job`, `no_attempt` or `not_holder`.
    pub dropped: Option<&'static str>,
    /// The answer for the event's `reply_to` (the worker's inbox): a grant, a refusal, a
    /// revocation or a cancel.
    pub reply: Option<Control>,
    /// A claim was answered: `granted` or `refused`.
    pub claim: Option<&'static str>,
    /// The job reached this final state, after this many seconds since submission.
    pub finished: Option<(JobState, f64)>,
    /// The job's mode (`finetune`/`scratch`), for metrics labels.
    pub mode: Option<String>,
    /// The job was queued again: wake the outbox.
    pub requeued: bool,
    /// The holder reported its version uploaded: wake the committer.
    pub commit: bool,
    /// A running attempt this store did not know took the lease (`leases::adopt`).
    pub adopted: bool,
}

fn event_body(kind: &EventKind) -> serde_json::Value {
    let mut value = serde_json::to_value(kind).expect("events serialise to JSON");
    if let Some(map) = value.as_object_mut() {
        map.remove("type");
    }
    value
}

/// The events of a job after `after` (a `seq`), oldest first, at most `limit`, and whether more
/// follow.
pub(super) fn events_of(
    conn: &Connection,
    job_id: &str,
    after: i64,
    limit: u32,
) -> Result<(Vec<EventView>, bool), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, attempt, worker, kind, body, received_at, attempt_id FROM events \
         WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![job_id, after, i64::from(limit) + 1])?;
    let mut out = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next()? {
        if out.len() as u64 >= u64::from(limit) {
            more = true;
            break;
        }
        let body: String = row.get(5)?;
        out.push(EventView {
            seq: row.get(0)?,
            at: parse_ts(&row.get::<_, String>(1)?)?,
            received_at: parse_ts(&row.get::<_, String>(6)?)?,
            attempt: row.get(2)?,
            attempt_id: row.get(7)?,
            worker: row.get(3)?,
            kind: row.get(4)?,
            body: serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("event body: {e}")))?,
        });
    }
    Ok((out, more))
}

/// Records a coordinator-side event of a job (a lapsed lease), shown with the workers' ones.
pub(super) fn coordinator_event(
    tx: &Transaction<'_>,
    job_id: &str,
    kind: &str,
    body: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO events (job_id, attempt, worker, kind, at, body, received_at) \
         VALUES (?1, 0, 'coordinator', ?2, ?3, ?4, ?3)",
        params![job_id, kind, ts(now), body.to_string()],
    )?;
    Ok(())
}

/// The reply to an event of an attempt that does not hold the lease.
fn revoked(job_id: JobId, attempt: AttemptId, state: JobState) -> Control {
    let reason = if state.is_final() {
        format!("the job is {state}")
    } else {
        "this attempt does not hold the job's lease (it lapsed, or another attempt took the job)"
            .to_owned()
    };
    Control::Revoked {
        job_id,
        attempt_id: attempt,
        reason,
    }
}

fn apply(
    conn: &mut Connection,
    event: &Event,
    inbox: Option<&str>,
    now: DateTime<Utc>,
    settings: LeaseSettings,
) -> Result<EventOutcome, StoreError> {
    let tx = conn.transaction()?;
    let job_id = event.job_id.to_string();
    let mut outcome = EventOutcome::default();
    let Some(row) = leases::lease_row(&tx, &job_id)? else {
        outcome.dropped = Some("unknown_job");
        if let (EventKind::Claim, Some(attempt)) = (&event.kind, event.attempt_id) {
            outcome.claim = Some("refused");
            outcome.reply = Some(Control::Refused {
                job_id: event.job_id,
                attempt_id: attempt,
                reason: "the coordinator does not know this job".into(),
            });
        }
        return Ok(outcome);
    };
    let Some(attempt) = event.attempt_id else {
        outcome.dropped = Some("no_attempt");
        return Ok(outcome);
    };
    let worker = event.worker_id.as_str();
    if let EventKind::Claim = event.kind {
        let answer = leases::claim(&tx, &job_id, &row, (attempt, worker, inbox), now, settings)?;
        let (verdict, body) = match &answer {
            ClaimOutcome::Granted(Control::Granted { fence, .. }) => (
                "granted",
                serde_json::json!({ "granted": true, "fence": fence }),
            ),
            ClaimOutcome::Granted(_) => ("granted", serde_json::json!({ "granted": true })),
            ClaimOutcome::Refused(reason) => (
                "refused",
                serde_json::json!({ "granted": false, "reason": reason }),
            ),
        };
        outcome.claim = Some(verdict);
        outcome.reply = Some(match answer {
            ClaimOutcome::Granted(control) => control,
            ClaimOutcome::Refused(reason) => Control::Refused {
                job_id: event.job_id,
                attempt_id: attempt,
                reason,
            },
        });
        outcome.recorded = insert_event(&tx, event, body, now)?;
        if verdict == "granted" {
            seen(&tx, worker, &job_id, true, now)?;
        }
        tx.commit()?;
        return Ok(outcome);
    }
    // A `released` may come before the grant reached the worker (it shut down while claiming).
    let releasing_unfenced = matches!(event.kind, EventKind::Released { .. })
        && event.fence.is_none()
        && row.attempt == Some(attempt);
    let mut row = row;
    // An adoption that found another attempt's lapsed lease and ended the job (dead,
    // cancelled) changed the store even though the event is dropped.
    let mut ended_by_adoption = false;
    let alive_kind = matches!(
        event.kind,
        EventKind::Started { .. }
            | EventKind::Progress { .. }
            | EventKind::Heartbeat { .. }
            | EventKind::Checkpointed { .. }
    );
    if !leases::is_holder(&row, attempt, event.fence)
        && alive_kind
        && leases::adoptable(&row, event.fence, now)
    {
        let fence = event.fence.expect("adoptable checks the fence");
        outcome.adopted = leases::adopt(
            &tx,
            &job_id,
            &row,
            (attempt, worker, inbox, fence),
            now,
            settings,
        )?;
        ended_by_adoption = !outcome.adopted;
        row = leases::lease_row(&tx, &job_id)?.ok_or_else(|| {
            StoreError::Corrupt(format!("job {job_id} vanished while adopting its lease"))
        })?;
    }
    if !leases::is_holder(&row, attempt, event.fence) && !releasing_unfenced {
        if ended_by_adoption {
            tx.commit()?;
        }
        outcome.dropped = Some("not_holder");
        outcome.reply = Some(revoked(event.job_id, attempt, row.state));
        return Ok(outcome);
    }
    outcome.recorded = insert_event(&tx, event, event_body(&event.kind), now)?;
    if !outcome.recorded {
        tx.commit()?;
        return Ok(outcome);
    }
    let Some(job) = get_job(&tx, &job_id)? else {
        tx.commit()?;
        return Ok(outcome);
    };
    outcome.mode = Some(job.view.mode.as_str().to_owned());
    let state = job.view.state;
    let busy = !matches!(
        event.kind,
        EventKind::Succeeded { .. }
            | EventKind::Failed { .. }
            | EventKind::Cancelled
            | EventKind::Released { .. }
    );
    seen(&tx, worker, &job_id, busy, now)?;
    tx.execute(
        "UPDATE jobs SET attempts = MAX(attempts, ?2), updated_at = ?3 WHERE id = ?1",
        params![job_id, event.attempt, ts(now)],
    )?;
    if busy {
        leases::renew(&tx, &job_id, inbox, now, settings)?;
    }
    let alive = |tx: &Transaction<'_>| -> Result<(), StoreError> {
        if matches!(state, JobState::Running | JobState::Stalled) {
            tx.execute(
                "UPDATE jobs SET state = 'running' WHERE id = ?1",
                params![job_id],
            )?;
        }
        Ok(())
    };
    let mut progress = job.view.progress.clone().unwrap_or_default();
    let finished = |s: JobState| Some((s, seconds_since(&job.view, now)));
    match &event.kind {
        EventKind::Claim => unreachable!("claims are answered above"),
        EventKind::Started { total_epochs, .. } => {
            alive(&tx)?;
            if *total_epochs > 0.0 {
                progress.total_epochs = *total_epochs;
            }
            progress.phase = Some("download".into());
        }
        EventKind::Progress {
            epoch,
            step,
            loss,
            examples_per_sec,
            eta_secs,
        } => {
            alive(&tx)?;
            progress.epoch = *epoch;
            progress.step = *step;
            progress.loss = *loss;
            progress.examples_per_sec = *examples_per_sec;
            progress.eta_secs = *eta_secs;
            progress.phase = Some("train".into());
        }
        EventKind::Heartbeat { phase, trouble, .. } => {
            alive(&tx)?;
            progress.phase = Some(phase.clone());
            progress.trouble.clone_from(trouble);
        }
        EventKind::Checkpointed { resume, .. } => {
            alive(&tx)?;
            tx.execute(
                "UPDATE jobs SET last_checkpoint_at = ?2 WHERE id = ?1",
                params![job_id, ts(now)],
            )?;
            if let Some(point) = resume.as_ref().filter(|p| p.attempt_id == attempt) {
                tx.execute(
                    "UPDATE jobs SET resume = ?2 WHERE id = ?1",
                    params![
                        job_id,
                        serde_json::to_string(point).expect("a resume point serialises")
                    ],
                )?;
            }
        }
        EventKind::Succeeded {
            metrics,
            timings,
            files,
            ..
        } => match files.get(refit_proto::keys::MANIFEST) {
            Some(draft) => {
                tx.execute(
                    "UPDATE jobs SET commit_attempt = ?2, commit_draft = ?3, metrics = ?4, \
                     timings = ?5, worker = ?6 WHERE id = ?1",
                    params![
                        job_id,
                        attempt.to_string(),
                        draft.sha256,
                        metrics
                            .as_ref()
                            .map(|m| serde_json::to_string(m).expect("metrics serialise")),
                        serde_json::to_string(timings).expect("timings serialise"),
                        worker,
                    ],
                )?;
                progress.phase = Some("commit".into());
                outcome.commit = true;
            }
            None => {
                // Nothing to commit: the attempt failed to deliver; another one will.
                tx.execute(
                    "UPDATE jobs SET error = ?2 WHERE id = ?1",
                    params![job_id, "an attempt reported success without its files"],
                )?;
                outcome.requeued = lapsed(&tx, &job_id, &row, now, settings, &mut outcome)?;
            }
        },
        EventKind::Failed { error, error_kind } => {
            tx.execute(
                "UPDATE jobs SET error = ?2 WHERE id = ?1",
                params![job_id, error],
            )?;
            if *error_kind == ErrorKind::Permanent {
                leases::clear(&tx, &job_id)?;
                tx.execute(
                    "UPDATE jobs SET state = 'failed', finished_at = ?2 WHERE id = ?1",
                    params![job_id, ts(now)],
                )?;
                outcome.finished = finished(JobState::Failed);
            } else {
                outcome.requeued = lapsed(&tx, &job_id, &row, now, settings, &mut outcome)?;
            }
        }
        EventKind::Cancelled => {
            leases::clear(&tx, &job_id)?;
            tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = COALESCE(finished_at, ?2) \
                 WHERE id = ?1",
                params![job_id, ts(now)],
            )?;
            outcome.finished = finished(JobState::Cancelled);
        }
        EventKind::Released { .. } => {
            tx.execute(
                "UPDATE jobs SET handbacks = handbacks + 1 WHERE id = ?1",
                params![job_id],
            )?;
            match leases::requeue(&tx, &job_id, &row, now)? {
                leases::Lapse::Cancelled => outcome.finished = finished(JobState::Cancelled),
                _ => outcome.requeued = true,
            }
            progress.phase = Some("queued".into());
        }
    }
    tx.execute(
        "UPDATE jobs SET progress = ?2 WHERE id = ?1",
        params![
            job_id,
            serde_json::to_string(&progress).expect("progress serialises")
        ],
    )?;
    if busy && row.cancel_requested {
        // Every event of a cancelled job's holder is answered with the cancel again.
        outcome.reply = Some(Control::Cancel {
            job_id: event.job_id,
        });
    }
    tx.commit()?;
    Ok(outcome)
}

/// Counts the attempt's failure (see `leases::lapse`) into `outcome`; whether the job was
/// queued again.
fn lapsed(
    tx: &Transaction<'_>,
    job_id: &str,
    row: &leases::LeaseRow,
    now: DateTime<Utc>,
    settings: LeaseSettings,
    outcome: &mut EventOutcome,
) -> Result<bool, StoreError> {
    let since = get_job(tx, job_id)?.map_or(0.0, |j| seconds_since(&j.view, now));
    Ok(match leases::lapse(tx, job_id, row, now, settings)? {
        leases::Lapse::Requeued => true,
        leases::Lapse::Dead => {
            outcome.finished = Some((JobState::Dead, since));
            false
        }
        leases::Lapse::Cancelled => {
            outcome.finished = Some((JobState::Cancelled, since));
            false
        }
    })
}

/// Records the event (once: a duplicate changes nothing); whether it was new.
fn insert_event(
    tx: &Transaction<'_>,
    event: &Event,
    body: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO events (job_id, attempt, worker, kind, at, body, received_at, \
         attempt_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            event.job_id.to_string(),
            event.attempt,
            event.worker_id.as_str(),
            event.kind.name(),
            ts(event.at),
            body.to_string(),
            ts(now),
            event.attempt_id.map(|a| a.to_string()),
        ],
    )?;
    let kind = event.kind.name();
    if inserted == 1
        && matches!(kind, "progress" | "heartbeat")
        && tx.last_insert_rowid() % PRUNE_EVERY == 0
    {
        prune(tx, &event.job_id.to_string(), kind)?;
    }
    Ok(inserted == 1)
}

/// Progress and heartbeat events kept per job, of each kind: the newest. A job of days sends
/// one of each every few seconds; its view, the loss curve and the stall checks need only the
/// recent ones. Every other event is kept.
pub const KEEP_PROGRESS_EVENTS: i64 = 1000;

/// Pruning runs at one insert in this many (by row id), so its cost is spread thin.
const PRUNE_EVERY: i64 = 64;

/// Deletes a job's `kind` events older than its newest [`KEEP_PROGRESS_EVENTS`].
fn prune(tx: &Transaction<'_>, job_id: &str, kind: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM events WHERE job_id = ?1 AND kind = ?2 AND seq < ( \
             SELECT seq FROM events WHERE job_id = ?1 AND kind = ?2 \
             ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
        params![job_id, kind, KEEP_PROGRESS_EVENTS - 1],
    )?;
    Ok(())
}

/// The worker was heard from now (the coordinator's clock), working on `job_id` or not.
fn seen(
    tx: &Transaction<'_>,
    worker: &str,
    job_id: &str,
    busy: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO workers (id, last_seen_at, job_id, busy) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, \
         job_id = excluded.job_id, busy = excluded.busy",
        params![worker, ts(now), job_id, i64::from(busy)],
    )?;
    Ok(())
}

fn seconds_since(job: &refit_proto::wire::JobView, at: DateTime<Utc>) -> f64 {
    (at - job.submitted_at).num_milliseconds().max(0) as f64 / 1000.0
}

impl Store {
    /// Records a worker event received now, with the `reply_to` it came with (the worker's
    /// inbox), and moves its job's state and lease (see the module docs).
    pub async fn record_event(
        &self,
        event: Event,
        inbox: Option<String>,
        settings: LeaseSettings,
    ) -> Result<EventOutcome, StoreError> {
        self.record_event_at(event, inbox, settings, Utc::now())
            .await
    }

    /// [`Store::record_event`] received at `now`.
    pub(crate) async fn record_event_at(
        &self,
        event: Event,
        inbox: Option<String>,
        settings: LeaseSettings,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        self.call(move |conn| apply(conn, &event, inbox.as_deref(), now, settings))
            .await
    }

    /// Lets go of every lease that lapsed by now (see `leases`); what became of each job.
    pub async fn expire_leases(
        &self,
        settings: LeaseSettings,
    ) -> Result<Vec<leases::Expired>, StoreError> {
        self.expire_leases_at(settings, Utc::now()).await
    }

    /// [`Store::expire_leases`] as of `now`.
    pub(crate) async fn expire_leases_at(
        &self,
        settings: LeaseSettings,
        now: DateTime<Utc>,
    ) -> Result<Vec<leases::Expired>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let expired = leases::expire(&tx, now, settings)?;
            tx.commit()?;
            Ok(expired)
        })
        .await
    }

    /// Gives every lease at least one more `lease_secs` from `now`: what a coordinator does when
    /// it becomes active, since it heard nothing while it was down or standing by (the holders'
    /// events of that time are still in the queue). How many leases it extended.
    pub async fn extend_leases(&self, settings: LeaseSettings) -> Result<usize, StoreError> {
        let until = ts(Utc::now() + chrono::Duration::seconds(settings.lease_secs as i64));
        self.call(move |conn| {
            Ok(conn.execute(
                "UPDATE jobs SET lease_expires_at = ?1 WHERE lease_attempt IS NOT NULL \
                 AND (lease_expires_at IS NULL OR lease_expires_at < ?1)",
                params![until],
            )?)
        })
        .await
    }

    /// Marks a job dead from a dead-lettered copy of its message, if no attempt holds it (it
    /// is `queued`): a granted job belongs to its lease, not to its message, so a copy
    /// dead-lettered while an attempt runs (a redelivery past the delivery limit) neither ends
    /// it nor takes the place of the reason its attempt reports. Returns whether it changed.
    pub async fn mark_dead(&self, id: String, reason: String) -> Result<bool, StoreError> {
        self.call(move |conn| {
            let now = ts(Utc::now());
            let changed = conn.execute(
                "UPDATE jobs SET state = 'dead', error = COALESCE(error || ' — ', '') || ?2, \
                 finished_at = ?3, updated_at = ?3 \
                 WHERE id = ?1 AND state = 'queued' AND lease_attempt IS NULL",
                params![id, reason, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Records a worker's presence message, received now (liveness uses the coordinator's
    /// clock; the message's own timestamp is not trusted).
    pub async fn record_presence(&self, status: WorkerStatus) -> Result<(), StoreError> {
        self.record_presence_at(status, Utc::now()).await
    }

    /// [`Store::record_presence`] received at `now`.
    pub(crate) async fn record_presence_at(
        &self,
        status: WorkerStatus,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let status = WorkerStatus { at: now, ..status };
        self.call(move |conn| {
            let busy = status.running > 0;
            let stopping = status.state == WorkerState::Stopping;
            conn.execute(
                "INSERT INTO workers (id, last_seen_at, job_id, busy, presence, stopping, pool) \
                 VALUES (?1, ?2, NULL, ?3, 1, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, \
                 busy = excluded.busy, presence = 1, stopping = excluded.stopping, \
                 pool = excluded.pool \
                 WHERE excluded.last_seen_at >= workers.last_seen_at",
                params![
                    status.worker_id.as_str(),
                    ts(status.at),
                    i64::from(busy),
                    i64::from(stopping),
                    status.pool,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Workers seen since `since`, newest first. Status: `stopping` (said so; `stopped` once
    /// silent past `stall_secs`), `lost` (silent past `stall_secs` while busy, or while idle for a
    /// worker that sends presence messages), `busy`, `idle`.
    pub async fn workers(
        &self,
        since: DateTime<Utc>,
        stall_secs: u64,
    ) -> Result<Vec<WorkerView>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, last_seen_at, job_id, busy, presence, stopping, pool FROM workers \
                 WHERE last_seen_at >= ?1 ORDER BY last_seen_at DESC",
            )?;
            let mut rows = stmt.query(params![ts(since)])?;
            let now = Utc::now();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let last_seen_at = parse_ts(&row.get::<_, String>(1)?)?;
                let age = (now - last_seen_at).num_milliseconds().max(0) as f64 / 1000.0;
                let busy = row.get::<_, i64>(3)? != 0;
                let presence = row.get::<_, i64>(4)? != 0;
                let stopping = row.get::<_, i64>(5)? != 0;
                let silent = age > stall_secs as f64;
                let status = match () {
                    () if stopping && silent => "stopped",
                    () if stopping => "stopping",
                    () if silent && (busy || presence) => "lost",
                    () if busy => "busy",
                    () => "idle",
                };
                out.push(WorkerView {
                    id: row.get(0)?,
                    last_seen_at,
                    heartbeat_age_secs: age,
                    job: row.get(2)?,
                    pool: row.get(6)?,
                    status: status.to_owned(),
                });
            }
            Ok(out)
        })
        .await
    }

    /// The latest `limit` `(step, loss)` points of each job's progress events, oldest first.
    pub async fn loss_curves(
        &self,
        job_ids: Vec<String>,
        limit: u32,
    ) -> Result<BTreeMap<String, Vec<(u64, f64)>>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT body FROM events WHERE job_id = ?1 AND kind = 'progress' \
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let mut out = BTreeMap::new();
            for id in job_ids {
                let bodies = stmt
                    .query_map(params![id, i64::from(limit)], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut points: Vec<(u64, f64)> = bodies
                    .iter()
                    .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                    .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?)))
                    .collect();
                points.sort_by_key(|p| p.0);
                out.insert(id, points);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
