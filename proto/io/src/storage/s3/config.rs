//! [`S3Config`]: how to reach an S3-compatible store.

use std::path::PathBuf;

use serde::Deserialize;

use crate::Secret;
use crate::storage::StorageError;

pub(super) const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last).
pub(super) const MIN_PART_BYTES: u64 = 5 * MIB;
/// S3's largest part, and largest single PUT.
pub(super) const MAX_PART_BYTES: u64 = 5 * 1024 * MIB;
/// S3's largest part count.
pub(super) const MAX_PARTS: u64 = 10_000;

/// How to reach an S3-compatible store. Every field has a default; in practice set `endpoint`
/// (unless on AWS), `region`, `access_key_id` and one of `secret_access_key` /
/// `secret_access_key_file`.
///
/// ```toml
/// endpoint = "http://127.0.0.1:3900"
/// region = "garage"
/// bucket = "refit"
/// access_key_id = "GK…"
/// secret_access_key_file = "/run/secrets/refit-s3-secret"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The server's URL, e.g. `http://127.0.0.1:3900` for the local Garage. Default: none, which
    /// means AWS S3 (its endpoint is derived from `region`).
    pub endpoint: Option<String>,
    /// The region requests are signed for. Default `us-east-1` (AWS's default). Garage rejects
    /// any region but its configured `s3_region`, which `deploy/s3-server.sh` sets to `garage`.
    pub region: String,
    /// The bucket holding refit's objects. Default `refit`.
    pub bucket: String,
    /// Path-style URLs (`http://host/bucket/key`) instead of virtual-hosted ones
    /// (`http://bucket.host/key`). Default `true`: Garage, MinIO and Ceph need it unless wildcard
    /// DNS is set up; AWS accepts both.
    pub force_path_style: bool,
    /// The access key id, for static credentials (with `secret_access_key` or
    /// `secret_access_key_file`). Leave all three unset to use the AWS SDK's default credential
    /// chain instead: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in the environment, a profile
    /// (`AWS_PROFILE`, `~/.aws/credentials`), web identity (EKS IRSA:
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), the ECS container endpoint, then the EC2
    /// instance metadata service.
    pub access_key_id: Option<String>,
    /// The secret access key. Prefer `secret_access_key_file` outside tests.
    pub secret_access_key: Option<Secret>,
    /// A file holding the secret access key (surrounding whitespace is trimmed), e.g. a mounted
    /// Kubernetes secret. Give this or `secret_access_key`, not both.
    pub secret_access_key_file: Option<PathBuf>,
    /// A session token, for temporary credentials. Default: none.
    pub session_token: Option<Secret>,
    /// Files (and byte buffers) of at least this size are uploaded multipart. Default 16 MiB;
    /// at most 5 GiB (S3's largest single PUT).
    pub multipart_threshold_bytes: u64,
    /// The multipart part size. Default 8 MiB; between 5 MiB and 5 GiB. Grown automatically when
    /// an object would need more than 10 000 parts.
    pub part_size_bytes: u64,
    /// How many parts of one upload are in flight at once (each is held in memory). Default 4.
    pub upload_concurrency: usize,
    /// Time allowed to open a TCP (+TLS) connection. Default 3000 ms.
    pub connect_timeout_ms: u64,
    /// Time allowed from sending a request (its body included: a part or a single PUT of up to
    /// `multipart_threshold_bytes`) until its response starts. Default 60000 ms. A response body
    /// that stalls while downloading is caught by the SDK's stalled-stream protection instead.
    pub read_timeout_ms: u64,
    /// Time allowed for one attempt of one request (e.g. one part upload), up to its response
    /// headers. Default 60000 ms.
    pub operation_attempt_timeout_ms: u64,
    /// Time allowed for one request including the SDK's retries and their backoff. Default
    /// 120000 ms. Downloads stream their body after this, so a large download is not cut off.
    pub operation_timeout_ms: u64,
    /// Attempts the SDK makes per request (1 = no retry), with exponential backoff for
    /// transient failures. Default 2: refit's worker retries jobs itself.
    pub max_attempts: u32,
    /// Let the SDK add CRC checksums to uploads and validate response checksums when the server
    /// sends them (the SDK's own default). Default `false`, i.e. only where an operation requires
    /// one: some S3-compatible servers reject the `aws-chunked` uploads this implies. refit
    /// verifies sha256 end to end either way.
    pub sdk_checksums: bool,
}

/// Where an [`S3Store`](super::S3Store)'s credentials come from ([`S3Config::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// `access_key_id` with this secret (and `session_token`, if set).
    Static(Secret),
    /// None configured: the AWS SDK's default chain (environment, profile, web identity, ECS,
    /// instance metadata), resolved at the first request and refreshed as it expires.
    DefaultChain,
}

impl S3Credentials {
    /// Where they come from, for logs: `static` or `default-chain`.
    pub fn source(&self) -> &'static str {
        match self {
            S3Credentials::Static(_) => "static",
            S3Credentials::DefaultChain => "default-chain",
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".to_owned(),
            bucket: "refit".to_owned(),
            force_path_style: true,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            session_token: None,
            multipart_threshold_bytes: 16 * MIB,
            part_size_bytes: 8 * MIB,
            upload_concurrency: 4,
            connect_timeout_ms: 3_000,
            read_timeout_ms: 60_000,
            operation_attempt_timeout_ms: 60_000,
            operation_timeout_ms: 120_000,
            max_attempts: 2,
            sdk_checksums: false,
        }
    }
}

impl S3Config {
    /// A config for a local S3-compatible server such as the Garage of `deploy/s3-server.sh`:
    /// region `garage`, bucket `refit`, path-style, defaults otherwise.
    pub fn for_test(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> Self {
        S3Config {
            endpoint: Some(endpoint.to_owned()),
            region: "garage".to_owned(),
            access_key_id: Some(access_key_id.to_owned()),
            secret_access_key: Some(Secret::new(secret_access_key)),
            ..S3Config::default()
        }
    }

    /// Checks the values, and reads the secret (from `secret_access_key_file` if set).
    pub fn validate(&self) -> Result<S3Credentials, StorageError> {
        let invalid = |field, reason: &str| StorageError::InvalidConfig {
            field,
            reason: reason.to_owned(),
        };
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid("endpoint", "must start with http:// or https://"));
        }
        if self.region.is_empty() {
            return Err(invalid("region", "must not be empty"));
        }
        if self.bucket.is_empty() || self.bucket.contains('/') {
            return Err(invalid(
                "bucket",
                "must be a bucket name (non-empty, no '/')",
            ));
        }
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.part_size_bytes) {
            return Err(invalid(
                "part_size_bytes",
                "must be between 5 MiB and 5 GiB",
            ));
        }
        if !(1..=MAX_PART_BYTES).contains(&self.multipart_threshold_bytes) {
            return Err(invalid(
                "multipart_threshold_bytes",
                "must be between 1 byte and 5 GiB",
            ));
        }
        if self.upload_concurrency == 0 {
            return Err(invalid("upload_concurrency", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            (
                "operation_attempt_timeout_ms",
                self.operation_attempt_timeout_ms,
            ),
            ("operation_timeout_ms", self.operation_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1 ms"));
            }
        }
        let key_id = self.access_key_id.as_deref().filter(|id| !id.is_empty());
        let secret = match (&self.secret_access_key, &self.secret_access_key_file) {
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| StorageError::InvalidConfig {
                        field: "secret_access_key_file",
                        // The path, never the content.
                        reason: format!("cannot read {}: {e}", path.display()),
                    })?;
                Some(Secret::new(text.trim()))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "secret_access_key",
                    "give secret_access_key or secret_access_key_file, not both",
                ));
            }
            (None, None) => None,
        };
        let secret = match (key_id, secret) {
            (None, None) if self.session_token.is_none() => return Ok(S3Credentials::DefaultChain),
            (None, None) => {
                return Err(invalid(
                    "session_token",
                    "needs access_key_id and secret_access_key too",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "access_key_id",
                    "is required with secret_access_key (or leave both unset for the AWS \
                     default credential chain)",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "secret_access_key",
                    "is required with access_key_id (or secret_access_key_file; or leave both \
                     unset for the AWS default credential chain)",
                ));
            }
            (Some(_), Some(secret)) => secret,
        };
        if secret.expose().is_empty() {
            return Err(invalid("secret_access_key", "is empty"));
        }
        Ok(S3Credentials::Static(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{S3Store, StorageErrorKind};

    #[test]
    fn config_defaults_and_toml_shape() {
        let config: S3Config = serde_json::from_str(
            r#"{"endpoint": "http://127.0.0.1:3900", "region": "garage",
                "access_key_id": "GK0123", "secret_access_key": "s3cr3t"}"#,
        )
        .unwrap();
        assert_eq!(config.bucket, "refit");
        assert!(config.force_path_style);
        assert_eq!(config.multipart_threshold_bytes, 16 * MIB);
        assert_eq!(config.part_size_bytes, 8 * MIB);
        assert_eq!(config.connect_timeout_ms, 3_000);
        assert_eq!(config.max_attempts, 2);
        assert_eq!(
            config.validate().unwrap(),
            S3Credentials::Static(Secret::new("s3cr3t"))
        );
        assert_eq!(S3Config::default().region, "us-east-1");

        let unknown = serde_json::from_str::<S3Config>(r#"{"secret_key": "x"}"#);
        assert!(unknown.is_err(), "unknown fields are refused");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let config = S3Config::for_test("http://127.0.0.1:3900", "GKid", "topsecretvalue");
        let text = format!("{config:?}");
        assert!(!text.contains("topsecretvalue"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        let store = S3Store::new(config).unwrap();
        assert!(!format!("{store:?}").contains("topsecretvalue"));
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let mut config = S3Config::for_test("http://x:1", "GKid", "unused");
        config.secret_access_key = None;
        config.secret_access_key_file = Some(path.clone());
        assert_eq!(
            config.validate().unwrap(),
            S3Credentials::Static(Secret::new("from-file"))
        );

        config.secret_access_key_file = Some(dir.path().join("missing"));
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Other);

        config.secret_access_key = Some(Secret::new("also"));
        config.secret_access_key_file = Some(path);
        assert!(config.validate().is_err(), "both given");
    }

    #[test]
    fn no_static_keys_means_the_default_chain_and_half_a_key_is_an_error() {
        let mut config = S3Config::for_test("http://x:1", "GKid", "secret");
        config.access_key_id = None;
        config.secret_access_key = None;
        assert_eq!(config.validate().unwrap(), S3Credentials::DefaultChain);
        assert_eq!(config.validate().unwrap().source(), "default-chain");
        assert!(S3Store::new(config.clone()).is_ok());

        let mut key_only = config.clone();
        key_only.access_key_id = Some("GKid".into());
        let err = key_only.validate().unwrap_err().to_string();
        assert!(err.contains("secret_access_key"), "{err}");

        let mut secret_only = config.clone();
        secret_only.secret_access_key = Some(Secret::new("s"));
        let err = secret_only.validate().unwrap_err().to_string();
        assert!(err.contains("access_key_id"), "{err}");

        let mut token_only = config;
        token_only.session_token = Some(Secret::new("t"));
        assert!(token_only.validate().is_err(), "a session token alone");
    }

    /// A field, and how to break it.
    type Breakage = (&'static str, fn(&mut S3Config));

    #[test]
    fn invalid_configs() {
        let good = S3Config::for_test("http://127.0.0.1:3900", "GKid", "secret");
        let cases: Vec<Breakage> = vec![
            ("endpoint", |c| c.endpoint = Some("127.0.0.1:3900".into())),
            ("bucket", |c| c.bucket = String::new()),
            ("part_size_bytes", |c| c.part_size_bytes = MIB),
            ("multipart_threshold_bytes", |c| {
                c.multipart_threshold_bytes = 0
            }),
            ("upload_concurrency", |c| c.upload_concurrency = 0),
            ("max_attempts", |c| c.max_attempts = 0),
            ("connect_timeout_ms", |c| c.connect_timeout_ms = 0),
            ("access_key_id", |c| c.access_key_id = None),
            ("secret_access_key", |c| c.secret_access_key = None),
        ];
        for (field, break_it) in cases {
            let mut config = good.clone();
            break_it(&mut config);
            match S3Store::new(config) {
                Err(StorageError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
