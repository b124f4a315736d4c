//! Recording worker events and moving job states:
//! `queued → running ⇄ stalled → succeeded | failed | cancelled | dead`.
//!
//! Events arrive at least once and, across attempts, out of order; the rules are written so that
//! any order of any duplicates ends in the same row:
//! - an event already recorded (same job, attempt, worker, type and timestamp) changes nothing;
//! - a final state is never left, except that `succeeded` wins over everything: the version is
//!   stored, whatever else was reported;
//! - a transient `failed` keeps the job alive (the worker hands it back for another attempt).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refit_proto::{ErrorKind, Event, EventKind, WorkerState, WorkerStatus};
use rusqlite::{Connection, params};

use super::jobs::get_job;
use super::{Store, StoreError, parse_ts, ts};
use refit_proto::wire::{EventView, JobState, WorkerView};

/// What recording an event did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventOutcome {
    /// False for a duplicate (nothing changed).
    pub recorded: bool,
    /// Whether the job is one of ours.
    pub known_job: bool,
    /// The job is cancelled but a worker works on it: send the cancel again.
    pub resend_cancel: bool,
    /// The job just reached this final state, after this many seconds since submission.
    pub finished: Option<(JobState, f64)>,
    /// The job's mode (`finetune`/`scratch`), for metrics labels.
    pub mode: Option<String>,
}

fn event_body(kind: &EventKind) -> serde_json::Value {
    let mut value = serde_json::to_value(kind).expect("events serialise to JSON");
    if let Some(map) = value.as_object_mut() {
        map.remove("type");
    }
    value
}

pub(super) fn events_of(conn: &Connection, job_id: &str) -> Result<Vec<EventView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, attempt, worker, kind, body FROM events WHERE job_id = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![job_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let body: String = row.get(5)?;
        out.push(EventView {
            seq: row.get(0)?,
            at: parse_ts(&row.get::<_, String>(1)?)?,
            attempt: row.get(2)?,
            worker: row.get(3)?,
            kind: row.get(4)?,
            body: serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("event body: {e}")))?,
        });
    }
    Ok(out)
}

fn apply(conn: &mut Connection, event: &Event) -> Result<EventOutcome, StoreError> {
    let tx = conn.transaction()?;
    let job_id = event.job_id.to_string();
    let at = ts(event.at);
    let kind = event.kind.name();
    let body = event_body(&event.kind);
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO events (job_id, attempt, worker, kind, at, body, received_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            job_id,
            event.attempt,
            event.worker_id.as_str(),
            kind,
            at,
            body.to_string(),
            ts(Utc::now()),
        ],
    )?;
    let mut outcome = EventOutcome {
        recorded: inserted == 1,
        ..EventOutcome::default()
    };
    if !outcome.recorded {
        tx.commit()?;
        return Ok(outcome);
    }
    let busy = !matches!(
        event.kind,
        EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::Cancelled
    );
    tx.execute(
        "INSERT INTO workers (id, last_seen_at, job_id, busy) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = MAX(last_seen_at, excluded.last_seen_at), \
         job_id = excluded.job_id, busy = excluded.busy \
         WHERE excluded.last_seen_at >= workers.last_seen_at",
        params![event.worker_id.as_str(), at, job_id, i64::from(busy)],
    )?;

    let Some(job) = get_job(&tx, &job_id)? else {
        tx.commit()?;
        return Ok(outcome);
    };
    outcome.known_job = true;
    outcome.mode = Some(job.view.mode.as_str().to_owned());
    let state = job.view.state;
    let now = ts(Utc::now());
    let worker = event.worker_id.as_str();
    // Every event from a live attempt counts as a sign of life and an attempt number.
    tx.execute(
        "UPDATE jobs SET attempts = MAX(attempts, ?2), updated_at = ?3 WHERE id = ?1",
        params![job_id, event.attempt, now],
    )?;
    let alive = |tx: &rusqlite::Transaction<'_>| -> Result<(), StoreError> {
        if matches!(
            state,
            JobState::Queued | JobState::Running | JobState::Stalled
        ) {
            tx.execute(
                "UPDATE jobs SET state = 'running', worker = ?2, \
                 started_at = COALESCE(started_at, ?3), \
                 last_heartbeat_at = MAX(COALESCE(last_heartbeat_at, ''), ?3) WHERE id = ?1",
                params![job_id, worker, at],
            )?;
        }
        Ok(())
    };
    let mut progress = job.view.progress.clone().unwrap_or_default();
    match &event.kind {
        EventKind::Started { total_epochs, .. } => {
            alive(&tx)?;
            if *total_epochs > 0.0 {
                progress.total_epochs = *total_epochs;
            }
            progress.phase = Some("download".into());
            outcome.resend_cancel = job.cancel_requested;
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
            outcome.resend_cancel = job.cancel_requested && state.is_final();
        }
        EventKind::Heartbeat { phase, .. } => {
            alive(&tx)?;
            progress.phase = Some(phase.clone());
            outcome.resend_cancel = job.cancel_requested && state.is_final();
        }
        EventKind::Checkpointed { .. } => {
            alive(&tx)?;
            tx.execute(
                "UPDATE jobs SET last_checkpoint_at = MAX(COALESCE(last_checkpoint_at, ''), ?2) \
                 WHERE id = ?1",
                params![job_id, at],
            )?;
        }
        EventKind::Succeeded {
            metrics, timings, ..
        } => {
            if state != JobState::Succeeded {
                tx.execute(
                    "UPDATE jobs SET state = 'succeeded', worker = ?2, metrics = ?3, \
                     timings = ?4, error = NULL, finished_at = ?5, \
                     started_at = COALESCE(started_at, ?5) WHERE id = ?1",
                    params![
                        job_id,
                        worker,
                        metrics
                            .as_ref()
                            .map(|m| serde_json::to_string(m).expect("metrics serialise")),
                        serde_json::to_string(timings).expect("timings serialise"),
                        at,
                    ],
                )?;
                progress.phase = Some("done".into());
                if progress.total_epochs > 0.0 {
                    progress.epoch = progress.total_epochs;
                }
                outcome.finished = Some((JobState::Succeeded, seconds_since(&job.view, event.at)));
            }
        }
        EventKind::Failed { error, error_kind } => {
            if !state.is_final() {
                let permanent = *error_kind == ErrorKind::Permanent;
                tx.execute(
                    "UPDATE jobs SET error = ?2, \
                     state = CASE WHEN ?3 THEN 'failed' ELSE state END, \
                     finished_at = CASE WHEN ?3 THEN ?4 ELSE finished_at END WHERE id = ?1",
                    params![job_id, error, permanent, at],
                )?;
                if permanent {
                    outcome.finished = Some((JobState::Failed, seconds_since(&job.view, event.at)));
                }
            }
        }
        EventKind::Cancelled => {
            if !matches!(
                state,
                JobState::Succeeded | JobState::Failed | JobState::Dead
            ) {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = COALESCE(finished_at, ?2) \
                     WHERE id = ?1",
                    params![job_id, at],
                )?;
                if state != JobState::Cancelled {
                    outcome.finished =
                        Some((JobState::Cancelled, seconds_since(&job.view, event.at)));
                }
            }
        }
    }
    tx.execute(
        "UPDATE jobs SET progress = ?2 WHERE id = ?1",
        params![
            job_id,
            serde_json::to_string(&progress).expect("progress serialises")
        ],
    )?;
    tx.commit()?;
    Ok(outcome)
}

fn seconds_since(job: &refit_proto::wire::JobView, at: DateTime<Utc>) -> f64 {
    (at - job.submitted_at).num_milliseconds().max(0) as f64 / 1000.0
}

impl Store {
    /// Records a worker event and moves its job's state.
    pub async fn record_event(&self, event: Event) -> Result<EventOutcome, StoreError> {
        self.call(move |conn| apply(conn, &event)).await
    }

    /// Marks a job dead-lettered (unless it already ended); returns whether it changed.
    pub async fn mark_dead(&self, id: String, reason: String) -> Result<bool, StoreError> {
        self.call(move |conn| {
            let now = ts(Utc::now());
            let changed = conn.execute(
                "UPDATE jobs SET state = 'dead', error = COALESCE(error || ' — ', '') || ?2, \
                 finished_at = ?3, updated_at = ?3 \
                 WHERE id = ?1 AND state IN ('queued', 'running', 'stalled')",
                params![id, reason, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Records a worker's presence message; an older one than what is stored changes nothing.
    pub async fn record_presence(&self, status: WorkerStatus) -> Result<(), StoreError> {
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
mod tests {
    use refit_proto::{Metrics, Version, WorkerId};

    use super::super::jobs::tests::new_job;
    use super::*;

    fn event(job: &str, attempt: u32, kind: EventKind) -> Event {
        Event {
            job_id: job.parse().unwrap(),
            attempt,
            worker_id: WorkerId::new("w-1").unwrap(),
            at: Utc::now(),
            kind,
        }
    }

    #[tokio::test]
    async fn a_job_runs_to_success_and_duplicates_change_nothing() {
        let store = Store::in_memory().unwrap();
        let (job, _) = store.insert_job(new_job("m"), None).await.unwrap();
        let id = job.view.id.clone();
        let started = event(
            &id,
            1,
            EventKind::Started {
                resumed_from_epoch: None,
                total_epochs: 10.0,
            },
        );
        assert!(store.record_event(started.clone()).await.unwrap().recorded);
        assert!(!store.record_event(started).await.unwrap().recorded);
        let progress = EventKind::Progress {
            epoch: 4.0,
            step: 40,
            loss: 0.5,
            examples_per_sec: 1000.0,
            eta_secs: Some(3.0),
        };
        store.record_event(event(&id, 1, progress)).await.unwrap();
        let running = store.job(id.clone()).await.unwrap().unwrap().view;
        assert_eq!(running.state, JobState::Running);
        assert_eq!(running.attempts, 1);
        assert_eq!(running.worker.as_deref(), Some("w-1"));
        let p = running.progress.unwrap();
        assert_eq!((p.epoch, p.total_epochs, p.step), (4.0, 10.0, 40));

        let transient = EventKind::Failed {
            error: "s3 down".into(),
            error_kind: ErrorKind::Transient,
        };
        store.record_event(event(&id, 1, transient)).await.unwrap();
        assert_eq!(
            store.job(id.clone()).await.unwrap().unwrap().view.state,
            JobState::Running
        );
        let done = EventKind::Succeeded {
            version: Version::first(),
            metrics: Some(Metrics {
                intent_weighted_f1: 0.9,
                ..Default::default()
            }),
            timings: BTreeMap::from([("train".to_owned(), 1.5)]),
        };
        let outcome = store.record_event(event(&id, 2, done)).await.unwrap();
        assert_eq!(outcome.finished.map(|f| f.0), Some(JobState::Succeeded));
        let view = store.job(id.clone()).await.unwrap().unwrap().view;
        assert_eq!(view.state, JobState::Succeeded);
        assert_eq!(view.attempts, 2);
        assert_eq!(view.metrics.unwrap().intent_weighted_f1, 0.9);
        assert_eq!(view.events.len(), 4);
        assert_eq!(view.events[0].kind, "started");
        // A late cancel does not undo a success; dead-lettering neither.
        store
            .record_event(event(&id, 2, EventKind::Cancelled))
            .await
            .unwrap();
        assert!(!store.mark_dead(id.clone(), "x".into()).await.unwrap());
        assert_eq!(
            store.job(id.clone()).await.unwrap().unwrap().view.state,
            JobState::Succeeded
        );
        let curves = store.loss_curves(vec![id.clone()], 10).await.unwrap();
        assert_eq!(curves[&id], vec![(40, 0.5)]);
        let workers = store
            .workers(Utc::now() - chrono::Duration::hours(1), 60)
            .await
            .unwrap();
        assert_eq!(workers[0].status, "idle");
    }

    #[tokio::test]
    async fn presence_lists_idle_workers_and_tells_stopping_stopped_and_lost() {
        let store = Store::in_memory().unwrap();
        let status = |id: &str, secs_ago: i64, state, running| WorkerStatus {
            worker_id: refit_proto::WorkerId::new(id).unwrap(),
            at: Utc::now() - chrono::Duration::seconds(secs_ago),
            state,
            running,
            pool: "gpu".into(),
        };
        let statuses = |store: &Store| {
            let store = store.clone();
            async move {
                let mut workers = store
                    .workers(Utc::now() - chrono::Duration::hours(1), 60)
                    .await
                    .unwrap();
                workers.sort_by(|a, b| a.id.cmp(&b.id));
                workers
                    .into_iter()
                    .map(|w| (w.id, w.status, w.pool))
                    .collect::<Vec<_>>()
            }
        };
        let online = WorkerState::Online;
        let stopping = WorkerState::Stopping;
        for s in [
            status("a-idle", 1, online, 0),
            status("b-busy", 1, online, 1),
            status("c-lost", 90, online, 0),
            status("d-stopping", 1, stopping, 0),
            status("e-stopped", 90, stopping, 0),
        ] {
            store.record_presence(s).await.unwrap();
        }
        // An older message than the stored one changes nothing.
        store
            .record_presence(status("d-stopping", 30, online, 0))
            .await
            .unwrap();
        let gpu = Some("gpu".to_owned());
        assert_eq!(
            statuses(&store).await,
            [
                ("a-idle", "idle"),
                ("b-busy", "busy"),
                ("c-lost", "lost"),
                ("d-stopping", "stopping"),
                ("e-stopped", "stopped"),
            ]
            .map(|(id, st)| (id.to_owned(), st.to_owned(), gpu.clone()))
        );
        // Back online after a stop.
        store
            .record_presence(status("e-stopped", 0, online, 0))
            .await
            .unwrap();
        assert_eq!(statuses(&store).await[4].1, "idle");
    }

    #[tokio::test]
    async fn permanent_failures_stalls_and_cancel_resends() {
        let store = Store::in_memory().unwrap();
        let (job, _) = store.insert_job(new_job("m"), None).await.unwrap();
        let id = job.view.id.clone();
        let started = EventKind::Started {
            resumed_from_epoch: None,
            total_epochs: 5.0,
        };
        store
            .record_event(event(&id, 1, started.clone()))
            .await
            .unwrap();
        assert_eq!(
            store
                .mark_stalled(Utc::now() + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store.job(id.clone()).await.unwrap().unwrap().view.state,
            JobState::Stalled
        );
        let beat = EventKind::Heartbeat {
            phase: "train".into(),
            checkpoint_age_secs: None,
        };
        store.record_event(event(&id, 1, beat)).await.unwrap();
        assert_eq!(
            store.job(id.clone()).await.unwrap().unwrap().view.state,
            JobState::Running
        );
        let failed = EventKind::Failed {
            error: "bad yaml".into(),
            error_kind: ErrorKind::Permanent,
        };
        store.record_event(event(&id, 1, failed)).await.unwrap();
        let view = store.job(id.clone()).await.unwrap().unwrap().view;
        assert_eq!(view.state, JobState::Failed);
        assert_eq!(view.error.as_deref(), Some("bad yaml"));

        // A cancelled queued job that a worker starts anyway gets its cancel sent again.
        let (job, _) = store.insert_job(new_job("m"), None).await.unwrap();
        let id = job.view.id.clone();
        store.request_cancel(id.clone()).await.unwrap();
        let outcome = store.record_event(event(&id, 1, started)).await.unwrap();
        assert!(outcome.resend_cancel);
        assert_eq!(
            store.job(id.clone()).await.unwrap().unwrap().view.state,
            JobState::Cancelled
        );
        // Events of unknown jobs are recorded, not applied.
        let stranger = refit_proto::JobId::new().to_string();
        let outcome = store
            .record_event(event(&stranger, 1, EventKind::Cancelled))
            .await
            .unwrap();
        assert!(outcome.recorded && !outcome.known_job);
    }
}
