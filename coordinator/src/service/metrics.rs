//! Prometheus metrics (`GET /metrics`, text format 0.0.4, clean under `promtool check metrics`).
//!
//! Counters and histograms are updated as things happen; gauges that describe the present (queue
//! depths, jobs by state, heartbeat and checkpoint ages) are recomputed on every scrape.

use chrono::Utc;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use refit_proto::decision::DecisionReport;

use super::App;
use crate::store::JobFilter;
use refit_proto::wire::JobState;

/// The coordinator's metrics.
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    pub(crate) events: IntCounterVec,
    pub(crate) job_duration: HistogramVec,
    pub(crate) phase_duration: HistogramVec,
    pub(crate) dead_lettered: IntCounter,
    pub(crate) undecodable_messages: IntCounter,
    pub(crate) schedule_runs: IntCounterVec,
    pub(crate) outbox_jobs: IntGauge,
    pub(crate) claims: IntCounterVec,
    pub(crate) events_dropped: IntCounterVec,
    pub(crate) lease_lapses: IntCounterVec,
    pub(crate) handbacks: IntCounter,
    pub(crate) commits: IntCounterVec,
    pub(crate) promotions: IntCounterVec,
    pub(crate) recovered_jobs: IntCounter,
    pub(crate) republished: IntCounter,
    pub(crate) active: IntGauge,
    scrape: tokio::sync::Mutex<()>,
    queue_ready: prometheus::IntGaugeVec,
    queue_unacked: prometheus::IntGaugeVec,
    queue_consumers: prometheus::IntGaugeVec,
    broker_up: IntGauge,
    jobs: prometheus::IntGaugeVec,
    heartbeat_age: prometheus::GaugeVec,
    workers: prometheus::IntGaugeVec,
    checkpoint_age: prometheus::GaugeVec,
    pool_jobs: prometheus::IntGaugeVec,
    pool_demand: prometheus::IntGaugeVec,
    pub(crate) http_requests: IntCounterVec,
    pub(crate) http_duration: HistogramVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    let g = prometheus::IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn float_gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let dead_lettered = single(
            "refit_jobs_dead_lettered_total",
            "Job messages dead-lettered (rejected by a worker or past the delivery limit).",
        );
        let undecodable_messages = single(
            "refit_undecodable_messages_total",
            "Messages on the events queue that could not be decoded and were dropped.",
        );
        let outbox_jobs = IntGauge::new(
            "refit_outbox_jobs",
            "Stored jobs not yet published to the broker.",
        )
        .expect("valid metric");
        r.register(Box::new(outbox_jobs.clone()))
            .expect("unique metric");
        let handbacks = single(
            "refit_job_handbacks_total",
            "Jobs a worker gave back unfinished (shutting down); queued again, not counted as \
             failures.",
        );
        let republished = single(
            "refit_jobs_republished_total",
            "Published jobs that did not start and were missing from their queue (a lost \
             message), published again.",
        );
        let recovered_jobs = single(
            "refit_jobs_recovered_total",
            "Jobs re-created from their reservations in the object store (the job store had \
             lost them).",
        );
        let active = IntGauge::new(
            "refit_coordinator_active",
            "1 while this coordinator holds the events queue (grants leases, publishes, \
             commits), 0 while it stands by.",
        )
        .expect("valid metric");
        r.register(Box::new(active.clone())).expect("unique metric");
        let broker_up = IntGauge::new(
            "refit_broker_up",
            "1 when the broker answered the last scrape's queue queries, else 0.",
        )
        .expect("valid metric");
        r.register(Box::new(broker_up.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        Self {
            decisions: counter(
                &r,
                "refit_decisions_total",
                "Fine-tune decisions by outcome and reason code (reason none: a plain fine-tune).",
                &["outcome", "reason"],
            ),
            events: counter(
                &r,
                "refit_events_total",
                "Worker events recorded, by type.",
                &["type"],
            ),
            job_duration: histogram(
                &r,
                "refit_job_duration_seconds",
                "Time from submission to a final state, by mode and final state.",
                &["mode", "state"],
                vec![
                    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                    14400.0,
                ],
            ),
            phase_duration: histogram(
                &r,
                "refit_job_phase_duration_seconds",
                "Time a succeeded job spent per phase: queue_wait (submitted to first lease), \
                 download, load, train, evaluate, export, upload.",
                &["phase"],
                vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ],
            ),
            schedule_runs: counter(
                &r,
                "refit_schedule_runs_total",
                "Scheduled retraining runs by schedule and outcome.",
                &["schedule", "outcome"],
            ),
            queue_ready: gauge(
                &r,
                "refit_queue_messages_ready",
                "Messages waiting for a consumer, per queue (pool: the job queues' pool, empty \
                 for the others).",
                &["queue", "pool"],
            ),
            queue_unacked: gauge(
                &r,
                "refit_queue_messages_unacked",
                "Messages delivered and not yet acknowledged, per queue (management API). A job \
                 leaves its queue when its lease is granted: see refit_pool_demand.",
                &["queue", "pool"],
            ),
            queue_consumers: gauge(
                &r,
                "refit_queue_consumers",
                "Consumers attached, per queue.",
                &["queue", "pool"],
            ),
            pool_jobs: gauge(
                &r,
                "refit_pool_jobs",
                "Unfinished jobs per pool by state (queued, running, stalled), from the job store; \
                 every pool with such a job or a worker seen in the last hour.",
                &["pool", "state"],
            ),
            pool_demand: gauge(
                &r,
                "refit_pool_demand",
                "Worker slots a pool needs now: its queued, running and stalled jobs (what an \
                 autoscaler should follow; a running job is no longer in any queue).",
                &["pool"],
            ),
            http_requests: counter(
                &r,
                "refit_http_requests_total",
                "HTTP requests served, by method, route (the route's pattern; unmatched for \
                 none) and status.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                &r,
                "refit_http_request_duration_seconds",
                "Time to serve an HTTP request, by method and route.",
                &["method", "route"],
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            jobs: gauge(
                &r,
                "refit_jobs",
                "Jobs in the job store by state.",
                &["state"],
            ),
            heartbeat_age: float_gauge(
                &r,
                "refit_worker_heartbeat_age_seconds",
                "Seconds since each worker's latest event (workers seen in the last hour).",
                &["worker"],
            ),
            workers: gauge(
                &r,
                "refit_workers",
                "Workers seen in the last hour by status (busy, idle, lost, stopping, stopped).",
                &["status"],
            ),
            checkpoint_age: float_gauge(
                &r,
                "refit_job_checkpoint_age_seconds",
                "Seconds since each running job's latest resume checkpoint (since its start \
                 when it has none).",
                &["job_id", "model"],
            ),
            claims: counter(
                &r,
                "refit_claims_total",
                "Claims of job leases by answer (granted, refused).",
                &["answer"],
            ),
            events_dropped: counter(
                &r,
                "refit_events_dropped_total",
                "Events not recorded, by reason: unknown_job (no such job), no_attempt (a worker \
                 older than leases), not_holder (an attempt that does not hold the lease).",
                &["reason"],
            ),
            lease_lapses: counter(
                &r,
                "refit_lease_lapses_total",
                "Leases that lapsed (no event from the holder in time), by what became of the \
                 job (requeued, dead, cancelled).",
                &["outcome"],
            ),
            commits: counter(
                &r,
                "refit_commits_total",
                "Version commits by outcome (committed, retried: the upload was unusable, \
                 conflict: the number belongs to another job).",
                &["outcome"],
            ),
            promotions: counter(
                &r,
                "refit_promotions_total",
                "Alias moves asked of the promotion gate, by alias and outcome: promoted and \
                 refused (a job's promote_to), manual and forced (PUT .../aliases/...; forced: \
                 the gate failed), error (the gate could not be asked).",
                &["alias", "outcome"],
            ),
            handbacks,
            recovered_jobs,
            republished,
            active,
            dead_lettered,
            undecodable_messages,
            outbox_jobs,
            broker_up,
            scrape: tokio::sync::Mutex::new(()),
            registry: r,
        }
    }

    /// Counts a decision.
    pub fn record_decision(&self, report: &DecisionReport) {
        let outcome = report.decision.as_str();
        let codes = report.codes();
        if codes.is_empty() {
            self.decisions.with_label_values(&[outcome, "none"]).inc();
        }
        for code in codes {
            self.decisions.with_label_values(&[outcome, code]).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The pools in use (see [`crate::store::Store::pool_load`]) with their unfinished jobs by
/// state; the configured pool always (with zero counts when the store does not answer).
pub(crate) async fn pools_in_use(
    app: &App,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
    let mut pools = app
        .store
        .pool_load(Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap_or_default();
    pools
        .entry(app.config.queue.pool.clone())
        .or_insert_with(|| {
            ["queued", "running", "stalled"]
                .into_iter()
                .map(|s| (s.to_owned(), 0))
                .collect()
        });
    pools
}

/// Recomputes the present-state gauges and renders every metric.
pub async fn render(app: &App) -> String {
    let m = &app.metrics;
    let _one_scrape_at_a_time = m.scrape.lock().await;

    m.jobs.reset();
    if let Ok(counts) = app.store.count_by_state().await {
        for (state, n) in counts {
            m.jobs
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    // From the store, so that it stays true while the outbox cannot run (broker away, standby).
    if let Ok(n) = app.store.count_outbox().await {
        m.outbox_jobs.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    let pools = pools_in_use(app).await;
    m.pool_jobs.reset();
    m.pool_demand.reset();
    for (pool, counts) in &pools {
        for (state, n) in counts {
            m.pool_jobs
                .with_label_values(&[pool.as_str(), state.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let demand: u64 = counts.values().sum();
        m.pool_demand
            .with_label_values(&[pool.as_str()])
            .set(i64::try_from(demand).unwrap_or(i64::MAX));
    }
    let names: Vec<String> = pools.keys().cloned().collect();
    let topology = app.broker.topology();
    let pool_of = |queue: &str| {
        names
            .iter()
            .find(|p| topology.job_queues_for(p).iter().any(|q| q == queue))
            .map_or("", String::as_str)
    };
    m.queue_ready.reset();
    m.queue_unacked.reset();
    m.queue_consumers.reset();
    match app.queues.snapshot(app, &names).await {
        Ok(queues) => {
            m.broker_up.set(1);
            for q in queues {
                let label = [q.name.as_str(), pool_of(&q.name)];
                m.queue_ready
                    .with_label_values(&label)
                    .set(i64::try_from(q.ready).unwrap_or(i64::MAX));
                m.queue_consumers
                    .with_label_values(&label)
                    .set(i64::try_from(q.consumers).unwrap_or(i64::MAX));
                if let Some(unacked) = q.unacked {
                    m.queue_unacked
                        .with_label_values(&label)
                        .set(i64::try_from(unacked).unwrap_or(i64::MAX));
                }
            }
        }
        Err(_) => m.broker_up.set(0),
    }

    m.heartbeat_age.reset();
    m.workers.reset();
    let stall = app.config.coordinator.stall_after_secs;
    if let Ok(workers) = app
        .store
        .workers(Utc::now() - chrono::Duration::hours(1), stall)
        .await
    {
        for status in ["busy", "idle", "lost", "stopping", "stopped"] {
            let n = workers.iter().filter(|w| w.status == status).count();
            m.workers
                .with_label_values(&[status])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for w in workers {
            m.heartbeat_age
                .with_label_values(&[w.id.as_str()])
                .set(w.heartbeat_age_secs);
        }
    }

    m.checkpoint_age.reset();
    for state in [JobState::Running, JobState::Stalled] {
        let filter = JobFilter {
            state: Some(state),
            limit: 500,
            ..JobFilter::default()
        };
        let Ok(jobs) = app.store.list_jobs(filter).await else {
            continue;
        };
        let now = Utc::now();
        for job in jobs {
            let Some(since) = job.last_checkpoint_at.or(job.started_at) else {
                continue;
            };
            let age = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
            m.checkpoint_age
                .with_label_values(&[job.id.as_str(), job.model.as_str()])
                .set(age);
        }
    }

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("Prometheus text is UTF-8")
}
