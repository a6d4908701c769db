//! The stable twins of the fuzz targets: the same properties (the same
//! `tandem_fuzz::*::run`) on every committed corpus and regression input,
//! then on random inputs from proptest. `TANDEM_FUZZ_CASES` scales the
//! random part (default: each module's own).

mod enqueue_args;
mod mvcc_model;
mod payload_decode;
mod replay_history;

/// The number of random cases, `default` unless `TANDEM_FUZZ_CASES` says.
pub fn cases(default: u32) -> u32 {
    std::env::var("TANDEM_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Deterministic pseudo-random inputs (xorshift), for the tests that show a
/// target catches a planted bug: the same inputs every run.
pub fn inputs(count: usize, len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..count).map(move |_| {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    })
}

/// Whether `run` panics on one of `inputs` while `bug` is switched on.
pub fn catches(
    bug: tandem::bugs::Bug,
    run: fn(&[u8]),
    inputs: impl Iterator<Item = Vec<u8>>,
) -> bool {
    tandem::bugs::set(Some(bug));
    let mut caught = false;
    for input in inputs {
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            caught = true;
            break;
        }
    }
    tandem::bugs::set(None);
    caught
}
