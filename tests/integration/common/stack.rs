//! [`Stack`]: a coordinator and its workers on one test's [`Cluster`], and how a test drives
//! them: the HTTP API, the CLI, `/metrics`, and the checks at the end (clean exits, no secret in
//! any log).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use refit_io::storage::ObjectStore;
use refit_proto::keys::sha256_hex;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::api::{event_types, free_port, metric, random_hex};
use super::broker_users::RoleUsers;
use super::cluster::{Cluster, ClusterOptions};
use super::proc::Proc;
use super::wait::{done_if, wait_until};
use super::{cli_binary, coordinator_binary, env_or, service_env, unique};

/// A guard against hangs (the machine may be busy with other tests), not a speed target.
pub const WAIT: Duration = Duration::from_secs(300);

/// Settings of a [`Stack`] beyond the defaults.
#[derive(Default)]
pub struct Options {
    /// `[[schedule]]` tables (or any TOML) for the coordinator's `--config` file.
    pub config_toml: Option<String>,
    /// A RabbitMQ user of its own (created through the management API, deleted at the end),
    /// with a random password, so that the password can be looked for in the logs.
    pub own_amqp_user: bool,
    /// Secrets from files rather than the environment.
    pub secrets_via_files: bool,
    /// A token of its own for `/metrics` (`coordinator.metrics_token`).
    pub metrics_token: bool,
    /// `coordinator.lease_secs` (the tests' default: [`LEASE_SECS`]).
    pub lease_secs: Option<u64>,
    /// `coordinator.max_failures` (else the coordinator's default).
    pub max_failures: Option<u32>,
    /// The cluster's own settings (another S3 server, the delivery limit).
    pub cluster: ClusterOptions,
    /// Least-privilege broker users from `deploy/rabbitmq.sh users`: the coordinator's for the
    /// coordinator, the worker's for the workers (deleted at the end).
    pub role_users: bool,
}

/// The lease the tests' coordinators grant unless a test says otherwise: short, so that a lapse
/// (a killed or frozen worker) is seen within seconds; the workers renew it with a heartbeat
/// every second.
pub const LEASE_SECS: u64 = 5;

/// A RabbitMQ user made for one test.
pub struct AmqpUser {
    pub management: String,
    pub admin: (String, String),
    pub name: String,
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
    pub async fn create(http: &reqwest::Client, amqp_url: &str, password: &str) -> Result<Self> {
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

    pub async fn delete(&self, http: &reqwest::Client) {
        let _ = http
            .delete(format!("{}/api/users/{}", self.management, self.name))
            .basic_auth(&self.admin.0, Some(&self.admin.1))
            .send()
            .await;
    }
}

/// What the `refit` CLI did.
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(self.stdout.trim()).with_context(|| {
            format!(
                "refit printed no JSON document on stdout (exit {}):\nstdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// One test's coordinator and workers on a [`Cluster`] (its names, services, folder and logs),
/// driven through the HTTP API and the CLI.
pub struct Stack {
    pub cluster: Cluster,
    /// The cluster's model name.
    pub model: String,
    pub token: String,
    /// `/metrics`' token, with [`Options::metrics_token`].
    pub metrics_token: Option<String>,
    pub port: u16,
    /// The AMQP password and the form it is looked for in logs.
    pub amqp_secret: String,
    pub http: reqwest::Client,
    pub options: Options,
    pub amqp_user: Option<AmqpUser>,
    /// The users of [`Options::role_users`].
    pub role_users: Option<RoleUsers>,
    pub coordinator: Option<Proc>,
    pub coordinator_runs: usize,
    /// Another job store than `<dir>/coordinator.db` (after a test swapped coordinators).
    pub database: Option<PathBuf>,
    pub workers: Vec<Proc>,
    /// What the CLI printed, checked for secrets too.
    pub cli_outputs: Vec<String>,
    /// Object keys (besides the model's) to delete at the end.
    pub extra_keys: Vec<String>,
}

impl Stack {
    pub async fn new(name: &str) -> Result<Self> {
        Self::with(name, Options::default()).await
    }

    /// Checks the services, makes the names; starts nothing yet.
    pub async fn with(name: &str, mut options: Options) -> Result<Self> {
        let cluster_options = std::mem::take(&mut options.cluster);
        let mut cluster = Cluster::start(name, cluster_options).await?;
        let test_url = cluster.amqp_url.clone();
        let parsed = url::Url::parse(&test_url).context("REFIT_TEST_AMQP_URL is not a URL")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        ensure!(
            !(options.role_users && (options.own_amqp_user || options.secrets_via_files)),
            "role_users goes with neither own_amqp_user nor secrets_via_files"
        );
        let role_users = if options.role_users {
            let users = RoleUsers::create(&cluster.prefix, &test_url)?;
            cluster.amqp_url = users.coordinator_url.clone();
            cluster.worker_amqp_url = Some(users.worker_url.clone());
            Some(users)
        } else {
            None
        };
        let (amqp_secret, amqp_user) = if options.own_amqp_user {
            let password = format!("amqp-{}", random_hex(16));
            let user = AmqpUser::create(&http, &test_url, &password).await?;
            let mut url = parsed.clone();
            url.set_username(&user.name)
                .map_err(|()| anyhow!("cannot set the AMQP user"))?;
            url.set_password(Some(&password))
                .map_err(|()| anyhow!("cannot set the AMQP password"))?;
            cluster.amqp_url = url.to_string();
            (password, Some(user))
        } else {
            // The broker's default guest/guest: "guest" is also the user name, so look for the
            // password where a leak would put it, in a URL's userinfo.
            let password = parsed.password().unwrap_or("guest").to_owned();
            (format!(":{password}@"), None)
        };
        Ok(Self {
            model: cluster.model.to_string(),
            cluster,
            token: random_hex(24),
            metrics_token: options.metrics_token.then(|| random_hex(24)),
            port: free_port()?,
            amqp_secret,
            http,
            options,
            amqp_user,
            role_users,
            coordinator: None,
            coordinator_runs: 0,
            database: None,
            workers: Vec::new(),
            cli_outputs: Vec::new(),
            extra_keys: Vec::new(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The coordinator's job store.
    pub fn database(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.cluster.dir.path().join("coordinator.db"))
    }

    pub fn job_queue(&self) -> String {
        self.cluster.broker.topology().job_queue()
    }

    pub fn s3_secret(&self) -> String {
        self.cluster
            .s3
            .secret_access_key
            .as_ref()
            .map(|s| s.expose().to_owned())
            .unwrap_or_default()
    }

    /// Writes a secret to a mode-600 file in the stack's folder; its path. The file is replaced
    /// atomically (written beside it, then renamed): a service started earlier may be reading it
    /// right now, and a plain rewrite would let it see the file truncated (empty).
    pub fn secret_file(&self, name: &str, value: &str) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.cluster.dir.path().join(name);
        let staging = self
            .cluster
            .dir
            .path()
            .join(format!(".{name}.{}", random_hex(8)));
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
    pub fn service_env(&self, command: &mut Command) -> Result<()> {
        let c = &self.cluster;
        service_env(command, &c.amqp_url, &c.prefix, &c.s3);
        c.failover_env(command);
        self.secrets_via_files(command)
    }

    /// With [`Options::secrets_via_files`], moves the AMQP password and the S3 secret key from
    /// the environment into files.
    pub fn secrets_via_files(&self, command: &mut Command) -> Result<()> {
        if self.options.secrets_via_files {
            let mut url = url::Url::parse(&self.cluster.amqp_url)?;
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

    /// Starts the coordinator with the stack's settings plus `extra` env, and waits until
    /// `/healthz` answers.
    pub async fn start_coordinator(&mut self, extra: &[(&str, &str)]) -> Result<()> {
        ensure!(self.coordinator.is_none(), "the coordinator already runs");
        let proc = self.spawn_coordinator(&self.database(), self.port, extra)?;
        self.coordinator = Some(proc);
        self.wait_healthy().await
    }

    /// Starts a coordinator process with the stack's settings, its job store at `database` and
    /// its API on `port`, without waiting for it (a second coordinator of the same deployment,
    /// which stands by while the first is active).
    pub fn spawn_coordinator(
        &mut self,
        database: &std::path::Path,
        port: u16,
        extra: &[(&str, &str)],
    ) -> Result<Proc> {
        let mut command = Command::new(coordinator_binary()?);
        self.service_env(&mut command)?;
        command
            .env("REFIT__COORDINATOR__LISTEN", format!("127.0.0.1:{port}"))
            .env("REFIT__COORDINATOR__DATABASE", database)
            .env("REFIT__COORDINATOR__OUTBOX_INTERVAL_MS", "250")
            .env("REFIT__COORDINATOR__SCHEDULER_TICK_SECS", "1")
            .env("REFIT__COORDINATOR__SHUTDOWN_DEADLINE_SECS", "5")
            .env(
                "REFIT__COORDINATOR__LEASE_SECS",
                self.options.lease_secs.unwrap_or(LEASE_SECS).to_string(),
            )
            .env(
                "REFIT__QUEUE__DELIVERY_LIMIT",
                self.cluster.broker.config().delivery_limit.to_string(),
            );
        if let Some(max) = self.options.max_failures {
            command.env("REFIT__COORDINATOR__MAX_FAILURES", max.to_string());
        }
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
            let path = self.cluster.dir.path().join("coordinator.toml");
            std::fs::write(&path, toml)?;
            command.arg("--config").arg(path);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        self.coordinator_runs += 1;
        let log = self
            .cluster
            .log(&format!("coordinator-{}", self.coordinator_runs));
        Proc::spawn(
            &format!("refit-coordinator {}", self.coordinator_runs),
            command,
            log,
        )
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&self) -> Result<()> {
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

    pub fn coordinator(&self) -> Result<&Proc> {
        self.coordinator.as_ref().context("no coordinator")
    }

    /// Stops the coordinator with SIGTERM (expects exit code 0).
    pub async fn stop_coordinator(&mut self) -> Result<()> {
        if let Some(proc) = self.coordinator.take() {
            proc.stop().await?;
        }
        Ok(())
    }

    /// The id the `n`th worker (from 1) reports in its events.
    pub fn worker_id(&self, n: usize) -> String {
        self.cluster.worker_id(n)
    }

    /// Starts `n` more worker processes.
    pub fn start_workers(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.start_worker(&[])?;
        }
        Ok(())
    }

    /// Starts one more worker with `extra` environment on top of the stack's settings; its
    /// index in [`Self::workers`].
    pub fn start_worker(&mut self, extra: &[(&str, &str)]) -> Result<usize> {
        self.start_worker_with(extra, &[])
    }

    /// [`Self::start_worker`] with command-line arguments too.
    pub fn start_worker_with(&mut self, extra: &[(&str, &str)], args: &[&str]) -> Result<usize> {
        let (mut command, name, log) = self.cluster.worker_command()?;
        self.secrets_via_files(&mut command)?;
        command.envs(extra.iter().copied()).args(args);
        self.workers.push(Proc::spawn(&name, command, log)?);
        Ok(self.workers.len() - 1)
    }

    /// Stops every worker with SIGTERM (expects exit code 0).
    pub async fn stop_workers(&mut self) -> Result<()> {
        for worker in &self.workers {
            worker.stop().await?;
        }
        Ok(())
    }

    /// Waits until `n` consumers are attached to the job queue (the workers are ready).
    pub async fn wait_consumers(&self, n: u64) -> Result<()> {
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
    pub fn logs_tail(&self) -> String {
        self.cluster.logs_tail()
    }

    // ---- HTTP -------------------------------------------------------------------------------

    /// A `/v1` call with the token; the status and the JSON body (`null` when there is none).
    pub async fn call(
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
    pub async fn expect(
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
    pub async fn upload(&self, bytes: Vec<u8>, ext: &str) -> Result<Value> {
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
    pub async fn submit(&self, request: Value) -> Result<Value> {
        let response = self
            .expect(Method::POST, "/v1/jobs", Some(request), StatusCode::CREATED)
            .await?;
        Ok(response["job"].clone())
    }

    /// `GET /v1/jobs/{id}`, with all its events (read a page at a time).
    pub async fn job(&self, id: &str) -> Result<Value> {
        let path = format!("/v1/jobs/{id}");
        let mut job = self
            .expect(Method::GET, &path, None, StatusCode::OK)
            .await?;
        while job["more_events"] == true {
            let after = job["events"]
                .as_array()
                .and_then(|events| events.last())
                .and_then(|event| event["seq"].as_i64())
                .context("a page with more events after it ends without a seq")?;
            let page = self
                .expect(
                    Method::GET,
                    &format!("{path}?events_after={after}"),
                    None,
                    StatusCode::OK,
                )
                .await?;
            if let (Some(all), Some(more)) =
                (job["events"].as_array_mut(), page["events"].as_array())
            {
                all.extend(more.iter().cloned());
            }
            job["more_events"] = page["more_events"].clone();
        }
        Ok(job)
    }

    /// Waits until the job reaches a final state; its view (with events).
    pub async fn wait_final(&self, id: &str) -> Result<Value> {
        self.wait_job(id, "a final state", |job| {
            ["succeeded", "failed", "cancelled", "dead"]
                .contains(&job["state"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Waits until the job is `succeeded`; its view.
    pub async fn wait_succeeded(&self, id: &str) -> Result<Value> {
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
    pub async fn wait_job(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
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
    pub async fn metrics(&self) -> Result<String> {
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
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
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
    pub fn file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.cluster.dir.path().join(name);
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// Puts bytes at an object key (deleted at the end).
    pub async fn put_object(&mut self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.cluster.store.put(key, Bytes::from(bytes)).await?;
        if !self.extra_keys.iter().any(|k| k == key) {
            self.extra_keys.push(key.to_owned());
        }
        Ok(())
    }

    // ---- the CLI ----------------------------------------------------------------------------

    /// Runs `refit <args>` against this stack (`REFIT_URL`, `REFIT_TOKEN`), in the stack's folder.
    pub async fn refit(&mut self, args: &[&str]) -> Result<CliRun> {
        let url = self.url();
        let token = self.token.clone();
        self.refit_with(args, &[("REFIT_URL", &url), ("REFIT_TOKEN", &token)])
            .await
    }

    /// Runs `refit <args>` with exactly the `REFIT_*` variables given.
    pub async fn refit_with(&mut self, args: &[&str], env: &[(&str, &str)]) -> Result<CliRun> {
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
            .env("XDG_CONFIG_HOME", self.cluster.dir.path())
            .current_dir(self.cluster.dir.path())
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
    pub fn secrets(&self) -> Vec<(&'static str, String)> {
        let mut secrets = vec![
            ("the API token", self.token.clone()),
            ("the S3 secret key", self.s3_secret()),
            ("the AMQP password", self.amqp_secret.clone()),
        ];
        if let Some(token) = &self.metrics_token {
            secrets.push(("the metrics token", token.clone()));
        }
        if let Some(users) = &self.role_users {
            secrets.push((
                "the coordinator user's AMQP password",
                users.passwords[0].clone(),
            ));
            secrets.push((
                "the worker user's AMQP password",
                users.passwords[1].clone(),
            ));
        }
        secrets
    }

    /// Fails when a log (or the CLI's output) holds a secret; names the file and line number,
    /// never the secret.
    pub fn check_no_secrets(&self) -> Result<()> {
        let mut found = Vec::new();
        let mut lines_read = 0usize;
        for log in self.cluster.logs() {
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
    pub async fn finish(mut self) -> Result<()> {
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

    pub async fn cleanup(&mut self) {
        self.cluster.cleanup(&self.extra_keys).await;
        if let Some(user) = &self.amqp_user {
            user.delete(&self.http).await;
        }
        if let Some(users) = &self.role_users {
            users.delete();
        }
    }
}
