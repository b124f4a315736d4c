//! The ONNX models refit writes (`engine::onnx`) pass the reference `onnx.checker`, are encoded
//! byte for byte as the reference protobuf implementation encodes them, and compute on ONNX Runtime
//! (`engine::runtime`) what a hand computation says.
//!
//! Needs the Python peers (`deploy/python-peers.sh`, found through `REFIT_PYTHON`, default
//! `<repo>/.venv/bin/python`) and ONNX Runtime (`deploy/onnxruntime.sh`). A missing one fails the
//! test with the command that installs it; nothing is skipped. The checker is `tools/onnx_check.py`.

use std::path::PathBuf;
use std::process::Command;

use refit_engine::onnx::{
    self, DataType, Dim, GraphProto, ModelProto, attr_float, attr_floats, attr_graph, attr_int,
    attr_ints, attr_string, attr_strings, attr_tensor, node, tensor_bool, tensor_f32, tensor_i64,
    value_info,
};
use refit_engine::runtime::{self, HostTensor, RuntimeOptions};
use refit_engine::{EngineError, EngineErrorKind};

mod common;

use common::{CheckOutcome, onnx_check_bytes, python, repo_root};

/// Writes `model` to a temp file and runs `tools/onnx_check.py` on it.
fn onnx_check(model: &ModelProto, canonical: bool) -> CheckOutcome {
    onnx_check_bytes(&model.to_bytes(), canonical)
}

fn session(model: &ModelProto) -> ort::session::Session {
    match runtime::session_from_bytes(&model.to_bytes(), &RuntimeOptions::default()) {
        Ok(session) => session,
        Err(err @ (EngineError::RuntimeNotFound { .. } | EngineError::RuntimeLoad { .. })) => {
            panic!("{err}")
        }
        Err(err) => panic!("session creation failed: {err:?}"),
    }
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "got {got:?}, want {want:?}"
        );
    }
}

const W: [f32; 6] = [0.5, -1.0, 2.0, 0.25, -0.5, 1.5]; // [3, 2], row-major
const B: [f32; 2] = [0.1, -0.2];

/// X @ W + B for X of shape [rows, 3].
fn affine(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for row in x.chunks(3) {
        for j in 0..2 {
            out.push(row[0] * W[j] + row[1] * W[2 + j] + row[2] * W[4 + j] + B[j]);
        }
    }
    out
}

/// Y = Relu(MatMul(X, W) + B) with W, B initializers and a dynamic batch dimension.
fn relu_affine_model() -> ModelProto {
    let graph = GraphProto {
        name: "relu_affine".into(),
        node: vec![
            node("MatMul", &["X", "W"], &["XW"], vec![]),
            node("Add", &["XW", "B"], &["Z"], vec![]),
            node("Relu", &["Z"], &["Y"], vec![]),
        ],
        initializer: vec![tensor_f32("W", &[3, 2], &W), tensor_f32("B", &[2], &B)],
        input: vec![value_info(
            "X",
            DataType::Float,
            &["batch".into(), Dim::Fixed(3)],
        )],
        output: vec![value_info(
            "Y",
            DataType::Float,
            &["batch".into(), Dim::Fixed(2)],
        )],
        ..GraphProto::default()
    };
    ModelProto::new(graph)
}

#[test]
fn relu_affine_model_passes_the_checker_and_computes_on_ort() {
    let model = relu_affine_model();
    let check = onnx_check(&model, true);
    assert!(
        check.success,
        "onnx.checker rejected the model: {}",
        check.output
    );
    assert!(check.output.starts_with("ok "), "{}", check.output);

    let mut session = session(&model);
    let mut positive = false;
    for batch in [1usize, 4] {
        let x: Vec<f32> = (0..batch * 3).map(|i| i as f32 * 0.7 - 2.0).collect();
        let want: Vec<f32> = affine(&x).into_iter().map(|v| v.max(0.0)).collect();
        assert!(
            want.contains(&0.0),
            "the inputs should exercise Relu: {want:?}"
        );
        positive |= want.iter().any(|&v| v > 0.0);
        let out = runtime::run_f32(
            &mut session,
            &[("X", HostTensor::f32(&[batch as i64, 3], x))],
            &["Y"],
        )
        .expect("run");
        assert_eq!(out[0].0, [batch as i64, 2]);
        assert_close(&out[0].1, &want);
    }
    assert!(positive, "the inputs should exercise Relu's identity side");
    assert!(runtime::library_path().is_some());
}

#[test]
fn checker_rejects_a_node_reading_an_undefined_value() {
    let mut model = relu_affine_model();
    let graph = model.graph.as_mut().expect("graph");
    // "Q" is neither a graph input, an initializer nor any node's output.
    graph.node[1].input[0] = "Q".into();
    let check = onnx_check(&model, false);
    assert!(
        !check.success,
        "onnx.checker accepted a broken model: {}",
        check.output
    );
    assert!(check.output.starts_with("FAIL "), "{}", check.output);
    assert!(check.output.contains('Q'), "{}", check.output);

    // ONNX Runtime refuses it too, as a runtime (not a setup) failure.
    let err = runtime::session_from_bytes(&model.to_bytes(), &RuntimeOptions::default())
        .expect_err("ORT must reject the model");
    assert_eq!(err.kind(), EngineErrorKind::Runtime, "{err}");
}

/// Every attribute kind, a subgraph, INT64/BOOL initializers, a STRING output, metadata and doc
/// strings: checked, compared byte for byte with the reference encoding, and run.
#[test]
fn every_attribute_kind_passes_the_checker_and_computes_on_ort() {
    let branch = |name: &str, value: f32| GraphProto {
        name: name.into(),
        node: vec![node(
            "Constant",
            &[],
            &[&format!("{name}_out")],
            vec![attr_tensor("value", tensor_f32("", &[1], &[value]))],
        )],
        output: vec![value_info(
            format!("{name}_out"),
            DataType::Float,
            &[Dim::Fixed(1)],
        )],
        ..GraphProto::default()
    };
    let mut gemm = node(
        "Gemm",
        &["X", "W", "B"],
        &["G"],
        vec![attr_float("alpha", 2.0), attr_int("transB", 0)],
    );
    gemm.name = "gemm".into();
    gemm.doc_string = "2 X W + B".into();
    let graph = GraphProto {
        name: "every_attribute".into(),
        doc_string: "exercises every attribute kind".into(),
        node: vec![
            gemm,
            node("LeakyRelu", &["G"], &["L"], vec![attr_float("alpha", 0.1)]),
            node(
                "Transpose",
                &["L"],
                &["LT"],
                vec![attr_ints("perm", &[1, 0])],
            ),
            node(
                "Transpose",
                &["LT"],
                &["L2"],
                vec![attr_ints("perm", &[1, 0])],
            ),
            node(
                "Constant",
                &[],
                &["C"],
                vec![attr_floats("value_floats", &[1.0, -1.0])],
            ),
            node("Mul", &["L2", "C"], &["M"], vec![]),
            node(
                "Pad",
                &["M", "pads"],
                &["P"],
                vec![attr_string("mode", "constant")],
            ),
            node(
                "If",
                &["cond"],
                &["S"],
                vec![
                    attr_graph("then_branch", branch("then", 1.0)),
                    attr_graph("else_branch", branch("else", -1.0)),
                ],
            ),
            node("Mul", &["P", "S"], &["Y"], vec![]),
            node("Concat", &["Y", "Y"], &["Out"], vec![attr_int("axis", 1)]),
            node(
                "Constant",
                &[],
                &["labels"],
                vec![attr_strings("value_strings", &["greet", "bye"])],
            ),
        ],
        initializer: vec![
            tensor_f32("W", &[3, 2], &W),
            tensor_f32("B", &[2], &B),
            // Pad one column in front of axis 1: [begin0, begin1, end0, end1].
            tensor_i64("pads", &[4], &[0, 1, 0, 0]),
            tensor_bool("unused_flag", &[1], &[true]),
        ],
        input: vec![
            value_info("X", DataType::Float, &["batch".into(), Dim::Fixed(3)]),
            value_info("cond", DataType::Bool, &[]),
        ],
        output: vec![
            value_info("Out", DataType::Float, &["batch".into(), Dim::Fixed(6)]),
            value_info("labels", DataType::String, &[Dim::Fixed(2)]),
        ],
        value_info: vec![value_info(
            "G",
            DataType::Float,
            &["batch".into(), Dim::Fixed(2)],
        )],
    };
    let mut model = ModelProto::new(graph);
    model.domain = "dev.refit.test".into();
    model.model_version = 3;
    model.doc_string = "refit engine::onnx test model".into();
    model.set_metadata("labels", "greet,bye");
    assert_eq!(model.opset_import, [onnx::opset("", onnx::OPSET_VERSION)]);

    let check = onnx_check(&model, true);
    assert!(
        check.success,
        "onnx.checker rejected the model: {}",
        check.output
    );

    let mut session = session(&model);
    let x = vec![1.0, -2.0, 0.5, 3.0, 1.0, -1.0];
    for (cond, sign) in [(true, 1.0f32), (false, -1.0)] {
        let mut want = Vec::new();
        for row in affine(&x).chunks(2) {
            let leaky = |v: f32| if v >= 0.0 { v } else { 0.1 * v };
            // affine() adds B once; Gemm computes 2 * X W + B.
            let g0 = 2.0 * (row[0] - B[0]) + B[0];
            let g1 = 2.0 * (row[1] - B[1]) + B[1];
            let y = [0.0, leaky(g0) * sign, -leaky(g1) * sign];
            want.extend(y);
            want.extend(y);
        }
        let out = runtime::run_f32(
            &mut session,
            &[
                ("X", HostTensor::f32(&[2, 3], x.clone())),
                ("cond", HostTensor::bool(&[], vec![cond])),
            ],
            &["Out"],
        )
        .expect("run");
        assert_eq!(out[0].0, [2, 6]);
        assert_close(&out[0].1, &want);
    }

    let err = runtime::run_f32(
        &mut session,
        &[("nope", HostTensor::f32(&[1], vec![0.0]))],
        &["Out"],
    )
    .expect_err("unknown input");
    assert_eq!(err.kind(), EngineErrorKind::Invalid);
}

#[test]
fn canonical_check_rejects_fields_onnx_proto_does_not_have() {
    let mut bytes = relu_affine_model().to_bytes();
    assert!(onnx_check_bytes(&bytes, true).success);
    // ModelProto field 99 (varint 1): valid protobuf, but not an onnx.proto field.
    bytes.extend([0x98, 0x06, 0x01]);
    let check = onnx_check_bytes(&bytes, true);
    assert!(!check.success, "{}", check.output);
    assert!(check.output.contains("not canonical"), "{}", check.output);
}

/// The other direction: a model written by the reference `onnx.helper` decodes into the fields it
/// was given. (Re-encoding it need not give the same bytes: proto2 writes a field explicitly set to
/// its default, such as `make_opsetid("", 19)`'s empty domain, which refit's encoding omits.)
#[test]
fn models_written_by_the_onnx_package_decode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("reference.onnx");
    let script = r#"
import sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
w = numpy_helper.from_array(np.array([[1.5, -2.0]], dtype=np.float32), name="W")
k = helper.make_tensor("K", TensorProto.INT64, [3], [4, -5, 6])
then = helper.make_graph([helper.make_node("Identity", ["W"], ["o"])], "then", [],
                         [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 2])])
n = helper.make_node("Gemm", ["X", "W"], ["Y"], name="g", doc_string="nd", alpha=0.25, transB=1,
                     perm=[2, 0, 1], scales=[0.5, 2.0], mode="edge", names=["a", "b"],
                     value=helper.make_tensor("v", TensorProto.FLOAT, [1], [3.0]), body=then)
g = helper.make_graph([n], "ref", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2])],
                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])], [w, k],
                      doc_string="gd")
m = helper.make_model(g, producer_name="onnx-ref", producer_version="9.9", domain="ref.test",
                      model_version=7, doc_string="md", opset_imports=[helper.make_opsetid("", 19)],
                      ir_version=9)
helper.set_model_props(m, {"k1": "v1"})
open(sys.argv[1], "wb").write(m.SerializeToString())
"#;
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&path)
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "python failed to write the reference model; run deploy/python-peers.sh"
    );
    let bytes = std::fs::read(&path).expect("read reference model");
    let model = ModelProto::from_bytes(&bytes).expect("decodes");

    assert_eq!(
        (
            model.ir_version,
            model.producer_name.as_str(),
            model.producer_version.as_str()
        ),
        (9, "onnx-ref", "9.9")
    );
    assert_eq!(
        (
            model.domain.as_str(),
            model.model_version,
            model.doc_string.as_str()
        ),
        ("ref.test", 7, "md")
    );
    assert_eq!(model.opset_import, [onnx::opset("", 19)]);
    assert_eq!(model.metadata("k1"), Some("v1"));
    let graph = model.graph.as_ref().expect("graph");
    assert_eq!(
        (graph.name.as_str(), graph.doc_string.as_str()),
        ("ref", "gd")
    );
    assert_eq!(
        graph.input,
        [value_info(
            "X",
            DataType::Float,
            &["N".into(), Dim::Fixed(2)]
        )]
    );
    assert_eq!(
        graph.output,
        [value_info(
            "Y",
            DataType::Float,
            &["N".into(), Dim::Fixed(1)]
        )]
    );
    assert_eq!(graph.initializer[0].name, "W");
    assert_eq!(graph.initializer[0].dims, [1, 2]);
    assert_eq!(graph.initializer[0].to_f32().expect("W"), [1.5, -2.0]);
    assert_eq!(
        graph.initializer[1].int64_data,
        [4, -5, 6],
        "make_tensor writes typed data"
    );
    assert_eq!(graph.initializer[1].to_i64().expect("K"), [4, -5, 6]);

    let n = &graph.node[0];
    assert_eq!(
        (n.op_type.as_str(), n.name.as_str(), n.doc_string.as_str()),
        ("Gemm", "g", "nd")
    );
    assert_eq!(
        (n.input.as_slice(), n.output.as_slice()),
        (
            &["X".to_string(), "W".to_string()][..],
            &["Y".to_string()][..]
        )
    );
    let attr = |name: &str| {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .expect(name)
            .clone()
    };
    assert_eq!(attr("alpha"), attr_float("alpha", 0.25));
    assert_eq!(attr("transB"), attr_int("transB", 1));
    assert_eq!(attr("perm"), attr_ints("perm", &[2, 0, 1]));
    assert_eq!(attr("scales"), attr_floats("scales", &[0.5, 2.0]));
    assert_eq!(attr("mode"), attr_string("mode", "edge"));
    assert_eq!(attr("names"), attr_strings("names", &["a", "b"]));
    let value = attr("value");
    assert_eq!(value.r#type, onnx::AttributeType::Tensor as i32);
    assert_eq!(value.t.expect("tensor").to_f32().expect("floats"), [3.0]);
    let body = attr("body");
    assert_eq!(body.r#type, onnx::AttributeType::Graph as i32);
    assert_eq!(body.g.expect("graph").node[0].op_type, "Identity");
}

/// Runs the test `name` of this binary in a child process with `env` changes, for tests that need
/// a process whose ONNX Runtime is not yet loaded. Returns the child's output.
fn run_child(name: &str, set: &[(&str, &str)], remove: &[&str]) -> String {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command.args(["--exact", name, "--nocapture", "--test-threads=1"]);
    command.env("REFIT_TEST_CHILD", "1");
    for (key, value) in set {
        command.env(key, value);
    }
    for key in remove {
        command.env_remove(key);
    }
    let out = command.output().expect("run child test");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child test failed: {output}");
    output
}

fn is_child() -> bool {
    std::env::var_os("REFIT_TEST_CHILD").is_some()
}

#[test]
fn a_missing_runtime_says_how_to_install_it() {
    if is_child() {
        let err = runtime::init().expect_err("the library does not exist");
        assert_eq!(err.kind(), EngineErrorKind::Setup);
        println!("child error: {err}");
        return;
    }
    let output = run_child(
        "a_missing_runtime_says_how_to_install_it",
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
        &[],
    );
    assert!(
        output.contains(
            "child error: ONNX Runtime not found: run deploy/onnxruntime.sh and export ORT_DYLIB_PATH="
        ),
        "{output}"
    );
    assert!(
        output.contains("/nonexistent/libonnxruntime.so is not a file"),
        "{output}"
    );
}

#[test]
fn the_runtime_is_found_in_the_repo_without_ort_dylib_path() {
    if is_child() {
        runtime::init().expect("found under <repo>/.ort");
        println!(
            "child library: {}",
            runtime::library_path().expect("loaded").display()
        );
        return;
    }
    // deploy/onnxruntime.sh installs into REFIT_ORT_DIR when that is set, else <repo>/.ort.
    let root = std::env::var_os("REFIT_ORT_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| repo_root().join(".ort"), PathBuf::from);
    let output = run_child(
        "the_runtime_is_found_in_the_repo_without_ort_dylib_path",
        &[],
        &["ORT_DYLIB_PATH"],
    );
    let want = format!("child library: {}/", root.display());
    assert!(output.contains(&want), "want {want:?} in: {output}");
}

/// Asking for CUDA never silently falls back to the CPU: without the `cuda` feature (or with a
/// CPU-only ONNX Runtime) session creation fails as a setup error.
#[test]
fn cuda_without_a_cuda_runtime_is_a_setup_error() {
    let opts = RuntimeOptions {
        device: runtime::Device::Cuda(0),
        ..RuntimeOptions::default()
    };
    match runtime::session_from_bytes(&relu_affine_model().to_bytes(), &opts) {
        Err(err) => assert_eq!(err.kind(), EngineErrorKind::Setup, "{err}"),
        // Only a CUDA build of refit-worker on an onnxruntime-gpu library gets here.
        Ok(_) if cfg!(feature = "cuda") => {}
        Ok(_) => panic!("a CUDA session from a build without the cuda feature"),
    }
}
