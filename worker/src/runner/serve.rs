//! The worker's HTTP port (`worker.listen`): `/healthz` (the process answers), `/readyz` (the
//! broker connection is up and S3 answers: 200, else 503 naming what is not) and `/metrics`
//! (Prometheus, see `metrics`). Nothing else, and nothing that changes state: no token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use refit_io::queue::Broker;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::metrics::{Connectivity, WorkerMetrics};
use super::outage::StorageHealth;

#[derive(Clone)]
struct Probe {
    broker: Broker,
    health: Arc<StorageHealth>,
    metrics: Arc<WorkerMetrics>,
}

impl Probe {
    fn now(&self) -> Connectivity {
        Connectivity {
            broker: self.broker.is_connected(),
            storage: !self.health.is_down(),
        }
    }
}

/// Binds `listen` (an error names the address) and serves until `stop`.
pub(crate) async fn start(
    listen: &str,
    broker: Broker,
    health: Arc<StorageHealth>,
    metrics: Arc<WorkerMetrics>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("worker.listen {listen:?} is not an address: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (worker.listen): {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Probe {
            broker,
            health,
            metrics,
        });
    info!(%local, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the health and metrics port failed");
        }
    }))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(probe): State<Probe>) -> impl IntoResponse {
    let now = probe.now();
    let mut failing = Vec::new();
    if !now.broker {
        failing.push("broker");
    }
    if !now.storage {
        failing.push("storage");
    }
    let body = serde_json::json!({
        "ready": failing.is_empty(),
        "broker": if now.broker { "connected" } else { "unreachable" },
        "storage": if now.storage { "ok" } else { "unreachable" },
        "failing": failing,
    });
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics_text(State(probe): State<Probe>) -> impl IntoResponse {
    let text = probe.metrics.render(probe.now());
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text)
}
