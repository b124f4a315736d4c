//! Aliases: `models/<name>/aliases/<alias>` holds a version key segment (`v000003`) and a
//! newline.

use std::collections::BTreeMap;

use bytes::Bytes;
use refit_proto::{Alias, ModelName, Version, keys};

use super::{Registry, RegistryError};
use crate::storage::StorageError;

impl Registry {
    /// The version an alias points at; `None` when the alias does not exist.
    pub async fn alias(
        &self,
        model: &ModelName,
        alias: &Alias,
    ) -> Result<Option<Version>, RegistryError> {
        match self
            .store
            .get_at_most(&keys::alias(model, alias), super::MAX_METADATA_BYTES)
            .await
        {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                text.trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| RegistryError::BadAlias {
                        model: model.clone(),
                        alias: alias.clone(),
                        found: text.chars().take(20).collect(),
                    })
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A model's aliases that point at a version. Objects under `aliases/` whose name is not a
    /// valid alias, or that hold no version, are left out.
    pub async fn aliases(
        &self,
        model: &ModelName,
    ) -> Result<BTreeMap<Alias, Version>, StorageError> {
        let prefix = keys::aliases_prefix(model);
        let mut out = BTreeMap::new();
        for object in self.store.list(&prefix).await? {
            let Ok(alias) = Alias::new(object.key.trim_start_matches(&prefix)) else {
                continue;
            };
            match self.alias(model, &alias).await {
                Ok(Some(version)) => {
                    out.insert(alias, version);
                }
                Err(RegistryError::Storage(e)) => return Err(e),
                // Deleted since the listing, or holding no version.
                _ => {}
            }
        }
        Ok(out)
    }

    /// Points `alias` at `version`, which must have a manifest; returns the version it pointed
    /// at before (`None` if it was new or held no version).
    pub async fn set_alias(
        &self,
        model: &ModelName,
        alias: &Alias,
        version: Version,
    ) -> Result<Option<Version>, RegistryError> {
        self.manifest(model, version).await?;
        let previous = self.alias(model, alias).await.ok().flatten();
        self.store
            .put(
                &keys::alias(model, alias),
                Bytes::from(format!("{}\n", version.key_segment())),
            )
            .await?;
        Ok(previous)
    }
}
