//! The coordinator API's request bodies (`POST /v1/jobs`, `POST /v1/check`,
//! `PUT /v1/models/{name}/aliases/{alias}`, the dataset reference): any bytes give a value or a
//! JSON error, never a panic (names and keys are validated while deserialising).
#![no_main]

use libfuzzer_sys::fuzz_target;
use refit_proto::wire::{AliasRequest, DatasetBody, SubmitRequest};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<SubmitRequest>(data);
    let _ = serde_json::from_slice::<AliasRequest>(data);
    let _ = serde_json::from_slice::<DatasetBody>(data);
});
