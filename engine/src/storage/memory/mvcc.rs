//! The MVCC core of the memory backend: transactions, row versions,
//! snapshots, row locks with FIFO wait queues, and deadlock detection.
//!
//! Everything here is synchronous and runs under the storage's one mutex.
//! A caller that must wait registers a [`Wait`] (a oneshot sender) and
//! awaits the receiver after releasing the mutex; whoever ends the blocking
//! transaction completes the wait. No timers, threads or sleeps are involved,
//! so a simulated runtime decides every interleaving.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use tokio::sync::oneshot;

use super::{
    EventRecord, ExecutorRecord, Fault, FaultHook, Key, MessageRecord, QueueRecord, ScheduleRecord,
    StepRecordRow, WorkflowRecord,
};

/// A transaction ID, like PostgreSQL's xid (assigned at `begin`).
pub(crate) type Xid = u64;

/// A transaction's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    InProgress,
    /// Committed with this commit sequence number (the order of commits).
    Committed(u64),
    Aborted,
}

/// What a statement sees: everything committed up to commit number `csn`,
/// plus its own transaction's writes from earlier statements (`cid`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) csn: u64,
    pub(crate) xid: Xid,
    pub(crate) cid: u32,
}

/// How a blocked waiter was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// The row lock it queued for is now its own.
    Granted,
    /// The transaction it waited for ended.
    Ended,
    /// It was chosen as a deadlock victim; its transaction is aborted.
    Deadlock,
}

/// A row lock's identity, to release it at transaction end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LockRef {
    Workflow(String),
    Step(String, i32),
    App(String, Key),
    Executor(String),
    WorkflowName(String),
    Queue(String),
    Schedule(String),
    Setting(String),
    Message(i64),
    Event(String, String),
}

/// What a blocked transaction waits for.
#[derive(Debug)]
pub(crate) enum WaitTarget {
    Row(LockRef),
    Tx(Xid),
}

#[derive(Debug)]
struct Wait {
    target: WaitTarget,
    /// The transactions it waits on (the deadlock detector's edges). Only
    /// ever shrinks in reality (they end), so a stale superset is safe: an
    /// ended transaction cannot be on a cycle.
    edges: Vec<Xid>,
    /// When the wait began: the oldest waiter on a cycle is the victim, as
    /// in PostgreSQL, where its `deadlock_timeout` fires first.
    since: u64,
    wake: oneshot::Sender<WaitOutcome>,
}

#[derive(Debug, Default)]
struct ActiveTx {
    locks: Vec<LockRef>,
    wait: Option<Wait>,
    /// Transactions waiting for this one to end (unique-index waits).
    end_waiters: Vec<Xid>,
}

/// Every transaction's state.
#[derive(Debug, Default)]
pub(crate) struct Txs {
    next_xid: Xid,
    csn: u64,
    wait_seq: u64,
    active: HashMap<Xid, ActiveTx>,
    /// Ended transactions. Kept forever (16 bytes each) because row versions
    /// name them; there is no vacuum.
    ended: HashMap<Xid, TxStatus>,
}

impl Txs {
    pub(crate) fn status(&self, xid: Xid) -> TxStatus {
        if self.active.contains_key(&xid) {
            TxStatus::InProgress
        } else {
            self.ended.get(&xid).copied().unwrap_or(TxStatus::Aborted)
        }
    }

    fn committed_in(&self, xid: Xid, snap: &Snapshot) -> bool {
        matches!(self.status(xid), TxStatus::Committed(csn) if csn <= snap.csn)
    }

    /// The commit sequence number of the newest commit.
    pub(crate) fn csn(&self) -> u64 {
        self.csn
    }

    pub(crate) fn is_waiting(&self, xid: Xid) -> bool {
        self.active.get(&xid).is_some_and(|t| t.wait.is_some())
    }

    /// Finds a cycle of waits through `start`, returning its members.
    fn find_cycle(&self, start: Xid) -> Option<Vec<Xid>> {
        // Depth-first search over waiting transactions; cycles are short
        // and waiters few, so simplicity beats cleverness here.
        let mut path = vec![start];
        let mut stack: Vec<(Xid, usize)> = vec![(start, 0)];
        let mut done: Vec<Xid> = Vec::new();
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let edges = self
                .active
                .get(&node)
                .and_then(|t| t.wait.as_ref())
                .map_or(&[][..], |w| &w.edges[..]);
            if *next >= edges.len() {
                stack.pop();
                path.pop();
                done.push(node);
                continue;
            }
            let to = edges[*next];
            *next += 1;
            if to == start {
                return Some(path);
            }
            if !self.active.contains_key(&to) || path.contains(&to) || done.contains(&to) {
                continue;
            }
            path.push(to);
            stack.push((to, 0));
        }
        None
    }

    fn since(&self, xid: Xid) -> u64 {
        self.active
            .get(&xid)
            .and_then(|t| t.wait.as_ref())
            .map_or(u64::MAX, |w| w.since)
    }
}

/// One version of a row.
#[derive(Debug, Clone)]
pub(crate) struct Version<V> {
    xmin: Xid,
    cmin: u32,
    /// The transaction (and command) that updated or deleted this version.
    /// Ignored if that transaction aborted.
    xmax: Option<(Xid, u32)>,
    /// The index of the version an update replaced this one with; `None`
    /// with a committed `xmax` means deleted.
    next: Option<usize>,
    pub(crate) data: V,
}

/// A row lock: one holder (the model has only the exclusive row-lock
/// strengths), and the waiters in arrival order, like PostgreSQL's tuple
/// lock queue.
#[derive(Debug, Default)]
struct RowLock {
    holder: Option<Xid>,
    queue: VecDeque<Xid>,
}

/// A table with a primary key: every version of every key, and row locks.
#[derive(Debug)]
pub(crate) struct Table<K, V> {
    rows: BTreeMap<K, Vec<Version<V>>>,
    locks: HashMap<K, RowLock>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            locks: HashMap::new(),
        }
    }
}

/// Where an update chain leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// The newest version; `traversed` if it is not the one we started at.
    Latest { idx: usize, traversed: bool },
    /// A committed delete ends the chain: the row is gone.
    Deleted,
    /// Our own statement already modified it (PostgreSQL skips the row).
    SelfModified,
    /// A transaction still in progress modified it: wait for it.
    Busy(Xid),
}

/// The result of a unique-index check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unique {
    Free,
    Conflict,
    /// A concurrent inserter or deleter of the key is still in progress.
    WaitFor(Xid),
}

/// How a locking read or write treats a row locked by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockWait {
    /// Wait for the holder (`FOR UPDATE`, and every UPDATE or DELETE).
    #[default]
    Block,
    /// Leave the row out (`SKIP LOCKED`).
    SkipLocked,
    /// Fail with a lock-not-available error (`NOWAIT`).
    NoWait,
}

/// The result of trying to take a row lock.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryLock {
    Acquired,
    Skip,
    Unavailable,
    /// Queued; wait on these transactions.
    Wait(Vec<Xid>),
}

impl<K: Ord + Clone + Hash, V> Table<K, V> {
    fn versions(&self, key: &K) -> &[Version<V>] {
        self.rows.get(key).map_or(&[][..], Vec::as_slice)
    }

    fn inserted_visible(v: &Version<V>, txs: &Txs, snap: &Snapshot) -> bool {
        if v.xmin == snap.xid {
            v.cmin < snap.cid
        } else {
            txs.committed_in(v.xmin, snap)
        }
    }

    fn deleted_visible(v: &Version<V>, txs: &Txs, snap: &Snapshot) -> bool {
        match v.xmax {
            None => false,
            Some((x, cmax)) if x == snap.xid => cmax < snap.cid,
            Some((x, _)) => txs.committed_in(x, snap),
        }
    }

    /// The version of `key` the snapshot sees, if any.
    pub(crate) fn visible(&self, txs: &Txs, snap: &Snapshot, key: &K) -> Option<usize> {
        self.versions(key).iter().rposition(|v| {
            Self::inserted_visible(v, txs, snap) && !Self::deleted_visible(v, txs, snap)
        })
    }

    pub(crate) fn data(&self, key: &K, idx: usize) -> &V {
        &self.versions(key)[idx].data
    }

    /// Every key with a version the snapshot sees, in key order, within
    /// `range`.
    pub(crate) fn scan<'a, 'b>(
        &'a self,
        txs: &'b Txs,
        snap: &Snapshot,
        range: impl std::ops::RangeBounds<K> + 'b,
    ) -> impl Iterator<Item = (&'a K, usize)> + 'b
    where
        'a: 'b,
    {
        let snap = *snap;
        self.rows.range(range).filter_map(move |(k, versions)| {
            versions
                .iter()
                .rposition(|v| {
                    Self::inserted_visible(v, txs, &snap) && !Self::deleted_visible(v, txs, &snap)
                })
                .map(|i| (k, i))
        })
    }

    /// Follows the update chain from version `idx` to the newest version,
    /// as PostgreSQL does before re-checking a row it must update or lock.
    pub(crate) fn chain(&self, txs: &Txs, snap: &Snapshot, key: &K, mut idx: usize) -> Chain {
        let versions = self.versions(key);
        let mut traversed = false;
        loop {
            let v = &versions[idx];
            match v.xmax {
                None => return Chain::Latest { idx, traversed },
                Some((x, cmax)) if x == snap.xid => {
                    // Modified by an earlier statement of ours: the newer
                    // version is ours too and is the one to use; modified by
                    // this very statement: skip (PostgreSQL's "self-updated").
                    if cmax >= snap.cid {
                        return Chain::SelfModified;
                    }
                    match v.next {
                        Some(next) => {
                            idx = next;
                            traversed = true;
                        }
                        None => return Chain::Deleted,
                    }
                }
                Some((x, _)) => match txs.status(x) {
                    TxStatus::Aborted => return Chain::Latest { idx, traversed },
                    TxStatus::InProgress => return Chain::Busy(x),
                    TxStatus::Committed(_) => match v.next {
                        Some(next) => {
                            idx = next;
                            traversed = true;
                        }
                        None => return Chain::Deleted,
                    },
                },
            }
        }
    }

    /// The unique-index check an INSERT makes: it sees rows of transactions
    /// still in progress (PostgreSQL's dirty snapshot) and waits for them.
    pub(crate) fn unique(&self, txs: &Txs, me: Xid, key: &K) -> Unique {
        self.versions(key)
            .iter()
            .find_map(|v| index_entry(txs, me, v))
            .unwrap_or(Unique::Free)
    }

    /// The check of a unique index over something other than the primary
    /// key (a partial index: `matches` is its key equality and predicate,
    /// per row version). Each matching version is an index entry; as in
    /// `_bt_check_unique`, an entry whose inserter or deleter is still in
    /// progress makes the inserter wait, a live one is a conflict.
    pub(crate) fn unique_where(&self, txs: &Txs, me: Xid, matches: impl Fn(&V) -> bool) -> Unique {
        self.rows
            .values()
            .flatten()
            .filter(|v| matches(&v.data))
            .find_map(|v| index_entry(txs, me, v))
            .unwrap_or(Unique::Free)
    }

    /// Adds a new row.
    pub(crate) fn insert(&mut self, snap: &Snapshot, key: K, data: V) {
        self.rows.entry(key).or_default().push(Version {
            xmin: snap.xid,
            cmin: snap.cid,
            xmax: None,
            next: None,
            data,
        });
    }

    /// `ROLLBACK TO SAVEPOINT`: what `xid` wrote from command `cid` on is
    /// undone. Its new versions die (they take `dead`, an aborted
    /// transaction, as their inserter, as a rolled-back subtransaction's
    /// rows are); the versions it replaced or deleted are live again.
    pub(crate) fn rollback_to(&mut self, xid: Xid, cid: u32, dead: Xid) {
        for versions in self.rows.values_mut() {
            for v in versions.iter_mut() {
                if v.xmin == xid && v.cmin >= cid {
                    v.xmin = dead;
                }
                if let Some((x, c)) = v.xmax
                    && x == xid
                    && c >= cid
                {
                    v.xmax = None;
                    v.next = None;
                }
            }
        }
    }

    /// Replaces version `idx` (the newest, locked by us) with `data`, or
    /// deletes it (`None`).
    pub(crate) fn write(&mut self, snap: &Snapshot, key: &K, idx: usize, data: Option<V>) {
        let Some(versions) = self.rows.get_mut(key) else {
            debug_assert!(false, "write to a missing row");
            return;
        };
        versions[idx].xmax = Some((snap.xid, snap.cid));
        versions[idx].next = None;
        if let Some(data) = data {
            versions.push(Version {
                xmin: snap.xid,
                cmin: snap.cid,
                xmax: None,
                next: None,
                data,
            });
            let new = versions.len() - 1;
            versions[idx].next = Some(new);
        }
    }

    /// Tries to lock `key` for `me`. Queues `me` if it must wait.
    pub(crate) fn try_lock(
        &mut self,
        me: Xid,
        key: &K,
        wait: LockWait,
        skip_locked_skips: bool,
    ) -> TryLock {
        let lock = self.locks.entry(key.clone()).or_default();
        match lock.holder {
            Some(h) if h == me => return TryLock::Acquired,
            None if lock.queue.is_empty() => {
                lock.holder = Some(me);
                return TryLock::Acquired;
            }
            _ => {}
        }
        // Held by another transaction, or others queue for it (a queued
        // waiter holds PostgreSQL's tuple lock, so SKIP LOCKED skips too).
        match wait {
            LockWait::SkipLocked if skip_locked_skips => TryLock::Skip,
            LockWait::NoWait => TryLock::Unavailable,
            LockWait::Block | LockWait::SkipLocked => {
                let mut edges: Vec<Xid> = lock.holder.into_iter().collect();
                edges.extend(lock.queue.iter().copied());
                lock.queue.push_back(me);
                TryLock::Wait(edges)
            }
        }
    }

    /// Releases `me`'s lock on `key` and hands it to the next waiter.
    fn release(&mut self, me: Xid, key: &K) -> Option<Xid> {
        let lock = self.locks.get_mut(key)?;
        if lock.holder != Some(me) {
            return None;
        }
        lock.holder = lock.queue.pop_front();
        let granted = lock.holder;
        if granted.is_none() {
            self.locks.remove(key);
        }
        granted
    }

    fn dequeue(&mut self, me: Xid, key: &K) {
        if let Some(lock) = self.locks.get_mut(key) {
            lock.queue.retain(|&x| x != me);
        }
    }

    /// Every committed version of every row, with the commit sequence
    /// number of the transaction that wrote it, in commit order (a
    /// transaction's versions of one row in the order it wrote them). The
    /// history a fencing check reads: nothing is ever vacuumed.
    pub(crate) fn history(&self, txs: &Txs) -> Vec<(u64, &K, &V)> {
        let mut out: Vec<(u64, &K, &V)> = Vec::new();
        for (k, versions) in &self.rows {
            for v in versions {
                if let TxStatus::Committed(csn) = txs.status(v.xmin) {
                    out.push((csn, k, &v.data));
                }
            }
        }
        // Stable: versions of one row and one transaction keep their order.
        out.sort_by_key(|(csn, _, _)| *csn);
        out
    }

    /// Every committed deletion: the deleter's commit sequence number and
    /// the key, in commit order.
    pub(crate) fn deletions(&self, txs: &Txs) -> Vec<(u64, &K)> {
        let mut out: Vec<(u64, &K)> = Vec::new();
        for (k, versions) in &self.rows {
            for v in versions {
                if v.next.is_none()
                    && let Some((xmax, _)) = v.xmax
                    && let TxStatus::Committed(csn) = txs.status(xmax)
                {
                    out.push((csn, k));
                }
            }
        }
        out.sort_by_key(|(csn, _)| *csn);
        out
    }

    /// The newest committed version of every live row, in key order.
    pub(crate) fn committed(&self, txs: &Txs) -> Vec<(&K, &V)> {
        let snap = Snapshot {
            csn: txs.csn,
            xid: Xid::MAX,
            cid: 0,
        };
        self.scan(txs, &snap, ..)
            .map(|(k, i)| (k, &self.versions(k)[i].data))
            .collect()
    }
}

/// Deliberate model bugs, for showing that the conformance suite catches
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Defects {
    pub(crate) skip_locked_does_not_skip: bool,
    pub(crate) update_ignores_newer_versions: bool,
}

/// A CHECK constraint's predicate over a row.
pub(crate) type Check = std::sync::Arc<dyn Fn(&serde_json::Value) -> bool + Send + Sync>;

/// The whole database.
#[derive(Default)]
pub(crate) struct Db {
    pub(crate) txs: Txs,
    pub(crate) workflows: Table<String, WorkflowRecord>,
    pub(crate) steps: Table<(String, i32), StepRecordRow>,
    pub(crate) app: HashMap<String, Table<Key, serde_json::Value>>,
    /// CHECK constraints of application tables, by table: name and
    /// predicate (`MemStorage::add_check`).
    pub(crate) checks: HashMap<String, Vec<(String, Check)>>,
    pub(crate) executors: Table<String, ExecutorRecord>,
    /// `tandem.workflow_names`: the input types of each name.
    pub(crate) workflow_names: Table<String, Vec<String>>,
    pub(crate) queues: Table<String, QueueRecord>,
    pub(crate) schedules: Table<String, ScheduleRecord>,
    pub(crate) settings: Table<String, String>,
    pub(crate) messages: Table<i64, MessageRecord>,
    pub(crate) events: Table<(String, String), EventRecord>,
    /// The identity sequence of `tandem.messages`: like a PostgreSQL
    /// sequence, not transactional (a rolled-back send leaves a gap).
    pub(crate) message_seq: i64,
    /// Generated workflow IDs (`gen_random_uuid()` in PostgreSQL; a counter
    /// here, so that simulations replay).
    pub(crate) uuid_seq: u64,
    /// The database clock: the latest engine clock any operation passed in
    /// (see `docs/memory-backend.md`).
    pub(crate) clock_ms: i64,
    pub(crate) hook: Option<FaultHook>,
    pub(crate) defects: Defects,
}

/// Picks one table out of the [`Db`] (with the transaction state beside it,
/// as the two are borrowed together).
pub(crate) trait TableSel {
    type K: Ord + Clone + Hash + Send + Sync;
    type V: Clone + Send + Sync;
    fn split<'a>(&self, db: &'a mut Db) -> (&'a mut Table<Self::K, Self::V>, &'a mut Txs);
    fn lock_ref(&self, key: &Self::K) -> LockRef;
    /// The table's name, for error messages.
    fn name(&self) -> &str;
}

pub(crate) struct Workflows;
pub(crate) struct Steps;
pub(crate) struct App<'n>(pub(crate) &'n str);

impl TableSel for Workflows {
    type K = String;
    type V = WorkflowRecord;
    fn split<'a>(&self, db: &'a mut Db) -> (&'a mut Table<String, WorkflowRecord>, &'a mut Txs) {
        (&mut db.workflows, &mut db.txs)
    }
    fn lock_ref(&self, key: &String) -> LockRef {
        LockRef::Workflow(key.clone())
    }
    fn name(&self) -> &str {
        "tandem.workflows"
    }
}

impl TableSel for Steps {
    type K = (String, i32);
    type V = StepRecordRow;
    fn split<'a>(
        &self,
        db: &'a mut Db,
    ) -> (&'a mut Table<(String, i32), StepRecordRow>, &'a mut Txs) {
        (&mut db.steps, &mut db.txs)
    }
    fn lock_ref(&self, key: &(String, i32)) -> LockRef {
        LockRef::Step(key.0.clone(), key.1)
    }
    fn name(&self) -> &str {
        "tandem.steps"
    }
}

/// A [`TableSel`] for one of the engine's fixed tables.
macro_rules! engine_table {
    ($sel:ident, $field:ident, $k:ty, $v:ty, $name:literal, |$key:ident| $lock:expr) => {
        pub(crate) struct $sel;
        impl TableSel for $sel {
            type K = $k;
            type V = $v;
            fn split<'a>(&self, db: &'a mut Db) -> (&'a mut Table<$k, $v>, &'a mut Txs) {
                (&mut db.$field, &mut db.txs)
            }
            fn lock_ref(&self, $key: &$k) -> LockRef {
                $lock
            }
            fn name(&self) -> &str {
                $name
            }
        }
    };
}

engine_table!(
    Executors,
    executors,
    String,
    ExecutorRecord,
    "tandem.executors",
    |k| LockRef::Executor(k.clone())
);
engine_table!(
    WorkflowNames,
    workflow_names,
    String,
    Vec<String>,
    "tandem.workflow_names",
    |k| LockRef::WorkflowName(k.clone())
);
engine_table!(Queues, queues, String, QueueRecord, "tandem.queues", |k| {
    LockRef::Queue(k.clone())
});
engine_table!(
    Schedules,
    schedules,
    String,
    ScheduleRecord,
    "tandem.schedules",
    |k| LockRef::Schedule(k.clone())
);
engine_table!(Settings, settings, String, String, "tandem.settings", |k| {
    LockRef::Setting(k.clone())
});
engine_table!(
    Messages,
    messages,
    i64,
    MessageRecord,
    "tandem.messages",
    |k| LockRef::Message(*k)
);
engine_table!(
    Events,
    events,
    (String, String),
    EventRecord,
    "tandem.events",
    |k| LockRef::Event(k.0.clone(), k.1.clone())
);

impl TableSel for App<'_> {
    type K = Key;
    type V = serde_json::Value;
    fn split<'a>(&self, db: &'a mut Db) -> (&'a mut Table<Key, serde_json::Value>, &'a mut Txs) {
        // Tables spring into existence on first use (there is no DDL).
        if !db.app.contains_key(self.0) {
            db.app.insert(self.0.to_owned(), Table::default());
        }
        let table = db.app.get_mut(self.0).expect("just inserted");
        (table, &mut db.txs)
    }
    fn lock_ref(&self, key: &Key) -> LockRef {
        LockRef::App(self.0.to_owned(), key.clone())
    }
    fn name(&self) -> &str {
        self.0
    }
}

impl Db {
    /// A database as migrations leave it: the `default` queue and the
    /// default settings, committed.
    pub(crate) fn migrated() -> Db {
        let mut db = Db::default();
        let xid = db.begin();
        let snap = db.snapshot(xid, 0);
        db.queues.insert(
            &snap,
            "default".to_owned(),
            QueueRecord {
                concurrency_global: None,
                rate_limit: None,
                concurrency_per_key: None,
                retention_ms: None,
            },
        );
        db.settings
            .insert(&snap, "payload_max_bytes".to_owned(), "1048576".to_owned());
        db.settings
            .insert(&snap, "notify_on_enqueue".to_owned(), "true".to_owned());
        db.end(xid, true);
        db
    }

    /// Advances the database clock to the engine's `now_ms` (never back).
    pub(crate) fn tick(&mut self, now_ms: i64) -> i64 {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.clock_ms
    }

    pub(crate) fn begin(&mut self) -> Xid {
        self.txs.next_xid += 1;
        let xid = self.txs.next_xid;
        self.txs.active.insert(xid, ActiveTx::default());
        xid
    }

    pub(crate) fn snapshot(&self, xid: Xid, cid: u32) -> Snapshot {
        Snapshot {
            csn: self.txs.csn,
            xid,
            cid,
        }
    }

    pub(crate) fn fault(&self, point: super::FaultPoint) -> Option<Fault> {
        self.hook.as_ref().and_then(|hook| hook(point))
    }

    /// Records that `me` holds the lock on `key` (for release at its end).
    pub(crate) fn note_lock<T: TableSel>(&mut self, sel: &T, me: Xid, key: &T::K) {
        let r = sel.lock_ref(key);
        if let Some(tx) = self.txs.active.get_mut(&me)
            && !tx.locks.contains(&r)
        {
            tx.locks.push(r);
        }
    }

    /// Drops a lock `me` holds before its end: PostgreSQL takes no lock on a
    /// row it found deleted after waiting.
    pub(crate) fn unlock<T: TableSel>(&mut self, sel: &T, me: Xid, key: &T::K) {
        let r = sel.lock_ref(key);
        if let Some(tx) = self.txs.active.get_mut(&me) {
            tx.locks.retain(|l| *l != r);
        }
        self.release(&r, me);
    }

    /// Blocks `me` on `target`. Runs deadlock detection; on a cycle the
    /// longest-waiting member is aborted (which may be `me`: then `Err`).
    pub(crate) fn wait(
        &mut self,
        me: Xid,
        target: WaitTarget,
        edges: Vec<Xid>,
    ) -> Result<oneshot::Receiver<WaitOutcome>, ()> {
        let (wake, receiver) = oneshot::channel();
        if let WaitTarget::Tx(x) = target
            && let Some(other) = self.txs.active.get_mut(&x)
        {
            other.end_waiters.push(me);
        }
        self.txs.wait_seq += 1;
        let since = self.txs.wait_seq;
        if let Some(tx) = self.txs.active.get_mut(&me) {
            tx.wait = Some(Wait {
                target,
                edges,
                since,
                wake,
            });
        }
        while let Some(cycle) = self.txs.find_cycle(me) {
            let victim = cycle
                .iter()
                .copied()
                .min_by_key(|&x| self.txs.since(x))
                .unwrap_or(me);
            self.cancel_wait(victim, WaitOutcome::Deadlock);
            self.end(victim, false);
            if victim == me {
                return Err(());
            }
        }
        Ok(receiver)
    }

    /// Takes `xid` out of whatever queue it waits in and wakes it.
    fn cancel_wait(&mut self, xid: Xid, outcome: WaitOutcome) {
        let Some(wait) = self.txs.active.get_mut(&xid).and_then(|t| t.wait.take()) else {
            return;
        };
        match &wait.target {
            WaitTarget::Tx(x) => {
                if let Some(other) = self.txs.active.get_mut(x) {
                    other.end_waiters.retain(|&w| w != xid);
                }
            }
            WaitTarget::Row(r) => self.dequeue(r, xid),
        }
        let _ = wait.wake.send(outcome);
    }

    fn wake(&mut self, xid: Xid, outcome: WaitOutcome) {
        if let Some(wait) = self.txs.active.get_mut(&xid).and_then(|t| t.wait.take()) {
            // The receiver is gone only if the waiting statement's future was
            // dropped; its transaction then ends when its connection drops.
            let _ = wait.wake.send(outcome);
        }
    }

    /// Commits or aborts `xid`: releases its locks (handing each to the next
    /// waiter) and wakes everyone waiting for it to end. Idempotent.
    /// How many row locks `xid` holds (a savepoint remembers it).
    pub(crate) fn locks_held(&self, xid: Xid) -> usize {
        self.txs.active.get(&xid).map_or(0, |t| t.locks.len())
    }

    /// `ROLLBACK TO SAVEPOINT` of `xid`'s savepoint taken before command
    /// `cid`, when it held `locks` row locks: its writes since are undone,
    /// the row locks it took since are released (to their next waiter), and
    /// whoever waits for it to end (a unique check on a row it inserted)
    /// checks again.
    pub(crate) fn rollback_to(&mut self, xid: Xid, cid: u32, locks: usize) {
        self.txs.next_xid += 1;
        let dead = self.txs.next_xid;
        self.txs.ended.insert(dead, TxStatus::Aborted);
        self.workflows.rollback_to(xid, cid, dead);
        self.steps.rollback_to(xid, cid, dead);
        for t in self.app.values_mut() {
            t.rollback_to(xid, cid, dead);
        }
        self.executors.rollback_to(xid, cid, dead);
        self.workflow_names.rollback_to(xid, cid, dead);
        self.queues.rollback_to(xid, cid, dead);
        self.schedules.rollback_to(xid, cid, dead);
        self.settings.rollback_to(xid, cid, dead);
        self.messages.rollback_to(xid, cid, dead);
        self.events.rollback_to(xid, cid, dead);
        let (released, waiters) = match self.txs.active.get_mut(&xid) {
            Some(tx) => {
                let keep = locks.min(tx.locks.len());
                (
                    tx.locks.split_off(keep),
                    std::mem::take(&mut tx.end_waiters),
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        for r in &released {
            self.release(r, xid);
        }
        for waiter in waiters {
            self.wake(waiter, WaitOutcome::Ended);
        }
    }

    pub(crate) fn end(&mut self, xid: Xid, commit: bool) {
        if !self.txs.active.contains_key(&xid) {
            return;
        }
        self.cancel_wait(xid, WaitOutcome::Deadlock);
        let Some(tx) = self.txs.active.remove(&xid) else {
            return;
        };
        let status = if commit {
            self.txs.csn += 1;
            TxStatus::Committed(self.txs.csn)
        } else {
            TxStatus::Aborted
        };
        self.txs.ended.insert(xid, status);
        for r in &tx.locks {
            self.release(r, xid);
        }
        for waiter in tx.end_waiters {
            self.wake(waiter, WaitOutcome::Ended);
        }
    }

    fn release(&mut self, r: &LockRef, xid: Xid) {
        let granted = match r {
            LockRef::Workflow(k) => self.workflows.release(xid, k),
            LockRef::Step(w, s) => self.steps.release(xid, &(w.clone(), *s)),
            LockRef::App(t, k) => self.app.get_mut(t).and_then(|t| t.release(xid, k)),
            LockRef::Executor(k) => self.executors.release(xid, k),
            LockRef::WorkflowName(k) => self.workflow_names.release(xid, k),
            LockRef::Queue(k) => self.queues.release(xid, k),
            LockRef::Schedule(k) => self.schedules.release(xid, k),
            LockRef::Setting(k) => self.settings.release(xid, k),
            LockRef::Message(k) => self.messages.release(xid, k),
            LockRef::Event(w, k) => self.events.release(xid, &(w.clone(), k.clone())),
        };
        if let Some(next) = granted {
            if let Some(tx) = self.txs.active.get_mut(&next) {
                tx.locks.push(r.clone());
            }
            self.wake(next, WaitOutcome::Granted);
        }
    }

    fn dequeue(&mut self, r: &LockRef, xid: Xid) {
        match r {
            LockRef::Workflow(k) => self.workflows.dequeue(xid, k),
            LockRef::Step(w, s) => self.steps.dequeue(xid, &(w.clone(), *s)),
            LockRef::App(t, k) => {
                if let Some(t) = self.app.get_mut(t) {
                    t.dequeue(xid, k);
                }
            }
            LockRef::Executor(k) => self.executors.dequeue(xid, k),
            LockRef::WorkflowName(k) => self.workflow_names.dequeue(xid, k),
            LockRef::Queue(k) => self.queues.dequeue(xid, k),
            LockRef::Schedule(k) => self.schedules.dequeue(xid, k),
            LockRef::Setting(k) => self.settings.dequeue(xid, k),
            LockRef::Message(k) => self.messages.dequeue(xid, k),
            LockRef::Event(w, k) => self.events.dequeue(xid, &(w.clone(), k.clone())),
        }
    }
}

/// What one index entry (a row version) means for an inserter of the same
/// key: `None` when the entry is dead to it (inserted by an aborted
/// transaction, or deleted by a committed one or by the inserter itself), so
/// the check goes on to the next entry.
fn index_entry<V>(txs: &Txs, me: Xid, v: &Version<V>) -> Option<Unique> {
    let inserted = if v.xmin == me {
        true
    } else {
        match txs.status(v.xmin) {
            TxStatus::Aborted => false,
            // Even if its own inserter already deleted it again: PostgreSQL's
            // dirty snapshot reports a row whose inserter is in progress
            // without looking at its deleter ("XXX shouldn't we fall through
            // to look at xmax?" in HeapTupleSatisfiesDirty), so the unique
            // check waits for that transaction. Found by the differential
            // test: an executor row upserted and deleted by one open
            // transaction (a heartbeat, then a release) makes a concurrent
            // registration of that executor wait.
            TxStatus::InProgress => return Some(Unique::WaitFor(v.xmin)),
            TxStatus::Committed(_) => true,
        }
    };
    if !inserted {
        return None;
    }
    match v.xmax {
        None => Some(Unique::Conflict),
        Some((x, _)) if x == me => None,
        Some((x, _)) => match txs.status(x) {
            TxStatus::Aborted => Some(Unique::Conflict),
            TxStatus::InProgress => Some(Unique::WaitFor(x)),
            TxStatus::Committed(_) => None,
        },
    }
}
