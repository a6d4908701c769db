//! Tandem: durable workflows whose state lives in your own PostgreSQL database.
//!
//! A workflow is an async function made of steps. Each step's outcome is
//! checkpointed in the `tandem` schema of the application's database, and a
//! workflow interrupted by a crash resumes from its last checkpoint. Because
//! the checkpoints live next to the application's tables, a
//! **transactional step** commits the application's writes and its
//! checkpoint in one transaction: its effects happen exactly once, with no
//! idempotency keys in application code.
//!
//! # Quick start
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sqlx::PgConnection;
//! use tandem::{Engine, PgStorage, Workflow, WorkflowContext, WorkflowError};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Transfer { from: i64, to: i64, amount: i64 }
//!
//! struct TransferWorkflow;
//!
//! impl Workflow<PgStorage> for TransferWorkflow {
//!     // The persisted name: recovery finds the code by it.
//!     const NAME: &'static str = "transfer";
//!     type Input = Transfer;
//!     type Output = i64;
//!
//!     async fn run(&self, ctx: &mut WorkflowContext<PgStorage>, t: Transfer) -> Result<i64, WorkflowError> {
//!         // Exactly once: the UPDATE and the checkpoint commit together.
//!         ctx.transaction("debit", async move |tx: &mut PgConnection| {
//!             sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
//!                 .bind(t.amount).bind(t.from).execute(&mut *tx).await.map(drop)
//!         }).await?;
//!         // At least once, never again after its checkpoint: an external call.
//!         ctx.step("notify", || async { Ok::<_, std::io::Error>(()) }).await?;
//!         let balance = ctx.transaction("credit", async move |tx: &mut PgConnection| {
//!             sqlx::query_scalar::<_, i64>(
//!                 "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance",
//!             ).bind(t.amount).bind(t.to).fetch_one(&mut *tx).await
//!         }).await?;
//!         Ok(balance)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! # let (url, _cluster) = tandem::testing::database().await?;
//! // `url` is your application's database.
//! let storage = PgStorage::connect(&url).await?;
//! # sqlx::raw_sql("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint);
//! #               INSERT INTO accounts VALUES (1, 100), (2, 0);").execute(storage.pool()).await?;
//! let engine = Engine::builder(storage)
//!     .register(TransferWorkflow)
//!     .launch() // applies migrations, resumes unfinished workflows
//!     .await?;
//!
//! let handle = engine
//!     .start_with_id::<TransferWorkflow>("transfer-42", Transfer { from: 1, to: 2, amount: 25 })
//!     .await?;
//! assert_eq!(handle.result().await?, 25);
//!
//! // Starting the same ID again attaches to the first run: nothing runs twice.
//! let again = engine
//!     .start_with_id::<TransferWorkflow>("transfer-42", Transfer { from: 1, to: 2, amount: 25 })
//!     .await?;
//! assert_eq!(again.result().await?, 25);
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The guarantees, precisely: `docs/guarantees.md` in the repository.
//!
//! # Layout
//!
//! - [`engine`]: [`Engine`], its builder, starting workflows, execution,
//!   completion and recovery.
//! - [`workflow`]: the [`Workflow`] trait.
//! - [`admin`]: [`Admin`]: list, inspect, cancel, resume and fork workflows,
//!   send messages, read events.
//! - [`context`]: [`WorkflowContext`], the steps a workflow body runs.
//! - [`queue`]: [`Queue`] declarations and [`EnqueueOptions`].
//! - [`retry`]: [`RetryPolicy`] for plain steps.
//! - [`schedule`]: cron [`Schedule`]s, their [`CatchUp`] policy and the
//!   [`ScheduledTick`] a scheduled workflow receives.
//! - [`storage`]: the [`Storage`] seam; [`storage::postgres`] is the
//!   PostgreSQL backend (the only place with SQL), [`storage::memory`]
//!   ([`MemStorage`]) an in-memory model of PostgreSQL READ COMMITTED for the
//!   simulator and server-less tests.
//! - [`env`](mod@env): [`Env`], the injected clock, timers, spawner and seed.
//! - [`error`]: [`Error`] and [`WorkflowError`].
//! - [`replay`]: replay checks: [`Engine::replay`] of one run, and
//!   [`replay::Replayer::check`], which finds the unfinished runs a new
//!   version of the code would break, also as a command
//!   ([`replay::Replayer::check_command`]). With application versions
//!   ([`EngineBuilder::version`]) and patches
//!   ([`WorkflowContext::patched`]) it is how workflows change while runs
//!   are in flight (`docs/versioning.md`).
//! - `testing` (feature `testing`): throw-away PostgreSQL clusters for tests
//!   and examples, and `CrashTest`, which crash-tests your own workflows
//!   (`docs/testing-your-workflows.md`).

pub mod admin;
#[doc(hidden)]
pub mod bugs;
pub mod context;
pub mod engine;
pub mod env;
pub mod error;
#[cfg(feature = "postgres")]
mod outbox;
pub mod payload;
pub mod queue;
pub mod replay;
pub mod retry;
mod runtime;
pub mod schedule;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "ui")]
pub mod ui;
pub mod workflow;

pub use admin::{Admin, WorkflowDetail};
pub use context::{ChildHandle, WorkflowContext};
pub use engine::{Engine, EngineBuilder, GROUP_COMMIT_DEFAULT, StartOptions, WorkflowHandle};
pub use env::{Env, TokioEnv};
pub use error::{Error, WorkflowError};
pub use queue::{EnqueueOptions, Queue};
pub use retry::RetryPolicy;
pub use schedule::{CatchUp, Schedule, ScheduledTick};
pub use storage::memory::MemStorage;
#[cfg(feature = "postgres")]
pub use storage::postgres::PgStorage;
pub use storage::{ErrorKind, Status, Storage, StorageError};
pub use workflow::Workflow;
