//! Aliases: `models/<name>/aliases/<alias>` holds a version key segment (`v000003`) and a
//! newline.

use std::collections::BTreeMap;

use bytes::Bytes;
use refit_proto::evaluation::Evaluation;
use refit_proto::promotion::{AliasHistory, AliasMove};
use refit_proto::{Alias, Manifest, ModelName, Version, keys};

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

    /// An alias's history of moves (empty when it has none).
    pub async fn alias_history(
        &self,
        model: &ModelName,
        alias: &Alias,
    ) -> Result<AliasHistory, RegistryError> {
        let key = keys::alias_history(model, alias);
        match self
            .store
            .get_at_most(&key, super::MAX_METADATA_BYTES)
            .await
        {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadHistory {
                model: model.clone(),
                alias: alias.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.is_not_found() => Ok(AliasHistory::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Points `alias` at `entry.to` (which must have a manifest) and appends `entry` to its
    /// history, with `entry.from` set to where it pointed before. The history is written after the
    /// alias: a failure between the two loses a history line, never the move. One writer at a
    /// time (the active coordinator), as for every alias.
    pub async fn move_alias(
        &self,
        model: &ModelName,
        alias: &Alias,
        mut entry: AliasMove,
    ) -> Result<AliasMove, RegistryError> {
        // A damaged history is replaced rather than blocking the move.
        let mut history = self
            .alias_history(model, alias)
            .await
            .or_else(|e| match e {
                RegistryError::BadHistory { .. } => Ok(AliasHistory::default()),
                other => Err(other),
            })?;
        entry.from = self.set_alias(model, alias, entry.to).await?;
        history.push(entry.clone());
        let bytes = serde_json::to_vec_pretty(&history).expect("a history always serialises");
        self.store
            .put(&keys::alias_history(model, alias), Bytes::from(bytes))
            .await?;
        Ok(entry)
    }

    /// The version's `evaluation.json`, checked against the manifest; `None` when the manifest
    /// lists none (a version trained without eval data, or before evaluations were stored).
    pub async fn evaluation(
        &self,
        manifest: &Manifest,
    ) -> Result<Option<Evaluation>, RegistryError> {
        if !manifest.files.contains_key(keys::EVALUATION) {
            return Ok(None);
        }
        let bytes = self.file(manifest, keys::EVALUATION).await?;
        Evaluation::from_json(&bytes)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt {
                model: manifest.model.clone(),
                version: manifest.version,
                reason: format!("{}: {e}", keys::EVALUATION),
            })
    }
}
