//! BILOU entity tags: per-token labels for the DIET-lite entity head.
//!
//! A [`TagSet`] is built from the entity types, sorted. Its ids:
//!
//! | id | tag |
//! | --- | --- |
//! | 0 | `O` (outside any entity) |
//! | `1 + 4k` | `B-<type k>` (first token of a multi-token entity) |
//! | `2 + 4k` | `I-<type k>` (inside) |
//! | `3 + 4k` | `L-<type k>` (last) |
//! | `4 + 4k` | `U-<type k>` (a one-token entity) |
//!
//! where `k` is the type's index in sorted order, so the tag count is `1 + 4 × types`.
//!
//! Only entity **types** are tagged: the DIET-lite model does not predict roles or groups, and
//! decoded entities have `role`, `group` and `value` set to `None`.
//!
//! [`TagSet::encode`] maps an example's character-offset entities onto tokens: a token belongs
//! to an entity when their spans overlap. An entity whose start or end falls inside a token (or
//! between tokens, on punctuation) still tags every token it overlaps and is counted as
//! misaligned; one that overlaps no token, has a type outside the set, or overlaps a token an
//! earlier entity already tagged is dropped and counted. [`TagSet::decode`] turns tags back into
//! character spans, from the first token's start to the last token's end, leniently (see its
//! docs). For every entity whose boundaries align with token boundaries, decode ∘ encode gives
//! the entity back.

use std::collections::BTreeSet;

use refit_proto::data::{Entity, Example};
use serde::{Deserialize, Serialize};

use crate::featurizer::TokenSpan;

/// The tag id of `O`.
pub const OUTSIDE: u32 = 0;

/// The position of a token inside an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bilou {
    /// First token of a multi-token entity.
    Begin,
    /// A middle token.
    Inside,
    /// Last token of a multi-token entity.
    Last,
    /// The only token of an entity.
    Unit,
}

impl Bilou {
    const ALL: [Bilou; 4] = [Bilou::Begin, Bilou::Inside, Bilou::Last, Bilou::Unit];

    fn offset(self) -> u32 {
        match self {
            Bilou::Begin => 1,
            Bilou::Inside => 2,
            Bilou::Last => 3,
            Bilou::Unit => 4,
        }
    }

    fn letter(self) -> char {
        match self {
            Bilou::Begin => 'B',
            Bilou::Inside => 'I',
            Bilou::Last => 'L',
            Bilou::Unit => 'U',
        }
    }
}

/// The entity types and their tag ids (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagSet {
    types: Vec<String>,
}

/// The tags of one example, with what did not fit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// One tag id per token.
    pub tags: Vec<u32>,
    /// Entities tagged although a boundary does not fall on a token boundary.
    pub misaligned: usize,
    /// Entities not tagged at all: no overlapping token, unknown type, or overlap with an
    /// entity tagged before.
    pub dropped: usize,
}

impl TagSet {
    /// A tag set over these entity types (sorted and deduplicated).
    pub fn new<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        let types: BTreeSet<String> = types.into_iter().map(Into::into).collect();
        Self {
            types: types.into_iter().collect(),
        }
    }

    /// The tag set of the entity types that occur in `examples`.
    pub fn from_examples(examples: &[Example]) -> Self {
        Self::new(
            examples
                .iter()
                .flat_map(|e| e.entities.iter().map(|x| x.entity.as_str())),
        )
    }

    /// The entity types, sorted.
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// The number of tags: `1 + 4 × types`.
    pub fn len(&self) -> usize {
        1 + 4 * self.types.len()
    }

    /// Always false: there is at least `O`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The id of `position` for `entity_type`, if the type is in the set.
    pub fn tag(&self, position: Bilou, entity_type: &str) -> Option<u32> {
        let k = self
            .types
            .binary_search_by(|t| t.as_str().cmp(entity_type))
            .ok()?;
        Some(tag_id(k, position))
    }

    /// What a tag id means: `None` for `O` and for ids outside the set, otherwise the position
    /// and the type.
    pub fn parse(&self, id: u32) -> Option<(Bilou, &str)> {
        if id == OUTSIDE {
            return None;
        }
        let k = ((id - 1) / 4) as usize;
        let position = Bilou::ALL[((id - 1) % 4) as usize];
        self.types.get(k).map(|t| (position, t.as_str()))
    }

    /// Whether tag `next` may follow tag `prev` (`None` = the start of the text) in a valid
    /// BILOU sequence: inside an entity only I/L of the same type may follow.
    pub fn may_follow(&self, prev: Option<u32>, next: u32) -> bool {
        let open = prev
            .and_then(|p| self.parse(p))
            .and_then(|(pos, ty)| matches!(pos, Bilou::Begin | Bilou::Inside).then_some(ty));
        match (open, self.parse(next)) {
            (Some(ty), Some((Bilou::Inside | Bilou::Last, next_ty))) => ty == next_ty,
            (Some(_), _) => false,
            (None, Some((Bilou::Inside | Bilou::Last, _))) => false,
            (None, _) => true,
        }
    }

    /// The most probable valid tag sequence (Viterbi over the BILOU constraints, no learned
    /// transitions) for `tokens` rows of per-token tag probabilities (`[tokens, len()]`
    /// row-major). Greedy per-token argmax can split one entity into two (`U U` for `B L`);
    /// this cannot.
    pub fn best_sequence(&self, probs: &[f32], tokens: usize) -> Vec<u32> {
        let k = self.len();
        if tokens == 0 {
            return Vec::new();
        }
        let log = |p: f32| (p.max(1e-12)).ln();
        let mut score = vec![f32::NEG_INFINITY; k];
        let mut back = vec![0u32; tokens * k];
        for tag in 0..k {
            if self.may_follow(None, tag as u32) {
                score[tag] = log(probs[tag]);
            }
        }
        for t in 1..tokens {
            let mut next = vec![f32::NEG_INFINITY; k];
            for tag in 0..k {
                let p = log(probs[t * k + tag]);
                for (prev, &before) in score.iter().enumerate() {
                    if before.is_finite() && self.may_follow(Some(prev as u32), tag as u32) {
                        let s = before + p;
                        if s > next[tag] {
                            next[tag] = s;
                            back[t * k + tag] = prev as u32;
                        }
                    }
                }
            }
            score = next;
        }
        // A text may not end inside an entity.
        let mut best = None;
        for (tag, &s) in score.iter().enumerate() {
            let open = matches!(
                self.parse(tag as u32),
                Some((Bilou::Begin | Bilou::Inside, _))
            );
            if !open && s.is_finite() && best.is_none_or(|(_, b)| s > b) {
                best = Some((tag as u32, s));
            }
        }
        let mut tag = best.map_or(OUTSIDE, |(t, _)| t);
        let mut out = vec![0u32; tokens];
        for t in (0..tokens).rev() {
            out[t] = tag;
            if t > 0 {
                tag = back[t * k + tag as usize];
            }
        }
        out
    }

    /// The tag's name: `O`, `B-account_type`, …; `?<id>` for an id outside the set.
    pub fn name(&self, id: u32) -> String {
        match self.parse(id) {
            _ if id == OUTSIDE => "O".to_owned(),
            Some((position, t)) => format!("{}-{t}", position.letter()),
            None => format!("?{id}"),
        }
    }

    /// Every tag's name, in id order.
    pub fn names(&self) -> Vec<String> {
        (0..self.len() as u32).map(|id| self.name(id)).collect()
    }

    /// Tags `tokens` with `example`'s entities (see the module docs).
    pub fn encode<T: TokenSpan>(&self, example: &Example, tokens: &[T]) -> Encoded {
        let mut out = Encoded {
            tags: vec![OUTSIDE; tokens.len()],
            ..Encoded::default()
        };
        for entity in &example.entities {
            let Some(k) = self
                .types
                .binary_search_by(|t| t.as_str().cmp(&entity.entity))
                .ok()
            else {
                out.dropped += 1;
                continue;
            };
            // Tokens are in text order, so the overlapping ones are contiguous.
            let first = tokens.partition_point(|t| t.char_span().1 <= entity.start);
            let last = tokens.partition_point(|t| t.char_span().0 < entity.end);
            if first >= last || out.tags[first..last].iter().any(|&t| t != OUTSIDE) {
                out.dropped += 1;
                continue;
            }
            if tokens[first].char_span().0 != entity.start
                || tokens[last - 1].char_span().1 != entity.end
            {
                out.misaligned += 1;
            }
            if last - first == 1 {
                out.tags[first] = tag_id(k, Bilou::Unit);
            } else {
                out.tags[first] = tag_id(k, Bilou::Begin);
                for tag in &mut out.tags[first + 1..last - 1] {
                    *tag = tag_id(k, Bilou::Inside);
                }
                out.tags[last - 1] = tag_id(k, Bilou::Last);
            }
        }
        out
    }

    /// Turns one tag per token back into entities with character spans, leniently:
    /// - `U` is a one-token entity; `B` starts an entity, `I` continues it, `L` ends it;
    /// - an `I` or `L` that does not continue an open entity of its type starts a new one (an
    ///   `L` then is a one-token entity);
    /// - an entity still open when an `O`, `B`, `U`, a different type or the end comes (a `B`
    ///   without an `L`) ends at its last token;
    /// - ids outside the set read as `O`.
    ///
    /// `text` is not needed for the spans; it is taken to check them in debug builds.
    ///
    /// # Panics
    ///
    /// If `tags` and `tokens` differ in length.
    pub fn decode<T: TokenSpan>(&self, tags: &[u32], tokens: &[T], text: &str) -> Vec<Entity> {
        assert_eq!(tags.len(), tokens.len(), "one tag per token");
        let mut entities = Vec::new();
        // (type, start, end) of the open entity.
        let mut open: Option<(&str, usize, usize)> = None;
        let close = |open: &mut Option<(&str, usize, usize)>, out: &mut Vec<Entity>| {
            if let Some((entity_type, start, end)) = open.take() {
                out.push(Entity {
                    start,
                    end,
                    entity: entity_type.to_owned(),
                    value: None,
                    role: None,
                    group: None,
                });
            }
        };
        for (&tag, token) in tags.iter().zip(tokens) {
            let (start, end) = token.char_span();
            let Some((position, entity_type)) = self.parse(tag) else {
                close(&mut open, &mut entities);
                continue;
            };
            let continues = matches!(open, Some((t, _, _)) if t == entity_type);
            match position {
                Bilou::Inside | Bilou::Last if continues => {
                    if let Some(o) = open.as_mut() {
                        o.2 = end;
                    }
                }
                _ => {
                    close(&mut open, &mut entities);
                    open = Some((entity_type, start, end));
                }
            }
            if matches!(position, Bilou::Last | Bilou::Unit) {
                close(&mut open, &mut entities);
            }
        }
        close(&mut open, &mut entities);
        debug_assert!(
            entities
                .iter()
                .all(|e| refit_proto::data::char_slice(text, e.start, e.end).is_some()),
            "token spans lie within the text"
        );
        entities
    }
}

fn tag_id(k: usize, position: Bilou) -> u32 {
    // The set has far fewer than 2^30 types.
    4 * k as u32 + position.offset()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viterbi_returns_the_best_valid_sequence() {
        let tags = TagSet::new(["amount"]);
        let (o, b, l, u) = (0usize, 1usize, 3usize, 4usize);
        // Per-token argmax gives B O, which is invalid; B L (0.5 · 0.45) beats O O (0.3 · 0.5).
        let mut probs = vec![0.0f32; 2 * 5];
        (probs[b], probs[o], probs[u]) = (0.5, 0.3, 0.2);
        (probs[5 + o], probs[5 + l], probs[5 + 2]) = (0.5, 0.45, 0.05);
        assert_eq!(tags.best_sequence(&probs, 2), vec![1, 3]);
        // A text cannot end inside an entity: a lone B becomes the next best valid tag.
        let mut probs = vec![0.0f32; 5];
        (probs[b], probs[u], probs[o]) = (0.6, 0.3, 0.1);
        assert_eq!(tags.best_sequence(&probs, 1), vec![4]);
        assert!(tags.best_sequence(&[], 0).is_empty());
    }
    use refit_proto::data::load_file;
    use refit_proto::tokens::{Token, tokenize};

    fn entity(start: usize, end: usize, t: &str) -> Entity {
        Entity {
            start,
            end,
            entity: t.to_owned(),
            value: None,
            role: None,
            group: None,
        }
    }

    fn example(text: &str, entities: Vec<Entity>) -> Example {
        Example {
            text: text.to_owned(),
            intent: "x".to_owned(),
            entities,
        }
    }

    fn names(set: &TagSet, tags: &[u32]) -> Vec<String> {
        tags.iter().map(|&t| set.name(t)).collect()
    }

    #[test]
    fn ids_follow_sorted_types() {
        let set = TagSet::new(["person", "amount", "person"]);
        assert_eq!(set.types(), ["amount", "person"]);
        assert_eq!(set.len(), 9);
        assert_eq!(
            set.names(),
            [
                "O", "B-amount", "I-amount", "L-amount", "U-amount", "B-person", "I-person",
                "L-person", "U-person"
            ]
        );
        assert_eq!(set.tag(Bilou::Unit, "person"), Some(8));
        assert_eq!(set.tag(Bilou::Begin, "nope"), None);
        assert_eq!(set.parse(6), Some((Bilou::Inside, "person")));
        assert_eq!(set.parse(9), None);
        assert_eq!(set.name(9), "?9");
    }

    #[test]
    fn encodes_and_decodes_spans() {
        let set = TagSet::new(["amount", "person"]);
        let text = "send $20.50 to Mary Ann Lee now";
        let tokens = tokenize(text, true);
        // "$20.50" starts on the '$', before the first token: misaligned but tagged.
        let ex = example(
            text,
            vec![entity(5, 11, "amount"), entity(15, 27, "person")],
        );
        let encoded = set.encode(&ex, &tokens);
        assert_eq!(
            names(&set, &encoded.tags),
            [
                "O", "B-amount", "L-amount", "O", "B-person", "I-person", "L-person", "O"
            ]
        );
        assert_eq!((encoded.misaligned, encoded.dropped), (1, 0));
        let decoded = set.decode(&encoded.tags, &tokens, text);
        assert_eq!(decoded, [entity(6, 11, "amount"), entity(15, 27, "person")]);

        // Inside a token: "Lee" of "Leeds" overlaps the token, so the token is tagged.
        let ex = example("to Leeds", vec![entity(3, 6, "person")]);
        let encoded = set.encode(&ex, &tokenize(&ex.text, true));
        assert_eq!(names(&set, &encoded.tags), ["O", "U-person"]);
        assert_eq!(encoded.misaligned, 1);

        // Dropped: punctuation only, an unknown type, an overlap with an earlier entity.
        let ex = example(
            "hi !! Mary",
            vec![
                entity(3, 5, "amount"),
                entity(6, 10, "city"),
                entity(6, 10, "person"),
                entity(8, 10, "amount"),
            ],
        );
        let encoded = set.encode(&ex, &tokenize(&ex.text, true));
        assert_eq!(names(&set, &encoded.tags), ["O", "U-person"]);
        assert_eq!((encoded.misaligned, encoded.dropped), (0, 3));
    }

    #[test]
    fn decoding_is_lenient() {
        let set = TagSet::new(["a", "b"]);
        let tokens: Vec<Token> = (0..6)
            .map(|i| Token {
                start: 2 * i,
                end: 2 * i + 1,
                text: "x".to_owned(),
            })
            .collect();
        let text = "x x x x x x";
        let tag = |p, t| set.tag(p, t).unwrap();
        let decode = |tags: &[u32]| -> Vec<(usize, usize, String)> {
            set.decode(tags, &tokens, text)
                .into_iter()
                .map(|e| (e.start, e.end, e.entity))
                .collect()
        };
        let span = |s: usize, e: usize, t: &str| (s, e, t.to_owned());
        // I without B starts an entity; B without L ends at the last consecutive I.
        assert_eq!(
            decode(&[
                tag(Bilou::Inside, "a"),
                tag(Bilou::Inside, "a"),
                0,
                tag(Bilou::Begin, "b"),
                tag(Bilou::Inside, "b"),
                0
            ]),
            [span(0, 3, "a"), span(6, 9, "b")]
        );
        // A lone L is a one-token entity; a type change closes the open entity.
        assert_eq!(
            decode(&[
                tag(Bilou::Last, "a"),
                tag(Bilou::Begin, "a"),
                tag(Bilou::Last, "b"),
                tag(Bilou::Unit, "a"),
                tag(Bilou::Begin, "b"),
                tag(Bilou::Last, "b")
            ]),
            [
                span(0, 1, "a"),
                span(2, 3, "a"),
                span(4, 5, "b"),
                span(6, 7, "a"),
                span(8, 11, "b")
            ]
        );
        // B B: two entities; out-of-set ids read as O; an open entity ends at the text's end.
        assert_eq!(
            decode(&[
                tag(Bilou::Begin, "a"),
                tag(Bilou::Begin, "a"),
                99,
                tag(Bilou::Inside, "b"),
                tag(Bilou::Inside, "b"),
                tag(Bilou::Inside, "b")
            ]),
            [span(0, 1, "a"), span(2, 3, "a"), span(6, 11, "b")]
        );
    }

    /// Financial-demo (nlu.yml, default tokenizer): 5 entity types, 258 mentions; 257 align with
    /// token boundaries and survive the round trip. The one misaligned mention is `embelm` in
    /// "what's my embelm's card balance?": `embelm's` is one token, so the entity is tagged
    /// on it and decodes as `embelm's` (10..18 instead of 10..16). None is dropped.
    #[test]
    fn financial_demo_round_trip() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/data/financial-demo/nlu.yml"
        );
        let data = load_file(std::path::Path::new(path)).expect("financial-demo loads");
        let set = TagSet::from_examples(&data.examples);
        let (mut mentions, mut aligned, mut misaligned, mut dropped, mut recovered) =
            (0, 0, 0, 0, 0);
        for ex in &data.examples {
            let tokens = tokenize(&ex.text, true);
            let encoded = set.encode(ex, &tokens);
            misaligned += encoded.misaligned;
            dropped += encoded.dropped;
            let decoded = set.decode(&encoded.tags, &tokens, &ex.text);
            for e in &ex.entities {
                mentions += 1;
                let aligns = tokens.iter().any(|t| t.start == e.start)
                    && tokens.iter().any(|t| t.end == e.end);
                if aligns {
                    aligned += 1;
                    let back = decoded
                        .iter()
                        .any(|d| (d.start, d.end, &d.entity) == (e.start, e.end, &e.entity));
                    assert!(back, "{:?} lost in {:?}", e, ex.text);
                    recovered += 1;
                }
            }
        }
        println!(
            "{} types, {mentions} mentions: {aligned} aligned ({recovered} round-tripped), \
             {misaligned} misaligned, {dropped} dropped",
            set.types().len()
        );
        assert_eq!(mentions, data.entity_mentions());
        assert_eq!(aligned + misaligned + dropped, mentions);
        assert_eq!((mentions, aligned, misaligned, dropped), (258, 257, 1, 0));
    }
}
