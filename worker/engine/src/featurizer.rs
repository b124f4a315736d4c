//! Sparse token features for the DIET-lite model, like Rasa's `CountVectorsFeaturizer` with a
//! word analyzer plus a `char_wb` analyzer.
//!
//! Tokens come from the one tokenizer ([`refit_proto::tokens::tokenize`]), feature keys and ids
//! from the append-only [`Vocabulary`] (`refit_proto::vocab`, which also documents the key
//! format and `vocab.json`). This module turns a text into the model's input:
//!
//! - [`Featurizer::featurize`] gives per-token id lists; features the vocabulary lacks are
//!   skipped and counted.
//! - **Unseen words.** A token whose word the vocabulary lacks gets [`OOV_WORD`] in place of its
//!   word feature (when the vocabulary has it): the intent head sees "a word I have not seen"
//!   plus the word's character n-grams, the entity tagger sees that token as [`OOV_WORD`] alone
//!   and judges it by its neighbours (see `model`). The trainer teaches both what that means by
//!   swapping the word feature of words seen only once in the training data for [`OOV_WORD`]
//!   (see `TrainOptions::rare_word_oov`): in `transfer money to sara`, an unseen name after
//!   `to` is a person, much like the one-off names of the training data.
//!
//! # Limits
//!
//! [`FeatureLimits`] bounds tokens per text and features per token so that batches have a fixed
//! maximum shape. Truncation is deterministic: the first `max_tokens` tokens are kept, and of a
//! token's features the first `max_features_per_token` in feature order (the word feature, then
//! n-grams by increasing `n`, left to right). The defaults (64 tokens, 64 features) never
//! truncate financial-demo, whose longest example has 17 tokens and whose richest token
//! (`transferring`) has 47 features; see the `financial_demo_distribution` test. Fitting does
//! not truncate.
//!
//! [`OOV_WORD`]: refit_proto::vocab::OOV_WORD

use std::fmt;

use refit_proto::manifest::FeaturizerSpec;
use refit_proto::tokens::{Token, tokenize};
use refit_proto::vocab::{Vocabulary, WORD_PREFIX, for_each_feature};
use serde::{Deserialize, Serialize};

/// Anything with a character span in the text; [`crate::tags`] works on these.
pub trait TokenSpan {
    /// `(start, end)` in characters, end exclusive.
    fn char_span(&self) -> (usize, usize);
}

impl TokenSpan for Token {
    fn char_span(&self) -> (usize, usize) {
        (self.start, self.end)
    }
}

/// Bounds on a featurized text's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLimits {
    /// Tokens kept per text; later tokens are dropped. Default 64.
    pub max_tokens: usize,
    /// Features kept per token, in feature order. Default 64.
    pub max_features_per_token: usize,
}

impl Default for FeatureLimits {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            max_features_per_token: 64,
        }
    }
}

/// One token with its feature ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFeatures {
    /// Start, in characters, into the original text (inclusive).
    pub start: usize,
    /// End, in characters, into the original text (exclusive).
    pub end: usize,
    /// The token as featurized.
    pub text: String,
    /// The ids of its known features, in feature order, without duplicates or
    /// [`PAD`](refit_proto::vocab::PAD). May be
    /// empty for a token made only of unseen characters.
    pub ids: Vec<u32>,
}

impl TokenSpan for TokenFeatures {
    fn char_span(&self) -> (usize, usize) {
        (self.start, self.end)
    }
}

/// A featurized text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeaturizedText {
    /// The kept tokens, in text order.
    pub tokens: Vec<TokenFeatures>,
    /// Features of kept tokens that the vocabulary lacks (skipped).
    pub unknown_features: usize,
    /// Tokens dropped by [`FeatureLimits::max_tokens`].
    pub dropped_tokens: usize,
    /// Known features dropped by [`FeatureLimits::max_features_per_token`].
    pub dropped_features: usize,
}

impl FeaturizedText {
    /// The total number of feature ids over all tokens.
    pub fn feature_count(&self) -> usize {
        self.tokens.iter().map(|t| t.ids.len()).sum()
    }
}

/// Turns texts into feature ids with a fixed vocabulary.
#[derive(Clone, Debug)]
pub struct Featurizer {
    vocab: Vocabulary,
    limits: FeatureLimits,
}

impl Featurizer {
    /// A featurizer over `vocab` with `limits`.
    pub fn new(vocab: Vocabulary, limits: FeatureLimits) -> Self {
        Self { vocab, limits }
    }

    /// The settings (those of the vocabulary).
    pub fn spec(&self) -> &FeaturizerSpec {
        self.vocab.spec()
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocabulary {
        &self.vocab
    }

    /// The limits.
    pub fn limits(&self) -> FeatureLimits {
        self.limits
    }

    /// Gives the vocabulary back.
    pub fn into_vocab(self) -> Vocabulary {
        self.vocab
    }

    /// Tokenizes `text` and looks up each token's features (see the module docs for the order
    /// and the limits). Unknown features are skipped and counted; an unknown word feature is
    /// replaced by [`OOV_WORD`](refit_proto::vocab::OOV_WORD) when the vocabulary has it.
    pub fn featurize(&self, text: &str) -> FeaturizedText {
        let spec = self.vocab.spec();
        let oov = self.vocab.oov_id();
        let mut tokens = tokenize(text, spec.lowercase);
        let mut out = FeaturizedText {
            dropped_tokens: tokens.len().saturating_sub(self.limits.max_tokens),
            ..FeaturizedText::default()
        };
        tokens.truncate(self.limits.max_tokens);
        out.tokens.reserve(tokens.len());
        let mut key = String::new();
        for token in tokens {
            let mut ids: Vec<u32> = Vec::new();
            let mut unknown = 0;
            let mut dropped = 0;
            for_each_feature(spec, &token.text, &mut key, |k| match self.vocab.id(k) {
                // Binary features: a repeated n-gram counts once. Tokens have a few dozen
                // features, so a linear scan beats a set.
                Some(id) if ids.contains(&id) => {}
                Some(_) if ids.len() >= self.limits.max_features_per_token => dropped += 1,
                Some(id) => ids.push(id),
                None => {
                    unknown += 1;
                    if let Some(oov) = oov.filter(|_| k.starts_with(WORD_PREFIX)) {
                        ids.push(oov);
                    }
                }
            });
            out.unknown_features += unknown;
            out.dropped_features += dropped;
            out.tokens.push(TokenFeatures {
                start: token.start,
                end: token.end,
                text: token.text,
                ids,
            });
        }
        out
    }
}

impl fmt::Display for FeatureLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens, {} features per token",
            self.max_tokens, self.max_features_per_token
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_proto::data::{TrainingData, load_file};

    fn data(name: &str) -> TrainingData {
        let path = format!(
            "{}/../../examples/data/financial-demo/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        load_file(std::path::Path::new(&path)).expect("financial-demo loads")
    }

    fn texts(data: &TrainingData) -> impl Iterator<Item = &str> {
        data.examples.iter().map(|e| e.text.as_str())
    }

    #[test]
    fn without_the_unseen_word_feature_an_unknown_word_is_its_known_ngrams() {
        // vocab.json written before the feature existed: w:hi and its n-grams only.
        let mut vocab = Vocabulary::new(FeaturizerSpec::default());
        vocab.fit(["hi"]);
        let mut file: serde_json::Value = serde_json::from_slice(&vocab.to_json()).unwrap();
        file["features"].as_array_mut().unwrap().pop();
        let old = Vocabulary::from_json(&serde_json::to_vec(&file).unwrap(), vocab.spec()).unwrap();
        assert_eq!(old.oov_id(), None);
        let f = Featurizer::new(old, FeatureLimits::default());
        // c:␠, c:h and c:␠h.
        assert_eq!(f.featurize("ho").tokens[0].ids.len(), 3);
    }

    #[test]
    fn featurize_skips_unknown_and_truncates_deterministically() {
        let mut vocab = Vocabulary::new(FeaturizerSpec::default());
        vocab.fit(["hi"]);
        let featurizer = Featurizer::new(vocab.clone(), FeatureLimits::default());
        let out = featurizer.featurize("Hi, ho");
        assert_eq!(out.tokens.len(), 2);
        assert_eq!(out.tokens[0].ids, (1..=10).collect::<Vec<u32>>());
        assert_eq!((out.tokens[1].start, out.tokens[1].end), (4, 6));
        // "ho": the unknown word becomes the unseen-word feature; of its n-grams only c:␠,
        // c:h and c:␠h are known.
        assert_eq!(
            out.tokens[1].ids,
            [
                vocab.oov_id().unwrap(),
                vocab.id("c: ").unwrap(),
                vocab.id("c:h").unwrap(),
                vocab.id("c: h").unwrap()
            ]
        );
        assert_eq!(out.unknown_features, 7);
        assert_eq!(out.dropped_tokens, 0);

        let tight = Featurizer::new(
            vocab,
            FeatureLimits {
                max_tokens: 1,
                max_features_per_token: 4,
            },
        );
        let out = tight.featurize("hi hi hi");
        assert_eq!(out.tokens.len(), 1);
        assert_eq!(out.tokens[0].ids, [1, 2, 3, 4]);
        assert_eq!(out.dropped_tokens, 2);
        assert_eq!(out.dropped_features, 6);
    }

    /// Financial-demo (nlu.yml, 574 examples, default spec):
    /// - tokens per example: max 17, p99 13, p50 4, mean 4.60;
    /// - features per token: max 47 (`transferring`: 1 word + 14 + 13 + 12 + 11 n-grams = 51,
    ///   less 4 repeated 1-grams: ` `, `r` twice, `n`), p99 39, p50 18;
    /// - features per example (all tokens): max 268, p99 221, p50 70.
    ///
    /// So the default limits (64 tokens, 64 features per token) never truncate it: 64 features
    /// hold every word of up to 15 characters (4·15 + 4 = 64, before deduplication), and 64
    /// tokens are almost four times the longest example.
    #[test]
    fn financial_demo_distribution() {
        let nlu = data("nlu.yml");
        let mut vocab = Vocabulary::new(FeaturizerSpec::default());
        vocab.fit(texts(&nlu));
        let featurizer = Featurizer::new(vocab, FeatureLimits::default());
        let mut tokens_per_example = Vec::new();
        let mut features_per_token = Vec::new();
        let mut features_per_example = Vec::new();
        let mut longest = String::new();
        let start = std::time::Instant::now();
        let all: Vec<FeaturizedText> = nlu
            .examples
            .iter()
            .map(|e| featurizer.featurize(&e.text))
            .collect();
        // About 2 ms in release; the bound is for unoptimised test builds.
        println!("featurized {} examples in {:?}", all.len(), start.elapsed());
        assert!(start.elapsed().as_millis() < 2000);
        for out in all {
            assert_eq!(out.unknown_features, 0);
            assert_eq!(out.dropped_tokens, 0);
            assert_eq!(out.dropped_features, 0);
            tokens_per_example.push(out.tokens.len());
            features_per_example.push(out.feature_count());
            for token in &out.tokens {
                if token.ids.len() > features_per_token.iter().copied().max().unwrap_or(0) {
                    longest = token.text.clone();
                }
                features_per_token.push(token.ids.len());
            }
        }
        tokens_per_example.sort_unstable();
        features_per_token.sort_unstable();
        features_per_example.sort_unstable();
        let pct = |v: &[usize], p: f64| v[((v.len() - 1) as f64 * p) as usize];
        println!(
            "tokens/example: max {} p99 {} p50 {} mean {:.2}",
            pct(&tokens_per_example, 1.0),
            pct(&tokens_per_example, 0.99),
            pct(&tokens_per_example, 0.5),
            tokens_per_example.iter().sum::<usize>() as f64 / tokens_per_example.len() as f64
        );
        println!(
            "features/token: max {} ({longest}) p99 {} p50 {}",
            pct(&features_per_token, 1.0),
            pct(&features_per_token, 0.99),
            pct(&features_per_token, 0.5),
        );
        println!(
            "features/example: max {} p99 {} p50 {}",
            pct(&features_per_example, 1.0),
            pct(&features_per_example, 0.99),
            pct(&features_per_example, 0.5),
        );
        assert_eq!(pct(&tokens_per_example, 1.0), 17);
        assert_eq!(pct(&features_per_token, 1.0), 47);
    }
}
