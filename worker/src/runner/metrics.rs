//! The worker's Prometheus metrics, served at `/metrics` on `worker.listen` (see `serve`).
//!
//! Counters and histograms are updated as things happen; gauges that describe the present (busy
//! slots, each running job's phase, checkpoint age and throughput, whether the broker and S3
//! answer) are recomputed on every scrape from the jobs registered here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use refit_proto::{AttemptId, JobId};

use super::report::JobStatus;

/// How an attempt ended, as counted by `refit_worker_jobs_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The version was uploaded and reported.
    Succeeded,
    /// Failed, permanently or transiently.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Handed back (shutdown, or S3/the broker stayed away).
    Released,
    /// The lease was taken back (it lapsed, or another attempt holds the job).
    Revoked,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Released => "released",
            Outcome::Revoked => "revoked",
        }
    }
}

/// A job running here, as the scrape sees it.
struct Running {
    job_id: String,
    model: String,
    status: JobStatus,
}

/// The worker's metrics and the running jobs they describe.
pub struct WorkerMetrics {
    registry: Registry,
    jobs: IntCounterVec,
    phase_duration: HistogramVec,
    /// Optimiser steps taken here (every job).
    pub(crate) train_steps: IntCounter,
    /// Training examples processed here (every job, every epoch).
    pub(crate) train_examples: IntCounter,
    busy_slots: IntGauge,
    job_phase: IntGaugeVec,
    checkpoint_age: GaugeVec,
    examples_per_sec: GaugeVec,
    broker_connected: IntGauge,
    storage_up: IntGauge,
    running: Mutex<HashMap<AttemptId, Running>>,
}

/// Whether the broker and S3 answer, read at each scrape.
pub(crate) struct Connectivity {
    pub broker: bool,
    pub storage: bool,
}

impl WorkerMetrics {
    /// Registers every metric; `info` labels the `refit_worker_info` series.
    pub(crate) fn new(worker: &str, pool: &str, device: &str, slots: usize) -> Self {
        let r = Registry::new();
        let info = int_gauge_vec(
            &r,
            "refit_worker_info",
            "This worker: its id, pool, device and refit version (always 1).",
            &["worker", "pool", "device", "version"],
        );
        info.with_label_values(&[worker, pool, device, env!("CARGO_PKG_VERSION")])
            .set(1);
        let slot_count = int_gauge(&r, "refit_worker_slots", "Jobs this worker runs at once.");
        slot_count.set(i64::try_from(slots).unwrap_or(i64::MAX));
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        Self {
            jobs: IntCounterVec::new(
                Opts::new(
                    "refit_worker_jobs_total",
                    "Attempts this worker ran to an end, by outcome (succeeded, failed, \
                     cancelled, released: handed back, revoked: the lease was taken back).",
                ),
                &["outcome"],
            )
            .map(|c| register(&r, c))
            .expect("valid metric"),
            phase_duration: HistogramVec::new(
                HistogramOpts::new(
                    "refit_worker_phase_duration_seconds",
                    "Time a succeeded attempt spent per phase (download, load, train, evaluate, \
                     export, upload).",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ]),
                &["phase"],
            )
            .map(|h| register(&r, h))
            .expect("valid metric"),
            train_steps: register(
                &r,
                IntCounter::new(
                    "refit_worker_train_steps_total",
                    "Optimiser steps trained by this worker.",
                )
                .expect("valid metric"),
            ),
            train_examples: register(
                &r,
                IntCounter::new(
                    "refit_worker_train_examples_total",
                    "Training examples processed by this worker (rate(): its throughput).",
                )
                .expect("valid metric"),
            ),
            busy_slots: int_gauge(&r, "refit_worker_busy_slots", "Jobs running here now."),
            job_phase: int_gauge_vec(
                &r,
                "refit_worker_job_phase",
                "Each running job's current phase (always 1): download, load, train, \
                 checkpoint, evaluate, export, upload.",
                &["job_id", "model", "phase"],
            ),
            checkpoint_age: float_gauge_vec(
                &r,
                "refit_worker_checkpoint_age_seconds",
                "Seconds since each running job's latest resume checkpoint (since the attempt \
                 began when it has none).",
                &["job_id", "model"],
            ),
            examples_per_sec: float_gauge_vec(
                &r,
                "refit_worker_job_examples_per_second",
                "Each training job's latest throughput.",
                &["job_id", "model"],
            ),
            broker_connected: int_gauge(
                &r,
                "refit_worker_broker_connected",
                "1 while the connection to RabbitMQ is up, else 0.",
            ),
            storage_up: int_gauge(
                &r,
                "refit_worker_storage_up",
                "1 while S3 answers, 0 while it does not (jobs then wait, and none is taken).",
            ),
            running: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// A granted attempt begins: the scrape shows it until [`WorkerMetrics::end`].
    pub(crate) fn begin(&self, attempt: AttemptId, job_id: JobId, model: &str, status: JobStatus) {
        self.running_jobs().insert(
            attempt,
            Running {
                job_id: job_id.to_string(),
                model: model.to_owned(),
                status,
            },
        );
    }

    /// The attempt ended this way.
    pub(crate) fn end(&self, attempt: AttemptId, outcome: Outcome) {
        self.running_jobs().remove(&attempt);
        self.jobs.with_label_values(&[outcome.as_str()]).inc();
    }

    /// A succeeded attempt's time per phase.
    pub(crate) fn observe_timings(&self, timings: &BTreeMap<String, f64>) {
        for (phase, secs) in timings {
            if phase != "total" {
                self.phase_duration
                    .with_label_values(&[phase.as_str()])
                    .observe(*secs);
            }
        }
    }

    fn running_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptId, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recomputes the present-state gauges and renders every metric (text format 0.0.4).
    pub(crate) fn render(&self, now: Connectivity) -> String {
        self.broker_connected.set(i64::from(now.broker));
        self.storage_up.set(i64::from(now.storage));
        self.job_phase.reset();
        self.checkpoint_age.reset();
        self.examples_per_sec.reset();
        {
            let running = self.running_jobs();
            self.busy_slots
                .set(i64::try_from(running.len()).unwrap_or(i64::MAX));
            for job in running.values() {
                let (phase, checkpoint_age) = job.status.snapshot();
                let ids = [job.job_id.as_str(), job.model.as_str()];
                self.job_phase
                    .with_label_values(&[ids[0], ids[1], phase])
                    .set(1);
                self.checkpoint_age
                    .with_label_values(&ids)
                    .set(checkpoint_age.unwrap_or_else(|| job.status.age_secs()));
                if let Some(rate) = job.status.examples_per_sec() {
                    self.examples_per_sec.with_label_values(&ids).set(rate);
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_shows_its_phase_until_it_ends() {
        let m = WorkerMetrics::new("w1", "default", "cpu", 2);
        let attempt = AttemptId::new();
        let status = JobStatus::new();
        status.set_phase("train");
        status.set_examples_per_sec(1234.5);
        m.begin(attempt, JobId::new(), "financial", status);
        m.train_steps.inc_by(7);
        let text = m.render(Connectivity {
            broker: true,
            storage: false,
        });
        assert!(text.contains("refit_worker_busy_slots 1"), "{text}");
        assert!(text.contains("phase=\"train\"} 1"), "{text}");
        assert!(text.contains("refit_worker_train_steps_total 7"), "{text}");
        assert!(text.contains("refit_worker_storage_up 0"), "{text}");
        assert!(text.contains("refit_worker_broker_connected 1"), "{text}");
        assert!(
            text.contains("refit_worker_job_examples_per_second{"),
            "{text}"
        );
        assert!(text.contains("refit_worker_slots 2"), "{text}");
        assert!(
            text.contains(r#"refit_worker_info{device="cpu",pool="default","#),
            "{text}"
        );

        m.end(attempt, Outcome::Succeeded);
        let text = m.render(Connectivity {
            broker: true,
            storage: true,
        });
        assert!(text.contains("refit_worker_busy_slots 0"), "{text}");
        assert!(!text.contains("refit_worker_job_phase{"), "{text}");
        assert!(
            text.contains(r#"refit_worker_jobs_total{outcome="succeeded"} 1"#),
            "{text}"
        );
    }
}
