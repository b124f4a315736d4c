//! End-to-end tests of the coordinator (issue 5's "Done when" list): a real `refit-coordinator`
//! process, real `refit-worker` processes, the real RabbitMQ and S3 server, driven through the
//! HTTP API (reqwest) and the `refit` CLI (run as a process).
//!
//! Each test builds a [`Stack`]: its own queue prefix, model name, API token, free port and temp
//! folder (the SQLite job store, config files, every process's log). The binaries are built once
//! per test run (`cargo build -p refit-coordinator -p refit-cli`, `cargo build -p refit-worker`); the services are found as in the other modules (`REFIT_TEST_AMQP_URL`,
//! `REFIT_TEST_S3_*`, `REFIT_S3_*`, then the local Garage's `credentials.env`). A missing service
//! fails the test with a message saying how to start it. Processes are killed when their handle
//! drops; a test that passes stops them with SIGTERM, expects a clean exit, and then checks that
//! no secret (the API token, the S3 secret key, the AMQP password) appears in any of their log
//! lines ([`Stack::finish`]).
//!
//! Data is a slice of `examples/data/financial-demo/set1.yml` (and `set2.yml`), uploaded as JSONL,
//! with few epochs, so a job takes seconds. Timeouts are hang guards, not speed targets.
//!
//! | module | "Done when" |
//! | --- | --- |
//! | `cli` | 1 (scratch then fine-tune with lineage), 2 (a new intent: rejected, or scratch); the CLI's exits 14/15 |
//! | `jobs` | 3 (20 parallel jobs, exactly once, on both workers), 4 (crash between store and publish) |
//! | `observe` | 5 (queued jobs on `/metrics`, `promtool`), 6 (schedule), 7 (dashboard in Chromium) |
//! | `security` | 8 (401 without data on every `/v1` route; no secret in any log) |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use refit_io::queue::{Broker, QueueConfig};
use refit_io::storage::{ObjectStore, S3Config, S3Store};
use refit_proto::data::{Example, load_file};
use refit_proto::keys;
use refit_proto::keys::sha256_hex;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::proc::{Proc, tail};
use crate::common::wait::{done_if, wait_until};
use crate::common::{
    amqp_url, built_binary, connect_broker, env_or, examples, repo, s3_config, s3_store,
    service_env, unique, worker_binary,
};

mod cli;
mod jobs;
mod observe;
mod security;

/// A guard against hangs (the machine may be busy with other tests), not a speed target.
const WAIT: Duration = Duration::from_secs(300);

/// What `cargo build` needs to build the coordinator and the CLI (one cargo run for both).
const COORDINATOR_BUILD: &[&str] = &[
    "-p",
    "refit-coordinator",
    "--bin",
    "refit-coordinator",
    "-p",
    "refit-cli",
    "--bin",
    "refit",
];

fn coordinator_binary() -> Result<PathBuf> {
    built_binary(COORDINATOR_BUILD, "refit-coordinator")
}

fn cli_binary() -> Result<PathBuf> {
    built_binary(COORDINATOR_BUILD, "refit")
}

/// `<target>/test-artifacts`, where screenshots go (created).
fn artifacts_dir() -> Result<PathBuf> {
    // <target>/debug/deps/integration-… → <target>
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("cannot locate the target folder")?;
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Random lowercase hex, `bytes` bytes long.
fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Settings of a [`Stack`] beyond the defaults.
#[derive(Default)]
struct Options {
    /// `[[schedule]]` tables (or any TOML) for the coordinator's `--config` file.
    config_toml: Option<String>,
    /// A RabbitMQ user of its own (created through the management API, deleted at the end),
    /// with a random password, so that the password can be looked for in the logs.
    own_amqp_user: bool,
    /// Secrets from files rather than the environment.
    secrets_via_files: bool,
    /// A token of its own for `/metrics` (`coordinator.metrics_token`).
    metrics_token: bool,
}

/// A RabbitMQ user made for one test.
struct AmqpUser {
    management: String,
    admin: (String, String),
    name: String,
}

/// The management API's base URL and the admin credentials of the test broker URL.
fn management_settings(amqp_url: &str) -> Result<(String, (String, String))> {
    let url = url::Url::parse(amqp_url).context("REFIT_TEST_AMQP_URL is not a URL")?;
    let base = env_or(
        "REFIT_TEST_RABBITMQ_MANAGEMENT_URL",
        &format!("http://{}:15672", url.host_str().unwrap_or("127.0.0.1")),
    );
    let user = if url.username().is_empty() {
        "guest".to_owned()
    } else {
        url.username().to_owned()
    };
    let password = url.password().unwrap_or("guest").to_owned();
    Ok((base, (user, password)))
}

impl AmqpUser {
    async fn create(http: &reqwest::Client, amqp_url: &str, password: &str) -> Result<Self> {
        let (management, admin) = management_settings(amqp_url)?;
        let name = unique("refit-test-user");
        let hint = || {
            format!(
                "RabbitMQ's management API does not answer at {management}: run deploy/rabbitmq.sh \
                 (it enables the rabbitmq_management plugin) or set \
                 REFIT_TEST_RABBITMQ_MANAGEMENT_URL"
            )
        };
        let put = |path: String, body: Value| {
            http.put(format!("{management}/api/{path}"))
                .basic_auth(&admin.0, Some(&admin.1))
                .json(&body)
                .send()
        };
        let response = put(
            format!("users/{name}"),
            json!({ "password": password, "tags": "monitoring" }),
        )
        .await
        .with_context(hint)?;
        ensure!(
            response.status().is_success(),
            "creating RabbitMQ user {name}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let response = put(
            format!("permissions/%2F/{name}"),
            json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await
        .with_context(hint)?;
        ensure!(
            response.status().is_success(),
            "granting RabbitMQ user {name} vhost /: {}",
            response.status()
        );
        Ok(Self {
            management,
            admin,
            name,
        })
    }

    async fn delete(&self, http: &reqwest::Client) {
        let _ = http
            .delete(format!("{}/api/users/{}", self.management, self.name))
            .basic_auth(&self.admin.0, Some(&self.admin.1))
            .send()
            .await;
    }
}

/// What the `refit` CLI did.
struct CliRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl CliRun {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(self.stdout.trim()).with_context(|| {
            format!(
                "refit printed no JSON document on stdout (exit {}):\nstdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// One test's coordinator, workers and names.
struct Stack {
    prefix: String,
    model: String,
    token: String,
    /// `/metrics`' token, with [`Options::metrics_token`].
    metrics_token: Option<String>,
    port: u16,
    dir: tempfile::TempDir,
    amqp_url: String,
    /// The AMQP password and the form it is looked for in logs.
    amqp_secret: String,
    s3: S3Config,
    store: S3Store,
    broker: Broker,
    http: reqwest::Client,
    options: Options,
    amqp_user: Option<AmqpUser>,
    coordinator: Option<Proc>,
    coordinator_runs: usize,
    workers: Vec<Proc>,
    /// Every log file of every process this stack started.
    logs: Vec<PathBuf>,
    /// What the CLI printed, checked for secrets too.
    cli_outputs: Vec<String>,
    /// Object keys (besides the model's) to delete at the end.
    extra_keys: Vec<String>,
}

impl Stack {
    async fn new(name: &str) -> Result<Self> {
        Self::with(name, Options::default()).await
    }

    /// Checks the services, makes the names; starts nothing yet.
    async fn with(name: &str, options: Options) -> Result<Self> {
        let prefix = unique(&format!("c{name}"));
        let test_url = amqp_url();
        let parsed = url::Url::parse(&test_url).context("REFIT_TEST_AMQP_URL is not a URL")?;
        let broker = connect_broker(&QueueConfig::for_test(&test_url, &prefix)).await?;
        let s3 = s3_config()?;
        let store = s3_store(&s3).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let (amqp_url, amqp_secret, amqp_user) = if options.own_amqp_user {
            let password = format!("amqp-{}", random_hex(16));
            let user = AmqpUser::create(&http, &test_url, &password).await?;
            let mut url = parsed.clone();
            url.set_username(&user.name)
                .map_err(|()| anyhow!("cannot set the AMQP user"))?;
            url.set_password(Some(&password))
                .map_err(|()| anyhow!("cannot set the AMQP password"))?;
            (url.to_string(), password, Some(user))
        } else {
            // The broker's default guest/guest: "guest" is also the user name, so look for the
            // password where a leak would put it, in a URL's userinfo.
            let password = parsed.password().unwrap_or("guest").to_owned();
            let secret = format!(":{password}@");
            (test_url.clone(), secret, None)
        };
        Ok(Self {
            model: unique(&format!("m-{name}"))
                .to_lowercase()
                .replace(['_', '.'], "-"),
            prefix,
            token: random_hex(24),
            metrics_token: options.metrics_token.then(|| random_hex(24)),
            port: free_port()?,
            dir: tempfile::tempdir()?,
            amqp_url,
            amqp_secret,
            s3,
            store,
            broker,
            http,
            options,
            amqp_user,
            coordinator: None,
            coordinator_runs: 0,
            workers: Vec::new(),
            logs: Vec::new(),
            cli_outputs: Vec::new(),
            extra_keys: Vec::new(),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("coordinator.db")
    }

    fn job_queue(&self) -> String {
        self.broker.topology().job_queue()
    }

    fn s3_secret(&self) -> String {
        self.s3
            .secret_access_key
            .as_ref()
            .map(|s| s.expose().to_owned())
            .unwrap_or_default()
    }

    /// Writes a secret to a mode-600 file in the stack's folder; its path. The file is replaced
    /// atomically (written beside it, then renamed): a service started earlier may be reading it
    /// right now, and a plain rewrite would let it see the file truncated (empty).
    fn secret_file(&self, name: &str, value: &str) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join(name);
        let staging = self.dir.path().join(format!(".{name}.{}", random_hex(8)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)?;
        file.write_all(value.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&staging, &path)?;
        Ok(path)
    }

    /// The queue and S3 settings both services share, as `REFIT__…` variables (the secrets in
    /// files with [`Options::secrets_via_files`]).
    fn service_env(&self, command: &mut Command) -> Result<()> {
        service_env(command, &self.amqp_url, &self.prefix, &self.s3);
        if self.options.secrets_via_files {
            let mut url = url::Url::parse(&self.amqp_url)?;
            let password = url.password().unwrap_or_default().to_owned();
            url.set_password(None)
                .map_err(|()| anyhow!("cannot strip the AMQP password"))?;
            command
                .env("REFIT__QUEUE__URL", url.as_str())
                .env(
                    "REFIT__QUEUE__PASSWORD_FILE",
                    self.secret_file("amqp-password", &password)?,
                )
                .env_remove("REFIT__S3__SECRET_ACCESS_KEY")
                .env(
                    "REFIT__S3__SECRET_ACCESS_KEY_FILE",
                    self.secret_file("s3-secret", &self.s3_secret())?,
                );
        }
        Ok(())
    }

    fn new_log(&mut self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.log"));
        self.logs.push(path.clone());
        path
    }

    /// Starts the coordinator with the stack's settings plus `extra` env, and waits until
    /// `/healthz` answers.
    async fn start_coordinator(&mut self, extra: &[(&str, &str)]) -> Result<()> {
        ensure!(self.coordinator.is_none(), "the coordinator already runs");
        let mut command = Command::new(coordinator_binary()?);
        self.service_env(&mut command)?;
        command
            .env(
                "REFIT__COORDINATOR__LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .env("REFIT__COORDINATOR__DATABASE", self.database())
            .env("REFIT__COORDINATOR__OUTBOX_INTERVAL_MS", "250")
            .env("REFIT__COORDINATOR__SCHEDULER_TICK_SECS", "1")
            .env("REFIT__COORDINATOR__SHUTDOWN_DEADLINE_SECS", "5");
        if self.options.secrets_via_files {
            command.env(
                "REFIT__COORDINATOR__TOKEN_FILE",
                self.secret_file("token", &format!("{}\n", self.token))?,
            );
        } else {
            command.env("REFIT__COORDINATOR__TOKEN", &self.token);
        }
        if let Some(token) = &self.metrics_token {
            if self.options.secrets_via_files {
                command.env(
                    "REFIT__COORDINATOR__METRICS_TOKEN_FILE",
                    self.secret_file("metrics-token", &format!("{token}\n"))?,
                );
            } else {
                command.env("REFIT__COORDINATOR__METRICS_TOKEN", token);
            }
        }
        if let Some(toml) = &self.options.config_toml {
            let path = self.dir.path().join("coordinator.toml");
            std::fs::write(&path, toml)?;
            command.arg("--config").arg(path);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        self.coordinator_runs += 1;
        let log = self.new_log(&format!("coordinator-{}", self.coordinator_runs));
        self.coordinator = Some(Proc::spawn("refit-coordinator", command, log)?);
        self.wait_healthy().await
    }

    /// Waits until `/healthz` answers 200.
    async fn wait_healthy(&self) -> Result<()> {
        let health = format!("{}/healthz", self.url());
        let http = &self.http;
        let proc = self.coordinator.as_ref().context("no coordinator")?;
        wait_until("refit-coordinator to answer /healthz", WAIT, async || {
            if let Some(status) = proc.exited() {
                bail!(
                    "refit-coordinator exited ({status}) before answering /healthz; log:\n{}",
                    proc.tail(60)
                );
            }
            let answered = http
                .get(&health)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            Ok(done_if(answered, (), || format!("log:\n{}", proc.tail(60))))
        })
        .await
    }

    fn coordinator(&self) -> Result<&Proc> {
        self.coordinator.as_ref().context("no coordinator")
    }

    /// Stops the coordinator with SIGTERM (expects exit code 0).
    async fn stop_coordinator(&mut self) -> Result<()> {
        if let Some(proc) = self.coordinator.take() {
            proc.stop().await?;
        }
        Ok(())
    }

    /// The id the `n`th worker (from 1) reports in its events.
    fn worker_id(&self, n: usize) -> String {
        format!("{}-w{n}", self.prefix)
    }

    /// Starts `n` more worker processes.
    fn start_workers(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            let number = self.workers.len() + 1;
            let mut command = Command::new(worker_binary()?);
            self.service_env(&mut command)?;
            command
                .env("REFIT__WORKER__ID", self.worker_id(number))
                .env("REFIT__WORKER__HEARTBEAT_SECS", "1")
                .env("REFIT__WORKER__RETRY_INITIAL_MS", "100")
                .env("REFIT__WORKER__RETRY_MAX_MS", "1000")
                .env("REFIT__WORKER__INTRA_THREADS", "1")
                .env("REFIT__WORKER__SHUTDOWN_DEADLINE_SECS", "20");
            let log = self.new_log(&format!("worker-{number}"));
            self.workers.push(Proc::spawn(
                &format!("refit-worker {number}"),
                command,
                log,
            )?);
        }
        Ok(())
    }

    /// Stops every worker with SIGTERM (expects exit code 0).
    async fn stop_workers(&mut self) -> Result<()> {
        for worker in &self.workers {
            worker.stop().await?;
        }
        Ok(())
    }

    /// Waits until `n` consumers are attached to the job queue (the workers are ready).
    async fn wait_consumers(&self, n: u64) -> Result<()> {
        let queue = self.job_queue();
        let what = format!("{n} workers to attach to {queue}");
        wait_until(&what, WAIT, async || {
            for worker in &self.workers {
                if let Some(status) = worker.exited() {
                    bail!(
                        "{} exited ({status}); log:\n{}",
                        worker.name,
                        worker.tail(60)
                    );
                }
            }
            let text = self.metrics().await?;
            let consumers = metric(&text, "refit_queue_consumers", &[("queue", &queue)]);
            Ok(done_if(consumers == Some(n as f64), (), || {
                format!("{consumers:?} consumers\n{}", self.logs_tail())
            }))
        })
        .await
    }

    /// The last lines of every log, for failure messages (never containing secrets, which
    /// [`Self::finish`] checks).
    fn logs_tail(&self) -> String {
        self.logs
            .iter()
            .map(|log| {
                format!(
                    "--- {} ---\n{}",
                    log.file_name().unwrap_or_default().to_string_lossy(),
                    tail(log, 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ---- HTTP -------------------------------------------------------------------------------

    /// A `/v1` call with the token; the status and the JSON body (`null` when there is none).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url()))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}: the coordinator does not answer"))?;
        let status = response.status();
        let text = response.text().await?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{method} {path} → {status}: not JSON: {text}"))?
        };
        Ok((status, value))
    }

    /// A `/v1` call that must answer `expected`.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        ensure!(
            status == expected,
            "{method} {path}: expected {expected}, got {status}: {value}"
        );
        Ok(value)
    }

    /// Uploads dataset bytes (`POST /v1/datasets`); its `{key, sha256}`.
    async fn upload(&self, bytes: Vec<u8>, ext: &str) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}/v1/datasets?ext={ext}", self.url()))
            .bearer_auth(&self.token)
            .body(bytes.clone())
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status == StatusCode::CREATED, "upload: {status}: {body}");
        ensure!(
            body["sha256"] == json!(sha256_hex(&bytes)),
            "upload: the sha256 is not that of the bytes: {body}"
        );
        Ok(body)
    }

    /// `POST /v1/jobs` that must be accepted; the job view.
    async fn submit(&self, request: Value) -> Result<Value> {
        let response = self
            .expect(Method::POST, "/v1/jobs", Some(request), StatusCode::CREATED)
            .await?;
        Ok(response["job"].clone())
    }

    /// `GET /v1/jobs/{id}`.
    async fn job(&self, id: &str) -> Result<Value> {
        self.expect(Method::GET, &format!("/v1/jobs/{id}"), None, StatusCode::OK)
            .await
    }

    /// Waits until the job reaches a final state; its view (with events).
    async fn wait_final(&self, id: &str) -> Result<Value> {
        self.wait_job(id, "a final state", |job| {
            ["succeeded", "failed", "cancelled", "dead"]
                .contains(&job["state"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Waits until the job is `succeeded`; its view.
    async fn wait_succeeded(&self, id: &str) -> Result<Value> {
        let job = self.wait_final(id).await?;
        ensure!(
            job["state"] == "succeeded",
            "job {id} ended {}: error {}; events {:?}\n{}",
            job["state"],
            job["error"],
            event_types(&job),
            self.logs_tail()
        );
        Ok(job)
    }

    /// Polls the job until `pred` holds; its view.
    async fn wait_job(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        wait_until(&format!("job {id} to reach {what}"), WAIT, async || {
            let job = self.job(id).await?;
            let seen = || {
                format!(
                    "state {}, events {:?}\n{}",
                    job["state"],
                    event_types(&job),
                    self.logs_tail()
                )
            };
            Ok(done_if(pred(&job), job.clone(), seen))
        })
        .await
    }

    /// `GET /metrics` (no token).
    async fn metrics(&self) -> Result<String> {
        let mut request = self.http.get(format!("{}/metrics", self.url()));
        if let Some(token) = &self.metrics_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .context("GET /metrics: the coordinator does not answer")?;
        ensure!(
            response.status() == StatusCode::OK,
            "/metrics: {}",
            response.status()
        );
        Ok(response.text().await?)
    }

    /// Polls `/metrics` until `pred` holds on it; the text.
    async fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        wait_until(&format!("/metrics to show {what}"), WAIT, async || {
            let text = self.metrics().await?;
            let seen = || {
                let ours: Vec<&str> = text.lines().filter(|l| l.starts_with("refit_")).collect();
                format!("{}\n{}", ours.join("\n"), self.logs_tail())
            };
            Ok(done_if(pred(&text), text.clone(), seen))
        })
        .await
    }

    // ---- data -------------------------------------------------------------------------------

    /// Writes `bytes` to a file in the stack's folder; its path.
    fn file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// Puts bytes at an object key (deleted at the end).
    async fn put_object(&mut self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store.put(key, Bytes::from(bytes)).await?;
        if !self.extra_keys.iter().any(|k| k == key) {
            self.extra_keys.push(key.to_owned());
        }
        Ok(())
    }

    // ---- the CLI ----------------------------------------------------------------------------

    /// Runs `refit <args>` against this stack (`REFIT_URL`, `REFIT_TOKEN`), in the stack's folder.
    async fn refit(&mut self, args: &[&str]) -> Result<CliRun> {
        let url = self.url();
        let token = self.token.clone();
        self.refit_with(args, &[("REFIT_URL", &url), ("REFIT_TOKEN", &token)])
            .await
    }

    /// Runs `refit <args>` with exactly the `REFIT_*` variables given.
    async fn refit_with(&mut self, args: &[&str], env: &[(&str, &str)]) -> Result<CliRun> {
        let mut command = tokio::process::Command::new(cli_binary()?);
        for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if name.starts_with("REFIT") {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            // No developer's ~/.config/refit/cli.toml.
            .env("XDG_CONFIG_HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(WAIT, command.output())
            .await
            .map_err(|_| anyhow!("refit {} did not finish within {WAIT:?}", args.join(" ")))?
            .with_context(|| format!("cannot run refit {}", args.join(" ")))?;
        let run = CliRun {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.cli_outputs.push(format!(
            "refit {}\n{}\n{}",
            args.join(" "),
            run.stdout,
            run.stderr
        ));
        Ok(run)
    }

    // ---- the end ----------------------------------------------------------------------------

    /// The secrets no log line may hold: (what, the text looked for).
    fn secrets(&self) -> Vec<(&'static str, String)> {
        let mut secrets = vec![
            ("the API token", self.token.clone()),
            ("the S3 secret key", self.s3_secret()),
            ("the AMQP password", self.amqp_secret.clone()),
        ];
        if let Some(token) = &self.metrics_token {
            secrets.push(("the metrics token", token.clone()));
        }
        secrets
    }

    /// Fails when a log (or the CLI's output) holds a secret; names the file and line number,
    /// never the secret.
    fn check_no_secrets(&self) -> Result<()> {
        let mut found = Vec::new();
        let mut lines_read = 0usize;
        for log in &self.logs {
            let text = std::fs::read_to_string(log)
                .with_context(|| format!("cannot read {}", log.display()))?;
            for (n, line) in text.lines().enumerate() {
                lines_read += 1;
                for (what, secret) in self.secrets() {
                    if !secret.is_empty() && line.contains(&secret) {
                        found.push(format!(
                            "{} line {}: {what}",
                            log.file_name().unwrap_or_default().to_string_lossy(),
                            n + 1
                        ));
                    }
                }
            }
        }
        for output in &self.cli_outputs {
            for (what, secret) in self.secrets() {
                if !secret.is_empty() && output.contains(&secret) {
                    let command = output.lines().next().unwrap_or_default();
                    found.push(format!("output of `{command}`: {what}"));
                }
            }
        }
        ensure!(found.is_empty(), "secrets in logs: {found:?}");
        ensure!(lines_read > 0, "no log lines were written at all");
        Ok(())
    }

    /// Stops the processes (SIGTERM, clean exit), checks the logs for secrets, and deletes the
    /// test's queues, exchanges and objects.
    async fn finish(mut self) -> Result<()> {
        let stopped = async {
            self.stop_workers().await?;
            self.stop_coordinator().await
        }
        .await;
        let clean = self.check_no_secrets();
        self.cleanup().await;
        stopped?;
        clean
    }

    async fn cleanup(&mut self) {
        let _ = async {
            let mut keys: Vec<String> = self
                .store
                .list(&format!("models/{}/", self.model))
                .await?
                .into_iter()
                .map(|m| m.key)
                .collect();
            keys.extend(self.extra_keys.iter().cloned());
            for key in keys {
                let _ = self.store.delete(&key).await;
            }
            crate::common::delete_topology(&self.broker).await;
            anyhow::Ok(())
        }
        .await;
        if let Some(user) = &self.amqp_user {
            user.delete(&self.http).await;
        }
        self.broker.close().await;
    }
}

// ---- helpers on JSON and metrics ------------------------------------------------------------

/// The `type`s of a job view's events, in order.
fn event_types(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How many events of `kind` a job view has.
fn count_events(job: &Value, kind: &str) -> usize {
    event_types(job).iter().filter(|t| *t == kind).count()
}

/// A dataset reference for a request body, from an upload's answer.
fn dataset(uploaded: &Value) -> Value {
    json!({ "key": uploaded["key"], "sha256": uploaded["sha256"] })
}

/// One sample of Prometheus text: the value of `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

/// Every sample of Prometheus text: name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => (name.to_owned(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.push((name, labels, value));
    }
    out
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.insert(name.trim().trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

// ---- training data --------------------------------------------------------------------------

/// Examples as JSONL bytes.
fn jsonl(examples: &[Example]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for example in examples {
        serde_json::to_writer(&mut bytes, example)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// Up to `per_intent` examples per intent of set2.yml whose labels all occur in `base`, so
/// `base + these` has the base's label set (a fine-tune), with new words.
fn set2_examples(base: &[Example], per_intent: usize) -> Result<Vec<Example>> {
    use std::collections::BTreeSet;
    let intents: BTreeSet<&str> = base.iter().map(|e| e.intent.as_str()).collect();
    let entity_labels = |e: &Example| -> Vec<String> {
        e.entities
            .iter()
            .map(|ent| {
                serde_json::to_string(&(&ent.entity, &ent.role, &ent.group)).unwrap_or_default()
            })
            .collect()
    };
    let known: BTreeSet<String> = base.iter().flat_map(entity_labels).collect();
    let data = load_file(&repo().join("examples/data/financial-demo/set2.yml"))?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for example in data.examples {
        if !intents.contains(example.intent.as_str())
            || !entity_labels(&example).iter().all(|l| known.contains(l))
        {
            continue;
        }
        let n = counts.entry(example.intent.clone()).or_default();
        if *n < per_intent {
            *n += 1;
            out.push(example);
        }
    }
    ensure!(
        !out.is_empty(),
        "set2.yml has no examples with set1's labels"
    );
    Ok(out)
}

/// The path of `promtool`: `$PROMTOOL`, else on `PATH`.
fn promtool() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "PROMTOOL={} does not exist: run deploy/promtool.sh and set PROMTOOL to the path it \
             prints (or unset PROMTOOL to use promtool on PATH)",
            path.display()
        );
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .context(
            "promtool is missing: run deploy/promtool.sh (it installs Debian's prometheus package), \
             or set PROMTOOL to its path",
        )
}

/// Runs `promtool check metrics` on Prometheus text.
fn promtool_check(text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(promtool()?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\non:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The Python with Playwright (`$REFIT_PYTHON`, else `<repo>/.venv/bin/python`).
fn python() -> Result<PathBuf> {
    let path = std::env::var_os("REFIT_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    ensure!(
        path.is_file(),
        "no Python with Playwright at {}: run deploy/python-peers.sh (and deploy/chromium.sh), or \
         set REFIT_PYTHON",
        path.display()
    );
    Ok(path)
}

/// Hex sha256 of a file's bytes.
fn file_sha256(path: &Path) -> Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// A content-addressed dataset key (for checks that nothing was stored).
fn dataset_key(bytes: &[u8], ext: &str) -> Result<String> {
    Ok(keys::dataset(&sha256_hex(bytes), ext)?)
}
