//! Retention (since [`Generation::Schedules`](crate::Generation)): in most
//! runs with a schedule, the `ticks` queue keeps finished workflows 0-120
//! ms, and every executor collects them every 20-150 ms in batches of 1-3
//! trees, under every fault. Every other tick's workflow has a child that
//! finishes while its parent still runs.
//!
//! Judged at the end on every committed deletion:
//!
//! - only finished workflows of a queue with a retention are deleted;
//! - a workflow with a parent goes in the same commit as its parent (a
//!   tree goes whole, so no child is taken from a running ancestor);
//! - its checkpoints, messages and events go in that same commit: no row
//!   of a deleted workflow is left, none is deleted later;
//! - no checkpoint, message or event exists without its workflow.

use std::collections::{BTreeMap, BTreeSet};

use tandem::storage::memory::WorkflowRecord;

use crate::world::World;

/// The end-of-run checks (see the module documentation).
pub fn check(world: &World) -> Vec<String> {
    let mut v = Vec::new();
    let deletions = world.mem.workflow_deletions();
    if deletions.is_empty() {
        return v;
    }
    let retained: BTreeSet<String> = world
        .workload
        .schedule
        .as_ref()
        .filter(|s| s.retention_ms.is_some())
        .map(|_| crate::schedules::QUEUE.to_owned())
        .into_iter()
        .collect();
    // Each workflow's last committed version before its deletion.
    let mut last: BTreeMap<String, (u64, WorkflowRecord)> = BTreeMap::new();
    for (csn, r) in world.mem.workflow_history() {
        last.insert(r.id.clone(), (csn, r));
    }
    let deleted_at: BTreeMap<&str, u64> =
        deletions.iter().map(|(c, id)| (id.as_str(), *c)).collect();
    let root_queue = |r: &WorkflowRecord| {
        let mut at = r;
        while let Some(parent) = at.parent_id.as_deref() {
            match last.get(parent) {
                Some((_, p)) => at = p,
                None => break,
            }
        }
        at.queue.clone()
    };
    for (csn, id) in &deletions {
        let Some((_, r)) = last.get(id) else {
            v.push(format!("commit {csn} deleted {id}, which never existed"));
            continue;
        };
        if !r.status.is_terminal() {
            v.push(format!(
                "commit {csn} deleted {id} while it was {}",
                r.status
            ));
        }
        if !retained.contains(&root_queue(r)) {
            v.push(format!(
                "commit {csn} deleted {id} of queue {}, which keeps its finished workflows",
                root_queue(r)
            ));
        }
        if let Some(parent) = &r.parent_id {
            world.faults.observe("gc.deleted_child_with_parent");
            if deleted_at.get(parent.as_str()) != Some(csn) {
                let parent_state = last
                    .get(parent)
                    .map(|(_, p)| p.status.to_string())
                    .unwrap_or_default();
                v.push(format!(
                    "commit {csn} deleted {id} without its parent {parent} (deleted at {:?}, last {parent_state})",
                    deleted_at.get(parent.as_str())
                ));
            }
        }
        world.faults.observe("gc.deleted_workflow");
    }
    // A deleted workflow's checkpoints go in its deletion's commit.
    let mut step_deleted: BTreeMap<(String, i32), u64> = BTreeMap::new();
    for (csn, key) in world.mem.step_deletions() {
        step_deleted.insert(key, csn);
    }
    let mut steps_of: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (_, s) in world.mem.step_history() {
        steps_of
            .entry(s.workflow_id.clone())
            .or_default()
            .insert(s.step_id);
    }
    for (key, csn) in &step_deleted {
        if deleted_at.get(key.0.as_str()) != Some(csn) {
            v.push(format!(
                "commit {csn} deleted step {} of {}, whose workflow was deleted at {:?}",
                key.1,
                key.0,
                deleted_at.get(key.0.as_str())
            ));
        }
    }
    for (id, csn) in &deleted_at {
        for step in steps_of.get(*id).into_iter().flatten() {
            if !step_deleted.contains_key(&((*id).to_owned(), *step)) {
                v.push(format!(
                    "commit {csn} deleted {id} but left its step {step}"
                ));
            }
        }
    }
    // No row outlives its workflow.
    let live: BTreeSet<String> = world.mem.workflows().into_iter().map(|r| r.id).collect();
    let step_csn: BTreeMap<(String, i32), u64> = world
        .mem
        .step_history()
        .into_iter()
        .map(|(csn, s)| ((s.workflow_id, s.step_id), csn))
        .collect();
    for s in world.mem.steps() {
        if !live.contains(&s.workflow_id) {
            let key = (s.workflow_id.clone(), s.step_id);
            v.push(format!(
                "step {} ({} {:?}, epoch {}, committed at {:?}) of {} outlives its workflow (deleted at {:?})",
                s.step_id,
                s.name,
                s.kind,
                s.owner_epoch,
                step_csn.get(&key),
                s.workflow_id,
                deleted_at.get(s.workflow_id.as_str())
            ));
        }
    }
    for (wf, key, _) in world.mem.events() {
        if !live.contains(&wf) {
            v.push(format!("event {key} of {wf} outlives its workflow"));
        }
    }
    for m in world.mem.messages() {
        if !live.contains(&m.workflow_id) {
            v.push(format!(
                "a message to {} outlives its workflow",
                m.workflow_id
            ));
        }
    }
    v
}
