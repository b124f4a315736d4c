//! The RabbitMQ adapter (lapin): topology, a self-healing connection, confirmed publishing and
//! manual-ack consuming. The coordinator and the workers both use it.
//!
//! ## Layout
//! - `config`: [`QueueConfig`] (serde, with defaults) and [`redact_url`]
//! - `topology`: [`Topology`], the exchange/queue names and arguments, and their declaration
//! - `broker`: [`Broker`], one connection kept up with backoff, handing out channels
//! - `publisher`: [`Publisher`], persistent + mandatory + confirmed publishing
//! - `consumer`: [`Consumer`] and [`Delivery`], manual acks, resubscribing after reconnects
//! - `error`: [`QueueError`] and its transient/permanent kind
//!
//! ## Typical use
//!
//! ```no_run
//! # async fn demo(job: refit_proto::JobSpec) -> Result<(), refit_io::queue::QueueError> {
//! use refit_io::queue::{Broker, Consumer, Publisher, QueueConfig};
//!
//! let broker = Broker::connect(&QueueConfig::default()).await?;
//! broker.topology().declare(&broker.channel().await?).await?;
//!
//! // coordinator
//! let publisher = Publisher::new(&broker).await?;
//! publisher.publish_job(&job).await?; // returns once the broker has confirmed it
//!
//! // worker
//! let mut jobs = Consumer::jobs(&broker).await?;
//! while let Some(delivery) = jobs.next().await {
//!     let delivery = delivery?;
//!     let job: refit_proto::JobSpec = match delivery.decode() {
//!         Ok(job) => job,
//!         Err(_) => { delivery.reject().await?; continue } // garbage: dead-letter it
//!     };
//!     // … train, upload, publish `succeeded` …
//!     # let _ = job;
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Decisions
//!
//! - **Delivery guarantees.** Messages are persistent (`delivery_mode` 2) and published
//!   `mandatory` on a confirm-mode channel: a publish returns only after the broker's confirm, and
//!   a job for a pool without a queue is [`QueueError::Unroutable`], not lost. Consumers ack
//!   manually; everything is at-least-once (DESIGN §2), so consumers expect duplicates.
//! - **Retries and the dead-letter queue.** Job queues are quorum queues with `x-delivery-limit`
//!   (`delivery_limit`, default 5): a job handed back more often than that (nacked with requeue,
//!   or held by a worker that died) is dead-lettered, as is a job the worker
//!   [`reject`](Delivery::reject)s, through the fanout `<prefix>.jobs.dlx` into
//!   `<prefix>.jobs.dead`. Dead-lettering is **at-least-once** (`x-dead-letter-strategy`, which
//!   RabbitMQ ≥ 3.10 has and which requires `x-overflow = reject-publish`; refit sets no length
//!   limit, so that overflow rule never fires): a job leaves its queue only once the dead-letter
//!   queue holds it. The quorum queue's `x-delivery-count` header is
//!   [`Delivery::delivery_count`].
//! - **Consumer (ack) timeout.** RabbitMQ closes the channel of a consumer that holds a delivery
//!   unacked longer than its consumer timeout (broker-wide `consumer_timeout`, 30 minutes by
//!   default) and redelivers the job, which would restart long training jobs. RabbitMQ 3.11.15+
//!   takes a per-queue `x-consumer-timeout` argument, which `consumer_timeout_ms` sets. The
//!   broker refit is tested against, RabbitMQ 3.10.8, accepts the argument but ignores it (its
//!   code has no per-queue consumer timeout), so there the broker-wide setting must be raised
//!   instead; `deploy/README.md` says how.
//! - **Reconnection** is the [`Broker`]'s (exponential backoff with jitter, bounded), not lapin's
//!   automatic recovery; [`Publisher`] reopens its channel and [`Consumer`] resubscribes.
//! - **Secrets.** The URL's password is never logged: `Debug`, logs and errors use
//!   [`QueueConfig::redacted_url`]. It can come from `password_file` instead of the URL.

mod broker;
mod config;
mod consumer;
mod error;
mod publisher;
mod topology;

pub use broker::{Broker, close_channel};
pub use config::{DEFAULT_URL, QueueConfig, check_pool, redact_url};
pub use consumer::{Consumer, Delivery};
pub use error::QueueError;
pub use publisher::Publisher;
pub use topology::Topology;

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers move deliveries into tasks and share the broker and publisher between them.
    #[test]
    fn handles_can_cross_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Broker>();
        send_sync::<Publisher>();
        send_sync::<QueueError>();
        send::<Consumer>();
        send::<Delivery>();
    }
}
