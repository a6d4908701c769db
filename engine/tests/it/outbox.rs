//! The transactional outbox: `tandem.enqueue_workflow` inside application
//! transactions and triggers, its validation, and the Rust-side enqueue.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem::{Engine, EnqueueOptions, PgStorage, Queue, Workflow, WorkflowContext, WorkflowError};

use crate::support;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderInput {
    pub order_id: i64,
}

/// Processes an order: marks it processed and writes one effect row, in a
/// transactional step.
pub struct ProcessOrder;

impl Workflow<PgStorage> for ProcessOrder {
    const NAME: &'static str = "process_order";
    type Input = OrderInput;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        input: OrderInput,
    ) -> Result<i64, WorkflowError> {
        let id = input.order_id;
        ctx.transaction("process", async move |tx: &mut PgConnection| {
            sqlx::query("INSERT INTO order_effects (order_id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE orders SET processed = true WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(id)
        })
        .await
    }
}

/// Orders, the effects of processing them, and a trigger that enqueues the
/// processing workflow for orders inserted with `via_trigger`.
async fn orders_schema(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, via_trigger boolean NOT NULL,
                              processed boolean NOT NULL DEFAULT false);
         CREATE TABLE order_effects (order_id bigint NOT NULL);
         CREATE FUNCTION enqueue_order() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM tandem.enqueue_workflow('process_order',
                                             jsonb_build_object('order_id', NEW.id),
                                             workflow_id => 'order-' || NEW.id);
             RETURN NEW;
         END $$;
         CREATE TRIGGER orders_enqueue AFTER INSERT ON orders
             FOR EACH ROW WHEN (NEW.via_trigger) EXECUTE FUNCTION enqueue_order();",
    )
    .execute(pool)
    .await
    .expect("orders schema");
}

async fn engine(url: &str) -> Engine<PgStorage> {
    let storage = PgStorage::connect(url).await.unwrap();
    Engine::builder(storage)
        .register(ProcessOrder)
        .queue_poll_interval(Duration::from_millis(200))
        .launch()
        .await
        .unwrap()
}

#[tokio::test]
async fn enqueues_exist_exactly_when_the_application_transaction_commits() {
    let url = support::database().await;
    let engine = engine(&url).await;
    let pool = engine.storage().pool().clone();
    orders_schema(&pool).await;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut committed = Vec::new();
    for order in 0..1000i64 {
        let via_trigger = order % 2 == 1;
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (id, via_trigger) VALUES ($1, $2)")
            .bind(order)
            .bind(via_trigger)
            .execute(&mut *tx)
            .await
            .unwrap();
        if !via_trigger {
            let id: String = sqlx::query_scalar(
                "SELECT tandem.enqueue_workflow('process_order', jsonb_build_object('order_id', $1::bigint),
                                                workflow_id => 'order-' || $1)",
            )
            .bind(order)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            assert_eq!(id, format!("order-{order}"));
        }
        if rng.gen_bool(0.5) {
            tx.commit().await.unwrap();
            committed.push(order);
        } else {
            tx.rollback().await.unwrap();
        }
    }

    for order in &committed {
        let result: i64 = engine
            .handle(format!("order-{order}"))
            .result()
            .await
            .unwrap();
        assert_eq!(result, *order);
    }
    let workflows: Vec<String> = sqlx::query_scalar("SELECT id FROM tandem.workflows ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut expected: Vec<String> = committed.iter().map(|o| format!("order-{o}")).collect();
    expected.sort();
    assert_eq!(
        workflows, expected,
        "exactly the committed orders have workflows"
    );
    let statuses: Vec<String> = sqlx::query_scalar("SELECT DISTINCT status FROM tandem.workflows")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(statuses, ["SUCCESS"]);
    let effects: Vec<(i64, i64)> =
        sqlx::query_as("SELECT order_id, count(*) FROM order_effects GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        effects,
        committed.iter().map(|o| (*o, 1)).collect::<Vec<_>>()
    );
    assert!(committed.len() > 400 && committed.len() < 600);
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_sql_calls_fail_with_their_documented_errors_and_spare_the_callers_writes() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let engine = Engine::builder(storage)
        .register(ProcessOrder)
        .payload_max_bytes(100)
        .launch()
        .await
        .unwrap();
    let pool = engine.storage().pool().clone();
    orders_schema(&pool).await;

    let cases = [
        (
            "'nope', '{}'::jsonb",
            "22023",
            "tandem.enqueue_workflow: unknown workflow name \"nope\"",
        ),
        (
            "NULL, '{}'::jsonb",
            "22023",
            "tandem.enqueue_workflow: name must not be null",
        ),
        (
            "'process_order', NULL",
            "22023",
            "tandem.enqueue_workflow: input must not be null",
        ),
        (
            "'process_order', '\"order 1\"'::jsonb",
            "22023",
            "tandem.enqueue_workflow: workflow \"process_order\" takes JSON object or array, not string",
        ),
        (
            "'process_order', jsonb_build_object('order_id', 1, 'pad', repeat('x', 200))",
            "54000",
            "tandem.enqueue_workflow: input is 226 bytes, over the limit of 100 bytes",
        ),
        (
            "'process_order', '{}'::jsonb, queue => 'nowhere'",
            "22023",
            "tandem.enqueue_workflow: unknown queue \"nowhere\"",
        ),
        (
            "'process_order', '{}'::jsonb, queue => NULL",
            "22023",
            "tandem.enqueue_workflow: unknown queue \"<NULL>\"",
        ),
        (
            "'process_order', '{}'::jsonb, workflow_id => ''",
            "22023",
            "tandem.enqueue_workflow: workflow_id must be 1 to 256 characters",
        ),
        (
            "'process_order', '{}'::jsonb, priority => 2000000",
            "22023",
            "tandem.enqueue_workflow: priority must be between",
        ),
        (
            "'process_order', '{}'::jsonb, delay => interval '-1 second'",
            "22023",
            "tandem.enqueue_workflow: delay must not be negative",
        ),
        (
            "'process_order', '{}'::jsonb, concurrency_key => ''",
            "22023",
            "tandem.enqueue_workflow: concurrency_key must be 1 to 256 characters",
        ),
        (
            "'process_order', '{}'::jsonb, concurrency_key => repeat('k', 257)",
            "22023",
            "tandem.enqueue_workflow: concurrency_key must be 1 to 256 characters",
        ),
        // Refused by the jsonb cast itself; the memory model (and the
        // enqueue_args fuzz target's oracle) rely on it.
        (
            "'process_order', '{\"a\": \"\\u0000\"}'::jsonb",
            "22P05",
            "unsupported Unicode escape sequence",
        ),
    ];
    for (order, (args, code, message)) in cases.iter().enumerate() {
        let order = order as i64;
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (id, via_trigger) VALUES ($1, false)")
            .bind(order)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("SAVEPOINT enqueue")
            .execute(&mut *tx)
            .await
            .unwrap();
        let sql = format!("SELECT tandem.enqueue_workflow({args})");
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some(*code), "{args}: {db}");
        assert!(
            db.message().starts_with(message),
            "{args}: {}",
            db.message()
        );
        // The caller handles the error and keeps its other writes.
        sqlx::query("ROLLBACK TO SAVEPOINT enqueue")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO orders (id, via_trigger) VALUES ($1, false)")
            .bind(order + 1000)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 2 * cases.len() as i64);
    let workflows: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.workflows")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workflows, 0);

    // A NUL in a text argument is refused before the function runs (the
    // memory model refuses it alike), and the ID limit counts characters:
    // 200 two-byte characters are a valid ID, as for `Engine::start`.
    let err = sqlx::query("SELECT tandem.enqueue_workflow($1, '{}')")
        .bind("process\0order")
        .execute(&pool)
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("22021"), "{db}");
    let long: String = sqlx::query_scalar(
        "SELECT tandem.enqueue_workflow('process_order', '{\"order_id\": 9}', workflow_id => $1, delay => interval '1 hour')",
    )
    .bind("é".repeat(200))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(long, "é".repeat(200));

    // An ID owned by another workflow is an error; the same ID again is not.
    let first: String = sqlx::query_scalar(
        "SELECT tandem.enqueue_workflow('process_order', '{\"order_id\": 1}', workflow_id => 'taken', delay => interval '1 hour')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let again: String = sqlx::query_scalar(
        "SELECT tandem.enqueue_workflow('process_order', '{\"order_id\": 2}', workflow_id => 'taken')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((first.as_str(), again.as_str()), ("taken", "taken"));
    sqlx::query("INSERT INTO tandem.workflow_names VALUES ('other', '{object}', now())")
        .execute(&pool)
        .await
        .unwrap();
    let err = sqlx::query("SELECT tandem.enqueue_workflow('other', '{}', workflow_id => 'taken')")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("workflow ID \"taken\" belongs to workflow \"process_order\", not \"other\""),
        "{err}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn deduplication_returns_the_unfinished_workflow_without_aborting_the_caller() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    // No executor claims from this queue: the workflows stay enqueued.
    storage_register(&storage).await;
    let pool = storage.pool().clone();
    orders_schema(&pool).await;
    let enqueue = |options: EnqueueOptions| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let id = PgStorage::enqueue_in::<ProcessOrder>(
                &mut tx,
                &OrderInput { order_id: 7 },
                options,
            )
            .await;
            if id.is_ok() {
                // The caller's transaction is still usable after a dedup hit.
                sqlx::query("SELECT 1")
                    .execute(&mut *tx)
                    .await
                    .expect("transaction not aborted");
                tx.commit().await.unwrap();
            }
            id
        }
    };
    let options = EnqueueOptions::default().queue("idle").dedup_key("order-7");
    let first = enqueue(options.clone()).await.unwrap();
    let second = enqueue(options.clone()).await.unwrap();
    assert_eq!(
        first, second,
        "the second enqueue returns the first workflow"
    );
    let err = enqueue(options.clone().dedup_error()).await;
    assert!(err.is_err());
    let message = err.unwrap_err().to_string();
    assert!(
        message.contains("already has an unfinished workflow with dedup_key \"order-7\""),
        "{message}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.workflows")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// Registers the workflow names and an unserved queue `idle` without
/// running a claim loop over it.
async fn storage_register(storage: &PgStorage) {
    let engine = Engine::builder(storage.clone())
        .register(ProcessOrder)
        .queue(Queue::new("idle"))
        .launch()
        .await
        .unwrap();
    engine.shutdown().await;
}

#[tokio::test]
async fn rust_side_enqueue_commits_and_rolls_back_with_the_callers_transaction() {
    let url = support::database().await;
    let engine = engine(&url).await;
    let pool = engine.storage().pool().clone();
    orders_schema(&pool).await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id, via_trigger) VALUES (1, false)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = PgStorage::enqueue_in::<ProcessOrder>(
        &mut tx,
        &OrderInput { order_id: 1 },
        EnqueueOptions::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id, via_trigger) VALUES (2, false)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let dropped = PgStorage::enqueue_in::<ProcessOrder>(
        &mut tx,
        &OrderInput { order_id: 2 },
        EnqueueOptions::default().workflow_id("dropped"),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(engine.handle::<i64>(&kept).result().await.unwrap(), 1);
    assert!(matches!(
        engine.handle::<i64>(&dropped).result().await,
        Err(tandem::Error::WorkflowNotFound { .. })
    ));
    engine.shutdown().await;
}

#[tokio::test]
async fn delayed_and_prioritized_workflows_start_in_order() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    // Register first so the SQL function knows the names, then enqueue while
    // no executor serves the queue.
    let serial = || Queue::new("serial").worker_concurrency(1);
    let engine = Engine::builder(storage.clone())
        .register(ProcessOrder)
        .queue(Queue::new("serial").worker_concurrency(1))
        .launch()
        .await
        .unwrap();
    engine.shutdown().await;
    orders_schema(&pool).await;
    for (order, priority) in [(1, 5), (2, -3), (3, 0), (4, -3)] {
        sqlx::query("INSERT INTO orders (id, via_trigger) VALUES ($1, false)")
            .bind(order)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("SELECT tandem.enqueue_workflow('process_order', jsonb_build_object('order_id', $1::bigint), 'serial', 'p' || $1, $2)")
            .bind(order)
            .bind(priority)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO orders (id, via_trigger) VALUES (5, false)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT tandem.enqueue_workflow('process_order', '{\"order_id\": 5}', 'serial', 'delayed', -100, delay => interval '700 milliseconds')")
        .execute(&pool)
        .await
        .unwrap();

    let engine = Engine::builder(storage)
        .register(ProcessOrder)
        .queue(serial())
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap();
    for id in ["p1", "p2", "p3", "p4", "delayed"] {
        engine.handle::<i64>(id).result().await.unwrap();
    }
    let order: Vec<String> =
        sqlx::query_scalar("SELECT id FROM tandem.workflows ORDER BY started_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    // Priority first (lower runs first), then enqueue order; the delayed
    // workflow has the best priority but may not start before its delay.
    assert_eq!(&order[..4], ["p2", "p4", "p3", "p1"]);
    let waited: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at - created_at)::float8 FROM tandem.workflows WHERE id = 'delayed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(waited >= 0.7, "started {waited} s after enqueue");
    engine.shutdown().await;
}
