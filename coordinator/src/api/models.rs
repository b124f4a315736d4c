//! Models, versions and aliases, read from the object store's key layout (DESIGN §3).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use refit_io::registry::RegistryError;
use refit_proto::wire::{AliasRequest, AliasView, ModelList, ModelView, VersionList, VersionView};
use refit_proto::{Alias, ModelName, Version};

use super::ApiError;
use crate::service::App;

fn model_name(name: &str) -> Result<ModelName, ApiError> {
    ModelName::new(name).map_err(|e| ApiError::invalid(format!("model: {e}")))
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Storage(s) if s.is_transient() => ApiError::store_unavailable(&s),
        RegistryError::NotFound { .. } => ApiError::not_found(e.to_string()),
        other => ApiError::internal(&other),
    }
}

/// Alias name → version, for one model.
async fn aliases(app: &App, model: &ModelName) -> Result<BTreeMap<String, Version>, ApiError> {
    let aliases = app
        .registry
        .aliases(model)
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?;
    Ok(aliases
        .into_iter()
        .map(|(alias, version)| (alias.to_string(), version))
        .collect())
}

/// Every model with a stored version or a job.
pub(super) async fn list(State(app): State<App>) -> Result<Json<ModelList>, ApiError> {
    let mut versions: BTreeMap<String, Vec<Version>> = app
        .registry
        .models()
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?
        .into_iter()
        .map(|(model, versions)| (model.to_string(), versions))
        .collect();
    let active = app.store.models_with_jobs().await?;
    for name in active.keys() {
        versions.entry(name.clone()).or_default();
    }
    let mut models = Vec::new();
    for (name, found) in versions {
        let model = model_name(&name)?;
        let aliases = aliases(&app, &model)
            .await?
            .into_iter()
            .map(|(a, v)| (a, v.to_string()))
            .collect();
        models.push(ModelView {
            latest_version: found.last().map(ToString::to_string),
            versions: found.len() as u32,
            aliases,
            active_jobs: active.get(&name).copied().unwrap_or(0),
            name,
        });
    }
    Ok(Json(ModelList { models }))
}

/// A model's stored versions with their lineage.
pub(super) async fn versions(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    let model = model_name(&name)?;
    let found = app
        .registry
        .versions(&model)
        .await
        .map_err(registry_error)?;
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "model {model} has no stored versions"
        )));
    }
    let aliases = aliases(&app, &model).await?;
    let mut versions = Vec::new();
    for version in found {
        let m = app
            .registry
            .manifest(&model, version)
            .await
            .map_err(registry_error)?;
        versions.push(VersionView {
            version: version.to_string(),
            parent: m.parent.map(|p| p.to_string()),
            mode: m.mode,
            finetune_depth: m.finetune_depth,
            dataset_sha256: m.data.sha256,
            dataset_key: m.data.key,
            examples: m.data.examples,
            epochs: m.epochs,
            metrics: m.metrics,
            timings: m.timings,
            aliases: aliases
                .iter()
                .filter(|(_, v)| **v == version)
                .map(|(a, _)| a.clone())
                .collect(),
            created_at: m.created_at,
        });
    }
    Ok(Json(VersionList {
        model: model.to_string(),
        versions,
    }))
}

/// Points an alias at a stored version.
pub(super) async fn set_alias(
    State(app): State<App>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AliasView>, ApiError> {
    let model = model_name(&name)?;
    let alias = Alias::new(alias).map_err(|e| ApiError::invalid(format!("alias: {e}")))?;
    let request: AliasRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
    let version: Version = request
        .version
        .trim()
        .parse()
        .map_err(|e| ApiError::invalid(format!("version: {e}")))?;
    let previous = app
        .registry
        .set_alias(&model, &alias, version)
        .await
        .map_err(registry_error)?;
    tracing::info!(%model, %alias, %version, "alias set");
    Ok(Json(AliasView {
        model: model.to_string(),
        alias: alias.to_string(),
        version: version.to_string(),
        previous: previous.map(|v| v.to_string()),
    }))
}
