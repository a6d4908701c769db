//! Deterministic simulation of the tandem engine: madsim nodes as
//! executors, the memory backend as the shared database, faults drawn from
//! a seed, invariants checked after every run. See `docs/simulation.md`.
//!
//! Compiled only with `--cfg madsim` (set for the workspace in
//! `.cargo/config.toml`); without it the crate is empty and the guard test
//! in `tests/sim/guard.rs` fails with an explanation.
#![cfg(madsim)]

pub mod env;
pub mod faults;
pub mod run;
pub mod storage;
pub mod workload;
pub mod world;

pub use faults::{Plan, Scheduled, Site};
pub use run::{Options, Report, run_seed, simulate};
pub use tandem::bugs::Bug;
