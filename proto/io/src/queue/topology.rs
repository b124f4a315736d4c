//! [`Topology`]: the names, arguments and declarations of refit's exchanges and queues.
//!
//! With prefix `refit` and pool `default` (the defaults):
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `refit.jobs` | direct exchange | routes a job to `refit.jobs.<pool>` by the pool's name, or to `refit.jobs.<pool>.high` by `<pool>.high` |
//! | `refit.jobs.<pool>` | durable quorum queue | a pool's jobs of priority 0; delivery limit, dead-lettered to `refit.jobs.dlx` |
//! | `refit.jobs.<pool>.high` | durable quorum queue | the pool's jobs of priority above 0, which its workers take first; the same arguments |
//! | `refit.jobs.dlx` | fanout exchange | where the job queues dead-letter to |
//! | `refit.jobs.dead` | durable quorum queue | jobs rejected or past the delivery limit, for an operator |
//! | `refit.jobs.dead.coordinator` | durable quorum queue | the coordinator's copy of every dead-lettered job |
//! | `refit.events` | topic exchange | worker events, routing key `job.<job id>.<event>`; worker presence, `worker.<worker id>.<state>` |
//! | `refit.events.coordinator` | durable quorum queue | every event (`#`), for the coordinator (one consumer at a time) |
//! | `amq.gen-…` (server-named) | exclusive auto-delete queue | a worker connection's inbox: the coordinator's answers and orders for that worker's attempts, sent through the default exchange |
//!
//! Only the coordinator needs to declare (configure): a worker declares what it may (its own
//! inbox always; the rest when its broker user is allowed to, else it checks passively that the
//! coordinator has).
//!
//! Declaring is idempotent: declaring the same names with the same arguments again is a no-op.
//! Declaring an existing queue with *other* arguments (another delivery limit, say) fails with
//! `PRECONDITION_FAILED`, a permanent error; change such settings with a RabbitMQ policy or by
//! deleting the queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use refit_proto::{Event, WorkerStatus};

use super::config::QueueConfig;
use super::error::QueueError;

/// The job queue's dead-letter strategy. `at-least-once` keeps a dead-lettered job in its queue
/// until the dead-letter queue has confirmed it, so a job cannot vanish between the two (the
/// default `at-most-once` could drop it if the dead-letter queue is unavailable). RabbitMQ requires
/// `x-overflow = reject-publish` with it; as refit sets no length limit, that never triggers.
const DEAD_LETTER_STRATEGY: &str = "at-least-once";

/// The names and queue arguments derived from a [`QueueConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    pool: String,
    delivery_limit: u32,
    consumer_timeout_ms: Option<u64>,
}

impl Topology {
    /// The topology a config describes. Call [`QueueConfig::validate`] first (the
    /// [`Broker`](super::Broker) does); names from an unvalidated config may be refused by the
    /// broker.
    pub fn new(config: &QueueConfig) -> Self {
        Self {
            prefix: config.prefix.clone(),
            pool: config.pool.clone(),
            delivery_limit: config.delivery_limit,
            consumer_timeout_ms: config.consumer_timeout_ms,
        }
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This process's pool.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// `<prefix>.jobs`: the direct exchange jobs are published to, routing key = pool.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// `<prefix>.jobs.<pool>`: this pool's job queue.
    pub fn job_queue(&self) -> String {
        self.job_queue_for(&self.pool)
    }

    /// `<prefix>.jobs.<pool>` for any pool.
    pub fn job_queue_for(&self, pool: &str) -> String {
        format!("{}.jobs.{pool}", self.prefix)
    }

    /// `<prefix>.jobs.<pool>.high`: the pool's queue of jobs with a priority above 0, which its
    /// workers drain before the other (quorum queues ignore message priorities before
    /// RabbitMQ 4.0, so the priority class is a queue of its own). Pool names hold no `.`, so it
    /// is never another pool's queue.
    pub fn priority_queue_for(&self, pool: &str) -> String {
        format!("{}.high", self.job_queue_for(pool))
    }

    /// A pool's job queues in the order its workers take from them: the priority queue first.
    pub fn job_queues_for(&self, pool: &str) -> [String; 2] {
        [self.priority_queue_for(pool), self.job_queue_for(pool)]
    }

    /// The routing key of a job of `priority` for `pool` on [`Self::jobs_exchange`].
    pub fn job_routing_key(pool: &str, priority: u8) -> String {
        if priority > 0 {
            format!("{pool}.high")
        } else {
            pool.to_owned()
        }
    }

    /// `<prefix>.jobs.dlx`: the fanout exchange job queues dead-letter to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.jobs.dlx", self.prefix)
    }

    /// `<prefix>.jobs.dead`: where dead-lettered jobs wait for an operator.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.jobs.dead", self.prefix)
    }

    /// `<prefix>.events`: the topic exchange workers report events to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// `<prefix>.events.coordinator`: the coordinator's queue of every event.
    pub fn coordinator_events_queue(&self) -> String {
        format!("{}.events.coordinator", self.prefix)
    }

    /// `<prefix>.jobs.dead.coordinator`: the coordinator's copy of every dead-lettered job.
    pub fn coordinator_dead_queue(&self) -> String {
        format!("{}.jobs.dead.coordinator", self.prefix)
    }

    /// `<prefix>.coordinator.lock`: the coordinator lock. An exclusive queue lives as long as
    /// the connection that declared it and no other connection can declare it meanwhile, so the
    /// coordinator whose connection holds it is the active one; when that connection goes (the
    /// process died, the network dropped it), the broker deletes the queue and a standby takes it.
    pub fn coordinator_lock_queue(&self) -> String {
        format!("{}.coordinator.lock", self.prefix)
    }

    /// Takes the coordinator lock for `channel`'s connection ([`Self::coordinator_lock_queue`]);
    /// [`QueueError::Locked`] when another connection holds it. Taking it again on the same
    /// connection succeeds.
    pub async fn take_coordinator_lock(&self, channel: &Channel) -> Result<(), QueueError> {
        let queue = self.coordinator_lock_queue();
        let mut args = FieldTable::default();
        // Exclusive queues are always classic, whatever the vhost's default type.
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.as_str().into(), options, args)
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.kind(),
                    lapin::ErrorKind::ProtocolError(amqp)
                        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED))
                ) =>
            {
                Err(QueueError::Locked { queue })
            }
            Err(error) => Err(QueueError::amqp(format!("declare queue {queue}"))(error)),
        }
    }

    /// An event's routing key: `job.<job id>.<event name>`, e.g. `job.0190….progress`.
    pub fn event_routing_key(event: &Event) -> String {
        format!("job.{}.{}", event.job_id, event.kind.name())
    }

    /// A worker status's routing key: `worker.<worker id>.<state>`, e.g. `worker.gpu-1.online`.
    pub fn worker_status_routing_key(status: &WorkerStatus) -> String {
        format!("worker.{}.{}", status.worker_id, status.state.as_str())
    }

    /// The job queues' arguments: quorum type, delivery limit, dead-lettering (at-least-once,
    /// which needs `x-overflow = reject-publish`), and the consumer timeout when configured.
    pub fn job_queue_arguments(&self) -> FieldTable {
        let mut args = quorum_arguments();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString(DEAD_LETTER_STRATEGY.into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        if let Some(ms) = self.consumer_timeout_ms {
            args.insert(
                "x-consumer-timeout".into(),
                AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
            );
        }
        args
    }

    /// Declares the exchanges, this pool's job queue and the dead-letter queue, and binds them.
    /// Both services call it before publishing or consuming jobs.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        self.declare_exchanges(channel).await?;
        let dead = self.dead_letter_queue();
        declare_queue(channel, &dead, quorum_arguments()).await?;
        bind(channel, &dead, &self.dead_letter_exchange(), "").await?;
        self.declare_job_queue(channel, &self.pool).await
    }

    /// Declares another pool's job queues, its priority queue included (the coordinator does,
    /// for every pool it publishes to).
    pub async fn declare_job_queue(&self, channel: &Channel, pool: &str) -> Result<(), QueueError> {
        let exchange = self.jobs_exchange();
        for (queue, priority) in [
            (self.job_queue_for(pool), 0),
            (self.priority_queue_for(pool), 1),
        ] {
            declare_queue(channel, &queue, self.job_queue_arguments()).await?;
            bind(
                channel,
                &queue,
                &exchange,
                &Self::job_routing_key(pool, priority),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares the coordinator's durable queues: its events queue, bound to every event (`#`),
    /// and its copy of the dead-letter exchange.
    pub async fn declare_coordinator(&self, channel: &Channel) -> Result<(), QueueError> {
        self.declare_exchanges(channel).await?;
        let queue = self.coordinator_events_queue();
        declare_queue(channel, &queue, quorum_arguments()).await?;
        bind(channel, &queue, &self.events_exchange(), "#").await?;
        let dead = self.coordinator_dead_queue();
        declare_queue(channel, &dead, quorum_arguments()).await?;
        bind(channel, &dead, &self.dead_letter_exchange(), "").await
    }

    /// Declares a server-named, exclusive, auto-delete queue (not bound to anything: messages
    /// reach it through the default exchange, by its name) and returns its name. It lives as
    /// long as the connection that declared it, and no other connection can read it.
    pub async fn declare_inbox(&self, channel: &Channel) -> Result<String, QueueError> {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::amqp("declare an inbox queue"))?;
        Ok(queue.name().as_str().to_owned())
    }

    /// Checks, without declaring anything (which needs no permission), that this pool's job
    /// queues (its priority queue too) and the events exchange exist: what a worker whose broker user may not configure
    /// does instead of [`Topology::declare`]. `NOT_FOUND` (permanent) while the coordinator has
    /// not declared them yet.
    pub async fn check_declared(&self, channel: &Channel) -> Result<(), QueueError> {
        for queue in self.job_queues_for(&self.pool) {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(QueueError::amqp(format!("check queue {queue}")))?;
        }
        let exchange = self.events_exchange();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::amqp(format!("check exchange {exchange}")))
    }

    async fn declare_exchanges(&self, channel: &Channel) -> Result<(), QueueError> {
        declare_exchange(channel, &self.jobs_exchange(), ExchangeKind::Direct).await?;
        declare_exchange(channel, &self.dead_letter_exchange(), ExchangeKind::Fanout).await?;
        declare_exchange(channel, &self.events_exchange(), ExchangeKind::Topic).await
    }
}

fn quorum_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), QueueError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
        .map_err(QueueError::amqp(format!("declare exchange {name}")))
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), QueueError> {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(QueueError::amqp(format!("declare queue {name}")))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), QueueError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(QueueError::amqp(format!(
            "bind queue {queue} to exchange {exchange} with key {routing_key:?}"
        )))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use refit_proto::{EventKind, JobId, WorkerId};

    use super::*;

    fn arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
        args.inner().get(key)
    }

    fn string(value: Option<&AMQPValue>) -> String {
        match value {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("expected a long string, got {other:?}"),
        }
    }

    #[test]
    fn default_names_match_the_design() {
        let topology = Topology::new(&QueueConfig::default());
        assert_eq!(topology.jobs_exchange(), "refit.jobs");
        assert_eq!(topology.job_queue(), "refit.jobs.default");
        assert_eq!(topology.job_queue_for("gpu"), "refit.jobs.gpu");
        assert_eq!(topology.dead_letter_exchange(), "refit.jobs.dlx");
        assert_eq!(topology.dead_letter_queue(), "refit.jobs.dead");
        assert_eq!(topology.events_exchange(), "refit.events");
        assert_eq!(
            topology.coordinator_events_queue(),
            "refit.events.coordinator"
        );
    }

    #[test]
    fn names_follow_prefix_and_pool() {
        let config = QueueConfig {
            prefix: "t-42".into(),
            pool: "gpu".into(),
            ..QueueConfig::default()
        };
        let topology = Topology::new(&config);
        assert_eq!(topology.job_queue(), "t-42.jobs.gpu");
        assert_eq!(topology.dead_letter_queue(), "t-42.jobs.dead");
        assert_eq!(topology.events_exchange(), "t-42.events");
        // The priority queue first: the order workers take jobs in.
        assert_eq!(
            topology.job_queues_for("gpu"),
            ["t-42.jobs.gpu.high", "t-42.jobs.gpu"]
        );
        assert_eq!(Topology::job_routing_key("gpu", 0), "gpu");
        assert_eq!(Topology::job_routing_key("gpu", 1), "gpu.high");
        assert_eq!(Topology::job_routing_key("gpu", 255), "gpu.high");
    }

    #[test]
    fn job_queue_is_a_quorum_queue_with_limit_and_dead_lettering() {
        let config = QueueConfig {
            delivery_limit: 2,
            ..QueueConfig::default()
        };
        let args = Topology::new(&config).job_queue_arguments();
        assert_eq!(string(arg(&args, "x-queue-type")), "quorum");
        assert_eq!(
            arg(&args, "x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(2))
        );
        assert_eq!(
            string(arg(&args, "x-dead-letter-exchange")),
            "refit.jobs.dlx"
        );
        assert_eq!(
            string(arg(&args, "x-dead-letter-strategy")),
            "at-least-once"
        );
        assert_eq!(string(arg(&args, "x-overflow")), "reject-publish");
        assert_eq!(arg(&args, "x-consumer-timeout"), None);
    }

    #[test]
    fn consumer_timeout_becomes_a_queue_argument() {
        let config = QueueConfig {
            consumer_timeout_ms: Some(7_200_000),
            ..QueueConfig::default()
        };
        let args = Topology::new(&config).job_queue_arguments();
        assert_eq!(
            arg(&args, "x-consumer-timeout"),
            Some(&AMQPValue::LongLongInt(7_200_000))
        );
    }

    #[test]
    fn event_routing_keys_name_job_and_event() {
        let job_id = JobId::new();
        let event = Event {
            job_id,
            attempt: 1,
            worker_id: WorkerId::new("w1").unwrap(),
            at: Utc::now(),
            kind: EventKind::Cancelled,
            attempt_id: None,
            fence: None,
        };
        assert_eq!(
            Topology::event_routing_key(&event),
            format!("job.{job_id}.cancelled")
        );
    }
}
