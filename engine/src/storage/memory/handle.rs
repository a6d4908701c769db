//! The memory backend's handle: [`MemStorage`], its errors, the fault
//! API, wake-ups, and the [`Storage`] and [`Transaction`] implementations
//! that forward to the operations on [`MemConn`].

use super::*;

/// Where the fault hook is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// Opening a transaction (connecting).
    Begin,
    /// Before a statement runs; the name of the operation
    /// (`"step_record"`, `"app.update"`, ...).
    Statement(&'static str),
    /// At commit.
    Commit,
}

/// A fault the hook can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// At [`FaultPoint::Commit`]: the commit happens, but the client is told
    /// the connection dropped (outcome unknown). Elsewhere: as
    /// `ConnectionLost`.
    LoseCommitAck,
    /// The connection drops: the transaction rolls back and the operation
    /// fails with [`ErrorKind::Unavailable`].
    ConnectionLost,
    /// The statement (or commit) fails with a serialization failure, as
    /// PostgreSQL's SERIALIZABLE level may: the transaction rolls back and
    /// the operation fails with [`ErrorKind::Conflict`].
    SerializationFailure,
}

/// Decides, at each [`FaultPoint`], whether to inject a [`Fault`]. Called
/// with the storage's lock held: it must not use the storage.
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> Option<Fault> + Send + Sync>;

/// A deliberately wrong model, to show that the conformance suite catches
/// such bugs.
#[cfg(feature = "model-defects")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Defect {
    /// `SKIP LOCKED` waits for a locked row instead of skipping it.
    SkipLockedDoesNotSkip,
    /// An UPDATE or locking read that finds a newer version does not
    /// re-check its condition on it (no EvalPlanQual).
    NoRecheckAfterWait,
}

/// An error of the memory backend, named like the PostgreSQL error it
/// models (SQLSTATE in [`MemError::sqlstate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemError {
    /// This transaction was chosen as a deadlock victim (40P01).
    #[error("deadlock detected")]
    Deadlock,
    /// An injected serialization failure (40001).
    #[error("could not serialize access due to concurrent update")]
    SerializationFailure,
    /// A `NOWAIT` lock request met a locked row (55P03).
    #[error("could not obtain lock on row in relation {table:?}")]
    LockNotAvailable {
        /// The table.
        table: String,
    },
    /// An INSERT met an existing key (23505).
    #[error("duplicate key value violates unique constraint of {table:?}: key {key}")]
    UniqueViolation {
        /// The table.
        table: String,
        /// The key, as text.
        key: String,
    },
    /// An earlier statement of this transaction failed; only rollback is
    /// possible (25P02).
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
    /// The (simulated) connection dropped; the transaction rolled back, or
    /// for a commit the outcome is unknown (08006).
    #[error("connection to the database lost")]
    ConnectionLost,
    /// `ROLLBACK TO` or `RELEASE` of a savepoint that does not exist
    /// (3B001).
    #[error("savepoint {name:?} does not exist")]
    NoSuchSavepoint {
        /// The name given.
        name: String,
    },
    /// A row violates a CHECK constraint of its table (23514).
    #[error("new row for relation {table:?} violates check constraint {constraint:?}")]
    CheckViolation {
        /// The table.
        table: String,
        /// The constraint's name.
        constraint: String,
    },
    /// An error one of the engine's SQL functions raises
    /// (`tandem.enqueue_workflow`, `tandem.send`), or a bad `jsonb` cast
    /// (22P02): the same SQLSTATE and message as PostgreSQL's.
    #[error("{message}")]
    Raised {
        /// The SQLSTATE.
        sqlstate: &'static str,
        /// The message, a stable contract of the SQL functions.
        message: String,
    },
}

impl MemError {
    /// The storage error kind the engine's retry logic reads.
    pub fn kind(&self) -> ErrorKind {
        // Through the one mapping the PostgreSQL backend uses, so that the
        // same failure is retried (or not) alike on both.
        classify_sqlstate(self.sqlstate())
    }

    /// The SQLSTATE PostgreSQL reports for the same failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MemError::Deadlock => "40P01",
            MemError::SerializationFailure => "40001",
            MemError::LockNotAvailable { .. } => "55P03",
            MemError::UniqueViolation { .. } => "23505",
            MemError::CheckViolation { .. } => "23514",
            MemError::NoSuchSavepoint { .. } => "3B001",
            MemError::TransactionAborted => "25P02",
            MemError::ConnectionLost => "08006",
            MemError::Raised { sqlstate, .. } => sqlstate,
        }
    }
}

impl From<MemError> for StorageError {
    fn from(e: MemError) -> Self {
        StorageError::new(e.kind(), e)
    }
}

/// Workflow storage in memory: a model of PostgreSQL (see the module docs).
/// Clones share one database.
#[derive(Clone)]
pub struct MemStorage {
    pub(super) db: Arc<Mutex<Db>>,
    /// `NOTIFY tandem_work`: one message per commit that enqueued work or
    /// sent a message while `notify_on_enqueue` was on.
    pub(super) wakeups: tokio::sync::broadcast::Sender<()>,
    /// The crash-test interceptor of this handle (not shared by clones made
    /// before it was installed).
    pub(super) hook: Hook,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self {
            db: Arc::new(Mutex::new(Db::migrated())),
            // Listeners only need to know that something happened: a
            // lagging listener's missed wake-ups collapse into one.
            wakeups: tokio::sync::broadcast::channel(16).0,
            hook: Hook::default(),
        }
    }
}

/// Wake-ups of a [`MemStorage`]: commits that enqueued work or sent a
/// message (PostgreSQL's `LISTEN tandem_work`).
#[derive(Debug)]
pub struct MemListener {
    pub(super) wakeups: tokio::sync::broadcast::Receiver<()>,
}

impl Listener for MemListener {
    async fn recv(&mut self) -> StorageResult<()> {
        use tokio::sync::broadcast::error::RecvError;
        match self.wakeups.recv().await {
            Ok(()) | Err(RecvError::Lagged(_)) => Ok(()),
            Err(RecvError::Closed) => Err(MemError::ConnectionLost.into()),
        }
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStorage").finish_non_exhaustive()
    }
}

impl MemStorage {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// This model with a deliberate bug (tests of the conformance suite).
    #[cfg(feature = "model-defects")]
    pub fn with_defect(self, defect: Defect) -> Self {
        {
            let mut db = self.db();
            match defect {
                Defect::SkipLockedDoesNotSkip => db.defects.skip_locked_does_not_skip = true,
                Defect::NoRecheckAfterWait => db.defects.update_ignores_newer_versions = true,
            }
        }
        self
    }

    /// `ALTER TABLE table ADD CONSTRAINT name CHECK (...)`: every later
    /// insert, update or upsert of a row of `table` for which `check` is
    /// false fails with [`MemError::CheckViolation`] (23514) and aborts its
    /// transaction. Rows already there are not checked.
    pub fn add_check(
        &self,
        table: &str,
        name: &str,
        check: impl Fn(&serde_json::Value) -> bool + Send + Sync + 'static,
    ) {
        self.db()
            .checks
            .entry(table.to_owned())
            .or_default()
            .push((name.to_owned(), std::sync::Arc::new(check)));
    }

    /// A handle on the same database whose transactions report every
    /// engine statement and commit to `interceptor`, which may inject
    /// faults (for crash tests; see
    /// [`storage::intercept`](crate::storage::intercept)).
    pub fn with_interceptor(&self, interceptor: Arc<dyn Interceptor>) -> Self {
        Self {
            hook: Hook::new(interceptor),
            ..self.clone()
        }
    }

    /// This handle without an interceptor (same database).
    #[cfg(feature = "testing")]
    pub(crate) fn without_interceptor(&self) -> Self {
        Self {
            hook: Hook::default(),
            ..self.clone()
        }
    }

    /// Installs (or removes) the fault hook.
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        self.db().hook = hook;
    }

    /// Whether transaction `tx_id` ([`MemConn::tx_id`]) is blocked, waiting
    /// for a lock or for another transaction to end.
    pub fn is_waiting(&self, tx_id: u64) -> bool {
        self.db().txs.is_waiting(tx_id)
    }

    /// Every committed workflow row, by ID (for tests and invariant checks).
    pub fn workflows(&self) -> Vec<WorkflowRecord> {
        let db = self.db();
        db.workflows
            .committed(&db.txs)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Advances the database clock (see `docs/memory-backend.md`): the time
    /// `workflow_enqueue` stamps, which has no `now_ms` of its own.
    pub fn advance_clock(&self, now_ms: i64) {
        self.db().tick(now_ms);
    }

    /// The IDs of the committed executor rows, in order.
    pub fn executors(&self) -> Vec<String> {
        let db = self.db();
        db.executors
            .committed(&db.txs)
            .into_iter()
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every committed message, in send order.
    pub fn messages(&self) -> Vec<MessageRecord> {
        let db = self.db();
        db.messages
            .committed(&db.txs)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every committed checkpoint row, by workflow ID and step ID.
    pub fn steps(&self) -> Vec<StepRecordRow> {
        let db = self.db();
        db.steps
            .committed(&db.txs)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every committed schedule row, by name.
    pub fn schedules(&self) -> Vec<ScheduleRecord> {
        let db = self.db();
        db.schedules
            .committed(&db.txs)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every committed event, by workflow ID and key.
    pub fn events(&self) -> Vec<(String, String, EventRecord)> {
        let db = self.db();
        db.events
            .committed(&db.txs)
            .into_iter()
            .map(|((w, k), v)| (w.clone(), k.clone(), v.clone()))
            .collect()
    }

    /// Every committed version of every workflow row, with the commit
    /// sequence number that wrote it, in commit order: the history the
    /// simulator's fencing check reads.
    pub fn workflow_history(&self) -> Vec<(u64, WorkflowRecord)> {
        let db = self.db();
        db.workflows
            .history(&db.txs)
            .into_iter()
            .map(|(csn, _, v)| (csn, v.clone()))
            .collect()
    }

    /// Every committed deletion of a workflow row: the commit sequence
    /// number that deleted it and its ID, in commit order.
    pub fn workflow_deletions(&self) -> Vec<(u64, String)> {
        let db = self.db();
        db.workflows
            .deletions(&db.txs)
            .into_iter()
            .map(|(csn, k)| (csn, k.clone()))
            .collect()
    }

    /// Every committed deletion of a checkpoint row, in commit order.
    pub fn step_deletions(&self) -> Vec<(u64, (String, i32))> {
        let db = self.db();
        db.steps
            .deletions(&db.txs)
            .into_iter()
            .map(|(csn, k)| (csn, k.clone()))
            .collect()
    }

    /// Every committed version of every schedule row, with the commit
    /// sequence number that wrote it, in commit order.
    pub fn schedule_history(&self) -> Vec<(u64, ScheduleRecord)> {
        let db = self.db();
        db.schedules
            .history(&db.txs)
            .into_iter()
            .map(|(csn, _, v)| (csn, v.clone()))
            .collect()
    }

    /// Every committed version of every checkpoint row, with its commit
    /// sequence number, in commit order.
    pub fn step_history(&self) -> Vec<(u64, StepRecordRow)> {
        let db = self.db();
        db.steps
            .history(&db.txs)
            .into_iter()
            .map(|(csn, _, v)| (csn, v.clone()))
            .collect()
    }

    /// The commit sequence number of the newest commit: a point in the
    /// order of [`workflow_history`](Self::workflow_history).
    pub fn commit_seq(&self) -> u64 {
        self.db().txs.csn()
    }

    /// The committed rows of an application table, in key order.
    pub fn rows(&self, table: &str) -> Vec<(Key, Value)> {
        let db = self.db();
        db.app.get(table).map_or_else(Vec::new, |t| {
            t.committed(&db.txs)
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Runs `f` in a transaction of its own and commits (application writes
    /// outside any step, e.g. setting up tables).
    pub async fn with_conn<R>(
        &self,
        f: impl AsyncFnOnce(&mut MemConn) -> Result<R, MemError>,
    ) -> Result<R, MemError> {
        let mut tx = self.begin_conn()?;
        let r = f(&mut tx).await?;
        tx.commit_conn()?;
        Ok(r)
    }

    pub(super) fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock leaves the model in some state; the
        // tests that panicked report it, others may go on.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn begin_conn(&self) -> Result<MemConn, MemError> {
        let mut db = self.db();
        if db.fault(FaultPoint::Begin).is_some() {
            return Err(MemError::ConnectionLost);
        }
        let xid = db.begin();
        Ok(MemConn {
            storage: self.clone(),
            s: Session {
                xid,
                cid: 0,
                state: State::Open,
                notify: false,
                savepoints: Vec::new(),
            },
        })
    }
}

/// A transaction on [`MemStorage`]; the application sees its [`MemConn`].
#[derive(Debug)]
pub struct MemTx {
    pub(super) conn: MemConn,
    tap: Tap,
}

impl MemTx {
    /// Consults the interceptor before statement `op` and injects its fault.
    async fn at(
        &mut self,
        op: &'static str,
        workflow_id: Option<&str>,
        step: Option<&str>,
    ) -> StorageResult<()> {
        match self.tap.statement(op, workflow_id, step).await {
            Verdict::Proceed => Ok(()),
            Verdict::SerializationFailure => {
                Err(self.conn.inject(Fault::SerializationFailure).into())
            }
            Verdict::ConnectionLost | Verdict::LoseAck => {
                Err(self.conn.inject(Fault::ConnectionLost).into())
            }
        }
    }

    /// The transaction's ID (for [`MemStorage::is_waiting`]).
    pub fn tx_id(&self) -> u64 {
        self.conn.tx_id()
    }
}

impl Storage for MemStorage {
    type Tx = MemTx;
    type Conn = MemConn;
    type Listener = MemListener;

    async fn listen(&self) -> StorageResult<MemListener> {
        Ok(MemListener {
            wakeups: self.wakeups.subscribe(),
        })
    }

    async fn begin(&self) -> StorageResult<MemTx> {
        Ok(MemTx {
            conn: self.begin_conn()?,
            tap: self.hook.tap(),
        })
    }

    async fn migrate(&self) -> StorageResult<()> {
        // The engine's tables always exist in the model.
        Ok(())
    }

    fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(mem) = e.downcast_ref::<MemError>() {
                let kind = mem.kind();
                return matches!(kind, ErrorKind::Conflict | ErrorKind::Unavailable)
                    .then_some(kind);
            }
            current = e.source();
        }
        None
    }
}

impl Transaction for MemTx {
    type Conn = MemConn;

    fn conn(&mut self) -> &mut MemConn {
        self.tap.app();
        &mut self.conn
    }

    async fn workflow_insert(&mut self, params: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        self.at("workflow_insert", Some(&params.id), None).await?;
        self.conn.workflow_insert(params).await
    }

    async fn workflow_get(&mut self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        self.at("workflow_get", Some(id), None).await?;
        Ok(self.conn.workflow_get(id).await?)
    }

    async fn workflow_complete(&mut self, params: WorkflowComplete) -> StorageResult<()> {
        self.at("workflow_complete", Some(&params.id), None).await?;
        self.conn.workflow_complete(params).await
    }

    async fn workflows_recover(
        &mut self,
        params: WorkflowsRecover,
    ) -> StorageResult<Vec<WorkflowRow>> {
        self.at("workflows_recover", params.workflow_id.as_deref(), None)
            .await?;
        let rows = self.conn.workflows_recover(params).await?;
        self.tap.rows(rows.len());
        Ok(rows)
    }

    async fn steps_load(&mut self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        self.at("steps_load", Some(workflow_id), None).await?;
        Ok(self.conn.steps_load(workflow_id).await?)
    }

    async fn step_get(
        &mut self,
        workflow_id: &str,
        step_id: i32,
    ) -> StorageResult<Option<StepRow>> {
        self.at("step_get", Some(workflow_id), None).await?;
        Ok(self.conn.step_get(workflow_id, step_id).await?)
    }

    async fn step_record(&mut self, params: StepRecord) -> StorageResult<StepRecorded> {
        self.at("step_record", Some(&params.workflow_id), Some(&params.name))
            .await?;
        self.conn.step_record(params).await
    }

    async fn workflow_insert_many(
        &mut self,
        params: Vec<WorkflowInsert>,
    ) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
        let first = params.first().map(|p| p.id.clone());
        self.at("workflow_insert_many", first.as_deref(), None)
            .await?;
        self.conn.workflow_insert_many(params).await
    }

    async fn step_record_many(
        &mut self,
        params: Vec<StepRecord>,
    ) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
        let first = params.first().map(|p| p.workflow_id.clone());
        self.at("step_record_many", first.as_deref(), None).await?;
        self.conn.step_record_many(params).await
    }

    async fn workflow_complete_many(
        &mut self,
        params: Vec<WorkflowComplete>,
    ) -> StorageResult<Vec<StorageResult<()>>> {
        let first = params.first().map(|p| p.id.clone());
        self.at("workflow_complete_many", first.as_deref(), None)
            .await?;
        self.conn.workflow_complete_many(params).await
    }

    async fn executor_register(&mut self, params: ExecutorRegister) -> StorageResult<()> {
        self.at("executor_register", None, None).await?;
        Ok(self.conn.executor_register(params).await?)
    }

    async fn executor_heartbeat(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StorageResult<()> {
        self.at("executor_heartbeat", None, None).await?;
        Ok(self
            .conn
            .executor_heartbeat(executor_id, now_ms, lease_ms)
            .await?)
    }

    async fn workflows_reclaim(&mut self, now_ms: i64) -> StorageResult<u64> {
        self.at("workflows_reclaim", None, None).await?;
        Ok(self.conn.workflows_reclaim(now_ms).await?)
    }

    async fn workflows_claim(&mut self, params: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        self.at("workflows_claim", None, None).await?;
        let rows = self.conn.workflows_claim(params).await?;
        self.tap.rows(rows.len());
        Ok(rows)
    }

    async fn workflows_release(&mut self, executor_id: &str, now_ms: i64) -> StorageResult<u64> {
        self.at("workflows_release", None, None).await?;
        Ok(self.conn.workflows_release(executor_id, now_ms).await?)
    }

    async fn workflow_enqueue(&mut self, params: WorkflowEnqueue) -> StorageResult<String> {
        self.at("workflow_enqueue", params.workflow_id.as_deref(), None)
            .await?;
        Ok(self.conn.workflow_enqueue(params).await?)
    }

    async fn workflow_suspend(
        &mut self,
        id: &str,
        owner_epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.at("workflow_suspend", Some(id), None).await?;
        self.conn
            .workflow_suspend(id, owner_epoch, run_after_ms, now_ms)
            .await
    }

    async fn message_send(
        &mut self,
        workflow_id: &str,
        topic: &str,
        payload: &str,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.at("message_send", Some(workflow_id), None).await?;
        Ok(self
            .conn
            .message_send(workflow_id, topic, payload, now_ms)
            .await?)
    }

    async fn recv_deadline(
        &mut self,
        workflow_id: &str,
        owner_epoch: i64,
        step_id: i32,
        deadline_ms: i64,
    ) -> StorageResult<i64> {
        self.at("recv_deadline", Some(workflow_id), None).await?;
        self.conn
            .recv_deadline(workflow_id, owner_epoch, step_id, deadline_ms)
            .await
    }

    async fn message_take(
        &mut self,
        workflow_id: &str,
        topic: &str,
        owner_epoch: i64,
    ) -> StorageResult<Option<String>> {
        self.at("message_take", Some(workflow_id), None).await?;
        self.conn
            .message_take(workflow_id, topic, owner_epoch)
            .await
    }

    async fn event_set(
        &mut self,
        workflow_id: &str,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.at("event_set", Some(workflow_id), None).await?;
        Ok(self.conn.event_set(workflow_id, key, value, now_ms).await?)
    }

    async fn event_get(&mut self, workflow_id: &str, key: &str) -> StorageResult<Option<String>> {
        self.at("event_get", Some(workflow_id), None).await?;
        Ok(self.conn.event_get(workflow_id, key).await?)
    }

    async fn workflow_cancel_overdue(
        &mut self,
        id: &str,
        owner_epoch: i64,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.at("workflow_cancel_overdue", Some(id), None).await?;
        self.conn
            .workflow_cancel_overdue(id, owner_epoch, now_ms)
            .await
    }

    async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.at("workflows_cancel", Some(id), None).await?;
        Ok(self.conn.workflows_cancel(id, reason, now_ms).await?)
    }

    async fn workflow_resume(&mut self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.at("workflow_resume", Some(id), None).await?;
        Ok(self.conn.workflow_resume(id, now_ms).await?)
    }

    async fn workflow_fork(&mut self, params: WorkflowFork) -> StorageResult<bool> {
        self.at("workflow_fork", Some(&params.new_id), None).await?;
        Ok(self.conn.workflow_fork(params).await?)
    }

    async fn workflows_owned(&mut self, executor_id: &str) -> StorageResult<Vec<(String, i64)>> {
        self.at("workflows_owned", None, None).await?;
        Ok(self.conn.workflows_owned(executor_id).await?)
    }

    async fn workflows_list(&mut self, filter: WorkflowFilter) -> StorageResult<Vec<WorkflowInfo>> {
        self.at("workflows_list", None, None).await?;
        Ok(self.conn.workflows_list(filter).await?)
    }

    async fn workflow_info(&mut self, id: &str) -> StorageResult<Option<WorkflowInfo>> {
        self.at("workflow_info", Some(id), None).await?;
        Ok(self.conn.workflow_info(id).await?)
    }

    async fn steps_info(&mut self, workflow_id: &str) -> StorageResult<Vec<StepInfo>> {
        self.at("steps_info", Some(workflow_id), None).await?;
        Ok(self.conn.steps_info(workflow_id).await?)
    }

    async fn workflows_gc(&mut self, params: WorkflowsGc) -> StorageResult<GcCount> {
        self.at("workflows_gc", None, None).await?;
        Ok(self.conn.workflows_gc(params).await?)
    }

    async fn schedule_lock(
        &mut self,
        name: &str,
        now_ms: i64,
    ) -> StorageResult<Option<ScheduleState>> {
        self.at("schedule_lock", None, None).await?;
        Ok(self.conn.schedule_lock(name, now_ms).await?)
    }

    async fn schedule_advance(
        &mut self,
        name: &str,
        cursor_ms: i64,
        last_tick_ms: Option<i64>,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.at("schedule_advance", None, None).await?;
        Ok(self
            .conn
            .schedule_advance(name, cursor_ms, last_tick_ms, now_ms)
            .await?)
    }

    async fn schedule_pause(
        &mut self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> StorageResult<Option<ScheduleState>> {
        self.at("schedule_pause", None, None).await?;
        Ok(self.conn.schedule_pause(name, paused, now_ms).await?)
    }

    async fn schedules_list(&mut self, now_ms: i64) -> StorageResult<Vec<ScheduleState>> {
        self.at("schedules_list", None, None).await?;
        Ok(self.conn.schedules_list(now_ms).await?)
    }

    async fn workflows_count(
        &mut self,
        filter: WorkflowFilter,
        cap: u64,
    ) -> StorageResult<Vec<(Status, u64)>> {
        self.at("workflows_count", None, None).await?;
        Ok(self.conn.workflows_count(filter, cap).await?)
    }

    async fn queues_info(&mut self, now_ms: i64) -> StorageResult<Vec<QueueInfo>> {
        self.at("queues_info", None, None).await?;
        Ok(self.conn.queues_info(now_ms).await?)
    }

    async fn executors_info(&mut self) -> StorageResult<Vec<ExecutorInfo>> {
        self.at("executors_info", None, None).await?;
        Ok(self.conn.executors_info().await?)
    }

    async fn messages_info(&mut self, workflow_id: &str) -> StorageResult<Vec<MessageInfo>> {
        self.at("messages_info", Some(workflow_id), None).await?;
        Ok(self.conn.messages_info(workflow_id).await?)
    }

    async fn events_info(&mut self, workflow_id: &str) -> StorageResult<Vec<EventInfo>> {
        self.at("events_info", Some(workflow_id), None).await?;
        Ok(self.conn.events_info(workflow_id).await?)
    }

    async fn commit(mut self) -> StorageResult<()> {
        match self.tap.commit(Phase::Commit).await {
            Verdict::Proceed => {}
            Verdict::SerializationFailure => {
                return Err(self.conn.inject(Fault::SerializationFailure).into());
            }
            Verdict::ConnectionLost | Verdict::LoseAck => {
                return Err(self.conn.inject(Fault::ConnectionLost).into());
            }
        }
        self.conn.commit_conn()?;
        match self.tap.commit(Phase::Committed).await {
            Verdict::Proceed => Ok(()),
            _ => Err(MemError::ConnectionLost.into()),
        }
    }

    async fn rollback(self) -> StorageResult<()> {
        Ok(self.conn.rollback_conn()?)
    }
}
