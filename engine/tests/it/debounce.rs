//! Debounce on PostgreSQL: enqueues with a debounce key replace a pending
//! workflow's input and push its start back, up to a maximum wait; a
//! started workflow is never changed; from Rust and from SQL.

use std::time::Duration;

use sqlx::PgPool;
use tandem::{Engine, EnqueueOptions, PgStorage, Queue, Workflow, WorkflowContext, WorkflowError};

use crate::support;

const QUEUE: &str = "search";

/// Reindexes the documents its input names, after waiting for a message
/// when the input asks it to (so that a test can hold it running).
pub struct Reindex;

impl Workflow<PgStorage> for Reindex {
    const NAME: &'static str = "reindex";
    type Input = Vec<String>;
    type Output = Vec<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        docs: Vec<String>,
    ) -> Result<Vec<String>, WorkflowError> {
        if docs.iter().any(|d| d == "hold") {
            let _: Option<i64> = ctx.recv("go", Duration::from_secs(60)).await?;
        }
        ctx.step("index", || {
            let seen = docs.clone();
            async move { Ok::<_, std::io::Error>(seen) }
        })
        .await
    }
}

async fn engine(url: &str) -> Engine<PgStorage> {
    Engine::builder(PgStorage::connect(url).await.unwrap())
        .register(Reindex)
        .queue(Queue::new(QUEUE))
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .unwrap()
}

fn debounced(key: &str, delay_ms: u64, max_wait_ms: u64) -> EnqueueOptions {
    EnqueueOptions::default().queue(QUEUE).debounce(
        key,
        Duration::from_millis(delay_ms),
        Duration::from_millis(max_wait_ms),
    )
}

async fn input_of(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT input::text FROM tandem.workflows WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn debounced_enqueues_run_once_with_the_newest_input() {
    let url = support::database().await;
    let engine = engine(&url).await;
    let pool = engine.storage().pool().clone();

    // Five changes in a row: one workflow, run once, with the last input.
    let mut ids = Vec::new();
    for n in 0..5 {
        let handle = engine
            .enqueue::<Reindex>(vec![format!("v{n}")], debounced("doc-1", 400, 10_000))
            .await
            .unwrap();
        ids.push(handle.workflow_id().to_owned());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let result: Vec<String> = engine.handle(ids[0].clone()).result().await.unwrap();
    assert_eq!(result, ["v4"]);
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tandem.workflows WHERE debounce_key = 'doc-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(runs, 1);

    // From SQL in application transactions: a rolled-back change leaves
    // the pending input as the last committed one put it.
    let call = "SELECT tandem.enqueue_workflow('reindex', $1::jsonb, queue => 'search',
                    delay => interval '400 milliseconds', debounce_key => 'doc-2',
                    debounce_max_wait => interval '10 seconds')";
    let mut tx = pool.begin().await.unwrap();
    let first: String = sqlx::query_scalar(call)
        .bind("[\"a\"]")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let again: String = sqlx::query_scalar(call)
        .bind("[\"rolled back\"]")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(again, first);
    tx.rollback().await.unwrap();
    assert_eq!(input_of(&pool, &first).await, "[\"a\"]");
    let result: Vec<String> = engine.handle(first.clone()).result().await.unwrap();
    assert_eq!(result, ["a"]);

    // A started workflow is never changed: the next enqueue of its key
    // starts another one.
    let held = engine
        .enqueue::<Reindex>(vec!["hold".to_owned()], debounced("doc-3", 0, 0))
        .await
        .unwrap()
        .workflow_id()
        .to_owned();
    support::timeout(Duration::from_secs(30), async {
        loop {
            let epoch: i64 =
                sqlx::query_scalar("SELECT owner_epoch FROM tandem.workflows WHERE id = $1")
                    .bind(&held)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if epoch > 0 {
                break;
            }
            support::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let next = engine
        .enqueue::<Reindex>(vec!["after".to_owned()], debounced("doc-3", 0, 0))
        .await
        .unwrap()
        .workflow_id()
        .to_owned();
    assert_ne!(next, held);
    assert_eq!(input_of(&pool, &held).await, "[\"hold\"]");
    engine.send(&held, "go", &1i64).await.unwrap();
    let held_result: Vec<String> = engine.handle(held).result().await.unwrap();
    assert_eq!(held_result, ["hold"]);
    let next_result: Vec<String> = engine.handle(next).result().await.unwrap();
    assert_eq!(next_result, ["after"]);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_debounced_start_is_pushed_back_at_most_its_maximum_wait() {
    let url = support::database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    // No executor yet: the pending workflow's start time is the database's
    // to compute, and nothing claims it meanwhile.
    let storage = PgStorage::from_pool(pool.clone());
    tandem::Storage::migrate(&storage).await.unwrap();
    sqlx::query(
        "INSERT INTO tandem.workflow_names (name, input_types, registered_at)
         VALUES ('reindex', '{array}', now());
         ",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO tandem.queues (name) VALUES ('search')")
        .execute(&pool)
        .await
        .unwrap();
    let call = "SELECT tandem.enqueue_workflow('reindex', $1::jsonb, queue => 'search',
                    delay => $2::bigint * interval '1 millisecond', debounce_key => 'doc',
                    debounce_max_wait => interval '1 hour')";
    let id: String = sqlx::query_scalar(call)
        .bind("[1]")
        .bind(60_000i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    // Pushed back by each enqueue, to `delay` from that enqueue's now()...
    let start = |pool: PgPool| async move {
        let (after_created, wait_left): (f64, f64) = sqlx::query_as(
            "SELECT extract(epoch FROM run_after - created_at)::float8,
                    extract(epoch FROM created_at + interval '1 hour' - run_after)::float8
               FROM tandem.workflows WHERE debounce_key = 'doc'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (after_created, wait_left)
    };
    let (first, _) = start(pool.clone()).await;
    assert!((59.9..=60.1).contains(&first), "{first}");
    for delay_ms in [120_000i64, 30 * 60_000, 3 * 3_600_000] {
        let again: String = sqlx::query_scalar(call)
            .bind("[2]")
            .bind(delay_ms)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(again, id);
    }
    // ... but never past the maximum wait after the first enqueue.
    let (_, wait_left) = start(pool.clone()).await;
    assert_eq!(wait_left, 0.0, "the start is capped at created + max wait");
    assert_eq!(input_of(&pool, &id).await, "[2]");

    // Bad combinations are refused like every argument.
    for (args, message) in [
        (
            "'reindex', '[1]', queue => 'search', workflow_id => 'x', delay => interval '1s', \
             debounce_key => 'doc', debounce_max_wait => interval '1s'",
            "debounce_key cannot be combined with workflow_id or dedup_key",
        ),
        (
            "'reindex', '[1]', queue => 'search', debounce_key => 'doc'",
            "debounce_key needs delay and debounce_max_wait",
        ),
        (
            "'reindex', '[1]', queue => 'search', debounce_max_wait => interval '1s'",
            "debounce_max_wait needs debounce_key",
        ),
        (
            "'reindex', '[1]', queue => 'search', delay => interval '1s', debounce_key => '', \
             debounce_max_wait => interval '1s'",
            "debounce_key must be 1 to 256 characters",
        ),
        (
            "'reindex', '[1]', queue => 'search', delay => interval '1s', debounce_key => 'doc', \
             debounce_max_wait => interval '-1s'",
            "debounce_max_wait must not be negative",
        ),
    ] {
        let sql = format!("SELECT tandem.enqueue_workflow({args})");
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap_err();
        let sqlx::Error::Database(db) = &err else {
            panic!("{err}")
        };
        assert_eq!(db.code().as_deref(), Some("22023"), "{err}");
        assert_eq!(
            db.message(),
            format!("tandem.enqueue_workflow: {message}"),
            "{args}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem.workflows")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}
