//! The NLU model as a whole (featurizer + tags + parameters) and its training loop.
//!
//! [`NluModel::train`] runs the step graph of `model::train_graph` once per batch: it gathers the
//! embedding rows the batch uses, feeds them with the dense parameters and their AdamW moments,
//! and writes the updated values back. Shuffling and dropout draw from the checkpointed RNG, so
//! a run resumed from an epoch-boundary checkpoint continues exactly as an uninterrupted one.
//!
//! ## Layout
//! - `options`: [`TrainOptions`]
//! - `observer`: [`TrainObserver`], its [`Progress`] reports, [`TrainReport`]
//! - `batches`: the batch schedule and the batches a run makes ahead of its steps (rare-word
//!   swaps, shuffling, dropout masks, targets)
//! - `step`: one optimiser step on ONNX Runtime (packing rows and moments in and out)

mod batches;
mod observer;
mod options;
mod step;
#[cfg(test)]
mod tests;

use std::time::Instant;

use refit_proto::ArchSpec;
use refit_proto::data::TrainingData;
use refit_proto::manifest::LabelSet;
use refit_proto::vocab::{DEFAULT_MAX_FEATURES, Vocabulary};

pub use observer::{Progress, Quiet, TrainObserver, TrainReport};
pub use options::TrainOptions;

use self::batches::{BatchSchedule, Batches, Prepared, RareWords};
use self::step::Run;
use crate::EngineError;
use crate::batch::Encoded;
use crate::checkpoint::{Checkpoint, ModelMeta};
use crate::featurizer::{FeatureLimits, Featurizer};
use crate::model::{AdamW, Dims, train_graph};
use crate::rng::Rng;
use crate::runtime::session_from_bytes;
use crate::tags::TagSet;

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
    /// A fresh model for a dataset: the vocabulary and labels come from the data (at most
    /// [`DEFAULT_MAX_FEATURES`] features).
    pub fn new(arch: ArchSpec, data: &TrainingData, seed: u64) -> Result<Self, EngineError> {
        Self::new_capped(arch, data, seed, DEFAULT_MAX_FEATURES)
    }

    /// [`NluModel::new`] with a vocabulary of at most `max_features` features: more is
    /// [`EngineError::Data`].
    pub fn new_capped(
        arch: ArchSpec,
        data: &TrainingData,
        seed: u64,
        max_features: usize,
    ) -> Result<Self, EngineError> {
        if data.is_empty() {
            return Err(EngineError::Data(
                "the training data holds no examples".into(),
            ));
        }
        let mut vocab = Vocabulary::new(arch.featurizer.clone());
        vocab
            .fit_at_most(data.examples.iter().map(|e| e.text.as_str()), max_features)
            .map_err(|e| EngineError::Data(e.to_string()))?;
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
        self.extend_for_capped(data, DEFAULT_MAX_FEATURES)
    }

    /// [`NluModel::extend_for`] with a vocabulary of at most `max_features` features (the
    /// model's own included): more is [`EngineError::Data`] and leaves the model as it was.
    pub fn extend_for_capped(
        &mut self,
        data: &TrainingData,
        max_features: usize,
    ) -> Result<usize, EngineError> {
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
        let added = vocab
            .fit_at_most(data.examples.iter().map(|e| e.text.as_str()), max_features)
            .map_err(|e| EngineError::Data(e.to_string()))?;
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
    ///
    /// [`RuntimeOptions::prepare_in_parallel`]: crate::runtime::RuntimeOptions::prepare_in_parallel
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
