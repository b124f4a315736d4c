//! The object store: where models, checkpoints and datasets live (DESIGN §3, §6).
//!
//! Everything above this module talks to an [`ObjectStore`] (usually an `Arc<dyn ObjectStore>`)
//! and never to the AWS SDK. Three implementations share the same key layout and behaviour:
//!
//! - [`S3Store`]: any S3-compatible server through `aws-sdk-s3` (AWS S3, Garage, MinIO, Ceph
//!   RGW), configured by [`S3Config`]. Large uploads go multipart; SDK errors become a
//!   [`StorageErrorKind`] here, at the boundary.
//! - [`LocalStore`]: a directory on disk, for `refit demo` and single-machine runs.
//! - [`MemoryStore`]: in memory, for unit tests.
//!
//! ## Contract
//!
//! - **Keys** are checked by every method before anything else ([`validate_key`]): a bad key is a
//!   permanent [`StorageErrorKind::InvalidKey`] error, whichever store is behind the trait.
//! - **Errors** carry a [`StorageErrorKind`]; only [`StorageErrorKind::Transient`] is worth a
//!   retry. Stores retry very little themselves (the S3 client makes at most
//!   [`S3Config::max_attempts`] attempts) so that a dead server is reported within seconds and the
//!   worker can apply its own backoff, nack or dead-letter policy.
//! - **Missing objects**: `get*` return [`StorageErrorKind::NotFound`], [`ObjectStore::head`]
//!   returns `Ok(None)`, [`ObjectStore::delete`] succeeds (deleting is idempotent, as in S3).
//! - **Checksums**: uploads of files report the sha256 of what was sent; downloads compute the
//!   sha256 while streaming and, when the caller gives the expected one, fail with a permanent
//!   [`StorageErrorKind::ChecksumMismatch`] and leave no file behind.
//! - **Downloads to files** are atomic: bytes go to a temporary file next to the destination,
//!   which is renamed into place only once complete and verified.
//! - **Conditional writes**: [`ObjectStore::put_if_absent`] asks S3 for a create-only write
//!   (`If-None-Match: *`), but Garage ignores that header and overwrites (see `S3-SERVER.md`).
//!   Callers must not rely on it for correctness: version numbers come from the coordinator's
//!   job store, and a version's manifest, written last, marks it complete (DESIGN §6).
//!
//! ## Layout
//! - `error`: [`StorageError`], [`StorageErrorKind`]
//! - `key`: [`validate_key`], [`validate_prefix`]
//! - `file`: atomic temp-file-then-rename writes with a running sha256
//! - `s3`: [`S3Store`], [`S3Config`]
//! - `local`: [`LocalStore`]
//! - `memory`: [`MemoryStore`]

mod error;
mod file;
mod key;
mod local;
mod memory;
mod s3;

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
pub(crate) use refit_proto::keys::sha256_hex;

pub use error::{BoxError, StorageError, StorageErrorKind};
pub use key::{MAX_KEY_BYTES, validate_key, validate_prefix};
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use s3::{S3Config, S3Store};

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's full key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The server's entity tag, quotes included as the server sent them. For S3 it is an opaque
    /// version marker: a multipart upload's ETag ends in `-<parts>` and is *not* a content hash.
    pub etag: Option<String>,
    /// When it was last written, if the store says.
    pub last_modified: Option<DateTime<Utc>>,
}

/// The outcome of [`ObjectStore::put_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Bytes sent.
    pub size: u64,
    /// The sha256 (lowercase hex) of the bytes sent, computed while reading the file.
    pub sha256: String,
    /// The entity tag the store returned, if any.
    pub etag: Option<String>,
    /// `Some(parts)` when the upload went multipart, `None` for a single request.
    pub multipart_parts: Option<u32>,
}

/// The outcome of [`ObjectStore::get_to_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// Bytes written.
    pub size: u64,
    /// The sha256 (lowercase hex) of the bytes written.
    pub sha256: String,
}

/// An object store. Object-safe: use it as `Arc<dyn ObjectStore>`.
///
/// See the [module docs](self) for the contract every implementation keeps.
#[async_trait]
pub trait ObjectStore: std::fmt::Debug + Send + Sync {
    /// Stores `data` under `key`, replacing any object there.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;

    /// Streams the file at `path` to `key`, replacing any object there. Files at or above the
    /// store's multipart threshold go up in parts; a failed multipart upload is aborted.
    async fn put_file(&self, key: &str, path: &Path) -> Result<Upload, StorageError>;

    /// Stores `data` under `key` only if no object is there, and says whether it did.
    ///
    /// **Not a lock.** [`LocalStore`] and [`MemoryStore`] honour it atomically; [`S3Store`] sends
    /// `If-None-Match: *`, which AWS S3 honours but Garage ignores (it overwrites and this returns
    /// `true`). Never build correctness on it (DESIGN §6).
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StorageError>;

    /// Reads the whole object into memory, if it holds at most `limit` bytes: a larger one is a
    /// permanent [`StorageErrorKind::TooLarge`] naming the key and the limit, found from its
    /// declared length or while reading, so that no more than `limit` bytes (and a chunk) are
    /// ever held. Every read of an object the process does not control is bounded this way.
    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StorageError>;

    /// Reads the whole object into memory, however large. Use [`ObjectStore::get_at_most`] for
    /// objects others may write, [`ObjectStore::get_to_file`] for large ones.
    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.get_at_most(key, u64::MAX).await
    }

    /// Reads the whole object and checks its sha256 (hex, either case); a mismatch is a permanent
    /// [`StorageErrorKind::ChecksumMismatch`].
    async fn get_verified(&self, key: &str, expected_sha256: &str) -> Result<Bytes, StorageError> {
        self.get_verified_at_most(key, expected_sha256, u64::MAX)
            .await
    }

    /// [`ObjectStore::get_verified`] of an object of at most `limit` bytes (see
    /// [`ObjectStore::get_at_most`]).
    async fn get_verified_at_most(
        &self,
        key: &str,
        expected_sha256: &str,
        limit: u64,
    ) -> Result<Bytes, StorageError> {
        let data = self.get_at_most(key, limit).await?;
        verify_sha256(key, expected_sha256, &sha256_hex(&data))?;
        Ok(data)
    }

    /// Streams the object into the file at `path` (parent folders are created), through a
    /// temporary file that is renamed into place once complete. With `expected_sha256`, a
    /// mismatch is a permanent [`StorageErrorKind::ChecksumMismatch`] and no file is left at
    /// `path` (an existing file there is left untouched).
    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Download, StorageError>;

    /// The object's metadata, or `None` if it does not exist. (On S3 a missing *bucket* also
    /// reads as `None` here, since a HEAD response has no error body; [`S3Store::check_bucket`]
    /// tells the two apart, and `get`/`list` report a missing bucket as a permanent error.)
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Every object whose key starts with `prefix` (a plain string prefix: `models/a` matches
    /// `models/ab/…`; end it with `/` for one folder), sorted by key. Pages through the store's
    /// listing internally.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Deletes the object. Deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
}

/// `Ok` if `actual` (lowercase hex) equals `expected` (hex, either case).
pub(crate) fn verify_sha256(key: &str, expected: &str, actual: &str) -> Result<(), StorageError> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(StorageError::ChecksumMismatch {
            key: key.to_owned(),
            expected: expected.chars().take(80).collect(),
            actual: actual.to_owned(),
        })
    }
}

#[cfg(test)]
pub(crate) mod testsuite;
