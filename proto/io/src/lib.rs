//! # refit-io
//!
//! refit's adapters to the world outside a process, shared by the worker, the coordinator and
//! the CLI: the broker, the object stores, the model registry over them, configuration layering,
//! secrets and telemetry. It neither trains (no ONNX Runtime: the coordinator links it) nor knows
//! HTTP routes.
//!
//! ## Layout
//! - [`queue`]: the RabbitMQ adapter (lapin): topology, confirmed publishing, manual-ack consuming
//! - [`storage`]: the object-store interface, its S3 implementation (aws-sdk-s3), a
//!   local-directory implementation with the same key layout, and an in-memory one for tests
//! - [`registry`]: the one model registry: versions (files first, manifest last; sha256-checked
//!   reads), manifests and aliases
//! - [`config`]: configuration layering (defaults, TOML file, `REFIT__…` environment)
//! - [`secret`]: [`Secret`], redacted in every `Debug`
//! - [`telemetry`]: tracing setup and the services' main loop (signals, exit codes)

pub mod config;
pub mod queue;
pub mod registry;
pub mod secret;
pub mod storage;
pub mod telemetry;

pub use secret::Secret;
