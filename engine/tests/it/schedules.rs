//! Cron schedules, on both backends: executors that declare the same
//! schedule enqueue each tick exactly once between them, with the tick as
//! the workflow's input; a pause skips its ticks; after downtime each
//! catch-up policy runs what it promises; and the declarations a user can
//! get wrong are refused at launch with the reason.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem::storage::{Status, Storage, WorkflowFilter};
use tandem::{
    Admin, CatchUp, Engine, Error, Queue, Schedule, ScheduledTick, Workflow, WorkflowContext,
    WorkflowError,
};

use crate::support::{self, App, both};

/// Every execution of a scheduled workflow's step: (schedule, tick).
static RUNS: Mutex<Vec<(String, i64)>> = Mutex::new(Vec::new());

/// A scheduled workflow: records its tick from a step and returns it.
struct Report;

impl<S: Storage> Workflow<S> for Report {
    const NAME: &'static str = "report";
    type Input = ScheduledTick;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        tick: ScheduledTick,
    ) -> Result<i64, WorkflowError> {
        ctx.step("report", || {
            let tick = tick.clone();
            async move {
                let mut runs = RUNS.lock().unwrap();
                runs.push((tick.schedule, tick.scheduled_at_ms));
                Ok::<_, std::io::Error>(tick.scheduled_at_ms)
            }
        })
        .await
    }
}

fn now_ms() -> i64 {
    #[allow(clippy::disallowed_methods)] // test code reads the real clock
    let now = SystemTime::now();
    now.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Sleeps until `ms` past a whole second, so that a test's own moments fall
/// between ticks of an every-second schedule.
async fn at_subsecond(ms: i64) {
    let wait = (1000 + ms - now_ms() % 1000) % 1000;
    support::sleep(Duration::from_millis(wait as u64)).await;
}

async fn launch<S: Storage>(storage: S, executor: &str, schedules: &[Schedule]) -> Engine<S> {
    let mut builder = Engine::builder(storage)
        .executor_id(executor)
        .queue(Queue::new("reports"))
        .queue_poll_interval(Duration::from_millis(50));
    for s in schedules {
        builder = builder.schedule(Report, s.clone());
    }
    builder.launch().await.unwrap()
}

/// The schedule's workflows: (tick from the ID, input, status), by tick.
async fn fired<S: Storage>(admin: &Admin<S>, schedule: &str) -> Vec<(i64, ScheduledTick, Status)> {
    let filter = WorkflowFilter {
        name: Some("report".to_owned()),
        limit: 10_000,
        ..WorkflowFilter::default()
    };
    let prefix = format!("schedule:{schedule}:");
    let mut out = Vec::new();
    for w in admin.list_workflows(filter).await.unwrap() {
        let Some(at) = w.row.id.strip_prefix(&prefix) else {
            continue;
        };
        let at: jiff::Timestamp = at.parse().expect("an RFC 3339 tick in the ID");
        let input: ScheduledTick = serde_json::from_str(&w.row.input).unwrap();
        out.push((at.as_millisecond(), input, w.row.status));
    }
    out.sort_by_key(|f| f.0);
    out
}

fn runs_of(schedule: &str) -> Vec<i64> {
    let runs = RUNS.lock().unwrap();
    let mut ticks: Vec<i64> = runs
        .iter()
        .filter(|(s, _)| s == schedule)
        .map(|(_, t)| *t)
        .collect();
    ticks.sort();
    ticks
}

async fn wait_finished<S: Storage>(admin: &Admin<S>, schedule: &str) {
    for _ in 0..100 {
        if fired(admin, schedule)
            .await
            .iter()
            .all(|f| f.2 == Status::Success)
        {
            return;
        }
        support::sleep(Duration::from_millis(50)).await;
    }
    panic!("the workflows of {schedule} did not finish");
}

both!(
    two_executors_enqueue_each_tick_exactly_once_with_the_tick_as_input,
    a_pause_skips_its_ticks_and_a_resume_starts_from_now,
    after_downtime_each_catch_up_policy_runs_what_it_promises,
);

async fn two_executors_enqueue_each_tick_exactly_once_with_the_tick_as_input<A: App>() {
    let (storage, _app) = A::create(1, 0).await;
    let name = format!("every-second-{}", std::any::type_name::<A>());
    let schedule = Schedule::new(&name, "* * * * * *")
        .unwrap()
        .queue("reports")
        .catch_up(CatchUp::All { max: 100 });
    let a = launch(storage.clone(), "exec-a", std::slice::from_ref(&schedule)).await;
    let b = launch(storage.clone(), "exec-b", std::slice::from_ref(&schedule)).await;
    support::sleep(Duration::from_millis(3_600)).await;
    a.shutdown().await;
    b.shutdown().await;
    let admin = Admin::new(storage.clone());
    // Finish what was enqueued last (an executor without the schedule).
    let c = Engine::builder(storage.clone())
        .executor_id("exec-c")
        .register(Report)
        .queue(Queue::new("reports"))
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    wait_finished(&admin, &name).await;
    c.shutdown().await;

    let fired = fired(&admin, &name).await;
    assert!(
        fired.len() >= 3,
        "3.6 s of an every-second schedule: {fired:?}"
    );
    let ticks: Vec<i64> = fired.iter().map(|f| f.0).collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "no tick missing or doubled: {ticks:?}"
        );
    }
    for (tick, input, _) in &fired {
        assert_eq!(input.scheduled_at_ms, *tick, "the input carries the tick");
        assert_eq!(input.schedule, name);
        assert_eq!(*tick % 1000, 0, "ticks fall on whole seconds");
    }
    // Each tick's step ran once (no crash here, so at-least-once is once).
    assert_eq!(runs_of(&name), ticks);
    let info = admin.schedules().await.unwrap();
    let info = info.iter().find(|s| s.name == name).unwrap();
    assert_eq!(info.last_tick_ms, ticks.last().copied());
    assert_eq!(info.catch_up, Some(CatchUp::All { max: 100 }));
    assert_eq!(info.workflow, "report");
    assert!(!info.paused);
    assert!(info.next_tick_ms.unwrap() > *ticks.last().unwrap());
}

async fn a_pause_skips_its_ticks_and_a_resume_starts_from_now<A: App>() {
    let (storage, _app) = A::create(1, 0).await;
    let name = format!("pausable-{}", std::any::type_name::<A>());
    let schedule = Schedule::new(&name, "* * * * * *")
        .unwrap()
        .queue("reports")
        .catch_up(CatchUp::All { max: 100 });
    let engine = launch(storage.clone(), "exec-a", &[schedule]).await;
    let admin = Admin::new(storage.clone());
    at_subsecond(500).await;
    support::sleep(Duration::from_millis(1_000)).await;
    let paused = admin.pause_schedule(&name).await.unwrap();
    let paused_at = now_ms();
    assert!(paused.paused && paused.next_tick_ms.is_none());
    assert!(
        admin.pause_schedule(&name).await.unwrap().paused,
        "pausing twice is harmless"
    );
    support::sleep(Duration::from_millis(3_000)).await;
    let resumed_at = now_ms();
    let resumed = admin.resume_schedule(&name).await.unwrap();
    assert!(!resumed.paused);
    support::sleep(Duration::from_millis(2_000)).await;
    wait_finished(&admin, &name).await;
    engine.shutdown().await;
    // Resuming a running schedule does not move its cursor (it would skip
    // ticks). Checked with the engine stopped: its schedule loop moves the
    // cursor to its clock whenever it fires, which could fall between two
    // resumes (a CI run caught a 1 ms move that way).
    let once = admin.resume_schedule(&name).await.unwrap();
    // Apart by more than the cursor's unit, so that a resume that moved
    // it to the clock would show.
    support::sleep(Duration::from_millis(5)).await;
    let again = admin.resume_schedule(&name).await.unwrap();
    assert!(!once.paused && !again.paused);
    assert_eq!(again.cursor_ms, once.cursor_ms);

    let ticks: BTreeSet<i64> = fired(&admin, &name).await.iter().map(|f| f.0).collect();
    let during: Vec<&i64> = ticks
        .iter()
        .filter(|t| **t > paused_at && **t <= resumed_at)
        .collect();
    assert!(
        during.is_empty(),
        "ticks of the pause ran: {during:?} of {ticks:?}"
    );
    assert!(
        ticks.iter().any(|t| *t < paused_at),
        "ticks before the pause: {ticks:?}"
    );
    let after: Vec<&i64> = ticks.iter().filter(|t| **t > resumed_at).collect();
    assert!(after.len() >= 2, "ticks after the resume: {ticks:?}");
    let unknown = admin.pause_schedule("no-such-schedule").await.unwrap_err();
    assert!(
        matches!(unknown, Error::InvalidSchedule { .. }),
        "{unknown}"
    );
}

async fn after_downtime_each_catch_up_policy_runs_what_it_promises<A: App>() {
    let (storage, _app) = A::create(1, 0).await;
    let suffix = std::any::type_name::<A>();
    let grace = Duration::from_millis(300);
    let policies = [
        ("skip", CatchUp::Skip),
        ("latest", CatchUp::Latest),
        ("all", CatchUp::All { max: 100 }),
        ("all2", CatchUp::All { max: 2 }),
    ];
    let schedules: Vec<Schedule> = policies
        .iter()
        .map(|(p, c)| {
            Schedule::new(format!("{p}-{suffix}"), "* * * * * *")
                .unwrap()
                .queue("reports")
                .catch_up(*c)
                .grace(grace)
        })
        .collect();
    let engine = launch(storage.clone(), "exec-a", &schedules).await;
    // Down from x.500 to (x+4).500: the ticks x+1 .. x+4 are missed (more
    // than the grace late when the executor is back).
    at_subsecond(500).await;
    support::sleep(Duration::from_millis(1_000)).await;
    engine.shutdown().await;
    let down_at = now_ms();
    support::sleep(Duration::from_millis(4_000)).await;
    let up_at = now_ms();
    let engine = launch(storage.clone(), "exec-a", &schedules).await;
    support::sleep(Duration::from_millis(1_600)).await;
    let admin = Admin::new(storage.clone());
    for (p, _) in &policies {
        wait_finished(&admin, &format!("{p}-{suffix}")).await;
    }
    engine.shutdown().await;

    let missed: Vec<i64> = (down_at / 1000 + 1..=up_at / 1000)
        .map(|s| s * 1000)
        .filter(|t| *t < up_at - grace.as_millis() as i64)
        .collect();
    assert!(missed.len() >= 3, "{missed:?}");
    for (p, _) in &policies {
        let name = format!("{p}-{suffix}");
        let ticks: Vec<i64> = fired(&admin, &name).await.iter().map(|f| f.0).collect();
        let ran: Vec<i64> = missed
            .iter()
            .copied()
            .filter(|t| ticks.contains(t))
            .collect();
        let expected: Vec<i64> = match *p {
            "skip" => vec![],
            "latest" => missed[missed.len() - 1..].to_vec(),
            "all" => missed.clone(),
            _ => missed[missed.len() - 2..].to_vec(),
        };
        assert_eq!(ran, expected, "{p}: missed {missed:?}, fired {ticks:?}");
        assert!(
            ticks.iter().any(|t| *t < down_at),
            "{p} ran before: {ticks:?}"
        );
        assert!(
            ticks.iter().any(|t| *t > up_at),
            "{p} runs after: {ticks:?}"
        );
        let after: Vec<i64> = ticks.iter().copied().filter(|t| *t > up_at).collect();
        for pair in after.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                1000,
                "{p}: on-time ticks all run: {ticks:?}"
            );
        }
    }
}

#[tokio::test]
async fn declarations_a_user_can_get_wrong_are_refused_with_the_reason() {
    let storage = tandem::MemStorage::new();
    let schedule = Schedule::new("nightly", "0 0 3 * * *")
        .unwrap()
        .queue("undeclared");
    let err = Engine::builder(storage)
        .schedule(Report, schedule)
        .launch()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("its queue \"undeclared\" is not declared"),
        "{err}"
    );
    let err = Schedule::new("nightly", "0 0 25 * * *").unwrap_err();
    assert!(err.to_string().contains("does not parse"), "{err}");
    let err = Schedule::new("nightly", "0 0 3 * *").unwrap_err();
    assert!(err.to_string().contains("six or seven fields"), "{err}");
}
