//! Events a worker reports on `refit.events` about a job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, Version, WorkerId};
use crate::manifest::Metrics;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A service was unreachable or timed out: retry later.
    Transient,
    /// Bad data, a corrupt or missing checkpoint, an incompatible model: retrying cannot help.
    Permanent,
}

impl ErrorKind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        }
    }
}

/// One event about one attempt at a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The job.
    pub job_id: JobId,
    /// Which delivery of the job this is (1 for the first).
    pub attempt: u32,
    /// The worker that sent it.
    pub worker_id: WorkerId,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The worker began the job; `resumed_from_epoch` is set when it continues from a resume
    /// checkpoint of an earlier attempt.
    Started {
        /// The epoch the resume checkpoint was written after.
        #[serde(default)]
        resumed_from_epoch: Option<f64>,
        /// Total epochs this job will train.
        #[serde(default)]
        total_epochs: f64,
    },
    /// Training progress.
    Progress {
        /// Current epoch (fractional).
        epoch: f64,
        /// Optimiser steps so far.
        step: u64,
        /// Recent training loss.
        loss: f64,
        /// Training throughput.
        examples_per_sec: f64,
        /// Estimated seconds left.
        #[serde(default)]
        eta_secs: Option<f64>,
    },
    /// The worker is alive and working on the job.
    Heartbeat {
        /// What it is doing: `download`, `train`, `evaluate`, `export`, `upload`.
        phase: String,
        /// Seconds since the last resume checkpoint, if one was written.
        #[serde(default)]
        checkpoint_age_secs: Option<f64>,
    },
    /// A resume checkpoint was written and verified.
    Checkpointed {
        /// The epoch it was written after.
        epoch: f64,
        /// Its optimiser step.
        step: u64,
    },
    /// The version is stored and complete.
    Succeeded {
        /// The version written.
        version: Version,
        /// Quality on the held-out data, if any.
        #[serde(default)]
        metrics: Option<Metrics>,
        /// Seconds per phase.
        #[serde(default)]
        timings: BTreeMap<String, f64>,
    },
    /// The attempt failed.
    Failed {
        /// What went wrong, for people.
        error: String,
        /// Whether a retry can help.
        error_kind: ErrorKind,
    },
    /// The job was cancelled.
    Cancelled,
}

impl EventKind {
    /// The event's name, as used in routing keys (`job.<id>.<name>`).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started { .. } => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Heartbeat { .. } => "heartbeat",
            EventKind::Checkpointed { .. } => "checkpointed",
            EventKind::Succeeded { .. } => "succeeded",
            EventKind::Failed { .. } => "failed",
            EventKind::Cancelled => "cancelled",
        }
    }
}

/// A worker's presence, on `refit.events` with routing key `worker.<worker id>.<state>`: sent
/// when the worker starts, every `worker.presence_secs` while it runs (idle or busy), and when it
/// stops, so that idle workers are seen and a vanished one is noticed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker.
    pub worker_id: WorkerId,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// Running or stopping.
    pub state: WorkerState,
    /// Jobs it is running.
    #[serde(default)]
    pub running: u32,
    /// The pool whose job queue it consumes.
    #[serde(default)]
    pub pool: String,
}

/// A worker's state in a [`WorkerStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Running: taking jobs (or busy with them).
    Online,
    /// Shutting down: takes no new jobs; running ones hand back.
    Stopping,
}

impl WorkerState {
    /// The lowercase name, as used in routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Online => "online",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// A message on the `refit.control` fanout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Stop the job wherever it runs.
    Cancel {
        /// The job.
        job_id: JobId,
    },
}
