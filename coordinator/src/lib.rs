//! # refit-coordinator
//!
//! The coordinator service (`refit-coordinator`): the HTTP API, the job store, the fine-tune
//! decision at submit time, publishing through the outbox, the event consumer, the scheduler,
//! `/metrics` and the dashboard. It uses the adapters (`refit-io`: broker, object store, model
//! registry, config layering, telemetry) and the contract (`refit-proto`); it links no ONNX
//! Runtime and does not depend on the worker or the engine. The `refit` CLI is its own crate
//! (`refit-cli`) and talks to it over HTTP.
//!
//! ## Layout
//! - [`config`]: [`config::CoordinatorConfig`], loaded in layers (`refit_io::config`)
//! - [`store`]: the SQLite job store (outbox, events, workers, schedule runs)
//! - [`service`]: the coordinator service: submit, outbox, event consumer, scheduler, metrics
//! - [`api`]: the HTTP API (axum); its bodies are `refit_proto::wire`
//!
//! ## The HTTP API (`coordinator/openapi.yaml`)
//! Every `/v1` route needs `Authorization: Bearer <token>`; errors are [`wire::ErrorBody`]
//! (`wire` is `refit_proto::wire`).
//!
//! | route | body → answer |
//! | --- | --- |
//! | `POST /v1/datasets?ext=yml` | dataset bytes → 201 [`wire::DatasetBody`] (stored content-addressed) |
//! | `POST /v1/jobs` | [`wire::SubmitRequest`] → 201 [`wire::SubmitResponse`]; 409 `rejected` with the decision |
//! | `GET /v1/jobs?model=&state=&limit=&cursor=` | → [`wire::JobList`] |
//! | `GET /v1/jobs/{id}` | → [`wire::JobView`] with its events |
//! | `POST /v1/jobs/{id}/cancel` | → [`wire::JobView`]; 409 `conflict` when already final |
//! | `POST /v1/check` | [`wire::SubmitRequest`] → 200 [`wire::SubmitResponse`] (no job) |
//! | `GET /v1/models` | → [`wire::ModelList`] |
//! | `GET /v1/models/{name}/versions` | → [`wire::VersionList`] |
//! | `PUT /v1/models/{name}/aliases/{alias}` | [`wire::AliasRequest`] → [`wire::AliasView`] |
//! | `GET /v1/overview` | → [`wire::Overview`] (what the dashboard shows) |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /`, `GET /openapi.yaml` | no token (`/metrics`: its own, when `coordinator.metrics_token` is set): liveness, readiness (the store answers; the broker's state and the outbox), Prometheus text, the dashboard, the API description |
//!
//! [`wire::AliasRequest`]: refit_proto::wire::AliasRequest
//! [`wire::AliasView`]: refit_proto::wire::AliasView
//! [`wire::DatasetBody`]: refit_proto::wire::DatasetBody
//! [`wire::ErrorBody`]: refit_proto::wire::ErrorBody
//! [`wire::JobList`]: refit_proto::wire::JobList
//! [`wire::JobView`]: refit_proto::wire::JobView
//! [`wire::ModelList`]: refit_proto::wire::ModelList
//! [`wire::Overview`]: refit_proto::wire::Overview
//! [`wire::SubmitRequest`]: refit_proto::wire::SubmitRequest
//! [`wire::SubmitResponse`]: refit_proto::wire::SubmitResponse
//! [`wire::VersionList`]: refit_proto::wire::VersionList

pub mod api;
pub mod config;
pub mod service;
pub mod store;
