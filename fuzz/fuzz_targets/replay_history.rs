//! libFuzzer entry point of the `replay_history` target; the property lives in
//! `tandem_fuzz::replay` so that its stable twin (tests/twins) checks the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::replay::run(data));
