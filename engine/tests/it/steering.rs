//! Durable sleep, messages, events, child workflows, deadlines, and the
//! management operations: cancel, resume, fork, list, get.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use tandem::env::BoxFuture;
use tandem::storage::{Status, WorkflowFilter};
use tandem::{Engine, Env, Error, PgStorage, Workflow, WorkflowContext, WorkflowError};
use tokio::sync::{Semaphore, watch};

use crate::support::{self, CrashEnv};

/// An environment whose clock moves only when the test says so; its tasks
/// can all be aborted at once (a crash).
#[derive(Clone)]
struct ManualEnv {
    now_ms: Arc<watch::Sender<i64>>,
    crash: CrashEnv,
}

impl ManualEnv {
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

/// Records the clock before and after a one-hour sleep.
struct Sleeper;

impl Workflow<PgStorage> for Sleeper {
    const NAME: &'static str = "sleeper";
    type Input = u64;
    type Output = (i64, i64);

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        secs: u64,
    ) -> Result<(i64, i64), WorkflowError> {
        let before = ctx
            .step("before", || async { Ok::<_, std::io::Error>(now_ms()) })
            .await?;
        ctx.sleep(Duration::from_secs(secs)).await?;
        let after = ctx
            .step("after", || async { Ok::<_, std::io::Error>(now_ms()) })
            .await?;
        Ok((before, after))
    }
}

static CLOCK: Mutex<Option<ManualEnv>> = Mutex::new(None);

/// The test clock, read by workflow steps (a step may read the clock).
fn now_ms() -> i64 {
    CLOCK.lock().unwrap().as_ref().map_or(0, ManualEnv::now_ms)
}

async fn wait_for(pool: &PgPool, sql: &'static str) {
    for _ in 0..1000 {
        let ok: bool = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if ok {
            return;
        }
        support::sleep(Duration::from_millis(10)).await;
    }
    panic!("never true: {sql}");
}

#[tokio::test]
async fn a_sleep_interrupted_by_a_crash_wakes_at_the_recorded_time() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    let start = 1_800_000_000_000;
    let env = ManualEnv::new(start);
    *CLOCK.lock().unwrap() = Some(env.clone());
    let launch = |env: ManualEnv| {
        Engine::builder(storage.clone())
            .env(env)
            .sleep_suspend_after(Duration::from_secs(3 * 3600))
            .register(Sleeper)
            .launch()
    };
    let engine = launch(env.clone()).await.unwrap();
    engine.start_with_id::<Sleeper>("nap", 3600).await.unwrap();
    wait_for(
        &pool,
        "SELECT count(*) = 2 FROM tandem.steps WHERE workflow_id = 'nap'",
    )
    .await;
    env.advance(10 * 60 * 1000);
    env.crash.crash();

    // Restarted 10 minutes in: the recorded wake-up time stands.
    let engine = launch(env.clone()).await.unwrap();
    let wake: String = sqlx::query_scalar(
        "SELECT output::text FROM tandem.steps WHERE workflow_id = 'nap' AND step_id = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wake, (start + 3_600_000).to_string());
    env.advance(50 * 60 * 1000 - 1);
    support::sleep(Duration::from_millis(200)).await;
    let status: String = sqlx::query_scalar("SELECT status FROM tandem.workflows WHERE id = 'nap'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        status, "RUNNING",
        "still asleep 1 ms before the recorded time"
    );
    env.advance(1);
    let (before, after) = engine.handle::<(i64, i64)>("nap").result().await.unwrap();
    assert_eq!((before, after), (start, start + 3_600_000));
    *CLOCK.lock().unwrap() = None;
}

/// Sleeps `ms` milliseconds between two steps.
struct Napper;

impl Workflow<PgStorage> for Napper {
    const NAME: &'static str = "napper";
    type Input = u64;
    type Output = u64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        ms: u64,
    ) -> Result<u64, WorkflowError> {
        ctx.sleep(Duration::from_millis(ms)).await?;
        ctx.step("done", || async { Ok::<_, std::io::Error>(ms) })
            .await?;
        Ok(ms)
    }
}

#[tokio::test]
async fn a_long_sleep_holds_no_executor_slot() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    let engine = Engine::builder(storage)
        .register(Napper)
        .sleep_suspend_after(Duration::from_millis(50))
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    let handle = engine.start::<Napper>(800).await.unwrap();
    // While it sleeps, it is handed back to its queue: no executor owns it.
    wait_for(&pool, "SELECT status = 'ENQUEUED' AND executor_id IS NULL AND run_after IS NOT NULL FROM tandem.workflows").await;
    assert_eq!(handle.result().await.unwrap(), 800);
    let waited: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM completed_at - created_at)::float8 FROM tandem.workflows",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(waited >= 0.8, "woke after {waited} s");
    engine.shutdown().await;
}

/// Receives a greeting, waits at a gate, then echoes it in a step.
struct Greeter {
    gate: Arc<Semaphore>,
}

impl Workflow<PgStorage> for Greeter {
    const NAME: &'static str = "greeter";
    type Input = u64;
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        timeout_ms: u64,
    ) -> Result<Option<String>, WorkflowError> {
        let greeting: Option<String> = ctx
            .recv("greeting", Duration::from_millis(timeout_ms))
            .await?;
        self.gate.acquire().await?.forget();
        let echoed = ctx
            .step("echo", || async {
                Ok::<_, std::io::Error>(greeting.clone())
            })
            .await?;
        Ok(echoed)
    }
}

#[tokio::test]
async fn a_message_is_received_exactly_once_across_a_crash_and_never_from_a_rolled_back_send() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    let crash = CrashEnv::default();
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(Greeter {
            gate: Arc::new(Semaphore::new(0)),
        })
        .launch()
        .await
        .unwrap();
    engine
        .start_with_id::<Greeter>("greeter", 60_000)
        .await
        .unwrap();

    // A send inside a rolled-back transaction is never delivered.
    let mut tx = pool.begin().await.unwrap();
    PgStorage::send_in(
        &mut tx,
        "greeter",
        "greeting",
        &"from a rolled-back transaction",
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Two committed sends, one from SQL and one from Rust.
    sqlx::query("SELECT tandem.send('greeter', 'greeting', '\"hello\"')")
        .execute(&pool)
        .await
        .unwrap();
    engine.send("greeter", "greeting", &"second").await.unwrap();

    // The first is received (and recorded); then the receiver crashes before
    // its next step.
    wait_for(
        &pool,
        "SELECT count(*) = 1 FROM tandem.steps WHERE workflow_id = 'greeter'",
    )
    .await;
    crash.crash();
    let left: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM tandem.messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        ["\"second\""],
        "the received message is consumed, the other waits"
    );

    let engine = Engine::builder(storage)
        .register(Greeter {
            gate: Arc::new(Semaphore::new(100)),
        })
        .launch()
        .await
        .unwrap();
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
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the second message was not consumed by the replay");

    // A receive that times out returns None.
    let timed_out = engine.start::<Greeter>(0).await.unwrap();
    // (The remaining "second" message is addressed to the first workflow.)
    assert_eq!(timed_out.result().await.unwrap(), None);

    let err = sqlx::query("SELECT tandem.send('nobody', 'greeting', '1')")
        .execute(&pool)
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

impl Workflow<PgStorage> for Publisher {
    const NAME: &'static str = "publisher";
    type Input = ();
    type Output = ();

    async fn run(&self, ctx: &mut WorkflowContext<PgStorage>, (): ()) -> Result<(), WorkflowError> {
        ctx.set_event("progress", &50).await?;
        let _: Option<()> = ctx.recv("finish", Duration::from_secs(600)).await?;
        ctx.set_event("progress", &100).await?;
        Ok(())
    }
}

#[tokio::test]
async fn events_are_readable_from_outside_and_cancel_resume_continue_from_the_checkpoint() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
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

impl Workflow<PgStorage> for Parent {
    const NAME: &'static str = "parent";
    type Input = ();
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        (): (),
    ) -> Result<Option<String>, WorkflowError> {
        let child = ctx.start_child::<Greeter>(60_000).await?;
        self.gate.acquire().await?.forget();
        ctx.child_result(&child).await
    }
}

#[tokio::test]
async fn a_child_started_before_a_crash_exists_exactly_once() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    let crash = CrashEnv::default();
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(Parent {
            gate: Arc::new(Semaphore::new(0)),
        })
        .register(Greeter {
            gate: Arc::new(Semaphore::new(0)),
        })
        .launch()
        .await
        .unwrap();
    engine.start_with_id::<Parent>("parent", ()).await.unwrap();
    wait_for(
        &pool,
        "SELECT count(*) = 1 FROM tandem.steps WHERE workflow_id = 'parent'",
    )
    .await;
    crash.crash();

    let engine = Engine::builder(storage)
        .register(Parent {
            gate: Arc::new(Semaphore::new(100)),
        })
        .register(Greeter {
            gate: Arc::new(Semaphore::new(100)),
        })
        .launch()
        .await
        .unwrap();
    let children: Vec<String> =
        sqlx::query_scalar("SELECT id FROM tandem.workflows WHERE parent_id = 'parent'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(children, ["parent-child-0"]);
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
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.workflows")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "one parent, one child");

    // Cancelling a parent cascades to its unfinished child.
    let parent = engine
        .start_with_id::<Parent>("parent-2", ())
        .await
        .unwrap();
    wait_for(
        &pool,
        "SELECT count(*) = 1 FROM tandem.workflows WHERE parent_id = 'parent-2'",
    )
    .await;
    assert_eq!(engine.cancel("parent-2").await.unwrap().len(), 2);
    assert!(matches!(
        parent.result().await,
        Err(Error::WorkflowCancelled { .. })
    ));
    let child_status: String =
        sqlx::query_scalar("SELECT status FROM tandem.workflows WHERE parent_id = 'parent-2'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(child_status, "CANCELLED");
    engine.shutdown().await;
}

/// Three plain steps that count their executions.
struct Counted {
    calls: Arc<[AtomicUsize; 3]>,
}

impl Workflow<PgStorage> for Counted {
    const NAME: &'static str = "counted";
    type Input = i64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        x: i64,
    ) -> Result<i64, WorkflowError> {
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

#[tokio::test]
async fn fork_replays_steps_before_n_and_list_filters() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
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
#[tokio::test]
async fn forking_a_workflow_again_starts_another_run() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
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
    let env: Arc<dyn tandem::Env> = Arc::new(ManualEnv::new(now_ms()));
    let first = tandem::Admin::with_env(engine.storage().clone(), env.clone())
        .fork("orig", 2)
        .await
        .unwrap();
    let second = tandem::Admin::with_env(engine.storage().clone(), env)
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

#[tokio::test]
async fn a_workflow_past_its_deadline_is_cancelled() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
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
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
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
            && s.contains("workflow_id=traced")
            && s.contains("name=counted")),
        "{spans:#?}"
    );
    for (step_id, name) in [(0, "a"), (1, "b"), (2, "c")] {
        assert!(
            spans.iter().any(|s| s.starts_with("step")
                && s.contains("workflow_id=traced")
                && s.contains(&format!("step_id={step_id}"))
                && s.contains(&format!("name=\"{name}\""))),
            "step {name}: {spans:#?}"
        );
    }
    assert!(
        spans.iter().any(|s| s == "record attempt=1"),
        "attempts are recorded"
    );
}
