//! `refit serve`'s HTTP API: Rasa's NLU endpoints plus health and metrics.
//!
//! | route | token | answer |
//! | --- | --- | --- |
//! | `POST /model/parse` | yes | the default (first) model's parse of `{"text": "..."}` (see `rasa`) |
//! | `POST /models/{name}/model/parse` | yes | the same for another served model: `{name}` is its name, or its whole reference (`financial@staging`) when one name is served twice |
//! | `GET /status` | yes | Rasa's `{"model_file", "model_id", "num_active_training_jobs"}` for the default model, and `models`: every served reference with its version and when it was loaded |
//! | `GET /` | no | `Hello from refit serve (Rasa NLU API) <version>` |
//! | `GET /healthz` | no | `{"status": "ok"}` |
//! | `GET /metrics` | no | Prometheus text (see `metrics`) |
//!
//! Parse answers carry `x-refit-model-version: name@vN`, the version that answered. With
//! `--token-file`, the routes marked "yes" need the token as `?token=...` (what Rasa sends for
//! `endpoints.yml`'s `nlu: token:`) or `Authorization: Bearer ...`; the token is never logged.
//!
//! Errors use Rasa's shape, `{"version", "status": "failure", "message", "reason", "details",
//! "help", "code"}`: 400 `BadRequest` for a body that is not a JSON object with a string
//! `text`, a body over [`MAX_BODY_BYTES`] or a text over [`MAX_TEXT_CHARS`]; 401
//! `NotAuthenticated`; 404 `NotFound` for an unknown model or route; 500 `ParsingError` when the
//! model fails (the cause is logged).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use refit_io::Secret;
use refit_proto::keys;
use serde_json::{Value, json};
use tracing::error;

use super::metrics::ServeMetrics;
use super::models::Slot;
use super::rasa::ParseResponse;

/// The largest request body read.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;
/// How much of a too-large body is read (and dropped) before answering.
const DRAIN_BYTES: usize = 16 << 20;
/// The longest text parsed, in characters (the model reads at most 64 tokens anyway).
pub(crate) const MAX_TEXT_CHARS: usize = 10_000;
/// The response header naming the version that answered.
pub(crate) const VERSION_HEADER: &str = "x-refit-model-version";
/// refit's version, in `GET /` and in error bodies.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

struct Inner {
    /// The served models; the first is the default.
    slots: Vec<Arc<Slot>>,
    /// The token requests must carry, if any.
    token: Option<Secret>,
    metrics: Arc<ServeMetrics>,
}

impl AppState {
    pub fn new(slots: Vec<Arc<Slot>>, token: Option<Secret>, metrics: Arc<ServeMetrics>) -> Self {
        assert!(!slots.is_empty(), "at least one model is served");
        Self(Arc::new(Inner {
            slots,
            token,
            metrics,
        }))
    }

    /// The slot `/models/{name}/…` names: a whole reference, else a model name served once.
    fn slot(&self, name: &str) -> Option<&Arc<Slot>> {
        let slots = &self.0.slots;
        if let Some(slot) = slots.iter().find(|s| s.reference.to_string() == name) {
            return Some(slot);
        }
        let mut named = slots.iter().filter(|s| s.reference.model.as_str() == name);
        match (named.next(), named.next()) {
            (Some(slot), None) => Some(slot),
            _ => None,
        }
    }
}

/// The routes, with auth and request metrics.
pub(crate) fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/model/parse", post(parse_default))
        .route("/models/{name}/model/parse", post(parse_named))
        .route("/status", get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(hello))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts and times every request by route pattern and status.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [route.as_str(), status.as_str()];
    let metrics = &state.0.metrics;
    metrics.requests.with_label_values(&labels).inc();
    metrics
        .request_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Refuses requests without the token, when one is set.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.0.token else {
        return next.run(request).await;
    };
    let from_query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned());
    let given = from_query.or(from_header);
    match given {
        Some(given) if same(given.as_bytes(), token.expose().as_bytes()) => next.run(request).await,
        Some(_) => failure(
            StatusCode::UNAUTHORIZED,
            "NotAuthenticated",
            "the token is wrong",
        ),
        None => failure(
            StatusCode::UNAUTHORIZED,
            "NotAuthenticated",
            "a token is required: add ?token=... (Rasa's endpoints.yml nlu: token:) or an \
             Authorization: Bearer header",
        ),
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn hello() -> impl IntoResponse {
    format!("Hello from refit serve (Rasa NLU API) {VERSION}")
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.0.metrics.render(),
    )
}

async fn not_found() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        "no such route: POST /model/parse, POST /models/{name}/model/parse, GET /status, \
         GET /healthz, GET /metrics",
    )
}

async fn status(State(state): State<AppState>) -> Response {
    let default = state.0.slots[0].current();
    let reference = &state.0.slots[0].reference;
    let models: Vec<Value> = state
        .0
        .slots
        .iter()
        .map(|slot| {
            let current = slot.current();
            let alias = match &slot.reference.target {
                super::store::Target::Alias(a) => Some(a.to_string()),
                super::store::Target::Version(_) => None,
            };
            json!({
                "name": slot.reference.model,
                "alias": alias,
                "ref": slot.reference.to_string(),
                "version": current.version,
                "loaded_at": current.loaded_at,
            })
        })
        .collect();
    let model_file = keys::version_prefix(&reference.model, default.version);
    axum::Json(json!({
        "model_file": model_file.trim_end_matches('/'),
        "model_id": default.label,
        "num_active_training_jobs": 0,
        "models": models,
    }))
    .into_response()
}

async fn parse_default(State(state): State<AppState>, body: Body) -> Response {
    let slot = Arc::clone(&state.0.slots[0]);
    parse(&state, &slot, body).await
}

async fn parse_named(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let Some(slot) = state.slot(&name).cloned() else {
        let served: Vec<String> = state
            .0
            .slots
            .iter()
            .map(|s| s.reference.to_string())
            .collect();
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "no model {name:?} is served here (served: {})",
                served.join(", ")
            ),
        );
    };
    parse(&state, &slot, body).await
}

/// Reads and checks the body, parses its text on the slot's current version.
async fn parse(state: &AppState, slot: &Slot, body: Body) -> Response {
    let text = match read_text(body).await {
        Ok(text) => text,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    // Taken once: the request finishes on this version whatever swaps meanwhile.
    let model = slot.current();
    let label = HeaderValue::from_str(&model.label).expect("names and versions are ASCII");
    let parsed = if text.trim().is_empty() {
        Ok(ParseResponse::empty())
    } else {
        model.parse(text, &state.0.metrics).await
    };
    match parsed {
        Ok(parsed) => {
            let mut response = axum::Json(parsed).into_response();
            response.headers_mut().insert(VERSION_HEADER, label);
            response
        }
        Err(cause) => {
            error!(model = %label.to_str().unwrap_or_default(), error = %cause, "parse failed");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ParsingError",
                "the model failed to parse the text (the server's log has the cause)",
            )
        }
    }
}

/// The `text` of a parse request's body, or what is wrong with the body.
async fn read_text(body: Body) -> Result<String, String> {
    let bytes = read_body(body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the request body is not JSON ({e}): send {{\"text\": \"...\"}}"))?;
    let text = match value.get("text") {
        Some(Value::String(text)) => text,
        Some(_) => return Err("\"text\" must be a string".to_owned()),
        None if value.is_object() => {
            return Err("no text: send {\"text\": \"...\"}".to_owned());
        }
        None => return Err("the request body must be a JSON object: {\"text\": \"...\"}".into()),
    };
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "the text has {chars} characters; at most {MAX_TEXT_CHARS} are parsed"
        ));
    }
    Ok(text.clone())
}

/// The body, if it holds at most [`MAX_BODY_BYTES`]. A larger one is read on (and dropped) up
/// to [`DRAIN_BYTES`] more, so the client reads the 400 instead of a connection reset (closing
/// a socket with unread data makes the kernel reset it).
async fn read_body(body: Body) -> Result<Vec<u8>, String> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("cannot read the request body: {e}"))?;
        total += chunk.len();
        if total <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&chunk);
        } else if total > MAX_BODY_BYTES + DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes (1 MiB)"
        ));
    }
    Ok(bytes)
}

/// An error in Rasa's shape.
fn failure(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "version": VERSION,
        "status": "failure",
        "message": message.into(),
        "reason": reason,
        "details": {},
        "help": null,
        "code": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[tokio::test]
    async fn bad_bodies_are_explained() {
        let read = |s: &'static [u8]| read_text(Body::from(s));
        assert_eq!(read(br#"{"text": "hi"}"#).await.unwrap(), "hi");
        assert_eq!(
            read(br#"{"text": "hi", "message_id": "x", "extra": 1}"#)
                .await
                .unwrap(),
            "hi"
        );
        for (body, expect) in [
            (&b"not json"[..], "not JSON"),
            (b"{}", "no text"),
            (br#"{"text": 5}"#, "must be a string"),
            (b"[1, 2]", "JSON object"),
            (b"", "not JSON"),
        ] {
            let err = read(body).await.unwrap_err();
            assert!(err.contains(expect), "{body:?}: {err}");
        }
        let huge = format!("{{\"text\": \"{}\"}}", "a".repeat(MAX_BODY_BYTES));
        let err = read_text(Body::from(huge)).await.unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let long = format!("{{\"text\": \"{}\"}}", "a ".repeat(MAX_TEXT_CHARS));
        let err = read_text(Body::from(long)).await.unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }
}
