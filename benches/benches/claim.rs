//! The claim statement against the queue's backlog: one claim of up to 16
//! workflows from a queue holding 10^3, 10^4 or 10^5 ready workflows, for
//! an unlimited queue, a queue with a global limit (the queue's row lock
//! and the running count first), and a queue with a per-key limit of one
//! over 1,000 keys (which ranks every ready workflow of the queue per key
//! before it locks any). Each claim runs in a transaction that is rolled
//! back, so the backlog stays as it was (see [`claims`] on vacuuming). Run:
//! `cargo bench -p benches --bench claim` (about 2 minutes after the build).
//! Without `--bench` (as `cargo test --benches` runs it) only the smallest
//! backlog runs, once per variant.

use std::time::Duration;

use benches::server::Server;
use criterion::{BenchmarkId, Criterion, SamplingMode};
use tandem::PgStorage;
use tandem::storage::QueueLimits;

const QUEUE: &str = "bench.claim";
const NAME: &str = "bench.claimed";
/// Distinct concurrency keys in the backlog.
const KEYS: i64 = 1000;
/// The claim's batch: a worker's free slots.
const BATCH: u32 = 16;

#[derive(Debug, Clone, Copy)]
enum Variant {
    Unlimited,
    Global,
    PerKey,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Unlimited, Variant::Global, Variant::PerKey];

    fn name(self) -> &'static str {
        match self {
            Variant::Unlimited => "unlimited",
            Variant::Global => "concurrency_global",
            Variant::PerKey => "concurrency_per_key",
        }
    }

    fn limits(self) -> QueueLimits {
        QueueLimits {
            name: QUEUE.to_owned(),
            concurrency_global: matches!(self, Variant::Global).then_some(1_000_000),
            rate_limit: None,
            concurrency_per_key: matches!(self, Variant::PerKey).then_some(1),
            retention_ms: None,
        }
    }
}

/// Adds ready workflows to the backlog until it holds `n`.
async fn fill(pool: &sqlx::PgPool, from: i64, n: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO tandem.workflows
             (id, name, status, input, queue, priority, owner_epoch, created_at, updated_at,
              concurrency_key)
         SELECT 'w-' || i, $3, 'ENQUEUED', 'null', $4, 0, 0,
                now() + i * interval '1 microsecond', now(), 'key-' || (i % $5)
           FROM generate_series($1::bigint, $2::bigint - 1) i",
    )
    .bind(from)
    .bind(n)
    .bind(NAME)
    .bind(QUEUE)
    .bind(KEYS)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE tandem.workflows")
        .execute(pool)
        .await?;
    Ok(())
}

/// `iters` claims, each rolled back; their wall time. A rolled-back claim
/// leaves dead `RUNNING` versions in the partial indexes that the limited
/// claims count, which production's autovacuum clears: each sample starts
/// from a vacuumed table (untimed), so the figures are the claim's, not
/// the benchmark's own bloat.
async fn claims(storage: &PgStorage, variant: Variant, iters: u64) -> anyhow::Result<Duration> {
    sqlx::query("VACUUM tandem.workflows")
        .execute(storage.pool())
        .await?;
    benches::workloads::claims_rolled_back(storage, &variant.limits(), NAME, BATCH, iters).await
}

fn main() -> anyhow::Result<()> {
    let bench_mode = benches::bench_mode();
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    let storage = rt.block_on(server.migrated_storage())?;
    let pool = storage.pool().clone();
    rt.block_on(
        sqlx::query("INSERT INTO tandem.queues (name) VALUES ($1)")
            .bind(QUEUE)
            .execute(&pool),
    )?;
    let backlogs: &[i64] = if bench_mode {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000]
    };
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("claim");
    group.sampling_mode(SamplingMode::Flat);
    let mut filled = 0;
    let mut means: Vec<(Variant, i64, Duration)> = Vec::new();
    for &backlog in backlogs {
        rt.block_on(fill(&pool, filled, backlog))?;
        filled = backlog;
        for variant in Variant::ALL {
            let mut total = (0u64, Duration::ZERO);
            group.bench_function(BenchmarkId::new(variant.name(), backlog), |b| {
                b.iter_custom(|iters| {
                    let elapsed = rt
                        .block_on(claims(&storage, variant, iters))
                        .expect("claims");
                    total = (total.0 + iters, total.1 + elapsed);
                    elapsed
                })
            });
            means.push((variant, backlog, total.1 / total.0.max(1) as u32));
        }
    }
    group.finish();
    criterion.final_summary();
    println!(
        "\nclaim of {BATCH} (mean over every criterion iteration), ratio to the unlimited claim:"
    );
    for &(variant, backlog, mean) in &means {
        let base = means
            .iter()
            .find(|(v, b, _)| matches!(v, Variant::Unlimited) && *b == backlog)
            .map_or(mean, |m| m.2);
        println!(
            "  {:<22} backlog {:>7}: {:>9.3} ms  ({:.1}x)",
            variant.name(),
            backlog,
            mean.as_secs_f64() * 1000.0,
            mean.as_secs_f64() / base.as_secs_f64()
        );
    }
    Ok(())
}
