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
//!
//! Turning a version's bytes into a model is the engine's business (`refit_engine::pipeline`);
//! this module only moves and checks bytes, so the coordinator can use it without linking ONNX
//! Runtime.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use refit_proto::manifest::VersionFiles;
use refit_proto::vocab::Vocabulary;
use refit_proto::{Alias, Manifest, ModelName, Version, keys};

use crate::storage::{ObjectStore, StorageError};

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
        let bytes = match self.store.get(&keys::manifest(model, version)).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(RegistryError::NotFound {
                    model: model.clone(),
                    version,
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

    /// A file the manifest lists, checked against its sha256.
    async fn file(&self, manifest: &Manifest, name: &str) -> Result<Bytes, RegistryError> {
        let corrupt = |reason: String| RegistryError::Corrupt {
            model: manifest.model.clone(),
            version: manifest.version,
            reason,
        };
        let entry = manifest
            .files
            .get(name)
            .ok_or_else(|| corrupt(format!("the manifest lists no {name}")))?;
        let key = keys::version_file(&manifest.model, manifest.version, name)
            .map_err(|e| corrupt(e.to_string()))?;
        self.store
            .get_verified(&key, &entry.sha256)
            .await
            .map_err(|e| match e {
                StorageError::ChecksumMismatch { .. } => corrupt(format!("{name}: {e}")),
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

    /// Stores a version: every file first, the manifest last.
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

    /// The version an alias points at; `None` when the alias does not exist.
    pub async fn alias(
        &self,
        model: &ModelName,
        alias: &Alias,
    ) -> Result<Option<Version>, RegistryError> {
        match self.store.get(&keys::alias(model, alias)).await {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                text.trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| RegistryError::BadAlias {
                        model: model.clone(),
                        alias: alias.clone(),
                        found: text.chars().take(20).collect(),
                    })
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A model's aliases that point at a version. Objects under `aliases/` whose name is not a
    /// valid alias, or that hold no version, are left out.
    pub async fn aliases(
        &self,
        model: &ModelName,
    ) -> Result<BTreeMap<Alias, Version>, StorageError> {
        let prefix = keys::aliases_prefix(model);
        let mut out = BTreeMap::new();
        for object in self.store.list(&prefix).await? {
            let Ok(alias) = Alias::new(object.key.trim_start_matches(&prefix)) else {
                continue;
            };
            match self.alias(model, &alias).await {
                Ok(Some(version)) => {
                    out.insert(alias, version);
                }
                Err(RegistryError::Storage(e)) => return Err(e),
                // Deleted since the listing, or holding no version.
                _ => {}
            }
        }
        Ok(out)
    }

    /// Points `alias` at `version`, which must have a manifest; returns the version it pointed
    /// at before (`None` if it was new or held no version).
    pub async fn set_alias(
        &self,
        model: &ModelName,
        alias: &Alias,
        version: Version,
    ) -> Result<Option<Version>, RegistryError> {
        self.manifest(model, version).await?;
        let previous = self.alias(model, alias).await.ok().flatten();
        self.store
            .put(
                &keys::alias(model, alias),
                Bytes::from(format!("{}\n", version.key_segment())),
            )
            .await?;
        Ok(previous)
    }
}

/// The version of a key if it is a version's manifest.
fn manifest_version(model: &ModelName, key: &str) -> Option<Version> {
    if key.ends_with(&format!("/{}", keys::MANIFEST)) {
        keys::version_of_key(model, key)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;
    use refit_proto::data::TrainingData;
    use refit_proto::{ArchSpec, Mode};

    fn name() -> ModelName {
        ModelName::new("demo").unwrap()
    }

    fn version_files(version: u32) -> VersionFiles {
        let mut vocab = Vocabulary::new(ArchSpec::default().featurizer);
        vocab.fit(["hello there"]);
        let mut manifest = Manifest::for_data(
            name(),
            Version::new(version).unwrap(),
            &TrainingData::default(),
            ArchSpec::default(),
        );
        manifest.mode = Mode::Scratch;
        VersionFiles::new(
            manifest,
            vec![
                (keys::CHECKPOINT, b"checkpoint bytes".to_vec()),
                (keys::VOCAB, vocab.to_json()),
            ],
        )
    }

    #[tokio::test]
    async fn written_versions_read_back_and_corruption_is_caught() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::new(store.clone());
        registry.write_version(&version_files(1)).await.unwrap();
        assert_eq!(
            registry.versions(&name()).await.unwrap(),
            vec![Version::first()]
        );
        let back = registry
            .read_version(&name(), Version::first())
            .await
            .unwrap();
        assert_eq!(back.checkpoint.as_ref(), b"checkpoint bytes");
        assert!(back.vocab.words().contains("hello"));

        let missing = registry
            .read_version(&name(), Version::new(2).unwrap())
            .await;
        assert!(matches!(missing, Err(RegistryError::NotFound { .. })));

        let key = keys::version_file(&name(), Version::first(), keys::CHECKPOINT).unwrap();
        store
            .put(&key, Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        let corrupt = registry.read_version(&name(), Version::first()).await;
        assert!(
            matches!(corrupt, Err(RegistryError::Corrupt { .. })),
            "{corrupt:?}"
        );
    }

    #[tokio::test]
    async fn a_version_without_its_manifest_does_not_exist() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::new(store.clone());
        let files = version_files(1);
        // Files written, manifest not (the writer died in between).
        for (file, bytes) in &files.files {
            let key = keys::version_file(&name(), Version::first(), file).unwrap();
            store.put(&key, Bytes::from(bytes.clone())).await.unwrap();
        }
        assert!(registry.versions(&name()).await.unwrap().is_empty());
        let models = registry.models().await.unwrap();
        assert_eq!(models.get(&name()), Some(&Vec::new()));
    }

    #[tokio::test]
    async fn aliases_point_at_stored_versions_only() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::new(store.clone());
        registry.write_version(&version_files(1)).await.unwrap();
        registry.write_version(&version_files(2)).await.unwrap();
        let prod = Alias::new("prod").unwrap();
        let v1 = Version::first();
        let v2 = Version::new(2).unwrap();
        assert_eq!(registry.set_alias(&name(), &prod, v1).await.unwrap(), None);
        assert_eq!(
            registry.set_alias(&name(), &prod, v2).await.unwrap(),
            Some(v1)
        );
        assert_eq!(registry.alias(&name(), &prod).await.unwrap(), Some(v2));
        let v3 = Version::new(3).unwrap();
        assert!(matches!(
            registry.set_alias(&name(), &prod, v3).await,
            Err(RegistryError::NotFound { .. })
        ));

        let bad = Alias::new("bad").unwrap();
        store
            .put(&keys::alias(&name(), &bad), Bytes::from_static(b"latest"))
            .await
            .unwrap();
        assert!(matches!(
            registry.alias(&name(), &bad).await,
            Err(RegistryError::BadAlias { .. })
        ));
        let aliases = registry.aliases(&name()).await.unwrap();
        assert_eq!(aliases.into_iter().collect::<Vec<_>>(), vec![(prod, v2)]);
        assert_eq!(registry.models().await.unwrap()[&name()], vec![v1, v2]);
    }
}
