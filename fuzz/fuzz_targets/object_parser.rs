//! Arbitrary bytes as a data object: footer parsing and verification must not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_log::object::verify(&bytes::Bytes::copy_from_slice(data));
});
