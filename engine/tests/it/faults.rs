//! Storage faults on PostgreSQL: lost commit acknowledgements and deadlocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::PgConnection;
use tandem::storage::Storage;
use tandem::{Engine, Workflow, WorkflowContext, WorkflowError};
use tokio::sync::Barrier;

use crate::support::{self, Probe, Transfer};

#[tokio::test]
async fn a_lost_commit_acknowledgement_does_not_duplicate_a_transactional_step() {
    let (storage, bank) = support::bank().await;
    let probe = Probe::new(storage);
    let engine = Engine::builder(probe.clone())
        .register(Transfer {
            notifications: bank.pool.clone(),
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
        let handle = engine.start::<Transfer>(t.clone()).await.unwrap();
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
/// `b`: two of them deadlock, PostgreSQL aborts one, the engine retries it.
struct CrossUpdate {
    barrier: Arc<Barrier>,
    attempts: Arc<AtomicUsize>,
}

impl<S: Storage<Conn = PgConnection>> Workflow<S> for CrossUpdate {
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
            support::apply(tx, &id, "out", a, -1).await?;
            if first_attempt {
                barrier.wait().await;
            }
            support::apply(tx, &id, "in", b, 1).await?;
            Ok::<_, sqlx::Error>(())
        })
        .await
    }
}

#[tokio::test]
async fn a_deadlocked_transactional_step_is_retried_and_applied_once() {
    let (storage, bank) = support::bank().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder(storage)
        .register(CrossUpdate {
            barrier: Arc::new(Barrier::new(2)),
            attempts: attempts.clone(),
        })
        .launch()
        .await
        .unwrap();
    let (h1, h2) = tokio::join!(
        engine.start::<CrossUpdate>((1, 2)),
        engine.start::<CrossUpdate>((2, 1)),
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
    assert_eq!(bank.scalar("SELECT count(*) FROM ledger").await, 4);
    assert_eq!(bank.balances().await, vec![1000; 10]);
    engine.shutdown().await;
}
