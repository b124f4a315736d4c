//! Unit tests of the decision, the diff and the report.

use chrono::{TimeZone, Utc};

use super::*;
use crate::data::{Entity, Example};
use crate::ids::ModelName;
use crate::manifest::FeaturizerSpec;
use crate::tokens::word_tokens;

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

fn run(mode: Mode, policy: Policy, base: Option<&Manifest>, data: &TrainingData) -> DecisionReport {
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
        reject
            .human()
            .starts_with("decision: reject (not fine-tunable)\n  intents removed (1): goodbye\n"),
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
