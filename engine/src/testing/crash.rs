//! [`CrashTest`]: systematic fault injection for a user's own workflows, on
//! real PostgreSQL (or the memory model).
//!
//! A fault-free reference run finds the scenario's durable points: each
//! commit that records progress (a start, a step, a completion, a message,
//! an event, a claim) and each checkpoint statement inside a transactional
//! step. Then one schedule per fault at each point runs in a fresh database
//! cloned from a template: the whole engine crashing just before or just
//! after the commit, the commit's acknowledgement lost, the connection lost
//! or a serialization failure inside the transactional step, and a second
//! executor taking the workflow over while the first is paused just before
//! a checkpoint (a zombie). After each, an engine recovers everything to
//! completion, every finished workflow is replayed from its history
//! ([`Engine::replay`]), and the user's check runs on their own tables.
//!
//! The faults are injected by an [`Interceptor`] inside the backend, so the
//! user's workflows (written against `PgStorage`) run unchanged.

// The harness is a test driver, not engine code: it runs on the real
// runtime and the real clock because PostgreSQL's leases expire on the
// server's clock, and it never runs inside the simulator.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use rand_chacha::ChaCha8Rng;

use crate::env::{BoxFuture, Env, TokioEnv, unix_ms};
use crate::storage::intercept::{Interceptor, Phase, Point, Verdict, VerdictFuture};
use crate::storage::{Status, Storage, WorkflowFilter};
use crate::{Admin, Engine, EngineBuilder, MemStorage};

/// What the scenario's methods return.
pub type TestFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The user's side of a [`CrashTest`]: their application's setup, their
/// engine, what the application does, and what must hold afterwards.
///
/// `run` is interrupted at an arbitrary point when a schedule crashes the
/// engine, and it is not resumed: `check` must hold for whatever part of
/// the scenario had started (for example "each order whose workflow exists
/// has exactly one email row", "money is conserved").
pub trait CrashScenario<S: Storage>: Send + Sync {
    /// Creates the application's tables and rows, once, in the template
    /// every schedule's database is cloned from (on the memory backend, in
    /// each schedule's fresh database). Default: nothing.
    fn setup<'a>(&'a self, storage: &'a S) -> TestFuture<'a> {
        let _ = storage;
        Box::pin(async { Ok(()) })
    }

    /// The user's engine: their registered workflows and queues. The harness
    /// sets the environment, the executor ID, the lease and the poll
    /// interval on it.
    fn engine(&self, storage: S) -> EngineBuilder<S>;

    /// What the application does: start workflows, run application
    /// transactions that call `tandem.enqueue_workflow`, send messages. It
    /// may wait for results.
    fn run<'a>(&'a self, engine: &'a Engine<S>) -> TestFuture<'a>;

    /// What must hold once every workflow finished, read from the user's own
    /// tables: an `Err` with a message is a failure.
    fn check<'a>(&'a self, storage: &'a S) -> TestFuture<'a>;
}

/// A storage backend [`CrashTest`] can run on: it makes fresh databases and
/// intercepts their operations. Implemented for `PgStorage` and
/// [`MemStorage`].
pub trait CrashStorage: Storage {
    /// Where schedule databases come from.
    #[doc(hidden)]
    type Source: Clone + Send + Sync + 'static;

    /// A fresh, migrated database.
    #[doc(hidden)]
    fn create(source: &Self::Source) -> impl Future<Output = Result<Self, String>> + Send;

    /// A fresh copy of `template` (set up and closed), or `None` if this
    /// backend cannot copy one (then setup runs on a fresh database).
    #[doc(hidden)]
    fn copy(
        source: &Self::Source,
        template: &Self,
    ) -> impl Future<Output = Result<Option<Self>, String>> + Send;

    /// Another handle on the same database with connections of its own and
    /// no interceptor.
    #[doc(hidden)]
    fn reconnect(&self) -> impl Future<Output = Result<Self, String>> + Send;

    /// This handle with its operations reported to `interceptor`.
    #[doc(hidden)]
    fn intercepted(&self, interceptor: Arc<dyn Interceptor>) -> Self;

    /// Closes this handle's connections (after a crash: the crashed
    /// process's connections go away).
    #[doc(hidden)]
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Removes the database.
    #[doc(hidden)]
    fn remove(source: &Self::Source, storage: Self) -> impl Future<Output = ()> + Send;

    /// The database's name, for failure reports.
    #[doc(hidden)]
    fn describe(&self) -> String;

    /// Advances a modelled database clock to `now_ms` (the memory model).
    #[doc(hidden)]
    fn tick(&self, now_ms: i64) {
        let _ = now_ms;
    }
}

impl CrashStorage for MemStorage {
    type Source = ();

    async fn create(_: &()) -> Result<Self, String> {
        Ok(MemStorage::new())
    }

    async fn copy(_: &(), _: &Self) -> Result<Option<Self>, String> {
        Ok(None)
    }

    async fn reconnect(&self) -> Result<Self, String> {
        Ok(self.without_interceptor())
    }

    fn intercepted(&self, interceptor: Arc<dyn Interceptor>) -> Self {
        self.with_interceptor(interceptor)
    }

    async fn close(&self) {}

    async fn remove(_: &(), _: Self) {}

    fn describe(&self) -> String {
        "a memory database".to_owned()
    }

    fn tick(&self, now_ms: i64) {
        self.advance_clock(now_ms);
    }
}

/// Schedule databases on a PostgreSQL server.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct PgSource {
    admin_url: String,
    /// The URL of some database on the server, to derive others from.
    base_url: String,
}

static NEXT_CRASH_DATABASE: AtomicU64 = AtomicU64::new(0);

impl PgSource {
    fn url(&self, name: &str) -> Result<String, String> {
        super::with_database(&self.base_url, name).map_err(|e| e.to_string())
    }

    async fn admin(&self, sql: String) -> Result<(), String> {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.admin_url))?;
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut admin)
            .await
            .map(drop)
            .map_err(|e| format!("{sql}: {e}"));
        let _ = admin.close().await;
        result
    }

    fn next_name() -> String {
        format!(
            "tandem_crash_{}_{}",
            std::process::id(),
            NEXT_CRASH_DATABASE.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn connect(&self, name: &str) -> Result<crate::PgStorage, String> {
        let url = self.url(name)?;
        crate::PgStorage::connect(&url)
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))
    }
}

impl CrashStorage for crate::PgStorage {
    type Source = PgSource;

    async fn create(source: &PgSource) -> Result<Self, String> {
        let name = PgSource::next_name();
        source.admin(format!("CREATE DATABASE \"{name}\"")).await?;
        let storage = source.connect(&name).await?;
        storage
            .migrate()
            .await
            .map_err(|e| format!("migrating {name}: {e}"))?;
        Ok(storage)
    }

    async fn copy(source: &PgSource, template: &Self) -> Result<Option<Self>, String> {
        let name = PgSource::next_name();
        // A template must have no open connections.
        template.close().await;
        source
            .admin(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{}\"",
                template.describe()
            ))
            .await?;
        Ok(Some(source.connect(&name).await?))
    }

    async fn reconnect(&self) -> Result<Self, String> {
        let options = (*self.pool().connect_options()).clone();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| format!("reconnecting to {}: {e}", self.describe()))?;
        Ok(self.with_pool(pool))
    }

    fn intercepted(&self, interceptor: Arc<dyn Interceptor>) -> Self {
        self.with_interceptor(interceptor)
    }

    async fn close(&self) {
        self.pool().close().await;
    }

    async fn remove(source: &PgSource, storage: Self) {
        storage.close().await;
        let name = storage.describe();
        // FORCE: a crashed engine's connections may still be closing.
        let _ = source
            .admin(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }

    fn describe(&self) -> String {
        self.pool()
            .connect_options()
            .get_database()
            .unwrap_or("?")
            .to_owned()
    }
}

/// One fault at one durable point.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Schedule {
    /// The fault.
    pub fault: FaultKind,
    /// Where.
    pub at: PointId,
}

/// The faults a schedule injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The whole engine crashes just before the commit is sent.
    CrashBeforeCommit,
    /// The whole engine crashes just after the commit succeeded, before it
    /// learns so.
    CrashAfterCommit,
    /// The commit succeeds but its acknowledgement is lost.
    LoseAck,
    /// Inside a transactional step, after its own statements: the
    /// connection drops.
    ConnectionLoss,
    /// Inside a transactional step, after its own statements: the server
    /// reports a serialization failure.
    SerializationFailure,
    /// Just before a step's checkpoint the executor pauses; a second
    /// executor takes the workflow over after the lease expires; then the
    /// first resumes.
    Zombie,
}

impl FaultKind {
    const ALL: [FaultKind; 6] = [
        FaultKind::CrashBeforeCommit,
        FaultKind::CrashAfterCommit,
        FaultKind::LoseAck,
        FaultKind::ConnectionLoss,
        FaultKind::SerializationFailure,
        FaultKind::Zombie,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::CrashBeforeCommit => "crash-before-commit",
            FaultKind::CrashAfterCommit => "crash-after-commit",
            FaultKind::LoseAck => "lose-ack",
            FaultKind::ConnectionLoss => "connection-loss",
            FaultKind::SerializationFailure => "serialization-failure",
            FaultKind::Zombie => "zombie",
        }
    }

    /// The phase of the point this fault is injected at.
    fn phase(self) -> Phase {
        match self {
            FaultKind::CrashBeforeCommit => Phase::Commit,
            FaultKind::CrashAfterCommit | FaultKind::LoseAck => Phase::Committed,
            FaultKind::ConnectionLoss | FaultKind::SerializationFailure | FaultKind::Zombie => {
                Phase::Statement
            }
        }
    }
}

/// A durable point: the `n`-th (from 1) operation `op` for workflow
/// `workflow` (`-` for none, e.g. a claim), at a commit or at the
/// checkpoint statement of a step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointId {
    /// The workflow, or `-`.
    pub workflow: String,
    /// The engine operation.
    pub op: String,
    /// Which occurrence, from 1.
    pub n: u32,
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.workflow, self.op, self.n)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.fault.name(), self.at)
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    /// Parses what `Display` prints: `zombie@order-1/step_record#2`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a schedule (like \"lose-ack@order-1/step_record#2\")");
        let (fault, at) = s.split_once('@').ok_or_else(bad)?;
        let fault = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == fault)
            .ok_or_else(bad)?;
        let (rest, n) = at.rsplit_once('#').ok_or_else(bad)?;
        let (workflow, op) = rest.rsplit_once('/').ok_or_else(bad)?;
        Ok(Schedule {
            fault,
            at: PointId {
                workflow: workflow.to_owned(),
                op: op.to_owned(),
                n: n.parse().map_err(|_| bad())?,
            },
        })
    }
}

/// The operations whose commit records progress: a crash around them
/// matters. Polls (heartbeats, empty claims, reads) do not count.
const PROGRESS_OPS: &[&str] = &[
    "workflow_insert",
    "workflow_insert_many",
    "workflow_complete",
    "workflow_complete_many",
    "step_record",
    "step_record_many",
    "workflow_enqueue",
    "workflow_suspend",
    "message_send",
    "message_take",
    "recv_deadline",
    "event_set",
    "workflows_cancel",
    "workflow_cancel_overdue",
    "workflow_resume",
    "workflow_fork",
];

/// The point's identity before counting, if it is a durable point.
fn point_key(p: &Point) -> Option<(Phase, String, &'static str)> {
    let workflow = p.workflow_id.clone().unwrap_or_else(|| "-".to_owned());
    match p.phase {
        Phase::Statement => (p.op == "step_record").then_some((Phase::Statement, workflow, p.op)),
        Phase::Commit | Phase::Committed => {
            let durable = p.rows > 0 || p.ops.iter().any(|op| PROGRESS_OPS.contains(op));
            // The op that makes it durable names the point, so that a
            // transaction's reads before it do not change its name.
            let op = p
                .ops
                .iter()
                .rev()
                .find(|op| PROGRESS_OPS.contains(op))
                .copied()
                .unwrap_or(p.op);
            durable.then_some((p.phase, workflow, op))
        }
    }
}

/// A point the reference run passed.
#[derive(Debug, Clone)]
struct Seen {
    id: PointId,
    phase: Phase,
    app: bool,
    step: Option<String>,
}

/// Whether the process is running, paused, or crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Paused,
    Crashed,
}

/// What the director tells the harness.
#[derive(Debug)]
enum Event {
    Crashed,
    Paused { workflow: String },
}

/// The interceptor of one run: counts points, records them (reference
/// run) or injects the schedule's fault at its point.
struct Director {
    target: Option<Schedule>,
    counts: Mutex<HashMap<(Phase, String, &'static str), u32>>,
    seen: Mutex<Vec<Seen>>,
    fired: AtomicBool,
    gate: tokio::sync::watch::Sender<Gate>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl Director {
    fn new(target: Option<Schedule>) -> (Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let director = Director {
            target,
            counts: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            fired: AtomicBool::new(false),
            gate: tokio::sync::watch::channel(Gate::Open).0,
            events,
        };
        (Arc::new(director), rx)
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }

    /// Waits while the process is paused; forever once it crashed.
    async fn pass_gate(&self) {
        let mut gate = self.gate.subscribe();
        loop {
            if *gate.borrow_and_update() == Gate::Open {
                return;
            }
            if gate.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn release(&self) {
        self.gate.send_replace(Gate::Open);
    }

    /// Counts `point` and says whether it is the schedule's target.
    fn observe(&self, point: &Point) -> bool {
        let Some(key) = point_key(point) else {
            return false;
        };
        let n = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let (phase, workflow, op) = key;
        let id = PointId {
            workflow,
            op: op.to_owned(),
            n,
        };
        let Some(target) = &self.target else {
            if phase != Phase::Committed {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Seen {
                        id,
                        phase,
                        app: point.app,
                        step: point.step.clone(),
                    });
            }
            return false;
        };
        if target.fault.phase() != phase || target.at != id {
            return false;
        }
        // A zombie's point is a plain or transactional step's checkpoint;
        // the in-step faults only fit a transactional one.
        if matches!(
            target.fault,
            FaultKind::ConnectionLoss | FaultKind::SerializationFailure
        ) && !point.app
        {
            return false;
        }
        !self.fired.swap(true, Ordering::Relaxed)
    }
}

impl Interceptor for Director {
    fn at(&self, point: Point) -> VerdictFuture<'_> {
        Box::pin(async move {
            self.pass_gate().await;
            if !self.observe(&point) {
                return Verdict::Proceed;
            }
            let target = self.target.as_ref().map(|t| t.fault);
            match target {
                Some(FaultKind::CrashBeforeCommit | FaultKind::CrashAfterCommit) => {
                    self.gate.send_replace(Gate::Crashed);
                    let _ = self.events.send(Event::Crashed);
                    std::future::pending().await
                }
                Some(FaultKind::LoseAck) => Verdict::LoseAck,
                Some(FaultKind::ConnectionLoss) => Verdict::ConnectionLost,
                Some(FaultKind::SerializationFailure) => Verdict::SerializationFailure,
                Some(FaultKind::Zombie) => {
                    self.gate.send_replace(Gate::Paused);
                    let _ = self.events.send(Event::Paused {
                        workflow: point.workflow_id.clone().unwrap_or_default(),
                    });
                    self.pass_gate().await;
                    Verdict::Proceed
                }
                None => Verdict::Proceed,
            }
        })
    }
}

/// The real runtime, with every spawned task abortable at once: an
/// in-process crash at whatever await point each task is parked. Give it to
/// an engine (`EngineBuilder::env`) to crash that engine in a test, then
/// launch another on the same storage to see the work recovered.
#[derive(Clone, Default)]
pub struct CrashEnv {
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CrashEnv {
    /// Aborts every task spawned so far: the engine stops where it is, as
    /// its process would in a crash (nothing more is written).
    pub fn crash(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

// Wraps tokio's spawn as `TokioEnv` does, keeping the abort handles.
impl Env for CrashEnv {
    fn now(&self) -> SystemTime {
        TokioEnv::new().now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        TokioEnv::new().sleep(duration)
    }

    fn spawn(&self, task: BoxFuture<()>) {
        let handle = tokio::spawn(task);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle.abort_handle());
    }

    fn seed(&self) -> u64 {
        // Fixed, so that generated workflow IDs are the same in every run.
        0x7a4d_e11a
    }
}

/// How a [`CrashTest`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Durable points of the fault-free run.
    pub points: usize,
    /// Those points, in the order the run passed them.
    pub found: Vec<PointId>,
    /// Schedules those points allow.
    pub schedules: usize,
    /// Schedules run (all of them within the budget).
    pub ran: usize,
    /// Schedules whose point the run did not reach (the scenario took
    /// another path).
    pub unreached: usize,
    /// Those schedules.
    pub missed: Vec<Schedule>,
    /// Finished workflows replayed against their histories, over all runs.
    pub replayed: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} durable points, {} of {} schedules run ({} unreached), {} replays agreed, in {:.1?}",
            self.points, self.ran, self.schedules, self.unreached, self.replayed, self.elapsed
        )
    }
}

/// A schedule after which something did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The schedule (`None`: the fault-free reference run).
    pub schedule: Option<Schedule>,
    /// The workflow concerned, if one is.
    pub workflow: Option<String>,
    /// The step concerned, if one is.
    pub step: Option<String>,
    /// What did not hold.
    pub message: String,
    /// The database the failure is in, kept for inspection.
    pub database: Option<String>,
    /// The sampling seed of the run.
    pub seed: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schedule {
            Some(s) => write!(f, "crash test failed under schedule {s}")?,
            None => write!(f, "crash test failed in the fault-free run")?,
        }
        if let Some(w) = &self.workflow {
            write!(f, "\n  workflow: {w}")?;
        }
        if let Some(s) = &self.step {
            write!(f, "\n  step: {s:?}")?;
        }
        write!(f, "\n  {}", self.message)?;
        if let Some(d) = &self.database {
            write!(f, "\n  database (kept): {d}")?;
        }
        match &self.schedule {
            Some(s) => write!(
                f,
                "\n  reproduce: CrashTest::...().seed({}).only(\"{s}\")",
                self.seed
            ),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Failure {}

/// The systematic crash test of one scenario (see the module docs and
/// `docs/testing-your-workflows.md`).
pub struct CrashTest<S: CrashStorage> {
    source: S::Source,
    budget: usize,
    seed: u64,
    only: Option<Schedule>,
    settle: Duration,
    lease: Duration,
    faults: Vec<FaultKind>,
}

impl CrashTest<crate::PgStorage> {
    /// Crash tests on `cluster`, one database per schedule.
    pub fn postgres(cluster: &super::PgCluster) -> Result<Self, String> {
        let base_url = cluster.url_for("postgres").map_err(|e| e.to_string())?;
        Ok(Self::with_source(PgSource {
            admin_url: cluster.admin_url().to_owned(),
            base_url,
        }))
    }
}

impl CrashTest<MemStorage> {
    /// Crash tests on the memory model (for workflows generic over
    /// `Storage`).
    pub fn memory() -> Self {
        Self::with_source(())
    }
}

impl<S: CrashStorage> CrashTest<S> {
    fn with_source(source: S::Source) -> Self {
        Self {
            source,
            budget: 200,
            seed: 0,
            only: None,
            settle: Duration::from_secs(30),
            lease: Duration::from_millis(500),
            faults: FaultKind::ALL.to_vec(),
        }
    }

    /// Runs every schedule while there are at most `budget` of them, and a
    /// seeded sample of `budget` otherwise. Default 200.
    pub fn budget(mut self, budget: usize) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// The sampling seed (used beyond the budget). Default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs only this schedule, as a failure printed it (after the
    /// reference run, which finds its point); a run that never reaches the
    /// point fails. Panics on a string that is not a schedule.
    pub fn only(mut self, schedule: &str) -> Self {
        match schedule.parse() {
            Ok(s) => self.only = Some(s),
            Err(e) => panic!("{e}"),
        }
        self
    }

    /// Only these faults. Default: all.
    pub fn faults(mut self, faults: &[FaultKind]) -> Self {
        self.faults = faults.to_vec();
        self
    }

    /// How long every workflow may take to finish after the faults (a
    /// workflow still unfinished then is a failure). Default 30 s.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle = timeout;
        self
    }

    /// The lease in zombie schedules: how long the paused executor is
    /// presumed alive. Default 500 ms.
    pub fn zombie_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Runs the test: `Ok` with what ran, or the first failure.
    pub async fn run(self, scenario: &impl CrashScenario<S>) -> Result<Report, Box<Failure>> {
        let started = Instant::now();
        let fail = |message: String| self.failure(&None, None, message, None);
        let template = S::create(&self.source).await.map_err(fail)?;
        scenario
            .setup(&template)
            .await
            .map_err(|e| fail(format!("setup failed: {e}")))?;
        let mut replayed = 0;
        let mut removals = tokio::task::JoinSet::new();
        let reference = self
            .run_one(scenario, &template, None, None, &mut removals)
            .await?;
        replayed += reference.replayed;
        let seen = reference.seen.clone();
        let steps: HashMap<PointId, Option<String>> = seen
            .iter()
            .map(|s| (s.id.clone(), s.step.clone()))
            .collect();
        let mut all = Vec::new();
        for s in &seen {
            for fault in &self.faults {
                let fits = match fault {
                    FaultKind::CrashBeforeCommit
                    | FaultKind::CrashAfterCommit
                    | FaultKind::LoseAck => s.phase == Phase::Commit,
                    FaultKind::ConnectionLoss | FaultKind::SerializationFailure => {
                        s.phase == Phase::Statement && s.app
                    }
                    FaultKind::Zombie => s.phase == Phase::Statement,
                };
                if fits {
                    all.push(Schedule {
                        fault: *fault,
                        at: s.id.clone(),
                    });
                }
            }
        }
        let total = all.len();
        let chosen = match &self.only {
            Some(only) => vec![only.clone()],
            None if total <= self.budget => all,
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                all.shuffle(&mut rng);
                all.truncate(self.budget);
                all.sort();
                all
            }
        };
        let mut unreached = 0;
        let mut missed = Vec::new();
        for schedule in &chosen {
            let outcome = self
                .run_one(
                    scenario,
                    &template,
                    Some(schedule.clone()),
                    Some(&reference.statuses),
                    &mut removals,
                )
                .await
                .map_err(|mut f| {
                    if f.step.is_none() && f.workflow.as_deref() == Some(&schedule.at.workflow) {
                        f.step = steps.get(&schedule.at).cloned().flatten();
                    }
                    f
                })?;
            replayed += outcome.replayed;
            if !outcome.fired {
                unreached += 1;
                missed.push(schedule.clone());
            }
        }
        removals.join_all().await;
        S::remove(&self.source, template).await;
        if let Some(only) = &self.only
            && unreached > 0
        {
            // Asked to reproduce one schedule: not reaching it is no pass.
            let message = format!(
                "the run never reached point {}: the scenario took another path",
                only.at
            );
            return Err(self.failure(&self.only, None, message, None));
        }
        Ok(Report {
            points: seen.len(),
            found: seen.iter().map(|s| s.id.clone()).collect(),
            schedules: total,
            ran: chosen.len(),
            unreached,
            missed,
            replayed,
            elapsed: started.elapsed(),
        })
    }

    /// A failure under `schedule` (its workflow unless another is named).
    fn failure(
        &self,
        schedule: &Option<Schedule>,
        workflow: Option<String>,
        message: String,
        database: Option<String>,
    ) -> Box<Failure> {
        Box::new(Failure {
            schedule: schedule.clone(),
            workflow: workflow.or_else(|| schedule.as_ref().map(|s| s.at.workflow.clone())),
            step: None,
            message,
            database,
            seed: self.seed,
        })
    }

    /// A fresh database for one run.
    async fn fresh(&self, scenario: &impl CrashScenario<S>, template: &S) -> Result<S, String> {
        match S::copy(&self.source, template).await? {
            Some(db) => Ok(db),
            None => {
                let db = S::create(&self.source).await?;
                scenario
                    .setup(&db)
                    .await
                    .map_err(|e| format!("setup failed: {e}"))?;
                Ok(db)
            }
        }
    }

    /// Runs the scenario once under `schedule` (none: the reference run,
    /// which records the points), recovers, and checks.
    async fn run_one(
        &self,
        scenario: &impl CrashScenario<S>,
        template: &S,
        schedule: Option<Schedule>,
        expected: Option<&BTreeMap<String, Status>>,
        removals: &mut tokio::task::JoinSet<()>,
    ) -> Result<RunOutcome, Box<Failure>> {
        let db = self
            .fresh(scenario, template)
            .await
            .map_err(|message| self.failure(&schedule, None, message, None))?;
        // A modelled database clock starts now, not at zero (leases).
        db.tick(unix_ms(SystemTime::now()));
        let result = self.drive(scenario, &db, schedule.clone(), expected).await;
        match result {
            Ok(outcome) => {
                // In the background: dropping a PostgreSQL database waits
                // for a checkpoint, which the next schedule need not.
                let source = self.source.clone();
                removals.spawn(async move { S::remove(&source, db).await });
                Ok(outcome)
            }
            Err((workflow, message)) => {
                let database = Some(db.describe());
                db.close().await;
                Err(self.failure(&schedule, workflow, message, database))
            }
        }
    }

    async fn drive(
        &self,
        scenario: &impl CrashScenario<S>,
        db: &S,
        schedule: Option<Schedule>,
        expected: Option<&BTreeMap<String, Status>>,
    ) -> Result<RunOutcome, (Option<String>, String)> {
        let plain = |message: String| (None, message);
        let zombie = schedule
            .as_ref()
            .is_some_and(|s| s.fault == FaultKind::Zombie);
        let lease = if zombie {
            self.lease
        } else {
            Duration::from_secs(30)
        };
        let (director, mut events) = Director::new(schedule.clone());
        // Its own connections, so that a crash can close them all.
        let live = db
            .reconnect()
            .await
            .map_err(plain)?
            .intercepted(Arc::clone(&director) as Arc<dyn Interceptor>);
        let env = CrashEnv::default();
        let engine = self
            .configure(scenario.engine(live.clone()), &env, "crash-test-a", lease)
            .launch()
            .await
            .map_err(|e| plain(format!("the engine did not launch: {e}")))?;
        let mut run = scenario.run(&engine);
        let mut crashed = false;
        let mut takeover: Option<(Engine<S>, S)> = None;
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let run_result = loop {
            tokio::select! {
                r = &mut run => break Some(r),
                Some(event) = events.recv() => match event {
                    Event::Crashed => {
                        crashed = true;
                        break None;
                    }
                    Event::Paused { workflow } => {
                        takeover = Some(self.take_over(scenario, db, &workflow, lease).await?);
                        director.release();
                    }
                },
                _ = ticker.tick() => db.tick(unix_ms(SystemTime::now())),
            }
        };
        drop(run);
        let mut settled = None;
        if !crashed {
            if let Some(Err(e)) = run_result {
                stop(Some((engine, live))).await;
                stop(takeover).await;
                return Err(plain(format!("the scenario failed: {e}")));
            }
            // The scenario may return before its workflows finish: the
            // schedule's point may come while they settle.
            settled = loop {
                tokio::select! {
                    s = self.settle(db) => break Some(s),
                    Some(event) = events.recv() => match event {
                        Event::Crashed => {
                            crashed = true;
                            break None;
                        }
                        Event::Paused { workflow } => {
                            takeover = Some(self.take_over(scenario, db, &workflow, lease).await?);
                            director.release();
                        }
                    },
                }
            };
        }
        let (survivor, survivor_db) = if crashed {
            env.crash();
            drop(engine);
            live.close().await;
            let (engine, recovered) = self
                .launch_on(scenario, db, "crash-test-a", lease, "the recovering engine")
                .await?;
            (engine, recovered)
        } else {
            (engine, live)
        };
        let settled = match settled {
            Some(settled) => settled,
            None => self.settle(db).await,
        };
        let outcome = match settled {
            Err(e) => Err(e),
            Ok(statuses) => self
                .verify(scenario, db, &survivor, &statuses, expected)
                .await
                .map(|replayed| (statuses, replayed)),
        };
        stop(Some((survivor, survivor_db))).await;
        stop(takeover).await;
        let (statuses, replayed) = outcome?;
        Ok(RunOutcome {
            seen: director
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            fired: director.fired(),
            statuses,
            replayed,
        })
    }

    fn configure(
        &self,
        builder: EngineBuilder<S>,
        env: &CrashEnv,
        executor: &str,
        lease: Duration,
    ) -> EngineBuilder<S> {
        // Grouping off: which statement carries a checkpoint (alone, or in
        // a group with another workflow's) depends on timing, and every
        // schedule must meet the points the discovery run numbered. The
        // group commit itself is the simulator's to check.
        builder
            .env(env.clone())
            .executor_id(executor)
            .lease(lease)
            .poll_interval(Duration::from_millis(20))
            .queue_poll_interval(Duration::from_millis(50))
            .group_commit(1)
    }

    /// A zombie schedule's second executor, launched once the first paused
    /// at `workflow`'s checkpoint; returns when it took the workflow over.
    async fn take_over(
        &self,
        scenario: &impl CrashScenario<S>,
        db: &S,
        workflow: &str,
        lease: Duration,
    ) -> Result<(Engine<S>, S), (Option<String>, String)> {
        let launched = self
            .launch_on(scenario, db, "crash-test-b", lease, "the second executor")
            .await?;
        self.await_takeover(db, workflow).await;
        Ok(launched)
    }

    /// An engine of the scenario as `executor`, on connections of its own
    /// to `db` and without an interceptor (`what` names it in an error).
    async fn launch_on(
        &self,
        scenario: &impl CrashScenario<S>,
        db: &S,
        executor: &str,
        lease: Duration,
        what: &str,
    ) -> Result<(Engine<S>, S), (Option<String>, String)> {
        let storage = db.reconnect().await.map_err(|e| (None, e))?;
        let engine = self
            .configure(
                scenario.engine(storage.clone()),
                &CrashEnv::default(),
                executor,
                lease,
            )
            .launch()
            .await
            .map_err(|e| (None, format!("{what} did not launch: {e}")))?;
        Ok((engine, storage))
    }

    /// Waits until the second executor owns `workflow` (or it finished), or
    /// a while: the paused one may hold locks the takeover waits for.
    async fn await_takeover(&self, db: &S, workflow: &str) {
        let deadline = Instant::now() + self.lease * 4 + Duration::from_secs(2);
        while Instant::now() < deadline {
            db.tick(unix_ms(SystemTime::now()));
            if let Ok(Some(row)) = db.workflow_get(workflow).await
                && (row.status.is_terminal() || row.executor_id.as_deref() == Some("crash-test-b"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every workflow finished; their statuses.
    async fn settle(&self, db: &S) -> Result<BTreeMap<String, Status>, (Option<String>, String)> {
        let admin = Admin::new(db.clone());
        let deadline = Instant::now() + self.settle;
        loop {
            db.tick(unix_ms(SystemTime::now()));
            let rows = admin
                .list_workflows(WorkflowFilter {
                    limit: 100_000,
                    ..WorkflowFilter::default()
                })
                .await
                .map_err(|e| (None, format!("listing workflows: {e}")))?;
            let pending = rows.iter().find(|w| !w.row.status.is_terminal());
            match pending {
                None => {
                    return Ok(rows.into_iter().map(|w| (w.row.id, w.row.status)).collect());
                }
                Some(w) if Instant::now() >= deadline => {
                    return Err((
                        Some(w.row.id.clone()),
                        format!(
                            "workflow {:?} ({}) is still {} {:.0?} after the fault: it was not recovered",
                            w.row.id, w.row.name, w.row.status, self.settle
                        ),
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The checks after a run: outcomes as in the fault-free run, no
    /// non-determinism, every finished workflow replays, the user's check.
    /// Returns how many replays agreed.
    async fn verify(
        &self,
        scenario: &impl CrashScenario<S>,
        db: &S,
        engine: &Engine<S>,
        statuses: &BTreeMap<String, Status>,
        expected: Option<&BTreeMap<String, Status>>,
    ) -> Result<usize, (Option<String>, String)> {
        let mut replayed = 0;
        for (id, status) in statuses {
            let row = db
                .workflow_get(id)
                .await
                .map_err(|e| (Some(id.clone()), format!("reading workflow: {e}")))?;
            if let Some(error) = row.as_ref().and_then(|r| r.error.as_deref())
                && error.starts_with(crate::error::NON_DETERMINISM_PREFIX)
            {
                return Err((Some(id.clone()), format!("the workflow failed: {error}")));
            }
            if let Some(expected) = expected.and_then(|e| e.get(id))
                && expected != status
            {
                let detail = row
                    .as_ref()
                    .and_then(|r| r.error.clone())
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err((
                    Some(id.clone()),
                    format!("the workflow ended {status}{detail}, but {expected} without faults"),
                ));
            }
            if matches!(status, Status::Success | Status::Error) {
                let replay = engine
                    .replay(id)
                    .await
                    .map_err(|e| (Some(id.clone()), format!("replaying: {e}")))?;
                if let Some(d) = replay.divergence {
                    return Err((
                        Some(id.clone()),
                        format!("replaying its history, non-deterministic control flow: {d}"),
                    ));
                }
                replayed += 1;
            }
        }
        scenario
            .check(db)
            .await
            .map_err(|e| (None, format!("the check failed: {e}")))?;
        Ok(replayed)
    }
}

/// Shuts an engine down and closes its own connections.
async fn stop<S: CrashStorage>(launched: Option<(Engine<S>, S)>) {
    if let Some((engine, storage)) = launched {
        engine.shutdown().await;
        storage.close().await;
    }
}

/// What one run leaves.
struct RunOutcome {
    seen: Vec<Seen>,
    fired: bool,
    statuses: BTreeMap<String, Status>,
    replayed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_prints_as_it_parses() {
        for text in [
            "crash-before-commit@order-1/workflow_insert#1",
            "zombie@a/b/c/step_record#12",
            "lose-ack@-/workflows_claim#3",
        ] {
            let schedule: Schedule = text.parse().expect(text);
            assert_eq!(schedule.to_string(), text);
        }
        // A workflow ID may hold slashes: the op is the last segment.
        assert_eq!(
            "zombie@a/b/c/step_record#12"
                .parse::<Schedule>()
                .unwrap()
                .at,
            PointId {
                workflow: "a/b/c".to_owned(),
                op: "step_record".to_owned(),
                n: 12
            }
        );
        for bad in ["", "zombie", "nope@a/b#1", "zombie@a#1", "zombie@a/b#x"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?}");
        }
    }
}
