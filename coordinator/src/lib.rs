//! # refit-coordinator
//!
//! The coordinator service (`refit-coordinator`) and the `refit` CLI.
//!
//! ## Layout
//! - [`config`]: [`config::CoordinatorConfig`], loaded in layers like the worker's
//! - [`wire`]: the HTTP API's JSON bodies, shared by the server, the CLI and the dashboard
//! - [`store`]: the SQLite job store (outbox, events, workers, schedule runs)
//! - [`service`]: the coordinator service: submit, outbox, event consumer, scheduler, metrics
//! - [`api`]: the HTTP API (axum)
//! - [`cli`]: the `refit` command line
//!
//! ## The HTTP API (`coordinator/openapi.yaml`)
//! Every `/v1` route needs `Authorization: Bearer <token>`; errors are [`wire::ErrorBody`].
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
//! | `GET /healthz`, `GET /metrics`, `GET /`, `GET /openapi.yaml` | no token (`/metrics`: its own, when `coordinator.metrics_token` is set): health, Prometheus text, the dashboard, the API description |

pub mod api;
pub mod cli;
pub mod config;
pub mod service;
pub mod store;
pub mod wire;
