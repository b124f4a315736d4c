//! End-to-end tests of `refit-worker`, run as real processes against the real RabbitMQ and the
//! real S3 server, always under a real coordinator: a worker runs a job only under the lease its
//! coordinator grants, and the tests read what happened from the coordinator's job view (every
//! event it recorded, with the attempt and worker that sent it) and from the registry.
//!
//! Each test has a `Stack` (its own queue prefix, model name, coordinator and workers; see
//! `common::stack`). Data is a slice of `examples/data/financial-demo/set1.yml` uploaded as
//! JSONL, and epochs are few, so a job takes seconds.
//!
//! `resilience` holds the tests that break the world around a running job: a private S3 server
//! stopped for 20 s and the worker's RabbitMQ connection force-closed. Duplicate deliveries,
//! kills, partitions, hand-backs and a lost job store are in `ownership`.

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use lapin::options::BasicGetOptions;
use refit_io::storage::ObjectStore;
use refit_proto::{JobId, Mode, Version, keys};
use serde_json::{Value, json};

use crate::common::api::{event_types, metric};
use crate::common::examples;
use crate::common::jobs::{check_committed, claims, count_from, events};
use crate::common::stack::Stack;
use crate::common::wait::{done_if, wait_until};

pub(crate) mod resilience;

/// Asserts the order of one clean run: a granted `claim`, `started`, `progress`…, `succeeded`
/// last (heartbeats anywhere), with one `started` and one `succeeded`.
fn check_order(job: &Value) -> Result<()> {
    let kinds: Vec<String> = event_types(job)
        .into_iter()
        .filter(|k| k != "heartbeat")
        .collect();
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    ensure!(
        count("started") == 1 && count("succeeded") == 1 && count("claim") == 1,
        "events: {kinds:?}"
    );
    let position = |k: &str| kinds.iter().position(|x| x == k);
    ensure!(
        position("claim") == Some(0)
            && position("started") == Some(1)
            && position("progress").is_some_and(|p| p > 1)
            && kinds.last().map(String::as_str) == Some("succeeded"),
        "events out of order: {kinds:?}"
    );
    let (granted, refused) = claims(job);
    ensure!(
        granted.len() == 1 && refused.is_empty(),
        "claims: {granted:?} granted, {refused:?} refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_trains_scratch_then_finetune_and_a_duplicate_is_refused() -> Result<()> {
    let mut stack = Stack::new("whappy").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(1)?;
    let worker = stack.worker_id(1);
    let base = stack.upload_examples(&examples(4)?).await?;
    let more = stack.upload_examples(&examples(8)?).await?;
    let eval = stack.upload_examples(&examples(2)?).await?;

    let v1 = stack
        .submit_scratch(&base, 3, json!({ "eval_dataset": eval }))
        .await?;
    let job = stack.wait_succeeded(&v1).await?;
    check_order(&job).with_context(|| stack.logs_tail())?;
    let manifest = check_committed(&stack, &job).await?;
    ensure!(
        manifest.mode == Mode::Scratch && manifest.epochs == 3.0,
        "{manifest:?}"
    );
    ensure!(
        manifest.metrics.as_ref().is_some_and(|m| m.examples > 0),
        "v1 has no metrics: {manifest:?}"
    );

    let v2 = stack
        .submit(json!({
            "model": stack.model,
            "dataset": more,
            "eval_dataset": eval,
            "mode": "finetune",
            "epoch_fraction": 0.5,
            "batch_size": 32,
        }))
        .await?["id"]
        .as_str()
        .context("no job id")?
        .to_owned();
    let job = stack.wait_succeeded(&v2).await?;
    check_order(&job).with_context(|| stack.logs_tail())?;
    let manifest = check_committed(&stack, &job).await?;
    ensure!(
        manifest.mode == Mode::Finetune
            && manifest.parent == Some(Version::first())
            && manifest.epochs == 2.0,
        "{manifest:?}"
    );
    ensure!(
        stack.versions().await? == [1, 2],
        "exactly one version per job"
    );

    // The same message again: its claim is refused (the job is done), nothing is trained.
    let spec = stack.reserved_job(2).await?;
    stack.publish_job_again(&spec).await?;
    let job = stack
        .wait_job(&v2, "a refused claim", |job| claims(job).1.len() == 1)
        .await?;
    ensure!(
        claims(&job).1 == [worker.clone()] && count_from(&job, "started", &worker) == 1,
        "the duplicate was trained again: {:?}",
        event_types(&job)
    );
    ensure!(
        stack.workers[0]
            .log_text()
            .contains("the coordinator refused the claim"),
        "the worker did not log the refusal"
    );
    ensure!(stack.versions().await? == [1, 2]);
    stack.finish().await
}

/// The reason of a job view's failure.
fn error_of(job: &Value) -> String {
    job["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_drops_garbage_and_forged_jobs_fails_a_corrupt_base_and_goes_on() -> Result<()> {
    let mut stack = Stack::new("wbad").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(1)?;
    let data = stack.upload_examples(&examples(3)?).await?;

    // A good v1 to fine-tune from.
    let v1 = stack.submit_scratch(&data, 1, json!({})).await?;
    stack.wait_succeeded(&v1).await?;
    let spec = stack.reserved_job(1).await?;

    // Garbage bytes, no message id: dead-lettered.
    stack
        .publish_job_bytes(b"\x00not msgpack at all", None)
        .await?;
    // An unknown schema version: dead-lettered.
    let mut future = spec.clone();
    future.id = JobId::new();
    let mut bytes = refit_proto::encode(&future);
    ensure!(
        bytes[..4] == [0x83, 0xa1, b'v', 0x01],
        "envelope layout changed"
    );
    bytes[3] = 99;
    stack
        .publish_job_bytes(&bytes, Some(&future.id.to_string()))
        .await?;
    // A forged job: a valid message for a job the coordinator never stored, for a version far
    // above the model's. Its claim is refused; nothing is trained or stored.
    let mut forged = spec.clone();
    forged.id = JobId::new();
    forged.output_version = Version::new(999_999)?;
    stack.publish_job_again(&forged).await?;
    stack
        .wait_metrics("the forged job's claim dropped", |text| {
            metric(
                text,
                "refit_events_dropped_total",
                &[("reason", "unknown_job")],
            )
            .is_some_and(|n| n >= 1.0)
        })
        .await?;

    // A corrupt base checkpoint: the fine-tune fails, permanently, naming the checkpoint.
    let manifest = stack.verify_version(1).await?;
    let entry = &manifest.files[keys::CHECKPOINT];
    let key = keys::version_path(
        &manifest.model,
        manifest.version,
        entry.path.as_deref().unwrap_or(keys::CHECKPOINT),
    )
    .context("the checkpoint's path")?;
    stack
        .cluster
        .store
        .put(&key, Bytes::from_static(b"corrupted checkpoint"))
        .await?;
    let v2 = stack
        .submit(json!({
            "model": stack.model, "dataset": data, "mode": "finetune", "base": "v1",
            "epoch_fraction": 1.0,
        }))
        .await?["id"]
        .as_str()
        .context("no job id")?
        .to_owned();
    let job = stack.wait_final(&v2).await?;
    ensure!(
        job["state"] == "failed" && error_of(&job).contains("checkpoint"),
        "the corrupt base: {} {}",
        job["state"],
        error_of(&job)
    );

    // The worker goes on: a good job after all that, numbered after the failed one (whose
    // number stays taken), never after the forged one.
    let v3 = stack.submit_scratch(&data, 1, json!({})).await?;
    let job = stack.wait_succeeded(&v3).await?;
    ensure!(job["version"] == "v3", "{}", job["version"]);
    check_committed(&stack, &job).await?;
    ensure!(stack.versions().await? == [1, 3]);
    let forged_prefix = keys::version_prefix(&stack.cluster.model, forged.output_version);
    ensure!(
        stack.cluster.store.list(&forged_prefix).await?.is_empty(),
        "the forged job stored something"
    );

    // Garbage and the unknown version are in the dead-letter queue, nothing else.
    let channel = stack.cluster.broker.channel().await?;
    let queue = stack.cluster.broker.topology().dead_letter_queue();
    let mut dead = Vec::new();
    wait_until(
        "two dead letters",
        std::time::Duration::from_secs(30),
        async || {
            while let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
            {
                dead.push(message.delivery.data.clone());
            }
            Ok(done_if(dead.len() >= 2, (), || {
                format!("{} dead letters", dead.len())
            }))
        },
    )
    .await?;
    ensure!(dead.len() == 2, "{} dead letters", dead.len());
    ensure!(dead.iter().any(|m| m.starts_with(b"\x00not msgpack")));
    stack.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cancels_a_running_job() -> Result<()> {
    let mut stack = Stack::new("wcancel").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(1)?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, 100_000, json!({})).await?;
    stack
        .wait_event(&id, "progress", |e| e["type"] == "progress")
        .await?;
    stack.cancel(&id).await?;
    let job = stack.wait_final(&id).await?;
    let kinds = event_types(&job);
    ensure!(
        job["state"] == "cancelled"
            && events(&job)
                .iter()
                .rev()
                .find(|e| e["type"] != "heartbeat")
                .is_some_and(|e| e["type"] == "cancelled"),
        "{}: {kinds:?}",
        job["state"]
    );
    ensure!(stack.versions().await?.is_empty());
    ensure!(
        kinds.iter().filter(|k| *k == "started").count() == 1,
        "{kinds:?}"
    );
    // The worker is free again: the next job runs.
    let small = stack.upload_examples(&examples(2)?).await?;
    let next = stack.submit_scratch(&small, 1, json!({})).await?;
    stack.wait_succeeded(&next).await?;
    stack.finish().await
}
