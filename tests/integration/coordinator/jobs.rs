//! Many jobs at once, and a coordinator that dies between storing and publishing a job.

use std::collections::BTreeSet;

use super::*;

/// "Done when" 3: 20 small jobs submitted in parallel all succeed exactly once, spread over both
/// workers, each writing its own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_runs_20_parallel_jobs_exactly_once_on_both_workers() -> Result<()> {
    let mut stack = Stack::new("par").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;
    // Both workers consume before anything is queued, so the broker can hand jobs to both.
    stack.wait_consumers(2).await?;
    let data = stack.upload(jsonl(&examples(2)?)?, "jsonl").await?;

    let mut submits = tokio::task::JoinSet::new();
    for seed in 0..20u64 {
        let http = stack.http.clone();
        let url = format!("{}/v1/jobs", stack.url());
        let token = stack.token.clone();
        let body = json!({
            "model": stack.model,
            "dataset": dataset(&data),
            "mode": "scratch",
            "epochs": 1,
            "seed": seed,
        });
        submits.spawn(async move {
            let response = http.post(url).bearer_auth(token).json(&body).send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            ensure!(status == StatusCode::CREATED, "submit: {status}: {body}");
            anyhow::Ok(body["job"].clone())
        });
    }
    let mut submitted = Vec::new();
    while let Some(result) = submits.join_next().await {
        submitted.push(result??);
    }
    let ids: BTreeSet<String> = submitted
        .iter()
        .map(|j| j["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(ids.len() == 20, "20 distinct job ids: {ids:?}");
    let versions: BTreeSet<String> = submitted
        .iter()
        .map(|j| j["version"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(
        versions.len() == 20,
        "every job has its own output version: {versions:?}"
    );

    let mut workers_used = BTreeSet::new();
    for id in &ids {
        let job = stack.wait_succeeded(id).await?;
        let types = event_types(&job);
        ensure!(
            count_events(&job, "succeeded") == 1 && count_events(&job, "started") == 1,
            "job {id}: exactly one start and one success, got {types:?}"
        );
        ensure!(
            job["attempts"] == 1,
            "job {id}: attempts {}",
            job["attempts"]
        );
        let succeeded = job["events"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["type"] == "succeeded"))
            .context("no succeeded event")?;
        let worker = succeeded["worker"].as_str().unwrap_or_default().to_owned();
        ensure!(
            job["worker"] == json!(worker),
            "job {id}: the view's worker {} is not the one that succeeded ({worker})",
            job["worker"]
        );
        workers_used.insert(worker);
    }
    let expected: BTreeSet<String> = [stack.worker_id(1), stack.worker_id(2)].into();
    ensure!(
        workers_used == expected,
        "jobs ran on {workers_used:?}, expected both of {expected:?}"
    );

    // One stored version per job, v1 … v20, and nothing else.
    let list = stack
        .expect(
            Method::GET,
            &format!("/v1/models/{}/versions", stack.model),
            None,
            StatusCode::OK,
        )
        .await?;
    let stored: BTreeSet<String> = list["versions"]
        .as_array()
        .context("versions")?
        .iter()
        .map(|v| v["version"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(
        stored == versions,
        "stored versions {stored:?} ≠ the jobs' {versions:?}"
    );
    // The job store agrees: 20 succeeded, nothing else.
    let all = stack
        .expect(
            Method::GET,
            &format!("/v1/jobs?model={}&limit=100", stack.model),
            None,
            StatusCode::OK,
        )
        .await?;
    let states: Vec<&str> = all["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .map(|j| j["state"].as_str().unwrap_or("?"))
        .collect();
    ensure!(
        states.len() == 20 && states.iter().all(|s| *s == "succeeded"),
        "{states:?}"
    );
    stack.finish().await
}

/// "Done when" 4: a coordinator that dies right after storing a submitted job (before publishing
/// it) leaves the job in its SQLite file unpublished; after a restart on the same file the job is
/// published once and completes in one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_between_store_and_publish_publishes_once_after_restart() -> Result<()> {
    let mut stack = Stack::new("crash").await?;
    stack
        .start_coordinator(&[("REFIT_FAULT", "exit-after-store")])
        .await?;
    let data = stack.upload(jsonl(&examples(2)?)?, "jsonl").await?;
    let request = json!({
        "model": stack.model,
        "dataset": dataset(&data),
        "mode": "scratch",
        "epochs": 1,
    });
    // The process exits inside the request: the caller sees no answer.
    let answer = stack
        .http
        .post(format!("{}/v1/jobs", stack.url()))
        .bearer_auth(&stack.token)
        .json(&request)
        .send()
        .await;
    ensure!(
        answer.is_err(),
        "the coordinator answered although REFIT_FAULT=exit-after-store: {:?}",
        answer.map(|r| r.status())
    );
    let status = stack
        .coordinator()?
        .wait_exit(Duration::from_secs(30))
        .await?;
    ensure!(
        !status.success(),
        "the fault exit looked like success: {status}"
    );
    stack.coordinator = None;

    // The job is in the store, not published.
    let rows = {
        let db = rusqlite::Connection::open_with_flags(
            stack.database(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut statement =
            db.prepare("SELECT id, model, version, state, published_at FROM jobs")?;
        statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?
    };
    ensure!(rows.len() == 1, "one stored job, found {rows:?}");
    let (id, model, version, state, published_at) = rows[0].clone();
    ensure!(
        model == stack.model && version == 1 && state == "queued" && published_at.is_none(),
        "stored job: {:?}",
        rows[0]
    );
    // … and nothing reached the broker: the job queue is absent or empty.
    let channel = stack.cluster.broker.channel().await?;
    let queue = stack.job_queue();
    if let Ok(declared) = channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
    {
        ensure!(
            declared.message_count() == 0,
            "{queue} holds {} messages before the restart",
            declared.message_count()
        );
    }

    // Restart on the same database, without the fault and still without workers.
    stack.start_coordinator(&[]).await?;
    let job = stack
        .wait_job(&id, "published", |job| job["published"] == true)
        .await?;
    ensure!(job["state"] == "queued" && job["attempts"] == 0, "{job}");
    // Exactly one message on the job queue.
    stack
        .wait_metrics("one ready job message", |text| {
            metric(text, "refit_queue_messages_ready", &[("queue", &queue)]) == Some(1.0)
        })
        .await?;
    // Give the outbox a few more passes: a second publish would show as a second message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = stack.metrics().await?;
    ensure!(
        metric(&text, "refit_queue_messages_ready", &[("queue", &queue)]) == Some(1.0),
        "the job was published more than once: {:?}",
        metric(&text, "refit_queue_messages_ready", &[("queue", &queue)])
    );
    ensure!(
        metric(&text, "refit_outbox_jobs", &[]) == Some(0.0),
        "outbox not drained"
    );

    stack.start_workers(2)?;
    let job = stack.wait_succeeded(&id).await?;
    ensure!(
        job["attempts"] == 1
            && count_events(&job, "started") == 1
            && count_events(&job, "succeeded") == 1,
        "one delivery, one start, one success: attempts {}, events {:?}",
        job["attempts"],
        event_types(&job)
    );
    ensure!(job["version"] == "v1", "{}", job["version"]);
    stack
        .wait_metrics("an empty job queue", |text| {
            metric(text, "refit_queue_messages_ready", &[("queue", &queue)]) == Some(0.0)
        })
        .await?;
    stack.finish().await
}

/// A job the broker refuses (its pool's queue exists with other arguments) holds back only
/// itself: the job submitted after it runs meanwhile, and it fails after
/// `coordinator.publish_attempts` refusals with the broker's reason. A pool whose queue would
/// be one of refit's own is refused at submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_broker_refuses_holds_up_no_other_and_fails_with_the_reason() -> Result<()> {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;

    let mut stack = Stack::new("refuse").await?;
    // `<prefix>.jobs.odd` exists as a classic queue: declaring refit's quorum queue fails.
    let odd = stack.cluster.broker.topology().job_queue_for("odd");
    let channel = stack.cluster.broker.channel().await?;
    channel
        .queue_declare(
            odd.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let attempts = 3;
    stack
        .start_coordinator(&[(
            "REFIT__COORDINATOR__PUBLISH_ATTEMPTS",
            &attempts.to_string(),
        )])
        .await?;
    stack.start_worker(&[])?;
    let data = stack.upload_examples(&examples(2)?).await?;

    let request = json!({
        "model": stack.model, "dataset": data, "mode": "scratch", "epochs": 1,
        "pool": "dead.coordinator",
    });
    let answer = stack
        .expect(
            Method::POST,
            "/v1/jobs",
            Some(request),
            StatusCode::BAD_REQUEST,
        )
        .await?;
    ensure!(
        answer.to_string().contains("pool"),
        "the refusal does not say why: {answer}"
    );

    let refused = stack
        .submit_scratch(&data, 1, json!({"pool": "odd"}))
        .await?;
    let next = stack.submit_scratch(&data, 1, json!({})).await?;
    stack.wait_succeeded(&next).await?;
    let job = stack
        .wait_job(&refused, "the refused job to fail", |job| {
            job["state"] == "failed"
        })
        .await?;
    let error = job["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains(&format!("refused the job {attempts} times"))
            && error.contains("PRECONDITION_FAILED"),
        "{error}"
    );
    let log = stack.coordinator()?.log_text();
    ensure!(
        log.matches("the broker refused the job; retrying it later")
            .count()
            == attempts - 1,
        "expected {} retries in the log",
        attempts - 1
    );
    let channel = stack.cluster.broker.channel().await?;
    channel
        .queue_delete(odd.as_str().into(), QueueDeleteOptions::default())
        .await?;
    stack.finish().await
}

/// A published job whose message the broker lost (here: the queue purged) is published again
/// after `coordinator.republish_after_secs`, and runs once; a job whose message waits in the
/// queue is left alone however long it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_job_whose_message_is_lost_is_published_again() -> Result<()> {
    use lapin::options::QueuePurgeOptions;

    let mut stack = Stack::new("lostmsg").await?;
    stack
        .start_coordinator(&[("REFIT__COORDINATOR__REPUBLISH_AFTER_SECS", "2")])
        .await?;
    let data = stack.upload_examples(&examples(2)?).await?;
    let id = stack.submit_scratch(&data, 1, json!({})).await?;
    stack
        .wait_job(&id, "the job published", |job| job["published"] == true)
        .await?;
    // No worker yet: the message waits in the queue, past republish_after_secs, and is left
    // alone (the sweep runs every half second here).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let republished = |metrics: &str| metric(metrics, "refit_jobs_republished_total", &[]);
    ensure!(
        republished(&stack.metrics().await?) == Some(0.0),
        "a job waiting in its queue was published again"
    );

    let channel = stack.cluster.broker.channel().await?;
    channel
        .queue_purge(
            stack.job_queue().as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    stack
        .wait_metrics("the lost job published again", |m| {
            republished(m) >= Some(1.0)
        })
        .await?;
    stack.start_worker(&[])?;
    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    let (granted, _) = crate::common::jobs::claims(&job);
    ensure!(granted.len() == 1, "granted to {granted:?}");
    ensure!(stack.versions().await? == [1]);
    stack.finish().await
}

/// When the coordinator granted the job's lease first.
fn first_grant(job: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    crate::common::jobs::events(job)
        .iter()
        .find(|e| e["type"] == "claim" && e["body"]["granted"] == true)
        .and_then(|e| e["received_at"].as_str()?.parse().ok())
}

/// Priorities: with the only worker busy, a job of priority above 0 submitted after ten of
/// priority 0 runs next (its pool's priority queue is drained first), and the ten follow in
/// the order they were submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_job_submitted_after_ten_others_runs_next() -> Result<()> {
    let mut stack = Stack::new("prio").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_worker(&[("REFIT_FAULT", "slow-step=100")])?;
    let data = stack.upload_examples(&examples(2)?).await?;
    let busy = stack.submit_scratch(&data, 60, json!({})).await?;
    stack
        .wait_event(&busy, "the first job training", |e| e["type"] == "started")
        .await?;
    let mut normal = Vec::new();
    for _ in 0..10 {
        normal.push(stack.submit_scratch(&data, 1, json!({})).await?);
    }
    for id in &normal {
        stack
            .wait_job(id, "the job published", |job| job["published"] == true)
            .await?;
    }
    let urgent = stack
        .submit_scratch(&data, 1, json!({"priority": 5}))
        .await?;
    ensure!(
        stack.job(&busy).await?["state"] == "running",
        "the first job ended before the others were queued: make it longer"
    );
    let mut all = vec![busy.clone(), urgent.clone()];
    all.extend(normal.iter().cloned());
    let jobs = stack.all_succeeded(&all).await?;
    let grants: Vec<chrono::DateTime<chrono::Utc>> = jobs
        .iter()
        .map(|job| first_grant(job).context("a job without a granted claim"))
        .collect::<Result<_>>()?;
    let (urgent_at, normal_at) = (&grants[1], &grants[2..]);
    ensure!(
        normal_at.iter().all(|at| at > urgent_at),
        "the priority job was granted at {urgent_at}, after a job of priority 0: {normal_at:?}"
    );
    ensure!(
        normal_at.windows(2).all(|w| w[0] < w[1]),
        "the jobs of priority 0 did not run in submission order: {normal_at:?}"
    );
    stack.finish().await
}
