//! The worker against a world that breaks while a job runs:
//!
//! - a private Garage (own data directory and ports, started with `deploy/s3-server.sh`) stopped
//!   for 20 s mid-job: the worker rides it out within its attempt (retrying S3, heartbeats going
//!   on through RabbitMQ, so its lease holds);
//! - the same for five minutes under a backlog of 20 jobs and two workers (issue 14): no job
//!   taken while S3 is away, a running job trains on, every job succeeds;
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
use crate::common::proc::run_script;
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
pub(crate) struct PrivateGarage {
    dir: tempfile::TempDir,
    s3_port: u16,
    rpc_port: u16,
    admin_port: u16,
}

impl PrivateGarage {
    /// A stack named `name` whose store is this Garage, its coordinator started.
    pub(crate) async fn stack(&self, name: &str) -> Result<Stack> {
        let mut stack = Stack::with(
            name,
            Options {
                cluster: ClusterOptions {
                    s3: Some(self.s3_config()?),
                    ..ClusterOptions::default()
                },
                ..Options::default()
            },
        )
        .await?;
        stack.start_coordinator(&[]).await?;
        Ok(stack)
    }

    pub(crate) async fn start() -> Result<Self> {
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
    pub(crate) async fn script(&self, arg: &str) -> Result<()> {
        run_script(self.command(arg), &format!("deploy/s3-server.sh {arg}")).await?;
        Ok(())
    }

    pub(crate) fn s3_config(&self) -> Result<S3Config> {
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
    let mut stack = garage.stack("ws3down").await?;
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

/// How long [`twenty_jobs_and_two_workers_ride_out_s3_down_for_five_minutes`] keeps S3 away:
/// `REFIT_TEST_S3_OUTAGE_SECS`, 300 unless set (shorter only to try the test quickly).
fn long_outage() -> Duration {
    Duration::from_secs(
        env_or("REFIT_TEST_S3_OUTAGE_SECS", "300")
            .parse()
            .unwrap_or(300),
    )
}

/// The events of `jobs` of `kind` the coordinator received between `from` and `to`.
fn received_between<'a>(
    jobs: &'a [Value],
    kind: &'a str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> impl Iterator<Item = Value> + 'a {
    jobs.iter()
        .flat_map(events)
        .filter(move |e| e["type"] == kind)
        .filter(move |e| received(e).is_some_and(|at| at > from && at < to))
}

/// S3 (connections refused) away for five minutes under a backlog: 20 jobs, two workers. One
/// worker trains a long job (slowed steps) through the whole outage; the other takes the short
/// jobs. While S3 is away no job is taken (no claim after the first seconds, which is how long
/// a worker may take to notice), the long job's progress goes on and its heartbeats name the
/// resume-checkpoint upload that fails; afterwards every job succeeds without a failure, a
/// hand-back or a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_and_two_workers_ride_out_s3_down_for_five_minutes() -> Result<()> {
    const SHORT_JOBS: usize = 19;
    /// The long job's step delay, and how long a worker may go on before it sees the outage
    /// (a claim it checked S3 for just before the stop).
    const STEP_MS: u64 = 200;
    const NOTICE: Duration = Duration::from_secs(15);
    let outage = long_outage();
    let garage = PrivateGarage::start().await?;
    let mut stack = garage.stack("ws3long").await?;
    // The long job: 2 steps an epoch of STEP_MS each, lasting the outage and 100 s more; a
    // resume checkpoint every 5 s.
    let slow = format!("slow-step={STEP_MS}");
    let checkpoints = [
        ("REFIT__WORKER__RESUME_EVERY_EPOCHS", "0"),
        ("REFIT__WORKER__RESUME_EVERY_SECS", "5"),
    ];
    let mut env = checkpoints.to_vec();
    env.push(("REFIT_FAULT", &slow));
    stack.start_worker(&env)?;
    let mut data = examples(8)?;
    data.truncate(64);
    let data = stack.upload_examples(&data).await?;
    let epochs = u32::try_from((outage.as_millis() as u64 + 100_000) / (2 * STEP_MS))?;
    let long = stack.submit_scratch(&data, epochs, json!({})).await?;
    stack.wait_checkpoint(&long, 1.0).await?;
    stack.start_worker(&checkpoints)?;
    let mut ids = vec![long.clone()];
    for _ in 0..SHORT_JOBS {
        ids.push(stack.submit_scratch(&data, 3, json!({})).await?);
    }
    // Some short jobs done: the second worker is in the middle of the backlog.
    stack.wait_succeeded(&ids[2]).await?;

    garage.script("stop").await?;
    let down_at = Utc::now();
    tokio::time::sleep(outage).await;
    stack.check_workers_running("during the outage")?;
    let up_at = Utc::now();
    garage.script("start").await?;

    let jobs = stack.all_succeeded(&ids).await?;
    let long_job = stack.settled(&long).await?;
    for job in &jobs {
        ensure!(
            count(job, "failed") == 0 && count(job, "released") == 0,
            "job {} ended {} with {:?}",
            job["id"],
            job["state"],
            crate::common::api::event_types(job)
        );
    }
    let claims_while_down = received_between(&jobs, "claim", (down_at + NOTICE, up_at)).count();
    ensure!(
        claims_while_down == 0,
        "{claims_while_down} claims while S3 was away"
    );
    ensure!(
        count(&long_job, "started") == 1,
        "the long job started more than once: {:?}",
        crate::common::api::event_types(&long_job)
    );
    let window = (down_at + NOTICE, up_at);
    let progress = received_between(std::slice::from_ref(&long_job), "progress", window).count();
    let beats: Vec<Value> =
        received_between(std::slice::from_ref(&long_job), "heartbeat", window).collect();
    let naming_upload = beats
        .iter()
        .filter(|e| {
            e["body"]["trouble"]
                .as_str()
                .is_some_and(|t| t.contains("resume checkpoint") && t.contains("S3 unreachable"))
        })
        .count();
    let quiet = outage.saturating_sub(NOTICE).as_secs();
    ensure!(
        progress as u64 >= quiet / 2,
        "{progress} progress events of the long job in the {quiet} s of the outage"
    );
    ensure!(
        naming_upload as u64 >= quiet / 2,
        "{naming_upload} of {} heartbeats during the outage name the failing upload; e.g. {:?}",
        beats.len(),
        beats.last()
    );
    let later = (up_at, Utc::now());
    ensure!(
        received_between(std::slice::from_ref(&long_job), "checkpointed", later).count() >= 1,
        "no resume checkpoint once S3 was back"
    );
    check_committed(&stack, &long_job).await?;
    eprintln!(
        "s3 down {outage:?}: {progress} progress events and {naming_upload} heartbeats naming \
         the upload during it; {} checkpoints of the long job",
        count(&long_job, "checkpointed")
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
