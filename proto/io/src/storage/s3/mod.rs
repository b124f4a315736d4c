//! [`S3Store`]: the object store on any S3-compatible server, through `aws-sdk-s3`.
//!
//! Tested against Garage 2.5 (`deploy/s3-server.sh`); works with AWS S3, MinIO and Ceph RGW
//! through [`S3Config`] (endpoint, region, path-style, static credentials or the AWS SDK's default
//! credential chain: environment, profile, web identity/IRSA, ECS, instance metadata).
//!
//! Decisions worth knowing:
//! - **Few SDK retries** ([`S3Config::max_attempts`], default 2) and short connect timeouts, so a
//!   dead server surfaces as a [`StorageErrorKind::Transient`] error within seconds; the worker
//!   owns the real backoff and the ack/nack decision.
//! - **SDK checksums off by default** ([`S3Config::sdk_checksums`]): recent SDKs otherwise send
//!   `aws-chunked` bodies with CRC trailers on every upload, which some S3-compatible servers
//!   reject (Garage 2.5 accepts both; the integration tests pass either way). Integrity comes from
//!   refit's own sha256, computed while streaming and checked against the manifest.
//! - **Multipart** from [`S3Config::multipart_threshold_bytes`] (16 MiB) up, in parts of
//!   [`S3Config::part_size_bytes`] (8 MiB, grown if a file would need more than 10 000 parts),
//!   [`S3Config::upload_concurrency`] parts in flight. A failed upload is aborted, and so is one
//!   whose future is dropped (from a spawned task), so servers do not keep orphaned parts.

mod config;
mod errors;
#[cfg(test)]
mod fake_server_tests;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use config::MAX_PARTS;
pub use config::{S3Config, S3Credentials};
use errors::{body_error, map_sdk_error};

use super::file::AtomicFile;
use super::{
    Download, ObjectMeta, ObjectStore, StorageError, Upload, validate_key, validate_prefix,
};

/// The AWS SDK's default credential chain, built at the first request (building it reads
/// profiles and may ask the network, which [`S3Store::new`] does not).
#[derive(Debug)]
struct LazyDefaultChain {
    region: Region,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl LazyDefaultChain {
    fn new(region: &str) -> Self {
        Self {
            region: Region::new(region.to_owned()),
            chain: tokio::sync::OnceCell::new(),
        }
    }
}

impl ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| {
                    DefaultCredentialsChain::builder()
                        .region(self.region.clone())
                        .build()
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

/// The object store on an S3-compatible server. Cheap to clone (the SDK client is shared).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    endpoint: Option<String>,
    multipart_threshold: u64,
    part_size: u64,
    upload_concurrency: usize,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint.as_deref().unwrap_or("aws"))
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the client from `config` (no network traffic yet; see [`S3Store::check_bucket`]).
    pub fn new(config: S3Config) -> Result<Self, StorageError> {
        let credentials = match config.validate()? {
            S3Credentials::Static(secret) => SharedCredentialsProvider::new(Credentials::new(
                config.access_key_id.clone().unwrap_or_default(),
                secret.expose(),
                config.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "refit-config",
            )),
            S3Credentials::DefaultChain => {
                SharedCredentialsProvider::new(LazyDefaultChain::new(&config.region))
            }
        };
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .read_timeout(Duration::from_millis(config.read_timeout_ms))
            .operation_attempt_timeout(Duration::from_millis(config.operation_attempt_timeout_ms))
            .operation_timeout(Duration::from_millis(config.operation_timeout_ms))
            .build();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.force_path_style)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
            .request_checksum_calculation(if config.sdk_checksums {
                RequestChecksumCalculation::WhenSupported
            } else {
                RequestChecksumCalculation::WhenRequired
            })
            .response_checksum_validation(if config.sdk_checksums {
                ResponseChecksumValidation::WhenSupported
            } else {
                ResponseChecksumValidation::WhenRequired
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket,
            endpoint: config.endpoint,
            multipart_threshold: config.multipart_threshold_bytes,
            part_size: config.part_size_bytes,
            upload_concurrency: config.upload_concurrency,
        })
    }

    /// The bucket this store reads and writes.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, for what the trait does not cover (tests, admin tools).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Checks that the server answers and the bucket exists and is accessible: a startup probe.
    pub async fn check_bucket(&self) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => match map_sdk_error("head bucket", &self.bucket, e) {
                StorageError::NotFound { .. } => Err(StorageError::Rejected {
                    op: "head bucket",
                    key: self.bucket.clone(),
                    detail: "the bucket does not exist".to_owned(),
                    source: None,
                }),
                other => Err(other),
            },
        }
    }

    /// The part size for an object of `len` bytes: the configured one, grown so that the object
    /// fits in [`MAX_PARTS`] parts.
    fn part_size_for(&self, len: u64) -> u64 {
        self.part_size.max(len.div_ceil(MAX_PARTS))
    }

    async fn put_single(&self, key: &str, data: Bytes) -> Result<Option<String>, StorageError> {
        debug!(key, size = data.len(), "put object");
        let output = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| map_sdk_error("put", key, e))?;
        Ok(output.e_tag().map(str::to_owned))
    }

    /// Uploads the parts `parts` yields as one multipart upload, aborting it on failure.
    async fn put_multipart<S>(&self, key: &str, parts: S) -> Result<Upload, StorageError>
    where
        S: Stream<Item = Result<Bytes, StorageError>> + Send,
    {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_sdk_error("create multipart upload", key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Rejected {
                op: "create multipart upload",
                key: key.to_owned(),
                detail: "the server returned no upload id".to_owned(),
                source: None,
            })?
            .to_owned();
        info!(key, %upload_id, "multipart upload started");
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = self.upload_parts(key, &upload_id, parts).await;
        guard.upload_id = None;
        match result {
            Ok(upload) => {
                info!(
                    key,
                    parts = upload.multipart_parts,
                    size = upload.size,
                    "multipart upload complete"
                );
                Ok(upload)
            }
            Err(error) => {
                warn!(key, %upload_id, %error, "multipart upload failed, aborting it");
                abort_upload(&self.client, &self.bucket, key, &upload_id).await;
                Err(error)
            }
        }
    }

    async fn upload_parts<S>(
        &self,
        key: &str,
        upload_id: &str,
        parts: S,
    ) -> Result<Upload, StorageError>
    where
        S: Stream<Item = Result<Bytes, StorageError>> + Send,
    {
        let mut parts = std::pin::pin!(parts);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut number = 0u32;
        let mut completed = Vec::new();
        // Each part is its own task so uploads progress while the next part is read. Dropping
        // the set (on error or cancellation) aborts the parts still in flight.
        let mut in_flight = JoinSet::new();
        while let Some(chunk) = parts.try_next().await? {
            number += 1;
            if u64::from(number) > MAX_PARTS {
                return Err(StorageError::Rejected {
                    op: "upload part",
                    key: key.to_owned(),
                    detail: "the object needs more than 10000 parts (did the file grow?)"
                        .to_owned(),
                    source: None,
                });
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
            let part = upload_part(
                self.client.clone(),
                self.bucket.clone(),
                key.to_owned(),
                upload_id.to_owned(),
                number,
                chunk,
            );
            in_flight.spawn(part.in_current_span());
            if in_flight.len() >= self.upload_concurrency {
                completed.push(joined(key, in_flight.join_next().await)?);
            }
        }
        while let Some(result) = in_flight.join_next().await {
            completed.push(joined(key, Some(result))?);
        }
        completed.sort_by_key(|part| part.part_number());
        let output = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_sdk_error("complete multipart upload", key, e))?;
        Ok(Upload {
            size,
            sha256: hex::encode(hasher.finalize()),
            etag: output.e_tag().map(str::to_owned),
            multipart_parts: Some(number),
        })
    }

    async fn get_object(
        &self,
        key: &str,
        op: &'static str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_sdk_error(op, key, e))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        validate_key(key)?;
        let len = data.len() as u64;
        if len < self.multipart_threshold {
            self.put_single(key, data).await?;
        } else {
            let part = self.part_size_for(len) as usize;
            let parts = (0..data.len())
                .step_by(part)
                .map(move |start| Ok(data.slice(start..(start + part).min(data.len()))));
            self.put_multipart(key, futures::stream::iter(parts))
                .await?;
        }
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<Upload, StorageError> {
        validate_key(key)?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io("open", path, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        if len < self.multipart_threshold {
            let mut data = Vec::with_capacity(len as usize);
            file.read_to_end(&mut data)
                .await
                .map_err(|e| StorageError::io("read", path, e))?;
            let sha256 = hex::encode(Sha256::digest(&data));
            let size = data.len() as u64;
            let etag = self.put_single(key, Bytes::from(data)).await?;
            return Ok(Upload {
                size,
                sha256,
                etag,
                multipart_parts: None,
            });
        }
        let part_size = self.part_size_for(len) as usize;
        let path = path.to_owned();
        let parts = futures::stream::try_unfold(file, move |mut file| {
            let path = path.clone();
            async move {
                let chunk = read_part(&mut file, part_size)
                    .await
                    .map_err(|e| StorageError::io("read", &path, e))?;
                Ok(if chunk.is_empty() {
                    None
                } else {
                    Some((chunk, file))
                })
            }
        });
        let upload = self.put_multipart(key, parts).await?;
        if upload.size != len {
            warn!(
                key,
                expected = len,
                sent = upload.size,
                "file changed size during upload"
            );
        }
        Ok(upload)
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StorageError> {
        validate_key(key)?;
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(false),
            Err(e) => Err(map_sdk_error("put if absent", key, e)),
        }
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        validate_key(key)?;
        let output = self.get_object(key, "get").await?;
        let too_large = |size| StorageError::TooLarge {
            key: key.to_owned(),
            limit,
            size,
        };
        let declared = output.content_length().and_then(|n| u64::try_from(n).ok());
        if let Some(size) = declared.filter(|&size| size > limit) {
            // Dropping the body closes the connection without reading it.
            return Err(too_large(Some(size)));
        }
        let mut body = output.body;
        let mut data = bytes::BytesMut::with_capacity(
            usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0),
        );
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| body_error("get", key, e))?
        {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(too_large(None));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data.freeze())
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Download, StorageError> {
        validate_key(key)?;
        let output = self.get_object(key, "get to file").await?;
        let expected_len = output.content_length().and_then(|n| u64::try_from(n).ok());
        let mut body = output.body;
        let mut file = AtomicFile::next_to(path).await?;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| body_error("get to file", key, e))?
        {
            file.write(&chunk).await?;
        }
        let staged = file.finish().await?;
        if let Some(expected) = expected_len
            && expected != staged.size
        {
            return Err(StorageError::Transient {
                op: "get to file",
                key: key.to_owned(),
                detail: format!("response ended after {} of {expected} bytes", staged.size),
                source: None,
            });
        }
        let download = staged
            .verify_and_publish(key, expected_sha256, path)
            .await?;
        debug!(key, size = download.size, path = %path.display(), "downloaded object");
        Ok(download)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        validate_key(key)?;
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: output
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                etag: output.e_tag().map(str::to_owned),
                last_modified: output.last_modified().and_then(to_chrono),
            })),
            Err(e) => match map_sdk_error("head", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        validate_prefix(prefix)?;
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_sdk_error("list", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                found.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object
                        .size()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    etag: object.e_tag().map(str::to_owned),
                    last_modified: object.last_modified().and_then(to_chrono),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        // S3 lists in UTF-8 byte order already; sorting keeps the contract for any server.
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match map_sdk_error("delete", key, e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

async fn upload_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    number: u32,
    chunk: Bytes,
) -> Result<CompletedPart, StorageError> {
    let part_number = i32::try_from(number).expect("part numbers stay below MAX_PARTS");
    debug!(key, part_number, size = chunk.len(), "upload part");
    let output = client
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(part_number)
        .content_length(chunk.len() as i64)
        .body(ByteStream::from(chunk))
        .send()
        .await
        .map_err(|e| map_sdk_error("upload part", &key, e))?;
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(output.e_tag().map(str::to_owned))
        .build())
}

fn joined(
    key: &str,
    result: Option<Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StorageError> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(join_error)) => Err(StorageError::Rejected {
            op: "upload part",
            key: key.to_owned(),
            detail: "the part upload task failed".to_owned(),
            source: Some(Box::new(join_error)),
        }),
        None => unreachable!("joined is only called while parts are in flight"),
    }
}

/// Reads up to `size` bytes: a full part unless the file ends first (empty at the end).
async fn read_part(file: &mut tokio::fs::File, size: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        // `read_buf` never reads past the capacity reserved above.
        if file.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match result {
        Ok(_) => info!(key, %upload_id, "multipart upload aborted"),
        Err(e) => {
            let error = map_sdk_error("abort multipart upload", key, e);
            warn!(key, %upload_id, %error, "failed to abort multipart upload; the server keeps its parts until cleaned up");
        }
    }
}

/// Aborts a multipart upload whose future is dropped before it finished (cancellation), from a
/// spawned task since `Drop` cannot await.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(key = %self.key, %upload_id, "multipart upload dropped outside a runtime; not aborted");
            return;
        };
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        runtime.spawn(async move { abort_upload(&client, &bucket, &key, &upload_id).await });
    }
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageErrorKind;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn part_size_grows_for_huge_objects() {
        let store = S3Store::new(S3Config::for_test("http://x:1", "GKid", "secret")).unwrap();
        assert_eq!(store.part_size_for(50 * MIB), 8 * MIB);
        let huge = 200 * 1024 * MIB; // 200 GiB
        let part = store.part_size_for(huge);
        assert!(huge.div_ceil(part) <= MAX_PARTS);
        assert!(part > 8 * MIB);
    }

    #[tokio::test]
    async fn keys_are_checked_before_any_request() {
        // Port 1 on loopback: nothing listens, but a valid key would only fail on connecting.
        let store =
            S3Store::new(S3Config::for_test("http://127.0.0.1:1", "GKid", "secret")).unwrap();
        let err = store.get("a//b").await.unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::InvalidKey);
        let err = store.list("/x").await.unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::InvalidKey);
    }
}
