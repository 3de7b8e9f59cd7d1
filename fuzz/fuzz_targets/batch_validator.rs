//! Arbitrary bytes as a produce request's records: validation must not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_log::batch::validate_batches(data, 1 << 20);
});
