//! Feature keys, the append-only [`Vocabulary`] and its file, `vocab.json`: what a stored
//! version's input layer means. Every process that reads a version agrees on it through this
//! module (the worker to fine-tune it, the coordinator to count a dataset's new words, the CLI to
//! run it).
//!
//! - The features of a token `word` ([`crate::tokens`]) are `w:<word>` (when
//!   [`FeaturizerSpec::word_tokens`]) and the character n-grams, `n` in
//!   `char_ngram_min..=char_ngram_max`, of ` <word> ` padded with one space on each side
//!   (scikit-learn's `char_wb`), as `c:<ngram>`. N-grams longer than the padded word are not
//!   produced. Features are **binary**: a feature that occurs twice in one token (the two padding
//!   spaces, `ana` in `banana`) is listed once, at its first occurrence.
//! - [`Vocabulary`] maps feature keys to dense `u32` ids. Id [`PAD`] (0) is reserved for
//!   padding and is never a feature; features get ids `1..`. The vocabulary only grows:
//!   [`Vocabulary::fit`] appends unseen features in first-seen order and never renumbers, so a
//!   fine-tuned model's embedding only gains rows.
//! - **Unseen words.** With word features on, the vocabulary also holds [`OOV_WORD`]
//!   (`w:<oov>`, added by the first [`Vocabulary::fit`], or appended by the next one for a
//!   vocabulary written before it existed). The engine's featurizer gives a token whose word the
//!   vocabulary lacks that feature in place of its word feature.
//!
//! # `vocab.json`
//!
//! ```json
//! {"format": 1, "spec": {"lowercase": true, ...}, "features": ["w:hi", "c: ", "c:h", ...]}
//! ```
//!
//! `features[i]` has id `i + 1` (id 0 is the padding id and is not listed). The file is written
//! pretty-printed, one feature per line, so that diffs between versions read as appended lines.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::manifest::FeaturizerSpec;
use crate::tokens::tokenize;

/// The padding id: never a feature, so batches can be padded with it and masked.
pub const PAD: u32 = 0;

/// The `vocab.json` format this code writes and reads.
pub const VOCAB_FORMAT: u32 = 1;

/// Key prefix of word features.
pub const WORD_PREFIX: &str = "w:";
/// Key prefix of character n-gram features.
pub const CHAR_PREFIX: &str = "c:";

/// The most features a vocabulary may hold unless its caller says otherwise (a worker's
/// `worker.max_vocab_features`): the embedding and its two optimiser moments grow with it.
pub const DEFAULT_MAX_FEATURES: usize = 1_000_000;

/// [`Vocabulary::fit_at_most`] stopped: the data holds more distinct features than allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the vocabulary would grow past {max} features (distinct words and character n-grams): \
     the data holds too many distinct words; clean it, or raise the cap \
     (worker.max_vocab_features)"
)]
pub struct VocabularyFull {
    /// The cap.
    pub max: usize,
}

/// The feature of a word the vocabulary lacks (`<` is never part of a token, so no word has
/// this key).
pub const OOV_WORD: &str = "w:<oov>";

/// Calls `emit` with every feature key of `word` (with duplicates; callers dedupe), in feature
/// order: the word, then n-grams by increasing `n`, left to right. `key` is scratch space.
pub fn for_each_feature(
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
        self.fit_at_most(texts, u32::MAX as usize - 1)
            .expect("fewer than 2^32 features")
    }

    /// [`Vocabulary::fit`], stopping with an error as soon as the vocabulary would hold more
    /// than `max` features (the unseen-word feature included); what was added until then stays,
    /// so a caller that gets the error drops the vocabulary.
    pub fn fit_at_most<'a>(
        &mut self,
        texts: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Result<usize, VocabularyFull> {
        let before = self.keys.len();
        let mut key = String::new();
        let spec = self.spec.clone();
        // One place kept for the unseen-word feature.
        let room = max.saturating_sub(usize::from(
            spec.word_tokens && !self.index.contains_key(OOV_WORD),
        ));
        let mut full = false;
        for text in texts {
            for token in tokenize(text, spec.lowercase) {
                for_each_feature(&spec, &token.text, &mut key, |k| {
                    if !full && !self.index.contains_key(k) {
                        if self.keys.len() >= room {
                            full = true;
                        } else {
                            self.insert(k);
                        }
                    }
                });
                if full {
                    return Err(VocabularyFull { max });
                }
            }
        }
        if spec.word_tokens {
            self.insert(OOV_WORD);
        }
        Ok(self.keys.len() - before)
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
    /// decision compares new data's [`crate::tokens::word_tokens`] against these.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{TrainingData, load_file};
    use crate::tokens::word_tokens;

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

    #[test]
    fn a_capped_fit_stops_at_the_cap_and_says_so() {
        let set1 = data("set1.yml");
        let mut full = Vocabulary::new(FeaturizerSpec::default());
        let n = full.fit(texts(&set1));
        let mut exact = Vocabulary::new(FeaturizerSpec::default());
        assert_eq!(
            exact.fit_at_most(texts(&set1), n),
            Ok(n),
            "the cap is inclusive"
        );
        assert_eq!(exact.to_json(), full.to_json());
        let mut capped = Vocabulary::new(FeaturizerSpec::default());
        let err = capped.fit_at_most(texts(&set1), n - 1).unwrap_err();
        assert_eq!(err, VocabularyFull { max: n - 1 });
        assert!(
            err.to_string().contains("worker.max_vocab_features"),
            "{err}"
        );
        assert!(capped.keys.len() < n);
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
}
