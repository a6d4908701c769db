//! Schedules per second of `tandem::testing::CrashTest` on a 5-step
//! workflow (three transactional steps, two plain ones) on PostgreSQL: each
//! schedule clones the template database, launches an engine, runs the
//! workflow under one fault, recovers, replays and checks. Measured with
//! every fault kind, and without zombie schedules (which wait for a lease).
//! Run: `cargo bench -p benches --bench crash_test`.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sqlx::PgConnection;
use tandem::testing::{CrashScenario, CrashTest, FaultKind, TestFuture};
use tandem::{Engine, EngineBuilder, PgStorage, Workflow, WorkflowContext, WorkflowError};

use benches::server::Server;
use benches::workloads::{account_for, account_update};

/// Transactional, plain, transactional, plain, transactional.
struct FiveSteps;

impl Workflow<PgStorage> for FiveSteps {
    const NAME: &'static str = "bench.five_steps";
    type Input = u64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: u64,
    ) -> Result<i64, WorkflowError> {
        let mut sum = 0;
        for i in 0..5u64 {
            let account = account_for(n * 5 + i);
            sum += if i % 2 == 0 {
                ctx.transaction("update", async move |tx: &mut PgConnection| {
                    account_update(tx, account).await
                })
                .await?
            } else {
                ctx.step("call", || async move { Ok::<_, std::io::Error>(account) })
                    .await?
            };
        }
        Ok(sum)
    }
}

struct Scenario;

impl CrashScenario<PgStorage> for Scenario {
    fn setup<'a>(&'a self, storage: &'a PgStorage) -> TestFuture<'a> {
        Box::pin(async move {
            sqlx::raw_sql(
                "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
                 INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100000) g;",
            )
            .execute(storage.pool())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn engine(&self, storage: PgStorage) -> EngineBuilder<PgStorage> {
        Engine::builder(storage).register(FiveSteps)
    }

    fn run<'a>(&'a self, engine: &'a Engine<PgStorage>) -> TestFuture<'a> {
        Box::pin(async move {
            let handle = engine
                .start_with_id::<FiveSteps>("five", 1)
                .await
                .map_err(|e| e.to_string())?;
            handle.result().await.map(drop).map_err(|e| e.to_string())
        })
    }

    fn check<'a>(&'a self, storage: &'a PgStorage) -> TestFuture<'a> {
        Box::pin(async move {
            // Each of the three transactional updates applied once, or (the
            // start crashed) none.
            let total: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
                .fetch_one(storage.pool())
                .await
                .map_err(|e| e.to_string())?;
            match total {
                0 | 3 => Ok(()),
                n => Err(format!("{n} updates applied, not 3")),
            }
        })
    }
}

const NO_ZOMBIES: &[FaultKind] = &[
    FaultKind::CrashBeforeCommit,
    FaultKind::CrashAfterCommit,
    FaultKind::LoseAck,
    FaultKind::ConnectionLoss,
    FaultKind::SerializationFailure,
];

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = runtime
        .block_on(Server::start())
        .expect("a PostgreSQL server");
    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .configure_from_args();
    let mut summary = Vec::new();
    let mut group = criterion.benchmark_group("crash_test");
    for (name, faults) in [("all_faults", None), ("no_zombies", Some(NO_ZOMBIES))] {
        // One run outside the measurement: how many schedules a run is.
        let probe = runtime
            .block_on(crash_test(&server, faults))
            .unwrap_or_else(|f| panic!("{f}"));
        group.throughput(Throughput::Elements(probe.ran as u64));
        let mut rates = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let report = runtime
                        .block_on(crash_test(&server, faults))
                        .unwrap_or_else(|f| panic!("{f}"));
                    let took = start.elapsed();
                    rates.push(report.ran as f64 / took.as_secs_f64());
                    elapsed += took;
                }
                elapsed
            })
        });
        rates.sort_by(f64::total_cmp);
        summary.push(format!(
            "| {name} | {} | {} | {:.1} |",
            probe.points,
            probe.ran,
            rates[rates.len() / 2]
        ));
    }
    group.finish();
    println!("\n| faults | durable points | schedules | schedules/s (median run) |");
    println!("|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
    criterion.final_summary();
}

async fn crash_test(
    server: &Server,
    faults: Option<&[FaultKind]>,
) -> Result<tandem::testing::Report, Box<tandem::testing::Failure>> {
    let mut test = CrashTest::postgres(server.cluster()).expect("a crash test");
    if let Some(faults) = faults {
        test = test.faults(faults);
    }
    test.run(&Scenario).await
}
