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
use sqlx::PgPool;
use tandem::storage::{StepKind, StepRecord, StepRecorded, Storage, Transaction};
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
            let storage = engine.storage();
            let start = Instant::now();
            for _ in 0..iters {
                let mut tx = storage.begin().await?;
                let started_ms = unix_ms();
                let balance = account_update(tx.conn(), ACCOUNT).await?;
                *next_step_id += 1;
                checkpoint_insert(&mut tx, *next_step_id, &balance.to_string(), started_ms).await?;
                tx.commit().await?;
            }
            Ok(start.elapsed())
        }
    }
}

/// The engine's own checkpoint ([`Transaction::step_record`], the statement
/// a transactional step runs), so the floor pays exactly what the protocol
/// requires (fence read, PK insert, jsonb) and cannot drift from it.
async fn checkpoint_insert(
    tx: &mut <PgStorage as Storage>::Tx,
    step_id: i32,
    output: &str,
    started_ms: i64,
) -> anyhow::Result<()> {
    let recorded = tx
        .step_record(StepRecord {
            version: None,
            workflow_id: FLOOR_WORKFLOW.to_owned(),
            step_id,
            name: "update".to_owned(),
            kind: StepKind::Transaction,
            output: Some(output.to_owned()),
            error: None,
            owner_epoch: 1,
            attempts: 1,
            started_ms,
            now_ms: unix_ms(),
        })
        .await?;
    anyhow::ensure!(
        recorded == StepRecorded::Recorded,
        "floor checkpoint {step_id} was not inserted"
    );
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
        // engine leaves it for a running workflow, owned by an executor
        // whose lease outlives the run: an unowned RUNNING row would be
        // re-enqueued by the engine's reclaim (with a bumped epoch) half a
        // lease after launch, and every later floor checkpoint fenced off.
        sqlx::raw_sql(
            "INSERT INTO tandem.executors (id, started_at, heartbeat_at, lease_expires_at)
             VALUES ('bench-floor', now(), now(), now() + interval '1 day');
             INSERT INTO tandem.workflows
                 (id, name, status, input, executor_id, owner_epoch, created_at, updated_at)
             VALUES ('bench-floor', 'bench.floor', 'RUNNING', 'null', 'bench-floor', 1,
                     now(), now())",
        )
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
    // What the checkpoint's fence re-check (the trigger
    // `tandem.steps_fence`, migration 0012) costs: the floor with it and
    // without it, in alternating rounds.
    let rounds = if bench_mode { ROUNDS } else { 1 };
    let (with, without) = rt.block_on(fence_trigger_cost(
        &engine,
        &pool,
        &mut next_step_id,
        rounds,
    ))?;
    println!(
        "\nfloor with the fence re-check trigger: {:.1} µs/step, without: {:.1} µs/step ({:.3}x)",
        with.as_secs_f64() * 1e6,
        without.as_secs_f64() * 1e6,
        with.as_secs_f64() / without.as_secs_f64()
    );
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

/// The floor's mean step with the fence trigger enabled and disabled, in
/// alternating rounds (the trigger is left enabled).
async fn fence_trigger_cost(
    engine: &Engine<PgStorage>,
    pool: &PgPool,
    next_step_id: &mut i32,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut totals = [Duration::ZERO; 2];
    for round in 0..rounds {
        for k in 0..2 {
            let enabled = (round + k) % 2 == 0;
            let sql = if enabled {
                "ALTER TABLE tandem.steps ENABLE TRIGGER steps_fence"
            } else {
                "ALTER TABLE tandem.steps DISABLE TRIGGER steps_fence"
            };
            sqlx::raw_sql(sql).execute(pool).await?;
            totals[usize::from(!enabled)] +=
                run(Variant::Floor, ROUND_STEPS, engine, pool, next_step_id).await?;
        }
    }
    sqlx::raw_sql("ALTER TABLE tandem.steps ENABLE TRIGGER steps_fence")
        .execute(pool)
        .await?;
    let steps = u32::try_from(rounds as u64 * ROUND_STEPS)?;
    Ok((totals[0] / steps, totals[1] / steps))
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
