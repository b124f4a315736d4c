//! Fault injection for the end-to-end tests, off unless `REFIT_FAULT` is set (comma-separated):
//!
//! - `slow-step=<ms>`: sleep before every training step (an epoch longer than the broker's
//!   consumer timeout, a job long enough to interrupt);
//! - `abort-at=<stage>`: abort the process (as a crash would) when an attempt reaches `stage`;
//! - `pause-at=<stage>:<ms>`: sleep there (a window for a test to kill the worker in).
//!
//! Stages, in order: `granted` (lease granted, delivery acked), `train` (training starts),
//! `upload` (before the version files go up), `uploaded` (before `succeeded` is published),
//! `succeeded` (after it is).

use std::sync::OnceLock;
use std::time::Duration;

use tracing::warn;

#[derive(Debug, Default, PartialEq)]
struct Faults {
    slow_step: Option<Duration>,
    abort_at: Vec<String>,
    pause_at: Vec<(String, Duration)>,
}

fn parse(text: &str) -> Faults {
    let mut faults = Faults::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let millis = |s: &str| s.parse::<u64>().ok().map(Duration::from_millis);
        if let Some(ms) = item.strip_prefix("slow-step=") {
            faults.slow_step = millis(ms);
        } else if let Some(stage) = item.strip_prefix("abort-at=") {
            faults.abort_at.push(stage.to_owned());
        } else if let Some((stage, ms)) = item
            .strip_prefix("pause-at=")
            .and_then(|rest| rest.split_once(':'))
            && let Some(pause) = millis(ms)
        {
            faults.pause_at.push((stage.to_owned(), pause));
        }
    }
    faults
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let faults = std::env::var("REFIT_FAULT")
            .map(|v| parse(&v))
            .unwrap_or_default();
        if faults != Faults::default() {
            warn!(
                ?faults,
                "REFIT_FAULT is set: fault injection for tests is on"
            );
        }
        faults
    })
}

/// The delay before each training step, if any.
pub(crate) fn slow_step() -> Option<Duration> {
    faults().slow_step
}

/// Aborts or pauses at `stage` when asked to.
pub(crate) async fn at(stage: &str) {
    let faults = faults();
    if faults.abort_at.iter().any(|s| s == stage) {
        warn!(stage, "REFIT_FAULT: aborting the process");
        std::process::abort();
    }
    for (_, pause) in faults.pause_at.iter().filter(|(s, _)| s == stage) {
        warn!(stage, ?pause, "REFIT_FAULT: pausing");
        tokio::time::sleep(*pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        let faults = parse("slow-step=250, abort-at=train,pause-at=upload:1500, nonsense");
        assert_eq!(faults.slow_step, Some(Duration::from_millis(250)));
        assert_eq!(faults.abort_at, ["train"]);
        assert_eq!(
            faults.pause_at,
            [("upload".to_owned(), Duration::from_millis(1500))]
        );
        assert_eq!(parse(""), Faults::default());
    }
}
