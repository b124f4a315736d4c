//! [`QueueError`]: what went wrong talking to RabbitMQ, and whether retrying can help.

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// An error from the queue adapter. [`QueueError::is_transient`] says whether the same call can
/// succeed later (the broker was unreachable, a connection dropped) or cannot (bad config, a queue
/// declared with other arguments, refused credentials, an unroutable message).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A [`QueueConfig`](super::QueueConfig) field is out of range or malformed.
    #[error("invalid queue config: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why, without secrets.
        reason: String,
    },
    /// No connection to the broker within the wait.
    #[error(
        "could not connect to RabbitMQ at {url} within {waited:?}{}: is RabbitMQ running on {addr}? start it with deploy/rabbitmq.sh",
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    Unreachable {
        /// The broker's URL, password redacted.
        url: String,
        /// `host:port`.
        addr: String,
        /// How long it waited.
        waited: Duration,
        /// The last connection attempt's error, if one finished.
        last_error: Option<String>,
    },
    /// The broker answered but refused the connection (credentials, vhost, permissions).
    #[error("RabbitMQ at {url} refused the connection: {source}")]
    Refused {
        /// The broker's URL, password redacted.
        url: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed.
    #[error("failed to {op}: {source}")]
    Amqp {
        /// What was being done, e.g. `declare queue refit.jobs.default`.
        op: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker could not take responsibility for a published message (`basic.nack`).
    #[error(
        "RabbitMQ did not accept the message published to exchange {exchange:?} with routing key {routing_key:?} (nack)"
    )]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// A mandatory message matched no queue and came back (`basic.return`): it is not stored.
    #[error(
        "no queue is bound to exchange {exchange:?} for routing key {routing_key:?}, the message was returned ({reply_code} {reply_text}): is the topology declared and the pool name right?"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The broker's reply code (312 NO_ROUTE).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// No confirm arrived in time: the message may or may not be stored.
    #[error(
        "no publisher confirm from RabbitMQ within {0:?}: the message may or may not be stored"
    )]
    ConfirmTimeout(Duration),
    /// The channel a delivery came on is gone, so it cannot be acked or nacked any more; the broker
    /// has requeued the message (or will, once it notices) and delivers it again.
    #[error(
        "the channel that delivered this message is closed: RabbitMQ will deliver the message again"
    )]
    DeliveryChannelClosed,
    /// Another connection holds the coordinator lock (`<prefix>.coordinator.lock`, an exclusive
    /// queue): another coordinator is active, so this one stands by.
    #[error("another coordinator holds {queue} (it is the active one)")]
    Locked {
        /// The lock queue.
        queue: String,
    },
    /// The [`Broker`](super::Broker) was closed.
    #[error("the RabbitMQ connection manager is closed")]
    Closed,
}

impl QueueError {
    /// Whether the same operation can succeed later without anyone changing config or topology.
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Unreachable { .. }
            | QueueError::Nacked { .. }
            | QueueError::ConfirmTimeout(_)
            | QueueError::DeliveryChannelClosed => true,
            QueueError::Amqp { source, .. } => lapin_error_is_transient(source),
            QueueError::InvalidConfig { .. }
            | QueueError::Refused { .. }
            | QueueError::Unroutable { .. }
            | QueueError::Locked { .. }
            | QueueError::Closed => false,
        }
    }

    /// Whether another coordinator is active ([`QueueError::Locked`]).
    pub fn is_locked(&self) -> bool {
        matches!(self, QueueError::Locked { .. })
    }

    /// Whether the broker refused the operation for want of permission (`ACCESS_REFUSED`): the
    /// broker user may not configure, write or read that resource.
    pub fn is_access_refused(&self) -> bool {
        matches!(
            self,
            QueueError::Amqp { source, .. } if matches!(
                source.kind(),
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))
            )
        )
    }

    /// Whether what the operation named does not exist (`NOT_FOUND`: a queue or exchange not
    /// declared yet).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            QueueError::Amqp { source, .. } if matches!(
                source.kind(),
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
            )
        )
    }

    /// The error's kind as events report it.
    pub fn kind(&self) -> refit_proto::ErrorKind {
        if self.is_transient() {
            refit_proto::ErrorKind::Transient
        } else {
            refit_proto::ErrorKind::Permanent
        }
    }

    pub(crate) fn amqp(op: impl Into<String>) -> impl FnOnce(lapin::Error) -> QueueError {
        let op = op.into();
        move |source| QueueError::Amqp { op, source }
    }
}

/// Connection trouble is transient; the broker refusing what was asked is not.
pub(crate) fn lapin_error_is_transient(error: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match error.kind() {
        K::IOError(_)
        | K::MissingHeartbeatError
        | K::InvalidConnectionState(_)
        | K::InvalidChannelState(..)
        | K::InvalidChannel(_)
        | K::ChannelsLimitReached => true,
        K::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => match soft {
                // A queue held exclusively by a connection that is still going away, no consumer.
                AMQPSoftError::RESOURCELOCKED
                | AMQPSoftError::NOCONSUMERS
                | AMQPSoftError::NOROUTE => true,
                AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::NOTFOUND
                | AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::CONTENTTOOLARGE => false,
            },
            AMQPErrorKind::Hard(hard) => match hard {
                // Closed by an operator or a node shutting down, out of memory or disk.
                AMQPHardError::CONNECTIONFORCED
                | AMQPHardError::RESOURCEERROR
                | AMQPHardError::INTERNALERROR
                | AMQPHardError::CHANNELERROR => true,
                AMQPHardError::INVALIDPATH
                | AMQPHardError::FRAMEERROR
                | AMQPHardError::SYNTAXERROR
                | AMQPHardError::COMMANDINVALID
                | AMQPHardError::UNEXPECTEDFRAME
                | AMQPHardError::NOTALLOWED
                | AMQPHardError::NOTIMPLEMENTED => false,
            },
        },
        // Parsing or serialisation bugs, a runtime shutting down, auth provider errors, …
        _ => false,
    }
}

/// Whether a failed connection attempt means the broker refuses us (wrong credentials or vhost)
/// rather than being unreachable.
pub(crate) fn is_refusal(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH)
        )
    ) || matches!(error.kind(), lapin::ErrorKind::AuthProviderError(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "test".into())).into()
    }

    #[test]
    fn connection_trouble_is_transient() {
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(QueueError::amqp("publish")(io).is_transient());
        assert!(
            QueueError::amqp("publish")(protocol(AMQPErrorKind::Hard(
                AMQPHardError::CONNECTIONFORCED
            )))
            .is_transient()
        );
        assert!(QueueError::ConfirmTimeout(Duration::from_secs(1)).is_transient());
        assert!(
            QueueError::Unreachable {
                url: "amqp://x".into(),
                addr: "x:5672".into(),
                waited: Duration::from_secs(1),
                last_error: None,
            }
            .is_transient()
        );
    }

    #[test]
    fn refusals_are_permanent() {
        for kind in [
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
        ] {
            let error = QueueError::amqp("declare queue q")(protocol(kind));
            assert!(!error.is_transient(), "{error}");
            assert_eq!(error.kind(), refit_proto::ErrorKind::Permanent);
        }
        assert!(is_refusal(&protocol(AMQPErrorKind::Soft(
            AMQPSoftError::ACCESSREFUSED
        ))));
        assert!(
            !QueueError::Unroutable {
                exchange: "refit.jobs".into(),
                routing_key: "gpu".into(),
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
            }
            .is_transient()
        );
    }

    #[test]
    fn unreachable_says_how_to_start_rabbitmq() {
        let message = QueueError::Unreachable {
            url: "amqp://guest:***@127.0.0.1:5672/%2f".into(),
            addr: "127.0.0.1:5672".into(),
            waited: Duration::from_secs(5),
            last_error: Some("IO error: Connection refused (os error 111)".into()),
        }
        .to_string();
        assert!(
            message.contains("is RabbitMQ running on 127.0.0.1:5672?"),
            "{message}"
        );
        assert!(
            message.contains("start it with deploy/rabbitmq.sh"),
            "{message}"
        );
        assert!(message.contains("Connection refused"), "{message}");
    }
}
