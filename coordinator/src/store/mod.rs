//! The job store: one SQLite file (DESIGN §6) holding jobs, their events, workers and schedule
//! runs. Migrations live in `coordinator/migrations/` and are applied at open.
//!
//! SQLite calls block, so every call runs on tokio's blocking pool through `Store::call`; one
//! connection behind a mutex serialises writers, which is what makes version numbers unique per
//! model and lets the outbox and the event consumer update jobs without races.
//!
//! Layout:
//! - `jobs`: inserting (with the output version), reading, listing, the outbox, cancelling
//! - `events`: recording worker events and moving job states
//! - `leases`: which attempt holds a job: claims, fencing, lapses, requeues
//! - `commits`: committing versions, closing ended jobs, recovering jobs from reservations
//! - `schedule`: the last slot each schedule ran for

mod commits;
mod events;
mod jobs;
mod leases;
mod schedule;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use rusqlite::Connection;

pub use commits::{Closing, PendingCommit, PendingPromotion, closing_state};
pub use events::EventOutcome;
pub use jobs::{JobFilter, NewJob, OutboxJob, StoredJob};
pub use leases::{Expired, Lapse, LeaseSettings};
pub use schedule::ScheduleRun;

/// The migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_worker_presence.sql"),
    include_str!("../../migrations/0003_leases.sql"),
    include_str!("../../migrations/0004_publish_refusals.sql"),
    include_str!("../../migrations/0005_promotion.sql"),
];

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("job store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not parse (a bug or a hand-edited database).
    #[error("job store: corrupt row: {0}")]
    Corrupt(String),
    /// The database was written by a newer refit.
    #[error("job store: schema version {found} is newer than this refit's {known}; upgrade refit")]
    TooNew {
        /// The database's schema version.
        found: i64,
        /// The newest this build knows.
        known: usize,
    },
    /// The blocking task died.
    #[error("job store: background task failed: {0}")]
    Task(String),
}

/// The job store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// How hard a commit is pushed to disk (SQLite's `synchronous` in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: the log is synced at every commit, so a submit the API
    /// acknowledged, a granted lease or a committed version survives a power loss. What the
    /// coordinator runs with.
    #[default]
    Full,
    /// `synchronous = NORMAL`: synced only at checkpoints; the last commits can be lost on a
    /// power loss (not on a process crash). Only for comparison: the `store_durability` example
    /// measures what `Full` costs against it (BENCHMARKS.md).
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

impl Store {
    /// Opens (creating it and its folder if needed) and migrates the database at `path`, with
    /// [`Durability::Full`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::Full)
    }

    /// [`Store::open`] with a chosen durability.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path)?;
        Self::setup(conn, durability)
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?, Durability::Full)
    }

    fn setup(mut conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        // WAL lets readers (a backup, `sqlite3` by an operator) run beside the coordinator.
        // `synchronous = FULL` syncs the log at every commit, so a submit the API acknowledged,
        // a granted lease or a committed version survives a power loss too (NORMAL would lose
        // the last transactions: a job already published could vanish from the store).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", durability.pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied_count = usize::try_from(applied).unwrap_or(0);
    if applied_count > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied_count) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(schema = index + 1, "job store migrated");
    }
    Ok(())
}

/// A timestamp as stored: RFC 3339 with microseconds, UTC, so text order is time order.
pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses a stored timestamp.
pub(crate) fn parse_ts(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {text:?}: {e}")))
}

/// Parses an optional stored timestamp.
pub(crate) fn parse_ts_opt(text: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.as_deref().map(parse_ts).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_on_disk_syncs_every_commit_unless_asked_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let synchronous = async |durability| {
            let store = Store::open_with(&dir.path().join("c.db"), durability).unwrap();
            store
                .call(|conn| {
                    Ok(conn.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))?)
                })
                .await
                .unwrap()
        };
        // SQLite's codes: 2 = FULL, 1 = NORMAL.
        assert_eq!(synchronous(Durability::Full).await, 2);
        assert_eq!(synchronous(Durability::Normal).await, 1);
        assert_eq!(Durability::default(), Durability::Full);
        let store = Store::open(&dir.path().join("d.db")).unwrap();
        let mode: String = store
            .call(|conn| Ok(conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/coordinator.db");
        drop(Store::open(&path).unwrap());
        // Opening again applies nothing and keeps the schema.
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
