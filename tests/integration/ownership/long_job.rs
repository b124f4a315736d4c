//! "Done when" 3: with the broker's consumer timeout at 60 s (`consumer_timeout`, set for the
//! test with `rabbitmqctl eval` and restored after), a job of three epochs of over 60 s each
//! succeeds with one attempt: the worker acks its delivery as soon as its lease is granted, and
//! the lease, not the delivery, holds the job from then on. A probe consumer that holds a
//! delivery unacked shows the timeout is in force meanwhile (the broker closes its channel).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use super::holders;
use crate::common::broker_users::rabbitmqctl;
use crate::common::examples;
use crate::common::jobs::{EVERY_EPOCH, check_committed, events};
use crate::common::stack::Stack;

/// The consumer timeout the test sets.
const CONSUMER_TIMEOUT_MS: u64 = 60_000;
/// Training steps per epoch: 64 examples at a batch size of 32.
const STEPS: u64 = 2;
/// The delay before each step: an epoch takes over 65 s.
const STEP_DELAY_MS: u64 = 33_000;
const EPOCHS: u32 = 3;

/// `rabbitmqctl eval <expression>`'s output.
fn eval(expression: &str) -> Result<String> {
    let output = Command::new(rabbitmqctl())
        .args(["eval", expression])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} (set REFIT_TEST_RABBITMQCTL)", rabbitmqctl()))?;
    ensure!(
        output.status.success(),
        "rabbitmqctl eval {expression} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The broker's `consumer_timeout`, set for the test and restored when dropped.
struct ConsumerTimeout {
    /// What `application:get_env` said before: `{ok,N}` or `undefined`.
    previous: String,
}

impl ConsumerTimeout {
    fn set(ms: u64) -> Result<Self> {
        let previous = eval("application:get_env(rabbit, consumer_timeout).")?;
        eval(&format!(
            "application:set_env(rabbit, consumer_timeout, {ms})."
        ))?;
        Ok(Self { previous })
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        let restore = match self
            .previous
            .strip_prefix("{ok,")
            .and_then(|rest| rest.strip_suffix('}'))
        {
            Some(value) => format!("application:set_env(rabbit, consumer_timeout, {value})."),
            None => "application:unset_env(rabbit, consumer_timeout).".to_owned(),
        };
        if let Err(error) = eval(&restore) {
            eprintln!("could not restore the broker's consumer_timeout ({restore}): {error:#}");
        }
    }
}

fn received(event: &Value) -> Option<DateTime<Utc>> {
    event["received_at"].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_epochs_longer_than_the_consumer_timeout_succeeds_in_one_attempt() -> Result<()> {
    let timeout = ConsumerTimeout::set(CONSUMER_TIMEOUT_MS)?;
    let mut stack = Stack::new("olong").await?;

    // The probe: a delivery held unacked on a channel opened under the new setting.
    let probe = stack.cluster.broker.channel().await?;
    let probe_queue = format!("{}.probe", stack.cluster.prefix);
    probe
        .queue_declare(
            probe_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    probe
        .basic_publish(
            "".into(),
            probe_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"held",
            BasicProperties::default(),
        )
        .await?;
    let mut held = probe
        .basic_consume(
            probe_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _delivery = tokio::time::timeout(Duration::from_secs(30), held.next())
        .await
        .context("the probe got no delivery in time")?
        .context("the probe consumer ended")??;

    stack.start_coordinator(&[]).await?;
    let slow = format!("slow-step={STEP_DELAY_MS}");
    stack.start_worker(&[EVERY_EPOCH, ("REFIT_FAULT", &slow)])?;
    let mut data = examples(8)?;
    ensure!(data.len() >= 64, "{} examples", data.len());
    data.truncate((STEPS * 32) as usize);
    let data = stack.upload_examples(&data).await?;
    let id = stack.submit_scratch(&data, EPOCHS, json!({})).await?;
    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;

    ensure!(
        !probe.status().connected(),
        "the probe's channel is still open: the consumer timeout was not in force"
    );
    // One attempt: one grant, no lapse, no hand-back, one delivery.
    ensure!(
        holders(&job).len() == 1
            && job["failures"] == 0
            && job["handbacks"] == 0
            && job["attempts"] == 1,
        "holders {:?}, failures {}, handbacks {}, attempts {}",
        holders(&job),
        job["failures"],
        job["handbacks"],
        job["attempts"]
    );
    // Every epoch took longer than the timeout: `started`, the checkpoints after epochs 1 and 2,
    // and `succeeded` are each over 60 s apart; the whole run took over 3 minutes.
    let marks: Vec<DateTime<Utc>> = events(&job)
        .iter()
        .filter(|e| {
            e["type"] == "started"
                || e["type"] == "succeeded"
                || (e["type"] == "checkpointed"
                    && e["body"]["epoch"]
                        .as_f64()
                        .is_some_and(|x| x < f64::from(EPOCHS)))
        })
        .filter_map(received)
        .collect();
    ensure!(marks.len() == 4, "{} marks: {:?}", marks.len(), marks);
    let limit = chrono::Duration::milliseconds(CONSUMER_TIMEOUT_MS as i64);
    for pair in marks.windows(2) {
        ensure!(
            pair[1] - pair[0] > limit,
            "an epoch took {:?}, not over the consumer timeout",
            pair[1] - pair[0]
        );
    }
    ensure!(marks[3] - marks[0] >= chrono::Duration::minutes(3));
    check_committed(&stack, &job).await?;
    ensure!(stack.versions().await? == [1]);
    let result = stack.finish().await;
    drop(timeout);
    result
}
