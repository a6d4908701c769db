//! The scenario harness: sessions that each hold one transaction, steps
//! issued one at a time, and after each step a wait until every session is
//! either done or blocked, as PostgreSQL's isolation tester does. On
//! PostgreSQL blocking is detected with `pg_isolation_test_session_is_blocked`
//! (never with sleeps); on the model with `MemStorage::is_waiting`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tandem::storage::memory::{LockWait, MemConn, MemError, RowLock, Scan};
use tandem::storage::{
    DEFAULT_VERSION, ErrorKind, ExecutorRegister, QueueLimits, ScheduleDecl, Status, StepKind,
    StepRecord, StepRecorded, Storage, StorageError, StorageResult, Transaction, Versions,
    WorkflowComplete, WorkflowEnqueue, WorkflowFork, WorkflowInsert, WorkflowInserted,
    WorkflowsClaim, WorkflowsRecover,
};
use tandem::{MemStorage, PgStorage};
use tokio::sync::{mpsc, oneshot};

/// One step of a session: an engine storage operation, an application
/// statement on `jobs (id bigint PRIMARY KEY, owner bigint)`, or the end of
/// the session's transaction. The next operation after an end begins a new
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    WfInsert(&'static str, &'static str),
    WfGet(&'static str),
    /// The trace context stored with a workflow.
    WfTrace(&'static str),
    WfComplete(&'static str, i64),
    /// Executor, and optionally one workflow.
    WfRecover(&'static str, Option<&'static str>),
    StepsLoad(&'static str),
    /// One recorded step: workflow, step ID.
    StepGet(&'static str, i32),
    /// Workflow, step ID, owner epoch.
    StepRecord(&'static str, i32, i64),
    /// Several checkpoints in one statement (the group commit).
    StepRecordMany(&'static [(&'static str, i32, i64)]),
    /// Several completions in one statement: workflow, owner epoch.
    WfCompleteMany(&'static [(&'static str, i64)]),
    /// Several top-level starts in one statement, by executor `b`.
    WfInsertMany(&'static [&'static str]),
    /// The same as a patch marker recorded by `v2` code, which also
    /// stamps the run `v2` once the checkpoint is in.
    PatchRecordV2(&'static str, i32, i64),
    /// `SELECT id FROM jobs [WHERE owner IS NULL] ORDER BY id LIMIT 1 [lock]`.
    Select {
        unowned: bool,
        lock: Option<RowLock>,
    },
    /// `UPDATE jobs SET owner = $1 WHERE id = (SELECT id FROM jobs WHERE
    /// owner IS NULL ORDER BY id LIMIT 1 FOR UPDATE) RETURNING id`.
    ClaimLocked(i64),
    /// `UPDATE jobs SET owner = $1 WHERE id = (SELECT min(id) FROM jobs
    /// WHERE owner IS NULL) [AND owner IS NULL] RETURNING id`: no row lock
    /// in the subquery.
    ClaimUnlocked {
        owner: i64,
        recheck: bool,
    },
    /// `SELECT owner FROM jobs WHERE id = $1`.
    Read(i64),
    /// `UPDATE jobs SET owner = $2 WHERE id = $1 RETURNING owner`.
    Set(i64, i64),
    /// `UPDATE jobs SET owner = coalesce(owner, 0) + 1 WHERE id = $1
    /// RETURNING owner`.
    Incr(i64),
    /// `INSERT INTO jobs VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET
    /// owner = coalesce(jobs.owner, 0) + 1 RETURNING owner`.
    Upsert(i64),
    /// `SELECT id FROM jobs ORDER BY owner DESC NULLS LAST, id LIMIT 1 FOR
    /// UPDATE`: ordered by a column that is not the key.
    SelectByOwner,
    /// `SAVEPOINT s`.
    Savepoint,
    /// `ROLLBACK TO SAVEPOINT s`.
    RollbackToSavepoint,
    /// `INSERT INTO jobs VALUES ($1, NULL) [ON CONFLICT DO NOTHING]`.
    InsertJob {
        id: i64,
        do_nothing: bool,
    },
    /// A child workflow `(id, parent, executor)`, `RUNNING` at epoch 1.
    WfInsertChild(&'static str, &'static str, &'static str),
    /// Registers executor `.0` with a lease of `.1` ms (negative: already
    /// expired), workflow names `wf` (JSON object) and `other` (object or
    /// array), queue `q`, and a payload limit of 64 bytes.
    Register(&'static str, i64),
    /// Renews executor `.0`'s lease to `.1` ms.
    Heartbeat(&'static str, i64),
    /// Registers executor `.0` declaring schedule `s` (every second, of
    /// workflow `wf` on queue `q`).
    RegisterSchedule(&'static str),
    /// Locks schedule `.0` for firing (`FOR UPDATE SKIP LOCKED`); shows
    /// `none` or whether it is paused and its cursor (`clock` for one the
    /// database clock set: the backends' clocks differ).
    ScheduleLock(&'static str),
    /// Moves schedule `.0`'s cursor to `.1` (and its last tick with it).
    ScheduleAdvance(&'static str, i64),
    /// Pauses (`true`) or resumes schedule `.0`; shows whether it is paused
    /// after, or `none`.
    SchedulePause(&'static str, bool),
    /// `tandem.enqueue_workflow` into queue `q`.
    Enqueue {
        id: &'static str,
        name: &'static str,
        input: &'static str,
        dedup: Option<&'static str>,
        dedup_error: bool,
    },
    /// `tandem.enqueue_workflow` of `wf` (input `{}`) into queue `q` as
    /// workflow `.0` with concurrency key `.1`.
    EnqueueKeyed(&'static str, &'static str),
    /// A debounced `tandem.enqueue_workflow` of `wf` into `q` with key `.0`
    /// and input `.1` (delay and maximum wait an hour, so that it stays
    /// pending); shows the workflow it answered with by its input.
    EnqueueDebounced(&'static str, &'static str),
    /// Executor `.0` claims up to `.1` workflows named `wf` from queue `q`.
    Claim(&'static str, u32),
    /// The same, declaring `q` with a per-key concurrency limit of one:
    /// the claim locks the queue's row and takes at most one workflow per
    /// key, none of a key that has one running.
    ClaimPerKey(&'static str, u32),
    /// The same as code of version `v2` that accepts only `v2`: it skips
    /// the rows of other versions and stamps `v2` on rows that never ran.
    ClaimV2(&'static str, u32),
    /// `WfInsert` by code of version `v2`.
    WfInsertV2(&'static str, &'static str),
    /// `WfRecover` by code that accepts only `v2`: the executor's rows of
    /// other versions go back to their queue.
    WfRecoverV2(&'static str, Option<&'static str>),
    /// The same, declaring `q` limited (one running, two starts an hour):
    /// the claim locks the queue's row and counts before it takes rows.
    ClaimLimited(&'static str, u32),
    /// Re-enqueues the workflows of executors whose lease expired.
    Reclaim,
    /// The workflows `RUNNING` under executor `.0`, with their epochs.
    Owned(&'static str),
    /// `tandem.send` to workflow `.0` on topic `t`.
    MsgSend(&'static str, &'static str),
    /// Takes workflow `.0`'s oldest message on topic `t` under epoch `.1`.
    MsgTake(&'static str, i64),
    /// Cancels a workflow and its unfinished descendants.
    Cancel(&'static str),
    /// The same for the deadline, by the execution of epoch `.1` (fenced).
    CancelOverdue(&'static str, i64),
    /// Resumes a cancelled workflow and the cancelled members of its subtree.
    Resume(&'static str),
    /// Hands executor `.0`'s `RUNNING` workflows back to their queues.
    Release(&'static str),
    /// A retention batch of at most `.0` trees, of everything finished
    /// (an hour in the future on either backend's clock).
    Gc(u32),
    /// The same, dry: counts only.
    GcDry,
    /// `workflows_count` of everything, each status's count stopping at `.0`.
    Counts(u64),
    /// `queues_info`: each queue's depth, and whether one is ready.
    Queues,
    /// `executors_info`: each executor's versions and running count.
    Executors,
    /// Workflow `.0`'s waiting messages and events.
    Mailbox(&'static str),
    /// Sets workflow `.0`'s event `k` to `.1`.
    EventSet(&'static str, &'static str),
    /// Records (or reads) when workflow `.0`'s receive at step `.2` times
    /// out, under epoch `.1`, proposing `.3`.
    RecvDeadline(&'static str, i64, i32, i64),
    /// Suspends workflow `.0` under epoch `.1` until time 0 (due at once).
    Suspend(&'static str, i64),
    /// Forks workflow `.0` as `.1` from step `.2`.
    Fork(&'static str, &'static str, i32),
    Commit,
    Rollback,
    /// The connection drops (on PostgreSQL: `pg_terminate_backend`).
    Disconnect,
}

/// The state before the steps: jobs `(id, owner)`, `RUNNING` workflows
/// `(id, executor)` at epoch 1, and `RUNNING` children `(id, parent,
/// executor)` at epoch 1.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub jobs: Vec<(i64, Option<i64>)>,
    pub workflows: Vec<(&'static str, &'static str)>,
    pub children: Vec<(&'static str, &'static str, &'static str)>,
}

/// A backend the harness can drive.
pub trait Backend: Send + Sync + 'static {
    type S: Storage<Tx: 'static>;

    fn storage(&self) -> &Self::S;
    /// Empties every table and applies `setup`.
    fn reset(&self, setup: &Setup) -> impl Future<Output = ()> + Send;
    /// A session identifier for blocking detection, taken right after begin.
    fn tx_id(tx: &mut <Self::S as Storage>::Tx) -> impl Future<Output = u64> + Send;
    /// Whether session `id` waits for one of `others`.
    fn blocked(&self, id: u64, others: &[u64]) -> impl Future<Output = bool> + Send;
    /// Whether `ids` wait for each other in a cycle the database has not
    /// broken yet (PostgreSQL checks after `deadlock_timeout`).
    fn deadlock_pending(&self, ids: &[u64]) -> impl Future<Output = bool> + Send;
    /// Drops session `id`'s connection.
    fn disconnect(&self, id: u64) -> impl Future<Output = ()> + Send;
    fn app(
        tx: &mut <Self::S as Storage>::Tx,
        op: Op,
    ) -> impl Future<Output = Result<String, String>> + Send;
    /// Every table's committed rows.
    fn dump(&self) -> impl Future<Output = String> + Send;
    /// Lets the sessions make progress before looking again.
    fn pause() -> impl Future<Output = ()> + Send;
}

/// The SQLSTATE of a failure, or its kind when it has none.
fn error_label(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return format!("err {}", db.code().unwrap_or_default());
        }
        if let Some(mem) = e.downcast_ref::<MemError>() {
            return format!("err {}", mem.sqlstate());
        }
        current = e.source();
    }
    format!("err {error}")
}

/// The SQLSTATE and message of a failure raised by one of the engine's SQL
/// functions, whose messages are a contract too.
fn raised_label(e: &StorageError) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>() {
            return format!("err {} {}", db.code().unwrap_or_default(), db.message());
        }
        if let Some(mem) = err.downcast_ref::<MemError>() {
            return format!("err {} {mem}", mem.sqlstate());
        }
        current = err.source();
    }
    storage_label(e)
}

fn sorted(mut ids: Vec<String>) -> String {
    ids.sort();
    format!("[{}]", ids.join(", "))
}

fn storage_label(e: &StorageError) -> String {
    if e.kind() == ErrorKind::Fenced {
        "fenced".to_owned()
    } else {
        error_label(e)
    }
}

/// A schedule cursor as both backends show it: `clock` for one a database
/// clock set (PostgreSQL's is the real one, the model's reads 0 here);
/// scenarios move cursors to values past any clock of this century.
fn shown_cursor(ms: i64) -> String {
    if ms < 1_900_000_000_000 {
        "clock".to_owned()
    } else {
        ms.to_string()
    }
}

fn label<T>(r: StorageResult<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(t) => ok(t),
        Err(e) => storage_label(&e),
    }
}

/// The versions of the code running `op`: `v2` alone for the `V2` ops,
/// the default otherwise.
fn inserted_label(r: WorkflowInserted) -> String {
    match r {
        WorkflowInserted::Inserted => "inserted".to_owned(),
        WorkflowInserted::Existing(w) => format!(
            "existing e{} {} {}",
            w.owner_epoch,
            w.status,
            w.executor_id.unwrap_or_default()
        ),
    }
}

fn recorded_label(r: StepRecorded) -> String {
    match r {
        StepRecorded::Recorded => "recorded".to_owned(),
        StepRecorded::Exists => "exists".to_owned(),
    }
}

/// A group's answers, one label each: `[recorded, fenced, ...]`.
fn each_label<T>(answers: Vec<StorageResult<T>>, ok: impl Fn(T) -> String) -> String {
    let each: Vec<String> = answers.into_iter().map(|a| label(a, &ok)).collect();
    format!("[{}]", each.join(", "))
}

fn versions_of(op: Op) -> Versions {
    match op {
        Op::ClaimV2(..) | Op::WfInsertV2(..) | Op::WfRecoverV2(..) => Versions::only("v2"),
        _ => Versions::default(),
    }
}

async fn engine_op<T: Transaction>(tx: &mut T, op: Op) -> Option<String> {
    Some(match op {
        Op::WfInsert(id, executor) | Op::WfInsertV2(id, executor) => label(
            tx.workflow_insert(WorkflowInsert {
                version: versions_of(op).version,
                trace_parent: Some(trace_of(id)),
                id: id.to_owned(),
                name: "wf".to_owned(),
                input: "null".to_owned(),
                executor_id: executor.to_owned(),
                parent_id: None,
                parent_epoch: None,
                deadline_ms: None,
                now_ms: 0,
            })
            .await,
            inserted_label,
        ),
        Op::WfTrace(id) => label(tx.workflow_get(id).await, |r| match r {
            None => "none".to_owned(),
            Some(w) => format!("trace {:?}", w.trace_parent),
        }),
        Op::WfGet(id) => label(tx.workflow_get(id).await, |r| match r {
            None => "none".to_owned(),
            Some(w) => format!(
                "e{} {} {}",
                w.owner_epoch,
                w.status,
                w.executor_id.unwrap_or_default()
            ),
        }),
        Op::WfComplete(id, epoch) => label(
            tx.workflow_complete(WorkflowComplete {
                id: id.to_owned(),
                owner_epoch: epoch,
                status: Status::Success,
                output: Some("1".to_owned()),
                error: None,
                now_ms: 0,
            })
            .await,
            |()| "ok".to_owned(),
        ),
        Op::WfInsertMany(ids) => label(
            tx.workflow_insert_many(
                ids.iter()
                    .map(|id| WorkflowInsert {
                        version: DEFAULT_VERSION.to_owned(),
                        trace_parent: None,
                        id: (*id).to_owned(),
                        name: "wf".to_owned(),
                        input: "null".to_owned(),
                        executor_id: "b".to_owned(),
                        parent_id: None,
                        parent_epoch: None,
                        deadline_ms: None,
                        now_ms: 0,
                    })
                    .collect(),
            )
            .await,
            |inserted| each_label(inserted, inserted_label),
        ),
        Op::WfCompleteMany(entries) => label(
            tx.workflow_complete_many(
                entries
                    .iter()
                    .map(|&(id, epoch)| WorkflowComplete {
                        id: id.to_owned(),
                        owner_epoch: epoch,
                        status: Status::Success,
                        output: Some("1".to_owned()),
                        error: None,
                        now_ms: 0,
                    })
                    .collect(),
            )
            .await,
            |done| each_label(done, |()| "ok".to_owned()),
        ),
        Op::StepRecordMany(entries) => label(
            tx.step_record_many(
                entries
                    .iter()
                    .map(|&(id, step_id, epoch)| StepRecord {
                        version: None,
                        workflow_id: id.to_owned(),
                        step_id,
                        name: "s".to_owned(),
                        kind: StepKind::Plain,
                        output: Some("1".to_owned()),
                        error: None,
                        owner_epoch: epoch,
                        attempts: 1,
                        started_ms: 0,
                        now_ms: 0,
                    })
                    .collect(),
            )
            .await,
            |recorded| each_label(recorded, recorded_label),
        ),
        Op::WfRecover(executor, id) | Op::WfRecoverV2(executor, id) => label(
            tx.workflows_recover(WorkflowsRecover {
                versions: versions_of(op),
                executor_id: executor.to_owned(),
                workflow_id: id.map(str::to_owned),
                now_ms: 0,
            })
            .await,
            |mut rows| {
                // The row order of an UPDATE without ORDER BY is not part
                // of the contract (and not modelled).
                rows.sort_by(|a, b| a.id.cmp(&b.id));
                let rows: Vec<String> = rows
                    .iter()
                    .map(|w| format!("{}:e{}", shown_id(&w.id, &w.input), w.owner_epoch))
                    .collect();
                format!("[{}]", rows.join(", "))
            },
        ),
        Op::StepsLoad(id) => label(tx.steps_load(id).await, |rows| {
            format!("{:?}", rows.iter().map(|s| s.step_id).collect::<Vec<_>>())
        }),
        Op::StepGet(id, step_id) => label(tx.step_get(id, step_id).await, |row| match row {
            Some(s) => format!("{}:{}:{:?}", s.step_id, s.name, s.output),
            None => "none".to_owned(),
        }),
        Op::StepRecord(id, step_id, epoch) | Op::PatchRecordV2(id, step_id, epoch) => label(
            tx.step_record(StepRecord {
                version: matches!(op, Op::PatchRecordV2(..)).then(|| "v2".to_owned()),
                workflow_id: id.to_owned(),
                step_id,
                name: "s".to_owned(),
                kind: StepKind::Plain,
                output: Some("1".to_owned()),
                error: None,
                owner_epoch: epoch,
                attempts: 1,
                started_ms: 0,
                now_ms: 0,
            })
            .await,
            recorded_label,
        ),
        Op::WfInsertChild(id, parent, executor) => label(
            tx.workflow_insert(WorkflowInsert {
                version: DEFAULT_VERSION.to_owned(),
                trace_parent: None,
                id: id.to_owned(),
                name: "wf".to_owned(),
                input: "null".to_owned(),
                executor_id: executor.to_owned(),
                parent_id: Some(parent.to_owned()),
                // Started by the parent's first execution: fenced once a
                // cancel (or a claim) bumped its epoch.
                parent_epoch: Some(1),
                deadline_ms: None,
                now_ms: 0,
            })
            .await,
            |r| format!("{r:?}"),
        ),
        Op::Register(executor, lease_ms) => label(
            tx.executor_register(ExecutorRegister {
                versions: Versions::default(),
                schedules: Vec::new(),
                executor_id: executor.to_owned(),
                workflows: vec![
                    ("wf".to_owned(), vec!["object"]),
                    ("other".to_owned(), vec!["object", "array"]),
                ],
                queues: vec![queue_q()],
                payload_max_bytes: 64,
                notify_on_enqueue: true,
                now_ms: 0,
                lease_ms,
            })
            .await,
            |()| "ok".to_owned(),
        ),
        Op::RegisterSchedule(executor) => label(
            tx.executor_register(ExecutorRegister {
                versions: Versions::default(),
                schedules: vec![ScheduleDecl {
                    name: "s".to_owned(),
                    workflow: "wf".to_owned(),
                    cron: "* * * * * *".to_owned(),
                    time_zone: "UTC".to_owned(),
                    queue: "q".to_owned(),
                    catch_up: "latest".to_owned(),
                    catch_up_max: None,
                    grace_ms: 60_000,
                }],
                executor_id: executor.to_owned(),
                workflows: vec![("wf".to_owned(), vec!["object"])],
                queues: vec![queue_q()],
                payload_max_bytes: 64,
                notify_on_enqueue: true,
                now_ms: 0,
                lease_ms: 3_600_000,
            })
            .await,
            |()| "ok".to_owned(),
        ),
        Op::ScheduleLock(name) => label(tx.schedule_lock(name, 0).await, |s| {
            s.map_or_else(
                || "none".to_owned(),
                |s| format!("paused:{} cursor:{}", s.paused, shown_cursor(s.cursor_ms)),
            )
        }),
        Op::ScheduleAdvance(name, cursor) => label(
            tx.schedule_advance(name, cursor, Some(cursor), 0).await,
            |()| "ok".to_owned(),
        ),
        Op::SchedulePause(name, paused) => label(tx.schedule_pause(name, paused, 0).await, |s| {
            s.map_or_else(|| "none".to_owned(), |s| format!("paused:{}", s.paused))
        }),
        Op::Heartbeat(executor, lease_ms) => {
            label(tx.executor_heartbeat(executor, 0, lease_ms).await, |()| {
                "ok".to_owned()
            })
        }
        Op::Enqueue {
            id,
            name,
            input,
            dedup,
            dedup_error,
        } => match tx
            .workflow_enqueue(WorkflowEnqueue {
                name: name.to_owned(),
                input: input.to_owned(),
                queue: "q".to_owned(),
                workflow_id: Some(id.to_owned()),
                priority: 0,
                dedup_key: dedup.map(str::to_owned),
                delay_ms: None,
                dedup_error,
                concurrency_key: None,
                debounce_key: None,
                debounce_max_wait_ms: None,
                trace_parent: Some(trace_of(id)),
            })
            .await
        {
            Ok(id) => id,
            Err(e) => raised_label(&e),
        },
        Op::EnqueueKeyed(id, key) => match tx
            .workflow_enqueue(WorkflowEnqueue {
                name: "wf".to_owned(),
                input: "{}".to_owned(),
                queue: "q".to_owned(),
                workflow_id: Some(id.to_owned()),
                priority: 0,
                dedup_key: None,
                delay_ms: None,
                dedup_error: false,
                concurrency_key: Some(key.to_owned()),
                debounce_key: None,
                debounce_max_wait_ms: None,
                trace_parent: None,
            })
            .await
        {
            Ok(id) => id,
            Err(e) => raised_label(&e),
        },
        Op::EnqueueDebounced(key, input) => match tx
            .workflow_enqueue(WorkflowEnqueue {
                name: "wf".to_owned(),
                input: input.to_owned(),
                queue: "q".to_owned(),
                workflow_id: None,
                priority: 0,
                dedup_key: None,
                delay_ms: Some(3_600_000),
                dedup_error: false,
                concurrency_key: None,
                debounce_key: Some(key.to_owned()),
                debounce_max_wait_ms: Some(3_600_000),
                trace_parent: Some(trace_of(input)),
            })
            .await
        {
            Ok(id) => label(tx.workflow_get(&id).await, |w| {
                w.map_or_else(
                    || "missing".to_owned(),
                    |w| {
                        // The trace context is replaced with the input.
                        let traced = w.trace_parent == Some(trace_of(&w.input));
                        let shown = shown_id(&w.id, &w.input);
                        if traced {
                            shown
                        } else {
                            format!("{shown} (another trace)")
                        }
                    },
                )
            }),
            Err(e) => raised_label(&e),
        },
        Op::Claim(executor, limit)
        | Op::ClaimLimited(executor, limit)
        | Op::ClaimPerKey(executor, limit)
        | Op::ClaimV2(executor, limit) => label(
            tx.workflows_claim(WorkflowsClaim {
                versions: versions_of(op),
                queue: match op {
                    Op::ClaimLimited(..) => QueueLimits {
                        concurrency_global: Some(1),
                        rate_limit: Some((2, 3_600_000)),
                        ..queue_q()
                    },
                    Op::ClaimPerKey(..) => QueueLimits {
                        concurrency_per_key: Some(1),
                        retention_ms: None,
                        ..queue_q()
                    },
                    _ => queue_q(),
                },
                executor_id: executor.to_owned(),
                names: vec!["wf".to_owned()],
                limit,
                now_ms: 0,
            })
            .await,
            |rows| {
                sorted(
                    rows.iter()
                        .map(|w| format!("{}:e{}", shown_id(&w.id, &w.input), w.owner_epoch))
                        .collect(),
                )
            },
        ),
        // The model takes the engine's clock as the database's, PostgreSQL
        // reads its own: leases here are far from expiry either way.
        Op::Reclaim => label(tx.workflows_reclaim(0).await, |n| n.to_string()),
        Op::Owned(executor) => label(tx.workflows_owned(executor).await, |rows| {
            let rows: Vec<String> = rows.iter().map(|(id, e)| format!("{id}:e{e}")).collect();
            format!("[{}]", rows.join(" "))
        }),
        Op::Gc(_) | Op::GcDry => label(
            tx.workflows_gc(tandem::storage::WorkflowsGc {
                limit: if let Op::Gc(n) = op { n } else { 0 },
                older_than_ms: Some(-3_600_000),
                dry_run: matches!(op, Op::GcDry),
                now_ms: 0,
            })
            .await,
            |c| {
                format!(
                    "roots:{} workflows:{} steps:{} messages:{} events:{}",
                    c.roots, c.workflows, c.steps, c.messages, c.events
                )
            },
        ),
        Op::Counts(cap) => label(
            tx.workflows_count(tandem::storage::WorkflowFilter::default(), cap)
                .await,
            |counts| {
                let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s}:{n}")).collect();
                counts.join(" ")
            },
        ),
        Op::Queues => label(tx.queues_info(0).await, |queues| {
            let queues: Vec<String> = queues
                .iter()
                .map(|q| {
                    format!(
                        "{}:{}/{}{}",
                        q.limits.name,
                        q.enqueued,
                        q.running,
                        if q.oldest_ready_ms.is_some() {
                            ":ready"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            queues.join(" ")
        }),
        Op::Executors => label(tx.executors_info().await, |executors| {
            let executors: Vec<String> = executors
                .iter()
                .map(|e| {
                    format!(
                        "{}:{}:{:?}:{}",
                        e.id,
                        e.version.as_deref().unwrap_or("-"),
                        e.accepts,
                        e.running
                    )
                })
                .collect();
            executors.join(" ")
        }),
        Op::Mailbox(id) => {
            let messages = label(tx.messages_info(id).await, |m| {
                let m: Vec<String> = m
                    .iter()
                    .map(|m| format!("{}={}", m.topic, m.payload))
                    .collect();
                m.join(",")
            });
            let events = label(tx.events_info(id).await, |e| {
                let e: Vec<String> = e.iter().map(|e| format!("{}={}", e.key, e.value)).collect();
                e.join(",")
            });
            format!("messages [{messages}] events [{events}]")
        }
        Op::MsgSend(id, payload) => match tx.message_send(id, "t", payload, 0).await {
            Ok(()) => "ok".to_owned(),
            Err(e) => raised_label(&e),
        },
        Op::MsgTake(id, epoch) => label(tx.message_take(id, "t", epoch).await, |m| {
            m.unwrap_or_else(|| "none".to_owned())
        }),
        Op::Cancel(id) => label(tx.workflows_cancel(id, "stop", 0).await, sorted),
        Op::CancelOverdue(id, epoch) => {
            label(tx.workflow_cancel_overdue(id, epoch, 0).await, sorted)
        }
        Op::Resume(id) => label(tx.workflow_resume(id, 0).await, |r| r.to_string()),
        Op::Release(executor) => label(tx.workflows_release(executor, 0).await, |n| n.to_string()),
        Op::EventSet(id, value) => {
            label(tx.event_set(id, "k", value, 0).await, |()| "ok".to_owned())
        }
        Op::RecvDeadline(id, epoch, step, deadline) => {
            label(tx.recv_deadline(id, epoch, step, deadline).await, |t| {
                t.to_string()
            })
        }
        Op::Suspend(id, epoch) => label(tx.workflow_suspend(id, epoch, 0, 0).await, |()| {
            "ok".to_owned()
        }),
        Op::Fork(source, new_id, from_step) => label(
            tx.workflow_fork(WorkflowFork {
                source_id: source.to_owned(),
                new_id: new_id.to_owned(),
                from_step,
                now_ms: 0,
            })
            .await,
            |r| r.to_string(),
        ),
        _ => return None,
    })
}

/// A workflow ID as the scenarios show it: a generated one (a debounced
/// enqueue's; PostgreSQL's are random UUIDs, the model's a counter) by its
/// input, which the scenarios keep unique.
/// A trace context per text: the ID of an inserted or enqueued workflow,
/// or the input of a debounced enqueue (which replaces the pending one's).
fn trace_of(text: &str) -> String {
    let n = text
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("00-{:032x}-{:016x}-01", u128::from(n) + 1, n | 1)
}

fn shown_id(id: &str, input: &str) -> String {
    let generated = id.len() == 36 && id.as_bytes()[14] == b'4' && id.matches('-').count() == 4;
    if generated {
        format!("d{input}")
    } else {
        id.to_owned()
    }
}

/// The queue the scenarios use: unlimited.
fn queue_q() -> QueueLimits {
    QueueLimits {
        name: "q".to_owned(),
        concurrency_global: None,
        rate_limit: None,
        concurrency_per_key: None,
        retention_ms: None,
    }
}

/// A session: a task owning at most one open transaction.
struct Session {
    ops: mpsc::UnboundedSender<(Op, oneshot::Sender<String>)>,
    id: Arc<AtomicU64>,
}

impl Session {
    #[allow(clippy::disallowed_methods)] // the harness runs sessions as tasks
    fn spawn<B: Backend>(storage: B::S) -> Session {
        let (ops, mut inbox) = mpsc::unbounded_channel::<(Op, oneshot::Sender<String>)>();
        let id = Arc::new(AtomicU64::new(0));
        let current = id.clone();
        tokio::spawn(async move {
            let mut tx: Option<<B::S as Storage>::Tx> = None;
            while let Some((op, reply)) = inbox.recv().await {
                let out = match op {
                    Op::Commit => match tx.take() {
                        Some(t) => label(t.commit().await, |()| "ok".to_owned()),
                        None => "ok".to_owned(),
                    },
                    Op::Rollback => match tx.take() {
                        Some(t) => label(t.rollback().await, |()| "ok".to_owned()),
                        None => "ok".to_owned(),
                    },
                    Op::Disconnect => {
                        drop(tx.take());
                        "ok".to_owned()
                    }
                    op => {
                        if tx.is_none() {
                            let mut t = storage.begin().await.expect("begin");
                            current.store(B::tx_id(&mut t).await, Ordering::SeqCst);
                            tx = Some(t);
                        }
                        let t = tx.as_mut().expect("just begun");
                        match engine_op(t, op).await {
                            Some(out) => out,
                            None => B::app(t, op).await.unwrap_or_else(|e| e),
                        }
                    }
                };
                if tx.is_none() {
                    current.store(0, Ordering::SeqCst);
                }
                let _ = reply.send(out);
            }
        });
        Session { ops, id }
    }
}

fn op_label(op: Op) -> String {
    match op {
        Op::Select { unowned, lock } => {
            let mut s = String::from("select");
            if unowned {
                s.push_str(" unowned");
            }
            if let Some(lock) = lock {
                s.push_str(if lock.for_update {
                    " for update"
                } else {
                    " for no key update"
                });
                match lock.wait {
                    LockWait::SkipLocked => s.push_str(" skip locked"),
                    LockWait::NoWait => s.push_str(" nowait"),
                    _ => {}
                }
            }
            s
        }
        other => format!("{other:?}"),
    }
}

/// Runs `steps` (session index, operation) on `backend` after `setup` and
/// returns the outcome log, one line per event, then the final tables.
pub async fn run<B: Backend>(backend: &B, setup: &Setup, steps: &[(usize, Op)]) -> String {
    run_noting_races(backend, setup, steps).await.0
}

/// [`run`], and whether a step released a session while two or more
/// waited: which of them PostgreSQL lets go first may be a race between
/// server processes, so such a run may end either way there.
pub async fn run_noting_races<B: Backend>(
    backend: &B,
    setup: &Setup,
    steps: &[(usize, Op)],
) -> (String, bool) {
    let mut racy = false;
    backend.reset(setup).await;
    let count = steps.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
    let sessions: Vec<Session> = (0..count)
        .map(|_| Session::spawn::<B>(backend.storage().clone()))
        .collect();
    let mut pending: Vec<Option<oneshot::Receiver<String>>> = (0..count).map(|_| None).collect();
    let mut log = String::new();
    for &(s, op) in steps {
        if pending[s].is_some() {
            writeln!(log, "s{} {}: skipped (blocked)", s + 1, op_label(op)).unwrap();
            continue;
        }
        if op == Op::Disconnect {
            backend
                .disconnect(sessions[s].id.load(Ordering::SeqCst))
                .await;
        }
        let waiting_before = pending.iter().filter(|p| p.is_some()).count();
        let (reply, out) = oneshot::channel();
        sessions[s].ops.send((op, reply)).expect("session alive");
        pending[s] = Some(out);
        let done = settle(backend, &sessions, &mut pending).await;
        let mine = done.iter().find(|(d, _)| *d == s);
        writeln!(
            log,
            "s{} {}: {}",
            s + 1,
            op_label(op),
            mine.map_or("blocked", |(_, out)| out.as_str())
        )
        .unwrap();
        // Two or more sessions waiting when one is released: which of them
        // goes first may be a race (they may wait on one transaction).
        let released = done.iter().filter(|(d, _)| *d != s).count();
        racy |= released >= 1 && waiting_before >= 2;
        for (d, out) in done.iter().filter(|(d, _)| *d != s) {
            writeln!(log, "s{} done: {out}", d + 1).unwrap();
        }
    }
    // Roll back whatever is still open, so that blocked sessions finish.
    let mut rolled_back = vec![false; count];
    loop {
        for (d, out) in settle(backend, &sessions, &mut pending).await {
            if !rolled_back[d] {
                writeln!(log, "s{} done at end: {out}", d + 1).unwrap();
            }
        }
        let Some(s) = (0..count).find(|&s| pending[s].is_none() && !rolled_back[s]) else {
            break;
        };
        let (reply, out) = oneshot::channel();
        sessions[s].ops.send((Op::Rollback, reply)).expect("alive");
        pending[s] = Some(out);
        rolled_back[s] = true;
    }
    assert!(
        pending.iter().all(Option::is_none),
        "sessions still blocked after every transaction ended:\n{log}"
    );
    log.push_str(&backend.dump().await);
    (log, racy)
}

/// Waits until every pending step finished or is blocked (and no deadlock
/// is about to be broken); returns the finished ones by session.
async fn settle<B: Backend>(
    backend: &B,
    sessions: &[Session],
    pending: &mut [Option<oneshot::Receiver<String>>],
) -> Vec<(usize, String)> {
    let mut done = Vec::new();
    for _ in 0..100_000 {
        for (s, slot) in pending.iter_mut().enumerate() {
            if let Some(out) = slot
                && let Ok(out) = out.try_recv()
            {
                done.push((s, out));
                *slot = None;
            }
        }
        let waiting: Vec<usize> = (0..pending.len())
            .filter(|&s| pending[s].is_some())
            .collect();
        let ids: Vec<u64> = sessions
            .iter()
            .map(|s| s.id.load(Ordering::SeqCst))
            .filter(|&id| id != 0)
            .collect();
        let all_blocked = async || {
            for &s in &waiting {
                let id = sessions[s].id.load(Ordering::SeqCst);
                let others: Vec<u64> = ids.iter().copied().filter(|&o| o != id).collect();
                if id == 0 || !backend.blocked(id, &others).await {
                    return false;
                }
            }
            true
        };
        if all_blocked().await {
            let blocked: Vec<u64> = waiting
                .iter()
                .map(|&s| sessions[s].id.load(Ordering::SeqCst))
                .collect();
            // Look twice: a deadlock broken between the checks above would
            // otherwise pass for a stable state.
            if (blocked.len() < 2 || !backend.deadlock_pending(&blocked).await)
                && pending
                    .iter()
                    .all(|p| p.as_ref().is_none_or(|out| out.is_empty()))
                && all_blocked().await
            {
                // Sessions that one event released finish in an order only
                // timing decides (PostgreSQL wakes them in parallel): report
                // them by session.
                done.sort_by_key(|(s, _)| *s);
                return done;
            }
        }
        B::pause().await;
    }
    panic!("sessions neither finished nor blocked");
}

/// PostgreSQL, one database reused across scenarios.
pub struct Pg {
    storage: PgStorage,
    admin: PgPool,
}

impl Pg {
    pub async fn open() -> Pg {
        let url = crate::support::database().await;
        let storage = PgStorage::connect(&url).await.expect("connect");
        storage.migrate().await.expect("migrate");
        let admin = storage.pool().clone();
        // (The CHECK: a `Set(_, 13)` violates it.)
        sqlx::raw_sql(
            "CREATE TABLE jobs (id bigint PRIMARY KEY,
                                owner bigint CONSTRAINT jobs_owner_check CHECK (owner <> 13))",
        )
        .execute(&admin)
        .await
        .expect("create jobs");
        Pg { storage, admin }
    }
}

impl Backend for Pg {
    type S = PgStorage;

    fn storage(&self) -> &PgStorage {
        &self.storage
    }

    async fn reset(&self, setup: &Setup) {
        sqlx::raw_sql(
            "TRUNCATE tandem.workflows, tandem.steps, tandem.executors, tandem.workflow_names,
                      tandem.messages, tandem.events, tandem.schedules, jobs;
             DELETE FROM tandem.queues WHERE name <> 'default';
             UPDATE tandem.settings SET value = '1048576' WHERE key = 'payload_max_bytes';
             UPDATE tandem.settings SET value = 'true' WHERE key = 'notify_on_enqueue';",
        )
        .execute(&self.admin)
        .await
        .expect("truncate");
        for &(id, owner) in &setup.jobs {
            sqlx::query("INSERT INTO jobs VALUES ($1, $2)")
                .bind(id)
                .bind(owner)
                .execute(&self.admin)
                .await
                .expect("insert job");
        }
        seed_workflows(&self.storage, setup).await;
    }

    async fn tx_id(tx: &mut tandem::storage::postgres::PgTx) -> u64 {
        let conn = tx.conn();
        // Every waiter checks for deadlock after the same delay, so the
        // longest waiter on a cycle is the victim, as the model chooses. The
        // delay must exceed the time the harness takes from that waiter's
        // wait to the wait that closes the cycle (a few steps), even on a
        // loaded machine.
        sqlx::query("SET deadlock_timeout = '1s'")
            .execute(&mut *conn)
            .await
            .expect("set deadlock_timeout");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .expect("backend pid");
        pid as u64
    }

    async fn blocked(&self, id: u64, others: &[u64]) -> bool {
        let others: Vec<i32> = others.iter().map(|&o| o as i32).collect();
        sqlx::query_scalar("SELECT pg_isolation_test_session_is_blocked($1, $2)")
            .bind(id as i32)
            .bind(&others)
            .fetch_one(&self.admin)
            .await
            .expect("is blocked")
    }

    async fn deadlock_pending(&self, ids: &[u64]) -> bool {
        let ids: Vec<i32> = ids.iter().map(|&o| o as i32).collect();
        let edges: Vec<(i32, Vec<i32>)> =
            sqlx::query_as("SELECT pid, pg_blocking_pids(pid) FROM unnest($1::int[]) AS pid")
                .bind(&ids)
                .fetch_all(&self.admin)
                .await
                .expect("blocking pids");
        has_cycle(&edges)
    }

    async fn disconnect(&self, id: u64) {
        if id != 0 {
            sqlx::query("SELECT pg_terminate_backend($1, 5000)")
                .bind(id as i32)
                .execute(&self.admin)
                .await
                .expect("terminate backend");
        }
    }

    async fn app(tx: &mut tandem::storage::postgres::PgTx, op: Op) -> Result<String, String> {
        pg_app(tx.conn(), op).await.map_err(|e| error_label(&e))
    }

    async fn dump(&self) -> String {
        let jobs: Vec<(i64, Option<i64>)> =
            sqlx::query_as("SELECT id, owner FROM jobs ORDER BY id")
                .fetch_all(&self.admin)
                .await
                .expect("jobs");
        let workflows: Vec<(String, String, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, input::text, status, owner_epoch, executor_id FROM tandem.workflows
              ORDER BY id",
        )
        .fetch_all(&self.admin)
        .await
        .expect("workflows");
        let steps: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT workflow_id, step_id, owner_epoch FROM tandem.steps ORDER BY 1, 2",
        )
        .fetch_all(&self.admin)
        .await
        .expect("steps");
        let executors: Vec<String> =
            sqlx::query_scalar("SELECT id FROM tandem.executors ORDER BY id")
                .fetch_all(&self.admin)
                .await
                .expect("executors");
        let messages: Vec<String> = sqlx::query_scalar(
            "SELECT workflow_id || ':' || payload::text FROM tandem.messages ORDER BY id",
        )
        .fetch_all(&self.admin)
        .await
        .expect("messages");
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT workflow_id || '/' || key || ':' || value::text FROM tandem.events
              ORDER BY workflow_id, key",
        )
        .fetch_all(&self.admin)
        .await
        .expect("events");
        let waits: Vec<String> = sqlx::query_scalar(
            "SELECT id || '/' || wait_step || ':' || wait_until_ms FROM tandem.workflows
              WHERE wait_step IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.admin)
        .await
        .expect("waits");
        let versions: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT id, input::text, app_version FROM tandem.workflows")
                .fetch_all(&self.admin)
                .await
                .expect("versions");
        let versions = versions
            .into_iter()
            .map(|(id, input, v)| (shown_id(&id, &input), v))
            .collect();
        dump(
            jobs,
            workflows
                .into_iter()
                .map(|(id, input, s, e, x)| (shown_id(&id, &input), s, e, x.unwrap_or_default()))
                .collect(),
            steps,
        ) + &dump_more(executors, messages, events, waits, versions)
    }

    async fn pause() {
        crate::support::sleep(Duration::from_millis(1)).await;
    }
}

async fn seed_workflows<S: Storage>(storage: &S, setup: &Setup) {
    let top = setup.workflows.iter().map(|&(id, e)| (id, None, e));
    let children = setup.children.iter().map(|&(id, p, e)| (id, Some(p), e));
    for (id, parent, executor) in top.chain(children) {
        storage
            .workflow_insert(WorkflowInsert {
                version: DEFAULT_VERSION.to_owned(),
                trace_parent: None,
                id: id.to_owned(),
                name: "wf".to_owned(),
                input: "null".to_owned(),
                executor_id: executor.to_owned(),
                parent_id: parent.map(str::to_owned),
                parent_epoch: None,
                deadline_ms: None,
                now_ms: 0,
            })
            .await
            .expect("seed workflow");
    }
}

fn has_cycle(edges: &[(i32, Vec<i32>)]) -> bool {
    let next = |pid: i32| -> &[i32] {
        edges
            .iter()
            .find(|(p, _)| *p == pid)
            .map_or(&[][..], |(_, to)| &to[..])
    };
    edges.iter().any(|&(start, _)| {
        let mut stack = vec![start];
        let mut seen = Vec::new();
        while let Some(p) = stack.pop() {
            for &q in next(p) {
                if q == start {
                    return true;
                }
                if !seen.contains(&q) {
                    seen.push(q);
                    stack.push(q);
                }
            }
        }
        false
    })
}

fn dump(
    jobs: Vec<(i64, Option<i64>)>,
    workflows: Vec<(String, String, i64, String)>,
    steps: Vec<(String, i32, i64)>,
) -> String {
    let show = |o: Option<i64>| o.map_or("null".to_owned(), |o| o.to_string());
    let jobs: Vec<String> = jobs
        .into_iter()
        .map(|(id, owner)| format!("{id}:{}", show(owner)))
        .collect();
    // Sorted here, not by the database: generated IDs show by their input.
    let mut workflows = workflows;
    workflows.sort();
    let workflows: Vec<String> = workflows
        .into_iter()
        .map(|(id, status, epoch, executor)| format!("{id}:{status}:e{epoch}:{executor}"))
        .collect();
    let steps: Vec<String> = steps
        .into_iter()
        .map(|(id, step, epoch)| format!("{id}/{step}:e{epoch}"))
        .collect();
    format!(
        "jobs {}\nworkflows {}\nsteps {}\n",
        jobs.join(" "),
        workflows.join(" "),
        steps.join(" ")
    )
}

/// The tables of queues, messages and events, shown only when a scenario
/// used them (so the older scenarios' expectations stay as they were).
fn dump_more(
    executors: Vec<String>,
    messages: Vec<String>,
    events: Vec<String>,
    waits: Vec<String>,
    versions: Vec<(String, Option<String>)>,
) -> String {
    let mut out = String::new();
    // Shown once some code other than the default's ran (the `V2` ops), so
    // that the scenarios that never use versions keep their expectations.
    if versions
        .iter()
        .any(|(_, v)| v.as_deref().is_some_and(|v| v != DEFAULT_VERSION))
    {
        // Sorted here: generated IDs show by their input.
        let mut versions = versions;
        versions.sort();
        let versions: Vec<String> = versions
            .into_iter()
            .map(|(id, v)| format!("{id}:{}", v.as_deref().unwrap_or("-")))
            .collect();
        writeln!(out, "versions {}", versions.join(" ")).unwrap();
    }
    if !executors.is_empty() {
        writeln!(out, "executors {}", executors.join(" ")).unwrap();
    }
    if !messages.is_empty() {
        writeln!(out, "messages {}", messages.join(" ")).unwrap();
    }
    if !events.is_empty() {
        writeln!(out, "events {}", events.join(" ")).unwrap();
    }
    if !waits.is_empty() {
        writeln!(out, "waits {}", waits.join(" ")).unwrap();
    }
    out
}

async fn pg_app(conn: &mut PgConnection, op: Op) -> Result<String, sqlx::Error> {
    let ids = |rows: Vec<Option<i64>>| {
        let rows: Vec<String> = rows
            .into_iter()
            .map(|o| o.map_or("null".to_owned(), |o| o.to_string()))
            .collect();
        format!("[{}]", rows.join(", "))
    };
    let query = match op {
        Op::Select { unowned, lock } => {
            let mut sql = String::from("SELECT id FROM jobs");
            if unowned {
                sql.push_str(" WHERE owner IS NULL");
            }
            sql.push_str(" ORDER BY id LIMIT 1");
            if let Some(lock) = lock {
                sql.push_str(if lock.for_update {
                    " FOR UPDATE"
                } else {
                    " FOR NO KEY UPDATE"
                });
                match lock.wait {
                    LockWait::SkipLocked => sql.push_str(" SKIP LOCKED"),
                    LockWait::NoWait => sql.push_str(" NOWAIT"),
                    _ => {}
                }
            }
            let rows: Vec<Option<i64>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await?;
            return Ok(ids(rows));
        }
        Op::ClaimLocked(owner) => sqlx::query_scalar(
            "UPDATE jobs SET owner = $1 WHERE id = (SELECT id FROM jobs WHERE owner IS NULL
              ORDER BY id LIMIT 1 FOR UPDATE) RETURNING id",
        )
        .bind(owner),
        Op::ClaimUnlocked {
            owner,
            recheck: false,
        } => sqlx::query_scalar(
            "UPDATE jobs SET owner = $1
              WHERE id = (SELECT min(id) FROM jobs WHERE owner IS NULL) RETURNING id",
        )
        .bind(owner),
        Op::ClaimUnlocked {
            owner,
            recheck: true,
        } => sqlx::query_scalar(
            "UPDATE jobs SET owner = $1
              WHERE id = (SELECT min(id) FROM jobs WHERE owner IS NULL) AND owner IS NULL
              RETURNING id",
        )
        .bind(owner),
        Op::Read(id) => sqlx::query_scalar("SELECT owner FROM jobs WHERE id = $1").bind(id),
        Op::Set(id, value) => {
            sqlx::query_scalar("UPDATE jobs SET owner = $2 WHERE id = $1 RETURNING owner")
                .bind(id)
                .bind(value)
        }
        Op::Incr(id) => sqlx::query_scalar(
            "UPDATE jobs SET owner = coalesce(owner, 0) + 1 WHERE id = $1 RETURNING owner",
        )
        .bind(id),
        Op::Upsert(id) => sqlx::query_scalar(
            "INSERT INTO jobs VALUES ($1, 1)
                 ON CONFLICT (id) DO UPDATE SET owner = coalesce(jobs.owner, 0) + 1
             RETURNING owner",
        )
        .bind(id),
        Op::SelectByOwner => sqlx::query_scalar(
            "SELECT id FROM jobs ORDER BY owner DESC NULLS LAST, id LIMIT 1 FOR UPDATE",
        ),
        Op::Savepoint | Op::RollbackToSavepoint => {
            let sql = if op == Op::Savepoint {
                "SAVEPOINT s"
            } else {
                "ROLLBACK TO SAVEPOINT s"
            };
            sqlx::query(sql).execute(&mut *conn).await?;
            return Ok("ok".to_owned());
        }
        Op::InsertJob { id, do_nothing } => {
            let sql = if do_nothing {
                "INSERT INTO jobs VALUES ($1, NULL) ON CONFLICT DO NOTHING RETURNING id"
            } else {
                "INSERT INTO jobs VALUES ($1, NULL) RETURNING id"
            };
            let rows: Vec<i64> = sqlx::query_scalar(sql)
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
            return Ok(if rows.is_empty() {
                "nothing"
            } else {
                "inserted"
            }
            .to_owned());
        }
        other => unreachable!("not an application op: {other:?}"),
    };
    let rows: Vec<Option<i64>> = query.fetch_all(&mut *conn).await?;
    Ok(ids(rows))
}

/// The memory model.
pub struct Mem {
    pub storage: MemStorage,
}

impl Mem {
    pub fn new(storage: MemStorage) -> Mem {
        storage.add_check("jobs", "jobs_owner_check", |v| owner(v) != Some(13));
        Mem { storage }
    }
}

fn owner(v: &Value) -> Option<i64> {
    v["owner"].as_i64()
}

async fn mem_app(conn: &mut MemConn, op: Op) -> Result<String, MemError> {
    let show = |rows: Vec<Option<i64>>| {
        let rows: Vec<String> = rows
            .into_iter()
            .map(|o| o.map_or("null".to_owned(), |o| o.to_string()))
            .collect();
        format!("[{}]", rows.join(", "))
    };
    let key_ids = |rows: Vec<(tandem::storage::memory::Key, Value)>| -> Vec<i64> {
        rows.into_iter()
            .map(|(k, _)| match k {
                tandem::storage::memory::Key::Int(i) => i,
                other => panic!("unexpected key {other:?}"),
            })
            .collect()
    };
    let unowned = |_: &tandem::storage::memory::Key, v: &Value| owner(v).is_none();
    Ok(match op {
        Op::Select {
            unowned: only,
            lock,
        } => {
            let mut scan = Scan::all().limit(1);
            if only {
                scan = scan.filter(unowned);
            }
            if let Some(lock) = lock {
                scan = scan.lock(lock);
            }
            let rows = conn.scan("jobs", scan).await?;
            show(key_ids(rows).into_iter().map(Some).collect())
        }
        Op::ClaimLocked(o) => {
            let scan = Scan::all()
                .filter(unowned)
                .limit(1)
                .lock(RowLock::for_update());
            let mut claimed = Vec::new();
            for id in key_ids(conn.scan("jobs", scan).await?) {
                if conn
                    .update("jobs", id, |_| Some(json!({ "owner": o })))
                    .await?
                    .is_some()
                {
                    claimed.push(Some(id));
                }
            }
            show(claimed)
        }
        Op::ClaimUnlocked { owner: o, recheck } => {
            let min = key_ids(
                conn.scan("jobs", Scan::all().filter(unowned).limit(1))
                    .await?,
            );
            let mut claimed = Vec::new();
            for id in min {
                let updated = conn
                    .update("jobs", id, |v| {
                        (!recheck || owner(v).is_none()).then(|| json!({ "owner": o }))
                    })
                    .await?;
                if updated.is_some() {
                    claimed.push(Some(id));
                }
            }
            show(claimed)
        }
        Op::Read(id) => show(
            conn.get("jobs", id)
                .await?
                .map(|v| owner(&v))
                .into_iter()
                .collect(),
        ),
        Op::Set(id, value) => show(
            conn.update("jobs", id, |_| Some(json!({ "owner": value })))
                .await?
                .map(|v| owner(&v))
                .into_iter()
                .collect(),
        ),
        Op::Incr(id) => show(
            conn.update("jobs", id, |v| {
                Some(json!({ "owner": owner(v).unwrap_or(0) + 1 }))
            })
            .await?
            .map(|v| owner(&v))
            .into_iter()
            .collect(),
        ),
        Op::Upsert(id) => show(vec![owner(
            &conn
                .upsert(
                    "jobs",
                    id,
                    json!({ "owner": 1 }),
                    |v| json!({ "owner": owner(v).unwrap_or(0) + 1 }),
                )
                .await?,
        )]),
        Op::SelectByOwner => {
            let scan = Scan::all()
                .order_by(|_, v| owner(v).map(|o| -o))
                .limit(1)
                .lock(RowLock::for_update());
            show(
                key_ids(conn.scan("jobs", scan).await?)
                    .into_iter()
                    .map(Some)
                    .collect(),
            )
        }
        Op::Savepoint => {
            conn.savepoint("s").await?;
            "ok".to_owned()
        }
        Op::RollbackToSavepoint => {
            conn.rollback_to_savepoint("s").await?;
            "ok".to_owned()
        }
        Op::InsertJob { id, do_nothing } => {
            let inserted = if do_nothing {
                conn.insert_or_ignore("jobs", id, json!({ "owner": null }))
                    .await?
            } else {
                conn.insert("jobs", id, json!({ "owner": null })).await?;
                true
            };
            if inserted { "inserted" } else { "nothing" }.to_owned()
        }
        other => unreachable!("not an application op: {other:?}"),
    })
}

impl Backend for Mem {
    type S = MemStorage;

    fn storage(&self) -> &MemStorage {
        &self.storage
    }

    async fn reset(&self, setup: &Setup) {
        // A fresh model has no rows; the harness makes one per scenario.
        assert!(
            self.storage.workflows().is_empty() && self.storage.rows("jobs").is_empty(),
            "a memory backend runs one scenario"
        );
        let jobs = setup.jobs.clone();
        self.storage
            .with_conn(async |conn| {
                for (id, owner) in jobs {
                    conn.insert("jobs", id, json!({ "owner": owner })).await?;
                }
                Ok(())
            })
            .await
            .expect("seed jobs");
        seed_workflows(&self.storage, setup).await;
    }

    async fn tx_id(tx: &mut tandem::storage::memory::MemTx) -> u64 {
        tx.tx_id()
    }

    async fn blocked(&self, id: u64, _others: &[u64]) -> bool {
        self.storage.is_waiting(id)
    }

    async fn deadlock_pending(&self, _ids: &[u64]) -> bool {
        // The model breaks a cycle the moment it forms.
        false
    }

    async fn disconnect(&self, _id: u64) {}

    async fn app(tx: &mut tandem::storage::memory::MemTx, op: Op) -> Result<String, String> {
        mem_app(tx.conn(), op).await.map_err(|e| error_label(&e))
    }

    async fn dump(&self) -> String {
        let jobs = self
            .storage
            .rows("jobs")
            .into_iter()
            .map(|(k, v)| match k {
                tandem::storage::memory::Key::Int(i) => (i, owner(&v)),
                other => panic!("unexpected key {other:?}"),
            })
            .collect();
        let workflows = self
            .storage
            .workflows()
            .into_iter()
            .map(|w| {
                (
                    shown_id(&w.id, &w.input),
                    w.status.to_string(),
                    w.owner_epoch,
                    w.executor_id.unwrap_or_default(),
                )
            })
            .collect();
        let steps = self
            .storage
            .steps()
            .into_iter()
            .map(|s| (s.workflow_id, s.step_id, s.owner_epoch))
            .collect();
        let executors = self.storage.executors();
        let messages = self
            .storage
            .messages()
            .into_iter()
            .map(|m| format!("{}:{}", m.workflow_id, m.payload))
            .collect();
        let events = self
            .storage
            .events()
            .into_iter()
            .map(|(w, k, e)| format!("{w}/{k}:{}", e.value))
            .collect();
        let waits = self
            .storage
            .workflows()
            .into_iter()
            .filter_map(|w| Some(format!("{}/{}:{}", w.id, w.wait_step?, w.wait_until_ms?)))
            .collect();
        let versions = self
            .storage
            .workflows()
            .into_iter()
            .map(|w| (shown_id(&w.id, &w.input), w.version))
            .collect();
        dump(jobs, workflows, steps) + &dump_more(executors, messages, events, waits, versions)
    }

    async fn pause() {
        tokio::task::yield_now().await;
    }
}
