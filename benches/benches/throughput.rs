//! Workflow throughput: 3-step workflows (all transactional, all plain,
//! mixed) completed per second at 1, 16 and 64 concurrent workflows, with
//! commits and WAL flushes per workflow; pgbench's single-row UPDATE at the
//! same client counts; and the peers (underway, durare, DBOS Transact for Python)
//! running the same workflow on the same server. Run:
//! `cargo bench -p benches --bench throughput`.
//!
//! Criterion times Tandem; pgbench and the peers run once each after it, and
//! the summary at the end puts everything side by side with the ratios the
//! targets are stated in. `TANDEM_BENCH_PEERS=0` skips pgbench and the
//! peers, `TANDEM_BENCH_PEERS=pgbench` the peers only. Under
//! `TANDEM_TEST_PGBOUNCER` every connection, pgbench's too, goes through
//! PgBouncer in transaction mode (docs/deployment.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use benches::durare_peer;
use benches::peers::{self, PeerRun, RunParams};
use benches::report::{self, Samples};
use benches::server::{Counters, CpuTicks, Server, TICKS_PER_SECOND, database_name, load_average};
use benches::workloads::{
    PgbenchRun, Shape, ThreeSteps, ThreeStepsInput, accounts_create, closed_loop, engine_close,
    engine_launch_grouped, pgbench, pgbench_args, pgbench_path,
};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

/// Concurrent workflows (and pgbench clients).
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Criterion samples per benchmark.
const SAMPLES: usize = 10;
/// How long each pgbench run lasts, in seconds.
const PGBENCH_SECONDS: u32 = 8;

/// Workflows per underway run: enough for a few seconds at its speed.
fn underway_workflows(concurrency: usize) -> u64 {
    if concurrency == 1 { 150 } else { 400 }
}

/// A fresh database with `accounts`, for one peer: its URL and name.
async fn peer_database(server: &Server) -> anyhow::Result<(String, String)> {
    let url = server.database().await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    accounts_create(&pool).await?;
    pool.close().await;
    let database = database_name(&url)?;
    Ok((url, database))
}

/// Runs a peer for every shape and concurrency, `workflows(concurrency)`
/// timed workflows each, the `n`th run's workflows numbered from `first`
/// (after the runs before it and their warm-ups); a failed run is
/// reported and left out.
fn each_cell(
    name: &str,
    workflows: fn(usize) -> u64,
    mut run: impl FnMut(RunParams, u64) -> anyhow::Result<PeerRun>,
) -> Vec<Peer> {
    let mut peers = Vec::new();
    let mut first = 0;
    for shape in Shape::ALL {
        for concurrency in CONCURRENCY {
            let workflows = workflows(concurrency);
            println!(
                "running {name}: {} × {workflows} at concurrency {concurrency}",
                shape.name()
            );
            let params = RunParams {
                shape,
                concurrency,
                workflows,
                warmup: 0,
            };
            match run(params, first) {
                Ok(run) => peers.push(Peer {
                    shape,
                    concurrency,
                    run,
                }),
                Err(e) => println!("{name} run failed: {e:#}"),
            }
            first += workflows + concurrency as u64;
        }
    }
    peers
}

/// Workflows per durare run (plus one warm-up workflow per task).
fn durare_workflows(concurrency: usize) -> u64 {
    if concurrency == 1 { 200 } else { 600 }
}

/// Workflows per DBOS run (plus one warm-up workflow per thread).
fn dbos_workflows(concurrency: usize) -> u64 {
    if concurrency == 1 { 60 } else { 200 }
}

/// The group-commit sizes Tandem runs with: the default, and off (each
/// checkpoint and completion its own commit), for the ratio between them.
const GROUPS: [usize; 2] = [tandem::GROUP_COMMIT_DEFAULT, 1];

/// Tandem's figures for one shape, concurrency and group-commit size.
struct Ours {
    shape: Shape,
    concurrency: usize,
    group: usize,
    samples: Samples,
    counters: Counters,
    cpu: CpuTicks,
}

/// A peer's figures for one shape and concurrency.
struct Peer {
    shape: Shape,
    concurrency: usize,
    run: PeerRun,
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this binary without `--bench`: criterion
    // then only checks each benchmark once, and the slow extras are skipped.
    let bench_mode = benches::bench_mode();
    let wanted = std::env::var("TANDEM_BENCH_PEERS").unwrap_or_default();
    let extras = bench_mode && wanted != "0";
    let peers_too = extras && wanted != "pgbench";
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    let url = rt.block_on(server.database())?;
    let database = database_name(&url)?;
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await?;
        accounts_create(&pool).await?;
        pool.close().await;
        anyhow::Ok(())
    })?;
    let mut counters = rt.block_on(server.counters())?;

    let mut criterion = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut bench = criterion.benchmark_group("workflow_throughput");
    bench.throughput(Throughput::Elements(1));
    bench.sampling_mode(SamplingMode::Flat);
    let next_input = Arc::new(AtomicU64::new(0));
    let mut ours = Vec::new();
    for shape in Shape::ALL {
        for concurrency in CONCURRENCY {
            for group in GROUPS {
                // A pool a little larger than the number of workflows in flight
                // (each holds at most one connection at a time).
                let pool_size = u32::try_from(concurrency + 4)?;
                let executor = format!("bench-{}-{concurrency}-{group}", shape.name());
                let engine =
                    rt.block_on(engine_launch_grouped(&url, pool_size, &executor, group))?;
                let id = if group == 1 {
                    format!("{}-alone", shape.name())
                } else {
                    shape.name().to_owned()
                };
                let pool = engine.storage().pool().clone();
                let samples = Samples::default();
                let before = rt.block_on(counters.snapshot(&database, &pool))?;
                let cpu_before = CpuTicks::now();
                bench.bench_function(BenchmarkId::new(id, concurrency), |b| {
                    b.iter_custom(|iters| {
                        let first = next_input.fetch_add(iters, Ordering::Relaxed);
                        let engine = engine.clone();
                        let elapsed = rt
                            .block_on(closed_loop(iters, concurrency, move |n| {
                                let engine = engine.clone();
                                async move {
                                    let input = ThreeStepsInput::nth(shape, first + n);
                                    engine.start::<ThreeSteps>(input).await?.result().await?;
                                    Ok(())
                                }
                            }))
                            .expect("benchmark iteration");
                        samples.record(iters, elapsed);
                        elapsed
                    })
                });
                let cpu = CpuTicks::now() - cpu_before;
                let after = rt.block_on(counters.snapshot(&database, &pool))?;
                rt.block_on(engine_close(engine));
                ours.push(Ours {
                    shape,
                    concurrency,
                    group,
                    samples,
                    counters: after - before,
                    cpu,
                });
            }
        }
    }
    bench.finish();
    criterion.final_summary();
    print_grouping(&ours);
    if !extras {
        print_ours(&ours, &[]);
        return Ok(());
    }

    // pgbench: the same UPDATE, one per transaction, on the same table.
    let mut pgbench_runs = Vec::new();
    match pgbench_path() {
        None => println!("pgbench not found: skipping the pgbench comparison"),
        Some(path) => {
            for clients in CONCURRENCY {
                let args = pgbench_args("update.sql", clients, PGBENCH_SECONDS, "<url>");
                println!("running pgbench {}", args.join(" "));
                let before = rt.block_on(counters.settled(&database))?;
                let run = pgbench(&path, &url, clients, PGBENCH_SECONDS)?;
                let after = rt.block_on(counters.settled(&database))?;
                pgbench_runs.push((run, after - before));
            }
        }
    }

    if !peers_too {
        print_ours(&ours, &pgbench_runs);
        print_pgbench(&pgbench_runs);
        return Ok(());
    }

    // underway, from its backlog, and durare, each on a database of its
    // own, like DBOS below: their tables (durare's live in `dbos`) and
    // triggers then stay out of Tandem's and pgbench's way.
    let (url, database) = rt.block_on(peer_database(&server))?;
    let underway_runs = each_cell("underway", underway_workflows, |params, first| {
        rt.block_on(peers::underway_run(
            &url,
            &database,
            &mut counters,
            params,
            first,
        ))
    });
    let (url, database) = rt.block_on(peer_database(&server))?;
    let durare_runs = each_cell("durare", durare_workflows, |params, first| {
        rt.block_on(durare_peer::durare_run(
            &url,
            &database,
            &mut counters,
            params,
            first,
        ))
    });

    let dbos_runs = match peers::dbos_script() {
        None => {
            println!("python3 not found: skipping DBOS Transact for Python");
            (Vec::new(), None)
        }
        Some(script) => match rt.block_on(dbos(&server, &script, &mut counters)) {
            Ok(runs) => runs,
            Err(e) => {
                println!("DBOS Transact for Python could not run: {e:#}");
                (Vec::new(), None)
            }
        },
    };

    print_ours(&ours, &pgbench_runs);
    print_pgbench(&pgbench_runs);
    print_peers(
        &ours,
        &underway_runs,
        &durare_runs,
        &dbos_runs.0,
        dbos_runs.1.as_deref(),
    );
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

/// Runs the DBOS script for every shape and concurrency, on a database of
/// its own. Returns the runs, with counters net of DBOS's launch and
/// shutdown, and the dbos version.
async fn dbos(
    server: &Server,
    script: &std::path::Path,
    counters: &mut benches::server::CounterReader,
) -> anyhow::Result<(Vec<Peer>, Option<String>)> {
    let url = server.database().await?;
    let database = database_name(&url)?;
    let pool = sqlx::PgPool::connect(&url).await?;
    accounts_create(&pool).await?;
    pool.close().await;
    println!("running DBOS Transact for Python (first use creates its virtualenv; needs PyPI)");
    // The first launch creates DBOS's schema; the second is the baseline:
    // what one process start and shutdown costs without workflows.
    let launch_only = RunParams {
        shape: Shape::Plain,
        concurrency: 1,
        workflows: 0,
        warmup: 0,
    };
    peers::dbos_run(script, &url, &database, counters, launch_only).await?;
    let (baseline, version) =
        peers::dbos_run(script, &url, &database, counters, launch_only).await?;
    let mut runs = Vec::new();
    for shape in Shape::ALL {
        for concurrency in CONCURRENCY {
            let workflows = dbos_workflows(concurrency);
            println!(
                "running DBOS: {} × {workflows} at concurrency {concurrency}",
                shape.name()
            );
            match peers::dbos_run(
                script,
                &url,
                &database,
                counters,
                RunParams {
                    shape,
                    concurrency,
                    workflows,
                    warmup: concurrency as u64,
                },
            )
            .await
            {
                Ok((mut run, _)) => {
                    run.counters = run.counters - baseline.counters;
                    runs.push(Peer {
                        shape,
                        concurrency,
                        run,
                    });
                }
                Err(e) => println!("DBOS run failed: {e:#}"),
            }
        }
    }
    Ok((runs, Some(version)))
}

fn our_rate(ours: &[Ours], shape: Shape, concurrency: usize) -> Option<f64> {
    ours.iter()
        .find(|o| o.shape == shape && o.concurrency == concurrency && o.group != 1)
        .and_then(|o| o.samples.rate(SAMPLES))
}

fn print_ours(ours: &[Ours], pgbench_runs: &[(PgbenchRun, Counters)]) {
    println!("\n## Workflow throughput: 3-step workflows, closed loop\n");
    let rows: Vec<Vec<String>> = ours
        .iter()
        .filter(|o| o.group != 1)
        .map(|o| {
            let workflows = o.samples.iterations();
            let rate = o.samples.rate(SAMPLES);
            let commits = report::per(o.counters.commits, workflows);
            let commit_rate = rate.zip(commits).map(|(r, c)| r * c);
            let pgbench_tps = pgbench_runs
                .iter()
                .find(|(run, _)| run.clients == o.concurrency)
                .map(|(run, _)| run.tps);
            let share = commit_rate.zip(pgbench_tps).map(|(c, p)| 100.0 * c / p);
            let cpu_ms = |ticks: u64| {
                report::per(i64::try_from(ticks).unwrap_or(i64::MAX), workflows)
                    .map(|t| t * 1000.0 / TICKS_PER_SECOND)
            };
            vec![
                o.shape.name().to_owned(),
                o.concurrency.to_string(),
                report::number(rate),
                report::number(commits),
                report::number(report::per(o.counters.wal_syncs, workflows)),
                report::number(commit_rate),
                report::number(pgbench_tps),
                share.map_or("n/a".into(), |s| format!("{s:.0}%")),
                report::number(cpu_ms(o.cpu.postgres)),
                report::number(cpu_ms(o.cpu.bench)),
            ]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "shape",
                "concurrent",
                "workflows/s",
                "commits/wf",
                "WAL flushes/wf",
                "commits/s",
                "pgbench tps",
                "commits/s ÷ pgbench",
                "postgres CPU ms/wf",
                "bench process CPU ms/wf",
            ],
            &rows
        )
    );
    println!(
        "\ntargets: commits/wf ≤ k + 2 = 5; commits/s ≥ 70% of pgbench tps at the same client count (concurrent runs)."
    );
}

/// Grouped against alone, cell by cell: the group commit's gain under
/// load and its cost at one in flight.
fn print_grouping(ours: &[Ours]) {
    println!("\n## Group commit: default size against each write alone\n");
    let rows: Vec<Vec<String>> = ours
        .iter()
        .filter(|o| o.group != 1)
        .filter_map(|g| {
            let alone = ours
                .iter()
                .find(|a| a.group == 1 && a.shape == g.shape && a.concurrency == g.concurrency)?;
            let rate = |o: &Ours| o.samples.rate(SAMPLES);
            let commits = |o: &Ours| report::per(o.counters.commits, o.samples.iterations());
            // A workflow makes 5 writes: its start, 3 checkpoints and its
            // completion (all may share commits in the plain shape; a
            // transactional step's checkpoint never does).
            let per_write = |o: &Ours| commits(o).map(|c| c / 5.0);
            let ratio = rate(g).zip(rate(alone)).map(|(a, b)| a / b);
            Some(vec![
                g.shape.name().to_owned(),
                g.concurrency.to_string(),
                report::number(rate(g)),
                report::number(rate(alone)),
                ratio.map_or("n/a".into(), |r| format!("{r:.2}×")),
                report::number(commits(g)),
                report::number(commits(alone)),
                report::number(per_write(g)),
            ])
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "shape",
                "concurrent",
                "wf/s grouped",
                "wf/s alone",
                "grouped ÷ alone",
                "commits/wf grouped",
                "commits/wf alone",
                "commits per write, grouped",
            ],
            &rows
        )
    );
}

fn print_pgbench(runs: &[(PgbenchRun, Counters)]) {
    if runs.is_empty() {
        return;
    }
    println!("\n## pgbench: single-row UPDATE per transaction, same table and server\n");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(run, counters)| {
            vec![
                run.clients.to_string(),
                report::number(Some(run.tps)),
                report::number(Some(run.latency_ms)),
                report::number(report::per(counters.commits, run.transactions)),
                report::number(report::per(counters.wal_syncs, run.transactions)),
            ]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "clients",
                "tps",
                "latency ms",
                "commits/txn",
                "WAL flushes/txn"
            ],
            &rows
        )
    );
}

fn print_peers(
    ours: &[Ours],
    underway: &[Peer],
    durare: &[Peer],
    dbos: &[Peer],
    dbos_version: Option<&str>,
) {
    println!(
        "\n## Peers: the same 3-step workflow on the same server (underway 0.2.0, durare 0.5, DBOS Transact for Python {})\n",
        dbos_version.unwrap_or("not run")
    );
    let find = |peers: &[Peer], shape, concurrency| {
        peers
            .iter()
            .find(|p| p.shape == shape && p.concurrency == concurrency)
            .map(|p| p.run)
    };
    let mut rows = Vec::new();
    for shape in Shape::ALL {
        for concurrency in CONCURRENCY {
            let tandem = our_rate(ours, shape, concurrency);
            let u = find(underway, shape, concurrency);
            let r = find(durare, shape, concurrency);
            let d = find(dbos, shape, concurrency);
            let per_wf = |run: Option<PeerRun>| {
                report::number(
                    run.and_then(|r| report::per(r.counters.commits, r.counted_workflows)),
                )
            };
            let flushes = |run: Option<PeerRun>| {
                report::number(
                    run.and_then(|r| report::per(r.counters.wal_syncs, r.counted_workflows)),
                )
            };
            rows.push(vec![
                shape.name().to_owned(),
                concurrency.to_string(),
                report::number(tandem),
                report::number(u.map(|r| r.rate())),
                report::ratio(tandem, u.map(|r| r.rate())),
                per_wf(u),
                flushes(u),
                report::number(r.map(|r| r.rate())),
                report::ratio(tandem, r.map(|r| r.rate())),
                per_wf(r),
                flushes(r),
                report::number(d.map(|r| r.rate())),
                report::ratio(tandem, d.map(|r| r.rate())),
                per_wf(d),
                flushes(d),
            ]);
        }
    }
    print!(
        "{}",
        report::table(
            &[
                "shape",
                "concurrent",
                "tandem wf/s",
                "underway wf/s",
                "tandem ÷ underway",
                "underway commits/wf",
                "underway WAL flushes/wf",
                "durare wf/s",
                "tandem ÷ durare",
                "durare commits/wf",
                "durare WAL flushes/wf",
                "DBOS wf/s",
                "tandem ÷ DBOS",
                "DBOS commits/wf",
                "DBOS WAL flushes/wf",
            ],
            &rows
        )
    );
    println!(
        "\ntargets: tandem ≥ 5× underway and ≥ 10× DBOS Transact for Python on 3-step throughput."
    );
}
