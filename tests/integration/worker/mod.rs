//! End-to-end tests of `refit-worker`, run as a real process against the real RabbitMQ and the
//! real S3 server (found as in `queue` and `storage`: `REFIT_TEST_AMQP_URL`, `REFIT_TEST_S3_*`,
//! `REFIT_S3_*`, then the local Garage's `credentials.env`).
//!
//! The binary is built once per test run with `cargo build -p refit-worker --bin refit-worker`
//! (cargo does not build another package's binaries for a test) and found next to this test's
//! own executable's folder. Each test has its own queue prefix and model name; the worker is
//! configured through `REFIT__…` environment variables only. Data is a slice of
//! `examples/data/financial-demo/set1.yml` uploaded as JSONL, and epochs are few, so a job takes
//! seconds.
//!
//! `resilience` holds the tests that break things around a running job: a private S3 server
//! stopped for 20 s, the worker's RabbitMQ connection force-closed, and ten `kill -9`s.

use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use chrono::Utc;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use refit_io::queue::{Consumer, Publisher};
use refit_io::storage::{ObjectStore, S3Config};
use refit_proto::data::Example;
use refit_proto::keys::sha256_hex;
use refit_proto::{
    Budget, Control, DatasetRef, Event, EventKind, Hyperparams, JobId, JobSpec, Mode, Version, keys,
};

use crate::common::cluster::{Cluster, ClusterOptions};
use crate::common::proc::Proc;
use crate::common::wait::{done_if, wait_until};
use crate::common::{credentials_in, env_or, examples, repo};

mod resilience;

/// A guard against hangs, not a speed target.
const WAIT: Duration = Duration::from_secs(120);

/// A worker test: a [`Cluster`] (the test's names, services and worker processes), with the test
/// in the coordinator's place: it publishes jobs and control messages and records every event.
struct WorkerTest {
    cluster: Cluster,
    publisher: Publisher,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Deref for WorkerTest {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for WorkerTest {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl WorkerTest {
    async fn start(name: &str) -> Result<Self> {
        Self::start_with(name, ClusterOptions::default()).await
    }

    /// Declares the workers' and the coordinator's queues (the test reads the events the
    /// coordinator would) and starts recording events.
    async fn start_with(name: &str, options: ClusterOptions) -> Result<Self> {
        let cluster = Cluster::start(&format!("w{name}"), options).await?;
        let broker = &cluster.broker;
        let channel = broker.channel().await?;
        broker.topology().declare(&channel).await?;
        broker.topology().declare_coordinator(&channel).await?;
        let publisher = Publisher::new(broker).await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut consumer = Consumer::events(broker, 64).await?;
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Ok(event) = delivery.decode::<Event>() {
                    sink.lock().unwrap().push(event);
                }
                let _ = delivery.ack().await;
            }
        });
        Ok(Self {
            cluster,
            publisher,
            events,
        })
    }

    /// Uploads examples as a JSONL dataset; returns its reference.
    async fn dataset(&self, examples: &[Example]) -> Result<DatasetRef> {
        let mut bytes = Vec::new();
        for example in examples {
            serde_json::to_writer(&mut bytes, example)?;
            bytes.push(b'\n');
        }
        self.raw_dataset(bytes, "jsonl").await
    }

    async fn raw_dataset(&self, bytes: Vec<u8>, ext: &str) -> Result<DatasetRef> {
        let sha256 = sha256_hex(&bytes);
        let key = keys::dataset(&sha256, ext)?;
        self.store.put(&key, Bytes::from(bytes)).await?;
        Ok(DatasetRef { key, sha256 })
    }

    fn job(&self, version: u32, base: Option<u32>, data: DatasetRef, budget: Budget) -> JobSpec {
        JobSpec {
            id: JobId::new(),
            model: self.model.clone(),
            mode: if base.is_some() {
                Mode::Finetune
            } else {
                Mode::Scratch
            },
            base_version: base.map(|v| Version::new(v).unwrap()),
            output_version: Version::new(version).unwrap(),
            dataset: data,
            eval_dataset: None,
            hyperparams: Hyperparams {
                budget,
                batch_size: 32,
                final_batch_size: None,
                learning_rate: 3e-3,
                seed: 7,
            },
            priority: 0,
            submitted_at: Utc::now(),
            deadline: None,
        }
    }

    fn events_of(&self, job: JobId) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.job_id == job)
            .cloned()
            .collect()
    }

    /// Waits until the job has an event that `pred` accepts; returns the job's events.
    async fn wait_event(
        &self,
        job: JobId,
        what: &str,
        pred: impl Fn(&EventKind) -> bool,
    ) -> Result<Vec<Event>> {
        wait_until(&format!("a {what} event for job {job}"), WAIT, async || {
            let events = self.events_of(job);
            let found = events.iter().any(|e| pred(&e.kind));
            Ok(done_if(found, events.clone(), || {
                format!("events {:?}", names(&events))
            }))
        })
        .await
    }

    async fn wait_final(&self, job: JobId) -> Result<Vec<Event>> {
        self.wait_event(job, "final", |k| {
            matches!(
                k,
                EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::Cancelled
            )
        })
        .await
    }

    /// Every message in the dead-letter queue (taken off it).
    async fn dead_letters(&self) -> Result<Vec<lapin::message::BasicGetMessage>> {
        let channel = self.broker.channel().await?;
        let queue = self.broker.topology().dead_letter_queue();
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            out.push(message);
        }
        Ok(out)
    }

    /// Publishes raw bytes to the job queue with a message id.
    async fn publish_raw(&self, body: &[u8], message_id: Option<&str>) -> Result<()> {
        let channel = self.broker.channel().await?;
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let topology = self.broker.topology();
        channel
            .basic_publish(
                topology.jobs_exchange().as_str().into(),
                topology.pool().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    async fn versions(&self) -> Result<Vec<Version>> {
        Ok(self.registry().versions(&self.model).await?)
    }

    async fn cleanup(self) {
        self.cluster.cleanup(&[]).await;
    }
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

/// Checks that a stored version is complete and returns its manifest.
async fn check_version(cluster: &WorkerTest, version: u32) -> Result<refit_proto::Manifest> {
    let version = Version::new(version)?;
    let manifest = cluster.registry().manifest(&cluster.model, version).await?;
    for file in [keys::CHECKPOINT, keys::MODEL_ONNX, keys::VOCAB] {
        let entry = manifest
            .files
            .get(file)
            .with_context(|| format!("{version}: no {file} in the manifest"))?;
        let key = keys::version_file(&cluster.model, version, file)?;
        cluster.store.get_verified(&key, &entry.sha256).await?;
    }
    Ok(manifest)
}

/// Asserts started → progress… → succeeded, in that order, once each for started/succeeded.
fn check_order(events: &[Event]) -> Result<()> {
    let kinds = names(events);
    let started = kinds.iter().filter(|k| **k == "started").count();
    let succeeded = kinds.iter().filter(|k| **k == "succeeded").count();
    ensure!(started == 1 && succeeded == 1, "events: {kinds:?}");
    let first_started = kinds.iter().position(|k| *k == "started").unwrap();
    let first_progress = kinds
        .iter()
        .position(|k| *k == "progress")
        .context(format!("no progress: {kinds:?}"))?;
    let last = kinds.iter().rposition(|k| *k != "heartbeat").unwrap();
    ensure!(
        first_started < first_progress && kinds[last] == "succeeded",
        "events out of order: {kinds:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_trains_scratch_then_finetune_and_skips_a_duplicate() -> Result<()> {
    let mut cluster = WorkerTest::start("happy").await?;
    let worker = cluster.start_worker(&[])?;
    let base_data = cluster.dataset(&examples(4)?).await?;
    let more_data = cluster.dataset(&examples(8)?).await?;

    let eval_data = cluster.dataset(&examples(2)?).await?;

    let mut scratch = cluster.job(1, None, base_data, Budget::Epochs(3));
    scratch.eval_dataset = Some(eval_data.clone());
    cluster.publisher.publish_job(&scratch).await?;
    let events = cluster.wait_final(scratch.id).await?;
    let result = (|| {
        check_order(&events)?;
        ensure!(
            matches!(&events.last().unwrap().kind, EventKind::Succeeded { version, .. } if version.get() == 1)
                || events.iter().any(|e| matches!(&e.kind, EventKind::Succeeded { version, .. } if version.get() == 1)),
            "no succeeded for v1: {:?}",
            names(&events)
        );
        Ok(())
    })();
    result.with_context(|| format!("worker log:\n{}", worker.log_text()))?;
    let v1 = check_version(&cluster, 1).await?;
    ensure!(v1.mode == Mode::Scratch && v1.epochs == 3.0, "{v1:?}");
    ensure!(
        v1.metrics.as_ref().is_some_and(|m| m.examples > 0),
        "v1 has no metrics: {v1:?}"
    );

    let mut finetune = cluster.job(2, Some(1), more_data, Budget::EpochFraction(0.5));
    finetune.eval_dataset = Some(eval_data);
    cluster.publisher.publish_job(&finetune).await?;
    let events = cluster.wait_final(finetune.id).await?;
    check_order(&events).with_context(|| format!("worker log:\n{}", worker.log_text()))?;
    let v2 = check_version(&cluster, 2).await?;
    ensure!(
        v2.mode == Mode::Finetune && v2.parent == Some(Version::first()) && v2.epochs == 2.0,
        "{v2:?}"
    );
    ensure!(
        v2.metrics.as_ref().is_some_and(|m| m.examples > 0),
        "v2 has no metrics: {v2:?}"
    );
    ensure!(
        cluster.versions().await? == vec![Version::first(), Version::new(2)?],
        "exactly one version per job"
    );

    // The same message again: no training, `succeeded` again, still one version.
    cluster.publisher.publish_job(&finetune).await?;
    let succeeded = |k: &EventKind| matches!(k, EventKind::Succeeded { .. });
    wait_until("a second succeeded event", WAIT, async || {
        let events = cluster.events_of(finetune.id);
        let twice = events.iter().filter(|e| succeeded(&e.kind)).count() == 2;
        Ok(done_if(twice, (), || format!("{:?}", names(&events))))
    })
    .await?;
    let kinds = names(&cluster.events_of(finetune.id));
    ensure!(
        kinds.iter().filter(|k| **k == "started").count() == 1,
        "the duplicate was trained again: {kinds:?}"
    );
    ensure!(cluster.versions().await?.len() == 2);
    drop(worker);
    cluster.cleanup().await;
    Ok(())
}

fn failed_reason(events: &[Event]) -> Option<(String, refit_proto::ErrorKind)> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::Failed { error, error_kind } => Some((error.clone(), *error_kind)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dead_letters_bad_jobs_and_goes_on() -> Result<()> {
    let mut cluster = WorkerTest::start("bad").await?;
    let worker = cluster.start_worker(&[])?;
    let data = cluster.dataset(&examples(3)?).await?;
    let log = |w: &Proc| format!("worker log:\n{}", w.log_text());

    // A good v1 to fine-tune from.
    let v1 = cluster.job(1, None, data.clone(), Budget::Epochs(1));
    cluster.publisher.publish_job(&v1).await?;
    let events = cluster.wait_final(v1.id).await?;
    check_order(&events).with_context(|| log(&worker))?;

    // Garbage bytes, no message id: only the dead-letter queue sees it.
    cluster.publish_raw(b"\x00not msgpack at all", None).await?;

    // An unknown schema version, with the job id as message id.
    let future = cluster.job(2, None, data.clone(), Budget::Epochs(1));
    let mut bytes = refit_proto::encode(&future);
    ensure!(
        bytes[..4] == [0x83, 0xa1, b'v', 0x01],
        "envelope layout changed"
    );
    bytes[3] = 99;
    cluster
        .publish_raw(&bytes, Some(&future.id.to_string()))
        .await?;
    let events = cluster
        .wait_final(future.id)
        .await
        .with_context(|| log(&worker))?;
    let (reason, kind) = failed_reason(&events).context("no failed event")?;
    ensure!(
        kind == refit_proto::ErrorKind::Permanent && reason.contains("schema version 99"),
        "{reason}"
    );

    // A dataset with a label v1 does not have.
    let mut extra = examples(3)?;
    extra.push(Example {
        text: "play some jazz please".into(),
        intent: "play_music".into(),
        entities: vec![],
    });
    let new_label = cluster.dataset(&extra).await?;
    let job = cluster.job(3, Some(1), new_label, Budget::Epochs(1));
    cluster.publisher.publish_job(&job).await?;
    let events = cluster.wait_final(job.id).await?;
    let (reason, kind) = failed_reason(&events).context("no failed event")?;
    ensure!(
        kind == refit_proto::ErrorKind::Permanent && reason.contains("play_music"),
        "{reason}"
    );

    // Bad data: not parseable.
    let broken = cluster
        .raw_dataset(b"{\"text\": \"unterminated\n".to_vec(), "jsonl")
        .await?;
    let job = cluster.job(3, None, broken, Budget::Epochs(1));
    cluster.publisher.publish_job(&job).await?;
    let events = cluster.wait_final(job.id).await?;
    let (reason, _) = failed_reason(&events).context("no failed event")?;
    ensure!(reason.contains("bad dataset"), "{reason}");

    // A corrupt base checkpoint.
    let key = keys::version_file(&cluster.model, Version::first(), keys::CHECKPOINT)?;
    cluster
        .store
        .put(&key, Bytes::from_static(b"corrupted checkpoint"))
        .await?;
    let job = cluster.job(3, Some(1), data.clone(), Budget::Epochs(1));
    cluster.publisher.publish_job(&job).await?;
    let events = cluster.wait_final(job.id).await?;
    let (reason, kind) = failed_reason(&events).context("no failed event")?;
    ensure!(
        kind == refit_proto::ErrorKind::Permanent && reason.contains("checkpoint"),
        "{reason}"
    );

    // The worker goes on: a good job after all that.
    let good = cluster.job(4, None, data, Budget::Epochs(1));
    cluster.publisher.publish_job(&good).await?;
    let events = cluster.wait_final(good.id).await?;
    check_order(&events).with_context(|| log(&worker))?;
    check_version(&cluster, 4).await?;

    // Garbage, unknown version, new label, bad data, corrupt checkpoint: five dead letters.
    let mut dead = Vec::new();
    wait_until("five dead letters", Duration::from_secs(20), async || {
        dead.extend(cluster.dead_letters().await?);
        Ok(done_if(dead.len() >= 5, (), || {
            format!("{} dead letters", dead.len())
        }))
    })
    .await?;
    ensure!(dead.len() == 5, "{} dead letters", dead.len());
    ensure!(
        dead.iter()
            .any(|m| m.delivery.data.starts_with(b"\x00not msgpack"))
    );
    drop(worker);
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cancels_a_running_job() -> Result<()> {
    let mut cluster = WorkerTest::start("cancel").await?;
    let worker = cluster.start_worker(&[])?;
    let data = cluster.dataset(&examples(8)?).await?;
    let job = cluster.job(1, None, data, Budget::Epochs(100_000));
    cluster.publisher.publish_job(&job).await?;
    cluster
        .wait_event(job.id, "progress", |k| {
            matches!(k, EventKind::Progress { .. })
        })
        .await
        .with_context(|| worker.log_text())?;
    cluster
        .publisher
        .publish_control(&Control::Cancel { job_id: job.id })
        .await?;
    let events = cluster
        .wait_final(job.id)
        .await
        .with_context(|| worker.log_text())?;
    ensure!(
        matches!(
            events
                .iter()
                .rev()
                .find(|e| !matches!(e.kind, EventKind::Heartbeat { .. }))
                .map(|e| &e.kind),
            Some(EventKind::Cancelled)
        ),
        "{:?}",
        names(&events)
    );
    ensure!(cluster.versions().await?.is_empty());
    // Acked, not requeued or dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(cluster.dead_letters().await?.is_empty());
    ensure!(
        names(&cluster.events_of(job.id))
            .iter()
            .filter(|k| **k == "started")
            .count()
            == 1
    );
    drop(worker);
    cluster.cleanup().await;
    Ok(())
}

/// Long enough to interrupt: many epochs, a resume checkpoint every epoch.
const RESUME_ENV: &[(&str, &str)] = &[("REFIT__WORKER__RESUME_EVERY_EPOCHS", "1")];

fn started_from(events: &[Event]) -> Vec<Option<f64>> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Started {
                resumed_from_epoch, ..
            } => Some(resumed_from_epoch),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigterm_checkpoints_requeues_and_the_next_worker_resumes() -> Result<()> {
    let mut cluster = WorkerTest::start("term").await?;
    let first = cluster.start_worker(RESUME_ENV)?;
    let data = cluster.dataset(&examples(8)?).await?;
    let job = cluster.job(1, None, data, Budget::Epochs(40));
    cluster.publisher.publish_job(&job).await?;
    cluster
        .wait_event(
            job.id,
            "checkpointed",
            |k| matches!(k, EventKind::Checkpointed { epoch, .. } if *epoch >= 2.0),
        )
        .await
        .with_context(|| first.log_text())?;
    first.signal("TERM")?;
    let status = first.wait_exit(Duration::from_secs(60)).await?;
    ensure!(status.success(), "{status}; log:\n{}", first.log_text());
    ensure!(
        cluster
            .events_of(job.id)
            .iter()
            .all(|e| !matches!(e.kind, EventKind::Succeeded { .. })),
        "finished before SIGTERM: make the job longer"
    );

    let second = cluster.start_worker(RESUME_ENV)?;
    let events = cluster
        .wait_final(job.id)
        .await
        .with_context(|| second.log_text())?;
    let starts = started_from(&events);
    ensure!(
        starts.len() == 2 && starts[0].is_none() && starts[1].is_some_and(|e| e > 0.0),
        "started events: {starts:?}; log:\n{}",
        second.log_text()
    );
    ensure!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Succeeded { .. }))
    );
    check_version(&cluster, 1).await?;
    ensure!(cluster.versions().await?.len() == 1);
    // The resume checkpoint is gone after success.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        cluster
            .store
            .list(&keys::resume_prefix(job.id))
            .await?
            .is_empty()
    );
    drop(second);
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_training_is_resumed_by_the_next() -> Result<()> {
    let mut cluster = WorkerTest::start("kill").await?;
    let data = cluster.dataset(&examples(8)?).await?;
    let job = cluster.job(1, None, data, Budget::Epochs(40));
    cluster.publisher.publish_job(&job).await?;
    let mut workers = Vec::new();
    // Kill at a few points: after the 2nd, then a later checkpoint of each new worker.
    for round in 0..2u32 {
        let worker = cluster.start_worker(RESUME_ENV)?;
        let seen = cluster
            .events_of(job.id)
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Checkpointed { .. }))
            .count();
        wait_until(
            &format!("round {round}: two checkpoints"),
            WAIT,
            async || {
                let count = cluster
                    .events_of(job.id)
                    .iter()
                    .filter(|e| matches!(e.kind, EventKind::Checkpointed { .. }))
                    .count();
                Ok(done_if(count >= seen + 2, (), || {
                    format!("{count} checkpoints; log:\n{}", worker.tail(40))
                }))
            },
        )
        .await?;
        worker.kill9()?;
        workers.push(worker);
    }
    let last = cluster.start_worker(RESUME_ENV)?;
    let events = cluster
        .wait_final(job.id)
        .await
        .with_context(|| last.log_text())?;
    let starts = started_from(&events);
    ensure!(
        starts.len() == 3
            && starts[0].is_none()
            && starts[1..].iter().all(|s| s.is_some_and(|e| e > 0.0)),
        "started events: {starts:?}"
    );
    ensure!(
        events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Succeeded { .. }))
            .count()
            == 1,
        "{:?}",
        names(&events)
    );
    check_version(&cluster, 1).await?;
    ensure!(cluster.versions().await?.len() == 1);
    drop(last);
    cluster.cleanup().await;
    Ok(())
}
