//! The `refit` commands against a fake coordinator: a small axum server in the test that
//! answers the way the coordinator's API does (same JSON bodies, status codes, error codes and
//! bearer-token check) with canned jobs. It tests the CLI's side of the API: uploads, the
//! submit request, `--wait` over a canned sequence of job states, exit codes, JSON output, the
//! token's handling. The coordinator itself is tested end to end in `tests/`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::Utc;
use refit_proto::data::{Example, Format, TrainingData, parse_bytes};
use refit_proto::decision::{DecisionInput, Policy, decide};
use refit_proto::wire::{
    AliasRequest, AliasView, DatasetBody, DecisionSummary, ErrorBody, ErrorDetail, EventView,
    JobList, JobState, JobView, ModelList, ModelView, ProgressView, SubmitResponse, VersionList,
    VersionView,
};
use refit_proto::{ArchSpec, Manifest, Metrics, Mode, ModelName, Version};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "fake-coordinator-token-0123456789";

fn demo(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/data/financial-demo")
        .join(name)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The fake coordinator.

#[derive(Default)]
struct Recorded {
    /// (ext, bytes) of each upload.
    uploads: Vec<(String, Vec<u8>)>,
    /// Each `POST /v1/jobs` body.
    submits: Vec<Value>,
    /// Each `POST /v1/check` body.
    checks: Vec<Value>,
    /// The `Authorization` header of each request, if any.
    auth: Vec<Option<String>>,
    /// Job id → the states `GET /v1/jobs/{id}` answers with, one per poll (the last repeats).
    sequences: HashMap<String, (Vec<JobView>, usize)>,
}

type Shared = Arc<Mutex<Recorded>>;

struct Fake {
    url: String,
    recorded: Shared,
    _runtime: tokio::runtime::Runtime,
}

impl Fake {
    fn start() -> Fake {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let recorded = Shared::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/datasets", post(upload))
            .route("/v1/jobs", post(submit).get(list))
            .route("/v1/jobs/{id}", get(get_job))
            .route("/v1/jobs/{id}/cancel", post(cancel))
            .route("/v1/check", post(check))
            .route("/v1/models", get(models))
            .route("/v1/models/{name}/versions", get(versions))
            .route("/v1/models/{name}/aliases/{alias}", put(alias))
            .with_state(recorded.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Fake {
            url,
            recorded,
            _runtime: runtime,
        }
    }

    /// Runs `refit` against this coordinator with the right token; (exit code, stdout, stderr).
    fn refit(&self, args: &[&str]) -> (i32, String, String) {
        self.refit_env(args, &[("REFIT_TOKEN", TOKEN)])
    }

    fn refit_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_refit"));
        command
            .args(args)
            .args(
                ["--poll-ms", "20"]
                    .iter()
                    .filter(|_| args.contains(&"--wait")),
            )
            .env_remove("REFIT_TOKEN")
            .env_remove("REFIT_CONFIG")
            .env_remove("REFIT_LOG")
            .env("REFIT_URL", &self.url)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"));
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("refit runs");
        (
            out.status.code().expect("refit exits normally"),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap()
    }
}

fn error(status: StatusCode, code: &str, message: &str, details: Option<Value>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
            details,
        },
    };
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    }
    response
}

/// The coordinator's bearer check: the 401 answer when the token is missing or wrong. Records
/// what was sent.
fn refuse(recorded: &Shared, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let ok = auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    recorded.lock().unwrap().auth.push(auth);
    (!ok).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
            None,
        )
    })
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn upload(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    let ext = params.get("ext").cloned().unwrap_or_else(|| "yml".into());
    let format = Format::from_path(std::path::Path::new(&format!("x.{ext}"))).unwrap();
    if let Err(e) = parse_bytes(&body, &format!("upload.{ext}"), format) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dataset",
            &format!("the dataset does not parse: {e}"),
            None,
        );
    }
    let sha = sha256(&body);
    recorded
        .lock()
        .unwrap()
        .uploads
        .push((ext.clone(), body.to_vec()));
    let key = format!("datasets/sha256/{sha}.{ext}");
    (StatusCode::CREATED, Json(DatasetBody { key, sha256: sha })).into_response()
}

fn one_example(intent: &str) -> TrainingData {
    TrainingData {
        examples: vec![Example {
            text: "hello there".into(),
            intent: intent.into(),
            entities: vec![],
        }],
        ..Default::default()
    }
}

fn job(id: &str, model: &str, state: JobState) -> JobView {
    JobView {
        id: id.into(),
        model: model.into(),
        state,
        mode: Mode::Scratch,
        requested_mode: Mode::Auto,
        base_version: None,
        promote_to: None,
        promotion: None,
        version: "v1".into(),
        pool: "default".into(),
        dataset: DatasetBody {
            key: format!("datasets/sha256/{}.yml", "a".repeat(64)),
            sha256: "a".repeat(64),
        },
        attempts: u32::from(state != JobState::Queued),
        failures: 0,
        handbacks: 0,
        published: true,
        worker: (state != JobState::Queued).then(|| "worker-1".into()),
        progress: None,
        metrics: None,
        timings: BTreeMap::new(),
        error: None,
        schedule: None,
        decision: Some(DecisionSummary {
            decision: "scratch".into(),
            reasons: vec!["no_base_version".into()],
        }),
        submitted_at: Utc::now(),
        started_at: None,
        finished_at: None,
        last_heartbeat_at: None,
        last_checkpoint_at: None,
        events: vec![],
        more_events: false,
    }
}

fn running(id: &str, model: &str, epoch: f64) -> JobView {
    let mut j = job(id, model, JobState::Running);
    j.progress = Some(ProgressView {
        epoch,
        total_epochs: 3.0,
        step: (epoch * 10.0) as u64,
        loss: 1.0 / (epoch + 1.0),
        examples_per_sec: 500.0,
        eta_secs: Some((3.0 - epoch) * 2.0),
        phase: Some("train".into()),
        trouble: None,
    });
    j
}

fn event(seq: i64, kind: &str, body: Value) -> EventView {
    EventView {
        seq,
        at: Utc::now(),
        received_at: Utc::now(),
        attempt: 1,
        attempt_id: Some("0190f5c2-0000-4000-8000-000000000001".into()),
        worker: "worker-1".into(),
        kind: kind.into(),
        body,
    }
}

/// What `GET /v1/jobs/{id}` answers, poll by poll, for a job of `model`.
fn sequence(id: &str, model: &str) -> Vec<JobView> {
    let mut seq = vec![
        job(id, model, JobState::Queued),
        running(id, model, 0.0),
        running(id, model, 1.0),
        running(id, model, 2.0),
    ];
    let mut last = job(id, model, JobState::Succeeded);
    match model {
        "broken" => {
            last.state = JobState::Failed;
            last.attempts = 3;
            last.error = Some("checkpoint sha256 mismatch".into());
        }
        "stopped" => last.state = JobState::Cancelled,
        "lost" => last.state = JobState::Dead,
        _ => {
            last.metrics = Some(Metrics {
                intent_accuracy: 0.912,
                intent_macro_f1: 0.88,
                intent_weighted_f1: 0.905,
                entity_precision: 0.9,
                entity_recall: 0.85,
                entity_f1: 0.874,
                examples: 112,
            });
            last.timings = BTreeMap::from([("train".to_owned(), 4.2)]);
        }
    }
    last.finished_at = Some(Utc::now());
    last.events = vec![
        event(
            1,
            "started",
            json!({"total_epochs": 3.0, "resumed_from_epoch": null}),
        ),
        event(
            2,
            "progress",
            json!({"epoch": 1.0, "step": 10, "loss": 0.5, "examples_per_sec": 500.0, "eta_secs": 4.0}),
        ),
        event(
            3,
            "heartbeat",
            json!({"phase": "train", "checkpoint_age_secs": null}),
        ),
        event(
            4,
            "succeeded",
            json!({"version": 1, "metrics": null, "timings": {}}),
        ),
    ];
    seq.push(last);
    seq
}

async fn submit(State(recorded): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    let model = request["model"].as_str().unwrap().to_owned();
    recorded.lock().unwrap().submits.push(request);
    if model == "rejectme" {
        let base = Manifest::for_data(
            ModelName::new("rejectme").unwrap(),
            Version::first(),
            &one_example("greet"),
            ArchSpec::default(),
        );
        let mut data = one_example("greet");
        data.examples.push(Example {
            text: "where is my card".into(),
            intent: "card_status".into(),
            entities: vec![],
        });
        let report = decide(&DecisionInput {
            mode: Mode::Auto,
            policy: Policy::Reject,
            base: Some(&base),
            data: &data,
            arch: &ArchSpec::default(),
            base_vocabulary: None,
        });
        return error(
            StatusCode::CONFLICT,
            "rejected",
            "the model cannot be fine-tuned on this data (labels_added); see details",
            Some(serde_json::to_value(&report).unwrap()),
        );
    }
    let id = uuid::Uuid::now_v7().to_string();
    let seq = sequence(&id, &model);
    let first = seq[0].clone();
    recorded
        .lock()
        .unwrap()
        .sequences
        .insert(id.clone(), (seq, 0));
    let report = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Reject,
        base: None,
        data: &one_example("greet"),
        arch: &ArchSpec::default(),
        base_vocabulary: None,
    });
    (
        StatusCode::CREATED,
        Json(SubmitResponse {
            job: Some(first),
            decision: report,
        }),
    )
        .into_response()
}

async fn check(State(recorded): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    recorded.lock().unwrap().checks.push(request);
    let report = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Scratch,
        base: Some(&Manifest::for_data(
            ModelName::new("financial").unwrap(),
            Version::first(),
            &one_example("greet"),
            ArchSpec::default(),
        )),
        data: &one_example("bye"),
        arch: &ArchSpec::default(),
        base_vocabulary: None,
    });
    Json(SubmitResponse {
        job: None,
        decision: report,
    })
    .into_response()
}

async fn get_job(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    let mut recorded = recorded.lock().unwrap();
    let Some((seq, next)) = recorded.sequences.get_mut(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no job {id}"),
            None,
        );
    };
    let view = seq[(*next).min(seq.len() - 1)].clone();
    *next += 1;
    Json(view).into_response()
}

async fn list(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    let limit: usize = params["limit"].parse().unwrap();
    let mut jobs = vec![
        running("0190f5c2-0000-7000-8000-000000000002", "financial", 1.5),
        sequence("0190f5c2-0000-7000-8000-000000000001", "financial")
            .pop()
            .unwrap(),
        sequence("0190f5c2-0000-7000-8000-000000000000", "broken")
            .pop()
            .unwrap(),
    ];
    for j in &mut jobs {
        j.events.clear();
    }
    if let Some(state) = params.get("state") {
        jobs.retain(|j| j.state.as_str() == state);
    }
    let start = params
        .get("cursor")
        .and_then(|c| jobs.iter().position(|j| &j.id == c).map(|i| i + 1))
        .unwrap_or(0);
    let page: Vec<JobView> = jobs.iter().skip(start).take(limit).cloned().collect();
    let next_cursor = (start + page.len() < jobs.len()).then(|| page.last().unwrap().id.clone());
    Json(JobList {
        jobs: page,
        next_cursor,
    })
    .into_response()
}

async fn cancel(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    if id == "0190f5c2-0000-7000-8000-00000000dead" {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("job {id} is already succeeded"),
            None,
        );
    }
    Json(job(&id, "financial", JobState::Cancelled)).into_response()
}

async fn models(State(recorded): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    Json(ModelList {
        models: vec![ModelView {
            name: "financial".into(),
            latest_version: Some("v2".into()),
            versions: 2,
            aliases: BTreeMap::from([("prod".to_owned(), "v2".to_owned())]),
            active_jobs: 1,
        }],
    })
    .into_response()
}

async fn versions(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    if name != "financial" {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("model {name} has no stored versions"),
            None,
        );
    }
    let version = |v: &str, parent: Option<&str>, mode, depth, sha: char, examples| VersionView {
        version: v.into(),
        parent: parent.map(Into::into),
        mode,
        finetune_depth: depth,
        dataset_sha256: sha.to_string().repeat(64),
        dataset_key: format!("datasets/sha256/{}.yml", sha.to_string().repeat(64)),
        examples,
        epochs: 100.0,
        metrics: Some(Metrics {
            intent_weighted_f1: 0.85,
            entity_f1: 0.87,
            ..Metrics::default()
        }),
        timings: BTreeMap::new(),
        aliases: vec![],
        created_at: Utc::now(),
    };
    let mut v2 = version("v2", Some("v1"), Mode::Finetune, 1, 'b', 459);
    v2.aliases = vec!["prod".into()];
    Json(VersionList {
        model: name,
        versions: vec![version("v1", None, Mode::Scratch, 0, 'a', 367), v2],
    })
    .into_response()
}

async fn alias(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
    Json(request): Json<AliasRequest>,
) -> Response {
    if let Some(r) = refuse(&recorded, &headers) {
        return r;
    }
    Json(AliasView {
        model: name,
        alias,
        version: request.version,
        previous: Some("v1".into()),
        forced: request.force,
        gate: None,
    })
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_wrong_or_missing_token_is_exit_code_15_and_is_never_printed() {
    let fake = Fake::start();
    let wrong = "wrong-token-do-not-print-me";
    for log in ["warn", "debug", "trace"] {
        let (code, stdout, stderr) =
            fake.refit_env(&["jobs", "--log", log], &[("REFIT_TOKEN", wrong)]);
        assert_eq!(code, 15, "{stderr}");
        assert!(stdout.is_empty());
        assert!(
            stderr.contains(&format!(
                "the coordinator at {} refused the token (from REFIT_TOKEN): set REFIT_TOKEN to \
                 the token deploy/local/up.sh printed",
                fake.url
            )),
            "{stderr}"
        );
        assert!(
            !stderr.contains(wrong),
            "the token leaked at --log {log}: {stderr}"
        );
    }
    let (code, _, stderr) = fake.refit(&["models", "--token", wrong]);
    assert_eq!(code, 15, "{stderr}");
    assert!(stderr.contains("(from --token)"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");

    let (code, _, stderr) = fake.refit_env(&["models"], &[]);
    assert_eq!(code, 15, "{stderr}");
    assert!(
        stderr.contains("needs a token and none was given"),
        "{stderr}"
    );
    assert_eq!(fake.recorded().auth.last(), Some(&None));

    // The right token, at debug level: requests are logged, the token is not.
    let (code, _, stderr) = fake.refit(&["models", "--log", "trace"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("/v1/models"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "the token leaked: {stderr}");
}

#[test]
fn a_token_file_from_the_config_file_is_used() {
    let fake = Fake::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        "url = \"http://127.0.0.1:1\"\ntoken_file = \"token\"\n",
    )
    .unwrap();
    // REFIT_URL (the fake) beats the file's url; the token comes from the file's token_file.
    let (code, stdout, stderr) =
        fake.refit_env(&["models", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("financial"), "{stdout}");
}

#[test]
fn submit_wait_uploads_the_file_as_it_is_and_follows_the_job_to_success() {
    let fake = Fake::start();
    let set1 = demo("set1.yml");
    let test = demo("test.yml");
    let (code, stdout, stderr) = fake.refit(&[
        "submit",
        "--model",
        "financial",
        "--data",
        &set1,
        "--eval",
        &test,
        "--epochs",
        "3",
        "--seed",
        "7",
        "--priority",
        "5",
        "--wait",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    let recorded = fake.recorded();
    let bytes = std::fs::read(&set1).unwrap();
    assert_eq!(recorded.uploads.len(), 2);
    assert_eq!(recorded.uploads[0], ("yml".to_owned(), bytes.clone()));
    let request = &recorded.submits[0];
    let sha = sha256(&bytes);
    assert_eq!(request["model"], "financial");
    assert_eq!(request["dataset"]["sha256"], sha.as_str());
    assert_eq!(
        request["dataset"]["key"],
        format!("datasets/sha256/{sha}.yml").as_str()
    );
    assert!(
        request["eval_dataset"]["key"]
            .as_str()
            .unwrap()
            .ends_with(".yml")
    );
    assert_eq!(request["epochs"], 3);
    assert_eq!(request["seed"], 7);
    assert_eq!(request["priority"], 5);
    // Unset options are left to the coordinator.
    assert_eq!(request["mode"], Value::Null);
    assert_eq!(request["epoch_fraction"], Value::Null);

    // stdout: the decision, the job, the result with its metrics.
    assert!(
        stdout.starts_with("decision: scratch (no base version)"),
        "{stdout}"
    );
    assert!(stdout.contains("financial v1 (scratch)"), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(
        stdout.contains("intent accuracy 0.912  intent macro-F1 0.880  intent weighted-F1 0.905  entity F1 0.874"),
        "{stdout}"
    );
    // stderr (not a terminal): the upload, then a line per state or epoch change.
    assert!(
        stderr.contains(&format!("training data: {set1}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("-> datasets/sha256/{sha}.yml")),
        "{stderr}"
    );
    assert!(stderr.contains(": running  train  epoch 0/3"), "{stderr}");
    assert!(stderr.contains(": succeeded"), "{stderr}");
    assert!(!stderr.contains(TOKEN));
}

#[test]
fn submit_wait_json_prints_the_final_job_only() {
    let fake = Fake::start();
    let set1 = demo("set1.yml");
    let (code, stdout, stderr) = fake.refit(&[
        "submit",
        "--model",
        "financial",
        "--data",
        &set1,
        "--wait",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let job: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    for field in [
        "id", "model", "state", "mode", "version", "attempts", "metrics", "events",
    ] {
        assert!(job.get(field).is_some(), "the job lacks {field}: {job}");
    }
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["metrics"]["entity_f1"], 0.874);
    assert_eq!(job["events"].as_array().unwrap().len(), 4);
}

#[test]
fn submit_json_without_wait_prints_the_submit_response() {
    let fake = Fake::start();
    let set1 = demo("set1.yml");
    let (code, stdout, stderr) =
        fake.refit(&["submit", "-m", "financial", "-d", &set1, "-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(answer["job"]["state"], "queued");
    assert_eq!(answer["decision"]["decision"], "scratch");
    assert_eq!(answer["decision"]["reasons"][0]["code"], "no_base_version");
}

#[test]
fn several_files_are_merged_into_one_jsonl_upload() {
    let fake = Fake::start();
    let (set1, set2) = (demo("set1.yml"), demo("set2.yml"));
    let (code, _, stderr) = fake.refit(&[
        "submit",
        "--model",
        "financial",
        "--data",
        &set1,
        &set2,
        "--mode",
        "finetune",
        "--policy",
        "scratch",
        "--base",
        "prod",
        "--epoch-fraction",
        "0.5",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("2 files merged as JSONL (459 examples"),
        "{stderr}"
    );
    let recorded = fake.recorded();
    let (ext, bytes) = &recorded.uploads[0];
    assert_eq!(ext, "jsonl");
    let merged = parse_bytes(bytes, "merged.jsonl", Format::Jsonl).unwrap();
    assert_eq!(merged.len(), 459);
    let request = &recorded.submits[0];
    assert_eq!(request["dataset"]["sha256"], sha256(bytes).as_str());
    assert_eq!(request["mode"], "finetune");
    assert_eq!(request["policy"], "scratch");
    assert_eq!(request["base"], "prod");
    assert_eq!(request["epoch_fraction"], 0.5);
}

#[test]
fn a_content_addressed_key_is_submitted_without_uploading() {
    let fake = Fake::start();
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let (code, _, stderr) = fake.refit(&[
        "submit",
        "--model",
        "financial",
        "--data",
        &format!("s3://refit/datasets/sha256/{hex}.jsonl"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let recorded = fake.recorded();
    assert!(recorded.uploads.is_empty());
    assert_eq!(recorded.submits[0]["dataset"]["sha256"], hex);
    assert_eq!(
        recorded.submits[0]["dataset"]["key"],
        format!("datasets/sha256/{hex}.jsonl").as_str()
    );
}

#[test]
fn a_rejected_submit_is_exit_code_11_with_the_report() {
    let fake = Fake::start();
    let set1 = demo("set1.yml");
    let (code, stdout, stderr) = fake.refit(&["submit", "--model", "rejectme", "--data", &set1]);
    assert_eq!(code, 11, "{stderr}");
    assert!(
        stdout.starts_with("decision: reject (not fine-tunable)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("intents added (1): card_status"),
        "{stdout}"
    );
    assert!(stderr.contains("--policy scratch"), "{stderr}");

    let (code, stdout, _) = fake.refit(&[
        "submit", "--model", "rejectme", "--data", &set1, "--wait", "--output", "json",
    ]);
    assert_eq!(code, 11);
    let body: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(body["error"]["code"], "rejected");
    let reason = &body["error"]["details"]["reasons"][0];
    assert_eq!(reason["code"], "labels_added");
    assert_eq!(reason["kind"], "intent");
    assert_eq!(reason["labels"], json!(["card_status"]));
}

#[test]
fn failed_dead_and_cancelled_jobs_set_the_exit_code() {
    let fake = Fake::start();
    let set1 = demo("set1.yml");
    for (model, code_expected, text) in [
        ("broken", 12, "failed"),
        ("lost", 12, "dead"),
        ("stopped", 13, "cancelled"),
    ] {
        let (code, stdout, stderr) =
            fake.refit(&["submit", "--model", model, "--data", &set1, "--wait"]);
        assert_eq!(code, code_expected, "{model}: {stdout}\n{stderr}");
        assert!(stdout.contains(&format!(" {text} after ")), "{stdout}");
        if model == "broken" {
            assert!(
                stdout.contains("error: checkpoint sha256 mismatch"),
                "{stdout}"
            );
            assert!(stdout.contains("attempts: 3"), "{stdout}");
        }
    }
}

#[test]
fn jobs_job_and_cancel() {
    let fake = Fake::start();
    let (code, stdout, stderr) = fake.refit(&["jobs"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("id "), "{stdout}");
    for column in [
        "model",
        "version",
        "mode",
        "state",
        "attempts",
        "progress / metrics",
        "submitted",
    ] {
        assert!(lines[0].contains(column), "{stdout}");
    }
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[1].contains("running") && lines[1].contains("epoch 1.5/3"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("succeeded") && lines[2].contains("intent wF1 0.905"),
        "{stdout}"
    );
    assert!(
        lines[3].contains("failed") && lines[3].contains("checkpoint sha256"),
        "{stdout}"
    );

    // Pages are followed up to --limit; JSON keeps the API's shape.
    let (code, stdout, _) = fake.refit(&["jobs", "--limit", "2", "--output", "json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    assert!(list["next_cursor"].is_string());
    let (_, stdout, _) = fake.refit(&["jobs", "--state", "failed", "-o", "json"]);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["jobs"][0]["state"], "failed");

    // One job: details and events.
    let set1 = demo("set1.yml");
    let (_, stdout, _) = fake.refit(&["submit", "-m", "financial", "-d", &set1, "-o", "json"]);
    let id = serde_json::from_str::<Value>(&stdout).unwrap()["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Skip to the final state.
    fake.recorded().sequences.get_mut(&id).unwrap().1 = 99;
    let (code, stdout, stderr) = fake.refit(&["job", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with(&format!("job {id}: financial v1 (scratch)  succeeded")),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics     intent accuracy 0.912"),
        "{stdout}"
    );
    assert!(stdout.contains("events (4):"), "{stdout}");
    assert!(stdout.contains("started      3 epochs"), "{stdout}");
    assert!(
        stdout.contains("(1 heartbeat, 1 progress events not shown"),
        "{stdout}"
    );
    let (_, stdout, _) = fake.refit(&["job", &id, "--all-events"]);
    assert!(
        stdout.contains("progress     epoch 1, loss 0.5000, ETA 4s"),
        "{stdout}"
    );
    let (_, stdout, _) = fake.refit(&["job", &id, "--output", "json"]);
    let job: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["events"][3]["type"], "succeeded");

    // API errors show code and message.
    let (code, _, stderr) = fake.refit(&["job", "0190f5c2-0000-7000-8000-0000000000ff"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "no job 0190f5c2-0000-7000-8000-0000000000ff (the coordinator answered 404 not_found)"
        ),
        "{stderr}"
    );

    let (code, stdout, _) = fake.refit(&["cancel", "0190f5c2-0000-7000-8000-000000000002"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        "job 0190f5c2-0000-7000-8000-000000000002 cancelled"
    );
    let (code, _, stderr) = fake.refit(&["cancel", "0190f5c2-0000-7000-8000-00000000dead"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("already succeeded") && stderr.contains("409 conflict"),
        "{stderr}"
    );
}

#[test]
fn models_versions_and_alias() {
    let fake = Fake::start();
    let (code, stdout, stderr) = fake.refit(&["models"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("financial  v2      2         prod=v2  1"),
        "{stdout}"
    );

    let (code, stdout, stderr) = fake.refit(&["versions", "financial"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "version  parent  mode      depth  examples  dataset       intent wF1  entity F1  created  aliases"
    );
    assert!(
        lines[1].starts_with(
            "v1       -       scratch   0      367       aaaaaaaaaaaa  0.850       0.870"
        ),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("v2       v1      finetune  1      459       bbbbbbbbbbbb"),
        "{stdout}"
    );
    assert!(lines[2].ends_with("prod"), "{stdout}");
    let (_, stdout, _) = fake.refit(&["versions", "financial", "--output", "json"]);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["versions"][1]["parent"], "v1");

    let (code, _, stderr) = fake.refit(&["versions", "nothing"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not_found"), "{stderr}");

    let (code, stdout, _) = fake.refit(&["alias", "financial", "prod", "3"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "financial prod -> v3 (was v1)");
    let (_, stdout, _) = fake.refit(&["alias", "financial", "prod", "v2", "-o", "json"]);
    let view: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        view,
        json!({"model": "financial", "alias": "prod", "version": "v2", "previous": "v1",
               "forced": false})
    );
    let (_, stdout, _) = fake.refit(&["alias", "financial", "prod", "v2", "--force", "-o", "json"]);
    let view: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view["forced"], true, "--force is sent: {view}");
}

#[test]
fn check_with_a_model_asks_the_coordinator() {
    let fake = Fake::start();
    let set1 = demo("set1.yml");
    let (code, stdout, stderr) = fake.refit(&[
        "check",
        "--model",
        "financial",
        "--base-version",
        "prod",
        "--data",
        &set1,
        "--policy",
        "scratch",
    ]);
    assert_eq!(code, 10, "{stderr}");
    assert!(stdout.starts_with("decision: scratch"), "{stdout}");
    assert!(stdout.contains("bye"), "{stdout}");
    let recorded = fake.recorded();
    assert_eq!(recorded.checks[0]["base"], "prod");
    assert_eq!(recorded.checks[0]["policy"], "scratch");
    assert!(recorded.submits.is_empty());
    drop(recorded);

    let (code, stdout, _) = fake.refit(&["check", "-m", "financial", "-d", &set1, "-o", "json"]);
    assert_eq!(code, 10);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["decision"], "scratch");
}
