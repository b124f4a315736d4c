//! Unit tests of the registry on an in-memory store.

use refit_proto::data::TrainingData;
use refit_proto::reservation::{Reservation, ReservationState};
use refit_proto::{ArchSpec, AttemptId, Budget, DatasetRef, Hyperparams, JobId, JobSpec, Mode};

use super::*;
use crate::storage::MemoryStore;

fn name() -> ModelName {
    ModelName::new("demo").unwrap()
}

fn version_files(version: u32) -> VersionFiles {
    let mut vocab = Vocabulary::new(ArchSpec::default().featurizer);
    vocab.fit(["hello there"]);
    let mut manifest = Manifest::for_data(
        name(),
        Version::new(version).unwrap(),
        &TrainingData::default(),
        ArchSpec::default(),
    );
    manifest.mode = Mode::Scratch;
    VersionFiles::new(
        manifest,
        vec![
            (keys::CHECKPOINT, b"checkpoint bytes".to_vec()),
            (keys::MODEL_ONNX, b"onnx bytes".to_vec()),
            (keys::VOCAB, vocab.to_json()),
        ],
    )
}

#[tokio::test]
async fn written_versions_read_back_and_corruption_is_caught() {
    let store = Arc::new(MemoryStore::new());
    let registry = Registry::new(store.clone());
    registry.write_version(&version_files(1)).await.unwrap();
    assert_eq!(
        registry.versions(&name()).await.unwrap(),
        vec![Version::first()]
    );
    let back = registry
        .read_version(&name(), Version::first())
        .await
        .unwrap();
    assert_eq!(back.checkpoint.as_ref(), b"checkpoint bytes");
    assert!(back.vocab.words().contains("hello"));

    let missing = registry
        .read_version(&name(), Version::new(2).unwrap())
        .await;
    assert!(matches!(missing, Err(RegistryError::NotFound { .. })));

    registry.verify(&name(), Version::first()).await.unwrap();

    let key = keys::version_file(&name(), Version::first(), keys::CHECKPOINT).unwrap();
    store
        .put(&key, Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    let corrupt = registry.read_version(&name(), Version::first()).await;
    assert!(
        matches!(corrupt, Err(RegistryError::Corrupt { .. })),
        "{corrupt:?}"
    );
    let corrupt = registry.verify(&name(), Version::first()).await;
    assert!(
        matches!(&corrupt, Err(RegistryError::Corrupt { reason, .. }) if reason.contains(keys::CHECKPOINT)),
        "{corrupt:?}"
    );
}

#[tokio::test]
async fn a_version_without_its_manifest_does_not_exist() {
    let store = Arc::new(MemoryStore::new());
    let registry = Registry::new(store.clone());
    let files = version_files(1);
    // Files written, manifest not (the writer died in between).
    for (file, bytes) in &files.files {
        let key = keys::version_file(&name(), Version::first(), file).unwrap();
        store.put(&key, Bytes::from(bytes.clone())).await.unwrap();
    }
    assert!(registry.versions(&name()).await.unwrap().is_empty());
    let models = registry.models().await.unwrap();
    assert_eq!(models.get(&name()), Some(&Vec::new()));
}

#[tokio::test]
async fn aliases_point_at_stored_versions_only() {
    let store = Arc::new(MemoryStore::new());
    let registry = Registry::new(store.clone());
    registry.write_version(&version_files(1)).await.unwrap();
    registry.write_version(&version_files(2)).await.unwrap();
    let prod = Alias::new("prod").unwrap();
    let v1 = Version::first();
    let v2 = Version::new(2).unwrap();
    assert_eq!(registry.set_alias(&name(), &prod, v1).await.unwrap(), None);
    assert_eq!(
        registry.set_alias(&name(), &prod, v2).await.unwrap(),
        Some(v1)
    );
    assert_eq!(registry.alias(&name(), &prod).await.unwrap(), Some(v2));
    let v3 = Version::new(3).unwrap();
    assert!(matches!(
        registry.set_alias(&name(), &prod, v3).await,
        Err(RegistryError::NotFound { .. })
    ));

    let bad = Alias::new("bad").unwrap();
    store
        .put(&keys::alias(&name(), &bad), Bytes::from_static(b"latest"))
        .await
        .unwrap();
    assert!(matches!(
        registry.alias(&name(), &bad).await,
        Err(RegistryError::BadAlias { .. })
    ));
    let aliases = registry.aliases(&name()).await.unwrap();
    assert_eq!(aliases.into_iter().collect::<Vec<_>>(), vec![(prod, v2)]);
    assert_eq!(registry.models().await.unwrap()[&name()], vec![v1, v2]);
}

/// A scratch job for version `version` of the test model, trained on `data_sha256`.
fn job(version: u32, data_sha256: &str) -> JobSpec {
    JobSpec {
        id: JobId::new(),
        model: name(),
        mode: Mode::Scratch,
        base_version: None,
        output_version: Version::new(version).unwrap(),
        dataset: DatasetRef {
            key: format!("datasets/sha256/{data_sha256}.yml"),
            sha256: data_sha256.to_owned(),
        },
        eval_dataset: None,
        hyperparams: Hyperparams {
            budget: Budget::Epochs(1),
            ..Hyperparams::default()
        },
        priority: 0,
        submitted_at: chrono::Utc::now(),
        deadline: None,
        promote_to: None,
    }
}

/// `version_files` as `job`'s attempt would upload them (the draft records the job's data).
fn attempt_files(job: &JobSpec, checkpoint: &[u8]) -> VersionFiles {
    let mut files = version_files(job.output_version.get());
    files.manifest.data.sha256 = job.dataset.sha256.clone();
    files.files[0].1 = checkpoint.to_vec();
    VersionFiles::new(files.manifest, files.files)
}

#[tokio::test]
async fn an_attempt_becomes_the_version_only_when_committed() {
    let store = Arc::new(MemoryStore::new());
    let registry = Registry::new(store.clone());
    let job = job(1, &"ab".repeat(32));
    let (first, second) = (AttemptId::new(), AttemptId::new());
    let uploaded = registry
        .upload_attempt(first, &attempt_files(&job, b"first"))
        .await
        .unwrap();
    assert_eq!(
        uploaded[keys::CHECKPOINT].path,
        Some(keys::attempt_path(first, keys::CHECKPOINT))
    );
    // Uploaded is not committed.
    assert!(registry.versions(&name()).await.unwrap().is_empty());
    // A second attempt of the same job (a duplicate) uploads beside it, never over it.
    let other = registry
        .upload_attempt(second, &attempt_files(&job, b"second"))
        .await
        .unwrap();

    let draft = &uploaded[keys::MANIFEST].sha256;
    let manifest = registry.commit(&job, first, draft).await.unwrap();
    assert_eq!(manifest.job_id, Some(job.id));
    assert_eq!(manifest.attempt_id, Some(first));
    let back = registry
        .read_version(&name(), Version::first())
        .await
        .unwrap();
    assert_eq!(back.checkpoint.as_ref(), b"first");

    // Committing again (a retry, or the duplicate's report) keeps the first commit.
    let again = registry
        .commit(&job, second, &other[keys::MANIFEST].sha256)
        .await
        .unwrap();
    assert_eq!(again.attempt_id, Some(first));
    // Another job never takes the number.
    let intruder = self::job(1, &"ab".repeat(32));
    let result = registry.commit(&intruder, second, draft).await;
    assert!(
        matches!(result, Err(RegistryError::Conflict { .. })),
        "{result:?}"
    );

    // The loser's files go; the committed ones stay (the manifest says which they are).
    assert_eq!(
        registry
            .delete_stray_attempts(&name(), Version::first())
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        registry
            .delete_stray_attempts(&name(), Version::first())
            .await
            .unwrap(),
        0
    );
    let back = registry
        .read_version(&name(), Version::first())
        .await
        .unwrap();
    assert_eq!(back.checkpoint.as_ref(), b"first");
}

#[tokio::test]
async fn a_damaged_or_foreign_upload_is_not_committed() {
    let store = Arc::new(MemoryStore::new());
    let registry = Registry::new(store.clone());
    let job = job(2, &"cd".repeat(32));
    let attempt = AttemptId::new();
    let uploaded = registry
        .upload_attempt(attempt, &attempt_files(&job, b"bytes"))
        .await
        .unwrap();
    let draft = uploaded[keys::MANIFEST].sha256.clone();
    // The draft is not the one reported.
    let wrong = registry.commit(&job, attempt, &"00".repeat(32)).await;
    assert!(
        matches!(wrong, Err(RegistryError::Commit { .. })),
        "{wrong:?}"
    );
    // A job on other data cannot take this upload.
    let other_data = JobSpec {
        id: job.id,
        ..self::job(2, &"ef".repeat(32))
    };
    let foreign = registry.commit(&other_data, attempt, &draft).await;
    assert!(
        matches!(foreign, Err(RegistryError::Commit { .. })),
        "{foreign:?}"
    );
    // A file missing from the upload.
    let key = keys::attempt_file(&name(), job.output_version, attempt, keys::MODEL_ONNX).unwrap();
    store.delete(&key).await.unwrap();
    let missing = registry.commit(&job, attempt, &draft).await;
    assert!(
        matches!(missing, Err(RegistryError::Commit { .. })),
        "{missing:?}"
    );
    assert!(registry.versions(&name()).await.unwrap().is_empty());
}

#[tokio::test]
async fn reservations_keep_numbers_taken_and_carry_their_jobs() {
    let store = Arc::new(MemoryStore::new());
    let registry = Registry::new(store.clone());
    assert_eq!(registry.highest_taken(&name()).await.unwrap(), None);
    registry.write_version(&version_files(1)).await.unwrap();
    let queued = job(3, &"ab".repeat(32));
    registry
        .reserve(&Reservation::open(
            queued.clone(),
            "refit".into(),
            "default".into(),
        ))
        .await
        .unwrap();
    // An attempt's draft manifest of a higher version does not count.
    let stray = job(9, &"ab".repeat(32));
    registry
        .upload_attempt(AttemptId::new(), &attempt_files(&stray, b"x"))
        .await
        .unwrap();
    assert_eq!(
        registry.highest_taken(&name()).await.unwrap(),
        Some(Version::new(3).unwrap())
    );

    let (found, unreadable) = registry.reservations("refit").await.unwrap();
    assert_eq!(unreadable, 0);
    assert_eq!(found.len(), 1);
    // Another deployment's coordinator does not see it.
    let (others, _) = registry.reservations("staging").await.unwrap();
    assert!(others.is_empty());
    assert_eq!(found[0].reservation.spec, queued);
    assert!(!found[0].committed);

    registry
        .close_reservation(
            &name(),
            queued.output_version,
            queued.id,
            ReservationState::Closed,
        )
        .await
        .unwrap();
    let closed = registry
        .reservation(&name(), queued.output_version)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.state, ReservationState::Closed);
    // Another job's close changes nothing.
    registry
        .close_reservation(
            &name(),
            queued.output_version,
            JobId::new(),
            ReservationState::Succeeded,
        )
        .await
        .unwrap();
    let still = registry
        .reservation(&name(), queued.output_version)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.state, ReservationState::Closed);
}
