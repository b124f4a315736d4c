//! The NLU model as a whole (featurizer + tags + parameters) and its training loop.
//!
//! [`NluModel::train`] runs the step graph of `model::train_graph` once per batch: it gathers the
//! embedding rows the batch uses, feeds them with the dense parameters and their AdamW moments,
//! and writes the updated values back. Shuffling and dropout draw from the checkpointed RNG, so
//! a run resumed from an epoch-boundary checkpoint continues exactly as an uninterrupted one.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

use refit_proto::data::TrainingData;
use refit_proto::manifest::LabelSet;
use refit_proto::{ArchSpec, Hyperparams};
use serde::{Deserialize, Serialize};

use super::EngineError;
use super::batch::{Encoded, Ragged, clear_slots, dropout_mask, unique_rows};
use super::checkpoint::{Checkpoint, ModelMeta};
use super::featurizer::{FeatureLimits, Featurizer, Vocabulary};
use super::model::{AdamW, Dims, train_graph};
use super::rng::Rng;
use super::runtime::{HostTensor, RuntimeOptions, run_f32_visit, session_from_bytes};
use super::tags::TagSet;

/// How to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Examples per step in a run's first epoch. Default 32.
    pub batch_size: usize,
    /// Examples per step in a run's last epoch: the batch size grows linearly from
    /// `batch_size` to this over the run's epochs, the schedule DIET uses by default (there
    /// 64 → 256). Small, noisy steps early, large ones late, so runs with different seeds end
    /// closer together: over 32 seeds of the demo, 32 → 128 halved the spread of v3's entity
    /// F1 (sd 0.019 → 0.010) and put v2 within ±0.02 of v3 on both metrics in 18 seeds instead
    /// of 11 (BENCHMARKS.md). Equal to `batch_size`: a constant batch size. Default 128.
    pub final_batch_size: usize,
    /// AdamW learning rate. Default 0.003.
    pub learning_rate: f32,
    /// Decoupled weight decay, on every parameter (embedding rows only when a batch uses them).
    /// Default 0.0001.
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
    /// Chance that the entity tagger sees a token, any token, as an unseen word (the
    /// unseen-word feature alone), drawn anew for every token of every batch: it learns to read
    /// an entity from its neighbours, not only from the word. The intent head still sees the
    /// token. Default 0.25 (entity F1 0.864 → 0.894 over 8 seeds, BENCHMARKS.md).
    pub tagger_word_mask: f32,
    /// Label smoothing of the intent loss: the target puts this share of its weight evenly on
    /// all intents and the rest on the true one. Default 0.1 (over 16 seeds of the demo, intent
    /// weighted-F1 +0.010 on v2 and +0.008 on v3, and the v2 − v3 spread 0.024 → 0.015,
    /// BENCHMARKS.md).
    pub intent_label_smoothing: f32,
    /// Where the graphs run.
    pub runtime: RuntimeOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            final_batch_size: 128,
            learning_rate: 0.003,
            weight_decay: 1e-4,
            dropout: 0.2,
            feature_dropout: 0.2,
            rare_word_oov: 0.7,
            tagger_word_mask: 0.25,
            entity_loss_weight: 1.0,
            intent_label_smoothing: 0.1,
            runtime: RuntimeOptions::default(),
        }
    }
}

impl TrainOptions {
    /// The options a job's hyperparameters ask for: its batch sizes and learning rate, the
    /// defaults for the rest. A job without `final_batch_size` keeps `batch_size` throughout.
    /// (A batch size of 0 trains as 1: the run's `BatchSchedule` clamps both ends.)
    pub fn for_job(hyperparams: &Hyperparams) -> Self {
        Self {
            batch_size: hyperparams.batch_size as usize,
            final_batch_size: hyperparams
                .final_batch_size
                .unwrap_or(hyperparams.batch_size) as usize,
            learning_rate: hyperparams.learning_rate as f32,
            ..Self::default()
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

    /// Where the words seen only once in `encoded` are, as (example, token): the tokens whose
    /// word feature the trainer swaps for the unseen-word feature (see
    /// [`TrainOptions::rare_word_oov`]). The benchmark's peers do the same swaps.
    pub fn rare_words(&self, encoded: &[Encoded]) -> Vec<(usize, usize)> {
        RareWords::find(encoded, self.featurizer.vocab())
            .at
            .into_iter()
            .map(|(e, t, _)| (e, t))
            .collect()
    }

    /// Starts a new run: the epoch counter restarts; step, moments and RNG carry on.
    pub fn begin_run(&mut self) {
        self.checkpoint.state.epochs_done = 0;
    }

    /// Trains until `epochs` epochs of the current run are done (continuing from
    /// `checkpoint.state.epochs_done`, so a resumed run picks up where it stopped).
    ///
    /// With [`RuntimeOptions::prepare_in_parallel`], the batches (their layout, dropout masks and
    /// targets: everything that does not depend on the parameters) are made on a second thread
    /// while ONNX Runtime runs the current step. They draw from the RNG in the same order either
    /// way, so both give the same model.
    pub fn train(
        &mut self,
        data: &TrainingData,
        epochs: u32,
        opts: &TrainOptions,
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainReport, EngineError> {
        let encoded = self.encode(data)?;
        let d = self.dims();
        let adam = AdamW::default();
        let graph = train_graph(&d, &adam).map_err(|e| EngineError::Graph(e.to_string()))?;
        let bytes = graph.to_model("refit_train_step").to_bytes();
        let session = session_from_bytes(&bytes, &opts.runtime)?;

        let start_epoch = self.checkpoint.state.epochs_done.min(epochs as u64) as u32;
        let batches = Batches {
            rare: RareWords::find(&encoded, self.featurizer.vocab()),
            encoded,
            rng: Rng::from_state(self.checkpoint.state.rng),
            epochs: start_epoch..epochs,
            schedule: BatchSchedule::new(opts, epochs),
            dims: d,
            oov: self.featurizer.vocab().oov_id(),
            vocab_rows: self.checkpoint.vocab_rows() as usize,
            opts: opts.clone(),
        };
        let mut run = Run {
            model: self,
            session,
            buffers: Default::default(),
            adam,
            opts,
            observer,
            started: Instant::now(),
            start_epoch,
            epochs,
            seen: 0,
            steps: 0,
            loss_sum: 0.0,
            final_loss: f64::NAN,
        };
        if opts.runtime.prepare_in_parallel() {
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Prepared>(2);
                scope.spawn(move || batches.make(|batch| tx.send(batch).is_ok()));
                // Dropping `rx` on an early return stops the maker at its next send.
                rx.into_iter().try_for_each(|batch| run.step(batch))
            })?;
        } else {
            let mut result = Ok(());
            batches.make(|batch| {
                result = run.step(batch);
                result.is_ok()
            });
            result?;
        }
        let seconds = run.started.elapsed().as_secs_f64();
        Ok(TrainReport {
            epochs: epochs - start_epoch,
            steps: run.steps,
            final_loss: run.final_loss,
            seconds,
            examples_per_sec: run.seen as f64 / seconds.max(1e-9),
        })
    }
}

/// A batch made ahead of its step: what does not depend on the parameters.
struct Prepared {
    /// The epoch it belongs to, its index in it and how many batches the epoch has.
    epoch: u32,
    index: usize,
    steps_in_epoch: usize,
    /// Examples in it.
    examples: usize,
    /// The vocabulary ids of the embedding rows it uses, in row order.
    rows: Vec<u32>,
    /// Layout, dropout masks and targets, as graph inputs.
    inputs: Vec<(&'static str, HostTensor)>,
    /// On an epoch's last batch: the RNG state after the epoch (what the checkpoint keeps).
    rng_after_epoch: Option<[u64; 4]>,
}

/// The batch size of each epoch of a run: linear from [`TrainOptions::batch_size`] in epoch 0
/// to [`TrainOptions::final_batch_size`] in the run's last epoch (whole steps, rounded toward
/// `batch_size`; both ends at least 1). It depends on the run's length only, so a run resumed
/// from a checkpoint makes the same batches.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BatchSchedule {
    first: usize,
    last: usize,
    epochs: u32,
}

impl BatchSchedule {
    fn new(opts: &TrainOptions, epochs: u32) -> Self {
        Self {
            first: opts.batch_size.max(1),
            last: opts.final_batch_size.max(1),
            epochs,
        }
    }

    fn size(&self, epoch: u32) -> usize {
        if self.epochs <= 1 {
            return self.first;
        }
        // Exact integer steps (a float could land a hair under a whole number); the division
        // truncates toward zero, so the size stays between the two ends.
        let (first, last) = (self.first as i64, self.last as i64);
        let epoch = i64::from(epoch.min(self.epochs - 1));
        (first + (last - first) * epoch / i64::from(self.epochs - 1)) as usize
    }
}

/// Makes a run's batches, epoch after epoch, drawing from the run's RNG in a fixed order: per
/// epoch the rare-word swaps, then the shuffle, then per batch the feature dropout and the
/// dropout masks.
struct Batches {
    encoded: Vec<Encoded>,
    rare: RareWords,
    rng: Rng,
    epochs: std::ops::Range<u32>,
    schedule: BatchSchedule,
    dims: Dims,
    oov: Option<u32>,
    vocab_rows: usize,
    opts: TrainOptions,
}

impl Batches {
    /// Hands each batch to `sink` until it returns `false` or the run is done.
    fn make(mut self, mut sink: impl FnMut(Prepared) -> bool) {
        let mut order: Vec<usize> = (0..self.encoded.len()).collect();
        let mut slot = Vec::new();
        for epoch in self.epochs.clone() {
            self.rare
                .draw(&mut self.encoded, self.opts.rare_word_oov, &mut self.rng);
            order.sort_unstable();
            self.rng.shuffle(&mut order);
            let size = self.schedule.size(epoch);
            let count = order.len().div_ceil(size);
            for (index, chunk) in order.chunks(size).enumerate() {
                let batch: Vec<&Encoded> = chunk.iter().map(|&k| &self.encoded[k]).collect();
                let mut prepared = prepare(
                    &batch,
                    &self.dims,
                    self.oov,
                    self.vocab_rows,
                    &self.opts,
                    &mut self.rng,
                    &mut slot,
                );
                prepared.epoch = epoch;
                prepared.index = index;
                prepared.steps_in_epoch = count;
                if index + 1 == count {
                    prepared.rng_after_epoch = Some(self.rng.state());
                }
                if !sink(prepared) {
                    return;
                }
            }
        }
    }
}

/// Lays out one batch: its rows, the ragged tensors, dropout masks and targets.
fn prepare(
    batch: &[&Encoded],
    d: &Dims,
    oov: Option<u32>,
    vocab_rows: usize,
    opts: &TrainOptions,
    rng: &mut Rng,
    slot: &mut Vec<u32>,
) -> Prepared {
    let rows = unique_rows(batch, oov, slot, vocab_rows);
    let mut ragged = Ragged::new(batch, d.window, oov, |id| slot[id as usize] as i64);
    clear_slots(&rows, slot);
    ragged.drop_features(opts.feature_dropout, rng);
    ragged.mask_words_for_tagger(opts.tagger_word_mask, rng);
    let (b, m) = (ragged.batch, ragged.tokens);
    let (width, h) = (d.embed as usize, d.hidden as usize);
    let mut inputs = ragged.inputs("feat_idx", d);
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

    let intent_target = intent_targets(batch, d.intents as usize, opts.intent_label_smoothing);
    inputs.push((
        "intent_target",
        HostTensor::f32(&[b as i64, d.intents], intent_target),
    ));
    let k = d.tags as usize;
    let weight = opts.entity_loss_weight / m.max(1) as f32;
    let mut tag_target = vec![0.0f32; m * k];
    for (i, e) in batch.iter().enumerate() {
        let first = ragged.offsets[i];
        for (j, &tag) in e.tags.iter().enumerate().take(e.tokens.len()) {
            tag_target[(first + j) * k + tag as usize] = weight;
        }
    }
    inputs.push((
        "tag_target",
        HostTensor::f32(&[m as i64, d.tags], tag_target),
    ));
    Prepared {
        epoch: 0,
        index: 0,
        steps_in_epoch: 1,
        examples: b,
        rows,
        inputs,
        rng_after_epoch: None,
    }
}

/// The intent loss's targets, `[B, C]`: each row a distribution (the true intent `1 − ε + ε/C`,
/// every other `ε/C`) divided by `B`, so the graph's summed cross-entropy is the batch mean.
fn intent_targets(batch: &[&Encoded], classes: usize, smoothing: f32) -> Vec<f32> {
    let b = batch.len() as f32;
    let smoothing = smoothing.clamp(0.0, 1.0);
    let mut targets = vec![smoothing / classes as f32 / b; batch.len() * classes];
    for (i, e) in batch.iter().enumerate() {
        targets[i * classes + e.intent as usize] += (1.0 - smoothing) / b;
    }
    targets
}

/// A training run in progress: what a step needs besides its batch.
struct Run<'a> {
    model: &'a mut NluModel,
    session: ort::session::Session,
    /// Reused buffers for the flat parameter vector and its moments.
    buffers: [Vec<f32>; 3],
    adam: AdamW,
    opts: &'a TrainOptions,
    observer: &'a mut dyn TrainObserver,
    started: Instant,
    start_epoch: u32,
    epochs: u32,
    seen: u64,
    steps: u64,
    loss_sum: f64,
    final_loss: f64,
}

impl Run<'_> {
    /// One optimiser step on a prepared batch, then progress and, after an epoch's last batch,
    /// the epoch's bookkeeping.
    fn step(&mut self, batch: Prepared) -> Result<(), EngineError> {
        if self.observer.should_stop() {
            return Err(EngineError::Cancelled);
        }
        let loss = self.optimise(&batch)?;
        let step = self.model.checkpoint.state.step;
        if !loss.is_finite() {
            return Err(EngineError::Diverged(format!(
                "loss became {loss} at epoch {}, step {step}",
                batch.epoch
            )));
        }
        if batch.index == 0 {
            self.loss_sum = 0.0;
        }
        self.loss_sum += loss;
        self.seen += batch.examples as u64;
        self.steps += 1;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let in_epoch = (batch.index + 1) as f64 / batch.steps_in_epoch.max(1) as f64;
        let done = (batch.epoch - self.start_epoch) as f64 + in_epoch;
        let left = (self.epochs - self.start_epoch) as f64 - done;
        self.observer.progress(&Progress {
            epoch: batch.epoch as f64 + in_epoch,
            total_epochs: self.epochs,
            step,
            loss: self.loss_sum / (batch.index + 1) as f64,
            examples_per_sec: self.seen as f64 / elapsed,
            eta_secs: elapsed / done * left,
        });
        if let Some(rng) = batch.rng_after_epoch {
            self.final_loss = self.loss_sum / batch.steps_in_epoch.max(1) as f64;
            let state = &mut self.model.checkpoint.state;
            state.epochs_done = batch.epoch as u64 + 1;
            state.lineage_epochs += 1.0;
            state.rng = rng;
            if self.observer.epoch_end(self.model).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(())
    }

    /// Runs the step graph: the batch's embedding rows and every dense parameter go in as one
    /// flat vector (with its moments), the updated vectors come back and are written back. The
    /// three input buffers are reused from step to step, the outputs are read where ONNX Runtime
    /// put them, and with a second thread both copies are split between the two threads: the
    /// rows are ascending, so each thread owns a range of the embedding.
    fn optimise(&mut self, batch: &Prepared) -> Result<f64, EngineError> {
        let ckpt = &mut self.model.checkpoint;
        let width = ckpt.meta.embed as usize;
        let rows = &batch.rows[..];
        let rows_len = rows.len() * width;
        // The dense parameters follow the rows, in `Checkpoint::dense` order (the step graph's).
        let dense_len: usize = ckpt.dense.iter().map(|(_, p)| p.value.data.len()).sum();
        let total = rows_len + dense_len;
        // The first `half` rows go to one thread; the rest and the dense part to the other.
        let half = if self.opts.runtime.prepare_in_parallel() {
            rows.len() / 2
        } else {
            0
        };
        let mut buffers: Vec<Vec<f32>> = self.buffers.iter_mut().map(std::mem::take).collect();
        for buf in &mut buffers {
            buf.resize(total, 0.0);
        }
        {
            let emb = [
                &ckpt.embedding.value.data[..],
                &ckpt.embedding.m.data[..],
                &ckpt.embedding.v.data[..],
            ];
            let dense: Vec<[&[f32]; 3]> = ckpt
                .dense
                .iter()
                .map(|(_, p)| [&p.value.data[..], &p.m.data[..], &p.v.data[..]])
                .collect();
            let (mut low, mut high): (Vec<&mut [f32]>, Vec<&mut [f32]>) = buffers
                .iter_mut()
                .map(|b| b.split_at_mut(half * width))
                .unzip();
            let (low_rows, high_rows) = rows.split_at(half);
            let pack_high = move || {
                for (k, out) in high.iter_mut().enumerate() {
                    gather_rows(out, high_rows, emb[k], width);
                    let mut at = high_rows.len() * width;
                    for piece in &dense {
                        out[at..at + piece[k].len()].copy_from_slice(piece[k]);
                        at += piece[k].len();
                    }
                }
            };
            let pack_low = move || {
                for (k, out) in low.iter_mut().enumerate() {
                    gather_rows(out, low_rows, emb[k], width);
                }
            };
            both(half > 0, pack_low, pack_high);
        }
        let packed: Vec<HostTensor> = buffers
            .into_iter()
            .map(|data| HostTensor::f32(&[total as i64], data))
            .collect();
        let mut sizes = vec![rows_len as i64];
        sizes.extend(ckpt.dense.iter().map(|(_, p)| p.value.data.len() as i64));
        let sizes = HostTensor::i64(&[sizes.len() as i64], sizes);
        ckpt.state.step += 1;
        let step = ckpt.state.step as i32;
        let bias1 = 1.0 - self.adam.beta1.powi(step);
        let bias2 = 1.0 - self.adam.beta2.powi(step);
        let lr_t = self.opts.learning_rate as f64 * bias2.sqrt() / bias1;
        let lr_t = HostTensor::f32(&[], vec![lr_t as f32]);
        let keep = 1.0 - self.opts.learning_rate * self.opts.weight_decay;
        let keep = HostTensor::f32(&[], vec![keep]);

        let mut inputs: Vec<(&str, &HostTensor)> = vec![
            ("params", &packed[0]),
            ("params_m", &packed[1]),
            ("params_v", &packed[2]),
            ("sizes", &sizes),
            ("lr_t", &lr_t),
            ("keep", &keep),
        ];
        inputs.extend(batch.inputs.iter().map(|(n, t)| (*n, t)));
        let wanted = ["loss", "new_params", "new_params_m", "new_params_v"];
        let mut loss = f64::NAN;
        run_f32_visit(&mut self.session, &inputs, &wanted, |out| {
            loss = out[0][0] as f64;
            let values = [out[1], out[2], out[3]];
            // Ascending rows: the first `half` rows all lie below `split` in the embedding.
            let split = rows.get(half).map_or(0, |&r| r as usize * width);
            let emb = &mut ckpt.embedding;
            let (mut low, mut high): (Vec<&mut [f32]>, Vec<&mut [f32]>) =
                [&mut emb.value.data, &mut emb.m.data, &mut emb.v.data]
                    .into_iter()
                    .map(|t| t.split_at_mut(split))
                    .unzip();
            let (low_rows, high_rows) = rows.split_at(half);
            let dense = &mut ckpt.dense;
            let unpack_high = move || {
                for (k, target) in high.iter_mut().enumerate() {
                    let from = &values[k][half * width..];
                    scatter_rows(target, high_rows, split / width, from, width);
                    let mut at = rows_len;
                    for (_, p) in dense.iter_mut() {
                        let t = match k {
                            0 => &mut p.value,
                            1 => &mut p.m,
                            _ => &mut p.v,
                        };
                        let len = t.data.len();
                        t.data.copy_from_slice(&values[k][at..at + len]);
                        at += len;
                    }
                }
            };
            let unpack_low = move || {
                for (k, target) in low.iter_mut().enumerate() {
                    scatter_rows(target, low_rows, 0, values[k], width);
                }
            };
            both(half > 0, unpack_low, unpack_high);
        })?;
        for (buf, tensor) in self.buffers.iter_mut().zip(packed) {
            if let HostTensor::F32 { data, .. } = tensor {
                *buf = data;
            }
        }
        Ok(loss)
    }
}

/// Runs `a` on a second thread and `b` on this one when `parallel`, else one after the other.
fn both(parallel: bool, a: impl FnOnce() + Send, b: impl FnOnce()) {
    if parallel {
        std::thread::scope(|scope| {
            scope.spawn(a);
            b();
        });
    } else {
        a();
        b();
    }
}

/// Copies the embedding rows `rows` (of width `width`) from `emb` into `out`, one after another.
fn gather_rows(out: &mut [f32], rows: &[u32], emb: &[f32], width: usize) {
    for (chunk, &r) in out.chunks_exact_mut(width).zip(rows) {
        let r = r as usize * width;
        chunk.copy_from_slice(&emb[r..r + width]);
    }
}

/// Writes consecutive rows of `from` to rows `rows` of `target`, whose first row is row `first`.
fn scatter_rows(target: &mut [f32], rows: &[u32], first: usize, from: &[f32], width: usize) {
    for (chunk, &r) in from.chunks_exact(width).zip(rows) {
        let r = (r as usize - first) * width;
        target[r..r + width].copy_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_targets_are_smoothed_distributions_over_the_batch() {
        let example = |intent| Encoded {
            tokens: vec![vec![1]],
            intent,
            tags: vec![0],
        };
        let (a, b) = (example(2), example(0));
        let batch = [&a, &b];
        let hard = intent_targets(&batch, 4, 0.0);
        assert_eq!(hard, [0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0]);
        let soft = intent_targets(&batch, 4, 0.1);
        for row in soft.chunks(4) {
            assert!((row.iter().sum::<f32>() - 0.5).abs() < 1e-6, "{row:?}");
        }
        // The true intent gets 1 − ε + ε/C, the others ε/C (each halved: two examples).
        assert!((soft[2] - (0.9 + 0.025) / 2.0).abs() < 1e-6);
        assert!((soft[0] - 0.025 / 2.0).abs() < 1e-6);
        assert!((soft[4] - (0.9 + 0.025) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_job_with_default_hyperparameters_trains_with_the_engine_defaults() {
        // What the coordinator publishes by default is what the demo and BENCHMARKS.md measure.
        assert_eq!(
            TrainOptions::for_job(&Hyperparams::default()),
            TrainOptions::default()
        );
        let constant = Hyperparams {
            batch_size: 32,
            final_batch_size: None,
            ..Hyperparams::default()
        };
        let opts = TrainOptions::for_job(&constant);
        assert_eq!((opts.batch_size, opts.final_batch_size), (32, 32));
    }

    #[test]
    fn batch_size_grows_linearly_from_first_to_final_epoch() {
        let opts = |first, last| TrainOptions {
            batch_size: first,
            final_batch_size: last,
            ..TrainOptions::default()
        };
        let growing = BatchSchedule::new(&opts(64, 256), 5);
        let sizes: Vec<usize> = (0..5).map(|e| growing.size(e)).collect();
        assert_eq!(sizes, [64, 112, 160, 208, 256]);
        // Whole steps toward the first size; past the end stays at the last.
        let uneven = BatchSchedule::new(&opts(64, 256), 130);
        assert_eq!(uneven.size(1), 65);
        assert_eq!(uneven.size(129), 256);
        assert_eq!(uneven.size(500), 256);
        // Equal ends, a one-epoch run, zeroes: constant and at least 1.
        assert_eq!(BatchSchedule::new(&opts(32, 32), 10).size(9), 32);
        assert_eq!(BatchSchedule::new(&opts(64, 256), 1).size(0), 64);
        assert_eq!(BatchSchedule::new(&opts(0, 0), 3).size(2), 1);
        // Shrinking works the same way.
        assert_eq!(BatchSchedule::new(&opts(256, 64), 5).size(4), 64);
    }
}
