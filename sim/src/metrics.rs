//! The engine's metrics under simulation: a recorder of this run's
//! counters (installed for the seed's thread, where madsim runs every
//! node), and the invariant that they never report work that did not
//! commit: each counted checkpoint is a committed step row, each counted
//! completion a committed transition of a workflow into its final status.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tandem::storage::Status;

use crate::world::World;

/// A counter's name and its labels, sorted.
type CounterKey = (String, Vec<(String, String)>);

/// Step rows by kind and outcome: each row's workflow, step, epoch, start.
type StepRows<'a> = BTreeMap<(String, &'a str), BTreeSet<(String, i32, i64, i64)>>;

thread_local! {
    /// This seed's counters.
    static COUNTS: RefCell<BTreeMap<CounterKey, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts into [`COUNTS`]; gauges and histograms are dropped.
#[derive(Debug, Default)]
pub struct SimRecorder;

struct Cell(String, Vec<(String, String)>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        COUNTS.with(|c| {
            *c.borrow_mut()
                .entry((self.0.clone(), self.1.clone()))
                .or_insert(0) += value;
        });
    }
    fn absolute(&self, value: u64) {
        COUNTS.with(|c| {
            c.borrow_mut()
                .insert((self.0.clone(), self.1.clone()), value);
        });
    }
}

impl Recorder for SimRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        Counter::from_arc(Arc::new(Cell(key.name().to_owned(), labels)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Clears this thread's counters (a new seed).
pub fn reset() {
    COUNTS.with(|c| c.borrow_mut().clear());
}

/// The counters named `name`, by their labels as a map.
fn counters(name: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    COUNTS.with(|c| {
        c.borrow()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), v)| (labels.iter().cloned().collect(), *v))
            .collect()
    })
}

/// Metrics invariant: no counter exceeds what committed.
pub fn check(world: &World) -> Vec<String> {
    let mut v = Vec::new();
    // Step rows ever committed, by kind and outcome (a row is written once;
    // retention may delete it and a re-run write another).
    let mut rows: StepRows = BTreeMap::new();
    for (_, s) in world.mem.step_history() {
        let outcome = if s.output.is_some() { "ok" } else { "error" };
        rows.entry((s.kind.as_str().to_owned(), outcome))
            .or_default()
            .insert((s.workflow_id, s.step_id, s.owner_epoch, s.started_ms));
    }
    for (labels, counted) in counters(tandem::telemetry::STEPS) {
        let kind = labels.get("kind").cloned().unwrap_or_default();
        let outcome = labels.get("outcome").map_or("", String::as_str);
        let committed = rows
            .get(&(kind.clone(), outcome))
            .map_or(0, |s| s.len() as u64);
        if counted > committed {
            v.push(format!(
                "metrics: {counted} {kind} steps counted {outcome}, only {committed} committed"
            ));
        }
    }
    // Committed transitions into a final status, by workflow name.
    let mut last: BTreeMap<String, Status> = BTreeMap::new();
    let mut finished: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut history = world.mem.workflow_history();
    history.sort_by_key(|(csn, _)| *csn);
    for (_, r) in history {
        let before = last.insert(r.id.clone(), r.status);
        if matches!(r.status, Status::Success | Status::Error) && before != Some(r.status) {
            *finished
                .entry((r.name.clone(), r.status.as_str()))
                .or_insert(0) += 1;
        }
    }
    for (labels, counted) in counters(tandem::telemetry::WORKFLOWS) {
        let name = labels.get("workflow").cloned().unwrap_or_default();
        let status = labels.get("status").map_or("", String::as_str);
        let committed = finished.get(&(name.clone(), status)).copied().unwrap_or(0);
        if counted > committed {
            v.push(format!(
                "metrics: {counted} {name} workflows counted {status}, only {committed} committed"
            ));
        }
    }
    v
}
