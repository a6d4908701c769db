//! What a benchmark run records besides criterion's own output, and the
//! markdown tables printed at the end (the format of docs/benchmarks.md).
//!
//! Criterion reports each benchmark alone; the targets are ratios between
//! benchmarks of one run, so the bench targets also keep their iteration
//! times here and print the ratios themselves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every `iter_custom` call of one benchmark: (iterations, wall time).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    calls: Arc<Mutex<Vec<(u64, Duration)>>>,
}

impl Samples {
    /// Records one `iter_custom` call.
    pub fn record(&self, iters: u64, elapsed: Duration) {
        self.lock().push((iters, elapsed));
    }

    /// Iterations over all calls, warm-up included (the denominator for
    /// counters read around the whole benchmark).
    pub fn iterations(&self) -> u64 {
        self.lock().iter().map(|(iters, _)| iters).sum()
    }

    /// Iterations per second over the last `samples` calls: with flat
    /// sampling those are exactly criterion's measured samples, without
    /// the warm-up (whose small batches would understate concurrency).
    pub fn rate(&self, samples: usize) -> Option<f64> {
        let calls = self.lock();
        let measured = &calls[calls.len().saturating_sub(samples)..];
        let iters: u64 = measured.iter().map(|(iters, _)| iters).sum();
        let time: Duration = measured.iter().map(|(_, time)| *time).sum();
        (iters > 0 && !time.is_zero()).then(|| iters as f64 / time.as_secs_f64())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Duration)>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// `x` with a precision that suits its size, or "n/a".
pub fn number(x: Option<f64>) -> String {
    match x {
        None => "n/a".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// `a / b` as "1.23×", or "n/a".
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

/// A per-unit figure from a counter delta, or "n/a" for no units.
pub fn per(delta: i64, units: u64) -> Option<f64> {
    (units > 0).then(|| delta as f64 / units as f64)
}
