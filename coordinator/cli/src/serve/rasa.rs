//! The body of Rasa's `POST /model/parse` answer, from a model's class probabilities and
//! entities: what a Rasa assistant (`endpoints.yml` `nlu: url:`) or any Rasa NLU client reads.
//!
//! ```json
//! {"text": "...",
//!  "intent": {"name": "faq", "confidence": 0.93},
//!  "entities": [{"entity": "account_type", "start": 14, "end": 22, "confidence_entity": 0.98,
//!                "value": "checking", "extractor": "DIETClassifier",
//!                "processors": ["EntitySynonymMapper"]}],
//!  "text_tokens": [[0, 4], ...],
//!  "intent_ranking": [{"name": "faq", "confidence": 0.93}, ...],
//!  "response_selector": {"all_retrieval_intents": ["faq"], "default": {...}, "faq": {...}}}
//! ```
//!
//! - **Ranking**: at most [`RANKING_LENGTH`] entries (Rasa's default `ranking_length`), most
//!   likely first, confidences as the model gives them (not renormalised, as Rasa 3 by default).
//! - **Retrieval intents** (`faq/ask_balance`): refit's model predicts every `faq/*` class as a
//!   class of its own, where Rasa has DIET predict `faq` and a ResponseSelector pick the
//!   response. refit reports them the way Rasa does: `intent` and `intent_ranking` name the
//!   base intent (`faq`), whose confidence is the **sum** of its classes' probabilities (the
//!   probability that the text is some `faq` question: the classes are disjoint outcomes of one
//!   softmax). `response_selector` then has, for each retrieval intent `r`, a block `r` whose
//!   `response` is the most likely `r/*` class with its probability **given `r`**
//!   (`p(r/x) / Σ p(r/*)`) and whose `ranking` ranks the `r/*` classes the same way; and a
//!   `default` block, Rasa's selector trained on every retrieval intent, ranking all retrieval
//!   classes given that the text is one of them. Rasa's `ActionRetrieveResponse` reads the
//!   block named after its intent, else `default`, and from it `utter_action` (Rasa 3) or
//!   `template_name` (Rasa 2).
//! - **Response texts** are not part of a refit version (they live in the assistant's domain,
//!   `responses.yml`), so `responses` and `response_templates` are empty lists: Rasa 3 looks the
//!   response up by `utter_action` in its domain.
//! - **ids**: Rasa's ids are Python `hash()`es of the label, which change from process to
//!   process; refit's are the first 8 bytes of the label's sha256 read as an `i64`, stable.
//! - **Entities** come from the DIET-lite entity head (`extractor: "DIETClassifier"`).
//!   `confidence_entity` is the lowest probability of the chosen tag over the entity's tokens
//!   (as Rasa). `value` is the entity's words, mapped through the version's `synonyms.json` as
//!   Rasa's `EntitySynonymMapper` does: when the lowercased words are a synonym, `value` is what
//!   they map to and `processors` is `["EntitySynonymMapper"]`.
//! - **Empty text** (or only whitespace) gets Rasa's empty parse: `{"text": "", "intent":
//!   {"name": null, "confidence": 0.0}, "entities": [], ...}`, without running the model.

use std::collections::BTreeMap;

use refit_proto::data::{SynonymFile, char_slice};
use refit_proto::keys::sha256_hex;
use serde::Serialize;

/// Intents (and responses) listed in a ranking, as Rasa's `ranking_length` default.
pub(crate) const RANKING_LENGTH: usize = 10;
/// The extractor Rasa names for DIET's entities.
const EXTRACTOR: &str = "DIETClassifier";
/// The processor Rasa names when a synonym replaced an entity's value.
const SYNONYM_MAPPER: &str = "EntitySynonymMapper";
/// Keys of `response_selector` that are not retrieval intents.
const RESERVED_SELECTOR_KEYS: [&str; 2] = ["default", "all_retrieval_intents"];

/// How a model's classes group into the intents Rasa reports (built once per loaded version).
#[derive(Clone, Debug)]
pub(crate) struct IntentLayout {
    /// The model's classes, in class order (`faq/ask_a`, `greet`, …).
    classes: Vec<String>,
    /// For each class, its intent's index in `intents`.
    intent_of: Vec<usize>,
    /// The intents Rasa reports (`faq`, `greet`), sorted.
    intents: Vec<String>,
    /// For each class of a retrieval intent, its response id.
    ids: Vec<i64>,
    /// The retrieval intents (those with `/` classes), as indices into `intents`, sorted.
    retrieval: Vec<usize>,
}

impl IntentLayout {
    /// The layout of a model whose classes are `classes` (in class order).
    pub fn new(classes: &[String]) -> Self {
        let base = |class: &str| class.split_once('/').map_or(class, |(b, _)| b).to_owned();
        let mut intents: Vec<String> = classes.iter().map(|c| base(c)).collect();
        intents.sort();
        intents.dedup();
        let intent_of: Vec<usize> = classes
            .iter()
            .map(|c| {
                intents
                    .binary_search(&base(c))
                    .expect("every base is in the list")
            })
            .collect();
        let mut retrieval: Vec<usize> = classes
            .iter()
            .zip(&intent_of)
            .filter(|(c, _)| c.contains('/'))
            .map(|(_, &i)| i)
            .collect();
        retrieval.sort_unstable();
        retrieval.dedup();
        Self {
            ids: classes.iter().map(|c| stable_id(c)).collect(),
            classes: classes.to_vec(),
            intent_of,
            intents,
            retrieval,
        }
    }

    /// The number of classes the model predicts.
    pub fn classes(&self) -> usize {
        self.classes.len()
    }
}

/// An entity the model found: character offsets into the text, and the confidence of its tags.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FoundEntity {
    pub entity: String,
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
}

/// Rasa's parse result.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ParseResponse {
    pub text: String,
    pub intent: IntentScore,
    pub entities: Vec<EntityOut>,
    pub text_tokens: Vec<[usize; 2]>,
    pub intent_ranking: Vec<IntentScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_selector: Option<ResponseSelector>,
}

/// An intent and its confidence; `name` is `null` only in the empty parse.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct IntentScore {
    pub name: Option<String>,
    pub confidence: f32,
}

/// One entity as Rasa reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct EntityOut {
    pub entity: String,
    pub start: usize,
    pub end: usize,
    pub confidence_entity: f32,
    pub value: String,
    pub extractor: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processors: Option<Vec<&'static str>>,
}

/// `response_selector`: the retrieval intents, the `default` selector and one per intent.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ResponseSelector {
    pub all_retrieval_intents: Vec<String>,
    pub default: Selection,
    #[serde(flatten)]
    pub by_intent: BTreeMap<String, Selection>,
}

/// One selector's answer.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Selection {
    pub response: SelectedResponse,
    pub ranking: Vec<RankedResponse>,
}

/// The selected response (Rasa 2 and Rasa 3 keys both).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SelectedResponse {
    pub id: i64,
    pub responses: Vec<serde_json::Value>,
    pub response_templates: Vec<serde_json::Value>,
    pub confidence: f32,
    pub intent_response_key: String,
    pub utter_action: String,
    pub template_name: String,
}

/// A response in a selector's ranking.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RankedResponse {
    pub id: i64,
    pub confidence: f32,
    pub intent_response_key: String,
}

impl ParseResponse {
    /// Rasa's answer for an empty (or blank) text.
    pub fn empty() -> Self {
        Self {
            text: String::new(),
            intent: IntentScore {
                name: None,
                confidence: 0.0,
            },
            entities: Vec::new(),
            text_tokens: Vec::new(),
            intent_ranking: Vec::new(),
            response_selector: None,
        }
    }

    /// The answer for `text`, from the model's class probabilities (`probs`, in class order),
    /// its entities and token spans, with entity values mapped through `synonyms`.
    pub fn new(
        layout: &IntentLayout,
        synonyms: &SynonymFile,
        text: &str,
        probs: &[f32],
        entities: &[FoundEntity],
        tokens: &[(usize, usize)],
    ) -> Self {
        let prob = |class: usize| {
            let p = probs.get(class).copied().unwrap_or(0.0);
            if p.is_finite() { p } else { 0.0 }
        };
        // Intents: the sum over each intent's classes.
        let mut per_intent = vec![0.0f32; layout.intents.len()];
        for (class, &intent) in layout.intent_of.iter().enumerate() {
            per_intent[intent] += prob(class);
        }
        let mut ranking: Vec<(usize, f32)> = per_intent.into_iter().enumerate().collect();
        ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranking.truncate(RANKING_LENGTH);
        let intent_ranking: Vec<IntentScore> = ranking
            .iter()
            .map(|&(i, confidence)| IntentScore {
                name: Some(layout.intents[i].clone()),
                confidence,
            })
            .collect();
        let intent = intent_ranking.first().cloned().unwrap_or(IntentScore {
            name: None,
            confidence: 0.0,
        });

        let response_selector = (!layout.retrieval.is_empty()).then(|| {
            let all: Vec<usize> = (0..layout.classes.len())
                .filter(|&c| layout.retrieval.contains(&layout.intent_of[c]))
                .collect();
            let mut by_intent = BTreeMap::new();
            for &r in &layout.retrieval {
                let name = &layout.intents[r];
                if RESERVED_SELECTOR_KEYS.contains(&name.as_str()) {
                    continue;
                }
                let classes: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&c| layout.intent_of[c] == r)
                    .collect();
                by_intent.insert(name.clone(), selection(layout, &classes, prob));
            }
            ResponseSelector {
                all_retrieval_intents: layout
                    .retrieval
                    .iter()
                    .map(|&r| layout.intents[r].clone())
                    .collect(),
                default: selection(layout, &all, prob),
                by_intent,
            }
        });

        Self {
            text: text.to_owned(),
            intent,
            entities: entities
                .iter()
                .map(|e| entity_out(e, text, synonyms))
                .collect(),
            text_tokens: tokens.iter().map(|&(s, e)| [s, e]).collect(),
            intent_ranking,
            response_selector,
        }
    }
}

/// A selector over `classes` (non-empty, all of retrieval intents): each one's probability
/// given that the text is one of them.
fn selection(layout: &IntentLayout, classes: &[usize], prob: impl Fn(usize) -> f32) -> Selection {
    let total: f32 = classes.iter().map(|&c| prob(c)).sum();
    let given = |c: usize| {
        if total > 0.0 {
            prob(c) / total
        } else {
            // Nothing to go by: all equally likely.
            1.0 / classes.len() as f32
        }
    };
    let mut ranked: Vec<(usize, f32)> = classes.iter().map(|&c| (c, given(c))).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(RANKING_LENGTH);
    let (best, confidence) = ranked[0];
    let key = layout.classes[best].clone();
    let utter = format!("utter_{key}");
    Selection {
        response: SelectedResponse {
            id: layout.ids[best],
            responses: Vec::new(),
            response_templates: Vec::new(),
            confidence,
            intent_response_key: key,
            utter_action: utter.clone(),
            template_name: utter,
        },
        ranking: ranked
            .into_iter()
            .map(|(c, confidence)| RankedResponse {
                id: layout.ids[c],
                confidence,
                intent_response_key: layout.classes[c].clone(),
            })
            .collect(),
    }
}

fn entity_out(found: &FoundEntity, text: &str, synonyms: &SynonymFile) -> EntityOut {
    let words = char_slice(text, found.start, found.end).unwrap_or_default();
    let (value, processors) = match synonyms.synonyms.get(&words.to_lowercase()) {
        Some(value) => (value.clone(), Some(vec![SYNONYM_MAPPER])),
        None => (words.to_owned(), None),
    };
    EntityOut {
        entity: found.entity.clone(),
        start: found.start,
        end: found.end,
        confidence_entity: found.confidence,
        value,
        extractor: EXTRACTOR,
        processors,
    }
}

/// A label's id: the first 8 bytes of its sha256, as an `i64` (see the module docs).
fn stable_id(label: &str) -> i64 {
    let hex = sha256_hex(label.as_bytes());
    u64::from_str_radix(&hex[..16], 16).expect("sha256 hex digits") as i64
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn layout(classes: &[&str]) -> IntentLayout {
        IntentLayout::new(&classes.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>())
    }

    fn close(a: &Value, b: f32) -> bool {
        (a.as_f64().unwrap() - f64::from(b)).abs() < 1e-5
    }

    #[test]
    fn retrieval_classes_collapse_into_their_intent() {
        let layout = layout(&["faq/ask_a", "faq/ask_b", "greet", "chitchat/ask_name"]);
        let probs = [0.3, 0.4, 0.2, 0.1];
        let parse = ParseResponse::new(&layout, &SynonymFile::default(), "hi", &probs, &[], &[]);
        let v = serde_json::to_value(&parse).unwrap();
        assert_eq!(v["intent"]["name"], "faq");
        assert!(close(&v["intent"]["confidence"], 0.7), "{v}");
        let names: Vec<&str> = v["intent_ranking"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["faq", "greet", "chitchat"]);

        let rs = &v["response_selector"];
        assert_eq!(rs["all_retrieval_intents"], json!(["chitchat", "faq"]));
        let faq = &rs["faq"]["response"];
        assert_eq!(faq["intent_response_key"], "faq/ask_b");
        assert_eq!(faq["utter_action"], "utter_faq/ask_b");
        assert_eq!(faq["template_name"], "utter_faq/ask_b");
        assert!(close(&faq["confidence"], 0.4 / 0.7), "{faq}");
        assert_eq!(faq["responses"], json!([]));
        assert!(faq["id"].is_i64());
        let ranking = rs["faq"]["ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), 2);
        assert_eq!(ranking[1]["intent_response_key"], "faq/ask_a");
        assert!(close(&ranking[1]["confidence"], 0.3 / 0.7));
        assert_eq!(ranking[0]["id"], faq["id"]);
        // The default selector ranks every retrieval class given any retrieval intent.
        let default = &rs["default"];
        assert_eq!(default["response"]["intent_response_key"], "faq/ask_b");
        assert!(close(&default["response"]["confidence"], 0.4 / 0.8));
        assert_eq!(default["ranking"].as_array().unwrap().len(), 3);
        assert_eq!(
            rs["chitchat"]["response"]["intent_response_key"],
            "chitchat/ask_name"
        );
        assert!(close(&rs["chitchat"]["response"]["confidence"], 1.0));
    }

    #[test]
    fn no_retrieval_intents_means_no_response_selector_and_ranking_is_capped() {
        let classes: Vec<String> = (0..15).map(|i| format!("intent_{i:02}")).collect();
        let layout = IntentLayout::new(&classes);
        let probs: Vec<f32> = (0..15).map(|i| i as f32 / 105.0).collect();
        let parse = ParseResponse::new(&layout, &SynonymFile::default(), "x", &probs, &[], &[]);
        let v = serde_json::to_value(&parse).unwrap();
        assert!(v.get("response_selector").is_none());
        let ranking = v["intent_ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), RANKING_LENGTH);
        assert_eq!(ranking[0]["name"], "intent_14");
        assert_eq!(v["intent"], ranking[0]);
        let confidences: Vec<f64> = ranking
            .iter()
            .map(|r| r["confidence"].as_f64().unwrap())
            .collect();
        assert!(confidences.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn entity_values_go_through_synonyms() {
        let layout = layout(&["check_balance"]);
        let mut synonyms = SynonymFile::default();
        synonyms
            .synonyms
            .insert("chequing".into(), "checking".into());
        let text = "what is in my Chequing account";
        let entities = [
            FoundEntity {
                entity: "account_type".into(),
                start: 14,
                end: 22,
                confidence: 0.75,
            },
            FoundEntity {
                entity: "thing".into(),
                start: 23,
                end: 30,
                confidence: 0.5,
            },
        ];
        let parse = ParseResponse::new(
            &layout,
            &synonyms,
            text,
            &[1.0],
            &entities,
            &[(0, 4), (5, 7)],
        );
        let v = serde_json::to_value(&parse).unwrap();
        assert_eq!(
            v["entities"][0],
            json!({"entity": "account_type", "start": 14, "end": 22,
                   "confidence_entity": 0.75, "value": "checking",
                   "extractor": "DIETClassifier", "processors": ["EntitySynonymMapper"]})
        );
        assert_eq!(v["entities"][1]["value"], "account");
        assert!(v["entities"][1].get("processors").is_none());
        assert_eq!(v["text_tokens"], json!([[0, 4], [5, 7]]));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "text",
                "intent",
                "entities",
                "text_tokens",
                "intent_ranking"
            ]
        );
    }

    #[test]
    fn degenerate_outputs_never_panic() {
        let layout = layout(&["faq/a", "faq/b"]);
        let parse = ParseResponse::new(
            &layout,
            &SynonymFile::default(),
            "x",
            &[f32::NAN, 0.0],
            &[],
            &[],
        );
        let v = serde_json::to_value(&parse).unwrap();
        assert_eq!(v["intent"]["name"], "faq");
        assert!(close(
            &v["response_selector"]["faq"]["response"]["confidence"],
            0.5
        ));
        // Fewer probabilities than classes.
        let parse = ParseResponse::new(&layout, &SynonymFile::default(), "x", &[], &[], &[]);
        assert_eq!(parse.intent.confidence, 0.0);
        let empty = serde_json::to_value(ParseResponse::empty()).unwrap();
        assert_eq!(empty["intent"], json!({"name": null, "confidence": 0.0}));
        assert_eq!(empty["entities"], json!([]));
    }

    #[test]
    fn ids_are_stable() {
        assert_eq!(stable_id("faq/ask_a"), stable_id("faq/ask_a"));
        assert_ne!(stable_id("faq/ask_a"), stable_id("faq/ask_b"));
    }
}
