//! Helpers on what the coordinator answers (job views as JSON, Prometheus text) and on the
//! training data the end-to-end tests submit.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, ensure};
use refit_proto::data::{Example, load_file};
use serde_json::{Value, json};

use super::repo;

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Random lowercase hex, `bytes` bytes long.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- helpers on JSON and metrics ------------------------------------------------------------

/// The `type`s of a job view's events, in order.
pub fn event_types(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How many events of `kind` a job view has.
pub fn count_events(job: &Value, kind: &str) -> usize {
    event_types(job).iter().filter(|t| *t == kind).count()
}

/// A dataset reference for a request body, from an upload's answer.
pub fn dataset(uploaded: &Value) -> Value {
    json!({ "key": uploaded["key"], "sha256": uploaded["sha256"] })
}

/// One sample of Prometheus text: the value of `name` whose labels include `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

/// Every sample of Prometheus text: name, labels, value.
pub fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => (name.to_owned(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.push((name, labels, value));
    }
    out
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
pub fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.insert(name.trim().trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

// ---- training data --------------------------------------------------------------------------

/// Examples as JSONL bytes.
pub fn jsonl(examples: &[Example]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for example in examples {
        serde_json::to_writer(&mut bytes, example)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// Up to `per_intent` examples per intent of set2.yml whose labels all occur in `base`, so
/// `base + these` has the base's label set (a fine-tune), with new words.
pub fn set2_examples(base: &[Example], per_intent: usize) -> Result<Vec<Example>> {
    use std::collections::BTreeSet;
    let intents: BTreeSet<&str> = base.iter().map(|e| e.intent.as_str()).collect();
    let entity_labels = |e: &Example| -> Vec<String> {
        e.entities
            .iter()
            .map(|ent| {
                serde_json::to_string(&(&ent.entity, &ent.role, &ent.group)).unwrap_or_default()
            })
            .collect()
    };
    let known: BTreeSet<String> = base.iter().flat_map(entity_labels).collect();
    let data = load_file(&repo().join("examples/data/financial-demo/set2.yml"))?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for example in data.examples {
        if !intents.contains(example.intent.as_str())
            || !entity_labels(&example).iter().all(|l| known.contains(l))
        {
            continue;
        }
        let n = counts.entry(example.intent.clone()).or_default();
        if *n < per_intent {
            *n += 1;
            out.push(example);
        }
    }
    ensure!(
        !out.is_empty(),
        "set2.yml has no examples with set1's labels"
    );
    Ok(out)
}
