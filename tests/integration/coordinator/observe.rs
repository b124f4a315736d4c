//! What operators see: `/metrics` (checked with `promtool`), scheduled retraining, and the
//! dashboard in headless Chromium.

use std::collections::BTreeSet;

use super::*;

/// Workers report themselves while idle: the overview lists both with their pool before any job
/// ran, `/metrics` counts them, and one stopped with SIGTERM shows as `stopping` while the other
/// stays `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_lists_idle_workers_and_one_that_stops() -> Result<()> {
    let mut stack = Stack::new("presence").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;
    let (first, second) = (stack.worker_id(1), stack.worker_id(2));
    let queue = stack.job_queue();
    let pool = queue.rsplit('.').next().context("pool")?.to_owned();

    wait_workers(&stack, &pool, &[(&first, "idle"), (&second, "idle")]).await?;
    stack
        .wait_metrics("two idle workers", |text| {
            metric(text, "refit_workers", &[("status", "idle")]) == Some(2.0)
        })
        .await?;

    stack.workers[0].stop().await?;
    wait_workers(&stack, &pool, &[(&first, "stopping"), (&second, "idle")]).await?;
    stack
        .wait_metrics("one idle and one stopping worker", |text| {
            metric(text, "refit_workers", &[("status", "idle")]) == Some(1.0)
                && metric(text, "refit_workers", &[("status", "stopping")]) == Some(1.0)
        })
        .await?;
    stack.finish().await
}

/// Polls `/v1/overview` until its workers are exactly `want` (id, status), all in `pool`.
async fn wait_workers(stack: &Stack, pool: &str, want: &[(&str, &str)]) -> Result<()> {
    let mut expected: Vec<(String, String, String)> = want
        .iter()
        .map(|(id, status)| ((*id).to_owned(), (*status).to_owned(), pool.to_owned()))
        .collect();
    expected.sort();
    let what = format!("the overview's workers to be {expected:?}");
    wait_until(&what, WAIT, async || {
        let (_, overview) = stack.call(Method::GET, "/v1/overview", None).await?;
        let workers = overview["workers"].as_array().cloned().unwrap_or_default();
        let mut seen: Vec<(String, String, String)> = workers
            .iter()
            .map(|w| {
                let field = |k: &str| w[k].as_str().unwrap_or("").to_owned();
                (field("id"), field("status"), field("pool"))
            })
            .collect();
        seen.sort();
        Ok(done_if(seen == expected, (), || format!("{seen:?}")))
    })
    .await
}

/// "Done when" 5: with no worker running, submitted jobs wait on the job queue and `/metrics`
/// shows them as ready messages; `promtool check metrics` passes on the output, before and after
/// workers ran them (when the histograms and counters have samples too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_metrics_show_queued_jobs_and_pass_promtool() -> Result<()> {
    // Fail early, before starting anything, when promtool is missing.
    promtool()?;
    let mut stack = Stack::new("metrics").await?;
    stack.start_coordinator(&[]).await?;
    let data = stack.upload(jsonl(&examples(2)?)?, "jsonl").await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = stack
            .submit(json!({
                "model": stack.model,
                "dataset": dataset(&data),
                "mode": "scratch",
                "epochs": 1,
            }))
            .await?;
        ids.push(job["id"].as_str().context("job id")?.to_owned());
    }
    let queue = stack.job_queue();
    let text = stack
        .wait_metrics("3 ready messages on the job queue", |text| {
            metric(text, "refit_queue_messages_ready", &[("queue", &queue)]) == Some(3.0)
        })
        .await?;
    ensure!(
        metric(&text, "refit_queue_consumers", &[("queue", &queue)]) == Some(0.0),
        "no worker runs, yet consumers are reported"
    );
    ensure!(
        metric(&text, "refit_jobs", &[("state", "queued")]) == Some(3.0),
        "refit_jobs{{state=\"queued\"}}: {:?}",
        metric(&text, "refit_jobs", &[("state", "queued")])
    );
    ensure!(
        metric(&text, "refit_broker_up", &[]) == Some(1.0),
        "refit_broker_up is not 1"
    );
    promtool_check(&text).context("/metrics with queued jobs")?;

    // The workers come: the queue drains, the jobs succeed, and the output still passes.
    stack.start_workers(2)?;
    for id in &ids {
        stack.wait_succeeded(id).await?;
    }
    let text = stack
        .wait_metrics("an empty job queue and 3 succeeded jobs", |text| {
            metric(text, "refit_queue_messages_ready", &[("queue", &queue)]) == Some(0.0)
                && metric(text, "refit_jobs", &[("state", "succeeded")]) == Some(3.0)
        })
        .await?;
    ensure!(
        metric(
            &text,
            "refit_job_duration_seconds_count",
            &[("mode", "scratch"), ("state", "succeeded")]
        ) == Some(3.0),
        "the job duration histogram did not count 3 succeeded scratch jobs"
    );
    for worker in [stack.worker_id(1), stack.worker_id(2)] {
        ensure!(
            metric(
                &text,
                "refit_worker_heartbeat_age_seconds",
                &[("worker", &worker)]
            )
            .is_some(),
            "no heartbeat age for {worker}"
        );
    }
    promtool_check(&text).context("/metrics after the jobs ran")?;
    stack.finish().await
}

/// "Done when" 6: a schedule (a cron with seconds, every 5 s) trains when the data at its key
/// changed — scratch for the first version, a fine-tune after — and skips the runs where it did
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_schedule_finetunes_on_new_data_and_skips_unchanged() -> Result<()> {
    let name = unique("nightly").replace(['_', '.'], "-");
    // The model and key are only known once the stack has its names: make them here.
    let mut stack = Stack::with("sched", Options::default()).await?;
    let key = format!("incoming/{}/nlu.jsonl", stack.model);
    stack.options.config_toml = Some(format!(
        "[[schedule]]\n\
         name = \"{name}\"\n\
         model = \"{model}\"\n\
         dataset = \"{key}\"\n\
         cron = \"*/5 * * * * *\"\n\
         policy = \"reject\"\n\
         epochs = 2\n\
         epoch_fraction = 0.5\n",
        model = stack.model
    ));
    let first = jsonl(&examples(2)?)?;
    stack.put_object(&key, first.clone()).await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;

    let runs = |text: &str, outcome: &str| {
        metric(
            text,
            "refit_schedule_runs_total",
            &[("schedule", &name), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    // The first slot after registration trains v1 from scratch (no version yet).
    stack
        .wait_metrics("a scheduled scratch run", |text| {
            runs(text, "submitted_scratch") >= 1.0
        })
        .await?;
    let jobs = scheduled_jobs(&stack, &name).await?;
    ensure!(jobs.len() == 1, "one scheduled job: {jobs:?}");
    let v1 = stack
        .wait_succeeded(jobs[0]["id"].as_str().context("id")?)
        .await?;
    ensure!(
        v1["mode"] == "scratch"
            && v1["version"] == "v1"
            && v1["dataset"]["sha256"] == json!(sha256_hex(&first)),
        "{v1}"
    );

    // Unchanged data: the following slots skip.
    let text = stack
        .wait_metrics("a run skipped because the data is unchanged", |text| {
            runs(text, "skipped_unchanged") >= 1.0
        })
        .await?;
    let skipped_before = runs(&text, "skipped_unchanged");
    ensure!(
        scheduled_jobs(&stack, &name).await?.len() == 1,
        "a skipped run submitted a job"
    );

    // New examples with the same labels: the next slot fine-tunes v1.
    let mut more = examples(2)?;
    more.extend(set2_examples(&examples(2)?, 2)?);
    let second = jsonl(&more)?;
    stack.put_object(&key, second.clone()).await?;
    stack
        .wait_metrics("a scheduled fine-tune", |text| {
            runs(text, "submitted_finetune") >= 1.0
        })
        .await?;
    let jobs = scheduled_jobs(&stack, &name).await?;
    ensure!(jobs.len() == 2, "two scheduled jobs: {jobs:?}");
    let newest = jobs
        .iter()
        .find(|j| j["id"] != v1["id"])
        .context("the second job")?;
    let v2 = stack
        .wait_succeeded(newest["id"].as_str().context("id")?)
        .await?;
    ensure!(
        v2["mode"] == "finetune"
            && v2["base_version"] == "v1"
            && v2["version"] == "v2"
            && v2["dataset"]["sha256"] == json!(sha256_hex(&second)),
        "{v2}"
    );

    // … and after it, unchanged again: more skips, no third job.
    stack
        .wait_metrics("another skipped run after the fine-tune", |text| {
            runs(text, "skipped_unchanged") > skipped_before
        })
        .await?;
    let text = stack.metrics().await?;
    let skipped_now = runs(&text, "skipped_unchanged");
    // Wait for one more slot so a skip happened strictly after v2 was stored.
    stack
        .wait_metrics("a skipped run after v2", |text| {
            runs(text, "skipped_unchanged") > skipped_now
        })
        .await?;
    let jobs = scheduled_jobs(&stack, &name).await?;
    ensure!(
        jobs.len() == 2,
        "unchanged data submitted another job: {:?}",
        jobs.iter().map(|j| &j["id"]).collect::<Vec<_>>()
    );
    let text = stack.metrics().await?;
    ensure!(
        runs(&text, "submitted_scratch") == 1.0
            && runs(&text, "submitted_finetune") == 1.0
            && runs(&text, "rejected") == 0.0
            && runs(&text, "error") == 0.0,
        "schedule runs: {:?}",
        samples(&text)
            .into_iter()
            .filter(|(n, _, _)| n == "refit_schedule_runs_total")
            .collect::<Vec<_>>()
    );
    promtool_check(&text).context("/metrics with schedule runs")?;
    stack.finish().await
}

/// The model's jobs that `schedule` submitted.
async fn scheduled_jobs(stack: &Stack, schedule: &str) -> Result<Vec<Value>> {
    let path = format!("/v1/jobs?model={}&limit=100", stack.model);
    let list = stack
        .expect(Method::GET, &path, None, StatusCode::OK)
        .await?;
    Ok(list["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .filter(|j| j["schedule"] == json!(schedule))
        .cloned()
        .collect())
}

/// Runs tools/dashboard_check.py; its JSON summary.
async fn dashboard_check(
    stack: &Stack,
    token: &str,
    screenshot: &Path,
    extra: &[&str],
) -> Result<Value> {
    let mut command = tokio::process::Command::new(python()?);
    command
        .arg(repo().join("tools/dashboard_check.py"))
        .arg("--url")
        .arg(format!("{}/", stack.url()))
        .arg("--token")
        .arg(token)
        .arg("--screenshot")
        .arg(screenshot)
        .args(["--timeout", "120"])
        .args(extra)
        .current_dir(repo())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .map_err(|_| anyhow!("tools/dashboard_check.py hung"))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "tools/dashboard_check.py {} failed ({}; exit 2 means Playwright or Chromium is missing: \
         run deploy/python-peers.sh and deploy/chromium.sh):\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        extra.join(" "),
        output.status,
        stack.logs_tail()
    );
    ensure!(
        !stdout.contains(token) && !stderr.contains(token),
        "dashboard_check printed the token"
    );
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("dashboard_check's summary: {stdout}"))
}

/// Waits until the job succeeded and what its `promote_to` led to is recorded; its view.
async fn wait_promotion(stack: &Stack, id: &str) -> Result<Value> {
    stack.wait_succeeded(id).await?;
    stack
        .wait_job(id, "a recorded promotion", |job| {
            job["promotion"].is_object()
        })
        .await
}

/// "Done when" 7: the dashboard in real headless Chromium shows a running job's progress and
/// loss curve, and the models' quality and promotion (each version's deltas against its parent
/// and the alias's version with its negative flips, the alias's history, each job's promotion),
/// without console errors; a screenshot goes to `<target>/test-artifacts/`. A wrong token gets
/// the token form and no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_dashboard_shows_a_running_job_in_headless_chromium() -> Result<()> {
    // Fail early, before starting anything, when the Python peers are missing.
    python()?;
    let mut stack = Stack::new("dash").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let eval = stack.upload_examples(&examples(2)?).await?;

    // Quality and promotion: v1 and v2 trained with eval data and `promote_to prod`. v1 takes the
    // unset alias; v2, fine-tuned from v1, is gated against it with the comparison its job made
    // (v1 is its parent and the alias's version).
    let gated = json!({ "eval_dataset": eval, "promote_to": "prod" });
    let first = stack.submit_scratch(&data, 2, gated).await?;
    let promoted = wait_promotion(&stack, &first).await?;
    ensure!(
        promoted["promotion"]["outcome"] == "promoted",
        "v1 into the unset alias: {}",
        promoted["promotion"]
    );
    let second = stack
        .submit(json!({
            "model": stack.model,
            "dataset": data,
            "eval_dataset": eval,
            "promote_to": "prod",
            "mode": "finetune",
            "epochs": 1,
            "batch_size": 32,
        }))
        .await?["id"]
        .as_str()
        .context("job id")?
        .to_owned();
    let gated = wait_promotion(&stack, &second).await?;
    let outcome = gated["promotion"]["outcome"].as_str().unwrap_or_default();
    ensure!(
        outcome == "promoted" || outcome == "refused",
        "v2's promotion: {}",
        gated["promotion"]
    );
    let version = gated["version"].as_str().context("version")?.to_owned();

    // Long enough to still run while the browser looks (it is cancelled at the end); its
    // `promote_to` shows on its card.
    let job = stack
        .submit(json!({
            "model": stack.model,
            "dataset": data,
            "eval_dataset": eval,
            "promote_to": "prod",
            "mode": "scratch",
            "epochs": 100000,
        }))
        .await?;
    let id = job["id"].as_str().context("job id")?.to_owned();
    stack
        .wait_job(&id, "running with progress", |job| {
            job["state"] == "running" && job["progress"]["epoch"].as_f64().unwrap_or(0.0) > 0.0
        })
        .await?;

    let dir = artifacts_dir()?;
    let screenshot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let model = stack.model.clone();
    let summary = dashboard_check(
        &stack,
        &stack.token,
        &screenshot,
        &[
            "--expect-running-job",
            &id,
            "--expect-model",
            &model,
            "--expect-comparison",
            &version,
            "--expect-alias-history",
            "prod",
            "--expect-promotion",
            &first,
            "--expect-promotion",
            &second,
        ],
    )
    .await?;
    ensure!(summary["ok"] == true, "dashboard_check: {summary}");
    // What the page showed is what the API says.
    let comparisons = summary["comparisons"][version.as_str()]
        .as_array()
        .context("the summary's comparisons")?;
    ensure!(
        comparisons.iter().any(|c| c["before"] == "v1"
            && c["roles"]
                .as_array()
                .is_some_and(|roles| roles.contains(&json!("parent")))),
        "{version}'s comparisons on the page: {comparisons:?}"
    );
    let moves = summary["alias_history"]["prod"]
        .as_array()
        .map_or(0, Vec::len);
    let expected_moves = if outcome == "promoted" { 2 } else { 1 };
    ensure!(
        moves == expected_moves,
        "prod's history on the page: {}",
        summary["alias_history"]
    );
    for (job, outcome) in [(&first, "promoted"), (&second, outcome)] {
        let shown = &summary["promotions"][job.as_str()];
        ensure!(
            shown["outcome"] == outcome && shown["alias"] == "prod",
            "{job}'s promotion on the page: {shown}"
        );
    }
    ensure!(
        std::fs::metadata(&screenshot)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("dashboard screenshot: {}", screenshot.display());

    let refused = dir.join("dashboard-wrong-token.png");
    let summary = dashboard_check(
        &stack,
        &format!("wrong-{}", random_hex(8)),
        &refused,
        &["--expect-token-form"],
    )
    .await?;
    ensure!(
        summary["ok"] == true,
        "dashboard_check --expect-token-form: {summary}"
    );
    println!("dashboard screenshot (wrong token): {}", refused.display());

    // Cancel the long job; it ends cancelled and the workers are free again.
    stack
        .expect(
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            None,
            StatusCode::OK,
        )
        .await?;
    let job = stack.wait_final(&id).await?;
    ensure!(job["state"] == "cancelled", "{}", job["state"]);
    let workers: BTreeSet<String> = job["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter(|e| e["type"] == "started")
        .map(|e| e["worker"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(workers.len() == 1, "started on {workers:?}");
    stack.finish().await
}
