//! The public API: [`Engine`], [`EngineBuilder`] and [`WorkflowHandle`]. What
//! runs behind them is in `crate::runtime`.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::Admin;
use crate::env::{Env, TokioEnv};
use crate::error::Error;
use crate::payload;
use crate::queue::{DEFAULT_QUEUE, EnqueueOptions, Queue};
use crate::runtime::{Config, Outcome, OutcomeSource, Shared};
use crate::schedule::{Schedule, ScheduledTick};
use crate::storage::{DEFAULT_VERSION, ExecutorRegister, Status, Storage};
use crate::workflow::{ErasedWorkflow, Workflow};

pub use crate::storage::{PAYLOAD_MAX_BYTES_DEFAULT, WORKFLOW_ID_MAX_CHARS};

/// The default of [`EngineBuilder::group_commit`]: writes per statement.
pub const GROUP_COMMIT_DEFAULT: usize = 64;

/// Options of [`Engine::start_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOptions {
    workflow_id: Option<String>,
    timeout: Option<Duration>,
    trace_parent: Option<String>,
}

impl StartOptions {
    /// A generated ID, no deadline, the current span's trace context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run under this ID: if a run with it exists, nothing new starts and
    /// the handle attaches to that run.
    pub fn workflow_id(mut self, id: impl Into<String>) -> Self {
        self.workflow_id = Some(id.into());
        self
    }

    /// Cancel the workflow (and its children) once the engine's clock
    /// passes `timeout` from now, at its next step boundary.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Store this W3C `traceparent` with the workflow instead of the
    /// current span's (feature `otel`): every execution of the run
    /// continues that trace. Checked: a malformed one fails the start with
    /// [`Error::InvalidTraceParent`].
    pub fn trace_parent(mut self, traceparent: impl Into<String>) -> Self {
        self.trace_parent = Some(traceparent.into());
        self
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

    /// Group commit: at most this many starts (of top-level workflows),
    /// plain-step checkpoints or workflow completions of different
    /// workflows share one statement and one commit. A write waits only while another group of its kind is in
    /// flight; with nothing in flight it goes out alone at once, so one
    /// workflow at a time costs what it did without grouping. Nobody is
    /// answered before the statement holding their write commits.
    /// Transactional steps never share a transaction (their commit is the
    /// application's). 1 turns grouping off. Default: 64.
    pub fn group_commit(mut self, size: usize) -> Self {
        self.config.group_commit = size.max(1);
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

    /// Deletes finished workflows once they finished this long ago, in
    /// every queue this executor declares that sets no retention of its own
    /// ([`Queue::retention`]). Executors that declare a queue with a
    /// retention collect its finished workflows in batches
    /// ([`gc_interval`](Self::gc_interval)). Default: kept forever.
    /// `docs/retention.md`.
    pub fn retention(mut self, keep: Duration) -> Self {
        self.config.retention = Some(keep);
        self
    }

    /// How often this executor collects finished workflows past their
    /// retention, and how many finished root workflows (each with its tree)
    /// one transaction deletes at most. Each round deletes batches until
    /// one comes up short. Default: every 60 s, batches of 500.
    pub fn gc_interval(mut self, every: Duration, batch: u32) -> Self {
        self.config.gc_interval = every.max(Duration::from_millis(1));
        self.config.gc_batch = batch.max(1);
        self
    }

    /// How many times a transactional step is attempted when it hits
    /// serialization failures or deadlocks before the conflict is recorded as
    /// its failure. Default: 100.
    pub fn conflict_attempts_max(mut self, attempts: u32) -> Self {
        self.config.conflict_attempts_max = attempts.max(1);
        self
    }

    /// The application version of this code, recorded on every run it
    /// starts. Executors claim and recover only runs of the versions they
    /// accept (their own, and those named in
    /// [`accept_versions`](Self::accept_versions)); a run of a version no
    /// live executor accepts waits in its queue (see `tandem versions`) and
    /// is never run by the wrong code. A run that never ran (enqueued and
    /// not yet claimed) takes the version of the executor that claims it.
    ///
    /// Default: `"unversioned"`, the same for every build, so that code
    /// which declares no version runs every run as before. Set it to
    /// something a deploy changes on purpose (a release number, say
    /// `env!("CARGO_PKG_VERSION")`), not to a build hash: a version nobody
    /// accepts strands its runs until code that accepts it runs.
    /// docs/versioning.md has the rollout recipe.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = version.into();
        self
    }

    /// Also accepts runs recorded under these versions: for code that can
    /// go on with them (it takes the same steps, or branches on
    /// [`WorkflowContext::patched`](crate::WorkflowContext::patched)).
    /// `Replayer::check` tells whether it can.
    pub fn accept_versions<I, V>(mut self, versions: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        self.config
            .accepts_also
            .extend(versions.into_iter().map(Into::into));
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

    /// Declares a cron schedule: at each tick this executor, or another
    /// that declares the same schedule, enqueues `workflow` with the tick as
    /// its input, exactly once per tick across every executor. Registers
    /// the workflow too if it is not yet registered. Declaring a name twice
    /// keeps the later declaration. `docs/schedules.md` has the semantics.
    pub fn schedule<W>(mut self, workflow: W, schedule: Schedule) -> Self
    where
        W: Workflow<S, Input = ScheduledTick>,
    {
        if !self.registry.contains_key(W::NAME) {
            self.registry.insert(W::NAME, Arc::new(workflow));
        }
        self.config
            .schedules
            .retain(|(s, _)| s.name() != schedule.name());
        self.config.schedules.push((schedule, W::NAME));
        self
    }

    /// A [`Replayer`](crate::replay::Replayer) with this builder's
    /// workflows: it replays recorded runs against them and launches
    /// nothing (no executor, no claims, no writes).
    pub fn replayer(self) -> crate::replay::Replayer<S> {
        crate::replay::Replayer::new(Shared::new(
            self.storage,
            self.env,
            self.config,
            self.registry,
        ))
    }

    /// Applies the schema migrations, registers this executor (its lease,
    /// workflow names and queues), resumes its unfinished workflows from their
    /// last checkpoints, and starts claiming queued work.
    pub async fn launch(self) -> Result<Engine<S>, Error> {
        for (schedule, _) in &self.config.schedules {
            if !self
                .config
                .queues
                .iter()
                .any(|q| q.name() == schedule.queue)
            {
                return Err(Error::InvalidSchedule {
                    name: schedule.name.clone(),
                    reason: format!(
                        "its queue {:?} is not declared on this executor (EngineBuilder::queue)",
                        schedule.queue
                    ),
                });
            }
        }
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
            queues: self.config.declared_limits(),
            payload_max_bytes: self.config.payload_max_bytes,
            notify_on_enqueue: self.config.notify_on_enqueue,
            now_ms: crate::env::unix_ms(self.env.now()),
            lease_ms: i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX),
            versions: self.config.versions(),
            schedules: self
                .config
                .schedules
                .iter()
                .map(|(s, workflow)| s.decl(workflow))
                .collect(),
        };
        self.storage.executor_register(register).await?;
        let shared = Shared::new(self.storage, self.env, self.config, self.registry);
        shared.run_executor().await?;
        let admin = Admin::with_env(shared.storage().clone(), Arc::clone(shared.env()));
        Ok(Engine { shared, admin })
    }
}

/// A durable workflow engine over a [`Storage`].
///
/// Cheap to clone; all clones drive the same engine.
pub struct Engine<S: Storage> {
    shared: Arc<Shared<S>>,
    /// One for the engine's life, so that its fork IDs come from one
    /// generator (see [`Admin::fork`]).
    admin: Admin<S>,
}

impl<S: Storage> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            admin: self.admin.clone(),
        }
    }
}

impl<S: Storage> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("executor_id", &self.shared.config().executor_id)
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
                version: DEFAULT_VERSION.to_owned(),
                accepts_also: Vec::new(),
                schedules: Vec::new(),
                retention: None,
                gc_interval: Duration::from_secs(60),
                gc_batch: 500,
                group_commit: GROUP_COMMIT_DEFAULT,
            },
            registry: HashMap::new(),
        }
    }

    /// The storage, for the application's own use.
    pub fn storage(&self) -> &S {
        self.shared.storage()
    }

    /// This executor's ID.
    pub fn executor_id(&self) -> &str {
        &self.shared.config().executor_id
    }

    /// Starts workflow `W` under a generated ID.
    pub async fn start<W: Workflow<S>>(
        &self,
        input: W::Input,
    ) -> Result<WorkflowHandle<W::Output>, Error> {
        self.start_with::<W>(input, StartOptions::new()).await
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
        self.start_with::<W>(input, StartOptions::new().workflow_id(id))
            .await
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
        let options = StartOptions {
            workflow_id: id,
            ..StartOptions::new().timeout(timeout)
        };
        self.start_with::<W>(input, options).await
    }

    /// Starts workflow `W` with the given options: its ID (attaching to an
    /// existing run of it, as [`start_with_id`](Self::start_with_id)), a
    /// deadline, and the trace context stored with it.
    pub async fn start_with<W: Workflow<S>>(
        &self,
        input: W::Input,
        options: StartOptions,
    ) -> Result<WorkflowHandle<W::Output>, Error> {
        let json = self
            .shared
            .encode(&input, || format!("input of workflow {:?}", W::NAME))?;
        let id = self.start_json_inner(W::NAME, json, options).await?;
        Ok(self.handle(id))
    }

    /// Management: list, inspect, cancel, resume and fork workflows, send
    /// messages and read events.
    pub fn admin(&self) -> Admin<S> {
        self.admin.clone()
    }

    /// Replays run `id` from its recorded history against the code
    /// registered on this engine, without running a step or writing
    /// anything, and reports whether they agree: the same steps in the same
    /// order and, for a finished run, the same output or error (see
    /// [`replay`](crate::replay)). `tandem::testing::CrashTest` runs it on
    /// every finished workflow.
    pub async fn replay(&self, id: &str) -> Result<crate::replay::Replay, Error> {
        self.shared.replay(id).await
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
            self.shared.settle_cancelled(id);
        }
        self.shared.notify_messages();
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
        self.shared.notify_messages();
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
        let options = StartOptions {
            workflow_id: id,
            ..StartOptions::new()
        };
        let id = self.start_json_inner(name, json, options).await?;
        Ok(self.handle(id))
    }

    async fn start_json_inner(
        &self,
        name: &str,
        input: String,
        options: StartOptions,
    ) -> Result<String, Error> {
        let trace_parent = crate::telemetry::trace_parent_for(options.trace_parent)?;
        let id = options
            .workflow_id
            .unwrap_or_else(|| self.shared.generate_id());
        let deadline_ms = options.timeout.map(|timeout| {
            self.shared
                .now_ms()
                .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
        });
        self.shared
            .start(name, id, input, None, deadline_ms, trace_parent)
            .await
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
        // A malformed trace parent is refused by the SQL function's rule,
        // with its message, as every other option is.
        let params = options.into_params(W::NAME, input);
        let shared = &self.shared;
        let id = shared
            .retry(|| shared.storage().workflow_enqueue(params.clone()))
            .await?;
        // Claim it here at once if this executor serves the queue.
        shared.wake_claimer();
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
        self.shared.shutdown().await;
    }
}
