//! Training data: the in-memory form of an NLU dataset and the parsers that read it.
//!
//! Layout:
//! - this file: [`TrainingData`], [`Example`], [`Entity`] and the helpers shared by the parsers
//! - `rasa_yaml`: Rasa YAML NLU (format 2.0 and 3.x)
//! - `jsonl`: one JSON example per line
//! - `annotation`: inline entity annotations (`[text](type)`, `[text]{...}`)
//!
//! Entity offsets are **character** offsets (Unicode scalar values) into the de-annotated text,
//! as Rasa and its JSON formats count them; [`Entity::slice`] turns them into a `&str`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One annotated training example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The plain text, annotations removed.
    pub text: String,
    /// The full intent name, e.g. `greet` or the retrieval intent `faq/ask_x`.
    pub intent: String,
    /// Entity mentions, sorted by start offset.
    #[serde(default)]
    pub entities: Vec<Entity>,
}

/// An entity mention inside an example's text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entity {
    /// Start, in characters, into the plain text (inclusive).
    pub start: usize,
    /// End, in characters, into the plain text (exclusive).
    pub end: usize,
    /// The entity type, e.g. `account_type`.
    pub entity: String,
    /// The normalised value when it differs from the annotated words (a synonym); `None` means
    /// the value is the annotated text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The entity's role, if annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The entity's group, if annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Entity {
    /// The annotated words: `text[start..end]` in characters. `None` if the offsets do not fit.
    pub fn slice<'a>(&self, text: &'a str) -> Option<&'a str> {
        char_slice(text, self.start, self.end)
    }
}

/// `text[start..end]` with character offsets.
pub fn char_slice(text: &str, start: usize, end: usize) -> Option<&str> {
    if start > end {
        return None;
    }
    let mut indices = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()));
    let from = indices.nth(start)?;
    let to = if end == start {
        from
    } else {
        indices.nth(end - start - 1)?
    };
    Some(&text[from..to])
}

/// A `synonym:`, `regex:` or `lookup:` item, kept as it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuxItem {
    /// Its name: the synonym's value, the regex's or lookup table's name.
    pub name: String,
    /// Its example lines, without the leading `- `.
    pub examples: Vec<String>,
}

/// A whole dataset, possibly merged from several files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingData {
    /// The intent examples, in file order, exact duplicates within an intent removed.
    pub examples: Vec<Example>,
    /// `synonym:` items.
    #[serde(default)]
    pub synonyms: Vec<AuxItem>,
    /// `regex:` items.
    #[serde(default)]
    pub regexes: Vec<AuxItem>,
    /// `lookup:` items.
    #[serde(default)]
    pub lookups: Vec<AuxItem>,
    /// How many exact duplicates were dropped while reading.
    #[serde(default)]
    pub duplicates_dropped: usize,
}

/// The labels a dataset uses, with example counts. The fine-tune decision compares these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    /// Examples per intent.
    pub intents: BTreeMap<String, usize>,
    /// Mentions per entity type.
    pub entities: BTreeMap<String, usize>,
    /// Mentions per role.
    pub roles: BTreeMap<String, usize>,
    /// Mentions per group.
    pub groups: BTreeMap<String, usize>,
}

impl TrainingData {
    /// The number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The distinct intents, sorted.
    pub fn intents(&self) -> BTreeSet<&str> {
        self.examples.iter().map(|e| e.intent.as_str()).collect()
    }

    /// The number of entity mentions.
    pub fn entity_mentions(&self) -> usize {
        self.examples.iter().map(|e| e.entities.len()).sum()
    }

    /// The labels used and how often.
    pub fn label_counts(&self) -> LabelCounts {
        let mut counts = LabelCounts::default();
        for example in &self.examples {
            *counts.intents.entry(example.intent.clone()).or_default() += 1;
            for entity in &example.entities {
                *counts.entities.entry(entity.entity.clone()).or_default() += 1;
                if let Some(role) = &entity.role {
                    *counts.roles.entry(role.clone()).or_default() += 1;
                }
                if let Some(group) = &entity.group {
                    *counts.groups.entry(group.clone()).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Appends another dataset, dropping examples that are exact duplicates (same text, intent
    /// and entities) of ones already here. Returns how many were dropped.
    pub fn merge(&mut self, other: TrainingData) -> usize {
        let mut seen: BTreeSet<(String, String, Vec<Entity>)> = self
            .examples
            .iter()
            .map(|e| (e.intent.clone(), e.text.clone(), e.entities.clone()))
            .collect();
        let mut dropped = 0;
        for example in other.examples {
            let key = (
                example.intent.clone(),
                example.text.clone(),
                example.entities.clone(),
            );
            if seen.insert(key) {
                self.examples.push(example);
            } else {
                dropped += 1;
            }
        }
        self.synonyms.extend(other.synonyms);
        self.regexes.extend(other.regexes);
        self.lookups.extend(other.lookups);
        self.duplicates_dropped += other.duplicates_dropped + dropped;
        dropped
    }
}

impl PartialOrd for Entity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.start,
            self.end,
            &self.entity,
            &self.value,
            &self.role,
            &self.group,
        )
            .cmp(&(
                other.start,
                other.end,
                &other.entity,
                &other.value,
                &other.role,
                &other.group,
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_slice_counts_characters_not_bytes() {
        let text = "überweise 5 € an Zoë";
        assert_eq!(char_slice(text, 0, 9), Some("überweise"));
        assert_eq!(char_slice(text, 12, 13), Some("€"));
        assert_eq!(char_slice(text, 17, 20), Some("Zoë"));
        assert_eq!(char_slice(text, 20, 20), Some(""));
        assert_eq!(char_slice(text, 17, 21), None);
        assert_eq!(char_slice(text, 3, 2), None);
    }

    #[test]
    fn merge_drops_exact_duplicates_only() {
        let ex = |t: &str, i: &str| Example {
            text: t.into(),
            intent: i.into(),
            entities: vec![],
        };
        let mut a = TrainingData {
            examples: vec![ex("hi", "greet")],
            ..Default::default()
        };
        let b = TrainingData {
            examples: vec![ex("hi", "greet"), ex("hi", "other"), ex("hello", "greet")],
            ..Default::default()
        };
        assert_eq!(a.merge(b), 1);
        assert_eq!(a.len(), 3);
        assert_eq!(a.duplicates_dropped, 1);
    }
}
