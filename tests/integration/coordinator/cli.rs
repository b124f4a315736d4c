//! The `refit` CLI against a running stack: submit with `--wait`, versions and lineage, the
//! label-set check's rejection and its exit code, and its errors for a wrong token or an absent
//! coordinator.

use super::*;

/// The CLI's documented exit codes (coordinator/cli/src/exit.rs).
const EXIT_REJECTED: i32 = 11;
const EXIT_UNREACHABLE: i32 = 14;
const EXIT_TOKEN_REFUSED: i32 = 15;

/// Held-out data: the 4th example of each intent of set1.yml (the training slices use the first
/// three at most).
fn held_out() -> Result<Vec<Example>> {
    let train = examples(3)?;
    Ok(examples(4)?
        .into_iter()
        .filter(|e| !train.contains(e))
        .collect())
}

/// Checks the fields `refit submit --wait --output json` and `refit job ID --output json` print.
fn check_job_json(job: &Value, model: &str) -> Result<()> {
    for field in [
        "id", "model", "state", "mode", "version", "attempts", "metrics", "events",
    ] {
        ensure!(
            job.get(field).is_some(),
            "no {field:?} in the job JSON: {job}"
        );
    }
    ensure!(job["model"] == json!(model), "{job}");
    ensure!(job["events"].is_array(), "events is not an array: {job}");
    Ok(())
}

/// A `labels_added` reason for intent `intent` anywhere in a JSON document (the decision report
/// may be the document, or inside an error's details).
fn names_added_intent(value: &Value, intent: &str) -> bool {
    match value {
        Value::Object(map) => {
            let here = map.get("code") == Some(&json!("labels_added"))
                && map.get("kind") == Some(&json!("intent"))
                && map
                    .get("labels")
                    .and_then(Value::as_array)
                    .is_some_and(|labels| labels.contains(&json!(intent)));
            here || map.values().any(|v| names_added_intent(v, intent))
        }
        Value::Array(items) => items.iter().any(|v| names_added_intent(v, intent)),
        _ => false,
    }
}

/// The diff's `intents.added` list anywhere in a JSON document.
fn added_intents(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Object(map) => map
            .get("intents")
            .and_then(|i| i.get("added"))
            .and_then(Value::as_array)
            .cloned()
            .or_else(|| map.values().find_map(added_intents)),
        Value::Array(items) => items.iter().find_map(added_intents),
        _ => None,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// "Done when" 1: `refit submit` of set1 (scratch, v1) then set1 + set2 (fine-tune of v1, v2)
/// with `--wait` succeed; `refit versions` shows v1 → v2 with parent, dataset sha256 and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refit_submit_scratch_then_finetune_and_versions_show_lineage() -> Result<()> {
    let mut stack = Stack::new("cli").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;
    let set1 = examples(3)?;
    let set1_file = stack.file("set1.jsonl", &jsonl(&set1)?)?;
    let set2_file = stack.file("set2.jsonl", &jsonl(&set2_examples(&set1, 2)?)?)?;
    let eval_file = stack.file("eval.jsonl", &jsonl(&held_out()?)?)?;
    let model = stack.model.clone();

    let run = stack
        .refit(&[
            "submit",
            "--model",
            &model,
            "--data",
            path_str(&set1_file),
            "--eval",
            path_str(&eval_file),
            "--epochs",
            "3",
            "--wait",
            "--output",
            "json",
        ])
        .await?;
    ensure!(run.code == 0, "refit submit (set1): {}", run.describe());
    let v1 = run.json()?;
    check_job_json(&v1, &model)?;
    ensure!(
        v1["state"] == "succeeded"
            && v1["mode"] == "scratch"
            && v1["version"] == "v1"
            && v1["attempts"] == 1,
        "{v1}"
    );
    ensure!(
        v1["metrics"]["examples"].as_u64().unwrap_or(0) > 0,
        "v1 has no metrics: {v1}"
    );
    ensure!(
        count_events(&v1, "succeeded") == 1,
        "{:?}",
        event_types(&v1)
    );

    let run = stack
        .refit(&[
            "submit",
            "--model",
            &model,
            "--data",
            path_str(&set1_file),
            path_str(&set2_file),
            "--eval",
            path_str(&eval_file),
            "--epoch-fraction",
            "0.5",
            "--wait",
            "--output",
            "json",
        ])
        .await?;
    ensure!(
        run.code == 0,
        "refit submit (set1 + set2): {}",
        run.describe()
    );
    let v2 = run.json()?;
    check_job_json(&v2, &model)?;
    ensure!(
        v2["state"] == "succeeded" && v2["mode"] == "finetune" && v2["version"] == "v2",
        "{v2}"
    );
    ensure!(
        v2["metrics"]["examples"].as_u64().unwrap_or(0) > 0,
        "v2 has no metrics: {v2}"
    );

    // `refit job ID --output json` prints the same job.
    let id2 = v2["id"].as_str().context("id")?.to_owned();
    let run = stack.refit(&["job", &id2, "--output", "json"]).await?;
    ensure!(run.code == 0, "refit job: {}", run.describe());
    let shown = run.json()?;
    check_job_json(&shown, &model)?;
    ensure!(
        shown["id"] == v2["id"] && shown["state"] == "succeeded" && shown["version"] == "v2",
        "{shown}"
    );

    // Lineage.
    let run = stack
        .refit(&["versions", &model, "--output", "json"])
        .await?;
    ensure!(
        run.code == 0,
        "refit versions --output json: {}",
        run.describe()
    );
    let listed = run.json()?;
    let versions = listed["versions"]
        .as_array()
        .or_else(|| listed.as_array())
        .context("no versions array")?
        .clone();
    ensure!(versions.len() == 2, "{listed}");
    let (first, second) = (&versions[0], &versions[1]);
    ensure!(
        first["version"] == "v1" && first["parent"].is_null() && first["mode"] == "scratch",
        "{first}"
    );
    ensure!(
        second["version"] == "v2" && second["parent"] == "v1" && second["mode"] == "finetune",
        "{second}"
    );
    ensure!(
        first["dataset_sha256"] == v1["dataset"]["sha256"]
            && first["dataset_sha256"] == json!(file_sha256(&set1_file)?),
        "v1's dataset sha256 {} is not that of set1 ({})",
        first["dataset_sha256"],
        file_sha256(&set1_file)?
    );
    ensure!(
        second["dataset_sha256"] == v2["dataset"]["sha256"]
            && second["dataset_sha256"] != first["dataset_sha256"],
        "v2's dataset sha256: {}",
        second["dataset_sha256"]
    );
    for v in [first, second] {
        ensure!(
            v["metrics"]["intent_accuracy"].is_number() && v["metrics"]["entity_f1"].is_number(),
            "no metrics on {}: {v}",
            v["version"]
        );
    }

    // … and for people.
    let run = stack.refit(&["versions", &model]).await?;
    ensure!(run.code == 0, "refit versions: {}", run.describe());
    ensure!(
        run.stdout.contains("v1") && run.stdout.contains("v2"),
        "refit versions: {}",
        run.describe()
    );
    let run = stack.refit(&["jobs"]).await?;
    ensure!(run.code == 0, "refit jobs: {}", run.describe());
    stack.finish().await
}

/// "Done when" 2: data with an intent the model does not have is rejected (exit code 11, JSON
/// naming the intent, no job); with `--policy scratch` it trains a new version from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refit_submit_rejects_a_new_intent_or_trains_from_scratch_by_policy() -> Result<()> {
    let mut stack = Stack::new("reject").await?;
    stack.start_coordinator(&[]).await?;
    stack.start_workers(2)?;
    let set1 = examples(2)?;
    let set1_file = stack.file("set1.jsonl", &jsonl(&set1)?)?;
    let mut with_new = set1.clone();
    with_new.push(Example {
        text: "play some jazz please".into(),
        intent: "play_music".into(),
        entities: vec![],
    });
    with_new.push(Example {
        text: "put on the radio".into(),
        intent: "play_music".into(),
        entities: vec![],
    });
    let new_file = stack.file("new-intent.jsonl", &jsonl(&with_new)?)?;
    let model = stack.model.clone();

    let run = stack
        .refit(&[
            "submit",
            "--model",
            &model,
            "--data",
            path_str(&set1_file),
            "--epochs",
            "1",
            "--wait",
            "--output",
            "json",
        ])
        .await?;
    ensure!(run.code == 0, "refit submit (base): {}", run.describe());
    ensure!(run.json()?["version"] == "v1", "{}", run.stdout);

    let run = stack
        .refit(&[
            "submit",
            "--model",
            &model,
            "--data",
            path_str(&new_file),
            "--epochs",
            "1",
            "--output",
            "json",
        ])
        .await?;
    ensure!(
        run.code == EXIT_REJECTED,
        "expected exit 11 (rejected): {}",
        run.describe()
    );
    let report = run.json()?;
    ensure!(
        names_added_intent(&report, "play_music"),
        "the JSON does not name the added intent play_music: {report}"
    );
    ensure!(
        added_intents(&report) == Some(vec![json!("play_music")]),
        "the diff's intents.added is not [play_music]: {report}"
    );
    // For people too, without --output json.
    let run = stack
        .refit(&[
            "submit",
            "--model",
            &model,
            "--data",
            path_str(&new_file),
            "--epochs",
            "1",
        ])
        .await?;
    ensure!(run.code == EXIT_REJECTED, "{}", run.describe());
    ensure!(
        format!("{}{}", run.stdout, run.stderr).contains("play_music"),
        "the human output does not name play_music: {}",
        run.describe()
    );
    // Rejected submissions store no job.
    let list = stack
        .expect(
            Method::GET,
            &format!("/v1/jobs?model={model}"),
            None,
            StatusCode::OK,
        )
        .await?;
    ensure!(list["jobs"].as_array().map(Vec::len) == Some(1), "{list}");

    let run = stack
        .refit(&[
            "submit",
            "--model",
            &model,
            "--data",
            path_str(&new_file),
            "--policy",
            "scratch",
            "--epochs",
            "1",
            "--wait",
            "--output",
            "json",
        ])
        .await?;
    ensure!(
        run.code == 0,
        "refit submit --policy scratch: {}",
        run.describe()
    );
    let v2 = run.json()?;
    check_job_json(&v2, &model)?;
    ensure!(
        v2["state"] == "succeeded" && v2["mode"] == "scratch" && v2["version"] == "v2",
        "{v2}"
    );
    let run = stack
        .refit(&["versions", &model, "--output", "json"])
        .await?;
    ensure!(run.code == 0, "{}", run.describe());
    let listed = run.json()?;
    let versions = listed["versions"]
        .as_array()
        .or_else(|| listed.as_array())
        .context("no versions array")?
        .clone();
    ensure!(
        versions.len() == 2 && versions[1]["mode"] == "scratch" && versions[1]["parent"].is_null(),
        "{listed}"
    );
    stack.finish().await
}

/// The CLI's errors for a refused token (exit 15) and an absent coordinator (exit 14) say what
/// to do, and never print the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refit_cli_explains_a_wrong_token_and_an_unreachable_coordinator() -> Result<()> {
    let mut stack = Stack::new("clierr").await?;
    stack.start_coordinator(&[]).await?;
    let url = stack.url();
    let wrong = format!("wrong-{}", random_hex(24));

    let run = stack
        .refit_with(&["jobs"], &[("REFIT_URL", &url), ("REFIT_TOKEN", &wrong)])
        .await?;
    ensure!(
        run.code == EXIT_TOKEN_REFUSED,
        "wrong token: {}",
        run.describe()
    );
    ensure!(
        run.stderr.to_lowercase().contains("token"),
        "the error does not mention the token: {}",
        run.describe()
    );
    ensure!(
        !run.stderr.contains(&wrong) && !run.stdout.contains(&wrong),
        "the token was printed"
    );
    let run = stack
        .refit_with(&["jobs", "--url", &url, "--token", &wrong], &[])
        .await?;
    ensure!(
        run.code == EXIT_TOKEN_REFUSED,
        "wrong --token: {}",
        run.describe()
    );

    let closed = format!("http://127.0.0.1:{}", free_port()?);
    let token = stack.token.clone();
    let run = stack
        .refit_with(
            &["jobs"],
            &[("REFIT_URL", &closed), ("REFIT_TOKEN", &token)],
        )
        .await?;
    ensure!(
        run.code == EXIT_UNREACHABLE,
        "unreachable: {}",
        run.describe()
    );
    ensure!(
        run.stderr.contains(&closed) || run.stderr.contains("127.0.0.1"),
        "the error does not say which address failed: {}",
        run.describe()
    );
    stack.finish().await
}
