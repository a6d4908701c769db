//! Fuzz harnesses for tandem. Each module's `run(data)` is one target's whole
//! property: it decodes arbitrary bytes into a scenario, runs it, and panics
//! on any violation. The libFuzzer targets (`fuzz_targets/`, built by
//! `cargo fuzz`) and the stable twins (`tests/twins`, run by `cargo test`)
//! call the same `run`, so CI checks the same properties without a fuzzer.
//! docs/fuzzing.md says how to run each target.
#![forbid(unsafe_code)]

pub mod enqueue;
pub mod mvcc;
pub mod payload;
pub mod replay;
mod virtual_env;

use std::path::PathBuf;

/// The targets, by the names `cargo fuzz run` takes.
pub const TARGETS: [&str; 4] = [
    "payload_decode",
    "enqueue_args",
    "replay_history",
    "mvcc_model",
];

/// Every committed input of `target`: its seed corpus (`corpus/<target>`)
/// and the inputs that once found a bug (`regressions/<target>`), sorted by
/// path so failures name the same file every run.
pub fn committed_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable corpus directory").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("readable corpus file");
                inputs.push((path, bytes));
            }
        }
    }
    inputs.sort();
    inputs
}
