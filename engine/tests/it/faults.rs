//! Storage faults, on both backends: lost commit acknowledgements and
//! deadlocks; on the memory model also the faults its hook injects
//! (serialization failures, dropped connections, an outage).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, SeedableRng};
use tandem::storage::Storage;
use tandem::storage::memory::{Fault, FaultPoint};
use tandem::{Engine, Workflow, WorkflowContext, WorkflowError};
use tokio::sync::Barrier;

use crate::support::{self, App, MemApp, Probe, Transfer, both};

both!(
    a_lost_commit_acknowledgement_does_not_duplicate_a_transactional_step,
    a_deadlocked_transactional_step_is_retried_and_applied_once,
);

async fn a_lost_commit_acknowledgement_does_not_duplicate_a_transactional_step<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let probe = Probe::new(storage);
    let engine = Engine::builder(probe.clone())
        .register(Transfer {
            app: bank.app.clone(),
        })
        .launch()
        .await
        .unwrap();
    let transfers = support::transfers(6, bank.accounts);
    let mut ids = Vec::new();
    for t in &transfers {
        // Both transactional steps' COMMITs (debit and credit, the only
        // explicit transactions of a transfer) succeed on the server, and
        // the engine is told each time that the connection dropped first.
        probe.state.lose_commit_acks.store(2, Ordering::SeqCst);
        let handle = engine.start::<Transfer<A>>(t.clone()).await.unwrap();
        ids.push(handle.workflow_id().to_owned());
        handle.result().await.unwrap();
    }
    assert_eq!(
        probe.state.acks_lost.load(Ordering::SeqCst),
        2 * transfers.len()
    );
    support::assert_transfers_exact(&bank, &ids, &transfers).await;
    engine.shutdown().await;
}

/// Moves one unit from account `a` to account `b` in one transactional step
/// that locks `a`, waits until a partner workflow has locked `b`, then locks
/// `b`: two of them deadlock, the database aborts one, the engine retries it.
struct CrossUpdate<A> {
    barrier: Arc<Barrier>,
    attempts: Arc<AtomicUsize>,
    app: PhantomData<fn() -> A>,
}

impl<A: App, S: Storage<Conn = <A::Storage as Storage>::Conn>> Workflow<S> for CrossUpdate<A> {
    const NAME: &'static str = "cross-update";
    type Input = (i64, i64);
    type Output = ();

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        (a, b): (i64, i64),
    ) -> Result<(), WorkflowError> {
        let id = ctx.workflow_id().to_owned();
        let barrier = self.barrier.clone();
        let attempts = self.attempts.clone();
        ctx.transaction("cross", async move |tx| {
            let first_attempt = attempts.fetch_add(1, Ordering::SeqCst) < 2;
            A::apply(tx, &id, "out", a, -1).await?;
            if first_attempt {
                barrier.wait().await;
            }
            A::apply(tx, &id, "in", b, 1).await?;
            Ok::<_, A::Error>(())
        })
        .await
    }
}

async fn a_deadlocked_transactional_step_is_retried_and_applied_once<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder(storage)
        .register(CrossUpdate::<A> {
            barrier: Arc::new(Barrier::new(2)),
            attempts: attempts.clone(),
            app: PhantomData,
        })
        .launch()
        .await
        .unwrap();
    let (h1, h2) = tokio::join!(
        engine.start::<CrossUpdate<A>>((1, 2)),
        engine.start::<CrossUpdate<A>>((2, 1)),
    );
    let (h1, h2) = (h1.unwrap(), h2.unwrap());
    let (r1, r2) = tokio::join!(h1.result(), h2.result());
    r1.unwrap();
    r2.unwrap();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "one deadlock victim retried once"
    );
    assert_eq!(bank.ledger_rows(None).await, 4);
    assert_eq!(bank.balances().await, vec![1000; 10]);
    engine.shutdown().await;
}

/// One in `every` consultations of the hook at a matching point (chosen by a
/// seeded generator: a fixed stride could hit the same statement of every
/// retry and never let it through) injects `fault`; counts the injections.
fn every_nth(
    every: usize,
    fault: Fault,
    point: fn(FaultPoint) -> bool,
) -> (tandem::storage::memory::FaultHook, Arc<AtomicUsize>) {
    let seen = Arc::new(std::sync::Mutex::new(
        rand_chacha::ChaCha8Rng::seed_from_u64(5),
    ));
    let injected = Arc::new(AtomicUsize::new(0));
    let count = injected.clone();
    let hook = Arc::new(move |p: FaultPoint| {
        if !point(p) {
            return None;
        }
        let roll = seen.lock().unwrap().gen_range(0..every);
        (roll == 0).then(|| {
            count.fetch_add(1, Ordering::SeqCst);
            fault
        })
    });
    (hook, injected)
}

/// Transfers under a fault the memory model injects: every transfer still
/// applies exactly once.
async fn transfers_survive(fault: Fault, every: usize, point: fn(FaultPoint) -> bool) {
    let (storage, bank) = support::bank::<MemApp>().await;
    let engine = Engine::builder(storage.clone())
        .register(Transfer {
            app: bank.app.clone(),
        })
        .launch()
        .await
        .unwrap();
    let (hook, injected) = every_nth(every, fault, point);
    storage.set_fault_hook(Some(hook));
    let transfers = support::transfers(20, bank.accounts);
    let mut handles = Vec::new();
    for t in &transfers {
        handles.push(engine.start::<Transfer<MemApp>>(t.clone()).await.unwrap());
    }
    let ids: Vec<String> = handles.iter().map(|h| h.workflow_id().to_owned()).collect();
    for handle in &handles {
        handle.result().await.unwrap();
    }
    storage.set_fault_hook(None);
    assert!(injected.load(Ordering::SeqCst) > 5, "faults were injected");
    support::assert_transfers_exact(&bank, &ids, &transfers).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn mem_injected_serialization_failures_are_retried() {
    transfers_survive(Fault::SerializationFailure, 3, |p| {
        matches!(p, FaultPoint::Statement("app.update") | FaultPoint::Commit)
    })
    .await;
}

#[tokio::test]
async fn mem_lost_connections_mid_transaction_roll_back_and_retry() {
    transfers_survive(Fault::ConnectionLost, 4, |p| {
        matches!(p, FaultPoint::Statement(_) | FaultPoint::Begin)
    })
    .await;
}

#[tokio::test]
async fn mem_lost_commit_acknowledgements_of_every_kind_are_harmless() {
    // Autocommit writes (start, plain steps, completion) lose their
    // acknowledgement too, not only transactional steps.
    transfers_survive(Fault::LoseCommitAck, 3, |p| p == FaultPoint::Commit).await;
}

/// The memory equivalent of `pg_restart`: the database goes away twice
/// while transfers run (every connection attempt, statement and commit fails
/// as a lost connection), then comes back.
#[tokio::test]
async fn mem_in_flight_workflows_finish_exactly_once_across_outages() {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    let (storage, bank) = support::bank::<MemApp>().await;
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    storage.set_fault_hook(Some(Arc::new(move |_| {
        flag.load(Ordering::SeqCst).then_some(Fault::ConnectionLost)
    })));
    let engine = Engine::builder(storage.clone())
        .register(Transfer {
            app: bank.app.clone(),
        })
        .launch()
        .await
        .unwrap();
    let transfers: Vec<support::TransferInput> = support::transfers(40, bank.accounts)
        .into_iter()
        .enumerate()
        .map(|(i, t)| support::TransferInput {
            notify_delay_ms: 20 + (i % 10) as u64 * 20,
            ..t
        })
        .collect();
    let mut handles = Vec::new();
    for t in &transfers {
        handles.push(engine.start::<Transfer<MemApp>>(t.clone()).await.unwrap());
    }
    let ids: Vec<String> = handles.iter().map(|h| h.workflow_id().to_owned()).collect();
    for _ in 0..2 {
        support::sleep(Duration::from_millis(20)).await;
        let finished = bank
            .app
            .workflows()
            .await
            .iter()
            .filter(|w| w.status == tandem::Status::Success)
            .count();
        assert!(
            finished < transfers.len(),
            "the outage lands while workflows run"
        );
        down.store(true, Ordering::SeqCst);
        support::sleep(Duration::from_millis(50)).await;
        down.store(false, Ordering::SeqCst);
    }
    for handle in &handles {
        handle.result().await.unwrap();
    }
    support::assert_transfers_exact(&bank, &ids, &transfers).await;
    engine.shutdown().await;
}
