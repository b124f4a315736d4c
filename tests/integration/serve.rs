//! `refit serve` and `refit pull` against the real S3 server: a small model trained here (with
//! retrieval intents `faq/ask_hours`, `faq/ask_fees` and an entity with a synonym) is stored as a
//! version through the registry, then the real `refit` binary serves it or pulls it.
//!
//! - `serve_answers_in_rasa_shape`: the golden test: every field of `POST /model/parse`'s
//!   answer (Rasa's keys and types, `faq` + `response_selector`, the synonym-mapped entity
//!   value), the token, bad input, `/status`, `/healthz`, `/metrics`, `/`, and a clean exit on
//!   SIGTERM.
//! - `serve_swaps_versions_under_load`: 16 clients parse without pause while the test stores
//!   v2 and moves the alias to it: no request fails, answers come from both versions (the
//!   `x-refit-model-version` header), `/status` then shows v2; then a damaged v3 is refused
//!   and v2 keeps serving.
//! - `pull_copies_a_version_and_refuses_a_damaged_one`: `refit pull` writes every file with
//!   the manifest's sha256, refuses a non-empty folder, and fails naming the file when an
//!   object in the store was tampered with.
//!
//! Each test stores under its own model name and deletes it at the end.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use refit_engine::pipeline::{self, Start, VersionInfo};
use refit_engine::trainer::{Quiet, TrainOptions};
use refit_io::registry::Registry;
use refit_io::storage::{ObjectStore, S3Config, S3Store};
use refit_proto::data::{Format, TrainingData, parse_str};
use refit_proto::keys::{self, sha256_hex};
use refit_proto::{Alias, ArchSpec, Manifest, ModelName, Version};
use serde_json::Value;

use crate::common::proc::Proc;
use crate::common::wait::{Waiting, wait_until};
use crate::common::{cli_binary, repo, s3_config, s3_store, unique};

/// Guards against hangs on a busy machine; never speed targets.
const START_WITHIN: Duration = Duration::from_secs(120);
const SWAP_WITHIN: Duration = Duration::from_secs(120);

/// The training data: two retrieval intents, an entity whose synonym maps `chequing` and
/// `check account` to `checking`.
const DATA: &str = r#"version: "3.1"
nlu:
- intent: greet
  examples: |
    - hello
    - hi there
    - good morning
    - hey
    - hello there friend
    - hi bot
- intent: check_balance
  examples: |
    - what is the balance of my [checking](account_type) account
    - how much is in my [chequing](account_type) account
    - show me my [chequing](account_type) balance
    - what is left in my [savings](account_type) account
    - balance of my [savings](account_type) please
    - how much money is in [chequing](account_type)
    - tell me my [checking](account_type) balance
    - how much do I have in [savings](account_type)
- intent: faq/ask_hours
  examples: |
    - when are you open
    - what are your opening hours
    - are you open on sunday
    - what time do you close
    - opening hours please
- intent: faq/ask_fees
  examples: |
    - how much are the fees
    - do you charge a monthly fee
    - what does an account cost
    - are there any fees
    - fees for a transfer
- synonym: checking
  examples: |
    - chequing
    - check account
"#;

fn data() -> Result<TrainingData> {
    Ok(parse_str(DATA, "serve-test.yml", Format::RasaYaml)?)
}

/// A model trained on [`DATA`] with `seed`, stored as `version` of `model`, the alias `prod`
/// pointed at it.
async fn store_version(
    registry: &Registry,
    model: &ModelName,
    version: u32,
    seed: u64,
) -> Result<Manifest> {
    let data = data()?;
    let model_name = model.clone();
    let files = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut nlu = pipeline::start(
            Start::Scratch {
                arch: ArchSpec::default(),
                seed,
            },
            &data,
        )?;
        nlu.train(&data, 60, &TrainOptions::default(), &mut Quiet)?;
        let bytes = DATA.as_bytes();
        let info = VersionInfo {
            model: model_name,
            version: Version::new(version)?,
            base: None,
            epochs: 60.0,
            dataset_key: keys::dataset(&sha256_hex(bytes), "yml")?,
            dataset_sha256: sha256_hex(bytes),
            evaluation: None,
            timings: Default::default(),
        };
        Ok(pipeline::version_files(&nlu, &data, &info))
    })
    .await??;
    registry.write_version(&files).await?;
    registry
        .set_alias(model, &Alias::new("prod")?, files.manifest.version)
        .await?;
    Ok(files.manifest)
}

/// One test's model on the S3 server, deleted when dropped.
struct Stored {
    s3: S3Config,
    store: S3Store,
    model: ModelName,
}

impl Stored {
    async fn new() -> Result<Self> {
        let s3 = s3_config()?;
        let store = s3_store(&s3).await?;
        let model = ModelName::new(unique("serve").to_lowercase().replace(['_', '.'], "-"))?;
        Ok(Self { s3, store, model })
    }

    fn registry(&self) -> Registry {
        Registry::new(Arc::new(self.store.clone()))
    }

    /// The `refit` CLI with this store's settings in `REFIT_S3_*` (and nothing else of the
    /// developer's S3 environment).
    fn refit(&self) -> Result<Command> {
        let mut command = Command::new(cli_binary()?);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("REFIT_S3_")) {
                command.env_remove(name);
            }
        }
        let s3 = &self.s3;
        command
            .env("REFIT_S3_ENDPOINT", s3.endpoint.clone().unwrap_or_default())
            .env("REFIT_S3_REGION", &s3.region)
            .env("REFIT_S3_BUCKET", &s3.bucket)
            .env(
                "REFIT_S3_ACCESS_KEY_ID",
                s3.access_key_id.clone().unwrap_or_default(),
            )
            .env(
                "REFIT_S3_SECRET_ACCESS_KEY",
                s3.secret_access_key
                    .as_ref()
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default(),
            )
            .env("NO_COLOR", "1")
            .current_dir(repo());
        Ok(command)
    }

    async fn cleanup(&self) {
        let prefix = keys::model_prefix(&self.model);
        if let Ok(objects) = self.store.list(&prefix).await {
            for object in objects {
                let _ = self.store.delete(&object.key).await;
            }
        }
    }
}

/// A running `refit serve` and its address.
struct Server {
    proc: Proc,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(stored: &Stored, dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut command = stored.refit()?;
        command
            .args(["serve", "--model"])
            .arg(format!("{}@prod", stored.model))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--poll-secs",
                "1",
                "--threads",
                "2",
            ])
            .args(extra);
        let proc = Proc::spawn("refit serve", command, dir.join("serve.log"))?;
        let base = wait_until("refit serve to listen", START_WITHIN, async || {
            if let Some(status) = proc.exited() {
                bail!("refit serve exited with {status}; log:\n{}", proc.tail(40));
            }
            let log = proc.log_text();
            let addr = log
                .lines()
                .find_map(|l| l.split("listening on http://").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned);
            Ok(match addr {
                Some(addr) => Waiting::Done(format!("http://{addr}")),
                None => Waiting::NotYet(proc.tail(10)),
            })
        })
        .await?;
        Ok(Self {
            proc,
            base,
            http: reqwest::Client::new(),
        })
    }

    /// POSTs `body` to `path`: status, the version header, the JSON answer.
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Result<Answer> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        Answer::read(response).await
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        Ok(self.http.get(format!("{}{path}", self.base)).send().await?)
    }
}

/// A response, read.
struct Answer {
    status: u16,
    version: Option<String>,
    json: Value,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Result<Self> {
        let status = response.status().as_u16();
        let version = response
            .headers()
            .get("x-refit-model-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("answer {status} is not JSON: {text}"))?;
        Ok(Self {
            status,
            version,
            json,
        })
    }
}

fn parse_body(text: &str) -> String {
    serde_json::json!({ "text": text, "message_id": "m-1" }).to_string()
}

fn keys_of(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn is_probability(value: &Value) -> bool {
    value
        .as_f64()
        .is_some_and(|p| (0.0..=1.0 + 1e-6).contains(&p))
}

/// Checks an `{"name", "confidence"}` object.
fn check_intent(value: &Value) -> Result<()> {
    ensure!(
        keys_of(value) == ["name", "confidence"],
        "intent keys: {value}"
    );
    ensure!(value["name"].is_string(), "intent name: {value}");
    ensure!(is_probability(&value["confidence"]), "confidence: {value}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_answers_in_rasa_shape() -> Result<()> {
    let stored = Stored::new().await?;
    let result = golden(&stored).await;
    stored.cleanup().await;
    result
}

async fn golden(stored: &Stored) -> Result<()> {
    let manifest = store_version(&stored.registry(), &stored.model, 1, 7).await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t-token\n")?;
    let server = Server::start(
        stored,
        dir.path(),
        &["--token-file", token_file.to_str().context("a UTF-8 path")?],
    )
    .await?;
    let label = format!("{}@v1", stored.model);

    // The token: required on /model/parse, as ?token= or a bearer header.
    let no_token = server.post("/model/parse", parse_body("hello")).await?;
    ensure!(no_token.status == 401, "no token: {}", no_token.json);
    ensure!(
        no_token.json["reason"] == "NotAuthenticated",
        "{}",
        no_token.json
    );
    let wrong = server
        .post("/model/parse?token=nope", parse_body("hello"))
        .await?;
    ensure!(wrong.status == 401, "wrong token: {}", wrong.json);
    let bearer = Answer::read(
        server
            .http
            .post(format!("{}/model/parse", server.base))
            .bearer_auth("s3cr3t-token")
            .body(parse_body("hello"))
            .send()
            .await?,
    )
    .await?;
    ensure!(bearer.status == 200, "bearer: {}", bearer.json);
    ensure!(
        !server.proc.log_text().contains("s3cr3t-token"),
        "the token reached the log"
    );

    // The golden parse: an entity whose words are a synonym.
    let q = "?token=s3cr3t-token";
    let text = "how much is in my chequing account";
    let answer = server
        .post(&format!("/model/parse{q}"), parse_body(text))
        .await?;
    ensure!(answer.status == 200, "{}", answer.json);
    ensure!(
        answer.version.as_deref() == Some(label.as_str()),
        "header {:?}",
        answer.version
    );
    let v = &answer.json;
    ensure!(
        keys_of(v)
            == [
                "text",
                "intent",
                "entities",
                "text_tokens",
                "intent_ranking",
                "response_selector"
            ],
        "top-level keys: {v}"
    );
    ensure!(v["text"] == text, "text: {v}");
    check_intent(&v["intent"])?;
    ensure!(v["intent"]["name"] == "check_balance", "intent: {v}");
    let ranking = v["intent_ranking"].as_array().context("intent_ranking")?;
    let names: BTreeSet<&str> = ranking.iter().filter_map(|r| r["name"].as_str()).collect();
    ensure!(
        names == BTreeSet::from(["check_balance", "faq", "greet"]),
        "the ranking names base intents only: {names:?}"
    );
    for r in ranking {
        check_intent(r)?;
    }
    ensure!(
        ranking[0] == v["intent"],
        "the first ranked is the intent: {v}"
    );
    let sum: f64 = ranking
        .iter()
        .filter_map(|r| r["confidence"].as_f64())
        .sum();
    ensure!(
        (sum - 1.0).abs() < 1e-3,
        "the collapsed ranking sums to 1: {sum}"
    );
    let tokens = v["text_tokens"].as_array().context("text_tokens")?;
    ensure!(
        tokens.len() == 7 && tokens[0] == serde_json::json!([0, 3]),
        "tokens: {v}"
    );

    let entities = v["entities"].as_array().context("entities")?;
    ensure!(entities.len() == 1, "one entity: {v}");
    let e = &entities[0];
    ensure!(
        keys_of(e)
            == [
                "entity",
                "start",
                "end",
                "confidence_entity",
                "value",
                "extractor",
                "processors"
            ],
        "entity keys: {e}"
    );
    ensure!(e["entity"] == "account_type", "{e}");
    ensure!(
        e["start"] == 18 && e["end"] == 26,
        "span of \"chequing\": {e}"
    );
    ensure!(e["value"] == "checking", "the synonym maps the value: {e}");
    ensure!(e["extractor"] == "DIETClassifier", "{e}");
    ensure!(
        e["processors"] == serde_json::json!(["EntitySynonymMapper"]),
        "{e}"
    );
    ensure!(is_probability(&e["confidence_entity"]), "{e}");

    // An entity that is no synonym keeps its words, without processors.
    let plain = server
        .post(
            &format!("/model/parse{q}"),
            parse_body("what is left in my savings account"),
        )
        .await?;
    let e = &plain.json["entities"][0];
    ensure!(
        e["value"] == "savings" && e.get("processors").is_none(),
        "{}",
        plain.json
    );

    // A retrieval intent: `faq`, with the response selector.
    let faq = server
        .post(
            &format!("/model/parse{q}"),
            parse_body("what are your opening hours"),
        )
        .await?;
    let v = &faq.json;
    ensure!(v["intent"]["name"] == "faq", "retrieval intent: {v}");
    let rs = &v["response_selector"];
    ensure!(
        keys_of(rs) == ["all_retrieval_intents", "default", "faq"],
        "response_selector keys: {rs}"
    );
    ensure!(
        rs["all_retrieval_intents"] == serde_json::json!(["faq"]),
        "{rs}"
    );
    for block in [&rs["faq"], &rs["default"]] {
        let response = &block["response"];
        ensure!(
            keys_of(response)
                == [
                    "id",
                    "responses",
                    "response_templates",
                    "confidence",
                    "intent_response_key",
                    "utter_action",
                    "template_name"
                ],
            "response keys: {response}"
        );
        ensure!(
            response["intent_response_key"] == "faq/ask_hours",
            "{response}"
        );
        ensure!(
            response["utter_action"] == "utter_faq/ask_hours",
            "{response}"
        );
        ensure!(
            response["template_name"] == "utter_faq/ask_hours",
            "{response}"
        );
        ensure!(response["id"].is_i64(), "{response}");
        ensure!(response["responses"] == serde_json::json!([]), "{response}");
        ensure!(is_probability(&response["confidence"]), "{response}");
        let ranking = block["ranking"].as_array().context("ranking")?;
        ensure!(ranking.len() == 2, "both faq responses ranked: {block}");
        for r in ranking {
            ensure!(
                keys_of(r) == ["id", "confidence", "intent_response_key"],
                "ranking keys: {r}"
            );
        }
        let sum: f64 = ranking
            .iter()
            .filter_map(|r| r["confidence"].as_f64())
            .sum();
        ensure!(
            (sum - 1.0).abs() < 1e-3,
            "p(faq/x | faq) sums to 1: {block}"
        );
        ensure!(ranking[0]["id"] == response["id"], "{block}");
    }
    // `faq`'s confidence is the sum of its classes': more than any other intent's here.
    let faq_confidence = v["intent"]["confidence"].as_f64().unwrap_or(0.0);
    ensure!(faq_confidence > 0.5, "{v}");

    // Empty text: Rasa's empty parse.
    let empty = server
        .post(&format!("/model/parse{q}"), parse_body("  "))
        .await?;
    ensure!(empty.status == 200, "{}", empty.json);
    ensure!(
        empty.json["intent"] == serde_json::json!({"name": null, "confidence": 0.0}),
        "{}",
        empty.json
    );

    // Bad input: 400 in Rasa's error shape.
    let huge = format!("{{\"text\": \"{}\"}}", "a".repeat(1 << 20));
    for (body, why) in [
        ("not json".to_owned(), "not JSON"),
        ("{}".to_owned(), "no text"),
        ("{\"text\": 42}".to_owned(), "must be a string"),
        (huge, "larger than"),
        (
            format!("{{\"text\": \"{}\"}}", "word ".repeat(3000)),
            "characters",
        ),
    ] {
        let bad = server.post(&format!("/model/parse{q}"), body).await?;
        ensure!(bad.status == 400, "{why}: {} {}", bad.status, bad.json);
        ensure!(
            bad.json["status"] == "failure" && bad.json["reason"] == "BadRequest",
            "{}",
            bad.json
        );
        ensure!(bad.json["code"] == 400, "{}", bad.json);
        let message = bad.json["message"].as_str().unwrap_or_default();
        ensure!(message.contains(why), "{why}: {message}");
    }
    let unknown = server
        .post(
            &format!("/models/nosuchmodel/model/parse{q}"),
            parse_body("hi"),
        )
        .await?;
    ensure!(unknown.status == 404, "{}", unknown.json);
    let named = server
        .post(
            &format!("/models/{}/model/parse{q}", stored.model),
            parse_body("hello"),
        )
        .await?;
    ensure!(
        named.status == 200 && named.json["intent"]["name"] == "greet",
        "{}",
        named.json
    );

    // /status, /healthz, /, /metrics.
    let status = Answer::read(server.get(&format!("/status{q}")).await?).await?;
    ensure!(status.status == 200, "{}", status.json);
    let s = &status.json;
    ensure!(s["model_id"] == label.as_str(), "{s}");
    ensure!(s["num_active_training_jobs"] == 0, "{s}");
    ensure!(
        s["model_file"]
            == keys::version_prefix(&stored.model, manifest.version).trim_end_matches('/'),
        "{s}"
    );
    let models = s["models"].as_array().context("models")?;
    ensure!(models.len() == 1, "{s}");
    ensure!(
        models[0]["name"] == stored.model.as_str() && models[0]["alias"] == "prod",
        "{s}"
    );
    ensure!(
        models[0]["version"] == 1 && models[0]["loaded_at"].is_string(),
        "{s}"
    );
    let no_token_status = server.get("/status").await?;
    ensure!(no_token_status.status() == 401, "/status needs the token");
    let health = server.get("/healthz").await?;
    ensure!(health.status() == 200, "healthz");
    let hello = server.get("/").await?.text().await?;
    ensure!(
        hello.starts_with("Hello from refit serve (Rasa NLU API) "),
        "{hello}"
    );
    let metrics = server.get("/metrics").await?.text().await?;
    let info = format!(
        "refit_serve_model_info{{model=\"{m}\",ref=\"{m}@prod\",version=\"v1\"}} 1",
        m = stored.model
    );
    ensure!(metrics.contains(&info), "{info} missing from:\n{metrics}");
    ensure!(
        metrics.contains("refit_serve_requests_total{route=\"/model/parse\",status=\"400\"}"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("refit_serve_inference_seconds_count"),
        "{metrics}"
    );

    server.proc.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_swaps_versions_under_load() -> Result<()> {
    let stored = Stored::new().await?;
    let result = swap_under_load(&stored).await;
    stored.cleanup().await;
    result
}

async fn swap_under_load(stored: &Stored) -> Result<()> {
    let registry = stored.registry();
    store_version(&registry, &stored.model, 1, 7).await?;
    let dir = tempfile::tempdir()?;
    let server = Arc::new(Server::start(stored, dir.path(), &[]).await?);
    let v1 = format!("{}@v1", stored.model);
    let v2 = format!("{}@v2", stored.model);

    // 16 clients, each parsing without pause until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // Short texts are parsed on the server's async threads, long ones (over 200 characters) on
    // its blocking threads: both paths run through the swap.
    let texts: Arc<Vec<String>> = Arc::new(vec![
        "how much is in my chequing account".to_owned(),
        "what are your opening hours".to_owned(),
        "hello there".to_owned(),
        "are there any fees".to_owned(),
        "how much is in my chequing account and are there any fees ".repeat(5),
    ]);
    let mut clients = Vec::new();
    for client in 0..16 {
        let (server, stop, answered) = (server.clone(), stop.clone(), answered.clone());
        let texts = texts.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut failures = Vec::new();
            let mut i = client;
            while !stop.load(Ordering::Relaxed) {
                let text = &texts[i % texts.len()];
                i += 1;
                match server.post("/model/parse", parse_body(text)).await {
                    Ok(a) if a.status == 200 && a.json["intent"]["name"].is_string() => {
                        seen.extend(a.version);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failures.push(format!("{} {}", a.status, a.json)),
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            (seen, failures)
        }));
    }
    wait_until("the clients to be answered", START_WITHIN, async || {
        let n = answered.load(Ordering::Relaxed);
        Ok(if n >= 100 {
            Waiting::Done(())
        } else {
            Waiting::NotYet(format!("{n} answers"))
        })
    })
    .await?;

    // v2, and the alias moves to it while the clients run.
    store_version(&registry, &stored.model, 2, 8).await?;
    wait_until("v2 to answer", SWAP_WITHIN, async || {
        let a = server.post("/model/parse", parse_body("hello")).await?;
        Ok(if a.version.as_deref() == Some(v2.as_str()) {
            Waiting::Done(())
        } else {
            Waiting::NotYet(format!(
                "answered by {:?}; log:\n{}",
                a.version,
                server.proc.tail(5)
            ))
        })
    })
    .await?;
    // Let the clients run on v2 a little.
    let at_swap = answered.load(Ordering::Relaxed);
    wait_until("answers after the swap", START_WITHIN, async || {
        let n = answered.load(Ordering::Relaxed);
        Ok(if n >= at_swap + 100 {
            Waiting::Done(())
        } else {
            Waiting::NotYet(format!("{} answers since the swap", n - at_swap))
        })
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for client in clients {
        let (s, f) = client.await?;
        seen.extend(s);
        failures.extend(f);
    }
    ensure!(
        failures.is_empty(),
        "{} of {} requests failed during the swap, e.g. {:?}",
        failures.len(),
        answered.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    ensure!(
        seen == BTreeSet::from([v1.clone(), v2.clone()]),
        "answers should come from both versions: {seen:?}"
    );
    let status = Answer::read(server.get("/status").await?).await?;
    ensure!(status.json["models"][0]["version"] == 2, "{}", status.json);
    ensure!(status.json["model_id"] == v2.as_str(), "{}", status.json);

    // A damaged v3: the alias moves to it, it fails to load, v2 keeps serving.
    let manifest = registry.manifest(&stored.model, Version::new(2)?).await?;
    let mut files = Vec::new();
    for name in manifest.files.keys() {
        let bytes = registry.file(&manifest, name).await?;
        files.push((name.clone(), bytes));
    }
    let mut v3 = manifest.clone();
    v3.version = Version::new(3)?;
    for (name, bytes) in &files {
        let mut bytes = bytes.to_vec();
        if name == keys::MODEL_ONNX {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
        }
        let key = keys::version_file(&stored.model, v3.version, name)?;
        stored.store.put(&key, Bytes::from(bytes)).await?;
    }
    stored
        .store
        .put(
            &keys::manifest(&stored.model, v3.version),
            Bytes::from(v3.to_json()),
        )
        .await?;
    registry
        .set_alias(&stored.model, &Alias::new("prod")?, v3.version)
        .await?;
    let failed = format!(
        "refit_serve_swaps_total{{model=\"{}\",result=\"failed\"}}",
        stored.model
    );
    wait_until("the damaged v3 to be refused", SWAP_WITHIN, async || {
        let metrics = server.get("/metrics").await?.text().await?;
        Ok(if metrics.contains(&failed) {
            Waiting::Done(())
        } else {
            Waiting::NotYet(server.proc.tail(5))
        })
    })
    .await?;
    let a = server.post("/model/parse", parse_body("hello")).await?;
    ensure!(
        a.status == 200 && a.version.as_deref() == Some(v2.as_str()),
        "{:?} {}",
        a.version,
        a.json
    );
    let log = server.proc.log_text();
    ensure!(
        log.contains("cannot load the version the alias names") && log.contains("model.onnx"),
        "the refused version is logged with its reason:\n{log}"
    );
    server.proc.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_copies_a_version_and_refuses_a_damaged_one() -> Result<()> {
    let stored = Stored::new().await?;
    let result = pull(&stored).await;
    stored.cleanup().await;
    result
}

async fn pull(stored: &Stored) -> Result<()> {
    let manifest = store_version(&stored.registry(), &stored.model, 1, 7).await?;
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("pulled");
    let run = |args: Vec<String>| -> Result<std::process::Output> {
        Ok(stored.refit()?.args(args).output()?)
    };
    let reference = format!("{}@prod", stored.model);
    let out = run(vec![
        "pull".into(),
        reference.clone(),
        target.display().to_string(),
        "--output".into(),
        "json".into(),
    ])?;
    ensure!(
        out.status.success(),
        "refit pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(printed["version"] == 1, "{printed}");
    let names: Vec<&str> = printed["files"]
        .as_array()
        .context("files")?
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    ensure!(
        names.last() == Some(&keys::MANIFEST),
        "manifest last: {names:?}"
    );
    ensure!(
        names.contains(&keys::SYNONYMS) && names.contains(&keys::MODEL_ONNX),
        "{names:?}"
    );

    let on_disk = Manifest::from_json(&std::fs::read(target.join(keys::MANIFEST))?)?;
    ensure!(on_disk == manifest, "the pulled manifest is the stored one");
    ensure!(!manifest.files.is_empty(), "the manifest lists files");
    for (name, entry) in &manifest.files {
        let bytes = std::fs::read(target.join(name)).with_context(|| format!("{name} pulled"))?;
        ensure!(bytes.len() as u64 == entry.size, "{name}: size");
        ensure!(
            sha256_hex(&bytes) == entry.sha256.to_lowercase(),
            "{name}: sha256"
        );
    }
    let mut listed: Vec<String> = std::fs::read_dir(&target)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    listed.sort();
    let mut expected: Vec<String> = manifest.files.keys().cloned().collect();
    expected.push(keys::MANIFEST.to_owned());
    expected.sort();
    ensure!(listed == expected, "only the version's files: {listed:?}");

    // Not over a non-empty folder, unless --force.
    let again = run(vec![
        "pull".into(),
        reference.clone(),
        target.display().to_string(),
    ])?;
    ensure!(!again.status.success(), "a non-empty folder is refused");
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let forced = run(vec![
        "pull".into(),
        format!("{}@v1", stored.model),
        target.display().to_string(),
        "--force".into(),
    ])?;
    ensure!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );

    // A tampered object: the pull fails, names the file, and leaves no manifest behind.
    let key = keys::version_file(&stored.model, manifest.version, keys::MODEL_ONNX)?;
    let mut bytes = stored.store.get(&key).await?.to_vec();
    bytes[0] ^= 0xff;
    stored.store.put(&key, Bytes::from(bytes)).await?;
    let damaged_dir = dir.path().join("damaged");
    let damaged = run(vec![
        "pull".into(),
        reference,
        damaged_dir.display().to_string(),
    ])?;
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    ensure!(!damaged.status.success(), "a tampered version is refused");
    ensure!(
        stderr.contains("model.onnx") && stderr.contains("checksum mismatch"),
        "the error names the file and the check: {stderr}"
    );
    ensure!(
        !damaged_dir.join(keys::MANIFEST).exists(),
        "no manifest is written for an incomplete pull"
    );
    Ok(())
}
