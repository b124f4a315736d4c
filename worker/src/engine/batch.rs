//! Turning featurized examples into the padded tensors the graphs take (see `model`).

use super::featurizer::{FeaturizedText, PAD};
use super::model::Dims;
use super::rng::Rng;
use super::runtime::HostTensor;

/// One example, ready to batch: feature ids per token, and (for training) its targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Feature ids per token (no padding).
    pub tokens: Vec<Vec<u32>>,
    /// The intent's class index (training only).
    pub intent: u32,
    /// One BILOU tag per token (training only).
    pub tags: Vec<u32>,
}

impl Encoded {
    /// The features of a featurized text, without targets.
    pub fn from_text(text: &FeaturizedText) -> Self {
        Self {
            tokens: text.tokens.iter().map(|t| t.ids.clone()).collect(),
            intent: 0,
            tags: vec![],
        }
    }
}

/// The shared inputs of a padded batch.
#[derive(Debug)]
pub struct Padded {
    /// Examples in the batch.
    pub batch: usize,
    /// Tokens per example after padding (at least 1).
    pub tokens: usize,
    /// Features per token after padding (at least 1).
    pub features: usize,
    /// `[B,T,F]` feature ids (vocabulary ids for inference, row indices for training).
    pub ids: Vec<i64>,
    /// `[B,T,F,1]` feature weights.
    pub feat_w: Vec<f32>,
    /// `[B,T,1]` token pooling weights.
    pub tok_w: Vec<f32>,
    /// `[B·T, 2w+1]` context rows.
    pub ctx_idx: Vec<i64>,
    /// `[B·T, 2w+1, 1]` context mask.
    pub ctx_mask: Vec<f32>,
    /// Real tokens per example (before padding).
    pub lengths: Vec<usize>,
}

impl Padded {
    /// Pads a batch. `map` turns a vocabulary id into the value stored in `ids` (identity for
    /// inference; a row index into the gathered embedding rows for training).
    pub fn new(examples: &[&Encoded], window: i64, mut map: impl FnMut(u32) -> i64) -> Self {
        let batch = examples.len();
        let tokens = examples
            .iter()
            .map(|e| e.tokens.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let features = examples
            .iter()
            .flat_map(|e| e.tokens.iter().map(Vec::len))
            .max()
            .unwrap_or(0)
            .max(1);
        let pad = map(PAD);
        let mut ids = vec![pad; batch * tokens * features];
        let mut feat_w = vec![0.0f32; batch * tokens * features];
        let mut tok_w = vec![0.0f32; batch * tokens];
        let mut lengths = Vec::with_capacity(batch);
        for (b, example) in examples.iter().enumerate() {
            let n = example.tokens.len();
            lengths.push(n);
            for (t, token) in example.tokens.iter().enumerate() {
                tok_w[b * tokens + t] = 1.0 / n as f32;
                if token.is_empty() {
                    continue;
                }
                // sqrt-n combiner: a token's vector does not grow with its number of n-grams.
                let w = 1.0 / (token.len() as f32).sqrt();
                let base = (b * tokens + t) * features;
                for (f, &id) in token.iter().enumerate() {
                    ids[base + f] = map(id);
                    feat_w[base + f] = w;
                }
            }
        }
        let context = (2 * window + 1) as usize;
        let mut ctx_idx = vec![0i64; batch * tokens * context];
        let mut ctx_mask = vec![0.0f32; batch * tokens * context];
        for (b, &length) in lengths.iter().enumerate() {
            for t in 0..tokens {
                let row = b * tokens + t;
                for (k, offset) in (-window..=window).enumerate() {
                    let other = t as i64 + offset;
                    let inside = t < length && other >= 0 && (other as usize) < length;
                    let slot = row * context + k;
                    if inside {
                        ctx_idx[slot] = (b * tokens) as i64 + other;
                        ctx_mask[slot] = 1.0;
                    } else {
                        ctx_idx[slot] = row as i64;
                    }
                }
            }
        }
        Self {
            batch,
            tokens,
            features,
            ids,
            feat_w,
            tok_w,
            ctx_idx,
            ctx_mask,
            lengths,
        }
    }

    /// The named inputs shared by the training and inference graphs (`ids` under `ids_name`).
    pub fn inputs(&self, ids_name: &'static str, d: &Dims) -> Vec<(&'static str, HostTensor)> {
        let (b, t, f) = (self.batch as i64, self.tokens as i64, self.features as i64);
        let c = d.context();
        vec![
            (ids_name, HostTensor::i64(&[b, t, f], self.ids.clone())),
            (
                "feat_w",
                HostTensor::f32(&[b, t, f, 1], self.feat_w.clone()),
            ),
            ("tok_w", HostTensor::f32(&[b, t, 1], self.tok_w.clone())),
            (
                "ctx_idx",
                HostTensor::i64(&[b * t, c], self.ctx_idx.clone()),
            ),
            (
                "ctx_mask",
                HostTensor::f32(&[b * t, c, 1], self.ctx_mask.clone()),
            ),
        ]
    }
}

/// A dropout mask: each element kept with probability `1 - rate` and scaled by `1 / (1 - rate)`.
pub fn dropout_mask(rng: &mut Rng, n: usize, rate: f32) -> Vec<f32> {
    if rate <= 0.0 {
        return vec![1.0; n];
    }
    let keep = 1.0 - rate;
    let scale = 1.0 / keep;
    (0..n)
        .map(|_| if rng.next_f32() < keep { scale } else { 0.0 })
        .collect()
}

/// Collects the distinct vocabulary ids of a batch (PAD first) and maps each id to its row.
///
/// `slot` is scratch space indexed by vocabulary id, all `u32::MAX` between calls (restored
/// before returning), so a batch costs O(ids in the batch), not O(vocabulary).
pub fn unique_rows(examples: &[&Encoded], slot: &mut Vec<u32>, vocab_rows: usize) -> Vec<u32> {
    if slot.len() < vocab_rows {
        slot.resize(vocab_rows, u32::MAX);
    }
    let mut rows = vec![PAD];
    slot[PAD as usize] = 0;
    for example in examples {
        for token in &example.tokens {
            for &id in token {
                let s = &mut slot[id as usize];
                if *s == u32::MAX {
                    *s = rows.len() as u32;
                    rows.push(id);
                }
            }
        }
    }
    rows
}

/// Resets the scratch slots used by [`unique_rows`].
pub fn clear_slots(rows: &[u32], slot: &mut [u32]) {
    for &id in rows {
        slot[id as usize] = u32::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(tokens: Vec<Vec<u32>>) -> Encoded {
        Encoded {
            tokens,
            intent: 0,
            tags: vec![],
        }
    }

    #[test]
    fn pads_and_weights() {
        let a = ex(vec![vec![3, 4], vec![5]]);
        let b = ex(vec![vec![6, 7, 8, 9]]);
        let p = Padded::new(&[&a, &b], 1, |id| id as i64);
        assert_eq!((p.batch, p.tokens, p.features), (2, 2, 4));
        assert_eq!(&p.ids[..8], &[3, 4, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&p.ids[8..12], &[6, 7, 8, 9]);
        assert!((p.feat_w[0] - 1.0 / 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(p.feat_w[2], 0.0);
        assert_eq!(p.tok_w, vec![0.5, 0.5, 1.0, 0.0]);
        // Example a, token 0: neighbours -1 (outside), 0, 1.
        assert_eq!(&p.ctx_idx[0..3], &[0, 0, 1]);
        assert_eq!(&p.ctx_mask[0..3], &[0.0, 1.0, 1.0]);
        // Example b, token 1 is padding: all masked.
        assert_eq!(&p.ctx_mask[9..12], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn empty_examples_still_have_one_slot() {
        let e = ex(vec![]);
        let p = Padded::new(&[&e], 2, |id| id as i64);
        assert_eq!((p.tokens, p.features), (1, 1));
        assert_eq!(p.tok_w, vec![0.0]);
    }

    #[test]
    fn unique_rows_maps_ids_once() {
        let a = ex(vec![vec![3, 4], vec![4, 9]]);
        let mut slot = Vec::new();
        let rows = unique_rows(&[&a], &mut slot, 12);
        assert_eq!(rows, vec![0, 3, 4, 9]);
        assert_eq!(slot[9], 3);
        clear_slots(&rows, &mut slot);
        assert!(slot.iter().all(|&s| s == u32::MAX));
    }

    #[test]
    fn dropout_keeps_expected_share() {
        let mut rng = Rng::seed(1);
        let m = dropout_mask(&mut rng, 10_000, 0.2);
        let kept = m.iter().filter(|&&x| x > 0.0).count();
        assert!((7_700..8_300).contains(&kept), "{kept}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 1.25).abs() < 1e-6));
    }
}
