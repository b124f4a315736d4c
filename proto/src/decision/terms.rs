//! The report's vocabulary: kinds of label, reasons with their stable codes, count rows.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::render::name_list;

/// A kind of label a model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// Intent names.
    Intent,
    /// Entity types.
    Entity,
    /// Entity roles.
    Role,
    /// Entity groups.
    Group,
}

impl LabelKind {
    /// Every kind, in report order.
    pub const ALL: [LabelKind; 4] = [
        LabelKind::Intent,
        LabelKind::Entity,
        LabelKind::Role,
        LabelKind::Group,
    ];

    /// The lowercase name, as in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Intent => "intent",
            LabelKind::Entity => "entity",
            LabelKind::Role => "role",
            LabelKind::Group => "group",
        }
    }

    /// The plural noun for people: `intents`, `entity types`, `roles`, `groups`.
    pub fn plural(self) -> &'static str {
        match self {
            LabelKind::Intent => "intents",
            LabelKind::Entity => "entity types",
            LabelKind::Role => "roles",
            LabelKind::Group => "groups",
        }
    }
}

impl fmt::Display for LabelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the decision came out as it did. Serialised with a stable `code` field
/// (`labels_added`, `labels_removed`, `arch_changed`, `no_base_version`, `empty_dataset`,
/// `forced_scratch`) next to the variant's own fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The new data has no examples.
    EmptyDataset,
    /// The model has no version yet, so there is nothing to fine-tune.
    NoBaseVersion,
    /// The user asked for mode `scratch`.
    ForcedScratch,
    /// Labels of one kind that the new data uses and the base model does not predict.
    LabelsAdded {
        /// Which kind of label.
        kind: LabelKind,
        /// The labels, sorted.
        labels: Vec<String>,
    },
    /// Labels of one kind that the base model predicts and the new data no longer uses.
    LabelsRemoved {
        /// Which kind of label.
        kind: LabelKind,
        /// The labels, sorted.
        labels: Vec<String>,
    },
    /// Architecture hyperparameters that differ from the base version's.
    ArchChanged {
        /// The changed fields, e.g. `["embed_dim", "featurizer.char_ngram_max"]`, sorted.
        fields: Vec<String>,
    },
}

impl Reason {
    /// The stable machine code, e.g. `labels_removed`.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::EmptyDataset => "empty_dataset",
            Reason::NoBaseVersion => "no_base_version",
            Reason::ForcedScratch => "forced_scratch",
            Reason::LabelsAdded { .. } => "labels_added",
            Reason::LabelsRemoved { .. } => "labels_removed",
            Reason::ArchChanged { .. } => "arch_changed",
        }
    }

    /// Whether this reason, on its own, rules fine-tuning out.
    pub fn blocks_finetune(&self) -> bool {
        !matches!(self, Reason::ForcedScratch)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::EmptyDataset => f.write_str("the dataset has no examples"),
            Reason::NoBaseVersion => f.write_str("the model has no version yet"),
            Reason::ForcedScratch => f.write_str("mode scratch was requested"),
            Reason::LabelsAdded { kind, labels } => write!(
                f,
                "{} added ({}): {}",
                kind.plural(),
                labels.len(),
                name_list(labels)
            ),
            Reason::LabelsRemoved { kind, labels } => write!(
                f,
                "{} removed ({}): {}",
                kind.plural(),
                labels.len(),
                name_list(labels)
            ),
            Reason::ArchChanged { fields } => write!(
                f,
                "architecture changed ({}): {}",
                fields.len(),
                name_list(fields)
            ),
        }
    }
}

/// One row of a per-label count table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCount {
    /// The label.
    pub label: String,
    /// Examples (intents) or mentions (entity types, roles, groups) in the base version's
    /// training data; 0 where the base recorded none.
    pub old: usize,
    /// The same in the new data.
    pub new: usize,
}

impl LabelCount {
    /// `new - old`.
    pub fn delta(&self) -> i64 {
        self.new as i64 - self.old as i64
    }
}
