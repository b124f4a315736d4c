//! The API refuses callers without the token, and no secret reaches a log.

use super::*;

/// Every `/v1` route (coordinator/src/lib.rs's table), with the ids of real objects so that a
/// leak would show: (method, path, body).
fn v1_routes(
    model: &str,
    job: &str,
    dataset: &Value,
    new_dataset: &[u8],
) -> Vec<(Method, String, Option<Vec<u8>>)> {
    let submit = serde_json::to_vec(&json!({
        "model": model,
        "dataset": dataset,
        "mode": "scratch",
        "epochs": 1,
    }))
    .expect("JSON");
    vec![
        (
            Method::POST,
            "/v1/datasets?ext=jsonl".into(),
            Some(new_dataset.to_vec()),
        ),
        (Method::POST, "/v1/jobs".into(), Some(submit.clone())),
        (Method::GET, format!("/v1/jobs?model={model}"), None),
        (Method::GET, format!("/v1/jobs/{job}"), None),
        (Method::POST, format!("/v1/jobs/{job}/cancel"), None),
        (Method::POST, "/v1/check".into(), Some(submit)),
        (Method::GET, "/v1/models".into(), None),
        (Method::GET, format!("/v1/models/{model}/versions"), None),
        (
            Method::PUT,
            format!("/v1/models/{model}/aliases/production"),
            Some(br#"{"version": "v1"}"#.to_vec()),
        ),
        (
            Method::GET,
            format!("/v1/models/{model}/aliases/production/history"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/models/{model}/aliases/production/gate?version=v1"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/models/{model}/versions/v000001/evaluation"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/models/{model}/compare?before=v1&after=v1"),
            None,
        ),
        (Method::GET, "/v1/overview".into(), None),
        (Method::GET, "/v1/pools".into(), None),
        (Method::GET, "/v1/pools/default".into(), None),
    ]
}

/// The `/v1` paths `coordinator/openapi.yaml` describes, with `{…}` parameters as `{}`.
fn openapi_v1_paths() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(repo().join("coordinator/openapi.yaml"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = line
                .trim_start()
                .strip_prefix("/v1/")?
                .trim_end()
                .strip_suffix(':')?;
            Some(normalise(&format!("/v1/{path}")))
        })
        .collect())
}

/// `/v1/jobs/019…/cancel?x=1` → `/v1/jobs/{}/cancel`, given the concrete ids used.
fn normalise(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    path.split('/')
        .map(|segment| {
            let parameter = segment.starts_with('{')
                || segment.len() > 30
                || segment.starts_with("m-")
                || segment == "production"
                || segment == "v000001"
                || segment == "default";
            if parameter { "{}" } else { segment }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// "Done when" 8: calls without the token or with a wrong one get 401 and an error body that
/// holds no data, and change nothing; `/metrics` with `coordinator.metrics_token` set wants that
/// token; no secret (the API token, the S3 secret key, the AMQP
/// password of a RabbitMQ user made for this test) appears in any log line of the coordinator
/// and the workers, here with every secret handed over in a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refuses_missing_or_wrong_tokens_and_logs_no_secret() -> Result<()> {
    let mut stack = Stack::with(
        "auth",
        Options {
            own_amqp_user: true,
            secrets_via_files: true,
            metrics_token: true,
            ..Options::default()
        },
    )
    .await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;

    // Real data to leak: a finished job with a version and metrics, and a running one.
    let data = stack.upload(jsonl(&examples(2)?)?, "jsonl").await?;
    let done = stack
        .submit(json!({
            "model": stack.model,
            "dataset": dataset(&data),
            "eval_dataset": dataset(&data),
            "mode": "scratch",
            "epochs": 1,
        }))
        .await?;
    let done_id = done["id"].as_str().context("id")?.to_owned();
    stack.wait_succeeded(&done_id).await?;
    let long_data = stack.upload(jsonl(&examples(8)?)?, "jsonl").await?;
    let running = stack
        .submit(json!({
            "model": stack.model,
            "dataset": dataset(&long_data),
            "mode": "scratch",
            "epochs": 100000,
        }))
        .await?;
    let running_id = running["id"].as_str().context("id")?.to_owned();
    stack
        .wait_job(&running_id, "running", |job| job["state"] == "running")
        .await?;

    let mut new_examples = examples(3)?;
    new_examples.truncate(5);
    let new_dataset = jsonl(&new_examples)?;
    let new_key = dataset_key(&new_dataset, "jsonl")?;
    ensure!(
        stack.cluster.store.head(&new_key).await?.is_none(),
        "pick a dataset not stored yet"
    );
    let routes = v1_routes(&stack.model, &running_id, &dataset(&data), &new_dataset);

    // Every route the API describes is among those tried.
    let tried: Vec<String> = routes.iter().map(|(_, p, _)| normalise(p)).collect();
    for path in openapi_v1_paths()? {
        ensure!(
            tried.contains(&path),
            "coordinator/openapi.yaml has {path}, which this test does not try"
        );
    }

    let wrong = format!("wrong-{}", random_hex(24));
    let token = stack.token.clone();
    let variants: Vec<(&str, Option<String>, &str)> = vec![
        ("no Authorization header", None, ""),
        ("a wrong token", Some(format!("Bearer {wrong}")), ""),
        (
            "the token plus a character",
            Some(format!("Bearer {token}x")),
            "",
        ),
        (
            "the token less its last character",
            Some(format!("Bearer {}", &token[..token.len() - 1])),
            "",
        ),
        ("an empty bearer token", Some("Bearer ".to_owned()), ""),
        ("the token without a scheme", Some(token.clone()), ""),
        (
            "the token as Basic credentials",
            Some(format!("Basic {token}")),
            "",
        ),
        ("the token in the query only", None, "token"),
    ];
    let leaks = [
        stack.model.clone(),
        done_id.clone(),
        running_id.clone(),
        data["sha256"].as_str().unwrap_or_default().to_owned(),
        long_data["sha256"].as_str().unwrap_or_default().to_owned(),
    ];
    for (what, header, query) in &variants {
        for (method, path, body) in &routes {
            let mut url = format!("{}{path}", stack.url());
            if !query.is_empty() {
                let sep = if url.contains('?') { '&' } else { '?' };
                url.push_str(&format!("{sep}{query}={token}&access_token={token}"));
            }
            let mut request = stack.http.request(method.clone(), &url);
            if let Some(header) = header {
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let response = request.send().await?;
            let status = response.status();
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = response.text().await?;
            let context = || format!("{method} {path} with {what}");
            ensure!(
                status == StatusCode::UNAUTHORIZED,
                "{}: {status}, expected 401: {text}",
                context()
            );
            ensure!(
                challenge
                    .as_deref()
                    .is_some_and(|c| c.starts_with("Bearer")),
                "{}: no WWW-Authenticate: Bearer",
                context()
            );
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: the body is not JSON: {text}", context()))?;
            let object = body.as_object().context("the body is not an object")?;
            ensure!(
                object.keys().collect::<Vec<_>>() == ["error"],
                "{}: the body holds more than the error: {text}",
                context()
            );
            let error = body["error"]
                .as_object()
                .context("error is not an object")?;
            ensure!(
                body["error"]["code"] == "unauthorized"
                    && body["error"]["message"].is_string()
                    && error.keys().all(|k| k == "code" || k == "message"),
                "{}: {text}",
                context()
            );
            for leak in &leaks {
                ensure!(
                    !text.contains(leak.as_str()),
                    "{}: the body names {leak}",
                    context()
                );
            }
        }
    }

    // Nothing the refused calls asked for happened.
    ensure!(
        stack.cluster.store.head(&new_key).await?.is_none(),
        "a refused upload stored the dataset"
    );
    let list = stack
        .expect(
            Method::GET,
            &format!("/v1/jobs?model={}", stack.model),
            None,
            StatusCode::OK,
        )
        .await?;
    ensure!(
        list["jobs"].as_array().map(Vec::len) == Some(2),
        "refused submits created jobs: {list}"
    );
    let job = stack.job(&running_id).await?;
    ensure!(
        job["state"] == "running",
        "a refused cancel stopped the job: {}",
        job["state"]
    );
    let models = stack
        .expect(Method::GET, "/v1/models", None, StatusCode::OK)
        .await?;
    let ours = models["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == json!(stack.model)))
        .cloned()
        .context("our model is not listed")?;
    ensure!(
        ours["aliases"].as_object().is_none_or(|a| a.is_empty()),
        "a refused alias call set an alias: {ours}"
    );

    // With coordinator.metrics_token set, /metrics wants that token: not none, not the API's.
    let metrics_url = format!("{}/metrics", stack.url());
    for (what, token) in [("no token", None), ("the API token", Some(&stack.token))] {
        let mut request = stack.http.get(&metrics_url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED,
            "GET /metrics with {what}: {status} {body}"
        );
        ensure!(
            body.contains("metrics_token") && !body.contains("refit_jobs"),
            "GET /metrics with {what}: {body}"
        );
    }
    let text = stack.metrics().await?;
    ensure!(
        text.contains("refit_jobs{state=\"running\"} 1"),
        "/metrics with its token: {text}"
    );
    for (what, secret) in stack.secrets() {
        ensure!(!text.contains(&secret), "GET /metrics shows {what}");
    }

    // What needs no token holds no secret either.
    for path in ["/healthz", "/", "/openapi.yaml"] {
        let text = stack
            .http
            .get(format!("{}{path}", stack.url()))
            .send()
            .await?
            .text()
            .await?;
        for (what, secret) in stack.secrets() {
            ensure!(!text.contains(&secret), "GET {path} shows {what}");
        }
    }
    let (_, overview) = stack.call(Method::GET, "/v1/overview", None).await?;
    let overview = overview.to_string();
    for (what, secret) in stack.secrets() {
        ensure!(!overview.contains(&secret), "/v1/overview shows {what}");
    }

    stack
        .expect(
            Method::POST,
            &format!("/v1/jobs/{running_id}/cancel"),
            None,
            StatusCode::OK,
        )
        .await?;
    let job = stack.wait_final(&running_id).await?;
    ensure!(job["state"] == "cancelled", "{}", job["state"]);
    // Stops everything, then reads every log line of the coordinator and both workers.
    stack.finish().await
}

/// The peak resident memory of a process, from `/proc/<pid>/status` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kib * 1024)
}

/// A 1 GiB object where a version's manifest belongs (anyone with write access to the bucket
/// could put one there): the coordinator answers with an error, logs one naming the key and the
/// limit, and never reads it into memory (its peak resident memory stays far below the object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_object_at_a_manifest_key_is_refused_without_reading_it() -> Result<()> {
    const SIZE: u64 = 1 << 30;
    let mut stack = Stack::new("hugemanifest").await?;
    stack.start_coordinator(&[]).await?;
    let model = refit_proto::ModelName::new(stack.model.clone())?;
    let key = keys::manifest(&model, refit_proto::Version::first());
    // A sparse file: 1 GiB of zeros without writing them.
    let file = stack.cluster.dir.path().join("huge.json");
    std::fs::File::create(&file)?.set_len(SIZE)?;
    stack.cluster.store.put_file(&key, &file).await?;
    stack.extra_keys.push(key.clone());
    std::fs::remove_file(&file)?;

    let (status, body) = stack
        .call(
            Method::GET,
            &format!("/v1/models/{}/versions", stack.model),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::INTERNAL_SERVER_ERROR,
        "a manifest of 1 GiB: {status} {body}"
    );
    let log = stack.coordinator()?.log_text();
    let limit = refit_io::registry::MAX_METADATA_BYTES.to_string();
    ensure!(
        log.contains(&key) && log.contains(&limit),
        "the coordinator's log does not name the key and the limit ({limit}):\n{log}"
    );
    let pid = stack
        .coordinator()?
        .pid()
        .context("the coordinator has no pid")?;
    let peak = peak_rss(pid)?;
    ensure!(
        peak < SIZE / 4,
        "the coordinator's peak resident memory is {peak} bytes"
    );
    eprintln!(
        "a 1 GiB manifest: refused; the coordinator's peak RSS {} MiB",
        peak >> 20
    );
    stack.finish().await
}
