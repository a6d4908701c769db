//! The Rust side of the outbox on PostgreSQL: enqueue a workflow or send a
//! message inside the application's own sqlx transaction. Typed API over
//! the backend's statements, kept here so that the backend imports nothing
//! from the engine above it.

use sqlx::PgConnection;

use crate::error::Error;
use crate::payload;
use crate::queue::EnqueueOptions;
use crate::storage::postgres::{self, PgStorage};
use crate::workflow::Workflow;

impl PgStorage {
    /// Enqueues workflow `W` inside the caller's transaction (the Rust side
    /// of the outbox): it exists if and only if that transaction commits.
    /// Same validation and deduplication as `tandem.enqueue_workflow`, which
    /// it calls. Returns the workflow ID.
    ///
    /// A validation error aborts the caller's transaction like any failed
    /// statement; wrap the call in a savepoint to recover from it.
    pub async fn enqueue_in<W: Workflow<PgStorage>>(
        conn: &mut PgConnection,
        input: &W::Input,
        options: EnqueueOptions,
    ) -> Result<String, Error> {
        let input = payload::encode(input, || format!("input of workflow {:?}", W::NAME))?;
        let params = options.into_params(W::NAME, input);
        Ok(postgres::workflow_enqueue(conn, params).await?)
    }

    /// Sends a message to a workflow inside the caller's transaction: it is
    /// delivered if and only if that transaction commits (the SQL function
    /// `tandem.send`).
    pub async fn send_in<T: serde::Serialize>(
        conn: &mut PgConnection,
        workflow_id: &str,
        topic: &str,
        message: &T,
    ) -> Result<(), Error> {
        let payload = payload::encode(message, || format!("message on topic {topic:?}"))?;
        Ok(postgres::message_send(conn, workflow_id, topic, &payload).await?)
    }
}
