//! Helpers shared by the engine's integration tests: the repo root and the Python test peers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("the engine crate lives in worker/engine")
        .to_path_buf()
}

pub fn python() -> PathBuf {
    let python = std::env::var_os("REFIT_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with `onnx` at {}: run deploy/python-peers.sh (or set REFIT_PYTHON)",
        python.display()
    );
    python
}

pub struct CheckOutcome {
    pub success: bool,
    pub output: String,
}

/// Writes model bytes to a temp file and runs `tools/onnx_check.py` on them.
pub fn onnx_check_bytes(bytes: &[u8], canonical: bool) -> CheckOutcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes).expect("write model");
    let mut command = Command::new(python());
    command.arg(repo_root().join("tools/onnx_check.py"));
    if canonical {
        command.arg("--canonical");
    }
    let out = command
        .arg(&path)
        .output()
        .expect("run tools/onnx_check.py");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "tools/onnx_check.py could not run: {output}\nrun deploy/python-peers.sh"
    );
    CheckOutcome {
        success: out.status.success(),
        output,
    }
}
