//! Shared fixtures: fresh databases, a bank schema with a transfer workflow,
//! a probe storage that counts commits and injects lost acknowledgements, and
//! an environment whose tasks can all be aborted at once (a crash).

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem::env::BoxFuture;
use tandem::storage::postgres::PgTx;
use tandem::storage::{
    ErrorKind, ExecutorRegister, StepInfo, StepRecord, StepRecorded, StepRow, Storage,
    StorageError, StorageResult, Transaction, WorkflowComplete, WorkflowEnqueue, WorkflowFilter,
    WorkflowFork, WorkflowInfo, WorkflowInsert, WorkflowInserted, WorkflowRow, WorkflowsClaim,
    WorkflowsRecover,
};
use tandem::testing::PgCluster;
use tandem::{Env, PgStorage, RetryPolicy, TokioEnv, Workflow, WorkflowContext, WorkflowError};

/// A fresh database on the shared test server.
pub async fn database() -> String {
    PgCluster::shared()
        .await
        .expect("start the test PostgreSQL server")
        .create_database()
        .await
        .expect("create a test database")
}

/// A connected storage on a fresh database, with the bank schema.
pub async fn bank() -> (PgStorage, Bank) {
    let url = database().await;
    let storage = PgStorage::connect(&url).await.expect("connect");
    let bank = Bank::create(storage.pool().clone(), 10, 1_000).await;
    (storage, bank)
}

/// Application tables: accounts, a ledger row per applied debit or credit,
/// and a row per call of the (simulated) external notification service.
pub struct Bank {
    pub pool: PgPool,
    pub accounts: i64,
    pub balance: i64,
}

impl Bank {
    pub async fn create(pool: PgPool, accounts: i64, balance: i64) -> Bank {
        sqlx::raw_sql(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE ledger (workflow_id text NOT NULL, step text NOT NULL,
                                  account bigint NOT NULL, delta bigint NOT NULL);
             CREATE TABLE notifications (workflow_id text NOT NULL,
                                         checkpoint_existed boolean NOT NULL);",
        )
        .execute(&pool)
        .await
        .expect("create bank tables");
        sqlx::query("INSERT INTO accounts SELECT g, $2 FROM generate_series(0, $1 - 1) g")
            .bind(accounts)
            .bind(balance)
            .execute(&pool)
            .await
            .expect("create accounts");
        Bank {
            pool,
            accounts,
            balance,
        }
    }

    pub async fn balances(&self) -> Vec<i64> {
        sqlx::query_scalar("SELECT balance FROM accounts ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .expect("read balances")
    }

    /// Ledger rows per (workflow, step).
    pub async fn ledger_counts(&self) -> Vec<(String, String, i64)> {
        sqlx::query_as("SELECT workflow_id, step, count(*) FROM ledger GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(&self.pool)
            .await
            .expect("read ledger")
    }

    pub async fn scalar(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("scalar query")
    }

    /// The balances that applying every transfer exactly once gives.
    pub fn expected_balances(&self, transfers: &[TransferInput]) -> Vec<i64> {
        let mut balances = vec![self.balance; self.accounts as usize];
        for t in transfers {
            balances[t.from as usize] -= t.amount;
            balances[t.to as usize] += t.amount;
        }
        balances
    }
}

/// A deterministic list of `n` transfers among `accounts` accounts.
pub fn transfers(n: usize, accounts: i64) -> Vec<TransferInput> {
    (0..n)
        .map(|i| {
            let i = i as i64;
            TransferInput {
                from: i % accounts,
                to: (i * 7 + 3) % accounts,
                amount: 1 + i % 13,
                notify_delay_ms: 0,
            }
        })
        .filter(|t| t.from != t.to)
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferInput {
    pub from: i64,
    pub to: i64,
    pub amount: i64,
    /// How long the notification call takes, widening the window between
    /// its side effect and its checkpoint.
    #[serde(default)]
    pub notify_delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub from_balance: i64,
    pub to_balance: i64,
}

/// Debit (transactional), notify (plain, an external call), credit
/// (transactional). The notification service writes through its own pool,
/// outside any step transaction.
pub struct Transfer {
    pub notifications: PgPool,
}

impl<S: Storage<Conn = PgConnection>> Workflow<S> for Transfer {
    const NAME: &'static str = "transfer";
    type Input = TransferInput;
    type Output = Receipt;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        t: TransferInput,
    ) -> Result<Receipt, WorkflowError> {
        let id = ctx.workflow_id().to_owned();
        let from_balance = ctx
            .transaction("debit", {
                let id = id.clone();
                async move |tx| apply(tx, &id, "debit", t.from, -t.amount).await
            })
            .await?;
        let pool_id = id.clone();
        // The external service may be briefly unreachable: retry it.
        let retry = RetryPolicy {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..RetryPolicy::exponential(30)
        };
        ctx.step_with("notify", retry, || {
            notify(&self.notifications, &pool_id, t.notify_delay_ms)
        })
        .await?;
        let to_balance = ctx
            .transaction("credit", async move |tx| {
                apply(tx, &id, "credit", t.to, t.amount).await
            })
            .await?;
        Ok(Receipt {
            from_balance,
            to_balance,
        })
    }
}

/// The application's write inside a transactional step: the balance change
/// and its ledger row.
pub async fn apply(
    tx: &mut PgConnection,
    workflow_id: &str,
    step: &str,
    account: i64,
    delta: i64,
) -> Result<i64, sqlx::Error> {
    let balance: i64 = sqlx::query_scalar(
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance",
    )
    .bind(delta)
    .bind(account)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO ledger (workflow_id, step, account, delta) VALUES ($1, $2, $3, $4)")
        .bind(workflow_id)
        .bind(step)
        .bind(account)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
    Ok(balance)
}

/// The external notification: a side effect outside the step's
/// transaction, which records whether the step's checkpoint already existed
/// when it ran (it never may).
async fn notify(pool: &PgPool, workflow_id: &str, delay_ms: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (workflow_id, checkpoint_existed)
         VALUES ($1, EXISTS (SELECT 1 FROM tandem.steps WHERE workflow_id = $1 AND step_id = 1))",
    )
    .bind(workflow_id)
    .execute(pool)
    .await?;
    if delay_ms > 0 {
        sleep(Duration::from_millis(delay_ms)).await;
    }
    Ok(())
}

/// Checks the exactly-once and at-least-once properties of finished
/// transfers: every workflow SUCCESS, one debit and one credit each, balances
/// as if each transfer applied once, each notification sent at least once
/// and never after its checkpoint.
pub async fn assert_transfers_exact(bank: &Bank, ids: &[String], transfers: &[TransferInput]) {
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM tandem.workflows WHERE id = ANY($1) ORDER BY id")
            .bind(ids)
            .fetch_all(&bank.pool)
            .await
            .unwrap();
    assert_eq!(statuses.len(), ids.len(), "every workflow exists once");
    for (id, status) in &statuses {
        assert_eq!(status, "SUCCESS", "workflow {id}");
    }
    let ledger = bank.ledger_counts().await;
    assert_eq!(
        ledger.len(),
        ids.len() * 2,
        "a debit and a credit per transfer"
    );
    for (id, step, count) in &ledger {
        assert_eq!(*count, 1, "{step} of {id} applied {count} times");
    }
    assert_eq!(bank.balances().await, bank.expected_balances(transfers));
    let sent: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT workflow_id, count(*), bool_or(checkpoint_existed)
           FROM notifications GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&bank.pool)
    .await
    .unwrap();
    assert_eq!(
        sent.len(),
        ids.len(),
        "every notification sent at least once"
    );
    for (id, _, after_checkpoint) in &sent {
        assert!(
            !after_checkpoint,
            "notification of {id} ran after its checkpoint"
        );
    }
}

#[allow(clippy::disallowed_methods)] // test code waits on real time
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Bounds how long a test waits for something that should happen.
#[allow(clippy::disallowed_methods)] // test code waits on real time
pub async fn timeout<F: std::future::Future>(
    d: Duration,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(d, f).await
}

/// What [`Probe`] saw and what it should break.
#[derive(Default)]
pub struct ProbeState {
    /// Commits a workflow's own execution made: start, steps, completion
    /// (autocommit writes included).
    pub commits: AtomicUsize,
    /// Commits of the executor's background work: registration, recovery,
    /// heartbeats, claims, reaping.
    pub background: AtomicUsize,
    /// Read-only round trips (history loads, status polls).
    pub reads: AtomicUsize,
    /// Make the next this-many explicit transaction commits succeed on the
    /// server but report a lost connection to the engine.
    pub lose_commit_acks: AtomicUsize,
    /// How many acknowledgements were lost on purpose.
    pub acks_lost: AtomicUsize,
}

/// A storage wrapping [`PgStorage`] that counts commits and can lose commit
/// acknowledgements.
#[derive(Clone)]
pub struct Probe {
    pub inner: PgStorage,
    pub state: Arc<ProbeState>,
}

impl Probe {
    pub fn new(inner: PgStorage) -> Probe {
        Probe {
            inner,
            state: Arc::default(),
        }
    }

    fn commit(&self) {
        self.state.commits.fetch_add(1, Ordering::SeqCst);
    }

    fn background(&self) {
        self.state.background.fetch_add(1, Ordering::SeqCst);
    }

    fn read(&self) {
        self.state.reads.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct ProbeTx {
    inner: PgTx,
    state: Arc<ProbeState>,
}

impl Storage for Probe {
    type Tx = ProbeTx;
    type Conn = PgConnection;
    type Listener = <PgStorage as Storage>::Listener;

    async fn listen(&self) -> StorageResult<Self::Listener> {
        self.inner.listen().await
    }

    async fn begin(&self) -> StorageResult<ProbeTx> {
        Ok(ProbeTx {
            inner: self.inner.begin().await?,
            state: self.state.clone(),
        })
    }

    async fn migrate(&self) -> StorageResult<()> {
        self.inner.migrate().await
    }

    fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        PgStorage::classify(error)
    }

    async fn workflow_insert(&self, p: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        self.commit();
        self.inner.workflow_insert(p).await
    }

    async fn workflow_get(&self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        self.read();
        self.inner.workflow_get(id).await
    }

    async fn workflow_complete(&self, p: WorkflowComplete) -> StorageResult<()> {
        self.commit();
        self.inner.workflow_complete(p).await
    }

    async fn workflows_recover(&self, p: WorkflowsRecover) -> StorageResult<Vec<WorkflowRow>> {
        self.background();
        self.inner.workflows_recover(p).await
    }

    async fn executor_register(&self, p: ExecutorRegister) -> StorageResult<()> {
        self.background();
        self.inner.executor_register(p).await
    }

    async fn executor_heartbeat(&self, id: &str, now_ms: i64, lease_ms: i64) -> StorageResult<()> {
        self.background();
        self.inner.executor_heartbeat(id, now_ms, lease_ms).await
    }

    async fn workflows_reclaim(&self, now_ms: i64) -> StorageResult<u64> {
        self.background();
        self.inner.workflows_reclaim(now_ms).await
    }

    async fn workflows_claim(&self, p: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        self.background();
        self.inner.workflows_claim(p).await
    }

    async fn workflows_release(&self, id: &str, now_ms: i64) -> StorageResult<u64> {
        self.background();
        self.inner.workflows_release(id, now_ms).await
    }

    async fn workflow_enqueue(&self, p: WorkflowEnqueue) -> StorageResult<String> {
        self.commit();
        self.inner.workflow_enqueue(p).await
    }

    async fn steps_load(&self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        self.read();
        self.inner.steps_load(workflow_id).await
    }

    async fn step_record(&self, p: StepRecord) -> StorageResult<StepRecorded> {
        self.commit();
        self.inner.step_record(p).await
    }
}

impl Transaction for ProbeTx {
    type Conn = PgConnection;

    fn conn(&mut self) -> &mut PgConnection {
        self.inner.conn()
    }

    async fn workflow_insert(&mut self, p: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        self.inner.workflow_insert(p).await
    }

    async fn workflow_get(&mut self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        self.inner.workflow_get(id).await
    }

    async fn workflow_complete(&mut self, p: WorkflowComplete) -> StorageResult<()> {
        self.inner.workflow_complete(p).await
    }

    async fn workflows_recover(&mut self, p: WorkflowsRecover) -> StorageResult<Vec<WorkflowRow>> {
        self.inner.workflows_recover(p).await
    }

    async fn steps_load(&mut self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        self.inner.steps_load(workflow_id).await
    }

    async fn step_record(&mut self, p: StepRecord) -> StorageResult<StepRecorded> {
        self.inner.step_record(p).await
    }

    async fn commit(self) -> StorageResult<()> {
        self.inner.commit().await?;
        self.state.commits.fetch_add(1, Ordering::SeqCst);
        let lose =
            self.state
                .lose_commit_acks
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if lose.is_ok() {
            self.state.acks_lost.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::new(
                ErrorKind::Unavailable,
                "injected fault: the commit succeeded but its acknowledgement was lost",
            ));
        }
        Ok(())
    }

    async fn executor_register(&mut self, p: ExecutorRegister) -> StorageResult<()> {
        self.inner.executor_register(p).await
    }

    async fn executor_heartbeat(
        &mut self,
        id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StorageResult<()> {
        self.inner.executor_heartbeat(id, now_ms, lease_ms).await
    }

    async fn workflows_reclaim(&mut self, now_ms: i64) -> StorageResult<u64> {
        self.inner.workflows_reclaim(now_ms).await
    }

    async fn workflows_claim(&mut self, p: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        self.inner.workflows_claim(p).await
    }

    async fn workflows_release(&mut self, id: &str, now_ms: i64) -> StorageResult<u64> {
        self.inner.workflows_release(id, now_ms).await
    }

    async fn workflow_enqueue(&mut self, p: WorkflowEnqueue) -> StorageResult<String> {
        self.inner.workflow_enqueue(p).await
    }

    async fn workflow_suspend(
        &mut self,
        id: &str,
        epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.inner
            .workflow_suspend(id, epoch, run_after_ms, now_ms)
            .await
    }

    async fn message_send(
        &mut self,
        id: &str,
        topic: &str,
        payload: &str,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.inner.message_send(id, topic, payload, now_ms).await
    }

    async fn message_take(
        &mut self,
        id: &str,
        topic: &str,
        epoch: i64,
    ) -> StorageResult<Option<String>> {
        self.inner.message_take(id, topic, epoch).await
    }

    async fn event_set(
        &mut self,
        id: &str,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.inner.event_set(id, key, value, now_ms).await
    }

    async fn event_get(&mut self, id: &str, key: &str) -> StorageResult<Option<String>> {
        self.inner.event_get(id, key).await
    }

    async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.inner.workflows_cancel(id, reason, now_ms).await
    }

    async fn workflow_resume(&mut self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.inner.workflow_resume(id, now_ms).await
    }

    async fn workflow_fork(&mut self, p: WorkflowFork) -> StorageResult<bool> {
        self.inner.workflow_fork(p).await
    }

    async fn workflows_list(&mut self, f: WorkflowFilter) -> StorageResult<Vec<WorkflowInfo>> {
        self.inner.workflows_list(f).await
    }

    async fn workflow_info(&mut self, id: &str) -> StorageResult<Option<WorkflowInfo>> {
        self.inner.workflow_info(id).await
    }

    async fn steps_info(&mut self, id: &str) -> StorageResult<Vec<StepInfo>> {
        self.inner.steps_info(id).await
    }

    async fn rollback(self) -> StorageResult<()> {
        self.inner.rollback().await
    }
}

/// A tokio environment whose spawned tasks can all be aborted at once: an
/// in-process crash at whatever await point each task is parked.
#[derive(Clone, Default)]
pub struct CrashEnv {
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CrashEnv {
    pub fn crash(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[allow(clippy::disallowed_methods)] // a test environment wraps the real runtime
impl Env for CrashEnv {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        TokioEnv::new().sleep(duration)
    }

    fn spawn(&self, task: BoxFuture<()>) {
        let handle = tokio::spawn(task);
        self.tasks.lock().unwrap().push(handle.abort_handle());
    }

    fn seed(&self) -> u64 {
        42
    }
}
