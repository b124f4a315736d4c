//! Jobs: inserting with a fresh output version, reading, listing, the outbox, cancelling.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refit_proto::decision::DecisionReport;
use refit_proto::{JobSpec, Metrics, Mode, Version, decode, encode};
use rusqlite::{OptionalExtension, Row, params};

use super::{Store, StoreError, parse_ts, parse_ts_opt, ts};
use refit_proto::wire::{
    DatasetBody, DecisionSummary, JobState, JobView, ProgressView, PromotionView,
};

/// A job to insert; its output version is chosen by [`Store::insert_job`].
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The message to publish; `output_version` is overwritten.
    pub spec: JobSpec,
    /// What the caller asked for.
    pub requested_mode: Mode,
    /// The worker pool.
    pub pool: String,
    /// The decision that let it through.
    pub decision: Option<DecisionReport>,
    /// The schedule that submitted it.
    pub schedule: Option<String>,
}

/// A job row, as the API shows it, plus what only the coordinator needs.
#[derive(Clone, Debug)]
pub struct StoredJob {
    /// The API view.
    pub view: JobView,
    /// Whether a user asked to cancel it.
    pub cancel_requested: bool,
}

/// A job waiting to be published.
#[derive(Clone, Debug)]
pub struct OutboxJob {
    /// The job id.
    pub id: String,
    /// The pool to publish it to.
    pub pool: String,
    /// The message.
    pub spec: JobSpec,
    /// Whether its reservation is written (it must be before the job is published).
    pub reserved: bool,
}

/// `GET /v1/jobs` filters.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only this model's jobs.
    pub model: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs submitted before this job (the page cursor: a job id).
    pub before: Option<String>,
    /// At most this many.
    pub limit: u32,
}

const COLUMNS: &str = "id, model, version, base_version, mode, requested_mode, pool, state, \
     dataset_key, dataset_sha256, decision, schedule, published_at, attempts, worker, progress, \
     metrics, timings, error, submitted_at, started_at, finished_at, last_heartbeat_at, \
     last_checkpoint_at, cancel_requested, failures, handbacks, promote_to, promotion";

/// The next free version number of `model`: above every job's here and above `stored_latest`
/// (the object store's highest manifest or reservation).
fn next_version(
    tx: &rusqlite::Transaction<'_>,
    model: &str,
    stored_latest: Option<Version>,
) -> Result<Version, StoreError> {
    let max_job: Option<i64> = tx.query_row(
        "SELECT MAX(version) FROM jobs WHERE model = ?1",
        params![model],
        |r| r.get(0),
    )?;
    let floor = i64::from(stored_latest.map_or(0, Version::get));
    let next = max_job.unwrap_or(0).max(floor) + 1;
    u32::try_from(next)
        .ok()
        .and_then(|n| Version::new(n).ok())
        .ok_or_else(|| corrupt("version", next))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn json_opt<T: serde::de::DeserializeOwned>(
    what: &str,
    text: Option<String>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(what, e)))
        .transpose()
}

fn version_text(n: Option<i64>) -> Result<Option<String>, StoreError> {
    n.map(|n| {
        u32::try_from(n)
            .ok()
            .and_then(|n| Version::new(n).ok())
            .map(|v| v.to_string())
            .ok_or_else(|| corrupt("version", n))
    })
    .transpose()
}

pub(super) fn read_row(row: &Row<'_>) -> Result<StoredJob, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { Ok(row.get::<_, String>(i)?) };
    let opt = |i: usize| -> Result<Option<String>, StoreError> { Ok(row.get(i)?) };
    let mode: Mode = text(4)?.parse().map_err(|e| corrupt("mode", e))?;
    let requested_mode: Mode = text(5)?.parse().map_err(|e| corrupt("mode", e))?;
    let state: JobState = text(7)?.parse().map_err(|e| corrupt("state", e))?;
    let decision: Option<DecisionReport> = json_opt("decision", opt(10)?)?;
    let timings: Option<BTreeMap<String, f64>> = json_opt("timings", opt(17)?)?;
    let view = JobView {
        id: text(0)?,
        model: text(1)?,
        version: version_text(Some(row.get(2)?))?.unwrap_or_default(),
        base_version: version_text(row.get(3)?)?,
        mode,
        requested_mode,
        pool: text(6)?,
        state,
        dataset: DatasetBody {
            key: text(8)?,
            sha256: text(9)?,
        },
        decision: decision.map(|d| DecisionSummary {
            decision: d.decision.as_str().to_owned(),
            reasons: d.codes().into_iter().map(str::to_owned).collect(),
        }),
        schedule: opt(11)?,
        promote_to: opt(27)?,
        promotion: json_opt::<PromotionView>("promotion", opt(28)?)?,
        published: opt(12)?.is_some(),
        attempts: row.get(13)?,
        failures: row.get(25)?,
        handbacks: row.get(26)?,
        worker: opt(14)?,
        progress: json_opt::<ProgressView>("progress", opt(15)?)?,
        metrics: json_opt::<Metrics>("metrics", opt(16)?)?,
        timings: timings.unwrap_or_default(),
        error: opt(18)?,
        submitted_at: parse_ts(&text(19)?)?,
        started_at: parse_ts_opt(opt(20)?)?,
        finished_at: parse_ts_opt(opt(21)?)?,
        last_heartbeat_at: parse_ts_opt(opt(22)?)?,
        last_checkpoint_at: parse_ts_opt(opt(23)?)?,
        events: Vec::new(),
        more_events: false,
    };
    Ok(StoredJob {
        view,
        cancel_requested: row.get::<_, i64>(24)? != 0,
    })
}

pub(super) fn get_job(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<Option<StoredJob>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?;
    let mut rows = stmt.query(params![id])?;
    match rows.next()? {
        Some(row) => Ok(Some(read_row(row)?)),
        None => Ok(None),
    }
}

impl Store {
    /// Records what a job's `promote_to` led to, with a `promotion` event (worker
    /// `coordinator`) carrying the same view.
    pub async fn record_promotion(
        &self,
        job_id: String,
        promotion: PromotionView,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let body = serde_json::to_value(&promotion).expect("a promotion view serialises");
            tx.execute(
                "UPDATE jobs SET promotion = ?2, updated_at = ?3 WHERE id = ?1",
                params![job_id, body.to_string(), ts(promotion.at)],
            )?;
            super::events::coordinator_event(&tx, &job_id, "promotion", body, promotion.at)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Stores a job in the outbox with the next free output version of its model: above every
    /// version any job of the model was given and above `stored_latest` (the newest version in
    /// the object store). Returns the stored job, its spec carrying the chosen version.
    pub async fn insert_job(
        &self,
        job: NewJob,
        stored_latest: Option<Version>,
    ) -> Result<(StoredJob, JobSpec), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let model = job.spec.model.as_str().to_owned();
            let version = next_version(&tx, &model, stored_latest)?;
            let mut spec = job.spec;
            spec.output_version = version;
            let decision = job
                .decision
                .as_ref()
                .map(|d| serde_json::to_string(d).expect("a decision report serialises"));
            tx.execute(
                "INSERT INTO jobs (id, model, version, base_version, mode, requested_mode, pool, \
                 state, spec, dataset_key, dataset_sha256, decision, schedule, submitted_at, \
                 updated_at, promote_to) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, \
                 ?10, ?11, ?12, ?13, ?13, ?14)",
                params![
                    spec.id.to_string(),
                    model,
                    i64::from(version.get()),
                    spec.base_version.map(|v| i64::from(v.get())),
                    spec.mode.as_str(),
                    job.requested_mode.as_str(),
                    job.pool,
                    encode(&spec),
                    spec.dataset.key,
                    spec.dataset.sha256,
                    decision,
                    job.schedule,
                    ts(spec.submitted_at),
                    spec.promote_to.as_ref().map(ToString::to_string),
                ],
            )?;
            let stored = get_job(&tx, &spec.id.to_string())?
                .ok_or_else(|| corrupt("jobs", "the inserted job is missing"))?;
            tx.commit()?;
            Ok((stored, spec))
        })
        .await
    }

    /// A job with its events.
    pub async fn job(&self, id: String) -> Result<Option<StoredJob>, StoreError> {
        self.job_page(id, 0, u32::MAX).await
    }

    /// A job with one page of its events: those after `after` (a `seq`), oldest first, at most
    /// `limit`; `more_events` says whether others follow.
    pub async fn job_page(
        &self,
        id: String,
        after: i64,
        limit: u32,
    ) -> Result<Option<StoredJob>, StoreError> {
        self.call(move |conn| {
            let Some(mut job) = get_job(conn, &id)? else {
                return Ok(None);
            };
            let (events, more) = super::events::events_of(conn, &id, after, limit)?;
            job.view.events = events;
            job.view.more_events = more;
            Ok(Some(job))
        })
        .await
    }

    /// Jobs, newest first.
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobView>, StoreError> {
        self.call(move |conn| {
            let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(model) = filter.model {
                args.push(model.into());
                sql.push_str(&format!(" AND model = ?{}", args.len()));
            }
            if let Some(state) = filter.state {
                args.push(state.as_str().to_owned().into());
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            if let Some(before) = filter.before {
                args.push(before.into());
                let n = args.len();
                sql.push_str(&format!(
                    " AND (submitted_at, id) < (SELECT submitted_at, id FROM jobs WHERE id = ?{n})"
                ));
            }
            args.push(i64::from(filter.limit.clamp(1, 500)).into());
            sql.push_str(&format!(
                " ORDER BY submitted_at DESC, id DESC LIMIT ?{}",
                args.len()
            ));
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            let mut jobs = Vec::new();
            while let Some(row) = rows.next()? {
                jobs.push(read_row(row)?.view);
            }
            Ok(jobs)
        })
        .await
    }

    /// Job counts by state.
    pub async fn count_by_state(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.call(|conn| {
            let mut counts: BTreeMap<String, u64> = JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect();
            let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                counts.insert(state, u64::try_from(n).unwrap_or(0));
            }
            Ok(counts)
        })
        .await
    }

    /// Published jobs still `queued` that were published before `before`, with their pools:
    /// their messages may have been lost.
    pub async fn stale_published(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, pool FROM jobs WHERE state = 'queued' AND published_at IS NOT NULL \
                 AND published_at < ?1 ORDER BY submitted_at",
            )?;
            let rows = stmt.query_map(params![ts(before)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Puts published jobs that are still `queued` back in the outbox, which publishes them
    /// again; how many it put back.
    pub async fn republish(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let mut n = 0;
            for id in &ids {
                n += tx.execute(
                    "UPDATE jobs SET published_at = NULL, updated_at = ?2 WHERE id = ?1 AND \
                     state = 'queued' AND published_at IS NOT NULL",
                    params![id, ts(Utc::now())],
                )?;
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// The pools in use and their unfinished jobs: every pool with a queued, running or
    /// stalled job, or with a worker seen since `workers_since` (counts 0), each with its job
    /// counts by those states.
    pub async fn pool_load(
        &self,
        workers_since: DateTime<Utc>,
    ) -> Result<BTreeMap<String, BTreeMap<String, u64>>, StoreError> {
        self.call(move |conn| {
            let mut pools: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            let mut stmt = conn.prepare_cached(
                "SELECT pool, state, COUNT(*) FROM jobs \
                 WHERE state IN ('queued', 'running', 'stalled') GROUP BY pool, state",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (pool, state, n) = row?;
                pools
                    .entry(pool)
                    .or_default()
                    .insert(state, u64::try_from(n).unwrap_or(0));
            }
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT pool FROM workers WHERE last_seen_at >= ?1 AND pool != ''",
            )?;
            let rows = stmt.query_map(params![ts(workers_since)], |r| r.get::<_, String>(0))?;
            for pool in rows {
                pools.entry(pool?).or_default();
            }
            for counts in pools.values_mut() {
                for state in ["queued", "running", "stalled"] {
                    counts.entry(state.to_owned()).or_insert(0);
                }
            }
            Ok(pools)
        })
        .await
    }

    /// How many jobs wait to be published (held back after a refusal included).
    pub async fn count_outbox(&self) -> Result<u64, StoreError> {
        self.call(|conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM jobs WHERE published_at IS NULL AND state = 'queued'",
                [],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Jobs waiting to be published, oldest first (a job queued again after its attempt let
    /// it go is published anew).
    pub async fn outbox(&self, limit: u32) -> Result<Vec<OutboxJob>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, pool, spec, reserved FROM jobs WHERE published_at IS NULL AND \
                 state = 'queued' AND (publish_after IS NULL OR publish_after <= ?2) \
                 ORDER BY submitted_at LIMIT ?1",
            )?;
            let now = ts(Utc::now());
            let rows = stmt.query_map(params![i64::from(limit), now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, pool, bytes, reserved) = row?;
                let spec: JobSpec = decode(&bytes).map_err(|e| corrupt("spec", e))?;
                out.push(OutboxJob {
                    id,
                    pool,
                    spec,
                    reserved,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Gives a job that has no reservation yet the next free version number of its model (above
    /// every job's here and above `stored_latest`, the object store's highest), for a job whose
    /// number turned out to be another job's in the object store: one a second coordinator (a
    /// standby, or one on an older copy of the store) numbered without knowing of this one.
    /// Returns the job's new message; `None` when the job is gone or already reserved (its
    /// number is then its own for good).
    pub async fn renumber(
        &self,
        id: String,
        stored_latest: Option<Version>,
    ) -> Result<Option<JobSpec>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let row: Option<(Vec<u8>, bool)> = tx
                .query_row(
                    "SELECT spec, reserved FROM jobs WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((bytes, false)) = row else {
                return Ok(None);
            };
            let mut spec: JobSpec = decode(&bytes).map_err(|e| corrupt("spec", e))?;
            spec.output_version = next_version(&tx, spec.model.as_str(), stored_latest)?;
            tx.execute(
                "UPDATE jobs SET version = ?2, spec = ?3 WHERE id = ?1",
                params![id, i64::from(spec.output_version.get()), encode(&spec)],
            )?;
            tx.commit()?;
            Ok(Some(spec))
        })
        .await
    }

    /// Records a confirmed publish.
    pub async fn mark_published(&self, id: String) -> Result<(), StoreError> {
        self.call(move |conn| {
            let now = ts(Utc::now());
            conn.execute(
                "UPDATE jobs SET published_at = ?2, publish_attempts = publish_attempts + 1, \
                 publish_after = NULL, publish_error = NULL, publish_refusals = 0, updated_at = ?2 \
                 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that the broker refused a job (not an outage: its answer was about this job).
    /// Below `attempts` refusals the job waits `backoff` doubled per refusal (at most 5
    /// minutes) before the outbox tries it again; at `attempts` it fails with `reason`.
    /// Returns whether it failed.
    pub async fn publish_refused(
        &self,
        id: String,
        reason: String,
        attempts: u32,
        backoff: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let refused: Option<i64> = tx
                .query_row(
                    "UPDATE jobs SET publish_attempts = publish_attempts + 1, \
                     publish_refusals = publish_refusals + 1, publish_error = ?2 \
                     WHERE id = ?1 AND state = 'queued' AND published_at IS NULL \
                     RETURNING publish_refusals",
                    params![id, reason],
                    |r| r.get(0),
                )
                .optional()?;
            // Cancelled or published meanwhile: nothing to hold back.
            let Some(refused) = refused else {
                return Ok(false);
            };
            let now = Utc::now();
            let failed = refused >= i64::from(attempts);
            if failed {
                tx.execute(
                    "UPDATE jobs SET state = 'failed', error = ?2, finished_at = ?3, \
                     updated_at = ?3 WHERE id = ?1",
                    params![
                        id,
                        format!("the broker refused the job {refused} times: {reason}"),
                        ts(now)
                    ],
                )?;
            } else {
                let doublings = u32::try_from(refused.clamp(1, 20) - 1).unwrap_or(0);
                let wait = backoff
                    .saturating_mul(1 << doublings)
                    .min(std::time::Duration::from_secs(300));
                let after = now + chrono::Duration::from_std(wait).unwrap_or_default();
                tx.execute(
                    "UPDATE jobs SET publish_after = ?2 WHERE id = ?1",
                    params![id, ts(after)],
                )?;
            }
            tx.commit()?;
            Ok(failed)
        })
        .await
    }

    /// Records a failed publish attempt.
    pub async fn publish_failed(&self, id: String) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE jobs SET publish_attempts = publish_attempts + 1 WHERE id = ?1",
                params![id],
            )?;
            Ok(())
        })
        .await
    }

    /// Asks for a job to be cancelled. A queued job becomes `cancelled` at once (a worker that
    /// gets it later has its claim refused); a running one when its lease holder reports
    /// `cancelled` (told through its inbox, and again in answer to each of its events), or its
    /// lease lapses. Returns the state it was in and the job as it is
    /// now, or `None` if unknown; a job already in a final state is returned unchanged.
    pub async fn request_cancel(
        &self,
        id: String,
    ) -> Result<Option<(JobState, StoredJob)>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let Some(job) = get_job(&tx, &id)? else {
                return Ok(None);
            };
            let before = job.view.state;
            if !before.is_final() {
                let now = ts(Utc::now());
                tx.execute(
                    "UPDATE jobs SET cancel_requested = 1, cancel_published = 0, updated_at = ?2, \
                     state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
                     finished_at = CASE WHEN state = 'queued' THEN ?2 ELSE finished_at END \
                     WHERE id = ?1",
                    params![id, now],
                )?;
            }
            let job = get_job(&tx, &id)?;
            tx.commit()?;
            Ok(job.map(|job| (before, job)))
        })
        .await
    }

    /// Jobs whose cancel has not been sent yet, with their lease holder's inbox (none: no
    /// attempt holds the job, nobody to tell).
    pub async fn pending_cancels(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, lease_inbox FROM jobs WHERE cancel_requested = 1 AND \
                 cancel_published = 0",
            )?;
            let ids = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// Records that a job's cancel was published (`published = false`: publish it again).
    pub async fn set_cancel_published(
        &self,
        id: String,
        published: bool,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE jobs SET cancel_published = ?2 WHERE id = ?1",
                params![id, i64::from(published)],
            )?;
            Ok(())
        })
        .await
    }

    /// Models that have jobs, with how many are queued, running or stalled.
    pub async fn models_with_jobs(&self) -> Result<BTreeMap<String, u32>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT model, SUM(state IN ('queued', 'running', 'stalled')) FROM jobs \
                 GROUP BY model",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (model, active) = row?;
                out.insert(model, u32::try_from(active).unwrap_or(0));
            }
            Ok(out)
        })
        .await
    }

    /// An active (queued, running or stalled) job of `model` on the dataset `sha256`, if any.
    pub async fn active_job_on(
        &self,
        model: String,
        sha256: String,
    ) -> Result<Option<String>, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id FROM jobs WHERE model = ?1 AND dataset_sha256 = ?2 AND state IN \
                     ('queued', 'running', 'stalled') LIMIT 1",
                    params![model, sha256],
                    |r| r.get::<_, String>(0),
                )
                .optional()?)
        })
        .await
    }

    /// Moves running jobs without any sign of life since `before` to `stalled`; returns how many.
    pub async fn mark_stalled(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.call(move |conn| {
            let before = ts(before);
            let now = ts(Utc::now());
            Ok(conn.execute(
                "UPDATE jobs SET state = 'stalled', updated_at = ?2 WHERE state = 'running' AND \
                 COALESCE(last_heartbeat_at, started_at, submitted_at) < ?1",
                params![before, now],
            )?)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use refit_proto::{DatasetRef, Hyperparams, JobId, ModelName};

    use super::*;

    pub(crate) fn new_job(model: &str) -> NewJob {
        NewJob {
            spec: JobSpec {
                id: JobId::new(),
                model: ModelName::new(model).unwrap(),
                mode: Mode::Scratch,
                base_version: None,
                output_version: Version::first(),
                dataset: DatasetRef {
                    key: format!("datasets/sha256/{}.yml", "a".repeat(64)),
                    sha256: "a".repeat(64),
                },
                eval_dataset: None,
                hyperparams: Hyperparams::default(),
                priority: 0,
                submitted_at: Utc::now(),
                deadline: None,
                promote_to: None,
            },
            requested_mode: Mode::Auto,
            pool: "default".into(),
            decision: None,
            schedule: None,
        }
    }

    #[tokio::test]
    async fn versions_are_unique_per_model_and_start_above_stored_ones() {
        let store = Store::in_memory().unwrap();
        let (a, spec_a) = store.insert_job(new_job("m"), None).await.unwrap();
        let (b, _) = store.insert_job(new_job("m"), None).await.unwrap();
        let (c, _) = store
            .insert_job(new_job("other"), Some(Version::new(7).unwrap()))
            .await
            .unwrap();
        assert_eq!(a.view.version, "v1");
        assert_eq!(spec_a.output_version, Version::first());
        assert_eq!(b.view.version, "v2");
        assert_eq!(c.view.version, "v8");
        assert_eq!(a.view.state, JobState::Queued);
        assert!(!a.view.published);
    }

    #[tokio::test]
    async fn a_refused_job_waits_its_backoff_without_holding_others_then_fails() {
        let store = Store::in_memory().unwrap();
        let (a, _) = store.insert_job(new_job("m"), None).await.unwrap();
        let (b, _) = store.insert_job(new_job("m"), None).await.unwrap();
        let backoff = std::time::Duration::from_secs(60);
        let refused = |id: &str| {
            store.publish_refused(id.to_owned(), "PRECONDITION_FAILED".into(), 2, backoff)
        };
        assert!(!refused(&a.view.id).await.unwrap());
        // `a` waits out its backoff; `b`, behind it, is next.
        let outbox = store.outbox(10).await.unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].id, b.view.id);
        // The second refusal fails it, with the broker's reason.
        assert!(refused(&a.view.id).await.unwrap());
        let view = store.job(a.view.id.clone()).await.unwrap().unwrap().view;
        assert_eq!(view.state, JobState::Failed);
        assert!(
            view.error
                .as_deref()
                .unwrap_or_default()
                .contains("PRECONDITION_FAILED"),
            "{:?}",
            view.error
        );
        // A job no longer waiting to be published is not touched.
        assert!(!refused(&a.view.id).await.unwrap());
        store.mark_published(b.view.id.clone()).await.unwrap();
        assert!(!refused(&b.view.id).await.unwrap());
        assert!(store.outbox(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_outbox_holds_unpublished_jobs_until_marked() {
        let store = Store::in_memory().unwrap();
        let (a, spec) = store.insert_job(new_job("m"), None).await.unwrap();
        let outbox = store.outbox(10).await.unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(store.count_outbox().await.unwrap(), 1);
        assert!(
            store
                .stale_published(Utc::now() + chrono::Duration::hours(1))
                .await
                .unwrap()
                .is_empty(),
            "not published yet"
        );
        assert_eq!(outbox[0].spec, spec);
        assert!(!outbox[0].reserved);
        // Unreserved, its number can still move (it was another job's in the object store).
        let spec = store
            .renumber(a.view.id.clone(), Some(Version::new(7).unwrap()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(spec.output_version.get(), 8);
        let outbox = store.outbox(10).await.unwrap();
        assert_eq!(outbox[0].spec.output_version.get(), 8);
        let view = store.job(a.view.id.clone()).await.unwrap().unwrap().view;
        assert_eq!(view.version, "v8");
        store.mark_reserved(a.view.id.clone()).await.unwrap();
        assert!(store.outbox(10).await.unwrap()[0].reserved);
        // Reserved, it is the job's for good.
        assert!(
            store
                .renumber(a.view.id.clone(), None)
                .await
                .unwrap()
                .is_none()
        );
        store.mark_published(a.view.id.clone()).await.unwrap();
        assert!(store.outbox(10).await.unwrap().is_empty());
        assert_eq!(store.count_outbox().await.unwrap(), 0);
        let job = store.job(a.view.id.clone()).await.unwrap().unwrap();
        assert!(job.view.published);
        // Published long enough ago (here: before an hour from now), a job still queued may
        // have lost its message: put back in the outbox, it is published again.
        let later = Utc::now() + chrono::Duration::hours(1);
        assert!(
            store
                .stale_published(Utc::now() - chrono::Duration::hours(1))
                .await
                .unwrap()
                .is_empty()
        );
        let stale = store.stale_published(later).await.unwrap();
        assert_eq!(stale, [(a.view.id.clone(), "default".to_owned())]);
        assert_eq!(store.republish(vec![a.view.id.clone()]).await.unwrap(), 1);
        assert_eq!(store.outbox(10).await.unwrap().len(), 1);
        assert_eq!(
            store.republish(vec![a.view.id]).await.unwrap(),
            0,
            "not published now"
        );
    }

    #[tokio::test]
    async fn listing_filters_and_pages() {
        let store = Store::in_memory().unwrap();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let mut job = new_job("m");
            job.spec.submitted_at = Utc::now();
            ids.push(store.insert_job(job, None).await.unwrap().0.view.id);
        }
        store.insert_job(new_job("x"), None).await.unwrap();
        let page1 = store
            .list_jobs(JobFilter {
                model: Some("m".into()),
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page1.iter().map(|j| &j.id).collect::<Vec<_>>(),
            ids.iter().rev().take(3).collect::<Vec<_>>()
        );
        let page2 = store
            .list_jobs(JobFilter {
                model: Some("m".into()),
                limit: 3,
                before: Some(page1[2].id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page2.len(), 2);
        let (_, cancelled) = store.request_cancel(ids[0].clone()).await.unwrap().unwrap();
        assert_eq!(cancelled.view.state, JobState::Cancelled);
        let only = store
            .list_jobs(JobFilter {
                state: Some(JobState::Cancelled),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        // A cancelled queued job leaves the outbox.
        assert_eq!(store.outbox(10).await.unwrap().len(), 5);
        // Nobody holds it: the cancel has no inbox to go to.
        assert_eq!(
            store.pending_cancels().await.unwrap(),
            vec![(ids[0].clone(), None)]
        );
    }
}
