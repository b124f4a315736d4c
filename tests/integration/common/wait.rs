//! [`wait_until`]: the one way the end-to-end tests wait for something to happen (and
//! [`wait_until_every`], the same with a fixed pause).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// What one check found.
pub enum Waiting<T> {
    /// The condition holds; here is what the caller wanted.
    Done(T),
    /// Not yet; the state seen, for the message if time runs out.
    NotYet(String),
}

/// The first pause between checks; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between checks.
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Runs `check` until it returns [`Waiting::Done`] (its value) or an error (that error), pausing
/// between checks (20 ms at first, up to 250 ms). After `within` it fails, naming `what` and the
/// state the last check saw. `within` is a guard against hangs on a busy machine, never a speed
/// target.
pub async fn wait_until<T>(
    what: &str,
    within: Duration,
    check: impl AsyncFnMut() -> Result<Waiting<T>>,
) -> Result<T> {
    poll(what, within, (FIRST_PAUSE, MAX_PAUSE), check).await
}

/// [`wait_until`] with a fixed pause between checks, for a test that must act soon after the
/// condition holds (a kill at a chosen moment).
pub async fn wait_until_every<T>(
    what: &str,
    within: Duration,
    pause: Duration,
    check: impl AsyncFnMut() -> Result<Waiting<T>>,
) -> Result<T> {
    poll(what, within, (pause, pause), check).await
}

async fn poll<T>(
    what: &str,
    within: Duration,
    (first, max): (Duration, Duration),
    mut check: impl AsyncFnMut() -> Result<Waiting<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = first;
    loop {
        let seen = match check().await? {
            Waiting::Done(value) => return Ok(value),
            Waiting::NotYet(seen) => seen,
        };
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}; last seen: {seen}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(max);
    }
}

/// [`Waiting::Done`] when `done`, else [`Waiting::NotYet`] with `seen()`.
pub fn done_if<T>(done: bool, value: T, seen: impl FnOnce() -> String) -> Waiting<T> {
    if done {
        Waiting::Done(value)
    } else {
        Waiting::NotYet(seen())
    }
}
