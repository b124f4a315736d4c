//! `coordinator/openapi.yaml` against the code: every route the router registers
//! (`coordinator/src/api/mod.rs`) is described with the same methods and nothing else is; the
//! routes that need no token say so; every `$ref` resolves; each schema's properties are
//! exactly the fields the `wire` types (and the decision report, the evaluation report, the
//! comparison and the promotion gate) serialise; and those samples, built by the real functions
//! (`decide`, `evaluate`, `compare`, `gate`), conform to the schemas (types, enums, references).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::Utc;
use refit_proto::data::{Entity, Example, TrainingData};
use refit_proto::decision::{DecisionInput, Policy, decide};
use refit_proto::evaluation::{
    Comparison, EVALUATION_FORMAT, Evaluation, Prediction, compare, evaluate, outcomes,
};
use refit_proto::promotion::{AliasHistory, AliasMove, GateResult, PromotionPolicy, gate};
use refit_proto::wire::{
    AliasRequest, AliasView, DatasetBody, DecisionSummary, ErrorBody, ErrorDetail, EventView,
    JobList, JobState, JobView, ModelList, ModelView, Overview, ProgressView, PromotionView,
    QueueView, SubmitRequest, SubmitResponse, VersionList, VersionView, WorkerView,
};
use refit_proto::{ArchSpec, DatasetRef, Manifest, Metrics, Mode, ModelName, Version};
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

/// `path → method → handler` (`models::versions`) as `api/mod.rs` registers them: each
/// `.route("…", get(…).post(…))`, with `/v1` in front of those on the router nested under `/v1`.
fn registered_routes() -> BTreeMap<String, BTreeMap<String, String>> {
    let source = crate_file("src/api/mod.rs");
    let code = source.split("#[cfg(test)]").next().unwrap();
    let v1_start = code
        .find("let v1 = Router::new()")
        .expect("api/mod.rs builds the /v1 router as `let v1 = Router::new()`");
    let v1_end = code
        .find(".nest(\"/v1\", v1)")
        .expect("api/mod.rs nests it with `.nest(\"/v1\", v1)`");
    let mut routes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (at, _) in code.match_indices(".route(") {
        let open = at + ".route".len();
        let call = &code[open + 1..matching_paren(code, open)];
        let path = call
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("a route without a path literal: {call}"));
        let handlers = &call[call.find(',').expect("a route has handlers")..];
        let mut methods: BTreeMap<String, String> = BTreeMap::new();
        for m in METHODS {
            let call = format!("{m}(");
            let found = handlers.match_indices(&call).find(|(i, _)| {
                *i == 0 || {
                    let before = handlers.as_bytes()[i - 1];
                    !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
                }
            });
            if let Some((i, _)) = found {
                let rest = &handlers[i + call.len()..];
                let handler = rest[..rest.find(')').expect("a handler call closes")].trim();
                methods.insert(m.to_owned(), handler.to_owned());
            }
        }
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
    for (path, handlers) in &registered {
        let methods: BTreeSet<String> = handlers.keys().cloned().collect();
        assert_eq!(
            described.get(path),
            Some(&methods),
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

/// Where a handler is: `src/api/<module>.rs` for `module::name`, `src/api/mod.rs` for `name`.
fn handler_file(handler: &str) -> (String, &str) {
    match handler.split_once("::") {
        Some((module, name)) => (format!("src/api/{module}.rs"), name),
        None => ("src/api/mod.rs".to_owned(), handler),
    }
}

/// A handler's signature (`async fn name(…) -> … {`).
fn handler_signature(handler: &str) -> String {
    let (file, name) = handler_file(handler);
    let source = crate_file(&file);
    let at = source
        .find(&format!("async fn {name}("))
        .unwrap_or_else(|| panic!("no `async fn {name}(` in {file}"));
    let end = at + source[at..].find(" {\n").expect("a function body");
    source[at..end].to_owned()
}

/// The `X` of the first `Json<X>` in `text`, if any.
fn json_type(text: &str) -> Option<&str> {
    let start = text.find("Json<")? + "Json<".len();
    let len = text[start..].find('>')?;
    Some(&text[start..start + len])
}

/// A spec node, through its `$ref` if it is one.
fn deref<'a>(spec: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        Some(reference) => resolve(spec, reference),
        None => node,
    }
}

/// Where a local `$ref` points.
fn resolve<'a>(spec: &'a Yaml, reference: &str) -> &'a Yaml {
    let pointer = reference
        .strip_prefix("#/")
        .unwrap_or_else(|| panic!("{reference}: only local references"));
    let mut node = spec;
    for part in pointer.split('/') {
        node = &node[part];
    }
    assert!(!node.is_badvalue(), "{reference} does not resolve");
    node
}

#[test]
fn success_responses_name_the_types_the_handlers_return() {
    let spec = spec();
    let mut checked = 0;
    for (path, handlers) in registered_routes() {
        for (method, handler) in handlers {
            // `-> Result<Json<X>, ApiError>` or `-> Result<(StatusCode, Json<X>), ApiError>`.
            let signature = handler_signature(&handler);
            let returns = signature.split("->").nth(1).unwrap_or_default();
            let Some(body) = json_type(returns) else {
                continue;
            };
            let responses = &spec["paths"][path.as_str()][method.as_str()]["responses"];
            let success: Vec<String> = keys(responses)
                .into_iter()
                .filter(|status| status.starts_with('2'))
                .collect();
            assert_eq!(
                success.len(),
                1,
                "{method} {path}: one success response, not {success:?}"
            );
            let schema = &responses[success[0].as_str()]["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"].as_str(),
                Some(format!("#/components/schemas/{body}").as_str()),
                "{method} {path} answers {success:?} with {handler}'s Json<{body}>"
            );
            checked += 1;
        }
    }
    assert!(checked >= 13, "only {checked} handlers return Json<…>");
}

/// Query parameters a handler reads: the fields of its `Query<X>` struct, each with whether it
/// must be given (not an `Option`).
fn query_fields(handler: &str) -> BTreeMap<String, bool> {
    let signature = handler_signature(handler);
    let Some(at) = signature.find("Query<") else {
        return BTreeMap::new();
    };
    let rest = &signature[at + "Query<".len()..];
    let name = &rest[..rest.find('>').expect("Query<X>")];
    let (file, _) = handler_file(handler);
    let source = crate_file(&file);
    let start = source
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("no `struct {name}` in {file}"));
    let body = &source[start..start + source[start..].find("\n}").expect("struct end")];
    let mut fields = BTreeMap::new();
    let mut defaulted = false;
    for line in body.lines().skip(1).map(str::trim) {
        if line.starts_with("#[") {
            defaulted |= line.contains("default");
            continue;
        }
        if line.starts_with("//") || line.is_empty() {
            continue;
        }
        let (field, ty) = line
            .trim_start_matches("pub ")
            .split_once(':')
            .unwrap_or_else(|| panic!("a field of {name}: {line}"));
        let required = !defaulted && !ty.trim().starts_with("Option<");
        fields.insert(field.trim().to_owned(), required);
        defaulted = false;
    }
    fields
}

#[test]
fn path_and_query_parameters_match_the_handlers() {
    let spec = spec();
    for (path, handlers) in registered_routes() {
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        for (method, handler) in handlers {
            let op = &spec["paths"][path.as_str()][method.as_str()];
            let mut described_path = BTreeSet::new();
            let mut described_query = BTreeMap::new();
            for parameter in op["parameters"].as_vec().map(Vec::as_slice).unwrap_or(&[]) {
                let parameter = deref(&spec, parameter);
                let name = parameter["name"]
                    .as_str()
                    .expect("a parameter name")
                    .to_owned();
                let required = parameter["required"].as_bool().unwrap_or(false);
                match parameter["in"].as_str() {
                    Some("path") => {
                        assert!(
                            required,
                            "{method} {path}: path parameter {name} is required"
                        );
                        described_path.insert(name);
                    }
                    Some("query") => {
                        described_query.insert(name, required);
                    }
                    other => panic!("{method} {path}: parameter {name} in {other:?}"),
                }
            }
            assert_eq!(
                described_path, in_path,
                "{method} {path}: the path parameters"
            );
            assert_eq!(
                described_query,
                query_fields(&handler),
                "{method} {path}: the query parameters (name → required) {handler} reads"
            );
        }
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
        promotion: Some(promotion()),
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

fn v(n: u32) -> Version {
    Version::new(n).expect("a version number in range")
}

fn eval_example(text: &str, intent: &str, entities: &[(usize, usize, &str)]) -> Example {
    Example {
        text: text.into(),
        intent: intent.into(),
        entities: entities
            .iter()
            .map(|&(start, end, entity)| Entity {
                start,
                end,
                entity: entity.into(),
                value: None,
                role: None,
                group: None,
            })
            .collect(),
    }
}

/// Eval data with intents and entities.
fn gold() -> Vec<Example> {
    vec![
        eval_example("hi there", "greet", &[]),
        eval_example("pay bob now", "transfer", &[(4, 7, "name")]),
        eval_example("bye", "goodbye", &[]),
        eval_example("pay ann", "transfer", &[(4, 7, "name")]),
        eval_example("hello", "greet", &[]),
    ]
}

fn predicted(intent: &str, entities: &[(usize, usize, &str)]) -> Prediction {
    let e = eval_example("", intent, entities);
    Prediction {
        intent: e.intent,
        confidence: 0.9,
        entities: e.entities,
    }
}

/// `version`'s evaluation on [`gold`], scored by `evaluate` and `outcomes`.
fn evaluation(version: u32, predictions: &[Prediction]) -> Evaluation {
    let gold = gold();
    let sha = "b".repeat(64);
    Evaluation {
        format: EVALUATION_FORMAT,
        model: ModelName::new("financial").unwrap(),
        version: v(version),
        data: DatasetRef {
            key: format!("datasets/sha256/{sha}.yml"),
            sha256: sha,
        },
        report: evaluate(&gold, predictions),
        outcomes: outcomes(&gold, predictions),
        comparisons: Vec::new(),
    }
}

/// v2's evaluation, holding its comparison with v1 (its parent and the alias's version), and
/// that comparison: v2 gets an intent and two examples' entities wrong that v1 had right
/// (negative flips, with their texts) and one intent right that v1 had wrong (a positive flip);
/// both have confusions and per-type entity scores.
fn evaluations() -> (Evaluation, Comparison) {
    let v1 = evaluation(
        1,
        &[
            predicted("greet", &[]),
            predicted("transfer", &[(4, 7, "name")]),
            predicted("greet", &[]),
            predicted("transfer", &[(4, 7, "name")]),
            predicted("greet", &[]),
        ],
    );
    let mut v2 = evaluation(
        2,
        &[
            predicted("goodbye", &[]),
            predicted("transfer", &[]),
            predicted("goodbye", &[]),
            predicted("transfer", &[(4, 7, "name")]),
            predicted("greet", &[(0, 5, "name")]),
        ],
    );
    let roles = vec!["parent".to_owned(), "alias prod".to_owned()];
    let comparison = compare(&v2, &v1, roles, Some(&gold())).expect("the same eval data");
    assert!(
        comparison.negative_flips.examples == 3 && comparison.positive_flips.examples == 1,
        "{comparison:?}"
    );
    v2.comparisons.push(comparison.clone());
    (v2, comparison)
}

/// The gate's decisions: v2 against v1 (every measured check), an alias that points nowhere
/// yet, and a candidate that cannot be compared (`comparable`).
fn gates() -> Vec<GateResult> {
    let (_, comparison) = evaluations();
    let policy = PromotionPolicy::default();
    vec![
        gate(&policy, v(2), Some(v(1)), Ok(&comparison)),
        gate(&policy, v(2), None, Err(String::new())),
        gate(
            &policy,
            v(3),
            Some(v(2)),
            Err("v3 has no evaluation (train it with eval data)".into()),
        ),
    ]
}

/// What a job's `promote_to prod` led to: v2 refused by the gate against v1.
fn promotion() -> PromotionView {
    let result = gates().remove(0);
    assert!(!result.passed, "v2 loses 3 of 5 examples: {result:?}");
    PromotionView {
        alias: "prod".into(),
        outcome: "refused".into(),
        summary: format!("prod stays: {}", result.summary()),
        gate: Some(result),
        at: Utc::now(),
    }
}

/// Whether `value` is of JSON Schema type `ty`.
fn is_type(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown type {other}"),
    }
}

/// A YAML scalar (from `enum` or `const`) equal to a JSON value.
fn same_scalar(yaml: &Yaml, value: &Value) -> bool {
    match yaml {
        Yaml::String(s) => value.as_str() == Some(s),
        Yaml::Integer(i) => value.as_i64() == Some(*i),
        Yaml::Boolean(b) => value.as_bool() == Some(*b),
        Yaml::Null => value.is_null(),
        Yaml::Real(_) => yaml.as_f64() == value.as_f64(),
        _ => false,
    }
}

/// Checks `value` against `schema`, following `$ref`s: `oneOf` (exactly one option matches),
/// `type`, `enum`, `const`, `minimum`/`maximum`, `required`, `properties` (each present field
/// against its schema), `additionalProperties`, `items` and `prefixItems`. Formats and patterns
/// are not checked.
fn conforms(spec: &Yaml, schema: &Yaml, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        conforms(spec, resolve(spec, reference), value, at)?;
    }
    if let Some(options) = schema["oneOf"].as_vec() {
        let matching = options
            .iter()
            .filter(|option| conforms(spec, option, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {matching} of oneOf's options match {value}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Yaml::String(t) => vec![t.as_str()],
        Yaml::Array(list) => list.iter().filter_map(Yaml::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| is_type(value, t)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let Some(values) = schema["enum"].as_vec()
        && !value.is_null()
        && !values.iter().any(|e| same_scalar(e, value))
    {
        return Err(format!("{at}: {value} is not in the enum {values:?}"));
    }
    if !schema["const"].is_badvalue() && !same_scalar(&schema["const"], value) {
        return Err(format!("{at}: {value} is not the const"));
    }
    if let Some(x) = value.as_f64() {
        let bound = |key: &str| {
            let b = &schema[key];
            b.as_i64().map(|i| i as f64).or_else(|| b.as_f64())
        };
        if bound("minimum").is_some_and(|min| x < min)
            || bound("maximum").is_some_and(|max| x > max)
        {
            return Err(format!("{at}: {value} is out of bounds"));
        }
    }
    if let Some(object) = value.as_object() {
        for field in schema["required"]
            .as_vec()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let field = field.as_str().expect("required lists names");
            if !object.contains_key(field) {
                return Err(format!("{at}: required field {field} is missing"));
            }
        }
        for (field, inner) in object {
            let at = format!("{at}.{field}");
            let described = &schema["properties"][field.as_str()];
            if !described.is_badvalue() {
                conforms(spec, described, inner, &at)?;
                continue;
            }
            match &schema["additionalProperties"] {
                Yaml::Boolean(false) => return Err(format!("{at}: not a property")),
                extra @ Yaml::Hash(_) => conforms(spec, extra, inner, &at)?,
                _ => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(prefix) = schema["prefixItems"].as_vec() {
            for (i, (item_schema, item)) in prefix.iter().zip(items).enumerate() {
                conforms(spec, item_schema, item, &format!("{at}[{i}]"))?;
            }
        } else if !schema["items"].is_badvalue() {
            for (i, item) in items.iter().enumerate() {
                conforms(spec, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// Checks that schema `name` lists exactly the fields of `sample` (which has every optional
/// field set), requires only fields that are always there, and that `sample` conforms to it.
fn check_schema(spec: &Yaml, name: &str, sample: &Value, always: &[&str]) {
    let schema = &spec["components"]["schemas"][name];
    assert!(!schema.is_badvalue(), "no schema {name}");
    if let Err(e) = conforms(spec, schema, sample, name) {
        panic!("the sample does not conform to schema {name}: {e}");
    }
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
        &all_but(&job, &["events", "more_events", "promote_to", "promotion"]),
    );
    let promotion = &job["promotion"];
    check_schema(
        &spec,
        "PromotionView",
        promotion,
        &all_but(promotion, &["gate"]),
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
        forced: true,
        gate: Some(gates().remove(0)),
    });
    check_schema(&spec, "AliasView", &alias, &all_but(&alias, &["gate"]));

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
fn evaluation_and_comparison_schemas_list_exactly_the_fields_sent() {
    let spec = spec();
    let (evaluation, comparison) = evaluations();
    let e = to_json(&evaluation);
    check_schema(&spec, "Evaluation", &e, &all_but(&e, &[]));
    let report = &e["report"];
    check_schema(&spec, "EvaluationReport", report, &all_but(report, &[]));
    let intent = &report["intent"];
    check_schema(&spec, "IntentReport", intent, &all_but(intent, &[]));
    let entity = &report["entity"];
    check_schema(&spec, "EntityReport", entity, &all_but(entity, &[]));
    for scores in [&intent["labels"][0], &entity["types"][0]] {
        check_schema(&spec, "LabelScores", scores, &all_but(scores, &[]));
    }
    let confusion = &intent["confusions"][0];
    check_schema(&spec, "Confusion", confusion, &all_but(confusion, &[]));
    let outcomes = &e["outcomes"];
    check_schema(&spec, "Outcomes", outcomes, &all_but(outcomes, &[]));

    // The comparison the job stored, and one `GET .../compare` builds without the eval data
    // (its flips carry no text).
    let stored = &e["comparisons"][0];
    let c = to_json(&comparison);
    assert_eq!(stored, &c);
    let (v1, v2) = (evaluation.comparisons[0].before, evaluation.version);
    assert_eq!((v1, v2), (v(1), v(2)));
    check_schema(&spec, "Comparison", &c, &all_but(&c, &[]));
    check_schema(&spec, "Deltas", &c["deltas"], &all_but(&c["deltas"], &[]));
    for delta in [&c["intents"][0], &c["entities"][0]] {
        check_schema(&spec, "LabelDelta", delta, &all_but(delta, &[]));
    }
    for flips in [&c["negative_flips"], &c["positive_flips"]] {
        check_schema(&spec, "Flips", flips, &all_but(flips, &[]));
        let flip = &flips["shown"][0];
        check_schema(&spec, "Flip", flip, &["index", "flipped"]);
    }
    let mut older = evaluation.clone();
    older.version = v(1);
    older.comparisons.clear();
    let bare = to_json(&compare(&evaluation, &older, Vec::new(), None).unwrap());
    let schema = &spec["components"]["schemas"]["Comparison"];
    conforms(&spec, schema, &bare, "Comparison").unwrap();
}

#[test]
fn promotion_schemas_list_exactly_the_fields_sent() {
    let spec = spec();
    let mut checks_seen = BTreeSet::new();
    for result in gates() {
        let r = to_json(&result);
        check_schema(&spec, "GateResult", &r, &all_but(&r, &[]));
        for check in r["checks"].as_array().unwrap() {
            check_schema(&spec, "GateCheck", check, &all_but(check, &[]));
            checks_seen.insert(check["check"].as_str().unwrap().to_owned());
        }
    }
    // The samples make every check the gate has: the enum lists exactly those.
    let listed: BTreeSet<String> =
        spec["components"]["schemas"]["GateCheck"]["properties"]["check"]["enum"]
            .as_vec()
            .expect("GateCheck.check is an enum")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
    assert_eq!(listed, checks_seen, "GateCheck.check's enum");

    let mut history = AliasHistory::default();
    let policy = PromotionPolicy::default();
    let unset = gate(&policy, v(1), None, Err(String::new()));
    let refused = gates().remove(0);
    history.push(AliasMove {
        at: Utc::now(),
        from: None,
        to: v(1),
        by: "job 0190f5c2-0000-7000-8000-000000000001".into(),
        reason: "promote_to prod of job 0190f5c2-0000-7000-8000-000000000001".into(),
        forced: false,
        gate: Some(unset),
    });
    history.push(AliasMove {
        at: Utc::now(),
        from: Some(v(1)),
        to: v(2),
        by: "ann@host".into(),
        reason: "hotfix".into(),
        forced: true,
        gate: Some(refused),
    });
    let h = to_json(&history);
    check_schema(&spec, "AliasHistory", &h, &["moves"]);
    for entry in h["moves"].as_array().unwrap() {
        check_schema(&spec, "AliasMove", entry, &all_but(entry, &["gate"]));
    }

    // `PUT .../aliases/{alias}` refused by the gate: the error's details are the GateResult.
    let result = gates().remove(0);
    let details = to_json(&ErrorBody {
        error: ErrorDetail {
            code: "gate_failed".into(),
            message: result.summary(),
            details: Some(to_json(&result)),
        },
    });
    check_schema(&spec, "ErrorBody", &details, &["error"]);
    let schemas = &spec["components"]["schemas"];
    conforms(
        &spec,
        &schemas["GateResult"],
        &details["error"]["details"],
        "details",
    )
    .unwrap();
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
