//! Parsing time grows linearly with hostile inputs: for each input shape below, doubling the
//! input roughly doubles the time (a quadratic path would quadruple it). Sizes are those a
//! dataset under the coordinator's 64 MiB limit can reach: 300k synonym items, one item with
//! 200k keys, a JSONL line of 1M characters with 200k entities, 150k duplicate examples.
//!
//! The times are compared within one run (median of three each), never against a clock budget.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use refit_proto::data::{Format, parse_bytes};

/// A doubling that takes at least this many times as long is not linear. Linear work gives
/// about 2; quadratic work about 4.
const LIMIT: f64 = 3.0;

/// The median of three timings of `parse`.
fn median_time(bytes: &[u8], format: Format) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let parsed = parse_bytes(bytes, "hostile", format);
            let elapsed = started.elapsed();
            assert!(parsed.is_ok(), "{:?}", parsed.err());
            elapsed
        })
        .collect();
    times.sort();
    times[1]
}

/// Time at `n` and at `2n`; fails when the ratio shows super-linear growth.
fn assert_linear(what: &str, n: usize, format: Format, make: impl Fn(usize) -> String) {
    let small = make(n);
    let large = make(2 * n);
    let t1 = median_time(small.as_bytes(), format);
    let t2 = median_time(large.as_bytes(), format);
    let ratio = t2.as_secs_f64() / t1.as_secs_f64().max(1e-6);
    eprintln!(
        "{what}: n={n} ({} bytes) {t1:?}, 2n {t2:?}: ×{ratio:.2}",
        small.len()
    );
    assert!(
        ratio < LIMIT,
        "{what}: doubling the input took ×{ratio:.2} the time ({t1:?} → {t2:?})"
    );
}

const INTENT: &str = "version: \"3.1\"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n";

#[test]
fn synonym_items_parse_in_linear_time() {
    assert_linear("synonym items", 150_000, Format::RasaYaml, |n| {
        let mut text = String::from(INTENT);
        for i in 0..n {
            let _ = write!(text, "- synonym: s{i}\n  examples: |\n    - w{i}\n");
        }
        text
    });
}

#[test]
fn an_item_with_many_keys_parses_in_linear_time() {
    assert_linear("keys of one item", 100_000, Format::RasaYaml, |n| {
        let mut text = String::from(INTENT);
        for i in 0..n {
            let _ = writeln!(text, "  k{i}: x");
        }
        text
    });
}

#[test]
fn a_line_with_many_entities_parses_in_linear_time() {
    assert_linear("entities of one JSONL line", 100_000, Format::Jsonl, |n| {
        // n entities of one character each, in a text of 5n characters.
        let text = "abcd ".repeat(n);
        let mut line = format!("{{\"intent\": \"greet\", \"text\": \"{text}\", \"entities\": [");
        for i in 0..n {
            let comma = if i == 0 { "" } else { ", " };
            let _ = write!(
                line,
                "{comma}{{\"start\": {}, \"end\": {}, \"entity\": \"e\"}}",
                5 * i,
                5 * i + 1
            );
        }
        line.push_str("]}\n");
        line
    });
}

#[test]
fn duplicate_examples_parse_in_linear_time() {
    assert_linear("duplicate examples", 75_000, Format::RasaYaml, |n| {
        let mut text = String::from(INTENT);
        text.push_str("- intent: again\n  examples: |\n");
        for _ in 0..n {
            text.push_str("    - the same words\n");
        }
        text
    });
}
