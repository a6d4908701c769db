//! Planted bugs: deliberately broken engine variants for the simulator.
//!
//! The simulator (`sim`) must be shown to catch real bugs, so the engine
//! carries a handful of one-line hooks (`if crate::bugs::active(Bug::X)`)
//! that switch on a known-wrong behaviour. Without the `planted-bugs`
//! feature `active` is a constant `false` and the hooks compile away; only
//! the `sim` crate enables the feature. The switch is per thread because
//! madsim runs one simulation on one thread, while the test harness runs
//! several simulations on parallel threads.

/// A deliberately wrong engine behaviour. Each variant names the guarantee
/// it breaks and the invariant of the simulator that should catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bug {
    /// A transactional step commits the application's writes, then records
    /// its checkpoint in a second transaction: a crash or lost
    /// acknowledgement in between applies the effects twice.
    SplitCheckpoint,
    /// Replay re-executes plain steps that are already recorded.
    ReplayRerunsPlain,
    /// A transactional step whose closure failed with a lost connection is
    /// recorded as failed instead of retried.
    ConnLossNotRetried,
    /// A transactional step that hit a serialization failure or deadlock is
    /// recorded as failed instead of retried.
    ConflictNotRetried,
    /// A COMMIT whose outcome is unknown (lost connection) is assumed to
    /// have succeeded: the step may never be applied at all.
    CommitAssumedOnError,
    /// Neither launch nor the claim loop's adoption look resumes the
    /// workflows the storage says this executor ID owns.
    NoOwnRecovery,
    /// Recovery runs a workflow under its old owner epoch instead of the
    /// bumped one: every write of the new execution is fenced off.
    StaleEpochOnRecovery,
    /// Leases never expire: the workflows of a dead executor are never
    /// reclaimed by the others.
    LeaseNeverExpires,
    /// A claimed workflow always starts with an empty history (as if it
    /// had never run), so a reclaimed one re-executes its recorded steps.
    ClaimSkipsHistory,
    /// `recv` commits taking the message before recording its step, in a
    /// transaction of its own: a crash or lost connection in between loses
    /// the message.
    RecvTakeOutsideStep,
    /// `set_event` records its step first and writes the event in a
    /// transaction of its own afterwards: a crash in between loses the
    /// event for good (the replay finds the step recorded).
    EventAfterCheckpoint,
    /// A child's ID is drawn from the clock instead of derived from the
    /// parent and the step: a parent that crashes between starting the
    /// child and recording the start starts a second child.
    ChildIdNotDerived,
    /// Checkpoints and the completion re-read the workflow's current owner
    /// epoch and write under it instead of the execution's own: a
    /// superseded execution is never fenced and keeps writing to a run that
    /// another execution owns. What it writes is what the owner would write
    /// (the primary key still makes each step exactly-once), so the outcome
    /// checks pass; only the simulator's history check sees it.
    WritesRefreshEpoch,
    /// Claims leave out the queue's global concurrency limit: executors
    /// together run more of the queue's workflows than it allows.
    ClaimIgnoresGlobalLimit,
    /// A workflow stopped by a graceful shutdown is completed as failed
    /// instead of left for its next execution.
    ShutdownFailsWorkflows,
    /// A fork from step `n` also copies step `n`, which should run anew.
    ForkCopiesItsStep,
    /// Claims order ready workflows by age alone, not by priority first.
    ClaimIgnoresPriority,
    /// Claims take workflows whose delay (or suspended sleep) has not yet
    /// run out.
    ClaimIgnoresDelay,
    /// Claims leave out the queue's rate limit.
    ClaimIgnoresRateLimit,
    /// Enqueue leaves out the deduplication check: two unfinished workflows
    /// of a queue hold the same key.
    EnqueueIgnoresDedup,
    /// Steps begin although the workflow's deadline has passed.
    DeadlineNotChecked,
    /// A receive recovered after a crash ignores the timeout its first wait
    /// recorded and waits its whole timeout again.
    RecvDeadlineRestarts,
    /// A plain step that succeeded after failed attempts returns its value
    /// without recording its checkpoint. Every live execution still ends
    /// with the right output; only the simulator's replay invariant sees
    /// the finished run's history miss a step.
    RetriedStepUnrecorded,
    /// Claims take ready runs of any recorded version, not only those the
    /// claiming executor accepts: code runs a run it cannot run.
    ClaimIgnoresVersion,
    /// `ctx.patched` returns true at a point the run's history shows it
    /// passed without the patch (it ignores the history).
    PatchIgnoresHistory,
    /// A patch marker recorded on a run of an older version leaves the
    /// run's version as it was: code without the patch still accepts it.
    PatchKeepsVersion,
    /// Recovery runs an executor's own runs of versions its code does not
    /// accept, instead of handing them back to their queue.
    RecoverIgnoresVersion,
    /// Claims leave out the queue's per-key concurrency limit: more
    /// workflows with one concurrency key run at once than it allows.
    ClaimIgnoresConcurrencyKey,
    /// A debounced enqueue also replaces the input of a workflow of its
    /// key that already started: the run continues with an input it did
    /// not start with.
    DebounceUpdatesStarted,
    /// The schedule loop fires paused schedules.
    ScheduleIgnoresPause,
    /// The schedule loop treats every catch-up policy as `Skip`: ticks
    /// missed during downtime never run, even under `CatchUp::All`.
    ScheduleDropsMissed,
    /// A tick's workflow is enqueued with the firing time (the database
    /// clock) as its tick, in its input and its derived ID, instead of the
    /// cron expression's tick.
    ScheduleTickIsFireTime,
    /// Retention deletes finished workflows' rows but leaves their
    /// checkpoints (a cleanup that is not one transaction): a workflow
    /// started again under a deleted ID would replay the old steps.
    GcLeavesSteps,
    /// Retention collects finished children on their own, while their
    /// ancestors still run: a parent that awaits its child finds it gone.
    GcIgnoresAncestors,
    /// The checkpoint fence is not checked again after the insert: a
    /// superseded execution whose checkpoint statement waited while
    /// retention deleted the finished workflow inserts its step again (and
    /// a transactional step's writes with it).
    StepFenceNotRechecked,
    /// A step's checkpoint is counted in the metrics before its commit, so
    /// a commit that fails or is fenced is counted as done work.
    MetricsCountBeforeCommit,
    /// A recovery runs the workflow without its stored trace context: the
    /// recovered execution starts a trace of its own instead of continuing
    /// the caller's.
    TraceParentDroppedOnRecovery,
    /// The group commit answers the writes queued behind its leader
    /// ("recorded", "completed") before their statement runs: when that
    /// statement fails, they were acknowledged and never committed.
    GroupAcksBeforeCommit,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 38] = [
        Bug::SplitCheckpoint,
        Bug::ReplayRerunsPlain,
        Bug::ConnLossNotRetried,
        Bug::ConflictNotRetried,
        Bug::CommitAssumedOnError,
        Bug::NoOwnRecovery,
        Bug::StaleEpochOnRecovery,
        Bug::LeaseNeverExpires,
        Bug::ClaimSkipsHistory,
        Bug::RecvTakeOutsideStep,
        Bug::EventAfterCheckpoint,
        Bug::ChildIdNotDerived,
        Bug::WritesRefreshEpoch,
        Bug::ClaimIgnoresGlobalLimit,
        Bug::ShutdownFailsWorkflows,
        Bug::ForkCopiesItsStep,
        Bug::ClaimIgnoresPriority,
        Bug::ClaimIgnoresDelay,
        Bug::ClaimIgnoresRateLimit,
        Bug::EnqueueIgnoresDedup,
        Bug::DeadlineNotChecked,
        Bug::RecvDeadlineRestarts,
        Bug::RetriedStepUnrecorded,
        Bug::ClaimIgnoresVersion,
        Bug::PatchIgnoresHistory,
        Bug::PatchKeepsVersion,
        Bug::RecoverIgnoresVersion,
        Bug::ClaimIgnoresConcurrencyKey,
        Bug::DebounceUpdatesStarted,
        Bug::ScheduleIgnoresPause,
        Bug::ScheduleDropsMissed,
        Bug::ScheduleTickIsFireTime,
        Bug::GcLeavesSteps,
        Bug::GcIgnoresAncestors,
        Bug::StepFenceNotRechecked,
        Bug::MetricsCountBeforeCommit,
        Bug::TraceParentDroppedOnRecovery,
        Bug::GroupAcksBeforeCommit,
    ];
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Switches `bug` on (or all bugs off) for engines running on this thread.
#[cfg(feature = "planted-bugs")]
pub fn set(bug: Option<Bug>) {
    ACTIVE.with(|a| a.set(bug));
}

/// Whether `bug` is switched on for this thread.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get()) == Some(bug)
}

/// Whether `bug` is switched on: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}

/// [`Bug::ConnLossNotRetried`] / [`Bug::ConflictNotRetried`]: whether an
/// application error of this kind must (wrongly) not be retried.
pub(crate) fn not_retried(kind: Option<crate::storage::ErrorKind>) -> bool {
    use crate::storage::ErrorKind;
    (active(Bug::ConnLossNotRetried) && kind == Some(ErrorKind::Unavailable))
        || (active(Bug::ConflictNotRetried) && kind == Some(ErrorKind::Conflict))
}

/// [`Bug::SplitCheckpoint`], [`Bug::RecvTakeOutsideStep`]: commits the
/// step's writes now and returns a fresh transaction for the checkpoint.
pub(crate) async fn split_transaction<S: crate::storage::Storage>(tx: S::Tx, storage: &S) -> S::Tx {
    use crate::storage::Transaction as _;
    let _ = tx.commit().await;
    loop {
        if let Ok(tx) = storage.begin().await {
            return tx;
        }
    }
}

/// [`Bug::StaleEpochOnRecovery`]: the recovered row with its old epoch.
pub(crate) fn stale_epoch(mut row: crate::storage::WorkflowRow) -> crate::storage::WorkflowRow {
    if active(Bug::StaleEpochOnRecovery) {
        row.owner_epoch -= 1;
    }
    row
}

/// [`Bug::EventAfterCheckpoint`]: writes the event after its step's commit,
/// in a transaction of its own (retried until it commits or the process
/// dies, as a careless implementation would).
pub(crate) async fn event_after_checkpoint<S: crate::storage::Storage>(
    storage: &S,
    workflow_id: &str,
    key: &str,
    json: &str,
    now_ms: i64,
) {
    use crate::storage::Transaction as _;
    loop {
        let Ok(mut tx) = storage.begin().await else {
            continue;
        };
        if tx.event_set(workflow_id, key, json, now_ms).await.is_ok() && tx.commit().await.is_ok() {
            return;
        }
    }
}

/// [`Bug::WritesRefreshEpoch`]: replaces `epoch` with the workflow's current
/// owner epoch.
pub(crate) async fn refresh_epoch<S: crate::storage::Storage>(
    epoch: &mut i64,
    storage: &S,
    workflow_id: &str,
) {
    if active(Bug::WritesRefreshEpoch)
        && let Ok(Some(row)) = storage.workflow_get(workflow_id).await
    {
        *epoch = row.owner_epoch;
    }
}

/// [`Bug::ClaimIgnoresGlobalLimit`]: the limits a claim passes on.
pub(crate) fn claim_limits(limits: &crate::storage::QueueLimits) -> crate::storage::QueueLimits {
    let mut limits = limits.clone();
    if active(Bug::ClaimIgnoresGlobalLimit) {
        limits.concurrency_global = None;
    }
    if active(Bug::ClaimIgnoresRateLimit) {
        limits.rate_limit = None;
    }
    if active(Bug::ClaimIgnoresConcurrencyKey) {
        limits.concurrency_per_key = None;
    }
    limits
}

/// [`Bug::ShutdownFailsWorkflows`]: whether an execution's result counts as
/// a failure although a shutdown stopped it.
pub(crate) fn shutdown_fails<T>(result: &Result<T, crate::WorkflowError>) -> bool {
    active(Bug::ShutdownFailsWorkflows)
        && result
            .as_ref()
            .is_err_and(|e| matches!(e.as_engine_error(), Some(crate::Error::Shutdown)))
}
