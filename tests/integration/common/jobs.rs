//! Jobs on a [`Stack`]: submitting them, reading their events (as the coordinator recorded
//! them), publishing raw messages in the coordinator's place, and checking what ended up in the
//! registry. The worker and ownership tests share these.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use refit_proto::data::Example;
use refit_proto::reservation::Reservation;
use refit_proto::{JobSpec, Manifest, Version};
use reqwest::Method;
use serde_json::{Value, json};

use super::api::{dataset, event_types, jsonl};
use super::stack::Stack;

/// A resume checkpoint every epoch (so an interrupted job has something to resume from).
pub const EVERY_EPOCH: (&str, &str) = ("REFIT__WORKER__RESUME_EVERY_EPOCHS", "1");

impl Stack {
    /// Uploads examples as JSONL; the dataset reference for a request body.
    pub async fn upload_examples(&self, examples: &[Example]) -> Result<Value> {
        Ok(dataset(&self.upload(jsonl(examples)?, "jsonl").await?))
    }

    /// Submits a scratch job of `epochs` on `data` at a fixed batch size of 32 (so every epoch
    /// has the same steps), with `extra` fields merged into the request; its id.
    pub async fn submit_scratch(&self, data: &Value, epochs: u32, extra: Value) -> Result<String> {
        let mut request = json!({
            "model": self.model,
            "dataset": data,
            "mode": "scratch",
            "epochs": epochs,
            "batch_size": 32,
        });
        if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
            request.extend(extra.clone());
        }
        let job = self.submit(request).await?;
        job["id"]
            .as_str()
            .map(str::to_owned)
            .context("the job view has no id")
    }

    /// The job's events, oldest first, as the coordinator recorded them.
    pub async fn events(&self, id: &str) -> Result<Vec<Value>> {
        Ok(self.job(id).await?["events"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until the job has an event that `pred` accepts; the job's view.
    pub async fn wait_event(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_job(id, what, |job| {
            job["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(&pred))
        })
        .await
    }

    /// Waits until the job has a `checkpointed` event at `epoch` or later; the job's view.
    pub async fn wait_checkpoint(&self, id: &str, epoch: f64) -> Result<Value> {
        self.wait_event(id, &format!("a checkpoint at epoch {epoch}"), |e| {
            e["type"] == "checkpointed" && e["body"]["epoch"].as_f64().is_some_and(|x| x >= epoch)
        })
        .await
    }

    /// The model's committed versions, as numbers.
    pub async fn versions(&self) -> Result<Vec<u32>> {
        let model = self.cluster.model.clone();
        Ok(self
            .cluster
            .registry()
            .versions(&model)
            .await?
            .into_iter()
            .map(Version::get)
            .collect())
    }

    /// Checks that version `n` is consistent (every file its manifest lists is there with its
    /// sha256) and returns its manifest.
    pub async fn verify_version(&self, n: u32) -> Result<Manifest> {
        let model = self.cluster.model.clone();
        self.cluster
            .registry()
            .verify(&model, Version::new(n)?)
            .await
            .with_context(|| format!("version v{n} of {model} is not consistent"))
    }

    /// The job message of the job that reserved version `n` (its `job.json` in the store).
    pub async fn reserved_job(&self, n: u32) -> Result<JobSpec> {
        let model = self.cluster.model.clone();
        let reservation: Reservation = self
            .cluster
            .registry()
            .reservation(&model, Version::new(n)?)
            .await?
            .with_context(|| format!("no reservation for v{n}"))?;
        Ok(reservation.spec)
    }

    /// Publishes bytes to the job queue as the coordinator would (persistent, with a message id),
    /// with the test's own (administrator) broker connection.
    pub async fn publish_job_bytes(&self, body: &[u8], message_id: Option<&str>) -> Result<()> {
        let broker = &self.cluster.broker;
        let channel = broker.channel().await?;
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let topology = broker.topology();
        channel
            .basic_publish(
                topology.jobs_exchange().as_str().into(),
                topology.pool().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    /// Publishes a job message again (a duplicate delivery).
    pub async fn publish_job_again(&self, spec: &JobSpec) -> Result<()> {
        self.publish_job_bytes(&refit_proto::encode(spec), Some(&spec.id.to_string()))
            .await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Value> {
        let (status, body) = self
            .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
            .await?;
        ensure!(status.is_success(), "cancel {id}: {status}: {body}");
        Ok(body)
    }

    /// Waits a moment for late events (a duplicate result would come right after the first),
    /// then returns the job's view.
    pub async fn settled(&self, id: &str) -> Result<Value> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.job(id).await
    }

    /// Waits for every job of `ids` to end, checks each `succeeded` and that the model has
    /// one version per job; their views, in order.
    pub async fn all_succeeded(&self, ids: &[String]) -> Result<Vec<Value>> {
        let mut jobs = Vec::new();
        for id in ids {
            let job = self.wait_final(id).await?;
            ensure!(
                job["state"] == "succeeded",
                "job {id} ended {}: {}\n{}",
                job["state"],
                job["error"],
                self.logs_tail()
            );
            jobs.push(job);
        }
        let versions = self.versions().await?;
        ensure!(
            versions.len() == ids.len(),
            "{} versions for {} jobs",
            versions.len(),
            ids.len()
        );
        Ok(jobs)
    }

    /// Fails, with its log, if a worker has exited (`when` says at which point of the test).
    pub fn check_workers_running(&self, when: &str) -> Result<()> {
        for worker in &self.workers {
            ensure!(
                worker.running(),
                "a worker exited {when}; log:\n{}",
                worker.log_text()
            );
        }
        Ok(())
    }

    /// Waits until the job's events show a `claim` from worker `worker` answered `granted`.
    pub async fn wait_granted(&self, id: &str, worker: &str) -> Result<Value> {
        self.wait_event(id, &format!("a lease granted to {worker}"), |e| {
            e["type"] == "claim" && e["worker"] == worker && e["body"]["granted"] == true
        })
        .await
    }
}

/// The events of a job view.
pub fn events(job: &Value) -> Vec<Value> {
    job["events"].as_array().cloned().unwrap_or_default()
}

/// How many events of `kind` the job view has from `worker`.
pub fn count_from(job: &Value, kind: &str, worker: &str) -> usize {
    events(job)
        .iter()
        .filter(|e| e["type"] == kind && e["worker"] == worker)
        .count()
}

/// The workers whose claims were granted, and those whose claims were refused, in order.
pub fn claims(job: &Value) -> (Vec<String>, Vec<String>) {
    let mut granted = Vec::new();
    let mut refused = Vec::new();
    for event in events(job).iter().filter(|e| e["type"] == "claim") {
        let worker = event["worker"].as_str().unwrap_or("?").to_owned();
        if event["body"]["granted"] == true {
            granted.push(worker);
        } else {
            refused.push(worker);
        }
    }
    (granted, refused)
}

/// `resumed_from_epoch` of every `started` event, in order.
pub fn started_from(job: &Value) -> Vec<Option<f64>> {
    events(job)
        .iter()
        .filter(|e| e["type"] == "started")
        .map(|e| e["body"]["resumed_from_epoch"].as_f64())
        .collect()
}

/// The furthest epoch `worker` reported (progress or checkpointed) in the job view.
pub fn reached_epoch(job: &Value, worker: &str) -> Option<f64> {
    events(job)
        .iter()
        .filter(|e| e["worker"] == worker)
        .filter(|e| e["type"] == "progress" || e["type"] == "checkpointed")
        .filter_map(|e| e["body"]["epoch"].as_f64())
        .reduce(f64::max)
}

/// The epoch of the latest `checkpointed` event.
pub fn last_checkpoint(job: &Value) -> Option<f64> {
    events(job)
        .iter()
        .rev()
        .find(|e| e["type"] == "checkpointed")
        .and_then(|e| e["body"]["epoch"].as_f64())
}

/// Checks the one-job-one-version facts of a succeeded job: its version is committed, is
/// consistent, and was made by the attempt whose `succeeded` the coordinator took (the manifest
/// names the job and that attempt). Returns the manifest.
pub async fn check_committed(stack: &Stack, job: &Value) -> Result<Manifest> {
    ensure!(
        job["state"] == "succeeded",
        "job {} is {}: {} (events {:?})",
        job["id"],
        job["state"],
        job["error"],
        event_types(job)
    );
    let version: u32 = job["version"]
        .as_str()
        .and_then(|v| v.trim_start_matches('v').parse().ok())
        .context("the job view has no version")?;
    let manifest = stack.verify_version(version).await?;
    ensure!(
        manifest.job_id.map(|j| j.to_string()).as_deref() == job["id"].as_str(),
        "v{version}'s manifest names job {:?}, not {}",
        manifest.job_id,
        job["id"]
    );
    let succeeded: Vec<Value> = events(job)
        .into_iter()
        .filter(|e| e["type"] == "succeeded")
        .collect();
    ensure!(
        succeeded.len() == 1,
        "{} succeeded events recorded (only the holder's count): {:?}",
        succeeded.len(),
        event_types(job)
    );
    let attempt = manifest.attempt_id.map(|a| a.to_string());
    ensure!(
        attempt.as_deref() == succeeded[0]["attempt_id"].as_str(),
        "v{version} was committed from attempt {attempt:?}, but the recorded succeeded is from \
         {}",
        succeeded[0]["attempt_id"]
    );
    Ok(manifest)
}
