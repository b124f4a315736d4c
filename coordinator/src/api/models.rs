//! Models, versions and aliases, read from the object store's key layout (DESIGN §3).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use refit_io::registry::RegistryError;
use refit_proto::evaluation::{Comparison, Evaluation};
use refit_proto::promotion::{AliasHistory, AliasMove, GateResult};
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

fn alias_name(alias: &str) -> Result<Alias, ApiError> {
    Alias::new(alias).map_err(|e| ApiError::invalid(format!("alias: {e}")))
}

fn version_arg(what: &str, text: &str) -> Result<Version, ApiError> {
    text.trim()
        .parse()
        .map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// Points an alias at a stored version, if it passes the alias's gate (or with `force`); the
/// move goes into the alias's history.
pub(super) async fn set_alias(
    State(app): State<App>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AliasView>, ApiError> {
    let model = model_name(&name)?;
    let alias = alias_name(&alias)?;
    let request: AliasRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
    let version = version_arg("version", &request.version)?;
    let by = clean_text(request.by.as_deref(), "api");
    let reason = clean_text(request.reason.as_deref(), "");
    let result = app
        .ask_gate(&model, &alias, version)
        .await
        .map_err(registry_error)?;
    let forced = !result.passed;
    if forced && !request.force {
        app.metrics
            .promotions
            .with_label_values(&[alias.as_str(), "refused"])
            .inc();
        return Err(ApiError::gate_failed(&result));
    }
    let entry = AliasMove {
        at: chrono::Utc::now(),
        from: None,
        to: version,
        by,
        reason,
        forced,
        gate: Some(result.clone()),
    };
    let moved = app
        .move_alias(&model, &alias, entry)
        .await
        .map_err(registry_error)?;
    let outcome = if forced { "forced" } else { "manual" };
    app.metrics
        .promotions
        .with_label_values(&[alias.as_str(), outcome])
        .inc();
    tracing::info!(%model, %alias, %version, forced, by = %moved.by, "alias set");
    Ok(Json(AliasView {
        model: model.to_string(),
        alias: alias.to_string(),
        version: version.to_string(),
        previous: moved.from.map(|v| v.to_string()),
        forced,
        gate: Some(result),
    }))
}

/// A caller's free text for the history: one line, at most 500 characters.
fn clean_text(text: Option<&str>, default: &str) -> String {
    let text: String = text
        .unwrap_or(default)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    text.trim().to_owned()
}

/// `GET /v1/models/{name}/aliases/{alias}/history`.
pub(super) async fn alias_history(
    State(app): State<App>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<AliasHistory>, ApiError> {
    let model = model_name(&name)?;
    let alias = alias_name(&alias)?;
    let history = app
        .registry
        .alias_history(&model, &alias)
        .await
        .map_err(registry_error)?;
    Ok(Json(history))
}

/// `?version=` of the gate's dry run.
#[derive(serde::Deserialize)]
pub(super) struct GateQuery {
    version: String,
}

/// `GET /v1/models/{name}/aliases/{alias}/gate?version=v3`: what the gate would decide now.
pub(super) async fn gate(
    State(app): State<App>,
    Path((name, alias)): Path<(String, String)>,
    Query(query): Query<GateQuery>,
) -> Result<Json<GateResult>, ApiError> {
    let model = model_name(&name)?;
    let alias = alias_name(&alias)?;
    let version = version_arg("version", &query.version)?;
    let result = app
        .ask_gate(&model, &alias, version)
        .await
        .map_err(registry_error)?;
    Ok(Json(result))
}

/// `GET /v1/models/{name}/versions/{version}/evaluation`: the version's `evaluation.json`.
pub(super) async fn evaluation(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Evaluation>, ApiError> {
    let model = model_name(&name)?;
    let version = version_arg("version", &version)?;
    let manifest = app
        .registry
        .manifest(&model, version)
        .await
        .map_err(registry_error)?;
    match app
        .registry
        .evaluation(&manifest)
        .await
        .map_err(registry_error)?
    {
        Some(evaluation) => Ok(Json(evaluation)),
        None => Err(ApiError::not_found(format!(
            "{model} {version} has no evaluation (it was trained without eval data)"
        ))),
    }
}

/// `?before=&after=` of a comparison.
#[derive(serde::Deserialize)]
pub(super) struct CompareQuery {
    before: String,
    after: String,
}

/// `GET /v1/models/{name}/compare?before=v1&after=v2`: the newer version against the older on
/// their common eval data: the comparison `after`'s job made, else one built from both stored
/// evaluations.
pub(super) async fn compare(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<CompareQuery>,
) -> Result<Json<Comparison>, ApiError> {
    let model = model_name(&name)?;
    let before = version_arg("before", &query.before)?;
    let after = version_arg("after", &query.after)?;
    let mut read = Vec::new();
    for version in [after, before] {
        let manifest = app
            .registry
            .manifest(&model, version)
            .await
            .map_err(registry_error)?;
        let evaluation = app
            .registry
            .evaluation(&manifest)
            .await
            .map_err(registry_error)?
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "{model} {version} has no evaluation (it was trained without eval data)"
                ))
            })?;
        read.push(evaluation);
    }
    let (newer, older) = (&read[0], &read[1]);
    if let Some(stored) = newer.comparison_with(before) {
        return Ok(Json(stored.clone()));
    }
    refit_proto::evaluation::compare(newer, older, Vec::new(), None)
        .map(Json)
        .map_err(|e| ApiError::conflict(e.to_string()))
}
