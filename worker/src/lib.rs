//! # refit-worker
//!
//! The worker service (`refit-worker`): consumes jobs from RabbitMQ, trains them with the engine
//! through the one training pipeline (`refit_engine::pipeline`), stores the new version through
//! the registry (`refit_io::registry`) and reports events. It knows nothing of HTTP routes or the
//! coordinator's job store.
//!
//! ## Layout
//! - [`config`]: [`config::WorkerConfig`], loaded in layers (`refit_io::config`)
//! - [`runner`]: the job loop: consume, resume, train, upload, report, settle the delivery
//!
//! The binary (`src/bin/refit-worker.rs`) parses arguments, sets up tracing, loads the config and
//! calls [`runner::run`] with a token cancelled on SIGINT/SIGTERM.

pub mod config;
pub mod runner;
