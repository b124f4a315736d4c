//! The model registry: the one place that reads and writes stored versions, manifests and
//! aliases (DESIGN §3), over any [`ObjectStore`]. The worker writes versions through it, the
//! coordinator lists models, resolves aliases and moves them, the CLI's `demo` writes and reads
//! back versions in a local directory: all with the same rules.
//!
//! - **Versions** live under `models/<name>/v<NNNNNN>/`. [`Registry::write_version`] uploads every
//!   file first and the manifest last: the manifest is the commit marker, so a version exists
//!   exactly when its manifest does, and a reader that finds it finds every file it lists.
//! - **Reads are checked**: [`Registry::read_version`] and [`Registry::vocabulary`] verify every
//!   file's sha256 against the manifest; a damaged or mismatched file is
//!   [`RegistryError::Corrupt`], a missing manifest [`RegistryError::NotFound`].
//! - **Aliases** (`models/<name>/aliases/<alias>`) hold a version key segment (`v000003`) and a
//!   newline; one that holds anything else is [`RegistryError::BadAlias`].
//! - **A job's version** (`attempts`): the attempt that trains it uploads its files under
//!   `models/<name>/v<NNNNNN>/<attempt>/` ([`Registry::upload_attempt`]); the coordinator commits
//!   one attempt by writing the version's manifest, which names the attempt's files
//!   ([`Registry::commit`]). Files are never overwritten, so any manifest is consistent with its
//!   files whatever writers race, and an attempt nobody committed never becomes a version.
//! - **Reservations** (`reservations`): the job that took a version number
//!   (`models/<name>/v<NNNNNN>/job.json`), written before the job is published; numbers are above
//!   every manifest and reservation ([`Registry::highest_taken`]), so none is reused.
//!
//! Turning a version's bytes into a model is the engine's business (`refit_engine::pipeline`);
//! this module only moves and checks bytes, so the coordinator can use it without linking ONNX
//! Runtime.

mod aliases;
mod attempts;
mod reservations;

pub use reservations::FoundReservation;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use refit_proto::manifest::VersionFiles;
use refit_proto::vocab::Vocabulary;
use refit_proto::{Alias, Manifest, ModelName, Version, keys};

use crate::storage::{ObjectStore, StorageError};

/// The most bytes read of a manifest, an alias, a reservation or a draft manifest: objects
/// anyone with write access to the bucket could replace, all a few kilobytes when refit wrote
/// them.
pub const MAX_METADATA_BYTES: u64 = 16 << 20;

/// Why the registry cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored file is damaged or does not fit the others.
    #[error("model {model} {version}: {reason}")]
    Corrupt {
        /// The model.
        model: ModelName,
        /// The version.
        version: Version,
        /// What is wrong.
        reason: String,
    },
    /// The version has no manifest (never finished, or never existed).
    #[error("model {model} has no version {version}")]
    NotFound {
        /// The model.
        model: ModelName,
        /// The version.
        version: Version,
    },
    /// An attempt's upload cannot become the version (missing or damaged files, a draft manifest
    /// for another job or other data).
    #[error("model {model} {version}: cannot commit the attempt: {reason}")]
    Commit {
        /// The model.
        model: ModelName,
        /// The version.
        version: Version,
        /// Why.
        reason: String,
    },
    /// The version number is already committed by another job: never overwritten.
    #[error("model {model} {version} is already the version of job {job}")]
    Conflict {
        /// The model.
        model: ModelName,
        /// The version.
        version: Version,
        /// The job that owns it.
        job: String,
    },
    /// An alias object that does not hold a version.
    #[error("alias {alias} of {model} holds {found:?}, not a version")]
    BadAlias {
        /// The model.
        model: ModelName,
        /// The alias.
        alias: Alias,
        /// The start of what it holds.
        found: String,
    },
    /// An alias's history object that does not parse.
    #[error("the history of alias {alias} of {model} is damaged: {reason}")]
    BadHistory {
        /// The model.
        model: ModelName,
        /// The alias.
        alias: Alias,
        /// The parse error.
        reason: String,
    },
}

impl RegistryError {
    /// Whether retrying later may help (the store was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Storage(e) if e.is_transient())
    }
}

/// A stored version as read back: its manifest, its vocabulary and its checkpoint's bytes, each
/// checked against the manifest.
#[derive(Clone, Debug)]
pub struct StoredVersion {
    /// The manifest.
    pub manifest: Manifest,
    /// `vocab.json`, parsed.
    pub vocab: Vocabulary,
    /// `checkpoint.safetensors` (parsed by the engine).
    pub checkpoint: Bytes,
}

/// Models, versions and aliases in an object store.
#[derive(Clone, Debug)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
}

impl Registry {
    /// The registry kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The store it is kept in.
    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// Every model with anything stored (a version, an alias, a half-written version), with its
    /// complete versions in order. Folders under `models/` that are not valid model names are
    /// left out.
    pub async fn models(&self) -> Result<BTreeMap<ModelName, Vec<Version>>, StorageError> {
        let mut models: BTreeMap<ModelName, Vec<Version>> = BTreeMap::new();
        for object in self.store.list(keys::MODELS_PREFIX).await? {
            let Some(model) = keys::model_of_key(&object.key) else {
                continue;
            };
            let version = manifest_version(&model, &object.key);
            let versions = models.entry(model).or_default();
            versions.extend(version);
        }
        for versions in models.values_mut() {
            versions.sort_unstable();
            versions.dedup();
        }
        Ok(models)
    }

    /// The versions of a model that have a manifest, in order.
    pub async fn versions(&self, model: &ModelName) -> Result<Vec<Version>, RegistryError> {
        let mut versions: Vec<Version> = self
            .store
            .list(&keys::model_prefix(model))
            .await?
            .iter()
            .filter_map(|o| manifest_version(model, &o.key))
            .collect();
        versions.sort_unstable();
        versions.dedup();
        Ok(versions)
    }

    /// A version's manifest; [`RegistryError::NotFound`] when it has none.
    pub async fn manifest(
        &self,
        model: &ModelName,
        version: Version,
    ) -> Result<Manifest, RegistryError> {
        let key = keys::manifest(model, version);
        let bytes = match self.store.get_at_most(&key, MAX_METADATA_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(RegistryError::NotFound {
                    model: model.clone(),
                    version,
                });
            }
            Err(e @ StorageError::TooLarge { .. }) => {
                return Err(RegistryError::Corrupt {
                    model: model.clone(),
                    version,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        Manifest::from_json(&bytes).map_err(|e| RegistryError::Corrupt {
            model: model.clone(),
            version,
            reason: format!("manifest.json does not parse: {e}"),
        })
    }

    /// A file the manifest lists, checked against its sha256 (and read no further than the size
    /// the manifest gives it).
    pub async fn file(&self, manifest: &Manifest, name: &str) -> Result<Bytes, RegistryError> {
        let corrupt = |reason: String| RegistryError::Corrupt {
            model: manifest.model.clone(),
            version: manifest.version,
            reason,
        };
        let entry = manifest
            .files
            .get(name)
            .ok_or_else(|| corrupt(format!("the manifest lists no {name}")))?;
        let path = entry.path.as_deref().unwrap_or(name);
        let key = keys::version_path(&manifest.model, manifest.version, path)
            .ok_or_else(|| corrupt(format!("{name}: invalid path {path:?}")))?;
        // No more than the manifest says the file holds.
        self.store
            .get_verified_at_most(&key, &entry.sha256, entry.size)
            .await
            .map_err(|e| match e {
                StorageError::ChecksumMismatch { .. } | StorageError::TooLarge { .. } => {
                    corrupt(format!("{name}: {e}"))
                }
                other => other.into(),
            })
    }

    /// The vocabulary of the version `manifest` describes, checked and parsed.
    pub async fn vocabulary(&self, manifest: &Manifest) -> Result<Vocabulary, RegistryError> {
        let bytes = self.file(manifest, keys::VOCAB).await?;
        Vocabulary::from_json(&bytes, &manifest.arch.featurizer).map_err(|e| {
            RegistryError::Corrupt {
                model: manifest.model.clone(),
                version: manifest.version,
                reason: format!("{}: {e}", keys::VOCAB),
            }
        })
    }

    /// Reads a version back for training or inference: manifest, vocabulary and checkpoint,
    /// every file checked against the manifest.
    pub async fn read_version(
        &self,
        model: &ModelName,
        version: Version,
    ) -> Result<StoredVersion, RegistryError> {
        let manifest = self.manifest(model, version).await?;
        let vocab = self.vocabulary(&manifest).await?;
        let checkpoint = self.file(&manifest, keys::CHECKPOINT).await?;
        Ok(StoredVersion {
            manifest,
            vocab,
            checkpoint,
        })
    }

    /// Checks that every file a version's manifest lists is there with its sha256 (a
    /// consistent version); the manifest. [`RegistryError::Corrupt`] names the first file that
    /// is not.
    pub async fn verify(
        &self,
        model: &ModelName,
        version: Version,
    ) -> Result<Manifest, RegistryError> {
        let manifest = self.manifest(model, version).await?;
        for name in manifest.files.keys() {
            self.file(&manifest, name).await?;
        }
        Ok(manifest)
    }

    /// Stores a version written in one place (`refit demo`): every file directly in the
    /// version's folder first, the manifest last. (A job's version is uploaded by its attempt
    /// and committed by the coordinator: see `attempts`.)
    pub async fn write_version(&self, version: &VersionFiles) -> Result<(), RegistryError> {
        let m = &version.manifest;
        for (name, bytes) in &version.files {
            let key = keys::version_file(&m.model, m.version, name).map_err(|e| {
                RegistryError::Corrupt {
                    model: m.model.clone(),
                    version: m.version,
                    reason: e.to_string(),
                }
            })?;
            self.store.put(&key, Bytes::from(bytes.clone())).await?;
        }
        self.store
            .put(
                &keys::manifest(&m.model, m.version),
                Bytes::from(m.to_json()),
            )
            .await?;
        Ok(())
    }
}

/// The version of a key if it is a version's manifest (`models/<m>/v<N>/manifest.json`, not an
/// attempt's draft in a folder below it).
fn manifest_version(model: &ModelName, key: &str) -> Option<Version> {
    let version = keys::version_of_key(model, key)?;
    let rest = key.strip_prefix(&keys::version_prefix(model, version))?;
    (rest == keys::MANIFEST).then_some(version)
}

#[cfg(test)]
mod tests;
