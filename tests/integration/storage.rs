//! Object store tests against the real S3 server (the Garage of `deploy/s3-server.sh`).
//!
//! Settings, each looked up as `REFIT_TEST_S3_<NAME>`, then `REFIT_S3_<NAME>`, then the
//! `REFIT_S3_<NAME>` line of `credentials.env` in the local Garage's data directory
//! (`$REFIT_GARAGE_DIR`, default `<repo>/.refit-local/garage`), then a loopback default:
//! `ENDPOINT` (`http://127.0.0.1:3900`), `REGION` (`garage`), `BUCKET` (`refit`),
//! `ACCESS_KEY_ID` and `SECRET_ACCESS_KEY` (no default). So after `deploy/s3-server.sh`, a plain
//! `cargo test` works.
//!
//! Every test writes under its own `tests/<unique>/` prefix and deletes what it wrote, so tests
//! run in parallel on one bucket. A server that does not answer fails the test with a message
//! saying how to start it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use refit_io::storage::{ObjectStore, S3Config, S3Store, StorageError, StorageErrorKind};
use refit_proto::keys::sha256_hex;

use crate::common::{env_or, unique};

const MIB: usize = 1024 * 1024;

/// A generous bound on calls that must fail fast: a guard against hangs, not a speed target.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// The S3 settings, from the environment or the local Garage's `credentials.env`.
struct Settings {
    endpoint: String,
    region: String,
    bucket: String,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    credentials_file: PathBuf,
}

fn settings() -> Settings {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("REFIT_GARAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".refit-local/garage"));
    let credentials_file = dir.join("credentials.env");
    let file = crate::common::read_env_file(&credentials_file);
    let get = |name: &str| -> Option<String> {
        let from_file = file
            .get(&format!("REFIT_S3_{name}"))
            .cloned()
            .unwrap_or_default();
        let value = env_or(
            &format!("REFIT_TEST_S3_{name}"),
            &env_or(&format!("REFIT_S3_{name}"), &from_file),
        );
        (!value.is_empty()).then_some(value)
    };
    Settings {
        endpoint: get("ENDPOINT").unwrap_or_else(|| "http://127.0.0.1:3900".to_owned()),
        region: get("REGION").unwrap_or_else(|| "garage".to_owned()),
        bucket: get("BUCKET").unwrap_or_else(|| "refit".to_owned()),
        access_key_id: get("ACCESS_KEY_ID"),
        secret_access_key: get("SECRET_ACCESS_KEY"),
        credentials_file,
    }
}

fn config() -> Result<S3Config> {
    let s = settings();
    let (Some(id), Some(secret)) = (s.access_key_id, s.secret_access_key) else {
        bail!(
            "no S3 credentials: run deploy/s3-server.sh (it writes {}), or set \
             REFIT_TEST_S3_ACCESS_KEY_ID and REFIT_TEST_S3_SECRET_ACCESS_KEY",
            s.credentials_file.display()
        );
    };
    let mut config = S3Config::for_test(&s.endpoint, &id, &secret);
    config.region = s.region;
    config.bucket = s.bucket;
    Ok(config)
}

/// A store on the test server, checked to answer; fails saying how to start it.
async fn store_with(config: S3Config) -> Result<S3Store> {
    let endpoint = config.endpoint.clone().unwrap_or_default();
    let store = S3Store::new(config)?;
    match tokio::time::timeout(HANG_GUARD, store.check_bucket()).await {
        Ok(Ok(())) => Ok(store),
        Ok(Err(error)) if error.is_transient() => {
            bail!("S3 server not reachable at {endpoint}: run deploy/s3-server.sh ({error})")
        }
        Ok(Err(error)) => bail!(
            "S3 server at {endpoint} refused the test bucket: {error} \
             (deploy/s3-server.sh sets up bucket and key)"
        ),
        Err(_) => {
            bail!("S3 server not reachable at {endpoint} (no answer): run deploy/s3-server.sh")
        }
    }
}

async fn store() -> Result<S3Store> {
    store_with(config()?).await
}

/// This test's own key prefix, ending in `/`.
fn test_prefix(name: &str) -> String {
    format!("tests/{}/", unique(name))
}

/// Deletes everything under `prefix`.
async fn clean_up(store: &dyn ObjectStore, prefix: &str) -> Result<()> {
    for meta in store.list(prefix).await? {
        store.delete(&meta.key).await?;
    }
    Ok(())
}

/// `len` pseudo-random bytes from a fixed seed.
fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn assert_kind(error: &StorageError, kind: StorageErrorKind) {
    assert_eq!(error.kind(), kind, "{error} ({error:?})");
}

#[tokio::test]
async fn multipart_round_trip_of_50_mib_keeps_every_byte() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("multipart");
    let key = format!("{prefix}checkpoint.safetensors");
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("source.bin");
    let data = seeded_bytes(42, 50 * MIB);
    std::fs::write(&source, &data)?;
    let expected_sha = sha256_hex(&data);
    drop(data);

    let upload = store.put_file(&key, &source).await?;
    assert_eq!(upload.size, 50 * MIB as u64);
    assert_eq!(upload.sha256, expected_sha);
    // 50 MiB in the default 8 MiB parts: 7 parts, above the 16 MiB threshold.
    assert_eq!(upload.multipart_parts, Some(7), "{upload:?}");

    let meta = store.head(&key).await?.context("uploaded object")?;
    assert_eq!(meta.size, 50 * MIB as u64);
    let etag = meta.etag.clone().unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-7"),
        "a multipart object's ETag ends in -<parts>: {etag}"
    );

    let dest = dir.path().join("download/checkpoint.safetensors");
    let download = store.get_to_file(&key, &dest, Some(&expected_sha)).await?;
    assert_eq!(download.sha256, expected_sha);
    assert_eq!(download.size, 50 * MIB as u64);
    assert_eq!(sha256_hex(&std::fs::read(&dest)?), expected_sha);

    clean_up(&store, &prefix).await
}

#[tokio::test]
async fn large_byte_buffers_also_go_multipart() -> Result<()> {
    let mut config = config()?;
    config.multipart_threshold_bytes = 6 * MIB as u64;
    config.part_size_bytes = 5 * MIB as u64;
    let store = store_with(config).await?;
    let prefix = test_prefix("multipart-bytes");
    let key = format!("{prefix}buffer.bin");
    let data = Bytes::from(seeded_bytes(7, 11 * MIB + 123));

    store.put(&key, data.clone()).await?;
    let etag = store
        .head(&key)
        .await?
        .and_then(|m| m.etag)
        .unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    assert_eq!(store.get_verified(&key, &sha256_hex(&data)).await?, data);

    // Just under the threshold: one request.
    let small = Bytes::from(seeded_bytes(8, 6 * MIB - 1));
    store.put(&key, small.clone()).await?;
    let etag = store
        .head(&key)
        .await?
        .and_then(|m| m.etag)
        .unwrap_or_default();
    assert!(!etag.contains('-'), "{etag}");
    assert_eq!(store.get(&key).await?, small);

    clean_up(&store, &prefix).await
}

#[tokio::test]
async fn list_by_prefix() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("list");
    let names = ["a/1", "a/2", "a/sub/3", "ab/4", "b/5"];
    for name in names {
        store
            .put(
                &format!("{prefix}{name}"),
                Bytes::from(name.as_bytes().to_vec()),
            )
            .await?;
    }
    let list = |p: String| {
        let store = &store;
        let prefix = &prefix;
        async move {
            let metas = store.list(&p).await?;
            anyhow::Ok(
                metas
                    .into_iter()
                    .map(|m| {
                        m.key
                            .strip_prefix(prefix.as_str())
                            .unwrap_or(&m.key)
                            .to_owned()
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(list(prefix.clone()).await?, names);
    assert_eq!(
        list(format!("{prefix}a/")).await?,
        ["a/1", "a/2", "a/sub/3"]
    );
    assert_eq!(
        list(format!("{prefix}a")).await?,
        ["a/1", "a/2", "a/sub/3", "ab/4"]
    );
    assert!(list(format!("{prefix}c")).await?.is_empty());

    let metas = store.list(&format!("{prefix}b/")).await?;
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].size, 3);
    assert!(metas[0].last_modified.is_some());
    assert!(metas[0].etag.is_some());

    clean_up(&store, &prefix).await?;
    assert!(list(prefix.clone()).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn list_pages_past_the_servers_page_size() -> Result<()> {
    let store = std::sync::Arc::new(store().await?);
    let prefix = test_prefix("list-pages");
    // S3 servers return at most 1000 keys per page.
    let count = 1_050;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (store, prefix) = (store.clone(), prefix.clone());
        tasks.spawn(async move {
            for i in (worker..count).step_by(16) {
                store
                    .put(&format!("{prefix}{i:05}"), Bytes::from_static(b"x"))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let keys: Vec<_> = store
        .list(&prefix)
        .await?
        .into_iter()
        .map(|m| m.key)
        .collect();
    let expected: Vec<_> = (0..count).map(|i| format!("{prefix}{i:05}")).collect();
    assert_eq!(keys, expected);

    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(16)) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for key in chunk {
                store.delete(&key).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    assert!(store.list(&prefix).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn head_of_existing_and_missing_objects() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("head");
    let key = format!("{prefix}manifest.json");
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    store.put(&key, Bytes::from_static(b"{\"v\":1}")).await?;

    let meta = store.head(&key).await?.context("object exists")?;
    assert_eq!(meta.key, key);
    assert_eq!(meta.size, 7);
    assert!(meta.etag.as_deref().is_some_and(|e| !e.is_empty()));
    assert!(meta.last_modified.is_some_and(|t| t > before), "{meta:?}");

    assert_eq!(store.head(&format!("{prefix}missing.json")).await?, None);
    clean_up(&store, &prefix).await
}

/// A bounded read of an object over its limit stops at its declared length: a permanent
/// `TooLarge` naming the key and the limit; at or under the limit it reads the whole object.
#[tokio::test]
async fn bounded_reads_refuse_objects_over_their_limit() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("bounded");
    let key = format!("{prefix}object.bin");
    let data = seeded_bytes(7, 100_000);
    store.put(&key, Bytes::from(data.clone())).await?;
    assert_eq!(store.get_at_most(&key, 100_000).await?, data);
    let error = store.get_at_most(&key, 99_999).await.expect_err("over");
    assert_kind(&error, StorageErrorKind::TooLarge);
    assert!(!error.is_transient());
    let message = error.to_string();
    assert!(
        message.contains(&key) && message.contains("99999") && message.contains("100000"),
        "{message}"
    );
    let error = store
        .get_verified_at_most(&key, &sha256_hex(&data), 10)
        .await
        .expect_err("over");
    assert_kind(&error, StorageErrorKind::TooLarge);
    clean_up(&store, &prefix).await
}

#[tokio::test]
async fn missing_object_is_a_permanent_not_found() -> Result<()> {
    let store = store().await?;
    let key = format!("{}nothing-here", test_prefix("missing"));
    let error = store.get(&key).await.expect_err("missing object");
    assert_kind(&error, StorageErrorKind::NotFound);
    assert!(!error.is_transient());
    assert!(error.to_string().contains(&key), "{error}");

    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("never.bin");
    let error = store
        .get_to_file(&key, &dest, None)
        .await
        .expect_err("missing object");
    assert_kind(&error, StorageErrorKind::NotFound);
    assert_eq!(
        std::fs::read_dir(dir.path())?.count(),
        0,
        "no file is created"
    );

    store
        .delete(&key)
        .await
        .context("deleting a missing object succeeds")?;
    Ok(())
}

#[tokio::test]
async fn corrupt_download_is_a_permanent_checksum_mismatch() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("checksum");
    let key = format!("{prefix}model.onnx");
    let data = Bytes::from(seeded_bytes(3, 4096));
    store.put(&key, data.clone()).await?;
    let wrong = sha256_hex(b"not the model");

    let error = store
        .get_verified(&key, &wrong)
        .await
        .expect_err("wrong sha256");
    assert_kind(&error, StorageErrorKind::ChecksumMismatch);
    assert!(!error.is_transient());
    assert_eq!(store.get_verified(&key, &sha256_hex(&data)).await?, data);

    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("model.onnx");
    let error = store
        .get_to_file(&key, &dest, Some(&wrong))
        .await
        .expect_err("wrong sha256");
    assert_kind(&error, StorageErrorKind::ChecksumMismatch);
    assert_eq!(
        std::fs::read_dir(dir.path())?.count(),
        0,
        "neither the file nor a temporary file is left"
    );
    clean_up(&store, &prefix).await
}

#[tokio::test]
async fn dead_server_is_a_transient_error_within_seconds() -> Result<()> {
    // A port where nothing listens: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut config = S3Config::for_test(
        &format!("http://127.0.0.1:{port}"),
        "GK000000000000000000000000",
        "not-a-real-secret",
    );
    config.connect_timeout_ms = 500;
    let store = S3Store::new(config)?;

    let started = std::time::Instant::now();
    let error = tokio::time::timeout(HANG_GUARD, store.get("tests/dead/x"))
        .await
        .context("a dead server must not hang the call")?
        .expect_err("nothing listens");
    assert_kind(&error, StorageErrorKind::Transient);
    assert!(!error.to_string().contains("not-a-real-secret"), "{error}");
    eprintln!("dead server: {error} (after {:?})", started.elapsed());

    let dir = tempfile::tempdir()?;
    let source = dir.path().join("big.bin");
    std::fs::write(&source, seeded_bytes(1, 17 * MIB))?;
    let error = tokio::time::timeout(HANG_GUARD, store.put_file("tests/dead/big", &source))
        .await
        .context("a dead server must not hang the upload")?
        .expect_err("nothing listens");
    assert_kind(&error, StorageErrorKind::Transient);
    let error = tokio::time::timeout(HANG_GUARD, store.check_bucket())
        .await?
        .expect_err("nothing listens");
    assert_kind(&error, StorageErrorKind::Transient);
    Ok(())
}

#[tokio::test]
async fn server_that_never_answers_is_a_transient_timeout() -> Result<()> {
    // Accepts connections (the kernel completes the handshake) but never responds.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut config = S3Config::for_test(
        &format!("http://127.0.0.1:{port}"),
        "GK000000000000000000000000",
        "not-a-real-secret",
    );
    config.read_timeout_ms = 500;
    config.operation_attempt_timeout_ms = 1_000;
    config.operation_timeout_ms = 3_000;
    let store = S3Store::new(config)?;
    let error = tokio::time::timeout(HANG_GUARD, store.head("tests/silent/x"))
        .await
        .context("a silent server must not hang the call")?
        .expect_err("no answer");
    assert_kind(&error, StorageErrorKind::Transient);
    drop(listener);
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_are_permission_denied_and_stay_secret() -> Result<()> {
    let mut config = config()?;
    let real_id = config.access_key_id.clone().unwrap_or_default();
    config.secret_access_key = Some(refit_io::Secret::new("0".repeat(64)));
    let store = S3Store::new(config)?;
    let error = store.get("tests/denied/x").await.expect_err("wrong secret");
    assert_kind(&error, StorageErrorKind::PermissionDenied);
    assert!(!error.to_string().contains(&"0".repeat(64)), "{error}");

    let mut config = self::config()?;
    config.access_key_id = Some(format!("GK{}", "f".repeat(24)));
    assert_ne!(config.access_key_id.as_deref(), Some(real_id.as_str()));
    let store = S3Store::new(config)?;
    let error = store
        .head("tests/denied/x")
        .await
        .expect_err("unknown key id");
    assert!(!error.is_transient(), "{error}");
    Ok(())
}

#[tokio::test]
async fn missing_bucket_is_a_permanent_error_not_a_missing_object() -> Result<()> {
    let mut config = config()?;
    config.bucket = unique("no-such-bucket");
    let store = S3Store::new(config)?;
    let error = store.check_bucket().await.expect_err("no such bucket");
    assert!(!error.is_transient(), "{error}");
    let error = store.get("tests/x").await.expect_err("no such bucket");
    assert!(!error.is_transient(), "{error}");
    Ok(())
}

#[tokio::test]
async fn invalid_keys_never_reach_the_server() -> Result<()> {
    let store = store().await?;
    for key in ["", "/abs", "a//b", "a/../b", "a\\b", "a\u{0}b"] {
        let error = store.put(key, Bytes::new()).await.expect_err(key);
        assert_kind(&error, StorageErrorKind::InvalidKey);
        let error = store.get(key).await.expect_err(key);
        assert_kind(&error, StorageErrorKind::InvalidKey);
    }
    Ok(())
}

/// DESIGN §6 / S3-SERVER.md: Garage ignores `If-None-Match: *`, so on Garage the second
/// create-only put may overwrite. This pins only what callers may rely on: the call succeeds,
/// and `false` (if the server honours the header) means the first object was kept.
#[tokio::test]
async fn put_if_absent_works_but_is_not_a_lock_on_garage() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("if-absent");
    let key = format!("{prefix}marker");
    assert!(
        store
            .put_if_absent(&key, Bytes::from_static(b"first"))
            .await?
    );
    let created = store
        .put_if_absent(&key, Bytes::from_static(b"second"))
        .await?;
    let now = store.get(&key).await?;
    if created {
        assert_eq!(now, Bytes::from_static(b"second"));
        eprintln!("put_if_absent: this server ignores If-None-Match (overwrote)");
    } else {
        assert_eq!(now, Bytes::from_static(b"first"));
        eprintln!("put_if_absent: this server honours If-None-Match");
    }
    clean_up(&store, &prefix).await
}

#[tokio::test]
async fn small_files_go_up_in_one_request_and_report_their_sha256() -> Result<()> {
    let store = store().await?;
    let prefix = test_prefix("small-file");
    let key = format!("{prefix}vocab.json");
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("vocab.json");
    let data = seeded_bytes(5, 100_000);
    std::fs::write(&source, &data)?;

    let upload = store.put_file(&key, &source).await?;
    assert_eq!(upload.multipart_parts, None);
    assert_eq!(upload.sha256, sha256_hex(&data));
    assert_eq!(store.get(&key).await?, Bytes::from(data));

    let error = store
        .put_file(&key, &dir.path().join("missing"))
        .await
        .expect_err("no such local file");
    assert_ne!(error.kind(), StorageErrorKind::NotFound, "{error}");
    clean_up(&store, &prefix).await
}

/// `sdk_checksums = true` (the SDK's CRC trailers on uploads, response validation) also works
/// against Garage, for single and multipart uploads.
#[tokio::test]
async fn sdk_checksums_work_against_the_server() -> Result<()> {
    let mut config = config()?;
    config.sdk_checksums = true;
    config.multipart_threshold_bytes = 6 * MIB as u64;
    config.part_size_bytes = 5 * MIB as u64;
    let store = store_with(config).await?;
    let prefix = test_prefix("sdk-checksums");
    let dir = tempfile::tempdir()?;
    for (name, len) in [("small.bin", 1000), ("large.bin", 11 * MIB)] {
        let key = format!("{prefix}{name}");
        let source = dir.path().join(name);
        let data = seeded_bytes(len as u64, len);
        std::fs::write(&source, &data)?;
        let upload = store.put_file(&key, &source).await?;
        assert_eq!(
            upload.multipart_parts.is_some(),
            len > 6 * MIB,
            "{upload:?}"
        );
        let dest = dir.path().join(format!("{name}.down"));
        store
            .get_to_file(&key, &dest, Some(&sha256_hex(&data)))
            .await?;
    }
    clean_up(&store, &prefix).await
}
