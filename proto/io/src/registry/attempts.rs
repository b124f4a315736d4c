//! A job's version, in two steps: the attempt that trained it uploads its files, the coordinator
//! commits one attempt as the version.
//!
//! ```text
//! models/<m>/v<N>/<attempt>/{checkpoint.safetensors, model.onnx, vocab.json}   upload_attempt
//! models/<m>/v<N>/<attempt>/manifest.json                                      (the draft, last)
//! models/<m>/v<N>/manifest.json   files → "<attempt>/<name>"                  commit (last)
//! ```
//!
//! Every key is the attempt's own, so two attempts of one job (a duplicate delivery, a worker
//! that was cut off while another took over) never overwrite each other's files, and whichever
//! manifest is written last names files that match it. The coordinator commits only the attempt
//! that holds the job's lease; [`Registry::commit`] is idempotent (a retried commit of the same
//! job returns the stored manifest) and never overwrites another job's version.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use refit_proto::manifest::{FileEntry, VersionFiles};
use refit_proto::{AttemptId, JobSpec, Manifest, ModelName, Version, keys};

use super::{Registry, RegistryError};

impl Registry {
    /// Uploads an attempt's version files, then its draft manifest, under
    /// `models/<m>/v<N>/<attempt>/`. Returns every uploaded file by name (the draft as
    /// `manifest.json`) with its sha256, size and path in the version's folder: what the
    /// `succeeded` event reports.
    pub async fn upload_attempt(
        &self,
        attempt: AttemptId,
        version: &VersionFiles,
    ) -> Result<BTreeMap<String, FileEntry>, RegistryError> {
        let draft = &version.manifest;
        let (model, number) = (&draft.model, draft.version);
        let mut uploaded = BTreeMap::new();
        for (name, bytes) in &version.files {
            let entry = &draft.files[*name];
            self.put_attempt_file(model, number, attempt, name, Bytes::from(bytes.clone()))
                .await?;
            uploaded.insert((*name).to_owned(), with_path(entry, attempt, name));
        }
        let json = draft.to_json();
        let entry = FileEntry {
            sha256: keys::sha256_hex(&json),
            size: json.len() as u64,
            path: None,
        };
        self.put_attempt_file(model, number, attempt, keys::MANIFEST, Bytes::from(json))
            .await?;
        uploaded.insert(
            keys::MANIFEST.to_owned(),
            with_path(&entry, attempt, keys::MANIFEST),
        );
        Ok(uploaded)
    }

    async fn put_attempt_file(
        &self,
        model: &ModelName,
        version: Version,
        attempt: AttemptId,
        name: &str,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let key = keys::attempt_file(model, version, attempt, name).map_err(|e| {
            RegistryError::Commit {
                model: model.clone(),
                version,
                reason: e.to_string(),
            }
        })?;
        self.store.put(&key, bytes).await?;
        Ok(())
    }

    /// Commits `attempt`'s upload as version `job.output_version` of `job.model` by writing the
    /// version's manifest, which names the attempt's files by their paths in the version's
    /// folder (`<attempt>/<name>`); nothing is copied. `draft_sha256` is the draft manifest's
    /// sha256 as the attempt reported it.
    ///
    /// Checks before writing: the draft parses and is for this job's model, version, data and
    /// base; every file it lists is in the attempt's folder with the listed size. A version
    /// already committed for this job is returned as it is (a retried commit); one committed for
    /// another job is [`RegistryError::Conflict`] and stays.
    pub async fn commit(
        &self,
        job: &JobSpec,
        attempt: AttemptId,
        draft_sha256: &str,
    ) -> Result<Manifest, RegistryError> {
        let (model, version) = (&job.model, job.output_version);
        let refuse = |reason: String| RegistryError::Commit {
            model: model.clone(),
            version,
            reason,
        };
        match self.manifest(model, version).await {
            Ok(existing) if existing.job_id == Some(job.id) => return Ok(existing),
            Ok(existing) => {
                return Err(RegistryError::Conflict {
                    model: model.clone(),
                    version,
                    job: existing
                        .job_id
                        .map_or_else(|| "(none recorded)".to_owned(), |id| id.to_string()),
                });
            }
            Err(RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let draft_key = keys::attempt_file(model, version, attempt, keys::MANIFEST)
            .map_err(|e| refuse(e.to_string()))?;
        let bytes = self
            .store
            .get_verified_at_most(&draft_key, draft_sha256, super::MAX_METADATA_BYTES)
            .await
            .map_err(|e| match e {
                e if e.is_transient() => RegistryError::Storage(e),
                e => refuse(format!("the draft manifest: {e}")),
            })?;
        let mut manifest = Manifest::from_json(&bytes)
            .map_err(|e| refuse(format!("the draft manifest does not parse: {e}")))?;
        check_draft(&manifest, job).map_err(refuse)?;
        for (name, entry) in manifest.files.iter_mut() {
            let key = keys::attempt_file(model, version, attempt, name)
                .map_err(|e| refuse(e.to_string()))?;
            match self.store.head(&key).await? {
                Some(meta) if meta.size == entry.size => {}
                Some(meta) => {
                    return Err(refuse(format!(
                        "{name} is {} bytes, the draft says {}",
                        meta.size, entry.size
                    )));
                }
                None => return Err(refuse(format!("{name} was not uploaded"))),
            }
            entry.path = Some(keys::attempt_path(attempt, name));
        }
        manifest.job_id = Some(job.id);
        manifest.attempt_id = Some(attempt);
        manifest.created_at = Utc::now();
        self.store
            .put(
                &keys::manifest(model, version),
                Bytes::from(manifest.to_json()),
            )
            .await?;
        Ok(manifest)
    }

    /// Deletes the uploads of every attempt but the committed one: what the version's manifest
    /// names, read here rather than taken from the caller, so a job store that lost track of a
    /// commit (a lost or older store, see `Store::recover` in the coordinator) never deletes a
    /// version's files. With no manifest (the job ended without a version) every attempt's
    /// uploads go; a manifest that does not parse deletes nothing and is an error. The manifest
    /// and the reservation stay. Returns how many objects went.
    pub async fn delete_stray_attempts(
        &self,
        model: &ModelName,
        version: Version,
    ) -> Result<usize, RegistryError> {
        let keep = match self.manifest(model, version).await {
            Ok(manifest) => manifest.attempt_id,
            Err(RegistryError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let prefix = keys::version_prefix(model, version);
        let mut deleted = 0;
        for object in self.store.list(&prefix).await? {
            let Some((folder, _)) = object.key[prefix.len()..].split_once('/') else {
                continue;
            };
            let Ok(attempt) = folder.parse::<AttemptId>() else {
                continue;
            };
            if Some(attempt) != keep {
                self.store.delete(&object.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// The entry with its path in the version's folder.
fn with_path(entry: &FileEntry, attempt: AttemptId, name: &str) -> FileEntry {
    FileEntry {
        path: Some(keys::attempt_path(attempt, name)),
        ..entry.clone()
    }
}

/// Why a draft manifest is not the version `job` asked for, if it is not.
fn check_draft(draft: &Manifest, job: &JobSpec) -> Result<(), String> {
    if draft.model != job.model || draft.version != job.output_version {
        return Err(format!(
            "the draft is for {} {}, the job trains {} {}",
            draft.model, draft.version, job.model, job.output_version
        ));
    }
    if draft.data.sha256 != job.dataset.sha256 {
        return Err(format!(
            "the draft was trained on data {}, the job's is {}",
            draft.data.sha256, job.dataset.sha256
        ));
    }
    if draft.parent != job.base_version {
        return Err(format!(
            "the draft's parent is {:?}, the job's base {:?}",
            draft.parent.map(|v| v.to_string()),
            job.base_version.map(|v| v.to_string())
        ));
    }
    for name in [keys::CHECKPOINT, keys::MODEL_ONNX, keys::VOCAB] {
        if !draft.files.contains_key(name) {
            return Err(format!("the draft lists no {name}"));
        }
    }
    Ok(())
}
