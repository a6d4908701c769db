//! `Replayer::check`, the deploy-time compatibility check: runs of v1 are
//! left unfinished at different points; v2 swaps two steps; the check
//! flags exactly the runs that passed the swapped point, and a run of a
//! workflow v2 no longer registers.

use std::time::Duration;

use tandem::replay::Divergence;
use tandem::{Engine, PgStorage, Workflow, WorkflowContext, WorkflowError};

use crate::support;

/// Steps `order[0..n]`, then a long wait for a message, then "end".
struct Flow {
    order: [u8; 4],
}

impl Workflow<PgStorage> for Flow {
    const NAME: &'static str = "deploy.flow";
    type Input = usize;
    type Output = ();

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: usize,
    ) -> Result<(), WorkflowError> {
        for i in &self.order[..n] {
            ctx.step(&format!("s{i}"), || async { Ok::<_, std::io::Error>(()) })
                .await?;
        }
        let _: Option<u8> = ctx.recv("go", Duration::from_secs(3600)).await?;
        ctx.step("end", || async { Ok::<_, std::io::Error>(()) })
            .await?;
        Ok(())
    }
}

/// A workflow only v1 registers.
struct Retired;

impl Workflow<PgStorage> for Retired {
    const NAME: &'static str = "deploy.retired";
    type Input = ();
    type Output = ();

    async fn run(&self, ctx: &mut WorkflowContext<PgStorage>, (): ()) -> Result<(), WorkflowError> {
        let _: Option<u8> = ctx.recv("go", Duration::from_secs(3600)).await?;
        Ok(())
    }
}

const V1: [u8; 4] = [0, 1, 2, 3];
const V2: [u8; 4] = [0, 1, 3, 2];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flags_exactly_the_runs_the_new_code_would_break() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.expect("connect");
    let v1 = Engine::builder(storage.clone())
        .executor_id("v1")
        .register(Flow { order: V1 })
        .register(Retired)
        .launch()
        .await
        .expect("launch v1");
    for n in 1..=4 {
        v1.start_with_id::<Flow>(format!("flow-{n}"), n)
            .await
            .expect("start");
    }
    v1.start_with_id::<Retired>("retired-1", ())
        .await
        .expect("start");
    let done = v1
        .start_with_id::<Flow>("flow-done", 4)
        .await
        .expect("start");
    // Every run reaches its wait; one is let through to the end.
    let admin = v1.admin();
    for n in 1..=4 {
        let id = format!("flow-{n}");
        support::timeout(Duration::from_secs(30), async {
            loop {
                let steps = admin
                    .get_workflow(&id)
                    .await
                    .unwrap()
                    .map_or(0, |d| d.steps.len());
                if steps >= n {
                    break;
                }
                support::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} never reached its wait"));
    }
    v1.send("flow-done", "go", &1u8).await.expect("send");
    done.result().await.expect("flow-done finishes");
    v1.shutdown().await;

    // The same code: everything unfinished is compatible.
    let same = Engine::builder(storage.clone())
        .register(Flow { order: V1 })
        .register(Retired)
        .replayer()
        .check()
        .await
        .expect("check v1 against v1");
    assert!(same.is_compatible(), "{same}");
    assert_eq!(same.runs.len(), 5, "{same}");

    // v2 swaps steps 2 and 3, and no longer registers `deploy.retired`.
    let check = Engine::builder(storage.clone())
        .register(Flow { order: V2 })
        .replayer()
        .check()
        .await
        .expect("check v2");
    println!("{check}");
    let verdict = |id: &str| {
        check
            .runs
            .iter()
            .find(|r| r.workflow_id == id)
            .unwrap_or_else(|| panic!("{id} checked: {check}"))
            .divergence
            .clone()
    };
    // Runs that had not reached step 2 continue under v2.
    assert_eq!(verdict("flow-1"), None);
    assert_eq!(verdict("flow-2"), None);
    // Runs past it: the first mismatch, recorded against new.
    for id in ["flow-3", "flow-4"] {
        assert_eq!(
            verdict(id),
            Some(Divergence::Step {
                step_id: 2,
                recorded: Some("s2".into()),
                current: Some("s3".into()),
            }),
            "{check}"
        );
    }
    assert_eq!(verdict("retired-1"), Some(Divergence::NotRegistered));
    // The finished run is not an unfinished one.
    assert!(check.runs.iter().all(|r| r.workflow_id != "flow-done"));
    assert!(!check.is_compatible());
    assert_eq!(check.incompatible().count(), 3);
    let json = check.to_json();
    assert_eq!(json["compatible"], false);
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(5));
    // And the report names the mismatch, one line per run (a graceful
    // shutdown handed the runs back: they are ENQUEUED).
    let text = check.to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("flow-3 "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        line,
        "flow-3 (deploy.flow, ENQUEUED, unversioned): INCOMPATIBLE: step 2 was recorded as \"s2\" but the code calls \"s3\""
    );
    assert!(
        text.ends_with("5 unfinished runs, 2 compatible, 3 incompatible, 0 not accepted"),
        "{text}"
    );
}

/// Plain steps "a", "b", "c" on any storage.
struct Abc;

impl<S: tandem::Storage> Workflow<S> for Abc {
    const NAME: &'static str = "deploy.abc";
    type Input = ();
    type Output = ();

    async fn run(&self, ctx: &mut WorkflowContext<S>, (): ()) -> Result<(), WorkflowError> {
        for name in ["a", "b", "c"] {
            ctx.step(name, || async { Ok::<_, std::io::Error>(()) })
                .await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_history_with_a_hole_is_incompatible_even_unfinished() {
    use tandem::storage::{StepKind, StepRecord, Storage as _, WorkflowInsert};
    let storage = tandem::MemStorage::new();
    storage
        .workflow_insert(WorkflowInsert {
            version: tandem::storage::DEFAULT_VERSION.to_owned(),
            trace_parent: None,
            id: "abc".into(),
            name: "deploy.abc".into(),
            input: "null".into(),
            executor_id: "gone".into(),
            parent_id: None,
            parent_epoch: None,
            deadline_ms: None,
            now_ms: 0,
        })
        .await
        .expect("insert");
    // Steps 0 ("a") and 2 ("c") recorded, step 1 missing: no execution of
    // this code writes that.
    for (step_id, name) in [(0, "a"), (2, "c")] {
        storage
            .step_record(StepRecord {
                version: None,
                workflow_id: "abc".into(),
                step_id,
                name: name.into(),
                kind: StepKind::Plain,
                output: Some("null".into()),
                error: None,
                owner_epoch: tandem::storage::EPOCH_FIRST,
                attempts: 1,
                started_ms: 0,
                now_ms: 0,
            })
            .await
            .expect("record");
    }
    let check = Engine::builder(storage)
        .register(Abc)
        .replayer()
        .check()
        .await
        .expect("check");
    assert_eq!(check.runs.len(), 1, "{check}");
    assert_eq!(
        check.runs[0].divergence,
        Some(Divergence::Gap {
            step_id: 1,
            current: "b".into()
        }),
        "{check}"
    );
}
