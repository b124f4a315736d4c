//! JSONL training data: one example object per line, blank lines skipped.
//!
//! ```json
//! {"text": "pay 50 € to Zoë", "intent": "pay", "entities": [{"start": 12, "end": 15, "entity": "PERSON"}]}
//! ```
//!
//! `entities` is optional; `start`/`end` are character offsets into `text`, and `value`, `role`
//! and `group` are optional. Other keys are ignored.
//!
//! [`TrainingData::to_jsonl`] writes this format back (e.g. several files merged into one
//! upload). JSONL holds examples only: synonym, regex and lookup items are not written.

use serde::{Deserialize, Serialize};

use super::{
    CharIndex, DataError, DataErrorKind, Entity, Example, LocatedExample, Parsed, TrainingData,
};

#[derive(Deserialize)]
struct Record {
    text: String,
    intent: String,
    #[serde(default)]
    entities: Option<Vec<RecordEntity>>,
}

#[derive(Deserialize)]
struct RecordEntity {
    start: usize,
    end: usize,
    entity: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

/// One example as [`TrainingData::to_jsonl`] writes it.
#[derive(Serialize)]
struct RecordOut<'a> {
    text: &'a str,
    intent: &'a str,
    #[serde(skip_serializing_if = "<[Entity]>::is_empty")]
    entities: &'a [Entity],
}

impl TrainingData {
    /// The examples as JSONL, one object per line in example order, each line ending in `\n`;
    /// parsing the result gives back the same examples. Entities keep their character offsets
    /// and their `value`, `role` and `group` where set. Synonym, regex and lookup items are not
    /// part of the format and are left out (training reads only the examples).
    ///
    /// ```
    /// use refit_proto::data::{Example, Format, TrainingData, parse_str};
    ///
    /// let data = TrainingData {
    ///     examples: vec![Example { text: "hi".into(), intent: "greet".into(), entities: vec![] }],
    ///     ..Default::default()
    /// };
    /// assert_eq!(data.to_jsonl(), "{\"text\":\"hi\",\"intent\":\"greet\"}\n");
    /// let back = parse_str(&data.to_jsonl(), "data.jsonl", Format::Jsonl).unwrap();
    /// assert_eq!(back.examples, data.examples);
    /// ```
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for example in &self.examples {
            let record = RecordOut {
                text: &example.text,
                intent: &example.intent,
                entities: &example.entities,
            };
            out.push_str(&serde_json::to_string(&record).expect("an example always serialises"));
            out.push('\n');
        }
        out
    }
}

/// Parses JSONL training data; duplicates are kept (the caller drops them).
pub(crate) fn parse(text: &str, origin: &str) -> Result<Parsed, DataError> {
    let mut parsed = Parsed::default();
    for (index, line_text) in text.lines().enumerate() {
        let line = index + 1;
        if line_text.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(line_text).map_err(|error| {
            let kind = DataErrorKind::Json(super::json_message(&error));
            let error_at = DataError::at(origin, line, kind);
            // serde_json counts columns within the line it was given, from 1 (0: unknown).
            match error.column() {
                0 => error_at,
                column => error_at.with_column(column),
            }
        })?;
        let example = to_example(record).map_err(|kind| DataError::at(origin, line, kind))?;
        parsed.examples.push(LocatedExample { example, line });
    }
    Ok(parsed)
}

/// Checks a record and turns it into an example.
fn to_example(record: Record) -> Result<Example, DataErrorKind> {
    if record.intent.trim().is_empty() {
        return Err(DataErrorKind::EmptyName { item: "intent" });
    }
    if record.text.trim().is_empty() {
        return Err(DataErrorKind::EmptyText);
    }
    let mut entities = Vec::new();
    let annotated = record.entities.unwrap_or_default();
    // Indexed once: a line may hold many entities.
    let chars = (!annotated.is_empty()).then(|| CharIndex::new(&record.text));
    for entity in annotated {
        if entity.entity.trim().is_empty() {
            return Err(DataErrorKind::EmptyEntityType);
        }
        let chars = chars.as_ref().expect("indexed when there are entities");
        let slice = chars
            .slice(entity.start, entity.end)
            .filter(|_| entity.start < entity.end)
            .ok_or_else(|| DataErrorKind::EntitySpan {
                start: entity.start,
                end: entity.end,
                chars: chars.chars(),
            })?;
        entities.push(Entity {
            start: entity.start,
            end: entity.end,
            entity: entity.entity,
            value: entity.value.filter(|value| value != slice),
            role: entity.role,
            group: entity.group,
        });
    }
    entities.sort();
    Ok(Example {
        text: record.text,
        intent: record.intent,
        entities,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Format, TrainingData, parse_str};

    fn parse_ok(text: &str) -> TrainingData {
        parse_str(text, "data.jsonl", Format::Jsonl).expect("valid JSONL")
    }

    #[test]
    fn good_lines() {
        let data = parse_ok(concat!(
            r#"{"text": "hi", "intent": "greet"}"#,
            "\n\n   \n",
            r#"{"text": "überweise 5 € an Zoë", "intent": "pay", "extra": 1, "entities": ["#,
            r#"{"start": 17, "end": 20, "entity": "PERSON", "value": "Zoë", "role": "to"},"#,
            r#"{"start": 10, "end": 13, "entity": "amount", "value": "5 EUR", "group": null}]}"#,
            "\r\n",
            r#"{"text": "hi", "intent": "greet", "entities": null}"#,
            "\n",
            r#"{"text": "faq", "intent": "faq/ask_x", "entities": []}"#,
        ));
        assert_eq!(data.len(), 3);
        assert_eq!(data.duplicates_dropped, 1);
        let pay = &data.examples[1];
        assert_eq!(pay.intent, "pay");
        // Sorted by start; a value equal to the slice becomes None.
        assert_eq!(pay.entities[0].entity, "amount");
        assert_eq!(pay.entities[0].value.as_deref(), Some("5 EUR"));
        assert_eq!(pay.entities[0].slice(&pay.text), Some("5 €"));
        assert_eq!(pay.entities[1].slice(&pay.text), Some("Zoë"));
        assert_eq!(pay.entities[1].value, None);
        assert_eq!(pay.entities[1].role.as_deref(), Some("to"));
        assert_eq!(data.examples[2].intent, "faq/ask_x");
    }

    #[test]
    fn bad_lines_name_the_line() {
        let good = r#"{"text": "hi", "intent": "greet"}"#;
        let cases = [
            (
                r#"{"text": "hi""#,
                "invalid JSON example: EOF while parsing an object",
            ),
            (r#"{"text": "hi"}"#, "missing field `intent`"),
            (r#"{"text": 5, "intent": "a"}"#, "invalid type: integer"),
            (r#"[1, 2]"#, "invalid JSON example"),
            (r#"{"text": "hi", "intent": " "}"#, "empty intent name"),
            (r#"{"text": "", "intent": "a"}"#, "empty example text"),
            (
                r#"{"text": "Zoë", "intent": "a", "entities": [{"start": 0, "end": 4, "entity": "p"}]}"#,
                "entity span 0..4 does not fit the text (3 characters)",
            ),
            (
                r#"{"text": "Zoë", "intent": "a", "entities": [{"start": 2, "end": 2, "entity": "p"}]}"#,
                "entity span 2..2",
            ),
            (
                r#"{"text": "Zoë", "intent": "a", "entities": [{"start": 0, "end": 1, "entity": ""}]}"#,
                "empty entity type",
            ),
            (
                r#"{"text": "Zoë", "intent": "a", "entities": [{"start": 0, "end": 1}]}"#,
                "missing field `entity`",
            ),
        ];
        for (bad, message) in cases {
            let text = format!("{good}\n\n{bad}\n{good}\n");
            let error = parse_str(&text, "data.jsonl", Format::Jsonl).expect_err(bad);
            assert_eq!(error.origin(), "data.jsonl");
            assert_eq!(error.line(), Some(3), "{bad}");
            let shown = error.to_string();
            assert!(shown.starts_with("data.jsonl:3"), "{shown}");
            assert!(shown.contains(message), "{bad}: {shown}");
        }
    }

    #[test]
    fn written_jsonl_reads_back_to_the_same_examples() {
        let yaml = concat!(
            "version: \"3.1\"\n",
            "nlu:\n",
            "- intent: pay\n",
            "  examples: |\n",
            "    - überweise [5 €](amount) an [Zoë]{\"entity\": \"PERSON\", \"role\": \"to\"}\n",
            "    - send [fifty](amount:50) to [Bob]{\"entity\": \"PERSON\", \"group\": \"1\"}\n",
            "    - a \\\"quoted\\\" line\n",
            "- intent: faq/ask_x\n",
            "  examples: |\n",
            "    - what is x?\n",
            "- synonym: savings\n",
            "  examples: |\n",
            "    - piggy bank\n",
        );
        let data = parse_str(yaml, "nlu.yml", Format::RasaYaml).expect("valid YAML");
        assert_eq!(data.len(), 4);
        assert!(
            data.examples
                .iter()
                .any(|e| e.entities.iter().any(|x| x.value.is_some()))
        );
        assert!(
            data.examples
                .iter()
                .any(|e| e.entities.iter().any(|x| x.role.is_some()))
        );
        assert!(
            data.examples
                .iter()
                .any(|e| e.entities.iter().any(|x| x.group.is_some()))
        );

        let jsonl = data.to_jsonl();
        assert_eq!(jsonl.lines().count(), data.len(), "{jsonl}");
        assert!(jsonl.ends_with('\n'));
        let back = parse_ok(&jsonl);
        assert_eq!(back.examples, data.examples);
        assert_eq!(back.duplicates_dropped, 0);
        // JSONL holds examples only.
        assert!(back.synonyms.is_empty());
        // Writing is deterministic, so the same data uploads under the same content address.
        assert_eq!(back.to_jsonl(), jsonl);
        assert_eq!(TrainingData::default().to_jsonl(), "");
    }

    #[test]
    fn json_errors_carry_a_column() {
        let error = parse_str("{\"text\": x}", "d.jsonl", Format::Jsonl).unwrap_err();
        assert_eq!((error.line(), error.column()), (Some(1), Some(10)));
        assert!(
            error
                .to_string()
                .starts_with("d.jsonl:1:10: invalid JSON example")
        );
    }
}
