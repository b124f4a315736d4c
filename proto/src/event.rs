//! What workers and the coordinator tell each other about jobs: [`Event`]s from a worker on
//! `refit.events`, and [`Control`] messages from the coordinator to one worker's inbox.
//!
//! ## Leases
//!
//! A worker that takes a job delivery draws an [`AttemptId`] and sends [`EventKind::Claim`] with
//! its inbox (an exclusive queue only its connection reads) as the AMQP `reply_to`. The
//! coordinator answers [`Control::Granted`] with a fencing token (`fence`, larger with every
//! grant of the job) or [`Control::Refused`]. Every later event of the attempt carries
//! `attempt_id` and `fence`; the coordinator acts only on events of the attempt that holds the
//! job's lease, renews the lease on each, and takes it back ([`Control::Revoked`]) when the lease
//! expires, the job is cancelled, or another attempt holds it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{AttemptId, JobId, Version, WorkerId};
use crate::manifest::{FileEntry, Metrics};

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
    /// Which delivery of the job this is, as the broker counts them (1 for the first).
    pub attempt: u32,
    /// The worker that sent it.
    pub worker_id: WorkerId,
    /// When it was sent, by the worker's clock (shown; liveness uses the coordinator's).
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The attempt (see the [module docs](self)); absent in events of workers older than
    /// leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<AttemptId>,
    /// The lease's fencing token the attempt was granted; absent before the grant (`claim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The worker took a delivery of the job and asks for its lease; the answer goes to the
    /// message's `reply_to` ([`Control::Granted`] or [`Control::Refused`]).
    Claim,
    /// The attempt gives the job back unfinished (the worker is shutting down): the coordinator
    /// queues it again without counting a failure.
    Released {
        /// Why, for people.
        reason: String,
    },
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
        /// What keeps the attempt from going on or from saving its work, for people: a failing
        /// resume-checkpoint upload, S3 or the broker unreachable. `None` when all is well.
        #[serde(default)]
        trouble: Option<String>,
    },
    /// A resume checkpoint was written and verified.
    Checkpointed {
        /// The epoch it was written after.
        epoch: f64,
        /// Its optimiser step.
        step: u64,
        /// Where it is: the next attempt of the job resumes from it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumePoint>,
    },
    /// The attempt's version files are uploaded (under `models/<m>/v<N>/<attempt>/`, with the
    /// draft manifest); the coordinator commits them as the version by writing its manifest.
    Succeeded {
        /// The version trained.
        version: Version,
        /// Quality on the held-out data, if any.
        #[serde(default)]
        metrics: Option<Metrics>,
        /// Seconds per phase.
        #[serde(default)]
        timings: BTreeMap<String, f64>,
        /// The uploaded files by name, `manifest.json` (the draft) included.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        files: BTreeMap<String, FileEntry>,
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
            EventKind::Claim => "claim",
            EventKind::Released { .. } => "released",
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

/// A file in the object store and the sha256 it must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The object key.
    pub key: String,
    /// Its sha256 (hex).
    pub sha256: String,
}

/// A resume checkpoint: where an attempt can continue a job from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The attempt that wrote it.
    pub attempt_id: AttemptId,
    /// Epochs of the job's run done.
    pub epochs_done: u64,
    /// The optimiser step.
    pub step: u64,
    /// `checkpoint.safetensors` as of then.
    pub checkpoint: FileRef,
    /// `vocab.json` as of then.
    pub vocab: FileRef,
}

/// A message from the coordinator to one worker, on the worker's inbox (an exclusive queue only
/// that worker's connection reads, named in its events' `reply_to`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Stop the job wherever it runs.
    Cancel {
        /// The job.
        job_id: JobId,
    },
    /// The attempt holds the job's lease: train it.
    Granted {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt_id: AttemptId,
        /// The fencing token every later event of the attempt carries.
        fence: u64,
        /// How long the lease lasts without a heartbeat.
        lease_secs: u64,
        /// The resume checkpoint to continue from, if an earlier attempt left one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumePoint>,
    },
    /// The attempt may not run the job (another attempt holds it, it is done, cancelled or
    /// unknown): settle the delivery and drop it.
    Refused {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt_id: AttemptId,
        /// Why, for people.
        reason: String,
    },
    /// The attempt lost the lease (it expired, the job was cancelled or taken over): stop, and
    /// upload nothing more.
    Revoked {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt_id: AttemptId,
        /// Why, for people.
        reason: String,
    },
}

impl Control {
    /// The job it is about.
    pub fn job_id(&self) -> JobId {
        match self {
            Control::Cancel { job_id }
            | Control::Granted { job_id, .. }
            | Control::Refused { job_id, .. }
            | Control::Revoked { job_id, .. } => *job_id,
        }
    }

    /// The message's name, as in its `type` field.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Cancel { .. } => "cancel",
            Control::Granted { .. } => "granted",
            Control::Refused { .. } => "refused",
            Control::Revoked { .. } => "revoked",
        }
    }
}
