//! The worker against a world that breaks while a job runs (issue 4, "done when" 2, 5 and 6):
//!
//! - a private Garage (own data directory and ports, started with `deploy/s3-server.sh`) stopped
//!   for 20 s mid-job;
//! - the worker's own RabbitMQ connection force-closed with `rabbitmqctl close_connection`
//!   (found by its client-provided name, `refit <prefix>/<pool> (pid <pid>)`; never the other
//!   tests' connections);
//! - `kill -9` of the worker at ten random moments (seeded), a new worker each time.
//!
//! Each waits on events, not sleeps, except for the outage itself.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::common::wait::wait_until_every;

/// A resume checkpoint every epoch.
const EVERY_EPOCH: (&str, &str) = ("REFIT__WORKER__RESUME_EVERY_EPOCHS", "1");

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

fn count(events: &[Event], pred: impl Fn(&EventKind) -> bool) -> usize {
    events.iter().filter(|e| pred(&e.kind)).count()
}

fn succeeded(events: &[Event]) -> usize {
    count(events, |k| matches!(k, EventKind::Succeeded { .. }))
}

fn failed(events: &[Event]) -> usize {
    count(events, |k| matches!(k, EventKind::Failed { .. }))
}

/// The epoch of the latest `checkpointed` event.
fn last_checkpoint(events: &[Event]) -> Option<f64> {
    events.iter().rev().find_map(|e| match e.kind {
        EventKind::Checkpointed { epoch, .. } => Some(epoch),
        _ => None,
    })
}

/// Waits a moment for late events (a duplicate `succeeded` would come right after the first),
/// then returns the job's events.
async fn settle(cluster: &WorkerTest, job: JobId) -> Vec<Event> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.events_of(job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_out_a_20s_s3_outage() -> Result<()> {
    let garage = PrivateGarage::start().await?;
    let mut cluster = WorkerTest::start_with(
        "s3down",
        ClusterOptions {
            s3: Some(garage.s3_config()?),
            ..ClusterOptions::default()
        },
    )
    .await?;
    // The test settings retry every ≤ 1 s; 60 tries ride out 20 s (plus Garage's restart) within
    // the job's attempt, with no requeue.
    let worker = cluster.start_worker(&[EVERY_EPOCH, ("REFIT__WORKER__RETRY_ATTEMPTS", "60")])?;
    let data = cluster.dataset(&examples(8)?).await?;
    let job = cluster.job(1, None, data, Budget::Epochs(120));
    cluster.publisher.publish_job(&job).await?;
    cluster
        .wait_event(
            job.id,
            "checkpointed",
            |k| matches!(k, EventKind::Checkpointed { epoch, .. } if *epoch >= 2.0),
        )
        .await
        .with_context(|| worker.log_text())?;

    garage.script("stop").await?;
    let down_at = Utc::now();
    ensure!(
        succeeded(&cluster.events_of(job.id)) == 0,
        "the job finished before the S3 server stopped: make it longer"
    );
    tokio::time::sleep(OUTAGE).await;
    ensure!(
        worker.running(),
        "the worker exited during the outage; log:\n{}",
        worker.log_text()
    );
    let up_at = Utc::now();
    garage.script("start").await?;

    cluster
        .wait_final(job.id)
        .await
        .with_context(|| worker.log_text())?;
    let events = settle(&cluster, job.id).await;
    let log = worker.log_text();
    let kinds = names(&events);
    ensure!(
        succeeded(&events) == 1 && failed(&events) == 0,
        "expected one succeeded and no failed: {kinds:?}; log:\n{log}"
    );
    ensure!(
        count(&events, |k| matches!(k, EventKind::Started { .. })) == 1,
        "the job was handed back instead of riding out the outage: {kinds:?}; log:\n{log}"
    );
    // The worker did meet the outage, and kept its heartbeats (RabbitMQ only) going through it.
    ensure!(
        log.contains("failed; retrying"),
        "no retried S3 operation: was the outage missed? log:\n{log}"
    );
    let beats = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Heartbeat { .. }))
        .filter(|e| e.at > down_at && e.at < up_at)
        .count();
    ensure!(
        beats >= 10,
        "{beats} heartbeats during the {OUTAGE:?} outage"
    );
    check_version(&cluster, 1).await?;
    ensure!(cluster.versions().await? == vec![Version::first()]);
    eprintln!(
        "s3 outage: {} retried operations, {beats} heartbeats during the outage, {} checkpoints",
        log.matches("failed; retrying").count(),
        count(&events, |k| matches!(k, EventKind::Checkpointed { .. }))
    );
    drop(worker);
    cluster.cleanup().await;
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
    let mut cluster = WorkerTest::start("reconnect").await?;
    let worker = cluster.start_worker(&[EVERY_EPOCH])?;
    let data = cluster.dataset(&examples(8)?).await?;
    let job = cluster.job(1, None, data, Budget::Epochs(60));
    cluster.publisher.publish_job(&job).await?;
    cluster
        .wait_event(
            job.id,
            "checkpointed",
            |k| matches!(k, EventKind::Checkpointed { epoch, .. } if *epoch >= 2.0),
        )
        .await
        .with_context(|| worker.log_text())?;
    let pid = worker.pid().context("the worker exited")?;
    let closed = close_connections_of(&cluster.prefix, pid).await?;
    ensure!(closed == 1, "closed {closed} connections of pid {pid}");
    ensure!(
        succeeded(&cluster.events_of(job.id)) == 0,
        "the job finished before the connection was closed: make it longer"
    );

    cluster
        .wait_final(job.id)
        .await
        .with_context(|| worker.log_text())?;
    let events = settle(&cluster, job.id).await;
    let log = worker.log_text();
    let kinds = names(&events);
    ensure!(
        succeeded(&events) == 1 && failed(&events) == 0,
        "expected one succeeded and no failed: {kinds:?}; log:\n{log}"
    );
    ensure!(
        log.contains("reconnected to rabbitmq"),
        "no reconnection in the log:\n{log}"
    );
    // A second attempt (the broker's redelivery) may only resume, never start over.
    let starts = started_from(&events);
    ensure!(
        starts.first() == Some(&None) && starts[1..].iter().all(|s| s.is_some_and(|e| e > 0.0)),
        "started events: {starts:?}; log:\n{log}"
    );
    check_version(&cluster, 1).await?;
    ensure!(cluster.versions().await? == vec![Version::first()]);
    drop(worker);
    cluster.cleanup().await;
    Ok(())
}

/// Kill points: how many, the job's epochs, and the longest extra wait past a kill point's epoch
/// (so the kill lands anywhere in an epoch: training, a checkpoint upload, an event).
const KILLS: usize = 10;
const KILL_EPOCHS: u32 = 120;
const KILL_JITTER: Duration = Duration::from_millis(250);

/// The furthest epoch an attempt of `worker_id` reported (progress or checkpointed).
fn reached_epoch(events: &[Event], worker_id: &str) -> Option<f64> {
    events
        .iter()
        .filter(|e| e.worker_id.as_str() == worker_id)
        .filter_map(|e| match e.kind {
            EventKind::Progress { epoch, .. } | EventKind::Checkpointed { epoch, .. } => {
                Some(epoch)
            }
            _ => None,
        })
        .reduce(f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_at_ten_random_points_resumes_and_stores_one_version() -> Result<()> {
    let seed: u64 = env_or("REFIT_TEST_KILL_SEED", "1")
        .parse()
        .context("REFIT_TEST_KILL_SEED")?;
    let mut rng = StdRng::seed_from_u64(seed);
    // Kill points spread over the training: random epochs (sorted), each plus a random delay.
    let mut points: Vec<(f64, Duration)> = (0..KILLS)
        .map(|_| {
            (
                rng.random_range(0.0..f64::from(KILL_EPOCHS - 10)),
                rng.random_range(Duration::ZERO..KILL_JITTER),
            )
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Eleven deliveries of one job: above the default delivery limit (5), which would
    // dead-letter it as a poison message, by design.
    let mut cluster = WorkerTest::start_with(
        "kill10",
        ClusterOptions {
            delivery_limit: Some(30),
            ..ClusterOptions::default()
        },
    )
    .await?;
    let data = cluster.dataset(&examples(8)?).await?;
    let job = cluster.job(1, None, data, Budget::Epochs(KILL_EPOCHS));
    cluster.publisher.publish_job(&job).await?;

    let started_at = Instant::now();
    for (round, &(epoch, jitter)) in points.iter().enumerate() {
        let id = format!("kill-{round}");
        let worker = cluster.start_worker(&[EVERY_EPOCH, ("REFIT__WORKER__ID", &id)])?;
        // This attempt's `started`, then its progress up to the kill point's epoch (at once
        // when it resumed past it).
        let what = format!("round {round}: epoch {epoch:.1}");
        wait_until_every(&what, WAIT, Duration::from_millis(10), async || {
            let events = cluster.events_of(job.id);
            let started = events
                .iter()
                .any(|e| e.worker_id.as_str() == id && matches!(e.kind, EventKind::Started { .. }));
            let resumed = last_checkpoint(&events).unwrap_or(0.0);
            let reached = reached_epoch(&events, &id).unwrap_or(0.0).max(resumed);
            ensure!(
                worker.running(),
                "round {round}: the worker exited; log:\n{}",
                worker.tail(40)
            );
            Ok(done_if(started && reached >= epoch, (), || {
                format!("events: {:?}", names(&events))
            }))
        })
        .await?;
        tokio::time::sleep(jitter).await;
        worker.kill9()?;
        let events = cluster.events_of(job.id);
        ensure!(
            succeeded(&events) == 0,
            "round {round}: the job finished before the last kill: make it longer"
        );
        eprintln!(
            "kill round {round}: at epoch {epoch:.1} + {jitter:?}, last checkpoint {:?}, {:?} in",
            last_checkpoint(&events),
            started_at.elapsed()
        );
    }
    let last = cluster.start_worker(&[EVERY_EPOCH, ("REFIT__WORKER__ID", "kill-last")])?;
    cluster
        .wait_final(job.id)
        .await
        .with_context(|| last.log_text())?;
    let events = settle(&cluster, job.id).await;

    // Each attempt resumes from at least the newest checkpoint reported before it started.
    let mut checkpoint: Option<f64> = None;
    let mut resumed = Vec::new();
    for event in &events {
        match event.kind {
            EventKind::Checkpointed { epoch, .. } => checkpoint = Some(epoch),
            EventKind::Started {
                resumed_from_epoch, ..
            } => {
                resumed.push(resumed_from_epoch);
                if let Some(done) = checkpoint {
                    ensure!(
                        resumed_from_epoch.is_some_and(|e| e > 0.0 && e >= done),
                        "{} started from {resumed_from_epoch:?} after a checkpoint at epoch \
                         {done}",
                        event.worker_id
                    );
                }
            }
            _ => {}
        }
    }
    let kinds = names(&events);
    ensure!(
        resumed.len() == KILLS + 1,
        "{} started events for {} workers: {kinds:?}",
        resumed.len(),
        KILLS + 1
    );
    ensure!(
        succeeded(&events) == 1 && failed(&events) == 0,
        "{kinds:?}; log:\n{}",
        last.log_text()
    );
    check_version(&cluster, 1).await?;
    ensure!(cluster.versions().await? == vec![Version::first()]);
    eprintln!(
        "kill test: seed {seed}, resumed from {resumed:?}, {:?} in all",
        started_at.elapsed()
    );
    drop(last);
    cluster.cleanup().await;
    Ok(())
}
