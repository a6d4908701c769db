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
