//! The state one simulated run shares between its nodes and the supervisor:
//! the database, the fault injector, the trace and the external service's
//! call log. It lives outside every node, so it survives their crashes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::rand::Rng;
use madsim::time::Instant;
use tandem::MemStorage;

use crate::faults::{Faults, Site};
use crate::workload::Workload;

/// One call the simulated external service received.
#[derive(Debug, Clone)]
pub struct ServiceCall {
    /// Workflow and step.
    pub workflow_id: String,
    /// The step's position.
    pub step_id: i32,
    /// Which node incarnation called.
    pub node: String,
    /// Whether the call succeeded (transient failures are retried).
    pub ok: bool,
    /// Whether the step's checkpoint was already committed at that moment.
    pub checkpoint_existed: bool,
}

/// Mutable bookkeeping of a run.
#[derive(Default)]
pub struct State {
    /// Restarts per node name (the incarnation number).
    pub incarnations: BTreeMap<String, u32>,
    /// Nodes killed and when the supervisor restarts them.
    pub dead: BTreeMap<String, Instant>,
    /// Workflows whose start some client saw acknowledged.
    pub acked: BTreeSet<String>,
    /// The step IDs each (node incarnation, workflow, epoch) last loaded:
    /// the history of that execution when it starts there. By epoch: an
    /// incarnation paused past its lease can hold a recovered execution
    /// that has not started yet when it claims the workflow again (the
    /// schedules generation's first long run, seed 45040170).
    pub loads: BTreeMap<(String, String, i64), BTreeSet<i32>>,
    /// The epoch each (node incarnation, workflow) was last granted (by a
    /// recovery or a claim): the execution a following `steps_load` is for.
    pub granted: BTreeMap<(String, String), i64>,
    /// The external service's log.
    pub calls: Vec<ServiceCall>,
    /// Transient failures the service may still inject per (workflow, step):
    /// bounded so that a retried step always succeeds in the end.
    pub failures_used: BTreeMap<(String, i32), u32>,
    /// A unique number per transactional attempt, for ledger keys.
    pub ledger_seq: u64,
    /// Invariant violations found during the run.
    pub violations: Vec<String>,
    /// The first terminal outcome seen per workflow.
    pub terminal: BTreeMap<String, (String, Option<String>)>,
    /// The application client has finished all its orders.
    pub app_done: bool,
    /// The message client has sent every message.
    pub messages_done: bool,
    /// Nodes killed for good (their work must be reclaimed by others).
    pub permanent: BTreeSet<String>,
    /// Paused nodes and when the supervisor resumes them.
    pub paused: BTreeMap<String, Instant>,
    /// The admin node has resumed every cancelled workflow after faults
    /// stopped.
    pub admin_done: bool,
    /// The event values the admin node read, in order.
    pub event_reads: Vec<crate::workload::EventRead>,
    /// The forks the admin node made.
    pub forks: Vec<crate::workload::Fork>,
    /// What the admin node read through `Admin`.
    pub admin_reads: Vec<crate::workload::AdminRead>,
    /// Every fenced write that committed (acknowledged), in commit order.
    pub writes: Vec<crate::storage::FencedWrite>,
    /// Every enqueue the app client saw deduplicated.
    pub dedup_answers: Vec<crate::admission::DedupAnswer>,
    /// Every claim statement of a limited queue that returned rows.
    pub claims_seen: Vec<crate::admission::ClaimSeen>,
    /// When each transaction that may hold row locks on queued workflows
    /// was open (a cancel, a reclaim, a fenced write...).
    pub lock_windows: Vec<crate::admission::LockWindow>,
    /// The code each executor node's current incarnation runs.
    pub codes: BTreeMap<String, crate::versions::Code>,
    /// The code each executor node incarnation (`name#n`) ran.
    pub label_codes: BTreeMap<String, crate::versions::Code>,
    /// The deploy has completed: every later incarnation runs `v2`.
    pub deployed: bool,
    /// What each debounced enqueue got.
    pub debounce_seen: Vec<crate::debounce::DebounceSeen>,
    /// The `debouncer` node made all its calls.
    pub debounce_done: bool,
    /// Whether the pauser (`crate::schedules::pauser`) has resumed the
    /// schedule (or had nothing to do).
    pub pauser_done: bool,
}

/// Everything a run shares.
pub struct World {
    /// The run's seed.
    pub seed: u64,
    /// The one database every executor uses.
    pub mem: MemStorage,

    /// The fault injector.
    pub faults: Faults,
    /// What runs: accounts, workflows, nodes.
    pub workload: Workload,
    /// Offset of the simulated wall clock (clock jumps), in milliseconds.
    pub clock_offset_ms: AtomicI64,
    /// Queue-claim COMMITs in flight whose acknowledgement must not be
    /// lost (see `Options::claim_lost_ack`).
    pub claim_commits: AtomicU32,
    /// `Options::claim_lost_ack`.
    pub claim_lost_ack: AtomicBool,
    start: Instant,
    trace: Arc<Mutex<Vec<String>>>,
    trace_live: bool,
    state: Mutex<State>,
}

impl World {
    /// A world; call inside the madsim runtime (it reads the virtual clock).
    pub fn new(
        seed: u64,
        faults: Faults,
        workload: Workload,
        trace: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        Self {
            seed,
            mem: MemStorage::new(),

            faults,
            workload,
            clock_offset_ms: AtomicI64::new(0),
            claim_commits: AtomicU32::new(0),
            claim_lost_ack: AtomicBool::new(false),
            start: Instant::now(),
            trace,
            trace_live: std::env::var_os("SIM_TRACE_LIVE").is_some(),
            state: Mutex::new(State::default()),
        }
    }

    /// The bookkeeping, locked (never across an await).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Virtual milliseconds since the run started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Appends a line to the trace, stamped with virtual time.
    pub fn log(&self, line: impl AsRef<str>) {
        let us = self.elapsed().as_micros();
        let line = format!("{:>5}.{:03}ms {}", us / 1000, us % 1000, line.as_ref());
        // `SIM_TRACE_LIVE=1`: also print each line as it happens, to see
        // where a run that never ends is stuck.
        if self.trace_live {
            eprintln!("{line}");
        }
        self.trace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// Records an invariant violation (and traces it).
    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        self.log(format!("VIOLATION {what}"));
        self.state().violations.push(what);
    }

    /// Visits a fault site, tracing it if it fires.
    pub fn fire(&self, site: Site, context: &str) -> Option<u32> {
        let arg = self.faults.fire(site);
        if arg.is_some() {
            self.log(format!("fault {} {context}", site.name()));
        }
        arg
    }

    /// Marks `node` dead; the supervisor restarts it after a short delay.
    pub fn mark_dead(&self, node: &str) {
        let delay = Duration::from_millis(madsim::rand::thread_rng().gen_range(1..500));
        self.state()
            .dead
            .insert(node.to_owned(), Instant::now() + delay);
    }

    /// A crash point: if `site` fires, kills the node this code runs on
    /// (named `node`) and never returns. The kill takes effect when the
    /// task next yields, so the point awaits forever after it.
    pub async fn crash_point(&self, node: &str, site: Site, context: &str) {
        if self.fire(site, &format!("{node} {context}")).is_some() {
            self.mark_dead(node);
            madsim::runtime::Handle::current().kill(node);
            std::future::pending::<()>().await;
        }
    }

    /// Simulated network and database latency: an await point at which
    /// other tasks run and at which a kill takes effect.
    pub async fn latency(&self) {
        let us = madsim::rand::thread_rng().gen_range(100..2000);
        madsim::time::sleep(Duration::from_micros(us)).await;
    }

    /// The engine's clock (virtual time plus clock jumps), in Unix
    /// milliseconds: what `MadsimEnv::now` returns.
    pub fn now_ms(&self) -> i64 {
        (crate::env::EPOCH_OFFSET + self.elapsed()).as_millis() as i64 + self.clock_offset()
    }

    /// The offset the clock has jumped by.
    pub fn clock_offset(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }
}
