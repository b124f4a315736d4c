//! `refit check` as a user runs it: the real binary, the repo's example data, exit codes and JSON.

use std::path::PathBuf;
use std::process::Command;

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/data/financial-demo")
        .join(name)
}

fn refit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_refit"))
        .args(args)
        .output()
        .expect("refit runs");
    (
        out.status.code().expect("refit exits normally"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn set1_then_set1_plus_set2_may_be_fine_tuned() {
    let (set1, set2) = (demo("set1.yml"), demo("set2.yml"));
    let (code, stdout, _) = refit(&[
        "check",
        "--base",
        set1.to_str().unwrap(),
        "--data",
        set1.to_str().unwrap(),
        set2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("decision: finetune"), "{stdout}");
    assert!(stdout.contains("367 -> 459 (+92)"), "{stdout}");
}

#[test]
fn a_removed_intent_is_rejected_with_json_naming_it() {
    let full = demo("nlu.yml");
    let text = std::fs::read_to_string(&full).unwrap();
    // Drop the whole `check_human` item (it is the first intent of the file).
    let start = text.find("- intent: check_human").unwrap();
    let end = start + text[start..].find("- intent: affirm").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reduced = dir.path().join("reduced.yml");
    std::fs::write(&reduced, format!("{}{}", &text[..start], &text[end..])).unwrap();

    let args = [
        "check",
        "--base",
        full.to_str().unwrap(),
        "--data",
        reduced.to_str().unwrap(),
    ];
    let (code, stdout, _) = refit(&[&args[..], &["--output", "json"]].concat());
    assert_eq!(code, 11, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["decision"], "reject");
    assert_eq!(report["fine_tunable"], false);
    assert_eq!(report["reasons"][0]["code"], "labels_removed");
    assert_eq!(report["reasons"][0]["kind"], "intent");
    assert_eq!(
        report["reasons"][0]["labels"],
        serde_json::json!(["check_human"])
    );

    // With the scratch policy the same data trains from scratch instead.
    let (code, stdout, _) = refit(&[&args[..], &["--policy", "scratch"]].concat());
    assert_eq!(code, 10, "{stdout}");
    assert!(stdout.contains("check_human"), "{stdout}");
}

#[test]
fn a_broken_file_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "version: \"3.1\"\nnlu:\n- intent: greet\n  examples: |\n    - hi [there](\n",
    )
    .unwrap();
    let (code, _, stderr) = refit(&["check", "--data", broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("broken.yml:5"), "{stderr}");
}
