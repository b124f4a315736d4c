//! End-to-end tests of the coordinator (issue 5's "Done when" list): a real `refit-coordinator`
//! process, real `refit-worker` processes, the real RabbitMQ and S3 server, driven through the
//! HTTP API (reqwest) and the `refit` CLI (run as a process).
//!
//! Each test builds a [`Stack`] (`common::stack`): a cluster (its own queue prefix, model name,
//! services and temp folder, see `common`) plus an API token, a free port, the SQLite job store and config
//! files. The binaries are built once per test run (one `cargo build` of the coordinator, the
//! worker and the CLI); the services are found as in the other modules (`REFIT_TEST_AMQP_URL`,
//! `REFIT_TEST_S3_*`, `REFIT_S3_*`, then the local Garage's `credentials.env`). A missing service
//! fails the test with a message saying how to start it. Processes are killed when their handle
//! drops; a test that passes stops them with SIGTERM, expects a clean exit, and then checks that
//! no secret (the API token, the S3 secret key, the AMQP password) appears in any of their log
//! lines ([`Stack::finish`]).
//!
//! Data is a slice of `examples/data/financial-demo/set1.yml` (and `set2.yml`), uploaded as JSONL,
//! with few epochs, so a job takes seconds. Timeouts are hang guards, not speed targets.
//!
//! | module | "Done when" |
//! | --- | --- |
//! | `cli` | 1 (scratch then fine-tune with lineage), 2 (a new intent: rejected, or scratch); the CLI's exits 14/15 |
//! | `jobs` | 3 (20 parallel jobs, exactly once, on both workers), 4 (crash between store and publish) |
//! | `observe` | 5 (queued jobs on `/metrics`, `promtool`), 6 (schedule), 7 (dashboard in Chromium) |
//! | `security` | 8 (401 without data on every `/v1` route; no secret in any log) |

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use refit_io::storage::ObjectStore;
use refit_proto::data::Example;
use refit_proto::keys;
use refit_proto::keys::sha256_hex;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::api::*;
use crate::common::stack::{Options, Stack, WAIT};
use crate::common::wait::{done_if, wait_until};
use crate::common::{examples, repo, unique};

mod cli;
mod jobs;
mod observe;
mod security;

/// `<target>/test-artifacts`, where screenshots go (created).
fn artifacts_dir() -> Result<PathBuf> {
    // <target>/debug/deps/integration-… → <target>
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("cannot locate the target folder")?;
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The path of `promtool`: `$PROMTOOL`, else on `PATH`.
fn promtool() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "PROMTOOL={} does not exist: run deploy/promtool.sh and set PROMTOOL to the path it \
             prints (or unset PROMTOOL to use promtool on PATH)",
            path.display()
        );
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .context(
            "promtool is missing: run deploy/promtool.sh (it installs Debian's prometheus package), \
             or set PROMTOOL to its path",
        )
}

/// Runs `promtool check metrics` on Prometheus text.
fn promtool_check(text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(promtool()?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\non:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The Python with Playwright (`$REFIT_PYTHON`, else `<repo>/.venv/bin/python`).
fn python() -> Result<PathBuf> {
    let path = std::env::var_os("REFIT_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    ensure!(
        path.is_file(),
        "no Python with Playwright at {}: run deploy/python-peers.sh (and deploy/chromium.sh), or \
         set REFIT_PYTHON",
        path.display()
    );
    Ok(path)
}

/// Hex sha256 of a file's bytes.
fn file_sha256(path: &Path) -> Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// A content-addressed dataset key (for checks that nothing was stored).
fn dataset_key(bytes: &[u8], ext: &str) -> Result<String> {
    Ok(keys::dataset(&sha256_hex(bytes), ext)?)
}
