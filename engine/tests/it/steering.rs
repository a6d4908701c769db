//! Durable sleep, messages, events, child workflows, deadlines, and the
//! management operations (cancel, resume, fork, list, get), on both
//! backends; the SQL function `tandem.send` and the tracing spans on
//! PostgreSQL only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem::env::BoxFuture;
use tandem::storage::{
    ErrorKind, QueueLimits, Status, StepRow, Storage, Transaction, WorkflowFilter, WorkflowInfo,
    WorkflowRow, WorkflowsClaim,
};
use tandem::{
    Admin, Engine, Env, Error, PgStorage, TokioEnv, Workflow, WorkflowContext, WorkflowError,
};
use tokio::sync::{Semaphore, watch};

use crate::support::{self, App, CrashEnv, PgApp, both};

both!(
    a_sleep_interrupted_by_a_crash_wakes_at_the_recorded_time,
    a_long_sleep_holds_no_executor_slot,
    a_message_is_received_exactly_once_across_a_crash_and_never_from_a_rolled_back_send,
    events_are_readable_from_outside_and_cancel_resume_continue_from_the_checkpoint,
    a_child_started_before_a_crash_exists_exactly_once,
    fork_replays_steps_before_n_and_list_filters,
    forking_a_workflow_again_starts_another_run,
    a_workflow_past_its_deadline_is_cancelled,
    resuming_a_workflow_whose_dedup_key_was_taken_meanwhile_fails_whole,
    a_receive_interrupted_by_a_crash_times_out_at_the_recorded_time,
    a_superseded_execution_cannot_cancel_for_its_deadline,
    a_cancel_racing_a_child_start_cancels_the_child_or_keeps_it_from_existing,
);

/// An environment whose clock moves only when the test says so; its tasks
/// can all be aborted at once (a crash).
#[derive(Clone)]
struct ManualEnv {
    now_ms: Arc<watch::Sender<i64>>,
    crash: CrashEnv,
}

impl ManualEnv {
    // A test clock on real tokio, never simulated: its wake-up order does
    // not matter.
    #[allow(clippy::disallowed_methods)]
    fn new(start_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(watch::channel(start_ms).0),
            crash: CrashEnv::default(),
        }
    }

    fn advance(&self, ms: i64) {
        self.now_ms.send_modify(|t| *t += ms);
    }

    fn now_ms(&self) -> i64 {
        *self.now_ms.borrow()
    }
}

impl Env for ManualEnv {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms() as u64)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let target = self.now_ms() + duration.as_millis() as i64;
        let mut now = self.now_ms.subscribe();
        Box::pin(async move {
            let _ = now.wait_for(|t| *t >= target).await;
        })
    }

    fn spawn(&self, task: BoxFuture<()>) {
        self.crash.spawn(task);
    }

    fn seed(&self) -> u64 {
        7
    }
}

/// The wall clock in milliseconds, through the engine's production
/// environment (the one door to real time), for writes a test makes outside
/// the engine.
fn wall_ms() -> i64 {
    let since = TokioEnv::new().now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as i64)
}

/// Polls `check` until it holds; panics naming `what` if it never does.
async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        support::sleep(Duration::from_millis(10)).await;
    }
    panic!("never true: {what}");
}

/// Lets the clock pass the current millisecond: creation stamps are
/// milliseconds, and "newest first" only orders workflows created in
/// different ones (the memory model creates several within one).
async fn next_millisecond() {
    support::sleep(Duration::from_millis(2)).await;
}

async fn workflow<S: Storage>(storage: &S, id: &str) -> WorkflowRow {
    storage
        .workflow_get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("workflow {id} exists"))
}

async fn steps<S: Storage>(storage: &S, id: &str) -> Vec<StepRow> {
    storage.steps_load(id).await.unwrap()
}

/// Every workflow, newest first (the tests make a handful).
async fn workflows<S: Storage>(admin: &Admin<S>) -> Vec<WorkflowInfo> {
    admin
        .list_workflows(WorkflowFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The IDs of `parent`'s children.
async fn children<S: Storage>(admin: &Admin<S>, parent: &str) -> Vec<WorkflowInfo> {
    let mut all = workflows(admin).await;
    all.retain(|w| w.row.parent_id.as_deref() == Some(parent));
    all
}

/// The messages waiting for running workflow `id` on `topic`, oldest first,
/// left where they are: taken inside a transaction that is rolled back.
/// (Taking is the only storage-neutral read of messages, and it is fenced
/// like a checkpoint, so this works only while `id` runs.)
async fn messages_waiting<S: Storage>(storage: &S, id: &str, topic: &str) -> Vec<String> {
    let mut tx = storage.begin().await.unwrap();
    let epoch = tx.workflow_get(id).await.unwrap().unwrap().owner_epoch;
    let mut waiting = Vec::new();
    for _ in 0..100 {
        match tx.message_take(id, topic, epoch).await.unwrap() {
            Some(payload) => waiting.push(payload),
            None => break,
        }
    }
    tx.rollback().await.unwrap();
    waiting
}

/// Records the clock before and after a sleep of `secs` seconds.
struct Sleeper {
    /// The test's clock (a step may read the clock); each test has its own,
    /// so the backends' runs of a test do not share one.
    clock: ManualEnv,
}

impl<S: Storage> Workflow<S> for Sleeper {
    const NAME: &'static str = "sleeper";
    type Input = u64;
    type Output = (i64, i64);

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        secs: u64,
    ) -> Result<(i64, i64), WorkflowError> {
        let before = ctx
            .step("before", || async {
                Ok::<_, std::io::Error>(self.clock.now_ms())
            })
            .await?;
        ctx.sleep(Duration::from_secs(secs)).await?;
        let after = ctx
            .step("after", || async {
                Ok::<_, std::io::Error>(self.clock.now_ms())
            })
            .await?;
        Ok((before, after))
    }
}

async fn a_sleep_interrupted_by_a_crash_wakes_at_the_recorded_time<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let start = 1_800_000_000_000;
    let env = ManualEnv::new(start);
    let launch = |env: ManualEnv| {
        Engine::builder(storage.clone())
            .env(env.clone())
            .sleep_suspend_after(Duration::from_secs(3 * 3600))
            .register(Sleeper { clock: env })
            .launch()
    };
    let engine = launch(env.clone()).await.unwrap();
    engine.start_with_id::<Sleeper>("nap", 3600).await.unwrap();
    wait_until("nap recorded its sleep", async || {
        steps(&storage, "nap").await.len() == 2
    })
    .await;
    env.advance(10 * 60 * 1000);
    env.crash.crash();

    // Restarted 10 minutes in: the recorded wake-up time stands.
    let engine = launch(env.clone()).await.unwrap();
    let wake = storage.step_get("nap", 1).await.unwrap().unwrap().output;
    assert_eq!(wake, Some((start + 3_600_000).to_string()));
    env.advance(50 * 60 * 1000 - 1);
    support::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        workflow(&storage, "nap").await.status,
        Status::Running,
        "still asleep 1 ms before the recorded time"
    );
    env.advance(1);
    let (before, after) = engine.handle::<(i64, i64)>("nap").result().await.unwrap();
    assert_eq!((before, after), (start, start + 3_600_000));
}

/// Records the clock before and after a receive of `secs` seconds on a
/// topic nobody sends to.
struct Waiter {
    clock: ManualEnv,
}

impl<S: Storage> Workflow<S> for Waiter {
    const NAME: &'static str = "waiter";
    type Input = u64;
    type Output = (i64, Option<i32>, i64);

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        secs: u64,
    ) -> Result<(i64, Option<i32>, i64), WorkflowError> {
        let before = ctx
            .step("before", || async {
                Ok::<_, std::io::Error>(self.clock.now_ms())
            })
            .await?;
        let got = ctx.recv::<i32>("never", Duration::from_secs(secs)).await?;
        let after = ctx
            .step("after", || async {
                Ok::<_, std::io::Error>(self.clock.now_ms())
            })
            .await?;
        Ok((before, got, after))
    }
}

async fn a_receive_interrupted_by_a_crash_times_out_at_the_recorded_time<A: App>() {
    let (storage, app) = A::create(0, 0).await;
    let start = 1_800_000_000_000;
    let env = ManualEnv::new(start);
    let launch = |env: ManualEnv| {
        Engine::builder(storage.clone())
            .env(env.clone())
            .register(Waiter { clock: env })
            .launch()
    };
    let engine = launch(env.clone()).await.unwrap();
    engine.start_with_id::<Waiter>("wait", 3600).await.unwrap();
    let recorded = || async {
        app.workflows()
            .await
            .into_iter()
            .find(|w| w.id == "wait")
            .and_then(|w| w.wait_until_ms)
    };
    wait_until("wait recorded when its receive times out", async || {
        recorded().await.is_some()
    })
    .await;
    assert_eq!(recorded().await, Some(start + 3_600_000));
    env.advance(10 * 60 * 1000);
    env.crash.crash();
    drop(engine);

    // Restarted 10 minutes in: the timeout still ends an hour after the
    // first wait began, not an hour after the restart.
    let engine = launch(env.clone()).await.unwrap();
    env.advance(50 * 60 * 1000 - 1);
    support::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        workflow(&storage, "wait").await.status,
        Status::Running,
        "still waiting 1 ms before the recorded time"
    );
    env.advance(1);
    // (Waiting an hour from the restart instead would never end here.)
    wait_until("the receive timed out at the recorded time", async || {
        workflow(&storage, "wait").await.status == Status::Success
    })
    .await;
    let result = engine
        .handle::<(i64, Option<i32>, i64)>("wait")
        .result()
        .await
        .unwrap();
    assert_eq!(result, (start, None, start + 3_600_000));
    let steps = steps(&storage, "wait").await;
    assert_eq!(steps[1].output.as_deref(), Some("null"), "{steps:?}");
    engine.shutdown().await;
}

/// Sleeps `ms` milliseconds between two steps.
struct Napper;

impl<S: Storage> Workflow<S> for Napper {
    const NAME: &'static str = "napper";
    type Input = u64;
    type Output = u64;

    async fn run(&self, ctx: &mut WorkflowContext<S>, ms: u64) -> Result<u64, WorkflowError> {
        ctx.sleep(Duration::from_millis(ms)).await?;
        ctx.step("done", || async { Ok::<_, std::io::Error>(ms) })
            .await?;
        Ok(ms)
    }
}

async fn a_long_sleep_holds_no_executor_slot<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let engine = Engine::builder(storage.clone())
        .register(Napper)
        .sleep_suspend_after(Duration::from_millis(50))
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    let handle = engine.start::<Napper>(800).await.unwrap();
    let id = handle.workflow_id().to_owned();
    // While it sleeps, it is handed back to its queue: no executor owns it.
    wait_until("the sleeper is back on its queue", async || {
        let w = workflow(&storage, &id).await;
        w.status == Status::Enqueued && w.executor_id.is_none()
    })
    .await;
    // ...and it stays there until its wake-up time: a claim now (in a
    // transaction rolled back, so the engine's own claim is not disturbed)
    // finds nothing ready.
    let mut tx = storage.begin().await.unwrap();
    let claimed = tx
        .workflows_claim(WorkflowsClaim {
            versions: tandem::storage::Versions::default(),
            queue: QueueLimits {
                name: "default".into(),
                concurrency_global: None,
                rate_limit: None,
                concurrency_per_key: None,
                retention_ms: None,
            },
            executor_id: engine.executor_id().to_owned(),
            names: vec!["napper".into()],
            limit: 10,
            now_ms: wall_ms(),
        })
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(claimed.is_empty(), "claimable while asleep: {claimed:?}");
    assert_eq!(handle.result().await.unwrap(), 800);
    let info = engine.admin().get_workflow(&id).await.unwrap().unwrap();
    let waited_ms = info.workflow.completed_ms.unwrap() - info.workflow.created_ms;
    assert!(waited_ms >= 800, "woke after {waited_ms} ms");
    engine.shutdown().await;
}

/// Receives a greeting, says it arrived at its gate, waits there, then
/// echoes the greeting in a step.
#[derive(Clone)]
struct Greeter {
    gate: Arc<Semaphore>,
    arrived: Arc<Semaphore>,
}

impl Greeter {
    /// A greeter that waits at its gate until the test opens it.
    fn closed() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            arrived: Arc::new(Semaphore::new(0)),
        }
    }

    /// A greeter whose gate lets the next 100 runs through.
    fn open() -> Self {
        let greeter = Self::closed();
        greeter.open_gate();
        greeter
    }

    fn open_gate(&self) {
        self.gate.add_permits(100);
    }

    /// Waits until a run has arrived at the gate (its receive recorded).
    async fn wait_arrival(&self) {
        support::timeout(Duration::from_secs(10), self.arrived.acquire())
            .await
            .expect("a greeter arrives at its gate")
            .unwrap()
            .forget();
    }
}

impl<S: Storage> Workflow<S> for Greeter {
    const NAME: &'static str = "greeter";
    type Input = u64;
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        timeout_ms: u64,
    ) -> Result<Option<String>, WorkflowError> {
        let greeting: Option<String> = ctx
            .recv("greeting", Duration::from_millis(timeout_ms))
            .await?;
        self.arrived.add_permits(1);
        self.gate.acquire().await?.forget();
        let echoed = ctx
            .step("echo", || async {
                Ok::<_, std::io::Error>(greeting.clone())
            })
            .await?;
        Ok(echoed)
    }
}

async fn a_message_is_received_exactly_once_across_a_crash_and_never_from_a_rolled_back_send<
    A: App,
>() {
    let (storage, _app) = A::create(0, 0).await;
    let crash = CrashEnv::default();
    let greeter = Greeter::closed();
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(greeter.clone())
        .launch()
        .await
        .unwrap();
    engine
        .start_with_id::<Greeter>("greeter", 60_000)
        .await
        .unwrap();

    // A send inside a rolled-back transaction is never delivered.
    let mut tx = storage.begin().await.unwrap();
    tx.message_send(
        "greeter",
        "greeting",
        "\"from a rolled-back transaction\"",
        wall_ms(),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Two committed sends: one in an application's transaction, one from
    // the engine.
    let mut tx = storage.begin().await.unwrap();
    tx.message_send("greeter", "greeting", "\"hello\"", wall_ms())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    engine.send("greeter", "greeting", &"second").await.unwrap();

    // The first is received (and recorded); then the receiver crashes before
    // its next step.
    greeter.wait_arrival().await;
    assert_eq!(steps(&storage, "greeter").await.len(), 1);
    crash.crash();
    assert_eq!(
        messages_waiting(&storage, "greeter", "greeting").await,
        ["\"second\""],
        "the received message is consumed, the other waits"
    );

    let greeter = Greeter::closed();
    let engine = Engine::builder(storage.clone())
        .register(greeter.clone())
        .launch()
        .await
        .unwrap();
    // The recovered run has replayed its receive and waits at the gate.
    greeter.wait_arrival().await;
    assert_eq!(
        messages_waiting(&storage, "greeter", "greeting").await,
        ["\"second\""],
        "the second message was not consumed by the replay"
    );
    greeter.open_gate();
    let echoed = engine
        .handle::<Option<String>>("greeter")
        .result()
        .await
        .unwrap();
    assert_eq!(
        echoed.as_deref(),
        Some("hello"),
        "the replay returns the recorded message"
    );

    // A receive that times out returns None.
    let timed_out = engine.start::<Greeter>(0).await.unwrap();
    // (The remaining "second" message is addressed to the first workflow.)
    assert_eq!(timed_out.result().await.unwrap(), None);

    // A message to a workflow that does not exist is refused.
    let mut tx = storage.begin().await.unwrap();
    let err = tx
        .message_send("nobody", "greeting", "1", wall_ms())
        .await
        .unwrap_err();
    tx.rollback().await.unwrap();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        err.to_string()
            .contains("tandem.send: unknown workflow \"nobody\""),
        "{err}"
    );
    engine.shutdown().await;
}

/// PostgreSQL only: what the memory model offers as `message_send` in a
/// transaction is here the SQL function and `PgStorage::send_in` inside the
/// application's own sqlx transaction.
#[tokio::test]
async fn sql_sends_commit_with_the_callers_transaction_and_refuse_an_unknown_workflow() {
    let (storage, app) = PgApp::create(0, 0).await;
    let engine = Engine::builder(storage)
        .register(Greeter::open())
        .launch()
        .await
        .unwrap();
    let handle = engine
        .start_with_id::<Greeter>("greeter", 60_000)
        .await
        .unwrap();

    // A send inside a rolled-back transaction is never delivered; one from
    // SQL that commits is.
    let mut tx = app.pool.begin().await.unwrap();
    PgStorage::send_in(
        &mut tx,
        "greeter",
        "greeting",
        &"from a rolled-back transaction",
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    sqlx::query("SELECT tandem.send('greeter', 'greeting', '\"hello\"')")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap().as_deref(), Some("hello"));

    let err = sqlx::query("SELECT tandem.send('nobody', 'greeting', '1')")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("tandem.send: unknown workflow \"nobody\""),
        "{err}"
    );
    engine.shutdown().await;
}

/// Publishes its progress as an event, then waits for a message.
struct Publisher;

impl<S: Storage> Workflow<S> for Publisher {
    const NAME: &'static str = "publisher";
    type Input = ();
    type Output = ();

    async fn run(&self, ctx: &mut WorkflowContext<S>, (): ()) -> Result<(), WorkflowError> {
        ctx.set_event("progress", &50).await?;
        let _: Option<()> = ctx.recv("finish", Duration::from_secs(600)).await?;
        ctx.set_event("progress", &100).await?;
        Ok(())
    }
}

async fn events_are_readable_from_outside_and_cancel_resume_continue_from_the_checkpoint<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let engine = Engine::builder(storage)
        .register(Publisher)
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    let admin = engine.admin();
    let handle = engine.start_with_id::<Publisher>("pub", ()).await.unwrap();
    let progress: Option<i32> = admin
        .get_event("pub", "progress", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(progress, Some(50));
    let missing: Option<i32> = admin
        .get_event("pub", "nothing", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(missing, None);

    // Cancel it while it waits for a message.
    assert_eq!(engine.cancel("pub").await.unwrap(), ["pub"]);
    let err = handle.result().await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkflowCancelled { reason, .. } if reason == "cancelled"),
        "{err}"
    );

    // Resume: it continues from its checkpoint (the first event is not set
    // again) and finishes once it gets the message.
    admin.resume("pub").await.unwrap();
    engine.send("pub", "finish", &()).await.unwrap();
    engine.handle::<()>("pub").result().await.unwrap();
    let progress: Option<i32> = admin
        .get_event("pub", "progress", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(progress, Some(100));
    let detail = admin.get_workflow("pub").await.unwrap().unwrap();
    let names: Vec<&str> = detail.steps.iter().map(|s| s.row.name.as_str()).collect();
    assert_eq!(names, ["event:progress", "recv:finish", "event:progress"]);
    assert_eq!(
        detail.steps[1].attempts, 1,
        "waiting for a message is one attempt"
    );
    assert!(
        detail.steps[0].owner_epoch < detail.steps[1].owner_epoch,
        "step 1 ran after the resume"
    );
    let err = admin.resume("pub").await.unwrap_err();
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    engine.shutdown().await;
}

/// Starts a child (the greeter), waits at a gate, then awaits it.
struct Parent {
    gate: Arc<Semaphore>,
}

impl<S: Storage> Workflow<S> for Parent {
    const NAME: &'static str = "parent";
    type Input = ();
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        (): (),
    ) -> Result<Option<String>, WorkflowError> {
        let child = ctx.start_child::<Greeter>(60_000).await?;
        self.gate.acquire().await?.forget();
        ctx.child_result(&child).await
    }
}

async fn a_child_started_before_a_crash_exists_exactly_once<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let crash = CrashEnv::default();
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(Parent {
            gate: Arc::new(Semaphore::new(0)),
        })
        .register(Greeter::closed())
        .launch()
        .await
        .unwrap();
    engine.start_with_id::<Parent>("parent", ()).await.unwrap();
    wait_until("the parent recorded its child's start", async || {
        steps(&storage, "parent").await.len() == 1
    })
    .await;
    crash.crash();

    let engine = Engine::builder(storage)
        .register(Parent {
            gate: Arc::new(Semaphore::new(100)),
        })
        .register(Greeter::open())
        .launch()
        .await
        .unwrap();
    let admin = engine.admin();
    let ids: Vec<String> = children(&admin, "parent")
        .await
        .into_iter()
        .map(|w| w.row.id)
        .collect();
    assert_eq!(ids, ["parent-child-0"]);
    engine
        .send("parent-child-0", "greeting", &"hi child")
        .await
        .unwrap();
    let result = engine
        .handle::<Option<String>>("parent")
        .result()
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some("hi child"));
    assert_eq!(workflows(&admin).await.len(), 2, "one parent, one child");

    // Cancelling a parent cascades to its unfinished child.
    let parent = engine
        .start_with_id::<Parent>("parent-2", ())
        .await
        .unwrap();
    wait_until("parent-2 started its child", async || {
        children(&admin, "parent-2").await.len() == 1
    })
    .await;
    assert_eq!(engine.cancel("parent-2").await.unwrap().len(), 2);
    assert!(matches!(
        parent.result().await,
        Err(Error::WorkflowCancelled { .. })
    ));
    let statuses: Vec<Status> = children(&admin, "parent-2")
        .await
        .into_iter()
        .map(|w| w.row.status)
        .collect();
    assert_eq!(statuses, [Status::Cancelled]);

    // Resuming the parent resumes what its cancel cancelled: the child runs
    // again and the parent gets its result, instead of failing at once on a
    // cancelled child.
    engine.admin().resume("parent-2").await.unwrap();
    let statuses: Vec<Status> = children(&admin, "parent-2")
        .await
        .into_iter()
        .map(|w| w.row.status)
        .collect();
    assert_ne!(statuses, [Status::Cancelled], "the child was resumed too");
    engine
        .send("parent-2-child-0", "greeting", &"hi again")
        .await
        .unwrap();
    let result = engine
        .handle::<Option<String>>("parent-2")
        .result()
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some("hi again"));
    engine.shutdown().await;
}

/// Three plain steps that count their executions.
struct Counted {
    calls: Arc<[AtomicUsize; 3]>,
}

impl<S: Storage> Workflow<S> for Counted {
    const NAME: &'static str = "counted";
    type Input = i64;
    type Output = i64;

    async fn run(&self, ctx: &mut WorkflowContext<S>, x: i64) -> Result<i64, WorkflowError> {
        let mut acc = x;
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            acc = ctx
                .step(name, || async {
                    self.calls[i].fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(acc * 2)
                })
                .await?;
        }
        Ok(acc)
    }
}

async fn fork_replays_steps_before_n_and_list_filters<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let calls: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let engine = Engine::builder(storage)
        .register(Counted {
            calls: calls.clone(),
        })
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    let admin = engine.admin();
    assert_eq!(
        engine
            .start_with_id::<Counted>("orig", 1)
            .await
            .unwrap()
            .result()
            .await
            .unwrap(),
        8
    );
    next_millisecond().await;
    let forked = admin.fork("orig", 1).await.unwrap();
    assert_ne!(forked, "orig");
    assert_eq!(engine.handle::<i64>(&forked).result().await.unwrap(), 8);
    let counts: Vec<usize> = calls.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        counts,
        [1, 2, 2],
        "step 0 replayed from the copy, steps 1 and 2 ran again"
    );
    assert!(matches!(
        admin.fork("missing", 0).await,
        Err(Error::WorkflowNotFound { .. })
    ));

    next_millisecond().await;
    engine
        .start_with_id::<Counted>("third", 3)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let all = admin
        .list_workflows(WorkflowFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|w| w.row.id.as_str()).collect();
    assert_eq!(ids, ["third", forked.as_str(), "orig"], "newest first");
    let page = admin
        .list_workflows(WorkflowFilter {
            limit: 1,
            offset: 1,
            status: Some(Status::Success),
            name: Some("counted".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].row.id, forked);
    let none = admin
        .list_workflows(WorkflowFilter {
            limit: 10,
            status: Some(Status::Cancelled),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let detail = admin.get_workflow("orig").await.unwrap().unwrap();
    let outputs: Vec<Option<&str>> = detail
        .steps
        .iter()
        .map(|s| s.row.output.as_deref())
        .collect();
    assert_eq!(outputs, [Some("2"), Some("4"), Some("8")]);
    assert!(
        detail
            .steps
            .iter()
            .all(|s| s.completed_ms >= s.started_ms && s.attempts == 1)
    );
    assert!(admin.get_workflow("missing").await.unwrap().is_none());
    engine.shutdown().await;
}

/// Issue 19: the fork ID came from a generator seeded afresh on each call,
/// so under a fixed seed a second fork drew the first one's ID and failed
/// on the unique key.
async fn forking_a_workflow_again_starts_another_run<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let calls: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let engine = Engine::builder(storage)
        .register(Counted {
            calls: calls.clone(),
        })
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    let orig = engine.start_with_id::<Counted>("orig", 1).await.unwrap();
    assert_eq!(orig.result().await.unwrap(), 8);
    let forked = engine.admin().fork("orig", 1).await.unwrap();
    // Forking again gets a new ID: from the same engine, and from two
    // management processes whose generators share a seed (the second one's
    // first draw is taken, so it draws again).
    let again = engine.admin().fork("orig", 1).await.unwrap();
    assert_ne!(again, forked);
    // Only the environment's fixed seed matters here, not its clock.
    let env: Arc<dyn tandem::Env> = Arc::new(ManualEnv::new(0));
    let first = Admin::with_env(engine.storage().clone(), env.clone())
        .fork("orig", 2)
        .await
        .unwrap();
    let second = Admin::with_env(engine.storage().clone(), env)
        .fork("orig", 2)
        .await
        .unwrap();
    assert_ne!(first, second);
    for id in [&again, &first, &second] {
        assert_eq!(engine.handle::<i64>(id).result().await.unwrap(), 8);
    }
    let counts: Vec<usize> = calls.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        counts,
        [1, 3, 5],
        "each fork reran only its steps from the fork point"
    );
}

async fn a_workflow_past_its_deadline_is_cancelled<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let engine = Engine::builder(storage)
        .register(Napper)
        .launch()
        .await
        .unwrap();
    let handle = engine
        .start_with_timeout::<Napper>(None, Duration::from_millis(300), 5_000)
        .await
        .unwrap();
    let err = handle.result().await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkflowCancelled { reason, .. } if reason == "deadline exceeded"),
        "{err}"
    );
    engine.shutdown().await;
}

async fn resuming_a_workflow_whose_dedup_key_was_taken_meanwhile_fails_whole<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    // Declare the queue `idle`, then run an engine that does not serve it:
    // what is enqueued there stays ENQUEUED.
    Engine::builder(storage.clone())
        .register(Napper)
        .queue(tandem::Queue::new("idle"))
        .launch()
        .await
        .unwrap()
        .shutdown()
        .await;
    let engine = Engine::builder(storage.clone())
        .register(Napper)
        .launch()
        .await
        .unwrap();
    let admin = engine.admin();
    let options = || {
        tandem::EnqueueOptions::default()
            .queue("idle")
            .dedup_key("customer-7")
    };
    let first = engine.enqueue::<Napper>(1, options()).await.unwrap();
    assert_eq!(
        engine.cancel(first.workflow_id()).await.unwrap(),
        [first.workflow_id()]
    );
    // A cancelled workflow is finished for deduplication: the key is free.
    let second = engine.enqueue::<Napper>(2, options()).await.unwrap();
    assert_ne!(first.workflow_id(), second.workflow_id());

    let err = admin.resume(first.workflow_id()).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot be resumed")
            && err.to_string().contains("holds the dedup_key"),
        "{err}"
    );
    assert_eq!(
        workflow(&storage, first.workflow_id()).await.status,
        Status::Cancelled
    );
    assert_eq!(
        workflow(&storage, second.workflow_id()).await.status,
        Status::Enqueued
    );

    // Once the holder is finished (here: cancelled), the resume goes through.
    engine.cancel(second.workflow_id()).await.unwrap();
    admin.resume(first.workflow_id()).await.unwrap();
    assert_eq!(
        workflow(&storage, first.workflow_id()).await.status,
        Status::Enqueued
    );
    engine.shutdown().await;
}

/// The race the simulator found (seed 1441): a parent's execution inserted
/// its child while an admin cancel of the parent ran; the cancel's cascade
/// did not see the uncommitted child, which then ran on under a cancelled
/// parent. A child's insert now locks its running parent, and the cancel
/// cascades level by level, so the two serialize on the parent's row.
async fn a_cancel_racing_a_child_start_cancels_the_child_or_keeps_it_from_existing<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let insert = |id: &str, parent: Option<&str>| tandem::storage::WorkflowInsert {
        version: tandem::storage::DEFAULT_VERSION.to_owned(),
        trace_parent: None,
        id: id.to_owned(),
        name: "napper".to_owned(),
        input: "1".to_owned(),
        executor_id: "exec".to_owned(),
        parent_id: parent.map(str::to_owned),
        parent_epoch: parent.map(|_| tandem::storage::EPOCH_FIRST),
        deadline_ms: None,
        now_ms: 0,
    };
    let cancel = |storage: &A::Storage, id: &'static str| {
        let storage = storage.clone();
        async move {
            storage
                .autocommit(move |tx| {
                    Box::pin(async move { tx.workflows_cancel(id, "cancelled", 0).await })
                })
                .await
        }
    };
    for parent in ["p1", "p2"] {
        storage.workflow_insert(insert(parent, None)).await.unwrap();
    }

    // The child's insert first: the cancel waits for it, then cancels it.
    let mut tx = storage.begin().await.unwrap();
    let inserted = tx
        .workflow_insert(insert("p1-child-0", Some("p1")))
        .await
        .unwrap();
    assert_eq!(inserted, tandem::storage::WorkflowInserted::Inserted);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (cancelled, ()) = tokio::join!(
        async {
            let cancelled = cancel(&storage, "p1").await;
            done.store(true, Ordering::SeqCst);
            cancelled
        },
        async {
            support::sleep(Duration::from_millis(200)).await;
            assert!(
                !done.load(Ordering::SeqCst),
                "the cancel waits for the parent's row"
            );
            tx.commit().await.unwrap();
        }
    );
    let cancelled = cancelled.unwrap();
    assert_eq!(cancelled, ["p1", "p1-child-0"]);
    assert_eq!(
        workflow(&storage, "p1-child-0").await.status,
        Status::Cancelled
    );

    // The cancel first: the child's insert is fenced and nothing exists.
    assert_eq!(cancel(&storage, "p2").await.unwrap(), ["p2"]);
    let err = storage
        .workflow_insert(insert("p2-child-0", Some("p2")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    assert!(storage.workflow_get("p2-child-0").await.unwrap().is_none());
}

/// Found by the simulator (seeds 29001208, 29003679): an execution that a
/// resume had superseded still knew the deadline the resume cleared, and
/// cancelled the resumed workflow for it; its parent, resumed too and with
/// no deadline, then failed on its cancelled child. The deadline's cancel is
/// fenced on the execution's epoch now.
async fn a_superseded_execution_cannot_cancel_for_its_deadline<A: App>() {
    let (storage, _app) = A::create(0, 0).await;
    let insert = tandem::storage::WorkflowInsert {
        version: tandem::storage::DEFAULT_VERSION.to_owned(),
        trace_parent: None,
        id: "w".to_owned(),
        name: "napper".to_owned(),
        input: "1".to_owned(),
        executor_id: "exec".to_owned(),
        parent_id: None,
        parent_epoch: None,
        deadline_ms: Some(1),
        now_ms: 0,
    };
    storage.workflow_insert(insert).await.unwrap();
    let run =
        |f: fn(&mut <A::Storage as Storage>::Tx) -> tandem::storage::TxFuture<'_, Vec<String>>| {
            let storage = storage.clone();
            async move { storage.autocommit(f).await }
        };
    // Cancel (epoch 2) and resume (epoch 3): the epoch-1 execution is stale.
    run(|tx| Box::pin(async move { tx.workflows_cancel("w", "stop", 0).await }))
        .await
        .unwrap();
    storage
        .autocommit(|tx| Box::pin(async move { tx.workflow_resume("w", 0).await }))
        .await
        .unwrap();
    let err = run(|tx| Box::pin(async move { tx.workflow_cancel_overdue("w", 1, 0).await }))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    let row = workflow(&storage, "w").await;
    assert_eq!((row.status, row.deadline_ms), (Status::Enqueued, None));

    // The owning execution's cancel goes through.
    storage
        .autocommit(|tx| {
            Box::pin(async move {
                tx.workflows_claim(WorkflowsClaim {
                    versions: tandem::storage::Versions::default(),
                    queue: QueueLimits {
                        name: "default".to_owned(),
                        concurrency_global: None,
                        rate_limit: None,
                        concurrency_per_key: None,
                        retention_ms: None,
                    },
                    executor_id: "exec".to_owned(),
                    names: vec!["napper".to_owned()],
                    limit: 1,
                    now_ms: 0,
                })
                .await
            })
        })
        .await
        .unwrap();
    let epoch = workflow(&storage, "w").await.owner_epoch;
    let cancelled = storage
        .autocommit(move |tx| {
            Box::pin(async move { tx.workflow_cancel_overdue("w", epoch, 0).await })
        })
        .await
        .unwrap();
    assert_eq!(cancelled, ["w"]);
    let row = workflow(&storage, "w").await;
    assert_eq!(
        (row.status, row.error.as_deref()),
        (Status::Cancelled, Some("deadline exceeded"))
    );
}

/// A tracing subscriber that records the spans created, with their fields.
#[derive(Default, Clone)]
struct SpanLog {
    spans: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicUsize>,
}

struct FieldText<'a>(&'a mut String);

impl tracing::field::Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = span.metadata().name().to_owned();
        span.record(&mut FieldText(&mut text));
        self.spans.lock().unwrap().push(text);
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::SeqCst) as u64 + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut text = "record".to_owned();
        values.record(&mut FieldText(&mut text));
        self.spans.lock().unwrap().push(text);
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// PostgreSQL only: the spans come from the engine, above the storage seam,
// and one process-wide subscriber could not tell two backends' runs apart.
#[tokio::test]
async fn workflow_runs_and_steps_emit_tracing_spans() {
    // A global subscriber: a thread-local one misses spans whose callsite
    // interest another test's thread already cached as "never". Other tests'
    // spans arrive too; the assertions look for this test's workflow only.
    static LOG: std::sync::OnceLock<SpanLog> = std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| {
        let log = SpanLog::default();
        tracing::subscriber::set_global_default(log.clone()).expect("the only global subscriber");
        log
    });
    let (storage, _app) = PgApp::create(0, 0).await;
    let calls: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let engine = Engine::builder(storage)
        .register(Counted { calls })
        .launch()
        .await
        .unwrap();
    engine
        .start_with_id::<Counted>("traced", 1)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    engine.shutdown().await;
    let spans = log.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(|s| s.starts_with("workflow")
            && s.contains("workflow.id=traced")
            && s.contains("workflow.name=counted")),
        "{spans:#?}"
    );
    for (step_id, name) in [(0, "a"), (1, "b"), (2, "c")] {
        assert!(
            spans.iter().any(|s| s.starts_with("step")
                && s.contains("workflow.id=traced")
                && s.contains(&format!("step.id={step_id}"))
                && s.contains(&format!("step.name=\"{name}\""))),
            "step {name}: {spans:#?}"
        );
    }
    assert!(
        spans.iter().any(|s| s == "record step.attempts=1"),
        "attempts are recorded"
    );
}
