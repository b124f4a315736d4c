//! Evaluation reports stored with versions (`evaluation.json`), and comparisons between two
//! versions evaluated on the same data.
//!
//! - [`evaluate`] scores predictions against gold examples the way `rasa test nlu` does
//!   ([`EvaluationReport`]: per-label precision/recall/F1, confusions, exact-span entities) and
//!   [`outcomes`] records, example by example, what the model got right.
//! - [`Evaluation`] is the file a worker stores with a version trained with eval data: the report,
//!   the per-example outcomes, and [`Comparison`]s against the version's parent and against the
//!   version the job's target alias pointed at, each evaluated by the same worker on the same data
//!   in the same job.
//! - [`compare`] builds a [`Comparison`] from two evaluations of the same data: the metric deltas,
//!   per-label F1/recall deltas, and the **negative flips** (examples the older version got right
//!   and the newer gets wrong) and positive flips. Because the outcomes are stored, any two
//!   versions evaluated on the same data can be compared later without running either model.

mod report;

use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::ids::{ModelName, Version};
use crate::job::DatasetRef;
use crate::manifest::Metrics;

pub use report::{
    Confusion, EntityReport, EvaluationReport, IntentReport, LabelScores, Prediction, evaluate,
    outcomes,
};

/// The `evaluation.json` format this build writes.
pub const EVALUATION_FORMAT: u32 = 1;

/// Flipped examples a comparison lists (the counts cover all of them).
pub const FLIPS_SHOWN: usize = 25;

/// What a model got right, example by example, in the eval data's order: two strings of `1`
/// (right) and `0` (wrong), one character per example.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Whether the top intent was right.
    pub intent: String,
    /// Whether the entities were exactly right (every gold mention found, nothing else).
    pub entities: String,
}

impl Outcomes {
    /// Appends one example's outcome.
    pub fn push(&mut self, intent: bool, entities: bool) {
        self.intent.push(if intent { '1' } else { '0' });
        self.entities.push(if entities { '1' } else { '0' });
    }

    /// How many examples.
    pub fn len(&self) -> usize {
        self.intent.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.intent.is_empty()
    }

    /// `(intent right, entities right)` per example; `None` when the two strings differ in length
    /// or hold anything but `0` and `1` (a damaged file).
    fn pairs(&self) -> Option<Vec<(bool, bool)>> {
        let bit = |c: u8| match c {
            b'1' => Some(true),
            b'0' => Some(false),
            _ => None,
        };
        if self.intent.len() != self.entities.len() {
            return None;
        }
        self.intent
            .bytes()
            .zip(self.entities.bytes())
            .map(|(i, e)| Some((bit(i)?, bit(e)?)))
            .collect()
    }
}

/// `evaluation.json`: a version's quality on its job's eval data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// [`EVALUATION_FORMAT`].
    pub format: u32,
    /// The model.
    pub model: ModelName,
    /// The version evaluated.
    pub version: Version,
    /// The eval data (its key and sha256).
    pub data: DatasetRef,
    /// The scores.
    pub report: EvaluationReport,
    /// Example by example, what it got right.
    pub outcomes: Outcomes,
    /// Against the parent and the target alias's version, evaluated in the same job.
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
}

impl Evaluation {
    /// The stored comparison against `version`, if the job made one.
    pub fn comparison_with(&self, version: Version) -> Option<&Comparison> {
        self.comparisons.iter().find(|c| c.before == version)
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an Evaluation always serialises")
    }

    /// Reads a stored `evaluation.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A newer version against an older one, on the same eval data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The older version.
    pub before: Version,
    /// The newer version (the candidate).
    pub after: Version,
    /// What the older version is to the newer: `parent`, `alias prod`, or empty for an ad-hoc
    /// comparison.
    #[serde(default)]
    pub roles: Vec<String>,
    /// sha256 of the eval data both were scored on.
    pub data_sha256: String,
    /// The older version's scores.
    pub metrics_before: Metrics,
    /// The newer version's scores.
    pub metrics_after: Metrics,
    /// After minus before, per headline metric.
    pub deltas: Deltas,
    /// Per intent (either version's labels), sorted by label.
    pub intents: Vec<LabelDelta>,
    /// Per entity type, sorted by type.
    pub entities: Vec<LabelDelta>,
    /// Examples the older version got right and the newer gets wrong.
    pub negative_flips: Flips,
    /// Examples the older version got wrong and the newer gets right.
    pub positive_flips: Flips,
}

/// After minus before.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deltas {
    /// Intent accuracy.
    pub intent_accuracy: f64,
    /// Intent macro-F1.
    pub intent_macro_f1: f64,
    /// Intent weighted-F1.
    pub intent_weighted_f1: f64,
    /// Exact-span entity precision.
    pub entity_precision: f64,
    /// Exact-span entity recall.
    pub entity_recall: f64,
    /// Exact-span entity F1.
    pub entity_f1: f64,
}

/// One label's scores before and after (0 where a version lacks the label).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelDelta {
    /// The intent or entity type.
    pub label: String,
    /// Gold occurrences in the eval data.
    pub support: usize,
    /// F1 before.
    pub f1_before: f64,
    /// F1 after.
    pub f1_after: f64,
    /// Recall before.
    pub recall_before: f64,
    /// Recall after.
    pub recall_after: f64,
}

impl LabelDelta {
    /// F1 after minus before.
    pub fn f1_delta(&self) -> f64 {
        self.f1_after - self.f1_before
    }

    /// Recall after minus before.
    pub fn recall_delta(&self) -> f64 {
        self.recall_after - self.recall_before
    }
}

/// Examples whose outcome changed one way.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flips {
    /// Examples (intent and entities taken together: right means both right).
    pub examples: usize,
    /// `examples` over the eval data's size.
    pub rate: f64,
    /// Of them, those whose intent flipped.
    pub intent: usize,
    /// Of them, those whose entities flipped.
    pub entities: usize,
    /// The first [`FLIPS_SHOWN`], in data order.
    #[serde(default)]
    pub shown: Vec<Flip>,
}

/// One flipped example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// Its position in the eval data.
    pub index: usize,
    /// What flipped: `intent`, `entities` or `both`.
    pub flipped: String,
    /// Its text (when the comparison was made with the data at hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Its gold intent (likewise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// Why two evaluations cannot be compared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    /// Scored on different data.
    #[error(
        "{before} and {after} were evaluated on different data ({before_sha:.12}… and {after_sha:.12}…)"
    )]
    DifferentData {
        /// The older version.
        before: Version,
        /// The newer version.
        after: Version,
        /// sha256 of the older one's eval data.
        before_sha: String,
        /// sha256 of the newer one's eval data.
        after_sha: String,
    },
    /// Outcomes that do not fit the data (a damaged or hand-edited file).
    #[error("the per-example outcomes of {0} are damaged")]
    Damaged(Version),
}

/// Compares `after` with `before`, both evaluated on the same data. `gold` (that data, in the
/// order it was evaluated) adds the texts and gold intents of the flips shown.
pub fn compare(
    after: &Evaluation,
    before: &Evaluation,
    roles: Vec<String>,
    gold: Option<&[Example]>,
) -> Result<Comparison, CompareError> {
    if after.data.sha256 != before.data.sha256 {
        return Err(CompareError::DifferentData {
            before: before.version,
            after: after.version,
            before_sha: before.data.sha256.clone(),
            after_sha: after.data.sha256.clone(),
        });
    }
    let old = before
        .outcomes
        .pairs()
        .ok_or(CompareError::Damaged(before.version))?;
    let new = after
        .outcomes
        .pairs()
        .ok_or(CompareError::Damaged(after.version))?;
    if old.len() != new.len() || gold.is_some_and(|g| g.len() != new.len()) {
        return Err(CompareError::Damaged(after.version));
    }
    let (a, b) = (after.report.to_metrics(), before.report.to_metrics());
    Ok(Comparison {
        before: before.version,
        after: after.version,
        roles,
        data_sha256: after.data.sha256.clone(),
        deltas: Deltas {
            intent_accuracy: a.intent_accuracy - b.intent_accuracy,
            intent_macro_f1: a.intent_macro_f1 - b.intent_macro_f1,
            intent_weighted_f1: a.intent_weighted_f1 - b.intent_weighted_f1,
            entity_precision: a.entity_precision - b.entity_precision,
            entity_recall: a.entity_recall - b.entity_recall,
            entity_f1: a.entity_f1 - b.entity_f1,
        },
        metrics_before: b,
        metrics_after: a,
        intents: label_deltas(&before.report.intent.labels, &after.report.intent.labels),
        entities: label_deltas(&before.report.entity.types, &after.report.entity.types),
        negative_flips: flips(&old, &new, gold),
        positive_flips: flips(&new, &old, gold),
    })
}

/// Per label of either side, sorted by label.
fn label_deltas(before: &[LabelScores], after: &[LabelScores]) -> Vec<LabelDelta> {
    let mut out: std::collections::BTreeMap<&str, LabelDelta> = std::collections::BTreeMap::new();
    let blank = |label: &str| LabelDelta {
        label: label.to_owned(),
        support: 0,
        f1_before: 0.0,
        f1_after: 0.0,
        recall_before: 0.0,
        recall_after: 0.0,
    };
    for s in before {
        let d = out.entry(&s.label).or_insert_with(|| blank(&s.label));
        d.support = d.support.max(s.support);
        d.f1_before = s.f1;
        d.recall_before = s.recall;
    }
    for s in after {
        let d = out.entry(&s.label).or_insert_with(|| blank(&s.label));
        d.support = d.support.max(s.support);
        d.f1_after = s.f1;
        d.recall_after = s.recall;
    }
    out.into_values().collect()
}

/// Examples right in `was` (intent and entities) and not in `now`.
fn flips(was: &[(bool, bool)], now: &[(bool, bool)], gold: Option<&[Example]>) -> Flips {
    let mut out = Flips::default();
    for (index, (&(wi, we), &(ni, ne))) in was.iter().zip(now).enumerate() {
        if !(wi && we) || (ni && ne) {
            continue;
        }
        out.examples += 1;
        let (intent, entities) = (!ni, !ne);
        out.intent += usize::from(intent);
        out.entities += usize::from(entities);
        if out.shown.len() < FLIPS_SHOWN {
            let example = gold.and_then(|g| g.get(index));
            out.shown.push(Flip {
                index,
                flipped: match (intent, entities) {
                    (true, true) => "both",
                    (true, false) => "intent",
                    _ => "entities",
                }
                .to_owned(),
                text: example.map(|e| e.text.clone()),
                intent: example.map(|e| e.intent.clone()),
            });
        }
    }
    out.rate = if was.is_empty() {
        0.0
    } else {
        out.examples as f64 / was.len() as f64
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Entity;

    fn example(text: &str, intent: &str, entities: &[(usize, usize, &str)]) -> Example {
        Example {
            text: text.to_owned(),
            intent: intent.to_owned(),
            entities: entities
                .iter()
                .map(|&(start, end, entity)| Entity {
                    start,
                    end,
                    entity: entity.to_owned(),
                    value: None,
                    role: None,
                    group: None,
                })
                .collect(),
        }
    }

    fn prediction(intent: &str, entities: &[(usize, usize, &str)]) -> Prediction {
        let e = example("", intent, entities);
        Prediction {
            intent: e.intent,
            confidence: 0.9,
            entities: e.entities,
        }
    }

    fn gold() -> Vec<Example> {
        vec![
            example("hi", "greet", &[]),
            example("pay bob", "transfer", &[(4, 7, "name")]),
            example("bye", "goodbye", &[]),
            example("pay ann", "transfer", &[(4, 7, "name")]),
        ]
    }

    fn evaluation(version: u32, predictions: &[Prediction]) -> Evaluation {
        let gold = gold();
        Evaluation {
            format: EVALUATION_FORMAT,
            model: ModelName::new("m").unwrap(),
            version: Version::new(version).unwrap(),
            data: DatasetRef {
                key: "datasets/sha256/ab.yml".into(),
                sha256: "ab".into(),
            },
            report: evaluate(&gold, predictions),
            outcomes: outcomes(&gold, predictions),
            comparisons: Vec::new(),
        }
    }

    #[test]
    fn outcomes_need_every_mention_and_nothing_else() {
        let gold = gold();
        let got = outcomes(
            &gold,
            &[
                prediction("greet", &[(0, 2, "name")]),
                prediction("transfer", &[(4, 7, "name")]),
                prediction("greet", &[]),
                prediction("transfer", &[]),
            ],
        );
        assert_eq!(got.intent, "1101");
        assert_eq!(got.entities, "0110");
    }

    #[test]
    fn negative_and_positive_flips_are_counted_both_ways() {
        let v1 = evaluation(
            1,
            &[
                prediction("greet", &[]),
                prediction("transfer", &[(4, 7, "name")]),
                prediction("greet", &[]),
                prediction("transfer", &[(4, 7, "name")]),
            ],
        );
        let v2 = evaluation(
            2,
            &[
                prediction("goodbye", &[]),
                prediction("transfer", &[]),
                prediction("goodbye", &[]),
                prediction("transfer", &[(4, 7, "name")]),
            ],
        );
        let gold = gold();
        let c = compare(&v2, &v1, vec!["parent".into()], Some(&gold)).unwrap();
        // v1 had examples 0, 1 and 3 right; v2 loses 0 (intent) and 1 (entities), gains 2.
        assert_eq!(c.negative_flips.examples, 2);
        assert_eq!(c.negative_flips.intent, 1);
        assert_eq!(c.negative_flips.entities, 1);
        assert!((c.negative_flips.rate - 0.5).abs() < 1e-12);
        assert_eq!(c.negative_flips.shown[0].index, 0);
        assert_eq!(c.negative_flips.shown[0].flipped, "intent");
        assert_eq!(c.negative_flips.shown[1].text.as_deref(), Some("pay bob"));
        assert_eq!(c.negative_flips.shown[1].flipped, "entities");
        assert_eq!(c.positive_flips.examples, 1);
        assert_eq!(c.positive_flips.shown[0].index, 2);
        // Deltas are after minus before; labels of either side are listed.
        assert!((c.deltas.intent_accuracy - 0.0).abs() < 1e-12);
        assert!(c.deltas.entity_f1 < 0.0);
        let greet = c.intents.iter().find(|d| d.label == "greet").unwrap();
        assert_eq!(greet.support, 1);
        assert!((greet.recall_delta() + 1.0).abs() < 1e-12);
        let goodbye = c.intents.iter().find(|d| d.label == "goodbye").unwrap();
        assert!((goodbye.recall_delta() - 1.0).abs() < 1e-12);
        assert_eq!(c.before, v1.version);
        assert_eq!(c.after, v2.version);
    }

    #[test]
    fn comparing_different_data_or_damaged_outcomes_is_refused() {
        let p = [
            prediction("greet", &[]),
            prediction("transfer", &[]),
            prediction("goodbye", &[]),
            prediction("transfer", &[]),
        ];
        let v1 = evaluation(1, &p);
        let mut v2 = evaluation(2, &p);
        v2.data.sha256 = "cd".into();
        assert!(matches!(
            compare(&v2, &v1, vec![], None),
            Err(CompareError::DifferentData { .. })
        ));
        v2.data.sha256 = "ab".into();
        v2.outcomes.intent = "1x11".into();
        assert_eq!(
            compare(&v2, &v1, vec![], None),
            Err(CompareError::Damaged(v2.version))
        );
    }

    #[test]
    fn evaluations_round_trip_through_json() {
        let v1 = evaluation(1, &vec![prediction("greet", &[]); 4]);
        let back = Evaluation::from_json(&v1.to_json()).unwrap();
        assert_eq!(back, v1);
    }
}
