//! Sessions of the memory backend: the transaction state of a connection,
//! [`MemConn`] and its generic statements (application tables, and the
//! row-level reads and writes the engine operations are built from).

use super::*;

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

/// A connection's transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Open,
    /// A statement failed: the transaction is aborted, awaiting rollback.
    Failed,
    /// The connection dropped: the transaction is gone.
    Lost,
    /// Committed or rolled back.
    Done,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) xid: mvcc::Xid,
    pub(super) cid: u32,
    pub(super) state: State,
    /// A `pg_notify` is pending: sent if and when the transaction commits.
    pub(super) notify: bool,
    /// Open savepoints, oldest first.
    pub(super) savepoints: Vec<SavepointMark>,
}

/// What `ROLLBACK TO SAVEPOINT` returns a session to.
#[derive(Debug)]
pub(super) struct SavepointMark {
    name: String,
    /// The first command after it.
    cid: u32,
    /// The row locks held when it was taken.
    locks: usize,
    notify: bool,
}

impl Session {
    /// The next statement inside a SQL function: a fresh snapshot (READ
    /// COMMITTED, volatile function) that sees the function's earlier
    /// writes; no fault hook, as it is one client statement.
    pub(super) fn substatement(&mut self, db: &Db) -> Snapshot {
        self.cid += 1;
        db.snapshot(self.xid, self.cid)
    }

    /// Starts a statement: checks the transaction is usable, consults the
    /// fault hook and takes a fresh snapshot (READ COMMITTED).
    pub(super) fn statement(
        &mut self,
        db: &mut Db,
        op: &'static str,
    ) -> Result<Snapshot, MemError> {
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
    /// (its locks are released now, not at the client's ROLLBACK). Inside a
    /// savepoint only its innermost subtransaction aborts at once (its rows
    /// die, its row locks go), and `ROLLBACK TO SAVEPOINT` returns the
    /// transaction to work.
    pub(super) fn fail(&mut self, db: &mut Db, error: MemError) -> MemError {
        match self.savepoints.last() {
            None => db.end(self.xid, false),
            Some(mark) => db.rollback_to(self.xid, mark.cid, mark.locks),
        }
        if self.state == State::Open {
            self.state = State::Failed;
        }
        error
    }

    /// Blocks on `target`, unless that closes a cycle of waits and this
    /// transaction is the victim.
    pub(super) fn wait(
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

    pub(super) async fn block(
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
pub(super) type Filter<'f> = Box<dyn FnMut(&Key, &Value) -> bool + Send + 'f>;

/// A scan's ORDER BY column: an integer, `None` for NULL.
pub(super) type OrderBy<'f> = Box<dyn Fn(&Key, &Value) -> Option<i64> + Send + 'f>;

/// A scan of an application table in key order: `SELECT * FROM t WHERE
/// filter ORDER BY key LIMIT limit [FOR UPDATE ...]`, or ordered by a column
/// ([`Scan::order_by`]).
pub struct Scan<'f> {
    pub(super) filter: Filter<'f>,
    pub(super) order: Option<OrderBy<'f>>,
    pub(super) limit: Option<usize>,
    pub(super) lock: Option<RowLock>,
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
            order: None,
            limit: None,
            lock: None,
        }
    }

    /// `ORDER BY column NULLS LAST, key` instead of key order, `column`
    /// being an integer the closure reads from the row (`None` for NULL;
    /// negate it for `DESC`). Rows are sorted by the values the statement's
    /// snapshot sees; a locking scan then locks them in that order and, as
    /// in PostgreSQL, does not sort again after a wait, so a row whose
    /// column changed meanwhile keeps its place.
    pub fn order_by(mut self, column: impl Fn(&Key, &Value) -> Option<i64> + Send + 'f) -> Self {
        self.order = Some(Box::new(column));
        self
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
    pub(super) storage: MemStorage,
    pub(super) s: Session,
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
    /// Injects `fault` now, as the fault hook would at a statement (an
    /// interceptor's verdict, `storage::intercept`).
    pub(super) fn inject(&mut self, fault: Fault) -> MemError {
        let mut db = self.storage.db();
        if self.s.state != State::Open {
            return MemError::TransactionAborted;
        }
        match fault {
            Fault::SerializationFailure => self.s.fail(&mut db, MemError::SerializationFailure),
            Fault::ConnectionLost | Fault::LoseCommitAck => {
                db.end(self.s.xid, false);
                self.s.state = State::Lost;
                MemError::ConnectionLost
            }
        }
    }

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
                // row). A locking scan applies its limit after the locks; an
                // ordered one after sorting.
                if scan.lock.is_none()
                    && scan.order.is_none()
                    && scan.limit.is_some_and(|n| candidates.len() >= n)
                {
                    break;
                }
                if (scan.filter)(k, t.data(k, i)) {
                    candidates.push((k.clone(), i));
                }
            }
            if let Some(order) = &scan.order {
                // NULLS LAST, then the key (a stable sort over key order).
                candidates.sort_by_key(|(k, i)| {
                    let column = order(k, t.data(k, *i));
                    (column.is_none(), column)
                });
            }
            if scan.lock.is_none() {
                if let Some(n) = scan.limit {
                    candidates.truncate(n);
                }
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
        self.check(table, &value)?;
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
        self.check(table, &value)?;
        self.insert_row(&App(table), &snap, key, || value.clone(), true)
            .await
    }

    /// `INSERT INTO table VALUES (key, value) ON CONFLICT (key) DO UPDATE SET
    /// ... RETURNING *`: inserts `value`, or, if the key exists (after
    /// waiting for a concurrent inserter or writer), replaces the newest
    /// version by `update` of it, even one committed after the statement's
    /// snapshot (PostgreSQL's rule in READ COMMITTED). Returns the row as
    /// written.
    pub async fn upsert(
        &mut self,
        table: &str,
        key: impl Into<Key>,
        value: Value,
        mut update: impl FnMut(&Value) -> Value + Send,
    ) -> Result<Value, MemError> {
        let key = key.into();
        let snap = self.start("app.upsert")?;
        self.check(table, &value)?;
        let mut written = value.clone();
        self.upsert_row(&App(table), &snap, key, value, |v| {
            written = update(v);
            written.clone()
        })
        .await?;
        self.check(table, &written)?;
        Ok(written)
    }

    /// `SAVEPOINT name`.
    pub async fn savepoint(&mut self, name: &str) -> Result<(), MemError> {
        let mut db = self.storage.db();
        self.s.statement(&mut db, "app.savepoint")?;
        let locks = db.locks_held(self.s.xid);
        self.s.savepoints.push(SavepointMark {
            name: name.to_owned(),
            cid: self.s.cid + 1,
            locks,
            notify: self.s.notify,
        });
        Ok(())
    }

    /// `ROLLBACK TO SAVEPOINT name`: undoes the statements since the
    /// latest savepoint of that name (their rows, the row locks they took,
    /// a pending notification) and makes a transaction that failed since
    /// usable again; the savepoint stays. A transaction chosen as a deadlock
    /// victim is gone whole in the model (PostgreSQL would let a savepoint
    /// keep it).
    pub async fn rollback_to_savepoint(&mut self, name: &str) -> Result<(), MemError> {
        let mut db = self.storage.db();
        match self.s.state {
            State::Open | State::Failed => {}
            State::Done => return Err(MemError::TransactionAborted),
            State::Lost => return Err(MemError::ConnectionLost),
        }
        // (An unknown name is an error even in a failed transaction.)
        let Some(pos) = self.s.savepoints.iter().rposition(|s| s.name == name) else {
            let e = MemError::NoSuchSavepoint {
                name: name.to_owned(),
            };
            return Err(self.s.fail(&mut db, e));
        };
        if db.txs.status(self.s.xid) != mvcc::TxStatus::InProgress {
            self.s.state = State::Failed;
            return Err(MemError::TransactionAborted);
        }
        self.s.savepoints.truncate(pos + 1);
        let mark = &self.s.savepoints[pos];
        db.rollback_to(self.s.xid, mark.cid, mark.locks);
        self.s.notify = mark.notify;
        self.s.state = State::Open;
        Ok(())
    }

    /// `RELEASE SAVEPOINT name`: forgets it and the savepoints after it;
    /// their work stays part of the transaction.
    pub async fn release_savepoint(&mut self, name: &str) -> Result<(), MemError> {
        let mut db = self.storage.db();
        self.s.statement(&mut db, "app.release_savepoint")?;
        let Some(pos) = self.s.savepoints.iter().rposition(|s| s.name == name) else {
            let e = MemError::NoSuchSavepoint {
                name: name.to_owned(),
            };
            return Err(self.s.fail(&mut db, e));
        };
        self.s.savepoints.truncate(pos);
        Ok(())
    }

    /// A CHECK constraint of `table` (`MemStorage::add_check`) that `value`
    /// violates fails the statement with 23514 and aborts the transaction.
    fn check(&mut self, table: &str, value: &Value) -> Result<(), MemError> {
        let mut db = self.storage.db();
        let violated = db
            .checks
            .get(table)
            .and_then(|checks| checks.iter().find(|(_, ok)| !ok(value)))
            .map(|(name, _)| name.clone());
        match violated {
            None => Ok(()),
            Some(constraint) => {
                let e = MemError::CheckViolation {
                    table: table.to_owned(),
                    constraint,
                };
                Err(self.s.fail(&mut db, e))
            }
        }
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
        let mut f = f;
        self.check_before_update(table, &snap, &key, &mut f)?;
        let updated = self.update_row(&App(table), &snap, &key, f).await?;
        if let Some(v) = &updated {
            // Again on the row written after a wait (the transaction is
            // aborted either way, so nobody sees it).
            self.check(table, v)?;
        }
        Ok(updated)
    }

    /// PostgreSQL checks the row an UPDATE would write from the version its
    /// snapshot sees before it waits for the row's lock: a violation fails
    /// at once, whoever holds the row.
    fn check_before_update(
        &mut self,
        table: &str,
        snap: &Snapshot,
        key: &Key,
        f: &mut (impl FnMut(&Value) -> Option<Value> + Send),
    ) -> Result<(), MemError> {
        let new = {
            let mut db = self.storage.db();
            if !db.checks.contains_key(table) {
                return Ok(());
            }
            let (t, txs) = App(table).split(&mut db);
            t.visible(txs, snap, key).and_then(|i| f(t.data(key, i)))
        };
        match new {
            Some(v) => self.check(table, &v),
            None => Ok(()),
        }
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
            let mut row_f = |v: &Value| f(&key, v);
            self.check_before_update(table, &snap, &key, &mut row_f)?;
            if let Some(v) = self.update_row(&sel, &snap, &key, row_f).await? {
                self.check(table, &v)?;
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

    pub(super) fn start(&mut self, op: &'static str) -> Result<Snapshot, MemError> {
        let mut db = self.storage.db();
        self.s.statement(&mut db, op)
    }

    /// Takes the row lock on `key` (snapshot version `idx`), waiting as
    /// `wait` says, then follows the update chain to the newest version and,
    /// if that is not the snapshot's, re-checks `recheck` on it (PostgreSQL's
    /// EvalPlanQual). `Some(newest)` if the row is to be returned or written;
    /// `None` if it was skipped, deleted, or failed the re-check (the lock
    /// is kept then, as in PostgreSQL).
    pub(super) async fn lock_row<T: TableSel>(
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
    pub(super) async fn update_row<T: TableSel>(
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
    pub(super) async fn insert_row<T: TableSel>(
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

    pub(super) fn commit_conn(mut self) -> Result<(), MemError> {
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

    pub(super) fn rollback_conn(mut self) -> Result<(), MemError> {
        let state = self.s.state;
        self.s.state = State::Done;
        self.storage.db().end(self.s.xid, false);
        match state {
            State::Lost => Err(MemError::ConnectionLost),
            _ => Ok(()),
        }
    }
}

impl MemConn {
    // Generic statements over the engine's tables, used by the operations
    // below.

    /// `INSERT ... ON CONFLICT (key) DO UPDATE`: inserts, or (after waiting
    /// for a concurrent inserter) locks the newest version, whatever the
    /// snapshot, and updates it, as PostgreSQL does under READ COMMITTED.
    pub(super) async fn upsert_row<T: TableSel>(
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
    pub(super) async fn update_all<T: TableSel>(
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
    pub(super) async fn delete_row<T: TableSel>(
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
}

/// A row as the snapshot sees it.
pub(super) fn read<T: TableSel>(sel: &T, db: &mut Db, snap: &Snapshot, key: &T::K) -> Option<T::V> {
    let (t, txs) = sel.split(db);
    t.visible(txs, snap, key).map(|i| t.data(key, i).clone())
}
