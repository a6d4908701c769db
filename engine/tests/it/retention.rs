//! Retention, on both backends: executors delete finished workflow trees
//! past their queue's retention with their steps, messages and events;
//! never a running workflow, nor a finished child of a running parent, nor
//! a queue's workflows that keep theirs; a deleted ID started again runs
//! anew, replaying nothing of the deleted run; and `Admin::gc` counts
//! (dry) exactly what it then deletes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem::storage::{Status, Storage};
use tandem::{Admin, Engine, EnqueueOptions, Queue, Workflow, WorkflowContext, WorkflowError};

use crate::support::{self, App, both};

/// How often each leaf ran, by its parent's ID.
static LEAF_RUNS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TreeIn {
    n: i64,
    /// Wait for a message `go` (holding the tree running) before finishing.
    hold: bool,
    /// Listen for a message for 200 ms and return what came (a stale
    /// message of a deleted run under the same ID must not).
    probe: bool,
    /// Also start a child that waits for a message `go`, and finish
    /// without awaiting it.
    detach: bool,
}

/// Publishes an event, runs a child, and optionally waits or listens.
struct Tree;

impl<S: Storage> Workflow<S> for Tree {
    const NAME: &'static str = "retention_tree";
    type Input = TreeIn;
    type Output = (i64, Option<i64>);

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        input: TreeIn,
    ) -> Result<(i64, Option<i64>), WorkflowError> {
        ctx.set_event("n", &input.n).await?;
        let leaf = ctx
            .start_child::<Leaf>(ctx.workflow_id().to_owned())
            .await?;
        let doubled = ctx.child_result(&leaf).await?;
        if input.detach {
            ctx.start_child::<Waiter>(()).await?;
        }
        let mut got = None;
        if input.hold {
            got = ctx.recv::<i64>("go", Duration::from_secs(60)).await?;
        }
        if input.probe {
            got = ctx.recv::<i64>("go", Duration::from_millis(200)).await?;
        }
        Ok((doubled + input.n, got))
    }
}

/// Counts its runs under its parent's ID.
struct Leaf;

impl<S: Storage> Workflow<S> for Leaf {
    const NAME: &'static str = "retention_leaf";
    type Input = String;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        parent: String,
    ) -> Result<i64, WorkflowError> {
        ctx.step("count", || {
            let parent = parent.clone();
            async move {
                let mut runs = LEAF_RUNS.lock().unwrap();
                let n = runs.entry(parent).or_insert(0);
                *n += 1;
                Ok::<_, std::io::Error>(i64::from(*n) * 100)
            }
        })
        .await
    }
}

/// Waits for a message `go`.
struct Waiter;

impl<S: Storage> Workflow<S> for Waiter {
    const NAME: &'static str = "retention_waiter";
    type Input = ();
    type Output = Option<i64>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        (): (),
    ) -> Result<Option<i64>, WorkflowError> {
        ctx.recv::<i64>("go", Duration::from_secs(60)).await
    }
}

fn input(n: i64) -> TreeIn {
    TreeIn {
        n,
        hold: false,
        probe: false,
        detach: false,
    }
}

async fn launch<S: Storage>(storage: S) -> Engine<S> {
    Engine::builder(storage)
        .register(Tree)
        .register(Leaf)
        .register(Waiter)
        .queue(Queue::new("short").retention(Duration::from_millis(300)))
        .queue_poll_interval(Duration::from_millis(50))
        .gc_interval(Duration::from_millis(100), 2)
        .launch()
        .await
        .unwrap()
}

async fn status<S: Storage>(admin: &Admin<S>, id: &str) -> Option<Status> {
    admin
        .get_workflow(id)
        .await
        .unwrap()
        .map(|d| d.workflow.row.status)
}

async fn wait_gone<S: Storage>(admin: &Admin<S>, id: &str) {
    support::timeout(Duration::from_secs(20), async {
        while status(admin, id).await.is_some() {
            support::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} was never collected"));
}

both!(
    finished_trees_past_their_retention_go_whole_and_nothing_else_does,
    a_dry_run_counts_exactly_what_the_collection_then_deletes,
);

async fn finished_trees_past_their_retention_go_whole_and_nothing_else_does<A: App>() {
    let (storage, app) = A::create(1, 0).await;
    let prefix = std::any::type_name::<A>();
    let id = |name: &str| format!("{prefix}-{name}");
    let engine = launch(storage.clone()).await;
    let admin = engine.admin();
    let short = |wid: String| EnqueueOptions::default().queue("short").workflow_id(wid);
    let mut finished = Vec::new();
    for n in 1..=5 {
        let h = engine
            .enqueue::<Tree>(input(n), short(id(&format!("t{n}"))))
            .await
            .unwrap();
        finished.push(h);
    }
    let held = engine
        .enqueue::<Tree>(
            TreeIn {
                hold: true,
                ..input(6)
            },
            short(id("hold")),
        )
        .await
        .unwrap();
    // Finishes at once, leaving a child that waits: the tree stays.
    engine
        .enqueue::<Tree>(
            TreeIn {
                detach: true,
                ..input(8)
            },
            short(id("detach")),
        )
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    // Started locally: the `default` queue, which keeps its workflows.
    let kept = engine
        .start_with_id::<Tree>(id("keep"), input(7))
        .await
        .unwrap();
    for h in &finished {
        h.result().await.unwrap();
    }
    kept.result().await.unwrap();
    // A message to a finished workflow waits for nobody: it goes with it.
    engine.send(&id("t1"), "go", &99i64).await.unwrap();
    let hold_child = format!("{}-child-1", id("hold"));
    support::timeout(Duration::from_secs(20), async {
        while status(&admin, &hold_child).await != Some(Status::Success) {
            support::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    for n in 1..=5 {
        wait_gone(&admin, &id(&format!("t{n}"))).await;
        wait_gone(&admin, &format!("{}-child-1", id(&format!("t{n}")))).await;
    }
    // Gone whole: no checkpoint of theirs is left, nor their event.
    let steps = app.steps().await;
    let left: Vec<&str> = steps
        .iter()
        .map(|s| s.workflow_id.as_str())
        .filter(|w| w.contains("-t"))
        .collect();
    assert!(
        left.is_empty(),
        "checkpoints outlived their workflows: {left:?}"
    );
    let event: Option<i64> = admin
        .get_event(&id("t1"), "n", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(event, None);
    // A running tree stays, its finished child with it; the default queue
    // keeps its workflows.
    support::sleep(Duration::from_millis(600)).await;
    assert_eq!(status(&admin, &id("hold")).await, Some(Status::Running));
    assert_eq!(status(&admin, &hold_child).await, Some(Status::Success));
    assert_eq!(status(&admin, &id("keep")).await, Some(Status::Success));
    let detached = format!("{}-child-3", id("detach"));
    assert_eq!(status(&admin, &id("detach")).await, Some(Status::Success));
    assert_eq!(status(&admin, &detached).await, Some(Status::Running));
    engine.send(&detached, "go", &2i64).await.unwrap();
    wait_gone(&admin, &detached).await;
    wait_gone(&admin, &id("detach")).await;
    assert_eq!(
        status(&admin, &format!("{}-child-1", id("keep"))).await,
        Some(Status::Success)
    );
    // Once it finishes, it goes too (its parent awaited the child fine).
    engine.send(&id("hold"), "go", &1i64).await.unwrap();
    assert_eq!(held.result().await.unwrap(), (106, Some(1)));
    wait_gone(&admin, &id("hold")).await;
    wait_gone(&admin, &hold_child).await;

    // The deleted ID, started again, runs anew: its child runs a second
    // time (no checkpoint of the old run is replayed), and the old run's
    // message is not delivered to it.
    let again = engine
        .enqueue::<Tree>(
            TreeIn {
                probe: true,
                ..input(1)
            },
            short(id("t1")),
        )
        .await
        .unwrap();
    assert_eq!(again.result().await.unwrap(), (201, None));
    assert_eq!(LEAF_RUNS.lock().unwrap()[&id("t1")], 2);
    engine.shutdown().await;
}

async fn a_dry_run_counts_exactly_what_the_collection_then_deletes<A: App>() {
    let (storage, _app) = A::create(1, 0).await;
    let prefix = std::any::type_name::<A>();
    // No retention anywhere: only `Admin::gc` with an age collects.
    let engine = Engine::builder(storage.clone())
        .register(Tree)
        .register(Leaf)
        .launch()
        .await
        .unwrap();
    for n in 0..7 {
        engine
            .start_with_id::<Tree>(format!("{prefix}-d{n}"), input(n))
            .await
            .unwrap()
            .result()
            .await
            .unwrap();
    }
    engine
        .send(&format!("{prefix}-d0"), "go", &1i64)
        .await
        .unwrap();
    let admin = Admin::new(storage.clone());
    let hour = Some(Duration::from_secs(3600));
    let none = admin.gc(hour, true, 2).await.unwrap();
    assert_eq!(none.workflows, 0, "nothing finished an hour ago");
    support::sleep(Duration::from_millis(20)).await;
    let recent = Some(Duration::from_millis(1));
    let dry = admin.gc(recent, true, 2).await.unwrap();
    // 7 trees of 2 workflows; per tree: the parent's event, child start,
    // child result and the child's step; one message.
    assert_eq!(
        (
            dry.roots,
            dry.workflows,
            dry.steps,
            dry.messages,
            dry.events
        ),
        (7, 14, 7 * 4, 1, 7),
        "{dry:?}"
    );
    assert_eq!(
        admin.gc(recent, true, 2).await.unwrap(),
        dry,
        "a dry run deletes nothing"
    );
    let done = admin.gc(recent, false, 2).await.unwrap();
    assert_eq!(
        (done.workflows, done.steps, done.messages, done.events),
        (dry.workflows, dry.steps, dry.messages, dry.events)
    );
    assert_eq!(admin.gc(recent, true, 2).await.unwrap().workflows, 0);
    engine.shutdown().await;
}
