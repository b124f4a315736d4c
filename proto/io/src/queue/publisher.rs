//! [`Publisher`]: confirmed, persistent, mandatory publishing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use refit_proto::envelope::CONTENT_TYPE;
use refit_proto::{Control, Event, JobSpec, WorkerStatus};
use tokio::sync::Mutex;
use tracing::debug;

use super::broker::{Broker, close_channel};
use super::error::QueueError;
use super::topology::Topology;

/// AMQP `delivery_mode` for messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Publishes on one channel in confirm mode. Every `publish_*` returns only once the broker has
/// confirmed the message (it is then stored in every queue it was routed to), and fails on a nack,
/// on a missing confirm, or when the message matched no queue (published `mandatory`, so an
/// unroutable job is an error rather than silently dropped).
///
/// After a lost connection the next publish opens a new channel; the failed one returns a
/// transient error, and retrying it is safe because consumers expect duplicates (at-least-once).
/// Share one `Publisher` between tasks: calls may run concurrently.
pub struct Publisher {
    broker: Broker,
    topology: Topology,
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    /// Opens a confirm-mode channel on the broker's connection (waiting for one up to
    /// `connect_timeout_ms`). It does not declare the topology: call [`Topology::declare`] first.
    pub async fn new(broker: &Broker) -> Result<Self, QueueError> {
        let publisher = Self {
            broker: broker.clone(),
            topology: broker.topology(),
            channel: Mutex::new(None),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    /// Publishes a job to this config's pool: exchange `<prefix>.jobs`, routing key the pool.
    pub async fn publish_job(&self, job: &JobSpec) -> Result<(), QueueError> {
        self.publish_job_to(self.topology.pool(), job).await
    }

    /// Publishes a job to a given pool: to its priority queue when the job's priority is above 0
    /// (its workers take those first), else to its job queue. [`QueueError::Unroutable`] when
    /// that pool has no such queue.
    pub async fn publish_job_to(&self, pool: &str, job: &JobSpec) -> Result<(), QueueError> {
        let properties = properties(Some(job.id.to_string())).with_priority(job.priority);
        self.send(
            &self.topology.jobs_exchange(),
            &Topology::job_routing_key(pool, job.priority),
            &refit_proto::encode(job),
            properties,
            true,
        )
        .await
    }

    /// Publishes a job to the dead-letter exchange (`<prefix>.dead`, so `<prefix>.jobs.dead`
    /// holds it for operators), with the job id as message id: what the coordinator does with a
    /// job whose attempts kept crashing (the broker dead-letters only deliveries it rejects).
    pub async fn dead_letter_job(&self, job: &JobSpec) -> Result<(), QueueError> {
        self.send(
            &self.topology.dead_letter_exchange(),
            "",
            &refit_proto::encode(job),
            properties(Some(job.id.to_string())),
            true,
        )
        .await
    }

    /// Publishes an event to `<prefix>.events` with routing key `job.<job id>.<event>`.
    /// [`QueueError::Unroutable`] when no queue takes it (the coordinator never declared its
    /// queue).
    pub async fn publish_event(&self, event: &Event) -> Result<(), QueueError> {
        self.publish_event_replying(event, None).await
    }

    /// [`Publisher::publish_event`] with `reply_to` set to an inbox (see
    /// [`Consumer::inbox`](super::Consumer::inbox)): where the coordinator answers.
    pub async fn publish_event_replying(
        &self,
        event: &Event,
        reply_to: Option<&str>,
    ) -> Result<(), QueueError> {
        let mut properties = properties(Some(event.job_id.to_string()));
        if let Some(inbox) = reply_to.filter(|name| !name.is_empty()) {
            properties = properties.with_reply_to(inbox.into());
        }
        self.send(
            &self.topology.events_exchange(),
            &Topology::event_routing_key(event),
            &refit_proto::encode(event),
            properties,
            true,
        )
        .await
    }

    /// Publishes a worker's presence to the events exchange (routing key
    /// `worker.<worker id>.<state>`), mandatory like events. It expires after `ttl` in the queue:
    /// presence is news for a short while, and a coordinator that was away for a day should not
    /// find thousands of them waiting.
    pub async fn publish_worker_status(
        &self,
        status: &WorkerStatus,
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let millis = ttl.as_millis().max(1).to_string();
        self.send(
            &self.topology.events_exchange(),
            &Topology::worker_status_routing_key(status),
            &refit_proto::encode(status),
            properties(None).with_expiration(millis.into()),
            true,
        )
        .await
    }

    /// Sends a control message to one worker's inbox (through the default exchange, by the
    /// inbox's name). Not mandatory: an inbox that is gone (its connection closed) means the
    /// worker is not there to tell, which is not an error; it learns what it missed from the
    /// answer to its next event.
    pub async fn send_control(&self, inbox: &str, control: &Control) -> Result<(), QueueError> {
        self.send(
            "",
            inbox,
            &refit_proto::encode(control),
            properties(Some(control.job_id().to_string())),
            false,
        )
        .await
    }

    /// Publishes raw bytes, persistent and mandatory, with refit's content type and a timestamp
    /// but no message id.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), QueueError> {
        self.send(exchange, routing_key, body, properties(None), true)
            .await
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let op = || format!("publish to exchange {exchange} with routing key {routing_key}");
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(QueueError::amqp(op()))?;
        let timeout = self.broker.config().confirm_timeout();
        let confirmation = tokio::time::timeout(timeout, confirm)
            .await
            .map_err(|_| QueueError::ConfirmTimeout(timeout))?
            .map_err(QueueError::amqp(op()))?;
        match confirmation {
            Confirmation::Ack(None) => {
                debug!(exchange, routing_key, bytes = body.len(), "published");
                Ok(())
            }
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(QueueError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            // `NotRequested` cannot happen on a confirm-mode channel; treat it as not stored.
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(QueueError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    /// Closes the channel (see [`close_channel`]); a later publish would open a new one.
    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            close_channel(&channel, "publisher").await;
        }
    }

    /// The confirm-mode channel, reopened when the connection it was on is gone.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(QueueError::amqp("enable publisher confirms"))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("broker", &self.broker)
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

/// Persistent, refit's content type, a timestamp (seconds since the epoch), and the message id.
fn properties(message_id: Option<String>) -> BasicProperties {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(CONTENT_TYPE.into())
        .with_app_id("refit".into())
        .with_timestamp(now);
    match message_id {
        Some(id) => properties.with_message_id(id.into()),
        None => properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_persistent_msgpack_with_id_and_timestamp() {
        let properties = properties(Some("job-1".into()));
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/msgpack")
        );
        assert_eq!(
            properties.message_id().as_ref().map(|s| s.as_str()),
            Some("job-1")
        );
        assert!(properties.timestamp().is_some_and(|t| t > 1_600_000_000));
    }
}
