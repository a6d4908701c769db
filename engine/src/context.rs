//! [`WorkflowContext`]: what a workflow body uses to run steps.
//!
//! It knows the storage only through the `Storage` seam, never a driver: the
//! same context drives PostgreSQL in production and the memory model in the
//! simulator.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::Shared;
use crate::error::{Error, WorkflowError};
use crate::retry::RetryPolicy;
use crate::storage::{
    ErrorKind, StepKind, StepRecord, StepRecorded, StepRow, Storage, StorageError, Transaction,
};

/// The handle a workflow body receives: runs steps and replays recorded ones.
///
/// Steps are numbered in the order the body calls them. On a first execution
/// each step runs and is checkpointed; on a replay (after a crash or restart)
/// a step whose checkpoint exists returns the recorded output without running.
pub struct WorkflowContext<S: Storage> {
    shared: Arc<Shared<S>>,
    workflow_id: String,
    owner_epoch: i64,
    /// Recorded steps from the last execution, ordered by step ID. Empty on a
    /// first execution, which therefore never reads the checkpoint table.
    history: Vec<StepRow>,
    next_step_id: i32,
    /// Set once a step was interrupted (fenced or shutting down): whatever
    /// the body returns afterwards, nothing more is recorded.
    interrupted: bool,
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
        history: Vec<StepRow>,
    ) -> Self {
        Self {
            shared,
            workflow_id,
            owner_epoch,
            history,
            next_step_id: 0,
            interrupted: false,
        }
    }

    /// This workflow's ID.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    pub(crate) fn owner_epoch(&self) -> i64 {
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
        self.check_shutdown()?;
        let started_ms = self.shared.now_ms();
        let mut attempts = 0u32;
        let (value, outcome) = loop {
            attempts += 1;
            match f().await {
                Ok(value) => match self.encode(&value, step_id, name) {
                    Ok(json) => break (Some(value), Ok(json)),
                    Err(e) => break (None, Err(e.to_string())),
                },
                Err(e) => {
                    let message = e.into().to_string();
                    if attempts >= policy.attempts_max {
                        break (None, Err(message));
                    }
                    let delay = self.shared.with_rng(|rng| policy.delay(attempts, rng));
                    tracing::debug!(workflow_id = %self.workflow_id, step_id, name, attempts, ?delay, error = %message, "step attempt failed, retrying");
                    self.sleep(delay).await?;
                }
            }
        };
        let params = StepRecord {
            workflow_id: self.workflow_id.clone(),
            step_id,
            name: name.to_owned(),
            kind: StepKind::Plain,
            output: outcome.as_ref().ok().cloned(),
            error: outcome.as_ref().err().cloned(),
            owner_epoch: self.owner_epoch,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            started_ms,
            now_ms: self.shared.now_ms(),
        };
        let storage = self.shared.storage.clone();
        let recorded = self
            .storage_retry(|| storage.step_record(params.clone()))
            .await?;
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
        let started_ms = self.shared.now_ms();
        let mut attempts = 0u32;
        // Set after a COMMIT whose outcome we never learned: the next attempt
        // first looks for the checkpoint instead of running the closure again.
        let mut maybe_committed = false;
        loop {
            self.check_shutdown()?;
            if maybe_committed {
                let storage = self.shared.storage.clone();
                let id = self.workflow_id.clone();
                let steps = self.storage_retry(|| storage.steps_load(&id)).await?;
                if let Some(row) = steps.into_iter().find(|s| s.step_id == step_id) {
                    return self.check_and_decode(row, name);
                }
                maybe_committed = false;
            }
            attempts += 1;
            let mut tx = match self.shared.storage.begin().await {
                Ok(tx) => tx,
                Err(e) => {
                    self.backoff_after(e, attempts).await?;
                    continue;
                }
            };
            let (value, json) = match f(tx.conn()).await {
                Ok(value) => match self.encode(&value, step_id, name) {
                    Ok(json) => (value, json),
                    Err(e) => {
                        let _ = tx.rollback().await;
                        return self
                            .record_failure(step_id, name, attempts, started_ms, e.to_string())
                            .await;
                    }
                },
                Err(e) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    let _ = tx.rollback().await;
                    // A lost connection is retried for as long as it takes (an
                    // outage must not fail steps for good); conflicts are
                    // retried up to a bound; anything else is the step's
                    // recorded failure.
                    let retry = match S::classify(&*e) {
                        Some(ErrorKind::Unavailable) => true,
                        Some(ErrorKind::Conflict) => {
                            attempts < self.shared.config.conflict_attempts_max
                        }
                        _ => false,
                    };
                    let retry = retry && !crate::bugs::not_retried(S::classify(&*e));
                    if !retry {
                        return self
                            .record_failure(step_id, name, attempts, started_ms, e.to_string())
                            .await;
                    }
                    tracing::debug!(workflow_id = %self.workflow_id, step_id, name, attempts, error = %e, "transaction rolled back, retrying");
                    self.sleep(self.shared.infra_delay(attempts)).await?;
                    continue;
                }
            };
            let params = StepRecord {
                workflow_id: self.workflow_id.clone(),
                step_id,
                name: name.to_owned(),
                kind: StepKind::Transaction,
                output: Some(json),
                error: None,
                owner_epoch: self.owner_epoch,
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                started_ms,
                now_ms: self.shared.now_ms(),
            };
            if crate::bugs::active(crate::bugs::Bug::SplitCheckpoint) {
                tx = crate::bugs::split_transaction(tx, &self.shared.storage).await;
            }
            match tx.step_record(params).await {
                Ok(StepRecorded::Recorded) => match tx.commit().await {
                    Ok(()) => return Ok(value),
                    Err(e) => {
                        if crate::bugs::active(crate::bugs::Bug::CommitAssumedOnError)
                            && e.kind() == ErrorKind::Unavailable
                        {
                            return Ok(value);
                        }
                        maybe_committed = e.kind() == ErrorKind::Unavailable;
                        self.backoff_after(e, attempts).await?;
                    }
                },
                Ok(StepRecorded::Exists) => {
                    // A concurrent execution committed this step; ours rolls
                    // back, taking the application's writes with it.
                    let _ = tx.rollback().await;
                    return self.replay_winner(step_id, name).await;
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    self.backoff_after(e, attempts).await?;
                }
            }
        }
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
            Err(_) => Ok(Replay::Run(step_id)),
        }
    }

    fn decode_recorded<T: DeserializeOwned>(&self, row: StepRow) -> Result<T, WorkflowError> {
        match (row.output, row.error) {
            (Some(json), _) => serde_json::from_str(&json).map_err(|source| {
                Error::Decode {
                    what: format!("recorded output of step {} ({:?})", row.step_id, row.name),
                    source,
                }
                .into()
            }),
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
        let storage = self.shared.storage.clone();
        let id = self.workflow_id.clone();
        let steps = self.storage_retry(|| storage.steps_load(&id)).await?;
        match steps.into_iter().find(|s| s.step_id == step_id) {
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
        let params = StepRecord {
            workflow_id: self.workflow_id.clone(),
            step_id,
            name: name.to_owned(),
            kind: StepKind::Transaction,
            output: None,
            error: Some(message.clone()),
            owner_epoch: self.owner_epoch,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            started_ms,
            now_ms: self.shared.now_ms(),
        };
        let storage = self.shared.storage.clone();
        match self
            .storage_retry(|| storage.step_record(params.clone()))
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

    async fn sleep(&mut self, delay: std::time::Duration) -> Result<(), Error> {
        let result = self.shared.sleep_unless_shutdown(delay).await;
        self.note(result)
    }

    /// Backs off after a storage error that leaves nothing committed (or an
    /// unknown commit outcome), or turns it into the error to return.
    async fn backoff_after(&mut self, error: StorageError, attempts: u32) -> Result<(), Error> {
        let result = self.shared.backoff_after(error, attempts).await;
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
                Error::Storage(e) if e.kind() == ErrorKind::Fenced => Error::Fenced {
                    workflow_id: self.workflow_id.clone(),
                },
                other => other,
            };
            if error.is_interrupt() {
                self.interrupted = true;
            }
            error
        })
    }
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
