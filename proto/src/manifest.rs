//! The model manifest (`models/<name>/v<NNNNNN>/manifest.json`): what a stored version is, what
//! it was trained on, and how to check its files. Written last, it marks a version complete.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::TrainingData;
use crate::ids::{AttemptId, JobId, ModelName, Version};
use crate::job::Mode;

/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The labels a model predicts. Fine-tuning needs the new data to use exactly these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    /// Intent names (retrieval intents keep their full `faq/ask_x` name).
    pub intents: BTreeSet<String>,
    /// Entity types.
    #[serde(default)]
    pub entities: BTreeSet<String>,
    /// Entity roles.
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// Entity groups.
    #[serde(default)]
    pub groups: BTreeSet<String>,
}

impl LabelSet {
    /// The labels a dataset uses.
    pub fn of(data: &TrainingData) -> Self {
        let mut set = Self::default();
        for example in &data.examples {
            set.intents.insert(example.intent.clone());
            for entity in &example.entities {
                set.entities.insert(entity.entity.clone());
                if let Some(role) = &entity.role {
                    set.roles.insert(role.clone());
                }
                if let Some(group) = &entity.group {
                    set.groups.insert(group.clone());
                }
            }
        }
        set
    }
}

/// The featurizer's settings: word tokens plus character n-grams within word boundaries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturizerSpec {
    /// Lowercase the text before tokenising. Default `true`.
    #[serde(default = "defaults::yes")]
    pub lowercase: bool,
    /// Include whole word tokens as features. Default `true`.
    #[serde(default = "defaults::yes")]
    pub word_tokens: bool,
    /// Smallest character n-gram. Default 1.
    #[serde(default = "defaults::ngram_min")]
    pub char_ngram_min: u32,
    /// Largest character n-gram. Default 4.
    #[serde(default = "defaults::ngram_max")]
    pub char_ngram_max: u32,
}

impl Default for FeaturizerSpec {
    fn default() -> Self {
        Self {
            lowercase: true,
            word_tokens: true,
            char_ngram_min: 1,
            char_ngram_max: 4,
        }
    }
}

/// The model's architecture hyperparameters ("DIET-lite"). Changing any of them means the
/// stored weights no longer fit, so the model must be trained from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Width of the shared feature embedding. Default 128.
    #[serde(default = "defaults::embed_dim")]
    pub embed_dim: u32,
    /// Width of the intent MLP's hidden layer. Default 128.
    #[serde(default = "defaults::hidden_dim")]
    pub hidden_dim: u32,
    /// Tokens on each side that the entity tagger sees. Default 2.
    #[serde(default = "defaults::context_window")]
    pub entity_context_window: u32,
    /// Entity tagging scheme. Default `"bilou"`.
    #[serde(default = "defaults::tag_scheme")]
    pub tag_scheme: String,
    /// The featurizer's settings.
    #[serde(default)]
    pub featurizer: FeaturizerSpec,
}

impl Default for ArchSpec {
    fn default() -> Self {
        Self {
            embed_dim: defaults::embed_dim(),
            hidden_dim: defaults::hidden_dim(),
            entity_context_window: defaults::context_window(),
            tag_scheme: defaults::tag_scheme(),
            featurizer: FeaturizerSpec::default(),
        }
    }
}

impl ArchSpec {
    /// A stable fingerprint of the architecture: `sha256:` of its canonical JSON, in which every
    /// field is present with its resolved value. A spec written with only some fields, or with
    /// none, fingerprints the same as one that spells the defaults out, so an untouched config
    /// never reads as a change.
    pub fn fingerprint(&self) -> String {
        let value = serde_json::to_value(self).expect("an ArchSpec always serialises");
        // Keys sorted here rather than by serde_json's map type, which its `preserve_order`
        // feature (switched on for the whole build by any crate that asks) would change: stored
        // models' fingerprints must not move.
        let canonical =
            serde_json::to_vec(&SortedKeys(&value)).expect("a JSON value always serialises");
        format!("sha256:{}", hex::encode(Sha256::digest(canonical)))
    }

    /// The names of the fields whose values differ between two specs, e.g.
    /// `["embed_dim", "featurizer.char_ngram_max"]`.
    pub fn changed_fields(&self, other: &Self) -> Vec<String> {
        let a = serde_json::to_value(self).expect("an ArchSpec always serialises");
        let b = serde_json::to_value(other).expect("an ArchSpec always serialises");
        let mut out = Vec::new();
        diff_values("", &a, &b, &mut out);
        out
    }
}

/// Serialises a JSON value with every object's keys in sorted order.
struct SortedKeys<'a>(&'a serde_json::Value);

impl Serialize for SortedKeys<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde_json::Value;
        match self.0 {
            Value::Object(map) => serializer.collect_map(
                map.iter()
                    .map(|(k, v)| (k, SortedKeys(v)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            Value::Array(items) => serializer.collect_seq(items.iter().map(SortedKeys)),
            other => other.serialize(serializer),
        }
    }
}

fn diff_values(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (x.get(key), y.get(key)) {
                    (Some(va), Some(vb)) => diff_values(&path, va, vb, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

mod defaults {
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn ngram_min() -> u32 {
        1
    }
    pub(super) fn ngram_max() -> u32 {
        4
    }
    pub(super) fn embed_dim() -> u32 {
        128
    }
    pub(super) fn hidden_dim() -> u32 {
        128
    }
    pub(super) fn context_window() -> u32 {
        2
    }
    pub(super) fn tag_scheme() -> String {
        "bilou".to_owned()
    }
}

/// Quality on the held-out data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of examples whose top intent is right.
    pub intent_accuracy: f64,
    /// Unweighted mean of the per-intent F1.
    pub intent_macro_f1: f64,
    /// Per-intent F1 weighted by support.
    pub intent_weighted_f1: f64,
    /// Exact-span entity precision.
    pub entity_precision: f64,
    /// Exact-span entity recall.
    pub entity_recall: f64,
    /// Exact-span entity F1.
    pub entity_f1: f64,
    /// How many examples the numbers are over.
    pub examples: u64,
}

/// Training-data facts recorded with a version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSummary {
    /// sha256 (hex) of the dataset file as stored.
    pub sha256: String,
    /// Its object key.
    pub key: String,
    /// Number of examples after dropping duplicates.
    pub examples: u64,
    /// Examples per label.
    #[serde(default)]
    pub counts: crate::data::LabelCounts,
}

/// A file of a version, with its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// sha256 (hex) of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the file is, relative to the version's folder: `<attempt id>/<name>` for a version
    /// the coordinator committed from an attempt's upload. Absent: the file's name, directly in
    /// the version's folder (versions written by `refit demo` and before leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A stored model version. Serialised as pretty JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The model.
    pub model: ModelName,
    /// This version.
    pub version: Version,
    /// The version it was fine-tuned from; `None` for a scratch run.
    #[serde(default)]
    pub parent: Option<Version>,
    /// How it was trained (`finetune` or `scratch`).
    pub mode: Mode,
    /// Fine-tunes since the last scratch run (0 for a scratch run).
    #[serde(default)]
    pub finetune_depth: u32,
    /// The labels it predicts.
    pub labels: LabelSet,
    /// Its architecture.
    pub arch: ArchSpec,
    /// `arch.fingerprint()`, stored so that readers can compare without recomputing.
    pub arch_fingerprint: String,
    /// Number of features in the vocabulary.
    pub vocab_size: u64,
    /// The training data.
    pub data: DataSummary,
    /// Epochs actually trained in this run.
    #[serde(default)]
    pub epochs: f64,
    /// Quality on held-out data, if the job had any.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Seconds spent per phase (`download`, `train`, `evaluate`, `export`, `upload`).
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// Every other file of the version, by file name.
    pub files: BTreeMap<String, FileEntry>,
    /// The refit version that wrote it.
    pub refit_version: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// The job that trained it (absent for versions not trained by a job: `refit demo`, older
    /// ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The attempt whose files it is (see [`FileEntry::path`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<AttemptId>,
}

impl Manifest {
    /// A manifest describing a model trained from scratch on `data` with `arch`, without files,
    /// metrics or timings: what the fine-tune decision needs to compare new data against when
    /// no stored version is at hand (`refit check --base`, tests).
    pub fn for_data(
        model: ModelName,
        version: Version,
        data: &TrainingData,
        arch: ArchSpec,
    ) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            model,
            version,
            parent: None,
            mode: Mode::Scratch,
            finetune_depth: 0,
            labels: LabelSet::of(data),
            arch_fingerprint: arch.fingerprint(),
            arch,
            vocab_size: 0,
            data: DataSummary {
                sha256: String::new(),
                key: String::new(),
                examples: data.len() as u64,
                counts: data.label_counts(),
            },
            epochs: 0.0,
            metrics: None,
            timings: BTreeMap::new(),
            files: BTreeMap::new(),
            refit_version: crate::REFIT_VERSION.to_owned(),
            created_at: Utc::now(),
            job_id: None,
            attempt_id: None,
        }
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a Manifest always serialises")
    }

    /// Reads a stored manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A version ready to be stored: its files, and the manifest that lists them. The registry
/// writes the files first and the manifest last, so a reader that finds the manifest finds every
/// file it names.
#[derive(Clone, Debug)]
pub struct VersionFiles {
    /// The manifest; its `files` lists each of [`VersionFiles::files`] with its sha256 and size.
    pub manifest: Manifest,
    /// `(file name, bytes)` of every file but the manifest.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl VersionFiles {
    /// The version's files, with `manifest.files` set to their sha256 and size (what it held
    /// before is replaced).
    pub fn new(mut manifest: Manifest, files: Vec<(&'static str, Vec<u8>)>) -> Self {
        manifest.files = files
            .iter()
            .map(|(name, bytes)| {
                let entry = FileEntry {
                    sha256: crate::keys::sha256_hex(bytes),
                    size: bytes.len() as u64,
                    path: None,
                };
                ((*name).to_owned(), entry)
            })
            .collect();
        Self { manifest, files }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_files_list_every_file_with_its_checksum() {
        let data = TrainingData::default();
        let manifest = Manifest::for_data(
            ModelName::new("m").unwrap(),
            Version::first(),
            &data,
            ArchSpec::default(),
        );
        let files = VersionFiles::new(manifest, vec![("a.bin", b"abc".to_vec())]);
        assert_eq!(files.manifest.files.len(), 1);
        let entry = &files.manifest.files["a.bin"];
        assert_eq!(entry.size, 3);
        assert_eq!(entry.sha256, crate::keys::sha256_hex(b"abc"));
    }

    #[test]
    fn the_default_fingerprint_never_moves() {
        // Stored models carry it: a change here makes every one of them "architecture changed"
        // and refuses their fine-tunes. Change it only with a new default architecture.
        assert_eq!(
            ArchSpec::default().fingerprint(),
            "sha256:4bd55bf55b402ccab145c78ff591f591a99334de4be5de9ac78ea9c81243027d"
        );
    }

    #[test]
    fn fingerprint_ignores_spelled_out_defaults() {
        let empty: ArchSpec = serde_json::from_str("{}").unwrap();
        let partial: ArchSpec = serde_json::from_str(r#"{"embed_dim": 128}"#).unwrap();
        let full = ArchSpec::default();
        assert_eq!(empty.fingerprint(), full.fingerprint());
        assert_eq!(partial.fingerprint(), full.fingerprint());
        let changed: ArchSpec = serde_json::from_str(r#"{"embed_dim": 64}"#).unwrap();
        assert_ne!(changed.fingerprint(), full.fingerprint());
    }

    #[test]
    fn changed_fields_names_nested_fields() {
        let a = ArchSpec::default();
        let b = ArchSpec {
            hidden_dim: 64,
            featurizer: FeaturizerSpec {
                char_ngram_max: 5,
                ..FeaturizerSpec::default()
            },
            ..ArchSpec::default()
        };
        assert_eq!(
            a.changed_fields(&b),
            vec!["featurizer.char_ngram_max", "hidden_dim"]
        );
        assert!(a.changed_fields(&a.clone()).is_empty());
    }

    #[test]
    fn unknown_arch_fields_are_rejected() {
        assert!(serde_json::from_str::<ArchSpec>(r#"{"embed_dims": 64}"#).is_err());
    }
}
