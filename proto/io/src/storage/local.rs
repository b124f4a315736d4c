//! [`LocalStore`]: the object store on a local directory, for `refit demo` and single-machine
//! runs.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;

use super::file::{AtomicFile, CHUNK_BYTES, Staged, is_temp_name};
use super::{
    Download, ObjectMeta, ObjectStore, StorageError, Upload, validate_key, validate_prefix,
};

/// Where the store stages writes, under its root. Keys under it are refused.
const TEMP_DIR: &str = ".refit-tmp";

/// Objects as files under a root folder: key `models/m/v000001/model.onnx` is the file
/// `<root>/models/m/v000001/model.onnx`, so the folder can be browsed (and copied to S3) as is.
///
/// - Writes go to `<root>/.refit-tmp/` and are renamed into place: readers never see a partial
///   object. `<root>/.refit-tmp` is therefore not a valid key prefix here.
/// - [`ObjectStore::put_if_absent`] is atomic (a hard link, which fails if the name exists, like
///   `O_EXCL`), so unlike Garage this store does honour it.
/// - Unlike S3, a key cannot be both an object and a folder: with `a/b` stored, `put("a")` fails
///   (a permanent error), and `get("a")` is `NotFound`.
/// - Deleting the last object of a folder removes the emptied folders.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`; the folder is created on the first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_for(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        if key == TEMP_DIR || key.starts_with(".refit-tmp/") {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "the prefix '.refit-tmp/' is reserved by the local store",
            });
        }
        Ok(self.root.join(key))
    }

    fn temp_dir(&self) -> PathBuf {
        self.root.join(TEMP_DIR)
    }

    /// Stages `data` in the temp folder.
    async fn stage_bytes(&self, key: &str, data: &[u8]) -> Result<Staged, StorageError> {
        let mut file = AtomicFile::create(&self.temp_dir(), last_segment(key)).await?;
        file.write(data).await?;
        file.finish().await
    }

    /// Moves a staged file to `dest`, creating its folders. Retries when a concurrent delete
    /// prunes a just-created folder.
    async fn publish(
        &self,
        staged: Staged,
        dest: &Path,
        only_if_absent: bool,
    ) -> Result<bool, StorageError> {
        let parent = dest.parent().expect("an object path is below the root");
        let mut staged = Some(staged);
        for attempt in 0..3 {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StorageError::io("create folder", parent, e))?;
            let file = staged
                .take()
                .expect("the staged file is handed back for a retry");
            match file.try_publish(dest, only_if_absent).await {
                Ok(created) => return Ok(created),
                Err((file, error)) if attempt < 2 && error.kind() == ErrorKind::NotFound => {
                    staged = Some(file);
                }
                Err((_, error)) => return Err(StorageError::io("write object", dest, error)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn open_object(&self, key: &str, path: &Path) -> Result<tokio::fs::File, StorageError> {
        match tokio::fs::File::open(path).await {
            Ok(file) => {
                let meta = file
                    .metadata()
                    .await
                    .map_err(|e| StorageError::io("read object", path, e))?;
                if meta.is_dir() {
                    return Err(StorageError::NotFound {
                        key: key.to_owned(),
                    });
                }
                Ok(file)
            }
            Err(e) if is_missing(&e) => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) => Err(StorageError::io("read object", path, e)),
        }
    }

    fn meta_of(key: &str, meta: &std::fs::Metadata) -> ObjectMeta {
        let modified: Option<DateTime<Utc>> = meta.modified().ok().map(DateTime::from);
        let etag = modified.map(|m| {
            format!(
                "\"{:x}-{:x}\"",
                m.timestamp_nanos_opt().unwrap_or_default(),
                meta.len()
            )
        });
        ObjectMeta {
            key: key.to_owned(),
            size: meta.len(),
            etag,
            last_modified: modified,
        }
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let dest = self.path_for(key)?;
        let staged = self.stage_bytes(key, &data).await?;
        self.publish(staged, &dest, false).await?;
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<Upload, StorageError> {
        let dest = self.path_for(key)?;
        let mut source = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io("open", path, e))?;
        let mut file = AtomicFile::create(&self.temp_dir(), last_segment(key)).await?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = source
                .read(&mut buf)
                .await
                .map_err(|e| StorageError::io("read", path, e))?;
            if n == 0 {
                break;
            }
            file.write(&buf[..n]).await?;
        }
        let staged = file.finish().await?;
        let (size, sha256) = (staged.size, staged.sha256.clone());
        self.publish(staged, &dest, false).await?;
        let etag = tokio::fs::metadata(&dest)
            .await
            .ok()
            .and_then(|m| Self::meta_of(key, &m).etag);
        Ok(Upload {
            size,
            sha256,
            etag,
            multipart_parts: None,
        })
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StorageError> {
        let dest = self.path_for(key)?;
        let staged = self.stage_bytes(key, &data).await?;
        self.publish(staged, &dest, true).await
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        let path = self.path_for(key)?;
        let file = self.open_object(key, &path).await?;
        let too_large = |size| StorageError::TooLarge {
            key: key.to_owned(),
            limit,
            size,
        };
        if let Ok(meta) = file.metadata().await
            && meta.len() > limit
        {
            return Err(too_large(Some(meta.len())));
        }
        // The file may grow meanwhile: read one byte past the limit at most.
        let mut data = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .await
            .map_err(|e| StorageError::io("read object", &path, e))?;
        if data.len() as u64 > limit {
            return Err(too_large(None));
        }
        Ok(Bytes::from(data))
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Download, StorageError> {
        let source_path = self.path_for(key)?;
        let mut source = self.open_object(key, &source_path).await?;
        let mut file = AtomicFile::next_to(path).await?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = source
                .read(&mut buf)
                .await
                .map_err(|e| StorageError::io("read object", &source_path, e))?;
            if n == 0 {
                break;
            }
            file.write(&buf[..n]).await?;
        }
        let staged = file.finish().await?;
        staged.verify_and_publish(key, expected_sha256, path).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_for(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(Self::meta_of(key, &meta))),
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(StorageError::io("stat object", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .map_err(|e| StorageError::Rejected {
                op: "list",
                key: String::new(),
                detail: "listing task failed".to_owned(),
                source: Some(Box::new(e)),
            })?
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_for(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            // A missing object, or a key that names a folder: nothing to delete.
            Err(e) if is_missing(&e) || e.kind() == ErrorKind::IsADirectory => return Ok(()),
            Err(e) if path.is_dir() => {
                tracing::debug!(error = %e, key, "delete of a folder key: nothing to delete");
                return Ok(());
            }
            Err(e) => return Err(StorageError::io("delete object", &path, e)),
        }
        // Prune the folders this delete emptied; stop at the first that is not empty.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    // Start at the deepest folder the prefix names in full: `models/fin/v0` walks `models/fin`.
    let folder = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if folder.is_empty() {
        root.to_path_buf()
    } else {
        root.join(folder)
    };
    let mut found = Vec::new();
    let mut pending = vec![(start, folder.to_owned())];
    while let Some((dir, dir_key)) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(StorageError::io("list folder", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list folder", &dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if (dir_key.is_empty() && name == TEMP_DIR) || is_temp_name(&name) {
                continue;
            }
            let key = if dir_key.is_empty() {
                name
            } else {
                format!("{dir_key}/{name}")
            };
            // Prune folders that cannot hold a match: neither prefix of the other.
            if !(key.starts_with(prefix) || prefix.starts_with(&key)) {
                continue;
            }
            let file_type = entry
                .file_type()
                .map_err(|e| StorageError::io("list folder", entry.path(), e))?;
            if file_type.is_dir() {
                pending.push((entry.path(), key));
                continue;
            }
            // Files, and symlinks to files (a symlinked folder is not followed).
            let meta = match std::fs::metadata(entry.path()) {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => continue,
                Err(e) if is_missing(&e) => continue, // deleted or dangling meanwhile
                Err(e) => return Err(StorageError::io("stat object", entry.path(), e)),
            };
            if key.starts_with(prefix) && validate_key(&key).is_ok() {
                found.push(LocalStore::meta_of(&key, &meta));
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StorageErrorKind, testsuite};

    #[tokio::test]
    async fn conformance() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        testsuite::run_all(&LocalStore::new(root.path().join("store")), scratch.path()).await;
    }

    #[tokio::test]
    async fn keys_are_files_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path());
        store
            .put("models/m/v000001/vocab.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(root.path().join("models/m/v000001/vocab.json")).unwrap(),
            b"{}"
        );
        // No temporary files are left behind, and they are never listed.
        let temp: Vec<_> = std::fs::read_dir(root.path().join(TEMP_DIR))
            .unwrap()
            .collect();
        assert!(temp.is_empty(), "{temp:?}");
        std::fs::write(root.path().join("models/m/.x.refit-tmp-1"), b"junk").unwrap();
        let keys: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["models/m/v000001/vocab.json".to_owned()]);

        store.delete("models/m/v000001/vocab.json").await.unwrap();
        assert!(!root.path().join("models/m/v000001").exists());
    }

    #[tokio::test]
    async fn reserved_and_conflicting_keys() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path());
        let err = store.put(".refit-tmp/x", Bytes::new()).await.unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::InvalidKey);

        store.put("a/b", Bytes::from_static(b"1")).await.unwrap();
        let err = store.put("a", Bytes::from_static(b"2")).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(store.get("a").await.unwrap_err().is_not_found());
        assert_eq!(store.head("a").await.unwrap(), None);
        store.delete("a").await.unwrap();
        assert_eq!(store.get("a/b").await.unwrap(), Bytes::from_static(b"1"));
    }

    #[tokio::test]
    async fn put_if_absent_is_atomic_under_contention() {
        let root = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::new(root.path()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16u8 {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .put_if_absent("lock", Bytes::from(vec![i; 4096]))
                    .await
            });
        }
        let mut winners = 0;
        while let Some(result) = tasks.join_next().await {
            if result.unwrap().unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        let data = store.get("lock").await.unwrap();
        assert_eq!(data.len(), 4096);
        assert!(
            data.iter().all(|b| *b == data[0]),
            "a reader saw a mixed object"
        );
    }
}
