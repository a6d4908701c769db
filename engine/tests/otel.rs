//! OpenTelemetry (feature `otel`): a run's spans continue the trace of
//! whoever started or enqueued it, through a crash and a recovery on
//! another executor, exported through `tracing-opentelemetry` to the SDK's
//! in-memory exporter. A test binary of its own: the exporter is behind the
//! process's one global subscriber (a thread-local one misses spans whose
//! callsite interest another thread cached), which the `it` binary already
//! gives to its span log.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, Status as OtelStatus, TraceContextExt as _, TracerProvider as _,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tandem::storage::Storage;
use tandem::testing::{CrashEnv, PgCluster};
use tandem::{
    Engine, EnqueueOptions, Error, MemStorage, PgStorage, RetryPolicy, StartOptions, Workflow,
    WorkflowContext, WorkflowError,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The W3C specification's example context, as a remote caller would send it.
const REMOTE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The process-wide exporter (and the provider that feeds it).
fn exporter() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static EXPORTER: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tandem-tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber");
        (provider, exporter)
    })
}

/// The finished spans of one trace (other tests' traces run alongside).
fn spans_of(trace: &SpanContext) -> Vec<SpanData> {
    let (provider, exporter) = exporter();
    provider.force_flush().expect("flush");
    exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace.trace_id())
        .collect()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Its `traceparent` (what the engine stores for a run started in it).
fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

#[allow(clippy::disallowed_methods)] // a test bounds its wait in real time
async fn within_a_minute<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("done within a minute")
}

#[allow(clippy::disallowed_methods)] // a test waits on real time
async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A workflow whose steps show each span shape: a first step, a step that
/// fails once and is retried, a step that fails for good (recorded, and
/// the body goes on), a step that waits at a gate (where the first executor
/// crashes), then a child. Returns the trace context its run carries.
struct Traced {
    /// Set when an execution reaches the gate: every earlier step's span
    /// has ended by then.
    reached: Arc<AtomicBool>,
    gate: Arc<AtomicBool>,
    flaky: Arc<AtomicU32>,
}

impl<S: Storage> Workflow<S> for Traced {
    const NAME: &'static str = "traced";
    type Input = u32;
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        n: u32,
    ) -> Result<Option<String>, WorkflowError> {
        ctx.step("first", || async { Ok::<_, Infallible>(1) })
            .await?;
        let policy = RetryPolicy {
            backoff_initial: Duration::from_millis(1),
            ..RetryPolicy::exponential(3)
        };
        ctx.step_with("flaky", policy, || async {
            match self.flaky.fetch_add(1, Ordering::SeqCst) {
                0 => Err("the first attempt fails"),
                _ => Ok(2),
            }
        })
        .await?;
        let doomed = ctx
            .step("doomed", || async { Err::<u32, _>("always fails") })
            .await;
        assert!(doomed.is_err());
        ctx.step("gate", || async {
            self.reached.store(true, Ordering::SeqCst);
            while !self.gate.load(Ordering::SeqCst) {
                pause(5).await;
            }
            Ok::<_, Infallible>(3)
        })
        .await?;
        let child = ctx.start_child::<Leaf>(n).await?;
        let _: Option<String> = ctx.child_result(&child).await?;
        Ok(ctx.trace_parent().map(str::to_owned))
    }
}

/// A one-step workflow that returns the trace context its run carries.
struct Leaf;

impl<S: Storage> Workflow<S> for Leaf {
    const NAME: &'static str = "leaf";
    type Input = u32;
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        n: u32,
    ) -> Result<Option<String>, WorkflowError> {
        ctx.step("leaf", || async move { Ok::<_, Infallible>(n) })
            .await?;
        Ok(ctx.trace_parent().map(str::to_owned))
    }
}

async fn pg() -> PgStorage {
    let url = PgCluster::shared()
        .await
        .expect("start the test PostgreSQL server")
        .create_database()
        .await
        .expect("create a test database");
    PgStorage::connect(&url).await.expect("connect")
}

#[tokio::test]
async fn pg_a_run_and_its_recovery_elsewhere_continue_the_callers_trace() {
    a_run_and_its_recovery_elsewhere_continue_the_callers_trace(pg().await).await;
}

#[tokio::test]
async fn mem_a_run_and_its_recovery_elsewhere_continue_the_callers_trace() {
    a_run_and_its_recovery_elsewhere_continue_the_callers_trace(MemStorage::new()).await;
}

async fn a_run_and_its_recovery_elsewhere_continue_the_callers_trace<S: Storage>(storage: S) {
    exporter();
    let gate = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(AtomicBool::new(false));
    let flaky = Arc::new(AtomicU32::new(0));
    let crash = CrashEnv::default();
    let first = Engine::builder(storage.clone())
        .executor_id("first")
        .env(crash.clone())
        .lease(Duration::from_millis(300))
        .register(Traced {
            reached: reached.clone(),
            gate: gate.clone(),
            flaky: flaky.clone(),
        })
        .register(Leaf)
        .launch()
        .await
        .unwrap();

    // The caller: a request handler's span, in which it starts the run.
    let caller = tracing::info_span!("caller");
    let caller_cx = caller.context().span().span_context().clone();
    assert!(
        caller_cx.is_valid(),
        "the OpenTelemetry layer records spans"
    );
    first
        .start_with::<Traced>(7, StartOptions::new().workflow_id("traced-1"))
        .instrument(caller.clone())
        .await
        .unwrap();
    // It runs to the gate on the first executor, which then crashes.
    for _ in 0..6000 {
        if reached.load(Ordering::SeqCst) {
            break;
        }
        pause(5).await;
    }
    assert!(
        reached.load(Ordering::SeqCst),
        "the first executor reached the gate"
    );
    crash.crash();
    drop(first);
    gate.store(true, Ordering::SeqCst);

    // Another executor takes it over once the first one's lease expires.
    let second = Engine::builder(storage.clone())
        .executor_id("second")
        .register(Traced {
            reached: reached.clone(),
            gate: gate.clone(),
            flaky: flaky.clone(),
        })
        .register(Leaf)
        .launch()
        .await
        .unwrap();
    let carried = within_a_minute(second.handle::<Option<String>>("traced-1").result())
        .await
        .unwrap();
    let child: Option<String> = second.handle("traced-1-child-4").result().await.unwrap();
    second.shutdown().await;

    // What the run carries, and stores, is the caller's context.
    assert_eq!(carried.as_deref(), Some(traceparent(&caller_cx).as_str()));
    let detail = second
        .admin()
        .get_workflow("traced-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.workflow.row.trace_parent, carried);

    let spans = spans_of(&caller_cx);
    let runs = named(&spans, "workflow traced");
    let on = |executor: &str| {
        runs.iter()
            .find(|s| attr(s, "executor.id").as_deref() == Some(executor))
            .unwrap_or_else(|| panic!("no run span on {executor}: {spans:#?}"))
    };
    let (run_first, run_second) = (on("first"), on("second"));
    for run in [run_first, run_second] {
        assert_eq!(
            run.parent_span_id,
            caller_cx.span_id(),
            "each execution is a child of the caller's span: {run:#?}"
        );
        assert_eq!(attr(run, "workflow.id").as_deref(), Some("traced-1"));
        assert_eq!(attr(run, "workflow.name").as_deref(), Some("traced"));
    }
    assert_eq!(attr(run_first, "workflow.epoch").as_deref(), Some("1"));
    assert!(
        attr(run_second, "workflow.epoch")
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 1
    );
    assert_eq!(attr(run_second, "outcome").as_deref(), Some("success"));
    assert_eq!(attr(run_second, "replayed_steps").as_deref(), Some("3"));

    let step = |name: &str, run: &SpanData| {
        let found: Vec<&SpanData> = named(&spans, &format!("step {name}"))
            .into_iter()
            .filter(|s| s.parent_span_id == run.span_context.span_id())
            .collect();
        assert_eq!(found.len(), 1, "step {name} under {run:#?}: {spans:#?}");
        found[0]
    };
    let flaky_span = step("flaky", run_first);
    assert_eq!(attr(flaky_span, "step.attempts").as_deref(), Some("2"));
    assert_eq!(attr(flaky_span, "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(flaky_span, "step.kind").as_deref(), Some("step"));
    assert_eq!(attr(flaky_span, "step.id").as_deref(), Some("1"));
    let doomed = step("doomed", run_first);
    assert_eq!(attr(doomed, "outcome").as_deref(), Some("error"));
    assert!(
        matches!(doomed.status, OtelStatus::Error { .. }),
        "{doomed:#?}"
    );
    assert_eq!(
        attr(step("first", run_first), "outcome").as_deref(),
        Some("ok")
    );
    // The recovered execution replays the recorded steps (no spans) and
    // runs the rest.
    assert_eq!(
        attr(step("gate", run_second), "outcome").as_deref(),
        Some("ok")
    );
    assert!(
        named(&spans, "step first")
            .iter()
            .all(|s| s.parent_span_id != run_second.span_context.span_id()),
        "a replayed step has no span"
    );

    // The child continues the trace from the execution that started it.
    let leaf = named(&spans, "workflow leaf");
    assert_eq!(leaf.len(), 1, "{spans:#?}");
    assert_eq!(leaf[0].parent_span_id, run_second.span_context.span_id());
    let expected = format!(
        "00-{}-{}-01",
        caller_cx.trace_id(),
        run_second.span_context.span_id()
    );
    assert_eq!(child.as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn enqueues_from_sql_and_rust_carry_the_given_trace_context_and_bad_ones_are_refused() {
    exporter();
    let storage = pg().await;
    let engine = Engine::builder(storage.clone())
        .executor_id("worker")
        .register(Leaf)
        .launch()
        .await
        .unwrap();
    let pool = storage.pool().clone();

    // From an application transaction, with a caller's context.
    let id: String = sqlx::query_scalar(
        "SELECT tandem.enqueue_workflow('leaf', '5'::jsonb, trace_parent => $1)",
    )
    .bind(REMOTE)
    .fetch_one(&pool)
    .await
    .unwrap();
    let carried: Option<String> = engine.handle(id).result().await.unwrap();
    assert_eq!(carried.as_deref(), Some(REMOTE));
    let remote = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    let spans = spans_of(&remote);
    let run = named(&spans, "workflow leaf");
    assert_eq!(run.len(), 1, "{spans:#?}");
    assert_eq!(run[0].parent_span_id, remote.span_id());
    assert!(run[0].parent_span_is_remote);
    assert_eq!(
        named(&spans, "step leaf")[0].parent_span_id,
        run[0].span_context.span_id()
    );

    // From Rust, inside a span: its context, without being told.
    let caller = tracing::info_span!("enqueuer");
    let caller_cx = caller.context().span().span_context().clone();
    let handle = engine
        .enqueue::<Leaf>(6, EnqueueOptions::default())
        .instrument(caller.clone())
        .await
        .unwrap();
    assert_eq!(
        handle.result().await.unwrap().as_deref(),
        Some(traceparent(&caller_cx).as_str())
    );
    assert_eq!(
        named(&spans_of(&caller_cx), "workflow leaf")[0].parent_span_id,
        caller_cx.span_id()
    );

    // Malformed contexts: a clear error, and nothing written.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.workflows")
        .fetch_one(&pool)
        .await
        .unwrap();
    for (bad, message) in [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "must be a W3C traceparent",
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "must be a W3C traceparent",
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "all-zero",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "all-zero",
        ),
    ] {
        let e = sqlx::query_scalar::<_, String>(
            "SELECT tandem.enqueue_workflow('leaf', '5'::jsonb, trace_parent => $1)",
        )
        .bind(bad)
        .fetch_one(&pool)
        .await
        .unwrap_err();
        let db = e.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("22023"), "{bad}: {e}");
        assert!(db.message().contains(message), "{bad}: {e}");
        let e = engine
            .enqueue::<Leaf>(5, EnqueueOptions::default().trace_parent(bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted by enqueue"));
        assert!(e.to_string().contains(message), "{bad}: {e}");
        let e = engine
            .start_with::<Leaf>(5, StartOptions::new().trace_parent(bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted by start"));
        assert!(matches!(e, Error::InvalidTraceParent { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(message), "{bad}: {e}");
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.workflows")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, before, "a refused start or enqueue writes nothing");
    engine.shutdown().await;
}
