//! The engine: registration, start, execution, completion and recovery.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::Instrument;

use crate::admin::Admin;
use crate::context::WorkflowContext;
use crate::env::{Env, TokioEnv, unix_ms};
use crate::error::Error;
use crate::payload;
use crate::queue::{DEFAULT_QUEUE, EnqueueOptions, Queue};
use crate::storage::{
    EPOCH_FIRST, ErrorKind, ExecutorRegister, Listener, Status, StepRow, Storage, StorageError,
    WorkflowComplete, WorkflowInsert, WorkflowInserted, WorkflowRow, WorkflowsClaim,
    WorkflowsRecover,
};
use crate::workflow::{ErasedWorkflow, Workflow};

/// Engine settings. Build them through [`EngineBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) executor_id: String,
    pub(crate) payload_max_bytes: usize,
    pub(crate) conflict_attempts_max: u32,
    pub(crate) poll_interval: Duration,
    pub(crate) queue_poll_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) notify_on_enqueue: bool,
    /// The queues this executor claims from; always includes `default`.
    pub(crate) queues: Vec<Queue>,
    pub(crate) sleep_suspend_after: Duration,
}

pub use crate::storage::{PAYLOAD_MAX_BYTES_DEFAULT, WORKFLOW_ID_MAX_CHARS};

/// Checks a workflow ID: 1 to [`WORKFLOW_ID_MAX_CHARS`] characters, and no
/// NUL, which PostgreSQL's `text` cannot hold.
pub(crate) fn check_workflow_id(id: String) -> Result<String, Error> {
    let chars = id.chars().count();
    if chars == 0 || chars > WORKFLOW_ID_MAX_CHARS || id.contains('\0') {
        return Err(Error::InvalidWorkflowId { id });
    }
    Ok(id)
}

/// How a finished workflow ended, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Success(String),
    Error(String),
    Cancelled(String),
}

impl Outcome {
    fn from_row(row: &WorkflowRow) -> Option<Outcome> {
        match row.status {
            Status::Success => Some(Outcome::Success(
                row.output.clone().unwrap_or_else(|| "null".to_owned()),
            )),
            Status::Error => Some(Outcome::Error(row.error.clone().unwrap_or_default())),
            Status::Cancelled => Some(Outcome::Cancelled(
                row.error.clone().unwrap_or_else(|| "cancelled".to_owned()),
            )),
            _ => None,
        }
    }
}

type OutcomeReceiver = watch::Receiver<Option<Outcome>>;
type OutcomeSender = watch::Sender<Option<Outcome>>;

/// A workflow executing in this process.
struct Running {
    outcome: OutcomeReceiver,
    /// Lets a local cancel settle waiting handles at once, while the
    /// execution itself stops only at its next step boundary.
    settle: Arc<OutcomeSender>,
    queue: String,
    /// The owner epoch this execution runs under: a row owned here under a
    /// newer epoch is not run by it (it is fenced at its next write).
    epoch: i64,
}

/// State shared by the engine, its running workflows and their handles.
pub(crate) struct Shared<S: Storage> {
    pub(crate) storage: S,
    pub(crate) env: Arc<dyn Env>,
    pub(crate) config: Config,
    registry: HashMap<&'static str, Arc<dyn ErasedWorkflow<S>>>,
    rng: Mutex<ChaCha8Rng>,
    /// Workflows executing in this process, with their outcome channels and
    /// queues.
    running: Mutex<HashMap<String, Running>>,
    /// Wakes the claim loop: a slot freed up or this process enqueued work.
    wakeup: tokio::sync::Notify,
    /// Queues whose last claim filled every free slot: more work may be
    /// waiting, so a finishing workflow wakes the claim loop. Otherwise a
    /// completion costs no extra claim (no extra commit).
    saturated: Mutex<std::collections::HashSet<String>>,
    /// Wakes workflows waiting in `recv`: a message may have arrived.
    pub(crate) messages: tokio::sync::Notify,
    shutdown: watch::Sender<bool>,
    /// The number of spawned tasks still alive; shutdown waits for zero.
    tasks: watch::Sender<usize>,
}

impl<S: Storage> Shared<S> {
    pub(crate) fn now_ms(&self) -> i64 {
        unix_ms(self.env.now())
    }

    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> R) -> R {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rng)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps, unless the engine starts shutting down first.
    pub(crate) async fn sleep_unless_shutdown(&self, delay: Duration) -> Result<(), Error> {
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return Err(Error::Shutdown);
        }
        // `biased`: branches are polled in order, never in an order drawn
        // from tokio's own (unseeded) generator, so simulated runs replay.
        tokio::select! {
            biased;
            () = self.env.sleep(delay) => Ok(()),
            _ = shutdown.wait_for(|down| *down) => Err(Error::Shutdown),
        }
    }

    /// The delay before retrying after the database was unavailable or
    /// reported a conflict: 10 ms doubling to 1 s, with jitter.
    pub(crate) fn infra_delay(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(7);
        let base = Duration::from_millis(10 * (1 << exponent)).min(Duration::from_secs(1));
        let factor = self.with_rng(|rng| rng.gen_range(0.5..=1.0));
        base.mul_f64(factor)
    }

    /// Backs off after a retryable storage error; returns any other error.
    /// Unavailability is retried without bound (the database will be back),
    /// conflicts up to `conflict_attempts_max`.
    pub(crate) async fn backoff_after(
        &self,
        error: StorageError,
        attempts: u32,
    ) -> Result<(), Error> {
        match error.kind() {
            ErrorKind::Unavailable => {}
            ErrorKind::Conflict if attempts < self.config.conflict_attempts_max => {}
            _ => return Err(Error::Storage(error)),
        }
        tracing::debug!(%error, attempts, "storage error, retrying");
        self.sleep_unless_shutdown(self.infra_delay(attempts)).await
    }

    /// Runs an idempotent storage operation until it succeeds, fails for
    /// good, or the engine shuts down.
    pub(crate) async fn retry<R, Op, Fut>(&self, mut op: Op) -> Result<R, Error>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<R, StorageError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match op().await {
                Ok(r) => return Ok(r),
                Err(e) => self.backoff_after(e, attempts).await?,
            }
        }
    }

    /// Encodes a payload as JSON within the size limit.
    pub(crate) fn encode<T: Serialize>(
        &self,
        value: &T,
        what: impl Fn() -> String,
    ) -> Result<String, Error> {
        let json = payload::to_json(value, &what)?;
        self.check_size(json, what)
    }

    /// Checks a payload against what `jsonb` can store and the size limit.
    fn check_size(&self, json: String, what: impl Fn() -> String) -> Result<String, Error> {
        payload::check_storable(&json, &what)?;
        if json.len() > self.config.payload_max_bytes {
            return Err(Error::PayloadTooLarge {
                what: what(),
                size: json.len(),
                max: self.config.payload_max_bytes,
            });
        }
        Ok(json)
    }

    fn generate_id(&self) -> String {
        // A random (version 4) UUID from the engine's seeded generator, so
        // that simulated runs are reproducible.
        let bits: u128 = self.with_rng(|rng| rng.r#gen());
        let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
        let hex = format!("{bits:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// Spawns a tracked task.
    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.send_modify(|n| *n += 1);
        let shared = Arc::clone(self);
        self.env.spawn(Box::pin(async move {
            // Decrements on drop, so a task that is dropped mid-flight (a
            // simulated crash) is no longer counted either.
            let _guard = TaskGuard(&shared.tasks);
            task.await;
        }));
    }

    /// Starts executing a workflow this process now owns. `history` is the
    /// recorded steps if known (`None`: load them first).
    fn execute(self: &Arc<Self>, row: WorkflowRow, history: Option<Vec<StepRow>>) {
        let (sender, receiver) = watch::channel(None);
        let sender = Arc::new(sender);
        self.lock_running().insert(
            row.id.clone(),
            Running {
                outcome: receiver,
                settle: Arc::clone(&sender),
                queue: row.queue.clone(),
                epoch: row.owner_epoch,
            },
        );
        let shared = Arc::clone(self);
        let span = tracing::info_span!("workflow", workflow_id = %row.id, name = %row.name, epoch = row.owner_epoch);
        self.spawn(
            async move {
                let id = row.id.clone();
                let queue = row.queue.clone();
                shared.run_to_completion(row, history, &sender).await;
                // Only our own entry: a newer execution of the same workflow
                // (after a cancel and resume, say) may have replaced it.
                let mut running = shared.lock_running();
                if running
                    .get(&id)
                    .is_some_and(|r| Arc::ptr_eq(&r.settle, &sender))
                {
                    running.remove(&id);
                }
                drop(running);
                // A slot is free: if the queue had more work than slots,
                // claim again now rather than at the next poll.
                if shared.lock_saturated().contains(&queue) {
                    shared.wakeup.notify_one();
                }
            }
            .instrument(span),
        );
    }

    async fn run_to_completion(
        self: &Arc<Self>,
        row: WorkflowRow,
        history: Option<Vec<StepRow>>,
        sender: &OutcomeSender,
    ) {
        let Some(workflow) = self.registry.get(row.name.as_str()).cloned() else {
            tracing::warn!(workflow_id = %row.id, name = %row.name, "workflow not registered on this executor; leaving it");
            return;
        };
        let history = match history {
            Some(history) => history,
            None => match self.retry(|| self.storage.steps_load(&row.id)).await {
                Ok(history) => history,
                Err(error) => {
                    tracing::warn!(workflow_id = %row.id, %error, "could not load workflow history");
                    return;
                }
            },
        };
        let mut ctx = WorkflowContext::new(
            Arc::clone(self),
            row.id.clone(),
            row.owner_epoch,
            row.deadline_ms,
            history,
        );
        let result = workflow.run_json(&mut ctx, &row.input).await;
        if ctx.was_interrupted() || result.as_ref().is_err_and(|e| e.is_interrupt()) {
            tracing::debug!(workflow_id = %row.id, "execution interrupted");
            return;
        }
        let outcome = match result {
            Ok(json) => {
                match self.check_size(json, || format!("output of workflow {:?}", row.name)) {
                    Ok(json) => Outcome::Success(json),
                    Err(e) => Outcome::Error(payload::error_text(e.to_string())),
                }
            }
            Err(e) => Outcome::Error(payload::error_text(e.to_string())),
        };
        let (status, output, error) = match &outcome {
            Outcome::Success(json) => (Status::Success, Some(json.clone()), None),
            Outcome::Error(message) | Outcome::Cancelled(message) => {
                (Status::Error, None, Some(message.clone()))
            }
        };
        let params = WorkflowComplete {
            id: row.id.clone(),
            owner_epoch: ctx.owner_epoch(),
            status,
            output,
            error,
            now_ms: self.now_ms(),
        };
        match self
            .retry(|| self.storage.workflow_complete(params.clone()))
            .await
        {
            Ok(()) => {
                sender.send_replace(Some(outcome));
            }
            Err(Error::Storage(e)) if e.kind() == ErrorKind::Fenced => {
                // Either a retry after a lost acknowledgement of our own
                // completion, or another execution owns the workflow now.
                if let Ok(Some(stored)) = self.retry(|| self.storage.workflow_get(&row.id)).await
                    && stored.owner_epoch == params.owner_epoch
                    && let Some(outcome) = Outcome::from_row(&stored)
                {
                    sender.send_replace(Some(outcome));
                }
            }
            Err(error) => {
                tracing::warn!(workflow_id = %row.id, %error, "could not complete workflow")
            }
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_saturated(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.saturated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an execution here runs workflow `id` under `epoch`.
    fn runs_here(&self, id: &str, epoch: i64) -> bool {
        self.lock_running()
            .get(id)
            .is_some_and(|r| r.epoch == epoch)
    }

    fn running_in(&self, queue: &str) -> usize {
        self.lock_running()
            .values()
            .filter(|r| r.queue == queue)
            .count()
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX)
    }

    fn workflow_names(&self) -> Vec<String> {
        self.registry.keys().map(|n| (*n).to_owned()).collect()
    }

    /// Claims work from every queue while this executor has free slots,
    /// re-enqueues the workflows of executors whose lease expired, and
    /// sleeps until a wake-up (NOTIFY, a freed slot, a local enqueue) or the
    /// poll interval.
    async fn claim_loop(self: Arc<Self>) {
        let mut listener: Option<S::Listener> = None;
        let mut reclaimed_ms = i64::MIN;
        let names = self.workflow_names();
        let mut errors = 0u32;
        // Launch has just recovered everything owned here: the first look
        // is due half a lease from now.
        let mut orphans = Orphans {
            looked_ms: self.now_ms(),
            ..Orphans::default()
        };
        while !self.is_shutting_down() {
            let now_ms = self.now_ms();
            if orphans.due(now_ms, self.lease_ms() / 2) {
                self.adopt_orphans(&mut orphans, now_ms).await;
            }
            if listener.is_none() {
                match self.storage.listen().await {
                    Ok(l) => listener = Some(l),
                    Err(error) => tracing::debug!(%error, "cannot listen for wake-ups; polling"),
                }
            }
            let now_ms = self.now_ms();
            let mut failed = false;
            // `now_ms < reclaimed_ms`: the clock went back; do not wait for
            // it to catch up.
            if now_ms.saturating_sub(reclaimed_ms) >= self.lease_ms() / 2 || now_ms < reclaimed_ms {
                match self.storage.workflows_reclaim(now_ms).await {
                    Ok(n) => {
                        reclaimed_ms = now_ms;
                        if n > 0 {
                            tracing::info!(
                                requeued = n,
                                "re-enqueued workflows of expired executors"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "reclaim failed");
                        failed = true;
                    }
                }
            }
            for queue in &self.config.queues {
                let free = queue
                    .worker_concurrency
                    .saturating_sub(self.running_in(queue.name()));
                if free == 0 || names.is_empty() {
                    continue;
                }
                let params = WorkflowsClaim {
                    queue: queue.limits.clone(),
                    executor_id: self.config.executor_id.clone(),
                    names: names.clone(),
                    limit: u32::try_from(free).unwrap_or(u32::MAX),
                    now_ms: self.now_ms(),
                };
                match self.storage.workflows_claim(params).await {
                    Ok(rows) => {
                        let mut saturated = self.lock_saturated();
                        if rows.len() >= free {
                            saturated.insert(queue.name().to_owned());
                        } else {
                            saturated.remove(queue.name());
                        }
                        drop(saturated);
                        for row in rows {
                            // Epoch 1 after a claim: never ran, so no history
                            // to read.
                            let history = (row.owner_epoch == EPOCH_FIRST
                                || crate::bugs::active(crate::bugs::Bug::ClaimSkipsHistory))
                            .then(Vec::new);
                            self.execute(row, history);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, queue = queue.name(), "claim failed");
                        failed = true;
                        // After an unknown outcome the claim may have
                        // committed: its workflows would then be RUNNING here
                        // but run by no one, kept alive by our heartbeats.
                        // Look now rather than at the next periodic look.
                        if error.kind() == ErrorKind::Unavailable {
                            orphans.urgent = true;
                        }
                    }
                }
            }
            errors = if failed { errors + 1 } else { 0 };
            let delay = if failed {
                self.infra_delay(errors).max(Duration::from_millis(50))
            } else {
                self.config.queue_poll_interval
            };
            let mut shutdown = self.shutdown.subscribe();
            // `biased`: a deterministic poll order (see sleep_unless_shutdown).
            let woke_by_listener = tokio::select! {
                biased;
                received = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await,
                        None => std::future::pending().await,
                    }
                } => Some(received),
                () = self.wakeup.notified() => None,
                () = self.env.sleep(delay) => None,
                _ = shutdown.wait_for(|down| *down) => None,
            };
            match woke_by_listener {
                // Any notification may be a message for a waiting `recv`.
                Some(Ok(())) => self.messages.notify_waiters(),
                Some(Err(error)) => {
                    tracing::debug!(%error, "wake-up subscription lost; polling until it is back");
                    listener = None;
                }
                None => {}
            }
        }
    }

    /// Takes over the workflows the storage says this executor runs but that
    /// no execution here runs under their current epoch. Such rows are left
    /// by any operation whose commit was acknowledged to no one: a claim
    /// (the claimer believes it got nothing), or a claim or recovery of a
    /// workflow whose older execution is still registered here. Heartbeats
    /// keep this executor's lease alive, so no other executor would ever
    /// take them. A row is adopted when two looks in a row find it orphaned
    /// under the same epoch, so a start between its insert and its
    /// registration here is never mistaken for one; adoption bumps the epoch
    /// (fencing any older execution) and runs the workflow, as at launch.
    async fn adopt_orphans(self: &Arc<Self>, orphans: &mut Orphans, now_ms: i64) {
        if crate::bugs::active(crate::bugs::Bug::NoOwnRecovery) {
            return;
        }
        let owned = self.storage.workflows_owned(&self.config.executor_id).await;
        let owned = match owned {
            Ok(owned) => owned,
            Err(error) => {
                // Look again at the next iteration.
                tracing::debug!(%error, "could not list this executor's workflows");
                orphans.urgent = true;
                return;
            }
        };
        let seen = std::mem::take(&mut orphans.suspects);
        orphans.looked_ms = now_ms;
        orphans.urgent = false;
        for (id, epoch) in owned {
            if self.runs_here(&id, epoch) {
                continue;
            }
            if seen.get(&id) != Some(&epoch) {
                orphans.suspects.insert(id, epoch);
                continue;
            }
            tracing::info!(workflow_id = %id, epoch, "adopting a workflow owned here but run by no execution");
            if let Err(error) = self.recover(Some(&id)).await {
                tracing::debug!(%error, "adoption failed; retrying at the next look");
                orphans.suspects.insert(id, epoch);
            }
        }
        // Confirm the suspects soon rather than a period later.
        orphans.urgent |= !orphans.suspects.is_empty();
    }

    /// Renews this executor's lease every third of the lease.
    async fn heartbeat_loop(self: Arc<Self>) {
        while self
            .sleep_unless_shutdown(self.config.lease / 3)
            .await
            .is_ok()
        {
            let result = self
                .storage
                .executor_heartbeat(&self.config.executor_id, self.now_ms(), self.lease_ms())
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "heartbeat failed");
            }
        }
    }

    /// Bumps the epoch of this executor's unfinished workflows (all, or just
    /// `only`) and runs them here.
    async fn recover(self: &Arc<Self>, only: Option<&str>) -> Result<usize, Error> {
        if only.is_none() && crate::bugs::active(crate::bugs::Bug::NoOwnRecovery) {
            return Ok(0);
        }
        let params = WorkflowsRecover {
            executor_id: self.config.executor_id.clone(),
            workflow_id: only.map(str::to_owned),
            now_ms: self.now_ms(),
        };
        let rows = self
            .retry(|| self.storage.workflows_recover(params.clone()))
            .await?;
        let mut count = 0;
        for row in rows {
            let row = crate::bugs::stale_epoch(row);
            // Always run the new epoch, even if an execution of this
            // workflow is registered here (it registered while the bump was
            // in flight): the bump fenced that execution, which stops at its
            // next write and removes only its own entry.
            tracing::info!(workflow_id = %row.id, name = %row.name, epoch = row.owner_epoch, "recovering workflow");
            self.execute(row, None);
            count += 1;
        }
        Ok(count)
    }

    /// Inserts a workflow as `RUNNING` here and runs it, or attaches to the
    /// existing run with this ID. Returns the ID.
    pub(crate) async fn start(
        self: &Arc<Self>,
        name: &str,
        id: String,
        input: String,
        parent_id: Option<String>,
        deadline_ms: Option<i64>,
    ) -> Result<String, Error> {
        let Some((&name, workflow)) = self.registry.get_key_value(name) else {
            return Err(Error::UnknownWorkflow {
                name: name.to_owned(),
            });
        };
        let id = check_workflow_id(id)?;
        workflow.check_input(&input)?;
        let params = WorkflowInsert {
            id: id.clone(),
            name: name.to_owned(),
            input: input.clone(),
            executor_id: self.config.executor_id.clone(),
            parent_id: parent_id.clone(),
            deadline_ms,
            now_ms: self.now_ms(),
        };
        match self
            .retry(|| self.storage.workflow_insert(params.clone()))
            .await?
        {
            WorkflowInserted::Inserted => {
                let row = WorkflowRow {
                    id: id.clone(),
                    name: name.to_owned(),
                    status: Status::Running,
                    input,
                    output: None,
                    error: None,
                    executor_id: Some(self.config.executor_id.clone()),
                    owner_epoch: EPOCH_FIRST,
                    queue: DEFAULT_QUEUE.to_owned(),
                    parent_id,
                    deadline_ms,
                };
                // A brand-new workflow has no history: skip reading it.
                self.execute(row, Some(Vec::new()));
            }
            WorkflowInserted::Existing(row) if row.name != name => {
                return Err(Error::WorkflowConflict {
                    id,
                    existing: row.name,
                    requested: name.to_owned(),
                });
            }
            WorkflowInserted::Existing(row) => {
                // Ours but not running here: our insert's acknowledgement was
                // lost and the retry found our own row, or an earlier
                // incarnation of this executor left it. Either way take it
                // over (the epoch bump fences any older execution).
                if row.status == Status::Running
                    && row.executor_id.as_deref() == Some(self.config.executor_id.as_str())
                    && !self.runs_here(&id, row.owner_epoch)
                {
                    self.recover(Some(&id)).await?;
                }
            }
        }
        Ok(id)
    }

    /// Waits for a workflow's outcome: from this process if it runs here,
    /// otherwise by polling the storage.
    pub(crate) async fn outcome(&self, id: &str) -> Result<Outcome, Error> {
        loop {
            let local = self.lock_running().get(id).map(|r| r.outcome.clone());
            // If the execution here ends without an outcome (interrupted),
            // fall through to the stored state.
            if let Some(mut receiver) = local
                && let Ok(outcome) = receiver.wait_for(Option::is_some).await
            {
                return Ok(outcome.clone().expect("waited for Some"));
            }
            if self.is_shutting_down() {
                return Err(Error::Shutdown);
            }
            let row = self.retry(|| self.storage.workflow_get(id)).await?;
            match row {
                None => return Err(Error::WorkflowNotFound { id: id.to_owned() }),
                Some(row) => {
                    if let Some(outcome) = Outcome::from_row(&row) {
                        return Ok(outcome);
                    }
                }
            }
            if !self.lock_running().contains_key(id) {
                self.sleep_unless_shutdown(self.config.poll_interval)
                    .await?;
            }
        }
    }
}

/// The claim loop's look for workflows owned here but run by no execution
/// (see `Shared::adopt_orphans`).
#[derive(Default)]
struct Orphans {
    /// Found orphaned by the last look, with their epochs.
    suspects: HashMap<String, i64>,
    /// When the last look succeeded (engine clock).
    looked_ms: i64,
    /// Look at the next iteration: a claim's outcome was unknown, a look
    /// failed, or suspects await confirmation.
    urgent: bool,
}

impl Orphans {
    /// Whether to look now: when urgent, else every `period_ms` (and at
    /// once if the clock went back).
    fn due(&self, now_ms: i64, period_ms: i64) -> bool {
        self.urgent || now_ms.saturating_sub(self.looked_ms) >= period_ms || now_ms < self.looked_ms
    }
}

struct TaskGuard<'a>(&'a watch::Sender<usize>);

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A boxed future borrowing its receiver.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a [`WorkflowHandle`] gets its outcome, without naming the storage.
trait OutcomeSource: Send + Sync {
    fn outcome<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Outcome, Error>>;
    fn status<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Status>, Error>>;
}

impl<S: Storage> OutcomeSource for Shared<S> {
    fn outcome<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(Shared::outcome(self, id))
    }

    fn status<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Status>, Error>> {
        Box::pin(async move {
            let row = self.retry(|| self.storage.workflow_get(id)).await?;
            Ok(row.map(|r| r.status))
        })
    }
}

/// A started (or attached-to) workflow run; await its result.
pub struct WorkflowHandle<O> {
    id: String,
    source: Arc<dyn OutcomeSource>,
    _output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for WorkflowHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl<O: DeserializeOwned> WorkflowHandle<O> {
    /// The workflow ID.
    pub fn workflow_id(&self) -> &str {
        &self.id
    }

    /// The current status, or `None` if no such workflow exists.
    pub async fn status(&self) -> Result<Option<Status>, Error> {
        self.source.status(&self.id).await
    }

    /// Waits until the workflow finishes and returns its output, or
    /// [`Error::WorkflowFailed`] with the recorded error message.
    pub async fn result(&self) -> Result<O, Error> {
        match self.source.outcome(&self.id).await? {
            Outcome::Success(json) => {
                payload::decode(&json, || format!("output of workflow {:?}", self.id))
            }
            Outcome::Error(message) => Err(Error::WorkflowFailed {
                id: self.id.clone(),
                message,
            }),
            Outcome::Cancelled(reason) => Err(Error::WorkflowCancelled {
                id: self.id.clone(),
                reason,
            }),
        }
    }
}

/// Configures and launches an [`Engine`].
pub struct EngineBuilder<S: Storage> {
    storage: S,
    env: Arc<dyn Env>,
    config: Config,
    registry: HashMap<&'static str, Arc<dyn ErasedWorkflow<S>>>,
}

impl<S: Storage> EngineBuilder<S> {
    /// The environment (clock, timers, spawner, seed). Default: [`TokioEnv`].
    pub fn env(mut self, env: impl Env) -> Self {
        self.env = Arc::new(env);
        self
    }

    /// This executor's identity. Workflows started here are owned by it, and
    /// a restarted engine with the same ID resumes them. Processes sharing a
    /// database need distinct IDs. Default: `"local"`.
    pub fn executor_id(mut self, executor_id: impl Into<String>) -> Self {
        self.config.executor_id = executor_id.into();
        self
    }

    /// The largest JSON payload (workflow input or output, step output)
    /// accepted, in bytes. Default: [`PAYLOAD_MAX_BYTES_DEFAULT`].
    pub fn payload_max_bytes(mut self, bytes: usize) -> Self {
        self.config.payload_max_bytes = bytes;
        self
    }

    /// How often a handle polls the database for a workflow running
    /// elsewhere. Default: 100 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// How often the claim loop polls its queues when no wake-up arrives.
    /// Default: 1 s.
    pub fn queue_poll_interval(mut self, interval: Duration) -> Self {
        self.config.queue_poll_interval = interval;
        self
    }

    /// This executor's lease: it heartbeats every third of it, and once it
    /// has expired any executor re-enqueues this executor's workflows.
    /// Longer leases survive longer pauses; shorter ones recover faster. The
    /// lease must exceed the clock skew between executors. Default: 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// Whether `tandem.enqueue_workflow` sends `NOTIFY tandem_work`, waking
    /// executors at once. `NOTIFY` serializes committing transactions on a
    /// global lock; turn it off for very high enqueue rates and rely on
    /// polling. Default: on. (A database-wide setting: the last executor to
    /// launch sets it.)
    pub fn notify_on_enqueue(mut self, on: bool) -> Self {
        self.config.notify_on_enqueue = on;
        self
    }

    /// Sleeps longer than this hand the workflow back to its queue until the
    /// wake-up time instead of holding an executor slot. Default: 10 s.
    pub fn sleep_suspend_after(mut self, after: Duration) -> Self {
        self.config.sleep_suspend_after = after;
        self
    }

    /// Declares a queue this executor claims from (the `default` queue
    /// always exists; declaring it sets its limits).
    pub fn queue(mut self, queue: Queue) -> Self {
        self.config.queues.retain(|q| q.name() != queue.name());
        self.config.queues.push(queue);
        self
    }

    /// How many times a transactional step is attempted when it hits
    /// serialization failures or deadlocks before the conflict is recorded as
    /// its failure. Default: 100.
    pub fn conflict_attempts_max(mut self, attempts: u32) -> Self {
        self.config.conflict_attempts_max = attempts.max(1);
        self
    }

    /// Registers a workflow under its [`Workflow::NAME`].
    ///
    /// # Panics
    /// If another workflow is registered under the same name (a programming
    /// error: the name is what recovery uses to find the code).
    pub fn register<W: Workflow<S>>(mut self, workflow: W) -> Self {
        let previous = self.registry.insert(W::NAME, Arc::new(workflow));
        assert!(
            previous.is_none(),
            "workflow name {:?} registered twice",
            W::NAME
        );
        self
    }

    /// Applies the schema migrations, registers this executor (its lease,
    /// workflow names and queues), resumes its unfinished workflows from their
    /// last checkpoints, and starts claiming queued work.
    pub async fn launch(self) -> Result<Engine<S>, Error> {
        self.storage.migrate().await?;
        let mut workflows: Vec<(String, Vec<&'static str>)> = self
            .registry
            .iter()
            .map(|(name, w)| ((*name).to_owned(), w.input_types()))
            .collect();
        workflows.sort();
        let register = ExecutorRegister {
            executor_id: self.config.executor_id.clone(),
            workflows,
            queues: self
                .config
                .queues
                .iter()
                .map(|q| q.limits.clone())
                .collect(),
            payload_max_bytes: self.config.payload_max_bytes,
            notify_on_enqueue: self.config.notify_on_enqueue,
            now_ms: crate::env::unix_ms(self.env.now()),
            lease_ms: i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX),
        };
        self.storage.executor_register(register).await?;
        let seed = self.env.seed();
        let (shutdown, _) = watch::channel(false);
        let (tasks, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            storage: self.storage,
            env: self.env,
            config: self.config,
            registry: self.registry,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            running: Mutex::new(HashMap::new()),
            wakeup: tokio::sync::Notify::new(),
            saturated: Mutex::default(),
            messages: tokio::sync::Notify::new(),
            shutdown,
            tasks,
        });
        let recovered = shared.recover(None).await?;
        if recovered > 0 {
            tracing::info!(recovered, executor_id = %shared.config.executor_id, "resumed unfinished workflows");
        }
        shared.spawn(Arc::clone(&shared).claim_loop());
        shared.spawn(Arc::clone(&shared).heartbeat_loop());
        Ok(Engine { shared })
    }
}

/// A durable workflow engine over a [`Storage`].
///
/// Cheap to clone; all clones drive the same engine.
pub struct Engine<S: Storage> {
    shared: Arc<Shared<S>>,
}

impl<S: Storage> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: Storage> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("executor_id", &self.shared.config.executor_id)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Engine<S> {
    /// A builder over `storage`.
    pub fn builder(storage: S) -> EngineBuilder<S> {
        EngineBuilder {
            storage,
            env: Arc::new(TokioEnv::new()),
            config: Config {
                executor_id: "local".to_owned(),
                payload_max_bytes: PAYLOAD_MAX_BYTES_DEFAULT,
                conflict_attempts_max: 100,
                poll_interval: Duration::from_millis(100),
                queue_poll_interval: Duration::from_secs(1),
                lease: Duration::from_secs(30),
                notify_on_enqueue: true,
                queues: vec![Queue::new(DEFAULT_QUEUE)],
                sleep_suspend_after: Duration::from_secs(10),
            },
            registry: HashMap::new(),
        }
    }

    /// The storage, for the application's own use.
    pub fn storage(&self) -> &S {
        &self.shared.storage
    }

    /// This executor's ID.
    pub fn executor_id(&self) -> &str {
        &self.shared.config.executor_id
    }

    /// Starts workflow `W` under a generated ID.
    pub async fn start<W: Workflow<S>>(
        &self,
        input: W::Input,
    ) -> Result<WorkflowHandle<W::Output>, Error> {
        let id = self.shared.generate_id();
        self.start_with_id::<W>(id, input).await
    }

    /// Starts workflow `W` under the given ID. If a run with this ID exists,
    /// nothing new starts: the handle attaches to that run (whatever its
    /// input was). If the ID belongs to a different workflow, this fails with
    /// [`Error::WorkflowConflict`].
    pub async fn start_with_id<W: Workflow<S>>(
        &self,
        id: impl Into<String>,
        input: W::Input,
    ) -> Result<WorkflowHandle<W::Output>, Error> {
        let json = self
            .shared
            .encode(&input, || format!("input of workflow {:?}", W::NAME))?;
        let id = self.start_json_inner(W::NAME, id.into(), json).await?;
        Ok(self.handle(id))
    }

    /// Starts workflow `W` with a deadline: once the engine's clock passes
    /// `timeout` from now, the workflow (and its children) is cancelled at
    /// its next step boundary. `id`: `None` generates one.
    pub async fn start_with_timeout<W: Workflow<S>>(
        &self,
        id: Option<String>,
        timeout: Duration,
        input: W::Input,
    ) -> Result<WorkflowHandle<W::Output>, Error> {
        let json = self
            .shared
            .encode(&input, || format!("input of workflow {:?}", W::NAME))?;
        let id = id.unwrap_or_else(|| self.shared.generate_id());
        let deadline_ms = self
            .shared
            .now_ms()
            .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
        let id = self
            .shared
            .start(W::NAME, id, json, None, Some(deadline_ms))
            .await?;
        Ok(self.handle(id))
    }

    /// Management: list, inspect, cancel, resume and fork workflows, send
    /// messages and read events.
    pub fn admin(&self) -> Admin<S> {
        Admin::with_env(self.shared.storage.clone(), Arc::clone(&self.shared.env))
    }

    /// Cancels a workflow and its unfinished children (see
    /// [`Admin::cancel`]); executions in this process stop at their next
    /// step boundary.
    pub async fn cancel(&self, id: &str) -> Result<Vec<String>, Error> {
        let cancelled = self.admin().cancel(id).await?;
        // Handles waiting here learn the outcome now, and waiting receives
        // wake up to find themselves fenced.
        for id in &cancelled {
            // Settle waiting handles and forget the execution: it stops by
            // itself at its next step boundary, and a resumed run must not be
            // mistaken for it.
            if let Some(running) = self.shared.lock_running().remove(id) {
                running
                    .settle
                    .send_replace(Some(Outcome::Cancelled("cancelled".to_owned())));
            }
        }
        self.shared.messages.notify_waiters();
        Ok(cancelled)
    }

    /// Sends a message to a workflow (see [`Admin::send`]).
    pub async fn send<T: Serialize>(
        &self,
        id: &str,
        topic: &str,
        message: &T,
    ) -> Result<(), Error> {
        self.admin().send(id, topic, message).await?;
        self.shared.messages.notify_waiters();
        Ok(())
    }

    /// Starts a workflow by name with a JSON input, as a program that does not
    /// link the workflow's types would (a CLI, another service). The input
    /// is checked against the workflow's input type before anything is
    /// written. `id`: `None` generates one.
    pub async fn start_json(
        &self,
        name: &str,
        id: Option<String>,
        input: &str,
    ) -> Result<WorkflowHandle<serde_json::Value>, Error> {
        let json = self
            .shared
            .check_size(input.to_owned(), || format!("input of workflow {name:?}"))?;
        let id = id.unwrap_or_else(|| self.shared.generate_id());
        let id = self.start_json_inner(name, id, json).await?;
        Ok(self.handle(id))
    }

    async fn start_json_inner(
        &self,
        name: &str,
        id: String,
        input: String,
    ) -> Result<String, Error> {
        self.shared.start(name, id, input, None, None).await
    }

    /// Enqueues workflow `W` (in its own transaction) for any executor that
    /// runs it to claim, with the semantics of `tandem.enqueue_workflow`. To
    /// enqueue atomically with your own writes, use the storage's in-
    /// transaction enqueue (for PostgreSQL, `PgStorage::enqueue_in`) or the
    /// SQL function.
    pub async fn enqueue<W: Workflow<S>>(
        &self,
        input: W::Input,
        options: EnqueueOptions,
    ) -> Result<WorkflowHandle<W::Output>, Error> {
        let input = self
            .shared
            .encode(&input, || format!("input of workflow {:?}", W::NAME))?;
        let params = options.into_params(W::NAME, input);
        let shared = &self.shared;
        let id = shared
            .retry(|| shared.storage.workflow_enqueue(params.clone()))
            .await?;
        // Claim it here at once if this executor serves the queue.
        shared.wakeup.notify_one();
        Ok(self.handle(id))
    }

    /// A handle on an existing workflow by ID (it may run anywhere).
    pub fn handle<O: DeserializeOwned>(&self, id: impl Into<String>) -> WorkflowHandle<O> {
        WorkflowHandle {
            id: id.into(),
            source: self.shared.clone(),
            _output: PhantomData,
        }
    }

    /// Stops the engine gracefully: running workflows stop at their next
    /// step boundary (a step in progress finishes and is checkpointed), and
    /// this returns when all have stopped. They resume when an engine with
    /// the same executor ID launches again.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.shutdown.send_replace(true);
        let mut tasks = shared.tasks.subscribe();
        let _ = tasks.wait_for(|n| *n == 0).await;
        // Hand the stopped workflows back to their queues at once, so that
        // other executors need not wait for this one's lease to expire.
        match shared
            .storage
            .workflows_release(&shared.config.executor_id, shared.now_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "handed unfinished workflows back"),
            Err(error) => {
                tracing::warn!(%error, "could not hand workflows back; they wait for the lease to expire")
            }
        }
    }
}
