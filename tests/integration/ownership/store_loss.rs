//! "Done when" 6: the coordinator's job store deleted while one job runs and two wait, the
//! coordinator restarted on an empty store. Every job the store held is found again from its
//! reservation (`models/<m>/v<N>/job.json`) under its own id and version number: the finished
//! one as finished, the queued ones queued again, the running one adopted by the attempt that
//! still runs it (it goes on instead of starting over). A job submitted afterwards gets the next
//! number above every number taken, so no version is reused or overwritten.
//!
//! What a lost store cannot give back (deploy/README.md, "Guarantees"): the jobs' event
//! history, decision reports and failure counts, schedules' last runs, and cancels that had not
//! reached the worker yet.

use anyhow::{Result, ensure};
use serde_json::json;

use crate::common::api::metric;
use crate::common::examples;
use crate::common::jobs::EVERY_EPOCH;
use crate::common::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_job_store_reuses_no_version_and_its_jobs_run_on() -> Result<()> {
    let mut stack = Stack::new("ostore").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_worker(&[EVERY_EPOCH])?;
    let small = stack.upload_examples(&examples(2)?).await?;
    let data = stack.upload_examples(&examples(8)?).await?;
    let first = stack.submit_scratch(&small, 1, json!({})).await?;
    stack.wait_succeeded(&first).await?;
    let v1 = stack.verify_version(1).await?;

    // One job runs (on the only worker), two wait behind it.
    let running = stack.submit_scratch(&data, 60, json!({})).await?;
    stack.wait_checkpoint(&running, 2.0).await?;
    let mut queued = Vec::new();
    for _ in 0..2 {
        let id = stack.submit_scratch(&small, 2, json!({})).await?;
        stack
            .wait_job(&id, "published", |job| job["published"] == true)
            .await?;
        queued.push(id);
    }

    // The coordinator dies and its store with it.
    stack.coordinator()?.kill9()?;
    stack.coordinator = None;
    let database = stack.database();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = database.clone().into_os_string();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    stack.start_coordinator(&[]).await?;
    // It recovers the jobs when it becomes active (it answers the API before that).
    stack
        .wait_metrics("the coordinator active", |text| {
            metric(text, "refit_coordinator_active", &[]) == Some(1.0)
        })
        .await?;
    let recovered = stack.metrics().await?;
    ensure!(
        metric(&recovered, "refit_jobs_recovered_total", &[]) == Some(4.0),
        "recovered: {:?}",
        metric(&recovered, "refit_jobs_recovered_total", &[])
    );
    stack.start_workers(1)?;

    // Every job is back under its id and finishes; the running one went on where it was.
    let job = stack.wait_succeeded(&running).await?;
    let adopted = job["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["type"] == "lease_adopted"));
    ensure!(
        adopted,
        "the running attempt was not adopted: {:?}",
        crate::common::api::event_types(&job)
    );
    for id in &queued {
        stack.wait_succeeded(id).await?;
    }
    let recovered_first = stack.job(&first).await?;
    ensure!(
        recovered_first["state"] == "succeeded",
        "the finished job came back {}",
        recovered_first["state"]
    );

    // A new job takes the next number above all of them.
    let next = stack.submit_scratch(&small, 1, json!({})).await?;
    let next_view = stack.wait_succeeded(&next).await?;
    ensure!(next_view["version"] == "v5", "{}", next_view["version"]);
    ensure!(stack.versions().await? == [1, 2, 3, 4, 5]);
    let owners = [&running, &queued[0], &queued[1], &next];
    for (n, id) in (2..).zip(owners) {
        let manifest = stack.verify_version(n).await?;
        ensure!(
            manifest.job_id.map(|j| j.to_string()).as_deref() == Some(id.as_str()),
            "v{n} belongs to {:?}, not {id}",
            manifest.job_id
        );
    }
    ensure!(stack.verify_version(1).await? == v1, "v1 was overwritten");
    stack.finish().await
}
