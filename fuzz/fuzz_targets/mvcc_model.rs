//! libFuzzer entry point of the `mvcc_model` target; the property lives in
//! `tandem_fuzz::mvcc` so that its stable twin (tests/twins) checks the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::mvcc::run(data));
