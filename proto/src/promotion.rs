//! Gated promotion: whether a version may take an alias ([`gate`] under a [`PromotionPolicy`]),
//! what was decided ([`GateResult`]), and each alias's history of moves ([`AliasHistory`],
//! `models/<name>/alias-history/<alias>.json`).
//!
//! The gate compares the candidate with the version the alias points at now, on the same eval
//! data (a [`Comparison`] the candidate's job made, or one built from both stored evaluations).
//! It passes when every check holds:
//!
//! - intent weighted-F1 not down by more than `max_intent_f1_drop`;
//! - exact-span entity F1 not down by more than `max_entity_f1_drop` (when the eval data has
//!   entities);
//! - no intent with at least `min_label_support` eval examples has its recall down by more than
//!   `max_intent_recall_drop`;
//! - negative flips (examples the current version gets right and the candidate gets wrong) at
//!   most `max_negative_flip_rate` of the eval data.
//!
//! An alias that points nowhere yet takes any version. A candidate that cannot be compared
//! (no evaluation, different eval data) fails: the gate never passes what it cannot measure.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::evaluation::Comparison;
use crate::ids::Version;

/// History entries kept per alias (the oldest are dropped).
pub const HISTORY_KEPT: usize = 1000;

/// What a version must show to take an alias. Every field has a default; a config names only
/// what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionPolicy {
    /// Largest allowed drop in intent weighted-F1. Default 0.01.
    pub max_intent_f1_drop: f64,
    /// Largest allowed drop in exact-span entity F1. Default 0.01.
    pub max_entity_f1_drop: f64,
    /// Largest allowed drop in any one intent's recall. Default 0.10.
    pub max_intent_recall_drop: f64,
    /// Intents with fewer eval examples are left out of the recall check (too noisy). Default 5.
    pub min_label_support: usize,
    /// Largest allowed share of eval examples that flip from right to wrong. Default 0.03.
    pub max_negative_flip_rate: f64,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            max_intent_f1_drop: 0.01,
            max_entity_f1_drop: 0.01,
            max_intent_recall_drop: 0.10,
            min_label_support: 5,
            max_negative_flip_rate: 0.03,
        }
    }
}

impl PromotionPolicy {
    /// Checks that every limit is a number in `[0, 1]`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_intent_f1_drop", self.max_intent_f1_drop),
            ("max_entity_f1_drop", self.max_entity_f1_drop),
            ("max_intent_recall_drop", self.max_intent_recall_drop),
            ("max_negative_flip_rate", self.max_negative_flip_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{name} = {value}: expected a number from 0 to 1"));
            }
        }
        Ok(())
    }
}

/// One check of the gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    /// `intent_f1`, `entity_f1`, `intent_recall`, `negative_flips` or `comparable`.
    pub check: String,
    /// Whether it held.
    pub passed: bool,
    /// What was measured against what limit, for people.
    pub detail: String,
}

/// The gate's decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// Whether the candidate may take the alias.
    pub passed: bool,
    /// The candidate.
    pub candidate: Version,
    /// The version the alias pointed at (`None`: nowhere yet).
    pub current: Option<Version>,
    /// Every check, in order.
    pub checks: Vec<GateCheck>,
}

impl GateResult {
    /// The failed checks' details (empty when it passed).
    pub fn reasons(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.detail.clone())
            .collect()
    }

    /// One line for people: `passed` or the reasons it failed.
    pub fn summary(&self) -> String {
        if self.passed {
            match self.current {
                Some(current) => format!("{} passed the gate against {current}", self.candidate),
                None => format!("{} passed the gate (the alias was unset)", self.candidate),
            }
        } else {
            format!(
                "{} failed the gate: {}",
                self.candidate,
                self.reasons().join("; ")
            )
        }
    }
}

/// Decides whether `candidate` may take an alias that points at `current`. `comparison` is the
/// candidate against `current` on the same eval data, or why there is none.
pub fn gate(
    policy: &PromotionPolicy,
    candidate: Version,
    current: Option<Version>,
    comparison: Result<&Comparison, String>,
) -> GateResult {
    let mut checks = Vec::new();
    let result = |checks| GateResult {
        passed: false,
        candidate,
        current,
        checks,
    };
    let Some(current_version) = current else {
        return GateResult {
            passed: true,
            checks: vec![check(
                "comparable",
                true,
                "the alias points nowhere yet".into(),
            )],
            ..result(Vec::new())
        };
    };
    if current_version == candidate {
        return GateResult {
            passed: true,
            checks: vec![check(
                "comparable",
                true,
                format!("the alias already points at {candidate}"),
            )],
            ..result(Vec::new())
        };
    }
    let c = match comparison {
        Ok(c) => c,
        Err(why) => {
            checks.push(check(
                "comparable",
                false,
                format!("{candidate} cannot be compared with {current_version}: {why}"),
            ));
            return result(checks);
        }
    };
    let f1 = c.deltas.intent_weighted_f1;
    checks.push(check(
        "intent_f1",
        f1 >= -policy.max_intent_f1_drop - EPS,
        format!(
            "intent weighted-F1 {:.4} → {:.4} ({f1:+.4}; at most -{} allowed)",
            c.metrics_before.intent_weighted_f1,
            c.metrics_after.intent_weighted_f1,
            policy.max_intent_f1_drop
        ),
    ));
    let gold_mentions: usize = c.entities.iter().map(|d| d.support).sum();
    if gold_mentions > 0 {
        let e = c.deltas.entity_f1;
        checks.push(check(
            "entity_f1",
            e >= -policy.max_entity_f1_drop - EPS,
            format!(
                "entity F1 {:.4} → {:.4} ({e:+.4}; at most -{} allowed)",
                c.metrics_before.entity_f1, c.metrics_after.entity_f1, policy.max_entity_f1_drop
            ),
        ));
    }
    let dropped: Vec<String> = c
        .intents
        .iter()
        .filter(|d| d.support >= policy.min_label_support)
        .filter(|d| d.recall_delta() < -policy.max_intent_recall_drop - EPS)
        .map(|d| format!("{} {:.2} → {:.2}", d.label, d.recall_before, d.recall_after))
        .collect();
    checks.push(check(
        "intent_recall",
        dropped.is_empty(),
        if dropped.is_empty() {
            format!(
                "no intent's recall down by more than {} (intents with ≥ {} eval examples)",
                policy.max_intent_recall_drop, policy.min_label_support
            )
        } else {
            format!(
                "intent recall down by more than {}: {}",
                policy.max_intent_recall_drop,
                dropped.join(", ")
            )
        },
    ));
    let flips = &c.negative_flips;
    checks.push(check(
        "negative_flips",
        flips.rate <= policy.max_negative_flip_rate + EPS,
        format!(
            "{} negative flips ({:.1} % of the eval data; at most {:.1} % allowed)",
            flips.examples,
            flips.rate * 100.0,
            policy.max_negative_flip_rate * 100.0
        ),
    ));
    GateResult {
        passed: checks.iter().all(|c| c.passed),
        ..result(checks)
    }
}

/// Float slack, so that a drop of exactly the tolerance passes.
const EPS: f64 = 1e-12;

fn check(name: &str, passed: bool, detail: String) -> GateCheck {
    GateCheck {
        check: name.to_owned(),
        passed,
        detail,
    }
}

/// One move of an alias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AliasMove {
    /// When.
    pub at: DateTime<Utc>,
    /// Where it pointed before (`None`: nowhere).
    pub from: Option<Version>,
    /// Where it points now.
    pub to: Version,
    /// Who moved it: `job <id>` for a job's `promote_to`, else what the API caller said
    /// (`refit alias` sends `user@host`).
    pub by: String,
    /// Why, for people (the caller's `--reason`, or the job that promoted it).
    pub reason: String,
    /// Moved with `--force` although the gate failed (or without asking it).
    #[serde(default)]
    pub forced: bool,
    /// The gate's decision, when it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateResult>,
}

/// `models/<name>/alias-history/<alias>.json`: an alias's moves, oldest first, the newest
/// [`HISTORY_KEPT`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AliasHistory {
    /// The moves.
    pub moves: Vec<AliasMove>,
}

impl AliasHistory {
    /// Appends a move, dropping the oldest beyond [`HISTORY_KEPT`].
    pub fn push(&mut self, entry: AliasMove) {
        self.moves.push(entry);
        let extra = self.moves.len().saturating_sub(HISTORY_KEPT);
        self.moves.drain(..extra);
    }
}

/// Alias name → policy overrides, on top of a default policy: how the coordinator's
/// `[promotion]` config section reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    /// The policy for aliases not named below.
    #[serde(default)]
    pub default: PromotionPolicy,
    /// Per alias: a whole policy (fields it leaves out take the built-in defaults).
    #[serde(default)]
    pub aliases: BTreeMap<String, PromotionPolicy>,
}

impl PromotionConfig {
    /// The policy of `alias`.
    pub fn policy(&self, alias: &str) -> &PromotionPolicy {
        self.aliases.get(alias).unwrap_or(&self.default)
    }

    /// Checks every policy.
    pub fn validate(&self) -> Result<(), String> {
        self.default
            .validate()
            .map_err(|e| format!("promotion.default: {e}"))?;
        for (alias, policy) in &self.aliases {
            policy
                .validate()
                .map_err(|e| format!("promotion.aliases.{alias}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluation::{Deltas, Flips, LabelDelta};
    use crate::manifest::Metrics;

    fn v(n: u32) -> Version {
        Version::new(n).unwrap()
    }

    fn comparison(
        f1: (f64, f64),
        entity: (f64, f64),
        recall: (f64, f64),
        flips: f64,
    ) -> Comparison {
        let metrics = |i: f64, e: f64| Metrics {
            intent_weighted_f1: i,
            entity_f1: e,
            ..Metrics::default()
        };
        Comparison {
            before: v(1),
            after: v(2),
            roles: vec!["alias prod".into()],
            data_sha256: "ab".into(),
            metrics_before: metrics(f1.0, entity.0),
            metrics_after: metrics(f1.1, entity.1),
            deltas: Deltas {
                intent_weighted_f1: f1.1 - f1.0,
                entity_f1: entity.1 - entity.0,
                ..Deltas::default()
            },
            intents: vec![LabelDelta {
                label: "greet".into(),
                support: 10,
                f1_before: 0.9,
                f1_after: 0.9,
                recall_before: recall.0,
                recall_after: recall.1,
            }],
            entities: vec![LabelDelta {
                label: "name".into(),
                support: 4,
                f1_before: entity.0,
                f1_after: entity.1,
                recall_before: 0.0,
                recall_after: 0.0,
            }],
            negative_flips: Flips {
                examples: (flips * 100.0) as usize,
                rate: flips,
                ..Flips::default()
            },
            positive_flips: Flips::default(),
        }
    }

    #[test]
    fn an_unset_alias_takes_any_version() {
        let r = gate(&PromotionPolicy::default(), v(2), None, Err("none".into()));
        assert!(r.passed);
    }

    #[test]
    fn a_version_as_good_within_tolerance_passes() {
        let c = comparison((0.90, 0.895), (0.80, 0.80), (0.9, 0.85), 0.02);
        let r = gate(&PromotionPolicy::default(), v(2), Some(v(1)), Ok(&c));
        assert!(r.passed, "{:?}", r.reasons());
        assert_eq!(r.checks.len(), 4);
        assert!(r.summary().contains("passed"));
    }

    #[test]
    fn each_check_fails_on_its_own() {
        let policy = PromotionPolicy::default();
        let cases = [
            (
                comparison((0.90, 0.88), (0.8, 0.8), (0.9, 0.9), 0.0),
                "intent_f1",
            ),
            (
                comparison((0.90, 0.90), (0.8, 0.7), (0.9, 0.9), 0.0),
                "entity_f1",
            ),
            (
                comparison((0.90, 0.90), (0.8, 0.8), (0.9, 0.7), 0.0),
                "intent_recall",
            ),
            (
                comparison((0.90, 0.90), (0.8, 0.8), (0.9, 0.9), 0.05),
                "negative_flips",
            ),
        ];
        for (c, failing) in cases {
            let r = gate(&policy, v(2), Some(v(1)), Ok(&c));
            assert!(!r.passed);
            let failed: Vec<&str> = r
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.check.as_str())
                .collect();
            assert_eq!(failed, [failing]);
            assert_eq!(r.reasons().len(), 1);
        }
    }

    #[test]
    fn rare_intents_are_left_out_of_the_recall_check() {
        let mut c = comparison((0.9, 0.9), (0.8, 0.8), (1.0, 0.0), 0.0);
        c.intents[0].support = 4;
        assert!(gate(&PromotionPolicy::default(), v(2), Some(v(1)), Ok(&c)).passed);
    }

    #[test]
    fn what_cannot_be_compared_fails() {
        let r = gate(
            &PromotionPolicy::default(),
            v(2),
            Some(v(1)),
            Err("v2 has no evaluation".into()),
        );
        assert!(!r.passed);
        assert!(r.reasons()[0].contains("no evaluation"));
    }

    #[test]
    fn history_keeps_the_newest() {
        let mut h = AliasHistory::default();
        for n in 1..=(HISTORY_KEPT as u32 + 5) {
            h.push(AliasMove {
                at: Utc::now(),
                from: None,
                to: v(n),
                by: "t".into(),
                reason: String::new(),
                forced: false,
                gate: None,
            });
        }
        assert_eq!(h.moves.len(), HISTORY_KEPT);
        assert_eq!(h.moves[0].to, v(6));
    }

    #[test]
    fn policies_are_validated_and_looked_up_per_alias() {
        let config: PromotionConfig = serde_json::from_str(
            r#"{"default": {"max_negative_flip_rate": 0.05},
                "aliases": {"prod": {"max_intent_f1_drop": 0.0}}}"#,
        )
        .unwrap();
        assert_eq!(config.policy("staging").max_negative_flip_rate, 0.05);
        assert_eq!(config.policy("prod").max_intent_f1_drop, 0.0);
        assert_eq!(config.policy("prod").max_negative_flip_rate, 0.03);
        assert!(config.validate().is_ok());
        let bad = PromotionPolicy {
            max_intent_f1_drop: 2.0,
            ..PromotionPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_intent_f1_drop"));
        assert!(serde_json::from_str::<PromotionPolicy>(r#"{"max_flips": 1}"#).is_err());
    }
}
