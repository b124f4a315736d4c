//! The NLU model as a whole (featurizer + tags + parameters) and its training loop.
//!
//! [`NluModel::train`] runs the step graph of `model::train_graph` once per batch: it gathers the
//! embedding rows the batch uses, feeds them with the dense parameters and their AdamW moments,
//! and writes the updated values back. Shuffling and dropout draw from the checkpointed RNG, so
//! a run resumed from an epoch-boundary checkpoint continues exactly as an uninterrupted one.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

use refit_proto::ArchSpec;
use refit_proto::data::TrainingData;
use refit_proto::manifest::LabelSet;
use serde::{Deserialize, Serialize};

use super::EngineError;
use super::batch::{Encoded, Ragged, clear_slots, dropout_mask, unique_rows};
use super::checkpoint::{Checkpoint, ModelMeta};
use super::featurizer::{FeatureLimits, Featurizer, Vocabulary};
use super::model::{AdamW, Dims, train_graph};
use super::rng::Rng;
use super::runtime::{HostTensor, RuntimeOptions, run_f32, session_from_bytes};
use super::tags::TagSet;

/// How to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Examples per step. Default 64.
    pub batch_size: usize,
    /// AdamW learning rate. Default 0.003.
    pub learning_rate: f32,
    /// Decoupled weight decay (matrices and embedding rows only). Default 0.0001.
    pub weight_decay: f32,
    /// Dropout rate on token vectors and hidden layers. Default 0.2.
    pub dropout: f32,
    /// Weight of the entity loss against the intent loss. Default 1.
    pub entity_loss_weight: f32,
    /// Share of a token's input features dropped at random in each step. Default 0.2.
    pub feature_dropout: f32,
    /// Chance, drawn anew each epoch, that a word seen only once in the training data appears
    /// as [`OOV_WORD`](super::featurizer::OOV_WORD) (its n-grams kept for the intent head; the
    /// tagger then sees the unseen-word feature alone), so the model learns what to make of
    /// words it has never seen. Default 0.7.
    pub rare_word_oov: f32,
    /// Where the graphs run.
    pub runtime: RuntimeOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            learning_rate: 0.003,
            weight_decay: 1e-4,
            dropout: 0.2,
            feature_dropout: 0.2,
            rare_word_oov: 0.7,
            entity_loss_weight: 1.0,
            runtime: RuntimeOptions::default(),
        }
    }
}

/// Training progress, reported after every step.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Epochs this run trains.
    pub total_epochs: u32,
    /// Optimiser steps over the model's life.
    pub step: u64,
    /// Mean loss over the current epoch so far.
    pub loss: f64,
    /// Training throughput of this run.
    pub examples_per_sec: f64,
    /// Estimated seconds to the end of the run.
    pub eta_secs: f64,
}

/// Callbacks of a training run.
pub trait TrainObserver {
    /// After each step.
    fn progress(&mut self, _progress: &Progress) {}
    /// Checked before each step: `true` stops the run (it returns [`EngineError::Cancelled`]).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// After each epoch, with the model as it is then (a consistent checkpoint).
    fn epoch_end(&mut self, _model: &NluModel) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// An observer that does nothing.
pub struct Quiet;

impl TrainObserver for Quiet {}

/// What a training run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainReport {
    /// Epochs trained in this call.
    pub epochs: u32,
    /// Steps taken in this call.
    pub steps: u64,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Seconds spent in the loop.
    pub seconds: f64,
    /// Examples per second.
    pub examples_per_sec: f64,
}

/// The tokens of a training set whose word occurs only once in it: the ones that stand in for
/// unseen words.
struct RareWords {
    oov: Option<u32>,
    /// (example, token, word feature id)
    at: Vec<(usize, usize, u32)>,
}

impl RareWords {
    fn find(encoded: &[Encoded], vocab: &Vocabulary) -> Self {
        let word = |token: &Vec<u32>| token.first().copied().filter(|&id| vocab.is_word(id));
        let mut count: HashMap<u32, u32> = HashMap::new();
        for token in encoded.iter().flat_map(|e| &e.tokens) {
            if let Some(id) = word(token) {
                *count.entry(id).or_default() += 1;
            }
        }
        let mut at = Vec::new();
        for (e, example) in encoded.iter().enumerate() {
            for (t, token) in example.tokens.iter().enumerate() {
                if let Some(id) = word(token).filter(|id| count[id] == 1) {
                    at.push((e, t, id));
                }
            }
        }
        Self {
            oov: vocab.oov_id(),
            at,
        }
    }

    /// Gives each rare word its own id or, with chance `rate`, [`OOV_WORD`]'s.
    fn draw(&self, encoded: &mut [Encoded], rate: f32, rng: &mut Rng) {
        let Some(oov) = self.oov.filter(|_| rate > 0.0) else {
            return;
        };
        for &(e, t, id) in &self.at {
            encoded[e].tokens[t][0] = if rng.next_f32() < rate { oov } else { id };
        }
    }
}

/// A model: its architecture, featurizer (with the vocabulary), tag set and parameters.
#[derive(Clone, Debug)]
pub struct NluModel {
    /// The architecture.
    pub arch: ArchSpec,
    /// Featurizer and vocabulary.
    pub featurizer: Featurizer,
    /// The entity tags.
    pub tags: TagSet,
    /// Parameters, optimiser state and progress.
    pub checkpoint: Checkpoint,
}

impl NluModel {
    /// A fresh model for a dataset: the vocabulary and labels come from the data.
    pub fn new(arch: ArchSpec, data: &TrainingData, seed: u64) -> Result<Self, EngineError> {
        if data.is_empty() {
            return Err(EngineError::Data(
                "the training data holds no examples".into(),
            ));
        }
        let mut vocab = Vocabulary::new(arch.featurizer.clone());
        vocab.fit(data.examples.iter().map(|e| e.text.as_str()));
        let labels = LabelSet::of(data);
        let meta = ModelMeta {
            embed: arch.embed_dim as i64,
            hidden: arch.hidden_dim as i64,
            window: arch.entity_context_window as i64,
            intents: labels.intents.iter().cloned().collect(),
            entity_types: labels.entities.iter().cloned().collect(),
            arch_fingerprint: arch.fingerprint(),
        };
        let tags = TagSet::new(meta.entity_types.iter().cloned());
        let checkpoint = Checkpoint::init(meta, vocab.num_ids() as i64, seed);
        let featurizer = Featurizer::new(vocab, FeatureLimits::default());
        Ok(Self {
            arch,
            featurizer,
            tags,
            checkpoint,
        })
    }

    /// Reassembles a model from its stored parts.
    pub fn from_parts(
        arch: ArchSpec,
        vocab: Vocabulary,
        checkpoint: Checkpoint,
    ) -> Result<Self, EngineError> {
        if checkpoint.meta.arch_fingerprint != arch.fingerprint() {
            return Err(EngineError::Incompatible(
                "the checkpoint was trained with another architecture".into(),
            ));
        }
        if checkpoint.vocab_rows() != vocab.num_ids() as i64 {
            return Err(EngineError::Incompatible(format!(
                "the checkpoint has {} embedding rows but vocab.json {} ids",
                checkpoint.vocab_rows(),
                vocab.num_ids()
            )));
        }
        let tags = TagSet::new(checkpoint.meta.entity_types.iter().cloned());
        let featurizer = Featurizer::new(vocab, FeatureLimits::default());
        Ok(Self {
            arch,
            featurizer,
            tags,
            checkpoint,
        })
    }

    /// The graph dims.
    pub fn dims(&self) -> Dims {
        self.checkpoint.meta.dims()
    }

    /// The labels the model predicts.
    pub fn labels(&self) -> LabelSet {
        LabelSet {
            intents: self.checkpoint.meta.intents.iter().cloned().collect(),
            entities: self.checkpoint.meta.entity_types.iter().cloned().collect(),
            ..Default::default()
        }
    }

    /// Prepares a fine-tune on `data`: checks the labels match, appends the new words and
    /// n-grams to the vocabulary and grows the embedding with freshly initialised rows (zero
    /// moments). Returns how many features were added.
    pub fn extend_for(&mut self, data: &TrainingData) -> Result<usize, EngineError> {
        let have = self.labels();
        let want = LabelSet::of(data);
        if want.intents != have.intents || want.entities != have.entities {
            let added: Vec<_> = want.intents.difference(&have.intents).collect();
            let removed: Vec<_> = have.intents.difference(&want.intents).collect();
            let ents_added: Vec<_> = want.entities.difference(&have.entities).collect();
            let ents_removed: Vec<_> = have.entities.difference(&want.entities).collect();
            return Err(EngineError::Incompatible(format!(
                "the data's labels differ from the model's: intents added {added:?}, removed \
                 {removed:?}; entity types added {ents_added:?}, removed {ents_removed:?}"
            )));
        }
        let mut vocab = self.featurizer.vocab().clone();
        let added = vocab.fit(data.examples.iter().map(|e| e.text.as_str()));
        let limits = self.featurizer.limits();
        self.featurizer = Featurizer::new(vocab, limits);
        let mut rng = Rng::from_state(self.checkpoint.state.rng);
        self.checkpoint
            .grow_vocab(self.featurizer.vocab().num_ids() as i64, &mut rng);
        self.checkpoint.state.rng = rng.state();
        Ok(added)
    }

    /// Featurizes and tags a dataset for training.
    pub fn encode(&self, data: &TrainingData) -> Result<Vec<Encoded>, EngineError> {
        let mut out = Vec::with_capacity(data.len());
        for example in &data.examples {
            let Some(intent) = self
                .checkpoint
                .meta
                .intents
                .iter()
                .position(|i| *i == example.intent)
            else {
                return Err(EngineError::Data(format!(
                    "intent {:?} is not one of the model's intents",
                    example.intent
                )));
            };
            let text = self.featurizer.featurize(&example.text);
            let tags = self.tags.encode(example, &text.tokens).tags;
            let mut encoded = Encoded::from_text(&text);
            encoded.intent = intent as u32;
            encoded.tags = tags;
            out.push(encoded);
        }
        Ok(out)
    }

    /// Starts a new run: the epoch counter restarts; step, moments and RNG carry on.
    pub fn begin_run(&mut self) {
        self.checkpoint.state.epochs_done = 0;
    }

    /// Trains until `epochs` epochs of the current run are done (continuing from
    /// `checkpoint.state.epochs_done`, so a resumed run picks up where it stopped).
    pub fn train(
        &mut self,
        data: &TrainingData,
        epochs: u32,
        opts: &TrainOptions,
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainReport, EngineError> {
        let mut encoded = self.encode(data)?;
        let rare = RareWords::find(&encoded, self.featurizer.vocab());
        let d = self.dims();
        let adam = AdamW::default();
        let graph = train_graph(&d, &adam).map_err(|e| EngineError::Graph(e.to_string()))?;
        let bytes = graph.to_model("refit_train_step").to_bytes();
        let mut session = session_from_bytes(&bytes, &opts.runtime)?;

        let batch_size = opts.batch_size.max(1);
        let start_epoch = self.checkpoint.state.epochs_done.min(epochs as u64) as u32;
        let steps_per_epoch = encoded.len().div_ceil(batch_size);
        let mut slot = Vec::new();
        let started = Instant::now();
        let mut seen = 0u64;
        let mut steps = 0u64;
        let mut final_loss = f64::NAN;
        let mut rng = Rng::from_state(self.checkpoint.state.rng);
        let mut order: Vec<usize> = (0..encoded.len()).collect();

        for epoch in start_epoch..epochs {
            rare.draw(&mut encoded, opts.rare_word_oov, &mut rng);
            order.sort_unstable();
            rng.shuffle(&mut order);
            let mut loss_sum = 0.0;
            for (i, chunk) in order.chunks(batch_size).enumerate() {
                if observer.should_stop() {
                    return Err(EngineError::Cancelled);
                }
                let batch: Vec<&Encoded> = chunk.iter().map(|&k| &encoded[k]).collect();
                let loss = self.step(&mut session, &batch, &d, &adam, opts, &mut rng, &mut slot)?;
                if !loss.is_finite() {
                    return Err(EngineError::Diverged(format!(
                        "loss became {loss} at epoch {epoch}, step {}",
                        self.checkpoint.state.step
                    )));
                }
                loss_sum += loss;
                seen += batch.len() as u64;
                steps += 1;
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                let done = (epoch - start_epoch) as f64 + (i + 1) as f64 / steps_per_epoch as f64;
                let left = (epochs - start_epoch) as f64 - done;
                observer.progress(&Progress {
                    epoch: epoch as f64 + (i + 1) as f64 / steps_per_epoch as f64,
                    total_epochs: epochs,
                    step: self.checkpoint.state.step,
                    loss: loss_sum / (i + 1) as f64,
                    examples_per_sec: seen as f64 / elapsed,
                    eta_secs: elapsed / done * left,
                });
            }
            final_loss = loss_sum / steps_per_epoch.max(1) as f64;
            self.checkpoint.state.epochs_done = epoch as u64 + 1;
            self.checkpoint.state.lineage_epochs += 1.0;
            self.checkpoint.state.rng = rng.state();
            if observer.epoch_end(self).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(TrainReport {
            epochs: epochs - start_epoch,
            steps,
            final_loss,
            seconds,
            examples_per_sec: seen as f64 / seconds.max(1e-9),
        })
    }

    /// One optimiser step on one batch; returns its loss.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        session: &mut ort::session::Session,
        batch: &[&Encoded],
        d: &Dims,
        adam: &AdamW,
        opts: &TrainOptions,
        rng: &mut Rng,
        slot: &mut Vec<u32>,
    ) -> Result<f64, EngineError> {
        let ckpt = &mut self.checkpoint;
        let oov = self.featurizer.vocab().oov_id();
        let rows = unique_rows(batch, oov, slot, ckpt.vocab_rows() as usize);
        let mut padded = Ragged::new(batch, d.window, oov, |id| slot[id as usize] as i64);
        clear_slots(&rows, slot);
        if opts.feature_dropout > 0.0 {
            let keep = 1.0 - opts.feature_dropout;
            for w in &mut padded.feat_w {
                if *w != 0.0 && rng.next_f32() >= keep {
                    *w = 0.0;
                }
            }
        }

        let width = d.embed as usize;
        let gather = |data: &[f32]| -> Vec<f32> {
            let mut out = Vec::with_capacity(rows.len() * width);
            for &r in &rows {
                out.extend_from_slice(&data[r as usize * width..(r as usize + 1) * width]);
            }
            out
        };
        let u = rows.len() as i64;
        let (b, m) = (padded.batch, padded.tokens);
        let h = d.hidden as usize;

        let names: Vec<[String; 3]> = ckpt
            .dense
            .iter()
            .map(|(n, _)| [n.clone(), format!("{n}_m"), format!("{n}_v")])
            .collect();
        let mut inputs: Vec<(&str, HostTensor)> = padded.inputs("feat_idx", d);
        inputs.push((
            "emb_rows",
            HostTensor::f32(&[u, d.embed], gather(&ckpt.embedding.value.data)),
        ));
        inputs.push((
            "emb_rows_m",
            HostTensor::f32(&[u, d.embed], gather(&ckpt.embedding.m.data)),
        ));
        inputs.push((
            "emb_rows_v",
            HostTensor::f32(&[u, d.embed], gather(&ckpt.embedding.v.data)),
        ));
        inputs.push((
            "drop_tok",
            HostTensor::f32(
                &[m as i64, d.embed],
                dropout_mask(rng, m * width, opts.dropout),
            ),
        ));
        inputs.push((
            "drop_int",
            HostTensor::f32(
                &[b as i64, d.hidden],
                dropout_mask(rng, b * h, opts.dropout),
            ),
        ));
        inputs.push((
            "drop_ent",
            HostTensor::f32(
                &[m as i64, d.hidden],
                dropout_mask(rng, m * h, opts.dropout),
            ),
        ));

        let c = d.intents as usize;
        let mut intent_target = vec![0.0f32; b * c];
        for (i, e) in batch.iter().enumerate() {
            intent_target[i * c + e.intent as usize] = 1.0 / b as f32;
        }
        inputs.push((
            "intent_target",
            HostTensor::f32(&[b as i64, d.intents], intent_target),
        ));
        let k = d.tags as usize;
        let weight = opts.entity_loss_weight / m.max(1) as f32;
        let mut tag_target = vec![0.0f32; m * k];
        for (i, e) in batch.iter().enumerate() {
            let first = padded.offsets[i];
            for (j, &tag) in e.tags.iter().enumerate().take(e.tokens.len()) {
                tag_target[(first + j) * k + tag as usize] = weight;
            }
        }
        inputs.push((
            "tag_target",
            HostTensor::f32(&[m as i64, d.tags], tag_target),
        ));

        for ((_, p), [name, m, v]) in ckpt.dense.iter().zip(&names) {
            inputs.push((name, HostTensor::f32(&p.value.dims, p.value.data.clone())));
            inputs.push((m, HostTensor::f32(&p.m.dims, p.m.data.clone())));
            inputs.push((v, HostTensor::f32(&p.v.dims, p.v.data.clone())));
        }
        ckpt.state.step += 1;
        let step = ckpt.state.step as i32;
        let bias1 = 1.0 - adam.beta1.powi(step);
        let bias2 = 1.0 - adam.beta2.powi(step);
        let lr_t = opts.learning_rate as f64 * bias2.sqrt() / bias1;
        inputs.push(("lr_t", HostTensor::f32(&[], vec![lr_t as f32])));
        inputs.push((
            "lr_wd",
            HostTensor::f32(&[], vec![opts.learning_rate * opts.weight_decay]),
        ));

        let mut wanted: Vec<String> = vec!["loss".into()];
        for base in ["emb_rows", "emb_rows_m", "emb_rows_v"] {
            wanted.push(format!("new_{base}"));
        }
        for (name, _) in &ckpt.dense {
            wanted.push(format!("new_{name}"));
            wanted.push(format!("new_{name}_m"));
            wanted.push(format!("new_{name}_v"));
        }
        let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let mut out = run_f32(session, &inputs, &wanted_refs)?.into_iter();
        let loss = out.next().expect("loss requested").1[0] as f64;

        let scatter = |target: &mut Vec<f32>, values: Vec<f32>| {
            for (i, &r) in rows.iter().enumerate() {
                target[r as usize * width..(r as usize + 1) * width]
                    .copy_from_slice(&values[i * width..(i + 1) * width]);
            }
        };
        scatter(
            &mut ckpt.embedding.value.data,
            out.next().expect("requested").1,
        );
        scatter(&mut ckpt.embedding.m.data, out.next().expect("requested").1);
        scatter(&mut ckpt.embedding.v.data, out.next().expect("requested").1);
        for (_, p) in &mut ckpt.dense {
            p.value.data = out.next().expect("requested").1;
            p.m.data = out.next().expect("requested").1;
            p.v.data = out.next().expect("requested").1;
        }
        Ok(loss)
    }
}
