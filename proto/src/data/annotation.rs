//! Inline entity annotations in Rasa example text.
//!
//! Three forms are read, as Rasa 3.x writes them:
//! - `[text](type)`
//! - `[text](type:value)`: the value is everything after the first `:`
//! - `[text]{"entity": "type", "value": "v", "role": "r", "group": "g"}`: a JSON object,
//!   `entity` required
//!
//! A `[` that is not closed by a `]` directly followed by `(` or `{` is literal text, as in Rasa.
//! The annotated text runs from the last `[` before that `]`, so `[a [b](t)` annotates `b` and
//! keeps `[a ` as text (Rasa's regular expression would annotate `a [b`).

use serde_json::{Map, Value};

use super::Entity;

/// What is wrong with an inline entity annotation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnotationError {
    /// `[text](type` or `[text]{...` without its closing `)` or `}`.
    #[error("unclosed entity annotation")]
    Unclosed,
    /// `[](type)`: nothing (or only spaces) is annotated.
    #[error("entity annotation with empty text")]
    EmptyText,
    /// `[text]()` or `[text](:value)` or `"entity": ""`.
    #[error("entity annotation with empty type")]
    EmptyType,
    /// A type with brackets or surrounding spaces, e.g. `[text](a [b)`.
    #[error("invalid entity type {0:?}")]
    InvalidType(String),
    /// `[text](type:)`.
    #[error("entity annotation with empty value")]
    EmptyValue,
    /// `[text]{...}` whose braces hold no valid JSON object.
    #[error("invalid JSON in entity annotation: {0}")]
    InvalidJson(String),
    /// `[text]{...}` without an `"entity"` key.
    #[error("entity annotation without \"entity\" key")]
    MissingEntity,
    /// A JSON field that must be a string is something else.
    #[error("\"{0}\" in entity annotation must be a string")]
    NotAString(&'static str),
}

/// The type and optional attributes an annotation gives its text.
struct Attributes {
    entity: String,
    value: Option<String>,
    role: Option<String>,
    group: Option<String>,
}

/// Splits an annotated example into its plain text and its entities (character offsets into the
/// plain text, sorted by start). `value` is kept only where it differs from the annotated text.
pub(crate) fn parse_annotated(raw: &str) -> Result<(String, Vec<Entity>), AnnotationError> {
    let bytes = raw.as_bytes();
    let mut plain = String::with_capacity(raw.len());
    let mut plain_chars = 0;
    let mut entities = Vec::new();
    // `raw[..copied]` has been moved to `plain` (or consumed as markup).
    let mut copied = 0;
    let mut open = None;
    let mut i = 0;
    // Scanning bytes is safe: `[`, `]`, `(` and `{` are ASCII and never part of a multi-byte
    // character, so every index used to slice is a character boundary.
    while i < bytes.len() {
        match bytes[i] {
            b'[' => open = Some(i),
            b']' => {
                if let Some(start) = open.take()
                    && let Some((attributes, used)) = parse_tail(&raw[i + 1..])?
                {
                    let text = &raw[start + 1..i];
                    if text.trim().is_empty() {
                        return Err(AnnotationError::EmptyText);
                    }
                    let before = &raw[copied..start];
                    plain.push_str(before);
                    plain_chars += before.chars().count();
                    let entity_start = plain_chars;
                    plain.push_str(text);
                    plain_chars += text.chars().count();
                    entities.push(Entity {
                        start: entity_start,
                        end: plain_chars,
                        entity: attributes.entity,
                        value: attributes.value.filter(|value| value != text),
                        role: attributes.role,
                        group: attributes.group,
                    });
                    i += 1 + used;
                    copied = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    plain.push_str(&raw[copied..]);
    entities.sort();
    Ok((plain, entities))
}

/// Reads the `(…)` or `{…}` right after a `]`: the attributes and how many bytes they took, or
/// `None` when neither follows (the brackets are then literal text).
fn parse_tail(tail: &str) -> Result<Option<(Attributes, usize)>, AnnotationError> {
    match tail.as_bytes().first() {
        Some(b'(') => parse_parenthesised(tail).map(Some),
        Some(b'{') => parse_json(tail).map(Some),
        _ => Ok(None),
    }
}

/// `(type)` or `(type:value)`.
fn parse_parenthesised(tail: &str) -> Result<(Attributes, usize), AnnotationError> {
    let close = tail.find(')').ok_or(AnnotationError::Unclosed)?;
    let inner = &tail[1..close];
    let (entity, value) = match inner.split_once(':') {
        Some((entity, value)) => (entity, Some(value)),
        None => (inner, None),
    };
    if entity.trim().is_empty() {
        return Err(AnnotationError::EmptyType);
    }
    if entity.trim() != entity || entity.contains(['[', ']', '(', '{', '}']) {
        return Err(AnnotationError::InvalidType(entity.to_owned()));
    }
    if value == Some("") {
        return Err(AnnotationError::EmptyValue);
    }
    let attributes = Attributes {
        entity: entity.to_owned(),
        value: value.map(str::to_owned),
        role: None,
        group: None,
    };
    Ok((attributes, close + 1))
}

/// `{"entity": …, "value": …, "role": …, "group": …}`; other keys are ignored, as in Rasa.
fn parse_json(tail: &str) -> Result<(Attributes, usize), AnnotationError> {
    let mut stream = serde_json::Deserializer::from_str(tail).into_iter::<Map<String, Value>>();
    let mut object = match stream.next() {
        Some(Ok(object)) => object,
        Some(Err(error)) if error.is_eof() => return Err(AnnotationError::Unclosed),
        Some(Err(error)) => {
            return Err(AnnotationError::InvalidJson(super::json_message(&error)));
        }
        None => return Err(AnnotationError::Unclosed),
    };
    let used = stream.byte_offset();
    let entity = match object.remove("entity") {
        None | Some(Value::Null) => return Err(AnnotationError::MissingEntity),
        Some(Value::String(entity)) if entity.trim().is_empty() => {
            return Err(AnnotationError::EmptyType);
        }
        Some(Value::String(entity)) => entity,
        Some(_) => return Err(AnnotationError::NotAString("entity")),
    };
    // Rasa allows any JSON value; numbers and booleans keep their JSON spelling.
    let value = match object.remove("value") {
        None | Some(Value::Null) => None,
        Some(Value::String(value)) => Some(value),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => Some(value.to_string()),
        Some(_) => return Err(AnnotationError::NotAString("value")),
    };
    let attributes = Attributes {
        entity,
        value,
        role: optional_string(&mut object, "role")?,
        group: optional_string(&mut object, "group")?,
    };
    Ok((attributes, used))
}

fn optional_string(
    object: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, AnnotationError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(AnnotationError::NotAString(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(start: usize, end: usize, entity: &str) -> Entity {
        Entity {
            start,
            end,
            entity: entity.into(),
            value: None,
            role: None,
            group: None,
        }
    }

    fn parse(raw: &str) -> (String, Vec<Entity>) {
        parse_annotated(raw).expect("valid annotation")
    }

    #[test]
    fn plain_text_has_no_entities() {
        assert_eq!(parse("hello there"), ("hello there".into(), vec![]));
    }

    #[test]
    fn type_form() {
        let (text, entities) = parse("pay my [credit card](account_type) now");
        assert_eq!(text, "pay my credit card now");
        assert_eq!(entities, vec![entity(7, 18, "account_type")]);
        assert_eq!(entities[0].slice(&text), Some("credit card"));
    }

    #[test]
    fn type_value_form_splits_at_first_colon() {
        let (text, entities) = parse("[cc](account_type:credit) and [x](t:a:b) and [y](t:y)");
        assert_eq!(text, "cc and x and y");
        let mut cc = entity(0, 2, "account_type");
        cc.value = Some("credit".into());
        let mut x = entity(7, 8, "t");
        x.value = Some("a:b".into());
        // A value equal to the annotated text is no synonym.
        assert_eq!(entities, vec![cc, x, entity(13, 14, "t")]);
    }

    #[test]
    fn json_form_with_value_role_group() {
        let (text, entities) = parse(
            r#"fly to [Berlin]{"entity": "city", "value": "BER", "role": "to", "group": "1"}!"#,
        );
        assert_eq!(text, "fly to Berlin!");
        assert_eq!(
            entities,
            vec![Entity {
                start: 7,
                end: 13,
                entity: "city".into(),
                value: Some("BER".into()),
                role: Some("to".into()),
                group: Some("1".into()),
            }]
        );
    }

    #[test]
    fn json_form_value_equal_to_text_is_dropped_and_braces_in_strings_are_fine() {
        let (text, entities) =
            parse(r#"[a}b]{"entity": "x}", "value": "a}b", "extra": {"nested": [1]}} end"#);
        assert_eq!(text, "a}b end");
        assert_eq!(entities, vec![entity(0, 3, "x}")]);
        let (_, entities) = parse(r#"[5]{"entity": "n", "value": 5}"#);
        assert_eq!(entities[0].value, None);
        let (_, entities) = parse(r#"[five]{"entity": "n", "value": 5}"#);
        assert_eq!(entities[0].value.as_deref(), Some("5"));
    }

    #[test]
    fn multi_byte_offsets_are_characters() {
        let (text, entities) = parse("überweise [5 €](amount) an [Zoë](PERSON)");
        assert_eq!(text, "überweise 5 € an Zoë");
        assert_eq!(
            entities,
            vec![entity(10, 13, "amount"), entity(17, 20, "PERSON")]
        );
        assert_eq!(entities[0].slice(&text), Some("5 €"));
        assert_eq!(entities[1].slice(&text), Some("Zoë"));
    }

    #[test]
    fn lone_brackets_are_literal_text() {
        for raw in [
            "a [b c",
            "a ] b",
            "[x] (y)",
            "[x]",
            "a [b] c ]( d",
            "list [x][{\"entity\": \"t\"}]",
        ] {
            assert_eq!(parse(raw), (raw.to_owned(), vec![]), "{raw}");
        }
        let (text, entities) = parse("[a [b](t) [c] ](d)");
        assert_eq!(text, "[a b [c] ](d)");
        assert_eq!(entities, vec![entity(3, 4, "t")]);
    }

    #[test]
    fn errors() {
        let cases = [
            ("[x](t", AnnotationError::Unclosed),
            ("[x]{\"entity\": \"t\"", AnnotationError::Unclosed),
            ("[](t)", AnnotationError::EmptyText),
            ("[  ](t)", AnnotationError::EmptyText),
            ("[x]()", AnnotationError::EmptyType),
            ("[x](:v)", AnnotationError::EmptyType),
            ("[x](t:)", AnnotationError::EmptyValue),
            ("[x]( t)", AnnotationError::InvalidType(" t".into())),
            ("[x](a [b)", AnnotationError::InvalidType("a [b".into())),
            ("[x]{\"value\": \"v\"}", AnnotationError::MissingEntity),
            ("[x]{\"entity\": \"\"}", AnnotationError::EmptyType),
            ("[x]{\"entity\": 3}", AnnotationError::NotAString("entity")),
            (
                "[x]{\"entity\": \"t\", \"role\": [1]}",
                AnnotationError::NotAString("role"),
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_annotated(raw), Err(expected), "{raw}");
        }
        assert!(matches!(
            parse_annotated("[x]{entity: t}"),
            Err(AnnotationError::InvalidJson(_))
        ));
    }

    #[test]
    fn entities_are_sorted_and_offsets_chain() {
        let (text, entities) = parse("[a](x)[b](y) [c]{\"entity\": \"z\"}");
        assert_eq!(text, "ab c");
        assert_eq!(
            entities,
            vec![entity(0, 1, "x"), entity(1, 2, "y"), entity(3, 4, "z")]
        );
    }
}
