//! Scores on held-out data, reported the way `rasa test nlu` does.
//!
//! [`evaluate`] compares gold [`Example`]s with the model's [`Prediction`]s and returns an
//! [`EvaluationReport`]:
//!
//! - **Intents**: accuracy; macro-F1, the unweighted mean of the per-label F1 over every label
//!   that occurs in the gold data **or** the predictions (scikit-learn's
//!   `f1_score(average="macro", labels=gold ∪ predicted)`); weighted-F1, the per-label F1
//!   weighted by gold support (`average="weighted"`); a per-label precision/recall/F1/support
//!   table; and the confusions (gold → predicted pairs, most frequent first).
//! - **Entities**: exact-span matching: a predicted entity is right when an unmatched gold
//!   entity of the same example has the same `start`, `end` and type (roles, groups and values
//!   are not compared). Precision, recall and F1 are micro-averaged over all mentions, with a
//!   per-type table.
//!
//! A ratio with a zero denominator is 0, as with scikit-learn's `zero_division=0`: a label never
//! predicted has precision 0, and a report without any entities has entity P/R/F1 of 0.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::data::{Entity, Example};
use crate::manifest::Metrics;
use serde::{Deserialize, Serialize};

/// What the model said about one example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The top intent.
    pub intent: String,
    /// Its probability.
    pub confidence: f32,
    /// The predicted entities (types and spans; values, roles and groups are not compared).
    pub entities: Vec<Entity>,
}

/// Precision, recall and F1 of one label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelScores {
    /// The intent or entity type.
    pub label: String,
    /// Right predictions of the label / predictions of the label.
    pub precision: f64,
    /// Right predictions of the label / gold occurrences of the label.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Gold occurrences.
    pub support: usize,
    /// Predicted occurrences.
    pub predicted: usize,
}

/// A gold → predicted intent pair that the model got wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// The right intent.
    pub gold: String,
    /// What the model said.
    pub predicted: String,
    /// How many examples.
    pub count: usize,
}

/// Intent classification results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentReport {
    /// Fraction of examples whose top intent is right.
    pub accuracy: f64,
    /// Unweighted mean F1 over gold ∪ predicted labels.
    pub macro_f1: f64,
    /// Support-weighted mean F1.
    pub weighted_f1: f64,
    /// Per label, sorted by label.
    pub labels: Vec<LabelScores>,
    /// Misclassifications, by count (descending), then gold and predicted name.
    pub confusions: Vec<Confusion>,
}

/// Entity extraction results (exact spans).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityReport {
    /// Micro-averaged precision.
    pub precision: f64,
    /// Micro-averaged recall.
    pub recall: f64,
    /// Micro-averaged F1.
    pub f1: f64,
    /// Gold mentions.
    pub gold: usize,
    /// Predicted mentions.
    pub predicted: usize,
    /// Predicted mentions that match a gold one exactly.
    pub correct: usize,
    /// Per entity type (gold ∪ predicted), sorted by type.
    pub types: Vec<LabelScores>,
}

/// Everything [`evaluate`] measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// How many examples.
    pub examples: usize,
    /// Intents.
    pub intent: IntentReport,
    /// Entities.
    pub entity: EntityReport,
}

impl EvaluationReport {
    /// The summary stored in the manifest.
    pub fn to_metrics(&self) -> Metrics {
        Metrics {
            intent_accuracy: self.intent.accuracy,
            intent_macro_f1: self.intent.macro_f1,
            intent_weighted_f1: self.intent.weighted_f1,
            entity_precision: self.entity.precision,
            entity_recall: self.entity.recall,
            entity_f1: self.entity.f1,
            examples: self.examples as u64,
        }
    }
}

/// `num / den`, or 0 when `den` is 0.
fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Per-label counts: (right, gold, predicted).
#[derive(Clone, Copy, Default)]
struct Counts {
    correct: usize,
    gold: usize,
    predicted: usize,
}

fn scores(counts: BTreeMap<&str, Counts>) -> Vec<LabelScores> {
    counts
        .into_iter()
        .map(|(label, c)| {
            let precision = ratio(c.correct, c.predicted);
            let recall = ratio(c.correct, c.gold);
            LabelScores {
                label: label.to_owned(),
                precision,
                recall,
                f1: f1(precision, recall),
                support: c.gold,
                predicted: c.predicted,
            }
        })
        .collect()
}

/// Scores `predictions` against `gold`, example by example.
///
/// # Panics
///
/// If the two slices differ in length.
pub fn evaluate(gold: &[Example], predictions: &[Prediction]) -> EvaluationReport {
    assert_eq!(
        gold.len(),
        predictions.len(),
        "one prediction per gold example"
    );
    EvaluationReport {
        examples: gold.len(),
        intent: intents(gold, predictions),
        entity: entities(gold, predictions),
    }
}

/// Per example, whether the prediction got the intent right and whether it got the entities
/// right (exactly the gold mentions: same spans and types, none missing, none extra).
pub fn outcomes(gold: &[Example], predictions: &[Prediction]) -> super::Outcomes {
    assert_eq!(
        gold.len(),
        predictions.len(),
        "one prediction per gold example"
    );
    let mut out = super::Outcomes::default();
    for (g, p) in gold.iter().zip(predictions) {
        out.push(
            g.intent == p.intent,
            same_mentions(&g.entities, &p.entities),
        );
    }
    out
}

fn same_mentions(gold: &[Entity], predicted: &[Entity]) -> bool {
    let key = |e: &Entity| (e.start, e.end, e.entity.clone());
    let mut a: Vec<_> = gold.iter().map(key).collect();
    let mut b: Vec<_> = predicted.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

fn intents(gold: &[Example], predictions: &[Prediction]) -> IntentReport {
    let mut counts: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut confused: HashMap<(&str, &str), usize> = HashMap::new();
    let mut right = 0;
    for (g, p) in gold.iter().zip(predictions) {
        counts.entry(&g.intent).or_default().gold += 1;
        counts.entry(&p.intent).or_default().predicted += 1;
        if g.intent == p.intent {
            right += 1;
            counts.entry(&g.intent).or_default().correct += 1;
        } else {
            *confused.entry((&g.intent, &p.intent)).or_default() += 1;
        }
    }
    let labels = scores(counts);
    let macro_f1 = if labels.is_empty() {
        0.0
    } else {
        labels.iter().map(|l| l.f1).sum::<f64>() / labels.len() as f64
    };
    let weighted_f1 = if gold.is_empty() {
        0.0
    } else {
        labels.iter().map(|l| l.f1 * l.support as f64).sum::<f64>() / gold.len() as f64
    };
    let mut confusions: Vec<Confusion> = confused
        .into_iter()
        .map(|((g, p), count)| Confusion {
            gold: g.to_owned(),
            predicted: p.to_owned(),
            count,
        })
        .collect();
    confusions.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.gold, &a.predicted).cmp(&(&b.gold, &b.predicted)))
    });
    IntentReport {
        accuracy: ratio(right, gold.len()),
        macro_f1,
        weighted_f1,
        labels,
        confusions,
    }
}

fn entities(gold: &[Example], predictions: &[Prediction]) -> EntityReport {
    let mut counts: BTreeMap<&str, Counts> = BTreeMap::new();
    for (g, p) in gold.iter().zip(predictions) {
        // Multiset matching: each gold mention can be matched once.
        let mut unmatched: BTreeMap<(usize, usize, &str), usize> = BTreeMap::new();
        for e in &g.entities {
            counts.entry(&e.entity).or_default().gold += 1;
            *unmatched.entry((e.start, e.end, &e.entity)).or_default() += 1;
        }
        for e in &p.entities {
            let c = counts.entry(&e.entity).or_default();
            c.predicted += 1;
            if let Some(n) = unmatched.get_mut(&(e.start, e.end, e.entity.as_str()))
                && *n > 0
            {
                *n -= 1;
                c.correct += 1;
            }
        }
    }
    let total = counts.values().fold(Counts::default(), |acc, c| Counts {
        correct: acc.correct + c.correct,
        gold: acc.gold + c.gold,
        predicted: acc.predicted + c.predicted,
    });
    let precision = ratio(total.correct, total.predicted);
    let recall = ratio(total.correct, total.gold);
    EntityReport {
        precision,
        recall,
        f1: f1(precision, recall),
        gold: total.gold,
        predicted: total.predicted,
        correct: total.correct,
        types: scores(counts),
    }
}

/// How many confusions the human report lists.
const CONFUSIONS_SHOWN: usize = 10;

fn write_table(f: &mut fmt::Formatter<'_>, title: &str, rows: &[LabelScores]) -> fmt::Result {
    let width = rows
        .iter()
        .map(|r| r.label.chars().count())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    writeln!(
        f,
        "{title:<width$}  precision  recall     f1  support  predicted"
    )?;
    for r in rows {
        writeln!(
            f,
            "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}  {:>9}",
            r.label, r.precision, r.recall, r.f1, r.support, r.predicted
        )?;
    }
    Ok(())
}

impl fmt::Display for EvaluationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.intent;
        writeln!(
            f,
            "intents ({} examples): accuracy {:.3}, macro-F1 {:.3}, weighted-F1 {:.3}",
            self.examples, i.accuracy, i.macro_f1, i.weighted_f1
        )?;
        write_table(f, "intent", &i.labels)?;
        if !i.confusions.is_empty() {
            writeln!(f, "most confused (gold → predicted):")?;
            for c in i.confusions.iter().take(CONFUSIONS_SHOWN) {
                writeln!(f, "  {:>4}  {} → {}", c.count, c.gold, c.predicted)?;
            }
            let more = i.confusions.len().saturating_sub(CONFUSIONS_SHOWN);
            if more > 0 {
                writeln!(f, "  … and {more} more pairs")?;
            }
        }
        let e = &self.entity;
        writeln!(
            f,
            "entities (exact spans, {} gold, {} predicted, {} correct): precision {:.3}, recall {:.3}, F1 {:.3}",
            e.gold, e.predicted, e.correct, e.precision, e.recall, e.f1
        )?;
        if !e.types.is_empty() {
            write_table(f, "entity", &e.types)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(intent: &str, entities: &[(usize, usize, &str)]) -> Example {
        Example {
            text: "some text here".to_owned(),
            intent: intent.to_owned(),
            entities: entities.iter().map(|&(s, e, t)| ent(s, e, t)).collect(),
        }
    }

    fn ent(start: usize, end: usize, t: &str) -> Entity {
        Entity {
            start,
            end,
            entity: t.to_owned(),
            value: None,
            role: None,
            group: None,
        }
    }

    fn pred(intent: &str, entities: &[(usize, usize, &str)]) -> Prediction {
        Prediction {
            intent: intent.to_owned(),
            confidence: 0.9,
            entities: entities.iter().map(|&(s, e, t)| ent(s, e, t)).collect(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// gold a a a b b c, predicted a a b b d c. By hand (sklearn, labels = {a,b,c,d}):
    /// - a: tp 2, predicted 2, gold 3 → P 1, R 2/3, F1 0.8
    /// - b: tp 1, predicted 2, gold 2 → P 0.5, R 0.5, F1 0.5
    /// - c: tp 1 → 1, 1, 1
    /// - d: predicted 1, gold 0 → 0, 0, 0 (support 0)
    /// - accuracy 4/6; macro (0.8 + 0.5 + 1 + 0) / 4 = 0.575;
    ///   weighted (0.8·3 + 0.5·2 + 1·1 + 0·0) / 6 = 4.4/6 ≈ 0.733333
    #[test]
    fn intent_scores_match_sklearn() {
        let gold: Vec<Example> = ["a", "a", "a", "b", "b", "c"]
            .iter()
            .map(|i| ex(i, &[]))
            .collect();
        let predictions: Vec<Prediction> = ["a", "a", "b", "b", "d", "c"]
            .iter()
            .map(|i| pred(i, &[]))
            .collect();
        let report = evaluate(&gold, &predictions);
        let i = &report.intent;
        assert!(close(i.accuracy, 4.0 / 6.0));
        assert!(close(i.macro_f1, 0.575));
        assert!(close(i.weighted_f1, 4.4 / 6.0));
        let table: Vec<(&str, f64, f64, f64, usize)> = i
            .labels
            .iter()
            .map(|l| (l.label.as_str(), l.precision, l.recall, l.f1, l.support))
            .collect();
        let expected = [
            ("a", 1.0, 2.0 / 3.0, 0.8, 3),
            ("b", 0.5, 0.5, 0.5, 2),
            ("c", 1.0, 1.0, 1.0, 1),
            ("d", 0.0, 0.0, 0.0, 0),
        ];
        assert_eq!(table.len(), expected.len());
        for (got, want) in table.iter().zip(expected) {
            assert_eq!((got.0, got.4), (want.0, want.4));
            assert!(
                close(got.1, want.1) && close(got.2, want.2) && close(got.3, want.3),
                "{got:?}"
            );
        }
        assert_eq!(
            i.confusions,
            [
                Confusion {
                    gold: "a".into(),
                    predicted: "b".into(),
                    count: 1
                },
                Confusion {
                    gold: "b".into(),
                    predicted: "d".into(),
                    count: 1
                },
            ]
        );
        assert_eq!((i.labels[3].support, i.labels[3].predicted), (0, 1));
    }

    #[test]
    fn confusions_are_sorted_by_count() {
        let gold: Vec<Example> = ["x", "y", "y", "z"].iter().map(|i| ex(i, &[])).collect();
        let predictions: Vec<Prediction> =
            ["z", "x", "x", "x"].iter().map(|i| pred(i, &[])).collect();
        let c = evaluate(&gold, &predictions).intent.confusions;
        let pairs: Vec<(&str, &str, usize)> = c
            .iter()
            .map(|c| (c.gold.as_str(), c.predicted.as_str(), c.count))
            .collect();
        assert_eq!(pairs, [("y", "x", 2), ("x", "z", 1), ("z", "x", 1)]);
    }

    /// Three examples; gold (0,3,x) (4,7,y) | (0,2,x) | none, predicted (0,3,x) (4,6,y) |
    /// (0,2,x) (3,5,x) | none. Exact matches: 2 of 4 predicted, of 3 gold:
    /// P 0.5, R 2/3, F1 = 2·0.5·(2/3) / (0.5 + 2/3) = 4/7.
    /// Per type: x 2 right of 3 predicted, 2 gold → P 2/3, R 1, F1 0.8; y → 0, 0, 0.
    #[test]
    fn entity_scores_are_exact_span_micro() {
        let gold = [
            ex("a", &[(0, 3, "x"), (4, 7, "y")]),
            ex("a", &[(0, 2, "x")]),
            ex("a", &[]),
        ];
        let predictions = [
            pred("a", &[(0, 3, "x"), (4, 6, "y")]),
            pred("a", &[(0, 2, "x"), (3, 5, "x")]),
            pred("a", &[]),
        ];
        let report = evaluate(&gold, &predictions);
        let e = &report.entity;
        assert_eq!((e.gold, e.predicted, e.correct), (3, 4, 2));
        assert!(close(e.precision, 0.5) && close(e.recall, 2.0 / 3.0) && close(e.f1, 4.0 / 7.0));
        assert_eq!(e.types.len(), 2);
        assert!(close(e.types[0].precision, 2.0 / 3.0) && close(e.types[0].f1, 0.8));
        assert_eq!((e.types[1].label.as_str(), e.types[1].f1), ("y", 0.0));

        let metrics = report.to_metrics();
        assert_eq!(metrics.examples, 3);
        assert!(close(metrics.entity_f1, 4.0 / 7.0));
        assert!(close(metrics.intent_accuracy, 1.0));
    }

    #[test]
    fn a_gold_mention_matches_once() {
        let gold = [ex("a", &[(0, 2, "x")])];
        let predictions = [pred("a", &[(0, 2, "x"), (0, 2, "x")])];
        let e = evaluate(&gold, &predictions).entity;
        assert_eq!((e.correct, e.predicted), (1, 2));
        assert!(close(e.precision, 0.5) && close(e.recall, 1.0));
    }

    #[test]
    fn empty_input_scores_zero() {
        let report = evaluate(&[], &[]);
        assert_eq!(report.to_metrics(), Metrics::default());
        let text = report.to_string();
        assert!(text.contains("intents (0 examples)"), "{text}");
    }

    #[test]
    fn display_is_a_table() {
        let gold = [ex("greet", &[(0, 3, "name")]), ex("bye", &[])];
        let predictions = [pred("greet", &[(0, 3, "name")]), pred("greet", &[])];
        let text = evaluate(&gold, &predictions).to_string();
        println!("{text}");
        assert!(text.contains("accuracy 0.500"), "{text}");
        assert!(
            text.contains("greet       0.500   1.000  0.667        1          2"),
            "{text}"
        );
        assert!(text.contains("1  bye → greet"), "{text}");
        assert!(
            text.contains("precision 1.000, recall 1.000, F1 1.000"),
            "{text}"
        );
    }
}
