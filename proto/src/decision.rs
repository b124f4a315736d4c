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
//! diff reports which share of the new data's distinct lowercase word tokens ([`word_tokens`])
//! the base has never seen. It never blocks fine-tuning.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::{DataConflicts, EntityConflict, MAX_LISTED, TrainingData};
use crate::ids::Version;
use crate::job::Mode;
use crate::manifest::{ArchSpec, LabelSet, Manifest};

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

/// The lowercase word tokens of `text`, in order, repeats kept: maximal runs of word characters
/// (alphanumeric or `_`), joined across an apostrophe that has a word character on both sides —
/// the regex `\w+(?:'\w+)*` on the lowercased text. `"Don't pay Zoë's bill!"` gives `don't`,
/// `pay`, `zoë's`, `bill`.
pub fn word_tokens(text: &str) -> Vec<String> {
    fn is_word(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut chars = lower.chars().peekable();
    while let Some(c) = chars.next() {
        // An apostrophe belongs to a word only between two word characters.
        let inner_apostrophe =
            c == '\'' && !current.is_empty() && chars.peek().is_some_and(|&n| is_word(n));
        if is_word(c) || inner_apostrophe {
            current.push(c);
        } else if !current.is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
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

    fn headline(&self) -> String {
        let has = |r: &Reason| self.reasons.contains(r);
        match self.decision {
            Decision::Finetune => match self.base_version {
                Some(version) => format!("from {version}"),
                None => "fine-tunable".to_owned(),
            },
            Decision::Scratch if has(&Reason::ForcedScratch) => "scratch requested".to_owned(),
            Decision::Scratch if has(&Reason::NoBaseVersion) => "no base version".to_owned(),
            Decision::Scratch => format!("not fine-tunable, policy {}", self.policy),
            Decision::Reject if has(&Reason::EmptyDataset) => "empty dataset".to_owned(),
            Decision::Reject if self.mode == Mode::Finetune => {
                "finetune requested but not fine-tunable".to_owned()
            }
            Decision::Reject => "not fine-tunable".to_owned(),
        }
    }
}

impl fmt::Display for DecisionReport {
    /// Lines like:
    ///
    /// ```text
    /// decision: reject (not fine-tunable)
    ///   intents removed (1): check_balance
    ///   entity types added (1): iban
    /// examples: 367 -> 359 (-8)
    /// new vocabulary: 12 of 462 words (2.6%), e.g. "zelle", "venmo", ...
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_decision(f)?;
        fmt_conflicts(&self.conflicts, f)
    }
}

impl DecisionReport {
    fn fmt_decision(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decision: {} ({})", self.decision, self.headline())?;
        for reason in &self.reasons {
            // The headline already says that scratch was requested.
            if *reason != Reason::ForcedScratch {
                write!(f, "\n  {reason}")?;
            }
        }
        let Some(diff) = &self.diff else {
            return write!(f, "\nexamples: {}", self.examples.new);
        };
        if diff.labels_unchanged() {
            write!(f, "\nlabels: unchanged (")?;
            for (i, kind) in LabelKind::ALL.into_iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let n = diff.labels(kind).new_label_count();
                write!(f, "{sep}{} {n}", kind.plural())?;
            }
            f.write_str(")")?;
        }
        let old = self.examples.old.unwrap_or(0);
        let new = self.examples.new;
        write!(
            f,
            "\nexamples: {old} -> {new} ({:+})",
            new as i64 - old as i64
        )?;
        let changed: Vec<String> = diff
            .intents
            .counts
            .iter()
            .filter(|c| c.delta() != 0)
            .map(|c| format!("{} {:+}", display_name(&c.label), c.delta()))
            .collect();
        if !changed.is_empty() {
            write!(f, "\n  per intent: {}", changed.join(", "))?;
        }
        match &diff.vocabulary {
            None => f.write_str("\nnew vocabulary: not checked (no base vocabulary)"),
            Some(vocab) if vocab.new_words == 0 => {
                write!(f, "\nnew vocabulary: none ({} words)", vocab.words)
            }
            Some(vocab) => {
                const SHOWN: usize = 8;
                write!(
                    f,
                    "\nnew vocabulary: {} of {} words ({:.1}%), e.g. ",
                    vocab.new_words,
                    vocab.words,
                    vocab.fraction * 100.0
                )?;
                let shown: Vec<String> = vocab
                    .sample
                    .iter()
                    .take(SHOWN)
                    .map(|w| format!("{w:?}"))
                    .collect();
                f.write_str(&shown.join(", "))?;
                if vocab.new_words > shown.len() {
                    f.write_str(", ...")?;
                }
                Ok(())
            }
        }
    }
}

/// Lines like:
///
/// ```text
/// annotation conflicts (2 word sequences labelled two ways; a model learns both):
///   "percy": PERSON in 1 example (e.g. "Pay Percy $50"), not annotated in 2 (e.g. "Percy please")
///   "discover": credit_card in 2 (e.g. "pay my discover"), account_type in 1 (e.g. ...)
/// intent conflicts (1 text under two or more intents):
///   "yes please": affirm, inform
/// ```
fn fmt_conflicts(conflicts: &DataConflicts, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let n = conflicts.entity_count;
    fmt_section(
        f,
        &format!(
            "annotation conflicts ({n} word sequence{} labelled two ways; a model learns both)",
            plural(n)
        ),
        n,
        conflicts.entities.iter().map(entity_conflict_line),
    )?;
    let n = conflicts.intent_count;
    fmt_section(
        f,
        &format!(
            "intent conflicts ({n} text{} under two or more intents)",
            plural(n)
        ),
        n,
        conflicts
            .intents
            .iter()
            .map(|c| format!("{:?}: {}", c.words, name_list(&c.intents))),
    )
}

/// `title:` and up to ten of `lines`, indented, then how many of `total` are not shown;
/// nothing when `total` is 0.
fn fmt_section(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    total: usize,
    lines: impl Iterator<Item = String>,
) -> fmt::Result {
    const SHOWN: usize = 10;
    if total == 0 {
        return Ok(());
    }
    write!(f, "\n{title}:")?;
    for line in lines.take(SHOWN) {
        write!(f, "\n  {line}")?;
    }
    if total > SHOWN {
        write!(
            f,
            "\n  ... and {} more (--output json lists up to {MAX_LISTED})",
            total - SHOWN
        )?;
    }
    Ok(())
}

/// `"percy": not annotated in 2 examples (e.g. "Percy please"), PERSON in 1 (e.g. "...")`.
fn entity_conflict_line(conflict: &EntityConflict) -> String {
    let labels: Vec<String> = conflict
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let what = match &label.entity {
                Some(entity) => display_name(entity),
                None => "not annotated".to_owned(),
            };
            // Only the first count names its unit.
            let unit = match (i, label.examples) {
                (0, 1) => " example",
                (0, _) => " examples",
                _ => "",
            };
            format!(
                "{what} in {}{unit} (e.g. {:?})",
                label.examples,
                shorten(&label.example)
            )
        })
        .collect();
    format!("{:?}: {}", conflict.words, labels.join(", "))
}

/// A text cut to 60 characters (`...` marks the cut), for one-line reports.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX - 3).collect();
        format!("{cut}...")
    }
}

/// Names joined by `", "`. A name that could be misread in that list (empty, or with
/// characters other than letters, digits and `_-./:`) is quoted, so every label reads exactly.
fn name_list(names: &[String]) -> String {
    names
        .iter()
        .map(|name| display_name(name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-./:".contains(c));
    if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::data::{Entity, Example};
    use crate::ids::ModelName;
    use crate::manifest::FeaturizerSpec;

    fn ex(text: &str, intent: &str) -> Example {
        Example {
            text: text.into(),
            intent: intent.into(),
            entities: vec![],
        }
    }

    fn entity(start: usize, end: usize, ty: &str) -> Entity {
        Entity {
            start,
            end,
            entity: ty.into(),
            value: None,
            role: None,
            group: None,
        }
    }

    fn data(examples: Vec<Example>) -> TrainingData {
        TrainingData {
            examples,
            ..Default::default()
        }
    }

    /// greet ×2, check_balance ×2 (one `account_type` mention), goodbye ×1.
    fn base_data() -> TrainingData {
        let mut balance = ex("what is my credit balance", "check_balance");
        balance.entities.push(entity(11, 17, "account_type"));
        data(vec![
            ex("hello", "greet"),
            ex("hi there", "greet"),
            balance,
            ex("how much money do I have", "check_balance"),
            ex("bye", "goodbye"),
        ])
    }

    fn manifest_for(data: &TrainingData, arch: ArchSpec) -> Manifest {
        let mut manifest = Manifest::for_data(
            ModelName::new("financial").unwrap(),
            Version::new(3).unwrap(),
            data,
            arch,
        );
        manifest.epochs = 100.0;
        manifest.created_at = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        manifest
    }

    fn vocab_of(data: &TrainingData) -> BTreeSet<String> {
        data.examples
            .iter()
            .flat_map(|e| word_tokens(&e.text))
            .collect()
    }

    fn run(
        mode: Mode,
        policy: Policy,
        base: Option<&Manifest>,
        data: &TrainingData,
    ) -> DecisionReport {
        decide(&DecisionInput {
            mode,
            policy,
            base,
            data,
            arch: &ArchSpec::default(),
            base_vocabulary: None,
        })
    }

    const MODES: [Mode; 3] = [Mode::Auto, Mode::Finetune, Mode::Scratch];
    const POLICIES: [Policy; 2] = [Policy::Reject, Policy::Scratch];

    #[test]
    fn word_tokens_follow_the_word_regex() {
        assert_eq!(
            word_tokens("Don't pay Zoë's bill!"),
            ["don't", "pay", "zoë's", "bill"]
        );
        assert_eq!(
            word_tokens("'tis a''b it' rock'n'roll $1,200.50 snake_case"),
            [
                "tis",
                "a",
                "b",
                "it",
                "rock'n'roll",
                "1",
                "200",
                "50",
                "snake_case"
            ]
        );
        assert!(word_tokens("  ?! ' ").is_empty());
        assert_eq!(word_tokens("ÜBERWEISUNG"), ["überweisung"]);
    }

    #[test]
    fn only_examples_added_or_removed_is_finetune() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut new = old.clone();
        new.examples.remove(1); // one greet fewer
        new.examples
            .push(ex("what's in my account", "check_balance"));
        new.examples.push(ex("see you", "goodbye"));
        for mode in [Mode::Auto, Mode::Finetune] {
            for policy in POLICIES {
                let report = run(mode, policy, Some(&base), &new);
                assert_eq!(report.decision, Decision::Finetune, "{mode} {policy}");
                assert!(report.fine_tunable);
                assert!(report.reasons.is_empty());
            }
        }
        let report = run(Mode::Auto, Policy::Reject, Some(&base), &new);
        let diff = report.diff.as_ref().unwrap();
        assert!(diff.labels_unchanged() && diff.arch_changed.is_empty());
        let row = |label: &str, old, new| LabelCount {
            label: label.into(),
            old,
            new,
        };
        assert_eq!(
            diff.intents.counts,
            [
                row("check_balance", 2, 3),
                row("goodbye", 1, 2),
                row("greet", 2, 1)
            ]
        );
        assert_eq!(diff.entities.counts, [row("account_type", 1, 1)]);
        assert_eq!(
            report.examples,
            Totals {
                old: Some(5),
                new: 6
            }
        );
        assert_eq!(report.base_version, Some(Version::new(3).unwrap()));
        assert_eq!(report.decision.job_mode(), Some(Mode::Finetune));
    }

    #[test]
    fn new_words_are_finetune_and_reported() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let vocab = vocab_of(&old);
        let mut new = old.clone();
        new.examples.push(ex("Hello Zelle, hello VENMO", "greet"));
        let report = decide(&DecisionInput {
            mode: Mode::Auto,
            policy: Policy::Reject,
            base: Some(&base),
            data: &new,
            arch: &ArchSpec::default(),
            base_vocabulary: Some(&vocab),
        });
        assert_eq!(report.decision, Decision::Finetune);
        let growth = report.diff.as_ref().unwrap().vocabulary.clone().unwrap();
        // Base words: hello hi there what is my credit balance how much money do i have bye.
        assert_eq!(growth.words, 17);
        assert_eq!(growth.new_words, 2);
        assert_eq!(growth.sample, ["zelle", "venmo"]);
        assert_eq!(growth.fraction, 0.117647);
        assert!(
            report
                .human()
                .contains(r#"new vocabulary: 2 of 17 words (11.8%), e.g. "zelle", "venmo""#),
            "{}",
            report.human()
        );
    }

    #[test]
    fn vocabulary_sample_is_capped() {
        let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
        let growth = VocabGrowth::compute(&data(vec![ex(&words.join(" "), "x")]), &BTreeSet::new());
        assert_eq!(growth.new_words, 30);
        assert_eq!(growth.sample.len(), NEW_WORD_SAMPLE);
        assert_eq!(growth.sample[..2], ["w0", "w1"]);
        assert_eq!(growth.fraction, 1.0);
        let empty = VocabGrowth::compute(&TrainingData::default(), &BTreeSet::new());
        assert_eq!((empty.words, empty.fraction), (0, 0.0));
    }

    #[test]
    fn intent_removed_follows_policy_in_auto() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut new = old.clone();
        new.examples.retain(|e| e.intent != "goodbye");
        let expected = vec![Reason::LabelsRemoved {
            kind: LabelKind::Intent,
            labels: vec!["goodbye".into()],
        }];
        let reject = run(Mode::Auto, Policy::Reject, Some(&base), &new);
        assert_eq!(reject.decision, Decision::Reject);
        assert!(!reject.fine_tunable);
        assert_eq!(reject.reasons, expected);
        let scratch = run(Mode::Auto, Policy::Scratch, Some(&base), &new);
        assert_eq!(scratch.decision, Decision::Scratch);
        assert_eq!(scratch.reasons, expected);
        assert!(
            reject.human().starts_with(
                "decision: reject (not fine-tunable)\n  intents removed (1): goodbye\n"
            ),
            "{}",
            reject.human()
        );
    }

    #[test]
    fn every_kind_of_label_change_is_named() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut new = old.clone();
        new.examples.retain(|e| e.intent != "greet");
        let mut transfer = ex("send 5 from checking to savings", "transfer_money");
        transfer.entities = vec![
            Entity {
                role: Some("from".into()),
                group: Some("1".into()),
                ..entity(12, 20, "account")
            },
            Entity {
                role: Some("to".into()),
                group: Some("1".into()),
                ..entity(24, 31, "account")
            },
        ];
        new.examples.push(transfer);
        // Drop the only account_type mention.
        new.examples[0].entities.clear();
        let report = run(Mode::Auto, Policy::Scratch, Some(&base), &new);
        assert_eq!(report.decision, Decision::Scratch);
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            report.reasons,
            [
                Reason::LabelsAdded {
                    kind: LabelKind::Intent,
                    labels: strings(&["transfer_money"])
                },
                Reason::LabelsRemoved {
                    kind: LabelKind::Intent,
                    labels: strings(&["greet"])
                },
                Reason::LabelsAdded {
                    kind: LabelKind::Entity,
                    labels: strings(&["account"])
                },
                Reason::LabelsRemoved {
                    kind: LabelKind::Entity,
                    labels: strings(&["account_type"])
                },
                Reason::LabelsAdded {
                    kind: LabelKind::Role,
                    labels: strings(&["from", "to"])
                },
                Reason::LabelsAdded {
                    kind: LabelKind::Group,
                    labels: strings(&["1"])
                },
            ]
        );
        let human = report.human();
        for line in [
            "decision: scratch (not fine-tunable, policy scratch)",
            "  intents added (1): transfer_money",
            "  intents removed (1): greet",
            "  entity types added (1): account",
            "  entity types removed (1): account_type",
            "  roles added (2): from, to",
            "  groups added (1): 1",
        ] {
            assert!(human.lines().any(|l| l == line), "{line:?} in\n{human}");
        }
        let diff = report.diff.unwrap();
        assert_eq!(
            diff.roles.counts,
            [
                LabelCount {
                    label: "from".into(),
                    old: 0,
                    new: 1
                },
                LabelCount {
                    label: "to".into(),
                    old: 0,
                    new: 1
                }
            ]
        );
    }

    #[test]
    fn odd_label_names_are_quoted() {
        let reason = Reason::LabelsAdded {
            kind: LabelKind::Intent,
            labels: vec!["faq/ask_x".into(), "a, b".into(), String::new()],
        };
        assert_eq!(
            reason.to_string(),
            r#"intents added (3): faq/ask_x, "a, b", """#
        );
    }

    #[test]
    fn architecture_change_blocks_and_names_fields() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let arch = ArchSpec {
            embed_dim: 64,
            featurizer: FeaturizerSpec {
                char_ngram_max: 5,
                ..FeaturizerSpec::default()
            },
            ..ArchSpec::default()
        };
        let input = |mode, policy| DecisionInput {
            mode,
            policy,
            base: Some(&base),
            data: &old,
            arch: &arch,
            base_vocabulary: None,
        };
        let expected = [Reason::ArchChanged {
            fields: vec!["embed_dim".into(), "featurizer.char_ngram_max".into()],
        }];
        let report = decide(&input(Mode::Auto, Policy::Reject));
        assert_eq!(report.decision, Decision::Reject);
        assert_eq!(report.reasons, expected);
        assert!(
            report
                .human()
                .contains("\n  architecture changed (2): embed_dim, featurizer.char_ngram_max\n")
        );
        assert_eq!(
            decide(&input(Mode::Auto, Policy::Scratch)).decision,
            Decision::Scratch
        );
        assert_eq!(
            decide(&input(Mode::Finetune, Policy::Scratch)).decision,
            Decision::Reject
        );
    }

    #[test]
    fn unspelled_defaults_and_stale_fingerprints_are_not_changes() {
        let old = base_data();
        let mut base = manifest_for(&old, ArchSpec::default());
        let from_empty: ArchSpec = serde_json::from_str("{}").unwrap();
        let report = decide(&DecisionInput {
            mode: Mode::Auto,
            policy: Policy::Reject,
            base: Some(&base),
            data: &old,
            arch: &from_empty,
            base_vocabulary: None,
        });
        assert_eq!(report.decision, Decision::Finetune);
        // A fingerprint written by a build with another field set: equal values still match.
        base.arch_fingerprint = "sha256:older".into();
        let diff = LabelDiff::compute(&base, &old, &from_empty, None);
        assert!(diff.arch_changed.is_empty());
    }

    #[test]
    fn explicit_finetune_that_is_impossible_is_rejected_whatever_the_policy() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut new = old.clone();
        new.examples.push(ex("iban please", "ask_iban"));
        for policy in POLICIES {
            let report = run(Mode::Finetune, policy, Some(&base), &new);
            assert_eq!(report.decision, Decision::Reject, "{policy}");
            assert_eq!(report.codes(), ["labels_added"]);
            assert!(
                report
                    .human()
                    .starts_with("decision: reject (finetune requested but not fine-tunable)")
            );
        }
    }

    #[test]
    fn scratch_mode_always_trains_from_scratch_and_still_diffs() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut changed = old.clone();
        changed.examples.push(ex("iban please", "ask_iban"));
        for policy in POLICIES {
            let same = run(Mode::Scratch, policy, Some(&base), &old);
            assert_eq!(same.decision, Decision::Scratch);
            assert!(same.fine_tunable);
            assert_eq!(same.codes(), ["forced_scratch"]);
            assert!(
                same.human()
                    .starts_with("decision: scratch (scratch requested)\n")
            );

            let report = run(Mode::Scratch, policy, Some(&base), &changed);
            assert_eq!(report.decision, Decision::Scratch);
            assert!(!report.fine_tunable);
            assert_eq!(report.codes(), ["forced_scratch", "labels_added"]);
            assert_eq!(report.diff.unwrap().intents.added, ["ask_iban"]);

            let first = run(Mode::Scratch, policy, None, &old);
            assert_eq!(first.decision, Decision::Scratch);
            assert_eq!(first.codes(), ["forced_scratch", "no_base_version"]);
        }
    }

    #[test]
    fn no_base_version_trains_from_scratch_unless_finetune_was_demanded() {
        let new = base_data();
        for policy in POLICIES {
            let auto = run(Mode::Auto, policy, None, &new);
            assert_eq!(auto.decision, Decision::Scratch, "{policy}");
            assert!(!auto.fine_tunable);
            assert_eq!(auto.reasons, [Reason::NoBaseVersion]);
            assert_eq!(auto.diff, None);
            assert_eq!(auto.base_version, None);
            assert_eq!(auto.examples, Totals { old: None, new: 5 });
            assert_eq!(auto.entity_mentions, Totals { old: None, new: 1 });
            assert_eq!(
                auto.human(),
                "decision: scratch (no base version)\n  the model has no version yet\nexamples: 5"
            );

            let finetune = run(Mode::Finetune, policy, None, &new);
            assert_eq!(finetune.decision, Decision::Reject, "{policy}");
            assert_eq!(finetune.reasons, [Reason::NoBaseVersion]);
            assert_eq!(finetune.decision.job_mode(), None);
        }
    }

    #[test]
    fn empty_dataset_is_always_rejected() {
        let base = manifest_for(&base_data(), ArchSpec::default());
        let empty = TrainingData::default();
        for mode in MODES {
            for policy in POLICIES {
                for base in [Some(&base), None] {
                    let report = run(mode, policy, base, &empty);
                    assert_eq!(report.decision, Decision::Reject, "{mode} {policy}");
                    assert!(!report.fine_tunable);
                    assert_eq!(report.reasons, [Reason::EmptyDataset]);
                    assert!(
                        report
                            .human()
                            .starts_with("decision: reject (empty dataset)\n")
                    );
                }
            }
        }
    }

    #[test]
    fn human_report_of_a_finetune() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut new = old.clone();
        new.examples.push(ex("hey", "greet"));
        new.examples.push(ex("yo", "greet"));
        new.examples.retain(|e| e.text != "bye");
        new.examples.push(ex("ciao", "goodbye"));
        let report = run(Mode::Auto, Policy::Reject, Some(&base), &new);
        assert_eq!(
            report.human(),
            "decision: finetune (from v3)\n\
             labels: unchanged (intents 3, entity types 1, roles 0, groups 0)\n\
             examples: 5 -> 7 (+2)\n  per intent: greet +2\n\
             new vocabulary: not checked (no base vocabulary)"
        );
    }

    #[test]
    fn json_report_round_trips_with_stable_codes() {
        let old = base_data();
        let base = manifest_for(&old, ArchSpec::default());
        let mut new = old.clone();
        new.examples.retain(|e| e.intent != "goodbye");
        let vocab = vocab_of(&old);
        let report = decide(&DecisionInput {
            mode: Mode::Scratch,
            policy: Policy::Reject,
            base: Some(&base),
            data: &new,
            arch: &ArchSpec::default(),
            base_vocabulary: Some(&vocab),
        });
        let json = report.to_json();
        assert_eq!(DecisionReport::from_json(&json).unwrap(), report);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["decision"], "scratch");
        assert_eq!(value["mode"], "scratch");
        assert_eq!(value["policy"], "reject");
        assert_eq!(value["base_version"], 3);
        assert_eq!(value["fine_tunable"], false);
        assert_eq!(
            value["reasons"],
            serde_json::json!([
                {"code": "forced_scratch"},
                {"code": "labels_removed", "kind": "intent", "labels": ["goodbye"]},
            ])
        );
        assert_eq!(
            value["diff"]["intents"]["removed"],
            serde_json::json!(["goodbye"])
        );
        assert_eq!(value["diff"]["vocabulary"]["new_words"], 0);
        assert_eq!(value["examples"], serde_json::json!({"old": 5, "new": 4}));
    }

    #[test]
    fn policy_and_decision_names() {
        for policy in POLICIES {
            assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
            assert_eq!(
                serde_json::to_value(policy).unwrap(),
                serde_json::Value::from(policy.as_str())
            );
        }
        assert!("Reject".parse::<Policy>().is_err());
        for decision in [Decision::Finetune, Decision::Scratch, Decision::Reject] {
            assert_eq!(
                serde_json::to_value(decision).unwrap(),
                serde_json::Value::from(decision.as_str())
            );
        }
        for reason in [
            Reason::EmptyDataset,
            Reason::NoBaseVersion,
            Reason::ForcedScratch,
            Reason::ArchChanged { fields: vec![] },
        ] {
            assert_eq!(
                serde_json::to_value(&reason).unwrap()["code"],
                reason.code()
            );
        }
    }
}
