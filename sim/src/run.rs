//! One simulated run: nodes, supervisor, phases, and its [`Report`].
//!
//! A run is a pure function of its seed and [`Options`]: the workload, the
//! fault decisions and madsim's scheduling all derive from the seed, so
//! `SIM_SEED=<n>` replays a failure exactly.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::Rng;
use madsim::runtime::{Handle, Runtime};
use madsim::time::{Instant, sleep};
use tandem::bugs::Bug;
use tandem::storage::memory::{Fault, FaultPoint};
use tandem::{Engine, Queue, StartOptions};

use crate::env::MadsimEnv;
use crate::faults::{Faults, Plan, Site};
use crate::storage::{NodeLabel, SimStorage};
use crate::workload::{self, Bank, Generation, Workload};
use crate::world::World;

/// How long faults are injected, in virtual time.
const CHAOS: Duration = Duration::from_millis(400);
/// The executors' lease: a killed or paused executor's workflows are
/// reclaimed by others this long after its last heartbeat.
const LEASE: Duration = Duration::from_millis(300);
/// How long the fault-free liveness phase may take before a workflow
/// still unfinished counts as stuck.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fault plan.
    pub plan: Plan,
    /// A planted engine bug to switch on, if any.
    pub bug: Option<Bug>,
    /// Let lost acknowledgements hit the COMMIT of a queue claim (on by
    /// default; a switch so that the claim path can be isolated).
    pub claim_lost_ack: bool,
    /// The workload's features ([`Generation::LATEST`] by default; an older
    /// one reproduces the workload a regression seed was found with).
    pub generation: Generation,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            plan: Plan::Random,
            bug: None,
            claim_lost_ack: true,
            generation: Generation::LATEST,
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The fault plan it ran under.
    pub plan: Plan,
    /// The planted bug that was switched on.
    pub bug: Option<Bug>,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// The readable trace.
    pub trace: Vec<String>,
    /// How often each fault site fired.
    pub fired: BTreeMap<Site, u64>,
    /// Observed (not injected) events.
    pub observed: BTreeMap<&'static str, u64>,
    /// Operations performed (see `Faults::ops`).
    pub ops: BTreeMap<&'static str, u64>,
    /// Virtual time the run took.
    pub virtual_time: Duration,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A failure message: seed, how to replay, violations, the trace's tail.
    pub fn failure_message(&self, tail: usize) -> String {
        let replay = match &self.plan {
            Plan::Random => match self.bug {
                None => format!("replay: SIM_SEED={} cargo test -p sim", self.seed),
                Some(bug) => format!(
                    "replay: SIM_SEED={} SIM_BUG={bug:?} cargo test -p sim",
                    self.seed
                ),
            },
            plan => format!(
                "replay: sim::run_seed({}, &Options {{ plan: {plan:?}, .. }})",
                self.seed
            ),
        };
        let mut s = format!(
            "simulation failed: seed {} ({} violation(s))\n{replay}\n",
            self.seed,
            self.violations.len(),
        );
        for v in &self.violations {
            s.push_str(&format!("  violation: {v}\n"));
        }
        let skip = self.trace.len().saturating_sub(tail);
        s.push_str(&format!(
            "trace (last {} of {} lines):\n",
            self.trace.len() - skip,
            self.trace.len()
        ));
        for line in &self.trace[skip..] {
            s.push_str(&format!("  {line}\n"));
        }
        s
    }

    /// A hash of the full trace, to compare runs.
    pub fn trace_hash(&self) -> u64 {
        // FNV-1a: stable across processes, unlike std's RandomState.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.trace {
            for b in line.bytes().chain(std::iter::once(b'\n')) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

/// Runs one seed on a fresh thread with a fresh madsim runtime (thread
/// locals and the first `HashMap`'s seed must not leak between runs).
pub fn run_seed(seed: u64, options: &Options) -> Report {
    let options = options.clone();
    let options_plan = options.plan.clone();
    let options_bug = options.bug;
    let trace = Arc::new(Mutex::new(Vec::new()));
    let trace2 = trace.clone();
    let joined = std::thread::spawn(move || {
        tandem::bugs::set(options.bug);
        crate::metrics::reset();
        let recorder = crate::metrics::SimRecorder;
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(simulate(seed, options, trace2))
    })
    .join();
    match joined {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            let trace = trace.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Report {
                seed,
                plan: options_plan,
                bug: options_bug,
                violations: vec![format!("panic: {message}")],
                trace,
                fired: BTreeMap::new(),
                observed: BTreeMap::new(),
                ops: BTreeMap::new(),
                virtual_time: Duration::ZERO,
            }
        }
    }
}

/// The body of [`run_seed`], inside the runtime. Also usable with
/// `Runtime::check_determinism`.
pub async fn simulate(seed: u64, options: Options, trace: Arc<Mutex<Vec<String>>>) -> Report {
    let workload = Workload::generate(seed, options.generation);
    let faults = Faults::new(seed, options.plan.clone());
    let world = Arc::new(World::new(seed, faults, workload, trace.clone()));
    world
        .claim_lost_ack
        .store(options.claim_lost_ack, std::sync::atomic::Ordering::Relaxed);
    world.log(format!(
        "seed {seed}: {} executors, {} accounts, {} workflows, bug {:?}",
        world.workload.executors,
        world.workload.accounts,
        world.workload.workflows.len(),
        options.bug
    ));
    for w in &world.workload.workflows {
        world.log(format!("  {} on exec-{}: {:?}", w.id, w.owner, w.ops));
    }
    let enabled = world.faults.enabled();
    if !enabled.is_empty() {
        let sites: Vec<String> = enabled
            .iter()
            .map(|(s, p)| format!("{}={p:.3}", s.name()))
            .collect();
        world.log(format!("enabled sites: {}", sites.join(" ")));
    }

    // Setup.
    world.workload.setup(&world).await;
    install_storage_faults(&world);

    // Run: executors as madsim nodes, then the supervisor's chaos loop.
    let handle = Handle::current();
    let mut nodes: Vec<String> = Vec::new();
    for i in 0..world.workload.executors {
        let name = format!("exec-{i}");
        spawn_node(&handle, &world, name.clone(), i, true);
        nodes.push(name);
    }
    // The application client of the outbox workload, the message client and
    // (steering generation) the admin node, each on a node of its own.
    spawn_client(&handle, &world, "app", workload::app_client);
    spawn_client(&handle, &world, "sender", workload::message_client);
    spawn_client(&handle, &world, "debouncer", crate::debounce::client);
    spawn_client(&handle, &world, "pauser", crate::schedules::pauser);
    if world.workload.generation >= Generation::Steering {
        spawn_client(&handle, &world, "admin", workload::admin_client);
    } else {
        world.state().admin_done = true;
    }
    let chaos = if world.workload.schedule.is_some() {
        crate::schedules::CHAOS
    } else {
        CHAOS
    };
    let chaos_end = Instant::now() + chaos;
    // A zombie (shared executor ID) and a permanent kill exclude each
    // other: a zombie's heartbeat would keep the dead one's lease alive.
    let mut zombie = false;
    while Instant::now() < chaos_end {
        sleep(Duration::from_millis(
            madsim::rand::thread_rng().gen_range(5..25),
        ))
        .await;
        restart_due(&handle, &world, false);
        resume_due(&handle, &world, false);
        let live: Vec<String> = {
            let state = world.state();
            nodes
                .iter()
                .filter(|n| {
                    !state.dead.contains_key(*n)
                        && !state.paused.contains_key(*n)
                        && !state.permanent.contains(*n)
                })
                .cloned()
                .collect()
        };
        if let Some(arg) = world.fire(Site::CrashRandom, "") {
            let live = &live;
            if !live.is_empty() {
                let victim = live[arg as usize % live.len()].clone();
                world.log(format!("supervisor kills {victim}"));
                handle.kill(victim.as_str());
                world.mark_dead(&victim);
            }
        }
        if let Some(arg) = world.fire(Site::Pause, "")
            && !live.is_empty()
        {
            let victim = live[arg as usize % live.len()].clone();
            let ms = madsim::rand::thread_rng().gen_range(100..900);
            world.log(format!("supervisor pauses {victim} for {ms} ms"));
            handle.pause(victim.as_str());
            world
                .state()
                .paused
                .insert(victim, Instant::now() + Duration::from_millis(ms));
        }
        if !zombie
            && world.state().permanent.is_empty()
            && let Some(arg) = world.fire(Site::CrashPermanent, "")
        {
            let execs: Vec<&String> = live.iter().filter(|n| n.starts_with("exec-")).collect();
            if !execs.is_empty() {
                let victim = execs[arg as usize % execs.len()].clone();
                world.log(format!("supervisor kills {victim} for good"));
                handle.kill(victim.as_str());
                world.state().permanent.insert(victim);
            }
        }
        if !zombie
            && world.state().permanent.is_empty()
            && let Some(arg) = world.fire(Site::Zombie, "")
        {
            zombie = true;
            let owner = arg as usize % world.workload.executors;
            let name = format!("zombie-{owner}");
            world.log(format!("{name} launches with executor ID exec-{owner}"));
            spawn_node(&handle, &world, name.clone(), owner, false);
            nodes.push(name);
        }
        if let Some(arg) = world.fire(Site::ClockJump, "") {
            // Forward by up to an hour (every lease expires, sleeps end
            // early), backward by up to 2 s (leases and sleeps last longer):
            // an hour back would outlast the liveness phase's timeout.
            let jump = i64::from(arg % 3_602_000) - 2_000;
            world
                .clock_offset_ms
                .fetch_add(jump, std::sync::atomic::Ordering::Relaxed);
            world.log(format!("clock jumps {jump} ms"));
        }
        workload::monitor(&world);
    }

    // Liveness: faults stop, dead executors come back, everything finishes.
    world.faults.stop();
    world.log("faults stop; liveness phase");
    restart_due(&handle, &world, true);
    // Since the steering generation a pause outlasts the chaos phase as
    // drawn: cut short at its end, a pause begun after the first few
    // milliseconds could never outlast a lease, and its executor would never
    // come back as a zombie. The resumes are timers of their own: the
    // supervisor may block below (on a row lock a paused node holds) and
    // must not be the one to wake that node.
    if world.workload.generation >= Generation::Steering {
        let paused: Vec<(String, Instant)> = std::mem::take(&mut world.state().paused)
            .into_iter()
            .collect();
        for (n, at) in paused {
            let (handle, world) = (handle.clone(), world.clone());
            madsim::task::spawn(async move {
                madsim::time::sleep_until(at).await;
                world.log(format!("supervisor resumes {n}"));
                handle.resume(n.as_str());
            });
        }
    } else {
        resume_due(&handle, &world, true);
    }
    let deadline = Instant::now() + LIVENESS_TIMEOUT;
    let mut enqueued_for_dead = false;
    loop {
        workload::monitor(&world);
        if !enqueued_for_dead {
            enqueued_for_dead = enqueue_for_dead_clients(&world).await;
        }
        let unfinished: Vec<String> = {
            let rows = world.mem.workflows();
            // (A deduplicated order has no workflow of its own.)
            let committed: Vec<(String, i64)> = world
                .mem
                .rows(workload::ORDERS)
                .into_iter()
                .filter_map(|(k, _)| match k {
                    tandem::storage::memory::Key::Int(n) => Some((format!("order-{n}"), n)),
                    tandem::storage::memory::Key::Text(_) => None,
                })
                .filter(|(id, n)| {
                    !crate::admission::deduplicated(&world, *n) || rows.iter().any(|r| r.id == *id)
                })
                .collect();
            let mut unfinished: Vec<String> = if world.state().app_done {
                Vec::new()
            } else {
                vec!["the app client".to_owned()]
            };
            if !world.state().messages_done {
                unfinished.push("the message client".to_owned());
            }
            if !world.state().debounce_done {
                unfinished.push("the debounce client".to_owned());
            }
            if let Some(why) = crate::schedules::unfinished(&world) {
                unfinished.push(why);
            }
            if !world.state().admin_done {
                unfinished.push("the admin node".to_owned());
            }
            // The admin node's forks must finish too. (Children need no
            // entry: their parents await them.)
            let forks: Vec<String> = workload::resolve_forks(&world)
                .into_iter()
                .filter_map(|f| f.id)
                .collect();
            let ids = world
                .workload
                .workflows
                .iter()
                .map(|w| w.id.clone())
                .chain(committed.into_iter().map(|(id, _)| id))
                .chain(forks)
                .chain(
                    rows.iter()
                        .filter(|r| r.debounce_key.is_some())
                        .map(|r| r.id.clone()),
                );
            // (Since the admission generation a deadline may cancel a
            // workflow at any time: a cancelled one waits for its resume.)
            let resumes = world.workload.generation >= Generation::Admission;
            let done = |r: &tandem::storage::memory::WorkflowRecord| {
                r.status.is_terminal() && !(resumes && r.status == tandem::Status::Cancelled)
            };
            unfinished.extend(
                ids.filter(|id| !rows.iter().any(|r| r.id == *id && done(r)))
                    .map(|id| {
                        let row = rows.iter().find(|r| r.id == id);
                        format!(
                            "{} ({})",
                            id,
                            row.map_or("not created".to_owned(), |r| format!(
                                "{} on {} epoch {}",
                                r.status,
                                r.executor_id.as_deref().unwrap_or("-"),
                                r.owner_epoch
                            ))
                        )
                    }),
            );
            unfinished
        };
        if unfinished.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            world.violation(format!(
                "liveness: unfinished {}s after faults stopped: {}",
                LIVENESS_TIMEOUT.as_secs(),
                unfinished.join(", ")
            ));
            break;
        }
        sleep(Duration::from_millis(50)).await;
        crate::versions::roll_out(&handle, &world);
        restart_due(&handle, &world, true);
    }
    for (n, _) in std::mem::take(&mut world.state().paused) {
        handle.resume(n.as_str());
    }
    // Since the schedules generation executors delete finished workflows
    // (retention) and fire ticks: they stop before the checks read the
    // database. (Older generations keep their order of events.)
    if world.workload.generation >= Generation::Schedules {
        for n in &nodes {
            handle.kill(n.as_str());
        }
    }

    // Check.
    for v in workload::check(&world)
        .into_iter()
        .chain(workload::check_event_reads(&world))
        .chain(workload::check_admin_reads(&world))
        .chain(crate::history::check(&world))
        .chain(crate::versions::check(&world))
        .chain(crate::debounce::check_history(&world))
        .chain(crate::schedules::check(&world))
        .chain(crate::retention::check(&world))
        .chain(crate::metrics::check(&world))
        .chain(crate::traces::check(&world))
    {
        world.violation(v);
    }
    for v in check_replays(&world).await {
        world.violation(v);
    }
    world.log("end");
    // Stop the nodes, so that no task outlives the check.
    for n in &nodes {
        handle.kill(n.as_str());
    }
    handle.kill("app");
    handle.kill("sender");
    handle.kill("debouncer");
    handle.kill("pauser");
    if world.workload.generation >= Generation::Steering {
        handle.kill("admin");
    }
    let violations = world.state().violations.clone();
    let trace = trace.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Report {
        seed,
        plan: options.plan,
        bug: options.bug,
        violations,
        trace,
        fired: world.faults.fired(),
        observed: world.faults.observed(),
        ops: world.faults.ops(),
        virtual_time: world.elapsed(),
    }
}

/// Replay invariant: every finished workflow, replayed from its recorded
/// history against the workload's code (`Engine::replay`, without running
/// a step), takes the recorded steps in order and returns the recorded
/// outcome. Runs after the other checks (a replay counts the body's ops).
async fn check_replays(world: &Arc<World>) -> Vec<String> {
    let node = Arc::new(NodeLabel {
        name: "replayer".to_owned(),
        label: "replayer#1".to_owned(),
        executor_id: None,
        skew_ms: 0,
    });
    let storage = SimStorage::new(world.clone(), node.clone());
    let replayer = Engine::builder(storage)
        .env(MadsimEnv::new(world.clone(), world.seed))
        .register(Bank {
            world: world.clone(),
            node: node.clone(),
            code: crate::versions::Code::newest(world.workload.generation),
        })
        .register(crate::schedules::Report {
            world: world.clone(),
            node,
        })
        .register(crate::schedules::ReportPart {
            world: world.clone(),
        })
        .replayer();
    let finished: Vec<String> = world
        .mem
        .workflows()
        .into_iter()
        .filter(|r| matches!(r.status, tandem::Status::Success | tandem::Status::Error))
        .map(|r| r.id)
        .collect();
    let mut violations = Vec::new();
    for id in finished {
        match replayer.replay(&id).await {
            Ok(replay) => {
                if let Some(d) = replay.divergence {
                    violations.push(format!("replay: {id} diverges from its history: {d}"));
                }
            }
            Err(e) => violations.push(format!("replay: {id} cannot be replayed: {e}")),
        }
    }
    violations
}

/// The memory backend's fault hook: lost acks, dropped connections and
/// serialization failures, drawn from the run's fault stream.
fn install_storage_faults(world: &Arc<World>) {
    // The hook runs with the storage locked and must not touch it; a weak
    // reference avoids a cycle world -> storage -> hook -> world.
    let weak = Arc::downgrade(world);
    world.mem.set_fault_hook(Some(Arc::new(move |point| {
        let world = weak.upgrade()?;
        let fire = |site: Site, what: &str| world.fire(site, what).is_some();
        match point {
            FaultPoint::Begin => fire(Site::ConnLostBegin, "").then_some(Fault::ConnectionLost),
            FaultPoint::Statement(op) => {
                if fire(Site::ConnLostStatement, op) {
                    Some(Fault::ConnectionLost)
                } else if fire(Site::SerializationStatement, op) {
                    Some(Fault::SerializationFailure)
                } else {
                    None
                }
            }
            FaultPoint::Commit => {
                // Commits of queue claims get no lost acks unless asked
                // (`Options::claim_lost_ack`): a known engine bug.
                let claiming = world
                    .claim_commits
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0;
                if !claiming && fire(Site::LostAck, "") {
                    Some(Fault::LoseCommitAck)
                } else if fire(Site::ConnLostCommit, "") {
                    Some(Fault::ConnectionLost)
                } else if fire(Site::SerializationCommit, "") {
                    Some(Fault::SerializationFailure)
                } else {
                    None
                }
            }
            _ => None,
        }
    })));
}

/// Resumes the paused nodes whose pause is over (all, if `all`).
fn resume_due(handle: &Handle, world: &World, all: bool) {
    let now = Instant::now();
    let due: Vec<String> = {
        let mut state = world.state();
        let due: Vec<String> = state
            .paused
            .iter()
            .filter(|(_, at)| all || **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &due {
            state.paused.remove(n);
        }
        due
    };
    for n in due {
        world.log(format!("supervisor resumes {n}"));
        handle.resume(n.as_str());
    }
}

/// The workflows whose client was killed for good are enqueued (to the
/// `default` queue, idempotently on their IDs) by the supervisor, so some
/// other executor claims them. Whether it is done.
async fn enqueue_for_dead_clients(world: &World) -> bool {
    use tandem::storage::{Storage as _, Transaction as _, WorkflowEnqueue};
    let dead: Vec<String> = world.state().permanent.iter().cloned().collect();
    for name in dead {
        for spec in &world.workload.workflows {
            if format!("exec-{}", spec.owner) != name {
                continue;
            }
            let result = async {
                let mut tx = world.mem.begin().await?;
                tx.workflow_enqueue(WorkflowEnqueue {
                    name: "bank".to_owned(),
                    input: serde_json::to_string(&spec.ops).expect("ops serialize"),
                    queue: "default".to_owned(),
                    workflow_id: Some(spec.id.clone()),
                    priority: 0,
                    dedup_key: None,
                    delay_ms: None,
                    dedup_error: false,
                    concurrency_key: None,
                    debounce_key: None,
                    debounce_max_wait_ms: None,
                    trace_parent: Some(crate::traces::trace_parent_of(&spec.ops)),
                })
                .await?;
                tx.commit().await
            }
            .await;
            if let Err(e) = result {
                world.log(format!("supervisor enqueue {} failed: {e}", spec.id));
                return false;
            }
            world.log(format!(
                "supervisor enqueues {} (client {name} is dead)",
                spec.id
            ));
        }
    }
    true
}

/// Restarts the dead nodes whose downtime is over (all, if `all`).
fn restart_due(handle: &Handle, world: &World, all: bool) {
    let now = Instant::now();
    let due: Vec<String> = {
        let mut state = world.state();
        let due: Vec<String> = state
            .dead
            .iter()
            .filter(|(_, at)| all || **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &due {
            state.dead.remove(n);
        }
        due
    };
    for n in due {
        world.log(format!("supervisor restarts {n}"));
        handle.restart(n.as_str());
    }
}

/// Creates the madsim node `name` running `client` (restarted from scratch
/// if the node is).
fn spawn_client<F: Future<Output = ()> + 'static>(
    handle: &Handle,
    world: &Arc<World>,
    name: &str,
    client: fn(Arc<World>) -> F,
) {
    let world = world.clone();
    handle
        .create_node()
        .name(name)
        .init(move || client(world.clone()))
        .build();
}

/// Creates the madsim node `name` running executor `exec-<executor>`;
/// `client`: whether its client starts that executor's workflows.
fn spawn_node(handle: &Handle, world: &Arc<World>, name: String, executor: usize, client: bool) {
    let world = world.clone();
    let node_name = name.clone();
    handle
        .create_node()
        .name(name)
        .init(move || {
            let world = world.clone();
            let name = node_name.clone();
            async move { node_main(world, name, executor, client).await }
        })
        .build();
}

/// The client's start of one workflow, noting the acknowledgement.
async fn start_one(
    world: &World,
    engine: &Engine<SimStorage>,
    spec: &workload::WorkflowSpec,
    label: &str,
) {
    let options = StartOptions::new()
        .workflow_id(spec.id.clone())
        .trace_parent(crate::traces::trace_parent_of(&spec.ops));
    let started = match spec.deadline_ms {
        None => {
            world.faults.count("engine.start_with_id");
            engine.start_with::<Bank>(spec.ops.clone(), options).await
        }
        Some(ms) => {
            world.faults.count("engine.start_with_timeout");
            let options = options.timeout(Duration::from_millis(ms));
            engine.start_with::<Bank>(spec.ops.clone(), options).await
        }
    };
    match started {
        Ok(_) => {
            world.log(format!("{label} started {}", spec.id));
            world.state().acked.insert(spec.id.clone());
        }
        Err(e) => world.log(format!("{label} start {} failed: {e}", spec.id)),
    }
}

/// One executor incarnation: launch the engine (which resumes its
/// workflows), then act as the client that starts workflows.
async fn node_main(world: Arc<World>, name: String, executor: usize, client: bool) {
    let incarnation = {
        let mut state = world.state();
        let n = state.incarnations.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let executor_id = format!("exec-{executor}");
    let node = Arc::new(NodeLabel {
        label: format!("{name}#{incarnation}"),
        name,
        executor_id: Some(executor_id.clone()),
        skew_ms: world.workload.skews_ms[executor],
    });
    world.log(format!("{} up", node.label));
    let storage = SimStorage::new(world.clone(), node.clone());
    let seed = world.seed ^ (u64::from(incarnation) << 32) ^ (executor as u64) << 48;
    let code = crate::versions::draw(&world, seed);
    {
        let mut state = world.state();
        state.codes.insert(node.name.clone(), code);
        state.label_codes.insert(node.label.clone(), code);
    }
    // Runs this executor ID owns that its new code does not accept: its
    // launch hands them back to their queue.
    let foreign = world.mem.workflows().iter().any(|r| {
        r.status == tandem::Status::Running
            && r.executor_id.as_deref() == Some(executor_id.as_str())
            && !code.accepts(r.version.as_deref())
    });
    let engine = loop {
        let builder = Engine::builder(storage.clone())
            .env(MadsimEnv::new(world.clone(), seed).skewed(node.skew_ms))
            .executor_id(executor_id.clone())
            .queue(orders_queue(&world.workload))
            .lease(LEASE)
            .queue_poll_interval(Duration::from_millis(50))
            .sleep_suspend_after(workload::SLEEP_SUSPEND_AFTER)
            .group_commit(world.workload.group_commits[executor])
            .register(Bank {
                world: world.clone(),
                node: node.clone(),
                code,
            });
        let builder = crate::schedules::declare(builder, &world, &node, executor);
        let launched = code.declare(builder).launch().await;
        match launched {
            Ok(engine) => break engine,
            Err(e) => {
                world.log(format!("{} launch failed: {e}", node.label));
                sleep(Duration::from_millis(10)).await;
            }
        }
    };
    world.log(format!(
        "{} launched as {executor_id} running {code:?}",
        node.label
    ));
    if foreign {
        world.faults.observe("recover.handed_back_version");
    }
    if client {
        let specs: Vec<_> = world.workload.workflows.clone();
        let mut starts = Vec::new();
        for spec in &specs {
            let ours = spec.owner == executor;
            let start = if ours {
                // A client starts what it has no acknowledgement for; a
                // restarted client sometimes starts acknowledged ones again.
                let acked = world.state().acked.contains(&spec.id);
                !acked || world.fire(Site::DuplicateStart, &spec.id).is_some()
            } else {
                world.fire(Site::CrossStart, &spec.id).is_some()
            };
            if !start {
                continue;
            }
            let delay = Duration::from_millis(madsim::rand::thread_rng().gen_range(0..20));
            if world.workload.generation >= Generation::Groups {
                // Since the groups generation the client starts its
                // workflows at once, each after its own delay, so that
                // starts overlap and share the executor's group commits.
                let (world, engine, spec, label) = (
                    world.clone(),
                    engine.clone(),
                    spec.clone(),
                    node.label.clone(),
                );
                starts.push(madsim::task::spawn(async move {
                    sleep(delay).await;
                    start_one(&world, &engine, &spec, &label).await;
                }));
            } else {
                sleep(delay).await;
                start_one(&world, &engine, spec, &node.label).await;
            }
        }
        for started in starts {
            let _ = started.await;
        }
    }
    // The engine's tasks run on this node; keep it (and the engine) alive,
    // until (steering generation) it shuts down gracefully and exits.
    if world.workload.generation >= Generation::Steering {
        loop {
            sleep(Duration::from_millis(
                madsim::rand::thread_rng().gen_range(10..60),
            ))
            .await;
            if world.fire(Site::Shutdown, &node.label).is_some() {
                world.log(format!("{} shuts down gracefully", node.label));
                world.faults.count("engine.shutdown");
                engine.shutdown().await;
                world.log(format!("{} shut down; exits", node.label));
                world.faults.observe("shutdown.completed");
                world.mark_dead(&node.name);
                Handle::current().kill(node.name.as_str());
                std::future::pending::<()>().await;
            }
        }
    }
    let _engine = engine;
    std::future::pending::<()>().await;
}

/// The `orders` queue as every executor declares it.
fn orders_queue(w: &Workload) -> Queue {
    let mut queue = Queue::new(workload::ORDERS_QUEUE).worker_concurrency(w.orders_worker);
    if let Some(n) = w.orders_global {
        queue = queue.concurrency_global(n);
    }
    if let Some((starts, period_ms)) = w.orders_rate {
        queue = queue.rate_limit(starts, Duration::from_millis(period_ms as u64));
    }
    if let Some(n) = w.orders_per_key {
        queue = queue.concurrency_per_key(n);
    }
    queue
}

/// Catches a panic of `f` (used by the sweep to keep going).
pub fn catch<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
}
