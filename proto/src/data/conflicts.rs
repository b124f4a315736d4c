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

use super::{Example, TrainingData, char_slice};
use crate::decision::word_tokens;

/// Every conflict a dataset has, the most-used words first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataConflicts {
    /// Words annotated as an entity in some examples and labelled otherwise in others.
    #[serde(default)]
    pub entities: Vec<EntityConflict>,
    /// Words listed under more than one intent.
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
    /// Finds every conflict in `data` (see the module docs).
    pub fn find(data: &TrainingData) -> Self {
        Self {
            entities: entity_conflicts(&data.examples),
            intents: intent_conflicts(&data.examples),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.intents.is_empty()
    }
}

/// An example's words, each with the index of the entity it is inside, if any.
fn labelled_words(example: &Example) -> Vec<(String, Option<usize>)> {
    let mut words = Vec::new();
    let mut push = |start: usize, end: usize, entity: Option<usize>| {
        if let Some(text) = char_slice(&example.text, start, end) {
            words.extend(word_tokens(text).into_iter().map(|w| (w, entity)));
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
    push(at, example.text.chars().count(), None);
    words
}

/// Per label (`None` = not annotated): examples and the first one's text.
type Uses = BTreeMap<Option<String>, (usize, String)>;

fn entity_conflicts(examples: &[Example]) -> Vec<EntityConflict> {
    let words: Vec<Vec<(String, Option<usize>)>> = examples.iter().map(labelled_words).collect();

    // Every annotated word sequence and the types it is annotated with.
    let mut uses: HashMap<Vec<String>, Uses> = HashMap::new();
    for (example, words) in examples.iter().zip(&words) {
        for (i, entity) in example.entities.iter().enumerate() {
            let span: Vec<String> = words
                .iter()
                .filter(|(_, e)| *e == Some(i))
                .map(|(w, _)| w.clone())
                .collect();
            if span.is_empty() {
                continue;
            }
            let entry = uses
                .entry(span)
                .or_default()
                .entry(Some(entity.entity.clone()))
                .or_insert((0, example.text.clone()));
            entry.0 += 1;
        }
    }

    // The same sequences where no word of them is annotated, found through their first word.
    let mut by_first: HashMap<&str, Vec<&Vec<String>>> = HashMap::new();
    for span in uses.keys() {
        by_first.entry(span[0].as_str()).or_default().push(span);
    }
    let mut bare: HashMap<Vec<String>, (usize, String)> = HashMap::new();
    for (example, words) in examples.iter().zip(&words) {
        let mut seen_here: Vec<&Vec<String>> = Vec::new();
        for start in 0..words.len() {
            let Some(spans) = by_first.get(words[start].0.as_str()) else {
                continue;
            };
            for &span in spans {
                let Some(window) = words.get(start..start + span.len()) else {
                    continue;
                };
                let matches = window
                    .iter()
                    .zip(span)
                    .all(|((w, entity), s)| entity.is_none() && w == s);
                if matches && !seen_here.contains(&span) {
                    seen_here.push(span);
                    let entry = bare
                        .entry(span.clone())
                        .or_insert((0, example.text.clone()));
                    entry.0 += 1;
                }
            }
        }
    }
    for (span, found) in bare {
        if let Some(labels) = uses.get_mut(&span) {
            labels.insert(None, found);
        }
    }

    let mut conflicts: Vec<EntityConflict> = uses
        .into_iter()
        .filter(|(_, labels)| labels.len() > 1)
        .map(|(span, labels)| {
            let mut labels: Vec<LabelUse> = labels
                .into_iter()
                .map(|(entity, (examples, example))| LabelUse {
                    entity,
                    examples,
                    example,
                })
                .collect();
            // Most examples first; ties: annotated before not, then by name.
            labels.sort_by(|a, b| {
                (b.examples, a.entity.is_none(), &a.entity).cmp(&(
                    a.examples,
                    b.entity.is_none(),
                    &b.entity,
                ))
            });
            EntityConflict {
                words: span.join(" "),
                labels,
            }
        })
        .collect();
    conflicts.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.words.cmp(&b.words)));
    conflicts
}

fn total(conflict: &EntityConflict) -> usize {
    conflict.labels.iter().map(|l| l.examples).sum()
}

fn intent_conflicts(examples: &[Example]) -> Vec<IntentConflict> {
    let mut intents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for example in examples {
        let words = word_tokens(&example.text).join(" ");
        if words.is_empty() {
            continue;
        }
        let listed = intents.entry(words).or_default();
        if !listed.contains(&example.intent) {
            listed.push(example.intent.clone());
        }
    }
    intents
        .into_iter()
        .filter(|(_, intents)| intents.len() > 1)
        .map(|(words, mut intents)| {
            intents.sort();
            IntentConflict { words, intents }
        })
        .collect()
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
