//! Per-key concurrency on PostgreSQL: two executors share a queue that runs
//! one workflow per customer at a time, fed from Rust and from SQL.

use std::time::Duration;

use sqlx::PgPool;
use tandem::{Engine, EnqueueOptions, PgStorage, Queue, Workflow, WorkflowContext, WorkflowError};

use crate::support;

const QUEUE: &str = "per_customer";

/// Works for a while in a plain step, so that runs of one key would
/// overlap if the limit let them.
pub struct Charge;

impl Workflow<PgStorage> for Charge {
    const NAME: &'static str = "charge";
    type Input = i64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: i64,
    ) -> Result<i64, WorkflowError> {
        ctx.step("work", || async {
            support::sleep(Duration::from_millis(60)).await;
            Ok::<_, std::io::Error>(())
        })
        .await?;
        Ok(n)
    }
}

async fn executor(url: &str, id: &str) -> Engine<PgStorage> {
    Engine::builder(PgStorage::connect(url).await.unwrap())
        .executor_id(id)
        .register(Charge)
        .queue(
            Queue::new(QUEUE)
                .worker_concurrency(8)
                .concurrency_per_key(1),
        )
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap()
}

/// Per key, the runs' `[started_at, completed_at]` intervals.
async fn intervals(pool: &PgPool) -> Vec<(Option<String>, f64, f64)> {
    sqlx::query_as(
        "SELECT concurrency_key, extract(epoch FROM started_at)::float8,
                extract(epoch FROM completed_at)::float8
           FROM tandem.workflows WHERE queue = 'per_customer'
          ORDER BY concurrency_key, started_at",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_queue_runs_one_workflow_per_key_at_a_time_across_executors() {
    let url = support::database().await;
    let a = executor(&url, "exec-a").await;
    let b = executor(&url, "exec-b").await;
    let pool = a.storage().pool().clone();

    // Three customers, six charges each, half from Rust and half from SQL
    // inside an application transaction; and unkeyed work beside them.
    let mut ids = Vec::new();
    for n in 0..18i64 {
        let key = format!("customer-{}", n % 3);
        let id = format!("charge-{n}");
        if n % 2 == 0 {
            a.enqueue::<Charge>(
                n,
                EnqueueOptions::default()
                    .queue(QUEUE)
                    .workflow_id(&id)
                    .concurrency_key(key),
            )
            .await
            .unwrap();
        } else {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "SELECT tandem.enqueue_workflow('charge', to_jsonb($1::bigint), queue => 'per_customer',
                                                workflow_id => $2, concurrency_key => $3)",
            )
            .bind(n)
            .bind(&id)
            .bind(&key)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        ids.push((id, n));
    }
    for n in 100..106i64 {
        let id = format!("free-{n}");
        a.enqueue::<Charge>(n, EnqueueOptions::default().queue(QUEUE).workflow_id(&id))
            .await
            .unwrap();
        ids.push((id, n));
    }
    for (id, n) in &ids {
        assert_eq!(a.handle::<i64>(id.clone()).result().await.unwrap(), *n);
    }

    // Per key, each run ended before the next one started.
    let runs = intervals(&pool).await;
    let keyed: Vec<_> = runs.iter().filter(|r| r.0.is_some()).collect();
    assert_eq!(keyed.len(), 18);
    for pair in keyed.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(
                pair[0].2 <= pair[1].1,
                "two runs of {:?} overlapped: {pair:?}",
                pair[0].0
            );
        }
    }
    // Both executors took part, and the unkeyed work was not held back by
    // the keys: some of it ran while a keyed run did.
    let executors: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT executor_id) FROM tandem.workflows WHERE queue = 'per_customer'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(executors, 2);
    let unkeyed: Vec<_> = runs.iter().filter(|r| r.0.is_none()).collect();
    assert!(
        unkeyed
            .iter()
            .any(|f| keyed.iter().any(|k| f.1 < k.2 && k.1 < f.2)),
        "no unkeyed run overlapped a keyed one: {runs:?}"
    );

    // The key's length is checked like the other arguments.
    let err = a
        .enqueue::<Charge>(
            1,
            EnqueueOptions::default()
                .queue(QUEUE)
                .concurrency_key("k".repeat(257)),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("concurrency_key must be 1 to 256 characters"),
        "{err}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
