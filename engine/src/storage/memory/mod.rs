//! The memory backend: an in-process model of PostgreSQL under READ
//! COMMITTED, for the simulator and for tests that need no server.
//!
//! It is a model, not a map: rows have versions, every statement reads its
//! own snapshot, UPDATEs and locking reads take row locks, wait for a
//! concurrent writer and then re-check the newest version (PostgreSQL's
//! EvalPlanQual), unique indexes make a second inserter wait for the first,
//! deadlocks abort one victim, a dropped transaction rolls back, and a fault
//! hook can lose commit acknowledgements, drop connections and inject
//! serialization failures. `docs/memory-backend.md` lists what it models and
//! what it deliberately leaves out; the conformance suite
//! (`engine/tests/it/conformance`) runs the same scenarios here and on
//! PostgreSQL and compares the outcomes step by step.
//!
//! Blocking is runtime-agnostic: a waiting statement awaits a
//! `tokio::sync::oneshot` completed by whoever ends the transaction it waits
//! for. There are no timers, threads or sleeps, so a simulated runtime
//! (madsim) decides every interleaving. The one `std::sync::Mutex` is never
//! held across an await.
//!
//! Application data lives in tables of JSON values keyed by [`Key`], reached
//! through [`MemConn`], the connection a transactional step's closure
//! receives: the same transaction as the step's checkpoint.
//!
//! # Layout
//! - `handle`: [`MemStorage`], [`MemTx`], errors, the fault API, wake-ups.
//! - `session`: a connection's transaction state, [`MemConn`] and its generic statements.
//! - `ops`: the engine operations, each modelled on the SQL of `storage/postgres.rs`.
//! - `functions`: the models of `tandem.enqueue_workflow` and `tandem.send`.
//! - `records`: the row records of the engine's tables.
//! - `mvcc`: transactions, row versions, snapshots, row locks, deadlocks.
//!
//! The files share one namespace (each imports `super::*`, and this module
//! imports theirs): they are one model cut into readable parts, and their
//! items are visible to each other, not outside the backend.

mod functions;
mod handle;
mod mvcc;
mod ops;
mod records;
mod session;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

#[cfg(feature = "model-defects")]
pub use handle::Defect;
pub use handle::{Fault, FaultHook, FaultPoint, MemError, MemListener, MemStorage, MemTx};
pub use mvcc::LockWait;
use mvcc::{
    App, Chain, Db, Events, Executors, Messages, Queues, Schedules, Settings, Snapshot, Steps,
    TableSel, TryLock, Unique, WaitTarget, WorkflowNames, Workflows,
};
pub use records::{
    EventRecord, ExecutorRecord, MessageRecord, QueueRecord, ScheduleRecord, StepRecordRow,
    WorkflowRecord,
};
pub use session::{Key, MemConn, RowLock, Scan};

use functions::*;
use session::*;

use super::intercept::{Hook, Interceptor, Phase, Tap, Verdict};
use super::{
    DEFAULT_QUEUE, EPOCH_FIRST, EPOCH_NEVER_RAN, ErrorKind, EventInfo, ExecutorInfo,
    ExecutorRegister, GcCount, Listener, MessageInfo, QueueInfo, QueueLimits, ScheduleState,
    Status, StepInfo, StepRecord, StepRecorded, StepRow, Storage, StorageError, StorageResult,
    Transaction, Versions, WORKFLOW_ID_MAX_CHARS, WorkflowComplete, WorkflowEnqueue,
    WorkflowFilter, WorkflowFork, WorkflowInfo, WorkflowInsert, WorkflowInserted, WorkflowRow,
    WorkflowsClaim, WorkflowsGc, WorkflowsRecover, classify_sqlstate, fenced, jsonb_refuses,
};
