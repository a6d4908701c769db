//! The memory backend's row records: one struct per engine table, with
//! the columns of its PostgreSQL counterpart.

/// The engine's workflow row, with every column of `tandem.workflows`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRecord {
    /// The workflow ID.
    pub id: String,
    /// The registered workflow name.
    pub name: String,
    /// Lifecycle status.
    pub status: crate::storage::Status,
    /// The input, as JSON text.
    pub input: String,
    /// The output (JSON text) once the status is `SUCCESS`.
    pub output: Option<String>,
    /// The error message once the status is `ERROR`.
    pub error: Option<String>,
    /// The owning executor.
    pub executor_id: Option<String>,
    /// The fencing token.
    pub owner_epoch: i64,
    /// Creation time (engine clock, ms since the epoch).
    pub created_ms: i64,
    /// Last update time.
    pub updated_ms: i64,
    /// Completion time (database clock).
    pub completed_ms: Option<i64>,
    /// The queue (`default` unless enqueued elsewhere).
    pub queue: String,
    /// Claim priority, lower first.
    pub priority: i32,
    /// Deduplication key, unique among the queue's unfinished workflows.
    pub dedup_key: Option<String>,
    /// The key the queue's per-key concurrency limit counts it under.
    pub concurrency_key: Option<String>,
    /// The key of the debounced enqueue that created it.
    pub debounce_key: Option<String>,
    /// Not claimable before this (engine clock).
    pub run_after_ms: Option<i64>,
    /// When the current execution started (database clock).
    pub started_ms: Option<i64>,
    /// The parent workflow, for a child.
    pub parent_id: Option<String>,
    /// The deadline (engine clock).
    pub deadline_ms: Option<i64>,
    /// The step of the receive that last recorded when it times out.
    pub wait_step: Option<i32>,
    /// When that receive times out (engine clock).
    pub wait_until_ms: Option<i64>,
    /// `app_version`: the version of the code that first ran it.
    pub version: Option<String>,
    /// `trace_parent`: the starter's or enqueuer's W3C trace context.
    pub trace_parent: Option<String>,
}

/// A row of `tandem.executors`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorRecord {
    /// First registration (engine clock).
    pub started_ms: i64,
    /// Last heartbeat (engine clock).
    pub heartbeat_ms: i64,
    /// The lease's end (database clock).
    pub lease_expires_ms: i64,
    /// `app_version`: the version its code is (set by the registration).
    pub version: Option<String>,
    /// `accepts`: the versions whose runs it may run.
    pub accepts: Vec<String>,
}

/// A row of `tandem.queues`: the declared limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// `concurrency_global`.
    pub concurrency_global: Option<u32>,
    /// `rate_limit_count`, `rate_limit_period_ms`.
    pub rate_limit: Option<(u32, i64)>,
    /// `concurrency_per_key`.
    pub concurrency_per_key: Option<u32>,
    /// `retention_ms`: finished workflows older than this are deleted.
    pub retention_ms: Option<i64>,
}

/// A row of `tandem.schedules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// The declaration (name, workflow, cron, zone, queue, catch-up, grace).
    pub decl: crate::storage::ScheduleDecl,
    /// Paused schedules fire nothing.
    pub paused: bool,
    /// Every tick at or before this instant is decided (database clock).
    pub cursor_ms: i64,
    /// The latest tick enqueued.
    pub last_tick_ms: Option<i64>,
    /// Last change (database clock).
    pub updated_ms: i64,
}

/// A row of `tandem.messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    /// The receiving workflow.
    pub workflow_id: String,
    /// The topic.
    pub topic: String,
    /// The payload, as `jsonb` prints it.
    pub payload: String,
    /// When it was sent.
    pub created_ms: i64,
}

/// A row of `tandem.events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The value, as `jsonb` prints it.
    pub value: String,
    /// Last update (engine clock).
    pub updated_ms: i64,
}

/// A checkpoint row, with every column of `tandem.steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecordRow {
    /// The workflow ID.
    pub workflow_id: String,
    /// The step's position.
    pub step_id: i32,
    /// The step's name.
    pub name: String,
    /// How the step ran.
    pub kind: crate::storage::StepKind,
    /// Output JSON text, if it succeeded.
    pub output: Option<String>,
    /// Error message, if it failed.
    pub error: Option<String>,
    /// The fencing token of the execution that recorded it.
    pub owner_epoch: i64,
    /// How many attempts the step took.
    pub attempts: i32,
    /// When its first attempt started.
    pub started_ms: i64,
    /// When it was recorded.
    pub completed_ms: i64,
}
