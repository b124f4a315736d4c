//! Unit tests of events and leases in the job store (in memory, with explicit receive times).

use std::collections::BTreeMap;

use chrono::Duration;
use refit_proto::manifest::FileEntry;
use refit_proto::{FileRef, Metrics, ResumePoint, Version, WorkerId};

use super::super::jobs::tests::new_job;
use super::super::leases::Lapse;
use super::*;

const SETTINGS: LeaseSettings = LeaseSettings {
    lease_secs: 10,
    max_failures: 3,
};

fn event(job: &str, attempt: AttemptId, fence: Option<u64>, kind: EventKind) -> Event {
    Event {
        job_id: job.parse().unwrap(),
        attempt: 1,
        worker_id: WorkerId::new("w-1").unwrap(),
        at: Utc::now(),
        kind,
        attempt_id: Some(attempt),
        fence,
    }
}

fn inbox(name: &str) -> Option<String> {
    Some(format!("amq.gen-{name}"))
}

fn beat() -> EventKind {
    EventKind::Heartbeat {
        phase: "train".into(),
        checkpoint_age_secs: None,
        trouble: None,
    }
}

async fn new_queued(store: &Store) -> String {
    let (job, _) = store.insert_job(new_job("m"), None).await.unwrap();
    job.view.id
}

async fn state(store: &Store, id: &str) -> JobState {
    store.job(id.to_owned()).await.unwrap().unwrap().view.state
}

/// Claims for `attempt` at `now`; the fence granted, or `None` when refused.
async fn claim(store: &Store, id: &str, attempt: AttemptId, now: DateTime<Utc>) -> Option<u64> {
    let outcome = store
        .record_event_at(
            event(id, attempt, None, EventKind::Claim),
            inbox("a"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    match outcome.reply {
        Some(Control::Granted {
            fence, attempt_id, ..
        }) => {
            assert_eq!(attempt_id, attempt);
            Some(fence)
        }
        Some(Control::Refused { .. }) => None,
        other => panic!("a claim answered with {other:?}"),
    }
}

#[tokio::test]
async fn one_attempt_holds_a_job_and_duplicates_are_refused() {
    let store = Store::in_memory().unwrap();
    let id = new_queued(&store).await;
    let now = Utc::now();
    let (a, b) = (AttemptId::new(), AttemptId::new());
    assert_eq!(claim(&store, &id, a, now).await, Some(1));
    // A duplicate delivery's attempt is refused; the holder's repeated claim gets its grant.
    assert_eq!(claim(&store, &id, b, now).await, None);
    assert_eq!(claim(&store, &id, a, now).await, Some(1));
    assert_eq!(state(&store, &id).await, JobState::Running);

    // Only the holder's events count; the other attempt is told it holds nothing.
    let outcome = store
        .record_event_at(event(&id, b, Some(1), beat()), inbox("b"), SETTINGS, now)
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("not_holder"));
    assert!(matches!(outcome.reply, Some(Control::Revoked { attempt_id, .. }) if attempt_id == b));
    // The holder with a stale fence counts for nothing either.
    let outcome = store
        .record_event_at(event(&id, a, Some(0), beat()), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("not_holder"));

    let progress = EventKind::Progress {
        epoch: 4.0,
        step: 40,
        loss: 0.5,
        examples_per_sec: 1000.0,
        eta_secs: Some(3.0),
    };
    let outcome = store
        .record_event_at(event(&id, a, Some(1), progress), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert!(outcome.recorded && outcome.dropped.is_none());
    let view = store.job(id.clone()).await.unwrap().unwrap().view;
    assert_eq!(view.worker.as_deref(), Some("w-1"));
    let p = view.progress.unwrap();
    assert_eq!((p.epoch, p.step), (4.0, 40));
    // Claims are shown with the job's events: the grant, the refusal, the repeat.
    let kinds: Vec<&str> = view.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["claim", "claim", "claim", "progress"]);
}

#[tokio::test]
async fn the_holder_reports_its_upload_and_the_commit_ends_the_job() {
    let store = Store::in_memory().unwrap();
    let id = new_queued(&store).await;
    let now = Utc::now();
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, now).await;
    let point = ResumePoint {
        attempt_id: a,
        epochs_done: 3,
        step: 30,
        checkpoint: FileRef {
            key: "jobs/x/attempts/y/resume/c.safetensors".into(),
            sha256: "aa".repeat(32),
        },
        vocab: FileRef {
            key: "jobs/x/attempts/y/resume/v.json".into(),
            sha256: "bb".repeat(32),
        },
    };
    let checkpointed = EventKind::Checkpointed {
        epoch: 3.0,
        step: 30,
        resume: Some(point.clone()),
    };
    store
        .record_event_at(
            event(&id, a, fence, checkpointed),
            inbox("a"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    let done = EventKind::Succeeded {
        version: Version::first(),
        metrics: Some(Metrics {
            intent_weighted_f1: 0.9,
            ..Default::default()
        }),
        timings: BTreeMap::from([("train".to_owned(), 1.5)]),
        files: BTreeMap::from([(
            refit_proto::keys::MANIFEST.to_owned(),
            FileEntry {
                sha256: "cc".repeat(32),
                size: 10,
                path: None,
            },
        )]),
    };
    let done = event(&id, a, fence, done);
    let outcome = store
        .record_event_at(done.clone(), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert!(outcome.commit);
    assert!(
        !store
            .record_event_at(done, inbox("a"), SETTINGS, now)
            .await
            .unwrap()
            .recorded,
        "a duplicate changes nothing"
    );
    let pending = store.pending_commits().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].attempt, pending[0].draft_sha256.as_str()),
        (a, &*"cc".repeat(32))
    );
    // While it commits, the lease does not lapse and no other attempt may claim the job.
    assert!(
        store
            .expire_leases_at(SETTINGS, now + Duration::seconds(60))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(claim(&store, &id, AttemptId::new(), now).await, None);

    assert!(store.commit_succeeded(id.clone()).await.unwrap().is_some());
    let view = store.job(id.clone()).await.unwrap().unwrap().view;
    assert_eq!(view.state, JobState::Succeeded);
    assert_eq!(view.metrics.unwrap().intent_weighted_f1, 0.9);
    assert!(store.pending_commits().await.unwrap().is_empty());
    assert!(!store.mark_dead(id.clone(), "x".into()).await.unwrap());
    // Ended: a claim is refused, and the job is waiting to be closed.
    assert_eq!(claim(&store, &id, AttemptId::new(), now).await, None);
    let closing = store.closing(10).await.unwrap();
    assert_eq!(closing.len(), 1);
    assert_eq!(closing[0].committed, Some(a));
    store.mark_closed(id.clone()).await.unwrap();
    assert!(store.closing(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_lapsed_lease_requeues_the_job_until_it_is_dead() {
    let store = Store::in_memory().unwrap();
    let id = new_queued(&store).await;
    let t0 = Utc::now();
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, t0).await;
    // Renewed by the holder's heartbeat at t0 + 8 s: alive at t0 + 12 s.
    store
        .record_event_at(
            event(&id, a, fence, beat()),
            inbox("a"),
            SETTINGS,
            t0 + Duration::seconds(8),
        )
        .await
        .unwrap();
    assert!(
        store
            .expire_leases_at(SETTINGS, t0 + Duration::seconds(12))
            .await
            .unwrap()
            .is_empty()
    );
    // Silent past the lease: let go, one failure, queued and unpublished again.
    let expired = store
        .expire_leases_at(SETTINGS, t0 + Duration::seconds(19))
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].attempt, expired[0].lapse), (a, Lapse::Requeued));
    assert_eq!(expired[0].inbox, inbox("a"));
    assert_eq!(state(&store, &id).await, JobState::Queued);
    assert_eq!(store.outbox(10).await.unwrap().len(), 1);

    // The next attempt gets a larger fence; the old holder's late events count for nothing.
    let t1 = t0 + Duration::seconds(20);
    let b = AttemptId::new();
    assert_eq!(claim(&store, &id, b, t1).await, Some(2));
    let late = store
        .record_event_at(event(&id, a, fence, beat()), inbox("a"), SETTINGS, t1)
        .await
        .unwrap();
    assert_eq!(late.dropped, Some("not_holder"));
    // A lapsed lease a new claim finds before the sweep counts just the same.
    let c = AttemptId::new();
    assert_eq!(
        claim(&store, &id, c, t1 + Duration::seconds(11)).await,
        Some(3)
    );
    // The third failure (limit 3) makes the job dead.
    let expired = store
        .expire_leases_at(SETTINGS, t1 + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(expired[0].lapse, Lapse::Dead);
    let view = store.job(id.clone()).await.unwrap().unwrap().view;
    assert_eq!(view.state, JobState::Dead);
    assert!(view.error.unwrap().contains("max_failures"), "{id}");
    assert!(view.events.iter().any(|e| e.kind == "lease_lapsed"));
}

#[tokio::test]
async fn hand_backs_requeue_without_counting_and_transient_failures_count() {
    let store = Store::in_memory().unwrap();
    let id = new_queued(&store).await;
    let now = Utc::now();
    for round in 0..5 {
        let a = AttemptId::new();
        let fence = claim(&store, &id, a, now).await;
        assert!(fence.is_some(), "round {round}");
        let released = EventKind::Released {
            reason: "shutting down".into(),
        };
        let outcome = store
            .record_event_at(event(&id, a, fence, released), inbox("a"), SETTINGS, now)
            .await
            .unwrap();
        assert!(outcome.requeued);
        assert_eq!(state(&store, &id).await, JobState::Queued);
    }
    // A worker stopping while it claims lets go of the lease it may have been granted.
    let a = AttemptId::new();
    claim(&store, &id, a, now).await;
    let released = EventKind::Released {
        reason: "shut down while claiming".into(),
    };
    let outcome = store
        .record_event_at(event(&id, a, None, released), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert!(outcome.requeued);
    // Five hand-backs and the job is as alive as before; transient failures count.
    for n in 1..=3 {
        let a = AttemptId::new();
        let fence = claim(&store, &id, a, now).await;
        let failed = EventKind::Failed {
            error: "s3 down".into(),
            error_kind: ErrorKind::Transient,
        };
        store
            .record_event_at(event(&id, a, fence, failed), inbox("a"), SETTINGS, now)
            .await
            .unwrap();
        let expected = if n < 3 {
            JobState::Queued
        } else {
            JobState::Dead
        };
        assert_eq!(state(&store, &id).await, expected, "failure {n}");
    }
    // A permanent failure ends a job at once.
    let id = new_queued(&store).await;
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, now).await;
    let failed = EventKind::Failed {
        error: "bad yaml".into(),
        error_kind: ErrorKind::Permanent,
    };
    let outcome = store
        .record_event_at(event(&id, a, fence, failed), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert_eq!(outcome.finished.map(|f| f.0), Some(JobState::Failed));
    let view = store.job(id.clone()).await.unwrap().unwrap().view;
    assert_eq!(view.error.as_deref(), Some("bad yaml"));
}

#[tokio::test]
async fn a_dead_copy_of_a_running_jobs_message_does_not_end_it_or_hide_its_failure() {
    let store = Store::in_memory().unwrap();
    let now = Utc::now();
    let id = new_queued(&store).await;
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, now).await;
    // The lease keeps a granted job, not its message: a dead-lettered copy (a redelivery past
    // the delivery limit) read before the attempt's own `failed` changes nothing.
    assert!(
        !store
            .mark_dead(id.clone(), "dead-lettered".into())
            .await
            .unwrap()
    );
    assert_eq!(state(&store, &id).await, JobState::Running);
    let failed = EventKind::Failed {
        error: "bad yaml".into(),
        error_kind: ErrorKind::Permanent,
    };
    store
        .record_event_at(event(&id, a, fence, failed), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    let view = store.job(id.clone()).await.unwrap().unwrap().view;
    assert_eq!(view.state, JobState::Failed);
    assert_eq!(view.error.as_deref(), Some("bad yaml"));
    // A queued job's dead copy (no attempt holds it) is how it dies.
    let queued = new_queued(&store).await;
    assert!(
        store
            .mark_dead(queued.clone(), "dead-lettered".into())
            .await
            .unwrap()
    );
    assert_eq!(state(&store, &queued).await, JobState::Dead);
}

#[tokio::test]
async fn cancels_reach_the_holder_and_refuse_claims() {
    let store = Store::in_memory().unwrap();
    let now = Utc::now();
    // A queued job is cancelled at once; a later claim is refused.
    let queued = new_queued(&store).await;
    store.request_cancel(queued.clone()).await.unwrap();
    assert_eq!(state(&store, &queued).await, JobState::Cancelled);
    assert_eq!(claim(&store, &queued, AttemptId::new(), now).await, None);
    // A running one: the cancel goes to the holder's inbox, and answers its every event.
    let id = new_queued(&store).await;
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, now).await;
    store.request_cancel(id.clone()).await.unwrap();
    let pending = store.pending_cancels().await.unwrap();
    assert!(pending.contains(&(id.clone(), inbox("a"))), "{pending:?}");
    let outcome = store
        .record_event_at(event(&id, a, fence, beat()), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert!(matches!(outcome.reply, Some(Control::Cancel { .. })));
    store
        .record_event_at(
            event(&id, a, fence, EventKind::Cancelled),
            inbox("a"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    assert_eq!(state(&store, &id).await, JobState::Cancelled);
}

#[tokio::test]
async fn events_of_unknown_jobs_and_old_workers_are_dropped() {
    let store = Store::in_memory().unwrap();
    let now = Utc::now();
    let stranger = refit_proto::JobId::new().to_string();
    let outcome = store
        .record_event_at(
            event(&stranger, AttemptId::new(), None, EventKind::Claim),
            inbox("a"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("unknown_job"));
    assert!(matches!(outcome.reply, Some(Control::Refused { .. })));
    assert!(store.job(stranger).await.unwrap().is_none());
    let id = new_queued(&store).await;
    let mut old = event(&id, AttemptId::new(), None, EventKind::Cancelled);
    old.attempt_id = None;
    let outcome = store
        .record_event_at(old, None, SETTINGS, now)
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("no_attempt"));
    assert_eq!(state(&store, &id).await, JobState::Queued);
}

#[tokio::test]
async fn silent_jobs_stall_and_come_back() {
    let store = Store::in_memory().unwrap();
    let id = new_queued(&store).await;
    let now = Utc::now();
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, now).await;
    assert_eq!(
        store
            .mark_stalled(Utc::now() + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(state(&store, &id).await, JobState::Stalled);
    store
        .record_event_at(event(&id, a, fence, beat()), inbox("a"), SETTINGS, now)
        .await
        .unwrap();
    assert_eq!(state(&store, &id).await, JobState::Running);
}

#[tokio::test]
async fn presence_lists_idle_workers_and_tells_stopping_stopped_and_lost() {
    let store = Store::in_memory().unwrap();
    let status = |id: &str, state, running| WorkerStatus {
        worker_id: refit_proto::WorkerId::new(id).unwrap(),
        at: Utc::now(),
        state,
        running,
        pool: "gpu".into(),
    };
    let statuses = |store: &Store| {
        let store = store.clone();
        async move {
            let mut workers = store
                .workers(Utc::now() - Duration::hours(1), 60)
                .await
                .unwrap();
            workers.sort_by(|a, b| a.id.cmp(&b.id));
            workers
                .into_iter()
                .map(|w| (w.id, w.status, w.pool))
                .collect::<Vec<_>>()
        }
    };
    let online = WorkerState::Online;
    let stopping = WorkerState::Stopping;
    let ago = |secs| Utc::now() - Duration::seconds(secs);
    for (s, received) in [
        (status("a-idle", online, 0), ago(1)),
        (status("b-busy", online, 1), ago(1)),
        (status("c-lost", online, 0), ago(90)),
        (status("d-stopping", stopping, 0), ago(1)),
        (status("e-stopped", stopping, 0), ago(90)),
    ] {
        store.record_presence_at(s, received).await.unwrap();
    }
    // Received earlier than the stored one (a redelivery): changes nothing.
    store
        .record_presence_at(status("d-stopping", online, 0), ago(30))
        .await
        .unwrap();
    let gpu = Some("gpu".to_owned());
    assert_eq!(
        statuses(&store).await,
        [
            ("a-idle", "idle"),
            ("b-busy", "busy"),
            ("c-lost", "lost"),
            ("d-stopping", "stopping"),
            ("e-stopped", "stopped"),
        ]
        .map(|(id, st)| (id.to_owned(), st.to_owned(), gpu.clone()))
    );
    // Back online after a stop.
    store
        .record_presence_at(status("e-stopped", online, 0), ago(0))
        .await
        .unwrap();
    assert_eq!(statuses(&store).await[4].1, "idle");
}

#[tokio::test]
async fn a_running_attempt_the_store_forgot_adopts_its_job_but_never_with_a_result() {
    let store = Store::in_memory().unwrap();
    // A job recovered after the store was lost: no lease, fence 0, while an attempt granted
    // fence 4 by the lost store still runs it.
    let id = new_queued(&store).await;
    let now = Utc::now();
    let (running, other, forger) = (AttemptId::new(), AttemptId::new(), AttemptId::new());

    // A result from an attempt that holds nothing is dropped, whatever its fence.
    let forged = EventKind::Failed {
        error: "forged".into(),
        error_kind: ErrorKind::Permanent,
    };
    let outcome = store
        .record_event_at(
            event(&id, forger, Some(99), forged),
            inbox("f"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("not_holder"));
    assert_eq!(state(&store, &id).await, JobState::Queued);

    // Its heartbeat adopts the job under the fence it holds…
    let outcome = store
        .record_event_at(
            event(&id, running, Some(4), beat()),
            inbox("r"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    assert!(outcome.adopted && outcome.recorded && outcome.dropped.is_none());
    assert_eq!(state(&store, &id).await, JobState::Running);
    // … so a duplicate delivery's claim is refused, and a higher fence from another attempt
    // does not take a live lease.
    assert_eq!(claim(&store, &id, other, now).await, None);
    let outcome = store
        .record_event_at(
            event(&id, forger, Some(9), beat()),
            inbox("f"),
            SETTINGS,
            now,
        )
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("not_holder"));

    // Once its lease lapses here, it is requeued and the attempt cannot come back with the same
    // fence: the next claim is granted a higher one.
    let later = now + Duration::seconds(SETTINGS.lease_secs as i64 + 1);
    let expired = store.expire_leases_at(SETTINGS, later).await.unwrap();
    assert_eq!(expired.len(), 1);
    let outcome = store
        .record_event_at(
            event(&id, running, Some(4), beat()),
            inbox("r"),
            SETTINGS,
            later,
        )
        .await
        .unwrap();
    assert_eq!(outcome.dropped, Some("not_holder"));
    assert_eq!(claim(&store, &id, other, later).await, Some(5));
    let view = store.job(id.clone()).await.unwrap().unwrap().view;
    assert_eq!(view.failures, 1);
    let kinds: Vec<&str> = view.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "lease_adopted",
            "heartbeat",
            "claim",
            "lease_lapsed",
            "claim"
        ]
    );
}

#[tokio::test]
async fn progress_and_heartbeats_are_kept_to_the_newest_and_events_come_in_pages() {
    let store = Store::in_memory().unwrap();
    let now = Utc::now();
    let id = new_queued(&store).await;
    let a = AttemptId::new();
    let fence = claim(&store, &id, a, now).await;
    let sent = KEEP_PROGRESS_EVENTS as usize + 300;
    for n in 0..sent {
        let mut beat = event(&id, a, fence, beat());
        // Distinct events (the same one twice is a duplicate).
        beat.at = now + Duration::milliseconds(n as i64);
        store
            .record_event_at(beat, inbox("a"), SETTINGS, now)
            .await
            .unwrap();
    }
    let job = store.job(id.clone()).await.unwrap().unwrap().view;
    let beats: Vec<_> = job
        .events
        .iter()
        .filter(|e| e.kind == "heartbeat")
        .collect();
    let keep = KEEP_PROGRESS_EVENTS as usize;
    assert!(
        beats.len() >= keep && beats.len() < keep + 64,
        "{} heartbeats kept of {sent}",
        beats.len()
    );
    // The newest are the ones kept; the claim is kept whatever its age.
    // (Stored to the microsecond, so within a millisecond.)
    let newest = (beats.last().unwrap().at - now).num_milliseconds();
    assert!((newest - (sent as i64 - 1)).abs() <= 1, "{newest}");
    assert!(job.events.iter().any(|e| e.kind == "claim"));
    assert!(!job.more_events);

    // Pages: after a seq, at most a limit, and whether more follow.
    let first = store
        .job_page(id.clone(), 0, 10)
        .await
        .unwrap()
        .unwrap()
        .view;
    assert_eq!(first.events.len(), 10);
    assert!(first.more_events);
    let last_seq = first.events.last().unwrap().seq;
    let next = store
        .job_page(id.clone(), last_seq, 10)
        .await
        .unwrap()
        .unwrap()
        .view;
    assert!(next.events[0].seq > last_seq);
    let none = store.job_page(id, 0, 0).await.unwrap().unwrap().view;
    assert!(none.events.is_empty() && none.more_events);
}
