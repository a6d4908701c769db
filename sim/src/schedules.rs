//! Cron schedules (since [`Generation::Schedules`]): the executors declare
//! a schedule `report` (every second or every other second, a drawn
//! catch-up policy and grace, not necessarily on every executor) whose
//! workflow records its tick in the application table `reports` from a
//! transactional step; a node `pauser` pauses it for a while through
//! `Admin` and resumes it. Crashes, pauses, shutdowns, clock skew and clock
//! jumps hit the executors as they fire it, and the chaos phase of a run
//! with a schedule lasts long enough to hold a tick.
//!
//! Judged at the end, on every committed version of the schedule's row and
//! of the workflows (the oracle is arithmetic on whole seconds, not the
//! engine's cron code):
//!
//! - every tick of the window is decided exactly once: the cursor only
//!   moves forward, and each commit that moves it past ticks enqueues, in
//!   that same commit, exactly the ticks the policy runs (the on-time ones,
//!   and of the missed ones none, the latest or the latest `max`), and a
//!   resume skips the ticks of the pause; no commit moves it while paused;
//! - every tick's workflow has the derived ID and the tick as input, is
//!   created by such a commit, ends `SUCCESS` with its tick as output, and
//!   its transactional step wrote its `reports` row exactly once;
//! - the window reaches past the horizon (liveness).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use madsim::rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tandem::storage::memory::ScheduleRecord;
use tandem::{
    CatchUp, EngineBuilder, Queue, Schedule, ScheduledTick, Status, Workflow, WorkflowContext,
    WorkflowError,
};

use crate::storage::{NodeLabel, SimStorage};
use crate::workload::Generation;
use crate::world::World;

/// The schedule's name.
pub const NAME: &str = "report";
/// The queue its workflows go to.
pub const QUEUE: &str = "ticks";
/// The application table its workflow writes.
pub const REPORTS: &str = "reports";
/// How far past the schedule's first cursor the liveness phase waits for
/// the cursor to get.
pub const HORIZON_MS: i64 = 2_400;
/// The chaos phase of a run with a schedule: long enough to hold a tick of
/// either period.
pub const CHAOS: Duration = Duration::from_millis(2_100);

/// The run's schedule.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// Seconds between ticks (1 or 2).
    pub period_s: i64,
    /// The catch-up policy.
    pub catch_up: CatchUp,
    /// How late a tick may fire and still be on time.
    pub grace_ms: i64,
    /// Which executors declare it (at least one; all register its
    /// workflow and serve its queue).
    pub declared_by: Vec<bool>,
    /// The pauser's pause: after how long, and for how long.
    pub pause: Option<(u64, u64)>,
    /// The ticks queue's retention (`crate::retention`), if any.
    pub retention_ms: Option<i64>,
    /// How often executors collect, and their batch size.
    pub gc: (u64, u32),
}

impl ScheduleSpec {
    /// The declaration every declaring executor makes.
    pub fn declaration(&self) -> Schedule {
        let cron = if self.period_s == 1 {
            "* * * * * *"
        } else {
            "*/2 * * * * *"
        };
        Schedule::new(NAME, cron)
            .expect("a valid cron expression")
            .queue(QUEUE)
            .catch_up(self.catch_up)
            .grace(Duration::from_millis(self.grace_ms as u64))
    }
}

/// The run's schedule (none before the schedules generation, and in a
/// sixth of the seeds), from a stream of its own.
pub fn draw(seed: u64, generation: Generation, executors: usize) -> Option<ScheduleSpec> {
    if generation < Generation::Schedules {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5c4e_d01e);
    if rng.gen_range(0..6) == 0 {
        return None;
    }
    let catch_up = match rng.gen_range(0..4) {
        0 => CatchUp::Skip,
        1 => CatchUp::Latest,
        _ => CatchUp::All {
            max: rng.gen_range(1..=4),
        },
    };
    let mut declared_by: Vec<bool> = (0..executors).map(|_| rng.gen_bool(0.7)).collect();
    let first = rng.gen_range(0..executors);
    declared_by[first] = true;
    Some(ScheduleSpec {
        period_s: rng.gen_range(1..=2),
        catch_up,
        grace_ms: rng.gen_range(30..=400),
        declared_by,
        pause: rng
            .gen_bool(0.6)
            .then(|| (rng.gen_range(0..1500), rng.gen_range(200..1200))),
        retention_ms: rng.gen_bool(0.7).then(|| rng.gen_range(0..=120)),
        gc: (rng.gen_range(20..=150), rng.gen_range(1..=3)),
    })
}

/// Whether a workflow ID is one of the schedule's ticks.
pub fn is_tick(id: &str) -> bool {
    id.starts_with("schedule:")
}

/// The scheduled workflow: records its tick in `reports` from a
/// transactional step and returns it.
pub struct Report {
    /// The run.
    pub world: Arc<World>,
    /// The executor incarnation running it.
    pub node: Arc<NodeLabel>,
}

impl Workflow<SimStorage> for Report {
    const NAME: &'static str = "report";
    type Input = ScheduledTick;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<SimStorage>,
        tick: ScheduledTick,
    ) -> Result<i64, WorkflowError> {
        self.world.faults.count("schedule.tick_run");
        let wf = ctx.workflow_id().to_owned();
        let world = self.world.clone();
        let at = tick.scheduled_at_ms;
        // Every other tick has a part computed by a child, awaited after a
        // short sleep: retention must not take the finished child from
        // under its running parent.
        if at.div_euclid(1000) % 2 == 0 {
            let part = ctx.start_child::<ReportPart>(at).await?;
            ctx.sleep(Duration::from_millis(80)).await?;
            let got = ctx.child_result(&part).await?;
            if got != at {
                return Err(WorkflowError::msg(format!("part {got} of tick {at}")));
            }
        }
        ctx.transaction("report", async move |conn| {
            write_tick(&world, conn, REPORTS, &wf, at).await
        })
        .await
    }
}

/// A transactional step's write: `{wf, tick}` into `table` under a key
/// unique per attempt (so an effect applied twice shows as two rows).
async fn write_tick(
    world: &World,
    conn: &mut tandem::storage::memory::MemConn,
    table: &'static str,
    wf: &str,
    at: i64,
) -> Result<i64, tandem::storage::memory::MemError> {
    let seq = {
        let mut state = world.state();
        state.ledger_seq += 1;
        state.ledger_seq
    };
    conn.insert(
        table,
        format!("{wf}/{seq}"),
        json!({ "wf": wf, "tick": at }),
    )
    .await?;
    Ok(at)
}

/// A tick's part, a child of its report: writes `report_parts` from a
/// transactional step and returns the tick.
pub struct ReportPart {
    /// The run.
    pub world: Arc<World>,
}

impl Workflow<SimStorage> for ReportPart {
    const NAME: &'static str = "report_part";
    type Input = i64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<SimStorage>,
        at: i64,
    ) -> Result<i64, WorkflowError> {
        let wf = ctx.workflow_id().to_owned();
        let world = self.world.clone();
        ctx.transaction("part", async move |conn| {
            write_tick(&world, conn, REPORT_PARTS, &wf, at).await
        })
        .await
    }
}

/// The application table the parts write.
pub const REPORT_PARTS: &str = "report_parts";

/// What every executor declares: the queue and the workflow, and the
/// schedule where the run says so.
pub fn declare(
    builder: EngineBuilder<SimStorage>,
    world: &Arc<World>,
    node: &Arc<NodeLabel>,
    executor: usize,
) -> EngineBuilder<SimStorage> {
    let Some(spec) = &world.workload.schedule else {
        return builder;
    };
    let report = Report {
        world: world.clone(),
        node: node.clone(),
    };
    let mut queue = Queue::new(QUEUE).worker_concurrency(2);
    if let Some(ms) = spec.retention_ms {
        queue = queue.retention(Duration::from_millis(ms as u64));
    }
    let builder = builder
        .queue(queue)
        .gc_interval(Duration::from_millis(spec.gc.0), spec.gc.1)
        .register(ReportPart {
            world: world.clone(),
        });
    if spec.declared_by[executor] {
        builder.schedule(report, spec.declaration())
    } else {
        builder.register(report)
    }
}

/// The `pauser` node: pauses the schedule for a while, then resumes it
/// (each retried until acknowledged; both are idempotent).
pub async fn pauser(world: Arc<World>) {
    let pause = world.workload.schedule.as_ref().and_then(|s| s.pause);
    if let Some((after_ms, for_ms)) = pause {
        let node = Arc::new(NodeLabel {
            name: "pauser".to_owned(),
            label: "pauser#1".to_owned(),
            executor_id: None,
            skew_ms: 0,
        });
        let storage = SimStorage::new(world.clone(), node);
        let env = crate::env::MadsimEnv::new(world.clone(), world.seed ^ 0x5a);
        let admin = tandem::Admin::with_env(storage, Arc::new(env));
        madsim::time::sleep(Duration::from_millis(after_ms)).await;
        for (paused, what) in [(true, "pause"), (false, "resume")] {
            loop {
                world.faults.count(if paused {
                    "admin.pause_schedule"
                } else {
                    "admin.resume_schedule"
                });
                let result = if paused {
                    admin.pause_schedule(NAME).await
                } else {
                    admin.resume_schedule(NAME).await
                };
                match result {
                    Ok(info) => {
                        world.log(format!("pauser: {what} ok, cursor {}", info.cursor_ms));
                        break;
                    }
                    // Not registered yet: wait for a declarer, unless
                    // every one was killed for good.
                    Err(tandem::Error::InvalidSchedule { .. }) if all_declarers_dead(&world) => {
                        world.log(format!("pauser: {what} given up: no executor declares it"));
                        break;
                    }
                    Err(e) => {
                        world.log(format!("pauser: {what} failed: {e}"));
                        madsim::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            if paused {
                madsim::time::sleep(Duration::from_millis(for_ms)).await;
            }
        }
    }
    world.state().pauser_done = true;
}

/// Why the liveness phase must wait for the schedule, if it must: the
/// pauser has not resumed it, its cursor has not passed the horizon, or a
/// tick's workflow has not finished.
pub fn unfinished(world: &World) -> Option<String> {
    world.workload.schedule.as_ref()?;
    if !world.state().pauser_done {
        return Some("the pauser".to_owned());
    }
    let history = world.mem.schedule_history();
    let orphaned = all_declarers_dead(world);
    let Some((_, first)) = history.first() else {
        return (!orphaned).then(|| "the schedule (not registered)".to_owned());
    };
    let last = &history.last().expect("not empty").1;
    if !orphaned && (last.paused || last.cursor_ms < first.cursor_ms + HORIZON_MS) {
        return Some(format!(
            "the schedule (cursor {} of {}, paused {})",
            last.cursor_ms,
            first.cursor_ms + HORIZON_MS,
            last.paused
        ));
    }
    let open: Vec<String> = world
        .mem
        .workflows()
        .into_iter()
        .filter(|r| is_tick(&r.id) && r.status != Status::Success)
        .map(|r| format!("{} ({})", r.id, r.status))
        .collect();
    (!open.is_empty()).then(|| open.join(", "))
}

/// Whether every executor that declares the schedule was killed for good
/// (then nobody fires it, and the window ends where it ended).
pub fn all_declarers_dead(world: &World) -> bool {
    let Some(spec) = &world.workload.schedule else {
        return true;
    };
    let state = world.state();
    spec.declared_by
        .iter()
        .enumerate()
        .filter(|(_, d)| **d)
        .all(|(i, _)| state.permanent.contains(&format!("exec-{i}")))
}

/// The ticks a firing that moved the cursor from `prev` to `now` must
/// enqueue, by the documented policy, from the ticks' arithmetic alone.
fn expected(spec: &ScheduleSpec, prev: i64, now: i64) -> Vec<i64> {
    let p = spec.period_s * 1000;
    let mut ticks = Vec::new();
    let mut t = (prev.div_euclid(p) + 1) * p;
    while t <= now {
        ticks.push(t);
        t += p;
    }
    let (missed, on_time): (Vec<i64>, Vec<i64>) =
        ticks.into_iter().partition(|t| *t < now - spec.grace_ms);
    let keep = match spec.catch_up {
        CatchUp::Skip => 0,
        CatchUp::Latest => 1,
        CatchUp::All { max } => max as usize,
    };
    let mut out: Vec<i64> = missed[missed.len().saturating_sub(keep)..].to_vec();
    out.extend(on_time);
    out
}

/// The end-of-run checks (see the module documentation).
pub fn check(world: &World) -> Vec<String> {
    let Some(spec) = &world.workload.schedule else {
        return Vec::new();
    };
    let mut v = Vec::new();
    let history: Vec<(u64, ScheduleRecord)> = world.mem.schedule_history();
    // The tick workflows, by the commit that created each.
    let mut created: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for (csn, r) in world.mem.workflow_history() {
        if is_tick(&r.id) && r.name == "report" && seen.insert(r.id.clone()) {
            created.entry(csn).or_default().push((r.id, r.input));
        }
    }
    let firing_csns: std::collections::BTreeSet<u64> = history.iter().map(|(c, _)| *c).collect();
    for (csn, ids) in &created {
        if !firing_csns.contains(csn) {
            v.push(format!(
                "commit {csn} enqueued ticks {ids:?} without moving the schedule's cursor"
            ));
        }
    }
    let tick_of = |id: &str, input: &str| -> Option<i64> {
        let tick: ScheduledTick = serde_json::from_str(input).ok()?;
        (tandem::schedule::tick_id(NAME, tick.scheduled_at_ms) == id && tick.schedule == NAME)
            .then_some(tick.scheduled_at_ms)
    };
    for pair in history.windows(2) {
        let ((_, prev), (csn, cur)) = (&pair[0], &pair[1]);
        let enqueued: Vec<&(String, String)> = created
            .get(csn)
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        if cur.cursor_ms < prev.cursor_ms {
            v.push(format!(
                "commit {csn} moved the schedule's cursor back from {} to {}",
                prev.cursor_ms, cur.cursor_ms
            ));
            continue;
        }
        if prev.paused && !cur.paused {
            // A resume: the pause's ticks are skipped, none enqueued.
            if !enqueued.is_empty() {
                v.push(format!("the resume at commit {csn} enqueued {enqueued:?}"));
            }
            continue;
        }
        if (prev.paused || cur.paused) && (cur.cursor_ms != prev.cursor_ms || !enqueued.is_empty())
        {
            v.push(format!(
                "commit {csn} fired the paused schedule: cursor {} to {}, enqueued {enqueued:?}",
                prev.cursor_ms, cur.cursor_ms
            ));
            continue;
        }
        let want = expected(spec, prev.cursor_ms, cur.cursor_ms);
        let mut got: Vec<i64> = Vec::new();
        for (id, input) in &enqueued {
            match tick_of(id, input) {
                Some(t) => got.push(t),
                None => v.push(format!(
                    "commit {csn} enqueued {id} with input {input}: not a tick of the schedule under its derived ID"
                )),
            }
        }
        got.sort();
        if got != want {
            v.push(format!(
                "commit {csn} moved the cursor from {} to {} ({:?}, grace {} ms) and enqueued ticks {got:?}, expected {want:?}",
                prev.cursor_ms, cur.cursor_ms, spec.catch_up, spec.grace_ms
            ));
        }
        if want.iter().any(|t| *t < cur.cursor_ms - spec.grace_ms) {
            world.faults.observe("schedule.missed_tick_caught_up");
        }
    }
    if let (Some((_, first)), Some((_, last))) = (history.first(), history.last())
        && last.cursor_ms < first.cursor_ms + HORIZON_MS
        && !all_declarers_dead(world)
    {
        v.push(format!(
            "the schedule's cursor ended at {}, short of the horizon {}",
            last.cursor_ms,
            first.cursor_ms + HORIZON_MS
        ));
    }
    // Every tick's workflow (and part) ran to its tick, its transactional
    // step exactly once: judged on its last committed version, which for a
    // workflow retention deleted is the one it deleted.
    let rows_of = |table: &str| {
        let mut written: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (_, row) in world.mem.rows(table) {
            written
                .entry(row["wf"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(row["tick"].as_i64().unwrap_or_default());
        }
        written
    };
    let (mut reports, mut parts) = (rows_of(REPORTS), rows_of(REPORT_PARTS));
    let mut last: BTreeMap<String, tandem::storage::memory::WorkflowRecord> = BTreeMap::new();
    for (_, r) in world.mem.workflow_history() {
        if is_tick(&r.id) {
            last.insert(r.id.clone(), r);
        }
    }
    for r in last.values() {
        let (tick, written) = if r.name == "report_part" {
            let parent = r.parent_id.as_deref().unwrap_or_default();
            let tick = last.get(parent).and_then(|p| tick_of(&p.id, &p.input));
            (tick, parts.remove(&r.id).unwrap_or_default())
        } else {
            (
                tick_of(&r.id, &r.input),
                reports.remove(&r.id).unwrap_or_default(),
            )
        };
        let output: Option<i64> = r.output.as_deref().and_then(|o| o.parse().ok());
        if r.status != Status::Success || output != tick || tick.is_none() {
            v.push(format!(
                "tick workflow {} ({}) ended {} with {:?} (error {:?}), expected SUCCESS with its tick {tick:?}",
                r.id, r.name, r.status, r.output, r.error
            ));
        }
        if written.len() != 1 || Some(written[0]) != tick {
            v.push(format!(
                "tick workflow {}'s transactional step wrote {written:?}, expected its tick once",
                r.id
            ));
        }
    }
    for (wf, ticks) in reports.into_iter().chain(parts) {
        v.push(format!(
            "report rows {ticks:?} of {wf}, which is no tick workflow"
        ));
    }
    v
}
