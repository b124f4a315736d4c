//! Turning featurized examples into the ragged batch tensors the graphs take (see `model`).

use refit_proto::vocab::PAD;

use super::featurizer::FeaturizedText;
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

/// A ragged batch: every feature, token and example listed once, no padding (see
/// `model::infer_graph` for the tensors).
#[derive(Debug)]
pub struct Ragged {
    /// Examples `B`.
    pub batch: usize,
    /// Tokens `M` over all examples.
    pub tokens: usize,
    /// `[N]` feature ids (vocabulary ids for inference, row indices for training).
    pub ids: Vec<i64>,
    /// `[M, 1]` the weight of each of a token's features (1/√ its features).
    pub tok_scale: Vec<f32>,
    /// `[N, 1]` each feature's token.
    pub feat_tok: Vec<i64>,
    /// `[M, 1]` token pooling weights.
    pub tok_w: Vec<f32>,
    /// `[M, 1]` each token's example.
    pub tok_ex: Vec<i64>,
    /// `[M, 2w+1]` context tokens.
    pub ctx_idx: Vec<i64>,
    /// `[M, 2w+1, 1]` context mask.
    pub ctx_mask: Vec<f32>,
    /// `[M, 1]` 1 for a token whose first feature is the unseen-word feature, else 0.
    pub tok_oov: Vec<f32>,
    /// `[1]` the unseen-word feature's id, mapped like `ids` (0, the padding row, when the
    /// vocabulary has none).
    pub oov_row: i64,
    /// Where each example's tokens start in the token list (`B + 1` entries).
    pub offsets: Vec<usize>,
}

impl Ragged {
    /// Lays out a batch. `oov` is the vocabulary's unseen-word feature
    /// ([`OOV_WORD`](refit_proto::vocab::OOV_WORD)), if it has one; `map` turns a vocabulary id
    /// into the value stored in `ids` (identity for inference; a row index into the gathered
    /// embedding rows for training).
    pub fn new(
        examples: &[&Encoded],
        window: i64,
        oov: Option<u32>,
        mut map: impl FnMut(u32) -> i64,
    ) -> Self {
        let tokens: usize = examples.iter().map(|e| e.tokens.len()).sum();
        let features: usize = examples
            .iter()
            .flat_map(|e| e.tokens.iter().map(Vec::len))
            .sum();
        let context = (2 * window + 1) as usize;
        let mut r = Ragged {
            batch: examples.len(),
            tokens,
            ids: Vec::with_capacity(features),
            tok_scale: Vec::with_capacity(tokens),
            feat_tok: Vec::with_capacity(features),
            tok_w: Vec::with_capacity(tokens),
            tok_ex: Vec::with_capacity(tokens),
            ctx_idx: Vec::with_capacity(tokens * context),
            ctx_mask: Vec::with_capacity(tokens * context),
            tok_oov: Vec::with_capacity(tokens),
            oov_row: oov.map_or(i64::from(PAD), &mut map),
            offsets: Vec::with_capacity(examples.len() + 1),
        };
        let mut m = 0usize;
        for (b, example) in examples.iter().enumerate() {
            r.offsets.push(m);
            let n = example.tokens.len();
            for (t, token) in example.tokens.iter().enumerate() {
                r.tok_w.push(1.0 / n as f32);
                let unseen = oov.is_some() && token.first() == oov.as_ref();
                r.tok_oov.push(if unseen { 1.0 } else { 0.0 });
                r.tok_ex.push(b as i64);
                // sqrt-n combiner: a token's vector does not grow with its number of n-grams.
                r.tok_scale.push(1.0 / (token.len().max(1) as f32).sqrt());
                for &id in token {
                    r.ids.push(map(id));
                    r.feat_tok.push((m + t) as i64);
                }
                for offset in -window..=window {
                    let other = t as i64 + offset;
                    if other >= 0 && (other as usize) < n {
                        r.ctx_idx.push((m as i64) + other);
                        r.ctx_mask.push(1.0);
                    } else {
                        r.ctx_idx.push((m + t) as i64);
                        r.ctx_mask.push(0.0);
                    }
                }
            }
            m += n;
        }
        r.offsets.push(m);
        r
    }

    /// Drops each feature with probability `rate` (feature dropout), drawing once per feature in
    /// order. The tokens keep their weights: a dropped feature counts as a zero-weight one.
    pub fn drop_features(&mut self, rate: f32, rng: &mut Rng) {
        if rate <= 0.0 {
            return;
        }
        let keep = 1.0 - rate;
        let mut kept = 0;
        for i in 0..self.ids.len() {
            if rng.next_f32() < keep {
                self.ids[kept] = self.ids[i];
                self.feat_tok[kept] = self.feat_tok[i];
                kept += 1;
            }
        }
        self.ids.truncate(kept);
        self.feat_tok.truncate(kept);
    }

    /// Marks each token, with probability `rate`, as one the tagger sees as an unseen word
    /// (`tok_oov`), drawing once per token in order.
    pub fn mask_words_for_tagger(&mut self, rate: f32, rng: &mut Rng) {
        if rate <= 0.0 {
            return;
        }
        for unseen in &mut self.tok_oov {
            if rng.next_f32() < rate {
                *unseen = 1.0;
            }
        }
    }

    /// The named batch inputs shared by the training and inference graphs (`ids` under
    /// `ids_name`).
    pub fn inputs(&self, ids_name: &'static str, d: &Dims) -> Vec<(&'static str, HostTensor)> {
        let (b, m, n) = (self.batch as i64, self.tokens as i64, self.ids.len() as i64);
        let c = d.context();
        vec![
            (ids_name, HostTensor::i64(&[n], self.ids.clone())),
            (
                "tok_scale",
                HostTensor::f32(&[m, 1], self.tok_scale.clone()),
            ),
            ("feat_tok", HostTensor::i64(&[n, 1], self.feat_tok.clone())),
            ("tok_w", HostTensor::f32(&[m, 1], self.tok_w.clone())),
            ("tok_ex", HostTensor::i64(&[m, 1], self.tok_ex.clone())),
            ("ctx_idx", HostTensor::i64(&[m, c], self.ctx_idx.clone())),
            (
                "ctx_mask",
                HostTensor::f32(&[m, c, 1], self.ctx_mask.clone()),
            ),
            ("tok_oov", HostTensor::f32(&[m, 1], self.tok_oov.clone())),
            ("oov_row", HostTensor::i64(&[1], vec![self.oov_row])),
            ("tok_shape", HostTensor::i64(&[2], vec![m, d.embed])),
            ("sent_shape", HostTensor::i64(&[2], vec![b, d.embed])),
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

/// Collects the distinct vocabulary ids of a batch (with PAD, and `always` if given), in
/// ascending order, and maps each id to its row (its index in that list).
///
/// `slot` is scratch space indexed by vocabulary id, all `u32::MAX` between calls (restored
/// before returning), so a batch costs O(ids in the batch), not O(vocabulary).
pub fn unique_rows(
    examples: &[&Encoded],
    always: Option<u32>,
    slot: &mut Vec<u32>,
    vocab_rows: usize,
) -> Vec<u32> {
    if slot.len() < vocab_rows {
        slot.resize(vocab_rows, u32::MAX);
    }
    let mut rows = vec![PAD];
    slot[PAD as usize] = 0;
    if let Some(id) = always.filter(|&id| id != PAD) {
        slot[id as usize] = 1;
        rows.push(id);
    }
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
    // Ascending rows: copying them in and out walks the embedding forwards, and a range of
    // rows is a range of the embedding (the trainer splits that work between two threads).
    rows.sort_unstable();
    for (i, &id) in rows.iter().enumerate() {
        slot[id as usize] = i as u32;
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
    fn lays_out_ragged_batches() {
        let a = ex(vec![vec![3, 4], vec![5]]);
        let b = ex(vec![vec![6, 7, 8, 9]]);
        let empty = ex(vec![]);
        let r = Ragged::new(&[&a, &empty, &b], 1, Some(6), |id| id as i64);
        assert_eq!((r.batch, r.tokens), (3, 3));
        assert_eq!(r.ids, vec![3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(r.feat_tok, vec![0, 0, 1, 2, 2, 2, 2]);
        assert!((r.tok_scale[0] - 1.0 / 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(&r.tok_scale[1..], &[1.0, 0.5]);
        assert_eq!(r.tok_w, vec![0.5, 0.5, 1.0]);
        assert_eq!(r.tok_ex, vec![0, 0, 2]);
        assert_eq!(r.offsets, vec![0, 2, 2, 3]);
        // Token 0 of a: left neighbour outside (itself, masked), itself, token 1.
        assert_eq!(&r.ctx_idx[0..3], &[0, 0, 1]);
        assert_eq!(&r.ctx_mask[0..3], &[0.0, 1.0, 1.0]);
        // The only token of b sees only itself.
        assert_eq!(&r.ctx_idx[6..9], &[2, 2, 2]);
        assert_eq!(&r.ctx_mask[6..9], &[0.0, 1.0, 0.0]);
        // b's token starts with the unseen-word feature 6; a's do not.
        assert_eq!(r.tok_oov, vec![0.0, 0.0, 1.0]);
        assert_eq!(r.oov_row, 6);
    }

    #[test]
    fn dropped_features_leave_their_tokens_weights_alone() {
        let a = ex(vec![(1..=40).collect(), (41..=80).collect()]);
        let mut r = Ragged::new(&[&a], 1, None, |id| id as i64);
        let scale = r.tok_scale.clone();
        r.drop_features(0.25, &mut Rng::seed(3));
        assert!((40..=75).contains(&r.ids.len()), "{}", r.ids.len());
        assert_eq!(r.ids.len(), r.feat_tok.len());
        assert_eq!(r.tok_scale, scale);
        // The kept features stay in order, each with its own token.
        assert!(r.ids.windows(2).all(|w| w[0] < w[1]));
        assert!(
            r.ids
                .iter()
                .zip(&r.feat_tok)
                .all(|(&id, &t)| t == (id - 1) / 40)
        );
        let before = r.ids.clone();
        r.drop_features(0.0, &mut Rng::seed(3));
        assert_eq!(r.ids, before);
    }

    #[test]
    fn masking_words_for_the_tagger_only_adds_unseen_marks() {
        let a = ex((0..400).map(|i| vec![i + 1]).collect());
        let mut r = Ragged::new(&[&a], 1, Some(7), |id| id as i64);
        assert_eq!(
            r.tok_oov.iter().sum::<f32>(),
            1.0,
            "token 6 starts with the unseen id"
        );
        let ids = r.ids.clone();
        r.mask_words_for_tagger(0.25, &mut Rng::seed(5));
        let marked = r.tok_oov.iter().filter(|&&x| x == 1.0).count();
        assert!((70..=130).contains(&marked), "{marked}");
        assert_eq!(r.tok_oov[6], 1.0);
        assert_eq!(r.ids, ids, "the features themselves are untouched");
        let before = r.tok_oov.clone();
        r.mask_words_for_tagger(0.0, &mut Rng::seed(5));
        assert_eq!(r.tok_oov, before);
    }

    #[test]
    fn unique_rows_maps_ids_once() {
        let a = ex(vec![vec![3, 4], vec![4, 9]]);
        let mut slot = Vec::new();
        let rows = unique_rows(&[&a], Some(11), &mut slot, 12);
        assert_eq!(rows, vec![0, 3, 4, 9, 11]);
        assert_eq!((slot[9], slot[11]), (3, 4));
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
