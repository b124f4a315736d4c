//! The one test harness every module of the integration binary uses: finding the services (and
//! saying how to start one that is missing), unique names, the binaries under test, the
//! environment a service process gets, training data, and
//!
//! - [`cluster`]: [`cluster::Cluster`], the one cluster type (a test's names, services, folder and
//!   worker processes);
//! - [`stack`]: [`stack::Stack`], a coordinator and its workers on a cluster, driven through the
//!   HTTP API, the CLI and `/metrics` (every test that runs a job needs one: workers run a job
//!   only under a lease their coordinator grants);
//! - [`api`]: helpers on job views, Prometheus text and training data;
//! - [`broker_users`]: the least-privilege coordinator and worker users of
//!   `deploy/rabbitmq.sh users`, made for one test;
//! - [`jobs`]: submitting jobs on a stack, reading their events, duplicate messages, and the
//!   registry checks (one consistent version per job);
//! - [`proc`]: [`proc::Proc`], the one process type (a service with its log file);
//! - [`wait`]: [`wait::wait_until`], the one way to wait for a condition.
#![allow(dead_code)]

pub mod api;
pub mod broker_users;
pub mod cluster;
pub mod jobs;
pub mod proc;
pub mod stack;
pub mod wait;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use refit_io::queue::{Broker, QueueConfig};
use refit_io::storage::{S3Config, S3Store};
use refit_proto::data::{Example, load_file};

/// The broker the tests use unless `REFIT_TEST_AMQP_URL` says otherwise.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The test broker's URL: `REFIT_TEST_AMQP_URL`, else [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    env_or("REFIT_TEST_AMQP_URL", DEFAULT_AMQP_URL)
}

/// An environment variable, or a default.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name no other test (in this or a parallel run) uses: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// `NAME=value` lines (an `export ` prefix, comments and blank lines allowed); empty if missing.
pub fn read_env_file(path: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            Some((name.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cargo build <args>` once per test run (per distinct `args`) and returns the folder the
/// binaries land in (`<target>/debug`, found from this test's own executable). Cargo does not
/// build another package's binaries for a test, so the end-to-end tests build them themselves.
pub fn cargo_build(args: &[&str]) -> Result<PathBuf> {
    static BUILT: Mutex<Vec<(String, std::result::Result<PathBuf, String>)>> =
        Mutex::new(Vec::new());
    let key = args.join(" ");
    // Held across the build: one cargo at a time (cargo would serialise them anyway).
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, result)) = built.iter().find(|(k, _)| *k == key) {
        return result.clone().map_err(|e| anyhow!(e));
    }
    let result = (|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.arg("build").args(args).current_dir(repo());
        // `cargo test` gives this process the test package's CARGO_PKG_*, CARGO_MANIFEST_*, …
        // Build scripts that declare `rerun-if-env-changed` on those (ring does) would see them
        // change between this build and the next plain `cargo build`/`cargo test`, and both
        // would rebuild half the tree every time.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let per_package = ["CARGO_PKG_", "CARGO_MANIFEST_"]
                .iter()
                .any(|p| name.starts_with(p))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&name);
            if per_package {
                command.env_remove(name);
            }
        }
        let status = command
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build {key} failed: {status}"));
        }
        // <target>/debug/deps/integration-… → <target>/debug
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        exe.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| "cannot locate the target folder".to_owned())
    })();
    built.push((key, result.clone()));
    result.map_err(|e| anyhow!(e))
}

/// A binary built by [`cargo_build`]`(args)`, checked to exist.
pub fn built_binary(args: &[&str], name: &str) -> Result<PathBuf> {
    let path = cargo_build(args)?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{} was not built by cargo build {}",
            path.display(),
            args.join(" ")
        )
    }
}

/// What the end-to-end tests build: every service binary in one `cargo build`, so that cargo
/// resolves their dependencies' features once. (Building `refit-worker` alone resolves them
/// without the CLI's and the coordinator's HTTP client and rebuilds the TLS stack.)
const SERVICE_BUILD: &[&str] = &[
    "-p",
    "refit-coordinator",
    "-p",
    "refit-worker",
    "-p",
    "refit-cli",
    "--bins",
];

/// The `refit-worker` binary (built once per test run).
pub fn worker_binary() -> Result<PathBuf> {
    built_binary(SERVICE_BUILD, "refit-worker")
}

/// The `refit-coordinator` binary (built once per test run).
pub fn coordinator_binary() -> Result<PathBuf> {
    built_binary(SERVICE_BUILD, "refit-coordinator")
}

/// The `refit` CLI (built once per test run).
pub fn cli_binary() -> Result<PathBuf> {
    built_binary(SERVICE_BUILD, "refit")
}

/// `NAME=value` lines of the local Garage's `credentials.env`.
pub fn garage_env() -> HashMap<String, String> {
    let dir = std::env::var_os("REFIT_GARAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".refit-local/garage"));
    credentials_in(&dir)
}

/// `NAME=value` lines of `<dir>/credentials.env` (written by `deploy/s3-server.sh`).
pub fn credentials_in(dir: &Path) -> HashMap<String, String> {
    read_env_file(&dir.join("credentials.env"))
}

/// Connects to the test broker, or fails saying how to start it.
pub async fn connect_broker(config: &QueueConfig) -> Result<Broker> {
    let url = url::Url::parse(&config.url).context("REFIT_TEST_AMQP_URL is not a URL")?;
    let at = format!(
        "{}:{}",
        url.host_str().unwrap_or("?"),
        url.port().unwrap_or(5672)
    );
    Broker::connect(config).await.map_err(|e| {
        anyhow!(
            "RabbitMQ does not answer at {at} ({e}): run deploy/rabbitmq.sh, or set \
             REFIT_TEST_AMQP_URL"
        )
    })
}

/// A store on the test S3 server whose bucket answers, or an error saying how to start it.
pub async fn s3_store(config: &S3Config) -> Result<S3Store> {
    let store = S3Store::new(config.clone())?;
    store.check_bucket().await.with_context(|| {
        format!(
            "the S3 server does not answer at {} (or has no bucket {}): run deploy/s3-server.sh",
            config.endpoint.clone().unwrap_or_default(),
            config.bucket
        )
    })?;
    Ok(store)
}

/// Sets what a service process (`refit-coordinator`, `refit-worker`) needs to reach the test's
/// broker (with its queue `prefix`) and S3 server, as `REFIT__…` variables with the secrets in
/// the environment, after removing every `REFIT__…` variable of the developer's own environment
/// (nothing from it may change what a test runs). Logs without colours, at `info`.
pub fn service_env(command: &mut Command, amqp_url: &str, prefix: &str, s3: &S3Config) {
    for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if name.starts_with("REFIT__")
            || [
                "REFIT_FAULT",
                "REFIT_COORDINATOR_CONFIG",
                "REFIT_WORKER_CONFIG",
            ]
            .contains(&name.as_str())
        {
            command.env_remove(name);
        }
    }
    command
        .env("REFIT__QUEUE__URL", amqp_url)
        .env("REFIT__QUEUE__PREFIX", prefix)
        .env("REFIT__QUEUE__RECONNECT_MAX_MS", "1000")
        .env(
            "REFIT__S3__ENDPOINT",
            s3.endpoint.clone().unwrap_or_default(),
        )
        .env("REFIT__S3__REGION", &s3.region)
        .env("REFIT__S3__BUCKET", &s3.bucket)
        .env(
            "REFIT__S3__ACCESS_KEY_ID",
            s3.access_key_id.clone().unwrap_or_default(),
        )
        .env(
            "REFIT__S3__SECRET_ACCESS_KEY",
            s3.secret_access_key
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
        )
        .env("RUST_LOG", "info,lapin=warn,aws=warn,ort=warn")
        .env("NO_COLOR", "1")
        .current_dir(repo());
}

/// The S3 server's settings: each from `REFIT_TEST_S3_<NAME>`, else `REFIT_S3_<NAME>`, else the
/// local Garage's `credentials.env`.
pub fn s3_config() -> Result<S3Config> {
    let file = garage_env();
    let get = |name: &str, default: &str| {
        let from_file = file
            .get(&format!("REFIT_S3_{name}"))
            .cloned()
            .unwrap_or_else(|| default.to_owned());
        env_or(
            &format!("REFIT_TEST_S3_{name}"),
            &env_or(&format!("REFIT_S3_{name}"), &from_file),
        )
    };
    let (id, secret) = (get("ACCESS_KEY_ID", ""), get("SECRET_ACCESS_KEY", ""));
    if id.is_empty() || secret.is_empty() {
        bail!(
            "no S3 credentials: run deploy/s3-server.sh, or set REFIT_TEST_S3_ACCESS_KEY_ID and \
             REFIT_TEST_S3_SECRET_ACCESS_KEY"
        );
    }
    let mut config = S3Config::for_test(&get("ENDPOINT", "http://127.0.0.1:3900"), &id, &secret);
    config.region = get("REGION", "garage");
    config.bucket = get("BUCKET", "refit");
    Ok(config)
}

/// The first `per_intent` examples of each intent of set1.yml (all intents, so fine-tunes on
/// larger slices keep the label set).
pub fn examples(per_intent: usize) -> Result<Vec<Example>> {
    let data = load_file(&repo().join("examples/data/financial-demo/set1.yml"))?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for example in data.examples {
        let n = counts.entry(example.intent.clone()).or_default();
        if *n < per_intent {
            *n += 1;
            out.push(example);
        }
    }
    Ok(out)
}

/// Deletes the queues and exchanges of `broker`'s topology (a test's own prefix); errors are
/// ignored, as in any cleanup.
pub async fn delete_topology(broker: &refit_io::queue::Broker) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(channel) = broker.channel().await else {
        return;
    };
    let t = broker.topology();
    for q in [
        t.job_queue(),
        t.dead_letter_queue(),
        t.coordinator_events_queue(),
        t.coordinator_dead_queue(),
    ] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [
        t.jobs_exchange(),
        t.dead_letter_exchange(),
        t.events_exchange(),
    ] {
        let _ = channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
