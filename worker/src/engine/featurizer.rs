//! Sparse token features for the DIET-lite model, like Rasa's `CountVectorsFeaturizer` with a
//! word analyzer plus a `char_wb` analyzer.
//!
//! - [`tokenize`] splits a text into word tokens with their **character** spans in the original
//!   text. A token is a maximal run of alphanumeric characters or `_`, with apostrophes allowed
//!   between two word characters (the regex `\w+(?:'\w+)*`); everything else is dropped. With
//!   `lowercase` the token strings are exactly those of [`refit_proto::decision::word_tokens`].
//! - The features of a token `word` are `w:<word>` (when [`FeaturizerSpec::word_tokens`]) and
//!   the character n-grams, `n` in `char_ngram_min..=char_ngram_max`, of ` <word> ` padded with
//!   one space on each side (scikit-learn's `char_wb`), as `c:<ngram>`. N-grams longer than the
//!   padded word are not produced. Features are **binary**: a feature that occurs twice in one
//!   token (the two padding spaces, `ana` in `banana`) is listed once, at its first occurrence.
//! - [`Vocabulary`] maps feature keys to dense `u32` ids. Id [`PAD`] (0) is reserved for
//!   padding and is never a feature; features get ids `1..`. The vocabulary only grows:
//!   [`Vocabulary::fit`] appends unseen features in first-seen order and never renumbers, so a
//!   fine-tuned model's embedding only gains rows.
//! - [`Featurizer::featurize`] turns a text into per-token id lists for the model; features the
//!   vocabulary lacks are skipped and counted.
//! - **Unseen words.** With word features on, the vocabulary also holds [`OOV_WORD`]
//!   (`w:<oov>`, added by the first [`Vocabulary::fit`], or appended by the next one for a
//!   vocabulary written before it existed). A token whose word the vocabulary lacks gets that
//!   feature in place of its word feature: the intent head sees "a word I have not seen" plus
//!   the word's character n-grams, the entity tagger sees that token as [`OOV_WORD`] alone and
//!   judges it by its neighbours (see `model`). The trainer teaches both what that means by
//!   swapping the word feature of words seen only once in the training data for [`OOV_WORD`]
//!   (see `TrainOptions::rare_word_oov`): in `transfer money to sara`, an unseen name after
//!   `to` is a person, much like the one-off names of the training data.
//!
//! # `vocab.json`
//!
//! ```json
//! {"format": 1, "spec": {"lowercase": true, ...}, "features": ["w:hi", "c: ", "c:h", ...]}
//! ```
//!
//! `features[i]` has id `i + 1` (id 0 is the padding id and is not listed). The file is written
//! pretty-printed, one feature per line, so that diffs between versions read as appended lines.
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

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use refit_proto::manifest::FeaturizerSpec;
use serde::{Deserialize, Serialize};

/// The padding id: never a feature, so batches can be padded with it and masked.
pub const PAD: u32 = 0;

/// The `vocab.json` format this code writes and reads.
pub const VOCAB_FORMAT: u32 = 1;

/// Key prefix of word features.
const WORD_PREFIX: &str = "w:";
/// Key prefix of character n-gram features.
const CHAR_PREFIX: &str = "c:";

/// The feature of a word the vocabulary lacks (`<` is never part of a token, so no word has
/// this key).
pub const OOV_WORD: &str = "w:<oov>";

/// A word token and where it is in the original text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Start, in characters, into the original text (inclusive).
    pub start: usize,
    /// End, in characters, into the original text (exclusive).
    pub end: usize,
    /// The token as featurized (lowercased when the spec says so).
    pub text: String,
}

/// Anything with a character span in the text; [`crate::engine::tags`] works on these.
pub trait TokenSpan {
    /// `(start, end)` in characters, end exclusive.
    fn char_span(&self) -> (usize, usize);
}

impl TokenSpan for Token {
    fn char_span(&self) -> (usize, usize) {
        (self.start, self.end)
    }
}

/// Splits `text` into word tokens (see the module docs), lowercasing them when `lowercase`.
///
/// Lowercasing happens on the whole text first (as [`str::to_lowercase`] does it, so that Greek
/// final sigma and multi-character lowercase forms match
/// [`refit_proto::decision::word_tokens`]); spans still refer to the original text's characters.
pub fn tokenize(text: &str, lowercase: bool) -> Vec<Token> {
    let mut tokens = Vec::new();
    if !lowercase || text.is_ascii() {
        // One output character per input character: positions are the same.
        let owned;
        let source = if lowercase {
            owned = text.to_ascii_lowercase();
            owned.as_str()
        } else {
            text
        };
        scan(source, |i| i, &mut tokens);
    } else {
        let lower = text.to_lowercase();
        // The original character index of every character of `lower`. `str::to_lowercase` maps
        // each character to `char::to_lowercase` of it, except that a final capital sigma
        // becomes `ς` rather than `σ`: one character either way, so the counts agree.
        let mut origin = Vec::with_capacity(lower.len());
        for (i, c) in text.chars().enumerate() {
            for _ in c.to_lowercase() {
                origin.push(i);
            }
        }
        scan(&lower, |i| origin[i], &mut tokens);
    }
    tokens
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokenizer's state machine over `source`; `origin` maps a character index of `source` to
/// one of the original text.
fn scan(source: &str, origin: impl Fn(usize) -> usize, tokens: &mut Vec<Token>) {
    // (byte offset, char index) of the current token's first character.
    let mut current: Option<(usize, usize)> = None;
    let mut chars = source.char_indices().enumerate().peekable();
    let mut close = |from: (usize, usize), to_byte: usize, last_char: usize| {
        tokens.push(Token {
            start: origin(from.1),
            end: origin(last_char) + 1,
            text: source[from.0..to_byte].to_owned(),
        });
    };
    let mut last = 0;
    while let Some((ci, (bi, c))) = chars.next() {
        // An apostrophe belongs to a word only between two word characters.
        let inner_apostrophe =
            c == '\'' && current.is_some() && chars.peek().is_some_and(|&(_, (_, n))| is_word(n));
        if is_word(c) || inner_apostrophe {
            if current.is_none() {
                current = Some((bi, ci));
            }
            last = ci;
        } else if let Some(from) = current.take() {
            close(from, bi, last);
        }
    }
    if let Some(from) = current {
        close(from, source.len(), last);
    }
}

/// Calls `emit` with every feature key of `word` (with duplicates; callers dedupe), in feature
/// order: the word, then n-grams by increasing `n`, left to right. `key` is scratch space.
fn for_each_feature(
    spec: &FeaturizerSpec,
    word: &str,
    key: &mut String,
    mut emit: impl FnMut(&str),
) {
    if spec.word_tokens {
        key.clear();
        key.push_str(WORD_PREFIX);
        key.push_str(word);
        emit(key);
    }
    // Byte offsets of the character boundaries of " word ".
    let padded_chars = word.chars().count() + 2;
    let min = (spec.char_ngram_min as usize).max(1);
    let max = spec.char_ngram_max as usize;
    if min > max {
        return;
    }
    key.clear();
    key.push_str(CHAR_PREFIX);
    let base = key.len();
    key.push(' ');
    key.push_str(word);
    key.push(' ');
    let mut bounds: Vec<usize> = key[base..].char_indices().map(|(i, _)| i + base).collect();
    bounds.push(key.len());
    // `key` now holds "c: word "; each n-gram is built in a second buffer with the same prefix.
    let mut gram = String::with_capacity(CHAR_PREFIX.len() + 4 * max);
    for n in min..=max.min(padded_chars) {
        for i in 0..=padded_chars - n {
            gram.clear();
            gram.push_str(CHAR_PREFIX);
            gram.push_str(&key[bounds[i]..bounds[i + n]]);
            emit(&gram);
        }
    }
}

/// The feature keys of one token, deduplicated, in feature order.
pub fn token_features(spec: &FeaturizerSpec, word: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut key = String::new();
    for_each_feature(spec, word, &mut key, |k| {
        if !out.iter().any(|seen| seen == k) {
            out.push(k.to_owned());
        }
    });
    out
}

/// Why a `vocab.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    /// Not valid JSON of the expected shape.
    #[error("vocab.json is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A format this code does not read.
    #[error("vocab.json has format {found}, expected {VOCAB_FORMAT}")]
    Format {
        /// The file's format.
        found: u32,
    },
    /// Written for other featurizer settings than the model's.
    #[error("vocab.json was built with featurizer settings {found:?}, expected {expected:?}")]
    SpecMismatch {
        /// The spec in the file.
        found: FeaturizerSpec,
        /// The spec the caller expected.
        expected: FeaturizerSpec,
    },
    /// A feature listed twice.
    #[error("vocab.json lists feature {key:?} twice (ids {first} and {second})")]
    Duplicate {
        /// The feature key.
        key: String,
        /// Its first id.
        first: u32,
        /// The id of the repeat.
        second: u32,
    },
    /// A feature key without a known prefix.
    #[error("vocab.json has malformed feature {key:?} (id {id})")]
    Malformed {
        /// The feature key.
        key: String,
        /// Its id.
        id: u32,
    },
    /// More features than `u32` ids.
    #[error("vocab.json has too many features")]
    TooLarge,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    format: u32,
    spec: FeaturizerSpec,
    features: Vec<String>,
}

/// An append-only map from feature key to dense id (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    spec: FeaturizerSpec,
    /// `keys[i]` has id `i + 1`.
    keys: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocabulary {
    /// An empty vocabulary for features made with `spec`.
    pub fn new(spec: FeaturizerSpec) -> Self {
        Self {
            spec,
            keys: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The featurizer settings the features were made with.
    pub fn spec(&self) -> &FeaturizerSpec {
        &self.spec
    }

    /// The number of features (the padding id not counted); the manifest's `vocab_size`.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no features.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The number of ids including [`PAD`]: the embedding's row count.
    pub fn num_ids(&self) -> usize {
        self.keys.len() + 1
    }

    /// The id of a feature key (`w:word` or `c:ngram`).
    pub fn id(&self, key: &str) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The id of [`OOV_WORD`], if the vocabulary has it.
    pub fn oov_id(&self) -> Option<u32> {
        self.id(OOV_WORD)
    }

    /// Whether `id` is a word feature (not [`OOV_WORD`], not an n-gram).
    pub fn is_word(&self, id: u32) -> bool {
        self.key(id)
            .is_some_and(|k| k.starts_with(WORD_PREFIX) && k != OOV_WORD)
    }

    /// The key of an id; `None` for [`PAD`] and unknown ids.
    pub fn key(&self, id: u32) -> Option<&str> {
        let i = (id as usize).checked_sub(1)?;
        self.keys.get(i).map(String::as_str)
    }

    /// The feature keys in id order (the first has id 1).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Appends the features of `texts` that are not in the vocabulary yet, in first-seen order,
    /// and returns how many were added. Existing ids never change.
    ///
    /// # Panics
    ///
    /// If the vocabulary would outgrow `u32` ids.
    pub fn fit<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) -> usize {
        let before = self.keys.len();
        let mut key = String::new();
        let spec = self.spec.clone();
        for text in texts {
            for token in tokenize(text, spec.lowercase) {
                for_each_feature(&spec, &token.text, &mut key, |k| self.insert(k));
            }
        }
        if spec.word_tokens {
            self.insert(OOV_WORD);
        }
        self.keys.len() - before
    }

    fn insert(&mut self, key: &str) {
        if self.index.contains_key(key) {
            return;
        }
        let id = u32::try_from(self.keys.len() + 1).expect("fewer than 2^32 features");
        self.keys.push(key.to_owned());
        self.index.insert(key.to_owned(), id);
    }

    /// The word features, without their prefix: the words the model has seen. The fine-tune
    /// decision compares new data's [`refit_proto::decision::word_tokens`] against these.
    pub fn words(&self) -> BTreeSet<String> {
        self.keys
            .iter()
            .filter(|k| *k != OOV_WORD)
            .filter_map(|k| k.strip_prefix(WORD_PREFIX))
            .map(str::to_owned)
            .collect()
    }

    /// `vocab.json`, pretty-printed (see the module docs).
    pub fn to_json(&self) -> Vec<u8> {
        let file = VocabFile {
            format: VOCAB_FORMAT,
            spec: self.spec.clone(),
            features: self.keys.clone(),
        };
        serde_json::to_vec_pretty(&file).expect("a vocabulary always serialises")
    }

    /// Reads `vocab.json` and checks that it was built with `expected` settings, lists no
    /// feature twice and has only `w:`/`c:` keys.
    pub fn from_json(bytes: &[u8], expected: &FeaturizerSpec) -> Result<Self, VocabError> {
        let file: VocabFile = serde_json::from_slice(bytes)?;
        if file.format != VOCAB_FORMAT {
            return Err(VocabError::Format { found: file.format });
        }
        if file.spec != *expected {
            return Err(VocabError::SpecMismatch {
                found: file.spec,
                expected: expected.clone(),
            });
        }
        if u32::try_from(file.features.len()).is_err() {
            return Err(VocabError::TooLarge);
        }
        let mut index = HashMap::with_capacity(file.features.len());
        for (i, key) in file.features.iter().enumerate() {
            // Fits: the length was checked above.
            let id = i as u32 + 1;
            let well_formed = key
                .strip_prefix(WORD_PREFIX)
                .or_else(|| key.strip_prefix(CHAR_PREFIX))
                .is_some_and(|rest| !rest.is_empty());
            if !well_formed {
                return Err(VocabError::Malformed {
                    key: key.clone(),
                    id,
                });
            }
            if let Some(first) = index.insert(key.clone(), id) {
                return Err(VocabError::Duplicate {
                    key: key.clone(),
                    first,
                    second: id,
                });
            }
        }
        Ok(Self {
            spec: file.spec,
            keys: file.features,
            index,
        })
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
    /// The ids of its known features, in feature order, without duplicates or [`PAD`]. May be
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
    /// replaced by [`OOV_WORD`] when the vocabulary has it.
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
    use refit_proto::decision::word_tokens;

    fn data(name: &str) -> TrainingData {
        let path = format!(
            "{}/../examples/data/financial-demo/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        load_file(std::path::Path::new(&path)).expect("financial-demo loads")
    }

    fn texts(data: &TrainingData) -> impl Iterator<Item = &str> {
        data.examples.iter().map(|e| e.text.as_str())
    }

    fn spans(tokens: &[Token]) -> Vec<(usize, usize, &str)> {
        tokens
            .iter()
            .map(|t| (t.start, t.end, t.text.as_str()))
            .collect()
    }

    #[test]
    fn tokens_have_character_spans() {
        assert_eq!(
            spans(&tokenize("Don't pay Zoë's bill!", true)),
            [
                (0, 5, "don't"),
                (6, 9, "pay"),
                (10, 15, "zoë's"),
                (16, 20, "bill")
            ]
        );
        assert_eq!(
            spans(&tokenize("$1,200.50 to Ben", false)),
            [
                (1, 2, "1"),
                (3, 6, "200"),
                (7, 9, "50"),
                (10, 12, "to"),
                (13, 16, "Ben")
            ]
        );
        // 'İ' lowercases to two characters ("i̇"), and the combining dot is not a word
        // character: the token strings follow word_tokens, the spans the original text.
        let tokens = tokenize("xİy ΟΔΟΣ", true);
        let strings: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(strings, word_tokens("xİy ΟΔΟΣ"));
        assert_eq!(spans(&tokens), [(0, 2, "xi"), (2, 3, "y"), (4, 8, "οδος")]);
        assert!(tokenize("  ?! ' ", true).is_empty());
    }

    #[test]
    fn tokens_agree_with_word_tokens() {
        let mut checked = 0;
        let mut samples = vec![
            "'tis a''b it' rock'n'roll $1,200.50 snake_case".to_owned(),
            "ÜBERWEISUNG an Zoë's Konto".to_owned(),
        ];
        for name in ["nlu.yml", "set1.yml", "set2.yml", "test.yml"] {
            samples.extend(data(name).examples.into_iter().map(|e| e.text));
        }
        for text in &samples {
            let ours: Vec<String> = tokenize(text, true).into_iter().map(|t| t.text).collect();
            assert_eq!(ours, word_tokens(text), "{text:?}");
            checked += 1;
        }
        assert!(checked > 574);
    }

    #[test]
    fn features_are_word_plus_char_wb_ngrams() {
        let spec = FeaturizerSpec::default();
        // " hi " → 1-grams ' ', h, i (the second ' ' is a repeat), 2-grams, 3-grams, 4-gram.
        assert_eq!(
            token_features(&spec, "hi"),
            [
                "w:hi", "c: ", "c:h", "c:i", "c: h", "c:hi", "c:i ", "c: hi", "c:hi ", "c: hi "
            ]
        );
        // One character: " a " has no 4-gram.
        assert_eq!(
            token_features(&spec, "a"),
            ["w:a", "c: ", "c:a", "c: a", "c:a ", "c: a "]
        );
        let only_trigrams = FeaturizerSpec {
            word_tokens: false,
            char_ngram_min: 3,
            char_ngram_max: 3,
            ..spec.clone()
        };
        assert_eq!(
            token_features(&only_trigrams, "zoë"),
            ["c: zo", "c:zoë", "c:oë "]
        );
    }

    #[test]
    fn vocabulary_appends_and_keeps_ids() {
        let mut vocab = Vocabulary::new(FeaturizerSpec::default());
        // w:hi, 9 n-grams, and the unseen-word feature after them.
        assert_eq!(vocab.fit(["hi"]), 11);
        assert_eq!(vocab.id("w:hi"), Some(1));
        assert_eq!(vocab.key(1), Some("w:hi"));
        assert_eq!(vocab.key(PAD), None);
        assert_eq!(vocab.oov_id(), Some(11));
        assert!(vocab.is_word(1) && !vocab.is_word(11) && !vocab.is_word(2));
        assert_eq!(vocab.num_ids(), 12);
        // "ha" adds w:ha, c:a, c:ha, c:a␠, c:␠ha, c:ha␠, c:␠ha␠ (c:␠, c:h, c:␠h are known).
        assert_eq!(vocab.fit(["ha!", "hi"]), 7);
        assert_eq!(vocab.id("w:hi"), Some(1));
        assert_eq!(vocab.id("w:ha"), Some(12));
        assert_eq!(vocab.oov_id(), Some(11));
        assert_eq!(vocab.fit(["HI ha"]), 0);
        assert_eq!(
            vocab.words(),
            BTreeSet::from(["ha".to_owned(), "hi".to_owned()])
        );
    }

    #[test]
    fn a_vocabulary_without_the_unseen_word_feature_gains_it_at_the_end() {
        // vocab.json written before the feature existed: w:hi and its n-grams only.
        let mut vocab = Vocabulary::new(FeaturizerSpec::default());
        vocab.fit(["hi"]);
        let mut file: serde_json::Value = serde_json::from_slice(&vocab.to_json()).unwrap();
        file["features"].as_array_mut().unwrap().pop();
        let old = Vocabulary::from_json(&serde_json::to_vec(&file).unwrap(), vocab.spec()).unwrap();
        assert_eq!(old.oov_id(), None);
        // Without it, an unknown word is only its known n-grams.
        let f = Featurizer::new(old.clone(), FeatureLimits::default());
        assert_eq!(f.featurize("ho").tokens[0].ids.len(), 3);
        let mut grown = old.clone();
        assert_eq!(grown.fit(["hi"]), 1);
        assert_eq!(grown.oov_id(), Some(old.num_ids() as u32));
        assert_eq!(&grown.keys()[..old.len()], old.keys());
        assert!(grown.words().contains("hi") && !grown.words().contains("<oov>"));
        // Without word features there is no unseen-word feature.
        let mut chars_only = Vocabulary::new(FeaturizerSpec {
            word_tokens: false,
            ..FeaturizerSpec::default()
        });
        chars_only.fit(["hi"]);
        assert_eq!(chars_only.oov_id(), None);
    }

    #[test]
    fn vocab_json_round_trips_and_validates() {
        let spec = FeaturizerSpec::default();
        let mut vocab = Vocabulary::new(spec.clone());
        vocab.fit(["check my balance", "pay Ben $20"]);
        let json = vocab.to_json();
        let back = Vocabulary::from_json(&json, &spec).unwrap();
        assert_eq!(back, vocab);

        let other = FeaturizerSpec {
            char_ngram_max: 5,
            ..spec.clone()
        };
        assert!(matches!(
            Vocabulary::from_json(&json, &other),
            Err(VocabError::SpecMismatch { .. })
        ));
        let spec_json = serde_json::to_string(&spec).unwrap();
        let dup = format!(r#"{{"format":1,"spec":{spec_json},"features":["w:a","c:a","w:a"]}}"#);
        assert!(matches!(
            Vocabulary::from_json(dup.as_bytes(), &spec),
            Err(VocabError::Duplicate {
                first: 1,
                second: 3,
                ..
            })
        ));
        let bad = format!(r#"{{"format":1,"spec":{spec_json},"features":["a"]}}"#);
        assert!(matches!(
            Vocabulary::from_json(bad.as_bytes(), &spec),
            Err(VocabError::Malformed { id: 1, .. })
        ));
        let future = format!(r#"{{"format":2,"spec":{spec_json},"features":[]}}"#);
        assert!(matches!(
            Vocabulary::from_json(future.as_bytes(), &spec),
            Err(VocabError::Format { found: 2 })
        ));
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

    /// financial-demo: nlu.yml (574 examples) is split into set1 (367), set2 (92) and test
    /// (115). With the default spec: set1 has 2893 features, set2 adds 257 (3150), test the
    /// rest; nlu.yml alone has 3432 features, 462 of them words.
    #[test]
    fn financial_demo_vocabulary_is_append_only() {
        let spec = FeaturizerSpec::default();
        let [set1, set2, test, nlu] = ["set1.yml", "set2.yml", "test.yml", "nlu.yml"].map(data);

        let mut vocab = Vocabulary::new(spec.clone());
        let added1 = vocab.fit(texts(&set1));
        let after1 = vocab.clone();
        let added2 = vocab.fit(texts(&set2));
        let after2 = vocab.clone();
        println!(
            "set1: {} examples, {added1} features; set2 adds {added2} → {}",
            set1.len(),
            vocab.len()
        );
        assert_eq!(added1, after1.len());
        assert_eq!(vocab.len(), added1 + added2);
        assert_eq!(&vocab.keys()[..after1.len()], after1.keys());
        for (i, key) in after1.keys().iter().enumerate() {
            assert_eq!(vocab.id(key), Some(i as u32 + 1));
        }
        // Refitting what is already known adds nothing.
        assert_eq!(vocab.fit(texts(&set1)), 0);
        assert_eq!(vocab, after2);

        let mut full = Vocabulary::new(spec.clone());
        full.fit(texts(&nlu));
        println!(
            "nlu: {} examples, {} features, {} words",
            nlu.len(),
            full.len(),
            full.words().len()
        );
        assert_eq!(
            (set1.len(), set2.len(), test.len(), nlu.len()),
            (367, 92, 115, 574)
        );
        // Each count includes the unseen-word feature.
        assert_eq!((added1, after2.len(), full.len()), (2894, 3151, 3433));
        // The splits partition nlu.yml, so the feature sets agree (the order may not).
        vocab.fit(texts(&test));
        let a: BTreeSet<&String> = vocab.keys().iter().collect();
        let b: BTreeSet<&String> = full.keys().iter().collect();
        assert_eq!(a, b);
        // The same input always gives the same ids.
        let mut again = Vocabulary::new(spec.clone());
        again.fit(texts(&nlu));
        assert_eq!(again, full);
        // The words agree with the fine-tune decision's tokenizer.
        let words: BTreeSet<String> = nlu
            .examples
            .iter()
            .flat_map(|e| word_tokens(&e.text))
            .collect();
        assert_eq!(full.words(), words);
        assert_eq!(words.len(), 462);
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
