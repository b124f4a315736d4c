//! [`StorageError`]: what went wrong, and whether trying again can help.

use std::path::PathBuf;

/// A boxed error cause, kept as the `source` of a [`StorageError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the caller can do about a [`StorageError`].
///
/// Only [`StorageErrorKind::Transient`] is worth retrying; every other kind is permanent: the same
/// request will fail the same way until something outside refit changes (the object, the key, the
/// credentials, the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageErrorKind {
    /// The object does not exist (permanent).
    NotFound,
    /// The object's bytes do not have the expected sha256 (permanent: the stored object is
    /// corrupt or is not the one the caller meant).
    ChecksumMismatch,
    /// The key breaks refit's key rules (permanent).
    InvalidKey,
    /// The credentials are wrong or lack the permission (permanent).
    PermissionDenied,
    /// The server could not be reached, timed out, failed (5xx) or throttled: retry with backoff.
    Transient,
    /// The object is larger than the caller reads (permanent).
    TooLarge,
    /// Anything else: a rejected request, a broken config, a local file that cannot be read
    /// (permanent).
    Other,
}

impl StorageErrorKind {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(self) -> bool {
        self == StorageErrorKind::Transient
    }
}

/// An object-store operation failed.
///
/// Messages name the operation and the key (or local path), never credentials. `op` is a short
/// lowercase name such as `"get"` or `"upload part"`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {key:?} not found")]
    NotFound { key: String },

    /// The downloaded bytes do not hash to the expected sha256.
    #[error("checksum mismatch for object {key:?}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },

    /// The key (or list prefix) breaks the key rules of [`super::validate_key`].
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// The server refused the credentials or the permission (HTTP 403), or the local store's
    /// files are not accessible.
    #[error("permission denied: {op} {key:?}: {detail}")]
    PermissionDenied {
        op: &'static str,
        key: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },

    /// The object is larger than the caller reads of it (an object the process does not
    /// control, e.g. a manifest or a dataset someone replaced); nothing beyond the limit was
    /// read.
    #[error(
        "object {key:?} is larger than {limit} bytes, the most read of it{}",
        size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        key: String,
        limit: u64,
        size: Option<u64>,
    },

    /// Worth retrying: the server could not be reached, timed out, failed or throttled.
    #[error("transient storage failure: {op} {key:?}: {detail}")]
    Transient {
        op: &'static str,
        key: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },

    /// The server rejected the request for another reason (a 4xx other than 403/404, a missing
    /// bucket, a malformed response).
    #[error("storage request failed: {op} {key:?}: {detail}")]
    Rejected {
        op: &'static str,
        key: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A local file (the source of an upload, the destination of a download, or a file of the
    /// local store) could not be read or written.
    #[error("local file error: {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store's configuration is unusable.
    #[error("invalid storage config: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
}

impl StorageError {
    /// What the caller can do about it.
    pub fn kind(&self) -> StorageErrorKind {
        match self {
            StorageError::NotFound { .. } => StorageErrorKind::NotFound,
            StorageError::ChecksumMismatch { .. } => StorageErrorKind::ChecksumMismatch,
            StorageError::InvalidKey { .. } => StorageErrorKind::InvalidKey,
            StorageError::PermissionDenied { .. } => StorageErrorKind::PermissionDenied,
            StorageError::Transient { .. } => StorageErrorKind::Transient,
            StorageError::TooLarge { .. } => StorageErrorKind::TooLarge,
            StorageError::Rejected { .. } | StorageError::InvalidConfig { .. } => {
                StorageErrorKind::Other
            }
            StorageError::Io { source, .. } => io_kind(source),
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == StorageErrorKind::NotFound
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Local I/O errors are permanent, except the few that mean "busy, try again". A missing local
/// file is deliberately *not* [`StorageErrorKind::NotFound`]: that kind is reserved for missing
/// objects, and callers act on it (e.g. "no checkpoint yet").
fn io_kind(error: &std::io::Error) -> StorageErrorKind {
    use std::io::ErrorKind as K;
    match error.kind() {
        K::PermissionDenied => StorageErrorKind::PermissionDenied,
        K::Interrupted | K::TimedOut | K::WouldBlock => StorageErrorKind::Transient,
        _ => StorageErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_transience() {
        let transient = StorageError::Transient {
            op: "get",
            key: "a".into(),
            detail: "connection refused".into(),
            source: None,
        };
        assert_eq!(transient.kind(), StorageErrorKind::Transient);
        assert!(transient.is_transient());

        let missing = StorageError::NotFound { key: "a".into() };
        assert!(missing.is_not_found());
        assert!(!missing.is_transient());

        let local_missing = StorageError::io(
            "read",
            "/nope",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(local_missing.kind(), StorageErrorKind::Other);
        let denied = StorageError::io(
            "read",
            "/nope",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(denied.kind(), StorageErrorKind::PermissionDenied);
    }

    #[test]
    fn messages_are_lowercase_and_name_the_key() {
        let e = StorageError::ChecksumMismatch {
            key: "models/m/v000001/model.onnx".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with("checksum mismatch"), "{text}");
        assert!(text.contains("models/m/v000001/model.onnx"), "{text}");
    }
}
