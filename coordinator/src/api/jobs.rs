//! Datasets, jobs and the decision: `POST /v1/datasets`, `/v1/jobs…`, `POST /v1/check`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use refit_proto::data::{Format, parse_bytes};
use refit_proto::keys::sha256_hex;
use refit_proto::{JobId, keys};
use serde::Deserialize;
use tracing::info;

use super::ApiError;
use crate::service::App;
use crate::store::JobFilter;
use refit_proto::wire::{DatasetBody, JobList, JobState, JobView, SubmitRequest, SubmitResponse};

/// `POST /v1/datasets` query.
#[derive(Debug, Deserialize)]
pub(super) struct UploadParams {
    /// `yml` (default), `yaml`, `jsonl` or `json`.
    ext: Option<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))
}

/// Stores a dataset under its content address after checking that it parses.
pub(super) async fn upload_dataset(
    State(app): State<App>,
    params: Result<Query<UploadParams>, QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<DatasetBody>), ApiError> {
    let params = query(params)?;
    let ext = params.ext.unwrap_or_else(|| "yml".to_owned());
    if !keys::DATASET_EXTENSIONS.contains(&ext.as_str()) {
        return Err(ApiError::invalid(format!(
            "ext {ext:?}: expected yml, yaml, jsonl or json"
        )));
    }
    if body.is_empty() {
        return Err(ApiError::invalid_dataset("the dataset is empty"));
    }
    let format = Format::from_path(std::path::Path::new(&format!("upload.{ext}")))
        .expect("every dataset extension has a format");
    let data = parse_bytes(&body, &format!("upload.{ext}"), format)
        .map_err(|e| ApiError::invalid_dataset(format!("the dataset does not parse: {e}")))?;
    if data.is_empty() {
        return Err(ApiError::invalid_dataset(
            "the dataset holds no training examples",
        ));
    }
    let sha256 = sha256_hex(&body);
    let key = keys::dataset(&sha256, &ext).map_err(|e| ApiError::internal(&e))?;
    let exists = app
        .objects
        .head(&key)
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?
        .is_some();
    if !exists {
        app.objects
            .put(&key, body)
            .await
            .map_err(|e| ApiError::store_unavailable(&e))?;
    }
    info!(%key, examples = data.len(), new = !exists, "dataset stored");
    Ok((StatusCode::CREATED, Json(DatasetBody { key, sha256 })))
}

/// Decides and stores a job.
pub(super) async fn submit(
    State(app): State<App>,
    body: Bytes,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let request: SubmitRequest = parse_json(&body)?;
    let (job, decision) = app.submit(&request, None, false).await?;
    Ok((
        StatusCode::CREATED,
        Json(SubmitResponse {
            job: Some(job.view),
            decision,
        }),
    ))
}

/// The decision for a would-be job, without a job.
pub(super) async fn check(
    State(app): State<App>,
    body: Bytes,
) -> Result<Json<SubmitResponse>, ApiError> {
    let request: SubmitRequest = parse_json(&body)?;
    let evaluated = app.evaluate(&request, false).await?;
    Ok(Json(SubmitResponse {
        job: None,
        decision: evaluated.report,
    }))
}

/// `GET /v1/jobs` query.
#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    model: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Jobs, newest first, a page at a time.
pub(super) async fn list(
    State(app): State<App>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let params = query(params)?;
    let state = params
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(ApiError::invalid)?;
    if let Some(cursor) = &params.cursor
        && cursor.parse::<JobId>().is_err()
    {
        return Err(ApiError::invalid("cursor: not a job id"));
    }
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let jobs = app
        .store
        .list_jobs(JobFilter {
            model: params.model,
            state,
            before: params.cursor,
            limit,
        })
        .await?;
    let next_cursor = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.id.clone()))
        .flatten();
    Ok(Json(JobList { jobs, next_cursor }))
}

fn job_id(id: &str) -> Result<String, ApiError> {
    id.parse::<JobId>().map(|id| id.to_string()).map_err(|_| {
        ApiError::not_found(format!(
            "no job {:?}",
            id.chars().take(40).collect::<String>()
        ))
    })
}

/// "No such job", with a hint when this coordinator is not the active one: a standby, or one
/// that has not yet recovered the jobs a lost store held (deploy/README.md, "Guarantees").
fn no_job(app: &App, id: &str) -> ApiError {
    if app.is_active() {
        ApiError::not_found(format!("no job {id}"))
    } else {
        ApiError::not_found(format!(
            "no job {id} here; this coordinator is not the active one yet (standing by, or \
             recovering jobs from the object store): ask again in a moment or ask the active one"
        ))
    }
}

/// `GET /v1/jobs/{id}` query: which page of the job's events.
#[derive(Debug, Deserialize)]
pub(super) struct EventPage {
    /// Events after this `seq` (default: from the first).
    events_after: Option<i64>,
    /// At most this many (default [`EVENTS_PAGE`], at most [`EVENTS_PAGE_MAX`]; 0: none, for
    /// a poll that reads only the state and the progress).
    events_limit: Option<u32>,
}

/// Events in one answer unless the caller asks for another number.
const EVENTS_PAGE: u32 = 1000;
/// The most events in one answer.
const EVENTS_PAGE_MAX: u32 = 10_000;

/// A job with a page of its events.
pub(super) async fn get_one(
    State(app): State<App>,
    Path(id): Path<String>,
    params: Result<Query<EventPage>, QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    let params = query(params)?;
    let id = job_id(&id)?;
    let job = app
        .store
        .job_page(
            id.clone(),
            params.events_after.unwrap_or(0),
            params
                .events_limit
                .unwrap_or(EVENTS_PAGE)
                .min(EVENTS_PAGE_MAX),
        )
        .await?
        .ok_or_else(|| no_job(&app, &id))?;
    Ok(Json(job.view))
}

/// Cancels a job: a queued one at once, a running one when its worker stops it.
pub(super) async fn cancel(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let (before, job) = app
        .store
        .request_cancel(id.clone())
        .await?
        .ok_or_else(|| no_job(&app, &id))?;
    if before.is_final() {
        return Err(ApiError::conflict(format!("job {id} is already {before}")));
    }
    app.outbox_wake.notify_one();
    info!(job_id = %id, "cancel requested");
    Ok(Json(job.view))
}
