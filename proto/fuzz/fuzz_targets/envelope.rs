//! The message envelope (what the broker carries): any bytes decode to a message of the kind
//! asked for or to a `DecodeError`, never a panic; what decodes encodes, and decodes again to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refit_proto::{Control, Event, JobSpec, Message, WorkerStatus, decode, encode};

fn round_trip<M: Message>(data: &[u8]) {
    if let Ok(message) = decode::<M>(data) {
        let bytes = encode(&message);
        let again: M = decode(&bytes).expect("an encoded message decodes");
        // Bytes, not values: a float may be NaN, which equals nothing.
        assert_eq!(encode(&again), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<JobSpec>(data);
    round_trip::<Event>(data);
    round_trip::<Control>(data);
    round_trip::<WorkerStatus>(data);
});
