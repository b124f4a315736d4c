//! Resume checkpoints: `jobs/<job id>/attempts/<attempt>/resume/{checkpoint-<sha>.safetensors,
//! vocab-<sha>.json}`, one pair per epoch-boundary checkpoint.
//!
//! Each attempt writes under its own prefix, so an attempt that lost its lease (a worker cut off
//! while another took over) can never overwrite or delete what the attempt holding the job
//! resumes from. Files are named by their content (the first 16 hex digits of their sha256) and
//! reported in the `checkpointed` event as a [`ResumePoint`]: the coordinator keeps the latest one
//! its lease holder reported and hands it to the next attempt with the grant. An attempt keeps
//! its two newest checkpoints (the coordinator may not have read the newest one's event yet);
//! the coordinator deletes `jobs/<job id>/` when the job ends.
//!
//! A resume point that cannot be used (missing files, bad checksum, a checkpoint that does not
//! fit the job's architecture) is only an optimisation lost: the attempt logs a warning and
//! starts from the beginning rather than failing. Only epoch-boundary checkpoints are written,
//! so a resumed run continues exactly as an uninterrupted one would.

use bytes::Bytes;
use refit_engine::pipeline;
use refit_engine::trainer::NluModel;
use refit_io::storage::{ObjectStore, StorageError};
use refit_proto::keys::{self, sha256_hex};
use refit_proto::vocab::Vocabulary;
use refit_proto::{ArchSpec, AttemptId, FileRef, JobId, ResumePoint};
use tracing::{info, warn};

use super::retry::{JobError, Retry};

/// `<stem>-<first 16 hex digits of sha256>.<extension>` for a file name `<stem>.<extension>`.
fn content_name(file: &str, sha256: &str) -> String {
    let (stem, extension) = file.split_once('.').unwrap_or((file, ""));
    format!("{stem}-{}.{extension}", &sha256[..16.min(sha256.len())])
}

/// Uploads one checkpoint of `attempt` (the checkpoint, then the vocabulary, each under a name of
/// its content) and returns where it is.
pub(crate) async fn write(
    store: &dyn ObjectStore,
    retry: &Retry,
    (job, attempt): (JobId, AttemptId),
    (epochs_done, step): (u64, u64),
    checkpoint: Bytes,
    vocab: Bytes,
) -> Result<ResumePoint, StorageError> {
    let mut refs = Vec::new();
    for (name, bytes) in [(keys::CHECKPOINT, checkpoint), (keys::VOCAB, vocab)] {
        let sha256 = sha256_hex(&bytes);
        let key = keys::resume_file(job, attempt, &content_name(name, &sha256))
            .expect("content names are valid file names");
        retry
            .run("upload a resume checkpoint", || {
                store.put(&key, bytes.clone())
            })
            .await?;
        refs.push(FileRef { key, sha256 });
    }
    let vocab = refs.pop().expect("two files");
    let checkpoint = refs.pop().expect("two files");
    Ok(ResumePoint {
        attempt_id: attempt,
        epochs_done,
        step,
        checkpoint,
        vocab,
    })
}

/// Deletes `attempt`'s checkpoint files that none of `keep` names (best effort: failures are
/// logged).
pub(crate) async fn prune(
    store: &dyn ObjectStore,
    (job, attempt): (JobId, AttemptId),
    keep: &[ResumePoint],
) {
    let prefix = keys::resume_prefix(job, attempt);
    let objects = match store.list(&prefix).await {
        Ok(objects) => objects,
        Err(error) => {
            warn!(%error, %prefix, "failed to list old resume checkpoint files");
            return;
        }
    };
    let kept = |key: &str| {
        keep.iter()
            .any(|p| p.checkpoint.key == key || p.vocab.key == key)
    };
    for object in objects.into_iter().filter(|o| !kept(&o.key)) {
        if let Err(error) = store.delete(&object.key).await {
            warn!(%error, key = %object.key, "failed to delete an old resume checkpoint file");
        }
    }
}

/// The model at `point`, if it can be used for `job` with `arch`. Only a store that stays
/// unreachable is an error.
pub(crate) async fn load(
    store: &dyn ObjectStore,
    retry: &Retry,
    job: JobId,
    point: &ResumePoint,
    arch: &ArchSpec,
) -> Result<Option<NluModel>, JobError> {
    let unusable = |reason: String| {
        warn!(%reason, "ignoring the resume checkpoint; training from the beginning");
        Ok(None)
    };
    let mut files = Vec::new();
    for file in [&point.checkpoint, &point.vocab] {
        // Only this job's checkpoints: a resume point names keys, and keys are checked.
        if !file.key.starts_with(&keys::job_prefix(job)) {
            return unusable(format!("{} is not one of this job's files", file.key));
        }
        match retry
            .run("read a resume checkpoint", || {
                store.get_verified(&file.key, &file.sha256)
            })
            .await
        {
            Ok(bytes) => files.push(bytes),
            Err(e) if e.is_transient() => {
                return Err(JobError::storage("failed to read the resume checkpoint")(e));
            }
            Err(e) => return unusable(format!("{}: {e}", file.key)),
        }
    }
    let vocab = match Vocabulary::from_json(&files[1], &arch.featurizer) {
        Ok(v) => v,
        Err(e) => return unusable(format!("{}: {e}", keys::VOCAB)),
    };
    let model = match pipeline::load(arch, vocab, &files[0]) {
        Ok(m) => m,
        Err(e) => return unusable(e.to_string()),
    };
    if model.checkpoint.state.epochs_done != point.epochs_done {
        return unusable("the checkpoint's epoch count differs from the resume point's".to_owned());
    }
    info!(
        epochs_done = point.epochs_done,
        step = point.step,
        from_attempt = %point.attempt_id,
        "resuming from a resume checkpoint"
    );
    Ok(Some(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_content_under_the_attempt() {
        let sha = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            content_name(keys::CHECKPOINT, sha),
            "checkpoint-0123456789abcdef.safetensors"
        );
        assert_eq!(
            content_name(keys::VOCAB, sha),
            "vocab-0123456789abcdef.json"
        );
        let (job, attempt) = (JobId::new(), AttemptId::new());
        let key = keys::resume_file(job, attempt, &content_name(keys::CHECKPOINT, sha)).unwrap();
        assert!(key.starts_with(&keys::job_prefix(job)));
        assert!(key.contains(&attempt.to_string()));
    }
}
