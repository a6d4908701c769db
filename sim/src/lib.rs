//! Deterministic simulation of the tandem engine: madsim nodes as
//! executors, the memory backend as the shared database, faults drawn from
//! a seed, invariants checked after every run. See `docs/simulation.md`.
//!
//! Compiled only with `--cfg madsim` (set for the workspace in
//! `.cargo/config.toml`); without it the crate is empty and the guard test
//! in `tests/sim/guard.rs` fails with an explanation.
//!
//! One deliberate circle among the modules: `world` (the shared state of a
//! run) holds the `workload` it runs, the workload's workflows run on
//! `storage` (they are `Workflow<SimStorage>`) and report their external
//! calls to the world, and `storage` reports what executions loaded and
//! committed to the world. They are one simulated system; `env` only reads
//! the world's clock and `run` ties them together.
#![cfg(madsim)]

pub mod env;
pub mod faults;
pub mod history;
pub mod run;
pub mod storage;
pub mod workload;
pub mod world;

pub use faults::{Plan, Scheduled, Site};
pub use run::{Options, Report, run_seed, simulate};
pub use tandem::bugs::Bug;
pub use workload::Generation;
