//! # refit-proto
//!
//! The contract every refit process shares, at the bottom of the workspace: every other crate
//! depends on it, and it depends on none of them. It has no async runtime, broker, storage or
//! ONNX Runtime dependency, so the coordinator, the workers and the CLI can all link it.
//!
//! ## Layout
//! - [`ids`]: ID newtypes ([`JobId`], [`WorkerId`], [`ModelName`], [`Version`], [`Alias`]),
//!   validated so that no path tricks reach an object key
//! - [`job`]: the job message ([`JobSpec`])
//! - [`event`]: worker events ([`Event`]) and the coordinator's messages to a worker
//!   ([`Control`]), the lease protocol between them
//! - [`envelope`]: the versioned msgpack envelope and its typed [`DecodeError`]
//! - [`manifest`]: a stored version's [`Manifest`], its [`LabelSet`] and architecture fingerprint
//! - [`reservation`]: [`reservation::Reservation`], the job that took a version number
//! - [`keys`]: the object-store key layout and content addressing ([`keys::sha256_hex`])
//! - [`data`]: training data (Rasa YAML NLU, JSONL) parsing
//! - [`tokens`]: the one tokenizer (word tokens with their character spans)
//! - [`vocab`]: feature keys, the append-only [`vocab::Vocabulary`] and `vocab.json`
//! - [`decision`]: the label-set diff and the fine-tune decision
//! - [`evaluation`]: scores on held-out data, `evaluation.json` and comparisons between versions
//! - [`promotion`]: the alias policy (gate), its decisions and the alias history
//! - [`wire`]: the coordinator's HTTP API bodies, shared by the service, the CLI and the dashboard
#![warn(missing_docs)]

pub mod data;
pub mod decision;
pub mod envelope;
pub mod evaluation;
pub mod event;
pub mod ids;
pub mod job;
pub mod keys;
pub mod manifest;
pub mod promotion;
pub mod reservation;
pub mod tokens;
pub mod vocab;
pub mod wire;

pub use envelope::{DecodeError, Message, decode, encode};
pub use event::{
    Control, ErrorKind, Event, EventKind, FileRef, ResumePoint, WorkerState, WorkerStatus,
};
pub use ids::{Alias, AttemptId, IdError, JobId, ModelName, Version, WorkerId};
pub use job::{Budget, DatasetRef, Hyperparams, JobSpec, Mode};
pub use manifest::{ArchSpec, FeaturizerSpec, LabelSet, Manifest, Metrics};

/// This crate's version, recorded in manifests.
pub const REFIT_VERSION: &str = env!("CARGO_PKG_VERSION");
