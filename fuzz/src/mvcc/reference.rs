//! The reference of the `mvcc_model` target: what READ COMMITTED (as
//! docs/memory-backend.md describes it) must do, written as a serial state
//! machine with no version chains, so that it can be checked by reading.
//!
//! The database is the committed table (`key -> Row`), and per open
//! transaction its own writes (an overlay over the committed table), its
//! row locks and whether it failed. A row carries an identity (`rid`, kept
//! by UPDATE, new on INSERT) and a version (`vid`, new on every write):
//! that is all of the update chain EvalPlanQual needs. "The newest version
//! of the row my snapshot saw" is the committed row with the same identity;
//! "a newer version" is a different `vid`; "deleted" is any other identity
//! or none. Row locks are a holder and a FIFO queue per key; wait-for edges
//! are computed from the lock table when needed rather than stored.
//!
//! A statement that must wait becomes a [`Run`] (where it stopped) with a
//! status: blocked on a row or a transaction, or woken (granted, ended,
//! deadlock victim). The harness resumes woken sessions lowest index first,
//! exactly as it polls the model's woken futures, so both see the same
//! interleaving.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{LockMode, Outcome, Stmt};

/// A session, by index.
pub(super) type Sid = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    /// The row's identity: an UPDATE keeps it, a DELETE ends it.
    rid: u64,
    /// The version: every write makes a new one.
    vid: u64,
    val: i64,
}

/// A transaction's own write of one key.
#[derive(Debug, Clone, Copy)]
struct Own {
    /// It updated or deleted a committed row (so its row lock is held and
    /// other inserters of the key must wait for it, even if `cur` is gone).
    touched_committed: bool,
    /// The row as the transaction now sees it; `None`: deleted.
    cur: Option<Row>,
    /// It inserted a row of the key (perhaps deleted again since): other
    /// inserters of the key wait for it, as PostgreSQL's unique check does
    /// for a row whose inserter is in progress, whatever its deleter.
    inserted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    Open,
    /// A statement failed, or it was a deadlock victim: the transaction is
    /// rolled back already and only waits for its COMMIT or ROLLBACK.
    Failed,
}

#[derive(Debug)]
struct Tx {
    state: TxState,
    own: BTreeMap<u8, Own>,
    locks: BTreeSet<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Queued for a row lock.
    Row(u8),
    /// A unique check waits for this session's transaction to end.
    Tx(Sid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woken {
    Granted,
    Ended,
    Deadlock,
}

#[derive(Debug, Clone, Copy)]
enum Status {
    /// `since` orders waits: the longest-waiting member of a cycle is the
    /// deadlock victim.
    Blocked {
        target: Target,
        since: u64,
    },
    Woken(Woken),
}

/// Where a statement that waited goes on.
#[derive(Debug)]
enum Run {
    /// A locking scan (`get_locked` is one with a single candidate).
    Scan {
        candidates: Vec<(u8, Row)>,
        next: usize,
        rows: Vec<(u8, i64)>,
        below: Option<i64>,
        limit: usize,
        wait: LockMode,
        single: bool,
    },
    Add {
        k: u8,
        snap: Row,
        d: i64,
        below: Option<i64>,
    },
    Delete {
        k: u8,
        snap: Row,
    },
    Insert {
        k: u8,
        val: i64,
        ignore: bool,
    },
}

#[derive(Debug)]
struct Flight {
    run: Run,
    status: Status,
}

#[derive(Debug, Default)]
struct Session {
    tx: Option<Tx>,
    flight: Option<Flight>,
}

#[derive(Debug, Default)]
struct LockQueue {
    holder: Option<Sid>,
    queue: VecDeque<Sid>,
}

/// What a statement did: finished, or it is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Done(Outcome),
    Blocked,
}

enum Lock {
    Row(Row),
    Skip,
    Wait,
    Unavailable,
}

enum Unique {
    Free,
    Conflict,
    WaitFor(Sid),
}

enum Advance {
    Done(Outcome),
    Wait(Target),
}

/// The reference database and its sessions.
#[derive(Debug)]
pub(super) struct Reference {
    committed: BTreeMap<u8, Row>,
    sessions: Vec<Session>,
    locks: BTreeMap<u8, LockQueue>,
    wait_seq: u64,
    next_id: u64,
}

impl Reference {
    pub(super) fn new(sessions: usize) -> Self {
        Self {
            committed: BTreeMap::new(),
            sessions: (0..sessions).map(|_| Session::default()).collect(),
            locks: BTreeMap::new(),
            wait_seq: 0,
            next_id: 0,
        }
    }

    /// The committed table, in key order.
    pub(super) fn committed(&self) -> Vec<(i64, i64)> {
        self.committed
            .iter()
            .map(|(&k, r)| (i64::from(k), r.val))
            .collect()
    }

    pub(super) fn has_tx(&self, s: Sid) -> bool {
        self.sessions[s].tx.is_some()
    }

    pub(super) fn is_blocked(&self, s: Sid) -> bool {
        matches!(
            self.sessions[s].flight,
            Some(Flight {
                status: Status::Blocked { .. },
                ..
            })
        )
    }

    /// The sessions whose wait ended and that have not run on yet.
    pub(super) fn woken(&self) -> Vec<Sid> {
        (0..self.sessions.len())
            .filter(|&s| {
                matches!(
                    self.sessions[s].flight,
                    Some(Flight {
                        status: Status::Woken(_),
                        ..
                    })
                )
            })
            .collect()
    }

    pub(super) fn begin(&mut self, s: Sid) {
        if self.sessions[s].tx.is_none() {
            self.sessions[s].tx = Some(Tx {
                state: TxState::Open,
                own: BTreeMap::new(),
                locks: BTreeSet::new(),
            });
        }
    }

    /// COMMIT (of a failed transaction: a quiet rollback).
    pub(super) fn commit(&mut self, s: Sid) -> Outcome {
        let tx = self.sessions[s]
            .tx
            .take()
            .expect("commit without a transaction");
        if tx.state == TxState::Open {
            for (&k, own) in &tx.own {
                match own.cur {
                    Some(row) => {
                        self.committed.insert(k, row);
                    }
                    // A row it inserted and deleted again never existed
                    // for anyone else; a committed row it deleted is gone.
                    None if own.touched_committed => {
                        self.committed.remove(&k);
                    }
                    None => {}
                }
            }
        }
        self.end(s, tx);
        Outcome::Ok
    }

    pub(super) fn rollback(&mut self, s: Sid) -> Outcome {
        let tx = self.sessions[s]
            .tx
            .take()
            .expect("rollback without a transaction");
        self.end(s, tx);
        Outcome::Ok
    }

    /// The session's connection drops: its statement (even a blocked one)
    /// and its transaction are gone.
    pub(super) fn disconnect(&mut self, s: Sid) {
        self.cancel_wait(s);
        self.sessions[s].flight = None;
        if let Some(tx) = self.sessions[s].tx.take() {
            self.end(s, tx);
        }
    }

    /// The database restarts: every connection drops.
    pub(super) fn crash(&mut self) {
        for s in 0..self.sessions.len() {
            self.disconnect(s);
        }
        debug_assert!(self.locks.is_empty(), "reference: locks left after a crash");
    }

    /// Runs a statement in session `s` (beginning a transaction if it has
    /// none).
    pub(super) fn statement(&mut self, s: Sid, stmt: Stmt) -> Step {
        self.begin(s);
        if self.tx(s).state == TxState::Failed {
            return Step::Done(Outcome::Err("25P02"));
        }
        let view = self.view(s);
        let run = match stmt {
            Stmt::Get { k } => return Step::Done(Outcome::Value(view.get(&k).map(|r| r.val))),
            Stmt::Scan {
                below,
                limit,
                lock: None,
            } => {
                let rows = view
                    .iter()
                    .filter(|(_, r)| passes(below, r.val))
                    .take(limit.unwrap_or(usize::MAX))
                    .map(|(&k, r)| (i64::from(k), r.val))
                    .collect();
                return Step::Done(Outcome::Rows(rows));
            }
            Stmt::Scan {
                below,
                limit,
                lock: Some(wait),
            } => Run::Scan {
                candidates: view
                    .iter()
                    .filter(|(_, r)| passes(below, r.val))
                    .map(|(&k, &r)| (k, r))
                    .collect(),
                next: 0,
                rows: Vec::new(),
                below,
                limit: limit.unwrap_or(usize::MAX),
                wait,
                single: false,
            },
            Stmt::GetLocked { k, wait } => Run::Scan {
                candidates: view.get(&k).map(|&r| (k, r)).into_iter().collect(),
                next: 0,
                rows: Vec::new(),
                below: None,
                limit: 1,
                wait,
                single: true,
            },
            Stmt::Insert { k, val, ignore } => Run::Insert { k, val, ignore },
            Stmt::Add { k, d, below } => match view.get(&k) {
                // The WHERE clause fails on the snapshot: no lock, no row.
                Some(&snap) if passes(below, snap.val) => Run::Add { k, snap, d, below },
                _ => return Step::Done(Outcome::Updated(None)),
            },
            Stmt::Delete { k } => match view.get(&k) {
                Some(&snap) => Run::Delete { k, snap },
                None => return Step::Done(Outcome::Deleted(false)),
            },
        };
        self.drive(s, run)
    }

    /// Resumes a woken session.
    pub(super) fn resume(&mut self, s: Sid) -> Step {
        let flight = self.sessions[s]
            .flight
            .take()
            .expect("resume without a statement");
        match flight.status {
            Status::Woken(Woken::Deadlock) => Step::Done(Outcome::Err("40P01")),
            Status::Woken(Woken::Granted | Woken::Ended) => self.drive(s, flight.run),
            Status::Blocked { .. } => panic!("reference: resumed a blocked session {s}"),
        }
    }

    fn tx(&self, s: Sid) -> &Tx {
        self.sessions[s].tx.as_ref().expect("a transaction")
    }

    fn tx_mut(&mut self, s: Sid) -> &mut Tx {
        self.sessions[s].tx.as_mut().expect("a transaction")
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// What a statement of `s` sees: the committed table under its own
    /// writes (READ COMMITTED: a fresh snapshot per statement).
    fn view(&self, s: Sid) -> BTreeMap<u8, Row> {
        let mut view = self.committed.clone();
        for (&k, own) in &self.tx(s).own {
            match own.cur {
                Some(row) => {
                    view.insert(k, row);
                }
                None if own.touched_committed => {
                    view.remove(&k);
                }
                // Its own insert, deleted again: a row someone else has
                // inserted and committed since is visible as usual.
                None => {}
            }
        }
        view
    }

    /// Runs `run` until it finishes or blocks; a wait that closes a cycle
    /// aborts the cycle's longest waiter, and if that frees this session at
    /// once (or it is the victim) it goes on without returning.
    fn drive(&mut self, s: Sid, mut run: Run) -> Step {
        loop {
            let target = match self.advance(s, &mut run) {
                Advance::Done(outcome) => return Step::Done(outcome),
                Advance::Wait(target) => target,
            };
            self.wait_seq += 1;
            self.sessions[s].flight = Some(Flight {
                run,
                status: Status::Blocked {
                    target,
                    since: self.wait_seq,
                },
            });
            while let Some(cycle) = self.find_cycle(s) {
                let victim = cycle
                    .iter()
                    .copied()
                    .min_by_key(|&v| self.since(v))
                    .expect("a cycle has members");
                self.abort_victim(victim);
                if victim == s {
                    self.sessions[s].flight = None;
                    return Step::Done(Outcome::Err("40P01"));
                }
            }
            let flight = self.sessions[s].flight.take().expect("still in flight");
            match flight.status {
                Status::Blocked { .. } => {
                    self.sessions[s].flight = Some(flight);
                    return Step::Blocked;
                }
                // Freed by the victim's rollback before it ever slept.
                Status::Woken(Woken::Granted | Woken::Ended) => run = flight.run,
                Status::Woken(Woken::Deadlock) => unreachable!("victims return above"),
            }
        }
    }

    fn advance(&mut self, s: Sid, run: &mut Run) -> Advance {
        match run {
            Run::Scan {
                candidates,
                next,
                rows,
                below,
                limit,
                wait,
                single,
            } => {
                while *next < candidates.len() {
                    if rows.len() >= *limit {
                        break;
                    }
                    let (k, snap) = candidates[*next];
                    let below = *below;
                    match self.lock_row(s, k, snap, *wait, |v| passes(below, v)) {
                        Lock::Row(row) => {
                            rows.push((k, row.val));
                            *next += 1;
                        }
                        Lock::Skip => *next += 1,
                        Lock::Wait => return Advance::Wait(Target::Row(k)),
                        Lock::Unavailable => {
                            self.fail(s);
                            return Advance::Done(Outcome::Err("55P03"));
                        }
                    }
                }
                let rows = std::mem::take(rows);
                Advance::Done(if *single {
                    Outcome::Value(rows.first().map(|&(_, v)| v))
                } else {
                    Outcome::Rows(rows.into_iter().map(|(k, v)| (i64::from(k), v)).collect())
                })
            }
            &mut Run::Add { k, snap, d, below } => {
                match self.lock_row(s, k, snap, LockMode::Block, |v| passes(below, v)) {
                    Lock::Row(row) => {
                        let val = row.val + d;
                        let vid = self.fresh_id();
                        self.write(s, k, Some(Row { vid, val, ..row }));
                        Advance::Done(Outcome::Updated(Some(val)))
                    }
                    Lock::Skip => Advance::Done(Outcome::Updated(None)),
                    Lock::Wait => Advance::Wait(Target::Row(k)),
                    Lock::Unavailable => unreachable!("UPDATE waits"),
                }
            }
            &mut Run::Delete { k, snap } => {
                match self.lock_row(s, k, snap, LockMode::Block, |_| true) {
                    Lock::Row(_) => {
                        self.write(s, k, None);
                        Advance::Done(Outcome::Deleted(true))
                    }
                    Lock::Skip => Advance::Done(Outcome::Deleted(false)),
                    Lock::Wait => Advance::Wait(Target::Row(k)),
                    Lock::Unavailable => unreachable!("DELETE waits"),
                }
            }
            &mut Run::Insert { k, val, ignore } => match self.unique(s, k) {
                Unique::Free => {
                    let rid = self.fresh_id();
                    let prior = self.tx(s).own.get(&k).is_some_and(|o| o.touched_committed);
                    self.tx_mut(s).own.insert(
                        k,
                        Own {
                            touched_committed: prior,
                            cur: Some(Row { rid, vid: rid, val }),
                            inserted: true,
                        },
                    );
                    Advance::Done(if ignore {
                        Outcome::Inserted(true)
                    } else {
                        Outcome::Ok
                    })
                }
                Unique::Conflict if ignore => Advance::Done(Outcome::Inserted(false)),
                Unique::Conflict => {
                    self.fail(s);
                    Advance::Done(Outcome::Err("23505"))
                }
                Unique::WaitFor(other) => Advance::Wait(Target::Tx(other)),
            },
        }
    }

    /// Records `s`'s write of key `k` (it holds the row lock).
    fn write(&mut self, s: Sid, k: u8, cur: Option<Row>) {
        let tx = self.tx_mut(s);
        // Unless the row is its own version, it is a committed one.
        let touched_committed = match tx.own.get(&k) {
            Some(own) if own.cur.is_some() => own.touched_committed,
            _ => true,
        };
        let inserted = tx.own.get(&k).is_some_and(|own| own.inserted);
        tx.own.insert(
            k,
            Own {
                touched_committed,
                cur,
                inserted,
            },
        );
    }

    /// Takes the row lock on `k` for a statement whose snapshot saw `snap`,
    /// then decides on the newest version of that row (EvalPlanQual).
    fn lock_row(
        &mut self,
        s: Sid,
        k: u8,
        snap: Row,
        wait: LockMode,
        recheck: impl Fn(i64) -> bool,
    ) -> Lock {
        let lock = self.locks.entry(k).or_default();
        if lock.holder != Some(s) {
            if lock.holder.is_none() && lock.queue.is_empty() {
                lock.holder = Some(s);
                self.tx_mut(s).locks.insert(k);
            } else {
                // Held, or others queue for it (they are ahead of us).
                match wait {
                    LockMode::SkipLocked => return Lock::Skip,
                    LockMode::NoWait => return Lock::Unavailable,
                    LockMode::Block => {
                        lock.queue.push_back(s);
                        return Lock::Wait;
                    }
                }
            }
        }
        if self.tx(s).own.get(&k).is_some_and(|o| o.cur.is_some()) {
            // The snapshot saw our own version, which no one else can
            // change: it is the newest.
            return Lock::Row(snap);
        }
        match self.committed.get(&k) {
            Some(&row) if row.rid == snap.rid => {
                if row.vid != snap.vid && !recheck(row.val) {
                    // A newer version fails the WHERE clause: the row is
                    // left out, but the lock is kept.
                    Lock::Skip
                } else {
                    Lock::Row(row)
                }
            }
            // Deleted (perhaps re-inserted as another row) since the
            // snapshot: no row, and no lock either.
            _ => {
                self.tx_mut(s).locks.remove(&k);
                self.release(s, k);
                Lock::Skip
            }
        }
    }

    /// The unique check of an INSERT: it sees other transactions' writes in
    /// progress (a dirty snapshot) and waits for them.
    fn unique(&self, s: Sid, k: u8) -> Unique {
        if let Some(own) = self.tx(s).own.get(&k) {
            if own.cur.is_some() {
                return Unique::Conflict;
            }
            if own.touched_committed {
                // We deleted the committed row; no one else can write the
                // key while our lock and our delete stand.
                return Unique::Free;
            }
        }
        let pending: Vec<Sid> = (0..self.sessions.len())
            .filter(|&o| {
                o != s
                    && self.sessions[o].tx.as_ref().is_some_and(|tx| {
                        tx.state == TxState::Open
                            && tx.own.get(&k).is_some_and(|own| {
                                own.touched_committed || own.cur.is_some() || own.inserted
                            })
                    })
            })
            .collect();
        assert!(
            pending.len() <= 1,
            "reference: several transactions write key {k}"
        );
        if let Some(&other) = pending.first() {
            return Unique::WaitFor(other);
        }
        if self.committed.contains_key(&k) {
            Unique::Conflict
        } else {
            Unique::Free
        }
    }

    /// A statement failed: the transaction rolls back at once.
    fn fail(&mut self, s: Sid) {
        let tx = self.sessions[s].tx.take().expect("a transaction");
        self.end(s, tx);
        self.sessions[s].tx = Some(Tx {
            state: TxState::Failed,
            own: BTreeMap::new(),
            locks: BTreeSet::new(),
        });
    }

    /// Aborts a deadlock victim; its statement ends with 40P01.
    fn abort_victim(&mut self, v: Sid) {
        self.cancel_wait(v);
        if let Some(flight) = &mut self.sessions[v].flight {
            flight.status = Status::Woken(Woken::Deadlock);
        }
        self.fail(v);
    }

    /// The end of `s`'s transaction `tx` (already taken out of the
    /// session): its locks pass to their first waiters, waiters for it wake.
    fn end(&mut self, s: Sid, tx: Tx) {
        for k in tx.locks {
            self.release(s, k);
        }
        for o in 0..self.sessions.len() {
            if let Some(flight) = &mut self.sessions[o].flight
                && let Status::Blocked {
                    target: Target::Tx(t),
                    ..
                } = flight.status
                && t == s
            {
                flight.status = Status::Woken(Woken::Ended);
            }
        }
    }

    fn release(&mut self, s: Sid, k: u8) {
        let lock = self.locks.get_mut(&k).expect("a held lock");
        assert_eq!(
            lock.holder,
            Some(s),
            "reference: released a lock it did not hold"
        );
        lock.holder = lock.queue.pop_front();
        match lock.holder {
            None => {
                self.locks.remove(&k);
            }
            Some(next) => {
                self.tx_mut(next).locks.insert(k);
                let flight = self.sessions[next].flight.as_mut().expect("a waiter");
                flight.status = Status::Woken(Woken::Granted);
            }
        }
    }

    /// Takes a blocked session out of the queue it waits in.
    fn cancel_wait(&mut self, s: Sid) {
        if let Some(Flight {
            status:
                Status::Blocked {
                    target: Target::Row(k),
                    ..
                },
            ..
        }) = self.sessions[s].flight
            && let Some(lock) = self.locks.get_mut(&k)
        {
            lock.queue.retain(|&w| w != s);
        }
    }

    fn since(&self, s: Sid) -> u64 {
        match self.sessions[s].flight {
            Some(Flight {
                status: Status::Blocked { since, .. },
                ..
            }) => since,
            _ => u64::MAX,
        }
    }

    /// Whom a blocked session waits for: a row's holder and everyone queued
    /// ahead of it, in that order; or the transaction it waits to end.
    fn edges(&self, s: Sid) -> Vec<Sid> {
        match self.sessions[s].flight {
            Some(Flight {
                status: Status::Blocked { target, .. },
                ..
            }) => match target {
                Target::Tx(t) => vec![t],
                Target::Row(k) => {
                    let lock = &self.locks[&k];
                    let ahead = lock.queue.iter().take_while(|&&w| w != s).copied();
                    lock.holder.into_iter().chain(ahead).collect()
                }
            },
            _ => Vec::new(),
        }
    }

    /// The first cycle of waits through `start` a depth-first search finds
    /// (edges in the order above), as its members.
    fn find_cycle(&self, start: Sid) -> Option<Vec<Sid>> {
        fn visit(
            r: &Reference,
            node: Sid,
            start: Sid,
            path: &mut Vec<Sid>,
            done: &mut Vec<Sid>,
        ) -> bool {
            for to in r.edges(node) {
                if to == start {
                    return true;
                }
                if path.contains(&to) || done.contains(&to) {
                    continue;
                }
                path.push(to);
                if visit(r, to, start, path, done) {
                    return true;
                }
                path.pop();
                done.push(to);
            }
            false
        }
        let mut path = vec![start];
        let mut done = Vec::new();
        visit(self, start, start, &mut path, &mut done).then_some(path)
    }
}

/// `WHERE v < below` (no condition: every row).
fn passes(below: Option<i64>, v: i64) -> bool {
    below.is_none_or(|c| v < c)
}
