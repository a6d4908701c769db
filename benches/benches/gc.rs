//! Retention's cost to the work around it: claim latency (one claim of 16
//! from a backlog of 10^4 ready workflows, rolled back) and workflow
//! latency (one three-step mixed workflow, started and awaited, one in
//! flight) measured first with 10^6 finished workflows (two steps each) in
//! the tables and nothing deleting them, then again in the same run while
//! a collector deletes them in batches of 500 trees, one transaction after
//! another: paced as an executor's retention loop paces itself (after each
//! batch it waits as long as the batch took), then back to back as `tandem
//! gc` runs. Run:
//! `cargo bench -p benches --bench gc` (about 3 minutes after the build,
//! most of it filling the tables). Without `--bench` 10^4 finished
//! workflows are used and each measurement runs once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benches::server::Server;
use benches::workloads::{self, Shape, ThreeSteps, ThreeStepsInput};
use criterion::{Criterion, SamplingMode};
use tandem::storage::{QueueLimits, Storage, Transaction, WorkflowsGc};
use tandem::{Engine, PgStorage};

const OLD_QUEUE: &str = "bench.old";
const READY_QUEUE: &str = "bench.ready";
const READY_NAME: &str = "bench.ready";
const BATCH: u32 = 500;

/// `n` finished root workflows completed two days ago in a queue that
/// keeps them a day, each with two checkpoints; and 10^4 ready workflows.
async fn fill(pool: &sqlx::PgPool, n: i64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO tandem.queues (name, retention_ms) VALUES ($1, 86400000), ($2, NULL)")
        .bind(OLD_QUEUE)
        .bind(READY_QUEUE)
        .execute(pool)
        .await?;
    workloads::history_fill(pool, OLD_QUEUE, 0, n).await?;
    workloads::backlog_fill(pool, READY_QUEUE, READY_NAME, 10_000).await?;
    workloads::vacuum_analyze(pool).await
}

async fn claims(storage: &PgStorage, iters: u64) -> anyhow::Result<Duration> {
    let queue = QueueLimits {
        name: READY_QUEUE.to_owned(),
        concurrency_global: None,
        rate_limit: None,
        concurrency_per_key: None,
        retention_ms: None,
    };
    workloads::claims_rolled_back(storage, &queue, READY_NAME, 16, iters).await
}

async fn workflows(engine: &Engine<PgStorage>, first: u64, iters: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for n in first..first + iters {
        engine
            .start::<ThreeSteps>(ThreeStepsInput::nth(Shape::Mixed, n))
            .await?
            .result()
            .await?;
    }
    Ok(start.elapsed())
}

/// Deletes batches until `stop` or nothing is left; counts the workflows
/// deleted. `paced`: after each batch, waits as long as it took, as an
/// executor's retention loop does; otherwise back to back, as `tandem gc`.
async fn collect(storage: PgStorage, stop: Arc<AtomicBool>, deleted: Arc<AtomicU64>, paced: bool) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = storage
            .autocommit(|tx| {
                Box::pin(async move {
                    tx.workflows_gc(WorkflowsGc {
                        limit: BATCH,
                        older_than_ms: None,
                        dry_run: false,
                        now_ms: 0,
                    })
                    .await
                })
            })
            .await;
        match result {
            Ok(c) => {
                deleted.fetch_add(c.workflows, Ordering::Relaxed);
                if c.roots < u64::from(BATCH) {
                    return;
                }
                if paced {
                    #[allow(clippy::disallowed_methods)] // bench code, real time
                    tokio::time::sleep(started.elapsed()).await;
                }
            }
            Err(e) => {
                eprintln!("gc batch failed: {e}");
                return;
            }
        }
    }
}

/// Mean latency of each measurement, by label.
type Means = Vec<(String, Duration)>;

fn measure(
    rt: &tokio::runtime::Runtime,
    criterion: &mut Criterion,
    storage: &PgStorage,
    engine: &Engine<PgStorage>,
    label: &str,
    means: &mut Means,
) {
    let mut group = criterion.benchmark_group(format!("gc/{label}"));
    group.sampling_mode(SamplingMode::Flat);
    let mut total = (0u64, Duration::ZERO);
    group.bench_function("claim_16", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(claims(storage, iters)).expect("claims");
            total = (total.0 + iters, total.1 + elapsed);
            elapsed
        })
    });
    means.push((
        format!("claim of 16, {label}"),
        total.1 / total.0.max(1) as u32,
    ));
    let mut total = (0u64, Duration::ZERO);
    let mut next = 0u64;
    group.bench_function("mixed_workflow", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt
                .block_on(workflows(engine, next, iters))
                .expect("workflows");
            next += iters;
            total = (total.0 + iters, total.1 + elapsed);
            elapsed
        })
    });
    means.push((
        format!("mixed workflow, {label}"),
        total.1 / total.0.max(1) as u32,
    ));
    group.finish();
}

fn main() -> anyhow::Result<()> {
    let bench_mode = benches::bench_mode();
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    let storage = rt.block_on(server.migrated_storage())?;
    let pool = storage.pool().clone();
    rt.block_on(workloads::accounts_create(&pool))?;
    let finished: i64 = if bench_mode { 1_000_000 } else { 10_000 };
    let filling = Instant::now();
    rt.block_on(fill(&pool, finished))?;
    println!(
        "filled {finished} finished workflows (+{} steps) in {:.1} s",
        finished * 2,
        filling.elapsed().as_secs_f64()
    );
    // An engine without retention: the collector below is the only one.
    let engine = rt.block_on(
        Engine::builder(storage.clone())
            .register(ThreeSteps)
            .launch(),
    )?;
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut means = Means::new();
    measure(&rt, &mut criterion, &storage, &engine, "idle", &mut means);

    // Paced first (as executors collect), then back to back (as `tandem gc`
    // does), each measured while its collector still runs.
    let deleted = Arc::new(AtomicU64::new(0));
    let mut lines = Vec::new();
    for (paced, label) in [
        (true, "while deleting, paced"),
        (false, "while deleting, back to back"),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let before = deleted.load(Ordering::Relaxed);
        let collector = rt.spawn(collect(
            storage.clone(),
            stop.clone(),
            deleted.clone(),
            paced,
        ));
        let started = Instant::now();
        measure(&rt, &mut criterion, &storage, &engine, label, &mut means);
        let during = deleted.load(Ordering::Relaxed) - before;
        let secs = started.elapsed().as_secs_f64();
        lines.push(format!(
            "{label}: {during} finished workflows deleted while measuring, {:.0}/s with their steps (collector still running at the end: {})",
            during as f64 / secs,
            !collector.is_finished()
        ));
        stop.store(true, Ordering::Relaxed);
        rt.block_on(collector)?;
    }
    rt.block_on(engine.shutdown());
    criterion.final_summary();

    println!();
    for line in lines {
        println!("{line}");
    }
    println!("mean latency (every criterion iteration), ratio to idle:");
    let idle: Vec<Duration> = means.iter().take(2).map(|m| m.1).collect();
    for (i, (label, mean)) in means.iter().enumerate() {
        println!(
            "  {label:<48} {:>8.3} ms  ({:.2}x)",
            mean.as_secs_f64() * 1000.0,
            mean.as_secs_f64() / idle[i % 2].as_secs_f64()
        );
    }
    Ok(())
}
