//! The one tokenizer every refit process uses: the featurizer splits texts with it, and the
//! fine-tune decision and the data-conflict report count words with it, so "a new word" means the
//! same thing to the coordinator and to the model.
//!
//! A token is a maximal run of word characters (alphanumeric or `_`), joined across an
//! apostrophe that has a word character on both sides: the regex `\w+(?:'\w+)*`. Everything
//! else is dropped. [`tokenize`] gives each token's **character** span in the original text;
//! [`word_tokens`] gives the lowercase token strings alone.

/// A word token and where it is in the original text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Start, in characters, into the original text (inclusive).
    pub start: usize,
    /// End, in characters, into the original text (exclusive).
    pub end: usize,
    /// The token's text (lowercased when [`tokenize`] was asked to).
    pub text: String,
}

/// Splits `text` into word tokens (see the module docs), lowercasing them when `lowercase`.
///
/// Lowercasing happens on the whole text first, as [`str::to_lowercase`] does it (Greek final
/// sigma, multi-character lowercase forms); spans still refer to the original text's characters.
pub fn tokenize(text: &str, lowercase: bool) -> Vec<Token> {
    let mut tokens = Vec::new();
    if !lowercase || text.is_ascii() {
        // One output character per input character: positions are the same.
        let owned;
        let source = if lowercase {
            owned = text.to_ascii_lowercase();
            owned.as_str()
        } else {
            text
        };
        scan(source, |i| i, &mut tokens);
    } else {
        let lower = text.to_lowercase();
        // The original character index of every character of `lower`. `str::to_lowercase` maps
        // each character to `char::to_lowercase` of it, except that a final capital sigma
        // becomes `ς` rather than `σ`: one character either way, so the counts agree.
        let mut origin = Vec::with_capacity(lower.len());
        for (i, c) in text.chars().enumerate() {
            for _ in c.to_lowercase() {
                origin.push(i);
            }
        }
        scan(&lower, |i| origin[i], &mut tokens);
    }
    tokens
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokenizer's state machine over `source`; `origin` maps a character index of `source` to
/// one of the original text.
fn scan(source: &str, origin: impl Fn(usize) -> usize, tokens: &mut Vec<Token>) {
    // (byte offset, char index) of the current token's first character.
    let mut current: Option<(usize, usize)> = None;
    let mut chars = source.char_indices().enumerate().peekable();
    let mut close = |from: (usize, usize), to_byte: usize, last_char: usize| {
        tokens.push(Token {
            start: origin(from.1),
            end: origin(last_char) + 1,
            text: source[from.0..to_byte].to_owned(),
        });
    };
    let mut last = 0;
    while let Some((ci, (bi, c))) = chars.next() {
        // An apostrophe belongs to a word only between two word characters.
        let inner_apostrophe =
            c == '\'' && current.is_some() && chars.peek().is_some_and(|&(_, (_, n))| is_word(n));
        if is_word(c) || inner_apostrophe {
            if current.is_none() {
                current = Some((bi, ci));
            }
            last = ci;
        } else if let Some(from) = current.take() {
            close(from, bi, last);
        }
    }
    if let Some(from) = current {
        close(from, source.len(), last);
    }
}

/// The lowercase word tokens of `text`, in order, repeats kept: [`tokenize`] with lowercasing,
/// strings only. `"Don't pay Zoë's bill!"` gives `don't`, `pay`, `zoë's`, `bill`.
pub fn word_tokens(text: &str) -> Vec<String> {
    tokenize(text, true).into_iter().map(|t| t.text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(tokens: &[Token]) -> Vec<(usize, usize, &str)> {
        tokens
            .iter()
            .map(|t| (t.start, t.end, t.text.as_str()))
            .collect()
    }

    #[test]
    fn tokens_have_character_spans() {
        assert_eq!(
            spans(&tokenize("Don't pay Zoë's bill!", true)),
            [
                (0, 5, "don't"),
                (6, 9, "pay"),
                (10, 15, "zoë's"),
                (16, 20, "bill")
            ]
        );
        assert_eq!(
            spans(&tokenize("$1,200.50 to Ben", false)),
            [
                (1, 2, "1"),
                (3, 6, "200"),
                (7, 9, "50"),
                (10, 12, "to"),
                (13, 16, "Ben")
            ]
        );
        // 'İ' lowercases to two characters ("i̇"), and the combining dot is not a word
        // character: the token strings follow word_tokens, the spans the original text.
        let tokens = tokenize("xİy ΟΔΟΣ", true);
        let strings: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(strings, word_tokens("xİy ΟΔΟΣ"));
        assert_eq!(spans(&tokens), [(0, 2, "xi"), (2, 3, "y"), (4, 8, "οδος")]);
        assert!(tokenize("  ?! ' ", true).is_empty());
    }

    #[test]
    fn word_tokens_follow_the_word_regex() {
        assert_eq!(
            word_tokens("Don't pay Zoë's bill!"),
            ["don't", "pay", "zoë's", "bill"]
        );
        assert_eq!(
            word_tokens("'tis a''b it' rock'n'roll $1,200.50 snake_case"),
            [
                "tis",
                "a",
                "b",
                "it",
                "rock'n'roll",
                "1",
                "200",
                "50",
                "snake_case"
            ]
        );
        assert!(word_tokens("  ?! ' ").is_empty());
        assert_eq!(word_tokens("ÜBERWEISUNG"), ["überweisung"]);
        // Final sigma stays final, as `str::to_lowercase` has it.
        assert_eq!(
            word_tokens("ΟΔΟΣ ΟΔΟΣ."),
            ["\u{3bf}\u{3b4}\u{3bf}\u{3c2}"; 2]
        );
    }
}
