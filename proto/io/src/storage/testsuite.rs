//! The behaviour every [`ObjectStore`] must show, run by each store's unit tests.

use std::path::Path;

use bytes::Bytes;

use super::{ObjectStore, StorageErrorKind, sha256_hex};

pub(crate) async fn run_all(store: &dyn ObjectStore, scratch: &Path) {
    put_get_head_delete(store).await;
    missing_objects(store).await;
    invalid_keys_are_refused_everywhere(store, scratch).await;
    list_by_prefix(store).await;
    file_round_trip(store, scratch).await;
    checksum_mismatch_leaves_no_file(store, scratch).await;
    put_if_absent_creates_once(store).await;
    bounded_reads_stop_at_the_limit(store).await;
}

async fn bounded_reads_stop_at_the_limit(store: &dyn ObjectStore) {
    let key = "suite/bounded/object.bin";
    let data = Bytes::from(vec![7u8; 10_000]);
    store.put(key, data.clone()).await.unwrap();
    assert_eq!(store.get_at_most(key, 10_000).await.unwrap(), data);
    let err = store.get_at_most(key, 9_999).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::TooLarge, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(key) && message.contains("9999"),
        "the error names the key and the limit: {message}"
    );
    let err = store
        .get_verified_at_most(key, &sha256_hex(&data), 100)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::TooLarge);
    assert!(
        store
            .get_at_most("suite/bounded/missing", 1)
            .await
            .unwrap_err()
            .is_not_found()
    );
    store.delete(key).await.unwrap();
}

async fn put_get_head_delete(store: &dyn ObjectStore) {
    let key = "suite/basic/object.bin";
    store.put(key, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(store.get(key).await.unwrap(), Bytes::from_static(b"hello"));

    let meta = store.head(key).await.unwrap().expect("object exists");
    assert_eq!(meta.key, key);
    assert_eq!(meta.size, 5);

    store
        .put(key, Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    assert_eq!(
        store.get(key).await.unwrap(),
        Bytes::from_static(b"replaced")
    );
    let verified = store
        .get_verified(key, &sha256_hex(b"replaced").to_uppercase())
        .await
        .unwrap();
    assert_eq!(verified, Bytes::from_static(b"replaced"));

    store.put("suite/basic/empty", Bytes::new()).await.unwrap();
    assert_eq!(store.get("suite/basic/empty").await.unwrap(), Bytes::new());

    store.delete(key).await.unwrap();
    store.delete("suite/basic/empty").await.unwrap();
    assert_eq!(store.head(key).await.unwrap(), None);
}

async fn missing_objects(store: &dyn ObjectStore) {
    let key = "suite/missing/nothing-here";
    let err = store.get(key).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::NotFound, "{err}");
    assert!(!err.is_transient());
    let err = store.get_verified(key, &sha256_hex(b"")).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::NotFound, "{err}");
    assert_eq!(store.head(key).await.unwrap(), None);
    store
        .delete(key)
        .await
        .expect("deleting a missing object succeeds");
    assert!(store.list("suite/missing/").await.unwrap().is_empty());
}

async fn invalid_keys_are_refused_everywhere(store: &dyn ObjectStore, scratch: &Path) {
    let source = scratch.join("invalid-key-source");
    std::fs::write(&source, b"x").unwrap();
    for key in ["", "/abs", "a//b", "a/../b", "a\\b", "a\nb"] {
        let checks = [
            store.put(key, Bytes::new()).await.err(),
            store.put_file(key, &source).await.err(),
            store.put_if_absent(key, Bytes::new()).await.err(),
            store.get(key).await.err(),
            store.get_verified(key, &sha256_hex(b"")).await.err(),
            store
                .get_to_file(key, &scratch.join("never"), None)
                .await
                .err(),
            store.head(key).await.err(),
            store.delete(key).await.err(),
        ];
        for (i, err) in checks.into_iter().enumerate() {
            let err = err.unwrap_or_else(|| panic!("key {key:?}, method #{i}: accepted"));
            assert_eq!(
                err.kind(),
                StorageErrorKind::InvalidKey,
                "key {key:?}, method #{i}: {err}"
            );
        }
    }
    let err = store.list("/abs").await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::InvalidKey);
    assert!(!scratch.join("never").exists());
}

async fn list_by_prefix(store: &dyn ObjectStore) {
    let keys = [
        "suite/list/a/1",
        "suite/list/a/2",
        "suite/list/a/sub/3",
        "suite/list/ab/4",
        "suite/list/b/5",
    ];
    for key in keys.iter().rev() {
        store
            .put(key, Bytes::from(key.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    let list = |prefix: &'static str| async move {
        store
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|meta| meta.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(list("suite/list/").await, keys.to_vec());
    assert_eq!(
        list("suite/list/a/").await,
        vec!["suite/list/a/1", "suite/list/a/2", "suite/list/a/sub/3"]
    );
    // A plain string prefix: `a` also matches `ab/…`.
    assert_eq!(
        list("suite/list/a").await,
        vec![
            "suite/list/a/1",
            "suite/list/a/2",
            "suite/list/a/sub/3",
            "suite/list/ab/4"
        ]
    );
    assert_eq!(list("suite/list/a/sub/3").await, vec!["suite/list/a/sub/3"]);
    assert!(list("suite/list/c").await.is_empty());
    assert!(list("suite/nothing/").await.is_empty());

    let metas = store.list("suite/list/b/").await.unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].size, "suite/list/b/5".len() as u64);
    assert!(
        list("").await.len() >= keys.len(),
        "the empty prefix lists everything"
    );

    for key in keys {
        store.delete(key).await.unwrap();
    }
    assert!(list("suite/list/").await.is_empty());
}

async fn file_round_trip(store: &dyn ObjectStore, scratch: &Path) {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let source = scratch.join("round-trip-source.bin");
    std::fs::write(&source, &data).unwrap();
    let key = "suite/files/blob.bin";

    let upload = store.put_file(key, &source).await.unwrap();
    assert_eq!(upload.size, data.len() as u64);
    assert_eq!(upload.sha256, sha256_hex(&data));

    let dest = scratch.join("downloads/nested/blob.bin");
    let download = store
        .get_to_file(key, &dest, Some(&upload.sha256))
        .await
        .unwrap();
    assert_eq!(download.size, data.len() as u64);
    assert_eq!(download.sha256, upload.sha256);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // Without an expected checksum the download still reports one.
    let again = store.get_to_file(key, &dest, None).await.unwrap();
    assert_eq!(again.sha256, upload.sha256);
    assert_only_file(&dest);

    let err = store
        .put_file("suite/files/x", &scratch.join("no-such-file"))
        .await
        .unwrap_err();
    assert_ne!(
        err.kind(),
        StorageErrorKind::NotFound,
        "a missing local file is not a missing object"
    );
    store.delete(key).await.unwrap();
}

async fn checksum_mismatch_leaves_no_file(store: &dyn ObjectStore, scratch: &Path) {
    let key = "suite/checksum/data";
    store
        .put(key, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let wrong = sha256_hex(b"something else");

    let err = store.get_verified(key, &wrong).await.unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::ChecksumMismatch, "{err}");
    assert!(!err.is_transient());

    let dest = scratch.join("checksum/fresh.bin");
    let err = store
        .get_to_file(key, &dest, Some(&wrong))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StorageErrorKind::ChecksumMismatch, "{err}");
    assert!(
        !dest.exists(),
        "a file failing its checksum must not be left behind"
    );
    assert_eq!(
        std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
        0,
        "no temporary file is left behind"
    );

    // An existing file at the destination is left untouched.
    let existing = scratch.join("checksum/existing.bin");
    std::fs::write(&existing, b"keep me").unwrap();
    store
        .get_to_file(key, &existing, Some(&wrong))
        .await
        .unwrap_err();
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    assert_only_file(&existing);
    store.delete(key).await.unwrap();
}

async fn put_if_absent_creates_once(store: &dyn ObjectStore) {
    let key = "suite/once/marker";
    assert!(
        store
            .put_if_absent(key, Bytes::from_static(b"first"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_absent(key, Bytes::from_static(b"second"))
            .await
            .unwrap()
    );
    assert_eq!(store.get(key).await.unwrap(), Bytes::from_static(b"first"));
    store.delete(key).await.unwrap();
    assert!(
        store
            .put_if_absent(key, Bytes::from_static(b"third"))
            .await
            .unwrap()
    );
    store.delete(key).await.unwrap();
}

/// `path` is the only entry of its folder: no temporary files were left next to it.
fn assert_only_file(path: &Path) {
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
}
