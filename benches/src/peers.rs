//! Peer engines running the same 3-step workflow on the same server:
//! underway 0.2 (Rust, crates.io) and DBOS Transact for Python (PyPI, run
//! through `benches/peers/dbos.sh`).
//!
//! Both are measured around a whole run with the server's counters; a peer's
//! connections are all closed before the counters are read, and exiting
//! backends flush their statistics at once.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx08 as sqlx8;
use underway::job::Context;
use underway::{Job, To};

use crate::server::{CounterReader, Counters};
use crate::workloads::{Shape, account_for};

/// One peer run: how many workflows, how long, what they cost.
#[derive(Debug, Clone, Copy)]
pub struct PeerRun {
    /// Workflows completed in the timed part.
    pub workflows: u64,
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// Counter deltas, and the workflows they cover (timed ones and any
    /// warm-up).
    pub counters: Counters,
    /// Workflows the counters cover.
    pub counted_workflows: u64,
}

impl PeerRun {
    /// Workflows per second in the timed part.
    pub fn rate(&self) -> f64 {
        self.workflows as f64 / self.elapsed.as_secs_f64()
    }
}

/// What a peer run does.
#[derive(Debug, Clone, Copy)]
pub struct RunParams {
    /// Which steps are transactional.
    pub shape: Shape,
    /// Workflows in flight (underway: task slots; DBOS: threads).
    pub concurrency: usize,
    /// Workflows in the timed part.
    pub workflows: u64,
    /// Workflows run before timing starts (DBOS only; underway's backlog
    /// needs none).
    pub warmup: u64,
}

/// underway's job input, the same for every step: the shape and accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chain {
    shape: Shape,
    accounts: [i64; 3],
}

/// Step `index` of the chain: the account UPDATE through the worker's
/// transaction when the step is transactional (underway's way of making a
/// step's writes atomic with its completion), then the commit that underway
/// turns into a savepoint release.
async fn chain_step(
    mut tx: sqlx8::Transaction<'static, sqlx8::Postgres>,
    chain: &Chain,
    index: usize,
) -> Result<(), sqlx8::Error> {
    if chain.shape.is_transactional(index) {
        sqlx8::query("UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING balance")
            .bind(chain.accounts[index])
            .fetch_one(&mut *tx)
            .await?;
    }
    tx.commit().await
}

async fn chain_job(pool: sqlx8::PgPool, queue: &str) -> anyhow::Result<Job<Chain, ()>> {
    let job = Job::builder()
        .step(|Context { tx, .. }, chain: Chain| async move {
            chain_step(tx, &chain, 0).await?;
            To::next(chain)
        })
        .step(|Context { tx, .. }, chain: Chain| async move {
            chain_step(tx, &chain, 1).await?;
            To::next(chain)
        })
        .step(|Context { tx, .. }, chain: Chain| async move {
            chain_step(tx, &chain, 2).await?;
            To::done()
        })
        .name(queue)
        .pool(pool)
        .build()
        .await?;
    Ok(job)
}

/// How often the underway run checks whether all jobs finished.
const UNDERWAY_POLL: Duration = Duration::from_millis(20);
/// Give up on an underway run after this long.
const UNDERWAY_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `workflows` 3-step underway jobs on one worker with
/// `concurrency` task slots, from a backlog enqueued beforehand (not timed:
/// this favours underway, whose figure then leaves out the start that
/// Tandem's includes). Timed from the worker's start until every step task
/// has succeeded.
pub async fn underway_run(
    url: &str,
    database: &str,
    counters: &mut CounterReader,
    params: RunParams,
    first_index: u64,
) -> anyhow::Result<PeerRun> {
    let RunParams {
        shape,
        concurrency,
        workflows,
        ..
    } = params;
    let queue = format!("bench_{}_{concurrency}_{first_index}", shape.name());
    // Pool: task slots plus the dequeue, heartbeat and listener connections
    // underway holds beside each execution; underway 0.2 stalls when the
    // pool is smaller than the slots it runs.
    let pool_size = u32::try_from(2 * concurrency + 10)?;
    let connect = || {
        sqlx8::postgres::PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(60))
            .connect(url)
    };

    // The backlog, from a `Job` value of its own: underway 0.2 starts new
    // jobs at the step the worker's `Job` value last ran (its
    // `first_job_input` reads a counter the worker advances).
    let pool = connect().await?;
    underway::run_migrations(&pool).await?;
    let producer = chain_job(pool.clone(), &queue).await?;
    let mut tx = pool.begin().await?;
    for n in first_index..first_index + workflows {
        let chain = Chain {
            shape,
            accounts: [0, 1, 2].map(|i| account_for(n * 3 + i)),
        };
        producer.enqueue_using(&mut *tx, &chain).await?;
    }
    tx.commit().await?;
    pool.close().await;
    let before = counters.settled(database).await?;

    let pool = connect().await?;
    let job = chain_job(pool.clone(), &queue).await?;
    let mut worker = job.worker();
    worker.set_concurrency_limit(concurrency);
    let stopper = worker.clone();
    let start = Instant::now();
    let running = tokio::spawn(async move { worker.run().await });
    let mut polls: i64 = 0;
    loop {
        tokio::time::sleep(UNDERWAY_POLL).await;
        polls += 1;
        let done: i64 = sqlx8::query_scalar(
            "SELECT count(*) FROM underway.task WHERE task_queue_name = $1 AND state = 'succeeded'",
        )
        .bind(&queue)
        .fetch_one(&pool)
        .await?;
        if u64::try_from(done)? >= 3 * workflows {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < UNDERWAY_TIMEOUT && !running.is_finished(),
            "underway run stalled at {done} of {} step tasks",
            3 * workflows
        );
    }
    let elapsed = start.elapsed();
    stopper.shutdown();
    running.await?.context("underway worker")?;
    pool.close().await;
    let mut delta = counters.settled(database).await? - before;
    // Our completion polls are not underway's cost.
    delta.commits -= polls;
    Ok(PeerRun {
        workflows,
        elapsed,
        counters: delta,
        counted_workflows: workflows,
    })
}

/// The DBOS peer script, if python3 is installed.
pub fn dbos_script() -> Option<PathBuf> {
    let python = Command::new("python3").arg("--version").output();
    python
        .is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/dbos.sh"))
}

/// What the DBOS script prints.
#[derive(Debug, Deserialize)]
struct DbosResult {
    dbos: String,
    workflows: u64,
    warmup: u64,
    seconds: f64,
}

/// Runs the DBOS script once and returns its run and the dbos version.
/// `workflows = 0` runs only DBOS's launch and shutdown (the baseline that
/// other runs' counters are corrected by).
pub async fn dbos_run(
    script: &std::path::Path,
    url: &str,
    database: &str,
    counters: &mut CounterReader,
    params: RunParams,
) -> anyhow::Result<(PeerRun, String)> {
    let before = counters.settled(database).await?;
    let args = [
        "--url".to_owned(),
        url.to_owned(),
        "--shape".into(),
        params.shape.name().into(),
        "--concurrency".into(),
        params.concurrency.to_string(),
        "--workflows".into(),
        params.workflows.to_string(),
        "--warmup".into(),
        params.warmup.to_string(),
    ];
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .args(&args)
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{} {} failed ({}): {stdout}\n{}",
        script.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no RESULT line from the DBOS script: {stdout}"))?;
    let result: DbosResult = serde_json::from_str(line)?;
    let after = counters.settled(database).await?;
    Ok((
        PeerRun {
            workflows: result.workflows,
            elapsed: Duration::from_secs_f64(result.seconds.max(1e-9)),
            counters: after - before,
            counted_workflows: result.workflows + result.warmup,
        },
        result.dbos,
    ))
}
