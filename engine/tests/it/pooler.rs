//! Running behind a connection pooler in transaction mode (PgBouncer's
//! `pool_mode = transaction`): where an executor listens for wake-ups
//! (`PgStorage::listen_url`, `PgStorage::without_listen`) and migrations
//! that several processes run at once. Under `TANDEM_TEST_PGBOUNCER` every
//! URL of the suite goes through PgBouncer, these tests included (as
//! `.ci/run` runs them); without it they check the same behaviour on
//! direct connections.

use std::time::Duration;

use tandem::testing::PgCluster;
use tandem::{Engine, PgStorage, Storage, Workflow, WorkflowContext, WorkflowError};

use crate::support;

struct Echo;

impl Workflow<PgStorage> for Echo {
    const NAME: &'static str = "pooler.echo";
    type Input = i64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: i64,
    ) -> Result<i64, WorkflowError> {
        ctx.step("echo", || async move { Ok::<_, std::io::Error>(n) })
            .await
    }
}

async fn cluster() -> &'static PgCluster {
    PgCluster::shared().await.expect("the test server")
}

/// Backends connected to `url`'s database whose last statement was a
/// LISTEN, seen on a direct connection.
async fn listeners(url: &str) -> i64 {
    let cluster = cluster().await;
    let direct = sqlx::PgPool::connect(&cluster.direct_url(url))
        .await
        .unwrap();
    let n = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&direct)
    .await
    .unwrap();
    direct.close().await;
    n
}

/// Enqueues `pooler.echo` from SQL through the pool (the pooler, when
/// there is one) and waits up to `within` for it to succeed.
async fn enqueue_and_wait(storage: &PgStorage, n: i64, within: Duration) -> bool {
    let id: String = sqlx::query_scalar("SELECT tandem.enqueue_workflow('pooler.echo', $1)")
        .bind(serde_json::json!(n))
        .fetch_one(storage.pool())
        .await
        .unwrap();
    let admin = tandem::Admin::new(storage.clone());
    let poll = Duration::from_millis(20);
    for _ in 0..within.as_millis() / poll.as_millis() {
        let status = admin
            .get_workflow(&id)
            .await
            .unwrap()
            .map(|d| d.workflow.row.status);
        if status == Some(tandem::Status::Success) {
            return true;
        }
        support::sleep(poll).await;
    }
    false
}

#[tokio::test]
async fn with_a_listen_url_an_sql_enqueue_wakes_the_executor_at_once() {
    let url = support::database().await;
    let direct = cluster().await.direct_url(&url);
    let storage = PgStorage::connect(&url).await.unwrap().listen_url(&direct);
    storage.migrate().await.unwrap();
    // Polling alone would take ten minutes: only the wake-up can start it.
    let engine = Engine::builder(storage.clone())
        .register(Echo)
        .queue_poll_interval(Duration::from_secs(600))
        .launch()
        .await
        .unwrap();
    let listening = support::timeout(Duration::from_secs(10), async {
        while listeners(&url).await == 0 {
            support::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(listening.is_ok(), "the executor never listened");
    assert!(
        enqueue_and_wait(&storage, 7, Duration::from_secs(20)).await,
        "the enqueue's NOTIFY did not wake the executor"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn without_listen_executors_poll_and_never_listen() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap().without_listen();
    polls_and_never_listens(&url, storage).await;
}

#[tokio::test]
async fn a_pgbouncer_url_is_never_listened_on() {
    // Direct, but marked as a pooler's: the mark alone must do it.
    let url = cluster().await.direct_url(&support::database().await);
    let marked = format!("{url}?pgbouncer=true");
    polls_and_never_listens(&url, PgStorage::connect(&marked).await.unwrap()).await;
}

async fn polls_and_never_listens(url: &str, storage: PgStorage) {
    let url = url.to_owned();
    storage.migrate().await.unwrap();
    let engine = Engine::builder(storage.clone())
        .register(Echo)
        .queue_poll_interval(Duration::from_millis(100))
        .launch()
        .await
        .unwrap();
    for n in 0..3 {
        assert!(
            enqueue_and_wait(&storage, n, Duration::from_secs(20)).await,
            "workflow {n} never ran"
        );
    }
    assert_eq!(listeners(&url).await, 0, "a LISTEN was sent");
    engine.shutdown().await;
}

#[tokio::test]
async fn processes_migrating_at_once_apply_each_migration_once_and_leave_no_lock() {
    let url = support::database().await;
    let storages: Vec<PgStorage> = four_storages(&url).await;
    let (a, b, c, d) = tokio::join!(
        storages[0].migrate(),
        storages[1].migrate(),
        storages[2].migrate(),
        storages[3].migrate()
    );
    for result in [a, b, c, d] {
        result.expect("every migrate succeeds");
    }
    let direct = sqlx::PgPool::connect(&cluster().await.direct_url(&url))
        .await
        .unwrap();
    let (applied, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT version) FROM tandem._sqlx_migrations WHERE success",
    )
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(applied, distinct);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        })
        .count();
    assert_eq!(applied as usize, files, "every migration applied once");
    // A session lock left on a pooled server connection would stall the
    // next migration of this database for good.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
          WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(locks, 0, "an advisory lock outlived the migration");
    direct.close().await;
}

/// Four storages on `url`, as four processes would have.
async fn four_storages(url: &str) -> Vec<PgStorage> {
    let mut storages = Vec::new();
    for _ in 0..4 {
        storages.push(PgStorage::connect(url).await.unwrap());
    }
    storages
}

#[tokio::test]
async fn under_tandem_test_pgbouncer_the_suite_connects_through_the_pooler() {
    let cluster = cluster().await;
    let asked = std::env::var_os(tandem::testing::PGBOUNCER).is_some_and(|v| !v.is_empty());
    assert_eq!(cluster.is_pooled(), asked);
    let url = support::database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // The server's own port: the pooler's differs from it.
    let server_port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let url_port: i32 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_eq!(
        url_port != server_port,
        asked,
        "{url} reaches port {server_port}"
    );
    pool.close().await;
}
