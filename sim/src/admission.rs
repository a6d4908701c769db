//! The queue-admission and deadline invariants, judged on the history of
//! the `orders` queue: limits, rate, delays, priorities, deduplication.
//!
//! Every committed version of the workflow rows is replayed in commit order
//! (the model keeps them all). After each commit that touches the queue:
//!
//! - no more of its workflows are `RUNNING` than its global concurrency
//!   limit, nor more with one concurrency key than its per-key limit, nor
//!   more on one executor than its worker concurrency (unless a zombie
//!   shares the executor ID: worker concurrency is per process);
//! - a claim that started a workflow at `S` leaves at most the rate limit's
//!   count of the queue's workflows whose latest start is after `S - period`
//!   (the claimer counts the same stamps under the queue's row lock);
//! - no claimed workflow started before the delay (or suspended sleep) its
//!   queued version named, on the claimer's clock;
//! - at most one unfinished (`ENQUEUED`, `RUNNING`) workflow holds each
//!   dedup key.
//!
//! Beside the replay: every deduplicated enqueue named a workflow that held
//! the key, unfinished, while the enqueue ran; every claim took the best
//! ready workflows by priority, then age, unless a better one may have been
//! locked by a concurrent transaction (see [`ClaimSeen`]); and no step of a
//! workflow began at or after the deadline its execution ran under.

use std::collections::BTreeMap;

use tandem::Status;
use tandem::storage::memory::WorkflowRecord;

use crate::workload::ORDERS_QUEUE;
use crate::world::World;

/// An enqueue the app client saw deduplicated: it answered `holder`.
#[derive(Debug, Clone)]
pub struct DedupAnswer {
    /// The order.
    pub order: i64,
    /// The workflow the enqueue answered with.
    pub holder: String,
    /// The newest commit before the enqueue's statement.
    pub from_csn: u64,
    /// The newest commit once it returned.
    pub to_csn: u64,
}

/// A claim statement of a limited queue, as its executor made it.
///
/// On a limited queue claimers are serialized on the queue's row lock, so
/// no other claim holds a row lock while this one looks; a better ready
/// workflow it passed over must have been locked by something else: a
/// cancel, or an UPDATE of workflow rows whose re-check after a wait failed
/// (a reclaim, release, recovery or fenced write: PostgreSQL keeps such a
/// lock to the end of the transaction). Their windows are [`LockWindow`]s:
/// a claim overlapping one is not judged.
#[derive(Debug, Clone)]
pub struct ClaimSeen {
    /// The node incarnation.
    pub node: String,
    /// The queue.
    pub queue: String,
    /// The names it claims.
    pub names: Vec<String>,
    /// The versions its code accepts (it passes over the others).
    pub versions: tandem::storage::Versions,
    /// The claimer's clock.
    pub now_ms: i64,
    /// The newest commit before the statement: its snapshot is newer.
    pub before_csn: u64,
    /// What it claimed: workflow and the epoch the claim gave it.
    pub claimed: Vec<(String, i64)>,
}

/// When a transaction that may hold row locks on queued workflows was
/// open, in commit sequence numbers (`None`: never ended).
#[derive(Debug, Clone)]
pub struct LockWindow {
    /// The newest commit when it took its locks.
    pub from_csn: u64,
    /// The newest commit when it ended.
    pub to_csn: Option<u64>,
}

/// Whether an enqueue of order `n` was answered with another workflow.
pub fn deduplicated(world: &World, n: i64) -> bool {
    world.state().dedup_answers.iter().any(|a| a.order == n)
}

/// Every violation of the admission and deadline invariants.
pub fn check(world: &World, history: &[(u64, WorkflowRecord)]) -> Vec<String> {
    let mut v = replay(world, history);
    let mut chains: BTreeMap<&str, Vec<(u64, &WorkflowRecord)>> = BTreeMap::new();
    for (csn, r) in history {
        chains.entry(r.id.as_str()).or_default().push((*csn, r));
    }
    v.extend(dedup_answers(world, &chains));
    v.extend(priorities(world, &chains));
    v.extend(deadlines(world, &chains));
    v
}

fn unfinished(r: &WorkflowRecord) -> bool {
    matches!(r.status, Status::Enqueued | Status::Running)
}

/// The version of a row valid at `csn`, if it existed then.
fn at<'a>(chain: &[(u64, &'a WorkflowRecord)], csn: u64) -> Option<&'a WorkflowRecord> {
    chain.iter().rev().find(|(c, _)| *c <= csn).map(|(_, r)| *r)
}

/// The invariants judged after every commit of the replayed history.
fn replay(world: &World, history: &[(u64, WorkflowRecord)]) -> Vec<String> {
    let w = &world.workload;
    let mut v = Vec::new();
    let mut rows: BTreeMap<String, WorkflowRecord> = BTreeMap::new();
    let twins = world
        .state()
        .incarnations
        .keys()
        .any(|n| n.starts_with("zombie-"));
    let mut i = 0;
    while i < history.len() {
        let csn = history[i].0;
        let mut touched = false;
        let mut claims: Vec<i64> = Vec::new();
        while i < history.len() && history[i].0 == csn {
            let r = &history[i].1;
            if r.queue == ORDERS_QUEUE {
                touched = true;
                let before = rows.get(&r.id);
                let claimed = r.status == Status::Running
                    && before.is_some_and(|b| b.status == Status::Enqueued);
                if claimed {
                    let queued = before.and_then(|b| b.run_after_ms);
                    let start = r.started_ms.unwrap_or(i64::MIN);
                    if queued.is_some() {
                        world.faults.observe("claim.after_run_after");
                    }
                    if let Some(after) = queued
                        && start < after
                    {
                        v.push(format!(
                            "{} claimed at commit {csn}, started at {start} ms, before its run_after {after} ms",
                            r.id
                        ));
                    }
                    claims.push(start);
                }
                rows.insert(r.id.clone(), r.clone());
            }
            i += 1;
        }
        if !touched {
            continue;
        }
        let running: Vec<&WorkflowRecord> = rows
            .values()
            .filter(|r| r.status == Status::Running)
            .collect();
        if let Some(limit) = w.orders_global
            && running.len() > limit as usize
        {
            v.push(format!(
                "after commit {csn} {} workflows of queue {ORDERS_QUEUE} run ({:?}), its global limit is {limit}",
                running.len(),
                running.iter().map(|r| &r.id).collect::<Vec<_>>()
            ));
            break;
        }
        if let Some(limit) = w.orders_per_key {
            let mut per_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for r in &running {
                if let Some(key) = &r.concurrency_key {
                    per_key.entry(key).or_default().push(&r.id);
                }
            }
            for (key, ids) in &per_key {
                let waiting = rows.values().any(|r| {
                    r.status == Status::Enqueued && r.concurrency_key.as_deref() == Some(*key)
                });
                if ids.len() == limit as usize && waiting {
                    world.faults.observe("claim.per_key_limit_reached");
                }
            }
            if let Some((key, ids)) = per_key.iter().find(|(_, ids)| ids.len() > limit as usize) {
                v.push(format!(
                    "after commit {csn} {} workflows of queue {ORDERS_QUEUE} with concurrency key {key} run ({ids:?}), its per-key limit is {limit}",
                    ids.len()
                ));
                break;
            }
        }
        if let Some((starts, period_ms)) = w.orders_rate {
            for start in &claims {
                let recent: Vec<&String> = rows
                    .values()
                    .filter(|r| r.started_ms.is_some_and(|s| s > start - period_ms))
                    .map(|r| &r.id)
                    .collect();
                if recent.len() == starts as usize {
                    world.faults.observe("claim.rate_limit_reached");
                }
                if recent.len() > starts as usize {
                    v.push(format!(
                        "after commit {csn} {} workflows of queue {ORDERS_QUEUE} started within {period_ms} ms of {start} ({recent:?}), its rate limit is {starts}",
                        recent.len()
                    ));
                }
            }
        }
        let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in rows.values().filter(|r| unfinished(r)) {
            if let Some(key) = &r.dedup_key {
                holders.entry(key.as_str()).or_default().push(r.id.as_str());
            }
        }
        if let Some((key, ids)) = holders.iter().find(|(_, ids)| ids.len() > 1) {
            v.push(format!(
                "after commit {csn} unfinished workflows {ids:?} of queue {ORDERS_QUEUE} share the dedup key {key}"
            ));
            break;
        }
        // A zombie shares its executor ID with a live engine, and worker
        // concurrency is per process: two processes may each run up to it.
        if twins {
            continue;
        }
        let mut per: BTreeMap<&Option<String>, usize> = BTreeMap::new();
        for r in &running {
            *per.entry(&r.executor_id).or_insert(0) += 1;
        }
        if let Some((e, n)) = per.into_iter().find(|(_, n)| *n > w.orders_worker) {
            v.push(format!(
                "after commit {csn} {n} workflows of queue {ORDERS_QUEUE} run on {e:?}, its worker concurrency is {}",
                w.orders_worker
            ));
            break;
        }
    }
    v
}

/// Every deduplicated enqueue answered with a workflow of the queue that
/// held the order's key, unfinished, at some commit while it ran.
fn dedup_answers(
    world: &World,
    chains: &BTreeMap<&str, Vec<(u64, &WorkflowRecord)>>,
) -> Vec<String> {
    let mut v = Vec::new();
    for a in &world.state().dedup_answers {
        let key = world
            .workload
            .orders
            .iter()
            .find(|o| o.n == a.order)
            .and_then(|o| o.dedup_key.clone());
        let chain = chains.get(a.holder.as_str()).map_or(&[][..], |c| &c[..]);
        // The versions valid at some commit in [from, to]: the one valid at
        // `from`, and those committed after it up to `to`.
        let held = at(chain, a.from_csn)
            .into_iter()
            .chain(
                chain
                    .iter()
                    .filter(|(c, _)| *c > a.from_csn && *c <= a.to_csn)
                    .map(|(_, r)| *r),
            )
            .any(|r| r.queue == ORDERS_QUEUE && unfinished(r) && r.dedup_key == key);
        if !held {
            v.push(format!(
                "order {} (dedup key {key:?}) was deduplicated into {}, which did not hold the key unfinished while the enqueue ran (commits {}..={})",
                a.order, a.holder, a.from_csn, a.to_csn
            ));
        }
    }
    v
}

/// Claims of a limited queue took the best ready workflows: none passed
/// over a better one (lower priority, or the same priority and older) that
/// was ready and unchanged throughout the claim, unless a transaction that
/// may hold such locks was open meanwhile (see [`ClaimSeen`]).
fn priorities(world: &World, chains: &BTreeMap<&str, Vec<(u64, &WorkflowRecord)>>) -> Vec<String> {
    let mut v = Vec::new();
    let state = world.state();
    for c in &state.claims_seen {
        // The claim's commit: the first version with its epoch.
        let commit = c.claimed.iter().find_map(|(id, epoch)| {
            chains.get(id.as_str())?.iter().find_map(|(csn, r)| {
                (r.status == Status::Running && r.owner_epoch == *epoch).then_some(*csn)
            })
        });
        let Some(k) = commit else { continue };
        let locked = state
            .lock_windows
            .iter()
            .any(|l| l.from_csn <= k && l.to_csn.is_none_or(|to| to >= c.before_csn));
        if locked {
            continue;
        }
        let rank = |r: &WorkflowRecord| (r.priority, r.created_ms);
        let claimed: Vec<(&str, (i32, i64))> = c
            .claimed
            .iter()
            .filter_map(|(id, _)| {
                // (Priority and age never change.)
                let (_, r) = chains.get(id.as_str())?.last()?;
                Some((id.as_str(), rank(r)))
            })
            .collect();
        let Some(worst) = claimed.iter().map(|(_, r)| *r).max() else {
            continue;
        };
        world.faults.observe("claim.judged_for_priority");
        for (id, chain) in chains {
            if c.claimed.iter().any(|(cid, _)| cid == id) {
                continue;
            }
            let Some(r) = at(chain, c.before_csn) else {
                continue;
            };
            let unchanged = !chain
                .iter()
                .any(|(csn, _)| *csn > c.before_csn && *csn <= k);
            let ready = r.status == Status::Enqueued
                && r.queue == c.queue
                && c.names.contains(&r.name)
                && c.versions.accepts(r.version.as_deref())
                && r.run_after_ms.is_none_or(|t| t <= c.now_ms)
                && !key_full(world, chains, r, k);
            if unchanged && ready && r.created_ms < worst.1 && r.priority > worst.0 {
                world.faults.observe("claim.priority_over_age");
            }
            if unchanged && ready && rank(r) < worst {
                v.push(format!(
                    "{} claimed {:?} (priority, created) up to {worst:?} at commit {k}, passing over {id} {:?}, ready and unlocked",
                    c.node,
                    claimed.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                    rank(r)
                ));
            }
        }
    }
    v
}

/// Whether `r`'s concurrency key had its queue's per-key limit of
/// workflows running once commit `k` (a claim's) was made: the claim had
/// to pass it over. (While a better workflow of the key was locked by
/// another transaction, the claim passes over the rest of the key too; a
/// claim overlapping such a lock is not judged.)
fn key_full(
    world: &World,
    chains: &BTreeMap<&str, Vec<(u64, &WorkflowRecord)>>,
    r: &WorkflowRecord,
    k: u64,
) -> bool {
    let (Some(limit), Some(key)) = (world.workload.orders_per_key, &r.concurrency_key) else {
        return false;
    };
    let running = chains
        .values()
        .filter_map(|chain| at(chain, k))
        .filter(|w| w.status == Status::Running && w.concurrency_key.as_ref() == Some(key))
        .count();
    running >= limit as usize
}

/// No step (other than a fork's copies) began at or after the deadline of
/// the execution that recorded it, on that execution's clock: the engine
/// checks the deadline at every step boundary.
fn deadlines(world: &World, chains: &BTreeMap<&str, Vec<(u64, &WorkflowRecord)>>) -> Vec<String> {
    let mut v = Vec::new();
    for (_, s) in world.mem.step_history() {
        if s.owner_epoch == tandem::storage::EPOCH_NEVER_RAN {
            continue;
        }
        let deadline = chains.get(s.workflow_id.as_str()).and_then(|chain| {
            chain.iter().find_map(|(_, r)| {
                (r.status == Status::Running && r.owner_epoch == s.owner_epoch)
                    .then_some(r.deadline_ms)
                    .flatten()
            })
        });
        if let Some(d) = deadline
            && s.started_ms >= d
        {
            v.push(format!(
                "{} step {} ({}) began at {} ms, at or after its execution's deadline {d} ms",
                s.workflow_id, s.step_id, s.name, s.started_ms
            ));
        }
    }
    v
}
