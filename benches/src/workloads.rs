//! The workloads: the application table every benchmark updates, the
//! benchmark workflows, a closed-loop driver, and pgbench over the same
//! table.
//!
//! Every transactional step, bare transaction and pgbench transaction runs
//! the same single-row UPDATE on `accounts`, so the only difference between
//! them is what the engine (or nothing) adds around it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tandem::{Engine, PgStorage, Workflow, WorkflowContext, WorkflowError};

/// Rows in `accounts`: as many as pgbench's scale 1, so that concurrent
/// clients rarely touch the same row (no lock waits in any variant).
pub const ACCOUNTS: i64 = 100_000;

/// Creates and fills `accounts` in the database at `pool`.
pub async fn accounts_create(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100000) g;",
    )
    .execute(pool)
    .await?;
    // Separately: VACUUM cannot run inside the implicit transaction of a
    // multi-statement query.
    sqlx::raw_sql("VACUUM ANALYZE accounts")
        .execute(pool)
        .await?;
    Ok(())
}

/// The application write of every benchmark: one single-row UPDATE.
pub async fn account_update(conn: &mut PgConnection, id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING balance")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// A well-spread account for the `n`th update of a run (a multiplicative
/// hash, so consecutive updates land on unrelated rows).
pub fn account_for(n: u64) -> i64 {
    let spread = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    (spread % ACCOUNTS as u64) as i64 + 1
}

/// Which of a workflow's three steps are transactional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// Three transactional steps, each updating one account.
    Transactional,
    /// Three plain steps that compute a number (no application write).
    Plain,
    /// Transactional, plain, transactional: the shape of a transfer.
    Mixed,
}

impl Shape {
    /// Every shape, in report order.
    pub const ALL: [Shape; 3] = [Shape::Transactional, Shape::Plain, Shape::Mixed];

    /// The name used in benchmark IDs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Transactional => "transactional",
            Shape::Plain => "plain",
            Shape::Mixed => "mixed",
        }
    }

    /// Whether step `index` (0, 1 or 2) is transactional.
    pub fn is_transactional(self, index: usize) -> bool {
        match self {
            Shape::Transactional => true,
            Shape::Plain => false,
            Shape::Mixed => index != 1,
        }
    }
}

/// Input of [`ThreeSteps`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreeStepsInput {
    /// Which steps are transactional.
    pub shape: Shape,
    /// The account each step touches (or computes from, if plain).
    pub accounts: [i64; 3],
}

impl ThreeStepsInput {
    /// The input of the `n`th workflow of a run.
    pub fn nth(shape: Shape, n: u64) -> Self {
        ThreeStepsInput {
            shape,
            accounts: [0, 1, 2].map(|i| account_for(n * 3 + i)),
        }
    }
}

/// The benchmark workflow: three steps, each transactional (one account
/// UPDATE with its checkpoint in one transaction) or plain (a computation
/// whose output is checkpointed), as the [`Shape`] says.
#[derive(Debug)]
pub struct ThreeSteps;

impl Workflow<PgStorage> for ThreeSteps {
    const NAME: &'static str = "bench.three_steps";
    type Input = ThreeStepsInput;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        input: ThreeStepsInput,
    ) -> Result<i64, WorkflowError> {
        let mut total = 0;
        for (index, account) in input.accounts.into_iter().enumerate() {
            total += if input.shape.is_transactional(index) {
                ctx.transaction("update", async move |tx| account_update(tx, account).await)
                    .await?
            } else {
                ctx.step(
                    "compute",
                    || async move { Ok::<_, std::io::Error>(account + 1) },
                )
                .await?
            };
        }
        Ok(total)
    }
}

/// Input of [`StepLoop`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLoopInput {
    /// The account every step updates.
    pub account: i64,
    /// How many transactional steps to run.
    pub steps: u64,
}

/// Runs `steps` transactional steps back to back and returns how long they
/// took in nanoseconds: the per-step cost without the workflow's start and
/// completion around it.
#[derive(Debug)]
pub struct StepLoop;

impl Workflow<PgStorage> for StepLoop {
    const NAME: &'static str = "bench.step_loop";
    type Input = StepLoopInput;
    type Output = u64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        input: StepLoopInput,
    ) -> Result<u64, WorkflowError> {
        // Reading the clock inside a workflow breaks replay determinism; a
        // benchmark run never replays, and this isolates the steps' cost.
        let start = Instant::now();
        for _ in 0..input.steps {
            let account = input.account;
            ctx.transaction("update", async move |tx| account_update(tx, account).await)
                .await?;
        }
        Ok(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// An engine with the benchmark workflows registered, on its own pool of
/// `pool_size` connections (the default pool of 20 would cap 64 concurrent
/// workflows).
pub async fn engine_launch(
    url: &str,
    pool_size: u32,
    executor_id: &str,
) -> anyhow::Result<Engine<PgStorage>> {
    engine_launch_grouped(url, pool_size, executor_id, tandem::GROUP_COMMIT_DEFAULT).await
}

/// [`engine_launch`] with group commits of at most `group` writes (1: off).
pub async fn engine_launch_grouped(
    url: &str,
    pool_size: u32,
    executor_id: &str,
    group: usize,
) -> anyhow::Result<Engine<PgStorage>> {
    // As `PgStorage::connect` sets it up: no ping before each acquire (an
    // extra round trip per step otherwise).
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(false)
        .connect(url)
        .await?;
    let storage = PgStorage::from_pool(pool);
    // Through a transaction-mode pooler (`TANDEM_TEST_PGBOUNCER`): never
    // LISTEN through it (docs/deployment.md); the benchmarks start their
    // workflows in process, so no wake-up is waited for.
    let storage = if url.contains("pgbouncer=true") {
        storage.without_listen()
    } else {
        storage
    };
    let engine = Engine::builder(storage)
        .executor_id(executor_id)
        .group_commit(group)
        .register(ThreeSteps)
        .register(StepLoop)
        .launch()
        .await?;
    Ok(engine)
}

/// Stops an engine and closes its pool, so that its backends exit and
/// flush their statistics.
pub async fn engine_close(engine: Engine<PgStorage>) {
    engine.shutdown().await;
    engine.storage().pool().close().await;
}

/// Polls every `every` until `workflows` workflows whose ID starts with
/// `prefix` are `SUCCESS`, for at most `timeout` from `start`; returns how
/// many polls it took (each one a commit of the watcher's, not the engine's).
pub async fn wait_succeeded(
    watcher: &mut PgConnection,
    prefix: &str,
    workflows: u64,
    every: Duration,
    start: std::time::Instant,
    timeout: Duration,
) -> anyhow::Result<i64> {
    let mut polls = 0i64;
    loop {
        tokio::time::sleep(every).await;
        polls += 1;
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tandem.workflows
              WHERE starts_with(id, $1) AND status = 'SUCCESS'",
        )
        .bind(prefix)
        .fetch_one(&mut *watcher)
        .await?;
        if u64::try_from(done)? >= workflows {
            return Ok(polls);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "only {done} of {workflows} workflows {prefix}* finished within {timeout:?}"
        );
    }
}

/// Runs `total` jobs with `concurrency` of them in flight at any time (a
/// closed loop: each slot starts the next job when its last one finished)
/// and returns the wall time. `job` gets the job's index.
pub async fn closed_loop<F, Fut>(total: u64, concurrency: usize, job: F) -> anyhow::Result<Duration>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let slots = concurrency.min(usize::try_from(total).unwrap_or(usize::MAX));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..slots {
        let (job, next) = (Arc::clone(&job), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                job(n).await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(start.elapsed())
}

/// What pgbench reported for one run.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchRun {
    /// Clients (connections).
    pub clients: usize,
    /// Transactions per second, excluding connection time.
    pub tps: f64,
    /// Average latency per transaction, in milliseconds.
    pub latency_ms: f64,
    /// Transactions run.
    pub transactions: u64,
}

/// The pgbench script: the same single-row UPDATE as every step, one per
/// transaction (autocommit), on a uniformly random account.
const PGBENCH_SCRIPT: &str = "\\set aid random(1, 100000)\n\
                              UPDATE accounts SET balance = balance + 1 WHERE id = :aid;\n";

/// Finds pgbench on `PATH` or in Debian's `/usr/lib/postgresql/<version>/bin`.
pub fn pgbench_path() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin/pgbench"));
    on_path.chain(debian).find(|path| path.is_file())
}

/// The exact pgbench command line for a run (printed, and in the docs).
pub fn pgbench_args(script: &str, clients: usize, seconds: u32, url: &str) -> Vec<String> {
    let threads = clients.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    vec![
        "--no-vacuum".into(),
        "--protocol=prepared".into(),
        format!("--file={script}"),
        format!("--client={clients}"),
        format!("--jobs={threads}"),
        format!("--time={seconds}"),
        // libpq refuses parameters it does not know.
        url.replace("?pgbouncer=true", ""),
    ]
}

/// Runs pgbench's single-row UPDATE for `seconds` with `clients` clients
/// against the database at `url` (which must have `accounts`).
pub fn pgbench(
    pgbench: &std::path::Path,
    url: &str,
    clients: usize,
    seconds: u32,
) -> anyhow::Result<PgbenchRun> {
    let dir = std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("update.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let args = pgbench_args(&script.display().to_string(), clients, seconds, url);
    let output = std::process::Command::new(pgbench)
        .args(&args)
        .output()
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench {} failed: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| -> anyhow::Result<f64> {
        let line = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} in pgbench output: {stdout}"))?;
        let number = line
            .trim_start_matches([' ', '=', ':'])
            .split_whitespace()
            .next()
            .unwrap_or_default();
        number
            .parse::<f64>()
            .with_context(|| format!("parsing {prefix:?} from {line:?}"))
    };
    Ok(PgbenchRun {
        clients,
        tps: field("tps")?,
        latency_ms: field("latency average")?,
        transactions: field("number of transactions actually processed")? as u64,
    })
}

/// `iters` claims of `batch` workflows named `name` from `queue`, each in a
/// transaction that is rolled back (so the backlog stays), asserting each
/// took a full batch; their wall time.
pub async fn claims_rolled_back(
    storage: &PgStorage,
    queue: &tandem::storage::QueueLimits,
    name: &str,
    batch: u32,
    iters: u64,
) -> anyhow::Result<Duration> {
    use tandem::storage::{Storage as _, Transaction as _, Versions, WorkflowsClaim};
    let start = Instant::now();
    for _ in 0..iters {
        let mut tx = storage.begin().await?;
        let rows = tx
            .workflows_claim(WorkflowsClaim {
                queue: queue.clone(),
                executor_id: "bench-claimer".to_owned(),
                names: vec![name.to_owned()],
                limit: batch,
                // Far enough ahead that every backlog row is due.
                now_ms: 4_102_444_800_000,
                versions: Versions::default(),
            })
            .await?;
        anyhow::ensure!(rows.len() == batch as usize, "claimed {}", rows.len());
        tx.rollback().await?;
    }
    Ok(start.elapsed())
}

/// Appends finished root workflows `from..to` (IDs `old-<i>`, status
/// SUCCESS, completed two days ago, in `queue`), two checkpoints each: the
/// history a month of production leaves behind. In statements of 10^5
/// workflows, so that one statement's memory stays small. The queue's row
/// is the caller's.
pub async fn history_fill(pool: &PgPool, queue: &str, from: i64, to: i64) -> anyhow::Result<()> {
    // The fence trigger guards live writers; history is written as is.
    sqlx::raw_sql("ALTER TABLE tandem.steps DISABLE TRIGGER steps_fence")
        .execute(pool)
        .await?;
    let chunk = 100_000;
    let mut at = from;
    while at < to {
        let end = (at + chunk).min(to);
        sqlx::query(
            "INSERT INTO tandem.workflows
                 (id, name, status, input, output, queue, priority, owner_epoch,
                  created_at, updated_at, completed_at)
             SELECT 'old-' || i, 'bench.old', 'SUCCESS', '{\"n\": 1}', '2', $3, 0, 1,
                    now() - interval '3 days', now() - interval '2 days',
                    now() - interval '2 days' + i * interval '1 microsecond'
               FROM generate_series($1::bigint, $2::bigint - 1) i",
        )
        .bind(at)
        .bind(end)
        .bind(queue)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO tandem.steps
                 (workflow_id, step_id, name, kind, output, owner_epoch, attempts,
                  started_at, completed_at)
             SELECT 'old-' || i, s, 'step', 'step', '1', 1, 1, now(), now()
               FROM generate_series($1::bigint, $2::bigint - 1) i, generate_series(0, 1) s",
        )
        .bind(at)
        .bind(end)
        .execute(pool)
        .await?;
        at = end;
    }
    sqlx::raw_sql("ALTER TABLE tandem.steps ENABLE TRIGGER steps_fence")
        .execute(pool)
        .await?;
    Ok(())
}

/// `n` ready workflows named `name` in `queue` (IDs `ready-<i>`), in
/// claim order: a backlog no executor runs unless it registers `name`.
pub async fn backlog_fill(pool: &PgPool, queue: &str, name: &str, n: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO tandem.workflows
             (id, name, status, input, queue, priority, owner_epoch, created_at, updated_at)
         SELECT 'ready-' || i, $1, 'ENQUEUED', 'null', $2, 0, 0,
                now() + i * interval '1 microsecond', now()
           FROM generate_series(0, $3::bigint - 1) i",
    )
    .bind(name)
    .bind(queue)
    .bind(n)
    .execute(pool)
    .await?;
    Ok(())
}

/// `VACUUM ANALYZE` of the tables a history fill writes, as autovacuum
/// would have left them.
pub async fn vacuum_analyze(pool: &PgPool) -> anyhow::Result<()> {
    // One statement each: VACUUM cannot run in a multi-statement query's
    // implicit transaction.
    for table in [
        "VACUUM ANALYZE tandem.workflows",
        "VACUUM ANALYZE tandem.steps",
    ] {
        sqlx::raw_sql(table).execute(pool).await?;
    }
    Ok(())
}
