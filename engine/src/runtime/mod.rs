//! The runtime behind an [`Engine`](crate::Engine): the state its running
//! workflows and handles share, executing a workflow to its outcome, waiting
//! for outcomes, and task accounting. The executor's loops (claiming,
//! heartbeats, adoption, recovery) are in `executor`; retry delays in
//! `crate::retry`.
//!
//! Deliberate circle: the runtime runs a workflow through a
//! [`WorkflowContext`], which calls back into the runtime (through the
//! methods of [`Shared`], never its fields) for storage, clock and retries.

mod executor;
mod group;
mod retention;
mod schedules;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracing::Instrument;

use crate::context::WorkflowContext;
use crate::env::{Env, unix_ms};
use crate::error::Error;
use crate::payload;
use crate::queue::{DEFAULT_QUEUE, Queue};
use crate::storage::{
    EPOCH_FIRST, ErrorKind, Listener, Status, StepRecord, StepRecorded, StepRow, Storage,
    StorageResult, Versions, WORKFLOW_ID_MAX_CHARS, WorkflowComplete, WorkflowInsert,
    WorkflowInserted, WorkflowRow, WorkflowsClaim, WorkflowsRecover,
};
use crate::workflow::ErasedWorkflow;

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
    /// The application version this executor's code is, and the other
    /// versions whose runs it may run (see `EngineBuilder::version`).
    pub(crate) version: String,
    pub(crate) accepts_also: Vec<String>,
    /// Declared schedules, each with the workflow its ticks enqueue.
    pub(crate) schedules: Vec<(crate::schedule::Schedule, &'static str)>,
    /// The retention of declared queues without one of their own.
    pub(crate) retention: Option<Duration>,
    /// How often retention runs, and its batch size.
    pub(crate) gc_interval: Duration,
    pub(crate) gc_batch: u32,
    /// At most this many starts, plain checkpoints or completions share
    /// one statement; 1 sends each alone.
    pub(crate) group_commit: usize,
}

impl Config {
    /// The declared queues as registered: each with its own retention, or
    /// the engine's.
    pub(crate) fn declared_limits(&self) -> Vec<crate::storage::QueueLimits> {
        let global = self
            .retention
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.queues
            .iter()
            .map(|q| {
                let mut limits = q.limits.clone();
                limits.retention_ms = limits.retention_ms.or(global);
                limits
            })
            .collect()
    }

    /// What this executor runs: its version and every version it accepts.
    pub(crate) fn versions(&self) -> Versions {
        let mut versions = Versions::only(&self.version);
        for v in &self.accepts_also {
            if !versions.accepts.contains(v) {
                versions.accepts.push(v.clone());
            }
        }
        versions
    }
}

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
    storage: S,
    env: Arc<dyn Env>,
    config: Config,
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
    messages: tokio::sync::Notify,
    shutdown: watch::Sender<bool>,
    /// The number of spawned tasks still alive; shutdown waits for zero.
    tasks: watch::Sender<usize>,
    /// The group commits of top-level starts, of plain checkpoints and of
    /// completions.
    starts: group::Group<WorkflowInsert>,
    steps: group::Group<StepRecord>,
    completions: group::Group<WorkflowComplete>,
}

impl<S: Storage> Shared<S> {
    /// The runtime of an engine about to launch (see `Shared::launch`).
    pub(crate) fn new(
        storage: S,
        env: Arc<dyn Env>,
        config: Config,
        registry: HashMap<&'static str, Arc<dyn ErasedWorkflow<S>>>,
    ) -> Arc<Self> {
        let seed = env.seed();
        let config_group = config.group_commit;
        let (shutdown, _) = watch::channel(false);
        let (tasks, _) = watch::channel(0);
        Arc::new(Shared {
            storage,
            env,
            config,
            registry,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            running: Mutex::new(HashMap::new()),
            wakeup: tokio::sync::Notify::new(),
            saturated: Mutex::default(),
            messages: tokio::sync::Notify::new(),
            shutdown,
            tasks,
            starts: group::Group::new(config_group),
            steps: group::Group::new(config_group),
            completions: group::Group::new(config_group),
        })
    }

    /// The registered workflow called `name`.
    pub(crate) fn workflow(&self, name: &str) -> Option<Arc<dyn ErasedWorkflow<S>>> {
        self.registry.get(name).cloned()
    }

    /// Records a checkpoint in its own commit: through the group commit,
    /// unless it changes the run's version (that one is strictly fenced
    /// and rolled back unless recorded, so it never shares a statement).
    pub(crate) async fn record_step(&self, params: StepRecord) -> StorageResult<StepRecorded> {
        if params.version.is_some() {
            self.storage.step_record(params).await
        } else {
            self.steps.submit(&self.storage, params).await
        }
    }

    /// The storage.
    pub(crate) fn storage(&self) -> &S {
        &self.storage
    }

    /// The environment (clock, timers, spawner, seed).
    pub(crate) fn env(&self) -> &Arc<dyn Env> {
        &self.env
    }

    /// The engine's settings.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Waits until a message may have arrived for a waiting `recv`.
    pub(crate) fn messages_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.messages.notified()
    }

    /// Wakes every waiting `recv`: a message may have arrived, or the
    /// receiver may have been cancelled.
    pub(crate) fn notify_messages(&self) {
        self.messages.notify_waiters();
    }

    /// Wakes the claim loop: this process enqueued work.
    pub(crate) fn wake_claimer(&self) {
        self.wakeup.notify_one();
    }

    /// Settles the handles of a cancelled workflow that runs here and
    /// forgets its execution: it stops by itself at its next step boundary,
    /// and a resumed run must not be mistaken for it.
    pub(crate) fn settle_cancelled(&self, id: &str) {
        if let Some(running) = self.lock_running().remove(id) {
            running
                .settle
                .send_replace(Some(Outcome::Cancelled("cancelled".to_owned())));
        }
    }
    pub(crate) fn now_ms(&self) -> i64 {
        unix_ms(self.env.now())
    }

    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> R) -> R {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rng)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.get()
    }

    /// Sleeps, unless the engine starts shutting down first.
    pub(crate) async fn sleep_unless_shutdown(&self, delay: Duration) -> Result<(), Error> {
        let mut shutdown = self.shutdown.subscribe();
        if shutdown.get() {
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
    pub(crate) fn check_size(
        &self,
        json: String,
        what: impl Fn() -> String,
    ) -> Result<String, Error> {
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

    pub(crate) fn generate_id(&self) -> String {
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
    pub(crate) fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
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
        let span = crate::telemetry::run_span(&row, &self.config.executor_id);
        self.spawn(
            async move {
                let id = row.id.clone();
                let queue = row.queue.clone();
                let (outcome, failed) = shared.run_to_completion(row, history, &sender).await;
                crate::telemetry::record_outcome(&tracing::Span::current(), outcome, failed);
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

    /// Runs an execution to its end; returns how it ended (its span's
    /// `outcome`) and whether that is a failure.
    async fn run_to_completion(
        self: &Arc<Self>,
        row: WorkflowRow,
        history: Option<Vec<StepRow>>,
        sender: &OutcomeSender,
    ) -> (&'static str, bool) {
        let Some(workflow) = self.registry.get(row.name.as_str()).cloned() else {
            tracing::warn!(workflow_id = %row.id, name = %row.name, "workflow not registered on this executor; leaving it");
            return ("not_registered", true);
        };
        let history = match history {
            Some(history) => history,
            None => match self.retry(|| self.storage.steps_load(&row.id)).await {
                Ok(history) => history,
                Err(error) => {
                    tracing::warn!(workflow_id = %row.id, %error, "could not load workflow history");
                    return ("history_unavailable", true);
                }
            },
        };
        tracing::Span::current().record("replayed_steps", history.len());
        let mut ctx = WorkflowContext::new(
            Arc::clone(self),
            row.id.clone(),
            row.owner_epoch,
            row.deadline_ms,
            history,
            row.version.clone(),
        )
        .with_trace_parent(row.trace_parent.clone());
        let result = workflow.run_json(&mut ctx, &row.input).await;
        if (ctx.was_interrupted() || result.as_ref().is_err_and(|e| e.is_interrupt()))
            && !crate::bugs::shutdown_fails(&result)
        {
            tracing::debug!(workflow_id = %row.id, "execution interrupted");
            return ("interrupted", false);
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
        let mut owner_epoch = ctx.owner_epoch();
        crate::bugs::refresh_epoch(&mut owner_epoch, &self.storage, &row.id).await;
        let params = WorkflowComplete {
            id: row.id.clone(),
            owner_epoch,
            status,
            output,
            error,
            now_ms: self.now_ms(),
        };
        match self
            .retry(|| self.completions.submit(&self.storage, params.clone()))
            .await
        {
            Ok(()) => {
                crate::telemetry::workflow_finished(&row.name, status);
                sender.send_replace(Some(outcome));
                match status {
                    Status::Success => ("success", false),
                    _ => ("error", true),
                }
            }
            Err(Error::Storage(e)) if e.kind() == ErrorKind::Fenced => {
                // Either a retry after a lost acknowledgement of our own
                // completion, or another execution owns the workflow now.
                if let Ok(Some(stored)) = self.retry(|| self.storage.workflow_get(&row.id)).await
                    && stored.owner_epoch == params.owner_epoch
                    && let Some(outcome) = Outcome::from_row(&stored)
                {
                    let failed = !matches!(outcome, Outcome::Success(_));
                    sender.send_replace(Some(outcome));
                    return (if failed { "error" } else { "success" }, failed);
                }
                ("fenced", false)
            }
            Err(error) => {
                tracing::warn!(workflow_id = %row.id, %error, "could not complete workflow");
                ("unfinished", true)
            }
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an execution here runs workflow `id` under `epoch`.
    fn runs_here(&self, id: &str, epoch: i64) -> bool {
        self.lock_running()
            .get(id)
            .is_some_and(|r| r.epoch == epoch)
    }

    /// Inserts a workflow as `RUNNING` here and runs it, or attaches to the
    /// existing run with this ID. Returns the ID.
    pub(crate) async fn start(
        self: &Arc<Self>,
        name: &str,
        id: String,
        input: String,
        parent: Option<(String, i64)>,
        deadline_ms: Option<i64>,
        trace_parent: Option<String>,
    ) -> Result<String, Error> {
        let (parent_id, parent_epoch) = parent.unzip();
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
            parent_epoch,
            deadline_ms,
            version: self.config.version.clone(),
            trace_parent: trace_parent.clone(),
            now_ms: self.now_ms(),
        };
        match self
            .retry(|| async {
                // A child's start locks its parent's row, checked at the
                // parent's epoch: it never shares a statement.
                if params.parent_epoch.is_some() {
                    self.storage.workflow_insert(params.clone()).await
                } else {
                    self.starts.submit(&self.storage, params.clone()).await
                }
            })
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
                    version: Some(self.config.version.clone()),
                    trace_parent,
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
                return Ok(outcome.expect("waited for Some"));
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

struct TaskGuard<'a>(&'a watch::Sender<usize>);

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A boxed future borrowing its receiver.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a [`WorkflowHandle`] gets its outcome, without naming the storage.
pub(crate) trait OutcomeSource: Send + Sync {
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
