//! The executor's statements stay index-only as history grows: over a
//! database holding 10^5 finished workflows (with their steps), a backlog
//! of ready ones, and workflows running on a live executor, each statement
//! an executor runs in its loops (claims of every queue kind, reclaim,
//! recovery, heartbeat, a step's checkpoint and replay, completion,
//! retention) scans no table of the schema sequentially. The counts come
//! from `pg_stat_xact_user_tables`, which reports the current
//! transaction's own scans, so the check reads what the server did, not
//! what a plan was predicted to do. `benches/benches/growth.rs` measures
//! the latencies this keeps flat.

use sqlx::PgPool;
use tandem::storage::{
    QueueLimits, Status, StepKind, StepRecord, Transaction, Versions, WorkflowComplete,
    WorkflowsClaim, WorkflowsGc, WorkflowsRecover,
};
use tandem::{PgStorage, Storage};

use crate::support;

const FINISHED: i64 = 100_000;
const BACKLOG: i64 = 20_000;
const RUNNING: i64 = 1_000;
const NAME: &str = "work";
const LIVE: &str = "live-executor";
/// Far enough ahead that every backlog row is due.
const NOW_MS: i64 = 4_102_444_800_000;

/// History, backlog and running workflows, filled by `generate_series` and
/// analyzed, as a month of production leaves them.
async fn fill(pool: &PgPool) {
    for sql in [
        "INSERT INTO tandem.queues (name, retention_ms) VALUES ('history', 86400000)",
        "INSERT INTO tandem.executors (id, started_at, heartbeat_at, lease_expires_at)
         VALUES ('live-executor', now(), now(), now() + interval '1 day')",
        // The fence trigger guards live writers; history is written as is.
        "ALTER TABLE tandem.steps DISABLE TRIGGER steps_fence",
    ] {
        sqlx::raw_sql(sql).execute(pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO tandem.workflows
             (id, name, status, input, output, queue, priority, owner_epoch,
              created_at, updated_at, started_at, completed_at)
         SELECT 'done-' || i, $2, 'SUCCESS', '1', '2', 'history', 0, 1,
                now() - interval '3 days', now() - interval '2 days',
                now() - interval '3 days', now() - interval '2 days' + i * interval '1 microsecond'
           FROM generate_series(1, $1::bigint) i",
    )
    .bind(FINISHED)
    .bind(NAME)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tandem.steps
             (workflow_id, step_id, name, kind, output, owner_epoch, attempts,
              started_at, completed_at)
         SELECT 'done-' || i, s, 'step', 'step', '1', 1, 1, now(), now()
           FROM generate_series(1, $1::bigint) i, generate_series(0, 1) s",
    )
    .bind(FINISHED)
    .execute(pool)
    .await
    .unwrap();
    // A message and an event each: retention deletes them with the run.
    for sql in [
        "INSERT INTO tandem.messages (workflow_id, topic, payload, created_at)
         SELECT 'done-' || i, 'topic', '1', now() FROM generate_series(1, $1::bigint) i",
        "INSERT INTO tandem.events (workflow_id, key, value, updated_at)
         SELECT 'done-' || i, 'key', '1', now() FROM generate_series(1, $1::bigint) i",
    ] {
        sqlx::query(sql).bind(FINISHED).execute(pool).await.unwrap();
    }
    sqlx::raw_sql("ALTER TABLE tandem.steps ENABLE TRIGGER steps_fence")
        .execute(pool)
        .await
        .unwrap();
    // The backlog, in three queues (one of each kind) with 1,000 keys.
    sqlx::query(
        "INSERT INTO tandem.workflows
             (id, name, status, input, queue, priority, owner_epoch, concurrency_key,
              created_at, updated_at)
         SELECT q || '-' || i, $2, 'ENQUEUED', 'null', q, 0, 0, 'key-' || (i % 1000),
                now() + i * interval '1 microsecond', now()
           FROM generate_series(1, $1::bigint) i,
                unnest(ARRAY['unlimited', 'limited', 'keyed']) q",
    )
    .bind(BACKLOG)
    .bind(NAME)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tandem.workflows
             (id, name, status, input, queue, priority, owner_epoch, executor_id,
              concurrency_key, created_at, updated_at, started_at)
         SELECT 'running-' || i, $2, 'RUNNING', 'null', 'keyed', 0, 1, $3,
                'key-' || (i % 1000), now(), now(), now()
           FROM generate_series(1, $1::bigint) i",
    )
    .bind(RUNNING)
    .bind(NAME)
    .bind(LIVE)
    .execute(pool)
    .await
    .unwrap();
    // One statement each: VACUUM cannot run in a multi-statement query.
    for sql in [
        "VACUUM ANALYZE tandem.workflows",
        "VACUUM ANALYZE tandem.steps",
        "VACUUM ANALYZE tandem.messages",
        "VACUUM ANALYZE tandem.events",
    ] {
        sqlx::raw_sql(sql).execute(pool).await.unwrap();
    }
}

fn queue(name: &str) -> QueueLimits {
    QueueLimits {
        name: name.to_owned(),
        concurrency_global: None,
        rate_limit: None,
        concurrency_per_key: None,
        retention_ms: None,
    }
}

fn claim(queue: QueueLimits) -> WorkflowsClaim {
    WorkflowsClaim {
        queue,
        executor_id: "claimer".to_owned(),
        names: vec![NAME.to_owned()],
        versions: Versions::default(),
        limit: 16,
        now_ms: NOW_MS,
    }
}

/// The tables that grow with history and backlog. The executors' and
/// queues' tables hold a row per executor process and per queue: a
/// sequential scan is the planner's right choice for them.
const LARGE: [&str; 4] = ["workflows", "steps", "messages", "events"];

/// Sequential scans so far of each large table, by this backend: the
/// counts of the transaction in progress plus any this backend has not
/// yet reported, so a check takes the difference around its statement.
async fn seq_scans(tx: &mut tandem::storage::postgres::PgTx) -> Vec<i64> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan FROM pg_stat_xact_user_tables
          WHERE schemaname = 'tandem' AND relname = ANY($1)",
    )
    .bind(LARGE)
    .fetch_all(tx.conn())
    .await
    .unwrap();
    LARGE
        .iter()
        .map(|t| counts.iter().find(|c| c.0 == *t).map_or(0, |c| c.1))
        .collect()
}

#[tokio::test]
async fn the_executors_statements_scan_no_table_as_history_grows() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    storage.migrate().await.unwrap();
    fill(storage.pool()).await;

    let limited = QueueLimits {
        concurrency_global: Some(100_000),
        rate_limit: Some((100_000, 60_000)),
        ..queue("limited")
    };
    let keyed = QueueLimits {
        concurrency_per_key: Some(2),
        ..queue("keyed")
    };
    let mut failures = Vec::new();
    macro_rules! check {
        // Each in a transaction of its own, rolled back.
        ($label:expr, |$tx:ident| $body:expr) => {{
            let mut $tx = storage.begin().await.unwrap();
            let before = seq_scans(&mut $tx).await;
            $body;
            let after = seq_scans(&mut $tx).await;
            $tx.rollback().await.unwrap();
            let scans: Vec<(&str, i64)> = LARGE
                .iter()
                .zip(after.iter().zip(&before))
                .filter(|(_, (a, b))| a > b)
                .map(|(t, (a, b))| (*t, a - b))
                .collect();
            if !scans.is_empty() {
                failures.push(format!("{}: {scans:?}", $label));
            }
        }};
    }
    check!("claim, unlimited queue", |tx| {
        let rows = tx.workflows_claim(claim(queue("unlimited"))).await.unwrap();
        assert_eq!(rows.len(), 16);
    });
    check!("claim, global and rate limits", |tx| {
        let rows = tx.workflows_claim(claim(limited.clone())).await.unwrap();
        assert_eq!(rows.len(), 16);
    });
    check!("claim, per-key limit", |tx| {
        let rows = tx.workflows_claim(claim(keyed.clone())).await.unwrap();
        assert_eq!(rows.len(), 16);
    });
    check!("reclaim of dead executors", |tx| {
        assert_eq!(tx.workflows_reclaim(NOW_MS).await.unwrap(), 0);
    });
    check!("heartbeat", |tx| {
        tx.executor_heartbeat(LIVE, NOW_MS, 86_400_000)
            .await
            .unwrap();
    });
    check!("the workflows an executor owns", |tx| {
        assert_eq!(
            tx.workflows_owned(LIVE).await.unwrap().len(),
            RUNNING as usize
        );
    });
    check!("recovery of one workflow", |tx| {
        let rows = tx
            .workflows_recover(WorkflowsRecover {
                executor_id: LIVE.to_owned(),
                workflow_id: Some("running-7".to_owned()),
                versions: Versions::default(),
                now_ms: NOW_MS,
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    });
    check!("a workflow's row and its checkpoints", |tx| {
        assert!(tx.workflow_get("done-500").await.unwrap().is_some());
        assert_eq!(tx.steps_load("done-500").await.unwrap().len(), 2);
        assert!(tx.step_get("done-500", 1).await.unwrap().is_some());
    });
    check!("a checkpoint, then the completion", |tx| {
        let recorded = tx
            .step_record(StepRecord {
                workflow_id: "running-9".to_owned(),
                step_id: 0,
                name: "step".to_owned(),
                kind: StepKind::Transaction,
                output: Some("1".to_owned()),
                error: None,
                owner_epoch: 1,
                attempts: 1,
                started_ms: NOW_MS,
                now_ms: NOW_MS,
                version: None,
            })
            .await
            .unwrap();
        assert_eq!(recorded, tandem::storage::StepRecorded::Recorded);
        tx.workflow_complete(WorkflowComplete {
            id: "running-9".to_owned(),
            owner_epoch: 1,
            status: Status::Success,
            output: Some("1".to_owned()),
            error: None,
            now_ms: NOW_MS,
        })
        .await
        .unwrap();
    });
    check!("a retention round", |tx| {
        let count = tx
            .workflows_gc(WorkflowsGc {
                limit: 500,
                older_than_ms: None,
                dry_run: false,
                now_ms: NOW_MS,
            })
            .await
            .unwrap();
        assert_eq!(count.roots, 500);
    });
    assert!(
        failures.is_empty(),
        "statements that scanned a table sequentially:\n{}",
        failures.join("\n")
    );
}
