//! The label-set diff and the fine-tune decision (DESIGN §4).
//!
//! Before a job is queued the coordinator compares the model's current version (its
//! [`Manifest`]) with the new training data and the requested architecture, and decides whether
//! the job may **fine-tune** the stored weights, must train from **scratch**, or is **rejected**.
//! [`decide`] makes that decision and returns a [`DecisionReport`]: the decision, the reasons as
//! stable machine codes carrying the exact labels and fields involved, and the full
//! [`LabelDiff`]. The report is printed for people ([`DecisionReport::human`]) and as JSON for
//! scripts and the scheduler ([`DecisionReport::to_json`]); mapping it to exit codes is the CLI's
//! business.
//!
//! # What blocks fine-tuning
//!
//! Fine-tuning continues from the stored weights, so everything whose shape is fixed by the
//! base version must stay the same:
//!
//! | change between the base version and the job | fine-tunable? |
//! | --- | --- |
//! | only examples added or removed, same labels | yes |
//! | new words / n-grams (reported as [`VocabGrowth`]) | yes: the vocabulary is append-only and the input layer gains rows |
//! | an intent, entity type, role or group added or removed | no: [`Reason::LabelsAdded`] / [`Reason::LabelsRemoved`], one per kind of label, naming every label |
//! | an architecture hyperparameter changed ([`ArchSpec`]) | no: [`Reason::ArchChanged`], naming every changed field |
//! | epochs, batch size, learning rate, seed | yes: these are not an input of the decision at all |
//!
//! Label sets are compared as sets of exact names: the base's from [`Manifest::labels`], the new
//! data's from [`LabelSet::of`]. A changed example *count* never blocks; the per-label count
//! tables (old counts from the base's `data.counts`, 0 where the base recorded none) are there to
//! be read. Synonyms, regexes and lookup tables are not labels and do not block either.
//!
//! Architectures are compared by fingerprint first; when the stored fingerprint differs, the
//! specs are compared field by field with [`ArchSpec::changed_fields`]. Equal fields with a
//! different stored fingerprint (a manifest written by a build whose `ArchSpec` had another
//! field set) count as unchanged: the resolved values are what the weights depend on. An
//! `ArchSpec` parsed from `{}` resolves to the defaults and is therefore not a change.
//!
//! Two conditions are not about the diff:
//! - **no base version** ([`Reason::NoBaseVersion`]): the model has never been trained, so
//!   there is nothing to fine-tune and the diff is `None`;
//! - **empty dataset** ([`Reason::EmptyDataset`]): always rejected, whatever the mode.
//!
//! # Mode × policy
//!
//! The requested [`Mode`] says what the user asked for; the [`Policy`] says what to do when
//! `auto` meets data that cannot be fine-tuned. An explicit `finetune` that cannot be honoured
//! is rejected rather than silently turned into an expensive full retrain, whatever the policy.
//! A model with no version yet has nothing to protect, so `auto` trains it from scratch even
//! under policy `reject` (otherwise it could never get a first version).
//!
//! | mode | fine-tunable | labels/arch changed | no base version | empty dataset |
//! | --- | --- | --- | --- | --- |
//! | `auto`, policy `reject` | finetune | **reject** | scratch | reject |
//! | `auto`, policy `scratch` | finetune | **scratch** | scratch | reject |
//! | `finetune` (either policy) | finetune | reject | reject | reject |
//! | `scratch` (either policy) | scratch | scratch | scratch | reject |
//!
//! A `scratch` request adds [`Reason::ForcedScratch`] and still reports the diff and any
//! blocking reasons, so the user sees what a fine-tune would have run into.
//! [`DecisionReport::fine_tunable`] answers "could the base be fine-tuned on this data?"
//! independently of the mode.
//!
//! # New vocabulary
//!
//! When the caller has the base version's vocabulary (the word tokens of its `vocab.json`), the
//! diff reports which share of the new data's distinct lowercase word tokens
//! ([`crate::tokens::word_tokens`]) the base has never seen. It never blocks fine-tuning.
//!
//! ## Layout
//! - `terms`: the report's vocabulary: [`LabelKind`], [`Reason`], [`LabelCount`]
//! - `diff`: [`LabelDiff`], the comparison of a base version with new data ([`LabelChanges`]
//!   per kind of label, [`VocabGrowth`])
//! - `render`: the report for people ([`DecisionReport::human`])
//!
//! [`LabelSet::of`]: crate::manifest::LabelSet::of

mod diff;
mod render;
mod terms;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use diff::{LabelChanges, LabelDiff, VocabGrowth};
pub use terms::{LabelCount, LabelKind, Reason};

use crate::data::{DataConflicts, TrainingData};
use crate::ids::Version;
use crate::job::Mode;
use crate::manifest::{ArchSpec, Manifest};

/// How many new words [`VocabGrowth::sample`] keeps at most.
pub const NEW_WORD_SAMPLE: usize = 20;

/// What to do when `auto` meets data that cannot be fine-tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Refuse the job; someone has to look at the label change.
    Reject,
    /// Train from scratch instead.
    Scratch,
}

impl Policy {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Reject => "reject",
            Policy::Scratch => "scratch",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(Policy::Reject),
            "scratch" => Ok(Policy::Scratch),
            other => Err(format!(
                "unknown policy {other:?}: expected reject or scratch"
            )),
        }
    }
}

/// The outcome of the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Continue training from the base version's weights.
    Finetune,
    /// Train new weights.
    Scratch,
    /// Do not run the job.
    Reject,
}

impl Decision {
    /// The lowercase name, as in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Finetune => "finetune",
            Decision::Scratch => "scratch",
            Decision::Reject => "reject",
        }
    }

    /// The mode the job message gets, or `None` for a rejected job.
    pub fn job_mode(self) -> Option<Mode> {
        match self {
            Decision::Finetune => Some(Mode::Finetune),
            Decision::Scratch => Some(Mode::Scratch),
            Decision::Reject => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything [`decide`] looks at. Training hyperparameters (epochs, batch size, learning rate,
/// seed) are deliberately not part of it: changing them never blocks fine-tuning.
#[derive(Clone, Copy, Debug)]
pub struct DecisionInput<'a> {
    /// What the user asked for.
    pub mode: Mode,
    /// What `auto` does when fine-tuning is not allowed.
    pub policy: Policy,
    /// The model's current version; `None` when it has none yet.
    pub base: Option<&'a Manifest>,
    /// The whole new training set.
    pub data: &'a TrainingData,
    /// The architecture the job would train.
    pub arch: &'a ArchSpec,
    /// The base version's word vocabulary, if at hand; without it the diff has no
    /// [`VocabGrowth`].
    pub base_vocabulary: Option<&'a BTreeSet<String>>,
}

/// An old and a new total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// The base version's; `None` when there is no base version.
    pub old: Option<u64>,
    /// The new data's.
    pub new: u64,
}

/// The decision with everything that explains it. Its JSON form ([`Self::to_json`]) is read by
/// scripts and the scheduler: field names and reason codes are stable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionReport {
    /// What happens to the job.
    pub decision: Decision,
    /// Whether the base version could be fine-tuned on this data with this architecture,
    /// whatever the mode asked for.
    pub fine_tunable: bool,
    /// The requested mode.
    pub mode: Mode,
    /// The policy in force.
    pub policy: Policy,
    /// The base version, if the model has one.
    pub base_version: Option<Version>,
    /// Why, in report order; empty for a plain fine-tune.
    pub reasons: Vec<Reason>,
    /// Training examples.
    pub examples: Totals,
    /// Entity mentions.
    pub entity_mentions: Totals,
    /// The comparison with the base version; `None` when there is none.
    pub diff: Option<LabelDiff>,
    /// Words the new data labels two ways. They never block fine-tuning, but a model learns
    /// both answers, so they are worth fixing. Left out of the JSON when there are none.
    #[serde(default, skip_serializing_if = "DataConflicts::is_empty")]
    pub conflicts: DataConflicts,
}

/// Decides whether a job may fine-tune, must train from scratch, or is rejected (see the
/// module docs for the rules and the mode × policy matrix).
///
/// ```
/// use refit_proto::ArchSpec;
/// use refit_proto::data::{Example, TrainingData};
/// use refit_proto::decision::{Decision, DecisionInput, Policy, decide};
/// use refit_proto::job::Mode;
///
/// let data = TrainingData {
///     examples: vec![Example { text: "hi".into(), intent: "greet".into(), entities: vec![] }],
///     ..Default::default()
/// };
/// let report = decide(&DecisionInput {
///     mode: Mode::Auto,
///     policy: Policy::Reject,
///     base: None, // the model has no version yet
///     data: &data,
///     arch: &ArchSpec::default(),
///     base_vocabulary: None,
/// });
/// assert_eq!(report.decision, Decision::Scratch);
/// assert_eq!(report.codes(), ["no_base_version"]);
/// ```
pub fn decide(input: &DecisionInput<'_>) -> DecisionReport {
    let DecisionInput {
        mode,
        policy,
        base,
        data,
        arch,
        base_vocabulary,
    } = *input;
    let diff = base.map(|base| LabelDiff::compute(base, data, arch, base_vocabulary));

    let mut reasons = Vec::new();
    let (decision, fine_tunable) = if data.is_empty() {
        // Nothing to train on; the other reasons would only be noise.
        reasons.push(Reason::EmptyDataset);
        (Decision::Reject, false)
    } else {
        if mode == Mode::Scratch {
            reasons.push(Reason::ForcedScratch);
        }
        match &diff {
            None => reasons.push(Reason::NoBaseVersion),
            Some(diff) => reasons.extend(diff.blocking_reasons()),
        }
        let fine_tunable = !reasons.iter().any(Reason::blocks_finetune);
        let decision = match (mode, fine_tunable) {
            (Mode::Scratch, _) => Decision::Scratch,
            (_, true) => Decision::Finetune,
            // An explicit finetune that cannot be honoured is never turned into a retrain.
            (Mode::Finetune, false) => Decision::Reject,
            // A first version can only be trained from scratch; the policy protects an
            // existing model's label set, and there is none yet.
            (Mode::Auto, false) if base.is_none() => Decision::Scratch,
            (Mode::Auto, false) => match policy {
                Policy::Reject => Decision::Reject,
                Policy::Scratch => Decision::Scratch,
            },
        };
        (decision, fine_tunable)
    };

    DecisionReport {
        decision,
        fine_tunable,
        mode,
        policy,
        base_version: base.map(|base| base.version),
        reasons,
        examples: Totals {
            old: base.map(|base| base.data.examples),
            new: data.len() as u64,
        },
        entity_mentions: Totals {
            old: base.map(|base| base.data.counts.entities.values().sum::<usize>() as u64),
            new: data.entity_mentions() as u64,
        },
        diff,
        conflicts: DataConflicts::find(data),
    }
}

impl DecisionReport {
    /// Pretty JSON, for `--output json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a DecisionReport always serialises")
    }

    /// Reads a report written by [`Self::to_json`].
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The reasons' machine codes, in order.
    pub fn codes(&self) -> Vec<&'static str> {
        self.reasons.iter().map(Reason::code).collect()
    }

    /// The report for people, as printed by the CLI (same as `Display`).
    pub fn human(&self) -> String {
        self.to_string()
    }
}
