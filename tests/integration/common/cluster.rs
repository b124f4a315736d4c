//! [`Cluster`]: the one cluster type of the end-to-end tests: one test's slice of the real
//! services and the service processes it starts.
//!
//! A test gets its own queue prefix (so every queue and exchange it touches is its own), its own
//! model name, a connection to the broker, a store on the S3 server, and a folder for its files
//! and the logs of the processes it starts. Workers claim their jobs from a coordinator, so every
//! end-to-end test runs a cluster through a `common::stack::Stack` (a coordinator on top of it);
//! the workers are started here, with the same settings everywhere.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::Result;
use refit_io::queue::{Broker, QueueConfig};
use refit_io::registry::Registry;
use refit_io::storage::{ObjectStore, S3Config, S3Store};
use refit_proto::{ModelName, keys};

use super::proc::{Proc, tail};
use super::{
    amqp_url, connect_broker, delete_topology, s3_config, s3_store, service_env, unique,
    worker_binary,
};

/// What a cluster is started with beyond the defaults.
#[derive(Default)]
pub struct ClusterOptions {
    /// Another S3 server than the shared one (a test's private Garage).
    pub s3: Option<S3Config>,
    /// Another broker than the shared one (a test's private RabbitMQ node or cluster).
    pub amqp_url: Option<String>,
    /// The other nodes of that broker's cluster (`queue.failover_hosts`), for the test's own
    /// connection and every service.
    pub failover_hosts: Vec<String>,
    /// The job queue's delivery limit (the workers get the same, or declaring the queue would
    /// fail).
    pub delivery_limit: Option<u32>,
}

/// One test's names, service connections, folder and logs.
pub struct Cluster {
    /// The queue prefix: `<prefix>.jobs.<pool>`, `<prefix>.events`, …
    pub prefix: String,
    /// The model the test trains.
    pub model: ModelName,
    /// The broker URL the services get (a test may swap in a user of its own).
    pub amqp_url: String,
    /// The broker URL the workers get instead, when a test gives them a user of their own.
    pub worker_amqp_url: Option<String>,
    /// `queue.failover_hosts` of the test's connection and every service.
    pub failover_hosts: Vec<String>,
    /// The S3 server's settings.
    pub s3: S3Config,
    /// The store on it.
    pub store: S3Store,
    /// The test's own broker connection.
    pub broker: Broker,
    /// Files and logs.
    pub dir: tempfile::TempDir,
    /// Every log file of every process started.
    logs: Vec<PathBuf>,
    /// Workers started so far (they are numbered from 1).
    workers_started: usize,
}

impl Cluster {
    /// Checks the services (failing with how to start one that is missing) and makes the names;
    /// starts nothing.
    pub async fn start(name: &str, options: ClusterOptions) -> Result<Self> {
        let prefix = unique(name);
        let amqp_url = options.amqp_url.unwrap_or_else(amqp_url);
        let mut config = QueueConfig::for_test(&amqp_url, &prefix);
        if let Some(limit) = options.delivery_limit {
            config.delivery_limit = limit;
        }
        config.failover_hosts = options.failover_hosts.clone();
        let broker = connect_broker(&config).await?;
        let s3 = match options.s3 {
            Some(s3) => s3,
            None => s3_config()?,
        };
        let store = s3_store(&s3).await?;
        let model = ModelName::new(unique("m").to_lowercase().replace(['_', '.'], "-"))?;
        Ok(Self {
            prefix,
            model,
            amqp_url,
            worker_amqp_url: None,
            failover_hosts: options.failover_hosts,
            s3,
            store,
            broker,
            dir: tempfile::tempdir()?,
            logs: Vec::new(),
            workers_started: 0,
        })
    }

    /// `REFIT__QUEUE__FAILOVER_HOSTS` for a service, when the broker is a cluster.
    pub fn failover_env(&self, command: &mut Command) {
        if !self.failover_hosts.is_empty() {
            command.env(
                "REFIT__QUEUE__FAILOVER_HOSTS",
                self.failover_hosts.join(","),
            );
        }
    }

    /// The registry in the test's store.
    pub fn registry(&self) -> Registry {
        Registry::new(Arc::new(self.store.clone()))
    }

    /// A new log file `<name>.log` in the test's folder, remembered for [`Self::logs_tail`].
    pub fn log(&mut self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.log"));
        self.logs.push(path.clone());
        path
    }

    /// Every log file so far.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// The last lines of every log, for failure messages.
    pub fn logs_tail(&self) -> String {
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

    /// The id the `n`th worker (from 1) reports in its events.
    pub fn worker_id(&self, n: usize) -> String {
        format!("{}-w{n}", self.prefix)
    }

    /// The next worker's command (the test's services, quick heartbeats and retries, one thread),
    /// its name and its log; [`Self::start_worker`] runs it as it is.
    pub fn worker_command(&mut self) -> Result<(Command, String, PathBuf)> {
        self.workers_started += 1;
        let n = self.workers_started;
        let mut command = Command::new(worker_binary()?);
        let url = self.worker_amqp_url.as_deref().unwrap_or(&self.amqp_url);
        service_env(&mut command, url, &self.prefix, &self.s3);
        self.failover_env(&mut command);
        command
            .env(
                "REFIT__QUEUE__DELIVERY_LIMIT",
                self.broker.config().delivery_limit.to_string(),
            )
            .env("REFIT__WORKER__ID", self.worker_id(n))
            .env("REFIT__WORKER__HEARTBEAT_SECS", "1")
            .env("REFIT__WORKER__RETRY_INITIAL_MS", "100")
            .env("REFIT__WORKER__RETRY_MAX_MS", "1000")
            .env("REFIT__WORKER__INTRA_THREADS", "1")
            .env("REFIT__WORKER__SHUTDOWN_DEADLINE_SECS", "20");
        let log = self.log(&format!("worker-{n}"));
        Ok((command, format!("refit-worker {n}"), log))
    }

    /// Starts a worker with the test's settings plus `extra` environment.
    pub fn start_worker(&mut self, extra: &[(&str, &str)]) -> Result<Proc> {
        let (mut command, name, log) = self.worker_command()?;
        command.envs(extra.iter().copied());
        Proc::spawn(&name, command, log)
    }

    /// Deletes the model's objects and `extra_keys`, the test's queues and exchanges, and closes
    /// the connection; errors are ignored, as in any cleanup.
    pub async fn cleanup(&self, extra_keys: &[String]) {
        let _ = async {
            let mut keys: Vec<String> = self
                .store
                .list(&keys::model_prefix(&self.model))
                .await?
                .into_iter()
                .map(|m| m.key)
                .collect();
            keys.extend(extra_keys.iter().cloned());
            for key in keys {
                let _ = self.store.delete(&key).await;
            }
            anyhow::Ok(())
        }
        .await;
        delete_topology(&self.broker).await;
        self.broker.close().await;
    }
}
