//! Training data: the in-memory form of an NLU dataset and the parsers that read it.
//!
//! Layout:
//! - this file: [`TrainingData`], [`Example`], [`Entity`] and the helpers shared by the parsers
//! - `rasa_yaml`: Rasa YAML NLU (format 2.0 and 3.x)
//! - `jsonl`: one JSON example per line
//! - `annotation`: inline entity annotations (`[text](type)`, `[text]{...}`)
//! - `conflicts`: words a dataset labels two ways ([`DataConflicts`])
//!
//! Entity offsets are **character** offsets (Unicode scalar values) into the de-annotated text,
//! as Rasa and its JSON formats count them; [`Entity::slice`] turns them into a `&str`.
//!
//! Reading: [`load_files`] / [`load_file`] pick the [`Format`] from the file extension,
//! [`parse_str`] / [`parse_bytes`] take it explicitly. Every error is a [`DataError`] that names
//! the file and, where there is one, the line. Exact duplicates within an intent are dropped,
//! counted in [`TrainingData::duplicates_dropped`] and logged.

mod annotation;
mod conflicts;
mod jsonl;
mod rasa_yaml;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use annotation::AnnotationError;
pub use conflicts::{DataConflicts, EntityConflict, IntentConflict, LabelUse, MAX_LISTED};

/// One annotated training example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The plain text, annotations removed.
    pub text: String,
    /// The full intent name, e.g. `greet` or the retrieval intent `faq/ask_x`.
    pub intent: String,
    /// Entity mentions, sorted by start offset.
    #[serde(default)]
    pub entities: Vec<Entity>,
}

/// An entity mention inside an example's text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entity {
    /// Start, in characters, into the plain text (inclusive).
    pub start: usize,
    /// End, in characters, into the plain text (exclusive).
    pub end: usize,
    /// The entity type, e.g. `account_type`.
    pub entity: String,
    /// The normalised value when it differs from the annotated words (a synonym); `None` means
    /// the value is the annotated text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The entity's role, if annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The entity's group, if annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Entity {
    /// The annotated words: `text[start..end]` in characters. `None` if the offsets do not fit.
    pub fn slice<'a>(&self, text: &'a str) -> Option<&'a str> {
        char_slice(text, self.start, self.end)
    }
}

/// A text's character boundaries, for slicing it by character offsets many times (an example
/// with many entities) in constant time each, where [`char_slice`] walks the text every time.
pub struct CharIndex<'a> {
    text: &'a str,
    /// The byte offset of every character, and the text's length last.
    bounds: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    /// Indexes `text` (one pass).
    pub fn new(text: &'a str) -> Self {
        let bounds = text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .collect();
        Self { text, bounds }
    }

    /// The text's length in characters.
    pub fn chars(&self) -> usize {
        self.bounds.len() - 1
    }

    /// `text[start..end]` with character offsets; `None` if they do not fit.
    pub fn slice(&self, start: usize, end: usize) -> Option<&'a str> {
        if start > end {
            return None;
        }
        let from = *self.bounds.get(start)?;
        let to = *self.bounds.get(end)?;
        Some(&self.text[from..to])
    }
}

/// `text[start..end]` with character offsets (walks the text: for many slices of one text use a
/// [`CharIndex`]).
pub fn char_slice(text: &str, start: usize, end: usize) -> Option<&str> {
    if start > end {
        return None;
    }
    let mut indices = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()));
    let from = indices.nth(start)?;
    let to = if end == start {
        from
    } else {
        indices.nth(end - start - 1)?
    };
    Some(&text[from..to])
}

/// A `synonym:`, `regex:` or `lookup:` item, kept as it was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuxItem {
    /// Its name: the synonym's value, the regex's or lookup table's name.
    pub name: String,
    /// Its example lines, without the leading `- `.
    pub examples: Vec<String>,
}

/// A whole dataset, possibly merged from several files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingData {
    /// The intent examples, in file order, exact duplicates within an intent removed.
    pub examples: Vec<Example>,
    /// `synonym:` items.
    #[serde(default)]
    pub synonyms: Vec<AuxItem>,
    /// `regex:` items.
    #[serde(default)]
    pub regexes: Vec<AuxItem>,
    /// `lookup:` items.
    #[serde(default)]
    pub lookups: Vec<AuxItem>,
    /// How many exact duplicates were dropped while reading.
    #[serde(default)]
    pub duplicates_dropped: usize,
}

/// `synonyms.json`, stored with a version: the map [`TrainingData::synonym_map`] builds, keyed by
/// the lowercased words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynonymFile {
    /// Lowercased words → the value to report.
    pub synonyms: BTreeMap<String, String>,
}

impl SynonymFile {
    /// The value to report for an entity's words: its synonym, or the words as they are.
    pub fn map<'a>(&'a self, words: &'a str) -> &'a str {
        self.synonyms
            .get(&words.to_lowercase())
            .map_or(words, String::as_str)
    }
}

/// The labels a dataset uses, with example counts. The fine-tune decision compares these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    /// Examples per intent.
    pub intents: BTreeMap<String, usize>,
    /// Mentions per entity type.
    pub entities: BTreeMap<String, usize>,
    /// Mentions per role.
    pub roles: BTreeMap<String, usize>,
    /// Mentions per group.
    pub groups: BTreeMap<String, usize>,
}

impl TrainingData {
    /// The number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The distinct intents, sorted.
    pub fn intents(&self) -> BTreeSet<&str> {
        self.examples.iter().map(|e| e.intent.as_str()).collect()
    }

    /// The number of entity mentions.
    pub fn entity_mentions(&self) -> usize {
        self.examples.iter().map(|e| e.entities.len()).sum()
    }

    /// The labels used and how often.
    pub fn label_counts(&self) -> LabelCounts {
        let mut counts = LabelCounts::default();
        for example in &self.examples {
            *counts.intents.entry(example.intent.clone()).or_default() += 1;
            for entity in &example.entities {
                *counts.entities.entry(entity.entity.clone()).or_default() += 1;
                if let Some(role) = &entity.role {
                    *counts.roles.entry(role.clone()).or_default() += 1;
                }
                if let Some(group) = &entity.group {
                    *counts.groups.entry(group.clone()).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Entity synonyms, as Rasa's `EntitySynonymMapper` learns them: every `synonym:` item's
    /// examples and every annotated entity whose `value` differs from its words map (lowercased)
    /// to that value. Where two disagree, the annotation written last wins, as in Rasa.
    pub fn synonym_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for item in &self.synonyms {
            for variant in &item.examples {
                let variant = variant.trim();
                if !variant.is_empty() && variant != item.name {
                    map.insert(variant.to_lowercase(), item.name.clone());
                }
            }
        }
        for example in &self.examples {
            for entity in &example.entities {
                if let (Some(value), Some(words)) = (&entity.value, entity.slice(&example.text))
                    && words != value
                {
                    map.insert(words.to_lowercase(), value.clone());
                }
            }
        }
        map
    }

    /// Appends another dataset, dropping examples that are exact duplicates (same text, intent
    /// and entities) of ones already here. Returns how many were dropped.
    pub fn merge(&mut self, other: TrainingData) -> usize {
        let mut seen: BTreeSet<(String, String, Vec<Entity>)> = self
            .examples
            .iter()
            .map(|e| (e.intent.clone(), e.text.clone(), e.entities.clone()))
            .collect();
        let mut dropped = 0;
        for example in other.examples {
            let key = (
                example.intent.clone(),
                example.text.clone(),
                example.entities.clone(),
            );
            if seen.insert(key) {
                self.examples.push(example);
            } else {
                dropped += 1;
            }
        }
        extend_unique(&mut self.synonyms, other.synonyms);
        extend_unique(&mut self.regexes, other.regexes);
        extend_unique(&mut self.lookups, other.lookups);
        self.duplicates_dropped += other.duplicates_dropped + dropped;
        dropped
    }
}

/// Appends the items not already present (the same synonym repeated in every split file of a
/// dataset is kept once), in linear time.
fn extend_unique(items: &mut Vec<AuxItem>, more: Vec<AuxItem>) {
    if more.is_empty() {
        return;
    }
    let mut present: HashSet<AuxItem> = items.iter().cloned().collect();
    for item in more {
        if present.insert(item.clone()) {
            items.push(item);
        }
    }
}

impl PartialOrd for Entity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.start,
            self.end,
            &self.entity,
            &self.value,
            &self.role,
            &self.group,
        )
            .cmp(&(
                other.start,
                other.end,
                &other.entity,
                &other.value,
                &other.role,
                &other.group,
            ))
    }
}

/// The largest dataset, in bytes, that the parsers accept; larger input is refused with
/// [`DataErrorKind::TooLarge`] before it is parsed.
pub const MAX_DATASET_BYTES: usize = 64 * 1024 * 1024;

/// A training-data file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Rasa YAML NLU, format 2.0 and 3.x (`.yml`, `.yaml`).
    RasaYaml,
    /// One JSON example per line (`.jsonl`, `.json`).
    Jsonl,
}

impl Format {
    /// The format a file extension stands for (case-insensitive): `.yml`/`.yaml` → Rasa YAML,
    /// `.jsonl`/`.json` → JSONL; `None` for anything else.
    pub fn from_path(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "yml" | "yaml" => Some(Format::RasaYaml),
            "jsonl" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// Why a dataset could not be read, with the file and line it happened at.
///
/// Displays as `nlu.yml:12: unclosed entity annotation in "…"` (`file:line:column: what` when
/// the column is known, `file: what` when the problem is not on one line).
#[derive(Debug, thiserror::Error)]
#[error("{origin}{}: {kind}", Location(.line, .column))]
pub struct DataError {
    origin: String,
    line: Option<usize>,
    column: Option<usize>,
    kind: DataErrorKind,
}

impl DataError {
    pub(crate) fn new(origin: &str, line: Option<usize>, kind: DataErrorKind) -> Self {
        DataError {
            origin: origin.to_owned(),
            line,
            column: None,
            kind,
        }
    }

    pub(crate) fn at(origin: &str, line: usize, kind: DataErrorKind) -> Self {
        DataError::new(origin, Some(line), kind)
    }

    pub(crate) fn with_column(mut self, column: usize) -> Self {
        self.column = Some(column);
        self
    }

    /// The file (or other origin) the data came from, as given to the parser.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line of the problem, if it is on one line.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The 1-based column of the problem, where known.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// What is wrong.
    pub fn kind(&self) -> &DataErrorKind {
        &self.kind
    }
}

/// `:line` or `:line:column`, or nothing.
struct Location<'a>(&'a Option<usize>, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}"),
            (Some(line), None) => write!(f, ":{line}"),
            _ => Ok(()),
        }
    }
}

/// What is wrong with a dataset; see [`DataError`] for where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataErrorKind {
    /// The file could not be read.
    #[error("cannot read file: {0}")]
    Io(std::io::Error),
    /// The input is larger than [`MAX_DATASET_BYTES`].
    #[error("dataset is {size} bytes, more than the limit of {MAX_DATASET_BYTES} bytes")]
    TooLarge {
        /// The input's size in bytes (at least this many when read from a growing file).
        size: u64,
    },
    /// The input is not valid UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// The file extension names no known format.
    #[error("unknown file extension (expected .yml, .yaml, .jsonl or .json)")]
    UnknownFormat,
    /// The YAML is malformed.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The YAML stream holds more than one document.
    #[error("expected one YAML document, found several")]
    MultipleDocuments,
    /// The YAML nests deeper than any NLU file needs.
    #[error("YAML nested too deeply")]
    TooDeep,
    /// A YAML alias (`*name`) where training data is read; aliases are not supported.
    #[error("YAML aliases are not supported in training data")]
    Alias,
    /// The YAML is well-formed but not shaped like an NLU file.
    #[error("expected {expected}")]
    Shape {
        /// What was expected there, e.g. "a list under `nlu`".
        expected: &'static str,
    },
    /// A mapping key appears twice.
    #[error("duplicate key {key:?}")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// An intent (or synonym, regex, lookup) item with an empty name.
    #[error("empty {item} name")]
    EmptyName {
        /// `intent`, `synonym`, `regex` or `lookup`.
        item: &'static str,
    },
    /// An item without examples, or whose examples are all empty.
    #[error("{item} {name:?} has no examples")]
    MissingExamples {
        /// `intent`, `synonym`, `regex` or `lookup`.
        item: &'static str,
        /// The item's name.
        name: String,
    },
    /// A line of an `examples: |` block that is not a `- ` bullet.
    #[error("example line does not start with \"- \": {}", Excerpt(.text))]
    NotABullet {
        /// The offending line.
        text: String,
    },
    /// An inline entity annotation is malformed.
    #[error("{error} in {}", Excerpt(.example))]
    Annotation {
        /// What is wrong with the annotation.
        error: AnnotationError,
        /// The example as written.
        example: String,
    },
    /// A JSONL line is not a valid example object.
    #[error("invalid JSON example: {0}")]
    Json(String),
    /// An example whose text is empty.
    #[error("empty example text")]
    EmptyText,
    /// A JSONL entity with an empty type.
    #[error("empty entity type")]
    EmptyEntityType,
    /// JSONL entity offsets that do not fit the text.
    #[error("entity span {start}..{end} does not fit the text ({chars} characters)")]
    EntitySpan {
        /// The start offset, in characters.
        start: usize,
        /// The end offset, in characters.
        end: usize,
        /// The text's length in characters.
        chars: usize,
    },
}

/// A quoted example, shortened to keep error messages readable.
struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 120;
        match self.0.char_indices().nth(MAX_CHARS) {
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// A serde_json error's message without its " at line L column C" suffix (callers name the
/// position themselves).
pub(crate) fn json_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    }
}

/// An example with the line it was written on, before duplicates are dropped.
#[derive(Debug)]
pub(crate) struct LocatedExample {
    pub(crate) example: Example,
    pub(crate) line: usize,
}

/// What a parser read from one file, duplicates included.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) examples: Vec<LocatedExample>,
    pub(crate) synonyms: Vec<AuxItem>,
    pub(crate) regexes: Vec<AuxItem>,
    pub(crate) lookups: Vec<AuxItem>,
}

/// Accumulates parsed files into one [`TrainingData`], dropping exact duplicates (same intent,
/// text and entities) the way [`TrainingData::merge`] does, but knowing where each example was
/// written so that the warning can name both places.
#[derive(Default)]
struct Collector {
    data: TrainingData,
    origins: Vec<String>,
    /// Key → (index into `origins`, line) of its first occurrence.
    seen: HashMap<(String, String, Vec<Entity>), (usize, usize)>,
}

impl Collector {
    fn add(&mut self, origin: &str, parsed: Parsed) {
        let origin_index = self.origins.len();
        self.origins.push(origin.to_owned());
        let mut duplicates = 0;
        for LocatedExample { example, line } in parsed.examples {
            let key = (
                example.intent.clone(),
                example.text.clone(),
                example.entities.clone(),
            );
            if let Some(&(first_origin, first_line)) = self.seen.get(&key) {
                if duplicates < DUPLICATES_NAMED {
                    tracing::warn!(
                        file = origin,
                        line,
                        intent = %example.intent,
                        first = %format_args!("{}:{first_line}", self.origins[first_origin]),
                        "dropping duplicate example"
                    );
                }
                duplicates += 1;
                self.data.duplicates_dropped += 1;
            } else {
                self.seen.insert(key, (origin_index, line));
                self.data.examples.push(example);
            }
        }
        if duplicates > DUPLICATES_NAMED {
            tracing::warn!(
                file = origin,
                more = duplicates - DUPLICATES_NAMED,
                "dropped more duplicate examples"
            );
        }
        extend_unique(&mut self.data.synonyms, parsed.synonyms);
        extend_unique(&mut self.data.regexes, parsed.regexes);
        extend_unique(&mut self.data.lookups, parsed.lookups);
    }
}

/// Duplicate examples of one file named in a warning each; the rest are counted in one.
const DUPLICATES_NAMED: usize = 5;

/// Parses a dataset held in memory. `origin` names it in errors and logs (usually the file
/// name). Exact duplicates within an intent are dropped and counted.
pub fn parse_str(text: &str, origin: &str, format: Format) -> Result<TrainingData, DataError> {
    let mut collector = Collector::default();
    collector.add(origin, parse_located(text, origin, format)?);
    Ok(collector.data)
}

/// Like [`parse_str`], for bytes that must be UTF-8; an invalid byte is reported with its line.
pub fn parse_bytes(bytes: &[u8], origin: &str, format: Format) -> Result<TrainingData, DataError> {
    let text = utf8(bytes, origin)?;
    parse_str(text, origin, format)
}

/// Reads one file, choosing the format from its extension ([`Format::from_path`]).
pub fn load_file(path: &Path) -> Result<TrainingData, DataError> {
    load_files(&[path.to_path_buf()])
}

/// Reads several files and merges them into one dataset, in order. Examples that exactly
/// duplicate an earlier one, in the same file or an earlier file, are dropped and counted, as
/// [`TrainingData::merge`] does; synonym, regex and lookup items are concatenated, identical
/// items kept once.
pub fn load_files(paths: &[PathBuf]) -> Result<TrainingData, DataError> {
    let mut collector = Collector::default();
    for path in paths {
        let origin = path.display().to_string();
        let format = Format::from_path(path)
            .ok_or_else(|| DataError::new(&origin, None, DataErrorKind::UnknownFormat))?;
        let bytes = read_limited(path, &origin)?;
        let text = utf8(&bytes, &origin)?;
        let parsed = parse_located(text, &origin, format)?;
        collector.add(&origin, parsed);
    }
    Ok(collector.data)
}

fn parse_located(text: &str, origin: &str, format: Format) -> Result<Parsed, DataError> {
    if text.len() > MAX_DATASET_BYTES {
        return Err(too_large(origin, text.len() as u64));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::RasaYaml => rasa_yaml::parse(text, origin),
        Format::Jsonl => jsonl::parse(text, origin),
    }
}

fn too_large(origin: &str, size: u64) -> DataError {
    DataError::new(origin, None, DataErrorKind::TooLarge { size })
}

fn utf8<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a str, DataError> {
    if bytes.len() > MAX_DATASET_BYTES {
        return Err(too_large(origin, bytes.len() as u64));
    }
    std::str::from_utf8(bytes).map_err(|error| {
        let valid = &bytes[..error.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        DataError::at(origin, line, DataErrorKind::InvalidUtf8)
    })
}

/// Reads a file, refusing one larger than [`MAX_DATASET_BYTES`] without reading it all.
fn read_limited(path: &Path, origin: &str) -> Result<Vec<u8>, DataError> {
    let io_error = |error| DataError::new(origin, None, DataErrorKind::Io(error));
    let file = std::fs::File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if size > MAX_DATASET_BYTES as u64 {
        return Err(too_large(origin, size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte over the limit tells a file that grew since `metadata` apart from one that fits.
    file.take(MAX_DATASET_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > MAX_DATASET_BYTES {
        return Err(too_large(origin, bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_slice_counts_characters_not_bytes() {
        let text = "überweise 5 € an Zoë";
        assert_eq!(char_slice(text, 0, 9), Some("überweise"));
        assert_eq!(char_slice(text, 12, 13), Some("€"));
        assert_eq!(char_slice(text, 17, 20), Some("Zoë"));
        assert_eq!(char_slice(text, 20, 20), Some(""));
        assert_eq!(char_slice(text, 17, 21), None);
        assert_eq!(char_slice(text, 3, 2), None);
    }

    #[test]
    fn merge_drops_exact_duplicates_only() {
        let ex = |t: &str, i: &str| Example {
            text: t.into(),
            intent: i.into(),
            entities: vec![],
        };
        let mut a = TrainingData {
            examples: vec![ex("hi", "greet")],
            ..Default::default()
        };
        let b = TrainingData {
            examples: vec![ex("hi", "greet"), ex("hi", "other"), ex("hello", "greet")],
            ..Default::default()
        };
        assert_eq!(a.merge(b), 1);
        assert_eq!(a.len(), 3);
        assert_eq!(a.duplicates_dropped, 1);
    }
}
