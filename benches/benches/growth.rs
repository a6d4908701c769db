//! How Tandem's costs grow with what accumulates. The tables hold 10^4,
//! then 10^6, then 10^7 finished workflows (two checkpoints each, as a
//! month of production leaves them) and a backlog of 10^5 ready ones; at
//! each size, one in flight: an empty workflow started and awaited (its
//! start and completion commits), a claim of 16 from the backlog (rolled
//! back), a transactional step (timed inside the workflow) and a
//! three-step mixed workflow; then mixed workflows with 16 in flight.
//! Latencies are criterion means; the summary gives each as a ratio to the
//! smallest size and writes the plot `docs/growth.svg` reproduces. Last,
//! the executor's memory with 10^4 workflows waiting in `ctx.recv` (held
//! by the executor) and 10^4 suspended in a long `ctx.sleep` (handed back
//! to their queue), and the database transactions per second that each
//! waiting `recv` costs at the default `queue_poll_interval`. Run: `cargo bench -p benches --bench growth` (about 8
//! minutes after the build, most of it filling 10^7 workflows; about 6 GB
//! of disk). `TANDEM_BENCH_GROWTH_MAX=1000000` stops at 10^6;
//! `TANDEM_BENCH_GROWTH_MEMORY=0` skips the memory part. Without
//! `--bench`: 10^3 and 10^4 finished, a backlog of 10^3, 200 parked.

use std::time::{Duration, Instant};

use benches::report;
use benches::server::Server;
use benches::workloads::{self, Shape, StepLoop, StepLoopInput, ThreeSteps, ThreeStepsInput};
use criterion::{Criterion, SamplingMode};
use serde::{Deserialize, Serialize};
use tandem::storage::QueueLimits;
use tandem::{Engine, PgStorage, Workflow, WorkflowContext, WorkflowError};

const HISTORY_QUEUE: &str = "bench.history";
const READY_QUEUE: &str = "bench.ready";
const READY_NAME: &str = "bench.ready";
/// Workflows in flight for the throughput figure.
const IN_FLIGHT: usize = 16;

/// No steps: what a start and a completion cost.
struct Empty;

impl Workflow<PgStorage> for Empty {
    const NAME: &'static str = "bench.empty";
    type Input = u64;
    type Output = u64;

    async fn run(&self, _: &mut WorkflowContext<PgStorage>, n: u64) -> Result<u64, WorkflowError> {
        Ok(n)
    }
}

/// One checkpoint, then a wait for a message that does not come: the
/// executor holds the run (a task and its context) while it waits.
struct Parked;

#[derive(Serialize, Deserialize)]
struct Go;

impl Workflow<PgStorage> for Parked {
    const NAME: &'static str = "bench.parked";
    type Input = u64;
    type Output = bool;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: u64,
    ) -> Result<bool, WorkflowError> {
        ctx.step("ready", || async move { Ok::<_, std::io::Error>(n) })
            .await?;
        Ok(ctx
            .recv::<Go>("go", Duration::from_secs(86_400))
            .await?
            .is_some())
    }
}

/// Sleeps a day: past the engine's `sleep_suspend_after`, the run is
/// handed back to its queue until then and the executor holds nothing.
struct Sleeper;

impl Workflow<PgStorage> for Sleeper {
    const NAME: &'static str = "bench.sleeper";
    type Input = u64;
    type Output = u64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        n: u64,
    ) -> Result<u64, WorkflowError> {
        ctx.sleep(Duration::from_secs(86_400)).await?;
        Ok(n)
    }
}

/// Criterion means at one size, in seconds, by measurement.
#[derive(Debug, Default, Clone)]
struct Point {
    finished: i64,
    megabytes: f64,
    empty: f64,
    claim: f64,
    step: f64,
    mixed: f64,
    /// Mixed workflows per second, `IN_FLIGHT` in flight.
    throughput: f64,
}

/// The mean of every `iter_custom` call of one benchmark, warm-up
/// included: (iterations, time).
#[derive(Default)]
struct Mean(u64, Duration);

impl Mean {
    fn add(&mut self, iters: u64, elapsed: Duration) -> Duration {
        self.0 += iters;
        self.1 += elapsed;
        elapsed
    }

    fn seconds(&self) -> f64 {
        self.1.as_secs_f64() / self.0.max(1) as f64
    }
}

fn measure(
    rt: &tokio::runtime::Runtime,
    criterion: &mut Criterion,
    engine: &Engine<PgStorage>,
    point: &mut Point,
    next: &mut u64,
) {
    let storage = engine.storage().clone();
    let mut group = criterion.benchmark_group(format!("growth/{}", point.finished));
    group.sampling_mode(SamplingMode::Flat);
    let (mut empty, mut claim, mut step, mut mixed) = Default::default();
    group.bench_function("empty_workflow", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt
                .block_on(async {
                    let start = Instant::now();
                    for n in 0..iters {
                        engine.start::<Empty>(n).await?.result().await?;
                    }
                    anyhow::Ok(start.elapsed())
                })
                .expect("empty workflows");
            Mean::add(&mut empty, iters, elapsed)
        })
    });
    let ready = QueueLimits {
        name: READY_QUEUE.to_owned(),
        concurrency_global: None,
        rate_limit: None,
        concurrency_per_key: None,
        retention_ms: None,
    };
    group.bench_function("claim_16", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt
                .block_on(workloads::claims_rolled_back(
                    &storage, &ready, READY_NAME, 16, iters,
                ))
                .expect("claims");
            Mean::add(&mut claim, iters, elapsed)
        })
    });
    group.bench_function("transactional_step", |b| {
        b.iter_custom(|iters| {
            let input = StepLoopInput {
                account: 1,
                steps: iters,
            };
            let nanos = rt
                .block_on(async { engine.start::<StepLoop>(input).await?.result().await })
                .expect("steps");
            Mean::add(&mut step, iters, Duration::from_nanos(nanos))
        })
    });
    group.bench_function("mixed_workflow", |b| {
        b.iter_custom(|iters| {
            let first = *next;
            *next += iters;
            let elapsed = rt
                .block_on(async {
                    let start = Instant::now();
                    for n in first..first + iters {
                        engine
                            .start::<ThreeSteps>(ThreeStepsInput::nth(Shape::Mixed, n))
                            .await?
                            .result()
                            .await?;
                    }
                    anyhow::Ok(start.elapsed())
                })
                .expect("mixed workflows");
            Mean::add(&mut mixed, iters, elapsed)
        })
    });
    group.finish();
    (point.empty, point.claim, point.step, point.mixed) = (
        empty.seconds(),
        claim.seconds(),
        step.seconds(),
        mixed.seconds(),
    );
}

/// Mixed workflows per second with `IN_FLIGHT` in flight.
async fn throughput(engine: &Engine<PgStorage>, first: u64, total: u64) -> anyhow::Result<f64> {
    let engine = engine.clone();
    let elapsed = workloads::closed_loop(total, IN_FLIGHT, move |n| {
        let engine = engine.clone();
        async move {
            engine
                .start::<ThreeSteps>(ThreeStepsInput::nth(Shape::Mixed, first + n))
                .await?
                .result()
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// The process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `sql` (a count) until it reaches `n`.
async fn wait_count(pool: &sqlx::PgPool, sql: &'static str, n: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        if count >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {count} of {n}: {sql}");
        #[allow(clippy::disallowed_methods)] // bench code, real time
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The database's transactions (commits and rollbacks) so far, as its
/// backends have reported them.
async fn transactions(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
          WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// What waiting costs: RSS growth per workflow, in KiB, of `n` runs
/// suspended in a long sleep, then of `n` runs waiting for a message; and
/// the database transactions per second per waiting run, with the
/// default `queue_poll_interval` (a waiting `recv` looks for its message
/// that often), measured on `n / 10` of them.
async fn memory(storage: &PgStorage, n: u64) -> anyhow::Result<(f64, f64, f64)> {
    let pool = storage.pool().clone();
    // The polls of 10^4 waiting runs at the default interval (10^4
    // transactions a second) would starve the starts measured here.
    let engine = Engine::builder(storage.clone())
        .executor_id("bench-memory")
        .register(Parked)
        .register(Sleeper)
        .sleep_suspend_after(Duration::from_millis(100))
        .queue_poll_interval(Duration::from_secs(600))
        .launch()
        .await?;
    let before = rss_kib();
    for i in 0..n {
        engine
            .start_with_id::<Sleeper>(&format!("sleeper-{i}"), i)
            .await?;
    }
    wait_count(
        &pool,
        "SELECT count(*) FROM tandem.workflows WHERE name = 'bench.sleeper' AND status = 'ENQUEUED'",
        n as i64,
    )
    .await?;
    let suspended = rss_kib();
    for i in 0..n {
        engine
            .start_with_id::<Parked>(&format!("parked-{i}"), i)
            .await?;
    }
    // Each waits once its checkpoint is in; a second more for the wait's
    // own bookkeeping commit.
    wait_count(
        &pool,
        "SELECT count(*) FROM tandem.steps WHERE workflow_id LIKE 'parked-%' AND name = 'ready'",
        n as i64,
    )
    .await?;
    #[allow(clippy::disallowed_methods)] // bench code, real time
    tokio::time::sleep(Duration::from_secs(1)).await;
    let parked = rss_kib();
    engine.shutdown().await;

    let polled = (n / 10).max(1);
    let engine = Engine::builder(storage.clone())
        .executor_id("bench-polling")
        .register(Parked)
        .launch()
        .await?;
    for i in 0..polled {
        engine
            .start_with_id::<Parked>(&format!("polled-{i}"), i)
            .await?;
    }
    wait_count(
        &pool,
        "SELECT count(*) FROM tandem.steps WHERE workflow_id LIKE 'polled-%' AND name = 'ready'",
        polled as i64,
    )
    .await?;
    // Past the backends' once-a-second statistics reports.
    #[allow(clippy::disallowed_methods)] // bench code, real time
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, started) = (transactions(&pool).await?, Instant::now());
    #[allow(clippy::disallowed_methods)] // bench code, real time
    tokio::time::sleep(Duration::from_secs(10)).await;
    let per_second = (transactions(&pool).await? - t0) as f64 / started.elapsed().as_secs_f64();
    engine.shutdown().await;
    Ok((
        suspended.saturating_sub(before) as f64 / n as f64,
        parked.saturating_sub(suspended) as f64 / n as f64,
        per_second / polled as f64,
    ))
}

fn main() -> anyhow::Result<()> {
    let bench_mode = benches::bench_mode();
    let max: i64 = std::env::var("TANDEM_BENCH_GROWTH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MAX);
    let sizes: Vec<i64> = if bench_mode {
        vec![10_000, 1_000_000, 10_000_000]
    } else {
        vec![1_000, 10_000]
    };
    let sizes: Vec<i64> = sizes.into_iter().filter(|s| *s <= max).collect();
    let (backlog, parked, per_throughput) = if bench_mode {
        (100_000, 10_000, 2_000)
    } else {
        (1_000, 200, 50)
    };

    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    let storage = rt.block_on(server.migrated_storage())?;
    let pool = storage.pool().clone();
    rt.block_on(async {
        workloads::accounts_create(&pool).await?;
        sqlx::query("INSERT INTO tandem.queues (name) VALUES ($1), ($2)")
            .bind(HISTORY_QUEUE)
            .bind(READY_QUEUE)
            .execute(&pool)
            .await?;
        workloads::backlog_fill(&pool, READY_QUEUE, READY_NAME, backlog).await
    })?;
    let engine = rt.block_on(
        Engine::builder(storage.clone())
            .register(Empty)
            .register(ThreeSteps)
            .register(StepLoop)
            .launch(),
    )?;
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let mut points = Vec::new();
    let (mut filled, mut next) = (0i64, 0u64);
    for &size in &sizes {
        let filling = Instant::now();
        rt.block_on(async {
            workloads::history_fill(&pool, HISTORY_QUEUE, filled, size).await?;
            workloads::vacuum_analyze(&pool).await?;
            // The fill leaves gigabytes of dirty pages at 10^7; written back
            // while measuring, they made every commit's flush wait behind
            // them (2-10x latencies in a first run). Written out first, the
            // measurements see the tables, not the fill.
            sqlx::raw_sql("CHECKPOINT").execute(&pool).await?;
            anyhow::Ok(())
        })?;
        println!(
            "history now {size} finished workflows (+{} steps): filled and vacuumed in {:.1} s",
            size * 2,
            filling.elapsed().as_secs_f64()
        );
        filled = size;
        let bytes: i64 = rt.block_on(
            sqlx::query_scalar(
                "SELECT (pg_total_relation_size('tandem.workflows')
                         + pg_total_relation_size('tandem.steps'))::bigint",
            )
            .fetch_one(&pool),
        )?;
        let mut point = Point {
            finished: size,
            megabytes: bytes as f64 / 1e6,
            ..Point::default()
        };
        measure(&rt, &mut criterion, &engine, &mut point, &mut next);
        point.throughput = rt.block_on(throughput(&engine, next, per_throughput))?;
        next += per_throughput;
        points.push(point);
    }
    rt.block_on(engine.shutdown());
    let measure_memory = std::env::var("TANDEM_BENCH_GROWTH_MEMORY").map_or(true, |v| v != "0");
    let (suspended, waiting, polls) = if measure_memory {
        rt.block_on(memory(&storage, parked))?
    } else {
        (f64::NAN, f64::NAN, f64::NAN)
    };
    criterion.final_summary();

    println!();
    println!(
        "backlog of {backlog} ready workflows; latencies are criterion means (warm-up included), one in flight"
    );
    let base = points[0].clone();
    let ms = |s: f64, b: f64| format!("{:.3} ms ({:.2}x)", s * 1000.0, s / b);
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                format!("{:.0e}", p.finished as f64),
                format!("{:.0}", p.megabytes),
                ms(p.empty, base.empty),
                ms(p.claim, base.claim),
                ms(p.step, base.step),
                ms(p.mixed, base.mixed),
                format!(
                    "{:.0} ({:.2}x)",
                    p.throughput,
                    p.throughput / base.throughput
                ),
            ]
        })
        .collect();
    println!(
        "{}",
        report::table(
            &[
                "finished workflows",
                "workflows + steps MB",
                "empty workflow",
                "claim of 16",
                "transactional step",
                "mixed workflow",
                "mixed wf/s, 16 in flight",
            ],
            &rows,
        )
    );
    println!(
        "executor memory: {suspended:.2} KiB per workflow suspended in a sleep, {waiting:.2} KiB per workflow waiting in recv ({parked} each)"
    );
    println!(
        "database transactions per second per workflow waiting in recv (default queue_poll_interval, {} waiting): {polls:.2}",
        (parked / 10).max(1)
    );
    let xs: Vec<f64> = points.iter().map(|p| p.finished as f64).collect();
    let series =
        |f: fn(&Point) -> f64| -> Vec<f64> { points.iter().map(|p| f(p) / f(&base)).collect() };
    let svg = report::svg_plot(
        "Cost against history (ratio to the smallest table)",
        "finished workflows in the tables",
        &xs,
        &[
            ("empty workflow", series(|p| p.empty)),
            ("claim of 16", series(|p| p.claim)),
            ("transactional step", series(|p| p.step)),
            ("mixed workflow", series(|p| p.mixed)),
            ("mixed wf/s, 16 in flight", series(|p| p.throughput)),
        ],
    );
    let path = std::env::temp_dir().join("tandem-growth.svg");
    std::fs::write(&path, svg)?;
    println!("plot: {}", path.display());
    Ok(())
}
