//! libFuzzer entry point of the `payload_decode` target; the property lives in
//! `tandem_fuzz::payload` so that its stable twin (tests/twins) checks the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::payload::run(data));
