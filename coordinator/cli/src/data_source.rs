//! Where a command's dataset comes from (`--data`, `--eval`): local files, uploaded as they are
//! (one file) or merged into one JSONL file (several), or a content-addressed key already in the
//! coordinator's bucket.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use refit_proto::data::{MAX_DATASET_BYTES, load_files};
use refit_proto::keys;
use refit_proto::wire::DatasetBody;

use super::client::Client;

/// Where a dataset comes from.
#[derive(Debug, PartialEq)]
pub(super) enum DataSource {
    /// Local files, uploaded (merged when several).
    Files(Vec<PathBuf>),
    /// A content-addressed key already in the bucket.
    Key(DatasetBody),
}

impl DataSource {
    /// Reads `--data`-style arguments: local files, or exactly one content-addressed key.
    pub(super) fn from_args(args: &[PathBuf], flag: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for arg in args {
            if let Some(key) = remote_key(arg) {
                keys.push(key.with_context(|| format!("{flag} {}", arg.display()))?);
            }
        }
        match (keys.len(), args.len()) {
            (0, _) => Ok(DataSource::Files(args.to_vec())),
            (1, 1) => Ok(DataSource::Key(keys.remove(0))),
            _ => bail!(
                "{flag}: a dataset key cannot be merged with other files or keys; give one \
                 key, or local files only"
            ),
        }
    }

    /// The dataset as the coordinator knows it, uploading local files first. Notes go to stderr.
    pub(super) fn upload(self, client: &Client, what: &str) -> Result<DatasetBody> {
        let files = match self {
            DataSource::Key(key) => return Ok(key),
            DataSource::Files(files) => files,
        };
        let data = load_files(&files)?;
        if data.is_empty() {
            bail!("the {what} holds no examples");
        }
        let (bytes, ext, shown) = if let [path] = files.as_slice() {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .filter(|e| keys::DATASET_EXTENSIONS.contains(&e.as_str()))
                .with_context(|| {
                    format!(
                        "{}: expected a .yml, .yaml, .jsonl or .json file",
                        path.display()
                    )
                })?;
            let bytes =
                read_file(path).with_context(|| format!("cannot read {}", path.display()))?;
            (bytes, ext, path.display().to_string())
        } else {
            let jsonl = data.to_jsonl();
            let shown = format!("{} files merged as JSONL", files.len());
            (jsonl.into_bytes(), "jsonl".to_owned(), shown)
        };
        let size = bytes.len();
        let dataset = client.upload_dataset(bytes, &ext)?;
        let duplicates = match data.duplicates_dropped {
            0 => String::new(),
            n => format!(", {n} duplicates dropped"),
        };
        eprintln!(
            "{what}: {shown} ({} examples{duplicates}, {}) -> {}",
            data.len(),
            size_text(size),
            dataset.key
        );
        Ok(dataset)
    }
}

/// Reads a whole file, refusing one larger than the coordinator could take.
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() > MAX_DATASET_BYTES {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the limit of {MAX_DATASET_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// `12.3 KiB`.
fn size_text(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// `Some` when `arg` names a dataset in the bucket rather than a local file: `s3://…`, or a
/// `datasets/sha256/…` key that is not a local path.
fn remote_key(arg: &Path) -> Option<Result<DatasetBody>> {
    let text = arg.to_str()?;
    if let Some(rest) = text.strip_prefix("s3://") {
        return Some(match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => content_key(key),
            _ => Err(anyhow::anyhow!(
                "expected s3://BUCKET/datasets/sha256/<sha256>.<ext>"
            )),
        });
    }
    if text.starts_with("datasets/sha256/") && !arg.exists() {
        return Some(content_key(text));
    }
    None
}

/// Checks that `key` is `datasets/sha256/<hex>.<ext>` and takes the sha256 from it.
fn content_key(key: &str) -> Result<DatasetBody> {
    let parsed = key
        .strip_prefix("datasets/sha256/")
        .and_then(|name| name.rsplit_once('.'))
        .and_then(|(hex, ext)| keys::dataset(hex, ext).ok().map(|k| (k, hex)));
    match parsed {
        Some((canonical, hex)) if canonical == key => Ok(DatasetBody {
            key: canonical,
            sha256: hex.to_owned(),
        }),
        _ => bail!(
            "{key:?} is not a content-addressed dataset key. A job names exactly the bytes it \
             trains on, so refit reads datasets from datasets/sha256/<sha256 of the file>.<yml|\
             yaml|jsonl|json> (64 lowercase hex digits). Pass the local file instead (refit \
             submit uploads it under that key), or copy the object to \
             datasets/sha256/$(sha256sum FILE | cut -c1-64).yml"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn content_addressed_keys_are_taken_as_they_are() {
        let key = format!("datasets/sha256/{HEX}.yml");
        let source =
            DataSource::from_args(&[PathBuf::from(format!("s3://refit/{key}"))], "--data").unwrap();
        assert_eq!(
            source,
            DataSource::Key(DatasetBody {
                key: key.clone(),
                sha256: HEX.to_owned()
            })
        );
        let source = DataSource::from_args(&[PathBuf::from(&key)], "--data").unwrap();
        assert!(matches!(source, DataSource::Key(_)));
    }

    #[test]
    fn other_keys_say_what_to_do() {
        for bad in [
            "s3://refit/incoming/nlu.yml".to_owned(),
            format!("s3://refit/datasets/sha256/{}.yml", HEX.to_uppercase()),
            format!("s3://refit/datasets/sha256/{HEX}.txt"),
            format!("datasets/sha256/{}.yml", &HEX[1..]),
            "s3://refit".to_owned(),
        ] {
            let err = DataSource::from_args(&[PathBuf::from(&bad)], "--data").unwrap_err();
            let text = format!("{err:#}");
            assert!(text.starts_with("--data "), "{bad}: {text}");
            assert!(
                text.contains("content-addressed") || text.contains("expected s3://"),
                "{bad}: {text}"
            );
        }
        let key = format!("s3://refit/datasets/sha256/{HEX}.yml");
        let err = DataSource::from_args(&[PathBuf::from(&key), PathBuf::from("a.yml")], "--data")
            .unwrap_err();
        assert!(err.to_string().contains("cannot be merged"), "{err}");
    }

    #[test]
    fn local_files_stay_local() {
        let source =
            DataSource::from_args(&[PathBuf::from("a.yml"), PathBuf::from("b.yml")], "--data")
                .unwrap();
        assert_eq!(
            source,
            DataSource::Files(vec![PathBuf::from("a.yml"), PathBuf::from("b.yml")])
        );
    }

    #[test]
    fn sizes_read_as_bytes_kib_and_mib() {
        assert_eq!(size_text(12), "12 B");
        assert_eq!(size_text(12_595), "12.3 KiB");
        assert_eq!(size_text(3 * 1_048_576), "3.0 MiB");
    }
}
