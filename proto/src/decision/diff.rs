//! [`LabelDiff`]: what differs between a base version and a job's data and architecture.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{LabelCount, LabelKind, NEW_WORD_SAMPLE, Reason};
use crate::data::TrainingData;
use crate::manifest::{ArchSpec, LabelSet, Manifest};
use crate::tokens::word_tokens;

/// How one kind of label changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelChanges {
    /// Labels the new data uses and the base does not predict, sorted.
    pub added: Vec<String>,
    /// Labels the base predicts and the new data does not use, sorted.
    pub removed: Vec<String>,
    /// Every label of either side with its old and new count, sorted by label.
    pub counts: Vec<LabelCount>,
}

impl LabelChanges {
    fn compute(
        base_labels: &BTreeSet<String>,
        base_counts: &BTreeMap<String, usize>,
        new_labels: &BTreeSet<String>,
        new_counts: &BTreeMap<String, usize>,
    ) -> Self {
        let added = new_labels.difference(base_labels).cloned().collect();
        let removed = base_labels.difference(new_labels).cloned().collect();
        let all: BTreeSet<&String> = base_labels
            .iter()
            .chain(base_counts.keys())
            .chain(new_labels.iter())
            .chain(new_counts.keys())
            .collect();
        let counts = all
            .into_iter()
            .map(|label| LabelCount {
                label: label.clone(),
                old: base_counts.get(label).copied().unwrap_or(0),
                new: new_counts.get(label).copied().unwrap_or(0),
            })
            .collect();
        Self {
            added,
            removed,
            counts,
        }
    }

    /// Whether no label was added or removed (counts may still differ).
    pub fn is_unchanged(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// The number of labels the new data uses.
    pub fn new_label_count(&self) -> usize {
        self.counts.iter().filter(|c| c.new > 0).count()
    }
}

/// How the new data's vocabulary compares with the base version's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VocabGrowth {
    /// Distinct lowercase word tokens in the new data.
    pub words: usize,
    /// How many of them the base vocabulary lacks.
    pub new_words: usize,
    /// `new_words / words`, rounded to 6 decimal places (0 when there are no words).
    pub fraction: f64,
    /// Up to [`NEW_WORD_SAMPLE`] of the new words, in order of first appearance.
    pub sample: Vec<String>,
}

impl VocabGrowth {
    /// Compares the word tokens of `data`'s example texts with `base_vocabulary`.
    pub fn compute(data: &TrainingData, base_vocabulary: &BTreeSet<String>) -> Self {
        let mut seen = BTreeSet::new();
        let mut new_words = 0;
        let mut sample = Vec::new();
        for example in &data.examples {
            for word in word_tokens(&example.text) {
                if base_vocabulary.contains(&word) {
                    seen.insert(word);
                } else if !seen.contains(&word) {
                    new_words += 1;
                    if sample.len() < NEW_WORD_SAMPLE {
                        sample.push(word.clone());
                    }
                    seen.insert(word);
                }
            }
        }
        let words = seen.len();
        let fraction = if words == 0 {
            0.0
        } else {
            // Rounded so that the JSON report reads back to the same value.
            (new_words as f64 / words as f64 * 1e6).round() / 1e6
        };
        Self {
            words,
            new_words,
            fraction,
            sample,
        }
    }
}

/// What differs between a base version and a job's data and architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelDiff {
    /// Intents.
    pub intents: LabelChanges,
    /// Entity types.
    pub entities: LabelChanges,
    /// Entity roles.
    pub roles: LabelChanges,
    /// Entity groups.
    pub groups: LabelChanges,
    /// Architecture fields whose values differ ([`ArchSpec::changed_fields`]), sorted; empty
    /// when the architecture is unchanged.
    pub arch_changed: Vec<String>,
    /// Vocabulary growth; `None` when the base vocabulary was not given.
    pub vocabulary: Option<VocabGrowth>,
}

impl LabelDiff {
    /// Compares the base version with the new data and the requested architecture.
    /// `base_vocabulary` is the base's word tokens (from its `vocab.json`), if at hand.
    pub fn compute(
        base: &Manifest,
        data: &TrainingData,
        arch: &ArchSpec,
        base_vocabulary: Option<&BTreeSet<String>>,
    ) -> Self {
        let new_labels = LabelSet::of(data);
        let new_counts = data.label_counts();
        let old_counts = &base.data.counts;
        let arch_changed = if base.arch_fingerprint == arch.fingerprint() {
            Vec::new()
        } else {
            base.arch.changed_fields(arch)
        };
        Self {
            intents: LabelChanges::compute(
                &base.labels.intents,
                &old_counts.intents,
                &new_labels.intents,
                &new_counts.intents,
            ),
            entities: LabelChanges::compute(
                &base.labels.entities,
                &old_counts.entities,
                &new_labels.entities,
                &new_counts.entities,
            ),
            roles: LabelChanges::compute(
                &base.labels.roles,
                &old_counts.roles,
                &new_labels.roles,
                &new_counts.roles,
            ),
            groups: LabelChanges::compute(
                &base.labels.groups,
                &old_counts.groups,
                &new_labels.groups,
                &new_counts.groups,
            ),
            arch_changed,
            vocabulary: base_vocabulary.map(|vocab| VocabGrowth::compute(data, vocab)),
        }
    }

    /// The changes of one kind of label.
    pub fn labels(&self, kind: LabelKind) -> &LabelChanges {
        match kind {
            LabelKind::Intent => &self.intents,
            LabelKind::Entity => &self.entities,
            LabelKind::Role => &self.roles,
            LabelKind::Group => &self.groups,
        }
    }

    /// Whether no label of any kind was added or removed.
    pub fn labels_unchanged(&self) -> bool {
        LabelKind::ALL
            .iter()
            .all(|&kind| self.labels(kind).is_unchanged())
    }

    /// Whether the diff allows fine-tuning: same labels, same architecture.
    pub fn is_fine_tunable(&self) -> bool {
        self.labels_unchanged() && self.arch_changed.is_empty()
    }

    /// The reasons this diff rules fine-tuning out, in report order: per kind of label
    /// (intents, entity types, roles, groups) the added then the removed labels, then the
    /// architecture. Empty when [`Self::is_fine_tunable`].
    pub fn blocking_reasons(&self) -> Vec<Reason> {
        let mut reasons = Vec::new();
        for kind in LabelKind::ALL {
            let changes = self.labels(kind);
            if !changes.added.is_empty() {
                reasons.push(Reason::LabelsAdded {
                    kind,
                    labels: changes.added.clone(),
                });
            }
            if !changes.removed.is_empty() {
                reasons.push(Reason::LabelsRemoved {
                    kind,
                    labels: changes.removed.clone(),
                });
            }
        }
        if !self.arch_changed.is_empty() {
            reasons.push(Reason::ArchChanged {
                fields: self.arch_changed.clone(),
            });
        }
        reasons
    }
}
