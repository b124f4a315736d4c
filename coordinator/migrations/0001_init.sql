-- refit coordinator job store, schema 1. Applied once, in a transaction, by store::migrate;
-- PRAGMA user_version records the schema. Timestamps are RFC 3339 UTC text.

-- One row per submitted job. A job is inserted before its message is published: rows with
-- published_at NULL are the outbox, which the publisher drains (DESIGN §2).
CREATE TABLE jobs (
    id                 TEXT PRIMARY KEY,
    model              TEXT NOT NULL,
    version            INTEGER NOT NULL,
    base_version       INTEGER,
    mode               TEXT NOT NULL,
    requested_mode     TEXT NOT NULL,
    pool               TEXT NOT NULL,
    state              TEXT NOT NULL,
    spec               BLOB NOT NULL,   -- the JobSpec envelope exactly as published
    dataset_key        TEXT NOT NULL,
    dataset_sha256     TEXT NOT NULL,
    decision           TEXT,            -- DecisionReport JSON
    schedule           TEXT,
    published_at       TEXT,
    publish_attempts   INTEGER NOT NULL DEFAULT 0,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,
    cancel_published   INTEGER NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,
    worker             TEXT,
    progress           TEXT,            -- ProgressView JSON
    metrics            TEXT,            -- Metrics JSON
    timings            TEXT,            -- {phase: seconds} JSON
    error              TEXT,
    submitted_at       TEXT NOT NULL,
    started_at         TEXT,
    finished_at        TEXT,
    last_heartbeat_at  TEXT,
    last_checkpoint_at TEXT,
    updated_at         TEXT NOT NULL,
    UNIQUE (model, version)
);
CREATE INDEX jobs_by_state ON jobs (state, submitted_at);
CREATE INDEX jobs_by_model ON jobs (model, submitted_at);
CREATE INDEX jobs_outbox ON jobs (submitted_at) WHERE published_at IS NULL;

-- Every worker event, once: redelivered duplicates hit the unique index and are ignored.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    worker      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (job_id, attempt, worker, kind, at)
);
CREATE INDEX events_by_job ON events (job_id, seq);

-- Workers, as seen from their events.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    last_seen_at TEXT NOT NULL,
    job_id       TEXT,
    busy         INTEGER NOT NULL
);

-- The last slot each schedule ran for, so a restart runs a missed slot once.
CREATE TABLE schedule_runs (
    schedule     TEXT PRIMARY KEY,
    last_slot    TEXT NOT NULL,
    last_outcome TEXT NOT NULL,
    last_job_id  TEXT,
    updated_at   TEXT NOT NULL
);
