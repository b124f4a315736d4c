//! Object-key rules, checked by every store before it touches the network or the disk.
//!
//! refit's keys (DESIGN §3, `refit_proto::keys`) are `/`-separated relative paths. The rules keep
//! them portable: the same key is a valid S3 key and a safe relative path under the local store's
//! root, so no key can escape that root or mean two different objects.

use super::StorageError;

/// The longest key S3 accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Checks an object key: non-empty, at most [`MAX_KEY_BYTES`] bytes, no leading `/`, no empty
/// segment (`a//b`, trailing `/`), no `.` or `..` segment, no backslash and no control character.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(invalid(key, "key is empty"));
    }
    check_common(key)?;
    if key.split('/').any(str::is_empty) {
        return Err(invalid(
            key,
            "key has an empty segment (a '//' or a trailing '/')",
        ));
    }
    Ok(())
}

/// Checks a list prefix: like [`validate_key`], except that the empty prefix (everything) and a
/// trailing `/` (one folder) are allowed.
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_common(prefix)?;
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    if body.split('/').any(str::is_empty) {
        return Err(invalid(prefix, "prefix has an empty segment (a '//')"));
    }
    Ok(())
}

fn check_common(key: &str) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(key, "key is longer than 1024 bytes"));
    }
    if key.starts_with('/') {
        return Err(invalid(key, "key starts with '/'"));
    }
    if key.contains('\\') {
        return Err(invalid(key, "key contains a backslash"));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(key, "key contains a control character"));
    }
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(invalid(key, "key has a '.' or '..' segment"));
    }
    Ok(())
}

fn invalid(key: &str, reason: &'static str) -> StorageError {
    // Bound what goes into logs: a rejected key may be arbitrary input.
    let shown: String = key.chars().take(200).collect();
    StorageError::InvalidKey { key: shown, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageErrorKind;

    #[test]
    fn accepts_refit_keys() {
        for key in [
            "datasets/sha256/0123abcd.yml",
            "models/financial/v000001/manifest.json",
            "models/financial/aliases/prod",
            "jobs/01890a5d-ac96-774b-bcce-b302099a8057/resume/step-10.safetensors",
            "a",
            "dir/.hidden",
            "dir/..dots",
            "ümlaut/キー",
        ] {
            validate_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let longest = "k".repeat(MAX_KEY_BYTES);
        validate_key(&longest).unwrap();
    }

    #[test]
    fn rejects_bad_keys() {
        let too_long = "k".repeat(MAX_KEY_BYTES + 1);
        for key in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../escape",
            "a/../b",
            "a/./b",
            ".",
            "..",
            "a\\b",
            "a\nb",
            "a\0b",
            "tab\there",
            "del\u{7f}",
            too_long.as_str(),
        ] {
            let err = validate_key(key).expect_err(key);
            assert_eq!(err.kind(), StorageErrorKind::InvalidKey, "{key:?}");
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn prefixes() {
        for prefix in ["", "models/", "models/fin", "models/fin/v0", "a/b/"] {
            validate_prefix(prefix).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        }
        for prefix in ["/", "/models", "a//", "a//b", "../", "a/../", "a\\"] {
            let err = validate_prefix(prefix).expect_err(prefix);
            assert_eq!(err.kind(), StorageErrorKind::InvalidKey, "{prefix:?}");
        }
    }

    #[test]
    fn rejected_keys_are_truncated_in_errors() {
        let key = format!("/{}", "x".repeat(5000));
        let text = validate_key(&key).unwrap_err().to_string();
        assert!(text.len() < 400, "{}", text.len());
    }
}
