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

use mvcc::{App, Chain, Db, Snapshot, Steps, TableSel, TryLock, Unique, WaitTarget, Workflows};
pub use mvcc::{LockWait, StepRecordRow, WorkflowRecord};

use super::{
    ErrorKind, Status, StepRecord, StepRecorded, StepRow, Storage, StorageError, StorageResult,
    Transaction, WorkflowComplete, WorkflowInsert, WorkflowInserted, WorkflowRow, WorkflowsRecover,
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
}

impl MemError {
    /// The storage error kind the engine's retry logic reads.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MemError::Deadlock | MemError::SerializationFailure => ErrorKind::Conflict,
            MemError::ConnectionLost => ErrorKind::Unavailable,
            MemError::UniqueViolation { .. } => ErrorKind::Invalid,
            MemError::LockNotAvailable { .. } | MemError::TransactionAborted => ErrorKind::Other,
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
#[derive(Clone, Default)]
pub struct MemStorage {
    db: Arc<Mutex<Db>>,
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
}

impl Session {
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
                if (scan.filter)(k, t.data(k, i)) {
                    candidates.push((k.clone(), i));
                    if scan.lock.is_none() && scan.limit.is_some_and(|n| candidates.len() >= n) {
                        break;
                    }
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
                    db.end(self.s.xid, true);
                    Ok(())
                }
                Some(Fault::LoseCommitAck) => {
                    db.end(self.s.xid, true);
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
            Some(row) => Ok(WorkflowInserted::Existing(row)),
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

    async fn commit(self) -> StorageResult<()> {
        Ok(self.conn.commit_conn()?)
    }

    async fn rollback(self) -> StorageResult<()> {
        Ok(self.conn.rollback_conn()?)
    }
}
