//! Workflow behaviour, on both backends: steps, commits, idempotent start,
//! replay, non-determinism, recovery and fencing.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tandem::storage::{StepKind, Storage};
use tandem::{Engine, Error, RetryPolicy, Workflow, WorkflowContext, WorkflowError};
use tokio::sync::{Semaphore, mpsc};

use crate::support::{self, App, CrashEnv, Probe, Receipt, Transfer, TransferInput, both};

both!(
    transfer_commits_once_per_step_plus_start_and_completion,
    starting_an_existing_id_attaches_to_the_first_run,
    an_id_owned_by_another_workflow_is_a_conflict,
    a_restarted_engine_resumes_from_the_last_checkpoint,
    a_renamed_step_on_replay_fails_the_workflow_naming_both,
    a_zombie_execution_is_fenced_and_its_writes_roll_back,
    a_plain_step_retries_per_policy,
    a_step_failure_is_recorded_and_replayed_like_an_output,
    concurrent_workflows_share_start_checkpoint_and_completion_commits,
);

fn input(from: i64, to: i64, amount: i64) -> TransferInput {
    TransferInput {
        from,
        to,
        amount,
        notify_delay_ms: 0,
    }
}

async fn transfer_commits_once_per_step_plus_start_and_completion<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let probe = Probe::new(storage);
    let engine = Engine::builder(probe.clone())
        .register(Transfer {
            app: bank.app.clone(),
        })
        .launch()
        .await
        .unwrap();
    probe.state.commits.store(0, Ordering::SeqCst);

    let handle = engine.start::<Transfer<A>>(input(1, 2, 30)).await.unwrap();
    let receipt = handle.result().await.unwrap();

    assert_eq!(
        receipt,
        Receipt {
            from_balance: 970,
            to_balance: 1030
        }
    );
    // k + 2 for k = 3 steps: the start, one per step, the completion; and a
    // first execution never reads its history.
    assert_eq!(probe.state.commits.load(Ordering::SeqCst), 5);
    assert_eq!(probe.state.reads.load(Ordering::SeqCst), 0);
    let steps: Vec<(i32, String, StepKind, i64)> = bank
        .steps_of(handle.workflow_id())
        .await
        .into_iter()
        .map(|s| (s.step_id, s.name, s.kind, s.owner_epoch))
        .collect();
    let expected = [
        (0, "debit", StepKind::Transaction),
        (1, "notify", StepKind::Plain),
        (2, "credit", StepKind::Transaction),
    ];
    assert_eq!(steps.len(), 3);
    for ((id, name, kind, epoch), (eid, ename, ekind)) in steps.iter().zip(expected) {
        assert_eq!((*id, name.as_str(), *kind, *epoch), (eid, ename, ekind, 1));
    }
    engine.shutdown().await;
}

async fn starting_an_existing_id_attaches_to_the_first_run<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let launch = |executor: &'static str| {
        Engine::builder(storage.clone())
            .executor_id(executor)
            .register(Transfer {
                app: bank.app.clone(),
            })
            .launch()
    };
    let (a, b) = (launch("a").await.unwrap(), launch("b").await.unwrap());

    // Two engines race to start the same ID with different inputs.
    let (ha, hb) = tokio::join!(
        a.start_with_id::<Transfer<A>>("same", input(1, 2, 10)),
        b.start_with_id::<Transfer<A>>("same", input(3, 4, 99)),
    );
    let (ra, rb) = (
        ha.unwrap().result().await.unwrap(),
        hb.unwrap().result().await.unwrap(),
    );
    assert_eq!(ra, rb, "both handles see the one run");
    assert_eq!(bank.workflow_count().await, 1);
    assert_eq!(bank.ledger_counts().await.len(), 2, "one debit, one credit");

    // Starting it again once finished returns the same result, runs nothing.
    let again = a
        .start_with_id::<Transfer<A>>("same", input(5, 6, 1))
        .await
        .unwrap();
    assert_eq!(again.result().await.unwrap(), ra);
    assert_eq!(bank.ledger_rows(None).await, 2);
    let moved = bank.balances().await;
    assert!(
        moved == bank.expected_balances(&[input(1, 2, 10)])
            || moved == bank.expected_balances(&[input(3, 4, 99)])
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A workflow with a different persisted name, for ID conflicts.
struct Other;

impl<S: Storage> Workflow<S> for Other {
    const NAME: &'static str = "other";
    type Input = ();
    type Output = ();

    async fn run(&self, _: &mut WorkflowContext<S>, _: ()) -> Result<(), WorkflowError> {
        Ok(())
    }
}

async fn an_id_owned_by_another_workflow_is_a_conflict<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let engine = Engine::builder(storage)
        .register(Transfer {
            app: bank.app.clone(),
        })
        .register(Other)
        .launch()
        .await
        .unwrap();
    engine
        .start_with_id::<Other>("taken", ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let err = engine
        .start_with_id::<Transfer<A>>("taken", input(1, 2, 3))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::WorkflowConflict { existing, requested, .. } if existing == "other" && requested == "transfer"),
        "{err}"
    );
    assert_eq!(bank.ledger_rows(None).await, 0);
    engine.shutdown().await;
}

/// Two transactional steps with a gate between them, so tests can stop a
/// workflow mid-way. `first_step` names step 0, so a second version of the
/// code can rename it.
/// Each execution reports how its second step ended.
struct Gated<A> {
    gate: Arc<Semaphore>,
    first_step: &'static str,
    report: mpsc::UnboundedSender<String>,
    app: PhantomData<fn() -> A>,
}

impl<A: App> Gated<A> {
    fn new(first_step: &'static str) -> (Gated<A>, Arc<Semaphore>) {
        let (gated, gate, _) = Gated::reporting(first_step);
        (gated, gate)
    }

    fn reporting(
        first_step: &'static str,
    ) -> (Gated<A>, Arc<Semaphore>, mpsc::UnboundedReceiver<String>) {
        let gate = Arc::new(Semaphore::new(0));
        let (report, reports) = mpsc::unbounded_channel();
        let gated = Gated {
            gate: gate.clone(),
            first_step,
            report,
            app: PhantomData,
        };
        (gated, gate, reports)
    }
}

impl<A: App, S: Storage<Conn = <A::Storage as Storage>::Conn>> Workflow<S> for Gated<A> {
    const NAME: &'static str = "gated";
    type Input = i64;
    type Output = (i64, i64);

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        amount: i64,
    ) -> Result<(i64, i64), WorkflowError> {
        let id = ctx.workflow_id().to_owned();
        let first = ctx
            .transaction(self.first_step, {
                let id = id.clone();
                async move |tx| A::apply(tx, &id, "first", 0, amount).await
            })
            .await?;
        // Outside any step: a crash or takeover can land here.
        self.gate.acquire().await?.forget();
        let second = ctx
            .transaction("second", async move |tx| {
                A::apply(tx, &id, "second", 1, amount).await
            })
            .await;
        let _ = self.report.send(match &second {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        });
        Ok((first, second?))
    }
}

async fn a_restarted_engine_resumes_from_the_last_checkpoint<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let crash = CrashEnv::default();
    let (gated, _closed_gate) = Gated::<A>::new("first");
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(gated)
        .launch()
        .await
        .unwrap();
    let handle = engine
        .start_with_id::<Gated<A>>("resume-me", 5)
        .await
        .unwrap();
    bank.wait_for_steps("resume-me", 1).await;
    crash.crash();

    let (gated, gate) = Gated::<A>::new("first");
    gate.add_permits(1);
    let restarted = Engine::builder(storage)
        .register(gated)
        .launch()
        .await
        .unwrap();
    let result = restarted
        .handle::<(i64, i64)>("resume-me")
        .result()
        .await
        .unwrap();

    assert_eq!(result, (1005, 1005));
    assert_eq!(
        bank.ledger_counts().await,
        vec![
            ("resume-me".into(), "first".into(), 1),
            ("resume-me".into(), "second".into(), 1)
        ]
    );
    let epochs: Vec<(i32, i64)> = bank
        .steps_of("resume-me")
        .await
        .into_iter()
        .map(|s| (s.step_id, s.owner_epoch))
        .collect();
    assert_eq!(
        epochs,
        vec![(0, 1), (1, 2)],
        "step 0 replayed, step 1 run by the new epoch"
    );
    drop(handle);
    restarted.shutdown().await;
}

async fn a_renamed_step_on_replay_fails_the_workflow_naming_both<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let crash = CrashEnv::default();
    let (v1, _gate) = Gated::<A>::new("first");
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(v1)
        .launch()
        .await
        .unwrap();
    engine
        .start_with_id::<Gated<A>>("evolving", 5)
        .await
        .unwrap();
    bank.wait_for_steps("evolving", 1).await;
    crash.crash();

    let (v2, gate) = Gated::<A>::new("first_renamed");
    gate.add_permits(1);
    let engine = Engine::builder(storage)
        .register(v2)
        .launch()
        .await
        .unwrap();
    let err = engine
        .handle::<(i64, i64)>("evolving")
        .result()
        .await
        .unwrap_err();

    let Error::WorkflowFailed { message, .. } = &err else {
        panic!("expected a failed workflow, got {err}");
    };
    assert!(
        message.contains("\"first\"")
            && message.contains("\"first_renamed\"")
            && message.contains("non-deterministic"),
        "{message}"
    );
    assert_eq!(bank.ledger_rows(Some("second")).await, 0);
    engine.shutdown().await;
}

async fn a_zombie_execution_is_fenced_and_its_writes_roll_back<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let (zombie_code, zombie_gate, mut zombie_reports) = Gated::<A>::reporting("first");
    let zombie = Engine::builder(storage.clone())
        .register(zombie_code)
        .launch()
        .await
        .unwrap();
    let zombie_handle = zombie
        .start_with_id::<Gated<A>>("contested", 7)
        .await
        .unwrap();
    bank.wait_for_steps("contested", 1).await;

    // A second incarnation of the same executor takes the workflow over while
    // the first still runs (it is parked at its gate, not dead).
    let (live_code, live_gate) = Gated::<A>::new("first");
    let live = Engine::builder(storage)
        .register(live_code)
        .launch()
        .await
        .unwrap();

    // The zombie goes first: its next step runs the application write, but
    // the checkpoint is fenced, so both roll back.
    zombie_gate.add_permits(1);
    let zombie_second = zombie_reports.recv().await.unwrap();
    assert!(zombie_second.contains("fenced"), "{zombie_second}");
    assert_eq!(bank.ledger_rows(Some("second")).await, 0);
    live_gate.add_permits(1);
    let result = live
        .handle::<(i64, i64)>("contested")
        .result()
        .await
        .unwrap();
    assert_eq!(zombie_handle.result().await.unwrap(), result);

    assert_eq!(result, (1007, 1007));
    assert_eq!(bank.ledger_rows(Some("second")).await, 1);
    assert_eq!(bank.balances().await[..2], [1007, 1007]);
    let epochs: Vec<i64> = bank
        .steps_of("contested")
        .await
        .into_iter()
        .filter(|s| s.step_id == 1)
        .map(|s| s.owner_epoch)
        .collect();
    assert_eq!(
        epochs,
        vec![2],
        "only the live execution's checkpoint exists"
    );
    zombie.shutdown().await;
    live.shutdown().await;
}

/// A plain step that fails `failures` times before succeeding, then a gate.
struct Flaky {
    calls: Arc<AtomicUsize>,
    failures: usize,
    policy: RetryPolicy,
    gate: Arc<Semaphore>,
}

impl<S: Storage> Workflow<S> for Flaky {
    const NAME: &'static str = "flaky";
    type Input = ();
    type Output = String;

    async fn run(&self, ctx: &mut WorkflowContext<S>, _: ()) -> Result<String, WorkflowError> {
        let outcome = ctx
            .step_with("call", self.policy.clone(), || async {
                let call = self.calls.fetch_add(1, Ordering::SeqCst);
                if call < self.failures {
                    Err(format!("boom {call}"))
                } else {
                    Ok(format!("ok after {call}"))
                }
            })
            .await;
        self.gate.acquire().await?.forget();
        Ok(match outcome {
            Ok(v) => v,
            Err(e) => format!("caught: {e}"),
        })
    }
}

fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        backoff_initial: Duration::from_millis(1),
        ..RetryPolicy::exponential(attempts)
    }
}

async fn a_plain_step_retries_per_policy<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(1));
    let engine = Engine::builder(storage)
        .register(Flaky {
            calls: calls.clone(),
            failures: 2,
            policy: quick_retries(3),
            gate,
        })
        .launch()
        .await
        .unwrap();
    let handle = engine.start::<Flaky>(()).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "ok after 2");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let attempts: Vec<i32> = bank
        .steps_of(handle.workflow_id())
        .await
        .into_iter()
        .map(|s| s.attempts)
        .collect();
    assert_eq!(attempts, vec![3]);
    engine.shutdown().await;
}

async fn a_step_failure_is_recorded_and_replayed_like_an_output<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let crash = CrashEnv::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder(storage.clone())
        .env(crash.clone())
        .register(Flaky {
            calls: calls.clone(),
            failures: 5,
            policy: quick_retries(2),
            gate: Arc::new(Semaphore::new(0)),
        })
        .launch()
        .await
        .unwrap();
    engine.start_with_id::<Flaky>("fails", ()).await.unwrap();
    bank.wait_for_steps("fails", 1).await;
    crash.crash();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "two attempts, then the error was recorded"
    );

    // After the restart the call would succeed, but replay returns the
    // recorded failure instead of calling again.
    let engine = Engine::builder(storage)
        .register(Flaky {
            calls: calls.clone(),
            failures: 0,
            policy: quick_retries(2),
            gate: Arc::new(Semaphore::new(1)),
        })
        .launch()
        .await
        .unwrap();
    let output = engine.handle::<String>("fails").result().await.unwrap();
    assert!(
        output.starts_with("caught: step 0 (\"call\") failed: boom 1"),
        "{output}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    engine.shutdown().await;
}

/// Three plain steps, each adding its position to the input.
struct ThreeCalls;

impl<S: Storage> Workflow<S> for ThreeCalls {
    const NAME: &'static str = "three_calls";
    type Input = i64;
    type Output = i64;

    async fn run(&self, ctx: &mut WorkflowContext<S>, input: i64) -> Result<i64, WorkflowError> {
        let mut total = input;
        for i in 0..3 {
            total = ctx
                .step(&format!("call-{i}"), || async move {
                    Ok::<_, String>(total + i)
                })
                .await?;
        }
        Ok(total)
    }
}

/// The group commit: with 16 workflows in flight, and each write held a
/// little before it is sent, the starts, checkpoints and completions that arrive
/// meanwhile share one statement, so the workflows take fewer commits than
/// one per write; every write still lands, once. With grouping off every
/// write is its own commit (5 per workflow: start, 3 steps, completion).
async fn concurrent_workflows_share_start_checkpoint_and_completion_commits<A: App>() {
    const WORKFLOWS: i64 = 16;
    for group in [1, tandem::GROUP_COMMIT_DEFAULT] {
        let (storage, bank) = support::bank::<A>().await;
        let probe = Probe::new(storage);
        let engine = Engine::builder(probe.clone())
            .group_commit(group)
            .register(ThreeCalls)
            .launch()
            .await
            .unwrap();
        probe.state.commits.store(0, Ordering::SeqCst);
        probe.state.write_delay_ms.store(20, Ordering::SeqCst);
        let mut runs = tokio::task::JoinSet::new();
        for n in 0..WORKFLOWS {
            let engine = engine.clone();
            runs.spawn(async move {
                let handle = engine.start::<ThreeCalls>(n * 100).await.unwrap();
                let id = handle.workflow_id().to_owned();
                (n, id, handle.result().await.unwrap())
            });
        }
        let mut ids = Vec::new();
        while let Some(run) = runs.join_next().await {
            let (n, id, total) = run.unwrap();
            assert_eq!(total, n * 100 + 3, "{id}");
            ids.push(id);
        }
        for id in &ids {
            let steps: Vec<i32> = bank.steps_of(id).await.iter().map(|s| s.step_id).collect();
            assert_eq!(steps, [0, 1, 2], "{id}");
        }
        let commits = probe.state.commits.load(Ordering::SeqCst);
        let grouped = probe.state.grouped.load(Ordering::SeqCst);
        let alone = WORKFLOWS as usize * 5;
        if group == 1 {
            assert_eq!((commits, grouped), (alone, 0));
        } else {
            assert!(grouped > 0, "no write shared a statement");
            let starts = probe.state.grouped_starts.load(Ordering::SeqCst);
            assert!(starts > 0, "no start shared a statement");
            assert!(
                commits < alone,
                "{commits} commits, {alone} without grouping"
            );
        }
        engine.shutdown().await;
    }
}
