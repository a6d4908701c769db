//! Debounced enqueues (since [`Generation::Debounce`]): a node `debouncer`
//! enqueues the bank workflow onto the `orders` queue with debounce keys,
//! one call after another, each in a transaction of its own that commits or
//! rolls back, under every storage fault. Each call's input is unique (its
//! first op is a sleep of `1 + call` ms), so a row's input names the call
//! that wrote it.
//!
//! Judged at the end, on the final rows and on every committed version:
//!
//! - a debounced workflow runs with the input of the last committed call
//!   that answered with its ID (never a rolled-back call's), and ends
//!   `SUCCESS` with that input's fault-free output;
//! - every committed call's workflow exists;
//! - its input never changes once a claim started it (a debounce replaces
//!   only a pending workflow's input), and while pending it never starts
//!   later than the maximum wait after its first enqueue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use madsim::rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tandem::Status;

use crate::workload::{Generation, ORDERS_QUEUE, Op, Workload};
use crate::world::World;

/// The longest a debounced workflow's start is pushed back.
pub const MAX_WAIT_MS: i64 = 150;

/// One debounced enqueue the `debouncer` node makes.
#[derive(Debug, Clone)]
pub struct DebounceCall {
    /// The debounce key.
    pub key: String,
    /// The input.
    pub ops: Vec<Op>,
    /// The delay: how far the call pushes the pending workflow's start.
    pub delay_ms: i64,
    /// Whether the call's transaction rolls back instead of committing.
    pub rollback: bool,
}

/// What a call got: the ID it answered with, and whether its transaction
/// committed (`None`: unknown, the commit's answer was lost).
#[derive(Debug, Clone)]
pub struct DebounceSeen {
    /// The call (index into [`Workload::debounces`]).
    pub call: usize,
    /// The workflow it answered with.
    pub id: Option<String>,
    /// Whether it committed.
    pub committed: Option<bool>,
}

/// The calls of a run (none before the debounce generation): up to six
/// over two keys, from a stream of their own.
pub fn draw(seed: u64, generation: Generation) -> Vec<DebounceCall> {
    if generation < Generation::Debounce {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_de60_0ce5);
    if !rng.gen_bool(0.8) {
        return Vec::new();
    }
    (0..rng.gen_range(2..=6))
        .map(|i| {
            let mut ops = vec![Op::Sleep { ms: 1 + i as u64 }];
            match rng.gen_range(0..3) {
                0 => ops.push(Op::Call),
                // Long enough to suspend: the workflow goes back to its
                // queue started, and the key's next call starts another.
                1 => ops.push(Op::Sleep {
                    ms: rng.gen_range(150..=300),
                }),
                _ => {}
            }
            DebounceCall {
                key: format!("doc-{}", rng.gen_range(0..2)),
                ops,
                delay_ms: rng.gen_range(10..=80),
                rollback: rng.gen_bool(0.2),
            }
        })
        .collect()
}

/// The `debouncer` node.
pub async fn client(world: Arc<World>) {
    use tandem::storage::{Storage as _, Transaction as _, WorkflowEnqueue};
    let calls = world.workload.debounces.clone();
    for (call, c) in calls.iter().enumerate() {
        madsim::time::sleep(Duration::from_millis(
            madsim::rand::thread_rng().gen_range(5..60),
        ))
        .await;
        world.latency().await;
        let mut seen = DebounceSeen {
            call,
            id: None,
            committed: Some(false),
        };
        // The enqueue's UPDATE holds the pending row's lock until the
        // transaction ends, and a claim rightly skips the row meanwhile: the
        // priority check does not judge claims that overlap this window.
        // (A kill leaves it open: every later claim is spared.)
        let window = {
            let mut state = world.state();
            state.lock_windows.push(crate::admission::LockWindow {
                from_csn: world.mem.commit_seq(),
                to_csn: None,
            });
            state.lock_windows.len() - 1
        };
        let result: Result<(), String> = async {
            let mut tx = world.mem.begin().await.map_err(|e| e.to_string())?;
            world.faults.count("workflow_enqueue");
            let id = tx
                .workflow_enqueue(WorkflowEnqueue {
                    name: "bank".to_owned(),
                    input: serde_json::to_string(&c.ops).expect("ops serialize"),
                    queue: ORDERS_QUEUE.to_owned(),
                    workflow_id: None,
                    priority: 0,
                    dedup_key: None,
                    delay_ms: Some(c.delay_ms),
                    dedup_error: false,
                    concurrency_key: None,
                    debounce_key: Some(c.key.clone()),
                    debounce_max_wait_ms: Some(MAX_WAIT_MS),
                    trace_parent: Some(crate::traces::trace_parent_of(&c.ops)),
                })
                .await
                .map_err(|e| e.to_string())?;
            seen.id = Some(id);
            world.latency().await;
            if c.rollback {
                tx.rollback().await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            match tx.commit().await {
                Ok(()) => seen.committed = Some(true),
                Err(e) if e.kind() == tandem::ErrorKind::Unavailable => seen.committed = None,
                Err(e) => return Err(e.to_string()),
            }
            Ok(())
        }
        .await;
        world.log(format!(
            "debounce call {call} ({}): {:?} committed {:?} {result:?}",
            c.key, seen.id, seen.committed
        ));
        let mut state = world.state();
        state.lock_windows[window].to_csn = Some(world.mem.commit_seq());
        if let Some(id) = &seen.id
            && seen.committed != Some(false)
        {
            let replaced = state
                .debounce_seen
                .iter()
                .any(|s| s.id.as_ref() == Some(id) && s.committed == Some(true));
            if replaced {
                world.faults.observe("debounce.replaced");
            }
            let earlier_of_key = state.debounce_seen.iter().any(|s| {
                s.committed == Some(true)
                    && calls[s.call].key == c.key
                    && s.id.as_ref().is_some_and(|other| other != id)
            });
            if earlier_of_key {
                world.faults.observe("debounce.new_after_start");
            }
        }
        state.debounce_seen.push(seen);
    }
    world.state().debounce_done = true;
}

/// The final rows' checks: every debounced workflow ran with its last
/// committed call's input and ended with its output. Returns them with
/// their ops, for the engine-wide step checks.
pub fn check(
    world: &World,
    rows: &BTreeMap<String, tandem::storage::memory::WorkflowRecord>,
    expected_output: impl Fn(&[Op], &str) -> Vec<i64>,
    v: &mut Vec<String>,
) -> Vec<(String, Vec<Op>)> {
    let w: &Workload = &world.workload;
    let state = world.state();
    let seen = &state.debounce_seen;
    let mut checked = Vec::new();
    for r in rows.values().filter(|r| r.debounce_key.is_some()) {
        let answered: Vec<&DebounceSeen> = seen
            .iter()
            .filter(|s| s.id.as_ref() == Some(&r.id) && s.committed != Some(false))
            .collect();
        let input: Option<Vec<Op>> = serde_json::from_str(&r.input).ok();
        let winner = answered
            .iter()
            .rev()
            .find(|s| input.as_ref() == Some(&w.debounces[s.call].ops));
        let Some(winner) = winner else {
            v.push(format!(
                "debounced workflow {} runs input {} that no committed call answered with its ID gave",
                r.id, r.input
            ));
            continue;
        };
        if let Some(later) = answered
            .iter()
            .find(|s| s.call > winner.call && s.committed == Some(true))
        {
            v.push(format!(
                "debounced workflow {} runs call {}'s input, but committed call {} answered with it later",
                r.id, winner.call, later.call
            ));
        }
        let ops = w.debounces[winner.call].ops.clone();
        let expected = expected_output(&ops, &r.id);
        let got: Option<Vec<i64>> = r
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok());
        if r.status != Status::Success || got.as_ref() != Some(&expected) {
            v.push(format!(
                "debounced workflow {} ended {:?} with {:?}, fault-free output {expected:?}",
                r.id, r.status, r.output
            ));
        }
        checked.push((r.id.clone(), ops));
    }
    for s in seen.iter().filter(|s| s.committed == Some(true)) {
        if let Some(id) = &s.id
            && !rows.contains_key(id)
        {
            v.push(format!(
                "debounce call {} committed answering {id}, which does not exist",
                s.call
            ));
        }
    }
    checked
}

/// On every committed version: a debounced workflow's input never changes
/// once it started, and while pending its start is at most the maximum wait
/// after its first enqueue.
pub fn check_history(world: &World) -> Vec<String> {
    if world.workload.generation < Generation::Debounce {
        return Vec::new();
    }
    let mut v = Vec::new();
    let mut started: BTreeMap<String, String> = BTreeMap::new();
    for (csn, r) in world.mem.workflow_history() {
        if r.debounce_key.is_none() {
            continue;
        }
        if let Some(input) = started.get(&r.id) {
            if *input != r.input {
                v.push(format!(
                    "after commit {csn} debounced workflow {} runs input {}, but it started with {input}",
                    r.id, r.input
                ));
            }
        } else if r.owner_epoch > tandem::storage::EPOCH_NEVER_RAN {
            started.insert(r.id.clone(), r.input.clone());
        }
        if r.status == Status::Enqueued
            && r.owner_epoch == tandem::storage::EPOCH_NEVER_RAN
            && r.run_after_ms
                .is_none_or(|t| t > r.created_ms + MAX_WAIT_MS)
        {
            v.push(format!(
                "after commit {csn} pending debounced workflow {} starts at {:?}, past its maximum wait after {}",
                r.id, r.run_after_ms, r.created_ms
            ));
        }
    }
    v
}
