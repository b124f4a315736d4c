//! # refit-worker
//!
//! The training engine and the worker service, plus the storage and queue adapters both refit
//! services use.
//!
//! ## Layout
//! - [`engine`]: the training engine: ONNX messages, ONNX Runtime loading and sessions
//! - [`storage`]: the object-store interface, its S3 implementation (aws-sdk-s3) and a
//!   local-directory implementation with the same key layout
//! - [`version`]: stored model versions (files first, manifest last; sha256-checked reads)
//! - [`queue`]: the RabbitMQ adapter (lapin): topology, confirmed publishing, manual-ack consuming
//!
//! The storage and queue adapters live here rather than in a crate of their own because the
//! coordinator already depends on this crate (for `refit predict` and `refit demo`); one crate
//! fewer keeps the workspace to the five top-level folders of DESIGN §1.

pub mod config;
pub mod engine;
pub mod queue;
pub mod runner;
pub mod storage;
pub mod telemetry;
pub mod version;
