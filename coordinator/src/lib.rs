//! # refit-coordinator
//!
//! The coordinator service and the `refit` CLI. This first cut holds the CLI's offline commands;
//! the HTTP API, job store and scheduler follow.
pub mod cli;
