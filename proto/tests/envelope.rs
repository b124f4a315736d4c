//! The envelope's contract: committed golden samples still decode, and no input makes the
//! decoder panic.
//!
//! The samples in `tests/golden/*.msgpack` were written by this test with `REFIT_BLESS=1`
//! (`REFIT_BLESS=1 cargo test -p refit-proto --test envelope`). Never re-bless a sample to make
//! a change pass: a message written by an older build must still decode in a newer one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use refit_proto::manifest::FileEntry;
use refit_proto::{
    AttemptId, Budget, Control, DatasetRef, DecodeError, ErrorKind, Event, EventKind, FileRef,
    Hyperparams, JobId, JobSpec, Message, Metrics, Mode, ModelName, ResumePoint, Version, WorkerId,
    decode, encode,
};
use uuid::Uuid;

fn job_id() -> JobId {
    JobId::from_uuid(Uuid::parse_str("0192f3a0-7b2c-7d4e-9f10-123456789abc").unwrap())
}

fn sample_job() -> JobSpec {
    JobSpec {
        id: job_id(),
        model: ModelName::new("financial").unwrap(),
        mode: Mode::Finetune,
        base_version: Some(Version::new(1).unwrap()),
        output_version: Version::new(2).unwrap(),
        dataset: DatasetRef {
            key: format!("datasets/sha256/{}.yml", "ab".repeat(32)),
            sha256: "ab".repeat(32),
        },
        eval_dataset: Some(DatasetRef {
            key: format!("datasets/sha256/{}.yml", "cd".repeat(32)),
            sha256: "cd".repeat(32),
        }),
        hyperparams: Hyperparams {
            budget: Budget::EpochFraction(0.3),
            batch_size: 64,
            final_batch_size: None,
            learning_rate: 0.001,
            seed: 42,
        },
        priority: 0,
        submitted_at: Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap(),
        deadline: None,
        promote_to: None,
    }
}

fn event(kind: EventKind) -> Event {
    Event {
        job_id: job_id(),
        attempt: 1,
        worker_id: WorkerId::new("worker-a-1").unwrap(),
        at: Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 5).unwrap(),
        kind,
        attempt_id: None,
        fence: None,
    }
}

fn attempt_id() -> AttemptId {
    AttemptId::from_uuid(Uuid::parse_str("5f0c1c9e-3a4b-4c2d-8e1f-0a1b2c3d4e5f").unwrap())
}

/// An event of an attempt holding a lease (fields added with leases).
fn leased(kind: EventKind) -> Event {
    Event {
        attempt_id: Some(attempt_id()),
        fence: Some(3),
        ..event(kind)
    }
}

fn resume_point() -> ResumePoint {
    ResumePoint {
        attempt_id: attempt_id(),
        epochs_done: 10,
        step: 600,
        checkpoint: FileRef {
            key: format!(
                "jobs/{}/attempts/{}/resume/checkpoint.safetensors",
                job_id(),
                attempt_id()
            ),
            sha256: "ef".repeat(32),
        },
        vocab: FileRef {
            key: format!(
                "jobs/{}/attempts/{}/resume/vocab.json",
                job_id(),
                attempt_id()
            ),
            sha256: "01".repeat(32),
        },
    }
}

fn sample_events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "event_started",
            event(EventKind::Started {
                resumed_from_epoch: Some(12.0),
                total_epochs: 30.0,
            }),
        ),
        (
            "event_progress",
            event(EventKind::Progress {
                epoch: 3.5,
                step: 210,
                loss: 0.42,
                examples_per_sec: 9100.0,
                eta_secs: Some(4.2),
            }),
        ),
        (
            "event_heartbeat",
            event(EventKind::Heartbeat {
                phase: "train".into(),
                checkpoint_age_secs: Some(8.0),
                trouble: None,
            }),
        ),
        (
            "event_checkpointed",
            event(EventKind::Checkpointed {
                epoch: 10.0,
                step: 600,
                resume: None,
            }),
        ),
        (
            "event_succeeded",
            event(EventKind::Succeeded {
                version: Version::new(2).unwrap(),
                metrics: Some(Metrics {
                    intent_accuracy: 0.9,
                    intent_macro_f1: 0.88,
                    intent_weighted_f1: 0.89,
                    entity_precision: 0.95,
                    entity_recall: 0.93,
                    entity_f1: 0.94,
                    examples: 115,
                }),
                timings: BTreeMap::from([("train".to_owned(), 3.25), ("upload".to_owned(), 0.5)]),
                files: BTreeMap::new(),
            }),
        ),
        (
            "event_failed",
            event(EventKind::Failed {
                error: "dataset sha256 mismatch".into(),
                error_kind: ErrorKind::Permanent,
            }),
        ),
        ("event_cancelled", event(EventKind::Cancelled)),
        // With leases (samples added then; the ones above must still decode without the fields).
        ("event_claim", event(EventKind::Claim)),
        (
            "event_released",
            leased(EventKind::Released {
                reason: "the worker is shutting down".into(),
            }),
        ),
        (
            "event_checkpointed_leased",
            leased(EventKind::Checkpointed {
                epoch: 10.0,
                step: 600,
                resume: Some(resume_point()),
            }),
        ),
        (
            "event_succeeded_leased",
            leased(EventKind::Succeeded {
                version: Version::new(2).unwrap(),
                metrics: None,
                timings: BTreeMap::new(),
                files: BTreeMap::from([(
                    "model.onnx".to_owned(),
                    FileEntry {
                        sha256: "aa".repeat(32),
                        size: 1234,
                        path: None,
                    },
                )]),
            }),
        ),
    ]
}

fn sample_controls() -> Vec<(&'static str, Control)> {
    vec![
        ("control_cancel", Control::Cancel { job_id: job_id() }),
        (
            "control_granted",
            Control::Granted {
                job_id: job_id(),
                attempt_id: attempt_id(),
                fence: 3,
                lease_secs: 60,
                resume: Some(resume_point()),
            },
        ),
        (
            "control_refused",
            Control::Refused {
                job_id: job_id(),
                attempt_id: attempt_id(),
                reason: "another attempt holds the job".into(),
            },
        ),
        (
            "control_revoked",
            Control::Revoked {
                job_id: job_id(),
                attempt_id: attempt_id(),
                reason: "the lease expired".into(),
            },
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden<M: Message + PartialEq + std::fmt::Debug>(name: &str, sample: &M) {
    let path = golden_dir().join(format!("{name}.msgpack"));
    if std::env::var_os("REFIT_BLESS").is_some() {
        std::fs::write(&path, encode(sample)).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "golden sample {} missing ({e}); see this file's docs",
            path.display()
        )
    });
    let decoded: M =
        decode(&bytes).unwrap_or_else(|e| panic!("golden sample {name} no longer decodes: {e}"));
    assert_eq!(
        &decoded, sample,
        "golden sample {name} decodes to something else"
    );
}

#[test]
fn golden_samples_still_decode() {
    check_golden("job", &sample_job());
    // A job with a growing batch size (`final_batch_size`, added after `job` was written: that
    // sample, without it, decodes to `None`).
    let mut growing = sample_job();
    growing.hyperparams.final_batch_size = Some(256);
    check_golden("job_growing_batch", &growing);
    for (name, event) in sample_events() {
        check_golden(name, &event);
    }
    for (name, control) in sample_controls() {
        check_golden(name, &control);
    }
}

#[test]
fn envelopes_use_named_fields() {
    // Named fields (struct-as-map) are what make adding fields safe; make sure they stay on.
    let bytes = encode(&sample_job());
    let needle = b"output_version";
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle),
        "field names must be encoded"
    );
}

#[test]
fn a_message_of_another_kind_is_refused() {
    let bytes = encode(&sample_job());
    assert!(matches!(
        decode::<Event>(&bytes),
        Err(DecodeError::WrongKind {
            expected: "event",
            ..
        })
    ));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<JobSpec>(&bytes);
        let _ = decode::<Event>(&bytes);
        let _ = decode::<Control>(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&sample_job());
        let i = index.index(bytes.len());
        bytes[i] = byte;
        let _ = decode::<JobSpec>(&bytes);
        let len = cut.index(bytes.len());
        prop_assert!(decode::<JobSpec>(&bytes[..len]).is_err());
    }
}
