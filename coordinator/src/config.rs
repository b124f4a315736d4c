//! [`CoordinatorConfig`]: the `refit-coordinator` service's settings, loaded in layers with the
//! `config` crate: built-in defaults, then the `--config` TOML file, then `REFIT__<SECTION>__<KEY>`
//! environment variables (e.g. `REFIT__COORDINATOR__TOKEN`, `REFIT__S3__SECRET_ACCESS_KEY`), then
//! [`CoordinatorConfig::validate`].
//!
//! ```toml
//! [coordinator]
//! listen = "0.0.0.0:8080"
//! token_file = "/run/secrets/refit-token"
//! database = "/var/lib/refit/coordinator.db"
//!
//! [queue]            # refit_io::queue::QueueConfig, shared with the workers
//! url = "amqp://refit@rabbitmq:5672/%2f"
//!
//! [s3]               # refit_io::storage::S3Config, shared with the workers
//! endpoint = "http://garage:3900"
//! region = "garage"
//!
//! [[schedule]]       # nightly retraining, see ScheduleConfig
//! name = "financial-nightly"
//! model = "financial"
//! dataset = "incoming/financial/nlu.yml"
//! cron = "0 3 * * *"
//! policy = "scratch"
//! full_retrain_every = 5
//! eval_dataset = "incoming/financial/test.yml"
//! promote_to = "prod"  # moves only when the new version passes prod's gate
//!
//! [promotion.default]  # the gate, see refit_proto::promotion::PromotionPolicy
//! max_intent_f1_drop = 0.01
//! max_negative_flip_rate = 0.03
//! [promotion.aliases.prod]
//! max_intent_f1_drop = 0.0
//! ```
//!
//! Secrets (the API token, the AMQP password, the S3 secret key) come from the environment or
//! `*_file` paths and never reach a log: `Debug` redacts them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use refit_io::Secret;
use refit_io::config::{env_layer, read_layers};
use refit_io::queue::QueueConfig;
use refit_io::storage::{S3Config, validate_key};
use refit_proto::decision::Policy;
use refit_proto::promotion::PromotionConfig;
use refit_proto::{Alias, ModelName, keys};
use serde::Deserialize;

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or does not fit the schema (unknown keys included).
    #[error("failed to load the coordinator config: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("invalid coordinator config: {field}: {reason}")]
    Invalid {
        /// The field, e.g. `coordinator.token`.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Everything `refit-coordinator` needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The HTTP API, the job store and the job defaults.
    pub coordinator: CoordinatorSettings,
    /// The broker (see [`QueueConfig`]); `queue.pool` is the pool jobs go to by default.
    pub queue: QueueConfig,
    /// The object store holding datasets and models (see [`S3Config`]).
    pub s3: S3Config,
    /// Scheduled retraining.
    pub schedule: Vec<ScheduleConfig>,
    /// The gate a version must pass to take an alias (`[promotion.default]`, and per alias
    /// `[promotion.aliases.<alias>]`; see `refit_proto::promotion`).
    pub promotion: PromotionConfig,
}

/// The `[coordinator]` section.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorSettings {
    /// Where the HTTP API listens. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The bearer token every `/v1` call must carry. Prefer `token_file` or the
    /// `REFIT__COORDINATOR__TOKEN` environment variable to writing it in the file. Required.
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// A bearer token `/metrics` then requires (a scraper's own, so it need not hold the API
    /// token). Unset (the default), `/metrics` is open like most Prometheus endpoints: it shows
    /// queue depths, job counts, model names, job and worker ids, never a secret. Prefer
    /// `metrics_token_file` or `REFIT__COORDINATOR__METRICS_TOKEN`.
    pub metrics_token: Option<Secret>,
    /// A file holding the metrics token (surrounding whitespace trimmed).
    pub metrics_token_file: Option<PathBuf>,
    /// The SQLite job store; created with its folder if missing. Default
    /// `.refit-local/coordinator.db`.
    pub database: PathBuf,
    /// A running job whose heartbeats stop for this long is shown as `stalled`, and a worker as
    /// `lost`. Default 60.
    pub stall_after_secs: u64,
    /// How long a job's lease lasts without an event from the attempt holding it (workers send
    /// a heartbeat every `worker.heartbeat_secs`, 5 by default: keep this several times that).
    /// When it lapses the attempt counts as crashed and the job is queued again. Default 60.
    pub lease_secs: u64,
    /// Attempts of a job that may crash (their lease lapsed), fail transiently or upload a
    /// version that cannot be committed; the next one makes the job `dead`. Hand-backs of
    /// workers shutting down do not count. Default 5.
    pub max_failures: u32,
    /// Epochs of a scratch run when the caller names none. Default 100.
    pub default_epochs: u32,
    /// A fine-tune's share of the base version's epochs when the caller names none. Default 0.3.
    pub default_epoch_fraction: f64,
    /// The largest dataset accepted, in bytes. Default 64 MiB.
    pub max_dataset_bytes: u64,
    /// RabbitMQ's management API, for unacknowledged-message counts on `/metrics` and the
    /// dashboard (user and password are those of `queue.url`). Default
    /// `http://127.0.0.1:15672`; empty to use AMQP only (ready messages and consumers).
    pub management_url: String,
    /// How often the outbox retries publishing stored jobs that are not yet confirmed, in
    /// milliseconds. Default 1000.
    pub outbox_interval_ms: u64,
    /// Times the broker may refuse to take a job (its pool's queue was declared with other
    /// arguments, a permission is missing) before the job fails with the broker's reason;
    /// refused jobs are retried with backoff (from `outbox_interval_ms`, doubling, at most 5
    /// minutes) and never hold up the jobs behind them. Default 8.
    pub publish_attempts: u32,
    /// A published job still `queued` after this many seconds, while its pool's queue holds
    /// fewer messages than there are such jobs, is published again: its message was lost (a
    /// broker that lost it, a purged queue). A duplicate is refused at its claim. 0: never.
    /// Default 900.
    pub republish_after_secs: u64,
    /// How often the scheduler looks for due runs, in seconds. Default 15.
    pub scheduler_tick_secs: u64,
    /// After SIGTERM/SIGINT, how long in-flight requests get to finish, in seconds. Default 10.
    pub shutdown_deadline_secs: u64,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            token_file: None,
            metrics_token: None,
            metrics_token_file: None,
            database: PathBuf::from(".refit-local/coordinator.db"),
            stall_after_secs: 60,
            lease_secs: 60,
            max_failures: 5,
            default_epochs: 100,
            default_epoch_fraction: 0.3,
            max_dataset_bytes: 64 << 20,
            management_url: "http://127.0.0.1:15672".to_owned(),
            outbox_interval_ms: 1000,
            publish_attempts: 8,
            republish_after_secs: 900,
            scheduler_tick_secs: 15,
            shutdown_deadline_secs: 10,
        }
    }
}

impl fmt::Debug for CoordinatorSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinatorSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "***"))
            .field("metrics_token_file", &self.metrics_token_file)
            .field("database", &self.database)
            .field("stall_after_secs", &self.stall_after_secs)
            .field("lease_secs", &self.lease_secs)
            .field("max_failures", &self.max_failures)
            .field("default_epochs", &self.default_epochs)
            .field("default_epoch_fraction", &self.default_epoch_fraction)
            .field("max_dataset_bytes", &self.max_dataset_bytes)
            .field("management_url", &self.management_url)
            .field("outbox_interval_ms", &self.outbox_interval_ms)
            .field("publish_attempts", &self.publish_attempts)
            .field("republish_after_secs", &self.republish_after_secs)
            .field("scheduler_tick_secs", &self.scheduler_tick_secs)
            .field("shutdown_deadline_secs", &self.shutdown_deadline_secs)
            .finish()
    }
}

/// One `[[schedule]]` entry: retrain `model` on the dataset at `dataset` when `cron` fires.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A name for logs, metrics and the jobs it submits. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The model to retrain.
    pub model: String,
    /// The object key of the training data, e.g. `incoming/financial/nlu.yml`; whatever is there
    /// when the schedule fires is used (copied to its content-addressed key first).
    pub dataset: String,
    /// Held-out data to evaluate each new version on.
    #[serde(default)]
    pub eval_dataset: Option<String>,
    /// A cron expression in UTC: five fields (`min hour day month weekday`) or six with seconds
    /// first, e.g. `0 3 * * *` for 03:00 every day.
    pub cron: String,
    /// What to do when the data cannot be fine-tuned on (a label changed): `reject` (skip the
    /// run, recorded) or `scratch`. Default `reject`.
    #[serde(default = "default_policy")]
    pub policy: Policy,
    /// Train from scratch after this many fine-tunes in a row (0: never force). Default 5.
    #[serde(default = "default_full_retrain_every")]
    pub full_retrain_every: u32,
    /// A fine-tune's share of the base version's epochs. Default: the coordinator's.
    #[serde(default)]
    pub epoch_fraction: Option<f64>,
    /// Epochs of a scratch run. Default: the coordinator's.
    #[serde(default)]
    pub epochs: Option<u32>,
    /// The worker pool. Default: `queue.pool`.
    #[serde(default)]
    pub pool: Option<String>,
    /// Move this alias to each new version that passes the alias's gate (needs
    /// `eval_dataset`).
    #[serde(default)]
    pub promote_to: Option<String>,
}

fn default_policy() -> Policy {
    Policy::Reject
}

fn default_full_retrain_every() -> u32 {
    5
}

impl ScheduleConfig {
    /// The parsed cron expression.
    pub fn cron(&self) -> Result<croner::Cron, String> {
        croner::Cron::from_str(&self.cron).map_err(|e| format!("{:?}: {e}", self.cron))
    }
}

impl CoordinatorConfig {
    /// Loads defaults → `file` (TOML, if given) → `REFIT__…` environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, env_layer())
    }

    pub(crate) fn load_from(
        file: Option<&Path>,
        env: config::Environment,
    ) -> Result<Self, ConfigError> {
        let config: CoordinatorConfig = read_layers(file, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.to_owned(),
            reason,
        };
        let c = &self.coordinator;
        if c.token.is_some() && c.token_file.is_some() {
            return Err(invalid(
                "coordinator.token",
                "give token or token_file, not both".into(),
            ));
        }
        if c.metrics_token.is_some() && c.metrics_token_file.is_some() {
            return Err(invalid(
                "coordinator.metrics_token",
                "give metrics_token or metrics_token_file, not both".into(),
            ));
        }
        if c.token.is_none() && c.token_file.is_none() {
            return Err(invalid(
                "coordinator.token",
                "the API needs a bearer token: set REFIT__COORDINATOR__TOKEN or \
                 coordinator.token_file"
                    .into(),
            ));
        }
        if !(c.default_epoch_fraction > 0.0 && c.default_epoch_fraction <= 1.0) {
            return Err(invalid(
                "coordinator.default_epoch_fraction",
                "must be above 0 and at most 1".into(),
            ));
        }
        if c.default_epochs == 0 {
            return Err(invalid(
                "coordinator.default_epochs",
                "must be at least 1".into(),
            ));
        }
        if c.lease_secs < 2 || c.max_failures == 0 {
            return Err(invalid(
                "coordinator",
                "lease_secs must be at least 2 and max_failures at least 1".into(),
            ));
        }
        if c.stall_after_secs == 0
            || c.outbox_interval_ms == 0
            || c.scheduler_tick_secs == 0
            || c.publish_attempts == 0
        {
            return Err(invalid(
                "coordinator",
                "stall_after_secs, outbox_interval_ms, scheduler_tick_secs and publish_attempts \
                 must be above 0"
                    .into(),
            ));
        }
        self.queue
            .validate()
            .map_err(|e| invalid("queue", e.to_string()))?;
        self.s3
            .validate()
            .map_err(|e| invalid("s3", e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.schedule.iter().enumerate() {
            let field = format!("schedule[{i}]");
            let name_ok = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
            if !name_ok {
                return Err(invalid(
                    &field,
                    format!("name {:?}: use 1–64 letters, digits, '-', '_', '.'", s.name),
                ));
            }
            if !names.insert(s.name.clone()) {
                return Err(invalid(&field, format!("name {:?} is used twice", s.name)));
            }
            ModelName::new(s.model.clone()).map_err(|e| invalid(&field, e.to_string()))?;
            validate_key(&s.dataset).map_err(|e| invalid(&field, e.to_string()))?;
            if let Some(eval) = &s.eval_dataset {
                validate_key(eval).map_err(|e| invalid(&field, e.to_string()))?;
            }
            if let Some(alias) = &s.promote_to {
                Alias::new(alias.as_str())
                    .map_err(|e| invalid(&field, format!("promote_to: {e}")))?;
                if s.eval_dataset.is_none() {
                    return Err(invalid(
                        &field,
                        "promote_to needs eval_dataset (the gate compares versions on it)".into(),
                    ));
                }
            }
            dataset_extension(&s.dataset).map_err(|e| invalid(&field, e))?;
            s.cron().map_err(|e| invalid(&field, format!("cron {e}")))?;
            if let Some(f) = s.epoch_fraction
                && !(f > 0.0 && f <= 1.0)
            {
                return Err(invalid(&field, "epoch_fraction must be in (0, 1]".into()));
            }
        }
        self.promotion
            .validate()
            .map_err(|e| invalid("promotion", e))?;
        Ok(())
    }

    /// The lease rules' settings.
    pub fn lease_settings(&self) -> crate::store::LeaseSettings {
        crate::store::LeaseSettings {
            lease_secs: self.coordinator.lease_secs,
            max_failures: self.coordinator.max_failures,
        }
    }

    /// What `refit-coordinator --check-config` checks beyond [`CoordinatorConfig::load`]: that
    /// the token files, the S3 secret file and the AMQP password file can be read. Returns a
    /// one-line summary without secrets.
    pub fn check(&self) -> Result<String, ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.to_owned(),
            reason,
        };
        self.token()?;
        let metrics_token = self.metrics_token()?;
        let credentials = self
            .s3
            .validate()
            .map_err(|e| invalid("s3", e.to_string()))?;
        self.queue
            .check_uris()
            .map_err(|e| invalid("queue", e.to_string()))?;
        let c = &self.coordinator;
        Ok(format!(
            "listen {}, database {}, broker {}, pool {}, S3 {} bucket {} (credentials: {}), \
             /metrics {}, {} schedule(s)",
            c.listen,
            c.database.display(),
            self.queue.redacted_url(),
            self.queue.pool,
            self.s3.endpoint.as_deref().unwrap_or("aws"),
            self.s3.bucket,
            credentials.source(),
            if metrics_token.is_some() {
                "needs a token"
            } else {
                "open"
            },
            self.schedule.len(),
        ))
    }

    /// The API token, read from `token` or `token_file`.
    pub fn token(&self) -> Result<Secret, ConfigError> {
        let c = &self.coordinator;
        read_token(
            "coordinator.token",
            c.token.as_ref(),
            c.token_file.as_deref(),
        )?
        .ok_or_else(|| ConfigError::Invalid {
            field: "coordinator.token".into(),
            reason: "the API needs a bearer token".into(),
        })
    }

    /// The token `/metrics` requires, if one is set (`metrics_token` or `metrics_token_file`).
    pub fn metrics_token(&self) -> Result<Option<Secret>, ConfigError> {
        let c = &self.coordinator;
        read_token(
            "coordinator.metrics_token",
            c.metrics_token.as_ref(),
            c.metrics_token_file.as_deref(),
        )
    }
}

/// A token given inline or in a file (surrounding whitespace trimmed), at least 16 characters.
fn read_token(
    field: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    let invalid = |field: String, reason: String| ConfigError::Invalid { field, reason };
    let token = match (inline, file) {
        (Some(token), _) => token.expose().trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                invalid(
                    format!("{field}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.len() < 16 {
        return Err(invalid(
            field.to_owned(),
            "must be at least 16 characters (e.g. `openssl rand -hex 24`)".into(),
        ));
    }
    Ok(Some(Secret::new(token)))
}

/// The dataset extension of an object key (`yml`, `yaml`, `jsonl` or `json`).
pub fn dataset_extension(key: &str) -> Result<&str, String> {
    let ext = key.rsplit_once('.').map(|(_, ext)| ext).unwrap_or("");
    if keys::DATASET_EXTENSIONS.contains(&ext) {
        Ok(ext)
    } else {
        Err(format!(
            "dataset key {key:?} must end in .yml, .yaml, .jsonl or .json"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> config::Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env_layer().source(Some(map))
    }

    const BASE: &[(&str, &str)] = &[
        ("REFIT__S3__ACCESS_KEY_ID", "GKtest"),
        ("REFIT__S3__SECRET_ACCESS_KEY", "s3cr3t-value"),
        ("REFIT__COORDINATOR__TOKEN", "t0ken-t0ken-t0ken-t0ken"),
    ];

    #[test]
    fn layers_apply_and_secrets_are_redacted() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[coordinator]\nlisten = \"127.0.0.1:9999\"\nstall_after_secs = 5\n\
             [[schedule]]\nname = \"nightly\"\nmodel = \"financial\"\n\
             dataset = \"incoming/nlu.yml\"\ncron = \"0 3 * * *\"\npolicy = \"scratch\""
        )
        .unwrap();
        let config = CoordinatorConfig::load_from(Some(file.path()), env(BASE)).unwrap();
        assert_eq!(config.coordinator.listen.port(), 9999);
        assert_eq!(config.coordinator.stall_after_secs, 5);
        assert_eq!(config.schedule[0].policy, Policy::Scratch);
        assert_eq!(config.schedule[0].full_retrain_every, 5);
        assert_eq!(config.token().unwrap().expose(), "t0ken-t0ken-t0ken-t0ken");
        let debug = format!("{config:?}");
        assert!(!debug.contains("t0ken"), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn missing_token_bad_cron_and_unknown_keys_are_errors() {
        let err = CoordinatorConfig::load_from(None, env(&BASE[..2])).unwrap_err();
        assert!(
            err.to_string().contains("REFIT__COORDINATOR__TOKEN"),
            "{err}"
        );

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[[schedule]]\nname = \"n\"\nmodel = \"m\"\ndataset = \"in/nlu.yml\"\ncron = \"61 * * * *\""
        )
        .unwrap();
        let err = CoordinatorConfig::load_from(Some(file.path()), env(BASE)).unwrap_err();
        assert!(err.to_string().contains("schedule[0]"), "{err}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[coordinator]\nlisten_addr = \"x\"").unwrap();
        let err = CoordinatorConfig::load_from(Some(file.path()), env(BASE)).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");

        let mut vars = BASE.to_vec();
        vars[2] = ("REFIT__COORDINATOR__TOKEN", "short");
        let config = CoordinatorConfig::load_from(None, env(&vars)).unwrap();
        assert!(config.token().is_err());
    }

    #[test]
    fn the_metrics_token_is_optional_checked_and_redacted() {
        let config = CoordinatorConfig::load_from(None, env(BASE)).unwrap();
        assert!(config.metrics_token().unwrap().is_none());

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  m3trics-m3trics-m3trics  ").unwrap();
        let path = file.path().to_str().unwrap();
        let mut vars = BASE.to_vec();
        vars.push(("REFIT__COORDINATOR__METRICS_TOKEN_FILE", path));
        let config = CoordinatorConfig::load_from(None, env(&vars)).unwrap();
        let token = config.metrics_token().unwrap().unwrap();
        assert_eq!(token.expose(), "m3trics-m3trics-m3trics");

        vars.push((
            "REFIT__COORDINATOR__METRICS_TOKEN",
            "m3trics-m3trics-m3trics",
        ));
        let err = CoordinatorConfig::load_from(None, env(&vars)).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");

        let mut vars = BASE.to_vec();
        vars.push(("REFIT__COORDINATOR__METRICS_TOKEN", "m3trics-short"));
        let config = CoordinatorConfig::load_from(None, env(&vars)).unwrap();
        assert!(!format!("{config:?}").contains("m3trics"));
        let err = config.metrics_token().unwrap_err().to_string();
        assert!(
            err.contains("coordinator.metrics_token") && err.contains("16 characters"),
            "{err}"
        );
        assert!(!err.contains("m3trics"), "{err}");
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.example.toml");
        let config = CoordinatorConfig::load_from(Some(&path), env(BASE)).unwrap();
        assert!(!config.schedule.is_empty());
    }
}
