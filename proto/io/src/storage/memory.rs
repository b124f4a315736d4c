//! [`MemoryStore`]: an in-memory [`ObjectStore`] for unit tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;

use super::file::AtomicFile;
use super::{
    Download, ObjectMeta, ObjectStore, StorageError, Upload, sha256_hex, validate_key,
    validate_prefix,
};

/// Objects in a map, with the same key rules and error kinds as the real stores. Unit tests only
/// (DESIGN §7): integration tests use the real S3 server.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Stored>,
    generation: u64,
}

#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    meta: ObjectMeta,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object's bytes without touching its metadata, as a disk or network fault
    /// would: lets tests check that corruption is caught. Returns whether the object existed.
    pub fn corrupt(&self, key: &str, data: Bytes) -> bool {
        let mut state = self.lock();
        match state.objects.get_mut(key) {
            Some(stored) => {
                stored.data = data;
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (each critical
        // section is a single insert/remove/read), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, key: &str, data: Bytes, only_if_absent: bool) -> Option<ObjectMeta> {
        let mut state = self.lock();
        if only_if_absent && state.objects.contains_key(key) {
            return None;
        }
        state.generation += 1;
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag: Some(format!("\"mem-{}\"", state.generation)),
            last_modified: Some(Utc::now()),
        };
        state.objects.insert(
            key.to_owned(),
            Stored {
                data,
                meta: meta.clone(),
            },
        );
        Some(meta)
    }

    fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        self.lock()
            .objects
            .get(key)
            .map(|stored| stored.data.clone())
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_owned(),
            })
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        validate_key(key)?;
        self.insert(key, data, false);
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<Upload, StorageError> {
        validate_key(key)?;
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| StorageError::io("read", path, e))?;
        let sha256 = sha256_hex(&data);
        let meta = self
            .insert(key, Bytes::from(data), false)
            .expect("an unconditional insert always stores");
        Ok(Upload {
            size: meta.size,
            sha256,
            etag: meta.etag,
            multipart_parts: None,
        })
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StorageError> {
        validate_key(key)?;
        Ok(self.insert(key, data, true).is_some())
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        validate_key(key)?;
        let data = self.read(key)?;
        if data.len() as u64 > limit {
            return Err(StorageError::TooLarge {
                key: key.to_owned(),
                limit,
                size: Some(data.len() as u64),
            });
        }
        Ok(data)
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Download, StorageError> {
        validate_key(key)?;
        let data = self.read(key)?;
        let mut file = AtomicFile::next_to(path).await?;
        file.write(&data).await?;
        let staged = file.finish().await?;
        staged.verify_and_publish(key, expected_sha256, path).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        validate_key(key)?;
        Ok(self
            .lock()
            .objects
            .get(key)
            .map(|stored| stored.meta.clone()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        validate_prefix(prefix)?;
        let state = self.lock();
        let mut found = Vec::new();
        for (key, stored) in state.objects.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            found.push(stored.meta.clone());
        }
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        self.lock().objects.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testsuite;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        testsuite::run_all(&MemoryStore::new(), dir.path()).await;
    }

    #[tokio::test]
    async fn corruption_is_caught() {
        let store = MemoryStore::new();
        store
            .put("models/m/v000001/model.onnx", Bytes::from_static(b"good"))
            .await
            .unwrap();
        let good = sha256_hex(b"good");
        assert!(store.corrupt("models/m/v000001/model.onnx", Bytes::from_static(b"evil")));
        let err = store
            .get_verified("models/m/v000001/model.onnx", &good)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            crate::storage::StorageErrorKind::ChecksumMismatch
        );
        assert!(!store.corrupt("missing", Bytes::new()));
    }
}
