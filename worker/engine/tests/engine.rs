//! The training engine end to end on the repo's financial-demo data: the graphs pass
//! `onnx.checker`, training learns, fine-tunes grow the vocabulary, and stock Python
//! `onnxruntime` gives the exported model's probabilities as refit does.
//!
//! Needs ONNX Runtime (`deploy/onnxruntime.sh`) and the Python peers (`deploy/python-peers.sh`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use refit_engine::batch::{Encoded, Ragged};
use refit_engine::model::{AdamW, Dims, train_graph};
use refit_engine::predict::{Predictor, export};
use refit_engine::runtime::{HostTensor, RuntimeOptions};
use refit_engine::trainer::{NluModel, Quiet, TrainOptions};
use refit_proto::ArchSpec;
use refit_proto::data::{TrainingData, load_file, load_files};

use common::{onnx_check_bytes, python, repo_root};

fn demo(name: &str) -> PathBuf {
    repo_root().join("examples/data/financial-demo").join(name)
}

fn small_arch() -> ArchSpec {
    ArchSpec {
        embed_dim: 32,
        hidden_dim: 32,
        ..ArchSpec::default()
    }
}

fn quick_opts() -> TrainOptions {
    TrainOptions {
        runtime: RuntimeOptions {
            intra_threads: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn training_and_inference_graphs_pass_the_onnx_checker() {
    let d = Dims {
        embed: 8,
        hidden: 6,
        intents: 3,
        tags: 5,
        window: 1,
    };
    let train = train_graph(&d, &AdamW::default())
        .unwrap()
        .to_model("train")
        .to_bytes();
    let check = onnx_check_bytes(&train, false);
    assert!(check.success, "training graph: {}", check.output);

    let data = load_file(&demo("test.yml")).unwrap();
    let model = NluModel::new(small_arch(), &data, 1).unwrap();
    let check = onnx_check_bytes(&export(&model), false);
    assert!(check.success, "inference graph: {}", check.output);
}

#[test]
fn training_fits_the_training_data() {
    let data = load_file(&demo("test.yml")).unwrap();
    let mut model = NluModel::new(small_arch(), &data, 7).unwrap();
    let first = model.train(&data, 1, &quick_opts(), &mut Quiet).unwrap();
    model.begin_run();
    let last = model.train(&data, 100, &quick_opts(), &mut Quiet).unwrap();
    assert!(
        last.final_loss < first.final_loss / 4.0,
        "{first:?} -> {last:?}"
    );

    let mut predictor = Predictor::for_model(&model, &quick_opts().runtime).unwrap();
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let parses = predictor.parse(&texts).unwrap();
    let right = parses
        .iter()
        .zip(&data.examples)
        .filter(|(p, e)| p.intent.name == e.intent)
        .count();
    assert!(
        right * 10 >= data.len() * 9,
        "{right} of {} training examples right",
        data.len()
    );
}

#[test]
fn a_chain_of_three_fine_tunes_only_grows_the_vocabulary() {
    let set1 = load_file(&demo("set1.yml")).unwrap();
    let mut model = NluModel::new(small_arch(), &set1, 3).unwrap();
    model.train(&set1, 2, &quick_opts(), &mut Quiet).unwrap();

    let mut data = set1.clone();
    let extra = |words: &str| TrainingData {
        examples: vec![refit_proto::data::Example {
            text: format!("please transfer money {words}"),
            intent: "transfer_money".into(),
            entities: vec![],
        }],
        ..Default::default()
    };
    for (round, words) in ["zelle venmo", "quokka wombat", "xylophone zither"]
        .into_iter()
        .enumerate()
    {
        let before: Vec<String> = model.featurizer.vocab().keys().to_vec();
        let rows_before = model.checkpoint.embedding.value.data.clone();
        data.merge(extra(words));
        let added = model.extend_for(&data).unwrap();
        assert!(added > 0, "round {round}: new words add features");
        let after = model.featurizer.vocab().keys();
        assert_eq!(
            &after[..before.len()],
            &before[..],
            "round {round}: existing ids keep their features"
        );
        assert_eq!(
            model.checkpoint.vocab_rows() as usize,
            model.featurizer.vocab().num_ids()
        );
        assert_eq!(
            &model.checkpoint.embedding.value.data[..rows_before.len()],
            &rows_before[..]
        );
        model.begin_run();
        model.train(&data, 1, &quick_opts(), &mut Quiet).unwrap();
        for w in words.split(' ') {
            assert!(model.featurizer.vocab().id(&format!("w:{w}")).is_some());
        }
    }
}

#[test]
fn fine_tuning_refuses_data_with_other_labels() {
    let set1 = load_file(&demo("set1.yml")).unwrap();
    let mut model = NluModel::new(small_arch(), &set1, 3).unwrap();
    let mut other = set1.clone();
    other.examples[0].intent = "brand_new_intent".into();
    let error = model.extend_for(&other).unwrap_err().to_string();
    assert!(error.contains("brand_new_intent"), "{error}");
}

#[test]
fn python_onnxruntime_matches_refit_on_every_test_example() {
    let train = load_files(&[demo("set1.yml"), demo("set2.yml")]).unwrap();
    let test = load_file(&demo("test.yml")).unwrap();
    let mut model = NluModel::new(small_arch(), &train, 11).unwrap();
    model.train(&train, 3, &quick_opts(), &mut Quiet).unwrap();

    let bytes = export(&model);
    let mut predictor =
        Predictor::new(&bytes, model.featurizer.clone(), &RuntimeOptions::default()).unwrap();
    let d = model.dims();
    let mut cases = Vec::new();
    for chunk in test.examples.chunks(16) {
        let featurized: Vec<_> = chunk
            .iter()
            .map(|e| model.featurizer.featurize(&e.text))
            .collect();
        let probs = predictor.run(&featurized).unwrap().intent_probs;
        let encoded: Vec<Encoded> = featurized.iter().map(Encoded::from_text).collect();
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let oov = model.featurizer.vocab().oov_id();
        let padded = Ragged::new(&refs, d.window, oov, |id| id as i64);
        let mut inputs = serde_json::Map::new();
        for (name, tensor) in padded.inputs("feat_ids", &d) {
            let json = match tensor {
                HostTensor::F32 { shape, data } => {
                    serde_json::json!({"shape": shape, "dtype": "f32", "data": data})
                }
                HostTensor::I64 { shape, data } => {
                    serde_json::json!({"shape": shape, "dtype": "i64", "data": data})
                }
                other => panic!("unexpected input {other:?}"),
            };
            inputs.insert(name.to_owned(), json);
        }
        cases.push(serde_json::json!({"inputs": inputs, "intent_probs": probs}));
    }
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.onnx");
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&model_path, &bytes).unwrap();
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(repo_root().join("tools/predict_parity.py"))
        .args([&model_path, &cases_path])
        .args(["--tolerance", "1e-5"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python onnxruntime disagrees: {text}");
    assert!(text.contains(&format!("{} examples", test.len())), "{text}");
}

#[test]
fn training_is_deterministic_for_a_seed_and_thread_count() {
    let data = load_file(&demo("set2.yml")).unwrap();
    for threads in [1, 2] {
        let opts = TrainOptions {
            runtime: RuntimeOptions {
                intra_threads: threads,
                ..Default::default()
            },
            ..Default::default()
        };
        let run = |seed: u64| {
            let mut model = NluModel::new(ArchSpec::default(), &data, seed).unwrap();
            model.train(&data, 3, &opts, &mut Quiet).unwrap();
            model.checkpoint.to_bytes()
        };
        let first = run(5);
        assert!(
            first == run(5),
            "{threads} thread(s): two runs with seed 5 gave different checkpoints"
        );
        assert!(
            first != run(6),
            "{threads} thread(s): the seed changes nothing"
        );
    }
}
