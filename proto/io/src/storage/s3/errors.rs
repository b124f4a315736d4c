//! SDK errors to [`StorageError`]s: the one place that knows the SDK's error shapes.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::storage::{BoxError, StorageError, StorageErrorKind};

/// A response body that broke off midway (connection reset, stalled stream): transient.
pub(super) fn body_error(
    op: &'static str,
    key: &str,
    error: aws_sdk_s3::primitives::ByteStreamError,
) -> StorageError {
    StorageError::Transient {
        op,
        key: key.to_owned(),
        detail: format!("reading the response body failed: {}", chain(&error)),
        source: Some(Box::new(error)),
    }
}

/// How a failed S3 request maps onto a [`StorageErrorKind`].
pub(super) fn classify_status(status: u16, code: Option<&str>) -> StorageErrorKind {
    match (status, code) {
        (_, Some("NoSuchBucket" | "NoSuchUpload")) => StorageErrorKind::Other,
        (404, _) | (_, Some("NoSuchKey")) => StorageErrorKind::NotFound,
        (403, _) | (_, Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")) => {
            StorageErrorKind::PermissionDenied
        }
        (429 | 500..=599, _)
        | (
            _,
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable"
                | "ConditionalRequestConflict",
            ),
        ) => StorageErrorKind::Transient,
        _ => StorageErrorKind::Other,
    }
}

/// Turns an SDK error into a [`StorageError`]: the one place that knows the SDK's error shapes.
pub(super) fn map_sdk_error<E>(op: &'static str, key: &str, error: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key = key.to_owned();
    let (kind, detail) = match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code();
            let message = service.err().message().unwrap_or("");
            let detail = match code {
                Some(code) => format!("HTTP {status} {code}: {message}"),
                None => format!("HTTP {status}"),
            };
            (
                classify_status(status, code),
                detail.trim_end_matches(": ").to_owned(),
            )
        }
        SdkError::TimeoutError(_) => (StorageErrorKind::Transient, "request timed out".to_owned()),
        SdkError::DispatchFailure(failure) if failure.is_user() => {
            (StorageErrorKind::Other, chain(&error))
        }
        // Connection refused or reset, DNS, TLS handshake, connect/read timeouts.
        SdkError::DispatchFailure(_) => (StorageErrorKind::Transient, chain(&error)),
        // The response broke off or could not be read.
        SdkError::ResponseError(_) => (StorageErrorKind::Transient, chain(&error)),
        // ConstructionFailure, and variants added later: a bug or config problem.
        _ => (StorageErrorKind::Other, chain(&error)),
    };
    let source: Option<BoxError> = Some(Box::new(error));
    match kind {
        StorageErrorKind::NotFound => StorageError::NotFound { key },
        StorageErrorKind::PermissionDenied => StorageError::PermissionDenied {
            op,
            key,
            detail,
            source,
        },
        StorageErrorKind::Transient => StorageError::Transient {
            op,
            key,
            detail,
            source,
        },
        _ => StorageError::Rejected {
            op,
            key,
            detail,
            source,
        },
    }
}

/// An error and its causes on one line (`a: b: c`), skipping causes that repeat their parent.
/// Built from `Display` only: the SDK's `Debug` output is long and not meant for logs.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !last.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        last = line;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        use StorageErrorKind as K;
        assert_eq!(classify_status(404, Some("NoSuchKey")), K::NotFound);
        assert_eq!(classify_status(404, None), K::NotFound);
        assert_eq!(classify_status(404, Some("NoSuchBucket")), K::Other);
        assert_eq!(
            classify_status(403, Some("AccessDenied")),
            K::PermissionDenied
        );
        assert_eq!(
            classify_status(400, Some("InvalidAccessKeyId")),
            K::PermissionDenied
        );
        assert_eq!(classify_status(503, Some("SlowDown")), K::Transient);
        assert_eq!(classify_status(500, None), K::Transient);
        assert_eq!(classify_status(429, None), K::Transient);
        assert_eq!(classify_status(400, Some("RequestTimeout")), K::Transient);
        assert_eq!(classify_status(400, Some("InvalidArgument")), K::Other);
        assert_eq!(classify_status(412, Some("PreconditionFailed")), K::Other);
    }
}
