//! "Done when" 7: the coordinator and the workers run as the least-privilege users
//! `deploy/rabbitmq.sh users` creates, and a job runs. With the worker user's credentials,
//! RabbitMQ refuses (ACCESS_REFUSED) publishing a job, reading the coordinator's queues and the
//! dead letters, writing to another worker's inbox and declaring queues under the prefix;
//! another connection's inbox cannot be read at all. What the worker user may publish, events,
//! counts only from the lease holder: forged `succeeded`, `failed` and `released` events for a
//! job the sender does not hold are dropped and counted, and the job ends with its holder's
//! version.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use refit_io::queue::{Broker, Consumer, Publisher, QueueConfig};
use refit_proto::manifest::FileEntry;
use refit_proto::{AttemptId, Control, ErrorKind, Event, EventKind, JobId, Version, WorkerId};
use serde_json::json;

use super::{check_one_run, holders};
use crate::common::api::metric;
use crate::common::examples;
use crate::common::jobs::EVERY_EPOCH;
use crate::common::stack::{Options, Stack};

/// Whether lapin's error is the broker's ACCESS_REFUSED.
fn access_refused(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_user_may_not_publish_jobs_read_other_queues_or_forge_results() -> Result<()> {
    let mut stack = Stack::with(
        "operm",
        Options {
            role_users: true,
            ..Options::default()
        },
    )
    .await?;
    stack.start_coordinator(&[]).await?;
    stack.start_worker(&[EVERY_EPOCH, ("REFIT_FAULT", "slow-step=50")])?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, 40, json!({})).await?;
    stack.wait_checkpoint(&id, 1.0).await?;
    let job_id: JobId = id.parse()?;

    let worker_url = stack
        .role_users
        .as_ref()
        .context("no role users")?
        .worker_url
        .clone();
    let broker = Broker::connect(&QueueConfig::for_test(&worker_url, &stack.cluster.prefix))
        .await
        .context("the worker user cannot connect")?;
    let topology = broker.topology();

    // Publishing a job.
    let mut forged = stack.reserved_job(1).await?;
    forged.id = JobId::new();
    forged.output_version = Version::new(2)?;
    let publisher = Publisher::new(&broker).await?;
    let error = publisher
        .publish_job(&forged)
        .await
        .expect_err("the worker user published a job");
    ensure!(error.is_access_refused(), "publishing a job: {error}");

    // Reading the coordinator's queues and the dead letters.
    for queue in [
        topology.coordinator_events_queue(),
        topology.coordinator_dead_queue(),
        topology.dead_letter_queue(),
    ] {
        let channel = broker.channel().await?;
        let error = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .expect_err("the worker user read a queue it may not");
        ensure!(access_refused(&error), "reading {queue}: {error}");
    }

    // Writing to an inbox (a forged cancel to another worker), through the default exchange.
    let (admin_inbox, name) = Consumer::inbox(&stack.cluster.broker).await?;
    let inbox = name.borrow().clone();
    let error = publisher
        .send_control(&inbox, &Control::Cancel { job_id })
        .await
        .expect_err("the worker user wrote to an inbox");
    ensure!(error.is_access_refused(), "writing to an inbox: {error}");
    // Reading another connection's inbox: it is exclusive to that connection.
    let channel = broker.channel().await?;
    let read = channel
        .basic_consume(
            inbox.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    ensure!(
        read.is_err(),
        "the worker user read another connection's inbox"
    );
    admin_inbox.close().await;

    // Declaring a queue under the prefix.
    let channel = broker.channel().await?;
    let error = channel
        .queue_declare(
            format!("{}.mine", stack.cluster.prefix).as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the worker user declared a queue");
    ensure!(access_refused(&error), "declaring a queue: {error}");

    // Forged events for the running job, from an attempt that does not hold it (with the fence
    // the holder has, and a higher one): the broker takes them, the coordinator drops them.
    let holder_fence = stack.job(&id).await?["events"]
        .as_array()
        .and_then(|events| {
            events
                .iter()
                .find(|e| e["type"] == "claim" && e["body"]["granted"] == true)
        })
        .and_then(|e| e["body"]["fence"].as_u64())
        .context("no granted claim with a fence")?;
    let forger = AttemptId::new();
    let files = BTreeMap::from([(
        refit_proto::keys::MANIFEST.to_owned(),
        FileEntry {
            sha256: "00".repeat(32),
            size: 1,
            path: None,
        },
    )]);
    let kinds = [
        EventKind::Succeeded {
            version: Version::first(),
            metrics: None,
            timings: BTreeMap::new(),
            files,
        },
        EventKind::Failed {
            error: "forged".into(),
            error_kind: ErrorKind::Permanent,
        },
        EventKind::Released {
            reason: "forged".into(),
        },
    ];
    let publisher = Publisher::new(&broker).await?;
    for (kind, fence) in kinds.into_iter().zip([holder_fence, holder_fence + 1, 0]) {
        publisher
            .publish_event(&Event {
                job_id,
                attempt: 1,
                worker_id: WorkerId::new("forger")?,
                at: Utc::now(),
                kind,
                attempt_id: Some(forger),
                fence: Some(fence),
            })
            .await
            .context("the worker user may publish events")?;
    }
    stack
        .wait_metrics("three forged events dropped", |text| {
            metric(
                text,
                "refit_events_dropped_total",
                &[("reason", "not_holder")],
            )
            .is_some_and(|n| n >= 3.0)
        })
        .await?;
    publisher.close().await;
    broker.close().await;

    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    ensure!(
        job["events"]
            .as_array()
            .is_some_and(|events| events.iter().all(|e| e["worker"] != "forger")),
        "a forged event was recorded"
    );
    ensure!(holders(&job).len() == 1);
    check_one_run(&stack, &job, 0).await?;
    stack.finish().await
}
