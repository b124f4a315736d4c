//! The batches of a run, made ahead of their steps: what does not depend on the parameters
//! (rare-word swaps, the shuffle, the batch size of each epoch, feature dropout, dropout masks,
//! targets). They draw from the run's RNG in a fixed order, so a run makes the same batches
//! whether they are made on a second thread or not, and a resumed run the same as an
//! uninterrupted one.

use std::collections::HashMap;

use refit_proto::vocab::Vocabulary;

use super::TrainOptions;
use crate::batch::{Encoded, Ragged, clear_slots, dropout_mask, unique_rows};
use crate::model::Dims;
use crate::rng::Rng;
use crate::runtime::HostTensor;

/// The tokens of a training set whose word occurs only once in it: the ones that stand in for
/// unseen words.
pub(super) struct RareWords {
    oov: Option<u32>,
    /// (example, token, word feature id)
    pub(super) at: Vec<(usize, usize, u32)>,
}

impl RareWords {
    pub(super) fn find(encoded: &[Encoded], vocab: &Vocabulary) -> Self {
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

/// A batch made ahead of its step: what does not depend on the parameters.
pub(super) struct Prepared {
    /// The epoch it belongs to, its index in it and how many batches the epoch has.
    pub(super) epoch: u32,
    pub(super) index: usize,
    pub(super) steps_in_epoch: usize,
    /// Examples in it.
    pub(super) examples: usize,
    /// The vocabulary ids of the embedding rows it uses, in row order.
    pub(super) rows: Vec<u32>,
    /// Layout, dropout masks and targets, as graph inputs.
    pub(super) inputs: Vec<(&'static str, HostTensor)>,
    /// On an epoch's last batch: the RNG state after the epoch (what the checkpoint keeps).
    pub(super) rng_after_epoch: Option<[u64; 4]>,
}

/// The batch size of each epoch of a run: linear from [`TrainOptions::batch_size`] in epoch 0
/// to [`TrainOptions::final_batch_size`] in the run's last epoch (whole steps, rounded toward
/// `batch_size`; both ends at least 1). It depends on the run's length only, so a run resumed
/// from a checkpoint makes the same batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct BatchSchedule {
    first: usize,
    last: usize,
    epochs: u32,
}

impl BatchSchedule {
    pub(super) fn new(opts: &TrainOptions, epochs: u32) -> Self {
        Self {
            first: opts.batch_size.max(1),
            last: opts.final_batch_size.max(1),
            epochs,
        }
    }

    pub(super) fn size(&self, epoch: u32) -> usize {
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
pub(super) struct Batches {
    pub(super) encoded: Vec<Encoded>,
    pub(super) rare: RareWords,
    pub(super) rng: Rng,
    pub(super) epochs: std::ops::Range<u32>,
    pub(super) schedule: BatchSchedule,
    pub(super) dims: Dims,
    pub(super) oov: Option<u32>,
    pub(super) vocab_rows: usize,
    pub(super) opts: TrainOptions,
}

impl Batches {
    /// Hands each batch to `sink` until it returns `false` or the run is done.
    pub(super) fn make(mut self, mut sink: impl FnMut(Prepared) -> bool) {
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
pub(super) fn intent_targets(batch: &[&Encoded], classes: usize, smoothing: f32) -> Vec<f32> {
    let b = batch.len() as f32;
    let smoothing = smoothing.clamp(0.0, 1.0);
    let mut targets = vec![smoothing / classes as f32 / b; batch.len() * classes];
    for (i, e) in batch.iter().enumerate() {
        targets[i * classes + e.intent as usize] += (1.0 - smoothing) / b;
    }
    targets
}
