//! Many executors in separate processes sharing queued workflows: SIGKILL
//! and restart, lease expiry and fencing of a paused (SIGSTOPped) executor,
//! global concurrency limits, and graceful hand-back.

use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem::{Engine, PgStorage, Queue, Workflow, WorkflowContext, WorkflowError};
use tokio::process::{Child, Command};

use crate::support;

const URL_ENV: &str = "TANDEM_IT_EXECUTOR_URL";
const ID_ENV: &str = "TANDEM_IT_EXECUTOR_ID";
const JOBS_QUEUE: &str = "jobs";
const CONCURRENCY_GLOBAL: u32 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInput {
    pub n: i64,
    /// How long the middle (plain) step takes.
    pub work_ms: u64,
}

/// Two transactional steps around a plain one; each transactional step
/// writes one effect row.
pub struct Job;

impl Workflow<PgStorage> for Job {
    const NAME: &'static str = "job";
    type Input = JobInput;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        job: JobInput,
    ) -> Result<i64, WorkflowError> {
        let id = ctx.workflow_id().to_owned();
        ctx.transaction("first", {
            let id = id.clone();
            async move |tx: &mut PgConnection| effect(tx, &id, "first").await
        })
        .await?;
        ctx.step("work", || async {
            support::sleep(Duration::from_millis(job.work_ms)).await;
            Ok::<_, std::io::Error>(())
        })
        .await?;
        ctx.transaction("second", async move |tx: &mut PgConnection| {
            effect(tx, &id, "second").await
        })
        .await?;
        Ok(job.n)
    }
}

async fn effect(tx: &mut PgConnection, workflow_id: &str, step: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO job_effects (workflow_id, step) VALUES ($1, $2)")
        .bind(workflow_id)
        .bind(step)
        .execute(tx)
        .await
        .map(drop)
}

fn engine_builder(storage: PgStorage, executor_id: &str) -> tandem::EngineBuilder<PgStorage> {
    Engine::builder(storage)
        .executor_id(executor_id)
        .register(Job)
        .queue(
            Queue::new(JOBS_QUEUE)
                .worker_concurrency(4)
                .concurrency_global(CONCURRENCY_GLOBAL),
        )
        .lease(Duration::from_millis(1000))
        .queue_poll_interval(Duration::from_millis(100))
}

/// An executor process: serves the jobs queue until no workflow is left
/// unfinished, then shuts down gracefully.
#[tokio::test]
#[ignore = "an executor process of the multi-executor tests"]
async fn executor_process() {
    let url = std::env::var(URL_ENV).expect("run by the executor tests");
    let id = std::env::var(ID_ENV).expect("run by the executor tests");
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    let engine = engine_builder(storage, &id).launch().await.unwrap();
    loop {
        support::sleep(Duration::from_millis(200)).await;
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tandem.workflows WHERE status NOT IN ('SUCCESS', 'ERROR')",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(1);
        if left == 0 {
            break;
        }
    }
    engine.shutdown().await;
}

fn spawn_executor(url: &str, id: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "executors::executor_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_ENV, url)
        .env(ID_ENV, id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn an executor process")
}

/// Creates the schema and enqueues `n` jobs (registering the names first, as
/// an executor launch would, without serving the queue).
async fn setup(url: &str, n: i64, work_ms: u64) -> PgPool {
    let storage = PgStorage::connect(url).await.unwrap();
    let pool = storage.pool().clone();
    sqlx::raw_sql("CREATE TABLE job_effects (workflow_id text NOT NULL, step text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let engine = engine_builder(storage, "setup").launch().await.unwrap();
    engine.shutdown().await;
    sqlx::query(
        "SELECT tandem.enqueue_workflow('job', jsonb_build_object('n', g, 'work_ms', $2::bigint), 'jobs', 'job-' || g)
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(work_ms as i64)
    .execute(&pool)
    .await
    .unwrap();
    pool
}

async fn unfinished(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM tandem.workflows WHERE status NOT IN ('SUCCESS', 'ERROR')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Every job SUCCESS with its output, each transactional step applied once,
/// and the queue's global concurrency never exceeded: the final executions'
/// [started_at, completed_at) intervals never overlap more than the limit.
async fn assert_jobs_exact(pool: &PgPool, n: i64) {
    let (success, outputs_ok): (i64, bool) = sqlx::query_as(
        "SELECT count(*), bool_and(output = to_jsonb(substr(id, 5)::bigint))
           FROM tandem.workflows WHERE name = 'job' AND status = 'SUCCESS'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(success, n, "every job succeeded");
    assert!(outputs_ok, "every job has its own output");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (workflow_id, step)) FROM job_effects")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
        (2 * n, 2 * n),
        "each transactional step applied exactly once"
    );
    // started_at and completed_at come from the database clock at statement
    // time, so they order consistently with the claims' admission checks.
    let peak: i64 = sqlx::query_scalar(
        "WITH events AS (
             SELECT started_at AS at, 1 AS delta FROM tandem.workflows WHERE queue = 'jobs'
             UNION ALL
             SELECT completed_at, -1 FROM tandem.workflows WHERE queue = 'jobs'
         )
         SELECT max(running) FROM (
             SELECT sum(delta) OVER (ORDER BY at, delta) AS running FROM events
         ) t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        peak <= i64::from(CONCURRENCY_GLOBAL),
        "{peak} jobs ran at once, over the limit of {CONCURRENCY_GLOBAL}"
    );
    assert!(peak >= 2, "the executors did share the work (peak {peak})");
}

#[tokio::test]
async fn four_executors_share_queued_work_through_repeated_sigkills() {
    const JOBS: i64 = 2000;
    let url = support::database().await;
    let pool = setup(&url, JOBS, 2).await;
    let ids = ["e0", "e1", "e2", "e3"];
    let mut executors: Vec<Child> = ids.iter().map(|id| spawn_executor(&url, id)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut kills = 0;
    for round in 0..600 {
        if unfinished(&pool).await == 0 {
            break;
        }
        assert!(round < 599, "the jobs never finished");
        support::sleep(Duration::from_millis(rng.gen_range(150..500))).await;
        // Two of the four executors are killed and restarted again and again.
        let victim = kills % 2;
        executors[victim].start_kill().unwrap(); // SIGKILL
        executors[victim].wait().await.unwrap();
        kills += 1;
        executors[victim] = spawn_executor(&url, ids[victim]);
    }
    for executor in &mut executors {
        let status = support::timeout(Duration::from_secs(60), executor.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "executor exits cleanly: {status:?}"
        );
    }
    assert!(kills >= 6, "only {kills} kills landed while work remained");
    assert_jobs_exact(&pool, JOBS).await;
    let resumed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tandem.workflows WHERE owner_epoch > 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    println!("{kills} kills, {resumed} workflows taken over after a kill");
    assert!(resumed > 0, "kills interrupted running workflows");
}

#[tokio::test]
async fn a_paused_executor_past_its_lease_is_fenced_when_it_resumes() {
    let url = support::database().await;
    // One long job: its plain step takes 3 s, so the executor is paused in
    // the middle of it.
    let pool = setup(&url, 1, 3000).await;
    let mut zombie = spawn_executor(&url, "zombie");
    // Wait until the zombie has run the first step.
    for _ in 0..500 {
        let first: i64 = sqlx::query_scalar("SELECT count(*) FROM job_effects")
            .fetch_one(&pool)
            .await
            .unwrap();
        if first == 1 {
            break;
        }
        support::sleep(Duration::from_millis(10)).await;
    }
    let pid = zombie.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(status.success());

    // The lease (1 s) expires; a live executor re-enqueues the job with a
    // bumped epoch, claims it and finishes it.
    let mut live = spawn_executor(&url, "live");
    for _ in 0..1000 {
        if unfinished(&pool).await == 0 {
            break;
        }
        support::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(unfinished(&pool).await, 0);
    let (owner, epoch): (String, i64) =
        sqlx::query_as("SELECT executor_id, owner_epoch FROM tandem.workflows")
            .fetch_one(&pool)
            .await
            .unwrap();
    // Epoch 1 was the zombie's claim; the re-enqueue and the new claim each
    // bump it.
    assert_eq!((owner.as_str(), epoch), ("live", 3));

    // The zombie wakes up mid-step: its checkpoint and its second
    // transactional step are fenced; effects stay exactly-once.
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    let status = support::timeout(Duration::from_secs(30), zombie.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");
    live.wait().await.unwrap();
    assert_jobs_exact_single(&pool, epoch).await;
}

async fn assert_jobs_exact_single(pool: &PgPool, epoch: i64) {
    let effects: Vec<(String, i64)> =
        sqlx::query_as("SELECT step, count(*) FROM job_effects GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        effects,
        vec![("first".to_owned(), 1), ("second".to_owned(), 1)]
    );
    let steps: Vec<(i32, i64)> =
        sqlx::query_as("SELECT step_id, owner_epoch FROM tandem.steps ORDER BY step_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        steps,
        vec![(0, 1), (1, epoch), (2, epoch)],
        "only the live execution checkpointed after the takeover"
    );
}

#[tokio::test]
async fn graceful_shutdown_hands_work_back_at_once() {
    let url = support::database().await;
    let pool = setup(&url, 8, 400).await;
    let first = engine_builder(PgStorage::connect(&url).await.unwrap(), "first")
        .lease(Duration::from_secs(3600))
        .launch()
        .await
        .unwrap();
    // Wait until it runs some jobs, then stop it: with an hour-long lease,
    // only the hand-back lets another executor continue.
    for _ in 0..500 {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tandem.workflows WHERE status = 'RUNNING'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if running > 0 {
            break;
        }
        support::sleep(Duration::from_millis(10)).await;
    }
    first.shutdown().await;
    let (running, executors): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tandem.workflows WHERE status = 'RUNNING'),
                (SELECT count(*) FROM tandem.executors WHERE id = 'first')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (running, executors),
        (0, 0),
        "nothing left owned by the stopped executor"
    );

    let second = engine_builder(PgStorage::connect(&url).await.unwrap(), "second")
        .launch()
        .await
        .unwrap();
    for n in 1..=8 {
        assert_eq!(
            second
                .handle::<i64>(format!("job-{n}"))
                .result()
                .await
                .unwrap(),
            n
        );
    }
    second.shutdown().await;
    let effects: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (workflow_id, step)) - count(*) FROM job_effects",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(effects, 0, "no step applied twice");
}
