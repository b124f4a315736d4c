//! Workers that stop in every way a worker stops:
//!
//! - "Done when" 2: frozen (`kill -STOP`, cut off from the broker and S3 alike) for twice the
//!   lease right after uploading its version, then let go: the job completes once, with the
//!   next worker's version; the frozen worker's upload never becomes it.
//! - "Done when" 4: handed back by SIGTERM on 8 workers in a row (a rolling deploy), without
//!   counting a failure; a job that crashes every worker that takes it is dead after
//!   `coordinator.max_failures` crashes, and dead-lettered.
//! - "Done when" 5: `kill -9` at 20 seeded random moments (`REFIT_TEST_KILL_SEED`): 17 during
//!   training (checkpoint uploads and events included), one around the version upload, one
//!   between the upload and `succeeded`, one after `succeeded`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lapin::options::BasicGetOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use refit_io::storage::ObjectStore;
use refit_proto::keys;
use serde_json::{Value, json};

use super::holders;
use crate::common::api::{event_types, metric};
use crate::common::jobs::{
    EVERY_EPOCH, check_committed, count_from, events, last_checkpoint, reached_epoch, started_from,
};
use crate::common::proc::Proc;
use crate::common::stack::{Options, Stack, WAIT};
use crate::common::wait::{done_if, wait_until, wait_until_every};
use crate::common::{env_or, examples};

/// Waits until the worker logs that it pauses at `stage` (a `REFIT_FAULT=pause-at=…` window).
async fn wait_paused_at(worker: &Proc, stage: &str) -> Result<()> {
    let needle = format!("stage=\"{stage}\"");
    let what = format!("{} to pause at {stage}", worker.name);
    wait_until_every(&what, WAIT, Duration::from_millis(20), async || {
        let log = worker.log_text();
        ensure!(
            worker.running(),
            "{} exited; log:\n{}",
            worker.name,
            worker.tail(40)
        );
        let paused = log
            .lines()
            .any(|l| l.contains("REFIT_FAULT: pausing") && l.contains(&needle));
        Ok(done_if(paused, (), || worker.tail(5)))
    })
    .await
}

/// Waits until nothing of the version's folder is left but the committed attempt's files, the
/// manifest and the reservation: the janitor deleted every other attempt's upload.
async fn wait_only_committed_files(stack: &Stack, version: u32) -> Result<()> {
    let manifest = stack.verify_version(version).await?;
    let attempt = manifest
        .attempt_id
        .context("the manifest names no attempt")?;
    let prefix = keys::version_prefix(&stack.cluster.model, manifest.version);
    let keep = [
        keys::manifest(&stack.cluster.model, manifest.version),
        keys::reservation(&stack.cluster.model, manifest.version),
    ];
    let committed = keys::attempt_prefix(&stack.cluster.model, manifest.version, attempt);
    wait_until("the stray uploads to be deleted", WAIT, async || {
        let stray: Vec<String> = stack
            .cluster
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !keep.contains(k) && !k.starts_with(&committed))
            .collect();
        Ok(done_if(stray.is_empty(), (), || format!("{stray:?}")))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_for_twice_the_lease_after_uploading_never_makes_the_version() -> Result<()>
{
    let lease = 3;
    let mut stack = Stack::with(
        "opart",
        Options {
            lease_secs: Some(lease),
            ..Options::default()
        },
    )
    .await?;
    stack.start_coordinator(&[]).await?;
    stack.start_worker(&[EVERY_EPOCH, ("REFIT_FAULT", "pause-at=uploaded:8000")])?;
    let frozen_id = stack.worker_id(1);
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, 10, json!({})).await?;
    wait_paused_at(&stack.workers[0], "uploaded").await?;
    // Its version's files are up under its attempt's folder; `succeeded` is not sent yet.
    let job = stack.job(&id).await?;
    let frozen_attempt = holders(&job).first().cloned().context("no holder")?;
    let draft = format!(
        "{}{frozen_attempt}/{}",
        keys::version_prefix(&stack.cluster.model, refit_proto::Version::first()),
        keys::MANIFEST
    );
    ensure!(
        stack.cluster.store.head(&draft).await?.is_some(),
        "no draft manifest at {draft}"
    );
    stack.workers[0].signal("STOP")?;
    let frozen_at = Instant::now();
    stack.start_worker(&[EVERY_EPOCH])?;
    let job = stack.wait_succeeded(&id).await?;
    // Cut off for at least twice the lease, then back.
    let cut = Duration::from_secs(2 * lease);
    if let Some(left) = cut.checked_sub(frozen_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    ensure!(
        job["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "lease_lapsed")),
        "the frozen worker's lease did not lapse: {:?}",
        event_types(&job)
    );
    stack.workers[0].signal("CONT")?;
    // Back, it reports (a heartbeat, its `succeeded`): dropped, and it is told it lost the job.
    stack
        .wait_metrics("the frozen worker's late events dropped", |text| {
            metric(
                text,
                "refit_events_dropped_total",
                &[("reason", "not_holder")],
            )
            .is_some_and(|n| n >= 1.0)
        })
        .await?;
    let job = stack.settled(&id).await?;
    let manifest = check_committed(&stack, &job)
        .await
        .context("after the partition")?;
    let holders = holders(&job);
    ensure!(
        holders.len() == 2 && holders[0] == frozen_attempt,
        "holders {holders:?}: expected the frozen attempt, then the next worker's"
    );
    ensure!(
        manifest.attempt_id.map(|a| a.to_string()).as_deref() == Some(holders[1].as_str()),
        "the version is not the second holder's"
    );
    ensure!(
        count_from(&job, "succeeded", &frozen_id) == 0,
        "the frozen worker's succeeded was recorded"
    );
    ensure!(
        stack.versions().await? == [manifest.version.get()],
        "versions: {:?}",
        stack.versions().await?
    );
    wait_only_committed_files(&stack, manifest.version.get()).await?;
    ensure!(stack.workers[0].running(), "the frozen worker exited");
    stack.finish().await
}

/// Rounds of SIGTERM in the hand-back test: more than `coordinator.max_failures` (5), so
/// counting a hand-back as a failure would kill the job.
const HANDBACKS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_sigterm_hand_backs_do_not_count_as_failures() -> Result<()> {
    let mut stack = Stack::new("ohand").await?;
    stack.start_coordinator(&[]).await?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, 120, json!({})).await?;
    let slow = ("REFIT_FAULT", "slow-step=50");
    for round in 0..HANDBACKS {
        let index = stack.start_worker(&[EVERY_EPOCH, slow])?;
        let worker = stack.worker_id(index + 1);
        stack.wait_granted(&id, &worker).await?;
        stack
            .wait_job(&id, &format!("a checkpoint of {worker}"), |job| {
                count_from(job, "checkpointed", &worker) >= 1
            })
            .await?;
        // SIGTERM: a checkpoint, `released`, a clean exit with no error logged.
        stack.workers[index].stop().await?;
        let job = stack.job(&id).await?;
        ensure!(
            job["state"] != "succeeded",
            "round {round}: the job finished before the last SIGTERM: make it longer"
        );
    }
    stack.start_worker(&[EVERY_EPOCH])?;
    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    ensure!(
        job["handbacks"] == HANDBACKS && job["failures"] == 0,
        "handbacks {}, failures {}",
        job["handbacks"],
        job["failures"]
    );
    // Every attempt after the first resumed from where the last one checkpointed.
    let starts = started_from(&job);
    ensure!(
        starts.len() == HANDBACKS + 1
            && starts[0].is_none()
            && starts[1..].iter().all(|s| s.is_some_and(|e| e > 0.0))
            && starts[1..].windows(2).all(|w| w[0] <= w[1]),
        "started from {starts:?}"
    );
    let attempts: BTreeSet<String> = holders(&job).into_iter().collect();
    ensure!(
        attempts.len() == HANDBACKS + 1,
        "{} holders",
        attempts.len()
    );
    check_committed(&stack, &job).await?;
    ensure!(stack.versions().await? == [1]);
    stack.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_crashes_its_workers_is_dead_lettered_after_max_failures() -> Result<()> {
    let max_failures = 3;
    let mut stack = Stack::with(
        "opoison",
        Options {
            lease_secs: Some(3),
            max_failures: Some(max_failures),
            ..Options::default()
        },
    )
    .await?;
    stack.start_coordinator(&[]).await?;
    let data = stack.upload_examples(&examples(3)?).await?;
    let id = stack.submit_scratch(&data, 5, json!({})).await?;
    // Each worker that takes the job dies when training starts (`abort`, as a crash would).
    let mut crashed = 0;
    let job = loop {
        let job = stack.job(&id).await?;
        if job["state"] == "dead" {
            break job;
        }
        ensure!(
            crashed < max_failures,
            "{crashed} crashes and the job is still {}",
            job["state"]
        );
        let index = stack.start_worker(&[("REFIT_FAULT", "abort-at=train")])?;
        let worker = &stack.workers[index];
        let status = worker.wait_exit(WAIT).await?;
        ensure!(
            !status.success(),
            "{} exited cleanly: {status}",
            worker.name
        );
        crashed += 1;
        stack
            .wait_job(&id, "the crashed attempt's lease to lapse", |job| {
                job["failures"] == crashed
            })
            .await?;
    };
    ensure!(
        crashed == max_failures && job["failures"] == max_failures,
        "{crashed} crashes, failures {}",
        job["failures"]
    );
    let error = job["error"].as_str().unwrap_or_default();
    ensure!(error.contains("max_failures"), "{error}");
    // Its message is in the dead-letter queue, for operators.
    let channel = stack.cluster.broker.channel().await?;
    let queue = stack.cluster.broker.topology().dead_letter_queue();
    let dead = wait_until("the job in the dead-letter queue", WAIT, async || {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?;
        Ok(match message {
            Some(m) => crate::common::wait::Waiting::Done(m),
            None => crate::common::wait::Waiting::NotYet("empty".into()),
        })
    })
    .await?;
    ensure!(
        dead.properties.message_id().as_ref().map(|m| m.as_str()) == Some(id.as_str()),
        "a dead letter of another job: {:?}",
        dead.properties.message_id()
    );
    // A healthy worker is not given the dead job, and runs the next one.
    stack.start_worker(&[])?;
    let small = stack.upload_examples(&examples(2)?).await?;
    let next = stack.submit_scratch(&small, 1, json!({})).await?;
    stack.wait_succeeded(&next).await?;
    let job = stack.job(&id).await?;
    ensure!(
        job["state"] == "dead" && holders(&job).len() == max_failures as usize,
        "{}: {:?}",
        job["state"],
        event_types(&job)
    );
    ensure!(
        stack.versions().await? == [2],
        "{:?}",
        stack.versions().await?
    );
    stack.finish().await
}

/// The kill test's job: epochs, and the training kills' spread.
const KILL_EPOCHS: u32 = 100;
/// Kills during training; then one around the upload, one before `succeeded`, one after.
const TRAINING_KILLS: usize = 17;
const KILL_JITTER: Duration = Duration::from_millis(250);

/// Where a round's worker is killed.
#[derive(Debug)]
enum KillAt {
    /// Once it has trained past this epoch, plus a delay.
    Epoch(f64, Duration),
    /// This long after it paused at a stage (`REFIT_FAULT=pause-at=<stage>:<pause>`).
    Stage(&'static str, Duration, Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_random_kills_lose_nothing_and_commit_one_version() -> Result<()> {
    let seed: u64 = env_or("REFIT_TEST_KILL_SEED", "1")
        .parse()
        .context("REFIT_TEST_KILL_SEED")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut epochs: Vec<f64> = (0..TRAINING_KILLS)
        .map(|_| rng.random_range(0.0..f64::from(KILL_EPOCHS - 15)))
        .collect();
    epochs.sort_by(f64::total_cmp);
    let mut kills: Vec<KillAt> = epochs
        .into_iter()
        .map(|e| KillAt::Epoch(e, rng.random_range(Duration::ZERO..KILL_JITTER)))
        .collect();
    // Around the version upload: the pause ends at 1 s, the upload follows.
    let pause = Duration::from_millis(1000);
    kills.push(KillAt::Stage(
        "upload",
        pause,
        rng.random_range(Duration::from_millis(800)..Duration::from_millis(1600)),
    ));
    // Uploaded, `succeeded` not sent; then `succeeded` sent (the coordinator commits without
    // the worker).
    let window = Duration::from_millis(3000);
    kills.push(KillAt::Stage(
        "uploaded",
        window,
        rng.random_range(Duration::ZERO..Duration::from_millis(2500)),
    ));
    kills.push(KillAt::Stage(
        "succeeded",
        window,
        rng.random_range(Duration::ZERO..Duration::from_millis(2500)),
    ));
    let mut stack = Stack::with(
        "okill",
        Options {
            lease_secs: Some(3),
            max_failures: Some(30),
            ..Options::default()
        },
    )
    .await?;
    stack.start_coordinator(&[]).await?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, KILL_EPOCHS, json!({})).await?;
    let started_at = Instant::now();
    let rounds = kills.len();
    for (round, kill) in kills.iter().enumerate() {
        let fault = match kill {
            KillAt::Epoch(..) => String::new(),
            // Held after the upload too, so a kill around the upload never lands after
            // `succeeded` (the job would end a round early).
            KillAt::Stage("upload", pause, _) => {
                format!(
                    "pause-at=upload:{},pause-at=uploaded:5000",
                    pause.as_millis()
                )
            }
            KillAt::Stage(stage, pause, _) => format!("pause-at={stage}:{}", pause.as_millis()),
        };
        let index = stack.start_worker(&[EVERY_EPOCH, ("REFIT_FAULT", &fault)])?;
        let worker = stack.worker_id(index + 1);
        match *kill {
            KillAt::Epoch(epoch, delay) => {
                let what = format!("round {round}: {worker} past epoch {epoch:.1}");
                wait_until_every(&what, WAIT, Duration::from_millis(20), async || {
                    let job = stack.job(&id).await?;
                    let granted = holders_of(&job, &worker);
                    let reached = reached_epoch(&job, &worker)
                        .unwrap_or(0.0)
                        .max(last_checkpoint(&job).unwrap_or(0.0));
                    let proc = &stack.workers[index];
                    ensure!(
                        proc.running(),
                        "round {round}: {worker} exited; log:\n{}",
                        proc.tail(40)
                    );
                    Ok(done_if(granted && reached >= epoch, (), || {
                        format!("{:?}", event_types(&job))
                    }))
                })
                .await?;
                tokio::time::sleep(delay).await;
            }
            KillAt::Stage(stage, _, after) => {
                wait_paused_at(&stack.workers[index], stage).await?;
                tokio::time::sleep(after).await;
            }
        }
        stack.workers[index].kill9()?;
        let job = stack.job(&id).await?;
        let last = round + 1 == rounds;
        ensure!(
            last || job["state"] != "succeeded",
            "round {round}: the job finished before the last kill: make it longer"
        );
        eprintln!(
            "kill round {round}: {kill:?}, last checkpoint {:?}, {:?} in",
            last_checkpoint(&job),
            started_at.elapsed()
        );
    }
    // The last kill came after `succeeded`: the coordinator commits without any worker.
    let job = stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await.unwrap_or(job);
    check_resumes(&job)?;
    let holders = holders(&job);
    ensure!(
        holders.len() == rounds,
        "{} attempts held the job in {rounds} rounds",
        holders.len()
    );
    let lapses = events(&job)
        .iter()
        .filter(|e| e["type"] == "lease_lapsed")
        .count();
    ensure!(
        lapses == rounds - 1 && job["failures"] == rounds - 1,
        "{lapses} lapses, failures {}",
        job["failures"]
    );
    let manifest = check_committed(&stack, &job).await?;
    ensure!(
        manifest.attempt_id.map(|a| a.to_string()).as_deref() == holders.last().map(String::as_str),
        "the version is not the last attempt's"
    );
    ensure!(stack.versions().await? == [1]);
    wait_only_committed_files(&stack, 1).await?;
    eprintln!(
        "kill test: seed {seed}, started from {:?}, {:?} in all",
        started_from(&job),
        started_at.elapsed()
    );
    stack.finish().await
}

/// Whether `worker`'s claim of the job was granted.
fn holders_of(job: &Value, worker: &str) -> bool {
    events(job)
        .iter()
        .any(|e| e["type"] == "claim" && e["worker"] == worker && e["body"]["granted"] == true)
}

/// Each attempt resumed from at least the newest checkpoint the coordinator had when it
/// granted it.
fn check_resumes(job: &Value) -> Result<()> {
    let mut checkpoint: Option<f64> = None;
    for event in events(job) {
        match event["type"].as_str() {
            Some("checkpointed") => checkpoint = event["body"]["epoch"].as_f64(),
            Some("started") => {
                let from = event["body"]["resumed_from_epoch"].as_f64();
                if let Some(done) = checkpoint {
                    ensure!(
                        from.is_some_and(|e| e >= done),
                        "{} started from {from:?} after a checkpoint at epoch {done}",
                        event["worker"]
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}
