//! Shared fixtures, written once for both backends: the [`App`] trait (the
//! application's tables and writes on PostgreSQL or on the memory model), a
//! bank with a transfer workflow, a probe storage that counts commits and
//! injects lost acknowledgements, an environment whose tasks can all be
//! aborted at once (a crash), and the [`both!`] macro that instantiates a
//! generic test for each backend.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tandem::storage::memory::{MemConn, MemError};
use tandem::storage::{
    ErrorKind, ExecutorRegister, Status, StepKind, StepRecord, StepRecorded, StepRow, Storage,
    StorageError, StorageResult, Transaction, WorkflowComplete, WorkflowEnqueue, WorkflowInsert,
    WorkflowInserted, WorkflowRow, WorkflowsClaim, WorkflowsRecover,
};
use tandem::testing::PgCluster;
use tandem::{MemStorage, PgStorage, RetryPolicy, Workflow, WorkflowContext, WorkflowError};

/// Instantiates generic tests `name::<A: App>()` once per backend, as
/// `name::pg` and `name::mem`: one source, both backends (River's
/// `riverdrivertest`).
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn pg() {
                super::$name::<$crate::support::PgApp>().await
            }
            #[tokio::test]
            async fn mem() {
                super::$name::<$crate::support::MemApp>().await
            }
        }
    )*};
}
pub(crate) use both;

/// A fresh database on the shared test server.
pub async fn database() -> String {
    PgCluster::shared()
        .await
        .expect("start the test PostgreSQL server")
        .create_database()
        .await
        .expect("create a test database")
}

/// One checkpoint row as a test inspects it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    pub workflow_id: String,
    pub step_id: i32,
    pub name: String,
    pub kind: StepKind,
    pub owner_epoch: i64,
    pub attempts: i32,
    pub output: Option<String>,
    pub error: Option<String>,
}

/// One workflow row as a test inspects it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowInfo {
    pub id: String,
    pub status: Status,
    pub owner_epoch: i64,
    /// When the receive it waits at (or last waited at) times out.
    pub wait_until_ms: Option<i64>,
}

/// The application on one backend: its tables (accounts, a ledger row per
/// applied debit or credit, a row per call of the simulated external
/// notification service), the write a transactional step makes on the
/// backend's connection, and reads for assertions.
pub trait App: Clone + Send + Sync + Sized + 'static {
    type Storage: Storage;
    type Error: std::error::Error + Send + Sync + 'static;

    /// A fresh, migrated storage with the bank tables and `accounts`
    /// accounts holding `balance` each.
    fn create(accounts: i64, balance: i64) -> impl Future<Output = (Self::Storage, Self)> + Send;

    /// The application's write inside a transactional step: the balance
    /// change and its ledger row. Returns the new balance.
    fn apply(
        conn: &mut <Self::Storage as Storage>::Conn,
        workflow_id: &str,
        step: &str,
        account: i64,
        delta: i64,
    ) -> impl Future<Output = Result<i64, Self::Error>> + Send;

    /// The external notification: a side effect outside any step
    /// transaction, recording whether step 1's checkpoint already existed
    /// when it ran (it never may).
    fn notify(&self, workflow_id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    fn balances(&self) -> impl Future<Output = Vec<i64>> + Send;
    /// Every ledger row as (workflow, step).
    fn ledger(&self) -> impl Future<Output = Vec<(String, String)>> + Send;
    /// Every notification as (workflow, checkpoint existed).
    fn notifications(&self) -> impl Future<Output = Vec<(String, bool)>> + Send;
    fn workflows(&self) -> impl Future<Output = Vec<WorkflowInfo>> + Send;
    /// Every checkpoint, by workflow and step.
    fn steps(&self) -> impl Future<Output = Vec<StepInfo>> + Send;
}

/// The application on PostgreSQL: sqlx on the step's `PgConnection`.
#[derive(Clone)]
pub struct PgApp {
    pub pool: PgPool,
}

impl PgApp {
    /// Creates the bank tables in `storage`'s database.
    pub async fn bank_on(storage: &PgStorage, accounts: i64, balance: i64) -> Bank<PgApp> {
        let pool = storage.pool().clone();
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
            app: PgApp { pool },
            accounts,
            balance,
        }
    }
}

impl Bank<PgApp> {
    /// One number from SQL (PostgreSQL-only tests).
    pub async fn scalar(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.app.pool)
            .await
            .expect("scalar query")
    }
}

impl App for PgApp {
    type Storage = PgStorage;
    type Error = sqlx::Error;

    async fn create(accounts: i64, balance: i64) -> (PgStorage, PgApp) {
        let url = database().await;
        let storage = PgStorage::connect(&url).await.expect("connect");
        storage.migrate().await.expect("migrate");
        let bank = PgApp::bank_on(&storage, accounts, balance).await;
        (storage, bank.app)
    }

    async fn apply(
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
        sqlx::query(
            "INSERT INTO ledger (workflow_id, step, account, delta) VALUES ($1, $2, $3, $4)",
        )
        .bind(workflow_id)
        .bind(step)
        .bind(account)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
        Ok(balance)
    }

    async fn notify(&self, workflow_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO notifications (workflow_id, checkpoint_existed)
             VALUES ($1, EXISTS (SELECT 1 FROM tandem.steps WHERE workflow_id = $1 AND step_id = 1))",
        )
        .bind(workflow_id)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    async fn balances(&self) -> Vec<i64> {
        sqlx::query_scalar("SELECT balance FROM accounts ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .expect("read balances")
    }

    async fn ledger(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT workflow_id, step FROM ledger")
            .fetch_all(&self.pool)
            .await
            .expect("read ledger")
    }

    async fn notifications(&self) -> Vec<(String, bool)> {
        sqlx::query_as("SELECT workflow_id, checkpoint_existed FROM notifications")
            .fetch_all(&self.pool)
            .await
            .expect("read notifications")
    }

    async fn workflows(&self) -> Vec<WorkflowInfo> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, status, owner_epoch, wait_until_ms FROM tandem.workflows ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read workflows");
        rows.into_iter()
            .map(|(id, status, owner_epoch, wait_until_ms)| WorkflowInfo {
                id,
                status: Status::parse(&status).expect("a known status"),
                owner_epoch,
                wait_until_ms,
            })
            .collect()
    }

    async fn steps(&self) -> Vec<StepInfo> {
        type Row = (
            String,
            i32,
            String,
            String,
            i64,
            i32,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT workflow_id, step_id, name, kind, owner_epoch, attempts, output::text, error
               FROM tandem.steps ORDER BY workflow_id, step_id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read steps");
        rows.into_iter()
            .map(
                |(workflow_id, step_id, name, kind, owner_epoch, attempts, output, error)| {
                    StepInfo {
                        workflow_id,
                        step_id,
                        name,
                        kind: StepKind::parse(&kind).expect("a known kind"),
                        owner_epoch,
                        attempts,
                        output,
                        error,
                    }
                },
            )
            .collect()
    }
}

/// The application on the memory model: its table/row API on the step's
/// `MemConn`.
#[derive(Clone)]
pub struct MemApp {
    pub storage: MemStorage,
}

/// Ledger and notification rows have no natural key; a process-wide counter
/// gives each its own, so duplicates show up as extra rows, as in SQL.
static ROW_IDS: AtomicI64 = AtomicI64::new(0);

fn row_id() -> i64 {
    ROW_IDS.fetch_add(1, Ordering::Relaxed)
}

impl App for MemApp {
    type Storage = MemStorage;
    type Error = MemError;

    async fn create(accounts: i64, balance: i64) -> (MemStorage, MemApp) {
        let storage = MemStorage::new();
        storage
            .with_conn(async |conn| {
                for id in 0..accounts {
                    conn.insert("accounts", id, json!(balance)).await?;
                }
                Ok(())
            })
            .await
            .expect("create accounts");
        (storage.clone(), MemApp { storage })
    }

    async fn apply(
        conn: &mut MemConn,
        workflow_id: &str,
        step: &str,
        account: i64,
        delta: i64,
    ) -> Result<i64, MemError> {
        let balance = conn
            .update("accounts", account, |v| Some(json!(v.as_i64()? + delta)))
            .await?
            .and_then(|v| v.as_i64())
            .expect("the account exists");
        conn.insert(
            "ledger",
            row_id(),
            json!({"workflow_id": workflow_id, "step": step, "account": account, "delta": delta}),
        )
        .await?;
        Ok(balance)
    }

    async fn notify(&self, workflow_id: &str) -> Result<(), MemError> {
        let existed = self
            .storage
            .steps()
            .iter()
            .any(|s| s.workflow_id == workflow_id && s.step_id == 1);
        let row = json!({"workflow_id": workflow_id, "checkpoint_existed": existed});
        self.storage
            .with_conn(async |conn| conn.insert("notifications", row_id(), row).await)
            .await
    }

    async fn balances(&self) -> Vec<i64> {
        self.storage
            .rows("accounts")
            .into_iter()
            .map(|(_, v)| v.as_i64().expect("a balance"))
            .collect()
    }

    async fn ledger(&self) -> Vec<(String, String)> {
        self.storage
            .rows("ledger")
            .into_iter()
            .map(|(_, v)| (text(&v["workflow_id"]), text(&v["step"])))
            .collect()
    }

    async fn notifications(&self) -> Vec<(String, bool)> {
        self.storage
            .rows("notifications")
            .into_iter()
            .map(|(_, v)| (text(&v["workflow_id"]), v["checkpoint_existed"] == true))
            .collect()
    }

    async fn workflows(&self) -> Vec<WorkflowInfo> {
        self.storage
            .workflows()
            .into_iter()
            .map(|w| WorkflowInfo {
                id: w.id,
                status: w.status,
                owner_epoch: w.owner_epoch,
                wait_until_ms: w.wait_until_ms,
            })
            .collect()
    }

    async fn steps(&self) -> Vec<StepInfo> {
        self.storage
            .steps()
            .into_iter()
            .map(|s| StepInfo {
                workflow_id: s.workflow_id,
                step_id: s.step_id,
                name: s.name,
                kind: s.kind,
                owner_epoch: s.owner_epoch,
                attempts: s.attempts,
                output: s.output,
                error: s.error,
            })
            .collect()
    }
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A bank on one backend, with the assertions tests make about it.
pub struct Bank<A> {
    pub app: A,
    pub accounts: i64,
    pub balance: i64,
}

/// A fresh storage with a bank of 10 accounts of 1000 each.
pub async fn bank<A: App>() -> (A::Storage, Bank<A>) {
    let (storage, app) = A::create(10, 1_000).await;
    (
        storage,
        Bank {
            app,
            accounts: 10,
            balance: 1_000,
        },
    )
}

impl<A: App> Bank<A> {
    pub async fn balances(&self) -> Vec<i64> {
        self.app.balances().await
    }

    /// Ledger rows per (workflow, step), sorted.
    pub async fn ledger_counts(&self) -> Vec<(String, String, i64)> {
        let mut counts: Vec<(String, String, i64)> = Vec::new();
        let mut ledger = self.app.ledger().await;
        ledger.sort();
        for (workflow, step) in ledger {
            match counts.last_mut() {
                Some((w, s, n)) if *w == workflow && *s == step => *n += 1,
                _ => counts.push((workflow, step, 1)),
            }
        }
        counts
    }

    /// Ledger rows, all or of one step name.
    pub async fn ledger_rows(&self, step: Option<&str>) -> usize {
        let ledger = self.app.ledger().await;
        ledger
            .iter()
            .filter(|(_, s)| step.is_none_or(|step| s == step))
            .count()
    }

    pub async fn workflow_count(&self) -> usize {
        self.app.workflows().await.len()
    }

    pub async fn steps_of(&self, workflow_id: &str) -> Vec<StepInfo> {
        let mut steps = self.app.steps().await;
        steps.retain(|s| s.workflow_id == workflow_id);
        steps
    }

    /// Waits until workflow `id` has `n` recorded steps.
    pub async fn wait_for_steps(&self, id: &str, n: usize) {
        for _ in 0..1000 {
            if self.steps_of(id).await.len() >= n {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
        panic!("workflow {id} never reached {n} steps");
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
/// (transactional). The notification service writes outside any step
/// transaction.
pub struct Transfer<A> {
    pub app: A,
}

impl<A: App, S: Storage<Conn = <A::Storage as Storage>::Conn>> Workflow<S> for Transfer<A> {
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
                async move |tx| A::apply(tx, &id, "debit", t.from, -t.amount).await
            })
            .await?;
        // The external service may be briefly unreachable: retry it.
        let retry = RetryPolicy {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..RetryPolicy::exponential(30)
        };
        ctx.step_with("notify", retry, || async {
            self.app.notify(&id).await?;
            if t.notify_delay_ms > 0 {
                sleep(Duration::from_millis(t.notify_delay_ms)).await;
            }
            Ok::<_, A::Error>(())
        })
        .await?;
        let to_balance = ctx
            .transaction("credit", async move |tx| {
                A::apply(tx, &id, "credit", t.to, t.amount).await
            })
            .await?;
        Ok(Receipt {
            from_balance,
            to_balance,
        })
    }
}

/// Checks the exactly-once and at-least-once properties of finished
/// transfers: every workflow SUCCESS, one debit and one credit each, balances
/// as if each transfer applied once, each notification sent at least once
/// and never after its checkpoint.
pub async fn assert_transfers_exact<A: App>(
    bank: &Bank<A>,
    ids: &[String],
    transfers: &[TransferInput],
) {
    let workflows = bank.app.workflows().await;
    let ours: Vec<&WorkflowInfo> = workflows.iter().filter(|w| ids.contains(&w.id)).collect();
    assert_eq!(ours.len(), ids.len(), "every workflow exists once");
    for w in &ours {
        assert_eq!(w.status, Status::Success, "workflow {}", w.id);
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
    let notifications = bank.app.notifications().await;
    for id in ids {
        let sent: Vec<bool> = notifications
            .iter()
            .filter(|(w, _)| w == id)
            .map(|(_, existed)| *existed)
            .collect();
        assert!(!sent.is_empty(), "notification of {id} sent at least once");
        assert!(
            !sent.contains(&true),
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
    /// Writes that went out in a statement shared with other workflows'
    /// (the group commit).
    pub grouped: AtomicUsize,
    /// Of those, starts.
    pub grouped_starts: AtomicUsize,
    /// Hold every autocommit start, checkpoint and completion this long before
    /// sending it: writes arriving meanwhile queue behind it.
    pub write_delay_ms: std::sync::atomic::AtomicU64,
}

/// A storage wrapping another that counts commits and can lose commit
/// acknowledgements.
#[derive(Clone)]
pub struct Probe<S> {
    pub inner: S,
    pub state: Arc<ProbeState>,
}

impl<S> Probe<S> {
    pub fn new(inner: S) -> Probe<S> {
        Probe {
            inner,
            state: Arc::default(),
        }
    }

    fn commit(&self) {
        self.state.commits.fetch_add(1, Ordering::SeqCst);
    }

    async fn write_delay(&self) {
        let ms = self.state.write_delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            sleep(Duration::from_millis(ms)).await;
        }
    }

    fn background(&self) {
        self.state.background.fetch_add(1, Ordering::SeqCst);
    }

    fn read(&self) {
        self.state.reads.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct ProbeTx<T> {
    inner: T,
    state: Arc<ProbeState>,
}

impl<S: Storage> Storage for Probe<S> {
    type Tx = ProbeTx<S::Tx>;
    type Conn = S::Conn;
    type Listener = S::Listener;

    async fn listen(&self) -> StorageResult<Self::Listener> {
        self.inner.listen().await
    }

    async fn begin(&self) -> StorageResult<ProbeTx<S::Tx>> {
        Ok(ProbeTx {
            inner: self.inner.begin().await?,
            state: self.state.clone(),
        })
    }

    async fn migrate(&self) -> StorageResult<()> {
        self.inner.migrate().await
    }

    fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        S::classify(error)
    }

    async fn workflow_insert(&self, p: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        self.commit();
        self.write_delay().await;
        self.inner.workflow_insert(p).await
    }

    async fn workflow_get(&self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        self.read();
        self.inner.workflow_get(id).await
    }

    async fn workflow_complete(&self, p: WorkflowComplete) -> StorageResult<()> {
        self.commit();
        self.write_delay().await;
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

    async fn workflows_owned(&self, executor_id: &str) -> StorageResult<Vec<(String, i64)>> {
        self.background();
        self.inner.workflows_owned(executor_id).await
    }

    async fn workflow_enqueue(&self, p: WorkflowEnqueue) -> StorageResult<String> {
        self.commit();
        self.inner.workflow_enqueue(p).await
    }

    async fn steps_load(&self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        self.read();
        self.inner.steps_load(workflow_id).await
    }

    async fn step_get(&self, workflow_id: &str, step_id: i32) -> StorageResult<Option<StepRow>> {
        self.read();
        self.inner.step_get(workflow_id, step_id).await
    }

    async fn step_record(&self, p: StepRecord) -> StorageResult<StepRecorded> {
        self.commit();
        self.write_delay().await;
        self.inner.step_record(p).await
    }

    async fn workflow_insert_many(
        &self,
        p: Vec<WorkflowInsert>,
    ) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
        self.commit();
        self.state.grouped.fetch_add(p.len(), Ordering::SeqCst);
        self.state
            .grouped_starts
            .fetch_add(p.len(), Ordering::SeqCst);
        self.write_delay().await;
        self.inner.workflow_insert_many(p).await
    }

    async fn step_record_many(
        &self,
        p: Vec<StepRecord>,
    ) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
        self.commit();
        self.state.grouped.fetch_add(p.len(), Ordering::SeqCst);
        self.write_delay().await;
        self.inner.step_record_many(p).await
    }

    async fn workflow_complete_many(
        &self,
        p: Vec<WorkflowComplete>,
    ) -> StorageResult<Vec<StorageResult<()>>> {
        self.commit();
        self.state.grouped.fetch_add(p.len(), Ordering::SeqCst);
        self.write_delay().await;
        self.inner.workflow_complete_many(p).await
    }
}

impl<T: Transaction> Transaction for ProbeTx<T> {
    type Conn = T::Conn;

    fn conn(&mut self) -> &mut T::Conn {
        self.inner.conn()
    }

    tandem::forward_transaction!(
        inner;
        workflow_insert,
        workflow_get,
        workflow_complete,
        workflows_recover,
        steps_load,
        step_get,
        step_record,
        step_record_many,
        workflow_complete_many,
        workflow_insert_many,
        executor_register,
        executor_heartbeat,
        workflows_reclaim,
        workflows_claim,
        workflows_release,
        workflow_enqueue,
        workflow_suspend,
        message_send,
        message_take,
        recv_deadline,
        event_set,
        event_get,
        workflows_cancel,
        workflow_cancel_overdue,
        workflow_resume,
        workflow_fork,
        workflows_owned,
        workflows_list,
        workflow_info,
        steps_info,
        schedule_lock,
        schedule_advance,
        schedule_pause,
        schedules_list,
        workflows_gc,
        workflows_count,
        queues_info,
        executors_info,
        messages_info,
        events_info
    );

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

    async fn rollback(self) -> StorageResult<()> {
        self.inner.rollback().await
    }
}

/// An environment whose spawned tasks can all be aborted at once (an
/// in-process crash): the one `tandem::testing` gives users.
pub use tandem::testing::CrashEnv;
