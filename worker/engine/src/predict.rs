//! Inference: the exported `model.onnx` (parameters as initializers) and a [`Predictor`] that
//! featurizes texts, runs it, and decodes intents and entities.
//!
//! The model file is self-describing: its metadata holds the intents in class order, the entity
//! types in tag order and the context window, so `model.onnx` plus `vocab.json` is all a reader
//! needs. Any ONNX Runtime can run it; `tools/predict_parity.py` checks that stock Python
//! `onnxruntime` gives the same probabilities as refit.

use ort::session::Session;
use refit_proto::data::Entity;
use serde::{Deserialize, Serialize};

use super::EngineError;
use super::batch::{Encoded, Ragged};
use super::featurizer::{FeaturizedText, Featurizer};
use super::model::{Dims, INTENT_PROBS, ParamData, TAG_PROBS, infer_graph};
use super::onnx::ModelProto;
use super::runtime::{RuntimeOptions, run_f32, session_from_bytes};
use super::tags::TagSet;
use super::trainer::NluModel;

/// Metadata key: the intents, a JSON list in class order.
pub const META_INTENTS: &str = "refit.intents";
/// Metadata key: the entity types, a JSON list in tag order.
pub const META_ENTITY_TYPES: &str = "refit.entity_types";
/// Metadata key: the context window.
pub const META_WINDOW: &str = "refit.entity_context_window";
/// Metadata key: the embedding width.
pub const META_EMBED: &str = "refit.embed_dim";

/// The inference model of `model` as ONNX bytes.
pub fn export(model: &NluModel) -> Vec<u8> {
    let ckpt = &model.checkpoint;
    let data = ParamData {
        embedding: &ckpt.embedding.value.data,
        vocab: ckpt.vocab_rows(),
        dense: ckpt
            .dense
            .iter()
            .map(|(name, p)| (name.as_str(), p.value.data.as_slice()))
            .collect(),
    };
    let graph = infer_graph(&model.dims(), &data);
    let mut proto = graph.to_model("refit_nlu");
    let meta = &ckpt.meta;
    proto.set_metadata(
        META_INTENTS,
        serde_json::to_string(&meta.intents).expect("strings"),
    );
    proto.set_metadata(
        META_ENTITY_TYPES,
        serde_json::to_string(&meta.entity_types).expect("strings"),
    );
    proto.set_metadata(META_WINDOW, meta.window.to_string());
    proto.set_metadata(META_EMBED, meta.embed.to_string());
    proto.to_bytes()
}

/// Evaluates a model on labelled data as `rasa test nlu` would (see [`super::metrics`]).
pub fn evaluate_model(
    model: &NluModel,
    data: &refit_proto::data::TrainingData,
    runtime: &RuntimeOptions,
) -> Result<super::metrics::EvaluationReport, EngineError> {
    Ok(score(&mut Predictor::for_model(model, runtime)?, data)?.report)
}

/// A model's scores on labelled data and, example by example, what it got right.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The scores.
    pub report: super::metrics::EvaluationReport,
    /// Per example.
    pub outcomes: super::metrics::Outcomes,
}

/// Scores what `predictor` says about `data`'s texts against its labels.
pub fn score(
    predictor: &mut Predictor,
    data: &refit_proto::data::TrainingData,
) -> Result<Scored, EngineError> {
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let predictions: Vec<super::metrics::Prediction> = predictor
        .parse(&texts)?
        .into_iter()
        .map(|p| super::metrics::Prediction {
            intent: p.intent.name,
            confidence: p.intent.confidence,
            entities: p.entities,
        })
        .collect();
    Ok(Scored {
        report: super::metrics::evaluate(&data.examples, &predictions),
        outcomes: super::metrics::outcomes(&data.examples, &predictions),
    })
}

/// One intent with its probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentScore {
    /// The intent.
    pub name: String,
    /// Its probability.
    pub confidence: f32,
}

/// A prediction for one text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parse {
    /// The text.
    pub text: String,
    /// The best intent.
    pub intent: IntentScore,
    /// Every intent, most likely first.
    pub intent_ranking: Vec<IntentScore>,
    /// The entities found (types only; character offsets into `text`).
    pub entities: Vec<Entity>,
}

/// What the model computes for a batch (see [`Predictor::run`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RawOutput {
    /// `[B, C]` intent probabilities.
    pub intent_probs: Vec<f32>,
    /// `[M, K]` tag probabilities.
    pub tag_probs: Vec<f32>,
    /// Where each text's tokens start among the `M` (`B + 1` entries).
    pub offsets: Vec<usize>,
}

/// Runs an exported model.
pub struct Predictor {
    session: Session,
    featurizer: Featurizer,
    tags: TagSet,
    intents: Vec<String>,
    dims: Dims,
}

impl Predictor {
    /// Loads `model.onnx` bytes with the vocabulary's featurizer.
    pub fn new(
        model_onnx: &[u8],
        featurizer: Featurizer,
        runtime: &RuntimeOptions,
    ) -> Result<Self, EngineError> {
        let proto = ModelProto::from_bytes(model_onnx)?;
        let corrupt = |reason: &str| EngineError::Corrupt {
            file: "model.onnx".into(),
            reason: reason.to_owned(),
        };
        let intents: Vec<String> = proto
            .metadata(META_INTENTS)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| corrupt("no intents in its metadata"))?;
        let entity_types: Vec<String> = proto
            .metadata(META_ENTITY_TYPES)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| corrupt("no entity types in its metadata"))?;
        let window: i64 = proto
            .metadata(META_WINDOW)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("no context window in its metadata"))?;
        let embed: i64 = proto
            .metadata(META_EMBED)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("no embedding width in its metadata"))?;
        let tags = TagSet::new(entity_types.iter().cloned());
        let dims = Dims {
            embed,
            hidden: 0,
            intents: intents.len() as i64,
            tags: tags.len() as i64,
            window,
        };
        let session = session_from_bytes(model_onnx, runtime)?;
        Ok(Self {
            session,
            featurizer,
            tags,
            intents,
            dims,
        })
    }

    /// A predictor for an in-memory model (exports it first).
    pub fn for_model(model: &NluModel, runtime: &RuntimeOptions) -> Result<Self, EngineError> {
        Self::new(&export(model), model.featurizer.clone(), runtime)
    }

    /// The intents, in class order.
    pub fn intents(&self) -> &[String] {
        &self.intents
    }

    /// The model's raw outputs for a batch of texts: intent probabilities `[B, C]` row-major,
    /// tag probabilities `[M, K]` for the batch's `M` tokens, and where each text's tokens start
    /// in that list (`B + 1` offsets).
    pub fn run(&mut self, texts: &[FeaturizedText]) -> Result<RawOutput, EngineError> {
        let encoded: Vec<Encoded> = texts.iter().map(Encoded::from_text).collect();
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let oov = self.featurizer.vocab().oov_id();
        let ragged = Ragged::new(&refs, self.dims.window, oov, |id| id as i64);
        let inputs = ragged.inputs("feat_ids", &self.dims);
        let mut out = run_f32(&mut self.session, &inputs, &[INTENT_PROBS, TAG_PROBS])?;
        let tags = out.pop().expect("requested").1;
        let intents = out.pop().expect("requested").1;
        Ok(RawOutput {
            intent_probs: intents,
            tag_probs: tags,
            offsets: ragged.offsets,
        })
    }

    /// Parses texts (batched, 64 at a time).
    pub fn parse(&mut self, texts: &[&str]) -> Result<Vec<Parse>, EngineError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            let featurized: Vec<FeaturizedText> =
                chunk.iter().map(|t| self.featurizer.featurize(t)).collect();
            let RawOutput {
                intent_probs: probs,
                tag_probs,
                offsets,
            } = self.run(&featurized)?;
            let c = self.intents.len();
            let k = self.tags.len();
            for (i, text) in chunk.iter().enumerate() {
                let row = &probs[i * c..(i + 1) * c];
                let mut ranking: Vec<IntentScore> = self
                    .intents
                    .iter()
                    .zip(row)
                    .map(|(name, &confidence)| IntentScore {
                        name: name.clone(),
                        confidence,
                    })
                    .collect();
                ranking.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
                let n = featurized[i].tokens.len();
                let first = offsets[i] * k;
                let tags = self.tags.best_sequence(&tag_probs[first..first + n * k], n);
                let entities = self.tags.decode(&tags, &featurized[i].tokens, text);
                out.push(Parse {
                    text: (*text).to_owned(),
                    intent: ranking[0].clone(),
                    intent_ranking: ranking,
                    entities,
                });
            }
        }
        Ok(out)
    }
}
