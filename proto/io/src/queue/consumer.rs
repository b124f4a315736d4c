//! [`Consumer`] and [`Delivery`]: manual-ack consuming that survives reconnects.

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel};
use refit_proto::{DecodeError, Message};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::broker::{Broker, backoff_delay, close_channel};
use super::error::QueueError;
use super::topology::Topology;

/// Which queue a [`Consumer`] reads, and what it declares before subscribing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// This pool's job queue (declares the topology when the broker user may, else checks that
    /// it exists).
    Jobs,
    /// The coordinator's events queue (declares it; consumes it exclusively).
    Events,
    /// The coordinator's copy of dead-lettered jobs (declares it with the events queue; consumes
    /// it exclusively).
    DeadLetters,
    /// A fresh exclusive inbox queue per connection (declares it).
    Inbox,
}

/// A subscription to one queue with manual acknowledgement and `basic.qos(prefetch)`.
///
/// A pool's jobs come from two queues, its priority queue first
/// ([`Topology::job_queues_for`]), one job at a time: [`Consumer::next`] takes a waiting job
/// with `basic.get` from the priority queue, else from the other; only when both are empty does
/// it subscribe to both and wait, and it cancels that subscription as soon as a job arrives. So
/// a worker that frees a slot takes the oldest job of the highest class, and it holds no
/// prefetched job it cannot run.
///
/// When the connection drops, [`Consumer::next`] subscribes again on the next connection (it
/// logs a warning and keeps waiting while the broker is away), so a worker loop needs no
/// reconnection code. Deliveries taken before the drop can no longer be acked
/// ([`QueueError::DeliveryChannelClosed`]); the broker requeues them and their delivery count
/// goes up.
///
/// `next` is cancel-safe: use it in `select!` with a shutdown token. For a graceful stop call
/// [`Consumer::cancel`] (no new deliveries), finish or nack what is in flight, then
/// [`Consumer::close`] it before closing the broker (a consumer merely dropped closes its channel
/// in the background, which can cross the connection's close).
pub struct Consumer {
    broker: Broker,
    topology: Topology,
    source: Source,
    prefetch: u16,
    queue: String,
    /// The queues subscribed to, in the order they are drained (a job consumer's priority
    /// queue first; otherwise `queue` alone).
    queues: Vec<String>,
    /// The channel a job consumer's `basic.get`s run on (its deliveries hold it).
    puller: Option<Channel>,
    /// A job consumer's delivery taken while its subscription is being cancelled: kept here so
    /// that a `next` dropped half-way (it races other work in a `select!`) loses nothing; the
    /// next call returns it.
    ready: Option<Delivery>,
    /// For an inbox: tells the current queue name (it changes with every connection).
    inbox_name: Option<watch::Sender<String>>,
    active: Option<Active>,
    /// The channel a subscription is being set up on. A caller may drop [`Consumer::next`]
    /// half-way (it races other work in a `select!`); this clone keeps that channel from closing
    /// in the background, where its close could cross the connection's own at shutdown, until
    /// the next subscription or [`Consumer::close`] closes it.
    opening: Option<Channel>,
    cancelled: bool,
    /// Paused ([`Consumer::pause`]): the next `next` subscribes again, quietly.
    paused: bool,
}

struct Active {
    channel: Channel,
    /// One per queue of `Consumer::queues`, in that order.
    streams: Vec<lapin::Consumer>,
}

impl Consumer {
    /// Takes this pool's jobs, one per [`Consumer::next`], from `<prefix>.jobs.<pool>.high`
    /// first, then `<prefix>.jobs.<pool>` (see the type's docs). Declares the topology first
    /// (and again on every subscription).
    pub async fn jobs(broker: &Broker) -> Result<Self, QueueError> {
        Self::start(broker, Source::Jobs, 1).await
    }

    /// Consumes the coordinator's events queue `<prefix>.events.coordinator`, declaring it, once
    /// this connection holds the coordinator lock ([`Topology::take_coordinator_lock`]): while
    /// one coordinator is active, another one's subscription fails with [`QueueError::Locked`],
    /// so a second coordinator stands by instead of taking half of the events.
    ///
    /// [`Topology::take_coordinator_lock`]: super::Topology::take_coordinator_lock
    pub async fn events(broker: &Broker, prefetch: u16) -> Result<Self, QueueError> {
        Self::start(broker, Source::Events, prefetch.max(1)).await
    }

    /// Consumes `<prefix>.jobs.dead.coordinator`: a copy of every dead-lettered job, so the
    /// coordinator learns which jobs died without taking them from `<prefix>.jobs.dead`.
    /// Only with the coordinator lock, like [`Consumer::events`].
    pub async fn dead_letters(broker: &Broker) -> Result<Self, QueueError> {
        Self::start(broker, Source::DeadLetters, 16).await
    }

    /// Consumes a new inbox: an exclusive, auto-delete, server-named queue only this connection
    /// can read, which others reach through the default exchange by its name. Its name changes
    /// when the connection does (a new inbox is declared on the next one); the receiver always
    /// holds the current one, to give as `reply_to`.
    pub async fn inbox(broker: &Broker) -> Result<(Self, watch::Receiver<String>), QueueError> {
        let mut consumer = Self::new(broker, Source::Inbox, 16);
        let (tx, rx) = watch::channel(String::new());
        consumer.inbox_name = Some(tx);
        consumer.active = Some(consumer.subscribe().await?);
        Ok((consumer, rx))
    }

    fn new(broker: &Broker, source: Source, prefetch: u16) -> Self {
        let topology = broker.topology();
        let queues = match source {
            Source::Jobs => topology.job_queues_for(topology.pool()).to_vec(),
            _ => Vec::new(),
        };
        let queue = match source {
            Source::Jobs => topology.job_queue(),
            Source::Events => topology.coordinator_events_queue(),
            Source::DeadLetters => topology.coordinator_dead_queue(),
            Source::Inbox => String::new(),
        };
        Self {
            broker: broker.clone(),
            topology,
            source,
            prefetch,
            queue,
            queues,
            puller: None,
            ready: None,
            inbox_name: None,
            active: None,
            opening: None,
            cancelled: false,
            paused: false,
        }
    }

    async fn start(broker: &Broker, source: Source, prefetch: u16) -> Result<Self, QueueError> {
        let mut consumer = Self::new(broker, source, prefetch);
        consumer.active = Some(consumer.subscribe().await?);
        Ok(consumer)
    }

    /// A job consumer takes one delivery at a time (the type's docs).
    fn takes_one(&self) -> bool {
        self.source == Source::Jobs
    }

    /// A waiting job, by `basic.get`, from the first of `queues` that holds one. Any failure
    /// (a closed channel, a queue not declared yet) reads as "none": the subscription that
    /// follows declares the queues and reports what is wrong.
    async fn pull(&mut self) -> Option<Delivery> {
        let channel = match &self.puller {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = self.broker.channel().await.ok()?;
                self.puller = Some(channel.clone());
                channel
            }
        };
        for queue in &self.queues {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                Ok(Some(message)) => return Some(Delivery::new(message.delivery, channel, false)),
                Ok(None) => {}
                Err(error) => {
                    debug!(%error, %queue, "basic.get failed; subscribing instead");
                    self.puller = None;
                    return None;
                }
            }
        }
        None
    }

    /// Cancels the subscription of a consumer that takes one delivery at a time once it has its
    /// delivery: what else arrived meanwhile goes back to its queue. The subscription's channel
    /// is closed when the delivery handed out is settled.
    async fn release(&mut self) {
        if let Err(error) = self.cancel().await {
            debug!(%error, queue = %self.queue, "cancelling a job subscription failed");
        }
        self.cancelled = false;
        self.active = None;
    }

    /// The queue consumed (for an inbox, the current server-named queue).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next delivery. `None` once [`Consumer::cancel`] was called or the consumer was
    /// cancelled and cannot subscribe again; `Some(Err(_))` only for permanent errors (a queue
    /// declared with other arguments, refused permissions). Transient trouble is logged and
    /// retried.
    pub async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        let mut failures: u32 = 0;
        loop {
            if self.cancelled {
                return None;
            }
            if self.ready.is_some() {
                if self.active.is_some() {
                    self.release().await;
                }
                return self.ready.take().map(Ok);
            }
            let Some(active) = self.active.as_mut() else {
                if self.takes_one()
                    && let Some(delivery) = self.pull().await
                {
                    self.paused = false;
                    return Some(Ok(delivery));
                }
                match self.subscribe().await {
                    Ok(active) => {
                        // A job consumer subscribes for every job it waits for.
                        if std::mem::take(&mut self.paused) || self.takes_one() {
                            debug!(queue = %self.queue, "consuming again after a pause");
                        } else {
                            info!(queue = %self.queue, "subscribed again after losing the consumer");
                        }
                        self.active = Some(active);
                    }
                    Err(error) if error.is_transient() => {
                        failures = failures.saturating_add(1);
                        let config = self.broker.config();
                        let delay =
                            backoff_delay(config.reconnect_min(), config.reconnect_max(), failures);
                        warn!(
                            queue = %self.queue, %error, retry_in = ?delay,
                            "cannot subscribe; retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Err(error) => return Some(Err(error)),
                }
                continue;
            };
            match next_of(&mut active.streams).await {
                Some(Ok(delivery)) => {
                    let takes_one = self.source == Source::Jobs;
                    let delivery = Delivery::new(delivery, active.channel.clone(), takes_one);
                    if !takes_one {
                        return Some(Ok(delivery));
                    }
                    self.ready = Some(delivery);
                    self.release().await;
                    return self.ready.take().map(Ok);
                }
                Some(Err(error)) => {
                    warn!(queue = %self.queue, %error, "consumer failed; subscribing again");
                    self.active = None;
                }
                None if self.cancelled => return None,
                None => {
                    warn!(
                        queue = %self.queue,
                        "the broker cancelled the consumer; subscribing again"
                    );
                    self.active = None;
                }
            }
        }
    }

    /// Cancels the subscription if that has not happened yet and closes its channel (see
    /// [`close_channel`]). Errors are only logged: the broker requeues whatever was not settled
    /// either way.
    pub async fn close(mut self) {
        if !self.cancelled
            && let Err(error) = self.cancel().await
        {
            debug!(%error, queue = %self.queue, "cancelling the consumer before closing failed");
        }
        if let Some(active) = self.active.take() {
            close_channel(&active.channel, &self.queue).await;
        }
        if let Some(opening) = self.opening.take() {
            close_channel(&opening, &self.queue).await;
        }
        if let Some(puller) = self.puller.take() {
            close_channel(&puller, &self.queue).await;
        }
    }

    /// Stops deliveries until the next call of [`Consumer::next`], which subscribes again:
    /// `basic.cancel`, and what was prefetched but not handed out goes back to the queue.
    /// Deliveries already handed out stay on their channel and can still be settled.
    ///
    /// A consumer that settles deliveries early (the worker acks a job when its lease is
    /// granted, long before the job ends) pauses when it has no room for more work, so that the
    /// broker does not push the next message to it (the prefetch count only covers unsettled
    /// deliveries), where it would wait while other consumers are idle.
    pub async fn pause(&mut self) -> Result<(), QueueError> {
        if self.cancelled {
            return Ok(());
        }
        let result = self.cancel().await;
        self.cancelled = false;
        self.paused = true;
        // Its channel stays open for the deliveries handed out (they hold it); `next`
        // subscribes on a new one.
        self.active = None;
        result
    }

    /// Stops consuming (`basic.cancel`): no new deliveries arrive and [`Consumer::next`] returns
    /// `None`. The channel stays open so deliveries already handed out can still be acked; any
    /// that arrived but were not handed out are requeued.
    pub async fn cancel(&mut self) -> Result<(), QueueError> {
        self.cancelled = true;
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mut result = Ok(());
        for stream in &mut active.streams {
            let tag = stream.tag();
            let cancelled = active
                .channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await
                .map_err(QueueError::amqp(format!(
                    "cancel consumer {tag} on {}",
                    self.queue
                )));
            if result.is_ok() {
                result = cancelled;
            }
            // Hand back what was prefetched but never handed out.
            while let Some(Some(Ok(delivery))) = stream.next().now_or_never() {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
        result
    }

    /// Opens a channel and subscribes on it; on failure the channel is closed here, not left to
    /// close in the background (see [`close_channel`]).
    async fn subscribe(&mut self) -> Result<Active, QueueError> {
        if let Some(abandoned) = self.opening.take() {
            close_channel(&abandoned, &self.queue).await;
        }
        let mut channel = self.broker.channel().await?;
        self.opening = Some(channel.clone());
        let result = self.subscribe_on(&mut channel).await;
        // Not dropped half-way: what happens to the channel is decided here.
        self.opening = None;
        match result {
            Ok(streams) => Ok(Active { channel, streams }),
            Err(error) => {
                close_channel(&channel, &self.queue).await;
                Err(error)
            }
        }
    }

    async fn subscribe_on(
        &mut self,
        channel: &mut Channel,
    ) -> Result<Vec<lapin::Consumer>, QueueError> {
        match self.source {
            Source::Jobs => match self.topology.declare(channel).await {
                Ok(()) => {}
                // A broker user without configure permission: the coordinator declares.
                Err(error) if error.is_access_refused() => {
                    debug!(%error, "may not declare the topology; checking it exists");
                    *channel = self.broker.channel().await?;
                    self.opening = Some(channel.clone());
                    self.topology.check_declared(channel).await?;
                }
                Err(error) => return Err(error),
            },
            Source::Events | Source::DeadLetters => {
                self.topology.declare_coordinator(channel).await?;
                self.topology.take_coordinator_lock(channel).await?;
            }
            Source::Inbox => {
                self.queue = self.topology.declare_inbox(channel).await?;
                if let Some(name) = &self.inbox_name {
                    name.send_replace(self.queue.clone());
                }
            }
        }
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(QueueError::amqp("set the prefetch count"))?;
        let queues = if self.queues.is_empty() {
            vec![self.queue.clone()]
        } else {
            self.queues.clone()
        };
        let mut streams = Vec::with_capacity(queues.len());
        for queue in queues {
            let stream = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(QueueError::amqp(format!("consume queue {queue}")))?;
            streams.push(stream);
        }
        Ok(streams)
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("subscribed", &self.active.is_some())
            .field("cancelled", &self.cancelled)
            .finish()
    }
}

/// One message from a [`Consumer`], to be settled with exactly one of [`Delivery::ack`],
/// [`Delivery::nack_requeue`] or [`Delivery::reject`].
///
/// Settling is async, so `Drop` cannot do it properly. A delivery dropped unsettled (a bug, or a
/// panicking handler) logs a warning and, inside a Tokio runtime, is nacked with requeue from a
/// spawned task, so it goes back to the queue (counting against the delivery limit) instead of
/// holding a prefetch slot until the channel closes.
pub struct Delivery {
    inner: lapin::message::Delivery,
    /// Keeps the channel open until the delivery is settled.
    channel: Channel,
    /// The channel was opened for this delivery alone (a job consumer's subscription): settling
    /// closes it, here rather than in the background.
    owns_channel: bool,
    settled: bool,
}

impl Delivery {
    fn new(inner: lapin::message::Delivery, channel: Channel, owns_channel: bool) -> Self {
        Self {
            inner,
            channel,
            owns_channel,
            settled: false,
        }
    }

    /// Closes the channel if it was this delivery's own (after settling).
    async fn done(&self) {
        if self.owns_channel {
            close_channel(&self.channel, "a settled job delivery").await;
        }
    }

    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// Decodes the body as a refit message.
    pub fn decode<M: Message>(&self) -> Result<M, DecodeError> {
        refit_proto::decode(self.body())
    }

    /// Whether it can still be settled: not settled yet, and its channel is open. `false` once the
    /// channel or its connection is gone: the broker has then requeued the message for another
    /// delivery, and an ack from this one can no longer reach it.
    pub fn is_live(&self) -> bool {
        !self.settled && self.inner.acker.usable() && self.channel.status().connected()
    }

    /// Whether the broker delivered it before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// How many times it was handed back before this delivery: the quorum queue's
    /// `x-delivery-count` header, absent (0) on the first delivery.
    pub fn delivery_count(&self) -> u32 {
        delivery_count(self.inner.properties.headers().as_ref())
    }

    /// Which delivery this is, from 1: `delivery_count() + 1` (an event's `attempt`).
    pub fn attempt(&self) -> u32 {
        self.delivery_count().saturating_add(1)
    }

    /// The `reply_to` property: where the sender wants answers (a worker's inbox).
    pub fn reply_to(&self) -> Option<&str> {
        self.inner
            .properties
            .reply_to()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// The message id (the job id, for refit's messages).
    pub fn message_id(&self) -> Option<&str> {
        self.inner
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// Done: the broker forgets the message.
    pub async fn ack(mut self) -> Result<(), QueueError> {
        let result = self.inner.acker.ack(BasicAckOptions::default()).await;
        self.settled = true;
        self.done().await;
        settled(result, "ack a delivery")
    }

    /// Hand it back to the queue for another try (counts against the delivery limit).
    pub async fn nack_requeue(mut self) -> Result<(), QueueError> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let result = self.inner.acker.nack(options).await;
        self.settled = true;
        self.done().await;
        settled(result, "nack a delivery")
    }

    /// Give up on it: the broker dead-letters it (job queue → `<prefix>.jobs.dead`).
    pub async fn reject(mut self) -> Result<(), QueueError> {
        let result = self
            .inner
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await;
        self.settled = true;
        self.done().await;
        settled(result, "reject a delivery")
    }
}

/// The next delivery of the first of `streams` that has one (earlier streams win when several
/// are ready); `None` when one of them ends. Cancel-safe: a delivery is taken only when it is
/// returned.
async fn next_of(
    streams: &mut [lapin::Consumer],
) -> Option<lapin::Result<lapin::message::Delivery>> {
    std::future::poll_fn(|cx| {
        for stream in streams.iter_mut() {
            match stream.poll_next_unpin(cx) {
                std::task::Poll::Ready(item) => return std::task::Poll::Ready(item),
                std::task::Poll::Pending => {}
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn settled(result: lapin::Result<bool>, op: &'static str) -> Result<(), QueueError> {
    match result {
        Ok(true) => Ok(()),
        // The acker was poisoned: its channel closed, and the broker requeues the message.
        Ok(false) => Err(QueueError::DeliveryChannelClosed),
        Err(error) => Err(QueueError::amqp(op)(error)),
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.settled || !self.inner.acker.usable() {
            return;
        }
        warn!(
            routing_key = %self.inner.routing_key,
            message_id = self.message_id().unwrap_or(""),
            "delivery dropped without ack, nack or reject; requeueing it"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acker: Acker = self.inner.acker.clone();
        let channel = self.channel.clone();
        runtime.spawn(async move {
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(error) = acker.nack(options).await {
                warn!(
                    %error,
                    "failed to requeue a dropped delivery; the broker will once the channel closes"
                );
            }
            drop(channel);
        });
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("routing_key", &self.routing_key())
            .field("message_id", &self.message_id())
            .field("redelivered", &self.redelivered())
            .field("delivery_count", &self.delivery_count())
            .field("bytes", &self.body().len())
            .finish()
    }
}

/// `x-delivery-count` from the headers, whatever integer type the broker used.
fn delivery_count(headers: Option<&FieldTable>) -> u32 {
    let Some(value) = headers.and_then(|h| h.inner().get("x-delivery-count")) else {
        return 0;
    };
    let count: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_count_reads_any_integer_header() {
        assert_eq!(delivery_count(None), 0);
        let mut headers = FieldTable::default();
        assert_eq!(delivery_count(Some(&headers)), 0);
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(Some(&headers)), 3);
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(2));
        assert_eq!(delivery_count(Some(&headers)), 2);
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(delivery_count(Some(&headers)), 0);
    }
}
