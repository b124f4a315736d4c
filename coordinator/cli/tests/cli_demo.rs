//! `refit demo` and `refit predict` as a user runs them: the real binary on the repo's
//! financial-demo data, with a few epochs so the tests take seconds.
//!
//! Needs ONNX Runtime (`deploy/onnxruntime.sh`); the engine finds `<repo>/.ort` on its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn demo_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/financial-demo")
}

/// Runs `refit` with `args` and `stdin`; returns (exit code, stdout, stderr).
fn refit_with_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refit"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("refit starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("refit reads stdin");
    let out = child.wait_with_output().expect("refit runs");
    (
        out.status.code().expect("refit exits normally"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn refit(args: &[&str]) -> (i32, String, String) {
    refit_with_stdin(args, "")
}

fn manifest(version_dir: &Path) -> Value {
    let bytes = std::fs::read(version_dir.join("manifest.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn demo_stores_three_versions_that_predict_can_load() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let data = demo_data();
    let args = [
        "demo",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "3",
        "--epoch-fraction",
        "0.34",
        "--out",
        out_dir,
        "--output",
        "json",
    ];
    let (code, stdout, stderr) = refit(&args);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");

    let runs = report["runs"].as_array().unwrap();
    let summary: Vec<(&str, &str, u64, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["mode"].as_str().unwrap(),
                r["epochs"].as_u64().unwrap(),
                r["train_examples"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("v1", "scratch", 3, 367),
            ("v2", "finetune", 2, 459),
            ("v3", "scratch", 5, 459),
        ]
    );
    for run in runs {
        for field in [
            "intent_accuracy",
            "intent_macro_f1",
            "intent_weighted_f1",
            "entity_f1",
        ] {
            let value = run[field].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&value), "{field} = {value}");
        }
        assert!(run["train_seconds"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(report["decision"]["decision"], "finetune");
    assert_eq!(report["decision"]["examples"]["new"], 459);

    let models = out.path().join("models/demo");
    for version in ["v000001", "v000002", "v000003"] {
        for file in [
            "manifest.json",
            "checkpoint.safetensors",
            "model.onnx",
            "vocab.json",
        ] {
            let path = models.join(version).join(file);
            assert!(path.is_file(), "{} is missing", path.display());
        }
    }
    let v2 = manifest(&models.join("v000002"));
    assert_eq!(v2["parent"], 1);
    assert_eq!(v2["mode"], "finetune");
    assert!(v2["metrics"]["intent_accuracy"].is_f64(), "{v2}");
    assert!(v2["timings"]["train"].is_f64(), "{v2}");
    // The dataset a manifest names is in the store under that key, with that sha256.
    let v1 = manifest(&models.join("v000001"));
    let key = v1["data"]["key"].as_str().unwrap();
    let stored = std::fs::read(out.path().join(key)).unwrap();
    assert_eq!(stored, std::fs::read(data.join("set1.yml")).unwrap());
    assert!(
        key.starts_with("datasets/sha256/") && key.ends_with(".yml"),
        "{key}"
    );
    assert!(
        key.contains(v1["data"]["sha256"].as_str().unwrap()),
        "{key}"
    );

    // refit predict on the retrained model: an intent the model knows.
    let v3_dir = models.join("v000003");
    let v3_dir = v3_dir.to_str().unwrap();
    let (code, stdout, stderr) = refit(&[
        "predict",
        "--model-dir",
        v3_dir,
        "--output",
        "json",
        "send 50 dollars to Bob",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let parses: Value = serde_json::from_str(&stdout).unwrap();
    let v3 = manifest(&models.join("v000003"));
    let intents: Vec<&str> = v3["labels"]["intents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert_eq!(parses.as_array().unwrap().len(), 1, "{stdout}");
    let intent = parses[0]["intent"]["name"].as_str().unwrap();
    assert!(intents.contains(&intent), "{intent} not in {intents:?}");
    assert_eq!(parses[0]["text"], "send 50 dollars to Bob");

    // Without TEXT arguments, one text per line from stdin; blank lines are skipped.
    let (code, stdout, stderr) = refit_with_stdin(
        &["predict", "--model-dir", v3_dir],
        "hello\n\npay my bill\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("\"hello\"\n  intents:"), "{stdout}");
    assert!(stdout.contains("\"pay my bill\""), "{stdout}");

    // A rerun into the same folder starts from an empty model and succeeds again.
    let (code, _, stderr) = refit(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("removed"), "{stderr}");
}

#[test]
fn demo_without_its_data_names_the_missing_files() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(demo_data().join("set2.yml"), empty.path().join("set2.yml")).unwrap();
    let (code, stdout, stderr) = refit(&["demo", "--data", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("set1.yml"), "{stderr}");
    assert!(stderr.contains("test.yml"), "{stderr}");
    let present = empty.path().join("set2.yml").display().to_string();
    assert!(!stderr.contains(&present), "set2.yml is there: {stderr}");
}

#[test]
fn predict_without_a_model_names_the_missing_files() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let (code, _, stderr) = refit(&["predict", "--model-dir", dir, "hello"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("model.onnx"), "{stderr}");
    assert!(stderr.contains("vocab.json"), "{stderr}");
}

#[test]
fn demo_with_new_labels_in_set2_retrains_from_scratch_and_exits_11() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["set1.yml", "test.yml"] {
        std::fs::copy(demo_data().join(name), dir.path().join(name)).unwrap();
    }
    let set2 = std::fs::read_to_string(demo_data().join("set2.yml")).unwrap();
    let extra =
        "- intent: brand_new\n  examples: |\n    - a brand new thing\n    - another new thing\n";
    std::fs::write(dir.path().join("set2.yml"), format!("{set2}{extra}")).unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = refit(&[
        "demo",
        "--data",
        dir.path().to_str().unwrap(),
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains("no fine-tune"), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["decision"]["decision"], "reject");
    assert_eq!(report["decision"]["reasons"][0]["labels"][0], "brand_new");
    let modes: Vec<&str> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["scratch", "scratch"]);
    assert!(out.join("models/demo/v000002/manifest.json").is_file());
}
