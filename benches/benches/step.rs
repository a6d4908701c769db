//! Transactional step overhead: a Tandem transactional step updating one
//! account row, against the same UPDATE in a bare sqlx transaction, and
//! against a bare transaction doing the UPDATE plus the engine's checkpoint
//! INSERT (the protocol's floor). Run: `cargo bench -p benches --bench step`.
//!
//! All three run one client, sequentially, on the same row, in one process
//! against one server; the summary prints their ratios (target: a step costs
//! at most 1.15× the floor) and the commits and WAL flushes per step.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use benches::report::{self, Samples};
use benches::server::{Counters, Server, database_name};
use benches::workloads::{
    StepLoop, StepLoopInput, account_update, accounts_create, engine_close, engine_launch,
};
use criterion::{Criterion, SamplingMode, Throughput};
use sqlx::{PgConnection, PgPool};
use tandem::{Engine, PgStorage};

/// Criterion samples per benchmark; few, as every one costs real commits.
const SAMPLES: usize = 20;
/// The account every variant updates.
const ACCOUNT: i64 = 1;
/// The workflow the floor's checkpoints are fenced on.
const FLOOR_WORKFLOW: &str = "bench-floor";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// `ctx.transaction(..)` inside a workflow.
    Tandem,
    /// BEGIN; UPDATE; COMMIT.
    BareUpdate,
    /// BEGIN; UPDATE; checkpoint INSERT as the engine writes it; COMMIT.
    Floor,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Tandem, Variant::BareUpdate, Variant::Floor];

    fn name(self) -> &'static str {
        match self {
            Variant::Tandem => "tandem_step",
            Variant::BareUpdate => "bare_update",
            Variant::Floor => "bare_update_plus_checkpoint",
        }
    }
}

/// Runs `iters` steps of a variant and returns their wall time.
async fn run(
    variant: Variant,
    iters: u64,
    engine: &Engine<PgStorage>,
    pool: &PgPool,
    next_step_id: &mut i32,
) -> anyhow::Result<Duration> {
    match variant {
        Variant::Tandem => {
            let input = StepLoopInput {
                account: ACCOUNT,
                steps: iters,
            };
            let nanos = engine.start::<StepLoop>(input).await?.result().await?;
            Ok(Duration::from_nanos(nanos))
        }
        Variant::BareUpdate => {
            let start = Instant::now();
            for _ in 0..iters {
                let mut tx = pool.begin().await?;
                account_update(&mut tx, ACCOUNT).await?;
                tx.commit().await?;
            }
            Ok(start.elapsed())
        }
        Variant::Floor => {
            let start = Instant::now();
            for _ in 0..iters {
                let mut tx = pool.begin().await?;
                let started_ms = unix_ms();
                let balance = account_update(&mut tx, ACCOUNT).await?;
                *next_step_id += 1;
                checkpoint_insert(&mut tx, *next_step_id, &balance.to_string(), started_ms).await?;
                tx.commit().await?;
            }
            Ok(start.elapsed())
        }
    }
}

/// The engine's checkpoint statement, copied from `step_record` in
/// engine/src/storage/postgres.rs with the same binds, so the floor pays
/// exactly what the protocol requires (fence read, PK insert, jsonb). Keep
/// it in step with that file.
async fn checkpoint_insert(
    conn: &mut PgConnection,
    step_id: i32,
    output: &str,
    started_ms: i64,
) -> anyhow::Result<()> {
    let (_epoch, _status, inserted): (Option<i64>, Option<String>, bool) = sqlx::query_as(
        "WITH fence AS (
             SELECT owner_epoch, status FROM tandem.workflows WHERE id = $1
         ), ins AS (
             INSERT INTO tandem.steps
                 (workflow_id, step_id, name, kind, output, error, owner_epoch, attempts,
                  started_at, completed_at)
             SELECT $1, $2, $3, $4, $5::jsonb, $6, $7, $8,
                    to_timestamp($9::float8 / 1000), to_timestamp($10::float8 / 1000)
               FROM fence
              WHERE fence.owner_epoch = $7 AND fence.status = 'RUNNING'
             ON CONFLICT (workflow_id, step_id) DO NOTHING
             RETURNING 1
         )
         SELECT (SELECT owner_epoch FROM fence),
                (SELECT status FROM fence),
                EXISTS (SELECT 1 FROM ins)",
    )
    .bind(FLOOR_WORKFLOW)
    .bind(step_id)
    .bind("update")
    .bind("transaction")
    .bind(Some(output))
    .bind(None::<String>)
    .bind(1_i64)
    .bind(1_i32)
    .bind(started_ms)
    .bind(unix_ms())
    .fetch_one(conn)
    .await?;
    anyhow::ensure!(inserted, "floor checkpoint {step_id} was not inserted");
    Ok(())
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct Measured {
    variant: Variant,
    samples: Samples,
    counters: Counters,
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this binary without `--bench`: criterion
    // then only checks each benchmark once; skip the interleaved rounds too.
    let bench_mode = benches::bench_mode();
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    let url = rt.block_on(server.database())?;
    let database = database_name(&url)?;
    let engine = rt.block_on(engine_launch(&url, 4, "bench-step"))?;
    let pool = engine.storage().pool().clone();
    rt.block_on(async {
        accounts_create(&pool).await?;
        // The workflow row the floor's checkpoints are fenced on, as the
        // engine leaves it for a running workflow.
        sqlx::query(
            "INSERT INTO tandem.workflows
                 (id, name, status, input, executor_id, owner_epoch, created_at, updated_at)
             VALUES ($1, 'bench.floor', 'RUNNING', 'null', 'bench-floor', 1, now(), now())",
        )
        .bind(FLOOR_WORKFLOW)
        .execute(&pool)
        .await?;
        anyhow::Ok(())
    })
    .context("setting up the step benchmark")?;
    let mut counters = rt.block_on(server.counters())?;

    let mut criterion = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .configure_from_args();
    let mut group = criterion.benchmark_group("transactional_step");
    group.throughput(Throughput::Elements(1));
    group.sampling_mode(SamplingMode::Flat);
    let mut measured = Vec::new();
    let mut next_step_id = 0;
    for variant in Variant::ALL {
        let samples = Samples::default();
        let before = rt.block_on(counters.snapshot(&database, &pool))?;
        group.bench_function(variant.name(), |b| {
            b.iter_custom(|iters| {
                let elapsed = rt
                    .block_on(run(variant, iters, &engine, &pool, &mut next_step_id))
                    .expect("benchmark iteration");
                samples.record(iters, elapsed);
                elapsed
            })
        });
        let after = rt.block_on(counters.snapshot(&database, &pool))?;
        measured.push(Measured {
            variant,
            samples,
            counters: after - before,
        });
    }
    group.finish();
    criterion.final_summary();
    let interleaved = if bench_mode {
        rt.block_on(interleaved(&engine, &pool, &mut next_step_id))?
    } else {
        Vec::new()
    };
    rt.block_on(engine_close(engine));
    print_summary(&measured, &interleaved);
    Ok(())
}

/// Rounds of the interleaved comparison, and steps per variant per round.
const ROUNDS: usize = 12;
const ROUND_STEPS: u64 = 100;

/// Per variant, the mean time of a step over interleaved rounds. Criterion
/// measures one variant after the other, so a change in the machine's load
/// or the disk's latency between them skews their ratio; here every round
/// runs all three, in a rotating order, so such drift hits all alike.
async fn interleaved(
    engine: &Engine<PgStorage>,
    pool: &PgPool,
    next_step_id: &mut i32,
) -> anyhow::Result<Vec<(Variant, Duration)>> {
    let mut totals = [Duration::ZERO; 3];
    for round in 0..ROUNDS {
        for k in 0..3 {
            let index = (round + k) % 3;
            totals[index] +=
                run(Variant::ALL[index], ROUND_STEPS, engine, pool, next_step_id).await?;
        }
    }
    let steps = u32::try_from(ROUNDS as u64 * ROUND_STEPS)?;
    Ok(Variant::ALL
        .into_iter()
        .zip(totals.map(|t| t / steps))
        .collect())
}

fn print_summary(measured: &[Measured], interleaved: &[(Variant, Duration)]) {
    let rate = |variant| {
        measured
            .iter()
            .find(|m| m.variant == variant)
            .and_then(|m| m.samples.rate(SAMPLES))
    };
    let (tandem, bare, floor) = (
        rate(Variant::Tandem),
        rate(Variant::BareUpdate),
        rate(Variant::Floor),
    );
    let rows: Vec<Vec<String>> = measured
        .iter()
        .map(|m| {
            let steps = m.samples.iterations();
            let rate = m.samples.rate(SAMPLES);
            vec![
                m.variant.name().to_owned(),
                report::number(rate.map(|r| 1e6 / r)),
                report::number(rate),
                report::number(report::per(m.counters.commits, steps)),
                report::number(report::per(m.counters.wal_syncs, steps)),
                // Time ratio = inverse rate ratio.
                report::ratio(floor, rate),
                report::ratio(bare, rate),
            ]
        })
        .collect();
    println!("\n## Transactional step overhead (1 client, sequential, same account row)\n");
    print!(
        "{}",
        report::table(
            &[
                "variant",
                "µs/step",
                "steps/s",
                "commits/step",
                "WAL flushes/step",
                "× floor",
                "× bare UPDATE"
            ],
            &rows
        )
    );
    let time = |variant| {
        interleaved
            .iter()
            .find(|(v, _)| *v == variant)
            .map(|(_, t)| t.as_secs_f64() * 1e6)
    };
    let (tandem_us, bare_us, floor_us) = (
        time(Variant::Tandem),
        time(Variant::BareUpdate),
        time(Variant::Floor),
    );
    println!(
        "\nInterleaved ({ROUNDS} rounds × {ROUND_STEPS} steps per variant, rotating order):\n"
    );
    print!(
        "{}",
        report::table(
            &["variant", "µs/step", "× floor", "× bare UPDATE"],
            &interleaved
                .iter()
                .map(|(v, t)| {
                    let us = Some(t.as_secs_f64() * 1e6);
                    vec![
                        v.name().to_owned(),
                        report::number(us),
                        report::ratio(us, floor_us),
                        report::ratio(us, bare_us),
                    ]
                })
                .collect::<Vec<_>>()
        )
    );
    let verdict = |ratio: Option<f64>| match ratio {
        Some(r) if r <= 1.15 => "met",
        Some(_) => "NOT met",
        None => "not measured",
    };
    let criterion_ratio = tandem.zip(floor).map(|(t, f)| f / t);
    let interleaved_ratio = tandem_us.zip(floor_us).map(|(t, f)| t / f);
    println!(
        "\ntarget: tandem step ≤ 1.15× the UPDATE+checkpoint floor: criterion {} ({}), interleaved {} ({})",
        report::ratio(criterion_ratio, Some(1.0)),
        verdict(criterion_ratio),
        report::ratio(interleaved_ratio, Some(1.0)),
        verdict(interleaved_ratio),
    );
    println!(
        "commits/step includes the StepLoop workflow's own start and completion (2 per criterion call); load average now: {}",
        benches::server::load_average()
    );
}
