//! The engine's metrics, through the `metrics` facade: nothing is recorded
//! until the application installs a recorder (the dashboard's Prometheus
//! exporter, or any other). Every count is taken after the commit it
//! counts was acknowledged, so a counter never reports work that a crash or
//! a fence undid (the simulator checks this: docs/simulation.md).

use std::time::Duration;

use crate::storage::{Status, StepKind};

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
