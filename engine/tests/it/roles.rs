//! Least privilege on a real PostgreSQL server (docs/security.md): each of
//! Tandem's roles, held by a login role of its own, may do what its table in
//! the docs says and gets a permission error for everything else, and a role
//! without any of them is refused at every entry point with nothing written.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem::storage::WorkflowFilter;
use tandem::{
    Admin, Engine, EnqueueOptions, Error, ErrorKind, PgStorage, Queue, Schedule, ScheduledTick,
    Status, Workflow, WorkflowContext, WorkflowError,
};

use crate::support;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderIn {
    pub id: i64,
}

/// Touches every kind of state an executor writes: a transactional step on
/// the application's table, a receive (a message consumed), a child, an
/// event, and the completion.
pub struct Order;

impl Workflow<PgStorage> for Order {
    const NAME: &'static str = "roles_order";
    type Input = OrderIn;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        input: OrderIn,
    ) -> Result<i64, WorkflowError> {
        let id = input.id;
        ctx.transaction("record", async move |tx: &mut PgConnection| {
            sqlx::query("INSERT INTO app_orders (id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map(|_| ())
        })
        .await?;
        let extra: Option<i64> = ctx.recv("go", Duration::from_secs(60)).await?;
        let child = ctx.start_child::<Double>(id).await?;
        let doubled = ctx.child_result(&child).await?;
        ctx.set_event("doubled", &doubled).await?;
        Ok(doubled + extra.unwrap_or(0))
    }
}

pub struct Double;

impl Workflow<PgStorage> for Double {
    const NAME: &'static str = "roles_double";
    type Input = i64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        input: i64,
    ) -> Result<i64, WorkflowError> {
        ctx.step(
            "double",
            || async move { Ok::<_, std::io::Error>(input * 2) },
        )
        .await
    }
}

/// A scheduled workflow whose schedule ticks once a year, so that the roles
/// see a schedule that fires nothing during a test.
pub struct Yearly;

impl Workflow<PgStorage> for Yearly {
    const NAME: &'static str = "roles_yearly";
    type Input = ScheduledTick;
    type Output = i64;

    async fn run(
        &self,
        _ctx: &mut WorkflowContext<PgStorage>,
        tick: ScheduledTick,
    ) -> Result<i64, WorkflowError> {
        Ok(tick.scheduled_at_ms)
    }
}

/// A fresh database migrated by its owner (the test server's superuser),
/// with the application's table, and login roles holding each of Tandem's
/// roles. Roles are global to the server, so their names carry the
/// database's.
struct Setup {
    owner: PgPool,
    url: String,
    db: String,
}

impl Setup {
    async fn new() -> Setup {
        let url = support::database().await;
        let storage = PgStorage::connect(&url).await.unwrap();
        tandem::storage::Storage::migrate(&storage).await.unwrap();
        let owner = storage.pool().clone();
        let db: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&owner)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE app_orders (id bigint PRIMARY KEY)")
            .execute(&owner)
            .await
            .unwrap();
        Setup { owner, url, db }
    }

    /// A login role `<kind>_<database>` that is a member of `groups`, and
    /// the URL it connects with (the password is ignored by the test
    /// server's trust authentication and used by a password-checking one).
    async fn login(&self, kind: &str, groups: &[&str]) -> String {
        let role = format!("{kind}_{}", self.db);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD 'secret'; \
             GRANT SELECT, INSERT ON app_orders TO \"{role}\";"
        )))
        .execute(&self.owner)
        .await
        .unwrap();
        for group in groups {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("GRANT {group} TO \"{role}\"")))
                .execute(&self.owner)
                .await
                .unwrap();
        }
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{role}:secret@{host}")
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.owner)
            .await
            .unwrap()
    }

    /// The owner's executor, running the workflows the tests enqueue.
    async fn executor(&self) -> Engine<PgStorage> {
        let storage = PgStorage::connect(&self.url).await.unwrap();
        launch(storage).await.unwrap()
    }
}

async fn launch(storage: PgStorage) -> Result<Engine<PgStorage>, Error> {
    Engine::builder(storage)
        .register(Order)
        .register(Double)
        .schedule(Yearly, Schedule::new("yearly", "0 0 0 1 1 *").unwrap())
        .queue(Queue::new("limited").rate_limit(20, Duration::from_secs(1)))
        .queue_poll_interval(Duration::from_millis(100))
        .launch()
        .await
}

/// Runs `sql` and returns its SQLSTATE and message (panics if it succeeds).
async fn refused(pool: &PgPool, sql: &str) -> (String, String) {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
    {
        Ok(_) => panic!("{sql} succeeded"),
        Err(sqlx::Error::Database(db)) => (
            db.code().unwrap_or_default().into_owned(),
            db.message().to_owned(),
        ),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Asserts that `sql` is refused for lack of a privilege.
async fn denied(pool: &PgPool, sql: &str) {
    let (code, message) = refused(pool, sql).await;
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(message.starts_with("permission denied"), "{sql}: {message}");
}

/// Asserts that an engine error is the storage's permission error, with
/// PostgreSQL's message naming the object and the advice naming the roles.
fn assert_denied(error: &Error, object: &str) {
    assert_eq!(error.kind(), ErrorKind::Denied, "{error}");
    let text = error.to_string();
    assert!(text.contains(object), "{text} should name {object}");
    assert!(text.contains("tandem_operator"), "{text}");
}

/// Waits until workflow `id` has recorded its transactional step (and so
/// waits for its message).
async fn wait_recorded(admin: &Admin<PgStorage>, id: &str) {
    support::timeout(Duration::from_secs(30), async {
        while admin
            .get_workflow(id)
            .await
            .unwrap()
            .is_none_or(|d| !d.steps.iter().any(|s| s.row.name == "record"))
        {
            support::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never recorded its step"));
}

fn filter() -> WorkflowFilter {
    WorkflowFilter {
        limit: 100,
        ..WorkflowFilter::default()
    }
}

/// Writes a table, calls a function and reads a column an enqueuer must
/// not; the statements every role test refuses alike.
const FORGERIES: [&str; 7] = [
    "UPDATE tandem.schedules SET cursor_ms = 0, paused = false",
    "INSERT INTO tandem.steps (workflow_id, step_id, name, kind, output, owner_epoch, attempts, \
     started_at, completed_at) VALUES ('x', 0, 'record', 'transaction', '1', 1, 1, now(), now())",
    "UPDATE tandem.workflows SET status = 'SUCCESS', output = '1'",
    "DELETE FROM tandem.messages",
    "UPDATE tandem.queues SET concurrency_global = NULL, rate_limit_count = NULL, \
     rate_limit_period_ms = NULL",
    "UPDATE tandem.settings SET value = '1000000000' WHERE key = 'payload_max_bytes'",
    "SELECT tandem.cancel_tree('x', 'deadline exceeded', NULL, NULL)",
];

#[tokio::test]
async fn an_enqueuer_may_enqueue_and_send_in_its_own_transaction_and_nothing_else() {
    let setup = Setup::new().await;
    let engine = setup.executor().await;
    let web = PgPool::connect(&setup.login("web", &["tandem_enqueuer"]).await)
        .await
        .unwrap();

    // The application's write and the enqueue commit together, from SQL and
    // from Rust; a rolled-back transaction leaves neither.
    let mut tx = web.begin().await.unwrap();
    sqlx::query("INSERT INTO app_orders (id) VALUES (1000)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let sql_id: String = sqlx::query_scalar(
        "SELECT tandem.enqueue_workflow('roles_order', '{\"id\": 1}', workflow_id => 'order-1')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let rust_id = PgStorage::enqueue_in::<Order>(
        &mut tx,
        &OrderIn { id: 2 },
        EnqueueOptions::default().workflow_id("order-2"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((sql_id.as_str(), rust_id.as_str()), ("order-1", "order-2"));

    let mut tx = web.begin().await.unwrap();
    sqlx::query("INSERT INTO app_orders (id) VALUES (1003)")
        .execute(&mut *tx)
        .await
        .unwrap();
    PgStorage::enqueue_in::<Order>(
        &mut tx,
        &OrderIn { id: 3 },
        EnqueueOptions::default().workflow_id("order-3"),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    // Sends reach the running workflows (from SQL, and from Rust in a
    // transaction), which finish with the message.
    let admin = engine.admin();
    wait_recorded(&admin, "order-1").await;
    wait_recorded(&admin, "order-2").await;
    sqlx::query("SELECT tandem.send('order-1', 'go', '10')")
        .execute(&web)
        .await
        .unwrap();
    let mut tx = web.begin().await.unwrap();
    PgStorage::send_in(&mut tx, "order-2", "go", &20i64)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(engine.handle::<i64>("order-1").result().await.unwrap(), 12);
    assert_eq!(engine.handle::<i64>("order-2").result().await.unwrap(), 24);
    assert_eq!(
        setup
            .count("SELECT count(*) FROM tandem.workflows WHERE id = 'order-3'")
            .await,
        0
    );
    assert_eq!(
        setup
            .count("SELECT count(*) FROM app_orders WHERE id = 1003")
            .await,
        0
    );

    // Nothing else: no workflow's input or output, no checkpoint, no status,
    // no queue setting or limit, no management function.
    for sql in [
        "SELECT input FROM tandem.workflows",
        "SELECT output FROM tandem.steps",
        "SELECT payload FROM tandem.messages",
        "SELECT value FROM tandem.events",
        "SELECT count(*) FROM tandem.workflows",
        "SELECT tandem.cancel_workflow('order-1')",
        "SELECT tandem.resume_workflow('order-1')",
        "SELECT tandem.fork_workflow('order-1', 'mine', 99)",
        "SELECT tandem.pause_schedule('yearly')",
        "SELECT tandem.resume_schedule('yearly')",
        "SELECT tandem.grant_roles()",
    ]
    .into_iter()
    .chain(FORGERIES)
    {
        denied(&web, sql).await;
    }
    // The Rust API says which role would allow it.
    let web_admin = Admin::new(PgStorage::from_pool(web.clone()));
    assert_denied(
        &web_admin.list_workflows(filter()).await.unwrap_err(),
        "permission denied for table workflows",
    );
    let err = launch(PgStorage::from_pool(web.clone()))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(
        err.to_string()
            .contains("lacks SELECT on tandem._sqlx_migrations; EXECUTE on tandem.cancel_tree("),
        "{err}"
    );

    // Abuse of the enqueue path: the limits hold for the definer's function
    // exactly as for the owner, and abort the caller's transaction whole.
    let mut tx = web.begin().await.unwrap();
    sqlx::query("INSERT INTO app_orders (id) VALUES (1004)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let oversized = format!(
        "SELECT tandem.enqueue_workflow('roles_order', jsonb_build_object('id', 4, 'pad', \
         repeat('x', {})))",
        2 * 1024 * 1024
    );
    let err = sqlx::query(sqlx::AssertSqlSafe(oversized))
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("over the limit of 1048576 bytes"),
        "{err}"
    );
    tx.rollback().await.unwrap();
    let nested = format!(
        "SELECT tandem.enqueue_workflow('roles_order', '{}{}'::jsonb)",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (code, message) = refused(&web, &nested).await;
    assert!(code.starts_with("54"), "{code} {message}");
    let (code, message) = refused(
        &web,
        "SELECT tandem.enqueue_workflow('roles_order', '{}', queue => 'made_up')",
    )
    .await;
    assert_eq!(code, "22023", "{message}");
    assert_eq!(
        setup.count("SELECT count(*) FROM tandem.workflows").await,
        4,
        "two orders and their children, nothing from the refused calls"
    );
    assert_eq!(setup.count("SELECT count(*) FROM app_orders").await, 3);
    engine.shutdown().await;
}

#[tokio::test]
async fn an_operator_may_read_cancel_resume_fork_and_send_but_not_forge() {
    let setup = Setup::new().await;
    let engine = setup.executor().await;
    let ops = PgPool::connect(&setup.login("ops", &["tandem_operator"]).await)
        .await
        .unwrap();
    let admin = Admin::new(PgStorage::from_pool(ops.clone()));

    for id in 1..=2 {
        engine
            .start_with_id::<Order>(format!("order-{id}"), OrderIn { id })
            .await
            .unwrap();
    }
    wait_recorded(&admin, "order-1").await;
    wait_recorded(&admin, "order-2").await;

    // Reads, with inputs, steps and events.
    let listed = admin.list_workflows(filter()).await.unwrap();
    assert_eq!(listed.len(), 2);
    let detail = admin.get_workflow("order-1").await.unwrap().unwrap();
    assert_eq!(detail.workflow.row.input, "{\"id\": 1}");

    // Cancel stops a waiting run; resume continues it; a send finishes it.
    assert_eq!(admin.cancel("order-1").await.unwrap(), ["order-1"]);
    assert_eq!(
        admin
            .get_workflow("order-1")
            .await
            .unwrap()
            .unwrap()
            .workflow
            .row
            .status,
        Status::Cancelled
    );
    admin.resume("order-1").await.unwrap();
    admin.send("order-1", "go", &5i64).await.unwrap();
    admin.send("order-2", "go", &0i64).await.unwrap();
    assert_eq!(engine.handle::<i64>("order-1").result().await.unwrap(), 7);
    assert_eq!(engine.handle::<i64>("order-2").result().await.unwrap(), 4);
    let doubled: Option<i64> = admin
        .get_event("order-2", "doubled", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(doubled, Some(4));

    // A fork replays the recorded transactional step (no second insert into
    // app_orders) and runs the rest.
    let fork = admin.fork("order-2", 1).await.unwrap();
    wait_recorded(&admin, &fork).await;
    admin.send(&fork, "go", &1i64).await.unwrap();
    assert_eq!(engine.handle::<i64>(&fork).result().await.unwrap(), 5);
    assert_eq!(setup.count("SELECT count(*) FROM app_orders").await, 2);

    // Schedules: listed, paused and resumed through the SQL functions.
    let listed = admin.schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].paused),
        ("yearly", false)
    );
    assert!(admin.pause_schedule("yearly").await.unwrap().paused);
    assert!(!admin.resume_schedule("yearly").await.unwrap().paused);

    // Retention: a dry run only reads; deleting is an executor's.
    let day = Some(Duration::from_secs(86_400));
    assert_eq!(admin.gc(day, true, 10).await.unwrap().workflows, 0);
    let err = admin.gc(day, false, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");

    // No forged checkpoint, result or status, no enqueue, and no executor.
    for sql in FORGERIES.into_iter().chain([
        "SELECT tandem.enqueue_workflow('roles_order', '{\"id\": 9}')",
        "SELECT tandem.grant_roles()",
        "INSERT INTO tandem.executors (id, started_at, heartbeat_at, lease_expires_at) \
         VALUES ('rogue', now(), now(), now() + interval '1 hour')",
    ]) {
        denied(&ops, sql).await;
    }
    let err = launch(PgStorage::from_pool(ops.clone()))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("may not run workflows")
            && text.contains("INSERT, UPDATE, DELETE on tandem.steps")
            && text.contains("EXECUTE on tandem.enqueue_workflow(")
            && text.contains("grant it tandem_executor"),
        "{text}"
    );
    assert_eq!(
        setup
            .count("SELECT count(*) FROM tandem.executors WHERE id <> ''")
            .await,
        1,
        "the refused launch registered no executor"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn an_executor_role_runs_workflows_end_to_end_without_owning_the_schema() {
    let setup = Setup::new().await;
    let worker_url = setup.login("worker", &["tandem_executor"]).await;
    let worker = PgStorage::connect(&worker_url).await.unwrap();
    let engine = launch(worker.clone()).await.unwrap();
    let pool = worker.pool().clone();

    // Started from Rust and enqueued from SQL by the executor's own role.
    engine
        .start_with_id::<Order>("order-1", OrderIn { id: 1 })
        .await
        .unwrap();
    sqlx::query(
        "SELECT tandem.enqueue_workflow('roles_order', '{\"id\": 2}', workflow_id => 'order-2')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for id in ["order-1", "order-2"] {
        engine.send(id, "go", &1i64).await.unwrap();
    }
    assert_eq!(engine.handle::<i64>("order-1").result().await.unwrap(), 3);
    assert_eq!(engine.handle::<i64>("order-2").result().await.unwrap(), 5);
    let cancelled = engine.cancel("order-2").await.unwrap();
    assert!(cancelled.is_empty(), "a finished workflow is not cancelled");

    // The migrations' record and the role setup are the owner's.
    for sql in [
        "DELETE FROM tandem._sqlx_migrations",
        "SELECT tandem.grant_roles()",
        "CREATE TABLE tandem.mine (id int)",
        "DROP TABLE tandem.steps",
    ] {
        let (code, message) = refused(&pool, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("permission denied") || message.contains("must be owner"));
    }
    engine.shutdown().await;

    // A schema a newer build migrated further counts as current: older
    // executors keep launching during a rolling deploy.
    sqlx::query(
        "INSERT INTO tandem._sqlx_migrations (version, description, success, checksum, \
         execution_time) VALUES (99990101, 'a later build', true, '\\x00', 0)",
    )
    .execute(&setup.owner)
    .await
    .unwrap();
    launch(worker.clone()).await.unwrap().shutdown().await;

    // A schema behind this build's migrations: the executor's role may not
    // migrate it and says who must; the owner's migration then lets it run.
    let newest: i64 = setup
        .count("SELECT max(version) FROM tandem._sqlx_migrations WHERE version < 99990101")
        .await;
    let saved: (String, Vec<u8>) = sqlx::query_as(
        "DELETE FROM tandem._sqlx_migrations WHERE version = $1 RETURNING description, checksum",
    )
    .bind(newest)
    .fetch_one(&setup.owner)
    .await
    .unwrap();
    let err = launch(worker.clone()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(
        err.to_string().contains(
            "needs migrating and this role may not: run `tandem migrate` as the schema's owner"
        ),
        "{err}"
    );
    sqlx::query(
        "INSERT INTO tandem._sqlx_migrations (version, description, success, checksum, \
         execution_time) VALUES ($1, $2, true, $3, 0)",
    )
    .bind(newest)
    .bind(&saved.0)
    .bind(&saved.1)
    .execute(&setup.owner)
    .await
    .unwrap();
    launch(worker).await.unwrap().shutdown().await;
}

#[tokio::test]
async fn a_role_without_tandem_roles_is_refused_everywhere_and_nothing_is_written() {
    let setup = Setup::new().await;
    let engine = setup.executor().await;
    engine
        .start_with_id::<Order>("order-1", OrderIn { id: 1 })
        .await
        .unwrap();
    let nobody = PgPool::connect(&setup.login("nobody", &[]).await)
        .await
        .unwrap();
    let storage = PgStorage::from_pool(nobody.clone());
    let admin = Admin::new(storage.clone());
    let schema = "permission denied for schema tandem";

    assert_denied(&admin.list_workflows(filter()).await.unwrap_err(), schema);
    assert_denied(&admin.get_workflow("order-1").await.unwrap_err(), schema);
    assert_denied(&admin.cancel("order-1").await.unwrap_err(), schema);
    assert_denied(&admin.resume("order-1").await.unwrap_err(), schema);
    assert_denied(&admin.fork("order-1", 0).await.unwrap_err(), schema);
    assert_denied(
        &admin.send("order-1", "go", &1i64).await.unwrap_err(),
        schema,
    );
    assert_denied(
        &admin
            .get_event::<i64>("order-1", "doubled", Duration::ZERO)
            .await
            .unwrap_err(),
        schema,
    );
    let err = launch(storage).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(
        err.to_string().contains("lacks USAGE on schema tandem"),
        "{err}"
    );

    // Inside the application's transaction: refused, and the transaction's
    // own write goes with it.
    let mut tx = nobody.begin().await.unwrap();
    sqlx::query("INSERT INTO app_orders (id) VALUES (1000)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err =
        PgStorage::enqueue_in::<Order>(&mut tx, &OrderIn { id: 5 }, EnqueueOptions::default())
            .await
            .unwrap_err();
    assert_denied(&err, schema);
    // PostgreSQL answers the COMMIT of an aborted transaction with ROLLBACK.
    let _ = tx.commit().await;
    let mut tx = nobody.begin().await.unwrap();
    let err = PgStorage::send_in(&mut tx, "order-1", "go", &1i64)
        .await
        .unwrap_err();
    assert_denied(&err, schema);
    drop(tx);
    denied(
        &nobody,
        "SELECT tandem.enqueue_workflow('roles_order', '{\"id\": 6}')",
    )
    .await;

    assert_eq!(
        setup.count("SELECT count(*) FROM tandem.workflows").await,
        1
    );
    assert_eq!(setup.count("SELECT count(*) FROM tandem.messages").await, 0);
    assert_eq!(
        setup
            .count("SELECT count(*) FROM app_orders WHERE id = 1000")
            .await,
        0
    );
    assert_eq!(
        setup
            .count("SELECT count(*) FROM tandem.workflows WHERE status = 'RUNNING'")
            .await,
        1,
        "the refused cancel left the run alone"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_enqueues_is_admitted_at_the_queues_rate_limit() {
    let setup = Setup::new().await;
    let engine = setup.executor().await;
    let web = PgPool::connect(&setup.login("flood", &["tandem_enqueuer"]).await)
        .await
        .unwrap();
    // 120 enqueues in one statement into a queue admitting 20 starts per
    // second: the executor starts them at that rate, and every one runs.
    sqlx::query(
        "SELECT tandem.enqueue_workflow('roles_double', to_jsonb(i), queue => 'limited',
                                        workflow_id => 'flood-' || i)
           FROM generate_series(1, 120) i",
    )
    .execute(&web)
    .await
    .unwrap();
    for i in 1..=120i64 {
        assert_eq!(
            engine
                .handle::<i64>(&format!("flood-{i}"))
                .result()
                .await
                .unwrap(),
            i * 2
        );
    }
    // No window of one second, starting at any start, holds more than 20.
    let worst = setup
        .count(
            "SELECT max((SELECT count(*) FROM tandem.workflows b
                          WHERE b.queue = 'limited'
                            AND b.started_at >= a.started_at
                            AND b.started_at < a.started_at + interval '1 second'))
               FROM tandem.workflows a WHERE a.queue = 'limited'",
        )
        .await;
    assert!(worst <= 20, "{worst} starts within one second");
    engine.shutdown().await;
}

#[tokio::test]
async fn every_table_and_function_carries_exactly_the_documented_privileges() {
    // Read from the catalog, so that a later migration that adds a table
    // or a function without calling tandem.grant_roles fails here.
    let setup = Setup::new().await;
    let tables: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, r.role,
                COALESCE(string_agg(p.privilege, ',' ORDER BY p.ord)
                         FILTER (WHERE has_table_privilege(r.role, c.oid, p.privilege)), '')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          CROSS JOIN unnest(ARRAY['tandem_executor', 'tandem_enqueuer', 'tandem_operator']) r(role)
          CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'])
                     WITH ORDINALITY p(privilege, ord)
          WHERE n.nspname = 'tandem' AND c.relkind = 'r'
          GROUP BY c.relname, r.role ORDER BY 1, 2",
    )
    .fetch_all(&setup.owner)
    .await
    .unwrap();
    assert_eq!(tables.len(), 10 * 3, "{tables:?}");
    for (table, role, privileges) in &tables {
        let expected = match (role.as_str(), table.as_str()) {
            ("tandem_executor", "_sqlx_migrations") => "SELECT",
            ("tandem_executor", _) => "SELECT,INSERT,UPDATE,DELETE",
            ("tandem_operator", _) => "SELECT",
            _ => "",
        };
        assert_eq!(privileges, expected, "{role} on tandem.{table}");
    }

    let functions: Vec<(String, bool, bool, Vec<String>)> = sqlx::query_as(
        "SELECT f.proname::text, f.prosecdef,
                COALESCE('search_path=pg_catalog, pg_temp' = ANY (f.proconfig), false),
                ARRAY(SELECT r FROM unnest(ARRAY['tandem_executor', 'tandem_enqueuer',
                                                 'tandem_operator', 'public']) r
                       WHERE has_function_privilege(r, f.oid, 'EXECUTE'))
           FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace
          WHERE n.nspname = 'tandem' ORDER BY 1",
    )
    .fetch_all(&setup.owner)
    .await
    .unwrap();
    let names: Vec<&str> = functions.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "cancel_tree",
            "cancel_workflow",
            "clock_ms",
            "enqueue_workflow",
            "fork_workflow",
            "grant_roles",
            "pause_schedule",
            "resume_schedule",
            "resume_workflow",
            "send",
            "setup_roles",
            "steps_fence"
        ]
    );
    for (name, definer, pinned, callers) in &functions {
        assert!(pinned, "{name} pins its search_path");
        let (expected_definer, expected_callers): (bool, &[&str]) = match name.as_str() {
            "enqueue_workflow" => (true, &["tandem_executor", "tandem_enqueuer"]),
            "send" => (
                true,
                &["tandem_executor", "tandem_enqueuer", "tandem_operator"],
            ),
            "cancel_workflow" | "resume_workflow" | "fork_workflow" | "pause_schedule"
            | "resume_schedule" => (true, &["tandem_executor", "tandem_operator"]),
            "clock_ms" => (false, &["tandem_executor", "tandem_operator"]),
            // (A trigger's function runs whoever inserts: EXECUTE is not
            // checked for triggers.)
            "cancel_tree" | "steps_fence" => (false, &["tandem_executor"]),
            _ => (false, &[]),
        };
        assert_eq!(*definer, expected_definer, "{name} SECURITY DEFINER");
        assert_eq!(callers, expected_callers, "who may call {name}");
    }
}
