//! Quick start: a bank transfer as a durable workflow, crashed half-way and
//! recovered with the ledger exactly right.
//!
//! Run it with `cargo run -p tandem --example quickstart`. It uses the
//! database in `DATABASE_URL` if set; otherwise it starts a throw-away
//! PostgreSQL cluster (from the installed server binaries) and removes it at
//! the end.
//!
//! What happens:
//! 1. A child process starts the transfer. The debit, a transactional step,
//!    commits the balance change and its checkpoint together. Then the child
//!    dies (`abort`) in the middle of the notification step.
//! 2. This process launches an engine with the same executor ID. It finds
//!    the unfinished workflow, replays the debit from its checkpoint (it does
//!    not run again), sends the notification and runs the credit.

use std::process::Command;

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tandem::{Engine, PgStorage, Workflow, WorkflowContext, WorkflowError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TransferRequest {
    from: String,
    to: String,
    amount: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    from_balance: i64,
    to_balance: i64,
}

/// The workflow: debit, notify, credit.
struct Transfer {
    /// Set in the child process: die during the notification.
    crash_in_notify: bool,
}

impl Workflow<PgStorage> for Transfer {
    const NAME: &'static str = "quickstart.transfer";
    type Input = TransferRequest;
    type Output = Receipt;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        req: TransferRequest,
    ) -> Result<Receipt, WorkflowError> {
        // Transactional step: the UPDATE and the step's checkpoint commit in
        // one transaction, so the debit happens exactly once.
        let (from, amount) = (req.from.clone(), req.amount);
        let from_balance = ctx
            .transaction("debit", async move |tx| {
                add_to_balance(tx, &from, -amount).await
            })
            .await?;

        // Plain step: an external call, outside any transaction. It runs at
        // least once, and never again once its checkpoint is written.
        ctx.step("notify", || async {
            println!(
                "  notify: sending \"{} sent you {}\" to {}",
                req.from, req.amount, req.to
            );
            if self.crash_in_notify {
                println!("  (child process crashing now, after the debit committed)");
                std::process::abort();
            }
            Ok::<_, std::io::Error>(())
        })
        .await?;

        let (to, amount) = (req.to.clone(), req.amount);
        let to_balance = ctx
            .transaction("credit", async move |tx| {
                add_to_balance(tx, &to, amount).await
            })
            .await?;
        Ok(Receipt {
            from_balance,
            to_balance,
        })
    }
}

/// Ordinary sqlx on the step's transaction.
async fn add_to_balance(tx: &mut PgConnection, account: &str, delta: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "UPDATE quickstart_accounts SET balance = balance + $1 WHERE name = $2 RETURNING balance",
    )
    .bind(delta)
    .bind(account)
    .fetch_one(tx)
    .await
}

async fn balances(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    let rows: Vec<i64> = sqlx::query_scalar(
        "SELECT balance FROM quickstart_accounts WHERE name IN ('alice', 'bob') ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok((rows[0], rows[1]))
}

async fn engine(url: &str, crash_in_notify: bool) -> anyhow::Result<Engine<PgStorage>> {
    let storage = PgStorage::connect(url).await?;
    let engine = Engine::builder(storage)
        .executor_id("quickstart")
        .register(Transfer { crash_in_notify })
        .launch()
        .await?;
    Ok(engine)
}

const CHILD_ENV: &str = "TANDEM_QUICKSTART_CHILD";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The child process: start the transfer and crash inside it.
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let (url, id) = args.split_once(' ').context("child arguments")?;
        let engine = engine(url, true).await?;
        let request = TransferRequest {
            from: "alice".into(),
            to: "bob".into(),
            amount: 25,
        };
        engine
            .start_with_id::<Transfer>(id, request)
            .await?
            .result()
            .await?;
        unreachable!("the child crashes during the workflow");
    }

    let (url, _cluster) = tandem::testing::database().await?;
    let pool = PgPool::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS quickstart_accounts (name text PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO quickstart_accounts VALUES ('alice', 100), ('bob', 0) ON CONFLICT DO NOTHING;",
    )
    .execute(&pool)
    .await?;
    let before = balances(&pool).await?;
    // A fresh ID per run, so the example can run again on the same database.
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'tandem' AND table_name = 'workflows'",
    )
    .fetch_one(&pool)
    .await?;
    let id = if runs == 0 {
        "transfer-1".to_owned()
    } else {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) + 1 FROM tandem.workflows WHERE name = 'quickstart.transfer'",
        )
        .fetch_one(&pool)
        .await?;
        format!("transfer-{n}")
    };
    println!("balances before: alice {}, bob {}", before.0, before.1);

    println!("1. a child process starts workflow {id} and crashes in the middle");
    let status = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, format!("{url} {id}"))
        .status()?;
    ensure!(!status.success(), "the child was supposed to crash");
    let mid = balances(&pool).await?;
    println!(
        "   after the crash: alice {}, bob {} (debited, not yet credited)",
        mid.0, mid.1
    );

    println!("2. a new engine with the same executor ID recovers it");
    let engine = engine(&url, false).await?;
    let receipt: Receipt = engine.handle(&id).result().await?;
    println!("   workflow {id} finished: {receipt:?}");
    engine.shutdown().await;

    let after = balances(&pool).await?;
    println!("balances after: alice {}, bob {}", after.0, after.1);
    ensure!(
        after == (before.0 - 25, before.1 + 25),
        "the ledger is off: the debit or credit did not happen exactly once"
    );
    println!("the debit and the credit each happened exactly once");
    Ok(())
}
