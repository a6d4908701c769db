//! Exactly-once under crashes: on PostgreSQL a child process running
//! transfers is killed (SIGKILL) at random moments and restarted, again and
//! again; on the memory model an in-process engine is crashed the same way.

use std::process::Stdio;
use std::time::Duration;

use std::sync::atomic::Ordering;

use rand::{Rng, SeedableRng};
use tandem::{Engine, PgStorage};

use crate::support::{self, App, CrashEnv, MemApp, PgApp, Probe, Transfer, TransferInput};

const WORKER_URL: &str = "TANDEM_IT_WORKER_URL";
const TRANSFERS: usize = 600;
const BATCH: usize = 12;
const KILLS_MIN: usize = 20;

fn workload() -> Vec<TransferInput> {
    support::transfers(TRANSFERS, 10)
        .into_iter()
        .enumerate()
        .map(|(i, t)| TransferInput {
            notify_delay_ms: 5 + (i % 4) as u64 * 10,
            ..t
        })
        .collect()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("transfer-{i}")).collect()
}

/// The worker: starts every transfer under a fixed ID (attaching to runs a
/// killed predecessor left), a batch at a time, and waits for them all. The
/// kill test runs the test binary again with just this test.
#[tokio::test]
#[ignore = "the worker process of transfers_are_exact_under_repeated_sigkill"]
async fn worker_process() {
    let url = std::env::var(WORKER_URL).expect("run by the kill test, with TANDEM_IT_WORKER_URL");
    let storage = PgStorage::connect(&url).await.unwrap();
    let pool = storage.pool().clone();
    let engine = Engine::builder(storage)
        .executor_id("worker")
        .register(Transfer {
            app: PgApp { pool },
        })
        .launch()
        .await
        .unwrap();
    let transfers = workload();
    let ids = ids(transfers.len());
    for (ids, transfers) in ids.chunks(BATCH).zip(transfers.chunks(BATCH)) {
        let mut handles = Vec::new();
        for (id, t) in ids.iter().zip(transfers) {
            handles.push(
                engine
                    .start_with_id::<Transfer<PgApp>>(id.clone(), t.clone())
                    .await
                    .unwrap(),
            );
        }
        for handle in handles {
            handle.result().await.unwrap();
        }
    }
    println!("worker finished");
}

#[tokio::test]
async fn transfers_are_exact_under_repeated_sigkill() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.unwrap();
    let bank = PgApp::bank_on(&storage, 10, 1_000).await;
    // The schema must exist before the first check; the worker migrates too.
    storage_migrate(&storage).await;

    let seed: u64 = std::env::var("TANDEM_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        tokio::process::Command::new(&exe)
            .args([
                "crash::worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_URL, &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the worker process")
    };

    let mut kills = 0;
    let mut runs = 0;
    while kills < KILLS_MIN {
        runs += 1;
        assert!(
            runs < KILLS_MIN * 3,
            "the worker kept finishing before being killed (seed {seed})"
        );
        let mut child = spawn();
        let delay = Duration::from_millis(rng.gen_range(150..600));
        tokio::select! {
            status = child.wait() => {
                let status = status.unwrap();
                assert!(status.success(), "worker failed on its own: {status} (seed {seed})");
                panic!("the worker finished everything after {kills} kills; make the workload longer (seed {seed})");
            }
            () = support::sleep(delay) => {
                child.start_kill().unwrap(); // SIGKILL
                child.wait().await.unwrap();
                kills += 1;
            }
        }
    }
    let done_before_last_run = bank
        .scalar("SELECT count(*) FROM tandem.workflows WHERE status = 'SUCCESS'")
        .await;
    assert!(
        (done_before_last_run as usize) < TRANSFERS,
        "kills landed while work remained"
    );

    let output = tokio::process::Command::new(&exe)
        .args([
            "crash::worker_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_URL, &url)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "final worker run failed (seed {seed}):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let transfers = workload();
    support::assert_transfers_exact(&bank, &ids(transfers.len()), &transfers).await;
    let reexecuted = bank
        .scalar("SELECT count(*) - count(DISTINCT workflow_id) FROM notifications")
        .await;
    let resumed = bank
        .scalar("SELECT count(*) FROM tandem.workflows WHERE owner_epoch > 1")
        .await;
    println!(
        "{kills} kills; {resumed} workflows resumed; {reexecuted} notifications re-sent (allowed: at-least-once)"
    );
    assert!(resumed > 0, "some workflows were interrupted and resumed");
}

async fn storage_migrate(storage: &PgStorage) {
    use tandem::storage::Storage;
    storage.migrate().await.unwrap();
}

/// Memory only: on PostgreSQL an aborted task's sqlx transaction is not
/// rolled back at once (the ROLLBACK is queued until its pooled connection
/// is next used), so its locks stall the next engine, which a real crash
/// (the SIGKILL test above) never does.
#[tokio::test]
async fn mem_transfers_are_exact_under_repeated_in_process_crashes() {
    transfers_are_exact_under_repeated_in_process_crashes::<MemApp>().await;
}

/// The in-process counterpart of the SIGKILL test: an
/// engine whose every task is aborted at whatever await point it is parked
/// (mid-transaction, between a side effect and its checkpoint, during a
/// commit), again and again after a random number of commits, then a final
/// engine finishes the work. The database (server or model) survives each
/// crash; the executor's memory does not.
async fn transfers_are_exact_under_repeated_in_process_crashes<A: App>() {
    const CRASHES: usize = 8;
    let (storage, bank) = support::bank::<A>().await;
    let probe = Probe::new(storage);
    let transfers: Vec<TransferInput> = support::transfers(120, 10)
        .into_iter()
        .enumerate()
        .map(|(i, t)| TransferInput {
            notify_delay_ms: (i % 3) as u64,
            ..t
        })
        .collect();
    let ids = ids(transfers.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let launch = |env: Option<CrashEnv>| {
        let mut builder = Engine::builder(probe.clone())
            .executor_id("worker")
            .register(Transfer {
                app: bank.app.clone(),
            });
        if let Some(env) = env {
            builder = builder.env(env);
        }
        builder.launch()
    };
    let start_all = async |engine: &Engine<Probe<A::Storage>>| {
        let mut handles = Vec::new();
        for (id, t) in ids.iter().zip(&transfers) {
            handles.push(
                engine
                    .start_with_id::<Transfer<A>>(id.clone(), t.clone())
                    .await
                    .unwrap(),
            );
        }
        handles
    };
    let finished = async || {
        let workflows = bank.app.workflows().await;
        workflows
            .iter()
            .filter(|w| w.status == tandem::Status::Success)
            .count()
    };
    let mut crashes_mid_work = 0;
    for round in 0..CRASHES {
        let crash = CrashEnv::default();
        // The first engine starts every transfer and crashes as soon as the
        // last start returns; later ones resume the unfinished workflows on
        // launch and crash after a few more commits.
        let engine = launch(Some(crash.clone())).await.unwrap();
        if round == 0 {
            start_all(&engine).await;
        } else {
            let target = probe.state.commits.load(Ordering::SeqCst) + rng.gen_range(3..25);
            while probe.state.commits.load(Ordering::SeqCst) < target
                && finished().await < transfers.len()
            {
                tokio::task::yield_now().await;
            }
        }
        crash.crash();
        if finished().await < transfers.len() {
            crashes_mid_work += 1;
        }
    }
    assert!(
        crashes_mid_work >= CRASHES / 2,
        "only {crashes_mid_work} crashes landed while work remained"
    );

    let engine = launch(None).await.unwrap();
    for handle in start_all(&engine).await {
        handle.result().await.unwrap();
    }
    support::assert_transfers_exact(&bank, &ids, &transfers).await;
    let resumed = bank
        .app
        .workflows()
        .await
        .iter()
        .filter(|w| w.owner_epoch > 1)
        .count();
    assert!(resumed > 0, "some workflows were interrupted and resumed");
    engine.shutdown().await;
}
