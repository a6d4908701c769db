//! libFuzzer entry point of the `enqueue_args` target; the property lives in
//! `tandem_fuzz::enqueue` so that its stable twin (tests/twins) checks the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::enqueue::run(data));
