//! The planted bugs: each deliberately broken engine variant must be caught
//! within a bounded number of seeds. Prints the detection rate per variant.

use sim::{Bug, Options, run_seed};

use crate::env_u64;

/// Seeds tried per planted bug.
const SEEDS_PER_BUG: u64 = 40;

#[test]
fn every_planted_bug_is_caught() {
    let seeds = env_u64("SIM_BUG_SEEDS").unwrap_or(SEEDS_PER_BUG);
    let mut missed = Vec::new();
    println!("| planted bug | detected | first seed | first violation |");
    println!("|---|---|---|---|");
    // `SIM_BUGS=ClaimIgnoresPriority,ClaimIgnoresDelay` tries only those.
    let only = std::env::var("SIM_BUGS").ok();
    let chosen = |bug: &Bug| {
        only.as_ref()
            .is_none_or(|names| names.split(',').any(|n| n == format!("{bug:?}")))
    };
    for bug in Bug::ALL.into_iter().filter(chosen) {
        let options = Options {
            bug: Some(bug),
            ..Options::default()
        };
        let failing: Vec<_> = (0..seeds)
            .map(|seed| run_seed(seed, &options))
            .filter(|r| !r.passed())
            .collect();
        let first = failing.first();
        println!(
            "| {bug:?} | {}/{seeds} ({:.0}%) | {} | {} |",
            failing.len(),
            failing.len() as f64 * 100.0 / seeds as f64,
            first.map_or("-".to_owned(), |r| r.seed.to_string()),
            first.map_or("-".to_owned(), |r| r.violations[0].clone()),
        );
        if failing.is_empty() {
            missed.push(bug);
        }
    }
    assert!(
        missed.is_empty(),
        "planted bugs not caught in {seeds} seeds: {missed:?}"
    );
}
