//! Training-data parsing against the repository's copy of RasaHQ/financial-demo and small
//! fixtures, plus a property test that no input makes the parsers panic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use refit_proto::data::{
    DataErrorKind, Format, MAX_DATASET_BYTES, TrainingData, load_file, load_files, parse_bytes,
    parse_str,
};

const NLU: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/financial-demo/nlu.yml"
);

fn demo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/financial-demo")
        .join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One raw intent example of nlu.yml, read without the crate's parser.
struct RawExample {
    intent: String,
    plain: String,
    annotated_words: Vec<String>,
    json_form: usize,
}

/// Reads the intent examples of a Rasa file laid out like nlu.yml (`- intent:` items whose
/// `examples: |` blocks hold `    - ` lines) with a plain line scan, and removes annotations with
/// a simple search for `[`, `]` and the `)` or `}` that closes the annotation: independent of
/// the crate's YAML and annotation code.
fn raw_examples(text: &str) -> Vec<RawExample> {
    let mut intent = None;
    let mut examples = Vec::new();
    for line in text.lines() {
        if let Some(item) = line.strip_prefix("- ") {
            intent = item.strip_prefix("intent: ").map(str::to_owned);
        } else if let (Some(intent), Some(raw)) = (&intent, line.strip_prefix("    - ")) {
            let (plain, annotated_words, json_form) = strip_annotations(raw.trim_matches(' '));
            examples.push(RawExample {
                intent: intent.clone(),
                plain,
                annotated_words,
                json_form,
            });
        }
    }
    examples
}

fn strip_annotations(raw: &str) -> (String, Vec<String>, usize) {
    let mut plain = String::new();
    let mut words = Vec::new();
    let mut json_form = 0;
    let mut rest = raw;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let tail = &after[close + 1..];
        let end = match tail.chars().next() {
            Some('(') => tail.find(')'),
            Some('{') => {
                json_form += 1;
                tail.find('}')
            }
            _ => None,
        };
        match end {
            Some(end) => {
                plain.push_str(&rest[..open]);
                plain.push_str(&after[..close]);
                words.push(after[..close].to_owned());
                rest = &tail[end + 1..];
            }
            None => {
                plain.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    plain.push_str(rest);
    (plain, words, json_form)
}

#[test]
fn financial_demo_facts() {
    let text = std::fs::read_to_string(NLU).expect("nlu.yml is in the repository");
    let data = parse_str(&text, "nlu.yml", Format::RasaYaml).expect("nlu.yml parses");

    assert_eq!(data.intents().len(), 17);
    assert_eq!(data.len(), 574);
    assert_eq!(data.duplicates_dropped, 4);
    assert_eq!(data.len() + data.duplicates_dropped, 578);
    let counts = data.label_counts();
    let expected_types = BTreeMap::from([
        ("PERSON".to_owned(), 49),
        ("account_type".to_owned(), 73),
        ("amount-of-money".to_owned(), 54),
        ("credit_card".to_owned(), 57),
        ("vendor_name".to_owned(), 25),
    ]);
    assert_eq!(counts.entities, expected_types);
    // The dataset README counts 258 mentions over all 578 examples, duplicates included. The 4
    // dropped duplicates ("goodbye", "help", "help me", "i want to talk to a human") carry no
    // entities, so the 574 unique examples hold the same 258; `raw` below confirms both counts.
    assert_eq!(data.entity_mentions(), 258);
    assert!(counts.roles.is_empty() && counts.groups.is_empty());
    assert_eq!(
        data.examples
            .iter()
            .filter(|e| !e.entities.is_empty())
            .count(),
        195
    );
    assert_eq!(data.synonyms.len(), 3);
    assert_eq!(data.synonyms[0].name, "credit");
    assert_eq!(data.synonyms[0].examples.len(), 7);
    // Rasa's EntitySynonymMapper: synonym items and annotated values, keyed lowercased.
    let synonyms = data.synonym_map();
    assert_eq!(
        synonyms.get("credit card").map(String::as_str),
        Some("credit")
    );
    assert_eq!(synonyms.get("emblm").map(String::as_str), Some("emblem"));
    assert_eq!(
        synonyms.get("full balance").map(String::as_str),
        Some("current balance")
    );
    let file = refit_proto::data::SynonymFile { synonyms };
    assert_eq!(file.map("Credit Cards"), "credit");
    assert_eq!(file.map("savings"), "savings");
    assert!(data.regexes.is_empty() && data.lookups.is_empty());
    assert_eq!(
        counts
            .intents
            .values()
            .min()
            .zip(counts.intents.values().max()),
        Some((&19, &111))
    );

    // Independent check of every offset against a plain scan of the file.
    let raw = raw_examples(&text);
    assert_eq!(raw.len(), 578);
    assert_eq!(
        raw.iter().map(|r| r.annotated_words.len()).sum::<usize>(),
        258
    );
    assert_eq!(raw.iter().map(|r| r.json_form).sum::<usize>(), 11);
    let mut words_by_example: BTreeMap<(&str, &str), &[String]> = BTreeMap::new();
    for r in &raw {
        let previous = words_by_example.insert((&r.intent, &r.plain), &r.annotated_words);
        // A repeated plain text is one of the exact duplicates: same annotations.
        assert!(previous.is_none_or(|words| words == r.annotated_words));
    }
    assert_eq!(words_by_example.len(), 574);
    for example in &data.examples {
        let words = words_by_example
            .get(&(example.intent.as_str(), example.text.as_str()))
            .unwrap_or_else(|| panic!("{example:?} is not in the raw file"));
        let slices: Vec<&str> = example
            .entities
            .iter()
            .map(|e| e.slice(&example.text).expect("offsets fit the text"))
            .collect();
        assert_eq!(slices, *words, "{example:?}");
        assert!(example.entities.is_sorted_by_key(|e| e.start));
    }
}

#[test]
fn financial_demo_json_form_keeps_the_synonym_value() {
    let data = load_file(Path::new(NLU)).expect("nlu.yml loads");
    let example = data
        .examples
        .iter()
        .find(|e| e.text == "check my credit card balance")
        .expect("line 125 of nlu.yml");
    let credit = &example.entities[0];
    assert_eq!(credit.slice(&example.text), Some("credit card"));
    assert_eq!(credit.entity, "account_type");
    assert_eq!(credit.value.as_deref(), Some("credit"));
    assert_eq!(example.entities[1].value, None);
}

#[test]
fn financial_demo_splits() {
    let sizes: Vec<usize> = ["set1.yml", "set2.yml", "test.yml"]
        .iter()
        .map(|name| load_file(&demo(name)).expect("split parses").len())
        .collect();
    assert_eq!(sizes, vec![367, 92, 115]);

    // The three splits together are exactly the unique examples of nlu.yml.
    let all = load_files(&[demo("set1.yml"), demo("set2.yml"), demo("test.yml")]).unwrap();
    assert_eq!(all.len(), 574);
    assert_eq!(all.duplicates_dropped, 0);
    // Every split repeats the 3 synonym items; merged, each is kept once.
    assert_eq!(all.synonyms, load_file(Path::new(NLU)).unwrap().synonyms);
    let nlu = load_file(Path::new(NLU)).unwrap();
    let key = |data: &TrainingData| -> BTreeSet<String> {
        data.examples.iter().map(|e| format!("{e:?}")).collect()
    };
    assert_eq!(key(&all), key(&nlu));
}

#[test]
fn format_2_fixture() {
    let data = load_file(&fixture("format2.yml")).unwrap();
    let texts: Vec<(&str, &str)> = data
        .examples
        .iter()
        .map(|e| (e.intent.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            ("greet", "hey"),
            ("greet", "hello Zoë"),
            ("faq/ask_fees", "what are the fees?"),
            ("inform", "pay 5 €"),
            ("inform", "my card"),
        ]
    );
    let pay = &data.examples[3];
    assert_eq!(
        (pay.entities[0].start, pay.entities[0].end),
        (4, 7),
        "character offsets"
    );
    assert_eq!(pay.entities[0].value.as_deref(), Some("5 EUR"));
    assert_eq!(
        data.examples[4].entities[0].value.as_deref(),
        Some("credit")
    );
    assert_eq!(data.synonyms[0].examples, vec!["card"]);
    assert_eq!(data.regexes[0].name, "account_number");
    assert_eq!(data.regexes[0].examples, vec![r"\d{10,12}"]);
    assert_eq!(data.lookups[0].examples, vec!["Berlin", "München"]);
}

#[test]
fn files_merge_and_drop_cross_file_duplicates() {
    let (a, b) = (fixture("merge_a.yml"), fixture("merge_b.yml"));
    let data = load_files(&[a.clone(), b.clone()]).unwrap();
    let texts: Vec<(&str, &str)> = data
        .examples
        .iter()
        .map(|e| (e.intent.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            ("greet", "hi"),
            ("greet", "hello"),
            ("bye", "bye"),
            ("greet", "good morning"),
            // Same text under another intent is no duplicate.
            ("bye", "hello"),
        ]
    );
    // "hi" twice in merge_a.yml, "hello" of greet again in merge_b.yml.
    assert_eq!(data.duplicates_dropped, 2);

    // Same result as reading each file and merging with `TrainingData::merge`.
    let mut merged = load_file(&a).unwrap();
    assert_eq!(merged.merge(load_file(&b).unwrap()), 1);
    assert_eq!(data, merged);
    assert_eq!(load_files(&[]).unwrap(), TrainingData::default());
}

#[test]
fn jsonl_fixture() {
    let data = load_file(&fixture("good.jsonl")).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.duplicates_dropped, 1);
    let transfer = &data.examples[0];
    let slices: Vec<_> = transfer
        .entities
        .iter()
        .map(|e| e.slice(&transfer.text))
        .collect();
    assert_eq!(slices, vec![Some("5 €"), Some("Zoë")]);
    assert_eq!(transfer.entities[0].value.as_deref(), Some("5 EUR"));
}

#[test]
fn errors_name_file_and_line() {
    let path = fixture("bad_annotation.yml");
    let error = load_file(&path).unwrap_err();
    assert_eq!(error.line(), Some(5));
    assert_eq!(
        error.to_string(),
        format!(
            "{}:5: unclosed entity annotation in \"pay [Zoë](PERSON\"",
            path.display()
        )
    );
    // The same through load_files, after a good file.
    let error = load_files(&[fixture("merge_a.yml"), path.clone()]).unwrap_err();
    assert_eq!(error.origin(), path.display().to_string());

    let missing = fixture("missing.yml");
    let error = load_file(&missing).unwrap_err();
    assert!(matches!(error.kind(), DataErrorKind::Io(_)));
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: cannot read file", missing.display()))
    );

    let error = load_file(Path::new("data.csv")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "data.csv: unknown file extension (expected .yml, .yaml, .jsonl or .json)"
    );

    let error = parse_bytes(
        b"nlu:\n- intent: a\n  examples: |\n    - \xff\n",
        "x.yml",
        Format::RasaYaml,
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "x.yml:4: invalid UTF-8");
    let error = parse_bytes(b"{\"text\": \"\xc3\"}", "x.jsonl", Format::Jsonl).unwrap_err();
    assert_eq!(error.line(), Some(1));
}

#[test]
fn oversized_input_is_refused() {
    let big = " ".repeat(MAX_DATASET_BYTES + 1);
    for format in [Format::RasaYaml, Format::Jsonl] {
        let error = parse_str(&big, "big.yml", format).unwrap_err();
        assert!(
            matches!(error.kind(), DataErrorKind::TooLarge { size } if *size == big.len() as u64)
        );
        assert!(
            error
                .to_string()
                .starts_with("big.yml: dataset is 67108865 bytes")
        );
        assert!(parse_bytes(big.as_bytes(), "big.yml", format).is_err());
    }
}

#[test]
fn format_from_path() {
    let cases = [
        ("nlu.yml", Some(Format::RasaYaml)),
        ("data/NLU.YAML", Some(Format::RasaYaml)),
        ("a.jsonl", Some(Format::Jsonl)),
        ("a.json", Some(Format::Jsonl)),
        ("a.md", None),
        ("yml", None),
    ];
    for (path, format) in cases {
        assert_eq!(Format::from_path(Path::new(path)), format, "{path}");
    }
}

/// Pieces of NLU YAML and JSONL that random concatenations make interesting.
const FRAGMENTS: &[&str] = &[
    "version: \"3.1\"\n",
    "version: 9\n",
    "nlu:\n",
    "- intent:",
    "- synonym:",
    "- regex: ",
    "- lookup:",
    "examples: |",
    "examples:",
    "  examples: |\n",
    "\n    - ",
    "\n  - ",
    "\n  ",
    "\n",
    "- ",
    "-",
    " ",
    "\t",
    "[",
    "]",
    "](",
    "]{",
    "(",
    ")",
    "{",
    "}",
    ":",
    "\"",
    "'",
    "\"entity\": ",
    "\"value\": ",
    "text: ",
    "&a ",
    "*a",
    "---\n",
    "|",
    "#",
    "€",
    "Zoë",
    "{\"text\": \"",
    "\"intent\": \"a\"",
    ", ",
    "\"entities\": [{\"start\": 0, \"end\": 3, \"entity\": \"t\"}]",
    "null",
];

fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(FRAGMENTS).prop_map(str::to_owned),
        1 => "[a-zü€ 0-9]{0,6}",
    ];
    prop::collection::vec(piece, 0..48).prop_map(|pieces| pieces.concat())
}

/// Pieces of an example line: annotation syntax, good and broken.
const EXAMPLE_FRAGMENTS: &[&str] = &[
    "[a",
    "[Zoë",
    "[5 €",
    "[",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    ":",
    "\"",
    "\\",
    " ",
    "](t)",
    "](t:v)",
    "](PERSON)",
    "]{\"entity\": \"t\"}",
    "]{\"entity\": \"t\", \"value\": \"v\", \"role\": \"r\"}",
    "]{\"value\": 1}",
    "€",
    "Zoë",
    "ü",
    "#",
];

/// Well-formed NLU YAML whose example lines hold random (often broken) annotations, so that the
/// cases get past the YAML parser into the annotation and item code.
fn nlu_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(EXAMPLE_FRAGMENTS).prop_map(str::to_owned),
        1 => "[a-zü€ 0-9]{0,4}",
    ];
    let example = prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat());
    let kind =
        prop::sample::select(&["intent", "intent", "intent", "synonym", "regex", "lookup"][..]);
    let item = (kind, "[a-z/_]{1,6}", prop::collection::vec(example, 1..5)).prop_map(
        |(kind, name, examples)| {
            let lines: String = examples.iter().map(|e| format!("    - {e}\n")).collect();
            format!("- {kind}: {name}\n  examples: |\n{lines}")
        },
    );
    prop::collection::vec(item, 0..5)
        .prop_map(|items| format!("version: \"3.1\"\nnlu:\n{}", items.concat()))
}

/// Parses `text` in both formats; whatever comes back must be well-formed.
fn check_never_panics(text: &str) {
    for format in [Format::RasaYaml, Format::Jsonl] {
        match parse_str(text, "fuzz.yml", format) {
            Ok(data) => {
                for example in &data.examples {
                    for entity in &example.entities {
                        assert!(entity.start < entity.end, "{example:?}");
                        assert!(entity.slice(&example.text).is_some(), "{example:?}");
                    }
                }
            }
            Err(error) => assert!(error.to_string().starts_with("fuzz.yml")),
        }
    }
}

proptest! {
    #[test]
    fn random_text_never_panics(text in any::<String>()) {
        check_never_panics(&text);
    }

    #[test]
    fn random_yamlish_text_never_panics(text in yamlish()) {
        check_never_panics(&text);
    }

    #[test]
    fn random_annotations_never_panic(text in nlu_like()) {
        check_never_panics(&text);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for format in [Format::RasaYaml, Format::Jsonl] {
            let _ = parse_bytes(&bytes, "fuzz.yml", format);
        }
    }
}
