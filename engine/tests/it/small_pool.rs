//! Many workflows in flight on a pool of a few connections: the pool makes
//! them wait their turn, and no start, step or `result()` fails with a pool
//! timeout (issue 20).

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tandem::{Engine, PgStorage, Storage, Workflow, WorkflowContext, WorkflowError};

use crate::support;

/// Workflows in flight at once.
const IN_FLIGHT: usize = 64;

/// A transactional step, a plain step, a short and a suspending sleep, and a
/// `recv` that the test answers: every kind of wait that needs connections.
struct Busy;

impl Workflow<PgStorage> for Busy {
    const NAME: &'static str = "busy";
    type Input = i64;
    type Output = (i64, i64);

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: i64,
    ) -> Result<(i64, i64), WorkflowError> {
        ctx.transaction("write", async move |tx| {
            sqlx::query("INSERT INTO small_pool_rows (n) VALUES ($1)")
                .bind(n)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected())
        })
        .await?;
        let doubled = ctx
            .step("double", || async move { Ok::<_, std::io::Error>(n * 2) })
            .await?;
        ctx.sleep(Duration::from_millis(20)).await?;
        // Longer than `sleep_suspend_after` below: handed back to the queue
        // and claimed again.
        ctx.sleep(Duration::from_millis(300)).await?;
        let reply: Option<i64> = ctx.recv("reply", Duration::from_secs(120)).await?;
        Ok((doubled, reply.unwrap_or(-1)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_workflows_complete_on_a_pool_of_three_connections() {
    let url = support::database().await;
    // Three connections, one of them held for good by the wake-up listener;
    // a short acquire timeout so that waits past it really happen.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_millis(500))
        .test_before_acquire(false)
        .connect(&url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE small_pool_rows (n bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let storage = PgStorage::from_pool(pool.clone());
    // Behind the suite's pooler (`TANDEM_TEST_PGBOUNCER`), an own pool is
    // told not to LISTEN through it, as docs/deployment.md says.
    let storage = if url.contains("pgbouncer=true") {
        storage.without_listen()
    } else {
        storage
    };
    storage.migrate().await.unwrap();
    let engine = Engine::builder(storage)
        .register(Busy)
        .sleep_suspend_after(Duration::from_millis(100))
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();

    let mut handles = Vec::new();
    for n in 0..IN_FLIGHT as i64 {
        let handle = engine
            .start_with_id::<Busy>(format!("busy-{n}"), n)
            .await
            .expect("a start on a small pool");
        handles.push(handle);
    }
    for n in 0..IN_FLIGHT as i64 {
        engine
            .send(&format!("busy-{n}"), "reply", &(n + 1000))
            .await
            .expect("a send on a small pool");
    }
    let results = support::timeout(Duration::from_secs(240), async {
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.result().await.expect("a result on a small pool"));
        }
        results
    })
    .await
    .expect("all workflows finish");
    let expected: Vec<(i64, i64)> = (0..IN_FLIGHT as i64).map(|n| (n * 2, n + 1000)).collect();
    assert_eq!(results, expected);
    // Exactly once: one row per workflow, whatever the waits and retries.
    let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM small_pool_rows ORDER BY n")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, (0..IN_FLIGHT as i64).collect::<Vec<_>>());
    engine.shutdown().await;
}
