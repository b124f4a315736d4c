//! Fault injection for the end-to-end tests, off unless `REFIT_FAULT` is set.
//!
//! `REFIT_FAULT=exit-after-store`: the process exits (as if killed) right after a submitted job is
//! stored and before it is published, so a test can show that a restart publishes it once.

/// Exits the process when `REFIT_FAULT=exit-after-store`.
pub fn maybe_exit_after_store() {
    if std::env::var("REFIT_FAULT").as_deref() == Ok("exit-after-store") {
        tracing::warn!("REFIT_FAULT=exit-after-store: exiting between storing and publishing");
        std::process::exit(137);
    }
}
