//! Per-key concurrency on PostgreSQL: two executors share a queue that runs
//! one workflow per customer at a time, fed from Rust and from SQL.

use std::time::Duration;

use sqlx::PgPool;
use tandem::storage::{
    ExecutorRegister, QueueLimits, Transaction, Versions, WorkflowEnqueue, WorkflowsClaim,
};
use tandem::{
    Engine, EnqueueOptions, MemStorage, PgStorage, Queue, Storage, Workflow, WorkflowContext,
    WorkflowError,
};

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

/// Enqueues `ids` with their keys, in order (each its own commit, so their
/// creation order is the claim order), onto a queue `q` with a per-key
/// limit of one.
async fn keyed_backlog<S: Storage>(storage: &S, ids: &[(String, Option<String>)]) {
    let limits = QueueLimits {
        name: "q".to_owned(),
        concurrency_global: None,
        rate_limit: None,
        concurrency_per_key: Some(1),
        retention_ms: None,
    };
    let mut tx = storage.begin().await.unwrap();
    tx.executor_register(ExecutorRegister {
        versions: Versions::default(),
        schedules: Vec::new(),
        executor_id: "a".to_owned(),
        workflows: vec![("wf".to_owned(), vec!["object"])],
        queues: vec![limits],
        payload_max_bytes: 1024,
        notify_on_enqueue: false,
        now_ms: 0,
        lease_ms: 3_600_000,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for (id, key) in ids {
        let mut tx = storage.begin().await.unwrap();
        tx.workflow_enqueue(WorkflowEnqueue {
            name: "wf".to_owned(),
            input: "{}".to_owned(),
            queue: "q".to_owned(),
            workflow_id: Some(id.clone()),
            priority: 0,
            dedup_key: None,
            delay_ms: None,
            dedup_error: false,
            concurrency_key: key.clone(),
            debounce_key: None,
            debounce_max_wait_ms: None,
            trace_parent: None,
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}

/// One claim of up to `limit` from `q`, committed; the IDs it took.
async fn claim_ids<S: Storage>(storage: &S, limit: u32) -> Vec<String> {
    let mut tx = storage.begin().await.unwrap();
    let rows = tx
        .workflows_claim(WorkflowsClaim {
            queue: QueueLimits {
                name: "q".to_owned(),
                concurrency_global: None,
                rate_limit: None,
                concurrency_per_key: Some(1),
                retention_ms: None,
            },
            executor_id: "a".to_owned(),
            names: vec!["wf".to_owned()],
            limit,
            now_ms: 4_102_444_800_000,
            versions: Versions::default(),
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut ids: Vec<String> = rows.into_iter().map(|w| w.id).collect();
    ids.sort();
    ids
}

/// A hot key's 3,000 waiting workflows ahead of 40 other keys: the claim
/// looks past the hot key's backlog (the PostgreSQL claim ranks a prefix
/// of the ready rows and widens it when it comes up short), taking what a
/// ranking of the whole backlog takes, on both backends alike; a saturated
/// queue claims nothing.
async fn a_per_key_claim_looks_past_a_hot_keys_backlog<S: Storage>(storage: S) -> Vec<Vec<String>> {
    let mut ids: Vec<(String, Option<String>)> = (0..3000)
        .map(|i| (format!("hot-{i:04}"), Some("hot".to_owned())))
        .collect();
    ids.extend((0..40).map(|i| (format!("k-{i:02}"), Some(format!("key-{i:02}")))));
    ids.push(("unkeyed".to_owned(), None));
    keyed_backlog(&storage, &ids).await;
    let first = claim_ids(&storage, 16).await;
    let mut expected: Vec<String> = ["hot-0000".to_owned()]
        .into_iter()
        .chain((0..15).map(|i| format!("k-{i:02}")))
        .collect();
    expected.sort();
    assert_eq!(first, expected);
    // The next claim skips the running hot key and the 15 busy keys.
    let second = claim_ids(&storage, 100).await;
    let mut expected: Vec<String> = (15..40)
        .map(|i| format!("k-{i:02}"))
        .chain(["unkeyed".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(second, expected);
    // Every key runs one: nothing is eligible.
    let third = claim_ids(&storage, 16).await;
    assert_eq!(third, Vec::<String>::new());
    vec![first, second, third]
}

#[tokio::test]
async fn a_per_key_claim_looks_past_a_hot_keys_backlog_on_both_backends() {
    let url = support::database().await;
    let pg = PgStorage::connect(&url).await.unwrap();
    pg.migrate().await.unwrap();
    let on_pg = a_per_key_claim_looks_past_a_hot_keys_backlog(pg).await;
    let on_mem = a_per_key_claim_looks_past_a_hot_keys_backlog(MemStorage::new()).await;
    assert_eq!(on_pg, on_mem);
}
