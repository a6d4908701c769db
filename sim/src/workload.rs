//! The bank workload, in FoundationDB's setup / run / check shape.
//!
//! Setup: accounts with a known total. Run: workflows that mix
//! transactional steps (move money between accounts and append a ledger
//! row, in the step's own transaction) with plain steps (calls to a
//! simulated external service that logs every call). Check: the ledger
//! matches the checkpoints one to one, money is conserved, every plain
//! checkpoint has a call behind it, and every workflow ended with the
//! output a fault-free run gives.
//!
//! Queues, the outbox and sleeps (issue 4): executors claim from the
//! `orders` queue, an application client ([`app_client`]) inserts orders
//! and enqueues their workflows in the same transaction, committing or
//! rolling back, and workflows may contain durable sleeps ([`Op::Sleep`]).
//! Messages (issue 13): workflows receive with `recv` ([`Op::Recv`]);
//! a message client ([`message_client`]) sends each expected message from
//! a committed transaction, sometimes after a rolled-back send of a decoy.
//! Steering (issue 13): workflows publish events ([`Op::SetEvent`]) and
//! start and await child workflows ([`Op::Child`]); an admin node
//! ([`admin_client`]) cancels and resumes them and reads their events; the
//! `orders` queue runs under a global and a per-executor concurrency limit.
//! Which of these a run uses is its [`Generation`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem::storage::StepKind;
use tandem::storage::memory::{Key, MemConn, MemError};
use tandem::{RetryPolicy, Status, Workflow, WorkflowContext, WorkflowError};

use crate::faults::Site;
use crate::storage::{NodeLabel, SimStorage};
use crate::world::{ServiceCall, World};

/// The application's tables.
pub const ACCOUNTS: &str = "accounts";
/// One row per applied transfer, keyed uniquely per attempt so that a
/// double application shows up as two rows.
pub const LEDGER: &str = "ledger";
/// Every account's opening balance.
pub const OPENING_BALANCE: i64 = 1_000;
/// Attempts of a plain step (the service fails fewer times than this).
const CALL_ATTEMPTS: u32 = 4;

/// Which features a run's workload uses. Each generation draws everything
/// the one before it drew, from the same random streams, and adds its own
/// from new streams: a seed found under an older generation replays under
/// it exactly (the regression tests pin theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Generation {
    /// Transfers, calls, sleeps and the outbox.
    Bank,
    /// Plus messages: receives, and the message client that sends to them.
    Messages,
    /// Plus events, child workflows, cancel and resume from an admin node,
    /// and queue concurrency limits.
    Steering,
    /// Plus queue admission: priorities, delays and dedup keys on the
    /// orders, a rate limit on their queue, deadlines on workflows, and the
    /// admin node cancelling orders too.
    Admission,
    /// Plus versioned deploys: executors of two application versions side
    /// by side, the newer changing the workflow behind `ctx.patched`
    /// (`crate::versions`).
    Versions,
    /// Plus per-key concurrency: orders carry concurrency keys (a
    /// customer) and their queue runs at most so many per key.
    Keys,
    /// Plus debounced enqueues from a node of their own (`crate::debounce`).
    Debounce,
    /// Plus a cron schedule declared by some executors, paused and resumed
    /// by a node of its own, and a chaos phase long enough to hold a tick
    /// (`crate::schedules`).
    Schedules,
    /// Plus group commit: each executor groups plain checkpoints and
    /// completions (`EngineBuilder::group_commit`) with a size drawn from a
    /// stream of its own: off (1), 2 (groups split) or 64. Before it every
    /// executor writes each alone, as the engine did when the older
    /// generations' regression seeds were found.
    Groups,
}

impl Generation {
    /// The newest generation: what `cargo test -p sim` runs.
    pub const LATEST: Generation = Generation::Groups;
}

/// Each executor's group-commit size, from a stream of its own: off in a
/// quarter, 2 in a quarter (a group splits as soon as three wait), 64
/// otherwise.
fn draw_group_commits(seed: u64, generation: Generation, executors: usize) -> Vec<usize> {
    if generation < Generation::Groups {
        return vec![1; executors];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_960a_9c01);
    (0..executors)
        .map(|_| match rng.gen_range(0..4) {
            0 => 1,
            1 => 2,
            _ => 64,
        })
        .collect()
}

/// One step of a bank workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A transactional step moving `amount` between two accounts.
    Transfer {
        /// Debited account.
        from: i64,
        /// Credited account.
        to: i64,
        /// How much.
        amount: i64,
    },
    /// A plain step calling the external service.
    Call,
    /// A durable sleep of `ms` milliseconds (longer than
    /// [`SLEEP_SUSPEND_AFTER`]: the workflow is handed back to its queue).
    Sleep {
        /// How long.
        ms: u64,
    },
    /// `recv` on the step's own topic. `sent`: the message client sends
    /// one message there (and the receive waits as long as it takes);
    /// otherwise nobody does and the receive times out after
    /// `timeout_ms`, returning nothing.
    Recv {
        /// Whether a message is sent to it.
        sent: bool,
        /// The timeout of an unsent receive.
        timeout_ms: u64,
    },
    /// `set_event` of [`event_key`]`(key)` to [`event_value`] of the step.
    SetEvent {
        /// Which of the workflow's keys.
        key: u8,
    },
    /// Starts a child workflow running `ops` and awaits its result; the
    /// step's value is the sum of the child's output.
    Child {
        /// The child's steps (transfers, calls and sleeps only).
        ops: Vec<Op>,
    },
}

/// The engine's step ID of each op: every op is one step, except a child,
/// which is two (its start and its awaited result).
pub fn step_ids(ops: &[Op]) -> Vec<i32> {
    let mut next = 0;
    ops.iter()
        .map(|op| {
            let id = next;
            next += if matches!(op, Op::Child { .. }) { 2 } else { 1 };
            id
        })
        .collect()
}

/// Whether `id` is a child workflow's.
fn is_child(id: &str) -> bool {
    id.contains("-child-")
}

impl Op {
    /// The context operation it performs, as the coverage table names it.
    pub fn context_op(&self, workflow_id: &str) -> &'static str {
        match self {
            Op::Transfer { .. } => "ctx.transaction",
            Op::Call if is_child(workflow_id) => "ctx.step",
            Op::Call => "ctx.step_with",
            Op::Sleep { ms } if Duration::from_millis(*ms) > SLEEP_SUSPEND_AFTER => {
                "ctx.sleep (suspending)"
            }
            Op::Sleep { .. } => "ctx.sleep (short)",
            Op::Recv { sent: true, .. } => "ctx.recv (message)",
            Op::Recv { sent: false, .. } => "ctx.recv (timeout)",
            Op::SetEvent { .. } => "ctx.set_event",
            Op::Child { .. } => "ctx.start_child + ctx.child_result",
        }
    }
}

/// The event key of [`Op::SetEvent`].
pub fn event_key(key: u8) -> String {
    format!("e{key}")
}

/// The value workflow `index` publishes at `step`: the step can be read
/// back from it ([`event_step`]), so that readers can check its order.
pub fn event_value(index: usize, step: i32) -> i64 {
    EVENT_BASE + index as i64 * 100 + i64::from(step)
}

/// The step that published an [`event_value`].
pub fn event_step(value: i64) -> i32 {
    ((value - EVENT_BASE) % 100) as i32
}

const EVENT_BASE: i64 = 5_000_000;

/// The ID of the child a workflow starts at `step`: derived by the engine
/// from the parent's ID and the step (`docs/children.md`).
pub fn child_id(parent: &str, step: i32) -> String {
    format!("{parent}-child-{step}")
}

/// The topic of the receive at `step`.
pub fn recv_topic(step: i32) -> String {
    format!("m{step}")
}

/// The value of the message sent to `workflow`'s receive at `step`.
pub fn message_value(workflow: usize, step: i32) -> i64 {
    -(workflow as i64 * 100 + i64::from(step)) - 1
}

/// The value of the decoy a rolled-back transaction sends: never received.
pub const DECOY_VALUE: i64 = 7_777_777;

/// The timeout of a receive whose message is sent: longer than any run, and
/// than the largest clock jump, so it never expires.
const RECV_SENT_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The engines' `sleep_suspend_after`: longer sleeps suspend to the queue.
pub const SLEEP_SUSPEND_AFTER: Duration = Duration::from_millis(100);
/// The application's orders table (the outbox workload).
pub const ORDERS: &str = "orders";
/// The queue orders' workflows are enqueued to.
pub const ORDERS_QUEUE: &str = "orders";

/// One order of the outbox workload: an application transaction inserts
/// the order row and enqueues its workflow (ID `order-<n>`) atomically.
#[derive(Debug, Clone)]
pub struct OrderSpec {
    /// The order number.
    pub n: i64,
    /// The workflow ID.
    pub id: String,
    /// The workflow's steps.
    pub ops: Vec<Op>,
    /// The output a fault-free run produces.
    pub expected: Vec<i64>,
    /// Whether the client rolls the transaction back instead of committing.
    pub rollback: bool,
    /// Its claim priority (lower first).
    pub priority: i32,
    /// Not claimable before this long after the enqueue.
    pub delay_ms: Option<u64>,
    /// Its deduplication key: while another unfinished order of the queue
    /// holds it, the enqueue answers with that one and creates nothing.
    pub dedup_key: Option<String>,
    /// Its concurrency key: while the queue's per-key limit of orders with
    /// it run, it waits.
    pub concurrency_key: Option<String>,
}

/// One workflow of the workload.
#[derive(Debug, Clone)]
pub struct WorkflowSpec {
    /// Its ID.
    pub id: String,
    /// The executor (index) whose client starts it.
    pub owner: usize,
    /// Its steps.
    pub ops: Vec<Op>,
    /// The output a fault-free run produces.
    pub expected: Vec<i64>,
    /// Its deadline, counted from its start (`Engine::start_with_timeout`).
    pub deadline_ms: Option<u64>,
}

/// What one run executes.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Executors (madsim nodes `exec-0`, ...).
    pub executors: usize,
    /// Accounts `0..accounts`.
    pub accounts: i64,
    /// The workflows.
    pub workflows: Vec<WorkflowSpec>,
    /// The orders the application client places (outbox).
    pub orders: Vec<OrderSpec>,
    /// The generation it was drawn under.
    pub generation: Generation,
    /// The `orders` queue's global concurrency limit, if any.
    pub orders_global: Option<u32>,
    /// The `orders` queue's per-executor concurrency.
    pub orders_worker: usize,
    /// The `orders` queue's rate limit: starts per period (ms).
    pub orders_rate: Option<(u32, i64)>,
    /// The `orders` queue's per-key concurrency limit.
    pub orders_per_key: Option<u32>,
    /// The debounced enqueues of the `debouncer` node, in order.
    pub debounces: Vec<crate::debounce::DebounceCall>,
    /// Each executor's clock skew (zero before the steering generation):
    /// within a third of the lease, the bound `docs/guarantees.md` asks of
    /// a deployment.
    pub skews_ms: Vec<i64>,
    /// The cron schedule (`crate::schedules`), since the schedules
    /// generation.
    pub schedule: Option<crate::schedules::ScheduleSpec>,
    /// Each executor's group-commit size (all 1 before the groups
    /// generation).
    pub group_commits: Vec<usize>,
}

/// A workflow the workload starts (see [`Workload::all_workflows`]).
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its ID.
    pub id: String,
    /// Its parent, for a child workflow.
    pub parent: Option<String>,
    /// Its steps.
    pub ops: Vec<Op>,
    /// The output a fault-free run produces.
    pub expected: Vec<i64>,
}

/// The largest clock skew of an executor, in milliseconds: a third of the
/// simulated lease.
pub const CLOCK_SKEW_MAX_MS: i64 = 100;

/// The per-executor concurrency of a queue declared without one.
const WORKER_CONCURRENCY_DEFAULT: usize = 64;

/// The index a workflow ID stands for in [`service_value`]: `wf-<i>` is
/// `i`, `order-<n>` is `1000 + n`.
pub fn workflow_index(id: &str) -> usize {
    if let Some((parent, step)) = id.rsplit_once("-child-") {
        // (A fork's child too: the fork's index is its source's.)
        2000 + workflow_index(parent) * 64 + step.parse::<usize>().unwrap_or(0)
    } else if let Some((source, _)) = id.split_once("-fork-") {
        // A fork runs its source's steps with its source's values.
        workflow_index(source)
    } else if let Some(n) = id.strip_prefix("order-") {
        1000 + n.parse::<usize>().unwrap_or(0)
    } else {
        id.trim_start_matches("wf-").parse().unwrap_or(0)
    }
}

/// Random steps for workflow `index`, and their fault-free output.
fn random_ops(
    rng: &mut ChaCha8Rng,
    accounts: i64,
    index: usize,
    max: usize,
) -> (Vec<Op>, Vec<i64>) {
    let ops: Vec<Op> = (0..rng.gen_range(1..=max))
        .map(|_| {
            let r: f64 = rng.r#gen();
            if r < 0.5 {
                let from = rng.gen_range(0..accounts);
                let to = (from + rng.gen_range(1..accounts)) % accounts;
                Op::Transfer {
                    from,
                    to,
                    amount: rng.gen_range(1..=50),
                }
            } else if r < 0.9 {
                Op::Call
            } else if rng.gen_bool(0.5) {
                Op::Sleep {
                    ms: rng.gen_range(1..=40),
                }
            } else {
                Op::Sleep {
                    ms: rng.gen_range(150..=400),
                }
            }
        })
        .collect();
    let expected = expected_output(&ops, index);
    (ops, expected)
}

/// The output a fault-free run of workflow `index` with `ops` produces.
fn expected_output(ops: &[Op], index: usize) -> Vec<i64> {
    ops.iter()
        .zip(step_ids(ops))
        .map(|(op, step)| match op {
            Op::Transfer { amount, .. } => *amount,
            Op::Call => service_value(index, step),
            Op::Sleep { ms } => *ms as i64,
            Op::Recv { sent: true, .. } => message_value(index, step),
            Op::Recv { sent: false, .. } => -1,
            Op::SetEvent { .. } => event_value(index, step),
            Op::Child { ops } => {
                let child = workflow_index(&child_id(&format!("wf-{index}"), step));
                expected_output(ops, child).iter().sum()
            }
        })
        .collect()
}

/// Adds events and a child workflow to a workflow's steps (from their own
/// generator, like [`add_recvs`]), and recomputes the fault-free output.
fn add_steering(
    rng: &mut ChaCha8Rng,
    accounts: i64,
    ops: &mut Vec<Op>,
    expected: &mut Vec<i64>,
    index: usize,
) {
    for _ in 0..rng.gen_range(0..=2) {
        let at = rng.gen_range(0..=ops.len());
        ops.insert(
            at,
            Op::SetEvent {
                key: rng.gen_range(0..2),
            },
        );
    }
    if rng.gen_bool(0.4) {
        let at = rng.gen_range(0..=ops.len());
        // The child's index only seeds its service values here: the output
        // is recomputed below from where the child finally sits.
        let (child, _) = random_ops(rng, accounts, 0, 3);
        ops.insert(at, Op::Child { ops: child });
    }
    *expected = expected_output(ops, index);
}

/// Adds receives to a workflow's steps (from their own generator, so that a
/// workload without messages draws exactly what it drew before they
/// existed), and recomputes the fault-free output.
fn add_recvs(rng: &mut ChaCha8Rng, ops: &mut Vec<Op>, expected: &mut Vec<i64>, index: usize) {
    for _ in 0..rng.gen_range(0..=2) {
        let at = rng.gen_range(0..=ops.len());
        let op = Op::Recv {
            sent: rng.gen_bool(0.8),
            timeout_ms: rng.gen_range(1..=30),
        };
        ops.insert(at, op);
    }
    // Steps after an insertion moved: recompute what depends on the step.
    *expected = expected_output(ops, index);
}

impl Workload {
    /// A random workload from `seed`, independent of the fault stream,
    /// with the features of `generation`.
    pub fn generate(seed: u64, generation: Generation) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_b0ad_feed);
        let executors = rng.gen_range(2..=3);
        let accounts = rng.gen_range(3..=5);
        let count = rng.gen_range(4..=8);
        let workflows = (0..count)
            .map(|i| {
                let (ops, expected) = random_ops(&mut rng, accounts, i, 8);
                WorkflowSpec {
                    id: format!("wf-{i}"),
                    owner: rng.gen_range(0..executors),
                    ops,
                    expected,
                    deadline_ms: None,
                }
            })
            .collect();
        let mut workflows: Vec<WorkflowSpec> = workflows;
        if generation >= Generation::Messages {
            let mut extra = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_0005_e7d5);
            for (i, w) in workflows.iter_mut().enumerate() {
                add_recvs(&mut extra, &mut w.ops, &mut w.expected, i);
            }
        }
        let mut steering = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_057e_e121);
        let (mut orders_global, mut orders_worker) = (None, WORKER_CONCURRENCY_DEFAULT);
        if generation >= Generation::Steering {
            for (i, w) in workflows.iter_mut().enumerate() {
                add_steering(&mut steering, accounts, &mut w.ops, &mut w.expected, i);
            }
            if steering.gen_bool(0.7) {
                orders_global = Some(steering.gen_range(1..=2));
            }
            if steering.gen_bool(0.5) {
                orders_worker = steering.gen_range(1..=2);
            }
        }
        let skews_ms = (0..executors)
            .map(|_| {
                if generation >= Generation::Steering && steering.gen_bool(0.5) {
                    steering.gen_range(-CLOCK_SKEW_MAX_MS..=CLOCK_SKEW_MAX_MS)
                } else {
                    0
                }
            })
            .collect();
        let orders = (0..rng.gen_range(2..=6))
            .map(|n| {
                let id = format!("order-{n}");
                let (ops, expected) = random_ops(&mut rng, accounts, workflow_index(&id), 4);
                OrderSpec {
                    n,
                    id,
                    ops,
                    expected,
                    rollback: rng.gen_bool(0.3),
                    priority: 0,
                    delay_ms: None,
                    dedup_key: None,
                    concurrency_key: None,
                }
            })
            .collect();
        let mut orders: Vec<OrderSpec> = orders;
        let mut orders_rate = None;
        if generation >= Generation::Admission {
            let mut admission = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_ad31_5510);
            if admission.gen_bool(0.5) {
                orders_rate = Some((admission.gen_range(1..=3), admission.gen_range(100..=300)));
            }
            let priorities = admission.gen_bool(0.7);
            for o in &mut orders {
                if priorities {
                    o.priority = admission.gen_range(0..=2);
                }
                if admission.gen_bool(0.3) {
                    o.delay_ms = Some(admission.gen_range(20..=250));
                }
                if admission.gen_bool(0.5) {
                    o.dedup_key = Some(format!("customer-{}", admission.gen_range(0..2)));
                }
            }
            for w in &mut workflows {
                if admission.gen_bool(0.25) {
                    w.deadline_ms = Some(admission.gen_range(20..=400));
                }
                // Half the receives nobody sends to wait long enough for a
                // crash or a takeover to fall inside the wait.
                for op in &mut w.ops {
                    if let Op::Recv {
                        sent: false,
                        timeout_ms,
                    } = op
                        && admission.gen_bool(0.5)
                    {
                        *timeout_ms = admission.gen_range(50..=250);
                    }
                }
            }
        }
        let mut orders_per_key = None;
        if generation >= Generation::Keys {
            let mut keys = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_c0c0_4e75);
            if keys.gen_bool(0.8) {
                orders_per_key = Some(if keys.gen_bool(0.8) { 1 } else { 2 });
                // A global limit of 1 would hide the per-key one.
                if keys.gen_bool(0.6) {
                    orders_global = None;
                }
            }
            for o in &mut orders {
                if keys.gen_bool(0.8) {
                    o.concurrency_key = Some(format!("customer-{}", keys.gen_range(0..2)));
                }
            }
        }
        Self {
            executors,
            accounts,
            workflows,
            orders,
            generation,
            orders_global,
            orders_worker,
            orders_rate,
            orders_per_key,
            debounces: crate::debounce::draw(seed, generation),
            schedule: crate::schedules::draw(seed, generation, executors),
            skews_ms,
            group_commits: draw_group_commits(seed, generation, executors),
        }
    }

    /// Every workflow the workload starts, child workflows included: ID,
    /// parent, steps and fault-free output (orders whether or not they
    /// commit).
    pub fn all_workflows(&self) -> Vec<Planned> {
        let mut all = Vec::new();
        let top = self
            .workflows
            .iter()
            .map(|w| (&w.id, &w.ops, &w.expected))
            .chain(self.orders.iter().map(|o| (&o.id, &o.ops, &o.expected)));
        for (id, ops, expected) in top {
            all.push(Planned {
                id: id.clone(),
                parent: None,
                ops: ops.clone(),
                expected: expected.clone(),
            });
            for (op, step) in ops.iter().zip(step_ids(ops)) {
                if let Op::Child { ops } = op {
                    let child = child_id(id, step);
                    let expected = expected_output(ops, workflow_index(&child));
                    all.push(Planned {
                        id: child,
                        parent: Some(id.clone()),
                        ops: ops.clone(),
                        expected,
                    });
                }
            }
        }
        all
    }

    /// Setup: the accounts, in one committed transaction.
    pub async fn setup(&self, world: &World) {
        let accounts = self.accounts;
        world
            .mem
            .with_conn(async |conn| {
                for a in 0..accounts {
                    conn.insert(ACCOUNTS, a, json!(OPENING_BALANCE)).await?;
                }
                Ok(())
            })
            .await
            .expect("setup runs without faults");
    }
}

/// What the external service answers for a workflow's step: a pure
/// function, so the fault-free output is known in advance.
fn service_value(workflow: usize, step: i32) -> i64 {
    workflow as i64 * 100 + i64::from(step)
}

/// The workflow every executor registers.
pub struct Bank {
    /// The run.
    pub world: Arc<World>,
    /// The node incarnation it runs on.
    pub node: Arc<NodeLabel>,
    /// The application version of its code.
    pub code: crate::versions::Code,
}

/// An error of the simulated service.
#[derive(Debug, thiserror::Error)]
#[error("service unavailable")]
pub struct ServiceError;

impl Workflow<SimStorage> for Bank {
    const NAME: &'static str = "bank";
    type Input = Vec<Op>;
    type Output = Vec<i64>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<SimStorage>,
        ops: Vec<Op>,
    ) -> Result<Vec<i64>, WorkflowError> {
        let wf = ctx.workflow_id().to_owned();
        crate::traces::check_execution(
            &self.world,
            &self.node.label,
            &wf,
            ctx.owner_epoch(),
            ctx.trace_parent(),
        );
        // The checkpoints this execution started from (empty on a first
        // execution, which loads nothing).
        let history = self
            .world
            .state()
            .loads
            .remove(&(self.node.label.clone(), wf.clone(), ctx.owner_epoch()))
            .unwrap_or_default();
        let index = workflow_index(&wf);
        let mut output = Vec::new();
        let ids = step_ids(&ops);
        for (op, step) in ops.into_iter().zip(ids) {
            self.world.faults.count(op.context_op(&wf));
            let value = match op {
                Op::Transfer { from, to, amount } => {
                    let world = self.world.clone();
                    let wf = wf.clone();
                    ctx.transaction("transfer", async move |conn| {
                        transfer(&world, conn, &wf, step, from, to, amount).await
                    })
                    .await?
                }
                Op::Call if is_child(&wf) => {
                    // `step` has no retries: the service never fails a
                    // child's call (see `Bank::call`).
                    let in_history = history.contains(&step);
                    ctx.step("call", || self.call(&wf, index, step, in_history))
                        .await?
                }
                Op::Call => {
                    let policy = RetryPolicy {
                        backoff_initial: Duration::from_millis(5),
                        backoff_max: Duration::from_millis(50),
                        ..RetryPolicy::exponential(CALL_ATTEMPTS)
                    };
                    let in_history = history.contains(&step);
                    ctx.step_with("call", policy, || self.call(&wf, index, step, in_history))
                        .await?
                }
                Op::Sleep { ms } => {
                    ctx.sleep(Duration::from_millis(ms)).await?;
                    // The step after a sleep never runs before the recorded
                    // wake-up time, on the clock of the engine running it.
                    let now = self.world.now_ms() + self.node.skew_ms;
                    let wake: Option<i64> = self
                        .world
                        .mem
                        .steps()
                        .iter()
                        .find(|s| s.workflow_id == wf && s.step_id == step)
                        .and_then(|s| s.output.as_deref())
                        .and_then(|o| serde_json::from_str(o).ok());
                    // (The replay invariant's replayer, no executor, does
                    // not wait: a replay only takes the recorded steps.)
                    let replaying = self.node.executor_id.is_none();
                    match wake {
                        _ if replaying => {}
                        Some(wake) if now < wake => self.world.violation(format!(
                            "{wf} step {step}: woke at {now}, before the recorded wake-up time {wake} ({} ms early)",
                            wake - now
                        )),
                        Some(_) => {}
                        None => self.world.violation(format!(
                            "{wf} step {step}: sleep returned without a recorded wake-up time"
                        )),
                    }
                    self.world
                        .log(format!("{} {wf} step {step} woke", self.node.label));
                    ms as i64
                }
                Op::Recv { sent, timeout_ms } => {
                    let timeout = if sent {
                        RECV_SENT_TIMEOUT
                    } else {
                        Duration::from_millis(timeout_ms)
                    };
                    let got: Option<i64> = ctx.recv(&recv_topic(step), timeout).await?;
                    self.world.log(format!(
                        "{} {wf} step {step} received {got:?}",
                        self.node.label
                    ));
                    got.unwrap_or(-1)
                }
                Op::SetEvent { key } => {
                    let value = event_value(index, step);
                    ctx.set_event(&event_key(key), &value).await?;
                    value
                }
                Op::Child { ops } => {
                    let child = ctx.start_child::<Bank>(ops).await?;
                    let output: Vec<i64> = ctx.child_result(&child).await?;
                    output.iter().sum()
                }
            };
            output.push(value);
        }
        self.code.run_tail(&self.world, &self.node, ctx).await?;
        Ok(output)
    }
}

impl Bank {
    /// The external service: logs the call, may fail transiently, and may
    /// kill the executor right after the effect (before the checkpoint).
    async fn call(
        &self,
        wf: &str,
        index: usize,
        step: i32,
        in_history: bool,
    ) -> Result<i64, ServiceError> {
        let world = &self.world;
        world.latency().await;
        if in_history {
            world.violation(format!(
                "plain step re-executed: {wf} step {step} on {} although its checkpoint was in the history this execution loaded",
                self.node.label
            ));
        }
        let checkpoint_existed = world
            .mem
            .steps()
            .iter()
            .any(|s| s.workflow_id == wf && s.step_id == step);
        if checkpoint_existed {
            // Allowed: a zombie, or a replay racing the checkpoint's COMMIT.
            world
                .faults
                .observe("plain.call_after_checkpoint_by_other_execution");
        }
        let ok = {
            // Fewer failures than attempts, so the step succeeds in the end;
            // none for a child's call, a `step` without retries.
            let attempts = if is_child(wf) { 1 } else { CALL_ATTEMPTS };
            let budget_left = world
                .state()
                .failures_used
                .get(&(wf.to_owned(), step))
                .copied()
                .unwrap_or(0)
                < attempts - 1;
            !(budget_left
                && world
                    .fire(Site::ServiceError, &format!("{wf} step {step}"))
                    .is_some())
        };
        {
            let mut state = world.state();
            if !ok {
                *state
                    .failures_used
                    .entry((wf.to_owned(), step))
                    .or_insert(0) += 1;
            }
            state.calls.push(ServiceCall {
                workflow_id: wf.to_owned(),
                step_id: step,
                node: self.node.label.clone(),
                ok,
                checkpoint_existed,
            });
        }
        world.log(format!(
            "{} call {wf} step {step} {}",
            self.node.label,
            if ok { "ok" } else { "failed" }
        ));
        if !ok {
            return Err(ServiceError);
        }
        world
            .crash_point(
                &self.node.name,
                Site::CrashAfterPlainEffect,
                &format!("after call {wf} step {step}"),
            )
            .await;
        Ok(service_value(index, step))
    }
}

/// The body of a transfer step: debit, credit, ledger row. Locks in
/// from/to order, so opposite transfers can deadlock (the backend picks a
/// victim and the engine retries it).
async fn transfer(
    world: &World,
    conn: &mut MemConn,
    wf: &str,
    step: i32,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<i64, MemError> {
    let seq = {
        let mut state = world.state();
        state.ledger_seq += 1;
        state.ledger_seq
    };
    let result = async {
        conn.update(ACCOUNTS, from, |v| Some(json!(v.as_i64()? - amount)))
            .await?;
        // App latency between statements: lets transfers interleave.
        let us = madsim::rand::thread_rng().gen_range(0..1500);
        madsim::time::sleep(Duration::from_micros(us)).await;
        conn.update(ACCOUNTS, to, |v| Some(json!(v.as_i64()? + amount)))
            .await?;
        conn.insert(
            LEDGER,
            format!("{wf}/{step}/{seq}"),
            json!({ "wf": wf, "step": step, "from": from, "to": to, "amount": amount }),
        )
        .await?;
        Ok(amount)
    }
    .await;
    if let Err(MemError::Deadlock) = &result {
        world.faults.observe("storage.deadlock (natural)");
    }
    result
}

/// Check phase: every invariant over the final state. Returns violations.
pub fn check(world: &World) -> Vec<String> {
    let mut v = Vec::new();
    let w = &world.workload;
    let rows: BTreeMap<String, _> = world
        .mem
        .workflows()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    // One terminal status per workflow, with the fault-free output.
    for spec in &w.workflows {
        match rows.get(&spec.id) {
            None => v.push(format!("{} was never created", spec.id)),
            Some(r) if r.status != Status::Success => v.push(format!(
                "{} ended {:?} (error {:?}), expected SUCCESS",
                spec.id, r.status, r.error
            )),
            Some(r) => {
                let got = output_of(r);
                if got.as_ref() != Some(&spec.expected) {
                    v.push(format!(
                        "{} output {:?}, fault-free output {:?}",
                        spec.id, r.output, spec.expected
                    ));
                }
            }
        }
    }
    // Outbox: a committed order (its row is the truth, whatever the client
    // was told) has its workflow, which succeeded with the fault-free
    // output; a rolled-back order has none.
    let committed: BTreeSet<i64> = world
        .mem
        .rows(ORDERS)
        .into_iter()
        .filter_map(|(k, _)| match k {
            Key::Int(n) => Some(n),
            Key::Text(_) => None,
        })
        .collect();
    let mut checked: Vec<(String, Vec<Op>)> = w
        .workflows
        .iter()
        .map(|s| (s.id.clone(), s.ops.clone()))
        .collect();
    for o in &w.orders {
        let row = rows.get(&o.id);
        if !committed.contains(&o.n) {
            if let Some(r) = row {
                v.push(format!(
                    "order {} is not committed but its workflow {} exists ({})",
                    o.n, o.id, r.status
                ));
            }
            continue;
        }
        if o.rollback {
            v.push(format!("order {} was rolled back but its row exists", o.n));
        }
        if row.is_none() && crate::admission::deduplicated(world, o.n) {
            // Its enqueue answered with the key's holder (which
            // `admission::check` judges): there is nothing to run.
            continue;
        }
        checked.push((o.id.clone(), o.ops.clone()));
        match row {
            None => v.push(format!(
                "order {} committed but {} never created",
                o.n, o.id
            )),
            Some(r) if r.status != Status::Success => v.push(format!(
                "{} ended {:?} (error {:?}), expected SUCCESS",
                o.id, r.status, r.error
            )),
            Some(r) => {
                let got = output_of(r);
                if got.as_ref() != Some(&o.expected) || r.queue != ORDERS_QUEUE {
                    v.push(format!(
                        "{} output {:?} on queue {}, fault-free output {:?} on {ORDERS_QUEUE}",
                        o.id, r.output, r.queue, o.expected
                    ));
                }
            }
        }
    }
    // Children of the workflows that exist: started exactly once (no other
    // `-child-` workflow exists, checked below), succeeded with their
    // fault-free output, under their parent.
    let parents: BTreeSet<String> = checked.iter().map(|(id, _)| id.clone()).collect();
    for Planned {
        id,
        parent,
        ops,
        expected,
    } in w.all_workflows()
    {
        let Some(parent) = parent.filter(|p| parents.contains(p)) else {
            continue;
        };
        match rows.get(&id) {
            None => v.push(format!("child {id} of {parent} was never created")),
            Some(r) if r.parent_id.as_deref() != Some(parent.as_str()) => v.push(format!(
                "child {id} has parent {:?}, expected {parent}",
                r.parent_id
            )),
            Some(r) if r.status != Status::Success => v.push(format!(
                "child {id} ended {:?} (error {:?}), expected SUCCESS",
                r.status, r.error
            )),
            Some(r) => {
                let got = output_of(r);
                if got.as_ref() != Some(&expected) {
                    v.push(format!(
                        "child {id} output {:?}, fault-free output {expected:?}",
                        r.output
                    ));
                }
            }
        }
        checked.push((id, ops));
    }
    let steps = world.mem.steps();
    // Forks: each succeeds with its source's output, as do the children it
    // starts anew; its steps before its step are copies (`check_forks`).
    let mut copied: BTreeMap<String, i32> = BTreeMap::new();
    let forks = fork_workflows(world);
    v.extend(check_forks(forks.iter().map(|(f, _)| f), &steps));
    for (fork, planned) in forks {
        copied.insert(fork.id.clone().unwrap_or_default(), fork.from_step);
        for p in planned {
            match rows.get(&p.id) {
                Some(r) if r.status == Status::Success && r.parent_id == p.parent => {
                    let got = output_of(r);
                    if got.as_ref() != Some(&p.expected) {
                        v.push(format!(
                            "{} (fork of {}) output {:?}, fault-free output {:?}",
                            p.id, fork.source, r.output, p.expected
                        ));
                    }
                }
                r => v.push(format!(
                    "{} (fork of {} from step {}) ended {:?}, expected SUCCESS",
                    p.id,
                    fork.source,
                    fork.from_step,
                    r.map(|r| (r.status, &r.error, &r.parent_id))
                )),
            }
            checked.push((p.id, p.ops));
        }
    }
    checked.extend(crate::debounce::check(
        world,
        &rows,
        |ops, id| expected_output(ops, workflow_index(id)),
        &mut v,
    ));
    let expected_ids: BTreeSet<&String> = checked.iter().map(|(id, _)| id).collect();
    // (The schedule's tick workflows are judged by `schedules::check`.)
    for id in rows.keys().filter(|id| !crate::schedules::is_tick(id)) {
        if !expected_ids.contains(id) {
            v.push(format!("unexpected workflow {id}"));
        }
    }
    // Transactional steps: exactly one ledger row per checkpoint, none
    // without one.
    // (A fork's copies of its source's checkpoints ran nothing.)
    let ran = |s: &&tandem::storage::memory::StepRecordRow| {
        s.owner_epoch != tandem::storage::EPOCH_NEVER_RAN
    };
    let tx_checkpoints: BTreeSet<(String, i32)> = steps
        .iter()
        .filter(ran)
        .filter(|s| s.kind == StepKind::Transaction && s.output.is_some())
        .filter(|s| !crate::schedules::is_tick(&s.workflow_id))
        .map(|s| (s.workflow_id.clone(), s.step_id))
        .collect();
    let mut ledger: BTreeMap<(String, i32), u32> = BTreeMap::new();
    let mut deltas: BTreeMap<i64, i64> = BTreeMap::new();
    for (_, row) in world.mem.rows(LEDGER) {
        let key = (
            row["wf"].as_str().unwrap_or_default().to_owned(),
            row["step"].as_i64().unwrap_or_default() as i32,
        );
        *ledger.entry(key).or_insert(0) += 1;
        let amount = row["amount"].as_i64().unwrap_or_default();
        *deltas
            .entry(row["from"].as_i64().unwrap_or_default())
            .or_insert(0) -= amount;
        *deltas
            .entry(row["to"].as_i64().unwrap_or_default())
            .or_insert(0) += amount;
    }
    for (key, n) in &ledger {
        if *n != 1 {
            v.push(format!(
                "transactional step {} step {} applied {n} times",
                key.0, key.1
            ));
        }
        if !tx_checkpoints.contains(key) {
            v.push(format!(
                "ledger row for {} step {} without a checkpoint",
                key.0, key.1
            ));
        }
    }
    for key in &tx_checkpoints {
        if !ledger.contains_key(key) {
            v.push(format!(
                "transactional step {} step {} checkpointed but never applied",
                key.0, key.1
            ));
        }
    }
    // When each receive's first wait was recorded to time out.
    // (With the epoch of the execution that recorded it.)
    let mut waits: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for (_, r) in world.mem.workflow_history() {
        if let (Some(step), Some(until)) = (r.wait_step, r.wait_until_ms) {
            waits
                .entry((r.id.clone(), step))
                .or_insert((until, r.owner_epoch));
        }
    }
    // Every step of every workflow, counted against the spec: a transfer
    // applied exactly once, a call made (successfully) at least once.
    let calls_ok: BTreeSet<(String, i32)> = world
        .state()
        .calls
        .iter()
        .filter(|c| c.ok)
        .map(|c| (c.workflow_id.clone(), c.step_id))
        .collect();
    for (id, ops) in &checked {
        for (op, i) in ops.iter().zip(step_ids(ops)) {
            if copied.get(id).is_some_and(|from| i < *from) {
                continue;
            }
            let key = (id.clone(), i);
            match op {
                Op::Transfer { .. } => {
                    if !ledger.contains_key(&key) {
                        v.push(format!("transfer {id} step {i} never applied"));
                    }
                }
                Op::Call => {
                    if !calls_ok.contains(&key) {
                        v.push(format!("call {id} step {i} never made"));
                    }
                }
                Op::Sleep { .. } => {
                    if !steps.iter().any(|s| s.workflow_id == *id && s.step_id == i) {
                        v.push(format!("sleep {id} step {i} never recorded"));
                    }
                }
                Op::Recv { sent, timeout_ms } => {
                    let recorded = steps.iter().find(|s| {
                        s.workflow_id == *id && s.step_id == i && s.kind == StepKind::Recv
                    });
                    match recorded {
                        None => v.push(format!("recv {id} step {i} never recorded")),
                        // A timeout never comes early: the execution that
                        // recorded it waited its whole timeout, on its clock.
                        Some(s)
                            if !sent
                                && s.output.as_deref() == Some("null")
                                && s.completed_ms - s.started_ms < *timeout_ms as i64 =>
                        {
                            v.push(format!(
                                "recv {id} step {i} timed out after {} ms, its timeout is {timeout_ms} ms",
                                s.completed_ms - s.started_ms
                            ))
                        }
                        // And it timed out counting from the first wait at
                        // this step, whichever execution waited then: the
                        // wait it recorded is the recorded time's.
                        Some(s)
                            if !sent
                                && s.output.as_deref() == Some("null")
                                && waits.get(&key).map(|w| w.0)
                                    != Some(s.started_ms + *timeout_ms as i64) =>
                        {
                            v.push(format!(
                                "recv {id} step {i} timed out counting from {} ms, its first wait was recorded to end at {:?}",
                                s.started_ms,
                                waits.get(&key).map(|w| w.0)
                            ))
                        }
                        Some(s)
                            if !sent
                                && s.output.as_deref() == Some("null")
                                && waits.get(&key).is_some_and(|w| w.1 != s.owner_epoch) =>
                        {
                            world.faults.observe("recv.timeout_kept_across_executions");
                        }
                        Some(_) => {}
                    }
                }
                Op::SetEvent { .. } | Op::Child { .. } => {
                    let kind = match op {
                        Op::SetEvent { .. } => StepKind::Event,
                        _ => StepKind::Child,
                    };
                    if !steps
                        .iter()
                        .any(|s| s.workflow_id == *id && s.step_id == i && s.kind == kind)
                    {
                        v.push(format!("{kind:?} {id} step {i} never recorded"));
                    }
                }
            }
        }
    }
    // No checkpoint records a failure: every step of the workload succeeds
    // in the end (a call fails fewer times than its attempts), and neither
    // a crash, a fence, a cancel nor a shutdown is a step's failure.
    for s in &steps {
        if let Some(error) = &s.error
            && expected_ids.contains(&s.workflow_id)
        {
            v.push(format!(
                "{} step {} ({}) recorded the failure {error:?}",
                s.workflow_id, s.step_id, s.name
            ));
        }
    }
    // Events: each key holds the value of the last step that set it, and no
    // other key exists.
    let events: BTreeMap<(String, String), String> = world
        .mem
        .events()
        .into_iter()
        .map(|(wf, key, e)| ((wf, key), e.value))
        .collect();
    let mut expected_events: BTreeMap<(String, String), String> = BTreeMap::new();
    for (id, ops) in &checked {
        let index = workflow_index(id);
        for (op, i) in ops.iter().zip(step_ids(ops)) {
            if copied.get(id).is_some_and(|from| i < *from) {
                continue;
            }
            if let Op::SetEvent { key } = op {
                expected_events.insert(
                    (id.clone(), event_key(*key)),
                    event_value(index, i).to_string(),
                );
            }
        }
    }
    for (key, value) in &expected_events {
        match events.get(key) {
            Some(got) if got == value => {}
            got => v.push(format!(
                "event {} of {} holds {got:?}, its last set_event published {value}",
                key.1, key.0
            )),
        }
    }
    for key in events.keys() {
        if !expected_events.contains_key(key) {
            v.push(format!(
                "event {} of {} was never set by the workload",
                key.1, key.0
            ));
        }
    }
    // Messages: each committed one received exactly once. Every receive
    // that waits for one got it (the outputs above), so any message still
    // waiting was sent twice, or sent to a receive that took another.
    for m in world.mem.messages() {
        v.push(format!(
            "message {} on {} to {} was never received",
            m.payload, m.topic, m.workflow_id
        ));
    }

    // Money: conserved, and each balance explained by the ledger.
    let balances: BTreeMap<i64, i64> = world
        .mem
        .rows(ACCOUNTS)
        .into_iter()
        .filter_map(|(k, val)| match k {
            Key::Int(a) => Some((a, val.as_i64().unwrap_or_default())),
            Key::Text(_) => None,
        })
        .collect();
    let total: i64 = balances.values().sum();
    if total != OPENING_BALANCE * w.accounts {
        v.push(format!(
            "money not conserved: total {total}, expected {}",
            OPENING_BALANCE * w.accounts
        ));
    }
    for (a, b) in &balances {
        let expected = OPENING_BALANCE + deltas.get(a).copied().unwrap_or(0);
        if *b != expected {
            v.push(format!("account {a} holds {b}, the ledger says {expected}"));
        }
    }
    // Plain steps: at least once (a successful call behind every checkpoint).
    let state = world.state();
    for s in steps
        .iter()
        .filter(ran)
        .filter(|s| s.kind == StepKind::Plain && s.output.is_some())
        // (v2's receipt calls no service.)
        .filter(|s| s.name != crate::versions::RECEIPT)
    {
        let called = state
            .calls
            .iter()
            .any(|c| c.ok && c.workflow_id == s.workflow_id && c.step_id == s.step_id);
        if !called {
            v.push(format!(
                "plain step {} step {} checkpointed without a successful call",
                s.workflow_id, s.step_id
            ));
        }
    }
    v
}

/// A finished workflow's recorded output, as the workload's outputs are.
fn output_of(r: &tandem::storage::memory::WorkflowRecord) -> Option<Vec<i64>> {
    r.output
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
}

/// A cheap check run during the run: a finished workflow's outcome never
/// changes and money is conserved at every committed state. (`CANCELLED`
/// may end in a resume; the history check judges those transitions.)
pub fn monitor(world: &World) {
    let mut changed = Vec::new();
    for r in world.mem.workflows() {
        if !matches!(r.status, Status::Success | Status::Error) {
            continue;
        }
        let outcome = (r.status.to_string(), r.output.clone().or(r.error.clone()));
        let state = world.state();
        match state.terminal.get(&r.id) {
            None => {
                drop(state);
                world.log(format!(
                    "{} {} {:?}",
                    r.id,
                    outcome.0,
                    outcome.1.as_deref().unwrap_or("")
                ));
                world.state().terminal.insert(r.id.clone(), outcome);
            }
            Some(first) if *first != outcome => changed.push(format!(
                "{} changed terminal outcome {first:?} -> {outcome:?}",
                r.id
            )),
            Some(_) => {}
        }
    }
    let total: i64 = world
        .mem
        .rows(ACCOUNTS)
        .iter()
        .map(|(_, v)| v.as_i64().unwrap_or_default())
        .sum();
    if total != OPENING_BALANCE * world.workload.accounts {
        changed.push(format!("money not conserved mid-run: total {total}"));
    }
    for c in changed {
        world.violation(c);
    }
}

/// The application client of the outbox workload: for each order, one
/// transaction inserts the order row and enqueues its workflow, then
/// commits or (as planned) rolls back. Storage faults apply; after an error
/// the client sometimes tries again (the insert ignores an existing row and
/// the enqueue is idempotent on the workflow ID), and otherwise gives up:
/// what counts is the committed order row, not what the client was told.
pub async fn app_client(world: Arc<World>) {
    use tandem::storage::{Storage as _, Transaction as _, WorkflowEnqueue};
    let orders = world.workload.orders.clone();
    for o in &orders {
        madsim::time::sleep(Duration::from_millis(
            madsim::rand::thread_rng().gen_range(5..60),
        ))
        .await;
        for attempt in 0.. {
            world.latency().await;
            let result: Result<&str, String> = async {
                let mut tx = world.mem.begin().await.map_err(|e| e.to_string())?;
                tx.conn()
                    .insert_or_ignore(ORDERS, o.n, json!({ "order": o.n }))
                    .await
                    .map_err(|e| e.to_string())?;
                world.latency().await;
                let input = serde_json::to_string(&o.ops).expect("ops serialize");
                world.faults.count("workflow_enqueue");
                let from_csn = world.mem.commit_seq();
                let id = tx
                    .workflow_enqueue(WorkflowEnqueue {
                        name: "bank".to_owned(),
                        input,
                        queue: ORDERS_QUEUE.to_owned(),
                        workflow_id: Some(o.id.clone()),
                        priority: o.priority,
                        dedup_key: o.dedup_key.clone(),
                        delay_ms: o.delay_ms.map(|d| d as i64),
                        dedup_error: false,
                        concurrency_key: o.concurrency_key.clone(),
                        debounce_key: None,
                        debounce_max_wait_ms: None,
                        trace_parent: Some(crate::traces::trace_parent_of(&o.ops)),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                if id != o.id {
                    // Deduplicated: the answer names the unfinished holder
                    // of the key (judged by `admission::check`).
                    world.faults.observe("enqueue.deduplicated");
                    world.log(format!("app order {} deduplicated into {id}", o.n));
                    world
                        .state()
                        .dedup_answers
                        .push(crate::admission::DedupAnswer {
                            order: o.n,
                            holder: id,
                            from_csn,
                            to_csn: world.mem.commit_seq(),
                        });
                }
                world.latency().await;
                if o.rollback {
                    tx.rollback().await.map_err(|e| e.to_string())?;
                    Ok("rolled back")
                } else {
                    tx.commit().await.map_err(|e| e.to_string())?;
                    Ok("committed")
                }
            }
            .await;
            match result {
                Ok(what) => {
                    world.faults.observe(if o.rollback {
                        "outbox.rolled_back"
                    } else {
                        "outbox.committed_acked"
                    });
                    world.log(format!("app order {} ({}): {what}", o.n, o.id));
                    break;
                }
                Err(e) => {
                    world.log(format!("app order {} attempt {attempt}: {e}", o.n));
                    if e.contains("Unavailable") {
                        world.faults.observe("outbox.outcome_unknown");
                    }
                    // Before any executor registered the name and queue the
                    // enqueue is rejected: always try again then.
                    let invalid = e.contains("unknown");
                    if attempt >= 20 || (!invalid && madsim::rand::thread_rng().gen_bool(0.4)) {
                        world.log(format!("app order {} given up", o.n));
                        break;
                    }
                    madsim::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    world.state().app_done = true;
}

/// The message client: for every receive that waits for a message, sends it
/// from a transaction of its own that commits, sometimes after a decoy sent
/// from one that rolls back. Storage faults apply. A send that fails because
/// its workflow does not exist yet is tried again later; after an unknown
/// outcome (a lost acknowledgement) the client looks at what committed
/// before sending again, so that every message is sent exactly once and a
/// receive never has two to choose from.
pub async fn message_client(world: Arc<World>) {
    use tandem::storage::{Storage as _, Transaction as _};
    let mut sends: Vec<(String, i32, i64)> = Vec::new();
    for w in &world.workload.workflows {
        let index = workflow_index(&w.id);
        for (op, step) in w.ops.iter().zip(step_ids(&w.ops)) {
            if let Op::Recv { sent: true, .. } = op {
                sends.push((w.id.clone(), step, message_value(index, step)));
            }
        }
    }
    for (wf, step, value) in sends {
        let topic = recv_topic(step);
        madsim::time::sleep(Duration::from_millis(
            madsim::rand::thread_rng().gen_range(1..80),
        ))
        .await;
        let payload = value.to_string();
        if madsim::rand::thread_rng().gen_bool(0.3) {
            // A decoy the receiver must never see: its transaction rolls
            // back (or dies), whatever happens to it.
            world.latency().await;
            if let Ok(mut tx) = world.mem.begin().await {
                let decoy = DECOY_VALUE.to_string();
                world.faults.count("message_send");
                let sent = tx.message_send(&wf, &topic, &decoy, world.now_ms()).await;
                world.latency().await;
                let _ = tx.rollback().await;
                world.log(format!("app decoy to {wf} {topic}: rolled back ({sent:?})"));
            }
        }
        for attempt in 0u32.. {
            world.latency().await;
            let result: Result<(), tandem::StorageError> = async {
                let mut tx = world.mem.begin().await?;
                world.faults.count("message_send");
                tx.message_send(&wf, &topic, &payload, world.now_ms())
                    .await?;
                world.latency().await;
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => {
                    world.faults.observe("message.sent_acked");
                    world.log(format!("app message {payload} to {wf} {topic}: committed"));
                    break;
                }
                Err(e) => {
                    world.log(format!(
                        "app message to {wf} {topic} attempt {attempt}: {e}"
                    ));
                    if e.kind() == tandem::ErrorKind::Unavailable
                        && message_committed(&world, &wf, step, &topic, &payload)
                    {
                        world
                            .faults
                            .observe("message.outcome_unknown_but_committed");
                        break;
                    }
                    madsim::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    world.state().messages_done = true;
}

/// Whether the message `payload` to `wf`'s receive at `step` committed: it
/// waits, or the receive consumed it (a receive deletes the message and
/// records its step in one transaction, so one of the two is visible).
fn message_committed(world: &World, wf: &str, step: i32, topic: &str, payload: &str) -> bool {
    let waiting = world
        .mem
        .messages()
        .iter()
        .any(|m| m.workflow_id == wf && m.topic == topic && m.payload == payload);
    waiting
        || world.mem.steps().iter().any(|s| {
            s.workflow_id == wf && s.step_id == step && s.output.as_deref() == Some(payload)
        })
}

/// A fork the admin node made: `id` runs `source`'s input, its steps
/// before `from_step` copied from the source.
#[derive(Debug, Clone)]
pub struct Fork {
    /// The finished workflow forked.
    pub source: String,
    /// The fork's ID: `None` until the admin node learns it, or until
    /// [`resolve_forks`] finds it in the database (the admin node may die
    /// between the fork's COMMIT and its answer).
    pub id: Option<String>,
    /// The first step that runs anew.
    pub from_step: i32,
}

/// Gives each fork whose ID the admin node never learned the committed
/// fork of its source, from the same step, that no other fork claims (none
/// if its transaction rolled back). A fork's step is known from the rows:
/// the fork copies its source's (finished, gapless) checkpoints before it
/// in the transaction that creates it. Returns the forks that exist.
pub fn resolve_forks(world: &World) -> Vec<Fork> {
    let rows = world.mem.workflows();
    let steps = world.mem.steps();
    let copies = |id: &str| {
        steps
            .iter()
            .filter(|s| s.workflow_id == id && s.owner_epoch == tandem::storage::EPOCH_NEVER_RAN)
            .count() as i32
    };
    // What a fork from `from_step` copies: the source's recorded steps
    // below it (the source had finished, so they are final). Not
    // `from_step` itself: a step ID the plan numbers can hold no record
    // (a patch that took the old path records no marker).
    let expected_copies = |source: &str, from_step: i32| {
        steps
            .iter()
            .filter(|s| s.workflow_id == source && s.step_id < from_step)
            .count() as i32
    };
    let mut state = world.state();
    for i in 0..state.forks.len() {
        if state.forks[i].id.is_some() {
            continue;
        }
        let (source, from_step) = (&state.forks[i].source, state.forks[i].from_step);
        let prefix = format!("{source}-fork-");
        let found = rows
            .iter()
            .map(|r| &r.id)
            .find(|id| {
                id.starts_with(&prefix)
                    && !id.contains("-child-")
                    && copies(id) == expected_copies(source, from_step)
                    && !state.forks.iter().any(|f| f.id.as_ref() == Some(*id))
            })
            .cloned();
        state.forks[i].id = found;
    }
    state
        .forks
        .iter()
        .filter(|f| f.id.is_some())
        .cloned()
        .collect()
}

/// The forks made, as workflows the check expects: each with its source's
/// steps and fault-free output, plus the children it starts anew (those at
/// or after its `from_step`; a copied start points at the source's child).
pub fn fork_workflows(world: &World) -> Vec<(Fork, Vec<Planned>)> {
    let planned = world.workload.all_workflows();
    resolve_forks(world)
        .into_iter()
        .filter_map(|f| {
            let source = planned.iter().find(|p| p.id == f.source)?;
            let fork_id = f.id.clone()?;
            let mut out = vec![Planned {
                id: fork_id.clone(),
                parent: None,
                ops: source.ops.clone(),
                expected: source.expected.clone(),
            }];
            for (op, step) in source.ops.iter().zip(step_ids(&source.ops)) {
                if let Op::Child { ops } = op
                    && step >= f.from_step
                {
                    let child = child_id(&fork_id, step);
                    let expected = expected_output(ops, workflow_index(&child));
                    out.push(Planned {
                        id: child,
                        parent: Some(fork_id.clone()),
                        ops: ops.clone(),
                        expected,
                    });
                }
            }
            Some((f, out))
        })
        .collect()
}

/// The fork invariant: a fork copies exactly its source's checkpoints
/// before its step (same name, kind and outcome, under the epoch that
/// replays for every execution) and runs every later step itself.
fn check_forks<'a>(
    forks: impl Iterator<Item = &'a Fork>,
    steps: &[tandem::storage::memory::StepRecordRow],
) -> Vec<String> {
    let mut v = Vec::new();
    for f in forks {
        let Some(fork_id) = &f.id else { continue };
        let of = |id: &str| -> BTreeMap<i32, &tandem::storage::memory::StepRecordRow> {
            steps
                .iter()
                .filter(|s| s.workflow_id == id)
                .map(|s| (s.step_id, s))
                .collect()
        };
        let (source, fork) = (of(&f.source), of(fork_id));
        for (step, s) in &source {
            let copy = fork.get(step);
            if *step < f.from_step {
                let same = copy.is_some_and(|c| {
                    c.name == s.name
                        && c.kind == s.kind
                        && c.output == s.output
                        && c.error == s.error
                        && c.owner_epoch == tandem::storage::EPOCH_NEVER_RAN
                });
                if !same {
                    v.push(format!(
                        "fork {fork_id} of {} from step {}: step {step} is not a copy ({:?})",
                        f.source,
                        f.from_step,
                        copy.map(|c| (&c.name, &c.output, c.owner_epoch))
                    ));
                }
            } else if copy.is_some_and(|c| c.owner_epoch == tandem::storage::EPOCH_NEVER_RAN) {
                v.push(format!(
                    "fork {fork_id} of {} from step {}: step {step} was copied, not run anew",
                    f.source, f.from_step
                ));
            }
        }
    }
    v
}

/// What the admin node read through `Admin`, checked against the final
/// state: nothing an operator was shown is ever rolled back or changed.
#[derive(Debug, Clone)]
pub enum AdminRead {
    /// A recorded step (workflow, step, output) from `get_workflow`.
    Step(String, i32, Option<String>),
    /// A workflow `list_workflows` listed as `SUCCESS`.
    Succeeded(String),
}

/// Every admin read still holds in the final state.
pub fn check_admin_reads(world: &World) -> Vec<String> {
    // Each row's last committed version: for a workflow retention deleted
    // (since the schedules generation), the version it deleted.
    let steps: BTreeMap<(String, i32), Option<String>> = world
        .mem
        .step_history()
        .into_iter()
        .map(|(_, s)| ((s.workflow_id, s.step_id), s.output))
        .collect();
    let last: BTreeMap<String, Status> = world
        .mem
        .workflow_history()
        .into_iter()
        .map(|(_, r)| (r.id, r.status))
        .collect();
    let succeeded: BTreeSet<String> = last
        .into_iter()
        .filter(|(_, status)| *status == Status::Success)
        .map(|(id, _)| id)
        .collect();
    let mut v = Vec::new();
    for read in &world.state().admin_reads {
        match read {
            AdminRead::Step(id, step, output) => {
                if steps.get(&(id.clone(), *step)) != Some(output) {
                    v.push(format!(
                        "admin read {id} step {step} as {output:?}; it ends as {:?}",
                        steps.get(&(id.clone(), *step))
                    ));
                }
            }
            AdminRead::Succeeded(id) if !succeeded.contains(id) => {
                v.push(format!("admin listed {id} as SUCCESS; it did not end so"));
            }
            AdminRead::Succeeded(_) => {}
        }
    }
    v
}

/// An event value the admin node read: checked against what the workflow
/// published, in order.
#[derive(Debug, Clone)]
pub struct EventRead {
    /// The workflow.
    pub workflow_id: String,
    /// The key.
    pub key: String,
    /// The value read.
    pub value: i64,
}

/// How many workflows the admin node cancels per run at most: each cancel
/// stalls its workflow until a resume, and the chaos phase is short.
const ADMIN_CANCELS_MAX: u32 = 3;

/// Deploy-check invariant: against the code that wrote them, no unfinished
/// run is incompatible (a different step, a hole in the history, a name
/// not registered), whatever state the faults left it in.
async fn deploy_check(world: &World, checker: &tandem::replay::Replayer<SimStorage>) {
    world.faults.count("admin.check");
    match checker.check().await {
        Ok(check) => {
            world.faults.observe("admin.checked");
            for r in check.incompatible() {
                world.violation(format!(
                    "deploy check: {} ({}) is incompatible with the code that runs it: {}",
                    r.workflow_id,
                    r.status,
                    r.divergence
                        .as_ref()
                        .map_or(String::new(), ToString::to_string)
                ));
            }
        }
        Err(e) => world.log(format!("admin check failed: {e}")),
    }
}

/// The admin node: through [`tandem::Admin`], as an operator would, it
/// cancels running workflows (with their unfinished children) and resumes
/// every cancelled one at random moments, and reads the workflows' events.
/// Storage faults apply. Once faults stop it resumes whatever is still
/// cancelled, so that everything finishes.
pub async fn admin_client(world: Arc<World>) {
    use tandem::Admin;
    let node = Arc::new(NodeLabel {
        name: "admin".to_owned(),
        label: "admin#1".to_owned(),
        executor_id: None,
        skew_ms: 0,
    });
    let storage = SimStorage::new(world.clone(), node);
    let env = crate::env::MadsimEnv::new(world.clone(), world.seed ^ 0xad);
    let admin = Admin::with_env(storage, Arc::new(env));
    // A deploy check (`Replayer::check`) of the same code, mid-run: every
    // unfinished run's history must be one this code takes. (No executor
    // ID: the workflow body knows it is replaying.)
    let checker_node = Arc::new(NodeLabel {
        name: "admin".to_owned(),
        label: "checker#1".to_owned(),
        executor_id: None,
        skew_ms: 0,
    });
    // Since the versions generation, of both codes: neither may find an
    // accepted run it would break (v1 leaves v2's runs alone).
    let checker = |code: crate::versions::Code, seed: u64| {
        code.declare(
            tandem::Engine::builder(SimStorage::new(world.clone(), checker_node.clone()))
                .env(crate::env::MadsimEnv::new(world.clone(), world.seed ^ seed))
                .register(Bank {
                    world: world.clone(),
                    node: checker_node.clone(),
                    code,
                })
                .register(crate::schedules::Report {
                    world: world.clone(),
                    node: checker_node.clone(),
                })
                .register(crate::schedules::ReportPart {
                    world: world.clone(),
                }),
        )
        .replayer()
    };
    let newest = crate::versions::Code::newest(world.workload.generation);
    let mut checkers = vec![checker(newest, 0xc4)];
    if newest == crate::versions::Code::V2 {
        checkers.push(checker(crate::versions::Code::V1, 0xc5));
    }
    let (mut cancels, mut forks) = (0, 0);
    let all = world.workload.all_workflows();
    let with_events: Vec<(String, String)> = world
        .workload
        .all_workflows()
        .into_iter()
        .flat_map(|Planned { id, ops, .. }| {
            ops.into_iter().filter_map(move |op| match op {
                Op::SetEvent { key } => Some((id.clone(), event_key(key))),
                _ => None,
            })
        })
        .collect();
    loop {
        madsim::time::sleep(Duration::from_millis(
            madsim::rand::thread_rng().gen_range(10..50),
        ))
        .await;
        let stopped = world.faults.stopped();
        if !stopped && cancels < ADMIN_CANCELS_MAX && world.fire(Site::AdminCancel, "").is_some() {
            // A top-level workflow that has not finished: the cancel's
            // cascade reaches its children.
            let open: Vec<String> = world
                .mem
                .workflows()
                .into_iter()
                .filter(|r| !r.status.is_terminal() && r.parent_id.is_none())
                .filter(|r| {
                    r.id.starts_with("wf-")
                        || (world.workload.generation >= Generation::Admission
                            && r.id.starts_with("order-"))
                })
                .map(|r| r.id)
                .collect();
            // Half of the cancels pick an order holding a dedup key: its
            // resume may then meet another order that took the key.
            let keyed: Vec<String> = open
                .iter()
                .filter(|id| {
                    world
                        .workload
                        .orders
                        .iter()
                        .any(|o| o.id == **id && o.dedup_key.is_some())
                })
                .cloned()
                .collect();
            let open = if !keyed.is_empty() && madsim::rand::thread_rng().gen_bool(0.5) {
                keyed
            } else {
                open
            };
            if !open.is_empty() {
                let id = &open[madsim::rand::thread_rng().gen_range(0..open.len())];
                cancels += 1;
                world.faults.count("admin.cancel");
                let result = admin.cancel(id).await;
                world.log(format!("admin cancel {id}: {result:?}"));
                match &result {
                    Ok(ids) if ids.len() > 1 => world.faults.observe("admin.cancel_cascaded"),
                    Ok(ids) if ids.len() == 1 => world.faults.observe("admin.cancelled"),
                    _ => {}
                }
            }
        }
        if !stopped && forks < ADMIN_FORKS_MAX && world.fire(Site::AdminFork, "").is_some() {
            forks += admin_fork(&world, &admin, &all).await;
        }
        if stopped || world.fire(Site::AdminResume, "").is_some() {
            let cancelled: Vec<String> = world
                .mem
                .workflows()
                .into_iter()
                .filter(|r| r.status == Status::Cancelled)
                .map(|r| r.id)
                .collect();
            for id in &cancelled {
                world.faults.count("admin.resume");
                let result = admin.resume(id).await;
                world.log(format!("admin resume {id}: {result:?}"));
                match &result {
                    Ok(()) => world.faults.observe("admin.resumed"),
                    Err(e) if e.to_string().contains("holds the dedup_key") => {
                        world.faults.observe("admin.resume_refused_dedup_key_held")
                    }
                    Err(_) => {}
                }
            }
            if stopped && cancelled.is_empty() {
                world.state().admin_done = true;
                // A deadline may still cancel a workflow: since the
                // admission generation the node resumes until the end.
                if world.workload.generation < Generation::Admission {
                    return;
                }
            }
        }
        if madsim::rand::thread_rng().gen_bool(0.05) {
            // (One draw more only when there is a choice, so that older
            // generations keep their random streams.)
            let checker = match checkers.len() {
                1 => &checkers[0],
                n => &checkers[madsim::rand::thread_rng().gen_range(0..n)],
            };
            deploy_check(&world, checker).await;
        }
        if madsim::rand::thread_rng().gen_bool(0.2) {
            // What an operator reads: a workflow's steps, and the list of
            // finished ones. Both must survive whatever happens later.
            let planned = &all[madsim::rand::thread_rng().gen_range(0..all.len())];
            world.faults.count("admin.get_workflow");
            if let Ok(Some(detail)) = admin.get_workflow(&planned.id).await {
                world.state().admin_reads.extend(
                    detail
                        .steps
                        .into_iter()
                        .map(|s| AdminRead::Step(planned.id.clone(), s.row.step_id, s.row.output)),
                );
            }
            world.faults.count("admin.list_workflows");
            let filter = tandem::storage::WorkflowFilter {
                status: Some(Status::Success),
                limit: 100,
                ..Default::default()
            };
            if let Ok(list) = admin.list_workflows(filter).await {
                world
                    .state()
                    .admin_reads
                    .extend(list.into_iter().map(|w| AdminRead::Succeeded(w.row.id)));
            }
        }
        if !with_events.is_empty() && madsim::rand::thread_rng().gen_bool(0.5) {
            let (id, key) =
                &with_events[madsim::rand::thread_rng().gen_range(0..with_events.len())];
            world.faults.count("admin.get_event");
            if let Ok(Some(value)) = admin.get_event::<i64>(id, key, Duration::ZERO).await {
                world.faults.observe("event.read");
                world.state().event_reads.push(EventRead {
                    workflow_id: id.clone(),
                    key: key.clone(),
                    value,
                });
            }
        }
    }
}

/// How many forks the admin node makes per run at most.
const ADMIN_FORKS_MAX: u32 = 2;

/// Forks a finished top-level workflow from a random step after its last
/// receive of a sent message (a fork's receive would wait for a message
/// nobody sends again). Returns how many forks it made (0 or 1).
async fn admin_fork(world: &World, admin: &tandem::Admin<SimStorage>, all: &[Planned]) -> u32 {
    let done: Vec<&Planned> = {
        let rows = world.mem.workflows();
        all.iter()
            .filter(|p| p.parent.is_none() && p.id.starts_with("wf-"))
            .filter(|p| {
                rows.iter()
                    .any(|r| r.id == p.id && r.status == Status::Success)
            })
            .collect()
    };
    if done.is_empty() {
        return 0;
    }
    let source = done[madsim::rand::thread_rng().gen_range(0..done.len())];
    let ids = step_ids(&source.ops);
    let end = match source.ops.last() {
        Some(Op::Child { .. }) => ids.last().map_or(0, |i| i + 2),
        Some(_) => ids.last().map_or(0, |i| i + 1),
        None => 0,
    };
    let first = source
        .ops
        .iter()
        .zip(&ids)
        .filter(|(op, _)| matches!(op, Op::Recv { sent: true, .. }))
        .map(|(_, i)| i + 1)
        .max()
        .unwrap_or(0);
    let from_step = madsim::rand::thread_rng().gen_range(first..=end);
    world.faults.count("admin.fork");
    // Recorded before the call: the node may die before the answer.
    let at = {
        let mut state = world.state();
        state.forks.push(Fork {
            source: source.id.clone(),
            id: None,
            from_step,
        });
        state.forks.len() - 1
    };
    let result = admin.fork(&source.id, from_step).await;
    world.log(format!(
        "admin fork {} from step {from_step}: {result:?}",
        source.id
    ));
    // After an error the outcome may be unknown: `resolve_forks` looks.
    if let Ok(id) = result {
        let mut state = world.state();
        // A check in between may have guessed this fork as the outcome of
        // an earlier, failed call: that call's outcome is unknown again.
        for (i, fork) in state.forks.iter_mut().enumerate() {
            if i != at && fork.id.as_deref() == Some(id.as_str()) {
                fork.id = None;
            }
        }
        state.forks[at].id = Some(id);
    }
    1
}

/// The admin node's event reads: every value read was published by that
/// workflow under that key, and one reader never sees a key go back to an
/// earlier step's value.
pub fn check_event_reads(world: &World) -> Vec<String> {
    let mut v = Vec::new();
    let mut last: BTreeMap<(String, String), i32> = BTreeMap::new();
    let all = world.workload.all_workflows();
    for r in world.state().event_reads.iter() {
        let published = all.iter().any(|Planned { id, ops, .. }| {
            *id == r.workflow_id
                && ops.iter().zip(step_ids(ops)).any(|(op, step)| {
                    matches!(op, Op::SetEvent { key } if event_key(*key) == r.key)
                        && event_value(workflow_index(id), step) == r.value
                })
        });
        if !published {
            v.push(format!(
                "event {} of {} read as {}, which it never published",
                r.key, r.workflow_id, r.value
            ));
            continue;
        }
        let step = event_step(r.value);
        let key = (r.workflow_id.clone(), r.key.clone());
        if let Some(before) = last.get(&key)
            && *before > step
        {
            v.push(format!(
                "event {} of {} went back from step {before}'s value to step {step}'s",
                r.key, r.workflow_id
            ));
        }
        last.insert(key, step);
    }
    v
}
