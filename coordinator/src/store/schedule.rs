//! The last slot each schedule ran for, so that after downtime a missed run happens once.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, parse_ts, ts};

/// A schedule's latest run.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRun {
    /// The cron slot it ran for.
    pub slot: DateTime<Utc>,
    /// `submitted`, `skipped_unchanged`, `skipped_active`, `rejected` or `error`.
    pub outcome: String,
    /// The job it submitted.
    pub job_id: Option<String>,
}

impl Store {
    /// The latest run of `schedule`, if any.
    pub async fn schedule_run(&self, schedule: String) -> Result<Option<ScheduleRun>, StoreError> {
        self.call(move |conn| {
            let row = conn
                .query_row(
                    "SELECT last_slot, last_outcome, last_job_id FROM schedule_runs \
                     WHERE schedule = ?1",
                    params![schedule],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .optional()?;
            row.map(|(slot, outcome, job_id)| {
                Ok(ScheduleRun {
                    slot: parse_ts(&slot)?,
                    outcome,
                    job_id,
                })
            })
            .transpose()
        })
        .await
    }

    /// Records the run of `schedule` for `run.slot`.
    pub async fn record_schedule_run(
        &self,
        schedule: String,
        run: ScheduleRun,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO schedule_runs (schedule, last_slot, last_outcome, last_job_id, \
                 updated_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (schedule) DO UPDATE SET \
                 last_slot = excluded.last_slot, last_outcome = excluded.last_outcome, \
                 last_job_id = excluded.last_job_id, updated_at = excluded.updated_at",
                params![
                    schedule,
                    ts(run.slot),
                    run.outcome,
                    run.job_id,
                    ts(Utc::now())
                ],
            )?;
            Ok(())
        })
        .await
    }
}
