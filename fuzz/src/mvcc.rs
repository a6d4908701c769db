//! The `mvcc_model` target: the memory backend's MVCC model
//! (`tandem::MemStorage`) against a serial reference of READ COMMITTED
//! (`mvcc/reference.rs`), after sled's `fuzz_model.rs`.
//!
//! An input decodes into 2 to 4 sessions and at most [`OPS_MAX`] operations
//! on one table of keys 0..=4: begin, reads (plain, `FOR UPDATE` waiting,
//! `SKIP LOCKED` or `NOWAIT`), scans (filtered, limited, locking or not),
//! inserts, `ON CONFLICT DO NOTHING` inserts, `v = v + d` with and without
//! `WHERE v < c`, deletes, commit, rollback, a session's disconnect and a
//! restart of the database. The model runs single-threaded: each session's
//! statement is a future that owns its transaction, polled by hand; a
//! statement that returns `Pending` is blocked. Every operation's result
//! (values, SQLSTATE or "blocks"), which sessions a step wakes, which
//! sessions are blocked and the committed table must equal the reference's
//! after every step. Independently of the reference, a ledger replays the
//! writes the model reported of every transaction that committed, in commit
//! order, and checks that each increment applied to the value before it (no
//! lost update) and that the committed table is exactly those writes.

mod reference;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Value, json};
use tandem::MemStorage;
use tandem::storage::memory::{MemConn, MemError, MemTx, RowLock, Scan};
use tandem::storage::{Storage, Transaction};

use reference::{Reference, Sid, Step};

/// The work per input is bounded so that the fuzzer keeps its speed.
pub const OPS_MAX: usize = 64;

/// The one application table.
const TABLE: &str = "t";

/// How a locking read treats a row someone else has locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockMode {
    Block,
    SkipLocked,
    NoWait,
}

/// One statement, as both the model and the reference run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stmt {
    /// `SELECT v FROM t WHERE k = $1`.
    Get { k: u8 },
    /// `SELECT v FROM t WHERE k = $1 FOR UPDATE [SKIP LOCKED | NOWAIT]`.
    GetLocked { k: u8, wait: LockMode },
    /// `SELECT k, v FROM t [WHERE v < below] ORDER BY k [LIMIT n] [FOR UPDATE ..]`.
    Scan {
        below: Option<i64>,
        limit: Option<usize>,
        lock: Option<LockMode>,
    },
    /// `INSERT INTO t VALUES (k, val) [ON CONFLICT DO NOTHING]`.
    Insert { k: u8, val: i64, ignore: bool },
    /// `UPDATE t SET v = v + d WHERE k = $1 [AND v < below] RETURNING v`.
    Add { k: u8, d: i64, below: Option<i64> },
    /// `DELETE FROM t WHERE k = $1`.
    Delete { k: u8 },
}

/// What a statement or commit returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Value(Option<i64>),
    Rows(Vec<(i64, i64)>),
    Updated(Option<i64>),
    Inserted(bool),
    Deleted(bool),
    Ok,
    /// The SQLSTATE.
    Err(&'static str),
}

/// One step of a scenario.
#[derive(Debug, Clone, Copy)]
enum Action {
    Begin(Sid),
    Stmt(Sid, Stmt),
    Commit(Sid),
    Rollback(Sid),
    /// The session's connection drops (its transaction rolls back), even
    /// while its statement is blocked.
    Disconnect(Sid),
    /// The database restarts: every transaction is gone, committed rows
    /// stay. `fresh`: the restarted database is a new `MemStorage` loaded
    /// with the committed rows, as recovery would leave it.
    Crash {
        fresh: bool,
    },
}

/// The raw operation the fuzzer's bytes decode to; small fields are reduced
/// into range so that most bytes mean something and keys collide often.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum RawOp {
    Begin(u8),
    Get(u8, u8),
    GetLocked(u8, u8, u8),
    Scan {
        s: u8,
        below: Option<u8>,
        limit: Option<u8>,
        lock: Option<u8>,
    },
    Insert(u8, u8, u8),
    InsertOrIgnore(u8, u8, u8),
    Add(u8, u8, u8),
    AddIfBelow(u8, u8, u8, u8),
    Delete(u8, u8),
    Commit(u8),
    Rollback(u8),
    Disconnect(u8),
    Crash(bool),
}

/// Decodes an input: the number of sessions and the steps.
fn decode(data: &[u8]) -> (usize, Vec<Action>) {
    let mut u = Unstructured::new(data);
    let sessions = 2 + usize::from(u.arbitrary::<u8>().unwrap_or(0) % 3);
    let mut actions = Vec::new();
    while actions.len() < OPS_MAX && !u.is_empty() {
        let Ok(op) = u.arbitrary::<RawOp>() else {
            break;
        };
        let s = |b: u8| usize::from(b) % sessions;
        let k = |b: u8| b % 5;
        let val = |b: u8| i64::from(b % 8);
        let delta = |b: u8| i64::from(b % 7) - 3;
        let wait = |b: u8| match b % 3 {
            0 => LockMode::Block,
            1 => LockMode::SkipLocked,
            _ => LockMode::NoWait,
        };
        actions.push(match op {
            RawOp::Begin(x) => Action::Begin(s(x)),
            RawOp::Get(x, y) => Action::Stmt(s(x), Stmt::Get { k: k(y) }),
            RawOp::GetLocked(x, y, z) => Action::Stmt(
                s(x),
                Stmt::GetLocked {
                    k: k(y),
                    wait: wait(z),
                },
            ),
            RawOp::Scan {
                s: x,
                below,
                limit,
                lock,
            } => Action::Stmt(
                s(x),
                Stmt::Scan {
                    below: below.map(|c| i64::from(c % 10)),
                    limit: limit.map(|n| usize::from(n % 4)),
                    lock: lock.map(wait),
                },
            ),
            RawOp::Insert(x, y, z) => Action::Stmt(
                s(x),
                Stmt::Insert {
                    k: k(y),
                    val: val(z),
                    ignore: false,
                },
            ),
            RawOp::InsertOrIgnore(x, y, z) => Action::Stmt(
                s(x),
                Stmt::Insert {
                    k: k(y),
                    val: val(z),
                    ignore: true,
                },
            ),
            RawOp::Add(x, y, z) => Action::Stmt(
                s(x),
                Stmt::Add {
                    k: k(y),
                    d: delta(z),
                    below: None,
                },
            ),
            RawOp::AddIfBelow(x, y, z, c) => Action::Stmt(
                s(x),
                Stmt::Add {
                    k: k(y),
                    d: delta(z),
                    below: Some(i64::from(c % 10)),
                },
            ),
            RawOp::Delete(x, y) => Action::Stmt(s(x), Stmt::Delete { k: k(y) }),
            RawOp::Commit(x) => Action::Commit(s(x)),
            RawOp::Rollback(x) => Action::Rollback(s(x)),
            RawOp::Disconnect(x) => Action::Disconnect(s(x)),
            RawOp::Crash(fresh) => Action::Crash { fresh },
        });
    }
    (sessions, actions)
}

/// Runs one input: panics, naming the step, on any difference between the
/// model and the reference or on a broken invariant.
pub fn run(data: &[u8]) {
    drive(data, None, &MemStorage::new);
}

/// Runs one input like [`run`] against the storages `storage` makes (at the
/// start and at each restart): how tests show that a deliberately wrong
/// model (`MemStorage::with_defect`) fails the target.
pub fn run_on(data: &[u8], storage: &dyn Fn() -> MemStorage) {
    drive(data, None, storage);
}

/// Runs one input like [`run`] and returns what happened, a line per step
/// (`s1 Add { .. } -> Blocked`) and per resumed statement
/// (`  s1 resumed -> Updated(Some(2))`), for tests that name the outcome of
/// a scenario.
pub fn transcript(data: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    drive(data, Some(&mut lines), &MemStorage::new);
    lines
}

fn drive(data: &[u8], log: Option<&mut Vec<String>>, storage: &dyn Fn() -> MemStorage) {
    let (sessions, actions) = decode(data);
    let mut h = Harness::new(sessions, storage);
    h.log = log;
    for (i, action) in actions.iter().enumerate() {
        h.step(*action).unwrap_or_else(|why| {
            panic!(
                "mvcc_model: step {i} ({action:?}) of {sessions} sessions: {why}\nscenario: {actions:?}"
            )
        });
    }
}

/// A statement of the model in flight: it owns its transaction and hands it
/// back with the outcome.
type Flight = Pin<Box<dyn Future<Output = (MemTx, Outcome)>>>;

/// A waker that remembers it was woken: the harness resumes exactly the
/// sessions whose wait ended, in session order, as the reference does.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Session {
    tx: Option<MemTx>,
    flight: Option<Flight>,
    /// The statement in flight, to record its write when it finishes.
    pending: Option<Stmt>,
    /// The transaction's ID, for `is_waiting` while the flight owns it.
    tx_id: Option<u64>,
    /// The transaction's writes as the model reported them, for the ledger.
    writes: Vec<(u8, Write)>,
    /// A statement failed: its COMMIT is a rollback.
    failed: bool,
    flag: Arc<Flag>,
    waker: Waker,
}

#[derive(Debug, Clone, Copy)]
enum Write {
    Insert(i64),
    Add { d: i64, new: i64 },
    Delete,
}

struct Harness<'l> {
    log: Option<&'l mut Vec<String>>,
    new_storage: &'l dyn Fn() -> MemStorage,
    storage: MemStorage,
    reference: Reference,
    sessions: Vec<Session>,
    /// The committed table as the model's own reports imply it.
    ledger: BTreeMap<u8, i64>,
}

impl<'l> Harness<'l> {
    fn new(sessions: usize, new_storage: &'l dyn Fn() -> MemStorage) -> Self {
        Self {
            log: None,
            new_storage,
            storage: new_storage(),
            reference: Reference::new(sessions),
            sessions: (0..sessions)
                .map(|_| {
                    let flag = Arc::new(Flag::default());
                    Session {
                        tx: None,
                        flight: None,
                        pending: None,
                        tx_id: None,
                        writes: Vec::new(),
                        failed: false,
                        waker: Waker::from(flag.clone()),
                        flag,
                    }
                })
                .collect(),
            ledger: BTreeMap::new(),
        }
    }

    fn step(&mut self, action: Action) -> Result<(), String> {
        match action {
            // A blocked session can only be disconnected (or crash).
            Action::Begin(s) | Action::Stmt(s, _) | Action::Commit(s) | Action::Rollback(s)
                if self.sessions[s].flight.is_some() => {}
            Action::Begin(s) => {
                self.begin(s);
                self.reference.begin(s);
            }
            Action::Stmt(s, stmt) => {
                self.begin(s);
                let model = self.statement(s, stmt);
                let reference = self.reference.statement(s, stmt);
                if model != reference {
                    return Err(format!("model {model:?}, reference {reference:?}"));
                }
                self.note(|| format!("s{s} {stmt:?} -> {model:?}"));
                self.settle()?;
            }
            Action::Commit(s) | Action::Rollback(s) if self.sessions[s].tx.is_none() => {}
            Action::Commit(s) => {
                let model = self.commit(s)?;
                let reference = self.reference.commit(s);
                if model != reference {
                    return Err(format!("commit: model {model:?}, reference {reference:?}"));
                }
                self.note(|| format!("s{s} commit -> {model:?}"));
                self.settle()?;
            }
            Action::Rollback(s) => {
                let tx = self.end_session(s).expect("a transaction");
                let model = outcome(poll_once(tx.rollback()));
                let reference = self.reference.rollback(s);
                if model != reference {
                    return Err(format!(
                        "rollback: model {model:?}, reference {reference:?}"
                    ));
                }
                self.note(|| format!("s{s} rollback -> {model:?}"));
                self.settle()?;
            }
            Action::Disconnect(s) => {
                drop(self.end_session(s));
                self.reference.disconnect(s);
                self.note(|| format!("s{s} disconnect"));
                self.settle()?;
            }
            Action::Crash { fresh } => {
                for s in 0..self.sessions.len() {
                    drop(self.end_session(s));
                }
                self.reference.crash();
                if fresh {
                    self.storage = restart(&self.ledger, self.new_storage);
                }
                self.note(|| format!("crash (fresh: {fresh})"));
            }
        }
        self.check()
    }

    /// Adds a line to the transcript, if one is kept (formatting costs
    /// the fuzzer speed otherwise).
    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(log) = &mut self.log {
            log.push(line());
        }
    }

    /// Begins a transaction in session `s` unless it has one.
    fn begin(&mut self, s: Sid) {
        let session = &mut self.sessions[s];
        if session.tx.is_none() {
            let tx = poll_once(self.storage.begin()).expect("begin");
            session.tx_id = Some(tx.tx_id());
            session.tx = Some(tx);
        }
    }

    /// Takes session `s`'s transaction out (dropping a blocked statement).
    fn end_session(&mut self, s: Sid) -> Option<MemTx> {
        let session = &mut self.sessions[s];
        session.flight = None;
        session.pending = None;
        session.tx_id = None;
        session.writes.clear();
        session.failed = false;
        session.flag.0.store(false, Ordering::SeqCst);
        session.tx.take()
    }

    /// Starts a statement in session `s` and polls it once.
    fn statement(&mut self, s: Sid, stmt: Stmt) -> Step {
        let mut tx = self.sessions[s].tx.take().expect("a transaction");
        self.sessions[s].flight = Some(Box::pin(async move {
            let out = execute(tx.conn(), stmt).await;
            (tx, out)
        }));
        self.sessions[s].pending = Some(stmt);
        self.poll(s)
    }

    /// Polls session `s`'s statement; on completion, records its writes.
    fn poll(&mut self, s: Sid) -> Step {
        let session = &mut self.sessions[s];
        session.flag.0.store(false, Ordering::SeqCst);
        let flight = session.flight.as_mut().expect("a statement in flight");
        let Poll::Ready((tx, out)) = flight
            .as_mut()
            .poll(&mut Context::from_waker(&session.waker))
        else {
            return Step::Blocked;
        };
        session.flight = None;
        session.tx = Some(tx);
        session.note(&out);
        Step::Done(out)
    }

    fn commit(&mut self, s: Sid) -> Result<Outcome, String> {
        let writes = std::mem::take(&mut self.sessions[s].writes);
        let committed = !self.sessions[s].failed;
        let tx = self.end_session(s).expect("a transaction");
        let out = outcome(poll_once(tx.commit()));
        if committed && out == Outcome::Ok {
            let keys: std::collections::BTreeSet<u8> = writes.iter().map(|&(k, _)| k).collect();
            for k in keys {
                let row = replay(k, self.ledger.get(&k).copied(), &writes)?;
                match row {
                    Some(v) => self.ledger.insert(k, v),
                    None => self.ledger.remove(&k),
                };
            }
        }
        Ok(out)
    }

    /// Resumes woken sessions, lowest index first, until none is woken;
    /// the model and the reference must wake the same sessions.
    fn settle(&mut self) -> Result<(), String> {
        loop {
            let model: Vec<Sid> = (0..self.sessions.len())
                .filter(|&s| self.sessions[s].flag.0.load(Ordering::SeqCst))
                .collect();
            let reference = self.reference.woken();
            if model != reference {
                return Err(format!(
                    "woken sessions: model {model:?}, reference {reference:?}"
                ));
            }
            let Some(&s) = model.first() else {
                return Ok(());
            };
            let model = self.poll(s);
            let reference = self.reference.resume(s);
            if model != reference {
                return Err(format!(
                    "session {s} resumed: model {model:?}, reference {reference:?}"
                ));
            }
            self.note(|| format!("  s{s} resumed -> {model:?}"));
        }
    }

    /// After every step: the same sessions blocked, the same committed
    /// table, and the ledger agrees.
    fn check(&self) -> Result<(), String> {
        for (s, session) in self.sessions.iter().enumerate() {
            let blocked = session.flight.is_some();
            let waiting = session.tx_id.is_some_and(|id| self.storage.is_waiting(id));
            let reference = self.reference.is_blocked(s);
            if blocked != reference || waiting != reference {
                return Err(format!(
                    "session {s}: model pending {blocked}, waiting {waiting}; reference blocked {reference}"
                ));
            }
            let in_tx = session.tx.is_some() || blocked;
            if in_tx != self.reference.has_tx(s) {
                return Err(format!("session {s}: model in a transaction {in_tx}"));
            }
        }
        let model: Vec<(i64, i64)> = self
            .storage
            .rows(TABLE)
            .into_iter()
            .map(|(k, v)| match k {
                tandem::storage::memory::Key::Int(k) => (k, int(&v)),
                other => panic!("unexpected key {other:?}"),
            })
            .collect();
        let reference = self.reference.committed();
        if model != reference {
            return Err(format!(
                "committed rows: model {model:?}, reference {reference:?}"
            ));
        }
        let ledger: Vec<(i64, i64)> = self
            .ledger
            .iter()
            .map(|(&k, &v)| (i64::from(k), v))
            .collect();
        if model != ledger {
            return Err(format!(
                "committed rows: model {model:?}, ledger {ledger:?}"
            ));
        }
        Ok(())
    }
}

impl Session {
    /// Records a finished statement for the ledger.
    fn note(&mut self, out: &Outcome) {
        let stmt = self.pending.take();
        match (stmt, out) {
            (_, Outcome::Err(_)) => self.failed = true,
            (Some(Stmt::Insert { k, val, .. }), Outcome::Ok | Outcome::Inserted(true)) => {
                self.writes.push((k, Write::Insert(val)));
            }
            (Some(Stmt::Add { k, d, .. }), &Outcome::Updated(Some(new))) => {
                self.writes.push((k, Write::Add { d, new }));
            }
            (Some(Stmt::Delete { k }), Outcome::Deleted(true)) => {
                self.writes.push((k, Write::Delete));
            }
            _ => {}
        }
    }
}

/// The committed value of key `k` after a transaction that wrote `writes`
/// commits over `before`. Its own inserted row shadows the committed one
/// while it lives, and one it deletes again never existed for anyone else;
/// every other write applies to the committed row, which it locked, so
/// that row cannot have changed between the write and the commit.
fn replay(k: u8, before: Option<i64>, writes: &[(u8, Write)]) -> Result<Option<i64>, String> {
    let mut committed = before;
    let mut own: Option<i64> = None;
    for &(_, write) in writes.iter().filter(|&&(key, _)| key == k) {
        match (write, own) {
            (Write::Insert(v), None) => own = Some(v),
            (Write::Insert(_), Some(_)) => return Err(format!("ledger: key {k} inserted twice")),
            (Write::Add { d, new }, Some(v)) => {
                if v != new - d {
                    return Err(format!(
                        "ledger: `v = v + {d}` on its own row {k} (was {v}) returned {new}"
                    ));
                }
                own = Some(new);
            }
            (Write::Delete, Some(_)) => own = None,
            (Write::Add { d, new }, None) => {
                if committed != Some(new - d) {
                    return Err(format!(
                        "ledger: a committed `v = v + {d}` on key {k} (was {committed:?}) returned {new}: a lost update"
                    ));
                }
                committed = Some(new);
            }
            (Write::Delete, None) => {
                if committed.is_none() {
                    return Err(format!("ledger: key {k} deleted but not live"));
                }
                committed = None;
            }
        }
    }
    if let Some(v) = own {
        if let Some(old) = committed {
            return Err(format!("ledger: key {k} inserted over the live row {old}"));
        }
        committed = Some(v);
    }
    Ok(committed)
}

/// Runs one statement on the model.
async fn execute(c: &mut MemConn, stmt: Stmt) -> Outcome {
    let result = match stmt {
        Stmt::Get { k } => c
            .get(TABLE, i64::from(k))
            .await
            .map(|v| Outcome::Value(v.as_ref().map(int))),
        Stmt::GetLocked { k, wait } => c
            .get_locked(TABLE, i64::from(k), row_lock(wait))
            .await
            .map(|v| Outcome::Value(v.as_ref().map(int))),
        Stmt::Scan { below, limit, lock } => {
            let mut scan = Scan::all().filter(move |_, v| below.is_none_or(|c| int(v) < c));
            if let Some(n) = limit {
                scan = scan.limit(n);
            }
            if let Some(wait) = lock {
                scan = scan.lock(row_lock(wait));
            }
            c.scan(TABLE, scan).await.map(|rows| {
                Outcome::Rows(
                    rows.into_iter()
                        .map(|(k, v)| match k {
                            tandem::storage::memory::Key::Int(k) => (k, int(&v)),
                            other => panic!("unexpected key {other:?}"),
                        })
                        .collect(),
                )
            })
        }
        Stmt::Insert {
            k,
            val,
            ignore: false,
        } => c
            .insert(TABLE, i64::from(k), json!(val))
            .await
            .map(|()| Outcome::Ok),
        Stmt::Insert {
            k,
            val,
            ignore: true,
        } => c
            .insert_or_ignore(TABLE, i64::from(k), json!(val))
            .await
            .map(Outcome::Inserted),
        Stmt::Add { k, d, below } => c
            .update(TABLE, i64::from(k), move |v| {
                let v = int(v);
                below.is_none_or(|c| v < c).then(|| json!(v + d))
            })
            .await
            .map(|v| Outcome::Updated(v.as_ref().map(int))),
        Stmt::Delete { k } => c.delete(TABLE, i64::from(k)).await.map(Outcome::Deleted),
    };
    result.unwrap_or_else(|e: MemError| Outcome::Err(e.sqlstate()))
}

fn row_lock(wait: LockMode) -> RowLock {
    match wait {
        LockMode::Block => RowLock::for_update(),
        LockMode::SkipLocked => RowLock::for_update().skip_locked(),
        LockMode::NoWait => RowLock::for_update().nowait(),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("the table holds integers, not {v}"))
}

/// A commit's or rollback's outcome, by SQLSTATE.
fn outcome(r: Result<(), tandem::StorageError>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Err(
            std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<MemError>())
                .map_or("?????", MemError::sqlstate),
        ),
    }
}

/// A database restarted from its committed rows.
fn restart(rows: &BTreeMap<u8, i64>, new_storage: &dyn Fn() -> MemStorage) -> MemStorage {
    let storage = new_storage();
    poll_once(storage.with_conn(async |c| {
        for (&k, &v) in rows {
            c.insert(TABLE, i64::from(k), json!(v)).await?;
        }
        Ok(())
    }))
    .expect("loading an empty database");
    storage
}

/// Polls a future that must not block (begin, commit, rollback, loading).
fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an operation that never waits is pending"),
    }
}
