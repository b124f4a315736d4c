//! Resume checkpoints: `jobs/<job id>/resume/{checkpoint.safetensors, vocab.json, resume.json}`.
//!
//! `resume.json` is written last and names the sha256 of the other two, so it is the commit
//! marker (as a version's manifest is): a checkpoint without one, or one whose files do not match
//! it, is ignored. A resume checkpoint that cannot be used (missing files, bad checksum, written
//! for other data, another budget or another architecture) is only an optimisation lost: the job
//! logs a warning and starts from the beginning rather than failing. Only epoch-boundary
//! checkpoints are written, so a resumed run continues exactly as an uninterrupted one would.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refit_proto::{ArchSpec, JobId, keys};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::retry::{JobError, Retry};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::featurizer::Vocabulary;
use crate::engine::trainer::NluModel;
use crate::storage::{ObjectStore, StorageError, sha256_hex};

/// The commit marker's file name.
pub(crate) const MARKER: &str = "resume.json";

/// What `resume.json` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResumeMarker {
    pub job_id: JobId,
    /// Epochs of this job's run completed in the checkpoint.
    pub epochs_done: u64,
    /// The run's budget, in epochs.
    pub total_epochs: u32,
    /// Optimiser steps over the model's life.
    pub step: u64,
    /// The training data it was trained on.
    pub dataset_sha256: String,
    /// The architecture (for rebuilding the model).
    pub arch: ArchSpec,
    pub checkpoint_sha256: String,
    pub vocab_sha256: String,
    pub written_at: DateTime<Utc>,
}

/// What a usable resume checkpoint must match.
pub(crate) struct Expect<'a> {
    pub job_id: JobId,
    pub dataset_sha256: &'a str,
    pub total_epochs: u32,
    pub arch_fingerprint: String,
}

fn key(job: JobId, file: &str) -> String {
    keys::resume_file(job, file).expect("fixed file names are valid")
}

/// Uploads a resume checkpoint: the files, then the marker.
pub(crate) async fn write(
    store: &dyn ObjectStore,
    retry: &Retry,
    marker_base: &ResumeMarker,
    checkpoint: Bytes,
    vocab: Bytes,
) -> Result<ResumeMarker, StorageError> {
    let job = marker_base.job_id;
    let mut marker = marker_base.clone();
    marker.checkpoint_sha256 = sha256_hex(&checkpoint);
    marker.vocab_sha256 = sha256_hex(&vocab);
    marker.written_at = Utc::now();
    let ckpt_key = key(job, keys::CHECKPOINT);
    retry
        .run("upload resume checkpoint", || {
            store.put(&ckpt_key, checkpoint.clone())
        })
        .await?;
    let vocab_key = key(job, keys::VOCAB);
    retry
        .run("upload resume vocabulary", || {
            store.put(&vocab_key, vocab.clone())
        })
        .await?;
    let json = Bytes::from(serde_json::to_vec_pretty(&marker).expect("the marker serialises"));
    let marker_key = key(job, MARKER);
    retry
        .run("upload resume marker", || {
            store.put(&marker_key, json.clone())
        })
        .await?;
    Ok(marker)
}

/// The job's resume checkpoint as a model, if a usable one exists. Only a store that stays
/// unreachable is an error.
pub(crate) async fn load(
    store: &dyn ObjectStore,
    retry: &Retry,
    expect: &Expect<'_>,
) -> Result<Option<(NluModel, ResumeMarker)>, JobError> {
    let job = expect.job_id;
    let marker_key = key(job, MARKER);
    let bytes = match retry
        .run("read resume marker", || store.get(&marker_key))
        .await
    {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(JobError::storage("failed to read the resume checkpoint")(e)),
    };
    let unusable = |reason: String| {
        warn!(%reason, "ignoring the resume checkpoint; training from the beginning");
        Ok(None)
    };
    let marker: ResumeMarker = match serde_json::from_slice(&bytes) {
        Ok(marker) => marker,
        Err(e) => return unusable(format!("{MARKER} does not parse: {e}")),
    };
    if marker.job_id != job
        || marker.dataset_sha256 != expect.dataset_sha256
        || marker.total_epochs != expect.total_epochs
        || marker.arch.fingerprint() != expect.arch_fingerprint
    {
        return unusable(
            "it was written for other data, another epoch budget or another architecture"
                .to_owned(),
        );
    }
    let mut files = Vec::new();
    for (name, sha) in [
        (keys::CHECKPOINT, &marker.checkpoint_sha256),
        (keys::VOCAB, &marker.vocab_sha256),
    ] {
        let k = key(job, name);
        match retry
            .run("read resume checkpoint", || store.get_verified(&k, sha))
            .await
        {
            Ok(bytes) => files.push(bytes),
            Err(e) if e.is_transient() => {
                return Err(JobError::storage("failed to read the resume checkpoint")(e));
            }
            Err(e) => return unusable(format!("{name}: {e}")),
        }
    }
    let checkpoint = match Checkpoint::from_bytes(&files[0]) {
        Ok(c) => c,
        Err(e) => return unusable(format!("{}: {e}", keys::CHECKPOINT)),
    };
    let vocab = match Vocabulary::from_json(&files[1], &marker.arch.featurizer) {
        Ok(v) => v,
        Err(e) => return unusable(format!("{}: {e}", keys::VOCAB)),
    };
    let model = match NluModel::from_parts(marker.arch.clone(), vocab, checkpoint) {
        Ok(m) => m,
        Err(e) => return unusable(e.to_string()),
    };
    if model.checkpoint.state.epochs_done != marker.epochs_done {
        return unusable("the checkpoint's epoch count differs from resume.json's".to_owned());
    }
    info!(
        epochs_done = marker.epochs_done,
        step = marker.step,
        "resuming from a resume checkpoint"
    );
    Ok(Some((model, marker)))
}

/// Deletes the job's resume checkpoint (after the job is settled); failures are logged.
pub(crate) async fn delete(store: &dyn ObjectStore, job: JobId) {
    let prefix = keys::resume_prefix(job);
    let objects = match store.list(&prefix).await {
        Ok(objects) => objects,
        Err(error) => {
            warn!(%error, %prefix, "failed to list the resume checkpoint for deletion");
            return;
        }
    };
    // The marker first, so a half-deleted checkpoint is never taken for a complete one.
    let mut keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
    keys.sort_by_key(|k| !k.ends_with(MARKER));
    for k in keys {
        if let Err(error) = store.delete(&k).await {
            warn!(%error, key = %k, "failed to delete a resume checkpoint file");
        }
    }
}
