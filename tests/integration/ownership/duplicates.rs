//! "Done when" 1: a job whose message reaches two free workers runs once. The duplicate comes
//! from the test publishing the message again, from the outbox publishing it again after a
//! crash between the broker's confirm and the store's record of it, and from a second
//! coordinator that took over with an older copy of the job store.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{check_one_run, holders};
use crate::common::api::{free_port, metric};
use crate::common::examples;
use crate::common::jobs::check_committed;
use crate::common::proc::Proc;
use crate::common::stack::{Stack, WAIT};
use crate::common::wait::{done_if, wait_until};

/// A job long enough that the duplicate arrives while it runs.
const EPOCHS: u32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_twice_runs_once_and_the_second_claim_is_refused() -> Result<()> {
    let mut stack = Stack::new("odup").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;
    stack.wait_consumers(2).await?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let id = stack.submit_scratch(&data, EPOCHS, json!({})).await?;
    stack
        .wait_job(&id, "published", |job| job["published"] == true)
        .await?;
    // Both workers are free: the copy goes to the one the first did not.
    let spec = stack.reserved_job(1).await?;
    stack.publish_job_again(&spec).await?;
    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    check_one_run(&stack, &job, 1).await?;
    // The refused worker stopped at its claim: no `started`, and it said so.
    let refused_logs = stack
        .workers
        .iter()
        .filter(|w| w.log_text().contains("the coordinator refused the claim"))
        .count();
    ensure!(refused_logs == 1, "{refused_logs} workers logged a refusal");
    stack.finish().await
}

/// Submits a job with the raw HTTP client to a coordinator that exits on the way (a
/// `REFIT_FAULT`); the job's id (from the answer, else from the job store) and how the
/// coordinator exited. The stack has no coordinator afterwards.
async fn submit_through_a_crash(
    stack: &mut Stack,
    request: Value,
) -> Result<(String, std::process::ExitStatus)> {
    let answer = stack
        .http
        .post(format!("{}/v1/jobs", stack.url()))
        .bearer_auth(&stack.token)
        .json(&request)
        .send()
        .await;
    let status = stack
        .coordinator()?
        .wait_exit(Duration::from_secs(60))
        .await?;
    stack.coordinator = None;
    if let Ok(response) = answer
        && response.status().is_success()
    {
        let body: Value = response.json().await?;
        if let Some(id) = body["job"]["id"].as_str() {
            return Ok((id.to_owned(), status));
        }
    }
    let id = stored_job_ids(&stack.database())?
        .into_iter()
        .next()
        .context("the job store holds no job")?;
    Ok((id, status))
}

/// The ids of the jobs in a job store (read-only).
fn stored_job_ids(database: &std::path::Path) -> Result<Vec<String>> {
    let db = rusqlite::Connection::open_with_flags(
        database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut statement = db.prepare("SELECT id FROM jobs ORDER BY submitted_at")?;
    let ids = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_republish_after_a_crash_runs_once() -> Result<()> {
    let mut stack = Stack::new("orepub").await?;
    stack
        .start_coordinator(&[("REFIT_FAULT", "exit-after-publish")])
        .await?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let request = json!({
        "model": stack.model, "dataset": data, "mode": "scratch", "epochs": EPOCHS,
        "batch_size": 32,
    });
    // The broker confirms the message, the store never records it: the coordinator dies in
    // between.
    let (id, status) = submit_through_a_crash(&mut stack, request).await?;
    ensure!(
        !status.success(),
        "the fault exit looked like success: {status}"
    );
    // The restarted coordinator publishes it again: two copies wait in the queue when the
    // two workers start, and each takes one.
    stack.start_coordinator(&[]).await?;
    stack
        .wait_job(&id, "the job to be published again", |job| {
            job["published"] == true
        })
        .await?;
    stack.start_workers(2)?;
    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    ensure!(job["published"] == true, "{job}");
    check_one_run(&stack, &job, 1).await?;
    stack.finish().await
}

/// `/metrics` of the coordinator on `port`.
async fn metrics_at(stack: &Stack, port: u16) -> Result<String> {
    let response = stack
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "/metrics: {}",
        response.status()
    );
    Ok(response.text().await?)
}

/// Waits until the coordinator on `port` reports `refit_coordinator_active` = `active`.
async fn wait_active(stack: &Stack, proc: &Proc, port: u16, active: bool) -> Result<()> {
    let want = if active { 1.0 } else { 0.0 };
    let what = format!("the coordinator on port {port} to be active={active}");
    wait_until(&what, WAIT, async || {
        ensure!(
            proc.running(),
            "{} exited; log:\n{}",
            proc.name,
            proc.tail(40)
        );
        let seen = match metrics_at(stack, port).await {
            Ok(text) => metric(&text, "refit_coordinator_active", &[]),
            Err(_) => None,
        };
        Ok(done_if(seen == Some(want), (), || {
            format!("refit_coordinator_active {seen:?}; log:\n{}", proc.tail(20))
        }))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_with_an_older_store_takes_over_and_the_job_runs_once() -> Result<()> {
    let mut stack = Stack::new("otwo").await?;
    // Coordinator A stores the job and dies before publishing it …
    stack
        .start_coordinator(&[("REFIT_FAULT", "exit-after-store")])
        .await?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let request = json!({
        "model": stack.model, "dataset": data, "mode": "scratch", "epochs": EPOCHS,
        "batch_size": 32,
    });
    let (id, _) = submit_through_a_crash(&mut stack, request).await?;
    // … so a copy of its store made now has the job queued and unpublished.
    let copy = stack.cluster.dir.path().join("coordinator-b.db");
    rusqlite::Connection::open(stack.database())?
        .execute("VACUUM INTO ?1", [copy.to_string_lossy()])?;
    // A comes back on its own store and publishes the job; B, on the copy, stands by.
    stack.start_coordinator(&[]).await?;
    let port_b = free_port()?;
    let b = stack.spawn_coordinator(&copy, port_b, &[])?;
    let port_a = stack.port;
    wait_active(&stack, stack.coordinator()?, port_a, true).await?;
    wait_active(&stack, &b, port_b, false).await?;
    ensure!(
        b.log_text()
            .contains("another coordinator is active: standing by"),
        "B did not stand by; log:\n{}",
        b.tail(40)
    );

    stack.start_workers(2)?;
    stack
        .wait_event(&id, "progress", |e| e["type"] == "progress")
        .await?;
    // A dies mid-job. B takes over with its older store, in which the job was never published:
    // it publishes it again while the first attempt still runs.
    stack.coordinator()?.kill9()?;
    stack.coordinator = Some(b);
    stack.port = port_b;
    stack.database = Some(copy);
    wait_active(&stack, stack.coordinator()?, port_b, true).await?;
    stack.wait_succeeded(&id).await?;
    let job = stack.settled(&id).await?;
    // In B's store one attempt held the job: the running one (adopted) with the copy's claim
    // refused, or the copy's (granted) with the running one revoked at its first event.
    check_one_run(&stack, &job, 0).await?;
    let dropped = metric(
        &stack.metrics().await?,
        "refit_events_dropped_total",
        &[("reason", "not_holder")],
    )
    .unwrap_or(0.0);
    let adopted = job["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["type"] == "lease_adopted"));
    ensure!(
        adopted || dropped <= 3.0,
        "the attempt B did not grant went on reporting: {dropped} events dropped"
    );
    eprintln!(
        "two coordinators: {} after the takeover, {dropped} events of the other attempt dropped, \
         holder {:?}",
        if adopted {
            "the running attempt was adopted"
        } else {
            "the copy's attempt was granted"
        },
        holders(&job)
    );
    stack.finish().await
}

/// Two coordinators number one version each for two jobs without knowing of each other (the
/// standby's job waits in its outbox, unreserved, while the active one gives the same number
/// to its own job and commits it); when the standby takes over, its job moves to the next free
/// number before it is reserved: no number is used twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standbys_job_moves_to_a_free_number_when_the_active_one_took_its_number() -> Result<()> {
    let mut stack = Stack::new("onum").await?;
    stack.start_coordinator(&[]).await?;
    let port_a = stack.port;
    let copy = stack.cluster.dir.path().join("coordinator-b.db");
    let port_b = free_port()?;
    let b = stack.spawn_coordinator(&copy, port_b, &[])?;
    wait_active(&stack, stack.coordinator()?, port_a, true).await?;
    wait_active(&stack, &b, port_b, false).await?;
    let data = stack.upload_examples(&examples(3)?).await?;

    // The standby stores a job as v1 (it cannot publish it) …
    stack.port = port_b;
    let on_b = stack.submit_scratch(&data, 1, json!({})).await?;
    ensure!(stack.job(&on_b).await?["version"] == "v1");
    // … and the active one gives v1 to its own job, which runs and is committed.
    stack.port = port_a;
    let on_a = stack.submit_scratch(&data, 1, json!({})).await?;
    ensure!(stack.job(&on_a).await?["version"] == "v1");
    stack.start_worker(&[])?;
    stack.wait_succeeded(&on_a).await?;

    // A goes; B takes over and publishes its job under the next free number.
    stack.coordinator()?.stop().await?;
    stack.coordinator = Some(b);
    stack.port = port_b;
    stack.database = Some(copy);
    wait_active(&stack, stack.coordinator()?, port_b, true).await?;
    let job = stack.wait_succeeded(&on_b).await?;
    ensure!(job["version"] == "v2", "B's job is {}", job["version"]);
    ensure!(
        stack
            .coordinator()?
            .log_text()
            .contains("the job takes the next free one"),
        "B did not log the move"
    );
    ensure!(
        stack.versions().await? == [1, 2],
        "{:?}",
        stack.versions().await?
    );
    for (version, id) in [(1, &on_a), (2, &on_b)] {
        let manifest = stack.verify_version(version).await?;
        ensure!(
            manifest.job_id.map(|j| j.to_string()).as_deref() == Some(id.as_str()),
            "v{version} belongs to {:?}, not {id}",
            manifest.job_id
        );
    }
    check_committed(&stack, &job).await?;
    stack.finish().await
}
