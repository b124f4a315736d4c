//! Atomic file writes: bytes go to a temporary file (hashed on the way), which is renamed into
//! place only when complete. A temporary file that is not published is removed, also when the
//! writing future is dropped halfway.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::fs;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{Download, StorageError, verify_sha256};

/// How much a store reads from a local file at a time.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// A temporary file being written.
pub(crate) struct AtomicFile {
    writer: BufWriter<fs::File>,
    temp: TempPath,
    hasher: Sha256,
    size: u64,
}

/// A complete, flushed temporary file, ready to be published.
pub(crate) struct Staged {
    temp: TempPath,
    pub size: u64,
    pub sha256: String,
}

impl AtomicFile {
    /// Starts a temporary file in `dir` (created if missing), named after `hint`.
    pub async fn create(dir: &Path, hint: &str) -> Result<Self, StorageError> {
        fs::create_dir_all(dir)
            .await
            .map_err(|e| StorageError::io("create folder", dir, e))?;
        let name = format!(".{hint}.refit-tmp-{:016x}", rand::random::<u64>());
        let path = dir.join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StorageError::io("create temporary file", &path, e))?;
        Ok(AtomicFile {
            writer: BufWriter::with_capacity(CHUNK_BYTES, file),
            temp: TempPath(Some(path)),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Starts a temporary file next to `dest`, so that the final rename stays on one filesystem.
    pub async fn next_to(dest: &Path) -> Result<Self, StorageError> {
        let name = dest.file_name().ok_or_else(|| {
            StorageError::io(
                "download",
                dest,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "destination has no file name",
                ),
            )
        })?;
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Self::create(dir, &name.to_string_lossy()).await
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        let path = self.temp.path();
        self.writer
            .write_all(chunk)
            .await
            .map_err(|e| StorageError::io("write", path, e))
    }

    /// Flushes and syncs the file to disk.
    pub async fn finish(mut self) -> Result<Staged, StorageError> {
        let path = self.temp.path().to_owned();
        self.writer
            .flush()
            .await
            .map_err(|e| StorageError::io("write", &path, e))?;
        self.writer
            .get_mut()
            .sync_all()
            .await
            .map_err(|e| StorageError::io("sync", &path, e))?;
        Ok(Staged {
            temp: self.temp,
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

impl Staged {
    /// The end of every store's `get_to_file`: checks the downloaded bytes against the expected
    /// sha256 (a mismatch leaves no file behind), then publishes them at `dest`.
    pub async fn verify_and_publish(
        self,
        key: &str,
        expected_sha256: Option<&str>,
        dest: &Path,
    ) -> Result<Download, StorageError> {
        if let Some(expected) = expected_sha256 {
            verify_sha256(key, expected, &self.sha256)?;
        }
        let download = Download {
            size: self.size,
            sha256: self.sha256.clone(),
        };
        self.publish(dest).await?;
        Ok(download)
    }

    /// Renames the file to `dest`, replacing what is there.
    pub async fn publish(self, dest: &Path) -> Result<(), StorageError> {
        self.try_publish(dest, false)
            .await
            .map(|_| ())
            .map_err(|(_, e)| StorageError::io("rename into place", dest, e))
    }

    /// Publishes the file at `dest`. With `only_if_absent`, it does so only if nothing is there,
    /// atomically (a hard link, which fails if the name exists, like `O_EXCL`; a reader never
    /// sees a partial file), and returns whether it did; otherwise it renames over `dest` and
    /// returns `true`. On an I/O error the staged file is handed back, so it can be retried.
    pub async fn try_publish(
        mut self,
        dest: &Path,
        only_if_absent: bool,
    ) -> Result<bool, (Staged, std::io::Error)> {
        let temp = self.temp.path().to_owned();
        if only_if_absent {
            // Either way the temporary name is removed when `self` drops; a linked file stays.
            match fs::hard_link(&temp, dest).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err((self, e)),
            }
        } else {
            match fs::rename(&temp, dest).await {
                Ok(()) => {
                    self.temp.disarm();
                    Ok(true)
                }
                Err(e) => Err((self, e)),
            }
        }
    }
}

/// A path that is removed when dropped, unless disarmed.
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a TempPath is only read while armed")
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: a single unlink, cheap enough to do synchronously even on a runtime
            // thread. Failure leaves a `.refit-tmp-` file that nothing reads.
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, path = %path.display(), "failed to remove temporary file");
            }
        }
    }
}

/// Whether a file name is one of [`AtomicFile`]'s temporary names.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".refit-tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_replaces_and_dropping_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").unwrap();

        let mut file = AtomicFile::next_to(&dest).await.unwrap();
        file.write(b"new ").await.unwrap();
        file.write(b"bytes").await.unwrap();
        let staged = file.finish().await.unwrap();
        assert_eq!(staged.size, 9);
        assert_eq!(staged.sha256, crate::storage::sha256_hex(b"new bytes"));
        staged.publish(&dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new bytes");

        let mut abandoned = AtomicFile::next_to(&dest).await.unwrap();
        abandoned.write(b"partial").await.unwrap();
        drop(abandoned);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["out.bin".to_owned()]);
    }

    #[tokio::test]
    async fn publish_new_does_not_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("once");
        for (content, expect_created) in [(&b"first"[..], true), (&b"second"[..], false)] {
            let mut file = AtomicFile::next_to(&dest).await.unwrap();
            file.write(content).await.unwrap();
            let staged = file.finish().await.unwrap();
            let created = staged
                .try_publish(&dest, true)
                .await
                .map_err(|(_, e)| e)
                .unwrap();
            assert_eq!(created, expect_created);
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".model.onnx.refit-tmp-00ff00ff00ff00ff"));
        assert!(!is_temp_name("model.onnx"));
    }
}
