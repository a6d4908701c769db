//! The durare peer (crates.io `durare` 0.5, on sqlx 0.8): the same 3-step
//! workflow as `ThreeSteps`, a transactional step being a
//! `#[durare::transaction]` (the account UPDATE and durare's checkpoint in
//! one transaction) and a plain one a `#[durare::step]`. C tasks start
//! workflows back to back and await them (a closed loop like Tandem's) on
//! a pool of C + 4 connections, after C warm-up workflows.

use std::sync::Arc;
use std::time::Instant;

use durare::{DurableContext, DurableEngine, WorkflowOptions};
use sqlx08 as sqlx8;

use crate::peers::{PeerRun, RunParams};
use crate::server::CounterReader;
use crate::workloads::{self, ThreeStepsInput};

#[durare::transaction]
async fn bench_update(
    ctx: &DurableContext,
    tx: &mut durare::Tx<'_>,
    account: i64,
) -> durare::Result<i64> {
    let row = tx
        .query_one(
            "UPDATE accounts SET balance = balance + 1 WHERE id = ? RETURNING balance",
            &durare::params![account],
        )
        .await?;
    Ok(row.get::<i64>("balance"))
}

#[durare::step]
async fn bench_compute(ctx: &DurableContext, account: i64) -> durare::Result<i64> {
    Ok(account + 1)
}

#[durare::workflow]
async fn bench_three_steps(ctx: DurableContext, input: ThreeStepsInput) -> durare::Result<i64> {
    let mut total = 0;
    for (index, account) in input.accounts.into_iter().enumerate() {
        total += if input.shape.is_transactional(index) {
            bench_update(&ctx, account).await?
        } else {
            bench_compute(&ctx, account).await?
        };
    }
    Ok(total)
}

/// Runs `params.workflows` timed workflows (after `params.concurrency`
/// warm-up ones) on the database at `url`; counters cover both.
pub async fn durare_run(
    url: &str,
    database: &str,
    counters: &mut CounterReader,
    params: RunParams,
    first_index: u64,
) -> anyhow::Result<PeerRun> {
    let RunParams {
        shape,
        concurrency,
        workflows,
        ..
    } = params;
    let pool = sqlx8::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(concurrency + 4)?)
        .connect(url)
        .await?;
    let provider = durare::PostgresProvider::from_pool(pool.clone());
    let engine = Arc::new(DurableEngine::builder(Arc::new(provider)).build().await?);
    engine.launch().await?;
    let run = |first: u64, total: u64| {
        let engine = Arc::clone(&engine);
        workloads::closed_loop(total, concurrency, move |n| {
            let engine = Arc::clone(&engine);
            async move {
                let input = ThreeStepsInput::nth(shape, first + n);
                engine
                    .start_with(BenchThreeSteps, input, WorkflowOptions::default())
                    .await?
                    .await?;
                Ok(())
            }
        })
    };
    let warmup = concurrency as u64;
    let before = counters.settled(database).await?;
    run(first_index, warmup).await?;
    let start = Instant::now();
    run(first_index + warmup, workflows).await?;
    let elapsed = start.elapsed();
    engine.shutdown(std::time::Duration::from_secs(5)).await?;
    pool.close().await;
    let after = counters.settled(database).await?;
    Ok(PeerRun {
        workflows,
        elapsed,
        counters: after - before,
        counted_workflows: warmup + workflows,
    })
}
