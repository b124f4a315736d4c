//! Files read back from the object store, which anyone with write access to the bucket could
//! replace: a version's `manifest.json` and `vocab.json`, a reservation's `job.json`. Any bytes
//! give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refit_proto::reservation::Reservation;
use refit_proto::vocab::Vocabulary;
use refit_proto::{FeaturizerSpec, Manifest};

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::from_json(data);
    let _ = Reservation::from_json(data);
    if let Ok(vocab) = Vocabulary::from_json(data, &FeaturizerSpec::default()) {
        // What loads can be written out again.
        let _ = vocab.to_json();
    }
});
