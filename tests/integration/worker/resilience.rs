//! The worker against a world that breaks while a job runs:
//!
//! - a private Garage (own data directory and ports, started with `deploy/s3-server.sh`) stopped
//!   for 20 s mid-job: the worker rides it out within its attempt (retrying S3, heartbeats going
//!   on through RabbitMQ, so its lease holds);
//! - the worker's own RabbitMQ connection force-closed with `rabbitmqctl close_connection`
//!   (found by its client-provided name, `refit <prefix>/<pool> (pid <pid>)`; never the other
//!   tests' connections): it reconnects, reads its answers from a new inbox, and the same attempt
//!   goes on under its lease.
//!
//! Each waits on events, not sleeps, except for the outage itself.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, Utc};
use refit_io::storage::S3Config;
use serde_json::{Value, json};

use crate::common::cluster::ClusterOptions;
use crate::common::jobs::{EVERY_EPOCH, check_committed, events, started_from};
use crate::common::stack::{Options, Stack};
use crate::common::{credentials_in, env_or, examples, repo};

/// How long the S3 server stays away.
const OUTAGE: Duration = Duration::from_secs(20);

/// `n` distinct ports free on loopback right now (bound together, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// A Garage of this test's own: data in a temporary directory, S3/RPC/admin on free ports. It is
/// stopped (and its directory removed) on drop. The shared server on 3900 is never touched.
struct PrivateGarage {
    dir: tempfile::TempDir,
    s3_port: u16,
    rpc_port: u16,
    admin_port: u16,
}

impl PrivateGarage {
    async fn start() -> Result<Self> {
        let [s3_port, rpc_port, admin_port] = free_ports::<3>()?;
        let garage = Self {
            dir: tempfile::Builder::new().prefix("refit-garage-").tempdir()?,
            s3_port,
            rpc_port,
            admin_port,
        };
        garage.script("start").await?;
        Ok(garage)
    }

    fn command(&self, arg: &str) -> Command {
        let mut command = Command::new(repo().join("deploy/s3-server.sh"));
        command
            .arg(arg)
            .env("REFIT_GARAGE_DIR", self.dir.path())
            .env("REFIT_GARAGE_S3_PORT", self.s3_port.to_string())
            .env("REFIT_GARAGE_RPC_PORT", self.rpc_port.to_string())
            .env("REFIT_GARAGE_ADMIN_PORT", self.admin_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `deploy/s3-server.sh <arg>` for this instance (off the async threads).
    async fn script(&self, arg: &str) -> Result<()> {
        let mut command = self.command(arg);
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        ensure!(
            output.status.success(),
            "deploy/s3-server.sh {arg} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    fn s3_config(&self) -> Result<S3Config> {
        let env = credentials_in(self.dir.path());
        let get = |name: &str| {
            env.get(&format!("REFIT_S3_{name}"))
                .cloned()
                .with_context(|| format!("no REFIT_S3_{name} in the private garage's credentials"))
        };
        let mut config = S3Config::for_test(
            &get("ENDPOINT")?,
            &get("ACCESS_KEY_ID")?,
            &get("SECRET_ACCESS_KEY")?,
        );
        config.region = get("REGION")?;
        config.bucket = get("BUCKET")?;
        Ok(config)
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

/// How many events of `kind` the job view has.
fn count(job: &Value, kind: &str) -> usize {
    events(job).iter().filter(|e| e["type"] == kind).count()
}

/// When the coordinator received an event.
fn received(event: &Value) -> Option<DateTime<Utc>> {
    event["received_at"].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_out_a_20s_s3_outage() -> Result<()> {
    let garage = PrivateGarage::start().await?;
    let mut stack = Stack::with(
        "ws3down",
        Options {
            cluster: ClusterOptions {
                s3: Some(garage.s3_config()?),
                ..ClusterOptions::default()
            },
            ..Options::default()
        },
    )
    .await?;
    stack.start_coordinator(&[]).await?;
    // The test settings retry every ≤ 1 s; 60 tries ride out 20 s (plus Garage's restart) within
    // the job's attempt, with no hand-back.
    stack.start_worker(&[EVERY_EPOCH, ("REFIT__WORKER__RETRY_ATTEMPTS", "60")])?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, 120, json!({})).await?;
    stack.wait_checkpoint(&id, 2.0).await?;

    garage.script("stop").await?;
    let down_at = Utc::now();
    ensure!(
        stack.job(&id).await?["state"] == "running",
        "the job finished before the S3 server stopped: make it longer"
    );
    tokio::time::sleep(OUTAGE).await;
    ensure!(
        stack.workers[0].running(),
        "the worker exited during the outage; log:\n{}",
        stack.workers[0].log_text()
    );
    let up_at = Utc::now();
    garage.script("start").await?;

    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    let log = stack.workers[0].log_text();
    ensure!(
        count(&job, "started") == 1 && count(&job, "failed") == 0,
        "the job was handed back or failed instead of riding out the outage: {:?}",
        crate::common::api::event_types(&job)
    );
    // The worker did meet the outage, and kept its heartbeats (RabbitMQ only) going through it.
    ensure!(
        log.contains("failed; retrying"),
        "no retried S3 operation: was the outage missed? log:\n{log}"
    );
    let beats = events(&job)
        .iter()
        .filter(|e| e["type"] == "heartbeat")
        .filter_map(received)
        .filter(|at| *at > down_at && *at < up_at)
        .count();
    ensure!(
        beats >= 10,
        "{beats} heartbeats during the {OUTAGE:?} outage"
    );
    check_committed(&stack, &job).await?;
    ensure!(stack.versions().await? == [1]);
    eprintln!(
        "s3 outage: {} retried operations, {beats} heartbeats during the outage, {} checkpoints",
        log.matches("failed; retrying").count(),
        count(&job, "checkpointed")
    );
    stack.finish().await?;
    drop(garage);
    Ok(())
}

/// Force-closes the RabbitMQ connections of the process `pid` whose client-provided name has
/// `prefix` (`refit <prefix>/<pool> (pid <pid>)`, set by `Broker`); how many it closed.
async fn close_connections_of(prefix: &str, pid: u32) -> Result<usize> {
    let ctl = env_or("REFIT_TEST_RABBITMQCTL", "rabbitmqctl");
    let output = tokio::process::Command::new(&ctl)
        .args([
            "list_connections",
            "--no-table-headers",
            "-q",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .with_context(|| format!("cannot run {ctl} (set REFIT_TEST_RABBITMQCTL)"))?;
    ensure!(
        output.status.success(),
        "{ctl} list_connections failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let needle = format!("refit {prefix}/");
    let pid_needle = format!("(pid {pid})");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if !(line.contains(&needle) && line.contains(&pid_needle)) {
            continue;
        }
        let connection = line.split('\t').next().unwrap_or_default().trim();
        let status = tokio::process::Command::new(&ctl)
            .args(["close_connection", connection, "refit test: forced close"])
            .status()
            .await?;
        ensure!(
            status.success(),
            "{ctl} close_connection {connection} failed"
        );
        closed += 1;
    }
    Ok(closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_its_connection_is_force_closed() -> Result<()> {
    let mut stack = Stack::new("wreconnect").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_worker(&[EVERY_EPOCH])?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, 60, json!({})).await?;
    stack.wait_checkpoint(&id, 2.0).await?;
    let pid = stack.workers[0].pid().context("the worker exited")?;
    let closed = close_connections_of(&stack.cluster.prefix, pid).await?;
    ensure!(closed == 1, "closed {closed} connections of pid {pid}");
    ensure!(
        stack.job(&id).await?["state"] == "running",
        "the job finished before the connection was closed: make it longer"
    );

    let job = stack.wait_succeeded(&id).await?;
    let log = stack.workers[0].log_text();
    ensure!(
        log.contains("reconnected to rabbitmq"),
        "no reconnection in the log:\n{log}"
    );
    // The same attempt went on under its lease: one start, from scratch, no hand-back.
    let starts = started_from(&job);
    ensure!(
        starts == [None] && count(&job, "released") == 0 && job["failures"] == 0,
        "started events: {starts:?}, failures {}; log:\n{log}",
        job["failures"]
    );
    check_committed(&stack, &job).await?;
    ensure!(stack.versions().await? == [1]);
    stack.finish().await
}
