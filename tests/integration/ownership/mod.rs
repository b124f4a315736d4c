//! One job, one version, under any fault (issue 13): real coordinators, real workers, the real
//! RabbitMQ and S3 server, and faults made for real (a message published twice, a coordinator
//! or a worker killed, a worker frozen with SIGSTOP, the broker's consumer timeout lowered, the
//! job store deleted, a worker's broker user trying what it may not).
//!
//! Every test ends with the same checks (`common::jobs::check_committed`): the job's version is
//! committed once, every file its manifest lists is there with its sha256, and the manifest was
//! committed from the attempt whose `succeeded` the coordinator took.
//!
//! | module | "Done when" | test |
//! | --- | --- | --- |
//! | `duplicates` | 1, 6 | the same message twice, an outbox republish, two coordinators; a standby's job renumbered |
//! | `faults` | 2 | a worker frozen for 2× the lease after uploading |
//! | `long_job` | 3 | a 3-minute job of 65-second epochs with the consumer timeout at 60 s |
//! | `faults` | 4 | 8 SIGTERM hand-backs; a job that kills its workers is dead-lettered |
//! | `faults` | 5 | 20 seeded random `kill -9`s, during training, upload, before and after `succeeded` |
//! | `store_loss` | 6 | the job store deleted while jobs are queued and running |
//! | `permissions` | 7 | the worker user's ACCESS_REFUSED; forged events ignored |

use anyhow::{Result, ensure};
use serde_json::Value;

use crate::common::api::event_types;
use crate::common::jobs::{check_committed, events};
use crate::common::stack::Stack;

mod duplicates;
mod faults;
mod long_job;
mod permissions;
mod store_loss;

/// The attempts whose claims were granted (or whose lease was adopted), in order.
fn holders(job: &Value) -> Vec<String> {
    events(job)
        .iter()
        .filter_map(|e| match e["type"].as_str() {
            Some("claim") if e["body"]["granted"] == true => e["attempt_id"].as_str(),
            Some("lease_adopted") => e["body"]["attempt_id"].as_str(),
            _ => None,
        })
        .map(str::to_owned)
        .collect()
}

/// The attempt ids of refused claims.
fn refused(job: &Value) -> Vec<String> {
    events(job)
        .iter()
        .filter(|e| e["type"] == "claim" && e["body"]["granted"] == false)
        .filter_map(|e| e["attempt_id"].as_str().map(str::to_owned))
        .collect()
}

/// The job ran once: one attempt held it, every other attempt the coordinator heard of got only
/// a refused claim (it never started), at least `min_refused` were refused, and its version is
/// committed, consistent and the holder's. The version number.
async fn check_one_run(stack: &Stack, job: &Value, min_refused: usize) -> Result<u32> {
    let holders = holders(job);
    ensure!(
        holders.len() == 1,
        "{} attempts held the job: {:?}",
        holders.len(),
        event_types(job)
    );
    let refused = refused(job);
    ensure!(
        refused.len() >= min_refused,
        "{} refused claims, expected at least {min_refused}: {:?}",
        refused.len(),
        event_types(job)
    );
    for event in events(job) {
        let Some(attempt) = event["attempt_id"].as_str() else {
            continue;
        };
        ensure!(
            attempt == holders[0] || event["type"] == "claim",
            "attempt {attempt}, which did not hold the job, reported {}",
            event["type"]
        );
    }
    let manifest = check_committed(stack, job).await?;
    ensure!(
        manifest.attempt_id.map(|a| a.to_string()).as_deref() == Some(holders[0].as_str()),
        "the version is not the holder's"
    );
    let version = manifest.version.get();
    ensure!(
        stack.versions().await? == [version],
        "versions: {:?}",
        stack.versions().await?
    );
    Ok(version)
}
