//! Arbitrary bytes as a request frame: decoding must fail cleanly, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_kafka::decode_request(bytes::Bytes::copy_from_slice(data));
});
