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

mod mvcc;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use mvcc::{
    App, Chain, Db, Events, Executors, Messages, Queues, Settings, Snapshot, Steps, TableSel,
    TryLock, Unique, WaitTarget, WorkflowNames, Workflows,
};
pub use mvcc::{
    EventRecord, ExecutorRecord, LockWait, MessageRecord, QueueRecord, StepRecordRow,
    WorkflowRecord,
};

use super::{
    ErrorKind, ExecutorRegister, Listener, Status, StepInfo, StepRecord, StepRecorded, StepRow,
    Storage, StorageError, StorageResult, Transaction, WorkflowComplete, WorkflowEnqueue,
    WorkflowFilter, WorkflowFork, WorkflowInfo, WorkflowInsert, WorkflowInserted, WorkflowRow,
    WorkflowsClaim, WorkflowsRecover,
};

/// A primary-key value of an application table. Rows are kept and scanned
/// in key order (integers before text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// An integer key (a `bigint` primary key).
    Int(i64),
    /// A text key.
    Text(String),
}

impl From<i64> for Key {
    fn from(k: i64) -> Self {
        Key::Int(k)
    }
}

impl From<&str> for Key {
    fn from(k: &str) -> Self {
        Key::Text(k.to_owned())
    }
}

impl From<String> for Key {
    fn from(k: String) -> Self {
        Key::Text(k)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(k) => write!(f, "{k}"),
            Key::Text(k) => write!(f, "{k:?}"),
        }
    }
}

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
        match self {
            MemError::Deadlock | MemError::SerializationFailure => ErrorKind::Conflict,
            MemError::ConnectionLost => ErrorKind::Unavailable,
            MemError::UniqueViolation { .. } => ErrorKind::Invalid,
            MemError::LockNotAvailable { .. } | MemError::TransactionAborted => ErrorKind::Other,
            // Classified as `kind_of` in the PostgreSQL backend classifies
            // the same SQLSTATE.
            MemError::Raised { sqlstate, .. } => match *sqlstate {
                "40001" => ErrorKind::Conflict,
                _ => ErrorKind::Invalid,
            },
        }
    }

    /// The SQLSTATE PostgreSQL reports for the same failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MemError::Deadlock => "40P01",
            MemError::SerializationFailure => "40001",
            MemError::LockNotAvailable { .. } => "55P03",
            MemError::UniqueViolation { .. } => "23505",
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
    db: Arc<Mutex<Db>>,
    /// `NOTIFY tandem_work`: one message per commit that enqueued work or
    /// sent a message while `notify_on_enqueue` was on.
    wakeups: tokio::sync::broadcast::Sender<()>,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self {
            db: Arc::new(Mutex::new(Db::migrated())),
            // Listeners only need to know that something happened: a
            // lagging listener's missed wake-ups collapse into one.
            wakeups: tokio::sync::broadcast::channel(16).0,
        }
    }
}

/// Wake-ups of a [`MemStorage`]: commits that enqueued work or sent a
/// message (PostgreSQL's `LISTEN tandem_work`).
#[derive(Debug)]
pub struct MemListener {
    wakeups: tokio::sync::broadcast::Receiver<()>,
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

    fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock leaves the model in some state; the
        // tests that panicked report it, others may go on.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_conn(&self) -> Result<MemConn, MemError> {
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
            },
        })
    }
}

/// A connection's transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A statement failed: the transaction is aborted, awaiting rollback.
    Failed,
    /// The connection dropped: the transaction is gone.
    Lost,
    /// Committed or rolled back.
    Done,
}

#[derive(Debug)]
struct Session {
    xid: mvcc::Xid,
    cid: u32,
    state: State,
    /// A `pg_notify` is pending: sent if and when the transaction commits.
    notify: bool,
}

impl Session {
    /// The next statement inside a SQL function: a fresh snapshot (READ
    /// COMMITTED, volatile function) that sees the function's earlier
    /// writes; no fault hook, as it is one client statement.
    fn substatement(&mut self, db: &Db) -> Snapshot {
        self.cid += 1;
        db.snapshot(self.xid, self.cid)
    }

    /// Starts a statement: checks the transaction is usable, consults the
    /// fault hook and takes a fresh snapshot (READ COMMITTED).
    fn statement(&mut self, db: &mut Db, op: &'static str) -> Result<Snapshot, MemError> {
        match self.state {
            State::Open => {}
            State::Failed | State::Done => return Err(MemError::TransactionAborted),
            State::Lost => return Err(MemError::ConnectionLost),
        }
        if db.txs.status(self.xid) != mvcc::TxStatus::InProgress {
            // Aborted under us: a deadlock victim.
            self.state = State::Failed;
            return Err(MemError::TransactionAborted);
        }
        match db.fault(FaultPoint::Statement(op)) {
            None => {}
            Some(Fault::SerializationFailure) => {
                return Err(self.fail(db, MemError::SerializationFailure));
            }
            Some(Fault::ConnectionLost | Fault::LoseCommitAck) => {
                db.end(self.xid, false);
                self.state = State::Lost;
                return Err(MemError::ConnectionLost);
            }
        }
        self.cid += 1;
        Ok(db.snapshot(self.xid, self.cid))
    }

    /// A statement failed: like PostgreSQL, the transaction aborts at once
    /// (its locks are released now, not at the client's ROLLBACK).
    fn fail(&mut self, db: &mut Db, error: MemError) -> MemError {
        db.end(self.xid, false);
        if self.state == State::Open {
            self.state = State::Failed;
        }
        error
    }

    /// Blocks on `target`, unless that closes a cycle of waits and this
    /// transaction is the victim.
    fn wait(
        &mut self,
        db: &mut Db,
        target: WaitTarget,
        edges: Vec<mvcc::Xid>,
    ) -> Result<tokio::sync::oneshot::Receiver<mvcc::WaitOutcome>, MemError> {
        db.wait(self.xid, target, edges).map_err(|()| {
            self.state = State::Failed;
            MemError::Deadlock
        })
    }

    async fn block(
        &mut self,
        wake: tokio::sync::oneshot::Receiver<mvcc::WaitOutcome>,
    ) -> Result<(), MemError> {
        match wake.await {
            Ok(mvcc::WaitOutcome::Granted | mvcc::WaitOutcome::Ended) => Ok(()),
            Ok(mvcc::WaitOutcome::Deadlock) | Err(_) => {
                self.state = State::Failed;
                Err(MemError::Deadlock)
            }
        }
    }
}

/// A row-level lock request of a read (`SELECT ... FOR UPDATE` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLock {
    /// `FOR UPDATE` (true) or `FOR NO KEY UPDATE` (false). Both are
    /// exclusive among themselves, which is all the model distinguishes.
    pub for_update: bool,
    /// What to do about a row someone else has locked.
    pub wait: LockWait,
}

impl RowLock {
    /// `FOR UPDATE`.
    pub fn for_update() -> Self {
        Self {
            for_update: true,
            wait: LockWait::Block,
        }
    }

    /// `FOR NO KEY UPDATE`.
    pub fn for_no_key_update() -> Self {
        Self {
            for_update: false,
            wait: LockWait::Block,
        }
    }

    /// `... SKIP LOCKED`.
    pub fn skip_locked(self) -> Self {
        Self {
            wait: LockWait::SkipLocked,
            ..self
        }
    }

    /// `... NOWAIT`.
    pub fn nowait(self) -> Self {
        Self {
            wait: LockWait::NoWait,
            ..self
        }
    }
}

/// A scan's WHERE clause.
type Filter<'f> = Box<dyn FnMut(&Key, &Value) -> bool + Send + 'f>;

/// A scan of an application table in key order: `SELECT * FROM t WHERE
/// filter ORDER BY key LIMIT limit [FOR UPDATE ...]`.
pub struct Scan<'f> {
    filter: Filter<'f>,
    limit: Option<usize>,
    lock: Option<RowLock>,
}

impl fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scan")
            .field("limit", &self.limit)
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl<'f> Scan<'f> {
    /// Every row.
    pub fn all() -> Self {
        Self {
            filter: Box::new(|_, _| true),
            limit: None,
            lock: None,
        }
    }

    /// Only rows for which `filter` holds. With a lock, the filter is
    /// evaluated again on a row's newest version after waiting for it.
    pub fn filter(mut self, filter: impl FnMut(&Key, &Value) -> bool + Send + 'f) -> Self {
        self.filter = Box::new(filter);
        self
    }

    /// At most `n` rows. Rows skipped by the lock (SKIP LOCKED, or failing
    /// the re-check) do not count, as in PostgreSQL where the lock step sits
    /// below the LIMIT.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Locks the returned rows.
    pub fn lock(mut self, lock: RowLock) -> Self {
        self.lock = Some(lock);
        self
    }
}

/// A connection inside a memory transaction: what a transactional step's
/// closure receives. Its table/row API has PostgreSQL's visibility and
/// locking rules; every method is one statement with its own snapshot.
///
/// Errors abort the transaction, as in PostgreSQL; return them from the
/// closure (the engine retries [`ErrorKind::Conflict`] and
/// [`ErrorKind::Unavailable`] ones).
#[derive(Debug)]
pub struct MemConn {
    storage: MemStorage,
    s: Session,
}

impl Drop for MemConn {
    fn drop(&mut self) {
        if self.s.state != State::Done {
            // A transaction dropped without commit rolls back, as when its
            // connection is lost.
            self.storage.db().end(self.s.xid, false);
        }
    }
}

impl MemConn {
    /// The transaction's ID (for [`MemStorage::is_waiting`]).
    pub fn tx_id(&self) -> u64 {
        self.s.xid
    }

    /// `SELECT * FROM table WHERE key = $1`.
    pub async fn get(
        &mut self,
        table: &str,
        key: impl Into<Key>,
    ) -> Result<Option<Value>, MemError> {
        let key = key.into();
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "app.get")?;
        let (t, txs) = App(table).split(&mut db);
        Ok(t.visible(txs, &snap, &key).map(|i| t.data(&key, i).clone()))
    }

    /// `SELECT * FROM table WHERE key = $1 FOR UPDATE [SKIP LOCKED | NOWAIT]`.
    pub async fn get_locked(
        &mut self,
        table: &str,
        key: impl Into<Key>,
        lock: RowLock,
    ) -> Result<Option<Value>, MemError> {
        let key = key.into();
        let rows = self
            .scan(
                table,
                Scan::all()
                    .filter(move |k, _| *k == key)
                    .lock(lock)
                    .limit(1),
            )
            .await?;
        Ok(rows.into_iter().next().map(|(_, v)| v))
    }

    /// A [`Scan`]: rows in key order.
    pub async fn scan(
        &mut self,
        table: &str,
        mut scan: Scan<'_>,
    ) -> Result<Vec<(Key, Value)>, MemError> {
        let sel = App(table);
        let (snap, candidates) = {
            let mut db = self.storage.db();
            let snap = self.s.statement(&mut db, "app.scan")?;
            let (t, txs) = sel.split(&mut db);
            let mut candidates = Vec::new();
            for (k, i) in t.scan(txs, &snap, ..) {
                // Checked before taking the row, so that `LIMIT 0` returns
                // nothing (the mvcc_model fuzz target found it returning one
                // row). A locking scan applies its limit after the locks.
                if scan.lock.is_none() && scan.limit.is_some_and(|n| candidates.len() >= n) {
                    break;
                }
                if (scan.filter)(k, t.data(k, i)) {
                    candidates.push((k.clone(), i));
                }
            }
            if scan.lock.is_none() {
                return Ok(candidates
                    .into_iter()
                    .map(|(k, i)| {
                        let v = t.data(&k, i).clone();
                        (k, v)
                    })
                    .collect());
            }
            (snap, candidates)
        };
        let Some(lock) = scan.lock else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        for (key, idx) in candidates {
            if scan.limit.is_some_and(|n| rows.len() >= n) {
                break;
            }
            let filter = &mut scan.filter;
            let locked = self
                .lock_row(&sel, &snap, &key, idx, lock.wait, |v| filter(&key, v))
                .await?;
            if let Some(latest) = locked {
                let mut db = self.storage.db();
                let (t, _) = sel.split(&mut db);
                let v = t.data(&key, latest).clone();
                rows.push((key, v));
            }
        }
        Ok(rows)
    }

    /// `INSERT INTO table VALUES (key, value)`: fails with
    /// [`MemError::UniqueViolation`] if the key exists (after waiting for a
    /// concurrent inserter of the same key to finish).
    pub async fn insert(
        &mut self,
        table: &str,
        key: impl Into<Key>,
        value: Value,
    ) -> Result<(), MemError> {
        let key = key.into();
        let snap = self.start("app.insert")?;
        // Without DO NOTHING a conflict is an error, so `false` never comes.
        self.insert_row(&App(table), &snap, key, || value.clone(), false)
            .await
            .map(drop)
    }

    /// `INSERT ... ON CONFLICT DO NOTHING`: whether the row was inserted.
    pub async fn insert_or_ignore(
        &mut self,
        table: &str,
        key: impl Into<Key>,
        value: Value,
    ) -> Result<bool, MemError> {
        let key = key.into();
        let snap = self.start("app.insert")?;
        self.insert_row(&App(table), &snap, key, || value.clone(), true)
            .await
    }

    /// `UPDATE table SET ... WHERE key = $1 AND ... RETURNING *`: `f` maps
    /// the current value to the new one, or `None` where the WHERE clause
    /// fails. After waiting for a concurrent writer, `f` runs again on the
    /// newest version (so `value + 1` never loses an increment).
    pub async fn update(
        &mut self,
        table: &str,
        key: impl Into<Key>,
        f: impl FnMut(&Value) -> Option<Value> + Send,
    ) -> Result<Option<Value>, MemError> {
        let key = key.into();
        let snap = self.start("app.update")?;
        self.update_row(&App(table), &snap, &key, f).await
    }

    /// `UPDATE table SET ... WHERE filter RETURNING *` over every row, in key
    /// order; `f` as in [`update`](MemConn::update).
    pub async fn update_where(
        &mut self,
        table: &str,
        mut f: impl FnMut(&Key, &Value) -> Option<Value> + Send,
    ) -> Result<Vec<(Key, Value)>, MemError> {
        let sel = App(table);
        let snap = self.start("app.update")?;
        let keys: Vec<Key> = {
            let mut db = self.storage.db();
            let (t, txs) = sel.split(&mut db);
            t.scan(txs, &snap, ..).map(|(k, _)| k.clone()).collect()
        };
        let mut rows = Vec::new();
        for key in keys {
            if let Some(v) = self.update_row(&sel, &snap, &key, |v| f(&key, v)).await? {
                rows.push((key, v));
            }
        }
        Ok(rows)
    }

    /// `DELETE FROM table WHERE key = $1`: whether a row was deleted.
    pub async fn delete(&mut self, table: &str, key: impl Into<Key>) -> Result<bool, MemError> {
        let key = key.into();
        let sel = App(table);
        let snap = self.start("app.delete")?;
        let idx = {
            let mut db = self.storage.db();
            let (t, txs) = sel.split(&mut db);
            t.visible(txs, &snap, &key)
        };
        let Some(idx) = idx else { return Ok(false) };
        let Some(latest) = self
            .lock_row(&sel, &snap, &key, idx, LockWait::Block, |_| true)
            .await?
        else {
            return Ok(false);
        };
        let mut db = self.storage.db();
        let (t, _) = sel.split(&mut db);
        t.write(&snap, &key, latest, None);
        Ok(true)
    }

    fn start(&mut self, op: &'static str) -> Result<Snapshot, MemError> {
        let mut db = self.storage.db();
        self.s.statement(&mut db, op)
    }

    /// Takes the row lock on `key` (snapshot version `idx`), waiting as
    /// `wait` says, then follows the update chain to the newest version and,
    /// if that is not the snapshot's, re-checks `recheck` on it (PostgreSQL's
    /// EvalPlanQual). `Some(newest)` if the row is to be returned or written;
    /// `None` if it was skipped, deleted, or failed the re-check (the lock
    /// is kept then, as in PostgreSQL).
    async fn lock_row<T: TableSel>(
        &mut self,
        sel: &T,
        snap: &Snapshot,
        key: &T::K,
        idx: usize,
        wait: LockWait,
        mut recheck: impl FnMut(&T::V) -> bool + Send,
    ) -> Result<Option<usize>, MemError> {
        loop {
            let wake = {
                let mut db = self.storage.db();
                let defects = db.defects;
                let (t, _) = sel.split(&mut db);
                match t.try_lock(self.s.xid, key, wait, !defects.skip_locked_does_not_skip) {
                    TryLock::Acquired => {
                        db.note_lock(sel, self.s.xid, key);
                        let (t, txs) = sel.split(&mut db);
                        match t.chain(txs, snap, key, idx) {
                            Chain::Latest {
                                idx: latest,
                                traversed,
                            } => {
                                if traversed && defects.update_ignores_newer_versions {
                                    return Ok(Some(latest));
                                }
                                if traversed && !recheck(t.data(key, latest)) {
                                    return Ok(None);
                                }
                                return Ok(Some(latest));
                            }
                            Chain::Deleted => {
                                db.unlock(sel, self.s.xid, key);
                                return Ok(None);
                            }
                            Chain::SelfModified => return Ok(None),
                            // Modified by a transaction that does not hold
                            // the row lock: cannot happen while every write
                            // locks first, but waiting is the safe answer.
                            Chain::Busy(x) => self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?,
                        }
                    }
                    TryLock::Skip => return Ok(None),
                    TryLock::Unavailable => {
                        return Err(self.s.fail(
                            &mut db,
                            MemError::LockNotAvailable {
                                table: sel.name().to_owned(),
                            },
                        ));
                    }
                    TryLock::Wait(edges) => {
                        self.s
                            .wait(&mut db, WaitTarget::Row(sel.lock_ref(key)), edges)?
                    }
                }
            };
            self.s.block(wake).await?;
        }
    }

    /// The UPDATE of one row by key, within statement `snap`.
    async fn update_row<T: TableSel>(
        &mut self,
        sel: &T,
        snap: &Snapshot,
        key: &T::K,
        mut f: impl FnMut(&T::V) -> Option<T::V> + Send,
    ) -> Result<Option<T::V>, MemError> {
        let first = {
            let mut db = self.storage.db();
            let (t, txs) = sel.split(&mut db);
            match t.visible(txs, snap, key) {
                None => None,
                Some(idx) => f(t.data(key, idx)).map(|new| (idx, new)),
            }
        };
        let Some((idx, mut new)) = first else {
            return Ok(None);
        };
        let locked = self
            .lock_row(sel, snap, key, idx, LockWait::Block, |v| match f(v) {
                Some(n) => {
                    new = n;
                    true
                }
                None => false,
            })
            .await?;
        let Some(latest) = locked else {
            return Ok(None);
        };
        let mut db = self.storage.db();
        let (t, _) = sel.split(&mut db);
        t.write(snap, key, latest, Some(new.clone()));
        Ok(Some(new))
    }

    /// An INSERT into a table with a primary key, within statement `snap`:
    /// waits for a concurrent inserter (or deleter) of the same key, then
    /// inserts, does nothing (`do_nothing`, returns false) or fails with a
    /// unique violation.
    async fn insert_row<T: TableSel>(
        &mut self,
        sel: &T,
        snap: &Snapshot,
        key: T::K,
        data: impl Fn() -> T::V + Send,
        do_nothing: bool,
    ) -> Result<bool, MemError>
    where
        T::K: fmt::Debug,
    {
        loop {
            let wake = {
                let mut db = self.storage.db();
                let (t, txs) = sel.split(&mut db);
                match t.unique(txs, self.s.xid, &key) {
                    Unique::Free => {
                        t.insert(snap, key, data());
                        return Ok(true);
                    }
                    Unique::Conflict if do_nothing => return Ok(false),
                    Unique::Conflict => {
                        return Err(self.s.fail(
                            &mut db,
                            MemError::UniqueViolation {
                                table: sel.name().to_owned(),
                                key: format!("{key:?}"),
                            },
                        ));
                    }
                    Unique::WaitFor(x) => self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?,
                }
            };
            self.s.block(wake).await?;
        }
    }

    fn commit_conn(mut self) -> Result<(), MemError> {
        let mut db = self.storage.db();
        let state = self.s.state;
        self.s.state = State::Done;
        match state {
            State::Done => Err(MemError::TransactionAborted),
            State::Lost => Err(MemError::ConnectionLost),
            // PostgreSQL answers COMMIT of a failed transaction with
            // ROLLBACK, not an error.
            State::Failed => {
                db.end(self.s.xid, false);
                Ok(())
            }
            State::Open => match db.fault(FaultPoint::Commit) {
                None => {
                    // A deadlock victim is already aborted: same as Failed.
                    let committed = db.txs.status(self.s.xid) == mvcc::TxStatus::InProgress;
                    db.end(self.s.xid, true);
                    if committed && self.s.notify {
                        let _ = self.storage.wakeups.send(());
                    }
                    Ok(())
                }
                Some(Fault::LoseCommitAck) => {
                    let committed = db.txs.status(self.s.xid) == mvcc::TxStatus::InProgress;
                    db.end(self.s.xid, true);
                    if committed && self.s.notify {
                        let _ = self.storage.wakeups.send(());
                    }
                    Err(MemError::ConnectionLost)
                }
                Some(Fault::ConnectionLost) => {
                    db.end(self.s.xid, false);
                    Err(MemError::ConnectionLost)
                }
                Some(Fault::SerializationFailure) => {
                    db.end(self.s.xid, false);
                    Err(MemError::SerializationFailure)
                }
            },
        }
    }

    fn rollback_conn(mut self) -> Result<(), MemError> {
        let state = self.s.state;
        self.s.state = State::Done;
        self.storage.db().end(self.s.xid, false);
        match state {
            State::Lost => Err(MemError::ConnectionLost),
            _ => Ok(()),
        }
    }

    // The engine's operations, each modelled on the SQL that
    // `storage/postgres.rs` runs for it.

    async fn workflow_insert(&mut self, p: WorkflowInsert) -> Result<WorkflowInserted, MemError> {
        // INSERT ... ON CONFLICT (id) DO NOTHING: waits for a concurrent
        // inserter of the same ID, then inserts nothing if it committed.
        let snap = self.start("workflow_insert")?;
        let row = WorkflowRecord {
            id: p.id.clone(),
            name: p.name,
            status: Status::Running,
            input: p.input,
            output: None,
            error: None,
            executor_id: Some(p.executor_id),
            owner_epoch: 1,
            created_ms: p.now_ms,
            updated_ms: p.now_ms,
            completed_ms: None,
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            dedup_key: None,
            run_after_ms: None,
            // clock_timestamp(): the database clock, which the model takes
            // from the engine.
            started_ms: Some(p.now_ms),
            parent_id: p.parent_id,
            deadline_ms: p.deadline_ms,
        };
        if self
            .insert_row(&Workflows, &snap, p.id.clone(), || row.clone(), true)
            .await?
        {
            return Ok(WorkflowInserted::Inserted);
        }
        // A statement of its own: the INSERT's snapshot may predate the
        // conflicting row's commit.
        match self.workflow_get(&p.id).await? {
            Some(row) => Ok(WorkflowInserted::Existing(Box::new(row))),
            None => Err(MemError::SerializationFailure),
        }
    }

    async fn workflow_get(&mut self, id: &str) -> Result<Option<WorkflowRow>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflow_get")?;
        let key = id.to_owned();
        let (t, txs) = Workflows.split(&mut db);
        Ok(t.visible(txs, &snap, &key)
            .map(|i| workflow_row(t.data(&key, i))))
    }

    async fn workflow_complete(&mut self, p: WorkflowComplete) -> StorageResult<()> {
        // UPDATE ... WHERE id = $1 AND owner_epoch = $2 AND status =
        // 'RUNNING': after waiting for a concurrent writer (an epoch bump)
        // the condition is checked again on the newest version.
        let snap = self.start("workflow_complete")?;
        let updated = self
            .update_row(&Workflows, &snap, &p.id, |w| {
                (w.owner_epoch == p.owner_epoch && w.status == Status::Running).then(|| {
                    WorkflowRecord {
                        status: p.status,
                        output: p.output.clone(),
                        error: p.error.clone(),
                        updated_ms: p.now_ms,
                        completed_ms: Some(p.now_ms),
                        ..w.clone()
                    }
                })
            })
            .await?;
        match updated {
            Some(_) => Ok(()),
            None => Err(fenced(&p.id)),
        }
    }

    async fn workflows_recover(
        &mut self,
        p: WorkflowsRecover,
    ) -> Result<Vec<WorkflowRow>, MemError> {
        let snap = self.start("workflows_recover")?;
        let matches = |w: &WorkflowRecord| {
            w.executor_id.as_deref() == Some(p.executor_id.as_str())
                && w.status == Status::Running
                && p.workflow_id.as_ref().is_none_or(|id| *id == w.id)
        };
        let keys: Vec<String> = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            match &p.workflow_id {
                Some(id) => t
                    .visible(txs, &snap, id)
                    .map(|_| id.clone())
                    .into_iter()
                    .collect(),
                None => t.scan(txs, &snap, ..).map(|(k, _)| k.clone()).collect(),
            }
        };
        let mut rows = Vec::new();
        for key in keys {
            let bumped = self
                .update_row(&Workflows, &snap, &key, |w| {
                    matches(w).then(|| WorkflowRecord {
                        owner_epoch: w.owner_epoch + 1,
                        updated_ms: p.now_ms,
                        ..w.clone()
                    })
                })
                .await?;
            if let Some(w) = bumped {
                rows.push(workflow_row(&w));
            }
        }
        Ok(rows)
    }

    async fn steps_load(&mut self, workflow_id: &str) -> Result<Vec<StepRow>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "steps_load")?;
        let (t, txs) = Steps.split(&mut db);
        let range = (workflow_id.to_owned(), i32::MIN)..=(workflow_id.to_owned(), i32::MAX);
        Ok(t.scan(txs, &snap, range)
            .map(|(k, i)| {
                let s = t.data(k, i);
                StepRow {
                    step_id: s.step_id,
                    name: s.name.clone(),
                    kind: s.kind,
                    output: s.output.clone(),
                    error: s.error.clone(),
                }
            })
            .collect())
    }

    async fn step_record(&mut self, p: StepRecord) -> StorageResult<StepRecorded> {
        // One statement: the fence reads the statement's snapshot; the
        // insert then waits for a concurrent inserter of the same step and
        // does nothing if it committed (ON CONFLICT DO NOTHING). The fence
        // values stay those of the snapshot, as in the CTE.
        let snap = self.start("step_record")?;
        let fence = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            t.visible(txs, &snap, &p.workflow_id).map(|i| {
                let w = t.data(&p.workflow_id, i);
                (w.owner_epoch, w.status)
            })
        };
        let owned = fence == Some((p.owner_epoch, Status::Running));
        if !owned {
            return Err(fenced(&p.workflow_id));
        }
        let row = StepRecordRow {
            workflow_id: p.workflow_id.clone(),
            step_id: p.step_id,
            name: p.name,
            kind: p.kind,
            output: p.output,
            error: p.error,
            owner_epoch: p.owner_epoch,
            attempts: p.attempts,
            started_ms: p.started_ms,
            completed_ms: p.now_ms,
        };
        let key = (p.workflow_id, p.step_id);
        if self
            .insert_row(&Steps, &snap, key, || row.clone(), true)
            .await?
        {
            Ok(StepRecorded::Recorded)
        } else {
            Ok(StepRecorded::Exists)
        }
    }

    // Generic statements over the engine's tables, used by the operations
    // below.

    /// `INSERT ... ON CONFLICT (key) DO UPDATE`: inserts, or (after waiting
    /// for a concurrent inserter) locks the newest version, whatever the
    /// snapshot, and updates it, as PostgreSQL does under READ COMMITTED.
    async fn upsert<T: TableSel>(
        &mut self,
        sel: &T,
        snap: &Snapshot,
        key: T::K,
        data: T::V,
        mut update: impl FnMut(&T::V) -> T::V + Send,
    ) -> Result<(), MemError> {
        loop {
            let wake = {
                let mut db = self.storage.db();
                let (t, txs) = sel.split(&mut db);
                match t.unique(txs, self.s.xid, &key) {
                    Unique::Free => {
                        t.insert(snap, key, data);
                        return Ok(());
                    }
                    Unique::Conflict => None,
                    Unique::WaitFor(x) => Some(self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?),
                }
            };
            if let Some(wake) = wake {
                self.s.block(wake).await?;
                continue;
            }
            // The conflicting row may have committed after the statement's
            // snapshot: the update reads the newest committed state.
            let newest = self.storage.db().snapshot(self.s.xid, snap.cid);
            if self
                .update_row(sel, &newest, &key, |v| Some(update(v)))
                .await?
                .is_some()
            {
                return Ok(());
            }
            // Deleted meanwhile: insert after all.
        }
    }

    /// `UPDATE t SET ... WHERE ...` over every row the snapshot sees, in key
    /// order; `f` as in [`update_row`](MemConn::update_row).
    async fn update_all<T: TableSel>(
        &mut self,
        sel: &T,
        snap: &Snapshot,
        mut f: impl FnMut(&T::V) -> Option<T::V> + Send,
    ) -> Result<Vec<T::V>, MemError> {
        let keys: Vec<T::K> = {
            let mut db = self.storage.db();
            let (t, txs) = sel.split(&mut db);
            t.scan(txs, snap, ..)
                .filter(|(k, i)| f(t.data(k, *i)).is_some())
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut rows = Vec::new();
        for key in keys {
            if let Some(v) = self.update_row(sel, snap, &key, &mut f).await? {
                rows.push(v);
            }
        }
        Ok(rows)
    }

    /// `DELETE FROM t WHERE key = $1 AND cond`: waits for a concurrent
    /// writer and re-checks `cond` on the newest version.
    async fn delete_row<T: TableSel>(
        &mut self,
        sel: &T,
        snap: &Snapshot,
        key: &T::K,
        mut cond: impl FnMut(&T::V) -> bool + Send,
    ) -> Result<bool, MemError> {
        let idx = {
            let mut db = self.storage.db();
            let (t, txs) = sel.split(&mut db);
            t.visible(txs, snap, key).filter(|&i| cond(t.data(key, i)))
        };
        let Some(idx) = idx else { return Ok(false) };
        let Some(latest) = self
            .lock_row(sel, snap, key, idx, LockWait::Block, &mut cond)
            .await?
        else {
            return Ok(false);
        };
        let mut db = self.storage.db();
        let (t, _) = sel.split(&mut db);
        t.write(snap, key, latest, None);
        Ok(true)
    }

    async fn executor_heartbeat(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), MemError> {
        let snap = self.start("executor_heartbeat")?;
        // clock_timestamp() + lease: the engine's clock is the database's.
        let lease_expires_ms = now_ms.saturating_add(lease_ms);
        let row = ExecutorRecord {
            started_ms: now_ms,
            heartbeat_ms: now_ms,
            lease_expires_ms,
        };
        self.upsert(&Executors, &snap, executor_id.to_owned(), row, |e| {
            ExecutorRecord {
                heartbeat_ms: now_ms,
                lease_expires_ms,
                ..e.clone()
            }
        })
        .await
    }

    async fn executor_register(&mut self, p: ExecutorRegister) -> Result<(), MemError> {
        self.executor_heartbeat(&p.executor_id, p.now_ms, p.lease_ms)
            .await?;
        // In name order, as on PostgreSQL, so that executors launching at
        // once lock the shared rows in the same order.
        let mut workflows = p.workflows;
        workflows.sort();
        for (name, types) in workflows {
            let snap = self.start("executor_register")?;
            let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
            self.upsert(&WorkflowNames, &snap, name, types.clone(), |_| {
                types.clone()
            })
            .await?;
        }
        let mut queues = p.queues;
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues {
            let snap = self.start("executor_register")?;
            let row = QueueRecord {
                concurrency_global: q.concurrency_global,
                rate_limit: q.rate_limit,
            };
            self.upsert(&Queues, &snap, q.name, row.clone(), |_| row.clone())
                .await?;
        }
        let snap = self.start("executor_register")?;
        for (key, value) in [
            ("notify_on_enqueue", p.notify_on_enqueue.to_string()),
            ("payload_max_bytes", p.payload_max_bytes.to_string()),
        ] {
            self.upsert(&Settings, &snap, key.to_owned(), value.clone(), |_| {
                value.clone()
            })
            .await?;
        }
        Ok(())
    }

    async fn workflows_reclaim(&mut self, now_ms: i64) -> Result<u64, MemError> {
        // One statement, one snapshot: DELETE the expired executors
        // (re-checking each lease after a wait, so a heartbeat that
        // committed meanwhile saves its executor), then UPDATE the RUNNING
        // workflows of those executors or of executors the snapshot does not
        // know. The snapshot still sees the executors this statement
        // deletes, as in the CTE, so `dead` is checked explicitly.
        let snap = self.start("workflows_reclaim")?;
        let (expired, known) = {
            let mut db = self.storage.db();
            let (t, txs) = Executors.split(&mut db);
            let mut expired = Vec::new();
            let mut known = std::collections::HashSet::new();
            for (k, i) in t.scan(txs, &snap, ..) {
                if t.data(k, i).lease_expires_ms < now_ms
                    && !crate::bugs::active(crate::bugs::Bug::LeaseNeverExpires)
                {
                    expired.push(k.clone());
                }
                known.insert(k.clone());
            }
            (expired, known)
        };
        let mut dead = std::collections::HashSet::new();
        for key in expired {
            if self
                .delete_row(&Executors, &snap, &key, |e| e.lease_expires_ms < now_ms)
                .await?
            {
                dead.insert(key);
            }
        }
        let requeued = self
            .update_all(&Workflows, &snap, |w| {
                let orphaned = w.status == Status::Running
                    && w.executor_id
                        .as_ref()
                        .is_none_or(|e| dead.contains(e) || !known.contains(e));
                orphaned.then(|| WorkflowRecord {
                    status: Status::Enqueued,
                    executor_id: None,
                    owner_epoch: w.owner_epoch + 1,
                    updated_ms: now_ms,
                    ..w.clone()
                })
            })
            .await?;
        Ok(requeued.len() as u64)
    }

    /// For a limited queue: locks the queue's row (`FOR UPDATE`, waiting),
    /// then in a new statement counts the queue's running workflows and
    /// recent starts. How many more may start; `None` if unlimited.
    async fn claim_budget(&mut self, p: &WorkflowsClaim) -> Result<Option<u32>, MemError> {
        if !p.queue.is_limited() {
            return Ok(None);
        }
        let snap = self.start("workflows_claim")?;
        let idx = {
            let mut db = self.storage.db();
            let (t, txs) = Queues.split(&mut db);
            t.visible(txs, &snap, &p.queue.name)
        };
        if let Some(idx) = idx {
            self.lock_row(&Queues, &snap, &p.queue.name, idx, LockWait::Block, |_| {
                true
            })
            .await?;
        }
        let snap = self.start("workflows_claim")?;
        let period_ms = p.queue.rate_limit.map_or(0, |(_, ms)| ms);
        let since_ms = p.now_ms - period_ms;
        let (running, recent) = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            let mut running = 0i64;
            let mut recent = 0i64;
            for (k, i) in t.scan(txs, &snap, ..) {
                let w = t.data(k, i);
                if w.queue != p.queue.name {
                    continue;
                }
                running += i64::from(w.status == Status::Running);
                recent += i64::from(w.started_ms.is_some_and(|s| s > since_ms));
            }
            (running, recent)
        };
        Ok(Some(p.queue.budget(running, recent)))
    }

    async fn workflows_claim(&mut self, p: WorkflowsClaim) -> Result<Vec<WorkflowRow>, MemError> {
        let mut limit = p.limit;
        if let Some(budget) = self.claim_budget(&p).await? {
            limit = limit.min(budget);
            if limit == 0 {
                return Ok(Vec::new());
            }
        }
        // SELECT ... ORDER BY priority, created_at LIMIT n FOR UPDATE SKIP
        // LOCKED, then UPDATE the locked rows: concurrent claimers take
        // different rows, and a row that changed since the snapshot is
        // re-checked on its newest version.
        let snap = self.start("workflows_claim")?;
        let ready = |w: &WorkflowRecord| {
            w.status == Status::Enqueued
                && w.queue == p.queue.name
                && p.names.contains(&w.name)
                && w.run_after_ms.is_none_or(|t| t <= p.now_ms)
        };
        let mut candidates: Vec<(i32, i64, String, usize)> = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            t.scan(txs, &snap, ..)
                .filter(|(k, i)| ready(t.data(k, *i)))
                .map(|(k, i)| {
                    let w = t.data(k, i);
                    (w.priority, w.created_ms, k.clone(), i)
                })
                .collect()
        };
        candidates.sort();
        let mut rows = Vec::new();
        for (_, _, key, idx) in candidates {
            if rows.len() >= limit as usize {
                break;
            }
            let locked = self
                .lock_row(&Workflows, &snap, &key, idx, LockWait::SkipLocked, ready)
                .await?;
            let Some(latest) = locked else { continue };
            let mut db = self.storage.db();
            let (t, _) = Workflows.split(&mut db);
            let w = t.data(&key, latest);
            let claimed = WorkflowRecord {
                status: Status::Running,
                executor_id: Some(p.executor_id.clone()),
                owner_epoch: w.owner_epoch + 1,
                started_ms: Some(p.now_ms),
                updated_ms: p.now_ms,
                ..w.clone()
            };
            t.write(&snap, &key, latest, Some(claimed.clone()));
            rows.push(workflow_row(&claimed));
        }
        Ok(rows)
    }

    async fn workflows_release(&mut self, executor_id: &str, now_ms: i64) -> Result<u64, MemError> {
        let snap = self.start("workflows_release")?;
        let released = self
            .update_all(&Workflows, &snap, |w| {
                (w.status == Status::Running && w.executor_id.as_deref() == Some(executor_id)).then(
                    || WorkflowRecord {
                        status: Status::Enqueued,
                        executor_id: None,
                        owner_epoch: w.owner_epoch + 1,
                        updated_ms: now_ms,
                        ..w.clone()
                    },
                )
            })
            .await?;
        self.delete_row(&Executors, &snap, &executor_id.to_owned(), |_| true)
            .await?;
        Ok(released.len() as u64)
    }

    /// `tandem.enqueue_workflow`, statement by statement.
    async fn workflow_enqueue(&mut self, p: WorkflowEnqueue) -> Result<String, MemError> {
        let snap = self.start("workflow_enqueue")?;
        let (id, row, notify) = {
            let mut db = self.storage.db();
            match enqueue_checked(&mut db, &snap, &p) {
                Ok(checked) => checked,
                Err(e) => return Err(self.s.fail(&mut db, e)),
            }
        };
        // INSERT ... ON CONFLICT DO NOTHING with no target: both the
        // primary key and the partial unique index workflows_dedup are
        // arbiters; a concurrent inserter of either makes this one wait.
        let unfinished =
            |w: &WorkflowRecord| matches!(w.status, Status::Enqueued | Status::Running);
        let inserted = loop {
            let wake = {
                let mut db = self.storage.db();
                let (t, txs) = Workflows.split(&mut db);
                let mut check = t.unique(txs, self.s.xid, &id);
                if check == Unique::Free
                    && let Some(key) = &row.dedup_key
                {
                    check = t.unique_where(txs, self.s.xid, |w| {
                        w.queue == row.queue && w.dedup_key.as_ref() == Some(key) && unfinished(w)
                    });
                }
                match check {
                    Unique::Free => {
                        t.insert(&snap, id.clone(), row.clone());
                        break true;
                    }
                    Unique::Conflict => break false,
                    Unique::WaitFor(x) => self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?,
                }
            };
            self.s.block(wake).await?;
        };
        if inserted {
            self.s.notify |= notify;
            return Ok(id);
        }
        let mut db = self.storage.db();
        // Idempotent on the workflow ID (a statement of its own).
        let snap = self.s.substatement(&db);
        if let Some(existing) = read(&Workflows, &mut db, &snap, &id) {
            if existing.name != p.name {
                let e = raise(
                    "23505",
                    "tandem.enqueue_workflow",
                    format!(
                        "workflow ID \"{id}\" belongs to workflow \"{}\", not \"{}\"",
                        existing.name, p.name
                    ),
                );
                return Err(self.s.fail(&mut db, e));
            }
            return Ok(id);
        }
        // A deduplication conflict: the unfinished workflow holding the key.
        let snap = self.s.substatement(&db);
        let holder = {
            let (t, txs) = Workflows.split(&mut db);
            t.scan(txs, &snap, ..)
                .map(|(k, i)| t.data(k, i))
                .find(|w| w.queue == row.queue && w.dedup_key == row.dedup_key && unfinished(w))
                .map(|w| w.id.clone())
        };
        if let Some(holder) = holder {
            if p.dedup_error {
                let e = raise(
                    "23505",
                    "tandem.enqueue_workflow",
                    format!(
                        "queue \"{}\" already has an unfinished workflow with dedup_key \"{}\": \"{holder}\"",
                        row.queue,
                        row.dedup_key.as_deref().unwrap_or_default()
                    ),
                );
                return Err(self.s.fail(&mut db, e));
            }
            return Ok(holder);
        }
        let e = raise(
            "40001",
            "tandem.enqueue_workflow",
            format!("concurrent conflict on workflow \"{id}\", retry"),
        );
        Err(self.s.fail(&mut db, e))
    }

    async fn workflow_suspend(
        &mut self,
        id: &str,
        owner_epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
        let snap = self.start("workflow_suspend")?;
        let updated = self
            .update_row(&Workflows, &snap, &id.to_owned(), |w| {
                (w.owner_epoch == owner_epoch && w.status == Status::Running).then(|| {
                    WorkflowRecord {
                        status: Status::Enqueued,
                        executor_id: None,
                        run_after_ms: Some(run_after_ms),
                        updated_ms: now_ms,
                        ..w.clone()
                    }
                })
            })
            .await?;
        match updated {
            Some(_) => Ok(()),
            None => Err(fenced(id)),
        }
    }

    /// `tandem.send`.
    async fn message_send(
        &mut self,
        workflow_id: &str,
        topic: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<(), MemError> {
        let snap = self.start("message_send")?;
        let mut db = self.storage.db();
        db.tick(now_ms);
        let checked = (|| {
            text_args([&workflow_id.to_owned(), &topic.to_owned()])?;
            let payload = jsonb_text(payload)?;
            if read(&Workflows, &mut db, &snap, &workflow_id.to_owned()).is_none() {
                return Err(raise(
                    "22023",
                    "tandem.send",
                    format!("unknown workflow \"{workflow_id}\""),
                ));
            }
            let max = payload_max_bytes(&mut db, &snap);
            if payload.len() as i64 > max {
                return Err(raise(
                    "54000",
                    "tandem.send",
                    format!(
                        "message is {} bytes, over the limit of {max} bytes",
                        payload.len()
                    ),
                ));
            }
            Ok(payload)
        })();
        let payload = match checked {
            Ok(payload) => payload,
            Err(e) => return Err(self.s.fail(&mut db, e)),
        };
        // The identity column: a sequence, so ids order messages by send.
        db.message_seq += 1;
        let id = db.message_seq;
        let notify = notify_on_enqueue(&mut db, &snap);
        let (t, _) = Messages.split(&mut db);
        t.insert(
            &snap,
            id,
            MessageRecord {
                workflow_id: workflow_id.to_owned(),
                topic: topic.to_owned(),
                payload,
                created_ms: now_ms,
            },
        );
        self.s.notify |= notify;
        Ok(())
    }

    async fn message_take(
        &mut self,
        workflow_id: &str,
        topic: &str,
        owner_epoch: i64,
    ) -> StorageResult<Option<String>> {
        // One statement: the fence reads the snapshot; the oldest message is
        // locked SKIP LOCKED (a message another execution is taking is
        // passed over, one that was taken since the snapshot is gone) and
        // deleted.
        let snap = self.start("message_take")?;
        let (owned, candidates) = {
            let mut db = self.storage.db();
            let owned = read(&Workflows, &mut db, &snap, &workflow_id.to_owned())
                .is_some_and(|w| w.owner_epoch == owner_epoch && w.status == Status::Running);
            let (t, txs) = Messages.split(&mut db);
            let candidates: Vec<(i64, usize)> = t
                .scan(txs, &snap, ..)
                .filter(|(k, i)| {
                    let m = t.data(k, *i);
                    m.workflow_id == workflow_id && m.topic == topic
                })
                .map(|(k, i)| (*k, i))
                .collect();
            (owned, candidates)
        };
        if !owned {
            return Err(fenced(workflow_id));
        }
        for (key, idx) in candidates {
            let locked = self
                .lock_row(&Messages, &snap, &key, idx, LockWait::SkipLocked, |_| true)
                .await?;
            let Some(latest) = locked else { continue };
            let mut db = self.storage.db();
            let (t, _) = Messages.split(&mut db);
            let payload = t.data(&key, latest).payload.clone();
            t.write(&snap, &key, latest, None);
            return Ok(Some(payload));
        }
        Ok(None)
    }

    async fn event_set(
        &mut self,
        workflow_id: &str,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> Result<(), MemError> {
        let snap = self.start("event_set")?;
        let value = match jsonb_text(value) {
            Ok(v) => v,
            Err(e) => return Err(self.s.fail(&mut self.storage.db(), e)),
        };
        let row = EventRecord {
            value,
            updated_ms: now_ms,
        };
        let key = (workflow_id.to_owned(), key.to_owned());
        self.upsert(&Events, &snap, key, row.clone(), |_| row.clone())
            .await
    }

    async fn event_get(
        &mut self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<String>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "event_get")?;
        let key = (workflow_id.to_owned(), key.to_owned());
        Ok(read(&Events, &mut db, &snap, &key).map(|e| e.value))
    }

    async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, MemError> {
        // WITH RECURSIVE tree over the snapshot (UNION: each ID once), then
        // an UPDATE of its unfinished members, re-checked after a wait: a
        // workflow that finished meanwhile is left alone.
        let snap = self.start("workflows_cancel")?;
        let tree: Vec<String> = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            let mut children: std::collections::HashMap<&str, Vec<&str>> = Default::default();
            for (k, i) in t.scan(txs, &snap, ..) {
                if let Some(parent) = &t.data(k, i).parent_id {
                    children
                        .entry(parent.as_str())
                        .or_default()
                        .push(k.as_str());
                }
            }
            let mut tree: Vec<String> = Vec::new();
            if t.visible(txs, &snap, &id.to_owned()).is_some() {
                tree.push(id.to_owned());
            }
            let mut next = 0;
            while next < tree.len() {
                for child in children.get(tree[next].as_str()).into_iter().flatten() {
                    if !tree.iter().any(|t| t == child) {
                        tree.push((*child).to_owned());
                    }
                }
                next += 1;
            }
            tree
        };
        let mut cancelled = Vec::new();
        for key in tree {
            let updated = self
                .update_row(&Workflows, &snap, &key, |w| {
                    matches!(w.status, Status::Enqueued | Status::Running).then(|| WorkflowRecord {
                        status: Status::Cancelled,
                        error: Some(reason.to_owned()),
                        executor_id: None,
                        owner_epoch: w.owner_epoch + 1,
                        updated_ms: now_ms,
                        completed_ms: Some(now_ms),
                        ..w.clone()
                    })
                })
                .await?;
            if updated.is_some() {
                cancelled.push(key);
            }
        }
        Ok(cancelled)
    }

    async fn workflow_resume(&mut self, id: &str, now_ms: i64) -> Result<bool, MemError> {
        let snap = self.start("workflow_resume")?;
        let updated = self
            .update_row(&Workflows, &snap, &id.to_owned(), |w| {
                (w.status == Status::Cancelled).then(|| WorkflowRecord {
                    status: Status::Enqueued,
                    error: None,
                    executor_id: None,
                    run_after_ms: None,
                    deadline_ms: None,
                    completed_ms: None,
                    owner_epoch: w.owner_epoch + 1,
                    updated_ms: now_ms,
                    ..w.clone()
                })
            })
            .await?;
        Ok(updated.is_some())
    }

    async fn workflow_fork(&mut self, p: WorkflowFork) -> Result<bool, MemError> {
        let snap = self.start("workflow_fork")?;
        let source = read(&Workflows, &mut self.storage.db(), &snap, &p.source_id);
        let Some(source) = source else {
            return Ok(false);
        };
        // Epoch 1, not 0: epoch 0 promises a claimer that there is no
        // history to read, and the fork has copied checkpoints.
        let row = WorkflowRecord {
            id: p.new_id.clone(),
            name: source.name,
            status: Status::Enqueued,
            input: source.input,
            output: None,
            error: None,
            executor_id: None,
            owner_epoch: 1,
            created_ms: p.now_ms,
            updated_ms: p.now_ms,
            completed_ms: None,
            queue: source.queue,
            priority: source.priority,
            dedup_key: None,
            run_after_ms: None,
            started_ms: None,
            parent_id: None,
            deadline_ms: None,
        };
        self.insert_row(&Workflows, &snap, p.new_id.clone(), || row.clone(), false)
            .await?;
        let snap = self.start("workflow_fork")?;
        let steps: Vec<StepRecordRow> = {
            let mut db = self.storage.db();
            let (t, txs) = Steps.split(&mut db);
            let range = (p.source_id.clone(), i32::MIN)..(p.source_id.clone(), p.from_step);
            t.scan(txs, &snap, range)
                .map(|(k, i)| t.data(k, i).clone())
                .collect()
        };
        for step in steps {
            // Copied checkpoints carry epoch 0: they replay for every
            // execution of the fork.
            let copy = StepRecordRow {
                workflow_id: p.new_id.clone(),
                owner_epoch: 0,
                ..step
            };
            let key = (p.new_id.clone(), copy.step_id);
            self.insert_row(&Steps, &snap, key, || copy.clone(), false)
                .await?;
        }
        Ok(true)
    }

    async fn workflows_owned(&mut self, executor_id: &str) -> Result<Vec<(String, i64)>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflows_owned")?;
        let (t, txs) = Workflows.split(&mut db);
        // ORDER BY id: the scan is in key order.
        Ok(t.scan(txs, &snap, ..)
            .map(|(k, i)| t.data(k, i))
            .filter(|w| {
                w.status == Status::Running && w.executor_id.as_deref() == Some(executor_id)
            })
            .map(|w| (w.id.clone(), w.owner_epoch))
            .collect())
    }

    async fn workflows_list(&mut self, f: WorkflowFilter) -> Result<Vec<WorkflowInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflows_list")?;
        let (t, txs) = Workflows.split(&mut db);
        let mut rows: Vec<&WorkflowRecord> = t
            .scan(txs, &snap, ..)
            .map(|(k, i)| t.data(k, i))
            .filter(|w| {
                f.status.is_none_or(|s| w.status == s)
                    && f.name.as_ref().is_none_or(|n| w.name == *n)
                    && f.queue.as_ref().is_none_or(|q| w.queue == *q)
                    && f.created_from_ms.is_none_or(|ms| w.created_ms >= ms)
                    && f.created_until_ms.is_none_or(|ms| w.created_ms < ms)
            })
            .collect();
        // ORDER BY created_at DESC, id
        rows.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        Ok(rows
            .into_iter()
            .skip(usize::try_from(f.offset).unwrap_or(usize::MAX))
            .take(f.limit as usize)
            .map(workflow_info)
            .collect())
    }

    async fn workflow_info(&mut self, id: &str) -> Result<Option<WorkflowInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflow_info")?;
        Ok(read(&Workflows, &mut db, &snap, &id.to_owned()).map(|w| workflow_info(&w)))
    }

    async fn steps_info(&mut self, workflow_id: &str) -> Result<Vec<StepInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "steps_info")?;
        let (t, txs) = Steps.split(&mut db);
        let range = (workflow_id.to_owned(), i32::MIN)..=(workflow_id.to_owned(), i32::MAX);
        Ok(t.scan(txs, &snap, range)
            .map(|(k, i)| {
                let s = t.data(k, i);
                StepInfo {
                    row: StepRow {
                        step_id: s.step_id,
                        name: s.name.clone(),
                        kind: s.kind,
                        output: s.output.clone(),
                        error: s.error.clone(),
                    },
                    attempts: s.attempts,
                    owner_epoch: s.owner_epoch,
                    started_ms: s.started_ms,
                    completed_ms: s.completed_ms,
                }
            })
            .collect())
    }
}

/// The queue of workflows started locally (the column default).
const DEFAULT_QUEUE: &str = "default";

/// A row as the snapshot sees it.
fn read<T: TableSel>(sel: &T, db: &mut Db, snap: &Snapshot, key: &T::K) -> Option<T::V> {
    let (t, txs) = sel.split(db);
    t.visible(txs, snap, key).map(|i| t.data(key, i).clone())
}

fn payload_max_bytes(db: &mut Db, snap: &Snapshot) -> i64 {
    read(&Settings, db, snap, &"payload_max_bytes".to_owned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MAX)
}

fn notify_on_enqueue(db: &mut Db, snap: &Snapshot) -> bool {
    read(&Settings, db, snap, &"notify_on_enqueue".to_owned()).as_deref() == Some("true")
}

/// An error raised by the SQL function `function`.
fn raise(sqlstate: &'static str, function: &str, message: String) -> MemError {
    MemError::Raised {
        sqlstate,
        message: format!("{function}: {message}"),
    }
}

/// The validation of `tandem.enqueue_workflow`, in its order and with its
/// messages; then the row to insert, and whether to notify.
fn enqueue_checked(
    db: &mut Db,
    snap: &Snapshot,
    p: &WorkflowEnqueue,
) -> Result<(String, WorkflowRecord, bool), MemError> {
    const F: &str = "tandem.enqueue_workflow";
    // PostgreSQL refuses the arguments before the function runs.
    text_args(
        [&p.name, &p.queue]
            .into_iter()
            .chain(p.workflow_id.as_ref())
            .chain(p.dedup_key.as_ref()),
    )?;
    // The `$2::jsonb` cast happens before the function runs.
    let input = jsonb_text(&p.input)?;
    let id = match &p.workflow_id {
        Some(id) => id.clone(),
        None => {
            // gen_random_uuid(); a counter keeps simulations replayable.
            db.uuid_seq += 1;
            format!("00000000-0000-4000-8000-{:012x}", db.uuid_seq)
        }
    };
    let Some(types) = read(&WorkflowNames, db, snap, &p.name) else {
        return Err(raise(
            "22023",
            F,
            format!("unknown workflow name \"{}\"", p.name),
        ));
    };
    let kind = jsonb_typeof(&input);
    if !types.iter().any(|t| t == kind) {
        return Err(raise(
            "22023",
            F,
            format!(
                "workflow \"{}\" takes JSON {}, not {kind}",
                p.name,
                types.join(" or ")
            ),
        ));
    }
    if read(&Queues, db, snap, &p.queue).is_none() {
        return Err(raise("22023", F, format!("unknown queue \"{}\"", p.queue)));
    }
    let max = payload_max_bytes(db, snap);
    if input.len() as i64 > max {
        return Err(raise(
            "54000",
            F,
            format!(
                "input is {} bytes, over the limit of {max} bytes",
                input.len()
            ),
        ));
    }
    if !(-1_000_000..=1_000_000).contains(&p.priority) {
        return Err(raise(
            "22023",
            F,
            "priority must be between -1000000 and 1000000".to_owned(),
        ));
    }
    if p.delay_ms.is_some_and(|d| d < 0) {
        return Err(raise("22023", F, "delay must not be negative".to_owned()));
    }
    if !(1..=256).contains(&id.chars().count()) {
        return Err(raise(
            "22023",
            F,
            "workflow_id must be 1 to 256 characters".to_owned(),
        ));
    }
    // now(): the database clock.
    let now_ms = db.clock_ms;
    let row = WorkflowRecord {
        id: id.clone(),
        name: p.name.clone(),
        status: Status::Enqueued,
        input,
        output: None,
        error: None,
        executor_id: None,
        owner_epoch: 0,
        created_ms: now_ms,
        updated_ms: now_ms,
        completed_ms: None,
        queue: p.queue.clone(),
        priority: p.priority,
        dedup_key: p.dedup_key.clone(),
        run_after_ms: p.delay_ms.map(|d| now_ms.saturating_add(d)),
        started_ms: None,
        parent_id: None,
        deadline_ms: None,
    };
    Ok((id, row, notify_on_enqueue(db, snap)))
}

/// JSON text as a `jsonb` value prints it (`value::text`): keys sorted by
/// length then bytes, the last of duplicate keys kept, `": "` and `", "` as
/// separators. Numbers print as serde_json prints them, which differs from
/// PostgreSQL's `numeric` for some floats (out of scope). Invalid JSON fails
/// like the cast (22P02).
fn jsonb_text(json: &str) -> Result<String, MemError> {
    let value: Value = serde_json::from_str(json).map_err(|e| MemError::Raised {
        sqlstate: "22P02",
        message: format!("invalid input syntax for type json: {e}"),
    })?;
    if crate::payload::check_storable(json, String::new).is_err() {
        // jsonb keeps strings as text, which cannot hold NUL; its lexer
        // refuses `\u0000` anywhere, even in a duplicate key's value.
        return Err(MemError::Raised {
            sqlstate: "22P05",
            message: "unsupported Unicode escape sequence".to_owned(),
        });
    }
    let mut out = String::new();
    write_jsonb(&value, &mut out);
    Ok(out)
}

/// PostgreSQL's `text` cannot hold NUL: a parameter with one is refused
/// before the statement runs.
fn text_args<'a>(args: impl IntoIterator<Item = &'a String>) -> Result<(), MemError> {
    if args.into_iter().any(|a| a.contains('\0')) {
        return Err(MemError::Raised {
            sqlstate: "22021",
            message: "invalid byte sequence for encoding \"UTF8\": 0x00".to_owned(),
        });
    }
    Ok(())
}

fn write_jsonb(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(a.0.cmp(b.0)));
            out.push('{');
            for (n, (k, v)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_jsonb(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, v) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_jsonb(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `jsonb_typeof` of JSON text the model produced.
fn jsonb_typeof(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

fn workflow_info(w: &WorkflowRecord) -> WorkflowInfo {
    WorkflowInfo {
        row: workflow_row(w),
        priority: w.priority,
        created_ms: w.created_ms,
        updated_ms: w.updated_ms,
        started_ms: w.started_ms,
        completed_ms: w.completed_ms,
    }
}

/// The error of a fenced write, as the PostgreSQL backend words it.
fn fenced(workflow_id: &str) -> StorageError {
    StorageError::new(
        ErrorKind::Fenced,
        format!("workflow {workflow_id:?} is no longer owned by this execution"),
    )
}

fn workflow_row(w: &WorkflowRecord) -> WorkflowRow {
    WorkflowRow {
        id: w.id.clone(),
        name: w.name.clone(),
        status: w.status,
        input: w.input.clone(),
        output: w.output.clone(),
        error: w.error.clone(),
        executor_id: w.executor_id.clone(),
        owner_epoch: w.owner_epoch,
        queue: w.queue.clone(),
        parent_id: w.parent_id.clone(),
        deadline_ms: w.deadline_ms,
    }
}

/// A transaction on [`MemStorage`]; the application sees its [`MemConn`].
#[derive(Debug)]
pub struct MemTx {
    conn: MemConn,
}

impl MemTx {
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
        &mut self.conn
    }

    async fn workflow_insert(&mut self, params: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        Ok(self.conn.workflow_insert(params).await?)
    }

    async fn workflow_get(&mut self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        Ok(self.conn.workflow_get(id).await?)
    }

    async fn workflow_complete(&mut self, params: WorkflowComplete) -> StorageResult<()> {
        self.conn.workflow_complete(params).await
    }

    async fn workflows_recover(
        &mut self,
        params: WorkflowsRecover,
    ) -> StorageResult<Vec<WorkflowRow>> {
        Ok(self.conn.workflows_recover(params).await?)
    }

    async fn steps_load(&mut self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        Ok(self.conn.steps_load(workflow_id).await?)
    }

    async fn step_record(&mut self, params: StepRecord) -> StorageResult<StepRecorded> {
        self.conn.step_record(params).await
    }

    async fn executor_register(&mut self, params: ExecutorRegister) -> StorageResult<()> {
        Ok(self.conn.executor_register(params).await?)
    }

    async fn executor_heartbeat(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StorageResult<()> {
        Ok(self
            .conn
            .executor_heartbeat(executor_id, now_ms, lease_ms)
            .await?)
    }

    async fn workflows_reclaim(&mut self, now_ms: i64) -> StorageResult<u64> {
        Ok(self.conn.workflows_reclaim(now_ms).await?)
    }

    async fn workflows_claim(&mut self, params: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        Ok(self.conn.workflows_claim(params).await?)
    }

    async fn workflows_release(&mut self, executor_id: &str, now_ms: i64) -> StorageResult<u64> {
        Ok(self.conn.workflows_release(executor_id, now_ms).await?)
    }

    async fn workflow_enqueue(&mut self, params: WorkflowEnqueue) -> StorageResult<String> {
        Ok(self.conn.workflow_enqueue(params).await?)
    }

    async fn workflow_suspend(
        &mut self,
        id: &str,
        owner_epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
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
        Ok(self
            .conn
            .message_send(workflow_id, topic, payload, now_ms)
            .await?)
    }

    async fn message_take(
        &mut self,
        workflow_id: &str,
        topic: &str,
        owner_epoch: i64,
    ) -> StorageResult<Option<String>> {
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
        Ok(self.conn.event_set(workflow_id, key, value, now_ms).await?)
    }

    async fn event_get(&mut self, workflow_id: &str, key: &str) -> StorageResult<Option<String>> {
        Ok(self.conn.event_get(workflow_id, key).await?)
    }

    async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        Ok(self.conn.workflows_cancel(id, reason, now_ms).await?)
    }

    async fn workflow_resume(&mut self, id: &str, now_ms: i64) -> StorageResult<bool> {
        Ok(self.conn.workflow_resume(id, now_ms).await?)
    }

    async fn workflow_fork(&mut self, params: WorkflowFork) -> StorageResult<bool> {
        Ok(self.conn.workflow_fork(params).await?)
    }

    async fn workflows_owned(&mut self, executor_id: &str) -> StorageResult<Vec<(String, i64)>> {
        Ok(self.conn.workflows_owned(executor_id).await?)
    }

    async fn workflows_list(&mut self, filter: WorkflowFilter) -> StorageResult<Vec<WorkflowInfo>> {
        Ok(self.conn.workflows_list(filter).await?)
    }

    async fn workflow_info(&mut self, id: &str) -> StorageResult<Option<WorkflowInfo>> {
        Ok(self.conn.workflow_info(id).await?)
    }

    async fn steps_info(&mut self, workflow_id: &str) -> StorageResult<Vec<StepInfo>> {
        Ok(self.conn.steps_info(workflow_id).await?)
    }

    async fn commit(self) -> StorageResult<()> {
        Ok(self.conn.commit_conn()?)
    }

    async fn rollback(self) -> StorageResult<()> {
        Ok(self.conn.rollback_conn()?)
    }
}
