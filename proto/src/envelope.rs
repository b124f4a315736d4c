//! The versioned msgpack envelope every message travels in: `{ v, kind, body }`, encoded with
//! `rmp-serde` **named** fields so that fields can be added without breaking older readers.
//!
//! Decoding never panics: garbage, truncated bytes, an unknown schema version or a message of the
//! wrong kind are each a [`DecodeError`].

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::event::{Control, Event, WorkerStatus};
use crate::job::JobSpec;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The oldest schema version this build still reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// The content type messages are published with.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// Messages larger than this are refused without being parsed.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A message type that travels in an envelope.
pub trait Message: Serialize + DeserializeOwned {
    /// The envelope's `kind` for this type.
    const KIND: &'static str;
}

impl Message for JobSpec {
    const KIND: &'static str = "job";
}

impl Message for Event {
    const KIND: &'static str = "event";
}

impl Message for Control {
    const KIND: &'static str = "control";
}

impl Message for WorkerStatus {
    const KIND: &'static str = "worker";
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a msgpack envelope, or the body does not match the message's shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Written by a newer (or much older) refit.
    #[error("unsupported schema version {found}: this build reads versions {oldest} to {newest}")]
    UnsupportedVersion {
        /// The version in the envelope.
        found: u32,
        /// The oldest version this build reads.
        oldest: u32,
        /// The newest version this build reads.
        newest: u32,
    },
    /// A valid envelope holding another kind of message.
    #[error("expected a {expected:?} message, got {found:?}")]
    WrongKind {
        /// The kind asked for.
        expected: &'static str,
        /// The kind found.
        found: String,
    },
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
}

#[derive(Serialize)]
struct EnvelopeOut<'a, M> {
    v: u32,
    kind: &'a str,
    body: &'a M,
}

#[derive(Deserialize)]
struct Header {
    v: u32,
    kind: String,
    #[serde(rename = "body")]
    _body: IgnoredAny,
}

#[derive(Deserialize)]
struct EnvelopeIn<M> {
    body: M,
}

/// Encodes a message in the current envelope.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    let envelope = EnvelopeOut {
        v: SCHEMA_VERSION,
        kind: M::KIND,
        body: message,
    };
    rmp_serde::to_vec_named(&envelope).expect("refit messages always serialise to msgpack")
}

/// Reads an envelope's schema version and kind without decoding the body.
pub fn peek(bytes: &[u8]) -> Result<(u32, String), DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let header: Header =
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok((header.v, header.kind))
}

/// Decodes a message, checking the envelope's version and kind.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    let (v, kind) = peek(bytes)?;
    if !(OLDEST_READABLE_VERSION..=SCHEMA_VERSION).contains(&v) {
        return Err(DecodeError::UnsupportedVersion {
            found: v,
            oldest: OLDEST_READABLE_VERSION,
            newest: SCHEMA_VERSION,
        });
    }
    if kind != M::KIND {
        return Err(DecodeError::WrongKind {
            expected: M::KIND,
            found: kind.chars().take(32).collect(),
        });
    }
    let envelope: EnvelopeIn<M> =
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(envelope.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Control;
    use crate::ids::JobId;

    #[test]
    fn round_trips_and_checks_the_kind() {
        let message = Control::Cancel {
            job_id: JobId::new(),
        };
        let bytes = encode(&message);
        assert_eq!(decode::<Control>(&bytes).unwrap(), message);
        assert!(matches!(
            decode::<Event>(&bytes),
            Err(DecodeError::WrongKind {
                expected: "event",
                ..
            })
        ));
    }

    #[test]
    fn a_worker_status_is_its_own_kind() {
        use crate::event::{WorkerState, WorkerStatus};
        let status = WorkerStatus {
            worker_id: crate::ids::WorkerId::new("host-1").unwrap(),
            at: chrono::Utc::now(),
            state: WorkerState::Stopping,
            running: 2,
            pool: "gpu".into(),
        };
        let bytes = encode(&status);
        assert_eq!(decode::<WorkerStatus>(&bytes).unwrap(), status);
        // The coordinator's events queue gets both; it tells them apart by the kind.
        assert_eq!(
            decode::<Event>(&bytes),
            Err(DecodeError::WrongKind {
                expected: "event",
                found: "worker".into(),
            })
        );
    }

    #[test]
    fn unknown_versions_are_typed_errors() {
        #[derive(Serialize)]
        struct Future<'a> {
            v: u32,
            kind: &'a str,
            body: (),
        }
        let bytes = rmp_serde::to_vec_named(&Future {
            v: 99,
            kind: "control",
            body: (),
        })
        .unwrap();
        assert_eq!(
            decode::<Control>(&bytes),
            Err(DecodeError::UnsupportedVersion {
                found: 99,
                oldest: 1,
                newest: 1
            })
        );
    }

    #[test]
    fn truncated_and_empty_input_is_malformed() {
        let bytes = encode(&Control::Cancel {
            job_id: JobId::new(),
        });
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    decode::<Control>(&bytes[..len]),
                    Err(DecodeError::Malformed(_))
                ),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn oversized_input_is_refused_unparsed() {
        let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode::<Control>(&bytes),
            Err(DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }
}
