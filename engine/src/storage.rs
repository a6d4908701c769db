//! The storage seam: everything the engine needs from a database.
//!
//! The engine is generic over a [`Storage`] (static dispatch). Engine
//! operations are methods on an owned transaction ([`Transaction`]), so the
//! engine composes "application work + checkpoint" in one transaction, and the
//! application sees that same transaction through [`Transaction::conn`]. The
//! autocommit methods on [`Storage`] run one operation in its own commit; a
//! backend overrides them when it can do that in fewer round trips.
//!
//! Time never comes from the database clock or the backend: every operation
//! that stores a timestamp receives `now_ms` from the engine's [`Env`].
//!
//! [`Env`]: crate::Env

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

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
}

impl Status {
    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enqueued => "ENQUEUED",
            Status::Running => "RUNNING",
            Status::Success => "SUCCESS",
            Status::Error => "ERROR",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "ENQUEUED" => Status::Enqueued,
            "RUNNING" => Status::Running,
            "SUCCESS" => Status::Success,
            "ERROR" => Status::Error,
            _ => return None,
        })
    }

    /// Whether the workflow has finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Success | Status::Error)
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
}

impl StepKind {
    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Plain => "step",
            StepKind::Transaction => "transaction",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<StepKind> {
        match s {
            "step" => Some(StepKind::Plain),
            "transaction" => Some(StepKind::Transaction),
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
    /// The engine's clock.
    pub now_ms: i64,
}

/// What [`Transaction::workflow_insert`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowInserted {
    /// The row is new; its owner epoch is 1.
    Inserted,
    /// A row with this ID already existed; here it is, untouched.
    Existing(WorkflowRow),
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
    /// The engine's clock.
    pub now_ms: i64,
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

    /// Writes a step's checkpoint, with the fence folded in: succeeds only
    /// while the workflow is `RUNNING` under `owner_epoch` (else
    /// [`ErrorKind::Fenced`]), and never overwrites an existing checkpoint
    /// (then [`StepRecorded::Exists`]).
    fn step_record(
        &mut self,
        params: StepRecord,
    ) -> impl Future<Output = StorageResult<StepRecorded>> + Send;

    /// Commits. An [`ErrorKind::Unavailable`] error means the outcome is
    /// unknown: the commit may have happened.
    fn commit(self) -> impl Future<Output = StorageResult<()>> + Send;

    /// Rolls back.
    fn rollback(self) -> impl Future<Output = StorageResult<()>> + Send;
}
