//! Fault sites, FoundationDB-style two-level activation, and per-site counters.
//!
//! Every fault the simulator can inject has a [`Site`]. In a random run each
//! site is first *enabled* for the whole run with some probability, and an
//! enabled site then *fires* at each visit with a per-run probability drawn
//! from the site's range. Two levels matter: with one global probability a
//! run full of lost acknowledgements never also has a quiet stretch in which
//! a rare crash point is reached; with per-run activation, some runs hammer
//! one site while others leave it alone. A [`Plan::Schedule`] instead fires
//! exactly the listed visits, which is what proptest generates and shrinks.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A place where the simulator may inject a fault. The names appear in
/// traces and in the coverage table of `docs/simulation.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// Kill the executor right after a plain step's external call returned,
    /// before its checkpoint is written.
    CrashAfterPlainEffect,
    /// Kill the executor just before a COMMIT (the transaction rolls back).
    CrashBeforeCommit,
    /// Kill the executor after a transactional step's COMMIT succeeded,
    /// before the engine learns it.
    CrashAfterStepCommit,
    /// Kill the executor after any other COMMIT succeeded (start,
    /// plain-step checkpoint, completion, recovery).
    CrashAfterCommit,
    /// The supervisor kills a random executor at a random moment (any await
    /// point: every storage call and app statement is one).
    CrashRandom,
    /// COMMIT happens but the client is told the connection dropped.
    LostAck,
    /// Connecting (BEGIN) fails.
    ConnLostBegin,
    /// The connection drops before a statement: the transaction rolls back.
    ConnLostStatement,
    /// The connection drops at COMMIT, before it happens.
    ConnLostCommit,
    /// A statement fails with a serialization failure (40001).
    SerializationStatement,
    /// COMMIT fails with a serialization failure.
    SerializationCommit,
    /// A second engine with the same executor ID launches while the first
    /// still runs: the first keeps executing as a zombie.
    Zombie,
    /// The wall clock jumps forward or backward by up to an hour.
    ClockJump,
    /// The external service fails an attempt (the plain step retries).
    ServiceError,
    /// A restarted client starts an acknowledged workflow again.
    DuplicateStart,
    /// A workflow is also started through another executor's engine.
    CrossStart,
    /// The supervisor kills an executor for good: other executors must
    /// reclaim its workflows once its lease expires.
    CrashPermanent,
    /// The supervisor pauses an executor (often past its lease) and resumes
    /// it later: a zombie whose writes must be fenced.
    Pause,
    /// The admin node cancels a workflow (and its unfinished descendants)
    /// through `Admin::cancel`.
    AdminCancel,
    /// The admin node resumes every cancelled workflow through
    /// `Admin::resume`.
    AdminResume,
    /// An executor shuts down gracefully (`Engine::shutdown`), exits and is
    /// restarted later.
    Shutdown,
    /// The admin node forks a finished workflow from a random step through
    /// `Admin::fork`.
    AdminFork,
}

impl Site {
    /// Every site.
    pub const ALL: [Site; 22] = [
        Site::CrashAfterPlainEffect,
        Site::CrashBeforeCommit,
        Site::CrashAfterStepCommit,
        Site::CrashAfterCommit,
        Site::CrashRandom,
        Site::LostAck,
        Site::ConnLostBegin,
        Site::ConnLostStatement,
        Site::ConnLostCommit,
        Site::SerializationStatement,
        Site::SerializationCommit,
        Site::Zombie,
        Site::ClockJump,
        Site::ServiceError,
        Site::DuplicateStart,
        Site::CrossStart,
        Site::CrashPermanent,
        Site::Pause,
        Site::AdminCancel,
        Site::AdminResume,
        Site::Shutdown,
        Site::AdminFork,
    ];

    /// The sites of the first generations, enabled from the original
    /// stream: sites added later draw from a stream of their own, so that
    /// adding one leaves every older seed's faults as they were.
    const ORIGINAL: usize = 18;

    /// The sites a workload of `generation` visits.
    pub fn of(generation: crate::Generation) -> &'static [Site] {
        if generation >= crate::Generation::Steering {
            &Site::ALL
        } else {
            &Site::ALL[..Site::ORIGINAL]
        }
    }

    /// The name used in traces and docs.
    pub fn name(self) -> &'static str {
        match self {
            Site::CrashAfterPlainEffect => "crash.after_plain_effect",
            Site::CrashBeforeCommit => "crash.before_commit",
            Site::CrashAfterStepCommit => "crash.after_step_commit",
            Site::CrashAfterCommit => "crash.after_other_commit",
            Site::CrashRandom => "crash.random",
            Site::LostAck => "storage.lost_ack",
            Site::ConnLostBegin => "storage.conn_lost.begin",
            Site::ConnLostStatement => "storage.conn_lost.statement",
            Site::ConnLostCommit => "storage.conn_lost.commit",
            Site::SerializationStatement => "storage.serialization.statement",
            Site::SerializationCommit => "storage.serialization.commit",
            Site::Zombie => "zombie.same_executor_id",
            Site::ClockJump => "clock.jump",
            Site::ServiceError => "service.transient_error",
            Site::DuplicateStart => "client.duplicate_start",
            Site::CrossStart => "client.cross_executor_start",
            Site::CrashPermanent => "crash.permanent",
            Site::Pause => "pause.past_lease",
            Site::AdminCancel => "admin.cancel",
            Site::AdminResume => "admin.resume",
            Site::Shutdown => "shutdown.graceful",
            Site::AdminFork => "admin.fork",
        }
    }

    /// The range of the per-visit firing probability, chosen from how often
    /// the site is visited in a run: statements are visited hundreds of
    /// times, the supervisor's tick about a hundred, a start a few times.
    fn probability_range(self) -> (f64, f64) {
        match self {
            Site::ConnLostStatement | Site::SerializationStatement => (0.002, 0.03),
            Site::ConnLostBegin | Site::LostAck | Site::ConnLostCommit => (0.005, 0.06),
            Site::SerializationCommit | Site::CrashBeforeCommit | Site::CrashAfterCommit => {
                (0.005, 0.05)
            }
            Site::CrashAfterStepCommit | Site::CrashAfterPlainEffect => (0.02, 0.15),
            Site::CrashRandom | Site::Zombie | Site::ClockJump => (0.01, 0.05),
            Site::CrashPermanent | Site::Pause => (0.01, 0.05),
            // Visited at every admin tick (about every 30 ms of the chaos).
            Site::AdminCancel | Site::AdminResume | Site::AdminFork => (0.05, 0.2),
            // Visited by every executor about every 35 ms.
            Site::Shutdown => (0.02, 0.08),
            Site::ServiceError => (0.05, 0.3),
            Site::DuplicateStart | Site::CrossStart => (0.1, 0.5),
        }
    }
}

/// One scheduled fault: fire `site` at its `nth` visit (from 1); `arg`
/// picks the victim or the size where the site needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// Where.
    pub site: Site,
    /// At which visit of the site.
    pub nth: u32,
    /// Which node, how far to jump the clock, ...
    pub arg: u32,
}

/// How a run chooses its faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Two-level random activation drawn from the seed.
    Random,
    /// Exactly these faults (proptest's input).
    Schedule(Vec<Scheduled>),
    /// No faults at all (the fault-free reference run).
    Off,
}

/// The fault injector of one run. Decisions come from a ChaCha8 stream of
/// the run's seed, consumed in the (deterministic) order of visits.
pub struct Faults {
    inner: Mutex<Inner>,
}

struct Inner {
    rng: ChaCha8Rng,
    plan: Plan,
    /// Enabled sites and their firing probability (random plans).
    enabled: BTreeMap<Site, f64>,
    visits: BTreeMap<Site, u32>,
    fired: BTreeMap<Site, u64>,
    /// Counts of things observed, not injected (natural deadlocks, ...).
    observed: BTreeMap<&'static str, u64>,
    /// Operations performed, for the coverage table: storage operations by
    /// their trait name, context and admin operations as `ctx.*`,
    /// `admin.*`, `engine.*`.
    ops: BTreeMap<&'static str, u64>,
    stopped: bool,
}

impl Faults {
    /// The injector for `seed` under `plan`.
    pub fn new(seed: u64, plan: Plan) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0fa0_17fa_0175);
        let mut enabled = BTreeMap::new();
        if plan == Plan::Random {
            let mut later = ChaCha8Rng::seed_from_u64(seed ^ 0x0fa0_17fa_0176);
            for (i, site) in Site::ALL.into_iter().enumerate() {
                let rng = if i < Site::ORIGINAL {
                    &mut rng
                } else {
                    &mut later
                };
                // First level: is the site on at all in this run?
                if rng.gen_bool(0.6) {
                    let (lo, hi) = site.probability_range();
                    enabled.insert(site, rng.gen_range(lo..hi));
                }
            }
        }
        Self {
            inner: Mutex::new(Inner {
                rng,
                plan,
                enabled,
                visits: BTreeMap::new(),
                fired: BTreeMap::new(),
                observed: BTreeMap::new(),
                ops: BTreeMap::new(),
                stopped: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Visits `site`: `Some(arg)` if a fault fires here now.
    pub fn fire(&self, site: Site) -> Option<u32> {
        let mut inner = self.lock();
        if inner.stopped {
            return None;
        }
        let visit = {
            let v = inner.visits.entry(site).or_insert(0);
            *v += 1;
            *v
        };
        let arg = match &inner.plan {
            Plan::Off => None,
            Plan::Random => {
                let p = inner.enabled.get(&site).copied();
                // Second level: does the enabled site fire at this visit?
                match p {
                    Some(p) if inner.rng.gen_bool(p) => Some(inner.rng.r#gen::<u32>()),
                    _ => None,
                }
            }
            Plan::Schedule(events) => events
                .iter()
                .find(|e| e.site == site && e.nth == visit)
                .map(|e| e.arg),
        };
        if arg.is_some() {
            *inner.fired.entry(site).or_insert(0) += 1;
        }
        arg
    }

    /// Counts an observed (not injected) event.
    pub fn observe(&self, what: &'static str) {
        *self.lock().observed.entry(what).or_insert(0) += 1;
    }

    /// Counts an operation (see [`Faults::ops`]); faults or not.
    pub fn count(&self, op: &'static str) {
        *self.lock().ops.entry(op).or_insert(0) += 1;
    }

    /// The operation counters.
    pub fn ops(&self) -> BTreeMap<&'static str, u64> {
        self.lock().ops.clone()
    }

    /// Stops all injection (the liveness phase).
    pub fn stop(&self) {
        self.lock().stopped = true;
    }

    /// Whether injection has stopped.
    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// How often each site fired.
    pub fn fired(&self) -> BTreeMap<Site, u64> {
        self.lock().fired.clone()
    }

    /// The observed counters.
    pub fn observed(&self) -> BTreeMap<&'static str, u64> {
        self.lock().observed.clone()
    }

    /// The sites enabled in this run (random plans) with their probability.
    pub fn enabled(&self) -> BTreeMap<Site, f64> {
        self.lock().enabled.clone()
    }
}
