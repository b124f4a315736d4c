//! Rasa YAML training data (see `dataset.rs` for what is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use refit_proto::data::Format;

mod dataset;

fuzz_target!(|data: &[u8]| dataset::check(data, "fuzz.yml", Format::RasaYaml));
