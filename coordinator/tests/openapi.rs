//! `coordinator/openapi.yaml` against the code: every route the router registers
//! (`coordinator/src/api/mod.rs`) is described with the same methods and nothing else is; the
//! routes that need no token say so; every `$ref` resolves; and each schema's properties are
//! exactly the fields the `wire` types (and the decision report) serialise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::Utc;
use refit_proto::data::{Entity, Example, TrainingData};
use refit_proto::decision::{DecisionInput, Policy, decide};
use refit_proto::wire::{
    AliasRequest, AliasView, DatasetBody, DecisionSummary, ErrorBody, ErrorDetail, EventView,
    JobList, JobState, JobView, ModelList, ModelView, Overview, ProgressView, QueueView,
    SubmitRequest, SubmitResponse, VersionList, VersionView, WorkerView,
};
use refit_proto::{ArchSpec, Manifest, Metrics, Mode, ModelName, Version};
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

fn crate_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&crate_file("openapi.yaml")).expect("valid YAML");
    assert_eq!(docs.len(), 1, "openapi.yaml holds one document");
    docs.remove(0)
}

fn keys(yaml: &Yaml) -> BTreeSet<String> {
    yaml.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The end of the call that opens at `open` (the index of a `(`), counting nested parentheses
/// and skipping string literals.
fn matching_paren(text: &str, open: usize) -> usize {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}");
}

/// `path → methods` as `api/mod.rs` registers them: each `.route("…", get(…).post(…))`, with
/// `/v1` in front of those on the router nested under `/v1`.
fn registered_routes() -> BTreeMap<String, BTreeSet<String>> {
    let source = crate_file("src/api/mod.rs");
    let code = source.split("#[cfg(test)]").next().unwrap();
    let v1_start = code
        .find("let v1 = Router::new()")
        .expect("api/mod.rs builds the /v1 router as `let v1 = Router::new()`");
    let v1_end = code
        .find(".nest(\"/v1\", v1)")
        .expect("api/mod.rs nests it with `.nest(\"/v1\", v1)`");
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (at, _) in code.match_indices(".route(") {
        let open = at + ".route".len();
        let call = &code[open + 1..matching_paren(code, open)];
        let path = call
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("a route without a path literal: {call}"));
        let handlers = &call[call.find(',').expect("a route has handlers")..];
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| {
                handlers.match_indices(&format!("{m}(")).any(|(i, _)| {
                    i == 0 || {
                        let before = handlers.as_bytes()[i - 1];
                        !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
                    }
                })
            })
            .map(|m| (*m).to_owned())
            .collect();
        assert!(!methods.is_empty(), "no method found in .route({call})");
        let full = if (v1_start..v1_end).contains(&at) {
            format!("/v1{path}")
        } else {
            path.to_owned()
        };
        assert!(
            routes.insert(full.clone(), methods).is_none(),
            "{full} is registered twice"
        );
    }
    assert!(routes.len() >= 10, "too few routes parsed: {routes:?}");
    routes
}

#[test]
fn every_route_is_described_with_its_methods_and_nothing_else() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let paths = spec["paths"].as_hash().expect("paths is a mapping");
    let described: BTreeMap<String, BTreeSet<String>> = paths
        .iter()
        .map(|(path, item)| {
            let methods = keys(item)
                .into_iter()
                .filter(|k| METHODS.contains(&k.as_str()))
                .collect();
            (
                path.as_str().expect("paths are strings").to_owned(),
                methods,
            )
        })
        .collect();
    let registered = registered_routes();
    for (path, methods) in &registered {
        assert_eq!(
            described.get(path),
            Some(methods),
            "openapi.yaml must describe {path} with exactly {methods:?}"
        );
    }
    for path in described.keys() {
        assert!(
            registered.contains_key(path),
            "openapi.yaml describes {path}, which api/mod.rs does not register"
        );
    }
}

#[test]
fn v1_needs_the_bearer_token_and_the_rest_does_not() {
    let spec = spec();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearerAuth"]["scheme"].as_str(),
        Some("bearer")
    );
    let global = spec["security"]
        .as_vec()
        .expect("a global security requirement");
    assert!(global.iter().any(|s| !s["bearerAuth"].is_badvalue()));
    assert_eq!(
        spec["components"]["securitySchemes"]["metricsBearer"]["scheme"].as_str(),
        Some("bearer")
    );
    let mut operation_ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_hash().unwrap() {
        let path = path.as_str().unwrap();
        for method in METHODS {
            let op = &item[method];
            if op.is_badvalue() {
                continue;
            }
            let id = op["operationId"]
                .as_str()
                .expect("every operation has an id");
            assert!(
                operation_ids.insert(id.to_owned()),
                "operationId {id} twice"
            );
            let responses = keys(&op["responses"]);
            if path.starts_with("/v1/") {
                assert!(
                    op["security"].is_badvalue(),
                    "{method} {path} must keep the global bearer requirement"
                );
                assert!(responses.contains("401"), "{method} {path} lacks its 401");
            } else if path == "/metrics" {
                // Open unless `coordinator.metrics_token` is set: no requirement, or that token.
                let options = op["security"]
                    .as_vec()
                    .expect("/metrics states its security");
                assert!(
                    options
                        .iter()
                        .any(|s| s.as_hash().is_some_and(|h| h.is_empty())),
                    "/metrics: list `{{}}` (open by default)"
                );
                assert!(
                    options.iter().any(|s| !s["metricsBearer"].is_badvalue()),
                    "/metrics: list `metricsBearer`"
                );
                assert!(responses.contains("401"), "/metrics lacks its 401");
            } else {
                assert_eq!(
                    op["security"].as_vec().map(Vec::len),
                    Some(0),
                    "{method} {path} needs no token: say `security: []`"
                );
                assert!(!responses.contains("401"), "{method} {path}");
            }
            for status in &responses {
                assert!(
                    status.len() == 3 && status.parse::<u16>().is_ok(),
                    "{method} {path}: response key {status:?} must be a quoted status code"
                );
            }
        }
    }
}

/// Every `$ref` in `yaml`.
fn refs(yaml: &Yaml, out: &mut Vec<String>) {
    match yaml {
        Yaml::Hash(h) => {
            for (k, v) in h {
                if k.as_str() == Some("$ref") {
                    out.push(v.as_str().expect("a $ref is a string").to_owned());
                } else {
                    refs(v, out);
                }
            }
        }
        Yaml::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_schema_is_used() {
    let spec = spec();
    let mut found = Vec::new();
    refs(&spec, &mut found);
    assert!(!found.is_empty());
    let mut used = BTreeSet::new();
    for reference in &found {
        let mut node = &spec;
        let pointer = reference
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("{reference}: only local references"));
        for part in pointer.split('/') {
            node = &node[part];
        }
        assert!(!node.is_badvalue(), "{reference} does not resolve");
        if let Some(name) = pointer.strip_prefix("components/schemas/") {
            used.insert(name.to_owned());
        }
    }
    for name in keys(&spec["components"]["schemas"]) {
        assert!(used.contains(&name), "schema {name} is never referenced");
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas against what the wire types serialise.

fn metrics() -> Metrics {
    Metrics {
        intent_accuracy: 0.9,
        intent_macro_f1: 0.8,
        intent_weighted_f1: 0.85,
        entity_precision: 0.9,
        entity_recall: 0.8,
        entity_f1: 0.85,
        examples: 10,
    }
}

fn dataset() -> DatasetBody {
    let sha = "a".repeat(64);
    DatasetBody {
        key: format!("datasets/sha256/{sha}.yml"),
        sha256: sha,
    }
}

/// A job with every optional field set.
fn full_job() -> JobView {
    JobView {
        id: "0190f5c2-0000-7000-8000-000000000001".into(),
        model: "financial".into(),
        state: JobState::Running,
        mode: Mode::Finetune,
        requested_mode: Mode::Auto,
        base_version: Some("v1".into()),
        promote_to: Some("prod".into()),
        promotion: None,
        version: "v2".into(),
        pool: "default".into(),
        dataset: dataset(),
        attempts: 1,
        failures: 1,
        handbacks: 1,
        published: true,
        worker: Some("w-1".into()),
        progress: Some(ProgressView {
            epoch: 1.0,
            total_epochs: 30.0,
            step: 10,
            loss: 0.5,
            examples_per_sec: 100.0,
            eta_secs: Some(3.0),
            phase: Some("train".into()),
            trouble: Some("S3 unreachable for 12 s: connection refused".into()),
        }),
        metrics: Some(metrics()),
        timings: BTreeMap::from([("train".to_owned(), 1.0)]),
        error: Some("e".into()),
        schedule: Some("nightly".into()),
        decision: Some(DecisionSummary {
            decision: "finetune".into(),
            reasons: vec![],
        }),
        submitted_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: Some(Utc::now()),
        last_heartbeat_at: Some(Utc::now()),
        last_checkpoint_at: Some(Utc::now()),
        events: vec![EventView {
            seq: 1,
            at: Utc::now(),
            received_at: Utc::now(),
            attempt: 1,
            attempt_id: Some("0190f5c2-0000-4000-8000-000000000002".into()),
            worker: "w-1".into(),
            kind: "started".into(),
            body: json!({"total_epochs": 30.0}),
        }],
        more_events: true,
    }
}

/// A decision report with a diff, vocabulary growth and every kind of reason field.
fn report() -> Value {
    let example = |text: &str, intent: &str, entity: &str| Example {
        text: text.into(),
        intent: intent.into(),
        entities: vec![Entity {
            start: 0,
            end: 2,
            entity: entity.into(),
            value: None,
            role: None,
            group: None,
        }],
    };
    let base_data = TrainingData {
        examples: vec![example("hi there", "greet", "x")],
        ..Default::default()
    };
    // "yo" is an entity here and bare in the next example, which the next intent also lists:
    // both kinds of conflict.
    let mut bare = example("yo there", "bye", "x");
    bare.entities.clear();
    let data = TrainingData {
        examples: vec![example("yo there", "hello", "x"), bare],
        ..Default::default()
    };
    let base = Manifest::for_data(
        ModelName::new("m").unwrap(),
        Version::first(),
        &base_data,
        ArchSpec::default(),
    );
    let vocabulary = BTreeSet::from(["hi".to_owned(), "there".to_owned()]);
    let report = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Reject,
        base: Some(&base),
        data: &data,
        arch: &ArchSpec::default(),
        base_vocabulary: Some(&vocabulary),
    });
    serde_json::to_value(report).unwrap()
}

/// Checks that schema `name` lists exactly the fields of `sample` (which has every optional
/// field set) and requires only fields that are always there.
fn check_schema(spec: &Yaml, name: &str, sample: &Value, always: &[&str]) {
    let schema = &spec["components"]["schemas"][name];
    assert!(!schema.is_badvalue(), "no schema {name}");
    let described = keys(&schema["properties"]);
    let sent: BTreeSet<String> = sample
        .as_object()
        .unwrap_or_else(|| panic!("{name}: the sample is not an object"))
        .keys()
        .cloned()
        .collect();
    assert_eq!(described, sent, "schema {name} vs the fields serialised");
    let required: BTreeSet<String> = schema["required"]
        .as_vec()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let always: BTreeSet<String> = always.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        required, always,
        "schema {name}: `required` must list exactly the fields that are always sent"
    );
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

/// Every key of `sample`, less `except`.
fn all_but<'a>(sample: &'a Value, except: &[&str]) -> Vec<&'a str> {
    sample
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !except.contains(k))
        .collect()
}

#[test]
fn schemas_list_exactly_the_fields_the_wire_types_send() {
    let spec = spec();
    let job = to_json(&full_job());
    check_schema(
        &spec,
        "JobView",
        &job,
        &all_but(&job, &["events", "more_events"]),
    );
    let progress = &job["progress"];
    check_schema(&spec, "ProgressView", progress, &all_but(progress, &[]));
    let event = &job["events"][0];
    check_schema(&spec, "EventView", event, &all_but(event, &[]));
    let summary = &job["decision"];
    check_schema(&spec, "DecisionSummary", summary, &all_but(summary, &[]));
    let m = to_json(&metrics());
    check_schema(&spec, "Metrics", &m, &all_but(&m, &[]));
    let d = to_json(&dataset());
    check_schema(&spec, "DatasetBody", &d, &["key", "sha256"]);

    let request = to_json(&SubmitRequest {
        model: "m".into(),
        dataset: Some(dataset()),
        eval_dataset: Some(dataset()),
        mode: Some(Mode::Auto),
        policy: Some(Policy::Scratch),
        base: Some("prod".into()),
        epochs: Some(1),
        epoch_fraction: Some(0.3),
        batch_size: Some(8),
        final_batch_size: Some(32),
        learning_rate: Some(0.001),
        seed: Some(1),
        priority: Some(1),
        pool: Some("default".into()),
        promote_to: Some("prod".into()),
    });
    check_schema(&spec, "SubmitRequest", &request, &["model", "dataset"]);

    let report = report();
    let response = json!({"job": job.clone(), "decision": report.clone()});
    // The sample stands for SubmitResponse's serialisation; check that it is one.
    let typed: SubmitResponse = serde_json::from_value(response.clone()).unwrap();
    assert_eq!(to_json(&typed).as_object().unwrap().len(), 2);
    check_schema(&spec, "SubmitResponse", &response, &["decision"]);
    check_schema(
        &spec,
        "DecisionReport",
        &report,
        &all_but(&report, &["conflicts"]),
    );
    let conflicts = &report["conflicts"];
    check_schema(
        &spec,
        "DataConflicts",
        conflicts,
        &["entity_count", "entities", "intent_count", "intents"],
    );
    let entity = &conflicts["entities"][0];
    check_schema(&spec, "EntityConflict", entity, &["words", "labels"]);
    for label in entity["labels"].as_array().unwrap() {
        check_schema(&spec, "LabelUse", label, &["entity", "examples", "example"]);
    }
    let intent = &conflicts["intents"][0];
    check_schema(&spec, "IntentConflict", intent, &["words", "intents"]);
    check_schema(&spec, "Totals", &report["examples"], &["old", "new"]);
    let diff = &report["diff"];
    check_schema(&spec, "LabelDiff", diff, &all_but(diff, &[]));
    check_schema(
        &spec,
        "LabelChanges",
        &diff["intents"],
        &["added", "removed", "counts"],
    );
    let count = &diff["intents"]["counts"][0];
    check_schema(&spec, "LabelCount", count, &all_but(count, &[]));
    let vocabulary = &diff["vocabulary"];
    check_schema(&spec, "VocabGrowth", vocabulary, &all_but(vocabulary, &[]));
    // Reasons: a union of every reason's fields.
    let mut reason = serde_json::Map::new();
    for r in report["reasons"].as_array().unwrap() {
        reason.extend(r.as_object().unwrap().clone());
    }
    reason.insert("fields".into(), json!(["hidden_size"]));
    check_schema(&spec, "Reason", &Value::Object(reason), &["code"]);

    let list = to_json(&JobList {
        jobs: vec![],
        next_cursor: Some("x".into()),
    });
    check_schema(&spec, "JobList", &list, &["jobs", "next_cursor"]);

    let version = to_json(&VersionView {
        version: "v2".into(),
        parent: Some("v1".into()),
        mode: Mode::Finetune,
        finetune_depth: 1,
        dataset_sha256: "a".repeat(64),
        dataset_key: dataset().key,
        examples: 1,
        epochs: 30.0,
        metrics: Some(metrics()),
        timings: BTreeMap::new(),
        aliases: vec!["prod".into()],
        created_at: Utc::now(),
    });
    check_schema(&spec, "VersionView", &version, &all_but(&version, &[]));
    let versions = to_json(&VersionList {
        model: "m".into(),
        versions: vec![],
    });
    check_schema(&spec, "VersionList", &versions, &["model", "versions"]);
    let model = to_json(&ModelView {
        name: "m".into(),
        latest_version: Some("v1".into()),
        versions: 1,
        aliases: BTreeMap::new(),
        active_jobs: 0,
    });
    check_schema(&spec, "ModelView", &model, &all_but(&model, &[]));
    check_schema(
        &spec,
        "ModelList",
        &to_json(&ModelList { models: vec![] }),
        &["models"],
    );
    let alias_request = to_json(&AliasRequest {
        version: "v1".into(),
        force: false,
        reason: Some("r".into()),
        by: Some("b".into()),
    });
    check_schema(&spec, "AliasRequest", &alias_request, &["version"]);
    let alias = to_json(&AliasView {
        model: "m".into(),
        alias: "prod".into(),
        version: "v2".into(),
        previous: Some("v1".into()),
        forced: false,
        gate: None,
    });
    check_schema(&spec, "AliasView", &alias, &all_but(&alias, &[]));

    let worker = WorkerView {
        id: "w".into(),
        last_seen_at: Utc::now(),
        heartbeat_age_secs: 1.0,
        job: Some("j".into()),
        pool: Some("default".into()),
        status: "busy".into(),
    };
    let queue = QueueView {
        name: "refit.jobs.default".into(),
        ready: 1,
        unacked: Some(0),
        consumers: 2,
    };
    let w = to_json(&worker);
    check_schema(&spec, "WorkerView", &w, &all_but(&w, &[]));
    let q = to_json(&queue);
    check_schema(&spec, "QueueView", &q, &all_but(&q, &[]));
    let overview = to_json(&Overview {
        now: Utc::now(),
        refit_version: "0.1.0".into(),
        queues: vec![queue],
        broker_error: Some("x".into()),
        workers: vec![worker],
        jobs_by_state: BTreeMap::new(),
        active_jobs: vec![],
        recent_jobs: vec![],
        loss_curves: BTreeMap::new(),
    });
    check_schema(&spec, "Overview", &overview, &all_but(&overview, &[]));

    let error = to_json(&ErrorBody {
        error: ErrorDetail {
            code: "rejected".into(),
            message: "m".into(),
            details: Some(json!({})),
        },
    });
    check_schema(&spec, "ErrorBody", &error, &["error"]);
    check_schema(&spec, "ErrorDetail", &error["error"], &["code", "message"]);
}

#[test]
fn enums_match_the_code() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    let values = |yaml: &Yaml| -> Vec<String> {
        yaml.as_vec()
            .expect("an enum")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let states: Vec<String> = JobState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(values(&schemas["JobState"]["enum"]), states);
    let modes: Vec<String> = [Mode::Auto, Mode::Finetune, Mode::Scratch]
        .iter()
        .map(|m| m.as_str().to_owned())
        .collect();
    assert_eq!(values(&schemas["Mode"]["enum"]), modes);
    let policies: Vec<String> = [Policy::Reject, Policy::Scratch]
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    assert_eq!(values(&schemas["Policy"]["enum"]), policies);
    // The error codes the API's error type can produce are all listed.
    let codes = values(&schemas["ErrorDetail"]["properties"]["code"]["enum"]);
    let source = crate_file("src/api/error.rs");
    let mut checked = 0;
    for (at, _) in source.match_indices("StatusCode::") {
        // `StatusCode::CONFLICT,` then the code's string literal: `"rejected"`.
        let rest = source[at + "StatusCode::".len()..]
            .trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_')
            .trim_start();
        let Some(code) = rest
            .strip_prefix(',')
            .map(str::trim_start)
            .and_then(|s| s.strip_prefix('"'))
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        checked += 1;
        assert!(
            codes.iter().any(|c| c == code),
            "error code {code} (api/error.rs) is not in ErrorDetail.code's enum"
        );
    }
    assert!(
        checked >= 7,
        "found only {checked} error codes in api/error.rs"
    );
}
