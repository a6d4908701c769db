//! Application versions and the patch API, across a deploy on real
//! PostgreSQL: v1 runs are crashed mid-run at two waits; a v2 that moves a
//! step is flagged for exactly the runs past the move; a v2 that keeps the
//! old path behind `ctx.patched` recovers every v1 run to completion; an
//! executor that does not accept v1 hands v1 runs back to the queue and
//! never runs them; a v3 that retires the patch is compatible once the v1
//! runs are gone.

use std::time::Duration;

use tandem::replay::{Check, Divergence};
use tandem::storage::{Status, Storage as _, Transaction as _, WorkflowFilter};
use tandem::{Engine, EngineBuilder, PgStorage, Workflow, WorkflowContext, WorkflowError};

use crate::support::{self, CrashEnv};

/// The order workflow as each release wrote it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Code {
    /// reserve, wait for "pay", charge, wait for "ship", ship.
    V1,
    /// Charges before waiting for "pay", without a patch.
    V2Moved,
    /// The same move behind `patched("charge-early")`.
    V2Patched,
    /// The move unconditional, the patch retired.
    V3,
}

struct Order(Code);

const WAIT: Duration = Duration::from_secs(3600);

async fn plain(ctx: &mut WorkflowContext<PgStorage>, name: &str) -> Result<(), WorkflowError> {
    ctx.step(name, || async { Ok::<_, std::io::Error>(()) })
        .await
}

impl Workflow<PgStorage> for Order {
    const NAME: &'static str = "versions.order";
    type Input = ();
    type Output = ();

    async fn run(&self, ctx: &mut WorkflowContext<PgStorage>, (): ()) -> Result<(), WorkflowError> {
        plain(ctx, "reserve").await?;
        let early = match self.0 {
            Code::V1 => false,
            Code::V2Moved => true,
            Code::V2Patched => ctx.patched("charge-early").await?,
            Code::V3 => {
                ctx.retire_patch("charge-early");
                true
            }
        };
        if early {
            plain(ctx, "charge").await?;
        }
        let _: Option<u8> = ctx.recv("pay", WAIT).await?;
        if !early {
            plain(ctx, "charge").await?;
        }
        let _: Option<u8> = ctx.recv("ship", WAIT).await?;
        plain(ctx, "ship").await
    }
}

fn builder(
    storage: &PgStorage,
    code: Code,
    version: &str,
    accepts: &[&str],
) -> EngineBuilder<PgStorage> {
    Engine::builder(storage.clone())
        .register(Order(code))
        .version(version)
        .accept_versions(accepts.iter().copied())
        .queue_poll_interval(Duration::from_millis(20))
        .lease(Duration::from_millis(500))
}

async fn launch(
    storage: &PgStorage,
    code: Code,
    version: &str,
    accepts: &[&str],
    executor: &str,
) -> Engine<PgStorage> {
    builder(storage, code, version, accepts)
        .executor_id(executor)
        .launch()
        .await
        .unwrap_or_else(|e| panic!("launch {code:?} as {executor}: {e}"))
}

async fn check(storage: &PgStorage, code: Code, version: &str, accepts: &[&str]) -> Check {
    let check = builder(storage, code, version, accepts)
        .replayer()
        .check()
        .await
        .expect("check");
    println!("{code:?} ({version}):\n{check}\n");
    check
}

fn divergence<'a>(check: &'a Check, id: &str) -> &'a Option<Divergence> {
    &check
        .runs
        .iter()
        .find(|r| r.workflow_id == id)
        .unwrap_or_else(|| panic!("{id} not checked: {check}"))
        .divergence
}

async fn step_names(storage: &PgStorage, id: &str) -> Vec<String> {
    let id = id.to_owned();
    storage
        .autocommit(move |tx| Box::pin(async move { tx.steps_info(&id).await }))
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.row.name)
        .collect()
}

async fn row(storage: &PgStorage, id: &str) -> tandem::storage::WorkflowRow {
    storage
        .workflow_get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{id} exists"))
}

async fn wait_for_steps(storage: &PgStorage, id: &str, n: usize) {
    support::timeout(Duration::from_secs(30), async {
        while step_names(storage, id).await.len() < n {
            support::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never recorded {n} steps"));
}

/// The steps of a run that took the patched path under v2.
const NEW_PATH: [&str; 6] = [
    "reserve",
    "patch:charge-early",
    "charge",
    "recv:pay",
    "recv:ship",
    "ship",
];

const PARKED_AT_PAY: [&str; 2] = ["p1", "p2"];
const PARKED_AT_SHIP: [&str; 2] = ["s1", "s2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patched_deploy_runs_v1_runs_to_completion_and_the_check_gates_the_rest() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.expect("connect");

    // v1 runs, crashed mid-run: two waiting for "pay" (1 step recorded),
    // two waiting for "ship" (reserve, recv:pay, charge recorded).
    let crash = CrashEnv::default();
    let v1 = builder(&storage, Code::V1, "v1", &[])
        .executor_id("node-a")
        .env(crash.clone())
        .launch()
        .await
        .expect("launch v1");
    for id in PARKED_AT_PAY.iter().chain(&PARKED_AT_SHIP) {
        v1.start_with_id::<Order>(*id, ()).await.expect("start");
    }
    for id in PARKED_AT_SHIP {
        wait_for_steps(&storage, id, 1).await;
        v1.send(id, "pay", &1u8).await.expect("send pay");
        wait_for_steps(&storage, id, 3).await;
    }
    for id in PARKED_AT_PAY {
        wait_for_steps(&storage, id, 1).await;
    }
    crash.crash();
    // And one run enqueued through the outbox that no code has run yet.
    sqlx::query(
        "SELECT tandem.enqueue_workflow('versions.order', 'null'::jsonb, workflow_id => 'e1')",
    )
    .execute(storage.pool())
    .await
    .expect("enqueue e1");
    for id in PARKED_AT_PAY.iter().chain(&PARKED_AT_SHIP) {
        assert_eq!(row(&storage, id).await.version.as_deref(), Some("v1"));
    }
    assert_eq!(row(&storage, "e1").await.version, None, "never ran");

    // v2 moving the step unpatched breaks exactly the runs past the move.
    let moved = check(&storage, Code::V2Moved, "v2", &["v1"]).await;
    for id in PARKED_AT_SHIP {
        assert_eq!(
            divergence(&moved, id),
            &Some(Divergence::Step {
                step_id: 1,
                recorded: Some("recv:pay".into()),
                current: Some("charge".into()),
            }),
            "{moved}"
        );
    }
    for id in PARKED_AT_PAY.iter().chain(&["e1"]) {
        assert_eq!(divergence(&moved, id), &None, "{id}: {moved}");
    }
    assert_eq!(moved.exit_status(), 1);
    // As a command: the report on stdout, the gate's status returned.
    let gate = |code| builder(&storage, code, "v2", &["v1"]).replayer();
    assert_eq!(gate(Code::V2Moved).check_command(true).await, 1);
    assert_eq!(gate(Code::V2Patched).check_command(false).await, 0);
    assert_eq!(moved.incompatible().count(), 2);
    // The same code declaring no acceptance of v1 would not break them: it
    // leaves them to v1 executors (the gate passes, the report says so).
    let alone = check(&storage, Code::V2Moved, "v2", &[]).await;
    assert_eq!(alone.exit_status(), 0, "{alone}");
    assert!(
        alone.to_string().contains(
            "s1 (versions.order, RUNNING, v1): not accepted, left to executors that accept v1 (this code would break it"
        ),
        "{alone}"
    );
    // Behind the patch, every run is compatible; a v3 that retires the
    // patch is not while v1 runs past the move remain.
    let patched = check(&storage, Code::V2Patched, "v2", &["v1"]).await;
    assert!(patched.is_compatible(), "{patched}");
    assert_eq!(patched.exit_status(), 0);
    let v3_early = check(&storage, Code::V3, "v3", &["v1", "v2"]).await;
    assert_eq!(
        v3_early
            .incompatible()
            .map(|r| r.workflow_id.as_str())
            .collect::<Vec<_>>(),
        PARKED_AT_SHIP.to_vec(),
        "{v3_early}"
    );

    // An executor of v2 that does not accept v1, restarted under the
    // crashed executor's ID: its recovery hands the v1 runs back to the
    // queue instead of running them, and its claims leave them there. The
    // never-run e1 it does claim, stamping v2.
    let strict = launch(&storage, Code::V2Patched, "v2", &[], "node-a").await;
    wait_for_steps(&storage, "e1", 3).await;
    assert_eq!(row(&storage, "e1").await.version.as_deref(), Some("v2"));
    assert_eq!(
        step_names(&storage, "e1").await,
        ["reserve", "patch:charge-early", "charge"]
    );
    // Several claim polls and a lease later, the v1 runs still wait,
    // untouched.
    support::sleep(Duration::from_millis(800)).await;
    for (id, steps) in PARKED_AT_PAY
        .iter()
        .map(|id| (id, 1))
        .chain(PARKED_AT_SHIP.iter().map(|id| (id, 3)))
    {
        let r = row(&storage, id).await;
        assert_eq!(
            (r.status, r.executor_id.as_deref()),
            (Status::Enqueued, None),
            "{id}"
        );
        assert_eq!(step_names(&storage, id).await.len(), steps, "{id}");
    }
    let versions = storage.versions_info().await.expect("versions");
    let v1_row = versions
        .iter()
        .find(|v| v.version.as_deref() == Some("v1"))
        .unwrap_or_else(|| panic!("{versions:?}"));
    assert_eq!(
        (v1_row.enqueued, v1_row.running, v1_row.executors_accepting),
        (4, 0, 0)
    );
    let v2_row = versions
        .iter()
        .find(|v| v.version.as_deref() == Some("v2"))
        .unwrap_or_else(|| panic!("{versions:?}"));
    assert_eq!((v2_row.running, v2_row.executors_running), (1, 1));
    let listed = strict
        .admin()
        .list_workflows(WorkflowFilter {
            version: Some("v1".into()),
            limit: 10,
            ..WorkflowFilter::default()
        })
        .await
        .expect("list v1");
    assert_eq!(listed.len(), 4);
    strict.shutdown().await;

    // The patched v2, accepting v1, runs every v1 run to completion: those
    // that had not reached the patch point take the new path (and record
    // the marker), those past it the old one their history holds.
    let v2 = launch(&storage, Code::V2Patched, "v2", &["v1"], "node-b").await;
    v2.start_with_id::<Order>("n1", ()).await.expect("start n1");
    for id in PARKED_AT_PAY {
        wait_for_steps(&storage, id, 3).await;
        v2.send(id, "pay", &1u8).await.expect("send pay");
    }
    for id in PARKED_AT_PAY.iter().chain(&PARKED_AT_SHIP) {
        v2.send(id, "ship", &1u8).await.expect("send ship");
    }
    for id in PARKED_AT_PAY.iter().chain(&PARKED_AT_SHIP) {
        let handle = v2.handle::<()>(*id);
        support::timeout(Duration::from_secs(30), handle.result())
            .await
            .unwrap_or_else(|_| panic!("{id} finishes"))
            .unwrap_or_else(|e| panic!("{id} succeeds: {e}"));
        // A run that took the patched path became a v2 run (v1 code could
        // no longer go on with it); one down the old path stays v1.
        let expected = if PARKED_AT_PAY.contains(id) {
            "v2"
        } else {
            "v1"
        };
        let r = row(&storage, id).await;
        assert_eq!(r.version.as_deref(), Some(expected), "{id}");
    }
    for id in PARKED_AT_PAY {
        assert_eq!(step_names(&storage, id).await, NEW_PATH, "{id}");
    }
    for id in PARKED_AT_SHIP {
        assert_eq!(
            step_names(&storage, id).await,
            ["reserve", "recv:pay", "charge", "recv:ship", "ship"],
            "{id}"
        );
    }
    // Every finished run replays under the code that finished it.
    for id in PARKED_AT_PAY.iter().chain(&PARKED_AT_SHIP) {
        let replay = v2.replay(id).await.expect("replay");
        assert!(replay.agrees(), "{id}: {replay:?}");
    }
    wait_for_steps(&storage, "n1", 3).await;
    wait_for_steps(&storage, "e1", 3).await;
    v2.shutdown().await;

    // No v1 run remains: the v3 that retires the patch (accepting v2) can
    // go on with every unfinished run, n1 and e1 among them.
    let v3_late = check(&storage, Code::V3, "v3", &["v2"]).await;
    assert!(v3_late.is_compatible(), "{v3_late}");
    assert_eq!(v3_late.runs.len(), 2, "{v3_late}");
    let v3 = launch(&storage, Code::V3, "v3", &["v2"], "node-c").await;
    v3.start_with_id::<Order>("n3", ()).await.expect("start n3");
    for id in ["n1", "e1", "n3"] {
        if id == "n3" {
            wait_for_steps(&storage, id, 2).await;
        }
        v3.send(id, "pay", &1u8).await.expect("send pay");
        v3.send(id, "ship", &1u8).await.expect("send ship");
        support::timeout(Duration::from_secs(30), v3.handle::<()>(id).result())
            .await
            .unwrap_or_else(|_| panic!("{id} finishes"))
            .unwrap_or_else(|e| panic!("{id} succeeds: {e}"));
    }
    assert_eq!(step_names(&storage, "n1").await, NEW_PATH);
    assert_eq!(
        step_names(&storage, "n3").await,
        ["reserve", "charge", "recv:pay", "recv:ship", "ship"],
        "a run started under v3 records no marker"
    );
    assert_eq!(row(&storage, "n3").await.version.as_deref(), Some("v3"));
    v3.shutdown().await;

    // A database that cannot be read: "could not run", never "compatible".
    let gone = PgStorage::connect(&url).await.expect("connect");
    gone.pool().close().await;
    let status = builder(&gone, Code::V3, "v3", &["v2"])
        .replayer()
        .check_command(false)
        .await;
    assert_eq!(status, 2);
}
