//! Workflow definitions: the [`Workflow`] trait and the type-erased registry
//! entry the engine runs from stored JSON.
//!
//! A deliberate circle with `context`: a workflow body receives a
//! [`WorkflowContext`], and the context starts child workflows by their
//! `Workflow` type.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::WorkflowContext;
use crate::error::{Error, WorkflowError};
use crate::payload;
use crate::storage::Storage;

/// A durable workflow: a deterministic function of its input and of the
/// recorded outputs of its steps.
///
/// The body may be executed more than once (replay after a crash), so
/// everything it does outside [`WorkflowContext`] steps must be deterministic:
/// no clocks, no randomness, no I/O. Steps are where effects happen.
///
/// ```
/// use tandem::{PgStorage, Workflow, WorkflowContext, WorkflowError};
///
/// struct Greet;
///
/// impl Workflow<PgStorage> for Greet {
///     const NAME: &'static str = "greet";
///     type Input = String;
///     type Output = String;
///
///     async fn run(
///         &self,
///         ctx: &mut WorkflowContext<PgStorage>,
///         name: String,
///     ) -> Result<String, WorkflowError> {
///         let greeting = ctx
///             .step("compose", || async { Ok::<_, std::io::Error>(format!("hello, {name}")) })
///             .await?;
///         Ok(greeting)
///     }
/// }
/// ```
pub trait Workflow<S: Storage>: Send + Sync + 'static {
    /// The persisted name. It is stored with every run and used to find the
    /// code on recovery, so renaming a workflow strands its unfinished runs.
    const NAME: &'static str;
    /// The input, stored as JSON.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The output, stored as JSON.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The body. Returning `Err` records the error's message as the
    /// workflow's terminal error.
    fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, WorkflowError>> + Send;
}

/// A boxed future borrowing the workflow and its context.
pub(crate) type RunFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, WorkflowError>> + Send + 'a>>;

/// A registered workflow with JSON at both ends.
pub(crate) trait ErasedWorkflow<S: Storage>: Send + Sync {
    fn run_json<'a>(&'a self, ctx: &'a mut WorkflowContext<S>, input: &'a str) -> RunFuture<'a>;

    /// Checks that `input` decodes into the workflow's input type.
    fn check_input(&self, input: &str) -> Result<(), Error>;

    /// The JSON types (as `jsonb_typeof` names them) the input decodes from.
    fn input_types(&self) -> Vec<&'static str>;
}

/// Probes which JSON types an input type accepts: a type rejects a JSON
/// value of the wrong type with serde's "invalid type" error, whereas an
/// accepted type fails (if at all) only on content (a missing field, a wrong
/// length). This lets the SQL function reject, say, a string for a workflow
/// that takes a struct, inside the caller's transaction.
fn json_types_of<T: DeserializeOwned>() -> Vec<&'static str> {
    const SAMPLES: [(&str, &str); 6] = [
        ("object", "{}"),
        ("array", "[]"),
        ("string", "\"\""),
        ("number", "0"),
        ("boolean", "false"),
        ("null", "null"),
    ];
    SAMPLES
        .iter()
        .filter(|(_, sample)| match serde_json::from_str::<T>(sample) {
            Ok(_) => true,
            Err(e) => !e.to_string().starts_with("invalid type"),
        })
        .map(|(name, _)| *name)
        .collect()
}

fn decode_input<S: Storage, W: Workflow<S>>(input: &str) -> Result<W::Input, Error> {
    payload::decode(input, || format!("input of workflow {:?}", W::NAME))
}

impl<S: Storage, W: Workflow<S>> ErasedWorkflow<S> for W {
    fn run_json<'a>(&'a self, ctx: &'a mut WorkflowContext<S>, input: &'a str) -> RunFuture<'a> {
        Box::pin(async move {
            let input = decode_input::<S, W>(input)?;
            let output = self.run(ctx, input).await?;
            // Checked for storability and size by the caller, which records
            // a failure of either as the workflow's error.
            let json = payload::to_json(&output, || format!("output of workflow {:?}", W::NAME))?;
            Ok(json)
        })
    }

    fn check_input(&self, input: &str) -> Result<(), Error> {
        decode_input::<S, W>(input).map(drop)
    }

    fn input_types(&self) -> Vec<&'static str> {
        json_types_of::<W::Input>()
    }
}

#[cfg(test)]
mod tests {
    use super::json_types_of;

    // Only deserialized: its type is what the probe reads.
    #[derive(serde::Deserialize)]
    #[expect(
        dead_code,
        reason = "the field is read by no one; only its type matters"
    )]
    struct Order {
        id: i64,
    }

    #[test]
    fn input_json_types_are_probed_from_the_type() {
        assert_eq!(json_types_of::<Order>(), ["object", "array"]);
        assert_eq!(json_types_of::<String>(), ["string"]);
        assert_eq!(json_types_of::<(String, u32)>(), ["array"]);
        assert_eq!(json_types_of::<i64>(), ["number"]);
        assert_eq!(json_types_of::<Option<i64>>(), ["number", "null"]);
        assert_eq!(json_types_of::<()>(), ["null"]);
        assert_eq!(json_types_of::<serde_json::Value>().len(), 6);
    }
}
