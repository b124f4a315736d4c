//! Where `refit serve` and `refit pull` read stored versions from ([`StoreArgs`]), and which
//! version they read ([`ModelRef`]: `NAME@ALIAS` or `NAME@vN`).
//!
//! The store is a local folder laid out like the bucket (`--store DIR`, e.g. the
//! `.refit-local/demo` that `refit demo` writes) or an S3-compatible bucket. S3 settings come, in
//! this order, from `--s3-config FILE` (a TOML file with an `[s3]` section: the worker's config
//! file will do, its other sections are ignored), then `REFIT_S3_ENDPOINT` / `REFIT_S3_REGION` /
//! `REFIT_S3_BUCKET` / `REFIT_S3_ACCESS_KEY_ID` / `REFIT_S3_SECRET_ACCESS_KEY` /
//! `REFIT_S3_SECRET_ACCESS_KEY_FILE` in the environment (the names `deploy/s3-server.sh` writes
//! into `credentials.env`), then the `--s3-*` flags. Without an access key anywhere, the AWS
//! SDK's default credential chain is used (environment, profile, web identity, instance
//! metadata). The secret is never a flag: flags show up in `ps`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use refit_io::Secret;
use refit_io::storage::{LocalStore, ObjectStore, S3Config, S3Store};
use refit_proto::{Alias, ModelName, Version};
use serde::Deserialize;

/// The store flags `refit serve` and `refit pull` share.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct StoreArgs {
    /// A local registry folder laid out like the bucket (`models/<name>/v<NNNNNN>/…`), e.g.
    /// `.refit-local/demo`. When given, the S3 settings are ignored.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// A TOML file with an `[s3]` section (endpoint, region, bucket, access_key_id,
    /// secret_access_key_file, …): the worker's config file will do.
    #[arg(long, value_name = "FILE")]
    pub s3_config: Option<PathBuf>,

    /// The S3 server's URL, e.g. http://127.0.0.1:3900 (none: AWS S3).
    #[arg(long, env = "REFIT_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// The bucket [default: refit].
    #[arg(long, env = "REFIT_S3_BUCKET", value_name = "NAME")]
    pub s3_bucket: Option<String>,

    /// The region requests are signed for [default: us-east-1; the local Garage: garage].
    #[arg(long, env = "REFIT_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
}

/// The `[s3]` section of a config file; other sections are someone else's.
#[derive(Deserialize)]
struct S3File {
    #[serde(default)]
    s3: Option<S3Config>,
}

/// The S3 settings that only come from the environment.
const ACCESS_KEY_ID_VAR: &str = "REFIT_S3_ACCESS_KEY_ID";
const SECRET_ACCESS_KEY_VAR: &str = "REFIT_S3_SECRET_ACCESS_KEY";
const SECRET_ACCESS_KEY_FILE_VAR: &str = "REFIT_S3_SECRET_ACCESS_KEY_FILE";

impl StoreArgs {
    /// The store these flags name, and a description of it for messages (no secrets).
    pub fn open(&self) -> Result<(Arc<dyn ObjectStore>, String)> {
        if let Some(dir) = &self.store {
            if !dir.is_dir() {
                bail!(
                    "--store {}: no such folder (it should hold models/<name>/…, e.g. \
                     .refit-local/demo after `refit demo`)",
                    dir.display()
                );
            }
            let what = format!("local store {}", dir.display());
            return Ok((Arc::new(LocalStore::new(dir)), what));
        }
        let config = self.s3()?;
        let what = format!(
            "s3://{} at {}",
            config.bucket,
            config.endpoint.as_deref().unwrap_or("AWS")
        );
        let store = S3Store::new(config).context("invalid S3 settings")?;
        Ok((Arc::new(store), what))
    }

    /// The S3 settings: file, then environment, then flags (see the module docs).
    fn s3(&self) -> Result<S3Config> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut config = match &self.s3_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --s3-config {}", path.display()))?;
                let file: S3File = config::Config::builder()
                    .add_source(config::File::from_str(&text, config::FileFormat::Toml))
                    .build()
                    .and_then(config::Config::try_deserialize)
                    .with_context(|| format!("--s3-config {}", path.display()))?;
                file.s3
                    .with_context(|| format!("--s3-config {}: no [s3] section", path.display()))?
            }
            None => {
                if self.s3_endpoint.is_none() && self.s3_bucket.is_none() {
                    bail!(
                        "no store: give --store DIR (a local registry folder) or the S3 \
                         settings (--s3-endpoint and --s3-bucket, REFIT_S3_* in the \
                         environment, or --s3-config FILE)"
                    );
                }
                S3Config::default()
            }
        };
        if let Some(id) = env(ACCESS_KEY_ID_VAR) {
            config.access_key_id = Some(id);
        }
        if let Some(secret) = env(SECRET_ACCESS_KEY_VAR) {
            config.secret_access_key = Some(Secret::new(secret));
            config.secret_access_key_file = None;
        } else if let Some(path) = env(SECRET_ACCESS_KEY_FILE_VAR) {
            config.secret_access_key_file = Some(PathBuf::from(path));
            config.secret_access_key = None;
        }
        if let Some(endpoint) = &self.s3_endpoint {
            config.endpoint = Some(endpoint.clone());
        }
        if let Some(bucket) = &self.s3_bucket {
            config.bucket = bucket.clone();
        }
        if let Some(region) = &self.s3_region {
            config.region = region.clone();
        }
        Ok(config)
    }
}

/// Which version of a model: one number, or whatever an alias points at (re-read by `serve`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `NAME@vN`: this version, for good.
    Version(Version),
    /// `NAME@ALIAS`: the alias's version, followed as it moves.
    Alias(Alias),
}

/// `NAME@ALIAS` or `NAME@vN`, parsed through the registry's own name types (no path tricks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelRef {
    pub model: ModelName,
    pub target: Target,
}

impl FromStr for ModelRef {
    type Err = String;

    /// `financial@prod`, `financial@v3` (also `@3`, `@v000003`). `v` + digits is a version,
    /// never an alias.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, target)) = s.split_once('@') else {
            return Err(format!(
                "{s:?}: expected NAME@ALIAS or NAME@vN, e.g. financial@prod or financial@v3"
            ));
        };
        let model = ModelName::new(name).map_err(|e| e.to_string())?;
        let digits = target.strip_prefix('v').unwrap_or(target);
        let target = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Target::Version(
                target
                    .parse()
                    .map_err(|e: refit_proto::IdError| e.to_string())?,
            )
        } else {
            Target::Alias(Alias::new(target).map_err(|e| e.to_string())?)
        };
        Ok(ModelRef { model, target })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Version(v) => write!(f, "{}@{v}", self.model),
            Target::Alias(a) => write!(f, "{}@{a}", self.model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs_parse_through_the_registry_types() {
        let r: ModelRef = "financial@prod".parse().unwrap();
        assert_eq!(r.model.as_str(), "financial");
        assert_eq!(r.target, Target::Alias(Alias::new("prod").unwrap()));
        assert_eq!(r.to_string(), "financial@prod");
        for s in ["financial@v3", "financial@3", "financial@v000003"] {
            let r: ModelRef = s.parse().unwrap();
            assert_eq!(r.target, Target::Version(Version::new(3).unwrap()), "{s}");
            assert_eq!(r.to_string(), "financial@v3");
        }
        for bad in [
            "financial",
            "financial@",
            "@prod",
            "../etc@prod",
            "fin/ancial@prod",
            "financial@../prod",
            "financial@v0",
            "financial@v1234567",
            "Financial@prod",
        ] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_settings_need_a_store() {
        let args = StoreArgs::default();
        let err = args.open().err().unwrap().to_string();
        assert!(err.contains("--store DIR"), "{err}");
    }

    #[test]
    fn s3_settings_come_from_the_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(
            &path,
            "[worker]\nmax_jobs = 2\n\n[s3]\nendpoint = \"http://127.0.0.1:3900\"\n\
             region = \"garage\"\nbucket = \"models\"\n",
        )
        .unwrap();
        let args = StoreArgs {
            s3_config: Some(path),
            s3_bucket: Some("other".into()),
            ..StoreArgs::default()
        };
        let config = args.s3().unwrap();
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(config.region, "garage");
        assert_eq!(config.bucket, "other");
    }
}
