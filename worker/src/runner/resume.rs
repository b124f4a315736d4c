//! Resume checkpoints: `jobs/<job id>/resume/{checkpoint-<sha>.safetensors, vocab-<sha>.json,
//! resume.json}`.
//!
//! `resume.json` is written last and names the other two files and their sha256, so it is the
//! commit marker (as a version's manifest is): a checkpoint without one, or one whose files do
//! not match it, is ignored. The files are named by their content (the first 16 hex digits of
//! their sha256), so a new checkpoint never overwrites the one the current marker names: a
//! worker killed between the files and the marker leaves the previous checkpoint usable (writing
//! to fixed names, such a kill lost the whole checkpoint and the job restarted from epoch 0).
//! Files no marker names any more are deleted after each new marker, and all of them once the
//! job is settled. A resume checkpoint that cannot be used (missing files, bad checksum, written
//! for other data, another budget or another architecture) is only an optimisation lost: the job
//! logs a warning and starts from the beginning rather than failing. Only epoch-boundary
//! checkpoints are written, so a resumed run continues exactly as an uninterrupted one would.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refit_proto::{ArchSpec, JobId, keys};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::retry::{JobError, Retry};
use refit_engine::pipeline;
use refit_engine::trainer::NluModel;
use refit_io::storage::{ObjectStore, StorageError};
use refit_proto::keys::sha256_hex;
use refit_proto::vocab::Vocabulary;

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
    /// The checkpoint's file name under the resume prefix (older markers:
    /// `checkpoint.safetensors`).
    #[serde(default = "legacy_checkpoint_file")]
    pub checkpoint_file: String,
    /// The vocabulary's file name under the resume prefix (older markers: `vocab.json`).
    #[serde(default = "legacy_vocab_file")]
    pub vocab_file: String,
    pub written_at: DateTime<Utc>,
}

fn legacy_checkpoint_file() -> String {
    keys::CHECKPOINT.to_owned()
}

fn legacy_vocab_file() -> String {
    keys::VOCAB.to_owned()
}

/// `<stem>-<first 16 hex digits of sha256>.<extension>` for a file name `<stem>.<extension>`.
fn content_name(file: &str, sha256: &str) -> String {
    let (stem, extension) = file.split_once('.').unwrap_or((file, ""));
    format!("{stem}-{}.{extension}", &sha256[..16.min(sha256.len())])
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

/// Uploads a resume checkpoint: the files (under names of their own), then the marker; then
/// deletes the files of earlier checkpoints (best effort).
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
    marker.checkpoint_file = content_name(keys::CHECKPOINT, &marker.checkpoint_sha256);
    marker.vocab_file = content_name(keys::VOCAB, &marker.vocab_sha256);
    marker.written_at = Utc::now();
    let ckpt_key = key(job, &marker.checkpoint_file);
    retry
        .run("upload resume checkpoint", || {
            store.put(&ckpt_key, checkpoint.clone())
        })
        .await?;
    let vocab_key = key(job, &marker.vocab_file);
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
    delete_unreferenced(store, &marker).await;
    Ok(marker)
}

/// Deletes the resume files `marker` does not name (earlier checkpoints); failures are logged.
async fn delete_unreferenced(store: &dyn ObjectStore, marker: &ResumeMarker) {
    let job = marker.job_id;
    let keep = [
        key(job, MARKER),
        key(job, &marker.checkpoint_file),
        key(job, &marker.vocab_file),
    ];
    let prefix = keys::resume_prefix(job);
    let objects = match store.list(&prefix).await {
        Ok(objects) => objects,
        Err(error) => {
            warn!(%error, %prefix, "failed to list old resume checkpoint files");
            return;
        }
    };
    for object in objects.into_iter().filter(|o| !keep.contains(&o.key)) {
        if let Err(error) = store.delete(&object.key).await {
            warn!(%error, key = %object.key, "failed to delete an old resume checkpoint file");
        }
    }
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
        (&marker.checkpoint_file, &marker.checkpoint_sha256),
        (&marker.vocab_file, &marker.vocab_sha256),
    ] {
        let Ok(k) = keys::resume_file(job, name) else {
            return unusable(format!("{MARKER} names an invalid file {name:?}"));
        };
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
    let vocab = match Vocabulary::from_json(&files[1], &marker.arch.featurizer) {
        Ok(v) => v,
        Err(e) => return unusable(format!("{}: {e}", keys::VOCAB)),
    };
    let model = match pipeline::load(&marker.arch, vocab, &files[0]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_content_and_old_markers_keep_the_fixed_names() {
        let sha = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            content_name(keys::CHECKPOINT, sha),
            "checkpoint-0123456789abcdef.safetensors"
        );
        assert_eq!(
            content_name(keys::VOCAB, sha),
            "vocab-0123456789abcdef.json"
        );
        assert!(keys::resume_file(JobId::new(), &content_name(keys::CHECKPOINT, sha)).is_ok());

        let marker = ResumeMarker {
            job_id: JobId::new(),
            epochs_done: 3,
            total_epochs: 9,
            step: 12,
            dataset_sha256: "d".into(),
            arch: ArchSpec::default(),
            checkpoint_sha256: "c".into(),
            vocab_sha256: "v".into(),
            checkpoint_file: String::new(),
            vocab_file: String::new(),
            written_at: Utc::now(),
        };
        let mut json = serde_json::to_value(&marker).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("checkpoint_file");
        object.remove("vocab_file");
        let old: ResumeMarker = serde_json::from_value(json).unwrap();
        assert_eq!(old.checkpoint_file, keys::CHECKPOINT);
        assert_eq!(old.vocab_file, keys::VOCAB);
    }
}
