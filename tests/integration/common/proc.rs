//! [`Proc`]: the one process type of the end-to-end tests: a child (`refit-coordinator`,
//! `refit-worker`, a test's own Garage) with its output in a log file, stopped or killed by the
//! test, and SIGKILLed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::wait::{Waiting, wait_until};

/// Runs a setup script to its end (off the async threads); its stdout, or an error with its
/// stderr, naming it as `what`.
pub async fn run_script(mut command: Command, what: &str) -> Result<String> {
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    ensure!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How long a process gets to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// A child process with its stdout and stderr in a log file. Every method takes `&self`, so a
/// test can watch its processes while it polls something else.
pub struct Proc {
    /// What the test calls it, for messages.
    pub name: String,
    /// `None` once it has exited and been reaped.
    child: Mutex<Option<Child>>,
    /// The log file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdin closed and stdout and stderr appended to `log` (created).
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Mutex::new(Some(child)),
            log,
        })
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process id, while it runs (or has exited unnoticed).
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The exit status, if it has exited (then the handle is released).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child();
        let status = child.as_mut()?.try_wait().ok().flatten()?;
        *child = None;
        Some(status)
    }

    /// Whether it is still running.
    pub fn running(&self) -> bool {
        self.pid().is_some() && self.exited().is_none()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()?;
        ensure!(
            status.success(),
            "kill -{name} {pid} ({}) failed",
            self.name
        );
        Ok(())
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&self) -> Result<()> {
        let mut child = self
            .child()
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits for the process to exit; its status.
    pub async fn wait_exit(&self, within: Duration) -> Result<ExitStatus> {
        ensure!(self.pid().is_some(), "{} is not running", self.name);
        wait_until(&format!("{} to exit", self.name), within, async || {
            Ok(match self.exited() {
                Some(status) => Waiting::Done(status),
                None => Waiting::NotYet(format!("still running; log:\n{}", self.tail(40))),
            })
        })
        .await
    }

    /// SIGTERM, then waits for a clean exit (code 0) that logged no `ERROR` line on the way.
    pub async fn stop(&self) -> Result<()> {
        if self.pid().is_none() {
            return Ok(());
        }
        let logged_before = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        self.signal("TERM")?;
        let status = self.wait_exit(STOP_WITHIN).await?;
        ensure!(
            status.code() == Some(0),
            "{} exited with {status} after SIGTERM; log:\n{}",
            self.name,
            self.tail(40)
        );
        let log = std::fs::read(&self.log)?;
        let during = String::from_utf8_lossy(log.get(logged_before as usize..).unwrap_or_default());
        let errors: Vec<&str> = during
            .lines()
            .filter(|l| log_level(l) == Some("ERROR"))
            .collect();
        ensure!(
            errors.is_empty(),
            "{} logged errors while shutting down: {errors:#?}",
            self.name
        );
        Ok(())
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The level of a `tracing` log line (`2026-…Z  INFO target: …`, colours or not).
pub fn log_level(line: &str) -> Option<&str> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ … m.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let level = plain.split_whitespace().nth(1)?;
    ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
        .into_iter()
        .find(|l| *l == level)
}
