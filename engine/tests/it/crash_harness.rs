//! `tandem::testing::CrashTest` on users' workflows: each mistake the docs
//! warn about (a transactional step writing through another connection, a
//! plain step writing to the database, control flow on the wall clock) is
//! caught under some schedule, and the corrected workflow passes them all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem::storage::Storage;
use tandem::testing::{CrashScenario, CrashTest, Failure, PgCluster, Report, TestFuture};
use tandem::{
    Engine, EngineBuilder, MemStorage, PgStorage, Workflow, WorkflowContext, WorkflowError,
};

/// How the order workflow is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mistake {
    /// Correct throughout.
    None,
    /// The charge's ledger row is written through the pool, not the step's
    /// transaction.
    LedgerOutsideTransaction,
    /// The email row is written by a plain step.
    EmailInPlainStep,
    /// The workflow branches on the wall clock between steps.
    BranchOnClock,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderInput {
    order: String,
    amount: i64,
}

/// Charge, email, then a shipping step chosen by the time of day.
struct Order {
    mistake: Mistake,
    /// The application's own pool (a separate connection from the step's).
    pool: PgPool,
}

async fn charge(tx: &mut PgConnection, amount: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE accounts SET balance = balance - $1 WHERE id = 'shop' RETURNING balance",
    )
    .bind(amount)
    .fetch_one(tx)
    .await
}

// The mistake under test: reading the wall clock in workflow code.
#[allow(clippy::disallowed_methods)]
fn clock_is_even() -> bool {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros() % 2 == 0)
        .unwrap_or(false)
}

impl Workflow<PgStorage> for Order {
    const NAME: &'static str = "shop.order";
    type Input = OrderInput;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        input: OrderInput,
    ) -> Result<i64, WorkflowError> {
        let (order, amount) = (input.order.clone(), input.amount);
        let pool = self.pool.clone();
        let outside = self.mistake == Mistake::LedgerOutsideTransaction;
        let balance = ctx
            .transaction("charge", async move |tx| {
                let balance = charge(tx, amount).await?;
                let insert = sqlx::query("INSERT INTO ledger (order_id) VALUES ($1)").bind(&order);
                if outside {
                    insert.execute(&pool).await?;
                } else {
                    insert.execute(&mut *tx).await?;
                }
                Ok::<_, sqlx::Error>(balance)
            })
            .await?;
        let order = input.order.clone();
        if self.mistake == Mistake::EmailInPlainStep {
            let pool = self.pool.clone();
            ctx.step("email", || async {
                sqlx::query("INSERT INTO emails (order_id) VALUES ($1)")
                    .bind(&order)
                    .execute(&pool)
                    .await
                    .map(drop)
            })
            .await?;
        } else {
            ctx.transaction("email", async move |tx| {
                sqlx::query("INSERT INTO emails (order_id) VALUES ($1)")
                    .bind(&order)
                    .execute(&mut *tx)
                    .await
                    .map(drop)
            })
            .await?;
        }
        let even = if self.mistake == Mistake::BranchOnClock {
            clock_is_even()
        } else {
            // Correct: the time is read in a step, so replays see the
            // recorded value.
            ctx.step("read-clock", || async {
                Ok::<_, std::io::Error>(clock_is_even())
            })
            .await?
        };
        let ship = if even {
            "ship-express"
        } else {
            "ship-standard"
        };
        ctx.step(ship, || async { Ok::<_, std::io::Error>(()) })
            .await?;
        Ok(balance)
    }
}

/// The shop: two orders started through the engine; the check reads the
/// shop's tables.
struct Shop {
    mistake: Mistake,
    orders: usize,
    /// Orders come in through the outbox: an application transaction that
    /// calls `tandem.enqueue_workflow`, claimed from the queue.
    outbox: bool,
}

impl CrashScenario<PgStorage> for Shop {
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

    fn engine(&self, storage: PgStorage) -> EngineBuilder<PgStorage> {
        let pool = storage.pool().clone();
        Engine::builder(storage).register(Order {
            mistake: self.mistake,
            pool,
        })
    }

    fn run<'a>(&'a self, engine: &'a Engine<PgStorage>) -> TestFuture<'a> {
        Box::pin(async move {
            let mut handles = Vec::new();
            for i in 1..=self.orders {
                let input = OrderInput {
                    order: format!("order-{i}"),
                    amount: 10,
                };
                if self.outbox {
                    let id = format!("order-{i}");
                    let mut tx = engine
                        .storage()
                        .pool()
                        .begin()
                        .await
                        .map_err(|e| e.to_string())?;
                    sqlx::query(
                        "SELECT tandem.enqueue_workflow('shop.order', \
                         jsonb_build_object('order', $1::text, 'amount', 10), workflow_id => $1)",
                    )
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                    tx.commit().await.map_err(|e| e.to_string())?;
                    handles.push(engine.handle::<i64>(id));
                    continue;
                }
                let handle = engine
                    .start_with_id::<Order>(format!("order-{i}"), input)
                    .await
                    .map_err(|e| e.to_string())?;
                handles.push(handle);
            }
            for handle in handles {
                handle.result().await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn check<'a>(&'a self, storage: &'a PgStorage) -> TestFuture<'a> {
        Box::pin(async move {
            let pool = storage.pool();
            let e = |e: sqlx::Error| e.to_string();
            let doubled: Option<(String, i64)> = sqlx::query_as(
                "SELECT order_id, count(*) FROM ledger GROUP BY order_id HAVING count(*) > 1",
            )
            .fetch_optional(pool)
            .await
            .map_err(e)?;
            if let Some((order, n)) = doubled {
                return Err(format!("order {order} has {n} ledger rows, not one"));
            }
            let emails: Option<(String, i64)> = sqlx::query_as(
                "SELECT order_id, count(*) FROM emails GROUP BY order_id HAVING count(*) <> 1",
            )
            .fetch_optional(pool)
            .await
            .map_err(e)?;
            if let Some((order, n)) = emails {
                return Err(format!("order {order} has {n} email rows, not one"));
            }
            let (balance, charged): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT balance FROM accounts WHERE id = 'shop'),
                        (SELECT count(*) * 10 FROM ledger)",
            )
            .fetch_one(pool)
            .await
            .map_err(e)?;
            if balance + charged != 1000 {
                return Err(format!(
                    "money is not conserved: balance {balance} + charged {charged} != 1000"
                ));
            }
            Ok(())
        })
    }
}

async fn crash_test(mistake: Mistake) -> Result<Report, Box<Failure>> {
    let cluster = PgCluster::shared()
        .await
        .expect("start the test PostgreSQL server");
    CrashTest::postgres(cluster)
        .expect("a crash test on the test server")
        .run(&Shop {
            mistake,
            orders: 1,
            outbox: false,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_workflow_passes_every_schedule() {
    let report = crash_test(Mistake::None)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    // One order: its start, three steps and the completion commit, two
    // transactional steps: every fault at every point ran.
    assert_eq!(report.ran, report.schedules, "{report}");
    assert!(report.points >= 8, "{report}");
    assert_eq!(report.unreached, 0, "{report}");
    // The reference run and each schedule replayed the order, except the
    // schedule that crashed before the order's start committed.
    assert_eq!(report.replayed, report.ran, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_through_the_outbox_pass_every_schedule_including_the_claim() {
    let cluster = PgCluster::shared()
        .await
        .expect("start the test PostgreSQL server");
    let report = CrashTest::postgres(cluster)
        .expect("a crash test on the test server")
        .run(&Shop {
            mistake: Mistake::None,
            orders: 2,
            outbox: true,
        })
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.ran, report.schedules, "{report}");
    // The enqueue is the application's commit, not the engine's; the claims
    // that took the orders are durable points of their own.
    assert!(
        report
            .found
            .iter()
            .any(|p| p.workflow == "-" && p.op == "workflows_claim"),
        "{report}: {:?}",
        report.found
    );
    // Whether one claim takes both orders or each its own depends on
    // timing: only a claim's point may go unreached.
    assert!(
        report.missed.iter().all(|s| s.at.op == "workflows_claim"),
        "{report}: {:?}",
        report.missed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_step_writing_through_another_connection_is_caught() {
    let failure = crash_test(Mistake::LedgerOutsideTransaction)
        .await
        .expect_err("the ledger row written outside the step's transaction is duplicated");
    eprintln!("{failure}");
    assert!(failure.message.contains("ledger rows"), "{failure}");
    assert_eq!(failure.workflow.as_deref(), Some("order-1"), "{failure}");
    assert_eq!(failure.step.as_deref(), Some("charge"), "{failure}");
    assert!(failure.schedule.is_some(), "{failure}");
    // What it prints names the schedule to reproduce it with.
    let text = failure.to_string();
    assert!(text.contains(".only(\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_step_writing_to_the_database_is_caught() {
    let failure = crash_test(Mistake::EmailInPlainStep)
        .await
        .expect_err("the email row written by a plain step is duplicated");
    eprintln!("{failure}");
    assert!(failure.message.contains("email rows"), "{failure}");
    assert_eq!(failure.step.as_deref(), Some("email"), "{failure}");
    // And the printed schedule reproduces it alone.
    let schedule = failure.schedule.clone().expect("a schedule").to_string();
    let cluster = PgCluster::shared().await.expect("the test server");
    let again = CrashTest::postgres(cluster)
        .expect("a crash test")
        .only(&schedule)
        .run(&Shop {
            mistake: Mistake::EmailInPlainStep,
            orders: 1,
            outbox: false,
        })
        .await
        .expect_err("the schedule reproduces the failure");
    assert_eq!(again.schedule, failure.schedule);
    assert!(again.message.contains("email rows"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_flow_on_the_wall_clock_is_caught() {
    let failure = crash_test(Mistake::BranchOnClock)
        .await
        .expect_err("a branch on the clock diverges on replay or recovery");
    eprintln!("{failure}");
    assert!(failure.message.contains("non-deterministic"), "{failure}");
    assert_eq!(failure.workflow.as_deref(), Some("order-1"), "{failure}");
}

/// A workflow generic over the storage, so it runs on the memory model too.
struct Ticker {
    branch_on_clock: bool,
}

impl<S: Storage> Workflow<S> for Ticker {
    const NAME: &'static str = "ticker";
    type Input = u32;
    type Output = u32;

    async fn run(&self, ctx: &mut WorkflowContext<S>, n: u32) -> Result<u32, WorkflowError> {
        let mut sum = 0;
        for i in 0..n {
            sum += ctx
                .step("tick", || async move { Ok::<_, std::io::Error>(i) })
                .await?;
        }
        ctx.sleep(Duration::from_millis(5)).await?;
        let even = if self.branch_on_clock {
            clock_is_even()
        } else {
            ctx.step("read-clock", || async {
                Ok::<_, std::io::Error>(clock_is_even())
            })
            .await?
        };
        if even {
            ctx.step("even", || async { Ok::<_, std::io::Error>(()) })
                .await?;
        }
        Ok(sum)
    }
}

struct Ticks {
    branch_on_clock: bool,
    /// Whether `run` waits for the results (otherwise it returns once the
    /// workflows started, and the faults come while they settle).
    wait: bool,
}

impl CrashScenario<MemStorage> for Ticks {
    fn engine(&self, storage: MemStorage) -> EngineBuilder<MemStorage> {
        Engine::builder(storage).register(Ticker {
            branch_on_clock: self.branch_on_clock,
        })
    }

    fn run<'a>(&'a self, engine: &'a Engine<MemStorage>) -> TestFuture<'a> {
        Box::pin(async move {
            for id in ["t1", "t2"] {
                let handle = engine
                    .start_with_id::<Ticker>(id.to_owned(), 3)
                    .await
                    .map_err(|e| e.to_string())?;
                if !self.wait {
                    continue;
                }
                let sum = handle.result().await.map_err(|e| e.to_string())?;
                if sum != 3 {
                    return Err(format!("{id} returned {sum}, not 3"));
                }
            }
            Ok(())
        })
    }

    fn check<'a>(&'a self, _: &'a MemStorage) -> TestFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_harness_runs_generic_workflows_on_the_memory_model() {
    let report = CrashTest::memory()
        .run(&Ticks {
            branch_on_clock: false,
            wait: true,
        })
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.ran, report.schedules, "{report}");
    assert!(report.points >= 10, "{report}");
    let failure = CrashTest::memory()
        .run(&Ticks {
            branch_on_clock: true,
            wait: true,
        })
        .await
        .expect_err("the clock branch is caught on the memory model too");
    assert!(failure.message.contains("non-deterministic"), "{failure}");
    // A scenario that does not wait: the faults land after it returned,
    // while its workflows settle, and are handled the same.
    let report = CrashTest::memory()
        .run(&Ticks {
            branch_on_clock: false,
            wait: false,
        })
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.ran, report.schedules, "{report}");
    // Every point is reached, faults after `run` returned included, but
    // the "even" step: a branch on the (recorded) clock reading, taken in
    // some runs and not others.
    assert!(
        report
            .missed
            .iter()
            .all(|s| s.at.op == "step_record" && s.at.n == 6),
        "{report}: {:?}",
        report.missed
    );
    // Reproducing a schedule whose point the run never reaches is no pass.
    let failure = CrashTest::memory()
        .only("lose-ack@t9/step_record#1")
        .run(&Ticks {
            branch_on_clock: false,
            wait: true,
        })
        .await
        .expect_err("an unreached schedule fails");
    assert!(failure.message.contains("never reached"), "{failure}");
}
