//! [`WorkerConfig`]: the `refit-worker` service's settings, loaded in layers with the `config`
//! crate: built-in defaults, then the `--config` TOML file, then `REFIT__<SECTION>__<KEY>`
//! environment variables (e.g. `REFIT__S3__SECRET_ACCESS_KEY`, `REFIT__QUEUE__PREFIX`,
//! `REFIT__WORKER__RESUME_EVERY_EPOCHS`), then [`WorkerConfig::validate`].
//!
//! ```toml
//! [queue]            # refit_io::queue::QueueConfig
//! url = "amqp://refit@rabbitmq:5672/%2f"
//! password_file = "/run/secrets/amqp-password"
//! pool = "gpu"
//!
//! [s3]               # refit_io::storage::S3Config
//! endpoint = "http://garage:3900"
//! region = "garage"
//! access_key_id = "GK…"
//! secret_access_key_file = "/run/secrets/s3-secret"
//!
//! [worker]           # WorkerSettings
//! device = "auto"
//! resume_every_epochs = 10
//! ```
//!
//! Secrets (the AMQP password, the S3 secret key) come from the environment or `*_file` paths and
//! never reach a log: `Debug` of every section redacts them.

use std::path::Path;
use std::time::Duration;

use refit_proto::WorkerId;
use serde::Deserialize;

use refit_engine::runtime::{Device, RuntimeOptions};
use refit_io::config::{env_layer, read_layers};
use refit_io::queue::QueueConfig;
use refit_io::storage::S3Config;

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or does not fit the schema (unknown keys included).
    #[error("failed to load the worker config: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("invalid worker config: {field}: {reason}")]
    Invalid {
        /// The field, e.g. `worker.device`.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Everything `refit-worker` needs. Every field has a default, so an empty file is a working
/// local setup (local RabbitMQ; S3 needs at least credentials).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The broker and the pool to consume (see [`QueueConfig`]). `queue.prefetch` is overridden
    /// by `worker.concurrency`.
    pub queue: QueueConfig,
    /// The object store holding datasets, models and resume checkpoints (see [`S3Config`]).
    pub s3: S3Config,
    /// How this worker runs jobs.
    pub worker: WorkerSettings,
}

/// Where training runs: `cpu`, `cuda` (an error unless built with the `cuda` feature), or `auto`
/// (CUDA when built with it and a GPU is visible, else the CPU, with a log line).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on `cuda_device`.
    Cuda,
    /// CUDA if possible, else the CPU.
    Auto,
}

/// The `[worker]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// This worker's id in events. Default `<hostname>-<pid>`.
    pub id: Option<String>,
    /// Jobs run at once: the worker takes one job per free slot. Default 1.
    pub concurrency: u16,
    /// `cpu`, `cuda` or `auto`. Default `cpu`.
    pub device: DeviceChoice,
    /// The CUDA device ordinal for `cuda`/`auto`. Default 0.
    pub cuda_device: u32,
    /// Threads per job (see `RuntimeOptions::intra_threads`: on the CPU, ONNX Runtime itself
    /// uses one and a second prepares batches). Default: the number of CPUs divided by
    /// `concurrency`.
    pub intra_threads: Option<usize>,
    /// Write a resume checkpoint every this many epochs (0: never by epoch count). Default 10.
    pub resume_every_epochs: u32,
    /// Also write one when this many seconds passed since the last (checked at epoch ends; 0:
    /// never by time). Default 300.
    pub resume_every_secs: u64,
    /// Seconds between heartbeat events while a job runs. Default 5.
    pub heartbeat_secs: u64,
    /// Seconds between presence messages (idle or busy), so that the coordinator lists idle
    /// workers and notices one that vanished; keep it well under the coordinator's
    /// `stall_after_secs`. Default 15.
    pub presence_secs: u64,
    /// Tries of one S3 or broker operation that fails transiently, with growing delays, before
    /// it counts as an outage. Default 10 (about a minute of retrying).
    pub retry_attempts: u32,
    /// The first retry delay in milliseconds; it doubles per try, with jitter. Default 500.
    pub retry_initial_ms: u64,
    /// The longest retry delay in milliseconds. Default 10 000.
    pub retry_max_ms: u64,
    /// After the tries, how long a job step keeps waiting for S3 or the broker to come back
    /// (trying every `retry_max_ms`), in seconds; then the job is handed back (`released`, not
    /// counted as a failure). The training thread never waits on it. Default 1800.
    pub outage_wait_secs: u64,
    /// The most features (distinct words and character n-grams) a model's vocabulary may
    /// hold; a job whose data would grow it further fails with a clear error before any
    /// tensor is sized (the embedding and its optimiser moments grow with it). Default
    /// 1 000 000.
    pub max_vocab_features: usize,
    /// After SIGTERM/SIGINT, how long running jobs get to stop at their next step, write a resume
    /// checkpoint and hand their delivery back, in seconds. Default 30.
    pub shutdown_deadline_secs: u64,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, e.g. `0.0.0.0:9091` (what the
    /// container images set). Default empty: not served (several workers on one host would
    /// otherwise need a port each).
    pub listen: String,
    /// Take this many jobs, finish them, and exit 0 (`refit-worker --max-jobs N`; for KEDA's
    /// ScaledJob, where scaling down never stops a busy worker). Only jobs whose lease was
    /// granted count. Default: no limit.
    pub max_jobs: Option<u32>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: None,
            concurrency: 1,
            device: DeviceChoice::Cpu,
            cuda_device: 0,
            intra_threads: None,
            resume_every_epochs: 10,
            resume_every_secs: 300,
            heartbeat_secs: 5,
            presence_secs: 15,
            retry_attempts: 10,
            retry_initial_ms: 500,
            retry_max_ms: 10_000,
            outage_wait_secs: 1800,
            max_vocab_features: refit_proto::vocab::DEFAULT_MAX_FEATURES,
            shutdown_deadline_secs: 30,
            listen: String::new(),
            max_jobs: None,
        }
    }
}

impl WorkerConfig {
    /// Loads defaults → `file` (TOML, if given) → `REFIT__…` environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, env_layer())
    }

    fn load_from(file: Option<&Path>, env: config::Environment) -> Result<Self, ConfigError> {
        let mut config: WorkerConfig = read_layers(file, env)?;
        config.queue.prefetch = config.worker.concurrency;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        let w = &self.worker;
        if w.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        if w.heartbeat_secs == 0 {
            return Err(invalid("worker.heartbeat_secs", "must be at least 1"));
        }
        if w.presence_secs == 0 {
            return Err(invalid("worker.presence_secs", "must be at least 1"));
        }
        if w.max_vocab_features < 2 {
            return Err(invalid("worker.max_vocab_features", "must be at least 2"));
        }
        if w.retry_attempts == 0 {
            return Err(invalid("worker.retry_attempts", "must be at least 1"));
        }
        if w.retry_initial_ms == 0 || w.retry_max_ms < w.retry_initial_ms {
            return Err(invalid(
                "worker.retry_initial_ms",
                "must be above 0 and at most worker.retry_max_ms",
            ));
        }
        if !w.listen.is_empty() && w.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "worker.listen",
                "must be an address with a port, e.g. 0.0.0.0:9091 (or empty: not served)",
            ));
        }
        if w.max_jobs == Some(0) {
            return Err(invalid("worker.max_jobs", "must be at least 1 (or unset)"));
        }
        if let Some(id) = &w.id {
            WorkerId::new(id.clone()).map_err(|e| ConfigError::Invalid {
                field: "worker.id",
                reason: e.to_string(),
            })?;
        }
        if w.device == DeviceChoice::Cuda && !cfg!(feature = "cuda") {
            return Err(invalid(
                "worker.device",
                "`cuda` needs refit-worker built with its `cuda` feature \
                 (cargo build --features cuda); use `cpu` or `auto`",
            ));
        }
        self.queue.validate().map_err(|e| ConfigError::Invalid {
            field: "queue",
            reason: e.to_string(),
        })?;
        self.s3.validate().map_err(|e| ConfigError::Invalid {
            field: "s3",
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// What `refit-worker --check-config` checks beyond [`WorkerConfig::load`]: that the secret
    /// files named can be read (the S3 secret; the AMQP password file). Returns a one-line
    /// summary without secrets.
    pub fn check(&self) -> Result<String, ConfigError> {
        let credentials = self.s3.validate().map_err(|e| ConfigError::Invalid {
            field: "s3",
            reason: e.to_string(),
        })?;
        self.queue.check_uris().map_err(|e| ConfigError::Invalid {
            field: "queue",
            reason: e.to_string(),
        })?;
        let w = &self.worker;
        Ok(format!(
            "broker {}, pool {}, S3 {} bucket {} (credentials: {}), device {:?}, concurrency {}, \
             listen {}, max_jobs {}",
            self.queue.redacted_url(),
            self.queue.pool,
            self.s3.endpoint.as_deref().unwrap_or("aws"),
            self.s3.bucket,
            credentials.source(),
            w.device,
            w.concurrency,
            if w.listen.is_empty() {
                "off"
            } else {
                &w.listen
            },
            w.max_jobs
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        ))
    }

    /// This worker's id: `worker.id`, else `<hostname>-<pid>`.
    pub fn worker_id(&self) -> WorkerId {
        if let Some(id) = &self.worker.id
            && let Ok(id) = WorkerId::new(id.clone())
        {
            return id;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned());
        let clean: String = host
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '/')
            .take(100)
            .collect();
        WorkerId::new(format!("{clean}-{}", std::process::id()))
            .expect("a printable name without '/' or spaces is a valid worker id")
    }

    /// How training sessions are created, resolving `auto` (logged).
    pub fn runtime_options(&self) -> RuntimeOptions {
        let w = &self.worker;
        let device = match w.device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda => Device::Cuda(w.cuda_device),
            DeviceChoice::Auto => {
                let gpu_visible = Path::new("/dev/nvidiactl").exists();
                if cfg!(feature = "cuda") && gpu_visible {
                    tracing::info!(device = w.cuda_device, "device auto: using cuda");
                    Device::Cuda(w.cuda_device)
                } else {
                    tracing::info!(
                        cuda_feature = cfg!(feature = "cuda"),
                        gpu_visible,
                        "device auto: using the cpu"
                    );
                    Device::Cpu
                }
            }
        };
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        RuntimeOptions {
            device,
            intra_threads: w
                .intra_threads
                .unwrap_or_else(|| (cpus / usize::from(w.concurrency.max(1))).max(1)),
            ..RuntimeOptions::default()
        }
    }

    /// The retry policy for transient S3 and broker failures: tries, the first and the longest
    /// delay, and the outage patience.
    pub fn retry_delays(&self) -> (u32, Duration, Duration, Duration) {
        let w = &self.worker;
        (
            w.retry_attempts,
            Duration::from_millis(w.retry_initial_ms),
            Duration::from_millis(w.retry_max_ms),
            Duration::from_secs(w.outage_wait_secs),
        )
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

    fn s3_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("REFIT__S3__ACCESS_KEY_ID", "GKtest"),
            ("REFIT__S3__SECRET_ACCESS_KEY", "s3cr3t-value"),
        ]
    }

    #[test]
    fn layers_apply_in_order_and_secrets_are_redacted() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[queue]\nprefix = \"fromfile\"\npool = \"gpu\"\n[worker]\nresume_every_epochs = 3\nconcurrency = 2"
        )
        .unwrap();
        let mut vars = s3_env();
        vars.push(("REFIT__QUEUE__PREFIX", "fromenv"));
        vars.push(("REFIT__WORKER__HEARTBEAT_SECS", "7"));
        let config = WorkerConfig::load_from(Some(file.path()), env(&vars)).unwrap();
        assert_eq!(config.queue.prefix, "fromenv");
        assert_eq!(config.queue.pool, "gpu");
        assert_eq!(config.queue.prefetch, 2);
        assert_eq!(config.worker.resume_every_epochs, 3);
        assert_eq!(config.worker.heartbeat_secs, 7);
        assert_eq!(config.worker.retry_attempts, 10);
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(!debug.contains("guest:guest"), "{debug}");
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker.example.toml");
        let config = WorkerConfig::load_from(Some(&path), env(&s3_env())).unwrap();
        assert_eq!(config.worker, WorkerSettings::default());
        assert_eq!(config.s3.region, "garage");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[worker]\nresume_every_epoch = 3").unwrap();
        let err = WorkerConfig::load_from(Some(file.path()), env(&s3_env())).unwrap_err();
        assert!(err.to_string().contains("resume_every_epoch"), "{err}");

        let mut vars = s3_env();
        vars.push(("REFIT__WORKER__CONCURRENCY", "0"));
        let err = WorkerConfig::load_from(None, env(&vars)).unwrap_err();
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
    }

    #[test]
    fn cuda_needs_the_feature_and_auto_falls_back() {
        let mut vars = s3_env();
        vars.push(("REFIT__WORKER__DEVICE", "cuda"));
        let result = WorkerConfig::load_from(None, env(&vars));
        assert_eq!(result.is_ok(), cfg!(feature = "cuda"));

        let mut vars = s3_env();
        vars.push(("REFIT__WORKER__DEVICE", "auto"));
        let config = WorkerConfig::load_from(None, env(&vars)).unwrap();
        if !cfg!(feature = "cuda") {
            assert_eq!(config.runtime_options().device, Device::Cpu);
        }
        assert!(config.worker_id().as_str().contains('-'));
    }
}
