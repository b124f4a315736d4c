//! The dashboard (`/`), its data (`/v1/overview`), `/metrics`, `/healthz` and `/readyz`.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, Query, State};
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

/// `/readyz?require=…`: which parts `/readyz` answers 503 for.
#[derive(serde::Deserialize, Default)]
pub(super) struct ReadyQuery {
    /// Comma-separated parts: `store`, `broker`, `storage`. Default: all three.
    require: Option<String>,
}

/// The parts `/readyz` checks.
const PARTS: [&str; 3] = ["store", "broker", "storage"];

/// How long `/readyz` waits for S3.
const STORAGE_PROBE: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether the job store, the broker and S3 answer: 200 when every required part does (all by
/// default; `?require=store` for a probe that should keep taking submits into the outbox while
/// the broker is away), else 503; the body names each part's state and the failing ones.
pub(super) async fn readyz(
    State(app): State<App>,
    Query(query): Query<ReadyQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let required: Vec<&str> = match &query.require {
        None => PARTS.to_vec(),
        Some(list) => {
            let parts: Vec<&str> = list.split(',').map(str::trim).collect();
            if let Some(bad) = parts.iter().find(|p| !PARTS.contains(p)) {
                return Err(ApiError::invalid(format!(
                    "unknown part {bad:?} in require: use store, broker, storage"
                )));
            }
            parts
        }
    };
    let store = app.store.count_by_state().await.map_err(|e| e.to_string());
    let broker = if app.broker.is_connected() {
        Ok(())
    } else {
        Err("not connected to RabbitMQ".to_owned())
    };
    // S3 is asked only when required: a probe that does not need it answers at once.
    let storage = if required.contains(&"storage") {
        match tokio::time::timeout(STORAGE_PROBE, app.objects.head("readyz/probe")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("S3 did not answer within {STORAGE_PROBE:?}")),
        }
    } else {
        Err("not checked".to_owned())
    };
    let states = [
        ("store", store.as_ref().map(|_| ()).map_err(Clone::clone)),
        ("broker", broker),
        ("storage", storage),
    ];
    let failing: Vec<&str> = states
        .iter()
        .filter(|(part, state)| state.is_err() && required.contains(part))
        .map(|(part, _)| *part)
        .collect();
    let mut body = serde_json::json!({
        "ready": failing.is_empty(),
        "failing": failing,
        "active": app.is_active(),
        "outbox_jobs": app.store.count_outbox().await.ok(),
    });
    for (part, state) in states {
        body[part] = serde_json::Value::String(match state {
            Ok(()) => "ok".to_owned(),
            Err(why) => why,
        });
    }
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(body)))
}

/// One pool's load, for autoscalers (KEDA's `metrics-api` trigger reads `demand`).
fn pool_view(pool: &str, counts: &BTreeMap<String, u64>) -> serde_json::Value {
    let get = |state: &str| counts.get(state).copied().unwrap_or(0);
    serde_json::json!({
        "pool": pool,
        "queued": get("queued"),
        "running": get("running"),
        "stalled": get("stalled"),
        "demand": get("queued") + get("running") + get("stalled"),
    })
}

/// `GET /v1/pools`: every pool in use with its unfinished jobs and its demand (worker slots it
/// needs now).
pub(super) async fn pools(State(app): State<App>) -> impl IntoResponse {
    let pools = crate::service::metrics::pools_in_use(&app).await;
    let list: Vec<_> = pools.iter().map(|(p, c)| pool_view(p, c)).collect();
    Json(serde_json::json!({ "pools": list }))
}

/// `GET /v1/pools/{pool}`: one pool's load (zeros for a pool nothing uses).
pub(super) async fn pool(
    State(app): State<App>,
    Path(pool): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    refit_io::queue::check_pool(&pool).map_err(ApiError::invalid)?;
    let pools = crate::service::metrics::pools_in_use(&app).await;
    let empty = BTreeMap::new();
    Ok(Json(pool_view(&pool, pools.get(&pool).unwrap_or(&empty))))
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
    pools.extend(
        crate::service::metrics::pools_in_use(&app)
            .await
            .into_keys(),
    );
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
