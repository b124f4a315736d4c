//! Fault injection for the end-to-end tests, off unless `REFIT_FAULT` is set:
//!
//! - `exit-after-store`: the process exits (as if killed) right after a submitted job is stored
//!   and before it is published, so a test can show that a restart publishes it once;
//! - `exit-after-publish`: the process exits right after the broker confirmed a job's message
//!   and before the store records it as published (a lost confirm, a crash), so a restart
//!   publishes the job a second time: a test shows the duplicate runs nowhere.

/// Exits the process when `REFIT_FAULT` is `fault`.
fn exit_if(fault: &str, what: &str) {
    if std::env::var("REFIT_FAULT").as_deref() == Ok(fault) {
        tracing::warn!("REFIT_FAULT={fault}: exiting {what}");
        std::process::exit(137);
    }
}

/// Exits the process when `REFIT_FAULT=exit-after-store`.
pub fn maybe_exit_after_store() {
    exit_if("exit-after-store", "between storing and publishing");
}

/// Exits the process when `REFIT_FAULT=exit-after-publish`.
pub fn maybe_exit_after_publish() {
    exit_if(
        "exit-after-publish",
        "between publishing and recording the publish",
    );
}
