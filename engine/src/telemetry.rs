//! The engine's metrics and trace context. Metrics go through the
//! `metrics` facade: nothing is recorded until the application installs a
//! recorder (the dashboard's Prometheus exporter, or any other). Every
//! count is taken after the commit it counts was acknowledged, so a counter
//! never reports work that a crash or a fence undid (the simulator checks
//! this: docs/simulation.md). Spans are `tracing` spans; with the feature
//! `otel`, each run's span is parented to the W3C trace context stored with
//! the workflow (docs/observability.md).

use std::time::Duration;

use crate::error::Error;
use crate::storage::{Status, StepKind, WorkflowRow, check_trace_parent};

/// The trace context to store with a workflow being started or enqueued:
/// `given` (checked), else the current span's ([`current_trace_parent`]).
pub(crate) fn trace_parent_for(given: Option<String>) -> Result<Option<String>, Error> {
    match given {
        Some(value) => match check_trace_parent(&value) {
            Some(reason) => Err(Error::InvalidTraceParent { value, reason }),
            None => Ok(Some(value)),
        },
        None => Ok(current_trace_parent()),
    }
}

/// The current `tracing` span's OpenTelemetry context as a W3C
/// `traceparent` (`00-<trace ID>-<span ID>-<flags>`), to pass to
/// `tandem.enqueue_workflow(..., trace_parent => ...)` from an application
/// transaction. `None` without the feature `otel`, or outside a span that
/// a `tracing-opentelemetry` layer records.
pub fn current_trace_parent() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// The span of one execution of a workflow. A root span (not a child of
/// whatever span claimed or recovered it), continuing the run's stored
/// trace context under the feature `otel`. `outcome` and `replayed_steps`
/// are recorded as the execution goes.
pub(crate) fn run_span(row: &WorkflowRow, executor_id: &str) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "workflow",
        otel.name = format!("workflow {}", row.name),
        workflow.id = %row.id,
        workflow.name = %row.name,
        workflow.epoch = row.owner_epoch,
        executor.id = executor_id,
        replayed_steps = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = row.trace_parent.as_deref() {
        set_remote_parent(&span, parent);
    }
    span
}

/// Parents `span` to a stored `traceparent` (a remote span context).
#[cfg(feature = "otel")]
fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    // Checked when stored; a row written by other means that does not
    // parse is ignored rather than failing the run.
    let mut parts = traceparent.split('-').skip(1);
    let (Some(trace), Some(parent), Some(flags)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(trace), Ok(parent), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(parent),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace,
        parent,
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    );
    if remote.is_valid() {
        // Fails only without an OpenTelemetry layer: nothing to parent then.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// Records how an execution or a step ended on its span: `outcome`, and
/// the OpenTelemetry status `error` for a failure.
pub(crate) fn record_outcome(span: &tracing::Span, outcome: &'static str, failed: bool) {
    span.record("outcome", outcome);
    if failed {
        span.record("otel.status_code", "error");
    }
}

/// Checkpoints committed, by step kind and outcome (`ok` or `error`).
pub const STEPS: &str = "tandem_steps_total";
/// Seconds from a step's first attempt to its committed checkpoint, by kind.
pub const STEP_SECONDS: &str = "tandem_step_duration_seconds";
/// Attempts that failed and were tried again, by reason
/// (`error`: the step's own error under its retry policy; `conflict`: a
/// serialization failure or deadlock; `storage`: the database failed).
pub const RETRIES: &str = "tandem_step_retries_total";
/// Workflows this process finished, by workflow name and status.
pub const WORKFLOWS: &str = "tandem_workflows_total";
/// Workflows claimed from a queue, by queue.
pub const CLAIMS: &str = "tandem_claims_total";
/// Workflows of expired executors sent back to their queues by this
/// process (takeovers), and workflows recovered at launch.
pub const TAKEOVERS: &str = "tandem_takeovers_total";
/// Writes refused because another execution owns the workflow now.
pub const FENCED: &str = "tandem_fenced_writes_total";

/// A step's checkpoint committed.
pub(crate) fn step_committed(kind: StepKind, ok: bool, duration: Duration) {
    if crate::bugs::active(crate::bugs::Bug::MetricsCountBeforeCommit) {
        // Counted where the planted variant counts it: before the commit.
        return;
    }
    step_counted(kind, ok, duration);
}

/// What `step_committed` records (the planted bug records it earlier).
pub(crate) fn step_counted(kind: StepKind, ok: bool, duration: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(STEPS, "kind" => kind.as_str(), "outcome" => outcome).increment(1);
    metrics::histogram!(STEP_SECONDS, "kind" => kind.as_str()).record(duration.as_secs_f64());
}

/// An attempt of a step failed and will be tried again.
pub(crate) fn retried(reason: &'static str) {
    metrics::counter!(RETRIES, "reason" => reason).increment(1);
}

/// A workflow's completion committed.
pub(crate) fn workflow_finished(name: &str, status: Status) {
    metrics::counter!(WORKFLOWS, "workflow" => name.to_owned(), "status" => status.as_str())
        .increment(1);
}

/// A claim committed `n` workflows of `queue`.
pub(crate) fn claimed(queue: &str, n: usize) {
    if n > 0 {
        metrics::counter!(CLAIMS, "queue" => queue.to_owned()).increment(n as u64);
    }
}

/// `n` workflows taken over (`how`: `reclaim` or `recovery`).
pub(crate) fn taken_over(how: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(TAKEOVERS, "how" => how).increment(n);
    }
}

/// A write was fenced.
pub(crate) fn fenced() {
    metrics::counter!(FENCED).increment(1);
}
