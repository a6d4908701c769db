//! The history check: fencing and terminal statuses judged on every
//! committed version of the engine's rows, not only on final outcomes.
//!
//! Every simulated workflow has one fault-free output, so a write by a
//! superseded execution that happens to write the same value leaves the
//! final state as it should be. The memory model keeps every committed
//! version (there is no vacuum) with its commit sequence number, and the
//! simulator's storage wrapper logs each fenced write with the executor that
//! made it and the snapshot its statement read. From the two, this module
//! checks, whatever the values written:
//!
//! - a status that is `SUCCESS` or `ERROR` is never followed by another
//!   version of the row; `CANCELLED` only by a resume (`ENQUEUED`, epoch
//!   bumped);
//! - every fenced write (checkpoint, completion, suspend) was made under an
//!   epoch granted to the writer's executor ID: the first `RUNNING` version
//!   at that epoch names it;
//! - a checkpoint's fence read the workflow `RUNNING` at the writer's epoch
//!   in its statement's snapshot (the documented fence: `step_record` reads
//!   the snapshot and takes no row lock; the checkpoint's primary key is
//!   what makes a step exactly-once);
//! - no checkpoint commits after its workflow's terminal version;
//! - the queue-admission and deadline invariants of `admission.rs`.

use std::collections::BTreeMap;

use tandem::Status;
use tandem::storage::memory::WorkflowRecord;

use crate::world::World;

/// Every violation of the history invariants.
pub fn check(world: &World) -> Vec<String> {
    let mut v = Vec::new();
    let history = world.mem.workflow_history();
    v.extend(crate::admission::check(world, &history));
    let mut versions: BTreeMap<String, Vec<(u64, WorkflowRecord)>> = BTreeMap::new();
    for (csn, row) in history {
        versions.entry(row.id.clone()).or_default().push((csn, row));
    }
    // Terminal statuses.
    let mut terminal_at: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, chain) in &versions {
        for pair in chain.windows(2) {
            let ((_, a), (csn, b)) = (&pair[0], &pair[1]);
            match a.status {
                Status::Success | Status::Error => v.push(format!(
                    "{id}: terminal {} (epoch {}) overwritten at commit {csn} by {} (epoch {})",
                    a.status, a.owner_epoch, b.status, b.owner_epoch
                )),
                Status::Cancelled
                    if !(b.status == Status::Enqueued && b.owner_epoch == a.owner_epoch + 1) =>
                {
                    v.push(format!(
                        "{id}: CANCELLED (epoch {}) followed at commit {csn} by {} (epoch {}), not by a resume",
                        a.owner_epoch, b.status, b.owner_epoch
                    ))
                }
                _ => {}
            }
        }
        if let Some((csn, _)) = chain
            .iter()
            .find(|(_, r)| matches!(r.status, Status::Success | Status::Error))
        {
            terminal_at.insert(id.as_str(), *csn);
        }
    }
    for (csn, step) in world.mem.step_history() {
        if let Some(at) = terminal_at.get(step.workflow_id.as_str())
            && csn > *at
        {
            v.push(format!(
                "{} step {} committed at {csn}, after the workflow finished at {at}",
                step.workflow_id, step.step_id
            ));
        }
    }
    // Fenced writes.
    let state = world.state();
    for w in &state.writes {
        let Some(chain) = versions.get(&w.workflow_id) else {
            v.push(format!(
                "{} {} of a workflow that never existed",
                w.workflow_id, w.what
            ));
            continue;
        };
        let granted = chain
            .iter()
            .find(|(_, r)| r.status == Status::Running && r.owner_epoch == w.epoch);
        match granted {
            None => v.push(format!(
                "{} {} by {} under epoch {}, which no execution was ever granted",
                w.workflow_id, w.what, w.node, w.epoch
            )),
            Some((csn, r)) if r.executor_id != w.executor_id => v.push(format!(
                "{} {} by {} ({:?}) under epoch {}, granted to {:?} at commit {csn}",
                w.workflow_id, w.what, w.node, w.executor_id, w.epoch, r.executor_id
            )),
            Some(_) => {}
        }
        if w.what.starts_with("step") {
            let seen = chain.iter().rev().find(|(csn, _)| *csn <= w.statement_csn);
            let current =
                seen.is_some_and(|(_, r)| r.status == Status::Running && r.owner_epoch == w.epoch);
            if !current {
                v.push(format!(
                    "{} {} by {} under epoch {}: its statement's snapshot (commit {}) saw {:?}",
                    w.workflow_id,
                    w.what,
                    w.node,
                    w.epoch,
                    w.statement_csn,
                    seen.map(|(_, r)| (r.status, r.owner_epoch))
                ));
            }
        }
    }
    v
}
