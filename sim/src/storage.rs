//! [`SimStorage`]: the memory backend as one executor sees it, with latency
//! (await points) around every call and crash points around every COMMIT.
//!
//! Storage-level faults (lost acknowledgements, dropped connections,
//! serialization failures) are injected by the memory backend's own fault
//! hook, installed in `run.rs`; this wrapper adds what only the executor's
//! side can do: die before or after a COMMIT, record which checkpoints an
//! execution loaded (the plain-step invariant needs them), log every fenced
//! write with its writer and its statement's snapshot (the history check in
//! `history.rs` judges them), and count every operation for the coverage
//! table.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tandem::MemStorage;
use tandem::storage::memory::{MemConn, MemTx};
use tandem::storage::{
    ErrorKind, StepKind, StepRecord, StepRecorded, StepRow, Storage, StorageError, StorageResult,
    Transaction, WorkflowComplete, WorkflowInsert, WorkflowInserted, WorkflowRow, WorkflowsClaim,
    WorkflowsRecover,
};

use crate::faults::Site;
use crate::world::World;

/// Which node incarnation is talking to the database.
#[derive(Debug)]
pub struct NodeLabel {
    /// The madsim node name (what a kill names).
    pub name: String,
    /// `name#incarnation`, for traces and history tracking.
    pub label: String,
    /// The executor ID its engine runs as (none for the admin node).
    pub executor_id: Option<String>,
    /// How far its clock is ahead of the run's (negative: behind).
    pub skew_ms: i64,
}

/// A write the owner epoch fences (a checkpoint, a completion, a suspend),
/// as committed by one node: the history check attributes each to the
/// execution that was granted its epoch.
#[derive(Debug, Clone)]
pub struct FencedWrite {
    /// The workflow.
    pub workflow_id: String,
    /// The epoch it was written under.
    pub epoch: i64,
    /// The executor ID of the node that wrote it.
    pub executor_id: Option<String>,
    /// The node incarnation.
    pub node: String,
    /// The newest commit when its statement ran: the fence reads that
    /// snapshot.
    pub statement_csn: u64,
    /// What it was (`step 3`, `complete`, `suspend`).
    pub what: String,
}

/// The memory backend seen from one executor incarnation.
#[derive(Clone)]
pub struct SimStorage {
    world: Arc<World>,
    node: Arc<NodeLabel>,
}

impl SimStorage {
    /// The storage of `node`.
    pub fn new(world: Arc<World>, node: Arc<NodeLabel>) -> Self {
        Self { world, node }
    }
}

/// A transaction of [`SimStorage`].
pub struct SimTx {
    tx: MemTx,
    world: Arc<World>,
    node: Arc<NodeLabel>,
    /// Whether a transactional step's checkpoint is in this transaction.
    step_commit: Option<(String, i32)>,
    /// Workflows this transaction claims or reclaims (traced at COMMIT).
    claims: Vec<String>,
    /// The fenced writes it made (logged at a successful COMMIT).
    writes: Vec<FencedWrite>,
    /// Open while this transaction may hold row locks on queued workflows.
    locks: Option<LockGuard>,
}

/// Ends a transaction's [`LockWindow`](crate::admission::LockWindow) when
/// dropped: at its COMMIT or rollback, or when a kill drops it.
struct LockGuard {
    world: Arc<World>,
    index: usize,
}

impl LockGuard {
    fn new(world: &Arc<World>) -> Self {
        let mut state = world.state();
        state.lock_windows.push(crate::admission::LockWindow {
            from_csn: world.mem.commit_seq(),
            to_csn: None,
        });
        Self {
            world: world.clone(),
            index: state.lock_windows.len() - 1,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let csn = self.world.mem.commit_seq();
        self.world.state().lock_windows[self.index].to_csn = Some(csn);
    }
}

impl SimTx {
    /// Notes what a group's statement did, for the sweep's coverage.
    fn group_answer<R>(&self, answer: StorageResult<Vec<R>>) -> StorageResult<Vec<R>> {
        match &answer {
            Ok(answers) if answers.len() > 1 => self.world.faults.observe("group.shared"),
            Ok(_) => {}
            Err(_) => self.world.faults.observe("group.failed"),
        }
        answer
    }

    /// The simulated round trip before each operation, counted for the
    /// coverage table.
    async fn latency(&mut self, op: &'static str) {
        // Operations that may leave row locks on queued workflows until the
        // transaction ends: a cancel, and every UPDATE of workflow rows that
        // re-checks a row's newest version after a wait (a reclaim, a
        // release, a recovery, a fenced write): PostgreSQL keeps the lock of
        // a row whose re-check failed. The priority check skips claims that
        // overlap one.
        const LOCKERS: [&str; 9] = [
            "workflows_cancel",
            "workflow_cancel_overdue",
            "workflows_reclaim",
            "workflows_release",
            "workflows_recover",
            "workflow_complete",
            "workflow_complete_many",
            "workflow_suspend",
            "recv_deadline",
        ];
        if self.locks.is_none() && LOCKERS.contains(&op) {
            self.locks = Some(LockGuard::new(&self.world));
        }
        self.world.faults.count(op);
        self.world.latency().await;
    }

    fn fenced_write(
        &self,
        workflow_id: &str,
        epoch: i64,
        statement_csn: u64,
        what: String,
    ) -> FencedWrite {
        FencedWrite {
            workflow_id: workflow_id.to_owned(),
            epoch,
            executor_id: self.node.executor_id.clone(),
            node: self.node.label.clone(),
            statement_csn,
            what,
        }
    }
}

impl SimTx {
    /// One entry of a group commit: a write to judge (`error` None), or one
    /// the fence rejected.
    fn log_fenced_write(&mut self, write: FencedWrite, error: Option<&StorageError>) {
        match error {
            None => self.writes.push(write),
            Some(e) if e.kind() == ErrorKind::Fenced => {
                self.world.faults.observe("fence.rejected_write");
                self.world.log(format!(
                    "{} {} of {} fenced in a group (epoch {})",
                    write.node, write.what, write.workflow_id, write.epoch
                ));
            }
            Some(_) => {}
        }
    }
}

impl Storage for SimStorage {
    type Tx = SimTx;
    type Conn = MemConn;
    type Listener = <MemStorage as Storage>::Listener;

    async fn listen(&self) -> StorageResult<Self::Listener> {
        // Real wake-ups (the model's NOTIFY): the engine's `select!`s are
        // `biased`, so a wake-up racing a timer resolves the same way on
        // every replay.
        self.world.mem.listen().await
    }

    async fn begin(&self) -> StorageResult<SimTx> {
        self.world.faults.count("begin");
        self.world.latency().await;
        let tx = self.world.mem.begin().await?;
        Ok(SimTx {
            tx,
            world: self.world.clone(),
            node: self.node.clone(),
            step_commit: None,
            claims: Vec::new(),
            writes: Vec::new(),
            locks: None,
        })
    }

    async fn migrate(&self) -> StorageResult<()> {
        self.world.mem.migrate().await
    }

    fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        MemStorage::classify(error)
    }
}

impl Transaction for SimTx {
    type Conn = MemConn;

    fn conn(&mut self) -> &mut MemConn {
        self.tx.conn()
    }

    // Every operation waits a simulated latency first (an await point where
    // a kill or another task may strike); those with more to record are
    // written out below.
    tandem::forward_transaction!(
        tx,
        latency;
        workflow_insert,
        workflow_get,
        step_get,
        executor_register,
        executor_heartbeat,
        workflows_release,
        workflow_enqueue,
        message_send,
        message_take,
        recv_deadline,
        event_set,
        event_get,
        workflow_resume,
        workflow_fork,
        workflows_owned,
        workflows_list,
        workflow_info,
        steps_info,
        schedule_lock,
        schedule_advance,
        schedule_pause,
        schedules_list,
        workflows_gc,
        workflows_count,
        queues_info,
        executors_info,
        messages_info,
        events_info
    );

    async fn workflow_complete(&mut self, params: WorkflowComplete) -> StorageResult<()> {
        self.latency("workflow_complete").await;
        let csn = self.world.mem.commit_seq();
        let (id, epoch) = (params.id.clone(), params.owner_epoch);
        self.tx.workflow_complete(params).await.inspect_err(|e| {
            if e.kind() == ErrorKind::Fenced {
                self.world.faults.observe("fence.rejected_write");
                let node = &self.node.label;
                self.world
                    .log(format!("{node} completion of {id} fenced (epoch {epoch})"));
            }
        })?;
        let write = self.fenced_write(&id, epoch, csn, "complete".to_owned());
        self.writes.push(write);
        Ok(())
    }

    async fn steps_load(&mut self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        self.latency("steps_load").await;
        let steps = self.tx.steps_load(workflow_id).await?;
        // Remember what this incarnation saw: the next execution of the
        // workflow here starts from exactly this history.
        let mut state = self.world.state();
        let key = (self.node.label.clone(), workflow_id.to_owned());
        let epoch = state.granted.get(&key).copied().unwrap_or_default();
        state.loads.insert(
            (key.0, key.1, epoch),
            steps.iter().map(|s| s.step_id).collect(),
        );
        Ok(steps)
    }

    async fn step_record(&mut self, params: StepRecord) -> StorageResult<StepRecorded> {
        self.latency("step_record").await;
        let step = (params.kind == StepKind::Transaction && params.output.is_some())
            .then(|| (params.workflow_id.clone(), params.step_id));
        // No await between this read and the statement's snapshot.
        let csn = self.world.mem.commit_seq();
        let write = self.fenced_write(
            &params.workflow_id,
            params.owner_epoch,
            csn,
            format!("step {}", params.step_id),
        );
        let recorded = self.tx.step_record(params).await.inspect_err(|e| {
            if e.kind() == ErrorKind::Fenced {
                self.world.faults.observe("fence.rejected_write");
                self.world.log(format!(
                    "{} {} of {} fenced (epoch {})",
                    write.node, write.what, write.workflow_id, write.epoch
                ));
            }
        })?;
        if recorded == StepRecorded::Recorded {
            self.writes.push(write);
            if step.is_some() {
                self.step_commit = step;
            }
        }
        Ok(recorded)
    }

    async fn workflow_insert_many(
        &mut self,
        params: Vec<WorkflowInsert>,
    ) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
        self.latency("workflow_insert_many").await;
        let inserted = self.tx.workflow_insert_many(params).await;
        self.group_answer(inserted)
    }

    async fn workflow_complete_many(
        &mut self,
        params: Vec<WorkflowComplete>,
    ) -> StorageResult<Vec<StorageResult<()>>> {
        self.latency("workflow_complete_many").await;
        let csn = self.world.mem.commit_seq();
        let writes: Vec<FencedWrite> = params
            .iter()
            .map(|p| self.fenced_write(&p.id, p.owner_epoch, csn, "complete".to_owned()))
            .collect();
        let done = self.tx.workflow_complete_many(params).await;
        let done = self.group_answer(done)?;
        for (write, done) in writes.into_iter().zip(&done) {
            self.log_fenced_write(write, done.as_ref().err());
        }
        Ok(done)
    }

    async fn step_record_many(
        &mut self,
        params: Vec<StepRecord>,
    ) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
        self.latency("step_record_many").await;
        // No await between this read and the statement's snapshot.
        let csn = self.world.mem.commit_seq();
        let writes: Vec<FencedWrite> = params
            .iter()
            .map(|p| {
                let what = format!("step {}", p.step_id);
                self.fenced_write(&p.workflow_id, p.owner_epoch, csn, what)
            })
            .collect();
        let recorded = self.tx.step_record_many(params).await;
        let recorded = self.group_answer(recorded)?;
        for (write, recorded) in writes.into_iter().zip(&recorded) {
            match recorded {
                Ok(StepRecorded::Recorded) => self.log_fenced_write(write, None),
                Ok(StepRecorded::Exists) => {}
                Err(e) => self.log_fenced_write(write, Some(e)),
            }
        }
        Ok(recorded)
    }

    async fn workflows_reclaim(&mut self, now_ms: i64) -> StorageResult<u64> {
        self.latency("workflows_reclaim").await;
        let n = self.tx.workflows_reclaim(now_ms).await?;
        if n > 0 {
            self.world.faults.observe("lease.reclaimed_after_expiry");
        }
        Ok(n)
    }

    async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.latency("workflows_cancel").await;
        self.tx.workflows_cancel(id, reason, now_ms).await
    }

    async fn workflow_cancel_overdue(
        &mut self,
        id: &str,
        owner_epoch: i64,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.latency("workflow_cancel_overdue").await;
        let cancelled = self
            .tx
            .workflow_cancel_overdue(id, owner_epoch, now_ms)
            .await
            .inspect_err(|e| {
                if e.kind() == ErrorKind::Fenced {
                    self.world.faults.observe("deadline.cancel_fenced");
                }
            })?;
        self.world.faults.observe("deadline.cancelled");
        Ok(cancelled)
    }

    async fn workflows_recover(&mut self, p: WorkflowsRecover) -> StorageResult<Vec<WorkflowRow>> {
        self.latency("workflows_recover").await;
        let rows = self.tx.workflows_recover(p).await?;
        // The epochs granted here: the `steps_load` that follows is theirs.
        let mut state = self.world.state();
        for r in &rows {
            state
                .granted
                .insert((self.node.label.clone(), r.id.clone()), r.owner_epoch);
        }
        Ok(rows)
    }

    async fn workflows_claim(&mut self, p: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        self.latency("workflows_claim").await;
        // No await between this read and the statement.
        let before_csn = self.world.mem.commit_seq();
        let seen = p.queue.is_limited().then(|| crate::admission::ClaimSeen {
            node: self.node.label.clone(),
            queue: p.queue.name.clone(),
            names: p.names.clone(),
            versions: p.versions.clone(),
            now_ms: p.now_ms,
            before_csn,
            claimed: Vec::new(),
        });
        let rows = self.tx.workflows_claim(p).await?;
        if let Some(mut seen) = seen
            && !rows.is_empty()
        {
            seen.claimed = rows.iter().map(|r| (r.id.clone(), r.owner_epoch)).collect();
            self.world.state().claims_seen.push(seen);
        }
        self.claims.extend(rows.iter().map(|r| r.id.clone()));
        // A claimed workflow's execution knows at least the checkpoints
        // committed before the claim (it loads them unless it never ran;
        // a load afterwards replaces this).
        let steps = self.world.mem.steps();
        let mut state = self.world.state();
        for r in &rows {
            state
                .granted
                .insert((self.node.label.clone(), r.id.clone()), r.owner_epoch);
            state.loads.insert(
                (self.node.label.clone(), r.id.clone(), r.owner_epoch),
                steps
                    .iter()
                    .filter(|s| s.workflow_id == r.id)
                    .map(|s| s.step_id)
                    .collect(),
            );
        }
        Ok(rows)
    }

    async fn workflow_suspend(
        &mut self,
        id: &str,
        epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.latency("workflow_suspend").await;
        let csn = self.world.mem.commit_seq();
        self.tx
            .workflow_suspend(id, epoch, run_after_ms, now_ms)
            .await?;
        let write = self.fenced_write(id, epoch, csn, "suspend".to_owned());
        self.writes.push(write);
        self.world.faults.observe("sleep.suspended_to_queue");
        Ok(())
    }

    async fn commit(self) -> StorageResult<()> {
        let SimTx {
            tx,
            world,
            node,
            step_commit,
            claims,
            writes,
            locks: _locks,
        } = self;
        world.faults.count("commit");
        world.latency().await;
        // Dying here drops the open transaction: it rolls back.
        world
            .crash_point(&node.name, Site::CrashBeforeCommit, "before COMMIT")
            .await;
        // A guard, not a pair of calls: a kill drops the future mid-COMMIT.
        let guard = (!claims.is_empty() && !world.claim_lost_ack.load(Ordering::Relaxed))
            .then(|| ClaimCommit::new(&world));
        let result = tx.commit().await;
        drop(guard);
        if let Some((wf, step)) = &step_commit {
            let outcome = match &result {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            world.log(format!("{} COMMIT {wf} step {step}: {outcome}", node.label));
        }
        if !claims.is_empty() {
            let outcome = match &result {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            world.log(format!(
                "{} COMMIT claim of {}: {outcome}",
                node.label,
                claims.join(", ")
            ));
        }
        if result.is_ok() {
            world.state().writes.extend(writes);
            match &step_commit {
                Some((wf, step)) => {
                    world
                        .crash_point(
                            &node.name,
                            Site::CrashAfterStepCommit,
                            &format!("after COMMIT of {wf} step {step}"),
                        )
                        .await
                }
                None => {
                    world
                        .crash_point(&node.name, Site::CrashAfterCommit, "after COMMIT")
                        .await
                }
            }
        }
        // The acknowledgement travels back: a random kill here is also a
        // crash between COMMIT and the engine learning its outcome.
        world.latency().await;
        result
    }

    async fn rollback(mut self) -> StorageResult<()> {
        self.latency("rollback").await;
        self.tx.rollback().await
    }
}

/// A queue claim's COMMIT in flight: no lost acknowledgement meanwhile.
struct ClaimCommit(Arc<World>);

impl ClaimCommit {
    fn new(world: &Arc<World>) -> Self {
        world.claim_commits.fetch_add(1, Ordering::Relaxed);
        Self(world.clone())
    }
}

impl Drop for ClaimCommit {
    fn drop(&mut self) {
        self.0.claim_commits.fetch_sub(1, Ordering::Relaxed);
    }
}
