//! The fine-tune decision on the real financial-demo data, one test per row of DESIGN §4's
//! table, plus the JSON report.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use refit_proto::data::{
    Entity, Format, IntentConflict, TrainingData, load_file, load_files, parse_str,
};
use refit_proto::decision::{
    Decision, DecisionInput, DecisionReport, LabelCount, LabelKind, Policy, Reason, decide,
};
use refit_proto::tokens::word_tokens;
use refit_proto::{ArchSpec, Budget, Hyperparams, Manifest, Mode, ModelName, Version};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/financial-demo/"
);

fn path(name: &str) -> PathBuf {
    PathBuf::from(DATA).join(name)
}

fn load(name: &str) -> TrainingData {
    load_file(&path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// set1.yml and set2.yml merged, as `refit submit --data set1.yml --data set2.yml` sends them.
fn set1_and_set2() -> TrainingData {
    load_files(&[path("set1.yml"), path("set2.yml")]).expect("set1 + set2")
}

/// The manifest of a version trained from scratch on `data` with `arch`.
fn manifest_for(data: &TrainingData, arch: ArchSpec) -> Manifest {
    let model = ModelName::new("financial").expect("a valid model name");
    let mut manifest = Manifest::for_data(model, Version::first(), data, arch);
    manifest.data.sha256 = "0".repeat(64);
    manifest.data.key = "datasets/sha256/test.yml".into();
    manifest.epochs = 100.0;
    manifest.created_at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    manifest
}

/// The word vocabulary a worker would have stored for `data`.
fn vocabulary(data: &TrainingData) -> BTreeSet<String> {
    data.examples
        .iter()
        .flat_map(|e| word_tokens(&e.text))
        .collect()
}

fn decide_auto(
    base: &Manifest,
    data: &TrainingData,
    arch: &ArchSpec,
    policy: Policy,
) -> DecisionReport {
    decide(&DecisionInput {
        mode: Mode::Auto,
        policy,
        base: Some(base),
        data,
        arch,
        base_vocabulary: None,
    })
}

fn strings(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|s| s.to_string()).collect()
}

/// Row 1: only examples added, same labels → finetune.
#[test]
fn examples_added_with_the_same_labels_is_finetune() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());
    let merged = set1_and_set2();
    for policy in [Policy::Reject, Policy::Scratch] {
        for mode in [Mode::Auto, Mode::Finetune] {
            let report = decide(&DecisionInput {
                mode,
                policy,
                base: Some(&base),
                data: &merged,
                arch: &ArchSpec::default(),
                base_vocabulary: None,
            });
            assert_eq!(report.decision, Decision::Finetune, "{mode} {policy}");
            assert!(report.fine_tunable);
            assert!(report.reasons.is_empty());
        }
    }

    let report = decide_auto(&base, &merged, &ArchSpec::default(), Policy::Reject);
    let diff = report.diff.as_ref().expect("a base version gives a diff");
    for kind in LabelKind::ALL {
        let changes = diff.labels(kind);
        assert!(
            changes.added.is_empty(),
            "{kind} added: {:?}",
            changes.added
        );
        assert!(
            changes.removed.is_empty(),
            "{kind} removed: {:?}",
            changes.removed
        );
    }
    assert!(diff.arch_changed.is_empty());

    // set2.yml adds these many examples per intent (none duplicates set1.yml).
    let added: [(&str, usize); 17] = [
        ("affirm", 5),
        ("ask_transfer_charge", 3),
        ("check_balance", 8),
        ("check_earnings", 4),
        ("check_human", 3),
        ("check_recipients", 3),
        ("deny", 4),
        ("goodbye", 5),
        ("greet", 4),
        ("help", 4),
        ("human_handoff", 4),
        ("inform", 18),
        ("out_of_scope", 3),
        ("pay_cc", 7),
        ("search_transactions", 5),
        ("thankyou", 4),
        ("transfer_money", 8),
    ];
    let old_counts = set1.label_counts().intents;
    let expected: Vec<LabelCount> = added
        .iter()
        .map(|&(label, more)| LabelCount {
            label: label.into(),
            old: old_counts[label],
            new: old_counts[label] + more,
        })
        .collect();
    assert_eq!(diff.intents.counts, expected);
    let grown: i64 = diff.intents.counts.iter().map(LabelCount::delta).sum();
    assert_eq!(grown, 92);
    assert_eq!(report.examples.old, Some(367));
    assert_eq!(report.examples.new, 367 + 92);
    assert!(
        report
            .human()
            .starts_with("decision: finetune (from v1)\nlabels: unchanged (intents 17, "),
        "{}",
        report.human()
    );
}

/// Row 2: new words → finetune, and the vocabulary growth is reported.
#[test]
fn new_words_are_finetune_with_vocabulary_growth() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());
    let base_vocabulary = vocabulary(&set1);
    assert_eq!(base_vocabulary.len(), 369);

    let extra = parse_str(
        "version: \"3.1\"\nnlu:\n- intent: transfer_money\n  examples: |\n    \
         - send money to my friend with Zelle and Venmoo\n",
        "extra.yml",
        Format::RasaYaml,
    )
    .expect("the extra example parses");
    let mut new = set1.clone();
    new.merge(extra);
    let report = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Reject,
        base: Some(&base),
        data: &new,
        arch: &ArchSpec::default(),
        base_vocabulary: Some(&base_vocabulary),
    });
    assert_eq!(report.decision, Decision::Finetune);
    assert!(report.reasons.is_empty());
    let growth = report.diff.as_ref().unwrap().vocabulary.clone().unwrap();
    assert_eq!(growth.words, 371);
    assert_eq!(growth.new_words, 2);
    assert_eq!(growth.sample, ["zelle", "venmoo"]);
    assert_eq!(growth.fraction, 0.005391); // 2 / 371, rounded
    assert!(
        report
            .human()
            .contains(r#"new vocabulary: 2 of 371 words (0.5%), e.g. "zelle", "venmoo""#),
        "{}",
        report.human()
    );

    // The same data against its own vocabulary has nothing new.
    let own = decide(&DecisionInput {
        base_vocabulary: Some(&vocabulary(&new)),
        mode: Mode::Auto,
        policy: Policy::Reject,
        base: Some(&base),
        data: &new,
        arch: &ArchSpec::default(),
    });
    assert_eq!(own.diff.unwrap().vocabulary.unwrap().new_words, 0);
}

/// Row 3: an intent removed → not fine-tunable; the policy picks reject or scratch.
#[test]
fn intent_removed_is_not_fine_tunable() {
    let full = load("nlu.yml");
    let base = manifest_for(&full, ArchSpec::default());
    let mut new = full.clone();
    new.examples.retain(|e| e.intent != "check_human");
    assert!(new.len() < full.len());

    let expected = [Reason::LabelsRemoved {
        kind: LabelKind::Intent,
        labels: strings(&["check_human"]),
    }];
    let reject = decide_auto(&base, &new, &ArchSpec::default(), Policy::Reject);
    assert_eq!(reject.decision, Decision::Reject);
    assert!(!reject.fine_tunable);
    assert_eq!(reject.reasons, expected);
    let diff = reject.diff.as_ref().unwrap();
    assert_eq!(diff.intents.removed, ["check_human"]);
    assert!(diff.intents.added.is_empty());
    let row = diff
        .intents
        .counts
        .iter()
        .find(|c| c.label == "check_human")
        .unwrap();
    assert_eq!(
        (row.old, row.new),
        (full.label_counts().intents["check_human"], 0)
    );
    assert!(
        reject.human().starts_with(
            "decision: reject (not fine-tunable)\n  intents removed (1): check_human\n"
        ),
        "{}",
        reject.human()
    );

    let scratch = decide_auto(&base, &new, &ArchSpec::default(), Policy::Scratch);
    assert_eq!(scratch.decision, Decision::Scratch);
    assert_eq!(scratch.reasons, expected);

    // An explicit finetune cannot be honoured, whatever the policy.
    let finetune = decide(&DecisionInput {
        mode: Mode::Finetune,
        policy: Policy::Scratch,
        base: Some(&base),
        data: &new,
        arch: &ArchSpec::default(),
        base_vocabulary: None,
    });
    assert_eq!(finetune.decision, Decision::Reject);
}

/// Row 3 again: an entity type, a role and a group added → named exactly.
#[test]
fn entity_type_role_and_group_added_are_named() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());

    // Re-annotate one example with a new entity type.
    let mut new = set1.clone();
    let example = new
        .examples
        .iter_mut()
        .find(|e| e.intent == "inform" && e.entities.is_empty() && e.text.len() > 4)
        .expect("set1 has an unannotated inform example");
    let end = example.text.chars().count();
    example.entities.push(Entity {
        start: 0,
        end,
        entity: "iban".into(),
        value: None,
        role: None,
        group: None,
    });
    let report = decide_auto(&base, &new, &ArchSpec::default(), Policy::Reject);
    assert_eq!(report.decision, Decision::Reject);
    assert_eq!(
        report.reasons,
        [Reason::LabelsAdded {
            kind: LabelKind::Entity,
            labels: strings(&["iban"]),
        }]
    );
    assert!(
        report
            .human()
            .contains("\n  entity types added (1): iban\n"),
        "{}",
        report.human()
    );

    // A role and a group on an existing entity type, written the way Rasa annotates them.
    let extra = parse_str(
        "version: \"3.1\"\nnlu:\n- intent: transfer_money\n  examples: |\n    \
         - move 50 from my [checking]{\"entity\": \"account_type\", \"role\": \"source\", \
         \"group\": \"1\"} account\n",
        "extra.yml",
        Format::RasaYaml,
    )
    .expect("the extra example parses");
    new.merge(extra);
    let report = decide_auto(&base, &new, &ArchSpec::default(), Policy::Scratch);
    assert_eq!(report.decision, Decision::Scratch);
    assert_eq!(
        report.reasons,
        [
            Reason::LabelsAdded {
                kind: LabelKind::Entity,
                labels: strings(&["iban"]),
            },
            Reason::LabelsAdded {
                kind: LabelKind::Role,
                labels: strings(&["source"]),
            },
            Reason::LabelsAdded {
                kind: LabelKind::Group,
                labels: strings(&["1"]),
            },
        ]
    );
    let human = report.human();
    assert!(human.contains("\n  roles added (1): source\n"), "{human}");
    assert!(human.contains("\n  groups added (1): 1\n"), "{human}");
}

/// Row 4: architecture hyperparameters changed → not fine-tunable; defaults left unspelled are
/// not a change.
#[test]
fn architecture_change_is_not_fine_tunable() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());
    let merged = set1_and_set2();

    let narrower: ArchSpec = serde_json::from_str(r#"{"embed_dim": 64}"#).unwrap();
    let report = decide_auto(&base, &merged, &narrower, Policy::Reject);
    assert_eq!(report.decision, Decision::Reject);
    assert!(!report.fine_tunable);
    assert_eq!(
        report.reasons,
        [Reason::ArchChanged {
            fields: strings(&["embed_dim"]),
        }]
    );
    assert!(
        report
            .human()
            .contains("\n  architecture changed (1): embed_dim\n")
    );
    assert_eq!(
        decide_auto(&base, &merged, &narrower, Policy::Scratch).decision,
        Decision::Scratch
    );

    let unspelled: ArchSpec = serde_json::from_str("{}").unwrap();
    let report = decide_auto(&base, &merged, &unspelled, Policy::Reject);
    assert_eq!(report.decision, Decision::Finetune);
    assert!(report.diff.unwrap().arch_changed.is_empty());
}

/// Row 5: epochs, batch size, learning rate and seed may change. They are not an input of the
/// decision at all — `DecisionInput` has no field for them — so two jobs that differ only in
/// them get the same report.
#[test]
fn hyperparameter_changes_never_block() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());
    let merged = set1_and_set2();
    let jobs = [
        Hyperparams::default(),
        Hyperparams {
            budget: Budget::EpochFraction(0.3),
            batch_size: 8,
            final_batch_size: None,
            learning_rate: 0.05,
            seed: 7,
        },
    ];
    let reports: Vec<DecisionReport> = jobs
        .iter()
        .map(|_hyperparams| decide_auto(&base, &merged, &ArchSpec::default(), Policy::Reject))
        .collect();
    assert_eq!(reports[0].decision, Decision::Finetune);
    assert_eq!(reports[0], reports[1]);
}

/// The JSON report round-trips and carries the stable codes.
#[test]
fn json_report_round_trips_with_stable_codes() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());
    let mut new = set1_and_set2();
    new.examples.retain(|e| e.intent != "help");
    let arch: ArchSpec = serde_json::from_str(r#"{"hidden_dim": 256}"#).unwrap();
    let report = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Scratch,
        base: Some(&base),
        data: &new,
        arch: &arch,
        base_vocabulary: Some(&vocabulary(&set1)),
    });
    assert_eq!(report.decision, Decision::Scratch);
    assert_eq!(report.codes(), ["labels_removed", "arch_changed"]);

    let json = report.to_json();
    assert_eq!(DecisionReport::from_json(&json).unwrap(), report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["decision"], "scratch");
    assert_eq!(value["fine_tunable"], false);
    assert_eq!(value["base_version"], 1);
    assert_eq!(
        value["reasons"],
        serde_json::json!([
            {"code": "labels_removed", "kind": "intent", "labels": ["help"]},
            {"code": "arch_changed", "fields": ["hidden_dim"]},
        ])
    );
    assert_eq!(
        value["diff"]["intents"]["removed"],
        serde_json::json!(["help"])
    );
    assert_eq!(
        value["diff"]["arch_changed"],
        serde_json::json!(["hidden_dim"])
    );
    assert_eq!(value["examples"]["old"], 367);
    assert!(value["diff"]["vocabulary"]["new_words"].as_u64().unwrap() > 0);

    // A first version: no base, no diff.
    let first = decide(&DecisionInput {
        mode: Mode::Auto,
        policy: Policy::Reject,
        base: None,
        data: &set1,
        arch: &ArchSpec::default(),
        base_vocabulary: None,
    });
    let value: serde_json::Value = serde_json::from_str(&first.to_json()).unwrap();
    assert_eq!(value["decision"], "scratch");
    assert_eq!(
        value["reasons"],
        serde_json::json!([{"code": "no_base_version"}])
    );
    assert_eq!(value["diff"], serde_json::Value::Null);
    assert_eq!(value["base_version"], serde_json::Value::Null);
}

/// Words labelled two ways are reported (human and JSON) and never block a fine-tune.
/// financial-demo's set1 + set2 have real ones: `[first](account_type)` in "I should check my
/// credit card balance first", names both annotated and bare, and one text under two intents.
#[test]
fn conflicting_labels_are_reported_and_never_block() {
    let set1 = load("set1.yml");
    let base = manifest_for(&set1, ArchSpec::default());
    let merged = set1_and_set2();
    let report = decide_auto(&base, &merged, &ArchSpec::default(), Policy::Reject);
    assert_eq!(report.decision, Decision::Finetune);
    assert!(report.reasons.is_empty());

    let conflicts = &report.conflicts;
    let first = conflicts
        .entities
        .iter()
        .find(|c| c.words == "first")
        .expect("`first` is annotated once and bare elsewhere");
    let labels: Vec<(Option<&str>, usize)> = first
        .labels
        .iter()
        .map(|l| (l.entity.as_deref(), l.examples))
        .collect();
    assert_eq!(labels, [(None, 2), (Some("account_type"), 1)]);
    assert_eq!(
        first.labels[1].example,
        "I should check my credit card balance first"
    );
    let percy = conflicts.entities.iter().find(|c| c.words == "percy");
    assert!(percy.is_some(), "{conflicts:?}");
    assert_eq!(
        conflicts.intents,
        [IntentConflict {
            words: "what places have i spent money".into(),
            intents: strings(&["check_balance", "search_transactions"]),
        }]
    );

    let human = report.human();
    assert!(
        human.contains(&format!(
            "\nannotation conflicts ({} word sequences labelled two ways; a model learns both):\n",
            conflicts.entities.len()
        )),
        "{human}"
    );
    assert!(
        human.contains(
            "\n  \"percy\": not annotated in 2 examples (e.g. \"Percy please\"), \
             PERSON in 1 (e.g. \"Pay Percy $50\")\n"
        ),
        "{human}"
    );
    assert!(
        human.ends_with(
            "\nintent conflicts (1 text under two or more intents):\n  \
             \"what places have i spent money\": check_balance, search_transactions"
        ),
        "{human}"
    );

    let json = report.to_json();
    assert_eq!(DecisionReport::from_json(&json).unwrap(), report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value["conflicts"]["intents"][0]["intents"],
        serde_json::json!(["check_balance", "search_transactions"])
    );

    // Clean data: no conflicts, and the JSON leaves the field out (older readers see no change).
    let clean = TrainingData {
        examples: set1
            .examples
            .iter()
            .filter(|e| e.intent == "greet")
            .cloned()
            .collect(),
        ..Default::default()
    };
    let report = decide_auto(&base, &clean, &ArchSpec::default(), Policy::Scratch);
    assert!(report.conflicts.is_empty());
    let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(value.get("conflicts").is_none(), "{value}");
}
