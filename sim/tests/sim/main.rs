//! The simulator's tests (one binary): seed sweep and replay, determinism,
//! planted bugs, proptest fault schedules, and the cfg guard.
//!
//! `cargo test -p sim` runs them all; `SIM_SEEDS=<n>` sets the sweep's seed
//! count, `SIM_SEED=<n>` replays one seed with its full trace.

mod guard;
#[cfg(madsim)]
mod planted;
#[cfg(madsim)]
mod schedules;
#[cfg(madsim)]
mod sweep;

/// A number from the environment.
#[cfg(madsim)]
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
