//! Rasa YAML NLU training data (format 2.0 and 3.x).
//!
//! ```yaml
//! version: "3.1"
//! nlu:
//! - intent: check_balance
//!   examples: |
//!     - how much is on my [credit card](account_type)?
//! - synonym: credit
//!   examples: |
//!     - credit card
//! ```
//!
//! The YAML is read with an event parser that reports line numbers, into a small tree that keeps
//! each node's line, so that errors can name the line of the offending example.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

use super::annotation::parse_annotated;
use super::{AuxItem, DataError, DataErrorKind, Example, LocatedExample, Parsed};

/// Nesting deeper than this is refused: NLU files need four levels, and a bound keeps the tree
/// (and dropping it) safe from hostile input.
const MAX_DEPTH: usize = 64;

/// Format versions whose layout this parser knows.
const KNOWN_MAJOR_VERSIONS: [&str; 2] = ["2", "3"];

/// A YAML node with the (1-based) line it starts on.
#[derive(Debug)]
enum Node {
    Scalar {
        value: String,
        style: TScalarStyle,
        line: usize,
    },
    Sequence {
        items: Vec<Node>,
        line: usize,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        line: usize,
    },
    Alias {
        line: usize,
    },
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. }
            | Node::Sequence { line, .. }
            | Node::Mapping { line, .. }
            | Node::Alias { line } => *line,
        }
    }

    /// Whether this is YAML's null (`~`, `null` or nothing).
    fn is_null(&self) -> bool {
        matches!(
            self,
            Node::Scalar { value, style: TScalarStyle::Plain, .. }
                if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL")
        )
    }
}

/// A sequence or mapping being built from events.
enum Open {
    Sequence {
        items: Vec<Node>,
        line: usize,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        line: usize,
    },
}

/// Parses a Rasa YAML NLU file; duplicates are kept (the caller drops them).
pub(crate) fn parse(text: &str, origin: &str) -> Result<Parsed, DataError> {
    let mut parsed = Parsed::default();
    let Some(root) = load_tree(text, origin)? else {
        return Ok(parsed);
    };
    if root.is_null() {
        return Ok(parsed);
    }
    let entries = mapping(&root, origin, "a mapping at the top level")?;
    let mut nlu = None;
    for (key, value) in entries {
        match scalar(key, origin)? {
            "version" => check_version(value, origin),
            "nlu" if nlu.is_some() => {
                return Err(duplicate_key(key, origin));
            }
            "nlu" => nlu = Some(value),
            other => tracing::debug!(file = origin, key = other, "ignoring top-level key"),
        }
    }
    let Some(nlu) = nlu else {
        return Ok(parsed);
    };
    if nlu.is_null() {
        return Ok(parsed);
    }
    let Node::Sequence { items, .. } = nlu else {
        return Err(shape(nlu, origin, "a list under `nlu`"));
    };
    for item in items {
        parse_item(item, origin, &mut parsed)?;
    }
    Ok(parsed)
}

/// Builds the node tree; `None` for a stream without a document.
fn load_tree(text: &str, origin: &str) -> Result<Option<Node>, DataError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root = None;
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|error| {
            DataError::at(
                origin,
                error.marker().line(),
                DataErrorKind::Yaml(error.info().to_owned()),
            )
            .with_column(error.marker().col() + 1)
        })?;
        let line = mark.line();
        let node = match event {
            Event::StreamEnd => return Ok(root),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(DataError::at(
                        origin,
                        line,
                        DataErrorKind::MultipleDocuments,
                    ));
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(DataError::at(origin, line, DataErrorKind::TooDeep));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Open::Sequence {
                        items: Vec::new(),
                        line,
                    },
                    _ => Open::Mapping {
                        entries: Vec::new(),
                        key: None,
                        line,
                    },
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Sequence { items, line }) => Node::Sequence { items, line },
                // A mapping's event marks where its first value starts; its first key is
                // where a reader sees it begin.
                Some(Open::Mapping { entries, line, .. }) => Node::Mapping {
                    line: entries.first().map_or(line, |(key, _)| key.line()),
                    entries,
                },
                // The parser balances starts and ends; nothing to close means nothing to add.
                None => continue,
            },
            Event::Scalar(value, style, ..) => Node::Scalar { value, style, line },
            Event::Alias(_) => Node::Alias { line },
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Open::Sequence { items, .. }) => items.push(node),
            Some(Open::Mapping { entries, key, .. }) => match key.take() {
                Some(key) => entries.push((key, node)),
                None => *key = Some(node),
            },
        }
    }
}

/// The kinds of `nlu:` items, in the order Rasa checks for them.
#[derive(Clone, Copy)]
enum ItemKind {
    Intent,
    Synonym,
    Regex,
    Lookup,
}

impl ItemKind {
    const ALL: [ItemKind; 4] = [
        ItemKind::Intent,
        ItemKind::Synonym,
        ItemKind::Regex,
        ItemKind::Lookup,
    ];

    fn key(self) -> &'static str {
        match self {
            ItemKind::Intent => "intent",
            ItemKind::Synonym => "synonym",
            ItemKind::Regex => "regex",
            ItemKind::Lookup => "lookup",
        }
    }
}

fn parse_item(item: &Node, origin: &str, parsed: &mut Parsed) -> Result<(), DataError> {
    let entries = mapping(item, origin, "a mapping as `nlu` item")?;
    let Some((kind, (name_key, name_node))) = ItemKind::ALL
        .into_iter()
        .find_map(|kind| entry(entries, kind.key()).map(|entry| (kind, entry)))
    else {
        tracing::warn!(
            file = origin,
            line = item.line(),
            "skipping an nlu item that is no intent, synonym, regex or lookup"
        );
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for (key, _) in entries {
        if !seen.insert(scalar(key, origin)?) {
            return Err(duplicate_key(key, origin));
        }
    }
    let name = if name_node.is_null() {
        ""
    } else {
        scalar(name_node, origin)?
    };
    if name.trim().is_empty() {
        return Err(DataError::at(
            origin,
            // A missing name's null node starts where the next token does; the key is where
            // the name should be.
            name_key.line(),
            DataErrorKind::EmptyName { item: kind.key() },
        ));
    }
    let missing = || {
        DataError::at(
            origin,
            item.line(),
            DataErrorKind::MissingExamples {
                item: kind.key(),
                name: name.to_owned(),
            },
        )
    };
    let lines = match get(entries, "examples") {
        Some(examples) if !examples.is_null() => example_lines(examples, origin)?,
        _ => return Err(missing()),
    };
    if lines.is_empty() {
        return Err(missing());
    }
    let aux_items = match kind {
        ItemKind::Synonym => &mut parsed.synonyms,
        ItemKind::Regex => &mut parsed.regexes,
        ItemKind::Lookup => &mut parsed.lookups,
        ItemKind::Intent => {
            for (raw, line) in lines {
                let (text, entities) = parse_annotated(&raw).map_err(|error| {
                    DataError::at(
                        origin,
                        line,
                        DataErrorKind::Annotation {
                            error,
                            example: raw.clone(),
                        },
                    )
                })?;
                let example = Example {
                    text,
                    intent: name.to_owned(),
                    entities,
                };
                parsed.examples.push(LocatedExample { example, line });
            }
            return Ok(());
        }
    };
    aux_items.push(AuxItem {
        name: name.to_owned(),
        examples: lines.into_iter().map(|(text, _)| text).collect(),
    });
    Ok(())
}

/// The non-empty examples of an `examples:` value with their lines: a block of `- ` bullet lines,
/// or a list of strings or of `{text: ...}` mappings.
fn example_lines(examples: &Node, origin: &str) -> Result<Vec<(String, usize)>, DataError> {
    let mut lines = Vec::new();
    match examples {
        Node::Scalar { value, style, line } => {
            // A literal block keeps every line, so line `i` of the value is `i` lines below its
            // first; the parser marks the first non-blank one.
            let first = match style {
                TScalarStyle::Literal => {
                    let leading_blank = value.bytes().take_while(|&b| b == b'\n').count();
                    line.saturating_sub(leading_blank)
                }
                // Other styles fold lines together; their line numbers are approximate.
                _ => *line,
            };
            for (offset, text) in value.lines().enumerate() {
                let line = first + offset;
                let trimmed = text.trim_start();
                if trimmed.is_empty() || trimmed == "-" {
                    continue;
                }
                let Some(example) = trimmed.strip_prefix("- ") else {
                    return Err(DataError::at(
                        origin,
                        line,
                        DataErrorKind::NotABullet {
                            text: text.to_owned(),
                        },
                    ));
                };
                let example = strip(example);
                if !example.is_empty() {
                    lines.push((example.to_owned(), line));
                }
            }
        }
        Node::Sequence { items, .. } => {
            for item in items {
                let text_node = match item {
                    Node::Mapping { entries, .. } => get(entries, "text").ok_or_else(|| {
                        shape(item, origin, "an example string or a mapping with `text`")
                    })?,
                    _ => item,
                };
                let example = strip(scalar(text_node, origin)?);
                if !example.is_empty() {
                    lines.push((example.to_owned(), text_node.line()));
                }
            }
        }
        _ => {
            return Err(shape(
                examples,
                origin,
                "examples as a block of `- ` lines or a list",
            ));
        }
    }
    Ok(lines)
}

/// Trims what Rasa trims around an example: spaces and line breaks.
fn strip(example: &str) -> &str {
    example.trim_matches([' ', '\r', '\n'])
}

fn check_version(node: &Node, origin: &str) {
    let version = match node {
        Node::Scalar { value, .. } => value.as_str(),
        _ => "",
    };
    let major = version.trim().split('.').next().unwrap_or_default();
    if !KNOWN_MAJOR_VERSIONS.contains(&major) {
        tracing::warn!(
            file = origin,
            line = node.line(),
            version,
            "unknown training data format version, reading it as 3.x"
        );
    }
}

/// The value under `key` in a mapping with string keys.
fn get<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    entry(entries, key).map(|(_, value)| value)
}

/// The entry whose key is `key`.
fn entry<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a (Node, Node)> {
    entries
        .iter()
        .find(|(k, _)| matches!(k, Node::Scalar { value, .. } if value == key))
}

fn mapping<'a>(
    node: &'a Node,
    origin: &str,
    expected: &'static str,
) -> Result<&'a [(Node, Node)], DataError> {
    match node {
        Node::Mapping { entries, .. } => Ok(entries),
        _ => Err(shape(node, origin, expected)),
    }
}

fn scalar<'a>(node: &'a Node, origin: &str) -> Result<&'a str, DataError> {
    match node {
        Node::Scalar { value, .. } => Ok(value),
        Node::Alias { line } => Err(DataError::at(origin, *line, DataErrorKind::Alias)),
        _ => Err(shape(node, origin, "a string")),
    }
}

fn shape(node: &Node, origin: &str, expected: &'static str) -> DataError {
    match node {
        Node::Alias { line } => DataError::at(origin, *line, DataErrorKind::Alias),
        _ => DataError::at(origin, node.line(), DataErrorKind::Shape { expected }),
    }
}

fn duplicate_key(key: &Node, origin: &str) -> DataError {
    let name = match key {
        Node::Scalar { value, .. } => value.clone(),
        _ => String::new(),
    };
    DataError::at(
        origin,
        key.line(),
        DataErrorKind::DuplicateKey { key: name },
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Entity, Format, TrainingData, parse_str};

    fn parse_ok(text: &str) -> TrainingData {
        parse_str(text, "nlu.yml", Format::RasaYaml).expect("valid NLU YAML")
    }

    /// The error's `(line, message)`, checking that the message names file and line.
    fn parse_err(text: &str) -> (usize, String) {
        let error = parse_str(text, "nlu.yml", Format::RasaYaml).expect_err("invalid NLU YAML");
        let line = error.line().expect("error names a line");
        let message = error.to_string();
        assert!(message.starts_with(&format!("nlu.yml:{line}")), "{message}");
        (line, message)
    }

    fn texts(data: &TrainingData) -> Vec<(&str, &str)> {
        data.examples
            .iter()
            .map(|e| (e.intent.as_str(), e.text.as_str()))
            .collect()
    }

    #[test]
    fn block_examples_with_entities() {
        let data = parse_ok(
            "version: \"3.1\"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n\n    - hello  \n    -\n\
             - intent: pay\n  examples: |\n    - pay [50 €](amount) to [Zoë](PERSON)\n",
        );
        assert_eq!(
            texts(&data),
            vec![
                ("greet", "hi"),
                ("greet", "hello"),
                ("pay", "pay 50 € to Zoë")
            ]
        );
        let entities = &data.examples[2].entities;
        assert_eq!(entities.len(), 2);
        assert_eq!(entities[0].slice(&data.examples[2].text), Some("50 €"));
        assert_eq!((entities[1].start, entities[1].end), (12, 15));
    }

    #[test]
    fn crlf_line_ends_and_byte_order_mark() {
        let data =
            parse_ok("\u{feff}nlu:\r\n- intent: a\r\n  examples: |\r\n    - x\r\n    - [y](t)\r\n");
        assert_eq!(texts(&data), vec![("a", "x"), ("a", "y")]);
        assert_eq!(data.examples[1].entities[0].end, 1);
        let (line, _) =
            parse_err("nlu:\r\n- intent: a\r\n  examples: |\r\n    - x\r\n    - [y](\r\n");
        assert_eq!(line, 5);
    }

    #[test]
    fn retrieval_intents_keep_full_name() {
        let data = parse_ok("nlu:\n- intent: faq/ask_x\n  examples: |\n    - what is x\n");
        assert_eq!(texts(&data), vec![("faq/ask_x", "what is x")]);
    }

    #[test]
    fn list_examples_and_metadata() {
        let data = parse_ok(
            "nlu:\n- intent: a\n  metadata:\n    sentiment: neutral\n  examples:\n  - one\n  \
             - text: two [x](t)\n    metadata: {k: v}\n  - ''\n",
        );
        assert_eq!(texts(&data), vec![("a", "one"), ("a", "two x")]);
        assert_eq!(data.examples[1].entities[0].entity, "t");
    }

    #[test]
    fn aux_items_are_kept() {
        let data = parse_ok(
            "nlu:\n- synonym: credit\n  examples: |\n    - credit card\n    - cards\n\
             - regex: zip\n  examples: |\n    - \\d{5}\n- lookup: city\n  examples:\n  - Berlin\n",
        );
        assert!(data.examples.is_empty());
        assert_eq!(data.synonyms[0].name, "credit");
        assert_eq!(data.synonyms[0].examples, vec!["credit card", "cards"]);
        assert_eq!(data.regexes[0].examples, vec!["\\d{5}"]);
        assert_eq!(data.lookups[0].name, "city");
        assert_eq!(data.lookups[0].examples, vec!["Berlin"]);
    }

    #[test]
    fn format_2_and_other_keys() {
        let data = parse_ok(
            "version: \"2.0\"\nstories:\n- story: s\n  steps: []\nresponses: {}\n\
             nlu:\n- intent: a\n  examples: |\n    - x\n",
        );
        assert_eq!(texts(&data), vec![("a", "x")]);
    }

    #[test]
    fn unknown_version_still_parses() {
        let data = parse_ok("version: \"9.0\"\nnlu:\n- intent: a\n  examples: |\n    - x\n");
        assert_eq!(data.len(), 1);
    }

    #[test]
    fn missing_or_empty_nlu_is_empty_data() {
        for text in [
            "",
            "version: \"3.1\"\n",
            "rules: []\n",
            "nlu:\n",
            "nlu: []\n",
            "# c\n",
        ] {
            assert_eq!(parse_ok(text), TrainingData::default(), "{text:?}");
        }
    }

    #[test]
    fn unknown_items_are_skipped() {
        let data = parse_ok("nlu:\n- other: x\n- intent: a\n  examples: |\n    - x\n");
        assert_eq!(data.len(), 1);
    }

    #[test]
    fn duplicates_within_intent_are_dropped() {
        let data = parse_ok(
            "nlu:\n- intent: a\n  examples: |\n    - x\n    - [x](t)\n    - x\n    - [x](t)\n\
             - intent: b\n  examples: |\n    - x\n",
        );
        assert_eq!(texts(&data), vec![("a", "x"), ("a", "x"), ("b", "x")]);
        assert_eq!(data.duplicates_dropped, 2);
        assert_eq!(
            data.examples[1].entities,
            vec![Entity {
                start: 0,
                end: 1,
                entity: "t".into(),
                value: None,
                role: None,
                group: None
            }]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases: [(&str, usize, &str); 12] = [
            (
                "nlu:\n- intent: a\n  examples: |\n    - ok\n    - [x](t\n",
                5,
                "unclosed entity annotation in \"[x](t\"",
            ),
            (
                "nlu:\n- intent: a\n  examples: |\n\n\n    - ok\n    - [](t)\n",
                7,
                "empty text",
            ),
            (
                "nlu:\n- intent: a\n  examples: |\n    - ok\n    oops\n",
                5,
                "does not start with \"- \": \"oops\"",
            ),
            (
                "nlu:\n- intent: a\n- intent: b\n  examples: |\n    - x\n",
                2,
                "intent \"a\" has no examples",
            ),
            (
                "nlu:\n- intent: a\n  examples: |\n\n",
                2,
                "intent \"a\" has no examples",
            ),
            (
                "nlu:\n- intent: b\n  examples: |\n    - x\n- intent: ''\n  examples: |\n    - x\n",
                5,
                "empty intent name",
            ),
            (
                "nlu:\n- intent:\n  examples: |\n    - x\n",
                2,
                "empty intent name",
            ),
            (
                "nlu:\n- intent: a\n  examples: |\n    - x\n  bad: [\n",
                6,
                "invalid YAML",
            ),
            ("nlu:\n  intent: a\n", 2, "expected a list under `nlu`"),
            (
                "nlu:\n- intent: a\n  examples:\n  - x\n  - '[y](t:)'\n",
                5,
                "empty value",
            ),
            (
                "nlu:\n- intent: a\n  examples:\n  - x\n  - {y: 1}\n",
                5,
                "a mapping with `text`",
            ),
            (
                "nlu:\n- intent: a\n  examples: |\n    - x\n  examples: |\n    - y\n",
                5,
                "duplicate key \"examples\"",
            ),
        ];
        for (text, line, message) in cases {
            let (got_line, got) = parse_err(text);
            assert_eq!(got_line, line, "{text:?}: {got}");
            assert!(got.contains(message), "{text:?}: {got}");
        }
    }

    #[test]
    fn structural_errors() {
        assert_eq!(parse_err("- a\n- b\n").0, 1);
        assert!(
            parse_err("a: 1\n---\nb: 2\n")
                .1
                .contains("one YAML document")
        );
        let nested = format!("nlu: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert!(parse_err(&nested).1.contains("too deeply"));
        let alias =
            "nlu:\n- intent: &a x\n  examples: |\n    - y\n- intent: *a\n  examples: |\n    - z\n";
        assert_eq!(
            parse_err(alias),
            (
                5,
                "nlu.yml:5: YAML aliases are not supported in training data".into()
            )
        );
    }
}
