//! The object-store key layout (DESIGN §3). Every key refit writes is built here, from validated
//! ids, so no user input reaches a key unchecked.
//!
//! ```text
//! datasets/sha256/<hex>.<ext>
//! models/<name>/v<NNNNNN>/job.json                         the job that took the number
//! models/<name>/v<NNNNNN>/<attempt>/{checkpoint.safetensors, model.onnx, vocab.json, manifest.json}
//! models/<name>/v<NNNNNN>/manifest.json                    the version (written last)
//! models/<name>/aliases/<alias>
//! jobs/<job id>/attempts/<attempt>/resume/<file>
//! ```
//!
//! A version's manifest names its files by path within the version's folder: an attempt's
//! folder for versions the coordinator commits, the folder itself for `refit demo`'s (and older)
//! versions, which hold the files directly.

use sha2::{Digest, Sha256};

use crate::ids::{Alias, AttemptId, JobId, ModelName, Version};

/// The manifest's file name; written last, it marks a version complete.
pub const MANIFEST: &str = "manifest.json";
/// The training checkpoint's file name.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The inference model's file name.
pub const MODEL_ONNX: &str = "model.onnx";
/// The vocabulary's file name.
pub const VOCAB: &str = "vocab.json";
/// The entity synonyms' file name (see `TrainingData::synonym_map`): what a server maps
/// extracted entity values through.
pub const SYNONYMS: &str = "synonyms.json";
/// The evaluation report's file name (`refit_proto::evaluation::Evaluation`), for a version
/// trained with eval data.
pub const EVALUATION: &str = "evaluation.json";
/// The reservation's file name: the job that took a version number.
pub const RESERVATION: &str = "job.json";

/// `models/`: every stored model.
pub const MODELS_PREFIX: &str = "models/";

/// The file extensions a dataset may be stored with.
pub const DATASET_EXTENSIONS: &[&str] = &["yml", "yaml", "jsonl", "json"];

/// Why a key cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 lowercase hex digits.
    #[error("invalid sha256 {0:?}: expected 64 lowercase hex digits")]
    Sha256(String),
    /// Not a dataset extension refit reads.
    #[error("invalid dataset extension {0:?}: expected one of yml, yaml, jsonl, json")]
    Extension(String),
    /// Not a plain file name.
    #[error("invalid file name {0:?}: use letters, digits, '.', '-' and '_' only")]
    FileName(String),
}

/// Whether `s` is a lowercase hex sha256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The sha256 of `data`, lowercase hex: how datasets are addressed and how a manifest names
/// each file's content.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `datasets/sha256/<hex>.<ext>`.
pub fn dataset(sha256_hex: &str, ext: &str) -> Result<String, KeyError> {
    if !is_sha256_hex(sha256_hex) {
        return Err(KeyError::Sha256(sha256_hex.chars().take(80).collect()));
    }
    if !DATASET_EXTENSIONS.contains(&ext) {
        return Err(KeyError::Extension(ext.chars().take(16).collect()));
    }
    Ok(format!("datasets/sha256/{sha256_hex}.{ext}"))
}

/// `models/<name>/`: everything stored for a model.
pub fn model_prefix(model: &ModelName) -> String {
    format!("{MODELS_PREFIX}{model}/")
}

/// `models/<name>/v<NNNNNN>/`: one version's folder.
pub fn version_prefix(model: &ModelName, version: Version) -> String {
    format!("models/{model}/{}/", version.key_segment())
}

/// `models/<name>/v<NNNNNN>/<file>`.
pub fn version_file(model: &ModelName, version: Version, file: &str) -> Result<String, KeyError> {
    check_file_name(file)?;
    Ok(format!("{}{file}", version_prefix(model, version)))
}

/// `models/<name>/v<NNNNNN>/manifest.json`.
pub fn manifest(model: &ModelName, version: Version) -> String {
    format!("{}{MANIFEST}", version_prefix(model, version))
}

/// `models/<name>/v<NNNNNN>/job.json`: the job that took the version number.
pub fn reservation(model: &ModelName, version: Version) -> String {
    format!("{}{RESERVATION}", version_prefix(model, version))
}

/// `models/<name>/v<NNNNNN>/<attempt>/`: what one attempt uploaded for the version.
pub fn attempt_prefix(model: &ModelName, version: Version, attempt: AttemptId) -> String {
    format!("{}{attempt}/", version_prefix(model, version))
}

/// `models/<name>/v<NNNNNN>/<attempt>/<file>`.
pub fn attempt_file(
    model: &ModelName,
    version: Version,
    attempt: AttemptId,
    file: &str,
) -> Result<String, KeyError> {
    check_file_name(file)?;
    Ok(format!("{}{file}", attempt_prefix(model, version, attempt)))
}

/// A file's path within its version's folder, as a manifest lists it: `<attempt>/<file>`.
pub fn attempt_path(attempt: AttemptId, file: &str) -> String {
    format!("{attempt}/{file}")
}

/// The key of a file a manifest lists at `path` (see [`attempt_path`]); `None` for a path that
/// could leave the version's folder (only `<file>` and `<attempt id>/<file>` are valid).
pub fn version_path(model: &ModelName, version: Version, path: &str) -> Option<String> {
    let valid = match path.split_once('/') {
        None => check_file_name(path).is_ok(),
        Some((attempt, file)) => {
            attempt.parse::<AttemptId>().is_ok()
                && attempt == attempt.to_ascii_lowercase()
                && check_file_name(file).is_ok()
        }
    };
    valid.then(|| format!("{}{path}", version_prefix(model, version)))
}

/// `models/<name>/aliases/`: a model's aliases.
pub fn aliases_prefix(model: &ModelName) -> String {
    format!("models/{model}/aliases/")
}

/// `models/<name>/aliases/<alias>`.
pub fn alias(model: &ModelName, alias: &Alias) -> String {
    format!("{}{alias}", aliases_prefix(model))
}

/// `models/<name>/alias-history/<alias>.json`: an alias's moves
/// (`refit_proto::promotion::AliasHistory`).
pub fn alias_history(model: &ModelName, alias: &Alias) -> String {
    format!("models/{model}/alias-history/{alias}.json")
}

/// `jobs/<job id>/`: everything an in-flight job keeps (deleted when it ends).
pub fn job_prefix(job: JobId) -> String {
    format!("jobs/{job}/")
}

/// `jobs/<job id>/attempts/<attempt>/resume/`: an attempt's resume checkpoints.
pub fn resume_prefix(job: JobId, attempt: AttemptId) -> String {
    format!("{}attempts/{attempt}/resume/", job_prefix(job))
}

/// `jobs/<job id>/attempts/<attempt>/resume/<file>`.
pub fn resume_file(job: JobId, attempt: AttemptId, file: &str) -> Result<String, KeyError> {
    check_file_name(file)?;
    Ok(format!("{}{file}", resume_prefix(job, attempt)))
}

/// Parses the version out of a key under `models/<name>/`, e.g.
/// `models/fin/v000003/manifest.json` → 3. `None` for other keys.
pub fn version_of_key(model: &ModelName, key: &str) -> Option<Version> {
    let rest = key.strip_prefix(&model_prefix(model))?;
    let segment = rest.split('/').next()?;
    if segment.len() != 7 || !segment.starts_with('v') {
        return None;
    }
    segment.parse().ok()
}

/// The model a key under `models/` belongs to, e.g. `models/fin/v000003/manifest.json` → `fin`.
/// `None` for other keys and for folder names that are not valid model names.
pub fn model_of_key(key: &str) -> Option<ModelName> {
    let name = key.strip_prefix(MODELS_PREFIX)?.split('/').next()?;
    ModelName::new(name).ok()
}

fn check_file_name(file: &str) -> Result<(), KeyError> {
    let ok = !file.is_empty()
        && file.len() <= 128
        && !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::FileName(file.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin() -> ModelName {
        ModelName::new("financial").unwrap()
    }

    #[test]
    fn models_are_found_from_their_keys() {
        assert_eq!(
            model_of_key("models/financial/v000003/manifest.json"),
            Some(fin())
        );
        assert_eq!(model_of_key("models/financial/aliases/prod"), Some(fin()));
        assert_eq!(model_of_key("models/../x"), None);
        assert_eq!(model_of_key("datasets/sha256/ab.yml"), None);
        assert_eq!(
            aliases_prefix(&fin()),
            "models/financial/aliases/".to_owned()
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn layout_matches_the_design() {
        let v = Version::new(42).unwrap();
        assert_eq!(
            manifest(&fin(), v),
            "models/financial/v000042/manifest.json"
        );
        assert_eq!(
            version_file(&fin(), v, MODEL_ONNX).unwrap(),
            "models/financial/v000042/model.onnx"
        );
        assert_eq!(
            alias(&fin(), &Alias::new("production").unwrap()),
            "models/financial/aliases/production"
        );
        let hex = "a".repeat(64);
        assert_eq!(
            dataset(&hex, "yml").unwrap(),
            format!("datasets/sha256/{hex}.yml")
        );
        let job = JobId::new();
        let attempt = AttemptId::new();
        assert_eq!(
            resume_file(job, attempt, "state.safetensors").unwrap(),
            format!("jobs/{job}/attempts/{attempt}/resume/state.safetensors")
        );
        assert_eq!(reservation(&fin(), v), "models/financial/v000042/job.json");
        assert_eq!(
            attempt_file(&fin(), v, attempt, VOCAB).unwrap(),
            format!("models/financial/v000042/{attempt}/vocab.json")
        );
    }

    #[test]
    fn manifest_paths_stay_in_the_version_folder() {
        let v = Version::new(7).unwrap();
        let attempt = AttemptId::new();
        assert_eq!(
            version_path(&fin(), v, VOCAB).as_deref(),
            Some("models/financial/v000007/vocab.json")
        );
        let path = attempt_path(attempt, CHECKPOINT);
        assert_eq!(
            version_path(&fin(), v, &path),
            Some(format!("models/financial/v000007/{path}"))
        );
        for bad in [
            "../v000001/vocab.json",
            "a/b/c",
            "x/vocab.json",
            "",
            "/vocab.json",
            &format!("{attempt}/../x"),
            &format!("{}/vocab.json", attempt.to_string().to_uppercase()),
        ] {
            assert_eq!(version_path(&fin(), v, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_parts_are_rejected() {
        assert!(dataset("../../etc/passwd", "yml").is_err());
        assert!(dataset(&"A".repeat(64), "yml").is_err());
        assert!(dataset(&"a".repeat(64), "sh").is_err());
        let v = Version::first();
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(version_file(&fin(), v, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_read_back_from_keys() {
        assert_eq!(
            version_of_key(&fin(), "models/financial/v000003/manifest.json")
                .unwrap()
                .get(),
            3
        );
        assert!(version_of_key(&fin(), "models/financial/aliases/prod").is_none());
        assert!(version_of_key(&fin(), "models/financial2/v000003/manifest.json").is_none());
        assert!(version_of_key(&fin(), "models/financial/v3/manifest.json").is_none());
    }
}
