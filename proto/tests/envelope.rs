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
use refit_proto::{
    Budget, Control, DatasetRef, DecodeError, ErrorKind, Event, EventKind, Hyperparams, JobId,
    JobSpec, Message, Metrics, Mode, ModelName, Version, WorkerId, decode, encode,
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
    }
}

fn event(kind: EventKind) -> Event {
    Event {
        job_id: job_id(),
        attempt: 1,
        worker_id: WorkerId::new("worker-a-1").unwrap(),
        at: Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 5).unwrap(),
        kind,
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
            }),
        ),
        (
            "event_checkpointed",
            event(EventKind::Checkpointed {
                epoch: 10.0,
                step: 600,
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
    check_golden("control_cancel", &Control::Cancel { job_id: job_id() });
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
