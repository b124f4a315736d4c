//! The HTTP API (axum): routes, bearer-token auth, request logging. See the table in the crate
//! docs and `coordinator/openapi.yaml`.
//!
//! Layout:
//! - `error`: [`ApiError`], the one place errors become status codes and JSON
//! - `jobs`: datasets, jobs, the decision
//! - `models`: models, versions, aliases
//! - `overview`: the dashboard's data, `/metrics`, `/healthz`, the dashboard page

mod error;
mod jobs;
mod models;
mod overview;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tracing::info;

pub use error::ApiError;

use refit_io::Secret;

use crate::service::App;

/// The API description, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Every route of the coordinator.
pub fn router(app: App) -> Router {
    // A dataset upload carries the whole file; leave room for it (and nothing much bigger).
    let body_limit = usize::try_from(app.config.coordinator.max_dataset_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 10);
    let v1 = Router::new()
        .route("/datasets", post(jobs::upload_dataset))
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get_one))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/check", post(jobs::check))
        .route("/models", get(models::list))
        .route("/models/{name}/versions", get(models::versions))
        .route(
            "/models/{name}/versions/{version}/evaluation",
            get(models::evaluation),
        )
        .route("/models/{name}/compare", get(models::compare))
        .route("/models/{name}/aliases/{alias}", put(models::set_alias))
        .route(
            "/models/{name}/aliases/{alias}/history",
            get(models::alias_history),
        )
        .route("/models/{name}/aliases/{alias}/gate", get(models::gate))
        .route("/overview", get(overview::overview))
        .route("/pools", get(overview::pools))
        .route("/pools/{pool}", get(overview::pool))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .nest("/v1", v1)
        .route("/", get(overview::dashboard))
        .route("/healthz", get(overview::healthz))
        .route("/readyz", get(overview::readyz))
        .route(
            "/metrics",
            get(overview::metrics)
                .route_layer(middleware::from_fn_with_state(app.clone(), metrics_auth)),
        )
        .route("/openapi.yaml", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), log_request))
        .with_state(app)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.yaml")
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries `Authorization: Bearer <token>` with exactly this token.
fn presents(request: &Request, token: &Secret) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|presented| same_secret(presented.as_bytes(), token.expose().as_bytes()))
}

async fn auth(State(app): State<App>, request: Request, next: Next) -> Response {
    if presents(&request, &app.token) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// `/metrics` is open unless `coordinator.metrics_token` is set; then it needs that token.
async fn metrics_auth(State(app): State<App>, request: Request, next: Next) -> Response {
    match &app.metrics_token {
        Some(token) if !presents(&request, token) => {
            ApiError::metrics_unauthorized().into_response()
        }
        _ => next.run(request).await,
    }
}

/// One log line per request: method, path (never the query or headers), status, time; and the
/// request metrics, by route pattern (so that ids do not make new series).
async fn log_request(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let elapsed = started.elapsed().as_secs_f64();
    app.metrics
        .http_requests
        .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(elapsed);
    let ms = elapsed * 1000.0;
    if path == "/healthz" || path == "/readyz" || path == "/metrics" || path == "/v1/overview" {
        tracing::debug!(%method, %path, status = status.as_u16(), ms, "request");
    } else if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(%method, %path, status = status.as_u16(), ms, "request");
    } else {
        info!(%method, %path, status = status.as_u16(), ms, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
