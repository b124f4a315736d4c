//! RabbitMQ adapter tests, against the real broker at `REFIT_TEST_AMQP_URL` (default: the local
//! broker `deploy/rabbitmq.sh` starts).
//!
//! Each test declares its own exchanges and queues under a unique prefix, so tests run in
//! parallel on one broker, and a [`TestBroker`] deletes them when it is dropped, even after a
//! failed assertion. Nothing here closes other connections or touches other names.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use refit_io::queue::{Broker, Consumer, Delivery, Publisher, QueueConfig, QueueError};
use refit_proto::{
    AttemptId, Control, DatasetRef, Event, EventKind, Hyperparams, JobId, JobSpec, Message, Mode,
    ModelName, Version, WorkerId, WorkerState, WorkerStatus,
};

use crate::common::wait::{Waiting, done_if, wait_until};
use crate::common::{amqp_url, connect_broker, unique};

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

/// A config with this test's own prefix.
fn test_config() -> QueueConfig {
    QueueConfig::for_test(&amqp_url(), &unique("t"))
}

/// A connected broker whose prefix's exchanges and queues are deleted on drop.
struct TestBroker {
    broker: Broker,
    config: QueueConfig,
    /// Extra pools whose job queues to delete.
    pools: Vec<String>,
}

impl TestBroker {
    /// Connects, or fails saying how to start RabbitMQ.
    async fn start(config: QueueConfig) -> Result<Self> {
        let broker = connect_broker(&config).await?;
        Ok(Self {
            broker,
            config,
            pools: Vec::new(),
        })
    }

    /// Starts and declares the worker topology.
    async fn declared(config: QueueConfig) -> Result<Self> {
        let test = Self::start(config).await?;
        let channel = test.broker.channel().await?;
        test.broker.topology().declare(&channel).await?;
        Ok(test)
    }

    /// Closes the connection (the broker requeues whatever is still unacked on it before it
    /// confirms the close) and connects again, so counts taken afterwards are final.
    async fn reconnect(&mut self) -> Result<()> {
        self.broker.close().await;
        self.broker = Broker::connect(&self.config).await?;
        Ok(())
    }

    /// A queue's ready-message and consumer counts (passive declare).
    async fn counts(&self, queue: &str) -> Result<(u32, u32)> {
        let channel = self.broker.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("passive declare of {queue}"))?;
        Ok((declared.message_count(), declared.consumer_count()))
    }

    /// Gets one message from a queue (polling until `WAIT`), acked.
    async fn get(&self, queue: &str) -> Result<lapin::message::Delivery> {
        let channel = self.broker.channel().await?;
        wait_until(&format!("a message in {queue}"), WAIT, async || {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await?;
            Ok(match got {
                Some(message) => Waiting::Done(message.delivery),
                None => Waiting::NotYet("the queue is empty".to_owned()),
            })
        })
        .await
    }
}

impl Drop for TestBroker {
    /// Deletes the test's queues and exchanges, best effort, on a connection and runtime of its
    /// own (a test's runtime may be gone or blocked here).
    fn drop(&mut self) {
        let topology = self.broker.topology();
        let mut queues = vec![
            topology.job_queue(),
            topology.dead_letter_queue(),
            topology.coordinator_events_queue(),
        ];
        queues.extend(self.pools.iter().map(|pool| topology.job_queue_for(pool)));
        let exchanges = [
            topology.jobs_exchange(),
            topology.dead_letter_exchange(),
            topology.events_exchange(),
        ];
        let url = self.config.url.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(Ok(connection)) = tokio::time::timeout(
                    WAIT,
                    Connection::connect(&url, ConnectionProperties::default()),
                )
                .await
                else {
                    return;
                };
                for queue in queues {
                    // A fresh channel each time: an error closes the channel it happened on.
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel
                            .queue_delete(queue.into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for exchange in exchanges {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel
                            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                }
                let _ = connection.close(200, "test cleanup".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

fn job() -> JobSpec {
    JobSpec {
        id: JobId::new(),
        model: ModelName::new("financial").expect("a valid model name"),
        mode: Mode::Finetune,
        base_version: Some(Version::first()),
        output_version: Version::new(2).expect("a valid version"),
        dataset: DatasetRef {
            key: format!("datasets/sha256/{}.yml", "ab".repeat(32)),
            sha256: "ab".repeat(32),
        },
        eval_dataset: None,
        hyperparams: Hyperparams::default(),
        priority: 0,
        submitted_at: Utc::now(),
        deadline: None,
        promote_to: None,
    }
}

async fn next(consumer: &mut Consumer) -> Result<Delivery> {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(delivery)) => Ok(delivery?),
        Ok(None) => bail!("the consumer ended"),
        Err(_) => bail!("no delivery within {WAIT:?}"),
    }
}

/// Takes the next delivery and checks it is `expected` under `routing_key`, then acks it.
async fn receive<M: Message + PartialEq + std::fmt::Debug>(
    consumer: &mut Consumer,
    routing_key: &str,
    expected: &M,
) -> Result<()> {
    let delivery = next(consumer).await?;
    assert_eq!(delivery.routing_key(), routing_key);
    assert_eq!(&delivery.decode::<M>()?, expected);
    delivery.ack().await?;
    Ok(())
}

/// Waits until `queue` has no consumer, then returns its ready-message count.
async fn ready_once_idle(test: &TestBroker, queue: &str) -> Result<u32> {
    wait_until(&format!("{queue} to have no consumer"), WAIT, async || {
        let (messages, consumers) = test.counts(queue).await?;
        Ok(done_if(consumers == 0, messages, || {
            format!("{consumers} consumer(s)")
        }))
    })
    .await
}

#[tokio::test]
async fn unreachable_broker_fails_saying_how_to_start_it() {
    let mut config = QueueConfig::for_test("amqp://guest:hunter2@127.0.0.1:1/%2f", "unused");
    config.connect_timeout_ms = 1_000;
    let error = Broker::connect(&config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(error, QueueError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
    let message = error.to_string();
    assert!(
        message.contains("is RabbitMQ running on 127.0.0.1:1? start it with deploy/rabbitmq.sh"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("guest:***@127.0.0.1:1"), "{message}");
}

#[tokio::test]
async fn declaring_is_idempotent_and_conflicting_arguments_are_permanent() -> Result<()> {
    let test = TestBroker::declared(test_config()).await?;
    let topology = test.broker.topology();
    topology.declare(&test.broker.channel().await?).await?;
    topology
        .declare_coordinator(&test.broker.channel().await?)
        .await?;
    topology
        .declare_coordinator(&test.broker.channel().await?)
        .await?;

    let mut other = test.config.clone();
    other.delivery_limit += 1;
    let other = refit_io::queue::Topology::new(&other);
    let error = other
        .declare(&test.broker.channel().await?)
        .await
        .expect_err("another delivery limit on an existing queue");
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("PRECONDITION_FAILED"), "{error}");
    Ok(())
}

/// DESIGN §6: a per-queue consumer timeout. RabbitMQ before 3.11.15 accepts the argument and
/// ignores it; later versions apply it. Either way declaring must work.
#[tokio::test]
async fn consumer_timeout_argument_is_accepted() -> Result<()> {
    let mut config = test_config();
    config.consumer_timeout_ms = Some(4 * 3600 * 1000);
    let _test = TestBroker::declared(config).await?;
    Ok(())
}

#[tokio::test]
async fn published_job_is_consumed_decoded_and_acked() -> Result<()> {
    let mut test = TestBroker::declared(test_config()).await?;
    let publisher = Publisher::new(&test.broker).await?;
    let sent = job();
    publisher.publish_job(&sent).await?;

    let mut consumer = Consumer::jobs(&test.broker).await?;
    let delivery = next(&mut consumer).await?;
    let received: JobSpec = delivery.decode()?;
    assert_eq!(received, sent);
    assert_eq!(delivery.message_id(), Some(sent.id.to_string().as_str()));
    assert_eq!(delivery.routing_key(), "default");
    assert!(!delivery.redelivered());
    assert_eq!(delivery.delivery_count(), 0);
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await?;

    // An unacked message would be back in the queue once the connection is closed.
    consumer.cancel().await?;
    drop((consumer, publisher));
    test.reconnect().await?;
    let queue = test.broker.topology().job_queue();
    assert_eq!(ready_once_idle(&test, &queue).await?, 0);
    Ok(())
}

#[tokio::test]
async fn nacked_job_is_redelivered_with_a_higher_count() -> Result<()> {
    let mut test = TestBroker::declared(test_config()).await?;
    let publisher = Publisher::new(&test.broker).await?;
    let sent = job();
    publisher.publish_job(&sent).await?;

    let mut consumer = Consumer::jobs(&test.broker).await?;
    let first = next(&mut consumer).await?;
    assert_eq!(first.delivery_count(), 0);
    let body = first.body().to_vec();
    first.nack_requeue().await?;

    let second = next(&mut consumer).await?;
    assert_eq!(second.body(), body.as_slice());
    assert!(second.redelivered());
    assert_eq!(second.delivery_count(), 1);
    assert_eq!(second.attempt(), 2);
    second.ack().await?;

    consumer.cancel().await?;
    drop((consumer, publisher));
    test.reconnect().await?;
    assert_eq!(
        ready_once_idle(&test, &test.broker.topology().job_queue()).await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn dropped_delivery_is_requeued() -> Result<()> {
    let test = TestBroker::declared(test_config()).await?;
    let publisher = Publisher::new(&test.broker).await?;
    let sent = job();
    publisher.publish_job(&sent).await?;

    let mut consumer = Consumer::jobs(&test.broker).await?;
    let first = next(&mut consumer).await?;
    drop(first); // a bug or a panicking handler: warns and nacks with requeue
    let second = next(&mut consumer).await?;
    assert_eq!(second.decode::<JobSpec>()?, sent);
    assert_eq!(second.delivery_count(), 1);
    second.ack().await?;
    Ok(())
}

#[tokio::test]
async fn jobs_past_the_delivery_limit_or_rejected_are_dead_lettered() -> Result<()> {
    let mut config = test_config();
    config.delivery_limit = 2;
    let mut test = TestBroker::declared(config).await?;
    let topology = test.broker.topology();
    let publisher = Publisher::new(&test.broker).await?;
    let mut consumer = Consumer::jobs(&test.broker).await?;

    // Handed back until the limit: delivered 3 times (counts 0, 1, 2), then dead-lettered.
    let retried = job();
    publisher.publish_job(&retried).await?;
    let mut body = Vec::new();
    for expected in 0..=2 {
        let delivery = next(&mut consumer).await?;
        assert_eq!(delivery.delivery_count(), expected);
        body = delivery.body().to_vec();
        delivery.nack_requeue().await?;
    }
    let dead = test.get(&topology.dead_letter_queue()).await?;
    assert_eq!(dead.data, body);
    assert_eq!(
        dead.properties.message_id().as_ref().map(|s| s.to_string()),
        Some(retried.id.to_string())
    );
    assert_eq!(x_death_reason(&dead), Some("delivery_limit".to_owned()));

    // Rejected: dead-lettered at once.
    let rejected = job();
    publisher.publish_job(&rejected).await?;
    let delivery = next(&mut consumer).await?;
    let body = delivery.body().to_vec();
    delivery.reject().await?;
    let dead = test.get(&topology.dead_letter_queue()).await?;
    assert_eq!(dead.data, body);
    assert_eq!(x_death_reason(&dead), Some("rejected".to_owned()));

    consumer.cancel().await?;
    drop((consumer, publisher));
    test.reconnect().await?;
    assert_eq!(ready_once_idle(&test, &topology.job_queue()).await?, 0);
    Ok(())
}

/// The `reason` of the first `x-death` entry RabbitMQ adds when dead-lettering.
fn x_death_reason(delivery: &lapin::message::Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(reason) => Some(reason.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test]
async fn unroutable_job_is_an_error_not_a_silent_loss() -> Result<()> {
    let mut test = TestBroker::declared(test_config()).await?;
    test.pools.push("nowhere".to_owned());
    let publisher = Publisher::new(&test.broker).await?;

    let error = publisher
        .publish_job_to("nowhere", &job())
        .await
        .expect_err("no queue for pool `nowhere`");
    assert!(
        matches!(
            &error,
            QueueError::Unroutable { routing_key, reply_code: 312, .. } if routing_key == "nowhere"
        ),
        "{error:?}"
    );
    assert!(!error.is_transient());

    // A missing exchange closes the channel; the publisher opens another for the next message.
    let error = publisher
        .publish("no-such-exchange", "x", b"bytes")
        .await
        .expect_err("no such exchange");
    assert!(error.to_string().contains("NOT_FOUND"), "{error}");
    publisher.publish_job(&job()).await?;
    assert_eq!(test.counts(&test.broker.topology().job_queue()).await?.0, 1);
    Ok(())
}

#[tokio::test]
async fn events_reach_the_coordinator_and_its_answers_reach_one_inbox() -> Result<()> {
    let test = TestBroker::declared(test_config()).await?;
    let topology = test.broker.topology();
    let publisher = Publisher::new(&test.broker).await?;

    let event = Event {
        job_id: JobId::new(),
        attempt: 1,
        worker_id: WorkerId::new("test-worker")?,
        at: Utc::now(),
        kind: EventKind::Heartbeat {
            phase: "train".into(),
            checkpoint_age_secs: None,
            trouble: None,
        },
        attempt_id: Some(AttemptId::new()),
        fence: Some(1),
    };
    // Before the coordinator declared its queue, nobody takes events: an error.
    let error = publisher
        .publish_event(&event)
        .await
        .expect_err("no events queue yet");
    assert!(matches!(error, QueueError::Unroutable { .. }), "{error:?}");

    let mut events = Consumer::events(&test.broker, 8).await?;
    assert_eq!(events.queue(), topology.coordinator_events_queue());
    // The events queue is consumed under the coordinator lock: a second coordinator (another
    // connection) is refused and stands by; its own connection may subscribe again.
    let standby = Broker::connect(test.broker.config()).await?;
    let second = Consumer::events(&standby, 8).await;
    assert!(
        second.as_ref().is_err_and(QueueError::is_locked),
        "a second coordinator consumed the events queue: {second:?}"
    );
    let dead = Consumer::dead_letters(&standby).await;
    assert!(dead.as_ref().is_err_and(QueueError::is_locked), "{dead:?}");
    Consumer::dead_letters(&test.broker).await?.close().await;

    // A worker's inbox: the event names it as reply_to, the answer reaches it and nobody else.
    let (mut inbox, name) = Consumer::inbox(&test.broker).await?;
    let (mut other, _) = Consumer::inbox(&test.broker).await?;
    let inbox_name = name.borrow().clone();
    assert!(inbox_name.starts_with("amq.gen-"), "{inbox_name}");
    publisher
        .publish_event_replying(&event, Some(&inbox_name))
        .await?;
    let delivery = next(&mut events).await?;
    assert_eq!(
        delivery.routing_key(),
        format!("job.{}.heartbeat", event.job_id)
    );
    assert_eq!(delivery.decode::<Event>()?, event);
    let reply_to = delivery.reply_to().map(str::to_owned);
    delivery.ack().await?;
    assert_eq!(reply_to.as_deref(), Some(inbox_name.as_str()));

    let revoked = Control::Revoked {
        job_id: event.job_id,
        attempt_id: event.attempt_id.expect("set above"),
        reason: "test".into(),
    };
    publisher.send_control(&inbox_name, &revoked).await?;
    let delivery = next(&mut inbox).await?;
    assert_eq!(delivery.decode::<Control>()?, revoked);
    delivery.ack().await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other.next())
            .await
            .is_err(),
        "another inbox got the message"
    );
    // An inbox that is gone (its connection closed) is no error: nobody is there to tell.
    publisher
        .send_control("amq.gen-no-such-queue", &revoked)
        .await?;
    inbox.close().await;
    other.close().await;
    events.close().await;
    standby.close().await;
    Ok(())
}

/// Worker presence reaches the coordinator's events queue next to the events, and expires there
/// when nobody reads it in time (the coordinator away); events do not expire.
#[tokio::test]
async fn worker_presence_reaches_the_events_queue_and_expires_unread() -> Result<()> {
    let test = TestBroker::declared(test_config()).await?;
    let publisher = Publisher::new(&test.broker).await?;
    let channel = test.broker.channel().await?;
    test.broker.topology().declare_coordinator(&channel).await?;
    let status = |state| WorkerStatus {
        worker_id: WorkerId::new("test-worker").expect("valid id"),
        at: Utc::now(),
        state,
        running: 0,
        pool: "default".into(),
    };
    let event = Event {
        job_id: JobId::new(),
        attempt: 1,
        worker_id: WorkerId::new("test-worker")?,
        at: Utc::now(),
        kind: EventKind::Cancelled,
        attempt_id: None,
        fence: None,
    };
    // Unread for longer than its TTL: gone. The event after it stays.
    publisher
        .publish_worker_status(&status(WorkerState::Online), Duration::from_millis(200))
        .await?;
    publisher.publish_event(&event).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = status(WorkerState::Stopping);
    publisher
        .publish_worker_status(&fresh, Duration::from_secs(60))
        .await?;

    let mut events = Consumer::events(&test.broker, 8).await?;
    receive(
        &mut events,
        &format!("job.{}.cancelled", event.job_id),
        &event,
    )
    .await?;
    receive(&mut events, "worker.test-worker.stopping", &fresh).await?;
    events.close().await;
    Ok(())
}

#[tokio::test]
async fn broker_reconnects_and_publisher_and_consumer_carry_on() -> Result<()> {
    let test = TestBroker::declared(test_config()).await?;
    let publisher = Publisher::new(&test.broker).await?;
    let mut consumer = Consumer::jobs(&test.broker).await?;

    // 1. The connection closed from under the broker (as a network drop would).
    let old = test.broker.connection().await?;
    old.close(320, "test: forced close".into()).await?;
    let new = wait_for_new_connection(&test.broker, &old).await?;
    assert!(new.status().connected());
    check_round_trip(&publisher, &mut consumer).await?;

    // 2. The broker itself closes the connection: a connection-level error (an unknown exchange
    //    type is COMMAND_INVALID), which only affects this test's connection.
    let old = new;
    let channel: Channel = old.create_channel().await?;
    let error = channel
        .exchange_declare(
            format!("{}.bogus", test.config.prefix).as_str().into(),
            ExchangeKind::Custom("refit-no-such-type".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("an unknown exchange type");
    assert!(error.to_string().contains("COMMAND_INVALID"), "{error}");
    let new = wait_for_new_connection(&test.broker, &old).await?;
    assert!(new.status().connected());
    check_round_trip(&publisher, &mut consumer).await?;

    consumer.cancel().await?;
    Ok(())
}

async fn wait_for_new_connection(
    broker: &Broker,
    old: &Arc<Connection>,
) -> Result<Arc<Connection>> {
    wait_until("a new connection", WAIT, async || {
        // `connection()` itself waits while the broker reconnects.
        let current = broker.connection().await?;
        let new = !Arc::ptr_eq(&current, old);
        Ok(done_if(new, current, || "the old one".to_owned()))
    })
    .await
}

/// A job published now arrives at the consumer (which may have to resubscribe first).
async fn check_round_trip(publisher: &Publisher, consumer: &mut Consumer) -> Result<()> {
    let sent = job();
    publish_retrying(publisher, &sent).await?;
    let delivery = next(consumer).await?;
    let received: JobSpec = delivery.decode()?;
    assert_eq!(received, sent);
    delivery.ack().await?;
    Ok(())
}

/// Publishes, retrying transient errors for a while (the first publish after a drop may find the
/// old channel dead).
async fn publish_retrying(publisher: &Publisher, job: &JobSpec) -> Result<()> {
    wait_until("a publish to go through", WAIT, async || {
        match publisher.publish_job(job).await {
            Ok(()) => Ok(Waiting::Done(())),
            Err(error) if error.is_transient() => Ok(Waiting::NotYet(error.to_string())),
            Err(error) => Err(error.into()),
        }
    })
    .await
}
