//! Places where a dataset labels the same words two ways.
//!
//! A model trained on such data learns both answers, and which one it gives for new text is a
//! coin toss between training runs. Two kinds are found:
//!
//! - **Entity conflicts**: a word sequence annotated as an entity in one example and, in others,
//!   annotated as another type or written without an annotation (`[Percy](PERSON)` in one
//!   example, `Percy please` in another). A sequence counts as unannotated only where none of
//!   its words is inside any entity (`credit` in `[credit card](account_type)` is not).
//! - **Intent conflicts**: the same words (case and punctuation aside) listed under two intents.
//!
//! Words are compared as [`word_tokens`] gives them (lowercase, `\w+(?:'\w+)*`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{CharIndex, Example, TrainingData};
use crate::tokens::word_tokens;

/// The most conflicts of each kind a report lists (the report travels with every job, so a
/// messy dataset must not make it huge); the counts say how many there are in all.
pub const MAX_LISTED: usize = 100;

/// A dataset's conflicts: how many of each kind, and up to [`MAX_LISTED`] of each, the
/// most-used words first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataConflicts {
    /// How many word sequences are annotated as an entity in some examples and labelled
    /// otherwise in others.
    #[serde(default)]
    pub entity_count: usize,
    /// The first [`MAX_LISTED`] of them, the most examples first.
    #[serde(default)]
    pub entities: Vec<EntityConflict>,
    /// How many texts are listed under more than one intent.
    #[serde(default)]
    pub intent_count: usize,
    /// The first [`MAX_LISTED`] of them, by their words.
    #[serde(default)]
    pub intents: Vec<IntentConflict>,
}

/// One word sequence whose entity label differs between examples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityConflict {
    /// The words, lowercase, joined by single spaces: `percy`.
    pub words: String,
    /// Each way the words are labelled, the most examples first.
    pub labels: Vec<LabelUse>,
}

/// One way a word sequence is labelled, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelUse {
    /// The entity type; `None` where the words are not annotated.
    pub entity: Option<String>,
    /// How many examples label the words this way.
    pub examples: usize,
    /// The text of the first such example.
    pub example: String,
}

/// Words listed under more than one intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentConflict {
    /// The words, lowercase, joined by single spaces.
    pub words: String,
    /// The intents, sorted.
    pub intents: Vec<String>,
}

impl DataConflicts {
    /// Finds every conflict in `data` (see the module docs). Linear in the data's words, plus,
    /// per word, the annotated sequences that start with it.
    pub fn find(data: &TrainingData) -> Self {
        let mut words = Words::default();
        let tokens: Vec<Vec<Token>> = data
            .examples
            .iter()
            .map(|example| labelled_words(example, &mut words))
            .collect();
        let mut entities = entity_conflicts(&data.examples, &tokens, &words);
        let mut intents = intent_conflicts(&data.examples, &tokens, &words);
        let (entity_count, intent_count) = (entities.len(), intents.len());
        entities.truncate(MAX_LISTED);
        intents.truncate(MAX_LISTED);
        Self {
            entity_count,
            entities,
            intent_count,
            intents,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entity_count == 0 && self.intent_count == 0
    }
}

/// Every distinct word once, by id.
#[derive(Default)]
struct Words {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Words {
    fn id(&mut self, word: String) -> u32 {
        if let Some(&id) = self.ids.get(&word) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(word.clone());
        self.ids.insert(word, id);
        id
    }

    fn join(&self, ids: &[u32]) -> String {
        let names: Vec<&str> = ids
            .iter()
            .map(|&id| self.names[id as usize].as_str())
            .collect();
        names.join(" ")
    }
}

/// A word of an example and the index of the entity it is inside, if any.
#[derive(Clone, Copy)]
struct Token {
    word: u32,
    entity: Option<usize>,
}

/// An example's words in order, each with the entity it is inside.
fn labelled_words(example: &Example, words: &mut Words) -> Vec<Token> {
    let mut tokens = Vec::new();
    let chars = CharIndex::new(&example.text);
    let length = chars.chars();
    let mut push = |start: usize, end: usize, entity: Option<usize>| {
        if let Some(text) = chars.slice(start, end) {
            for word in word_tokens(text) {
                tokens.push(Token {
                    word: words.id(word),
                    entity,
                });
            }
        }
    };
    let mut at = 0;
    for (i, entity) in example.entities.iter().enumerate() {
        // Entities are sorted by start; an overlapping one starts inside the previous one.
        let start = entity.start.max(at);
        push(at, start, None);
        push(start, entity.end.max(start), Some(i));
        at = at.max(entity.end);
    }
    push(at, length, None);
    tokens
}

/// How often a sequence is labelled one way, and the first example that does.
#[derive(Clone, Copy, Default)]
struct Use {
    examples: usize,
    first: usize,
}

impl Use {
    fn add(&mut self, example: usize) {
        if self.examples == 0 {
            self.first = example;
        }
        self.examples += 1;
    }
}

fn entity_conflicts(
    examples: &[Example],
    tokens: &[Vec<Token>],
    words: &Words,
) -> Vec<EntityConflict> {
    // Every annotated word sequence, and per entity type how it is annotated.
    let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut spans: Vec<Vec<u32>> = Vec::new();
    let mut annotated: Vec<BTreeMap<&str, Use>> = Vec::new();
    for (n, (example, tokens)) in examples.iter().zip(tokens).enumerate() {
        for (i, entity) in example.entities.iter().enumerate() {
            let span: Vec<u32> = tokens
                .iter()
                .filter(|t| t.entity == Some(i))
                .map(|t| t.word)
                .collect();
            if span.is_empty() {
                continue;
            }
            let k = *index.entry(span).or_insert_with_key(|span| {
                spans.push(span.clone());
                annotated.push(BTreeMap::new());
                spans.len() - 1
            });
            annotated[k]
                .entry(entity.entity.as_str())
                .or_default()
                .add(n);
        }
    }

    // The same sequences where no word of them is annotated, found through their first word.
    let mut by_first: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, span) in spans.iter().enumerate() {
        by_first.entry(span[0]).or_default().push(k);
    }
    let mut bare: Vec<Use> = vec![Use::default(); spans.len()];
    // The example each span was last found in, so each counts once per example.
    let mut found_in: Vec<Option<usize>> = vec![None; spans.len()];
    for (n, tokens) in tokens.iter().enumerate() {
        for start in 0..tokens.len() {
            let Some(candidates) = by_first.get(&tokens[start].word) else {
                continue;
            };
            for &k in candidates {
                let span = &spans[k];
                let Some(window) = tokens.get(start..start + span.len()) else {
                    continue;
                };
                let matches = window
                    .iter()
                    .zip(span)
                    .all(|(t, &w)| t.entity.is_none() && t.word == w);
                if matches && found_in[k] != Some(n) {
                    found_in[k] = Some(n);
                    bare[k].add(n);
                }
            }
        }
    }

    let mut conflicts: Vec<EntityConflict> = Vec::new();
    for (k, types) in annotated.iter().enumerate() {
        let bare = Some(bare[k]).filter(|found| found.examples > 0);
        if types.len() + usize::from(bare.is_some()) < 2 {
            continue;
        }
        let label = |entity: Option<&str>, found: Use| LabelUse {
            entity: entity.map(str::to_owned),
            examples: found.examples,
            example: examples[found.first].text.clone(),
        };
        let mut labels: Vec<LabelUse> = types
            .iter()
            .map(|(&entity, &found)| label(Some(entity), found))
            .chain(bare.map(|found| label(None, found)))
            .collect();
        // Most examples first; ties: annotated before not, then by name.
        labels.sort_by(|a, b| {
            (b.examples, a.entity.is_none(), &a.entity).cmp(&(
                a.examples,
                b.entity.is_none(),
                &b.entity,
            ))
        });
        conflicts.push(EntityConflict {
            words: words.join(&spans[k]),
            labels,
        });
    }
    conflicts.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.words.cmp(&b.words)));
    conflicts
}

fn total(conflict: &EntityConflict) -> usize {
    conflict.labels.iter().map(|l| l.examples).sum()
}

fn intent_conflicts(
    examples: &[Example],
    tokens: &[Vec<Token>],
    words: &Words,
) -> Vec<IntentConflict> {
    let mut intents: HashMap<Vec<u32>, Vec<&str>> = HashMap::new();
    for (example, tokens) in examples.iter().zip(tokens) {
        if tokens.is_empty() {
            continue;
        }
        let listed = intents
            .entry(tokens.iter().map(|t| t.word).collect())
            .or_default();
        if !listed.contains(&example.intent.as_str()) {
            listed.push(&example.intent);
        }
    }
    let mut conflicts: Vec<IntentConflict> = intents
        .into_iter()
        .filter(|(_, intents)| intents.len() > 1)
        .map(|(ids, mut intents)| {
            intents.sort_unstable();
            IntentConflict {
                words: words.join(&ids),
                intents: intents.into_iter().map(str::to_owned).collect(),
            }
        })
        .collect();
    conflicts.sort_by(|a, b| a.words.cmp(&b.words));
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Format, parse_str};

    fn data(yaml: &str) -> TrainingData {
        parse_str(yaml, "test.yml", Format::RasaYaml).expect("valid test data")
    }

    #[test]
    fn a_name_annotated_once_and_bare_twice_is_a_conflict() {
        let data = data(
            r#"version: "3.1"
nlu:
- intent: transfer_money
  examples: |
    - Pay [Percy](PERSON) $50
    - pay [Mona](PERSON) $60
    - send it to [Mona](PERSON)
- intent: inform
  examples: |
    - Percy please
    - Percy Donald
    - [Percy](PERSON)
    - Mona
"#,
        );
        let conflicts = DataConflicts::find(&data);
        let words: Vec<&str> = conflicts
            .entities
            .iter()
            .map(|c| c.words.as_str())
            .collect();
        assert_eq!(words, ["percy", "mona"], "the most examples first");
        let percy = &conflicts.entities[0];
        assert_eq!(
            percy.labels,
            [
                LabelUse {
                    entity: Some("PERSON".into()),
                    examples: 2,
                    example: "Pay Percy $50".into(),
                },
                LabelUse {
                    entity: None,
                    examples: 2,
                    example: "Percy please".into(),
                },
            ]
        );
        assert!(conflicts.intents.is_empty());
    }

    #[test]
    fn words_inside_another_entity_are_not_bare_and_types_can_conflict() {
        let data = data(
            r#"version: "3.1"
nlu:
- intent: pay_cc
  examples: |
    - pay my [credit](account_type)
    - pay my [credit card](account_type)
    - my [credit card](account_type) is due
    - pay my [discover](credit_card)
    - pay my [discover](account_type) bill
    - pay my [discover](credit_card) card
"#,
        );
        let conflicts = DataConflicts::find(&data);
        assert_eq!(conflicts.entities.len(), 1, "{conflicts:?}");
        let discover = &conflicts.entities[0];
        assert_eq!(discover.words, "discover");
        let labels: Vec<(Option<&str>, usize)> = discover
            .labels
            .iter()
            .map(|l| (l.entity.as_deref(), l.examples))
            .collect();
        assert_eq!(
            labels,
            [(Some("credit_card"), 2), (Some("account_type"), 1)]
        );
    }

    #[test]
    fn a_sequence_counts_once_per_example_and_only_whole() {
        let data = data(
            r#"version: "3.1"
nlu:
- intent: transfer_money
  examples: |
    - send money to [Jason Jacob](PERSON)
    - Jason Jacob and Jason Jacob again
    - Jason alone
"#,
        );
        let conflicts = DataConflicts::find(&data);
        assert_eq!(conflicts.entities.len(), 1);
        let labels = &conflicts.entities[0].labels;
        assert_eq!(conflicts.entities[0].words, "jason jacob");
        assert_eq!(labels[1].entity, None);
        assert_eq!(labels[1].examples, 1, "one example, two mentions");
    }

    #[test]
    fn the_same_words_under_two_intents_are_a_conflict() {
        let data = data(
            r#"version: "3.1"
nlu:
- intent: affirm
  examples: |
    - yes please
    - sure
- intent: inform
  examples: |
    - Yes, please!
    - sure thing
- intent: greet
  examples: |
    - ...
"#,
        );
        let conflicts = DataConflicts::find(&data);
        assert!(conflicts.entities.is_empty());
        assert_eq!(
            conflicts.intents,
            [IntentConflict {
                words: "yes please".into(),
                intents: vec!["affirm".into(), "inform".into()],
            }]
        );
    }

    #[test]
    fn reports_list_at_most_max_listed_of_each_kind_and_count_them_all() {
        let mut yaml = String::from("version: \"3.1\"\nnlu:\n- intent: a\n  examples: |\n");
        for i in 0..MAX_LISTED + 5 {
            yaml.push_str(&format!("    - pay [n{i}](PERSON)\n    - n{i}\n"));
        }
        yaml.push_str("- intent: b\n  examples: |\n");
        for i in 0..MAX_LISTED + 5 {
            yaml.push_str(&format!("    - n{i}\n"));
        }
        let conflicts = DataConflicts::find(&data(&yaml));
        assert_eq!(conflicts.entity_count, MAX_LISTED + 5);
        assert_eq!(conflicts.entities.len(), MAX_LISTED);
        assert_eq!(conflicts.intent_count, MAX_LISTED + 5);
        assert_eq!(conflicts.intents.len(), MAX_LISTED);
    }

    #[test]
    fn clean_data_has_none() {
        let data = data(
            r#"version: "3.1"
nlu:
- intent: transfer_money
  examples: |
    - pay [Mona](PERSON)
    - send money to [Mona](PERSON)
- intent: greet
  examples: |
    - hi
"#,
        );
        assert!(DataConflicts::find(&data).is_empty());
    }
}
