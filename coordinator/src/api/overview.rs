//! The dashboard (`/`), its data (`/v1/overview`), `/metrics`, `/healthz` and `/readyz`.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;

use super::ApiError;
use crate::service::App;
use crate::store::JobFilter;
use refit_proto::wire::{JobState, Overview};

/// The dashboard page: static; it reads `/v1/overview` with the token the user gives it.
const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

pub(super) async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        ],
        DASHBOARD,
    )
}

pub(super) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Whether submits are taken (the job store answers: 200, else 503), and what holds up the
/// rest: the broker connection (while it is down, submitted jobs wait in the outbox), whether
/// this coordinator is the active one, the jobs waiting to be published.
pub(super) async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let store = app.store.count_by_state().await;
    let broker = if app.broker.is_connected() {
        "connected"
    } else {
        "unreachable"
    };
    let body = serde_json::json!({
        "ready": store.is_ok(),
        "store": match &store {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        },
        "broker": broker,
        "active": app.is_active(),
        "outbox_jobs": app.store.count_outbox().await.ok(),
    });
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

pub(super) async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        crate::service::metrics::render(&app).await,
    )
}

/// Everything the dashboard shows.
pub(super) async fn overview(State(app): State<App>) -> Result<impl IntoResponse, ApiError> {
    let mut active_jobs = Vec::new();
    for state in [JobState::Running, JobState::Stalled, JobState::Queued] {
        active_jobs.extend(
            app.store
                .list_jobs(JobFilter {
                    state: Some(state),
                    limit: 50,
                    ..JobFilter::default()
                })
                .await?,
        );
    }
    let recent_jobs: Vec<_> = app
        .store
        .list_jobs(JobFilter {
            limit: 100,
            ..JobFilter::default()
        })
        .await?
        .into_iter()
        .filter(|j| j.state.is_final())
        .take(20)
        .collect();
    let mut pools: BTreeSet<String> = active_jobs.iter().map(|j| j.pool.clone()).collect();
    pools.insert(app.config.queue.pool.clone());
    let pools: Vec<String> = pools.into_iter().collect();
    let (queues, broker_error) = match app.queues.snapshot(&app, &pools).await {
        Ok(queues) => (queues, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let curve_ids = active_jobs
        .iter()
        .filter(|j| j.state != JobState::Queued)
        .map(|j| j.id.clone())
        .collect();
    let loss_curves = app.store.loss_curves(curve_ids, 200).await?;
    let workers = app
        .store
        .workers(
            Utc::now() - chrono::Duration::hours(1),
            app.config.coordinator.stall_after_secs,
        )
        .await?;
    let overview = Overview {
        now: Utc::now(),
        refit_version: env!("CARGO_PKG_VERSION").to_owned(),
        queues,
        broker_error,
        workers,
        jobs_by_state: app.store.count_by_state().await?,
        active_jobs,
        recent_jobs,
        loss_curves,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(overview)))
}
