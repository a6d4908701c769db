//! Queues and enqueue options: admission control for workflows that wait to
//! be claimed by any executor.

use std::time::Duration;

use crate::storage::{QueueLimits, WorkflowEnqueue};

/// The queue that always exists; workflows started locally belong to it.
pub use crate::storage::DEFAULT_QUEUE;

/// A named queue as this executor runs it.
///
/// `worker_concurrency` bounds how many of the queue's workflows this
/// executor runs at once; `concurrency_global` and `rate_limit` bound the
/// queue across all executors (its claimers are then serialized by a row
/// lock on the queue). Every executor serving a queue should declare the
/// same global limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub(crate) limits: QueueLimits,
    pub(crate) worker_concurrency: usize,
}

impl Queue {
    /// A queue with no global limits and a worker concurrency of 64.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            limits: QueueLimits {
                name: name.into(),
                concurrency_global: None,
                rate_limit: None,
                concurrency_per_key: None,
                retention_ms: None,
            },
            worker_concurrency: 64,
        }
    }

    /// At most `n` of this queue's workflows run on this executor at once.
    pub fn worker_concurrency(mut self, n: usize) -> Self {
        self.worker_concurrency = n.max(1);
        self
    }

    /// At most `n` of this queue's workflows run at once across all
    /// executors. (Workflows started locally into the default queue bypass
    /// admission but are counted.)
    pub fn concurrency_global(mut self, n: u32) -> Self {
        self.limits.concurrency_global = Some(n.max(1));
        self
    }

    /// At most `starts` workflows of this queue start per `period`, across
    /// all executors.
    pub fn rate_limit(mut self, starts: u32, period: Duration) -> Self {
        let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
        self.limits.rate_limit = Some((starts.max(1), period_ms));
        self
    }

    /// At most `n` of this queue's workflows that share a concurrency key
    /// ([`EnqueueOptions::concurrency_key`]) run at once, across all
    /// executors: for example one at a time per customer. Workflows
    /// without a key are not limited by it.
    pub fn concurrency_per_key(mut self, n: u32) -> Self {
        self.limits.concurrency_per_key = Some(n.max(1));
        self
    }

    /// Finished workflows of this queue are deleted once they finished this
    /// long ago (each with its steps, messages, events and child
    /// workflows; a tree goes when its root finished this long ago and none
    /// of it still runs). Overrides [`EngineBuilder::retention`] for this
    /// queue. Default: kept forever. `docs/retention.md`.
    ///
    /// [`EngineBuilder::retention`]: crate::EngineBuilder::retention
    pub fn retention(mut self, keep: Duration) -> Self {
        self.limits.retention_ms = Some(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.limits.name
    }
}

/// Options of an enqueue (the SQL function's optional arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueOptions {
    pub(crate) queue: String,
    pub(crate) workflow_id: Option<String>,
    pub(crate) priority: i32,
    pub(crate) dedup_key: Option<String>,
    pub(crate) delay: Option<Duration>,
    pub(crate) dedup_error: bool,
    pub(crate) concurrency_key: Option<String>,
    pub(crate) debounce: Option<(String, Duration)>,
    pub(crate) trace_parent: Option<String>,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            workflow_id: None,
            priority: 0,
            dedup_key: None,
            delay: None,
            dedup_error: false,
            concurrency_key: None,
            debounce: None,
            trace_parent: None,
        }
    }
}

impl EnqueueOptions {
    /// The storage parameters of an enqueue of `name` with `input` (JSON).
    pub(crate) fn into_params(self, name: &str, input: String) -> WorkflowEnqueue {
        WorkflowEnqueue {
            name: name.to_owned(),
            input,
            queue: self.queue,
            workflow_id: self.workflow_id,
            priority: self.priority,
            dedup_key: self.dedup_key,
            delay_ms: self
                .delay
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            dedup_error: self.dedup_error,
            concurrency_key: self.concurrency_key,
            debounce_max_wait_ms: self
                .debounce
                .as_ref()
                .map(|(_, max)| i64::try_from(max.as_millis()).unwrap_or(i64::MAX)),
            debounce_key: self.debounce.map(|(key, _)| key),
            // The current span's, if none was given.
            trace_parent: self
                .trace_parent
                .or_else(crate::telemetry::current_trace_parent),
        }
    }

    /// Store this W3C `traceparent` with the workflow instead of the
    /// current span's (feature `otel`): every execution of the run
    /// continues that trace. A debounced enqueue replaces the pending
    /// workflow's, as it replaces the input.
    pub fn trace_parent(mut self, traceparent: impl Into<String>) -> Self {
        self.trace_parent = Some(traceparent.into());
        self
    }

    /// Enqueue into `queue` (default: `default`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Use this workflow ID: enqueuing an existing ID returns it and enqueues
    /// nothing.
    pub fn workflow_id(mut self, id: impl Into<String>) -> Self {
        self.workflow_id = Some(id.into());
        self
    }

    /// Lower priorities are claimed first (default 0; -1,000,000 to
    /// 1,000,000).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// At most one unfinished workflow per queue carries this key; enqueuing
    /// another returns the existing workflow's ID.
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Fail with an error on a deduplication conflict instead.
    pub fn dedup_error(mut self) -> Self {
        self.dedup_error = true;
        self
    }

    /// Start no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Count this workflow under `key` (1 to 256 characters) for its
    /// queue's per-key concurrency limit ([`Queue::concurrency_per_key`]):
    /// while that many workflows with the key run, it waits.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Debounce ("run once after the last change"): if the queue holds a
    /// pending (not yet started) workflow of this name enqueued with `key`,
    /// its input becomes this enqueue's and its start moves to `delay` from
    /// now, but never later than `max_wait` after it was first enqueued;
    /// the enqueue returns its ID. Otherwise it enqueues a new workflow that
    /// starts `delay` from now (or `max_wait`, if shorter). Sets the delay
    /// (replacing [`delay`](Self::delay)); excludes
    /// [`workflow_id`](Self::workflow_id) and [`dedup_key`](Self::dedup_key).
    /// Keys are 1 to 256 characters.
    pub fn debounce(mut self, key: impl Into<String>, delay: Duration, max_wait: Duration) -> Self {
        self.delay = Some(delay);
        self.debounce = Some((key.into(), max_wait));
        self
    }
}
