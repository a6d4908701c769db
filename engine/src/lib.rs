//! Tandem: durable workflows whose state lives in your own PostgreSQL database.

pub mod context;
pub mod engine;
pub mod env;
pub mod error;
pub mod retry;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workflow;

pub use context::WorkflowContext;
pub use engine::{Engine, EngineBuilder, WorkflowHandle};
pub use env::{Env, TokioEnv};
pub use error::{Error, WorkflowError};
pub use retry::RetryPolicy;
#[cfg(feature = "postgres")]
pub use storage::postgres::PgStorage;
pub use storage::{ErrorKind, Status, Storage, StorageError};
pub use workflow::Workflow;
