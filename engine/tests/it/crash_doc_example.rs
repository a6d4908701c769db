//! The complete example of `docs/testing-your-workflows.md`, verbatim, so
//! that the page's code compiles and passes.

use sqlx::PgConnection;
use tandem::testing::{CrashScenario, CrashTest, PgCluster, TestFuture};
use tandem::{Engine, EngineBuilder, PgStorage, Workflow, WorkflowContext, WorkflowError};

struct Order;

impl Workflow<PgStorage> for Order {
    const NAME: &'static str = "shop.order";
    type Input = String; // the order ID
    type Output = ();

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        order: String,
    ) -> Result<(), WorkflowError> {
        let o = order.clone();
        ctx.transaction("charge", async move |tx: &mut PgConnection| {
            sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 'shop'")
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO ledger (order_id) VALUES ($1)")
                .bind(&o)
                .execute(&mut *tx)
                .await
                .map(drop)
        })
        .await?;
        let o = order.clone();
        ctx.transaction("email", async move |tx: &mut PgConnection| {
            sqlx::query("INSERT INTO emails (order_id) VALUES ($1)")
                .bind(&o)
                .execute(&mut *tx)
                .await
                .map(drop)
        })
        .await?;
        Ok(())
    }
}

struct Shop;

impl CrashScenario<PgStorage> for Shop {
    // Runs once, in the template every schedule's database is cloned from.
    fn setup<'a>(&'a self, storage: &'a PgStorage) -> TestFuture<'a> {
        Box::pin(async move {
            sqlx::raw_sql(
                "CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL);
                 INSERT INTO accounts VALUES ('shop', 1000);
                 CREATE TABLE ledger (order_id text NOT NULL);
                 CREATE TABLE emails (order_id text NOT NULL);",
            )
            .execute(storage.pool())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    // Your engine: what your service registers. The harness sets the
    // environment, the executor ID, the lease and the poll intervals.
    fn engine(&self, storage: PgStorage) -> EngineBuilder<PgStorage> {
        Engine::builder(storage).register(Order)
    }

    // What your application does. A crash interrupts it (it is not resumed).
    fn run<'a>(&'a self, engine: &'a Engine<PgStorage>) -> TestFuture<'a> {
        Box::pin(async move {
            let h = engine
                .start_with_id::<Order>("order-1", "order-1".to_owned())
                .await
                .map_err(|e| e.to_string())?;
            h.result().await.map_err(|e| e.to_string())
        })
    }

    // What must hold once everything finished, for whatever part of the
    // scenario had started.
    fn check<'a>(&'a self, storage: &'a PgStorage) -> TestFuture<'a> {
        Box::pin(async move {
            let doubled: Option<(String, i64)> = sqlx::query_as(
                "SELECT order_id, count(*) FROM ledger GROUP BY order_id HAVING count(*) > 1",
            )
            .fetch_optional(storage.pool())
            .await
            .map_err(|e| e.to_string())?;
            match doubled {
                Some((order, n)) => Err(format!("order {order} has {n} ledger rows, not one")),
                None => Ok(()),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_every_crash() {
    let cluster = PgCluster::shared().await.unwrap();
    let report = CrashTest::postgres(cluster)
        .unwrap()
        .run(&Shop)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    // 6 durable points, 18 of 18 schedules run (0 unreached), 18 replays agreed
    println!("{report}");
    assert_eq!(report.ran, report.schedules);
}
