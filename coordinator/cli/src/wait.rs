//! `refit submit --wait`: follows a job to its end, showing its progress on stderr (a bar on a
//! terminal, else a line per state, phase or epoch change, at most one every few seconds), and
//! riding out a coordinator that is briefly unreachable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use refit_proto::wire::{JobState, JobView};

use super::client::{Client, ClientError};
use super::jobs::{duration, progress_line};

/// How long `--wait` keeps trying while the coordinator cannot be reached.
const WAIT_RECONNECT: Duration = Duration::from_secs(120);
/// The least time between two progress lines when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Polls the job until it is final; returns it typed and as sent.
pub(super) fn wait(
    client: &Client,
    job: JobView,
    poll: Duration,
) -> Result<(JobView, serde_json::Value)> {
    let mut display = WaitDisplay::new(&job);
    let mut lost_since: Option<Instant> = None;
    loop {
        std::thread::sleep(poll);
        // The state and the progress only; the events once, at the end.
        match client.job_page(&job.id, 0, Some(0)) {
            Ok(answer) => {
                if lost_since.take().is_some() {
                    display.note("reconnected to the coordinator");
                }
                display.update(&answer.value);
                if answer.value.state.is_final() {
                    display.finish();
                    let answer = client.job(&job.id)?;
                    return Ok((answer.value, answer.json));
                }
            }
            Err(error @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
                let since = *lost_since.get_or_insert_with(|| {
                    display.note(&format!(
                        "lost the coordinator ({error}); retrying for up to {}",
                        duration(WAIT_RECONNECT.as_secs_f64())
                    ));
                    Instant::now()
                });
                if since.elapsed() > WAIT_RECONNECT {
                    display.finish();
                    return Err(anyhow::Error::new(error).context(format!(
                        "stopped waiting for job {}; it may still be running (refit job {})",
                        job.id, job.id
                    )));
                }
            }
            Err(error) => {
                display.finish();
                return Err(error.into());
            }
        }
    }
}

/// `--wait`'s progress on stderr: a bar on a terminal, else occasional lines.
struct WaitDisplay {
    bar: Option<ProgressBar>,
    /// The bar shows epochs (not a spinner) since a total is known.
    bar_has_total: bool,
    id: String,
    last_key: (JobState, Option<String>, u32),
    last_line: Option<Instant>,
}

impl WaitDisplay {
    fn new(job: &JobView) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                    .expect("the template is valid"),
            );
            bar.set_prefix(format!("{} {}", job.model, job.version));
            bar.set_message(job.state.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            bar_has_total: false,
            id: job.id.clone(),
            last_key: (job.state, None, 0),
            last_line: None,
        }
    }

    fn update(&mut self, job: &JobView) {
        let progress = job.progress.as_ref().filter(|_| !job.state.is_final());
        let state = match (job.state, job.attempts) {
            (JobState::Queued, 0) => "queued".to_owned(),
            (s, a) if a > 1 => format!("{s} (attempt {a})"),
            (s, _) => s.to_string(),
        };
        let detail = progress.map(progress_line).unwrap_or_default();
        if let Some(bar) = &self.bar {
            if let Some(p) = progress
                && p.total_epochs > 0.0
            {
                if !self.bar_has_total {
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix} [{bar:20.cyan/blue}] {wide_msg}",
                        )
                        .expect("the template is valid")
                        .progress_chars("=> "),
                    );
                    self.bar_has_total = true;
                }
                bar.set_length((p.total_epochs * 100.0).round() as u64);
                bar.set_position((p.epoch.min(p.total_epochs) * 100.0).round() as u64);
            }
            bar.set_message(format!("{state}  {detail}").trim_end().to_owned());
            return;
        }
        // No terminal: a line when the state or phase changes, or the epoch does (rate-limited).
        let key = (
            job.state,
            progress.and_then(|p| p.phase.clone()),
            progress.map_or(0, |p| p.epoch.floor() as u32),
        );
        let changed_state = key.0 != self.last_key.0 || key.1 != self.last_key.1;
        let changed_epoch = key.2 != self.last_key.2;
        let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_INTERVAL);
        if job.state.is_final() || changed_state || (changed_epoch && due) {
            eprintln!(
                "{}",
                format!("job {}: {state}  {detail}", self.id).trim_end()
            );
            self.last_key = key;
            self.last_line = Some(Instant::now());
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
