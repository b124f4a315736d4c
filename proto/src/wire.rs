//! The HTTP API's JSON bodies (`/v1/…`), shared by the coordinator (which serves them), the `refit`
//! CLI (which reads them) and the dashboard. Field names are part of the API contract
//! (`coordinator/openapi.yaml`); add fields, do not rename them.

use std::collections::BTreeMap;

use crate::decision::{DecisionReport, Policy};
use crate::promotion::GateResult;
use crate::{Metrics, Mode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A dataset already in the object store, named by its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetBody {
    /// `datasets/sha256/<hex>.<ext>`.
    pub key: String,
    /// The sha256 (hex) of its bytes; must match the key's.
    pub sha256: String,
}

/// `POST /v1/jobs` and `POST /v1/check`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The model to train a version of.
    pub model: String,
    /// The whole training set (old plus new examples), already uploaded.
    pub dataset: Option<DatasetBody>,
    /// Held-out data to evaluate the new version on.
    #[serde(default)]
    pub eval_dataset: Option<DatasetBody>,
    /// `auto` (default), `finetune` or `scratch`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// What `auto` does when fine-tuning is not allowed: `reject` (default) or `scratch`.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// The version to fine-tune from: `v3`, `3` or an alias name. Default: the latest.
    #[serde(default)]
    pub base: Option<String>,
    /// Epochs to train (scratch default 100).
    #[serde(default)]
    pub epochs: Option<u32>,
    /// For a fine-tune: the fraction of the base version's epochs (default 0.3).
    #[serde(default)]
    pub epoch_fraction: Option<f64>,
    /// Examples per optimiser step (in the first epoch). Default 32; given without
    /// `final_batch_size`, the batch size stays at it.
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// Examples per step in the last epoch: the batch size grows linearly from `batch_size`.
    /// Default 128 when `batch_size` is not given either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_batch_size: Option<u32>,
    /// AdamW learning rate. Default 0.003.
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Seed for initialisation, shuffling and dropout.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Above 0, the job goes to its pool's priority queue, which workers drain first (two
    /// classes: 0 and above 0). Default 0.
    #[serde(default)]
    pub priority: Option<u8>,
    /// The worker pool. Default: the coordinator's `queue.pool`.
    #[serde(default)]
    pub pool: Option<String>,
    /// On success, move this alias to the new version if it passes the alias's gate (needs
    /// `eval_dataset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_to: Option<String>,
}

/// `POST /v1/jobs` → 201 (and 200 from `POST /v1/check`, with `job` absent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The stored job; absent for `/v1/check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
    /// The fine-tune decision and everything that explains it.
    pub decision: DecisionReport,
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Stored; published (or waiting in the outbox to be); no worker has started it.
    Queued,
    /// A worker reported `started` and heartbeats arrive.
    Running,
    /// Running, but no heartbeat for `coordinator.stall_after_secs`.
    Stalled,
    /// The version is stored.
    Succeeded,
    /// Failed for good (a permanent error).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Dead-lettered without a final event (e.g. past the delivery limit).
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Stalled,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Stalled => "stalled",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// Whether the job can change state no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Dead
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?}: expected one of queued, running, stalled, \
                     succeeded, failed, cancelled, dead"
                )
            })
    }
}

/// The latest training progress of a running job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressView {
    /// Current epoch (fractional).
    pub epoch: f64,
    /// Epochs the job trains in all (0 when not known yet).
    pub total_epochs: f64,
    /// Optimiser steps so far.
    pub step: u64,
    /// Recent training loss.
    pub loss: f64,
    /// Training throughput.
    pub examples_per_sec: f64,
    /// Estimated seconds left.
    pub eta_secs: Option<f64>,
    /// What the worker is doing: `download`, `train`, `evaluate`, `export`, `upload`.
    pub phase: Option<String>,
    /// What the last heartbeat said keeps the attempt from going on or from saving its work
    /// (a failing checkpoint upload, S3 unreachable); `None` when all is well.
    #[serde(default)]
    pub trouble: Option<String>,
}

/// One recorded worker event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// Order of arrival at the coordinator.
    pub seq: i64,
    /// When the worker sent it (by the worker's clock).
    pub at: DateTime<Utc>,
    /// When the coordinator received it (by its own clock: what leases and stall detection use).
    #[serde(default = "epoch")]
    pub received_at: DateTime<Utc>,
    /// Which delivery of the job it is about.
    pub attempt: u32,
    /// The attempt (one worker's run of the job) that sent it; `None` for the coordinator's
    /// own events (`lease_lapsed`).
    #[serde(default)]
    pub attempt_id: Option<String>,
    /// The worker that sent it (`coordinator` for the coordinator's own events).
    pub worker: String,
    /// `claim`, `started`, `progress`, `heartbeat`, `checkpointed`, `succeeded`, `failed`,
    /// `cancelled`, `released`, or the coordinator's `lease_lapsed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's fields, as the worker sent them.
    pub body: serde_json::Value,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job id (a UUIDv7).
    pub id: String,
    /// The model.
    pub model: String,
    /// Where it is in its life.
    pub state: JobState,
    /// `finetune` or `scratch`: what the job trains (after the decision).
    pub mode: Mode,
    /// What the caller asked for (`auto`, `finetune` or `scratch`).
    pub requested_mode: Mode,
    /// The version it fine-tunes from, e.g. `v1`.
    pub base_version: Option<String>,
    /// The version it writes, e.g. `v2`; unique per model.
    pub version: String,
    /// The worker pool.
    pub pool: String,
    /// The training data.
    pub dataset: DatasetBody,
    /// Deliveries to a worker so far.
    pub attempts: u32,
    /// Attempts that crashed, were cut off (their lease lapsed) or failed transiently; at
    /// `coordinator.max_failures` the job is dead.
    #[serde(default)]
    pub failures: u32,
    /// Attempts handed back by a worker that shut down (they do not count as failures).
    #[serde(default)]
    pub handbacks: u32,
    /// Whether the job message has been published (and confirmed) to the broker.
    pub published: bool,
    /// The worker running (or that last ran) it.
    pub worker: Option<String>,
    /// Latest progress, while running.
    pub progress: Option<ProgressView>,
    /// Quality of the new version on held-out data, once succeeded.
    pub metrics: Option<Metrics>,
    /// Seconds per phase, once succeeded.
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// Why it failed (no secrets: what the worker reported).
    pub error: Option<String>,
    /// The schedule that submitted it, if any.
    pub schedule: Option<String>,
    /// The decision's outcome (`finetune`/`scratch`) and reason codes.
    pub decision: Option<DecisionSummary>,
    /// The alias the job asked to move on success (`promote_to`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_to: Option<String>,
    /// What became of that: the gate's decision, once the version is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionView>,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The latest heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// The latest resume checkpoint.
    pub last_checkpoint_at: Option<DateTime<Utc>>,
    /// Its events, oldest first (only in `GET /v1/jobs/{id}`: one page, see `more_events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventView>,
    /// More events follow the page in `events` (ask again with `events_after` set to the last
    /// one's `seq`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more_events: bool,
}

/// What a job's `promote_to` led to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionView {
    /// The alias.
    pub alias: String,
    /// `promoted` (the alias moved), `refused` (the gate failed; the alias stayed), or `error`
    /// (the gate could not be asked: see `summary`).
    pub outcome: String,
    /// One line for people: what moved, or why not.
    pub summary: String,
    /// The gate's checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateResult>,
    /// When it was decided.
    pub at: DateTime<Utc>,
}

/// The decision recorded with a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionSummary {
    /// `finetune` or `scratch`.
    pub decision: String,
    /// Stable reason codes, e.g. `new_words` or `label_added`.
    pub reasons: Vec<String>,
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One stored version of a model, read from its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionView {
    /// e.g. `v2`.
    pub version: String,
    /// The version it was fine-tuned from.
    pub parent: Option<String>,
    /// `finetune` or `scratch`.
    pub mode: Mode,
    /// Fine-tunes since the last scratch run.
    pub finetune_depth: u32,
    /// sha256 of the training data.
    pub dataset_sha256: String,
    /// The training data's object key.
    pub dataset_key: String,
    /// Training examples.
    pub examples: u64,
    /// Epochs trained.
    pub epochs: f64,
    /// Quality on held-out data.
    pub metrics: Option<Metrics>,
    /// Seconds per phase.
    pub timings: BTreeMap<String, f64>,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/models/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    /// The model.
    pub model: String,
    /// Oldest first.
    pub versions: Vec<VersionView>,
}

/// One model in `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    /// The model.
    pub name: String,
    /// Its newest stored version.
    pub latest_version: Option<String>,
    /// Stored versions.
    pub versions: u32,
    /// Alias → version.
    pub aliases: BTreeMap<String, String>,
    /// Jobs queued or running for it.
    pub active_jobs: u32,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// By name.
    pub models: Vec<ModelView>,
}

/// `PUT /v1/models/{name}/aliases/{alias}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasRequest {
    /// The version it should point at: `v3` or `3`.
    pub version: String,
    /// Move even when the gate fails (recorded in the alias's history).
    #[serde(default)]
    pub force: bool,
    /// Why, for the history.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who, for the history (`refit alias` sends `user@host`).
    #[serde(default)]
    pub by: Option<String>,
}

/// `PUT /v1/models/{name}/aliases/{alias}` → 200.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AliasView {
    /// The model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// The version it points at.
    pub version: String,
    /// The version it pointed at before, if any.
    pub previous: Option<String>,
    /// Moved although the gate failed (`force`).
    #[serde(default)]
    pub forced: bool,
    /// The gate's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateResult>,
}

/// A worker, as seen from its events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Its id.
    pub id: String,
    /// Its latest event of any kind.
    pub last_seen_at: DateTime<Utc>,
    /// Seconds since then.
    pub heartbeat_age_secs: f64,
    /// The job it last reported on.
    pub job: Option<String>,
    /// The pool it consumes (from its presence messages).
    pub pool: Option<String>,
    /// `busy` while a job runs, `idle` without one, `lost` when silent past the stall threshold,
    /// `stopping` after it said it shuts down (`stopped` once silent past the threshold).
    pub status: String,
}

/// One queue's depth, read from RabbitMQ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    /// The queue.
    pub name: String,
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged; `None` when only AMQP (not the management
    /// API) could be asked.
    pub unacked: Option<u64>,
    /// Consumers attached.
    pub consumers: u64,
}

/// `GET /v1/overview`: everything the dashboard shows, in one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// When it was computed.
    pub now: DateTime<Utc>,
    /// The coordinator's refit version.
    pub refit_version: String,
    /// Job queues, the dead-letter queue and the coordinator's events queue; empty when the
    /// broker cannot be reached (then `broker_error` says why).
    pub queues: Vec<QueueView>,
    /// Why queue depths are missing.
    pub broker_error: Option<String>,
    /// Workers seen in the last hour.
    pub workers: Vec<WorkerView>,
    /// Jobs by state.
    pub jobs_by_state: BTreeMap<String, u64>,
    /// Queued, running and stalled jobs.
    pub active_jobs: Vec<JobView>,
    /// The latest 20 jobs in a final state.
    pub recent_jobs: Vec<JobView>,
    /// Loss curves of the active jobs: job id → `[step, loss]` points (at most 200, oldest first).
    pub loss_curves: BTreeMap<String, Vec<(u64, f64)>>,
}

/// Every error the API returns: `{"error": {"code", "message", "details"?}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `unauthorized`, `not_found`, `invalid_request`,
    /// `rejected`, `conflict`, `dataset_unavailable`, `store_unavailable`, `unavailable`,
    /// `internal`.
    pub code: String,
    /// For people.
    pub message: String,
    /// More, for some codes (`rejected`: the decision report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The Unix epoch: what an event recorded before `received_at` existed shows.
fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}
