//! Reservations: `models/<m>/v<N>/job.json`, the job that took version number N
//! (`refit_proto::reservation`). The coordinator writes one before it publishes the job and
//! closes it when the job ends; version numbers are chosen above every manifest and every
//! reservation, so a lost job store never leads to a number used twice.

use bytes::Bytes;
use chrono::Utc;
use refit_proto::reservation::{Reservation, ReservationState};
use refit_proto::{JobId, ModelName, Version, keys};

use super::{Registry, RegistryError};
use crate::storage::StorageError;

/// A reservation found in the store, and whether its version has a manifest.
#[derive(Clone, Debug)]
pub struct FoundReservation {
    /// The reservation.
    pub reservation: Reservation,
    /// Whether the version is committed (its manifest exists).
    pub committed: bool,
}

impl Registry {
    /// The highest version number of the model that a manifest or a reservation holds; `None`
    /// for a model with neither.
    pub async fn highest_taken(&self, model: &ModelName) -> Result<Option<Version>, StorageError> {
        let highest = self
            .store
            .list(&keys::model_prefix(model))
            .await?
            .iter()
            .filter_map(|o| {
                // `models/<m>/v<N>/manifest.json` or `…/job.json`, not an attempt's draft.
                let version = keys::version_of_key(model, &o.key)?;
                let rest = o.key.strip_prefix(&keys::version_prefix(model, version))?;
                (rest == keys::MANIFEST || rest == keys::RESERVATION).then_some(version)
            })
            .max();
        Ok(highest)
    }

    /// Writes a reservation (replacing the one for its version, if any).
    pub async fn reserve(&self, reservation: &Reservation) -> Result<(), RegistryError> {
        let spec = &reservation.spec;
        self.store
            .put(
                &keys::reservation(&spec.model, spec.output_version),
                Bytes::from(reservation.to_json()),
            )
            .await?;
        Ok(())
    }

    /// The reservation of a version number, if one was written.
    pub async fn reservation(
        &self,
        model: &ModelName,
        version: Version,
    ) -> Result<Option<Reservation>, RegistryError> {
        let bytes = match self
            .store
            .get_at_most(
                &keys::reservation(model, version),
                super::MAX_METADATA_BYTES,
            )
            .await
        {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Reservation::from_json(&bytes)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt {
                model: model.clone(),
                version,
                reason: format!("{} does not parse: {e}", keys::RESERVATION),
            })
    }

    /// Sets the state of `job`'s reservation of a version (nothing when it already has that
    /// state, or the reservation is another job's or missing).
    pub async fn close_reservation(
        &self,
        model: &ModelName,
        version: Version,
        job: JobId,
        state: ReservationState,
    ) -> Result<(), RegistryError> {
        let Some(mut reservation) = self.reservation(model, version).await? else {
            return Ok(());
        };
        if reservation.job_id != job || reservation.state == state {
            return Ok(());
        }
        reservation.state = state;
        reservation.updated_at = Utc::now();
        self.reserve(&reservation).await
    }

    /// Every reservation of `deployment` (a coordinator's queue prefix) in the store, with
    /// whether its version is committed: what a coordinator that lost its job store recovers its
    /// jobs from. Unreadable reservations are skipped (and counted in the second value); other
    /// deployments' are left out.
    pub async fn reservations(
        &self,
        deployment: &str,
    ) -> Result<(Vec<FoundReservation>, usize), RegistryError> {
        let objects = self.store.list(keys::MODELS_PREFIX).await?;
        let manifests: std::collections::BTreeSet<&str> = objects
            .iter()
            .filter_map(|o| o.key.strip_suffix(keys::MANIFEST))
            .collect();
        let mut found = Vec::new();
        let mut unreadable = 0;
        for object in &objects {
            let Some(folder) = object.key.strip_suffix(keys::RESERVATION) else {
                continue;
            };
            let Some(model) = keys::model_of_key(&object.key) else {
                continue;
            };
            let Some(version) = keys::version_of_key(&model, &object.key) else {
                continue;
            };
            if folder != keys::version_prefix(&model, version) {
                continue;
            }
            match self.reservation(&model, version).await {
                Ok(Some(reservation)) if reservation.deployment == deployment => {
                    found.push(FoundReservation {
                        reservation,
                        committed: manifests.contains(folder),
                    });
                }
                Ok(_) => {}
                Err(RegistryError::Storage(e)) => return Err(e.into()),
                Err(_) => unreadable += 1,
            }
        }
        Ok((found, unreadable))
    }
}
