//! [`Reservation`]: a version number taken by a job (`models/<m>/v<N>/job.json`).
//!
//! The coordinator numbers versions, and writes the reservation before it publishes the job.
//! Numbers are never reused because the next one is above every manifest **and** every
//! reservation in the store, whatever the coordinator's job store remembers. A reservation also
//! carries the whole job, so a coordinator that lost its job store can find the jobs that were
//! queued or running ([`ReservationState::Open`]) and queue them again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::job::JobSpec;

/// The reservation format this build writes.
pub const RESERVATION_FORMAT: u32 = 1;

/// Where the job that took a version number stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationState {
    /// Queued or running: the version may still be committed.
    Open,
    /// The version is committed.
    Succeeded,
    /// The job ended without a version (failed, cancelled, dead); the number stays taken.
    Closed,
}

/// `models/<m>/v<N>/job.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// [`RESERVATION_FORMAT`].
    pub format: u32,
    /// The job that took the number.
    pub job_id: JobId,
    /// Where it stands.
    pub state: ReservationState,
    /// The deployment that reserved it: its coordinator's queue prefix (`queue.prefix`). A
    /// coordinator recovers only its own deployment's reservations, so deployments that share a
    /// bucket (staging and production, parallel test runs) never take over each other's jobs.
    pub deployment: String,
    /// The pool it was published to.
    pub pool: String,
    /// The job message.
    pub spec: JobSpec,
    /// When the number was taken.
    pub reserved_at: DateTime<Utc>,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

impl Reservation {
    /// An open reservation for `spec`, published to `pool` by `deployment`'s coordinator.
    pub fn open(spec: JobSpec, deployment: String, pool: String) -> Self {
        let now = Utc::now();
        Self {
            format: RESERVATION_FORMAT,
            job_id: spec.id,
            state: ReservationState::Open,
            deployment,
            pool,
            spec,
            reserved_at: now,
            updated_at: now,
        }
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a Reservation always serialises")
    }

    /// Reads a stored reservation.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::ids::{ModelName, Version};
    use crate::job::{Budget, DatasetRef, Hyperparams, Mode};

    #[test]
    fn a_reservation_round_trips_with_its_job() {
        let spec = JobSpec {
            id: JobId::new(),
            model: ModelName::new("m").unwrap(),
            mode: Mode::Scratch,
            base_version: None,
            output_version: Version::new(3).unwrap(),
            dataset: DatasetRef {
                key: format!("datasets/sha256/{}.yml", "ab".repeat(32)),
                sha256: "ab".repeat(32),
            },
            eval_dataset: None,
            hyperparams: Hyperparams {
                budget: Budget::EpochFraction(0.3),
                ..Hyperparams::default()
            },
            priority: 0,
            submitted_at: Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap(),
            deadline: None,
            promote_to: None,
        };
        let reservation = Reservation::open(spec.clone(), "refit".into(), "gpu".into());
        let back = Reservation::from_json(&reservation.to_json()).unwrap();
        assert_eq!(back, reservation);
        assert_eq!(back.spec, spec);
        assert_eq!(back.state, ReservationState::Open);
    }
}
