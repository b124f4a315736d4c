//! [`ApiError`]: every error the API returns, mapped onto a few status codes in one place. The
//! body is [`ErrorBody`] with a stable `code`; internal causes are logged, not returned.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{error, warn};

use crate::service::SubmitError;
use crate::store::StoreError;
use refit_proto::wire::{ErrorBody, ErrorDetail};

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 422 `invalid_dataset`.
    pub fn invalid_dataset(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 409 `gate_failed`: the version did not pass the alias's promotion gate; `details` holds
    /// the gate's checks.
    pub fn gate_failed(result: &refit_proto::promotion::GateResult) -> Self {
        let mut err = Self::new(
            StatusCode::CONFLICT,
            "gate_failed",
            format!(
                "{} (the alias did not move; `force` moves it anyway, recorded in its history)",
                result.summary()
            ),
        );
        err.details = serde_json::to_value(result).ok();
        err
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token>` (the \
             coordinator's coordinator.token; for the CLI set REFIT_TOKEN)",
        )
    }

    /// 401 on `/metrics` when `coordinator.metrics_token` is set.
    pub fn metrics_unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: /metrics needs `Authorization: Bearer <token>` with \
             the coordinator's coordinator.metrics_token (Prometheus: `authorization: \
             {credentials_file: ...}` in the scrape config)",
        )
    }

    /// 503 `store_unavailable`: the object store failed; the cause is logged.
    pub fn store_unavailable(cause: &dyn std::fmt::Display) -> Self {
        warn!(%cause, "object store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the object store is unavailable; try again shortly",
        )
    }

    /// 500 `internal`; the cause is logged.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the coordinator's log has the details",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(m) => ApiError::invalid(m),
            SubmitError::Dataset(m) => ApiError::invalid_dataset(m),
            SubmitError::NotFound(m) => ApiError::not_found(m),
            SubmitError::Rejected(report) => {
                let reasons = report.codes().join(", ");
                let mut err = ApiError::new(
                    StatusCode::CONFLICT,
                    "rejected",
                    format!(
                        "the model cannot be fine-tuned on this data ({reasons}); see details, \
                         or resubmit with policy \"scratch\" to train from scratch"
                    ),
                );
                err.details = serde_json::to_value(&*report).ok();
                err
            }
            SubmitError::Storage(s) if s.is_transient() => ApiError::store_unavailable(&s),
            SubmitError::Storage(s) if s.is_not_found() => ApiError::invalid_dataset(s.to_string()),
            SubmitError::Storage(s) => ApiError::internal(&s),
            SubmitError::Store(s) => ApiError::internal(&s),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
