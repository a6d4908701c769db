//! Many executors on one database: a backlog of 3-step workflows (the mixed
//! shape: transactional, plain, transactional) drained by 1, 2 and 4
//! executor *processes*, each its own engine with its own pool, claiming
//! from the same queue. Reports workflows per second, commits per workflow,
//! CPU per workflow and how the workflows spread over the processes. Run: `cargo bench -p benches --bench scaling`
//! (`docs/scaling.md`).
//!
//! The bench binary is also the executor: started with
//! `TANDEM_SCALING_WORKER=<url>` it launches an engine, prints `ready`, and
//! runs until its parent closes its standard input.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benches::report;
use benches::server::{Counters, CpuTicks, Server, TICKS_PER_SECOND, database_name};
use benches::workloads::{
    Shape, ThreeStepsInput, accounts_create, engine_close, engine_launch, wait_succeeded,
};
use sqlx::{Connection, PgConnection};

/// Executor processes per run.
const PROCESSES: [usize; 3] = [1, 2, 4];
/// Connections per executor process: enough for its claim loop, its
/// heartbeat and the workflows it runs at once.
const POOL: u32 = 40;
/// How long a drain may take before the run is reported as failed.
const TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    if let Ok(url) = std::env::var("TANDEM_SCALING_WORKER") {
        return worker(&url);
    }
    let bench_mode = benches::bench_mode();
    // A smoke run drains a small backlog with one and two processes.
    let (workflows, processes): (u64, &[usize]) = if bench_mode {
        (6_000, &PROCESSES)
    } else {
        (200, &PROCESSES[..2])
    };
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    let mut results = Vec::new();
    for (run, &n) in processes.iter().enumerate() {
        let drained = rt.block_on(drain(&server, n, workflows, run))?;
        println!(
            "{n} executor process(es): {workflows} workflows in {:.2} s",
            drained.wall.as_secs_f64()
        );
        results.push(drained);
    }
    print_results(&results);
    Ok(())
}

/// One drain's figures.
struct Drained {
    processes: usize,
    workflows: u64,
    wall: Duration,
    counters: Counters,
    cpu: CpuTicks,
    /// Workflows each process completed.
    shares: Vec<i64>,
}

/// Starts `processes` executors on a fresh database, enqueues `workflows`
/// in one transaction once every executor is ready, and times until all
/// have finished.
async fn drain(
    server: &Server,
    processes: usize,
    workflows: u64,
    run: usize,
) -> anyhow::Result<Drained> {
    let url = server.database().await?;
    let database = database_name(&url)?;
    {
        let pool = sqlx::PgPool::connect(&url).await?;
        accounts_create(&pool).await?;
        pool.close().await;
    }
    // Migrates the schema and registers the workflow name, so the enqueue
    // below knows it; then stops (it must not claim).
    engine_close(engine_launch(&url, 2, &format!("setup-{run}")).await?).await;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..processes {
        let mut child = Command::new(std::env::current_exe()?)
            .env("TANDEM_SCALING_WORKER", &url)
            .env("TANDEM_SCALING_EXECUTOR", format!("scaling-{run}-{i}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "executor {i} said {line:?}");
        children.push(child);
    }
    let mut counters = server.counters().await?;
    let before = counters.settled(&database).await?;
    let postmaster = server.postmaster_pid().await?;
    let cpu_before = CpuTicks::of_cluster_and_children(postmaster);
    let mut client = PgConnection::connect(&url).await?;
    let inputs: Vec<String> = (0..workflows)
        .map(|n| serde_json::to_string(&ThreeStepsInput::nth(Shape::Mixed, n)))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    sqlx::query(
        "SELECT count(tandem.enqueue_workflow('bench.three_steps', input::jsonb,
                                              workflow_id => 'scaling-' || n))
           FROM unnest($1::text[]) WITH ORDINALITY AS i(input, n)",
    )
    .bind(&inputs)
    .execute(&mut client)
    .await?;
    let every = Duration::from_millis(20);
    let polls = wait_succeeded(&mut client, "scaling-", workflows, every, start, TIMEOUT).await?;
    let wall = start.elapsed();
    let shares: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM tandem.workflows WHERE id LIKE 'scaling-%'
          GROUP BY executor_id ORDER BY 1 DESC",
    )
    .fetch_all(&mut client)
    .await
    .unwrap_or_default();
    client.close().await?;
    // Read while the executors and their backends live: the CPU of a
    // process that exited is not counted.
    let cpu = CpuTicks::of_cluster_and_children(postmaster) - cpu_before;
    for mut child in children {
        drop(child.stdin.take());
        child.wait()?;
    }
    let mut delta = counters.settled(&database).await? - before;
    // The bench's own enqueue and polls are not the executors' commits.
    delta.commits -= polls + 2;
    Ok(Drained {
        processes,
        workflows,
        wall,
        counters: delta,
        cpu,
        shares,
    })
}

/// An executor process: an engine on `url` until standard input closes.
fn worker(url: &str) -> anyhow::Result<()> {
    let executor = std::env::var("TANDEM_SCALING_EXECUTOR")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let engine = engine_launch(url, POOL, &executor).await?;
        println!("ready");
        std::io::stdout().flush()?;
        // Blocks this thread only; the engine runs on the runtime's others.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await?;
        engine_close(engine).await;
        anyhow::Ok(())
    })
}

fn print_results(results: &[Drained]) {
    println!("\n## Executor processes on one database: a backlog of mixed 3-step workflows\n");
    let one = results
        .first()
        .map(|r| r.workflows as f64 / r.wall.as_secs_f64());
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let rate = r.workflows as f64 / r.wall.as_secs_f64();
            let workflows = r.workflows;
            let cpu_ms = |ticks: u64| {
                report::per(i64::try_from(ticks).unwrap_or(i64::MAX), workflows)
                    .map(|t| t * 1000.0 / TICKS_PER_SECOND)
            };
            vec![
                r.processes.to_string(),
                report::number(Some(rate)),
                one.map_or("n/a".into(), |o| format!("{:.2}×", rate / o)),
                report::number(report::per(r.counters.commits, workflows)),
                report::number(cpu_ms(r.cpu.postgres)),
                report::number(cpu_ms(r.cpu.bench)),
                format!("{:?}", r.shares),
            ]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "processes",
                "workflows/s",
                "÷ one process",
                "commits/wf",
                "postgres CPU ms/wf",
                "executors' CPU ms/wf",
                "workflows per process",
            ],
            &rows
        )
    );
}
