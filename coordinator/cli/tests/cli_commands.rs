//! The `refit` commands that talk to the coordinator, as a user runs them without one: `--help`
//! teaches, wrong usage is exit code 2, an unreachable coordinator is exit code 14 with a
//! message that says what to do, `refit completions` prints a script.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

fn demo(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/data/financial-demo")
        .join(name)
        .display()
        .to_string()
}

/// Runs `refit` with nothing from the user's environment or config; returns (exit code,
/// stdout, stderr).
fn refit(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_refit"));
    command
        .args(args)
        .env_remove("REFIT_URL")
        .env_remove("REFIT_TOKEN")
        .env_remove("REFIT_CONFIG")
        .env_remove("REFIT_LOG")
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

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn every_command_has_help_with_examples() {
    let network = [
        "submit", "jobs", "job", "cancel", "models", "versions", "alias", "check",
    ];
    for command in network.iter().chain(&["completions", "predict", "demo"]) {
        let (code, stdout, stderr) = refit(&[command, "--help"], &[]);
        assert_eq!(code, 0, "{command}: {stderr}");
        assert!(stdout.contains("Examples:"), "{command} --help: {stdout}");
        assert!(stdout.contains(&format!("refit {command}")), "{stdout}");
        if network.contains(command) {
            for flag in ["--url", "--token", "--config", "REFIT_URL", "REFIT_TOKEN"] {
                assert!(
                    stdout.contains(flag),
                    "{command} --help lacks {flag}: {stdout}"
                );
            }
        }
    }
    let (code, stdout, _) = refit(&["--help"], &[]);
    assert_eq!(code, 0);
    for text in [
        "submit",
        "completions",
        "14  the coordinator cannot be reached",
        "15  the coordinator refused the token",
        "12  refit submit --wait: the job failed",
        "13  refit submit --wait: the job was cancelled",
    ] {
        assert!(
            stdout.contains(text),
            "refit --help lacks {text:?}: {stdout}"
        );
    }
}

#[test]
fn a_token_in_the_environment_never_shows_in_help() {
    let (code, stdout, _) = refit(
        &["submit", "--help"],
        &[("REFIT_TOKEN", "help-must-not-show-this")],
    );
    assert_eq!(code, 0);
    assert!(!stdout.contains("help-must-not-show-this"), "{stdout}");
}

#[test]
fn an_unreachable_coordinator_is_exit_code_14_and_says_what_to_do() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let set1 = demo("set1.yml");
    for args in [
        vec!["jobs"],
        vec!["job", "0190f5c2-7a1e-7c3b-9d2f-1b2c3d4e5f60"],
        vec!["models"],
        vec!["versions", "financial"],
        vec!["submit", "--model", "financial", "--data", &set1],
        vec!["check", "--model", "financial", "--data", &set1],
    ] {
        let (code, stdout, stderr) = refit(
            &args,
            &[
                ("REFIT_URL", &url),
                ("REFIT_TOKEN", "token-1234567890abcdef"),
            ],
        );
        assert_eq!(code, 14, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(
            stderr.contains(&format!(
                "cannot reach the coordinator at {url} (connection refused). Is it running? \
                 deploy/local/up.sh starts a local stack; or set REFIT_URL"
            )),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("token-1234567890abcdef"), "{stderr}");
    }
    // The flag beats the environment.
    let (code, _, stderr) = refit(
        &["models", "--url", &url],
        &[("REFIT_URL", "http://127.0.0.1:1")],
    );
    assert_eq!(code, 14);
    assert!(stderr.contains(&url), "{stderr}");
}

#[test]
fn bad_addresses_and_config_files_are_errors_that_say_why() {
    let (code, _, stderr) = refit(&["jobs"], &[("REFIT_URL", "localhost:8080")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("http://"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = refit(&["jobs", "--config", missing.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("missing.toml") && stderr.contains("does not exist"),
        "{stderr}"
    );

    // The config file's address is used (and is unreachable here).
    let config = dir.path().join("cli.toml");
    let url = format!("http://127.0.0.1:{}", closed_port());
    std::fs::write(&config, format!("url = \"{url}\"\ntoken = \"t\"\n")).unwrap();
    let (code, _, stderr) = refit(&["jobs"], &[("REFIT_CONFIG", config.to_str().unwrap())]);
    assert_eq!(code, 14, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
}

#[test]
fn wrong_usage_is_exit_code_2() {
    let set1 = demo("set1.yml");
    for args in [
        vec!["submit", "--data", &set1],
        vec!["submit", "--model", "m"],
        vec![
            "submit",
            "--model",
            "m",
            "--data",
            &set1,
            "--epochs",
            "3",
            "--epoch-fraction",
            "0.3",
        ],
        vec![
            "submit",
            "--model",
            "m",
            "--data",
            &set1,
            "--epoch-fraction",
            "1.5",
        ],
        vec![
            "submit",
            "--model",
            "m",
            "--data",
            &set1,
            "--mode",
            "sometimes",
        ],
        vec![
            "submit",
            "--model",
            "m",
            "--data",
            &set1,
            "--priority",
            "300",
        ],
        vec!["jobs", "--state", "sleeping"],
        vec!["jobs", "--limit", "0"],
        vec!["job"],
        vec!["alias", "financial"],
        vec!["alias", "financial", "prod", "--force"],
        vec!["check", "--base-version", "v1", "--data", &set1],
        vec!["check", "--model", "m", "--base", &set1, "--data", &set1],
        vec!["completions", "klingon"],
        vec!["frobnicate"],
    ] {
        let (code, stdout, stderr) = refit(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(
            stderr.contains("Usage:") || stderr.contains("error:"),
            "{stderr}"
        );
    }
}

#[test]
fn completions_print_a_script() {
    let (code, stdout, stderr) = refit(&["completions", "bash"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("_refit()"), "{stdout}");
    for word in ["submit", "versions", "--epoch-fraction", "--wait"] {
        assert!(stdout.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, stdout, _) = refit(&["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}");
        assert!(stdout.contains("submit"), "{shell}: {stdout}");
    }
}

#[test]
fn local_problems_are_reported_before_anything_is_sent() {
    // Nothing listens at the URL; a local error must come first (exit 1, not 14).
    let url = format!("http://127.0.0.1:{}", closed_port());
    let env = [("REFIT_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "version: \"3.1\"\nnlu:\n- intent: greet\n  examples: |\n    - hi [there](\n",
    )
    .unwrap();
    let broken = broken.display().to_string();
    let (code, _, stderr) = refit(&["submit", "--model", "m", "--data", &broken], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("broken.yml:5"), "{stderr}");

    let set1 = demo("set1.yml");
    let (code, _, stderr) = refit(&["submit", "--model", "Bad Name", "--data", &set1], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--model"), "{stderr}");

    let (code, _, stderr) = refit(
        &[
            "submit",
            "--model",
            "m",
            "--data",
            "s3://refit/incoming/nlu.yml",
        ],
        &env,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not a content-addressed dataset key"),
        "{stderr}"
    );

    let (code, _, stderr) = refit(&["alias", "m", "prod", "latest"], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("version"), "{stderr}");
}
