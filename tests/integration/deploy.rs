//! What operators run refit with: the readiness probes, `refit-worker --max-jobs`, and a real
//! Prometheus scraping a real coordinator and worker with the repo's alert rules, every Grafana
//! panel's query and every alert expression evaluated through its HTTP API.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::broker::PrivateRabbit;
use crate::common::api::free_port;
use crate::common::cluster::ClusterOptions;
use crate::common::proc::Proc;
use crate::common::stack::{Options, Stack};
use crate::common::wait::{Waiting, done_if, wait_until};
use crate::common::{examples, repo};
use crate::worker::resilience::PrivateGarage;

/// How long a probe may take to see a change (the worker probes S3 every 10 s while it is well).
const NOTICE: Duration = Duration::from_secs(60);

/// A GET of `url`: its status and JSON body.
async fn get_json(http: &reqwest::Client, url: &str) -> Result<(StatusCode, Value)> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    Ok((status, body))
}

/// Waits until `url` answers `status` with `failing` as the failing parts.
async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    status: StatusCode,
    failing: &[&str],
) -> Result<Value> {
    let want: Vec<Value> = failing.iter().map(|p| json!(p)).collect();
    wait_until(
        &format!("{url} to answer {status} failing {failing:?}"),
        NOTICE,
        async || {
            // Not listening yet (a worker opens its port once it is connected): not yet.
            let (got, body) = match get_json(http, url).await {
                Ok(answer) => answer,
                Err(error) => return Ok(Waiting::NotYet(format!("{error:#}"))),
            };
            let matches = got == status && body["failing"].as_array() == Some(&want);
            Ok(done_if(matches, body.clone(), || format!("{got} {body}")))
        },
    )
    .await
}

/// Both services' `/readyz` name RabbitMQ when its node stops and S3 when its server stops, and
/// answer 200 again once each is back; `/readyz?require=store` stays 200 throughout (the probe
/// Kubernetes uses: the coordinator keeps taking submits into its outbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_broker_or_s3_while_it_is_down_and_recovers() -> Result<()> {
    let rabbit = PrivateRabbit::start(1).await?;
    let garage = PrivateGarage::start().await?;
    let mut stack = Stack::with(
        "ready",
        Options {
            cluster: ClusterOptions {
                amqp_url: Some(rabbit.url(1)),
                s3: Some(garage.s3_config()?),
                ..ClusterOptions::default()
            },
            ..Options::default()
        },
    )
    .await?;
    stack
        .start_coordinator(&[(
            "REFIT__COORDINATOR__MANAGEMENT_URL",
            &rabbit.management_url(1),
        )])
        .await?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    stack.start_worker(&[("REFIT__WORKER__LISTEN", &listen)])?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let coordinator = format!("{}/readyz", stack.url());
    let store_only = format!("{coordinator}?require=store");
    let worker = format!("http://{listen}/readyz");

    let all_well = async |stack: &Stack| -> Result<()> {
        wait_ready(&http, &coordinator, StatusCode::OK, &[]).await?;
        wait_ready(&http, &worker, StatusCode::OK, &[]).await?;
        stack.check_workers_running("with everything up")
    };
    all_well(&stack).await?;
    let (status, _) = get_json(&http, &format!("http://{listen}/healthz")).await?;
    ensure!(status == StatusCode::OK, "the worker's /healthz: {status}");

    rabbit.ctl(1, &["stop_app"]).await?;
    let body = wait_ready(
        &http,
        &coordinator,
        StatusCode::SERVICE_UNAVAILABLE,
        &["broker"],
    )
    .await?;
    ensure!(body["storage"] == "ok" && body["store"] == "ok", "{body}");
    wait_ready(&http, &worker, StatusCode::SERVICE_UNAVAILABLE, &["broker"]).await?;
    let (status, body) = get_json(&http, &store_only).await?;
    ensure!(
        status == StatusCode::OK && body["broker"] != "ok",
        "/readyz?require=store while the broker is away: {status} {body}"
    );
    rabbit.ctl(1, &["start_app"]).await?;
    all_well(&stack).await?;

    garage.script("stop").await?;
    let body = wait_ready(
        &http,
        &coordinator,
        StatusCode::SERVICE_UNAVAILABLE,
        &["storage"],
    )
    .await?;
    ensure!(body["broker"] == "ok", "{body}");
    wait_ready(
        &http,
        &worker,
        StatusCode::SERVICE_UNAVAILABLE,
        &["storage"],
    )
    .await?;
    let (status, _) = get_json(&http, &store_only).await?;
    ensure!(
        status == StatusCode::OK,
        "/readyz?require=store while S3 is away: {status}"
    );
    garage.script("start").await?;
    all_well(&stack).await?;

    let (status, body) = get_json(&http, &format!("{coordinator}?require=queue")).await?;
    ensure!(
        status == StatusCode::BAD_REQUEST,
        "an unknown part: {status} {body}"
    );
    stack.stop_workers().await?;
    Ok(())
}

/// `refit-worker --max-jobs 1` takes one of two queued jobs, finishes it and exits 0; the other
/// job stays queued for another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_max_jobs_1_runs_one_job_and_exits_0() -> Result<()> {
    let mut stack = Stack::new("maxjobs").await?;
    stack.start_coordinator(&[]).await?;
    let mut data = examples(8)?;
    data.truncate(64);
    let data = stack.upload_examples(&data).await?;
    let first = stack.submit_scratch(&data, 3, json!({})).await?;
    let second = stack.submit_scratch(&data, 3, json!({})).await?;

    let index = stack.start_worker_with(&[], &["--max-jobs", "1"])?;
    let status = stack.workers[index]
        .wait_exit(Duration::from_secs(180))
        .await
        .with_context(|| stack.logs_tail())?;
    ensure!(
        status.success(),
        "the worker exited {status}\n{}",
        stack.logs_tail()
    );
    let done = stack.wait_succeeded(&first).await?;
    let waiting = stack.job(&second).await?;
    ensure!(
        waiting["state"] == "queued",
        "the second job was touched: {waiting}"
    );
    let worker = stack.worker_id(1);
    ensure!(
        done["worker"] == worker.as_str(),
        "the first job ran on {} (expected {worker})",
        done["worker"]
    );
    let log = stack.workers[index].log_text();
    ensure!(
        log.contains("ran the jobs --max-jobs allows"),
        "the worker's log does not say why it exited:\n{log}"
    );

    // Another worker takes the rest.
    stack.start_worker(&[])?;
    stack.wait_succeeded(&second).await?;
    stack.stop_workers().await.ok();
    Ok(())
}

/// Prometheus's binary: `$PROMETHEUS`, else `prometheus` on PATH (Debian's `prometheus`
/// package, which `deploy/promtool.sh` installs).
fn prometheus_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS") {
        return Ok(PathBuf::from(path));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("prometheus");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the Prometheus server is not installed: run deploy/promtool.sh (Debian's prometheus \
         package) or set PROMETHEUS to its binary"
    )
}

/// A Prometheus of this test's own on a free loopback port, scraping `targets` (job name,
/// host:port) every second with the repo's alert rules; stopped on drop.
struct PrivatePrometheus {
    _dir: tempfile::TempDir,
    url: String,
    process: Proc,
}

impl PrivatePrometheus {
    async fn start(targets: &[(&str, String)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("refit-prom-").tempdir()?;
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n",
            rules.display()
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port()?;
        let mut command = Command::new(prometheus_binary()?);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let process = Proc::spawn("prometheus", command, dir.path().join("prometheus.log"))?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_until(
            "Prometheus to be ready",
            Duration::from_secs(60),
            async || {
                ensure!(
                    process.running(),
                    "prometheus exited:\n{}",
                    process.tail(30)
                );
                let ready = http.get(format!("{url}/-/ready")).send().await;
                Ok(done_if(
                    ready.is_ok_and(|r| r.status().is_success()),
                    (),
                    || "not ready".into(),
                ))
            },
        )
        .await?;
        Ok(Self {
            _dir: dir,
            url,
            process,
        })
    }

    /// An instant query: Prometheus's `data.result` (an error names the query and Prometheus's
    /// error).
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Result<Vec<Value>> {
        let response: Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            response["status"] == "success",
            "query {expr}: {}",
            response["error"]
        );
        Ok(response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for PrivatePrometheus {
    fn drop(&mut self) {
        let _ = self.process.signal("KILL");
    }
}

/// Every panel query of `deploy/grafana/refit.json`, as Grafana would send it with every pool
/// and worker selected: `(panel title, expr)`.
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let path = repo().join("deploy/grafana/refit.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel {title:?}: a target without expr"))?
                .replace("$__rate_interval", "1m")
                .replace("$pool", ".*")
                .replace("$worker", ".*");
            out.push((title.clone(), expr));
        }
    }
    ensure!(!out.is_empty(), "the dashboard has no queries");
    Ok(out)
}

/// Panels that may show nothing in this test, and why: what they count did not happen here.
const QUIET_PANELS: &[(&str, &str)] = &[(
    "Schedule runs (last hour)",
    "the test's coordinator has no [[schedule]]",
)];

/// A real Prometheus scrapes a coordinator and a worker while a job trains (and after one
/// succeeded): both targets are up, every alert rule evaluates without error (and none fires
/// on a healthy stack but those about the test's own setup), every dashboard query evaluates,
/// and every panel shows data but the few whose events did not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_services_and_every_panel_and_alert_evaluates() -> Result<()> {
    let mut stack = Stack::new("prom").await?;
    stack.start_coordinator(&[]).await?;
    let worker_port = free_port()?;
    let listen = format!("127.0.0.1:{worker_port}");
    stack.start_worker(&[
        ("REFIT__WORKER__LISTEN", &listen),
        ("REFIT_FAULT", "slow-step=50"),
        ("REFIT__WORKER__RESUME_EVERY_EPOCHS", "0"),
        ("REFIT__WORKER__RESUME_EVERY_SECS", "2"),
    ])?;
    let coordinator = stack.url().trim_start_matches("http://").to_owned();
    let prometheus = PrivatePrometheus::start(&[
        ("refit-coordinator", coordinator),
        ("refit-worker", listen.clone()),
    ])
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut data = examples(8)?;
    data.truncate(64);
    let data = stack.upload_examples(&data).await?;
    let quick = stack.submit_scratch(&data, 2, json!({})).await?;
    stack.wait_succeeded(&quick).await?;
    // About 20 s of training (2 steps an epoch of 50 ms), checked while it runs.
    let long = stack.submit_scratch(&data, 200, json!({})).await?;
    stack.wait_checkpoint(&long, 1.0).await?;
    // Let a few scrapes and rule evaluations see the running job.
    let scraped =
        async |expr: &str| -> Result<bool> { Ok(!prometheus.query(&http, expr).await?.is_empty()) };
    wait_until(
        "Prometheus to see the job train",
        Duration::from_secs(60),
        async || {
            let seen = scraped("refit_worker_job_phase{phase=\"train\"} == 1").await?
                && scraped("rate(refit_worker_train_examples_total[1m]) > 0").await?
                && scraped("refit_job_checkpoint_age_seconds").await?;
            Ok(done_if(seen, (), || "not yet".into()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    for job in ["refit-coordinator", "refit-worker"] {
        let up = prometheus
            .query(&http, &format!("up{{job=\"{job}\"}}"))
            .await?;
        ensure!(
            up.len() == 1 && up[0]["value"][1] == "1",
            "target {job} is not up: {up:?}"
        );
    }

    // Every alert rule: evaluated, no error.
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .await?
        .json()
        .await?;
    let mut alerts = 0;
    for group in rules["data"]["groups"]
        .as_array()
        .context("no rule groups")?
    {
        for rule in group["rules"].as_array().into_iter().flatten() {
            ensure!(
                rule["health"] == "ok",
                "rule {} is {}: {}",
                rule["name"],
                rule["health"],
                rule["lastError"]
            );
            prometheus
                .query(
                    &http,
                    rule["query"].as_str().context("a rule without query")?,
                )
                .await?;
            alerts += 1;
        }
    }
    ensure!(alerts >= 7, "only {alerts} alert rules loaded");
    let firing: Vec<String> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["state"] == "firing")
        .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    ensure!(
        firing.is_empty(),
        "alerts firing on a healthy stack: {firing:?}"
    );

    // Every dashboard query evaluates; every panel but the quiet ones shows data.
    let mut panels_with_data = BTreeSet::new();
    let mut panels = BTreeSet::new();
    for (title, expr) in dashboard_queries()? {
        let result = prometheus
            .query(&http, &expr)
            .await
            .with_context(|| format!("panel {title:?}"))?;
        panels.insert(title.clone());
        if !result.is_empty() {
            panels_with_data.insert(title);
        }
    }
    let empty: Vec<&String> = panels
        .iter()
        .filter(|p| !panels_with_data.contains(*p))
        .filter(|p| !QUIET_PANELS.iter().any(|(quiet, _)| quiet == p))
        .collect();
    ensure!(
        empty.is_empty(),
        "panels without data while a job runs: {empty:?}"
    );
    stack.cancel(&long).await?;
    stack.stop_workers().await.ok();
    Ok(())
}
