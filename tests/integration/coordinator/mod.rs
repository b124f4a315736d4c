//! End-to-end tests of the coordinator (issue 5's "Done when" list): a real `refit-coordinator`
//! process, real `refit-worker` processes, the real RabbitMQ and S3 server, driven through the
//! HTTP API (reqwest) and the `refit` CLI (run as a process).
//!
//! Each test builds a [`Stack`]: a [`Cluster`] (its own queue prefix, model name, services and
//! temp folder, see `common`) plus an API token, a free port, the SQLite job store and config
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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use refit_io::storage::ObjectStore;
use refit_proto::data::{Example, load_file};
use refit_proto::keys;
use refit_proto::keys::sha256_hex;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::cluster::{Cluster, ClusterOptions};
use crate::common::proc::Proc;
use crate::common::wait::{done_if, wait_until};
use crate::common::{cli_binary, coordinator_binary, env_or, examples, repo, service_env, unique};

mod cli;
mod jobs;
mod observe;
mod security;
mod stack;

use stack::{Options, Stack};

/// A guard against hangs (the machine may be busy with other tests), not a speed target.
const WAIT: Duration = Duration::from_secs(300);

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

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Random lowercase hex, `bytes` bytes long.
fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- helpers on JSON and metrics ------------------------------------------------------------

/// The `type`s of a job view's events, in order.
fn event_types(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How many events of `kind` a job view has.
fn count_events(job: &Value, kind: &str) -> usize {
    event_types(job).iter().filter(|t| *t == kind).count()
}

/// A dataset reference for a request body, from an upload's answer.
fn dataset(uploaded: &Value) -> Value {
    json!({ "key": uploaded["key"], "sha256": uploaded["sha256"] })
}

/// One sample of Prometheus text: the value of `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

/// Every sample of Prometheus text: name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => (name.to_owned(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.push((name, labels, value));
    }
    out
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.insert(name.trim().trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

// ---- training data --------------------------------------------------------------------------

/// Examples as JSONL bytes.
fn jsonl(examples: &[Example]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for example in examples {
        serde_json::to_writer(&mut bytes, example)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// Up to `per_intent` examples per intent of set2.yml whose labels all occur in `base`, so
/// `base + these` has the base's label set (a fine-tune), with new words.
fn set2_examples(base: &[Example], per_intent: usize) -> Result<Vec<Example>> {
    use std::collections::BTreeSet;
    let intents: BTreeSet<&str> = base.iter().map(|e| e.intent.as_str()).collect();
    let entity_labels = |e: &Example| -> Vec<String> {
        e.entities
            .iter()
            .map(|ent| {
                serde_json::to_string(&(&ent.entity, &ent.role, &ent.group)).unwrap_or_default()
            })
            .collect()
    };
    let known: BTreeSet<String> = base.iter().flat_map(entity_labels).collect();
    let data = load_file(&repo().join("examples/data/financial-demo/set2.yml"))?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for example in data.examples {
        if !intents.contains(example.intent.as_str())
            || !entity_labels(&example).iter().all(|l| known.contains(l))
        {
            continue;
        }
        let n = counts.entry(example.intent.clone()).or_default();
        if *n < per_intent {
            *n += 1;
            out.push(example);
        }
    }
    ensure!(
        !out.is_empty(),
        "set2.yml has no examples with set1's labels"
    );
    Ok(out)
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
