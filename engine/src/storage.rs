//! The storage seam: everything the engine needs from a database.
//!
//! The engine is generic over a [`Storage`] (static dispatch). Engine
//! operations are methods on an owned transaction ([`Transaction`]), so the
//! engine composes "application work + checkpoint" in one transaction, and the
//! application sees that same transaction through [`Transaction::conn`]. The
//! autocommit methods on [`Storage`] run one operation in its own commit; a
//! backend overrides them when it can do that in fewer round trips.
//!
//! Time comes from the engine's [`Env`] (`now_ms` parameters), with one
//! deliberate exception: what executors must agree on (lease expiry,
//! queue admission and the start/completion stamps it reads) uses the
//! database's clock, so that drifting executor clocks cannot disagree. A
//! model backend must therefore model a database clock.
//!
//! [`Env`]: crate::Env

mod contract;
mod forward;
pub mod intercept;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

pub use contract::{
    CONCURRENCY_KEY_MAX_CHARS, DEADLINE_EXCEEDED, DEFAULT_QUEUE, EPOCH_FIRST, EPOCH_NEVER_RAN,
    PAYLOAD_MAX_BYTES_DEFAULT, WORKFLOW_ID_MAX_CHARS, classify_sqlstate, fenced, jsonb_refuses,
};
pub(crate) use contract::{debug_check_completion, debug_check_many, debug_check_step_record};

use std::fmt;
use std::future::Future;

/// A workflow's lifecycle status. The strings are a persisted contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Waiting to be claimed by an executor.
    Enqueued,
    /// Owned by an executor (which may have crashed; recovery takes it back).
    Running,
    /// Finished with an output.
    Success,
    /// Finished with an error.
    Error,
    /// Stopped by `cancel` (or its deadline); `resume` enqueues it again.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Enqueued,
        Status::Running,
        Status::Success,
        Status::Error,
        Status::Cancelled,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enqueued => "ENQUEUED",
            Status::Running => "RUNNING",
            Status::Success => "SUCCESS",
            Status::Error => "ERROR",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "ENQUEUED" => Status::Enqueued,
            "RUNNING" => Status::Running,
            "SUCCESS" => Status::Success,
            "ERROR" => Status::Error,
            "CANCELLED" => Status::Cancelled,
            _ => return None,
        })
    }

    /// Whether the workflow has stopped (cancelled ones may be resumed).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Success | Status::Error | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step runs. The strings are a persisted contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A plain step: runs outside any transaction, checkpointed after.
    Plain,
    /// A transactional step: runs in the checkpoint's transaction.
    Transaction,
    /// A durable sleep; the output is the wake-up time (ms since the epoch).
    Sleep,
    /// A message receive; the output is the message or `null` (timeout).
    Recv,
    /// An event publication.
    Event,
    /// A child workflow start; the output is the child's ID.
    Child,
    /// A child workflow's result, awaited.
    ChildResult,
    /// A patch marker: the run reached `ctx.patched(name)` under code that
    /// has the patch, and took the patched path (output `true`).
    Patch,
}

impl StepKind {
    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Plain => "step",
            StepKind::Transaction => "transaction",
            StepKind::Sleep => "sleep",
            StepKind::Recv => "recv",
            StepKind::Event => "event",
            StepKind::Child => "child",
            StepKind::ChildResult => "child_result",
            StepKind::Patch => "patch",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<StepKind> {
        match s {
            "step" => Some(StepKind::Plain),
            "transaction" => Some(StepKind::Transaction),
            "sleep" => Some(StepKind::Sleep),
            "recv" => Some(StepKind::Recv),
            "event" => Some(StepKind::Event),
            "child" => Some(StepKind::Child),
            "child_result" => Some(StepKind::ChildResult),
            "patch" => Some(StepKind::Patch),
            _ => None,
        }
    }
}

/// One workflow row.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRow {
    /// The workflow ID.
    pub id: String,
    /// The registered workflow name.
    pub name: String,
    /// Lifecycle status.
    pub status: Status,
    /// The input, as JSON text.
    pub input: String,
    /// The output (JSON text) once the status is `SUCCESS`.
    pub output: Option<String>,
    /// The error message once the status is `ERROR`.
    pub error: Option<String>,
    /// The executor that owns (or last owned) the workflow.
    pub executor_id: Option<String>,
    /// The fencing token: bumped each time a new execution takes ownership.
    pub owner_epoch: i64,
    /// The queue the workflow belongs to (`default` for local starts).
    pub queue: String,
    /// The workflow that started this one, for a child.
    pub parent_id: Option<String>,
    /// Cancel the workflow once the engine's clock passes this.
    pub deadline_ms: Option<i64>,
    /// The application version of the code that first ran it; `None` for a
    /// run that never ran (the claim that starts it stamps one).
    pub version: Option<String>,
    /// The W3C `traceparent` of whoever started or enqueued it: every
    /// execution's span continues that trace (docs/observability.md).
    pub trace_parent: Option<String>,
}

/// The application version an executor runs and the versions it accepts
/// (see docs/versioning.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// The version this executor's code is: stamped on the runs it starts.
    pub version: String,
    /// Every version whose runs it may run, `version` among them.
    pub accepts: Vec<String>,
}

/// The version of code that declares none.
pub const DEFAULT_VERSION: &str = "unversioned";

impl Versions {
    /// Code of version `version` that runs only its own runs.
    pub fn only(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            accepts: vec![version.to_owned()],
        }
    }

    /// Whether a run recorded under `version` may run here: one that never
    /// ran (`None`) may run anywhere.
    pub fn accepts(&self, version: Option<&str>) -> bool {
        version.is_none_or(|v| self.accepts.iter().any(|a| a == v))
    }
}

impl Default for Versions {
    fn default() -> Self {
        Self::only(DEFAULT_VERSION)
    }
}

/// A workflow row with what management tools show.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowInfo {
    /// The row.
    pub row: WorkflowRow,
    /// Claim priority.
    pub priority: i32,
    /// When it was created (ms since the epoch).
    pub created_ms: i64,
    /// Last change.
    pub updated_ms: i64,
    /// When its current execution started.
    pub started_ms: Option<i64>,
    /// When it finished.
    pub completed_ms: Option<i64>,
    /// The key its queue's per-key concurrency limit counts it under.
    pub concurrency_key: Option<String>,
}

/// A step row with its execution details.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// The checkpoint.
    pub row: StepRow,
    /// Attempts it took.
    pub attempts: i32,
    /// The epoch of the execution that recorded it.
    pub owner_epoch: i64,
    /// When its first attempt started (ms since the epoch).
    pub started_ms: i64,
    /// When it was recorded.
    pub completed_ms: i64,
}

/// Which workflows [`Transaction::workflows_list`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this workflow name.
    pub name: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only runs recorded under this application version.
    pub version: Option<String>,
    /// Created at or after (ms since the epoch).
    pub created_from_ms: Option<i64>,
    /// Created before.
    pub created_until_ms: Option<i64>,
    /// Only the children of this workflow.
    pub parent_id: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// A queue as management tools show it ([`Transaction::queues_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Its name and the limits its executors last declared.
    pub limits: QueueLimits,
    /// Its workflows waiting to be claimed (including delayed ones).
    pub enqueued: i64,
    /// Its workflows owned by an executor.
    pub running: i64,
    /// When the oldest of its workflows that could be claimed now (not
    /// delayed) was created (ms since the epoch): how far behind the queue
    /// is. `None` when none waits.
    pub oldest_ready_ms: Option<i64>,
}

/// An executor as management tools show it ([`Transaction::executors_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorInfo {
    /// Its ID.
    pub id: String,
    /// The application version its code is.
    pub version: Option<String>,
    /// The versions whose runs it accepts.
    pub accepts: Vec<String>,
    /// When it first registered (ms since the epoch).
    pub started_ms: i64,
    /// Its last heartbeat.
    pub heartbeat_ms: i64,
    /// When its lease runs out: past that, another executor may take its
    /// workflows back.
    pub lease_expires_ms: i64,
    /// The workflows it owns now (`RUNNING` under its ID).
    pub running: i64,
}

/// A message waiting for its workflow to receive it ([`Transaction::messages_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// The topic.
    pub topic: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// When it was sent (ms since the epoch).
    pub created_ms: i64,
}

/// An event a workflow published ([`Transaction::events_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo {
    /// The key.
    pub key: String,
    /// Its latest value, as JSON text.
    pub value: String,
    /// When it was last set (ms since the epoch).
    pub updated_ms: i64,
}

/// Parameters of [`Transaction::workflow_fork`].
#[derive(Debug, Clone)]
pub struct WorkflowFork {
    /// The workflow to copy.
    pub source_id: String,
    /// The new workflow's ID.
    pub new_id: String,
    /// Steps before this one are copied (replayed, not re-run).
    pub from_step: i32,
    /// The engine's clock.
    pub now_ms: i64,
}

/// One recorded step (a checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    /// Position in the workflow, from 0.
    pub step_id: i32,
    /// The step's name, checked on replay.
    pub name: String,
    /// How the step ran.
    pub kind: StepKind,
    /// The output as JSON text, if the step succeeded.
    pub output: Option<String>,
    /// The error message, if the step failed.
    pub error: Option<String>,
}

/// Parameters of [`Transaction::workflow_insert`].
#[derive(Debug, Clone)]
pub struct WorkflowInsert {
    /// The workflow ID.
    pub id: String,
    /// The registered workflow name.
    pub name: String,
    /// The input as JSON text.
    pub input: String,
    /// The executor that will run it (inserted as `RUNNING`, epoch 1).
    pub executor_id: String,
    /// The parent, for a child workflow.
    pub parent_id: Option<String>,
    /// For a child: the epoch of the parent's execution starting it. The
    /// insert locks the parent's row and inserts only while the parent is
    /// `RUNNING` at this epoch (otherwise: fenced), so that a cancel of the
    /// parent either finds the child or keeps it from being created.
    pub parent_epoch: Option<i64>,
    /// The deadline (ms since the epoch), if any.
    pub deadline_ms: Option<i64>,
    /// The application version of the starting executor's code.
    pub version: String,
    /// The starter's trace context, a W3C `traceparent` (checked by
    /// [`check_trace_parent`]).
    pub trace_parent: Option<String>,
    /// The engine's clock.
    pub now_ms: i64,
}

/// What [`Transaction::workflow_insert`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowInserted {
    /// The row is new; its owner epoch is 1.
    Inserted,
    /// A row with this ID already existed; here it is, untouched.
    Existing(Box<WorkflowRow>),
}

/// Parameters of [`Transaction::step_record`].
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// The workflow ID.
    pub workflow_id: String,
    /// The step's position.
    pub step_id: i32,
    /// The step's name.
    pub name: String,
    /// How the step ran.
    pub kind: StepKind,
    /// The output (JSON text); exactly one of `output` and `error` is set.
    pub output: Option<String>,
    /// The error message.
    pub error: Option<String>,
    /// The fencing token of the recording execution.
    pub owner_epoch: i64,
    /// How many attempts the step took.
    pub attempts: i32,
    /// When the step's first attempt started.
    pub started_ms: i64,
    /// The engine's clock now.
    pub now_ms: i64,
    /// Also record that the run is now of this application version, in the
    /// same statement: a patch marker recorded by code of a newer version
    /// than the run's makes the run one that only code with the patch can
    /// go on with. With it set the fence is strict (the run's row is
    /// updated, and locked, only while it runs at `owner_epoch`; otherwise
    /// fenced), and the version changes even when the step exists: record
    /// it only in a transaction that is rolled back unless `Recorded`.
    pub version: Option<String>,
}

/// What [`Transaction::step_record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRecorded {
    /// The checkpoint is written (and commits with the transaction).
    Recorded,
    /// Another execution already recorded this step; nothing was written.
    /// The caller rolls back and replays the recorded output.
    Exists,
}

/// Parameters of [`Transaction::workflow_complete`].
#[derive(Debug, Clone)]
pub struct WorkflowComplete {
    /// The workflow ID.
    pub id: String,
    /// The fencing token of the completing execution.
    pub owner_epoch: i64,
    /// `Success` or `Error`.
    pub status: Status,
    /// The output (JSON text) for `Success`.
    pub output: Option<String>,
    /// The error message for `Error`.
    pub error: Option<String>,
    /// The engine's clock.
    pub now_ms: i64,
}

/// Parameters of [`Transaction::workflows_recover`].
#[derive(Debug, Clone)]
pub struct WorkflowsRecover {
    /// The executor whose unfinished workflows are taken back.
    pub executor_id: String,
    /// Only this workflow, or all of the executor's.
    pub workflow_id: Option<String>,
    /// What this executor runs: its runs of other versions are handed back
    /// to their queues (`ENQUEUED`, no owner, epoch bumped) instead, for an
    /// executor that accepts them.
    pub versions: Versions,
    /// The engine's clock.
    pub now_ms: i64,
}

/// A queue as declared in code, with its cross-executor limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    /// The queue's name.
    pub name: String,
    /// At most this many of the queue's workflows run at once, across all
    /// executors.
    pub concurrency_global: Option<u32>,
    /// At most `.0` starts per `.1` milliseconds, across all executors.
    pub rate_limit: Option<(u32, i64)>,
    /// At most this many of the queue's workflows with one concurrency key
    /// run at once, across all executors.
    pub concurrency_per_key: Option<u32>,
    /// Finished workflow trees of this queue (judged by the root's queue)
    /// are deleted once their root finished this long ago (milliseconds);
    /// `None`: kept forever. Not a claim limit.
    pub retention_ms: Option<i64>,
}

impl QueueLimits {
    /// How many more workflows may start now, given how many of the queue's
    /// workflows are running and how many started within the rate period.
    pub fn budget(&self, running: i64, recent: i64) -> u32 {
        let mut budget = i64::from(u32::MAX);
        if let Some(global) = self.concurrency_global {
            budget = budget.min(i64::from(global) - running);
        }
        if let Some((count, _)) = self.rate_limit {
            budget = budget.min(i64::from(count) - recent);
        }
        u32::try_from(budget.max(0)).unwrap_or(u32::MAX)
    }

    /// Whether claimers of this queue must be serialized.
    pub fn is_limited(&self) -> bool {
        self.concurrency_global.is_some()
            || self.rate_limit.is_some()
            || self.concurrency_per_key.is_some()
    }
}

/// Parameters of [`Transaction::executor_register`].
#[derive(Debug, Clone)]
pub struct ExecutorRegister {
    /// The executor.
    pub executor_id: String,
    /// Registered workflow names, each with the JSON types (as
    /// `jsonb_typeof` names them) its input decodes from.
    pub workflows: Vec<(String, Vec<&'static str>)>,
    /// Declared queues.
    pub queues: Vec<QueueLimits>,
    /// The engine's payload limit, which the SQL functions enforce too.
    pub payload_max_bytes: usize,
    /// Whether enqueues signal waiting executors (`NOTIFY`).
    pub notify_on_enqueue: bool,
    /// The engine's clock.
    pub now_ms: i64,
    /// The lease granted by this registration.
    pub lease_ms: i64,
    /// The version this executor runs and the versions it accepts.
    pub versions: Versions,
    /// Declared schedules: inserted if new (cursor at the database clock,
    /// not paused), their declaration updated otherwise (cursor and pause
    /// kept).
    pub schedules: Vec<ScheduleDecl>,
}

/// Parameters of [`Transaction::workflows_claim`].
#[derive(Debug, Clone)]
pub struct WorkflowsClaim {
    /// The queue and its limits.
    pub queue: QueueLimits,
    /// The claiming executor.
    pub executor_id: String,
    /// Only workflows with these names (the ones this executor can run).
    pub names: Vec<String>,
    /// Only runs of accepted versions (or that never ran); a run that never
    /// ran is stamped with this executor's version.
    pub versions: Versions,
    /// At most this many.
    pub limit: u32,
    /// The engine's clock.
    pub now_ms: i64,
}

/// Parameters of [`Transaction::workflow_enqueue`].
#[derive(Debug, Clone)]
pub struct WorkflowEnqueue {
    /// The workflow name.
    pub name: String,
    /// The input, JSON text.
    pub input: String,
    /// The queue.
    pub queue: String,
    /// The workflow ID, or `None` to generate one.
    pub workflow_id: Option<String>,
    /// Lower runs first.
    pub priority: i32,
    /// At most one unfinished workflow per queue and key.
    pub dedup_key: Option<String>,
    /// Start no earlier than this long from now.
    pub delay_ms: Option<i64>,
    /// Fail on a deduplication conflict instead of returning the existing ID.
    pub dedup_error: bool,
    /// The queue's per-key concurrency limit counts this workflow under
    /// this key.
    pub concurrency_key: Option<String>,
    /// Debounce: replace the input of the queue's pending workflow of this
    /// name and key (and start it `delay_ms` from now, at most
    /// `debounce_max_wait_ms` after it was first enqueued), or enqueue one.
    pub debounce_key: Option<String>,
    /// The longest a debounced workflow's start is pushed back, counted
    /// from its first enqueue.
    pub debounce_max_wait_ms: Option<i64>,
    /// The enqueuer's trace context, a W3C `traceparent`; a debounced
    /// enqueue replaces the pending workflow's with it, as it replaces the
    /// input.
    pub trace_parent: Option<String>,
}

/// Why `traceparent` is not a W3C trace context (version 00 form:
/// `00-<32 hex trace ID>-<16 hex parent ID>-<2 hex flags>`, lower case, IDs
/// not all zeros), in the words `tandem.enqueue_workflow` raises; `None`
/// if it is one. Only the version-00 form is accepted: it is the one every
/// OpenTelemetry SDK writes, and a stored context must be readable by the
/// executor that runs the workflow later.
pub fn check_trace_parent(traceparent: &str) -> Option<&'static str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zeros = |s: &str| s.bytes().all(|b| b == b'0');
    match parts.as_slice() {
        ["00", trace, parent, flags] if hex(trace, 32) && hex(parent, 16) && hex(flags, 2) => {
            if zeros(trace) || zeros(parent) {
                Some("trace_parent must not have an all-zero trace or parent ID")
            } else {
                None
            }
        }
        _ => Some("trace_parent must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>"),
    }
}

/// A schedule as declared in code, registered by every executor that
/// declares it (`tandem.schedules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleDecl {
    /// The schedule's name, its identity.
    pub name: String,
    /// The workflow each tick enqueues.
    pub workflow: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone it is read in (`UTC` by default).
    pub time_zone: String,
    /// The queue its workflows are enqueued on.
    pub queue: String,
    /// The catch-up policy: `skip`, `latest` or `all`.
    pub catch_up: String,
    /// The bound of `all`.
    pub catch_up_max: Option<u32>,
    /// How late a tick may fire and still be on time.
    pub grace_ms: i64,
}

/// A schedule's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleState {
    /// The declaration, as the last executor to launch with it wrote it.
    pub decl: ScheduleDecl,
    /// Paused schedules fire nothing.
    pub paused: bool,
    /// Every tick at or before this instant (database clock, ms) has been
    /// decided: enqueued or skipped. Set to the database clock when the
    /// schedule is first registered and when it is resumed.
    pub cursor_ms: i64,
    /// The latest tick enqueued.
    pub last_tick_ms: Option<i64>,
    /// Last change (database clock).
    pub updated_ms: i64,
    /// The database clock when the row was read.
    pub now_ms: i64,
}

/// Parameters of [`Transaction::workflows_gc`].
#[derive(Debug, Clone)]
pub struct WorkflowsGc {
    /// At most this many finished root workflows (each with its whole
    /// tree) per batch; ignored by a dry run.
    pub limit: u32,
    /// Delete what finished longer ago than this, in every queue, instead
    /// of each queue's stored retention.
    pub older_than_ms: Option<i64>,
    /// Count what would go; delete nothing, lock nothing.
    pub dry_run: bool,
    /// The engine's clock.
    pub now_ms: i64,
}

/// What a [`Transaction::workflows_gc`] deleted (or, dry, would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcCount {
    /// Finished root workflows taken (locked) by the batch, whose trees
    /// were deleted unless a member was unfinished. Equal to the batch's
    /// limit: there may be more.
    pub roots: u64,
    /// Workflow rows deleted, roots and descendants.
    pub workflows: u64,
    /// Their checkpoints.
    pub steps: u64,
    /// Their messages, received or not.
    pub messages: u64,
    /// Their events.
    pub events: u64,
}

impl GcCount {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: GcCount) {
        self.roots += other.roots;
        self.workflows += other.workflows;
        self.steps += other.steps;
        self.messages += other.messages;
        self.events += other.events;
    }
}

/// The kind of a storage failure: the one thing retry logic reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Serialization failure, deadlock: nothing committed, retry.
    Conflict,
    /// Connection lost or database down: the outcome of an in-flight
    /// commit is unknown; retry after checking what committed.
    Unavailable,
    /// Another execution owns the workflow: stop.
    Fenced,
    /// Bad input: do not retry.
    Invalid,
    /// The database role lacks a privilege the operation needs
    /// (docs/security.md): do not retry until it is granted.
    Denied,
    /// Anything else.
    Other,
}

/// A storage failure: a [`kind`](StorageError::kind) plus the backend's error.
#[derive(Debug, thiserror::Error)]
#[error("storage {kind:?} error: {source}")]
pub struct StorageError {
    kind: ErrorKind,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl StorageError {
    /// A storage error of `kind` caused by `source`.
    pub fn new(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Shorthand for storage results.
pub type StorageResult<T> = Result<T, StorageError>;

/// A database the engine can keep workflows in.
///
/// Implementations: `PgStorage` (PostgreSQL through sqlx) and, for the
/// simulator, an in-memory model of PostgreSQL's READ COMMITTED behaviour.
/// Every implementation must pass the conformance suite.
pub trait Storage: Clone + Send + Sync + 'static {
    /// An open transaction, owned (no borrow of the storage).
    type Tx: Transaction<Conn = Self::Conn>;
    /// What a transactional step's closure receives: for PostgreSQL, a real
    /// `sqlx::PgConnection` inside the transaction.
    type Conn: Send;

    /// Wake-ups from other processes that enqueued work.
    type Listener: Listener;

    /// Subscribes to wake-ups (`NOTIFY` for PostgreSQL).
    fn listen(&self) -> impl Future<Output = StorageResult<Self::Listener>> + Send;

    /// Opens a transaction (READ COMMITTED).
    fn begin(&self) -> impl Future<Output = StorageResult<Self::Tx>> + Send;

    /// Creates or upgrades the engine's schema. Safe to call from several
    /// processes at once.
    fn migrate(&self) -> impl Future<Output = StorageResult<()>> + Send;

    /// Classifies an error an application closure returned from inside a
    /// transaction (for example a `sqlx::Error` with SQLSTATE 40001), so the
    /// engine retries conflicts and connection loss. `None`: not a storage
    /// error, the step failed.
    fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind>;

    /// Runs `op` in a transaction of its own and commits it.
    fn autocommit<R, F>(&self, op: F) -> impl Future<Output = StorageResult<R>> + Send
    where
        R: Send,
        F: for<'t> FnOnce(&'t mut Self::Tx) -> TxFuture<'t, R> + Send,
    {
        async move {
            let mut tx = self.begin().await?;
            let r = op(&mut tx).await?;
            tx.commit().await?;
            Ok(r)
        }
    }

    /// [`Transaction::workflow_insert`] in its own commit.
    fn workflow_insert(
        &self,
        params: WorkflowInsert,
    ) -> impl Future<Output = StorageResult<WorkflowInserted>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let inserted = tx.workflow_insert(params).await?;
            tx.commit().await?;
            Ok(inserted)
        }
    }

    /// [`Transaction::workflow_get`] in its own transaction.
    fn workflow_get(
        &self,
        id: &str,
    ) -> impl Future<Output = StorageResult<Option<WorkflowRow>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let row = tx.workflow_get(id).await?;
            tx.commit().await?;
            Ok(row)
        }
    }

    /// [`Transaction::workflow_complete`] in its own commit.
    fn workflow_complete(
        &self,
        params: WorkflowComplete,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        async move {
            let mut tx = self.begin().await?;
            tx.workflow_complete(params).await?;
            tx.commit().await
        }
    }

    /// [`Transaction::workflows_recover`] in its own commit.
    fn workflows_recover(
        &self,
        params: WorkflowsRecover,
    ) -> impl Future<Output = StorageResult<Vec<WorkflowRow>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let rows = tx.workflows_recover(params).await?;
            tx.commit().await?;
            Ok(rows)
        }
    }

    /// [`Transaction::steps_load`] in its own transaction.
    fn steps_load(
        &self,
        workflow_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<StepRow>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let steps = tx.steps_load(workflow_id).await?;
            tx.commit().await?;
            Ok(steps)
        }
    }

    /// [`Transaction::step_get`] in its own transaction.
    fn step_get(
        &self,
        workflow_id: &str,
        step_id: i32,
    ) -> impl Future<Output = StorageResult<Option<StepRow>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let step = tx.step_get(workflow_id, step_id).await?;
            tx.commit().await?;
            Ok(step)
        }
    }

    /// [`Transaction::step_record`] in its own commit (plain steps).
    fn step_record(
        &self,
        params: StepRecord,
    ) -> impl Future<Output = StorageResult<StepRecorded>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let recorded = tx.step_record(params).await?;
            tx.commit().await?;
            Ok(recorded)
        }
    }

    /// [`Transaction::workflow_insert_many`] in its own commit: the
    /// executor's group commit of starts.
    fn workflow_insert_many(
        &self,
        params: Vec<WorkflowInsert>,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<WorkflowInserted>>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let inserted = tx.workflow_insert_many(params).await?;
            tx.commit().await?;
            Ok(inserted)
        }
    }

    /// [`Transaction::step_record_many`] in its own commit: the executor's
    /// group commit of plain checkpoints.
    fn step_record_many(
        &self,
        params: Vec<StepRecord>,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<StepRecorded>>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let recorded = tx.step_record_many(params).await?;
            tx.commit().await?;
            Ok(recorded)
        }
    }

    /// [`Transaction::workflow_complete_many`] in its own commit: the
    /// executor's group commit of completions.
    fn workflow_complete_many(
        &self,
        params: Vec<WorkflowComplete>,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<()>>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let done = tx.workflow_complete_many(params).await?;
            tx.commit().await?;
            Ok(done)
        }
    }

    /// [`Transaction::executor_register`] in its own commit.
    fn executor_register(
        &self,
        params: ExecutorRegister,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        async move {
            let mut tx = self.begin().await?;
            tx.executor_register(params).await?;
            tx.commit().await
        }
    }

    /// [`Transaction::executor_heartbeat`] in its own commit.
    fn executor_heartbeat(
        &self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        async move {
            let mut tx = self.begin().await?;
            tx.executor_heartbeat(executor_id, now_ms, lease_ms).await?;
            tx.commit().await
        }
    }

    /// [`Transaction::workflows_reclaim`] in its own commit.
    fn workflows_reclaim(&self, now_ms: i64) -> impl Future<Output = StorageResult<u64>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let n = tx.workflows_reclaim(now_ms).await?;
            tx.commit().await?;
            Ok(n)
        }
    }

    /// [`Transaction::workflows_claim`] in its own commit.
    fn workflows_claim(
        &self,
        params: WorkflowsClaim,
    ) -> impl Future<Output = StorageResult<Vec<WorkflowRow>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let rows = tx.workflows_claim(params).await?;
            tx.commit().await?;
            Ok(rows)
        }
    }

    /// [`Transaction::workflows_release`] in its own commit.
    fn workflows_release(
        &self,
        executor_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<u64>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let n = tx.workflows_release(executor_id, now_ms).await?;
            tx.commit().await?;
            Ok(n)
        }
    }

    /// [`Transaction::workflows_owned`] in its own transaction.
    fn workflows_owned(
        &self,
        executor_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<(String, i64)>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let owned = tx.workflows_owned(executor_id).await?;
            tx.commit().await?;
            Ok(owned)
        }
    }

    /// [`Transaction::workflow_enqueue`] in its own commit.
    fn workflow_enqueue(
        &self,
        params: WorkflowEnqueue,
    ) -> impl Future<Output = StorageResult<String>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let id = tx.workflow_enqueue(params).await?;
            tx.commit().await?;
            Ok(id)
        }
    }
}

/// A boxed storage future borrowing a transaction.
pub type TxFuture<'t, R> = std::pin::Pin<Box<dyn Future<Output = StorageResult<R>> + Send + 't>>;

/// Wake-ups: some process enqueued work.
pub trait Listener: Send {
    /// Waits for the next wake-up. An error means the subscription broke
    /// (for example the connection was lost); the engine polls meanwhile and
    /// subscribes again.
    fn recv(&mut self) -> impl Future<Output = StorageResult<()>> + Send;
}

/// An open transaction. Dropping it without [`commit`](Transaction::commit)
/// rolls it back, as a lost connection would.
pub trait Transaction: Send + Sized {
    /// What application code inside a transactional step receives.
    type Conn: Send;

    /// The application's view of this transaction.
    fn conn(&mut self) -> &mut Self::Conn;

    /// Inserts a workflow row as `RUNNING` with owner epoch 1, or returns the
    /// existing row with that ID unchanged (a start never creates a second
    /// run).
    fn workflow_insert(
        &mut self,
        params: WorkflowInsert,
    ) -> impl Future<Output = StorageResult<WorkflowInserted>> + Send;

    /// Reads one workflow row.
    fn workflow_get(
        &mut self,
        id: &str,
    ) -> impl Future<Output = StorageResult<Option<WorkflowRow>>> + Send;

    /// Records the terminal status and output, only while the workflow is
    /// `RUNNING` under `owner_epoch`; otherwise fails with
    /// [`ErrorKind::Fenced`].
    fn workflow_complete(
        &mut self,
        params: WorkflowComplete,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Completions of several workflows in one statement, for the
    /// executor's group commit: entry `i` is what
    /// [`workflow_complete`](Transaction::workflow_complete) would have
    /// answered for `params[i]` alone (an `Err` only of kind
    /// [`ErrorKind::Fenced`]); any other error fails the whole statement.
    /// The entries name distinct workflows.
    fn workflow_complete_many(
        &mut self,
        params: Vec<WorkflowComplete>,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<()>>>> + Send;

    /// Takes back the executor's `RUNNING` workflows: bumps each owner epoch
    /// (fencing any older execution) and returns the rows.
    fn workflows_recover(
        &mut self,
        params: WorkflowsRecover,
    ) -> impl Future<Output = StorageResult<Vec<WorkflowRow>>> + Send;

    /// A workflow's recorded steps, in order.
    fn steps_load(
        &mut self,
        workflow_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<StepRow>>> + Send;

    /// One recorded step, if it is recorded: what an execution reads after
    /// a commit with an unknown outcome, or when another execution recorded
    /// the step first, without loading the whole history.
    fn step_get(
        &mut self,
        workflow_id: &str,
        step_id: i32,
    ) -> impl Future<Output = StorageResult<Option<StepRow>>> + Send;

    /// Writes a step's checkpoint, with the fence folded in: succeeds only
    /// while the workflow is `RUNNING` under `owner_epoch` (else
    /// [`ErrorKind::Fenced`]), and never overwrites an existing checkpoint
    /// (then [`StepRecorded::Exists`]).
    fn step_record(
        &mut self,
        params: StepRecord,
    ) -> impl Future<Output = StorageResult<StepRecorded>> + Send;

    /// Starts of several top-level workflows (no parent) in one statement,
    /// for the executor's group commit: entry `i` of the answer is what
    /// [`workflow_insert`](Transaction::workflow_insert) would have
    /// answered for `params[i]` alone (inserted, or the existing row, read
    /// in a statement of its own). Any error fails them all. The entries
    /// name distinct workflows.
    fn workflow_insert_many(
        &mut self,
        params: Vec<WorkflowInsert>,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<WorkflowInserted>>>> + Send;

    /// Checkpoints of several workflows in one statement, for the
    /// executor's group commit: entry `i` of the answer is what
    /// [`step_record`](Transaction::step_record) would have answered for
    /// `params[i]` alone, an `Err` there only of kind
    /// [`ErrorKind::Fenced`]. Any other error fails the whole statement (and
    /// aborts the transaction): the caller then records each on its own.
    /// The entries carry no `version` and name distinct workflows.
    fn step_record_many(
        &mut self,
        params: Vec<StepRecord>,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<StepRecorded>>>> + Send;

    /// Registers (or refreshes) an executor at launch: its lease, the
    /// workflow names it runs, its queues, and the settings the SQL functions
    /// read.
    fn executor_register(
        &mut self,
        params: ExecutorRegister,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Renews an executor's lease (re-creating its row if a peer had reaped
    /// it).
    fn executor_heartbeat(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Re-enqueues the `RUNNING` workflows of executors whose lease expired
    /// (bumping each owner epoch, which fences the old execution), and
    /// removes those executors. Returns how many workflows were re-enqueued.
    fn workflows_reclaim(&mut self, now_ms: i64)
    -> impl Future<Output = StorageResult<u64>> + Send;

    /// Claims up to `limit` ready workflows of a queue (`FOR UPDATE SKIP
    /// LOCKED`), within the queue's global concurrency and rate limits:
    /// marks them `RUNNING` for the executor with a bumped epoch.
    fn workflows_claim(
        &mut self,
        params: WorkflowsClaim,
    ) -> impl Future<Output = StorageResult<Vec<WorkflowRow>>> + Send;

    /// Graceful shutdown: hands the executor's `RUNNING` workflows back to
    /// their queues (bumped epochs) and removes the executor.
    fn workflows_release(
        &mut self,
        executor_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<u64>> + Send;

    /// Enqueues a workflow inside this transaction, with the semantics of the
    /// SQL function `tandem.enqueue_workflow`. Returns the workflow ID.
    fn workflow_enqueue(
        &mut self,
        params: WorkflowEnqueue,
    ) -> impl Future<Output = StorageResult<String>> + Send;

    /// Hands a workflow back to its queue until `run_after_ms` (a durable
    /// sleep that should not hold an executor slot), fenced like a
    /// completion.
    fn workflow_suspend(
        &mut self,
        id: &str,
        owner_epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Sends a message (semantics of the SQL function `tandem.send`).
    fn message_send(
        &mut self,
        workflow_id: &str,
        topic: &str,
        payload: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Takes (deletes and returns) the oldest message for a workflow and
    /// topic, skipping messages another transaction is taking. Fenced like a
    /// checkpoint: fails with [`ErrorKind::Fenced`] unless the workflow is
    /// `RUNNING` under `owner_epoch`, so a cancelled receiver stops waiting.
    fn message_take(
        &mut self,
        workflow_id: &str,
        topic: &str,
        owner_epoch: i64,
    ) -> impl Future<Output = StorageResult<Option<String>>> + Send;

    /// When the receive at step `step_id` of `workflow_id` times out: an
    /// earlier execution's recorded time if it waited at this step already,
    /// otherwise `deadline_ms`, recorded now. Fenced like a checkpoint. A
    /// receive's timeout so counts from its first wait, across crashes and
    /// takeovers, as a sleep's wake-up time does.
    fn recv_deadline(
        &mut self,
        workflow_id: &str,
        owner_epoch: i64,
        step_id: i32,
        deadline_ms: i64,
    ) -> impl Future<Output = StorageResult<i64>> + Send;

    /// Sets an event's value.
    fn event_set(
        &mut self,
        workflow_id: &str,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Reads an event's value.
    fn event_get(
        &mut self,
        workflow_id: &str,
        key: &str,
    ) -> impl Future<Output = StorageResult<Option<String>>> + Send;

    /// Cancels a workflow and its unfinished descendants: `CANCELLED` with
    /// `reason` as error, epoch bumped (fencing running executions). Returns
    /// the IDs cancelled; finished workflows are left alone.
    fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<Vec<String>>> + Send;

    /// The cancel a workflow's own execution makes once its deadline has
    /// passed: [`workflows_cancel`](Transaction::workflows_cancel) with the
    /// reason `deadline exceeded`, fenced like a checkpoint (fails with
    /// [`ErrorKind::Fenced`] unless the workflow is `RUNNING` under
    /// `owner_epoch`): a superseded execution, whose deadline a resume may
    /// have cleared, cancels nothing.
    fn workflow_cancel_overdue(
        &mut self,
        id: &str,
        owner_epoch: i64,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<Vec<String>>> + Send;

    /// Enqueues a cancelled workflow again (epoch bumped, deadline cleared),
    /// with every cancelled member of its subtree (what the cancel's cascade
    /// cancelled). Returns whether the workflow itself was cancelled.
    fn workflow_resume(
        &mut self,
        id: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<bool>> + Send;

    /// Creates a new enqueued workflow with the source's name, input and
    /// queue, and copies its steps before `from_step`. Returns whether the
    /// source exists.
    fn workflow_fork(
        &mut self,
        params: WorkflowFork,
    ) -> impl Future<Output = StorageResult<bool>> + Send;

    /// The workflows `RUNNING` under `executor_id`, each with its owner
    /// epoch, by ID: what an executor compares with the executions it really
    /// runs, to adopt rows that an operation with a lost acknowledgement
    /// left on it.
    fn workflows_owned(
        &mut self,
        executor_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<(String, i64)>>> + Send;

    /// Lists workflows, newest first.
    fn workflows_list(
        &mut self,
        filter: WorkflowFilter,
    ) -> impl Future<Output = StorageResult<Vec<WorkflowInfo>>> + Send;

    /// One workflow with its management details.
    fn workflow_info(
        &mut self,
        id: &str,
    ) -> impl Future<Output = StorageResult<Option<WorkflowInfo>>> + Send;

    /// A workflow's steps with their execution details.
    fn steps_info(
        &mut self,
        workflow_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<StepInfo>>> + Send;

    /// How many workflows of each status match `filter` (its status, page
    /// size and offset ignored), each count stopping at `cap` so that a
    /// count costs at most `cap` rows whatever the table holds: every
    /// status, in [`Status::ALL`] order.
    fn workflows_count(
        &mut self,
        filter: WorkflowFilter,
        cap: u64,
    ) -> impl Future<Output = StorageResult<Vec<(Status, u64)>>> + Send;

    /// The declared queues, by name, with their depth.
    fn queues_info(
        &mut self,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<Vec<QueueInfo>>> + Send;

    /// The registered executors (live or with an expired lease not yet
    /// reclaimed), by ID.
    fn executors_info(&mut self) -> impl Future<Output = StorageResult<Vec<ExecutorInfo>>> + Send;

    /// The messages sent to a workflow and not yet received, oldest first.
    fn messages_info(
        &mut self,
        workflow_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<MessageInfo>>> + Send;

    /// The events a workflow published, by key.
    fn events_info(
        &mut self,
        workflow_id: &str,
    ) -> impl Future<Output = StorageResult<Vec<EventInfo>>> + Send;

    /// Locks a schedule's row for firing (`FOR UPDATE SKIP LOCKED`) and
    /// reads it with the database clock. `None` if there is no such
    /// schedule or another transaction holds it (that one is firing it).
    fn schedule_lock(
        &mut self,
        name: &str,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<Option<ScheduleState>>> + Send;

    /// Moves a locked schedule's cursor (and its latest enqueued tick, if
    /// this firing enqueued one).
    fn schedule_advance(
        &mut self,
        name: &str,
        cursor_ms: i64,
        last_tick_ms: Option<i64>,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Pauses or resumes a schedule (semantics of the SQL functions
    /// `tandem.pause_schedule` / `tandem.resume_schedule`). Resuming a
    /// paused schedule moves its cursor to the database clock, so the ticks
    /// of the pause never run; pausing a paused schedule, or resuming one
    /// that is not paused, changes nothing. The state after, or `None` if
    /// there is no such schedule.
    fn schedule_pause(
        &mut self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<Option<ScheduleState>>> + Send;

    /// Retention: deletes finished workflow trees whose root finished
    /// longer ago than its queue's retention (or `older_than_ms`), oldest
    /// first, with their steps, messages and events, in this transaction.
    /// A tree goes whole or not at all: never while any member is
    /// unfinished, so no running workflow loses a child its replay reads.
    /// Roots another transaction holds are skipped (`SKIP LOCKED`), so
    /// executors collecting at once take different batches.
    fn workflows_gc(
        &mut self,
        params: WorkflowsGc,
    ) -> impl Future<Output = StorageResult<GcCount>> + Send;

    /// Every schedule, by name.
    fn schedules_list(
        &mut self,
        now_ms: i64,
    ) -> impl Future<Output = StorageResult<Vec<ScheduleState>>> + Send;

    /// Commits. An [`ErrorKind::Unavailable`] error means the outcome is
    /// unknown: the commit may have happened.
    fn commit(self) -> impl Future<Output = StorageResult<()>> + Send;

    /// Rolls back.
    fn rollback(self) -> impl Future<Output = StorageResult<()>> + Send;
}
