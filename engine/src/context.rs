//! [`WorkflowContext`]: what a workflow body uses to run steps.
//!
//! It knows the storage only through the `Storage` seam, never a driver: the
//! same context drives PostgreSQL in production and the memory model in the
//! simulator.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::{Error, WorkflowError};
use crate::payload;
use crate::retry::RetryPolicy;
use crate::runtime::{Outcome, Shared};
use crate::storage::{
    ErrorKind, StepKind, StepRecord, StepRecorded, StepRow, Storage, StorageError, Transaction,
};
use crate::workflow::Workflow;

use crate::storage::DEADLINE_EXCEEDED;

/// The name of a patch's marker step: `patch:` and the patch's name.
const PATCH_PREFIX: &str = "patch:";

/// The handle a workflow body receives: runs steps and replays recorded ones.
///
/// Steps are numbered in the order the body calls them. On a first execution
/// each step runs and is checkpointed; on a replay (after a crash or restart)
/// a step whose checkpoint exists returns the recorded output without running.
pub struct WorkflowContext<S: Storage> {
    shared: Arc<Shared<S>>,
    workflow_id: String,
    owner_epoch: i64,
    /// Cancel the workflow once the engine's clock passes this.
    deadline_ms: Option<i64>,
    /// Recorded steps from the last execution, ordered by step ID. Empty on a
    /// first execution, which therefore never reads the checkpoint table.
    history: Vec<StepRow>,
    next_step_id: i32,
    /// Set once a step was interrupted (fenced or shutting down): whatever
    /// the body returns afterwards, nothing more is recorded.
    interrupted: bool,
    /// A replay check (`Engine::replay`): recorded steps replay, and the
    /// first step beyond the history stops the body with
    /// [`Error::ReplayEnded`] instead of running.
    replay_only: bool,
    /// The application version the run records (`None`: never ran).
    run_version: Option<String>,
    /// The trace context stored with the run.
    trace_parent: Option<String>,
}

/// A started child workflow; await it with
/// [`WorkflowContext::child_result`].
#[derive(Debug, Clone)]
pub struct ChildHandle<O> {
    id: String,
    _output: PhantomData<fn() -> O>,
}

impl<O> ChildHandle<O> {
    /// The child's workflow ID.
    pub fn workflow_id(&self) -> &str {
        &self.id
    }
}

/// The attempts of a step that records itself in its own transaction
/// (`transaction`, `recv`, `set_event`), driven by
/// `WorkflowContext::step_begin` and `WorkflowContext::step_commit`: begin,
/// the step's own statements, the checkpoint in the same transaction,
/// commit; after a commit whose outcome was lost, the next attempt first
/// looks for the checkpoint.
struct StepTx {
    step_id: i32,
    kind: StepKind,
    started_ms: i64,
    /// Attempts so far, counting failed ones only (a `recv` that found no
    /// message and waited still takes one).
    attempts: u32,
    /// Set after a COMMIT whose outcome we never learned.
    maybe_committed: bool,
}

impl StepTx {
    fn new(step_id: i32, kind: StepKind, started_ms: i64) -> Self {
        Self {
            step_id,
            kind,
            started_ms,
            attempts: 1,
            maybe_committed: false,
        }
    }

    /// The attempt failed (and was rolled back): the next one is a new one.
    fn failed(&mut self) {
        self.attempts += 1;
    }
}

/// How `WorkflowContext::step_begin` starts an attempt.
enum Begun<Tx> {
    /// A transaction for the step's statements.
    Tx(Tx),
    /// An earlier attempt's commit, whose outcome was lost, did commit.
    Recorded(StepRow),
}

/// How `WorkflowContext::step_commit` ended.
enum Committed<T> {
    /// Ours committed.
    Ours,
    /// Another execution recorded the step first; its outcome.
    Winner(T),
    /// Nothing committed, or the outcome is unknown: start another attempt.
    Again,
}

/// How a transaction that recorded a step ended.
enum Finished {
    Committed,
    /// Another execution recorded the step first; ours rolled back.
    Exists,
    /// Nothing committed, or the outcome is unknown: try again.
    Retry {
        maybe_committed: bool,
    },
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a step gets from the recorded history.
enum Replay {
    Recorded(StepRow),
    Run(i32),
}

impl<S: Storage> WorkflowContext<S> {
    pub(crate) fn new(
        shared: Arc<Shared<S>>,
        workflow_id: String,
        owner_epoch: i64,
        deadline_ms: Option<i64>,
        history: Vec<StepRow>,
        run_version: Option<String>,
    ) -> Self {
        // `replay` binary-searches the history by step ID.
        debug_assert!(
            history.windows(2).all(|w| w[0].step_id < w[1].step_id),
            "history of {workflow_id} is not sorted by step ID"
        );
        Self {
            shared,
            workflow_id,
            owner_epoch,
            deadline_ms,
            history,
            next_step_id: 0,
            interrupted: false,
            replay_only: false,
            run_version,
            trace_parent: None,
        }
    }

    /// The same context, for a run stored with this trace context.
    pub(crate) fn with_trace_parent(mut self, trace_parent: Option<String>) -> Self {
        self.trace_parent = trace_parent;
        self
    }

    /// A context that only replays `history` (see `Engine::replay`): it
    /// never runs a step nor writes anything.
    pub(crate) fn replay_only(
        shared: Arc<Shared<S>>,
        workflow_id: String,
        owner_epoch: i64,
        history: Vec<StepRow>,
        run_version: Option<String>,
    ) -> Self {
        Self {
            replay_only: true,
            ..Self::new(shared, workflow_id, owner_epoch, None, history, run_version)
        }
    }

    /// How many steps the body has called so far.
    pub(crate) fn steps_called(&self) -> i32 {
        self.next_step_id
    }

    /// This workflow's ID.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The W3C `traceparent` stored with this run: the trace context of
    /// whoever started or enqueued it (`None`: it was given none). The
    /// same in every execution of the run, on whichever executor; with the
    /// feature `otel` the execution's span is already its child, so this
    /// is for passing the caller's trace on by other means.
    pub fn trace_parent(&self) -> Option<&str> {
        self.trace_parent.as_deref()
    }

    /// The fencing epoch of this execution: every execution of a workflow
    /// (its start, a recovery, a claim after a takeover) runs under a
    /// higher one, and writes under an older one are refused. For logs and
    /// diagnostics.
    pub fn owner_epoch(&self) -> i64 {
        self.owner_epoch
    }

    pub(crate) fn was_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Runs a plain step (an external call, say): at least once, never again
    /// once its checkpoint commits. No retries; see [`step_with`].
    ///
    /// The closure is called anew for each attempt, so it can borrow from the
    /// workflow body: `ctx.step("fetch", || async { client.get(&url).await })`.
    ///
    /// [`step_with`]: WorkflowContext::step_with
    pub async fn step<T, E, F, Fut>(&mut self, name: &str, f: F) -> Result<T, WorkflowError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Serialize + DeserializeOwned + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.step_with(name, RetryPolicy::none(), f).await
    }

    /// Runs a plain step, retrying failed attempts per `policy`. The final
    /// error (after the last attempt) is recorded and replayed like an
    /// output: the step fails the same way on every replay.
    pub async fn step_with<T, E, F, Fut>(
        &mut self,
        name: &str,
        policy: RetryPolicy,
        mut f: F,
    ) -> Result<T, WorkflowError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Serialize + DeserializeOwned + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let step_id = match self.replay(name)? {
            Replay::Recorded(row) => return self.decode_recorded(row),
            Replay::Run(step_id) => step_id,
        };
        let span = self.step_span(step_id, name, StepKind::Plain);
        // The attempts taken, for the span (recorded once, at the end:
        // OpenTelemetry keeps every value recorded).
        let tried = &AtomicU32::new(0);
        let result = async move {
            self.check_shutdown()?;
            self.check_deadline().await?;
            let started_ms = self.shared.now_ms();
            let mut attempts = 0u32;
            let (value, outcome) = loop {
                attempts += 1;
                tried.store(attempts, Ordering::Relaxed);
                match f().await {
                    Ok(value) => match self.encode(&value, step_id, name) {
                        Ok(json) => break (Some(value), Ok(json)),
                        Err(e) => break (None, Err(payload::error_text(e.to_string()))),
                    },
                    Err(e) => {
                        let message = payload::error_text(e.into().to_string());
                        if attempts >= policy.attempts_max {
                            break (None, Err(message));
                        }
                        let delay = self.shared.with_rng(|rng| policy.delay(attempts, rng));
                        crate::telemetry::retried("error");
                        tracing::debug!(workflow_id = %self.workflow_id, step_id, name, attempts, ?delay, error = %message, "step attempt failed, retrying");
                        self.pause(delay).await?;
                    }
                }
            };
            if crate::bugs::active(crate::bugs::Bug::RetriedStepUnrecorded)
                && attempts > 1
                && let Some(value) = value
            {
                return Ok(value);
            }
            crate::bugs::refresh_epoch(&mut self.owner_epoch, self.shared.storage(), &self.workflow_id).await;
            let params = self.step_params(
                step_id,
                name,
                StepKind::Plain,
                started_ms,
                outcome.clone(),
                attempts,
            );
            let shared = self.shared.clone();
            let recorded = self
                .storage_retry(|| shared.record_step(params.clone()))
                .await?;
            if recorded == StepRecorded::Recorded {
                let took = self.shared.now_ms() - started_ms;
                crate::telemetry::step_committed(StepKind::Plain, value.is_some(), Duration::from_millis(took.max(0) as u64));
            }
            match (recorded, value, outcome) {
                (StepRecorded::Recorded, Some(value), _) => Ok(value),
                (StepRecorded::Recorded, None, Err(message)) => {
                    Err(self.step_failed(step_id, name, message))
                }
                // Another execution recorded this step first: its outcome wins,
                // so every execution agrees on one history.
                (StepRecorded::Exists, ..) => self.replay_winner(step_id, name).await,
                (StepRecorded::Recorded, None, Ok(_)) => unreachable!("an encoded output has a value"),
            }
        }
        .instrument(span.clone())
        .await;
        span.record("step.attempts", tried.load(Ordering::Relaxed));
        step_outcome(&span, &result);
        result
    }

    /// Runs a transactional step: the closure's database writes and the
    /// step's checkpoint commit in one transaction, so its effects are
    /// applied exactly once whatever crashes, lost acknowledgements or
    /// concurrent executions occur.
    ///
    /// The closure receives the open transaction (for PostgreSQL a
    /// `&mut sqlx::PgConnection`) and may be called more than once:
    /// serialization failures, deadlocks and lost connections roll back and
    /// retry. Write it as an `async move` closure over owned values (clone
    /// what you need before the call). Any other error rolls the transaction
    /// back and is recorded as the step's outcome.
    pub async fn transaction<T, E, F>(&mut self, name: &str, mut f: F) -> Result<T, WorkflowError>
    where
        F: AsyncFnMut(&mut S::Conn) -> Result<T, E> + Send,
        T: Serialize + DeserializeOwned + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let step_id = match self.replay(name)? {
            Replay::Recorded(row) => return self.decode_recorded(row),
            Replay::Run(step_id) => step_id,
        };
        let span = self.step_span(step_id, name, StepKind::Transaction);
        // The attempts taken, for the span (recorded once, at the end:
        // OpenTelemetry keeps every value recorded).
        let tried = &AtomicU32::new(0);
        let result = async move {
            self.check_deadline().await?;
            let started_ms = self.shared.now_ms();
            let mut st = StepTx::new(step_id, StepKind::Transaction, started_ms);
            loop {
                let begun = self.step_begin(&mut st).await;
                tried.store(st.attempts, Ordering::Relaxed);
                let mut tx = match begun? {
                    Begun::Tx(tx) => tx,
                    Begun::Recorded(row) => return self.check_and_decode(row, name),
                };
                let (value, json) = match f(tx.conn()).await {
                    Ok(value) => match self.encode(&value, step_id, name) {
                        Ok(json) => (value, json),
                        Err(e) => {
                            let _ = tx.rollback().await;
                            return self
                                .record_failure(step_id, name, st.attempts, started_ms, e.to_string())
                                .await;
                        }
                    },
                    Err(e) => {
                        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                        let _ = tx.rollback().await;
                        // A lost connection is retried for as long as it takes
                        // (an outage must not fail steps for good); conflicts
                        // are retried up to a bound; anything else is the
                        // step's recorded failure.
                        let retry = match S::classify(&*e) {
                            Some(ErrorKind::Unavailable) => true,
                            Some(ErrorKind::Conflict) => {
                                st.attempts < self.shared.config().conflict_attempts_max
                            }
                            _ => false,
                        };
                        let retry = retry && !crate::bugs::not_retried(S::classify(&*e));
                        if !retry {
                            return self
                                .record_failure(step_id, name, st.attempts, started_ms, e.to_string())
                                .await;
                        }
                        tracing::debug!(workflow_id = %self.workflow_id, step_id, name, attempts = st.attempts, error = %e, "transaction rolled back, retrying");
                        crate::telemetry::retried("conflict");
                        self.pause(self.shared.infra_delay(st.attempts)).await?;
                        st.failed();
                        continue;
                    }
                };
                match self.step_commit(&mut st, name, tx, json).await? {
                    Committed::Ours => return Ok(value),
                    Committed::Winner(value) => return Ok(value),
                    Committed::Again => {}
                }
            }
        }
        .instrument(span.clone())
        .await;
        span.record("step.attempts", tried.load(Ordering::Relaxed));
        step_outcome(&span, &result);
        result
    }

    /// Sleeps durably: the wake-up time is recorded, so a workflow recovered
    /// mid-sleep waits only for the remainder. A sleep longer than the
    /// engine's `sleep_suspend_after` hands the workflow back to its queue
    /// until the wake-up time, holding no executor slot meanwhile.
    pub async fn sleep(&mut self, duration: Duration) -> Result<(), WorkflowError> {
        let wake_ms = match self.replay("sleep")? {
            Replay::Recorded(row) => self.decode_recorded::<i64>(row)?,
            Replay::Run(step_id) => {
                self.check_shutdown()?;
                self.check_deadline().await?;
                let now_ms = self.shared.now_ms();
                let wake_ms = now_ms.saturating_add(duration_ms(duration));
                self.record_simple(step_id, "sleep", StepKind::Sleep, now_ms, &wake_ms)
                    .await?
            }
        };
        self.wait_until(wake_ms).await?;
        Ok(())
    }

    /// Receives the oldest message sent to this workflow on `topic`, waiting
    /// up to `timeout`; `None` on timeout. The message is consumed in the
    /// same transaction that records this step: exactly once, and a replay
    /// returns the same message (or the same timeout).
    pub async fn recv<T>(
        &mut self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<T>, WorkflowError>
    where
        T: Serialize + DeserializeOwned + Send,
    {
        let name = format!("recv:{topic}");
        let step_id = match self.replay(&name)? {
            Replay::Recorded(row) => return self.decode_recorded(row),
            Replay::Run(step_id) => step_id,
        };
        self.check_deadline().await?;
        let started_ms = self.shared.now_ms();
        let timeout_ms = duration_ms(timeout);
        let mut deadline_ms = started_ms.saturating_add(timeout_ms);
        let mut st = StepTx::new(step_id, StepKind::Recv, started_ms);
        // Whether this execution has recorded (or learned) when the wait
        // times out: the first wait at this step decides, whoever ran it.
        let mut deadline_recorded = false;
        loop {
            // Subscribe before looking, so a message sent in between still
            // wakes this wait.
            let shared = Arc::clone(&self.shared);
            let notified = shared.messages_changed();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut tx = match self.step_begin(&mut st).await? {
                Begun::Tx(tx) => tx,
                Begun::Recorded(row) => return self.check_and_decode(row, &name),
            };
            let taken = match tx
                .message_take(&self.workflow_id, topic, self.owner_epoch)
                .await
            {
                Ok(taken) => taken,
                Err(e) => {
                    let _ = tx.rollback().await;
                    self.backoff_after(e, st.attempts).await?;
                    st.failed();
                    continue;
                }
            };
            let now_ms = self.shared.now_ms();
            let payload = match taken {
                Some(payload) => payload,
                // (Only once the first wait's recorded time is known.)
                None if deadline_recorded && now_ms >= deadline_ms => "null".to_owned(),
                None => {
                    // Nothing yet, unless another execution recorded this
                    // step meanwhile: a zombie that had the message locked in
                    // its open transaction (so our take skipped it) and
                    // committed its checkpoint after our claim. Checkpoints
                    // are fenced at their statement, so that commit stands
                    // and its outcome wins; without this read we would wait
                    // for a message that is gone.
                    match tx.step_get(&self.workflow_id, step_id).await {
                        Ok(None) => {}
                        Ok(Some(row)) => {
                            let _ = tx.rollback().await;
                            return self.check_and_decode(row, &name);
                        }
                        Err(e) => {
                            let _ = tx.rollback().await;
                            self.backoff_after(e, st.attempts).await?;
                            st.failed();
                            continue;
                        }
                    }
                    if !deadline_recorded {
                        // Before the first wait: record when it times out,
                        // or learn when an earlier execution's wait does.
                        let recorded = match tx
                            .recv_deadline(
                                &self.workflow_id,
                                self.owner_epoch,
                                step_id,
                                deadline_ms,
                            )
                            .await
                        {
                            Ok(recorded) => recorded,
                            Err(e) => {
                                let _ = tx.rollback().await;
                                self.backoff_after(e, st.attempts).await?;
                                st.failed();
                                continue;
                            }
                        };
                        if let Err(e) = tx.commit().await {
                            self.backoff_after(e, st.attempts).await?;
                            st.failed();
                            continue;
                        }
                        deadline_recorded = true;
                        if !crate::bugs::active(crate::bugs::Bug::RecvDeadlineRestarts) {
                            deadline_ms = recorded;
                            st.started_ms = recorded.saturating_sub(timeout_ms);
                        }
                        // Look again at once: the recorded time may be past.
                        continue;
                    }
                    // Wait outside any transaction.
                    let _ = tx.rollback().await;
                    let wait = Duration::from_millis((deadline_ms - now_ms) as u64)
                        .min(self.shared.config().queue_poll_interval);
                    // `biased`: a deterministic poll order for simulation.
                    tokio::select! {
                        biased;
                        () = &mut notified => {}
                        result = shared.sleep_unless_shutdown(wait) => self.note(result)?,
                    }
                    self.check_deadline().await?;
                    continue;
                }
            };
            match self
                .step_commit(&mut st, &name, tx, payload.clone())
                .await?
            {
                Committed::Ours => {
                    return payload::decode(&payload, || format!("message on topic {topic:?}"))
                        .map_err(Into::into);
                }
                Committed::Winner(value) => return Ok(value),
                Committed::Again => {}
            }
        }
    }

    /// Publishes `value` under `key` for readers of
    /// [`Admin::get_event`](crate::Admin::get_event); the event and this
    /// step's checkpoint commit together.
    pub async fn set_event<T: Serialize>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), WorkflowError> {
        let name = format!("event:{key}");
        let step_id = match self.replay(&name)? {
            Replay::Recorded(_) => return Ok(()),
            Replay::Run(step_id) => step_id,
        };
        self.check_deadline().await?;
        let json = self.shared.encode(value, || format!("event {key:?}"))?;
        let started_ms = self.shared.now_ms();
        let mut st = StepTx::new(step_id, StepKind::Event, started_ms);
        loop {
            let mut tx = match self.step_begin(&mut st).await? {
                Begun::Tx(tx) => tx,
                Begun::Recorded(_) => return Ok(()),
            };
            let now_ms = self.shared.now_ms();
            let after = crate::bugs::active(crate::bugs::Bug::EventAfterCheckpoint);
            if !after && let Err(e) = tx.event_set(&self.workflow_id, key, &json, now_ms).await {
                let _ = tx.rollback().await;
                self.backoff_after(e, st.attempts).await?;
                st.failed();
                continue;
            }
            match self
                .step_commit::<()>(&mut st, &name, tx, "null".to_owned())
                .await?
            {
                Committed::Ours if after => {
                    crate::bugs::event_after_checkpoint(
                        self.shared.storage(),
                        &self.workflow_id,
                        key,
                        &json,
                        now_ms,
                    )
                    .await;
                    return Ok(());
                }
                Committed::Ours | Committed::Winner(()) => return Ok(()),
                Committed::Again => {}
            }
        }
    }

    /// Whether this run takes the path of patch `patch`: the way to change
    /// a workflow's steps while runs of the old code are in flight.
    ///
    /// ```ignore
    /// if ctx.patched("fraud-check").await? {
    ///     ctx.step("fraud-check", || check(&order)).await?;
    /// }
    /// ctx.step("charge", || charge(&order)).await?;
    /// ```
    ///
    /// True for a run that reaches this point under code that has the
    /// patch: the answer is recorded (a `patch:<name>` marker step), so
    /// every replay of the run agrees. False for a run whose history shows
    /// it passed this point without the patch (the next recorded step is
    /// another one): it goes on down the old path, which its history
    /// recorded. Code with the patch may therefore accept the versions that
    /// lack it ([`EngineBuilder::accept_versions`](crate::EngineBuilder::accept_versions));
    /// code without it must not accept the versions that have it. Once no
    /// run of the old versions remains, retire the patch with
    /// [`retire_patch`](Self::retire_patch).
    pub async fn patched(&mut self, patch: &str) -> Result<bool, WorkflowError> {
        let name = format!("{PATCH_PREFIX}{patch}");
        let step_id = self.next_step_id;
        match self.history.binary_search_by_key(&step_id, |s| s.step_id) {
            Ok(i) if self.history[i].name == name => {
                self.next_step_id += 1;
                Ok(true)
            }
            // Passed here under code without the patch: the old path, and
            // no step taken.
            Ok(_) if !crate::bugs::active(crate::bugs::Bug::PatchIgnoresHistory) => Ok(false),
            _ => {
                let step_id = match self.replay(&name)? {
                    Replay::Recorded(row) => return self.decode_recorded(row),
                    Replay::Run(step_id) => step_id,
                };
                self.check_shutdown()?;
                self.check_deadline().await?;
                self.record_patch(step_id, &name).await.map_err(Into::into)
            }
        }
    }

    /// Records patch marker `name` as step `step_id` (already taken by the
    /// caller) and says which path the run takes: the patched one if the
    /// marker is the step recorded there, else the old one (another
    /// execution, of code without the patch, recorded its own step there
    /// first), which hands the step ID back.
    ///
    /// A run of an older version that takes the patched path becomes a run
    /// of this code's version: code without the patch could not go on with
    /// it. The version changes in the marker's transaction, under a row
    /// lock on the run taken only while this execution owns it (strictly
    /// fenced, unlike a checkpoint's snapshot fence), and is rolled back
    /// with the transaction if another execution's step is there: no
    /// execution of older code can own the run once the marker commits.
    async fn record_patch(&mut self, step_id: i32, name: &str) -> Result<bool, Error> {
        let own = &self.shared.config().version;
        let restamp = (self.run_version.as_ref() != Some(own)
            && !crate::bugs::active(crate::bugs::Bug::PatchKeepsVersion))
        .then(|| own.clone());
        let started_ms = self.shared.now_ms();
        let mut st = StepTx::new(step_id, StepKind::Patch, started_ms);
        let winner = loop {
            let tx = match self.step_begin(&mut st).await? {
                Begun::Tx(tx) => tx,
                Begun::Recorded(row) => break row,
            };
            let mut params = self.step_params(
                step_id,
                name,
                StepKind::Patch,
                started_ms,
                Ok("true".to_owned()),
                st.attempts,
            );
            params.version = restamp.clone();
            match self.finish_in_tx(tx, params, st.attempts).await? {
                Finished::Committed => {
                    if restamp.is_some() {
                        self.run_version = restamp;
                    }
                    return Ok(true);
                }
                Finished::Exists => match self.committed_step(step_id).await? {
                    Some(row) => break row,
                    None => {
                        return Err(Error::Storage(StorageError::new(
                            ErrorKind::Other,
                            format!("step {step_id} was reported recorded but cannot be found"),
                        )));
                    }
                },
                Finished::Retry { maybe_committed } => {
                    st.maybe_committed = maybe_committed;
                    st.failed();
                }
            }
        };
        if winner.name == name {
            return Ok(true);
        }
        self.next_step_id = step_id;
        Ok(false)
    }

    /// Retires patch `patch`, once its old path is gone from the code:
    /// code that took the patched path unconditionally calls this where it
    /// called [`patched`](Self::patched), so that runs which recorded the
    /// patch's marker step there still replay (the marker is consumed).
    /// Runs that reach this point record nothing. Code with the retired
    /// patch can no longer run the runs that went down the old path:
    /// `Replayer::check` reports them, and it may accept the versions that
    /// had the patch but not those before it. Once no run of the patched
    /// versions remains either, delete the call.
    pub fn retire_patch(&mut self, patch: &str) {
        let name = format!("{PATCH_PREFIX}{patch}");
        let step_id = self.next_step_id;
        if let Ok(i) = self.history.binary_search_by_key(&step_id, |s| s.step_id)
            && self.history[i].name == name
        {
            self.next_step_id += 1;
        }
    }

    /// Starts workflow `W` as a child of this one. The start is recorded, so
    /// a replay attaches to the same child instead of starting another. The
    /// child inherits this workflow's deadline, and cancelling this workflow
    /// cancels it.
    pub async fn start_child<W: Workflow<S>>(
        &mut self,
        input: W::Input,
    ) -> Result<ChildHandle<W::Output>, WorkflowError> {
        let name = format!("child:{}", W::NAME);
        let child_id = match self.replay(&name)? {
            Replay::Recorded(row) => self.decode_recorded::<String>(row)?,
            Replay::Run(step_id) => {
                self.check_shutdown()?;
                self.check_deadline().await?;
                let started_ms = self.shared.now_ms();
                // Derived from the parent and the step, so that a retry after
                // a crash before the record below finds the same child.
                let mut child_id = format!("{}-child-{step_id}", self.workflow_id);
                if crate::bugs::active(crate::bugs::Bug::ChildIdNotDerived) {
                    child_id = format!("{child_id}-{}", started_ms);
                }
                let json = self
                    .shared
                    .encode(&input, || format!("input of workflow {:?}", W::NAME))?;
                // The child continues this execution's span (feature
                // `otel`), or else the trace this run was given.
                let trace_parent =
                    crate::telemetry::current_trace_parent().or_else(|| self.trace_parent.clone());
                let start = self.shared.start(
                    W::NAME,
                    child_id.clone(),
                    json,
                    Some((self.workflow_id.clone(), self.owner_epoch)),
                    self.deadline_ms,
                    trace_parent,
                );
                let result = start.await;
                self.note(result)?;
                self.record_simple(step_id, &name, StepKind::Child, started_ms, &child_id)
                    .await?
            }
        };
        Ok(ChildHandle {
            id: child_id,
            _output: PhantomData,
        })
    }

    /// Waits for a child's result. The result is recorded, so a replay
    /// returns it without waiting; a failed or cancelled child is this
    /// step's (recorded) failure.
    pub async fn child_result<O>(&mut self, child: &ChildHandle<O>) -> Result<O, WorkflowError>
    where
        O: Serialize + DeserializeOwned + Send,
    {
        let name = format!("result:{}", child.id);
        let step_id = match self.replay(&name)? {
            Replay::Recorded(row) => return self.decode_recorded(row),
            Replay::Run(step_id) => step_id,
        };
        // Awaiting a child is a step like any other: it does not begin past
        // the deadline.
        self.check_deadline().await?;
        let started_ms = self.shared.now_ms();
        let outcome = self.shared.outcome(&child.id).await;
        let outcome = self.note(outcome)?;
        // The child inherited this workflow's deadline: cancelled for it,
        // it says this workflow is past it too (whatever this executor's
        // clock says). That is this workflow's cancellation, not a failure
        // of this step.
        if self.deadline_ms.is_some()
            && matches!(&outcome, Outcome::Cancelled(reason) if reason == DEADLINE_EXCEEDED)
        {
            return Err(self.deadline_exceeded().await.into());
        }
        let recorded = match outcome {
            Outcome::Success(json) => Ok(json),
            Outcome::Error(message) => {
                Err(format!("child workflow {:?} failed: {message}", child.id))
            }
            Outcome::Cancelled(reason) => Err(format!(
                "child workflow {:?} was cancelled: {reason}",
                child.id
            )),
        };
        let params = self.step_params(
            step_id,
            &name,
            StepKind::ChildResult,
            started_ms,
            recorded,
            1,
        );
        let shared = self.shared.clone();
        self.storage_retry(|| shared.record_step(params.clone()))
            .await?;
        // Recorded or recorded by a concurrent execution: either way, the
        // recorded outcome is the answer.
        self.replay_winner(step_id, &name).await
    }

    /// Records a step whose output is known up front, in its own commit, and
    /// returns the recorded output (ours, or a concurrent execution's).
    async fn record_simple<T: Serialize + DeserializeOwned>(
        &mut self,
        step_id: i32,
        name: &str,
        kind: StepKind,
        started_ms: i64,
        value: &T,
    ) -> Result<T, WorkflowError> {
        let json = self.encode(value, step_id, name)?;
        let params = self.step_params(step_id, name, kind, started_ms, Ok(json.clone()), 1);
        let shared = self.shared.clone();
        match self
            .storage_retry(|| shared.record_step(params.clone()))
            .await?
        {
            StepRecorded::Recorded => {
                let took = self.shared.now_ms() - started_ms;
                crate::telemetry::step_committed(
                    kind,
                    true,
                    Duration::from_millis(took.max(0) as u64),
                );
                payload::decode(&json, || format!("output of step {step_id} ({name:?})"))
                    .map_err(Into::into)
            }
            StepRecorded::Exists => self.replay_winner(step_id, name).await,
        }
    }

    /// Waits until the engine's clock reaches `wake_ms`, or hands the
    /// workflow back to its queue until then if that is far off.
    async fn wait_until(&mut self, wake_ms: i64) -> Result<(), Error> {
        if self.replay_only {
            // A replay check does not wait: the recorded step is enough.
            return Ok(());
        }
        loop {
            self.check_deadline().await?;
            let now_ms = self.shared.now_ms();
            if now_ms >= wake_ms {
                return Ok(());
            }
            let remaining = wake_ms - now_ms;
            if remaining > duration_ms(self.shared.config().sleep_suspend_after) {
                let storage = self.shared.storage().clone();
                let (id, epoch) = (self.workflow_id.clone(), self.owner_epoch);
                self.storage_retry(|| {
                    let id = id.clone();
                    storage.autocommit(move |tx| {
                        Box::pin(
                            async move { tx.workflow_suspend(&id, epoch, wake_ms, now_ms).await },
                        )
                    })
                })
                .await?;
                self.interrupted = true;
                return Err(Error::Suspended);
            }
            let until_deadline = self.deadline_ms.map_or(i64::MAX, |d| d - now_ms).max(1);
            self.pause(Duration::from_millis(remaining.min(until_deadline) as u64))
                .await?;
        }
    }

    /// Past the deadline: cancels this workflow (and its children) and stops.
    async fn check_deadline(&mut self) -> Result<(), Error> {
        let Some(deadline_ms) = self.deadline_ms else {
            return Ok(());
        };
        if self.shared.now_ms() < deadline_ms
            || crate::bugs::active(crate::bugs::Bug::DeadlineNotChecked)
        {
            return Ok(());
        }
        Err(self.deadline_exceeded().await)
    }

    /// Cancels this workflow (and its children) for its deadline; the
    /// error that stops it.
    async fn deadline_exceeded(&mut self) -> Error {
        let storage = self.shared.storage().clone();
        let id = self.workflow_id.clone();
        let now_ms = self.shared.now_ms();
        let epoch = self.owner_epoch;
        let cancelled = self
            .storage_retry(|| {
                let id = id.clone();
                storage.autocommit(move |tx| {
                    Box::pin(async move { tx.workflow_cancel_overdue(&id, epoch, now_ms).await })
                })
            })
            .await;
        // Fenced: another execution owns the workflow now (a resume may
        // have cleared the deadline this one still knows); stop as fenced.
        if let Err(e) = self.note(cancelled) {
            return e;
        }
        self.interrupted = true;
        Error::DeadlineExceeded {
            workflow_id: self.workflow_id.clone(),
        }
    }

    /// The one place a step's record is built: its outcome is an output
    /// (JSON) or an error message, never both nor neither.
    fn step_params(
        &self,
        step_id: i32,
        name: &str,
        kind: StepKind,
        started_ms: i64,
        outcome: Result<String, String>,
        attempts: u32,
    ) -> StepRecord {
        let (output, error) = match outcome {
            Ok(json) => (Some(json), None),
            Err(message) => (None, Some(message)),
        };
        StepRecord {
            workflow_id: self.workflow_id.clone(),
            step_id,
            name: name.to_owned(),
            kind,
            output,
            error,
            owner_epoch: self.owner_epoch,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            started_ms,
            now_ms: self.shared.now_ms(),
            version: None,
        }
    }

    /// Starts the next attempt of `st`: an open transaction, or the
    /// checkpoint an earlier attempt's lost commit did write. Retries a
    /// failed `BEGIN`.
    async fn step_begin(&mut self, st: &mut StepTx) -> Result<Begun<S::Tx>, Error> {
        loop {
            self.check_shutdown()?;
            if st.maybe_committed {
                if let Some(row) = self.committed_step(st.step_id).await? {
                    return Ok(Begun::Recorded(row));
                }
                st.maybe_committed = false;
            }
            match self.shared.storage().begin().await {
                Ok(tx) => return Ok(Begun::Tx(tx)),
                Err(e) => {
                    self.backoff_after(e, st.attempts).await?;
                    st.failed();
                }
            }
        }
    }

    /// Records `st`'s checkpoint with `output` (JSON) in `tx`, after the
    /// step's own statements, and commits.
    async fn step_commit<T: DeserializeOwned>(
        &mut self,
        st: &mut StepTx,
        name: &str,
        mut tx: S::Tx,
        output: String,
    ) -> Result<Committed<T>, WorkflowError> {
        crate::bugs::refresh_epoch(
            &mut self.owner_epoch,
            self.shared.storage(),
            &self.workflow_id,
        )
        .await;
        let params = self.step_params(
            st.step_id,
            name,
            st.kind,
            st.started_ms,
            Ok(output),
            st.attempts,
        );
        if (st.kind == StepKind::Transaction
            && crate::bugs::active(crate::bugs::Bug::SplitCheckpoint))
            || (st.kind == StepKind::Recv
                && crate::bugs::active(crate::bugs::Bug::RecvTakeOutsideStep))
        {
            tx = crate::bugs::split_transaction(tx, self.shared.storage()).await;
        }
        match self.finish_in_tx(tx, params, st.attempts).await? {
            Finished::Committed => Ok(Committed::Ours),
            // A concurrent execution committed this step; ours rolled back,
            // taking the step's writes with it.
            Finished::Exists => Ok(Committed::Winner(
                self.replay_winner(st.step_id, name).await?,
            )),
            Finished::Retry { maybe_committed } => {
                st.maybe_committed = maybe_committed;
                st.failed();
                Ok(Committed::Again)
            }
        }
    }

    /// Records a step in `tx` and commits it.
    async fn finish_in_tx(
        &mut self,
        mut tx: S::Tx,
        params: StepRecord,
        attempts: u32,
    ) -> Result<Finished, Error> {
        let (kind, ok) = (params.kind, params.output.is_some());
        let took = Duration::from_millis((params.now_ms - params.started_ms).max(0) as u64);
        match tx.step_record(params).await {
            Ok(StepRecorded::Recorded) => {
                if crate::bugs::active(crate::bugs::Bug::MetricsCountBeforeCommit) {
                    crate::telemetry::step_counted(kind, ok, took);
                }
                match tx.commit().await {
                    Ok(()) => {
                        crate::telemetry::step_committed(kind, ok, took);
                        Ok(Finished::Committed)
                    }
                    Err(e) => {
                        if crate::bugs::active(crate::bugs::Bug::CommitAssumedOnError)
                            && e.kind() == ErrorKind::Unavailable
                        {
                            return Ok(Finished::Committed);
                        }
                        let maybe_committed = e.kind() == ErrorKind::Unavailable;
                        self.backoff_after(e, attempts).await?;
                        Ok(Finished::Retry { maybe_committed })
                    }
                }
            }
            Ok(StepRecorded::Exists) => {
                let _ = tx.rollback().await;
                Ok(Finished::Exists)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                self.backoff_after(e, attempts).await?;
                Ok(Finished::Retry {
                    maybe_committed: false,
                })
            }
        }
    }

    /// After a commit with an unknown outcome: the step, if it committed.
    async fn committed_step(&mut self, step_id: i32) -> Result<Option<StepRow>, Error> {
        let storage = self.shared.storage().clone();
        let id = self.workflow_id.clone();
        self.storage_retry(|| storage.step_get(&id, step_id)).await
    }

    /// The tracing span of a step's execution (replays get none).
    fn step_span(&self, step_id: i32, name: &str, kind: StepKind) -> tracing::Span {
        tracing::info_span!(
            "step",
            otel.name = format!("step {name}"),
            workflow.id = %self.workflow_id,
            step.id = step_id,
            step.name = name,
            step.kind = kind.as_str(),
            step.attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// Takes the next step ID and returns the recorded step, if any, after
    /// checking that the code still calls the same step there.
    fn replay(&mut self, name: &str) -> Result<Replay, Error> {
        let step_id = self.next_step_id;
        self.next_step_id += 1;
        match self.history.binary_search_by_key(&step_id, |s| s.step_id) {
            Ok(i) => {
                let row = self.history[i].clone();
                check_name(&row, name)?;
                if crate::bugs::active(crate::bugs::Bug::ReplayRerunsPlain)
                    && row.kind == StepKind::Plain
                {
                    return Ok(Replay::Run(step_id));
                }
                Ok(Replay::Recorded(row))
            }
            Err(_) if self.replay_only => {
                self.interrupted = true;
                Err(Error::ReplayEnded {
                    step_id,
                    name: name.to_owned(),
                })
            }
            Err(_) => Ok(Replay::Run(step_id)),
        }
    }

    fn decode_recorded<T: DeserializeOwned>(&self, row: StepRow) -> Result<T, WorkflowError> {
        match (row.output, row.error) {
            (Some(json), _) => payload::decode(&json, || {
                format!("recorded output of step {} ({:?})", row.step_id, row.name)
            })
            .map_err(Into::into),
            (None, Some(message)) => Err(self.step_failed(row.step_id, &row.name, message)),
            (None, None) => Err(Error::Storage(StorageError::new(
                ErrorKind::Other,
                format!("step {} has neither output nor error", row.step_id),
            ))
            .into()),
        }
    }

    fn check_and_decode<T: DeserializeOwned>(
        &self,
        row: StepRow,
        name: &str,
    ) -> Result<T, WorkflowError> {
        check_name(&row, name)?;
        self.decode_recorded(row)
    }

    /// Loads and returns the step another execution recorded.
    async fn replay_winner<T: DeserializeOwned>(
        &mut self,
        step_id: i32,
        name: &str,
    ) -> Result<T, WorkflowError> {
        match self.committed_step(step_id).await? {
            Some(row) => self.check_and_decode(row, name),
            None => Err(Error::Storage(StorageError::new(
                ErrorKind::Other,
                format!("step {step_id} was reported recorded but cannot be found"),
            ))
            .into()),
        }
    }

    /// Records a failed step's error in its own commit, then returns it.
    async fn record_failure<T: DeserializeOwned>(
        &mut self,
        step_id: i32,
        name: &str,
        attempts: u32,
        started_ms: i64,
        message: String,
    ) -> Result<T, WorkflowError> {
        let message = payload::error_text(message);
        let params = self.step_params(
            step_id,
            name,
            StepKind::Transaction,
            started_ms,
            Err(message.clone()),
            attempts,
        );
        let shared = self.shared.clone();
        match self
            .storage_retry(|| shared.record_step(params.clone()))
            .await?
        {
            StepRecorded::Recorded => Err(self.step_failed(step_id, name, message)),
            StepRecorded::Exists => self.replay_winner(step_id, name).await,
        }
    }

    fn step_failed(&self, step_id: i32, name: &str, message: String) -> WorkflowError {
        Error::StepFailed {
            step_id,
            name: name.to_owned(),
            message,
        }
        .into()
    }

    fn encode<T: Serialize>(&self, value: &T, step_id: i32, name: &str) -> Result<String, Error> {
        self.shared
            .encode(value, || format!("output of step {step_id} ({name:?})"))
    }

    fn check_shutdown(&mut self) -> Result<(), Error> {
        if self.shared.is_shutting_down() {
            self.interrupted = true;
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    async fn pause(&mut self, delay: Duration) -> Result<(), Error> {
        let result = self.shared.sleep_unless_shutdown(delay).await;
        self.note(result)
    }

    /// Backs off after a storage error that leaves nothing committed (or an
    /// unknown commit outcome), or turns it into the error to return.
    async fn backoff_after(&mut self, error: StorageError, attempts: u32) -> Result<(), Error> {
        let result = self.shared.backoff_after(error, attempts).await;
        if result.is_ok() {
            crate::telemetry::retried("storage");
        }
        self.note(result)
    }

    /// Runs an idempotent storage operation until it succeeds, the database
    /// refuses it for good, or the engine shuts down.
    async fn storage_retry<R, Op, Fut>(&mut self, op: Op) -> Result<R, Error>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<R, StorageError>>,
    {
        let result = self.shared.retry(op).await;
        self.note(result)
    }

    /// Turns a fencing storage error into [`Error::Fenced`] and remembers
    /// any interruption.
    fn note<R>(&mut self, result: Result<R, Error>) -> Result<R, Error> {
        result.map_err(|error| {
            let error = match error {
                Error::Storage(e) if e.kind() == ErrorKind::Fenced => {
                    crate::telemetry::fenced();
                    Error::Fenced {
                        workflow_id: self.workflow_id.clone(),
                    }
                }
                other => other,
            };
            if error.is_interrupt() {
                self.interrupted = true;
            }
            error
        })
    }
}

/// Records a step's end on its span: `ok`, `error` (its recorded failure,
/// also the OpenTelemetry status) or `interrupted` (fenced, shut down:
/// nothing recorded by this execution).
fn step_outcome<T>(span: &tracing::Span, result: &Result<T, WorkflowError>) {
    let (outcome, failed) = match result {
        Ok(_) => ("ok", false),
        Err(e) if e.is_interrupt() => ("interrupted", false),
        Err(_) => ("error", true),
    };
    crate::telemetry::record_outcome(span, outcome, failed);
}

fn check_name(row: &StepRow, name: &str) -> Result<(), Error> {
    if row.name == name {
        Ok(())
    } else {
        Err(Error::NonDeterminism {
            step_id: row.step_id,
            recorded: row.name.clone(),
            current: name.to_owned(),
        })
    }
}
