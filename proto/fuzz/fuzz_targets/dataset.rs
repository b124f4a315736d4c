//! What the two training-data targets check: any bytes give a dataset or a `DataError`, never a
//! panic, and a dataset that parses holds only entities whose offsets fit their text.

use refit_proto::data::{Format, parse_bytes};

pub fn check(data: &[u8], origin: &str, format: Format) {
    if let Ok(parsed) = parse_bytes(data, origin, format) {
        for example in &parsed.examples {
            for entity in &example.entities {
                assert!(entity.slice(&example.text).is_some(), "{example:?}");
            }
        }
    }
}
