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

/// A line plot as SVG: `x` on a log scale (each a power of ten or not),
/// each series' `y` on a linear scale from 0, a dashed line at y = 1 (no
/// growth), and a legend. Small enough to read in a diff.
pub fn svg_plot(title: &str, x_label: &str, x: &[f64], series: &[(&str, Vec<f64>)]) -> String {
    use std::fmt::Write as _;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 60.0, 230.0, 40.0, 50.0);
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    let lx: Vec<f64> = x.iter().map(|v| v.log10()).collect();
    let (x0, x1) = (
        lx.iter().copied().fold(f64::INFINITY, f64::min).floor(),
        lx.iter().copied().fold(f64::NEG_INFINITY, f64::max).ceil(),
    );
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let y_max = series
        .iter()
        .flat_map(|(_, ys)| ys.iter().copied())
        .fold(1.5f64, f64::max)
        * 1.1;
    let px = |v: f64| left + (v - x0) / (x1 - x0) * plot_w;
    let py = |v: f64| top + plot_h - v / y_max * plot_h;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n"
    );
    // Axes, ticks, grid.
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\" stroke=\"black\"/>",
        top + plot_h,
        left + plot_w
    );
    let mut e = x0;
    while e <= x1 {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/>\
             <text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">10<tspan dy=\"-5\" \
             font-size=\"9\">{4}</tspan></text>",
            px(e),
            top,
            top + plot_h,
            top + plot_h + 16.0,
            e as i64
        );
        e += 1.0;
    }
    let step = if y_max > 4.0 { 1.0 } else { 0.25 };
    let mut t = 0.0;
    while t <= y_max {
        let _ = writeln!(
            s,
            "<text x=\"{0}\" y=\"{1:.1}\" text-anchor=\"end\">{t:.2}</text>",
            left - 6.0,
            py(t) + 4.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#888\" \
         stroke-dasharray=\"4 4\"/>\
         <text x=\"{2}\" y=\"{3}\" text-anchor=\"middle\">{x_label}</text>",
        py(1.0),
        left + plot_w,
        left + plot_w / 2.0,
        h - 12.0
    );
    // Series and legend.
    for (i, (name, ys)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = lx
            .iter()
            .zip(ys)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <text x=\"{2}\" y=\"{3}\">{name}</text>",
            w - right + 15.0,
            w - right + 40.0,
            w - right + 46.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
