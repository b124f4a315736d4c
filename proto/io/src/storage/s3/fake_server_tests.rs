//! Multipart failure paths, against a scripted fake S3 endpoint (a unit test: the real server's
//! behaviour is covered by `tests/integration/storage.rs`, but Garage cannot be made to fail a
//! part upload on demand).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{S3Config, S3Store};
use crate::storage::{ObjectStore, StorageErrorKind};

const MIB: u64 = 1024 * 1024;
const UPLOAD_ID: &str = "fake-upload-1";
const HANG_GUARD: Duration = Duration::from_secs(20);

/// What the fake answers to one request.
enum Reply {
    Status(u16, &'static str),
    /// Never answer (the connection stays open).
    Hang,
}

/// Answers every request by `script(method, target)` and reports each request's
/// `"METHOD target"` on a channel.
struct FakeS3 {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    seen: mpsc::UnboundedReceiver<String>,
}

impl FakeS3 {
    async fn start(script: fn(&str, &str) -> Reply) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = mpsc::unbounded_channel();
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script, log.clone(), tx.clone()));
            }
        });
        FakeS3 {
            endpoint,
            requests,
            seen,
        }
    }

    fn store(&self) -> S3Store {
        let mut config = S3Config::for_test(&self.endpoint, "GK0123456789abcdef01234567", "s");
        config.multipart_threshold_bytes = 5 * MIB;
        config.part_size_bytes = 5 * MIB;
        config.upload_concurrency = 1;
        config.max_attempts = 1;
        S3Store::new(config).unwrap()
    }

    /// Waits for a request whose line starts with `prefix`.
    async fn wait_for(&mut self, prefix: &str) -> String {
        let wait = async {
            loop {
                let line = self.seen.recv().await.expect("the fake server runs");
                if line.starts_with(prefix) {
                    return line;
                }
            }
        };
        tokio::time::timeout(HANG_GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("no {prefix} request; got {:?}", self.requests()))
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    stream: TcpStream,
    script: fn(&str, &str) -> Reply,
    log: Arc<Mutex<Vec<String>>>,
    tx: mpsc::UnboundedSender<String>,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let (mut length, mut expect_continue) = (0usize, false);
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            if header == "expect: 100-continue" {
                expect_continue = true;
            }
        }
        let line = format!("{method} {target}");
        log.lock().unwrap().push(line.clone());
        let _ = tx.send(line);
        let reply = script(&method, &target);
        if !expect_continue && !matches!(reply, Reply::Hang) {
            let mut body = vec![0u8; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
        }
        let (status, body) = match reply {
            Reply::Status(status, body) => (status, body),
            Reply::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        let response = format!(
            "HTTP/1.1 {status} Fake\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\
             connection: {}\r\n\r\n{body}",
            body.len(),
            if expect_continue {
                "close"
            } else {
                "keep-alive"
            },
        );
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
            || expect_continue
        {
            return;
        }
    }
}

/// CreateMultipartUpload and AbortMultipartUpload succeed; `on_part` answers UploadPart.
fn multipart_script(method: &str, target: &str, on_part: Reply) -> Reply {
    const CREATED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <InitiateMultipartUploadResult><Bucket>refit</Bucket><Key>k</Key>\
        <UploadId>fake-upload-1</UploadId></InitiateMultipartUploadResult>";
    match method {
        "POST" if target.contains("uploads") => Reply::Status(200, CREATED),
        "PUT" if target.contains("partNumber=") => on_part,
        "DELETE" if target.contains("uploadId=") => Reply::Status(204, ""),
        _ => Reply::Status(
            400,
            "<Error><Code>InvalidRequest</Code><Message>unexpected</Message></Error>",
        ),
    }
}

fn big_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("big.bin");
    std::fs::write(&path, vec![7u8; 6 * MIB as usize]).unwrap();
    path
}

#[tokio::test]
async fn failed_part_upload_aborts_the_multipart_upload() {
    let mut fake = FakeS3::start(|method, target| {
        multipart_script(
            method,
            target,
            Reply::Status(
                403,
                "<Error><Code>AccessDenied</Code><Message>fake denial</Message></Error>",
            ),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let error = tokio::time::timeout(
        HANG_GUARD,
        fake.store().put_file("models/m/big", &big_file(dir.path())),
    )
    .await
    .expect("no hang")
    .expect_err("the part upload is refused");
    assert_eq!(error.kind(), StorageErrorKind::PermissionDenied, "{error}");

    let abort = fake.wait_for("DELETE").await;
    assert!(abort.contains(&format!("uploadId={UPLOAD_ID}")), "{abort}");
    let requests = fake.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("POST") && r.contains("uploadId=")),
        "never completed: {requests:?}"
    );
}

#[tokio::test]
async fn cancelled_upload_is_aborted_in_the_background() {
    let mut fake =
        FakeS3::start(|method, target| multipart_script(method, target, Reply::Hang)).await;
    let store = fake.store();
    let dir = tempfile::tempdir().unwrap();
    let source = big_file(dir.path());
    let mut upload = Box::pin(store.put_file("models/m/big", &source));
    tokio::select! {
        result = &mut upload => panic!("the fake never answers a part: {result:?}"),
        line = fake.wait_for("PUT") => assert!(line.contains("partNumber=1"), "{line}"),
    }
    drop(upload); // cancellation, e.g. a job cancelled mid-upload
    let abort = fake.wait_for("DELETE").await;
    assert!(abort.contains(&format!("uploadId={UPLOAD_ID}")), "{abort}");
}

#[tokio::test]
async fn transient_part_failure_is_reported_as_transient() {
    let mut fake = FakeS3::start(|method, target| {
        multipart_script(
            method,
            target,
            Reply::Status(
                503,
                "<Error><Code>SlowDown</Code><Message>busy</Message></Error>",
            ),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let error = tokio::time::timeout(
        HANG_GUARD,
        fake.store().put_file("models/m/big", &big_file(dir.path())),
    )
    .await
    .expect("no hang")
    .expect_err("the part upload fails");
    assert!(error.is_transient(), "{error}");
    fake.wait_for("DELETE").await;
}
