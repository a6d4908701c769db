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

use crate::context::WorkflowContext;
use crate::env::{Env, TokioEnv, unix_ms};
use crate::error::Error;
use crate::storage::{
    ErrorKind, Status, StepRow, Storage, StorageError, WorkflowComplete, WorkflowInsert,
    WorkflowInserted, WorkflowRow, WorkflowsRecover,
};
use crate::workflow::{ErasedWorkflow, Workflow};

/// Engine settings. Build them through [`EngineBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) executor_id: String,
    pub(crate) payload_max_bytes: usize,
    pub(crate) conflict_attempts_max: u32,
    pub(crate) poll_interval: Duration,
}

/// The default `payload_max_bytes`: 1 MiB of JSON.
pub const PAYLOAD_MAX_BYTES_DEFAULT: usize = 1 << 20;

/// The longest accepted workflow ID, in bytes.
pub const WORKFLOW_ID_MAX_BYTES: usize = 256;

/// How a finished workflow ended, as stored.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Success(String),
    Error(String),
}

impl Outcome {
    fn from_row(row: &WorkflowRow) -> Option<Outcome> {
        match row.status {
            Status::Success => Some(Outcome::Success(
                row.output.clone().unwrap_or_else(|| "null".to_owned()),
            )),
            Status::Error => Some(Outcome::Error(row.error.clone().unwrap_or_default())),
            _ => None,
        }
    }
}

type OutcomeReceiver = watch::Receiver<Option<Outcome>>;
type OutcomeSender = watch::Sender<Option<Outcome>>;

/// State shared by the engine, its running workflows and their handles.
pub(crate) struct Shared<S: Storage> {
    pub(crate) storage: S,
    pub(crate) env: Arc<dyn Env>,
    pub(crate) config: Config,
    registry: HashMap<&'static str, Arc<dyn ErasedWorkflow<S>>>,
    rng: Mutex<ChaCha8Rng>,
    /// Workflows executing in this process, with their outcome channels.
    running: Mutex<HashMap<String, OutcomeReceiver>>,
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
        tokio::select! {
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
        let json = serde_json::to_string(value).map_err(|source| Error::Encode {
            what: what(),
            source,
        })?;
        self.check_size(json, what)
    }

    fn check_size(&self, json: String, what: impl FnOnce() -> String) -> Result<String, Error> {
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
        self.lock_running().insert(row.id.clone(), receiver);
        let shared = Arc::clone(self);
        let span = tracing::info_span!("workflow", workflow_id = %row.id, name = %row.name, epoch = row.owner_epoch);
        self.spawn(
            async move {
                let id = row.id.clone();
                shared.run_to_completion(row, history, &sender).await;
                shared.lock_running().remove(&id);
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
        let mut ctx =
            WorkflowContext::new(Arc::clone(self), row.id.clone(), row.owner_epoch, history);
        let result = workflow.run_json(&mut ctx, &row.input).await;
        if ctx.was_interrupted() || result.as_ref().is_err_and(|e| e.is_interrupt()) {
            tracing::debug!(workflow_id = %row.id, "execution interrupted");
            return;
        }
        let outcome = match result {
            Ok(json) => {
                match self.check_size(json, || format!("output of workflow {:?}", row.name)) {
                    Ok(json) => Outcome::Success(json),
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
            Err(e) => Outcome::Error(e.to_string()),
        };
        let (status, output, error) = match &outcome {
            Outcome::Success(json) => (Status::Success, Some(json.clone()), None),
            Outcome::Error(message) => (Status::Error, None, Some(message.clone())),
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

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, OutcomeReceiver>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumps the epoch of this executor's unfinished workflows (all, or just
    /// `only`) and runs the ones not already running here.
    async fn recover(self: &Arc<Self>, only: Option<&str>) -> Result<usize, Error> {
        if only.is_none() && crate::bugs::active(crate::bugs::Bug::NoRecoveryOnLaunch) {
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
            if self.lock_running().contains_key(&row.id) {
                continue;
            }
            tracing::info!(workflow_id = %row.id, name = %row.name, epoch = row.owner_epoch, "recovering workflow");
            self.execute(row, None);
            count += 1;
        }
        Ok(count)
    }

    /// Waits for a workflow's outcome: from this process if it runs here,
    /// otherwise by polling the storage.
    async fn outcome(&self, id: &str) -> Result<Outcome, Error> {
        loop {
            let local = self.lock_running().get(id).cloned();
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
            Outcome::Success(json) => serde_json::from_str(&json).map_err(|source| Error::Decode {
                what: format!("output of workflow {:?}", self.id),
                source,
            }),
            Outcome::Error(message) => Err(Error::WorkflowFailed {
                id: self.id.clone(),
                message,
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

    /// Applies the schema migrations, then resumes this executor's unfinished
    /// workflows from their last checkpoints, and returns the running engine.
    pub async fn launch(self) -> Result<Engine<S>, Error> {
        self.storage.migrate().await?;
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
            shutdown,
            tasks,
        });
        let recovered = shared.recover(None).await?;
        if recovered > 0 {
            tracing::info!(recovered, executor_id = %shared.config.executor_id, "resumed unfinished workflows");
        }
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
        let shared = &self.shared;
        let Some((&name, workflow)) = shared.registry.get_key_value(name) else {
            return Err(Error::UnknownWorkflow {
                name: name.to_owned(),
            });
        };
        if id.is_empty() || id.len() > WORKFLOW_ID_MAX_BYTES {
            return Err(Error::InvalidWorkflowId { id });
        }
        workflow.check_input(&input)?;
        let params = WorkflowInsert {
            id: id.clone(),
            name: name.to_owned(),
            input: input.clone(),
            executor_id: shared.config.executor_id.clone(),
            now_ms: shared.now_ms(),
        };
        match shared
            .retry(|| shared.storage.workflow_insert(params.clone()))
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
                    executor_id: Some(shared.config.executor_id.clone()),
                    owner_epoch: 1,
                };
                // A brand-new workflow has no history: skip reading it.
                shared.execute(row, Some(Vec::new()));
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
                    && row.executor_id.as_deref() == Some(shared.config.executor_id.as_str())
                    && !shared.lock_running().contains_key(&id)
                {
                    shared.recover(Some(&id)).await?;
                }
            }
        }
        Ok(id)
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
        self.shared.shutdown.send_replace(true);
        let mut tasks = self.shared.tasks.subscribe();
        let _ = tasks.wait_for(|n| *n == 0).await;
    }
}
