//! Shared fixtures for Tandem's benchmarks (`cargo bench -p benches`): the
//! PostgreSQL server they run on and what they print about it, counters read
//! from `pg_stat_*`, the workloads, and the summary tables.
//!
//! The bench targets live in `benches/`; `docs/benchmarks.md` explains the
//! method and records results. Nothing here is a test: speed is reported,
//! never asserted.
//!
//! # Layout
//! - [`server`]: the throw-away (or `DATABASE_URL`) server, machine and settings report, `pg_stat` counters.
//! - [`workloads`]: application tables, the benchmark workflows, the closed-loop driver, pgbench.
//! - [`peers`]: underway and DBOS Transact for Python running the same workflow.
//! - [`report`]: per-benchmark records and the tables printed at the end of a run.

pub mod durare_peer;
pub mod peers;
pub mod report;
pub mod server;
pub mod workloads;

/// Whether this is a measuring run. `cargo bench` passes `--bench`; a smoke
/// run is `cargo bench -p benches -- --test` (criterion's check mode, which
/// CI runs so that a broken benchmark cannot land) or `cargo test --benches`
/// (no `--bench`): each benchmark runs once and the slow extras are skipped.
pub fn bench_mode() -> bool {
    let mut bench = false;
    for arg in std::env::args() {
        match arg.as_str() {
            "--bench" => bench = true,
            "--test" => return false,
            _ => {}
        }
    }
    bench
}
