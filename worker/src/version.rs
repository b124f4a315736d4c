//! Stored model versions: writing a trained model's files under
//! `models/<name>/v<NNNNNN>/` with the manifest last (the commit marker), and reading them back
//! with every file's sha256 checked against the manifest.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use refit_proto::data::TrainingData;
use refit_proto::manifest::{DataSummary, FileEntry, MANIFEST_FORMAT};
use refit_proto::{Manifest, Metrics, Mode, ModelName, REFIT_VERSION, Version, keys};

use crate::engine::EngineError;
use crate::engine::checkpoint::Checkpoint;
use crate::engine::featurizer::Vocabulary;
use crate::engine::predict::export;
use crate::engine::trainer::NluModel;
use crate::storage::{ObjectStore, StorageError, sha256_hex};

/// Why a version cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
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
    /// The engine could not rebuild the model.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a new version records besides the model itself.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    /// The model.
    pub model: ModelName,
    /// The version to write.
    pub version: Version,
    /// The version it was fine-tuned from.
    pub parent: Option<Version>,
    /// `finetune` or `scratch`.
    pub mode: Mode,
    /// Fine-tunes since the last scratch run.
    pub finetune_depth: u32,
    /// The dataset's object key and sha256.
    pub dataset_key: String,
    /// The dataset's sha256.
    pub dataset_sha256: String,
    /// Epochs trained in this run.
    pub epochs: f64,
    /// Quality on held-out data.
    pub metrics: Option<Metrics>,
    /// Seconds per phase.
    pub timings: BTreeMap<String, f64>,
}

/// The files of a version, as bytes, with the manifest describing them.
pub struct VersionFiles {
    /// The manifest (written last).
    pub manifest: Manifest,
    /// `(file name, bytes)` of every other file.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// Serialises a trained model into a version's files.
pub fn version_files(model: &NluModel, data: &TrainingData, info: &VersionInfo) -> VersionFiles {
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        (keys::CHECKPOINT, model.checkpoint.to_bytes()),
        (keys::MODEL_ONNX, export(model)),
        (keys::VOCAB, model.featurizer.vocab().to_json()),
    ];
    let entries = files
        .iter()
        .map(|(name, bytes)| {
            let entry = FileEntry {
                sha256: sha256_hex(bytes),
                size: bytes.len() as u64,
            };
            ((*name).to_owned(), entry)
        })
        .collect();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        model: info.model.clone(),
        version: info.version,
        parent: info.parent,
        mode: info.mode,
        finetune_depth: info.finetune_depth,
        labels: model.labels(),
        arch: model.arch.clone(),
        arch_fingerprint: model.arch.fingerprint(),
        vocab_size: model.featurizer.vocab().len() as u64,
        data: DataSummary {
            sha256: info.dataset_sha256.clone(),
            key: info.dataset_key.clone(),
            examples: data.len() as u64,
            counts: data.label_counts(),
        },
        epochs: info.epochs,
        metrics: info.metrics.clone(),
        timings: info.timings.clone(),
        files: entries,
        refit_version: REFIT_VERSION.to_owned(),
        created_at: Utc::now(),
    };
    VersionFiles { manifest, files }
}

/// Uploads a version: every file first, the manifest last.
pub async fn write_version(
    store: &dyn ObjectStore,
    files: &VersionFiles,
) -> Result<(), VersionError> {
    let m = &files.manifest;
    for (name, bytes) in &files.files {
        let key =
            keys::version_file(&m.model, m.version, name).expect("fixed file names are valid");
        store.put(&key, Bytes::from(bytes.clone())).await?;
    }
    store
        .put(
            &keys::manifest(&m.model, m.version),
            Bytes::from(m.to_json()),
        )
        .await?;
    Ok(())
}

/// Reads a version's manifest; `NotFound` when it has none.
pub async fn read_manifest(
    store: &dyn ObjectStore,
    model: &ModelName,
    version: Version,
) -> Result<Manifest, VersionError> {
    let bytes = match store.get(&keys::manifest(model, version)).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return Err(VersionError::NotFound {
                model: model.clone(),
                version,
            });
        }
        Err(e) => return Err(e.into()),
    };
    Manifest::from_json(&bytes).map_err(|e| VersionError::Corrupt {
        model: model.clone(),
        version,
        reason: format!("manifest.json does not parse: {e}"),
    })
}

/// Downloads a version and rebuilds the model, checking every file's sha256.
pub async fn read_version(
    store: &dyn ObjectStore,
    model: &ModelName,
    version: Version,
) -> Result<(Manifest, NluModel), VersionError> {
    let manifest = read_manifest(store, model, version).await?;
    let corrupt = |reason: String| VersionError::Corrupt {
        model: model.clone(),
        version,
        reason,
    };
    let mut fetch = BTreeMap::new();
    for name in [keys::CHECKPOINT, keys::VOCAB] {
        let entry = manifest
            .files
            .get(name)
            .ok_or_else(|| corrupt(format!("the manifest lists no {name}")))?;
        let key = keys::version_file(model, version, name).expect("fixed file names are valid");
        let bytes = store
            .get_verified(&key, &entry.sha256)
            .await
            .map_err(|e| match e {
                StorageError::ChecksumMismatch { .. } => corrupt(format!("{name}: {e}")),
                other => other.into(),
            })?;
        fetch.insert(name, bytes);
    }
    let checkpoint = Checkpoint::from_bytes(&fetch[keys::CHECKPOINT])
        .map_err(|e| corrupt(format!("checkpoint.safetensors: {e}")))?;
    let vocab = Vocabulary::from_json(&fetch[keys::VOCAB], &manifest.arch.featurizer)
        .map_err(|e| corrupt(format!("vocab.json: {e}")))?;
    let nlu = NluModel::from_parts(manifest.arch.clone(), vocab, checkpoint)?;
    Ok((manifest, nlu))
}

/// The versions of a model that have a manifest, in order.
pub async fn list_versions(
    store: &dyn ObjectStore,
    model: &ModelName,
) -> Result<Vec<Version>, VersionError> {
    let mut versions: Vec<Version> = store
        .list(&keys::model_prefix(model))
        .await?
        .iter()
        .filter(|o| o.key.ends_with(&format!("/{}", keys::MANIFEST)))
        .filter_map(|o| keys::version_of_key(model, &o.key))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;
    use refit_proto::data::Example;

    fn data() -> TrainingData {
        let ex = |t: &str, i: &str| Example {
            text: t.into(),
            intent: i.into(),
            entities: vec![],
        };
        TrainingData {
            examples: vec![ex("hello there", "greet"), ex("bye now", "goodbye")],
            ..Default::default()
        }
    }

    fn info(version: u32) -> VersionInfo {
        VersionInfo {
            model: ModelName::new("demo").unwrap(),
            version: Version::new(version).unwrap(),
            parent: None,
            mode: Mode::Scratch,
            finetune_depth: 0,
            dataset_key: String::new(),
            dataset_sha256: "00".repeat(32),
            epochs: 0.0,
            metrics: None,
            timings: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn written_versions_read_back_and_corruption_is_caught() {
        let store = MemoryStore::new();
        let arch = refit_proto::ArchSpec {
            embed_dim: 8,
            hidden_dim: 8,
            ..Default::default()
        };
        let model = NluModel::new(arch, &data(), 1).unwrap();
        let files = version_files(&model, &data(), &info(1));
        write_version(&store, &files).await.unwrap();
        let name = ModelName::new("demo").unwrap();
        assert_eq!(
            list_versions(&store, &name).await.unwrap(),
            vec![Version::first()]
        );
        let (manifest, back) = read_version(&store, &name, Version::first()).await.unwrap();
        assert_eq!(manifest.labels, model.labels());
        assert_eq!(back.checkpoint, model.checkpoint);

        let missing = read_version(&store, &name, Version::new(2).unwrap()).await;
        assert!(matches!(missing, Err(VersionError::NotFound { .. })));

        let key = keys::version_file(&name, Version::first(), keys::CHECKPOINT).unwrap();
        store
            .put(&key, Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        let corrupt = read_version(&store, &name, Version::first()).await;
        assert!(
            matches!(corrupt, Err(VersionError::Corrupt { .. })),
            "{corrupt:?}"
        );
    }
}
