//! The decision report for people: `refit check`, `refit submit` and `refit demo` print it.

use std::fmt;

use super::{Decision, DecisionReport, LabelKind, Reason};
use crate::data::{DataConflicts, EntityConflict, MAX_LISTED};
use crate::job::Mode;

impl DecisionReport {
    fn headline(&self) -> String {
        let has = |r: &Reason| self.reasons.contains(r);
        match self.decision {
            Decision::Finetune => match self.base_version {
                Some(version) => format!("from {version}"),
                None => "fine-tunable".to_owned(),
            },
            Decision::Scratch if has(&Reason::ForcedScratch) => "scratch requested".to_owned(),
            Decision::Scratch if has(&Reason::NoBaseVersion) => "no base version".to_owned(),
            Decision::Scratch => format!("not fine-tunable, policy {}", self.policy),
            Decision::Reject if has(&Reason::EmptyDataset) => "empty dataset".to_owned(),
            Decision::Reject if self.mode == Mode::Finetune => {
                "finetune requested but not fine-tunable".to_owned()
            }
            Decision::Reject => "not fine-tunable".to_owned(),
        }
    }
}

impl fmt::Display for DecisionReport {
    /// Lines like:
    ///
    /// ```text
    /// decision: reject (not fine-tunable)
    ///   intents removed (1): check_balance
    ///   entity types added (1): iban
    /// examples: 367 -> 359 (-8)
    /// new vocabulary: 12 of 462 words (2.6%), e.g. "zelle", "venmo", ...
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_decision(f)?;
        fmt_conflicts(&self.conflicts, f)
    }
}

impl DecisionReport {
    fn fmt_decision(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decision: {} ({})", self.decision, self.headline())?;
        for reason in &self.reasons {
            // The headline already says that scratch was requested.
            if *reason != Reason::ForcedScratch {
                write!(f, "\n  {reason}")?;
            }
        }
        let Some(diff) = &self.diff else {
            return write!(f, "\nexamples: {}", self.examples.new);
        };
        if diff.labels_unchanged() {
            write!(f, "\nlabels: unchanged (")?;
            for (i, kind) in LabelKind::ALL.into_iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let n = diff.labels(kind).new_label_count();
                write!(f, "{sep}{} {n}", kind.plural())?;
            }
            f.write_str(")")?;
        }
        let old = self.examples.old.unwrap_or(0);
        let new = self.examples.new;
        write!(
            f,
            "\nexamples: {old} -> {new} ({:+})",
            new as i64 - old as i64
        )?;
        let changed: Vec<String> = diff
            .intents
            .counts
            .iter()
            .filter(|c| c.delta() != 0)
            .map(|c| format!("{} {:+}", display_name(&c.label), c.delta()))
            .collect();
        if !changed.is_empty() {
            write!(f, "\n  per intent: {}", changed.join(", "))?;
        }
        match &diff.vocabulary {
            None => f.write_str("\nnew vocabulary: not checked (no base vocabulary)"),
            Some(vocab) if vocab.new_words == 0 => {
                write!(f, "\nnew vocabulary: none ({} words)", vocab.words)
            }
            Some(vocab) => {
                const SHOWN: usize = 8;
                write!(
                    f,
                    "\nnew vocabulary: {} of {} words ({:.1}%), e.g. ",
                    vocab.new_words,
                    vocab.words,
                    vocab.fraction * 100.0
                )?;
                let shown: Vec<String> = vocab
                    .sample
                    .iter()
                    .take(SHOWN)
                    .map(|w| format!("{w:?}"))
                    .collect();
                f.write_str(&shown.join(", "))?;
                if vocab.new_words > shown.len() {
                    f.write_str(", ...")?;
                }
                Ok(())
            }
        }
    }
}

/// Lines like:
///
/// ```text
/// annotation conflicts (2 word sequences labelled two ways; a model learns both):
///   "percy": PERSON in 1 example (e.g. "Pay Percy $50"), not annotated in 2 (e.g. "Percy please")
///   "discover": credit_card in 2 (e.g. "pay my discover"), account_type in 1 (e.g. ...)
/// intent conflicts (1 text under two or more intents):
///   "yes please": affirm, inform
/// ```
fn fmt_conflicts(conflicts: &DataConflicts, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let n = conflicts.entity_count;
    fmt_section(
        f,
        &format!(
            "annotation conflicts ({n} word sequence{} labelled two ways; a model learns both)",
            plural(n)
        ),
        n,
        conflicts.entities.iter().map(entity_conflict_line),
    )?;
    let n = conflicts.intent_count;
    fmt_section(
        f,
        &format!(
            "intent conflicts ({n} text{} under two or more intents)",
            plural(n)
        ),
        n,
        conflicts
            .intents
            .iter()
            .map(|c| format!("{:?}: {}", c.words, name_list(&c.intents))),
    )
}

/// `title:` and up to ten of `lines`, indented, then how many of `total` are not shown;
/// nothing when `total` is 0.
fn fmt_section(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    total: usize,
    lines: impl Iterator<Item = String>,
) -> fmt::Result {
    const SHOWN: usize = 10;
    if total == 0 {
        return Ok(());
    }
    write!(f, "\n{title}:")?;
    for line in lines.take(SHOWN) {
        write!(f, "\n  {line}")?;
    }
    if total > SHOWN {
        write!(
            f,
            "\n  ... and {} more (--output json lists up to {MAX_LISTED})",
            total - SHOWN
        )?;
    }
    Ok(())
}

/// `"percy": not annotated in 2 examples (e.g. "Percy please"), PERSON in 1 (e.g. "...")`.
fn entity_conflict_line(conflict: &EntityConflict) -> String {
    let labels: Vec<String> = conflict
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let what = match &label.entity {
                Some(entity) => display_name(entity),
                None => "not annotated".to_owned(),
            };
            // Only the first count names its unit.
            let unit = match (i, label.examples) {
                (0, 1) => " example",
                (0, _) => " examples",
                _ => "",
            };
            format!(
                "{what} in {}{unit} (e.g. {:?})",
                label.examples,
                shorten(&label.example)
            )
        })
        .collect();
    format!("{:?}: {}", conflict.words, labels.join(", "))
}

/// A text cut to 60 characters (`...` marks the cut), for one-line reports.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX - 3).collect();
        format!("{cut}...")
    }
}

/// Names joined by `", "`. A name that could be misread in that list (empty, or with
/// characters other than letters, digits and `_-./:`) is quoted, so every label reads exactly.
pub(super) fn name_list(names: &[String]) -> String {
    names
        .iter()
        .map(|name| display_name(name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-./:".contains(c));
    if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}
