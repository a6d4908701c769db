//! Trace context under simulation: every workflow the workload starts or
//! enqueues carries a W3C `traceparent` derived from its input
//! ([`trace_parent_of`]), so the invariant "every execution of a run sees
//! the trace context it was started or enqueued with" can be judged
//! without bookkeeping: each execution (a first run, a claim, a recovery on
//! another executor, a replay) compares what its context carries with the
//! committed row ([`check_execution`]), and at the end every row is
//! compared with what its starter gave ([`check`]).

use tandem::storage::memory::WorkflowRecord;

use crate::workload::{Op, resolve_forks};
use crate::world::World;

/// The trace context the workload gives a top-level workflow of these
/// operations: a function of the input, so that every path that starts or
/// enqueues the same run (a client, a duplicate start, the supervisor's
/// enqueue for a dead client) gives the same one, and a debounced enqueue,
/// which replaces the input, replaces it with its own.
pub fn trace_parent_of(ops: &[Op]) -> String {
    let json = serde_json::to_string(ops).expect("ops serialize");
    // FNV-1a, three ways seeded: 128 bits of trace ID, 64 of parent ID.
    let hash = |seed: u64| {
        json.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        }) | 1
    };
    format!("00-{:016x}{:016x}-{:016x}-01", hash(1), hash(2), hash(3))
}

/// One execution of `workflow_id` is about to run its body with `seen` in
/// its context: it must be the committed row's trace context (which never
/// changes once the run has started).
pub fn check_execution(
    world: &World,
    node: &str,
    workflow_id: &str,
    epoch: i64,
    seen: Option<&str>,
) {
    // Epoch 0: the replay check of a run that never ran, read while still
    // pending, whose row a debounced enqueue may replace since.
    if epoch == 0 {
        return;
    }
    let rows = world.mem.workflows();
    let Some(row) = rows.iter().find(|w| w.id == workflow_id) else {
        return;
    };
    if seen != row.trace_parent.as_deref() {
        world.violation(format!(
            "trace context: an execution of {workflow_id} on {node} (epoch {}) carries {seen:?}, but the run was stored with {:?}",
            row.owner_epoch, row.trace_parent
        ));
    }
}

/// Every committed run carries the trace context its starter gave: a
/// child its parent's, a fork and a scheduled run none, any other run of
/// the workload the one derived from its input.
pub fn check(world: &World) -> Vec<String> {
    let rows = world.mem.workflows();
    let forks: Vec<String> = resolve_forks(world)
        .into_iter()
        .filter_map(|f| f.id)
        .collect();
    let mut violations = Vec::new();
    for row in &rows {
        let expected = expected(row, &rows, &forks);
        if let Some(expected) = expected
            && row.trace_parent != expected
        {
            violations.push(format!(
                "trace context: {} ({}) is stored with {:?}, but was started or enqueued with {expected:?}",
                row.id, row.name, row.trace_parent
            ));
        }
    }
    violations
}

/// What `row` must carry; `None` when that cannot be known (a child whose
/// parent retention deleted first).
fn expected(
    row: &WorkflowRecord,
    rows: &[WorkflowRecord],
    forks: &[String],
) -> Option<Option<String>> {
    if let Some(parent) = &row.parent_id {
        return rows
            .iter()
            .find(|w| &w.id == parent)
            .map(|w| w.trace_parent.clone());
    }
    if row.name != "bank" || forks.contains(&row.id) {
        return Some(None);
    }
    let ops: Vec<Op> = serde_json::from_str(&row.input).expect("a bank input is operations");
    Some(Some(trace_parent_of(&ops)))
}
