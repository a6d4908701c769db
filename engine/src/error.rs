//! Errors: the engine's typed [`Error`] and the [`WorkflowError`] that
//! workflow bodies return.

use std::fmt;

use crate::storage::{ErrorKind, StorageError};

/// How a recorded workflow error caused by [`Error::NonDeterminism`] starts
/// (its message's stable prefix; `CrashTest` flags such workflows).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) const NON_DETERMINISM_PREFIX: &str = "non-deterministic workflow:";

/// Everything that can go wrong when using the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No workflow with this name is registered on this engine.
    #[error("unknown workflow {name:?}: register it on the engine before starting it")]
    UnknownWorkflow {
        /// The name that was asked for.
        name: String,
    },
    /// A workflow ID already names a run of a different workflow.
    #[error("workflow ID {id:?} already belongs to workflow {existing:?}, not {requested:?}")]
    WorkflowConflict {
        /// The workflow ID.
        id: String,
        /// The name of the workflow that owns the ID.
        existing: String,
        /// The name that was asked for.
        requested: String,
    },
    /// No workflow with this ID exists.
    #[error("no workflow with ID {id:?}")]
    WorkflowNotFound {
        /// The workflow ID.
        id: String,
    },
    /// A workflow ID is empty, longer than `WORKFLOW_ID_MAX_CHARS`, or holds
    /// a NUL character.
    #[error("invalid workflow ID {id:?}: it must be 1 to 256 characters, none of them NUL")]
    InvalidWorkflowId {
        /// The rejected ID.
        id: String,
    },
    /// An input, output or step payload exceeds the configured limit.
    #[error("{what} is {size} bytes, over the limit of {max} bytes")]
    PayloadTooLarge {
        /// Which payload (for example `workflow input`).
        what: String,
        /// Its size once encoded as JSON.
        size: usize,
        /// The engine's `payload_max_bytes`.
        max: usize,
    },
    /// A payload holds what PostgreSQL's `jsonb` cannot store (a NUL
    /// character, `\u0000`), refused on every backend alike.
    #[error("{what} cannot be stored: {reason}")]
    UnstorablePayload {
        /// Which payload.
        what: String,
        /// Why.
        reason: &'static str,
    },
    /// A payload could not be encoded as JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// Which payload.
        what: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// A recorded payload does not decode into the type the code expects.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// Which payload.
        what: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// Replay reached a step whose name differs from the recorded one.
    #[error(
        "non-deterministic workflow: step {step_id} was recorded as {recorded:?} but the code now calls {current:?}"
    )]
    NonDeterminism {
        /// The step's position in the workflow (0-based).
        step_id: i32,
        /// The name in the recorded history.
        recorded: String,
        /// The name the code asked for on replay.
        current: String,
    },
    /// A step failed (after its retries); the failure is recorded and
    /// replayed like an output.
    #[error("step {step_id} ({name:?}) failed: {message}")]
    StepFailed {
        /// The step's position in the workflow.
        step_id: i32,
        /// The step's name.
        name: String,
        /// The recorded error message.
        message: String,
    },
    /// The workflow finished with an error; the message is the recorded one.
    #[error("workflow {id:?} failed: {message}")]
    WorkflowFailed {
        /// The workflow ID.
        id: String,
        /// The recorded error message.
        message: String,
    },
    /// Another executor owns the workflow now; this execution stopped.
    #[error("workflow {workflow_id:?} is owned by another execution (fenced)")]
    Fenced {
        /// The workflow ID.
        workflow_id: String,
    },
    /// A replay check (`Engine::replay`) reached a step beyond the recorded
    /// history; the body stopped there.
    #[error("replay reached step {step_id} ({name:?}), beyond the recorded history")]
    ReplayEnded {
        /// The step's ID.
        step_id: i32,
        /// The name the code calls it by.
        name: String,
    },
    /// The engine is shutting down; the workflow stopped at a step boundary
    /// and resumes on the next start.
    #[error("the engine is shutting down")]
    Shutdown,
    /// The workflow handed itself back to its queue for a long sleep; it
    /// continues on whichever executor claims it after the wake-up time.
    #[error("the workflow is suspended until its sleep ends")]
    Suspended,
    /// The workflow passed its deadline and was cancelled (with its
    /// children).
    #[error("workflow {workflow_id:?} passed its deadline and was cancelled")]
    DeadlineExceeded {
        /// The workflow ID.
        workflow_id: String,
    },
    /// The workflow was cancelled; the reason is the recorded one.
    #[error("workflow {id:?} was cancelled: {reason}")]
    WorkflowCancelled {
        /// The workflow ID.
        id: String,
        /// Why (`cancelled`, `deadline exceeded`, ...).
        reason: String,
    },
    /// A management action does not apply to the workflow's status.
    #[error("cannot {action} workflow {id:?}: its status is {status}")]
    InvalidTransition {
        /// The workflow ID.
        id: String,
        /// Its current status.
        status: String,
        /// What was asked (`resume`, ...).
        action: &'static str,
    },
    /// A schedule declaration is malformed (its cron expression, time zone,
    /// name or queue), or no schedule has the name given to a management
    /// call.
    #[error("schedule {name:?}: {reason}")]
    InvalidSchedule {
        /// The schedule's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A trace context given to a start or an enqueue is not a W3C
    /// `traceparent`.
    #[error("invalid trace parent {value:?}: {reason}")]
    InvalidTraceParent {
        /// The value given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The storage failed in a way the engine could not retry around.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// The storage-level kind of this error, for retry decisions.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage(e) => e.kind(),
            Error::Fenced { .. } => ErrorKind::Fenced,
            Error::UnknownWorkflow { .. }
            | Error::WorkflowConflict { .. }
            | Error::InvalidWorkflowId { .. }
            | Error::InvalidTransition { .. }
            | Error::InvalidSchedule { .. }
            | Error::InvalidTraceParent { .. }
            | Error::PayloadTooLarge { .. }
            | Error::UnstorablePayload { .. }
            | Error::Encode { .. }
            | Error::Decode { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Other,
        }
    }

    /// Whether this error interrupts an execution rather than ending the
    /// workflow: the engine records nothing for it.
    pub(crate) fn is_interrupt(&self) -> bool {
        matches!(
            self,
            Error::Fenced { .. }
                | Error::Shutdown
                | Error::Suspended
                | Error::ReplayEnded { .. }
                | Error::DeadlineExceeded { .. }
        )
    }
}

/// The error a workflow body returns: any error, like `anyhow::Error`.
///
/// `?` converts every `std::error::Error` into it, including the engine's
/// own [`Error`] from a step. When a workflow returns it, its message is
/// recorded as the workflow's error, unless it is an interruption (fencing or
/// shutdown), which the engine recognizes and never records.
pub struct WorkflowError {
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl WorkflowError {
    /// An error from a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            inner: message.to_string().into(),
        }
    }

    /// The engine error inside, if this is one.
    pub fn as_engine_error(&self) -> Option<&Error> {
        self.inner.downcast_ref::<Error>()
    }

    /// The underlying error, for downcasting.
    pub fn as_dyn(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    pub(crate) fn is_interrupt(&self) -> bool {
        self.as_engine_error().is_some_and(Error::is_interrupt)
    }
}

impl<E> From<E> for WorkflowError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self {
            inner: Box::new(error),
        }
    }
}

impl fmt::Debug for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_determinism_error_starts_with_the_prefix_crash_tests_look_for() {
        let e = Error::NonDeterminism {
            step_id: 3,
            recorded: "a".into(),
            current: "b".into(),
        };
        assert!(e.to_string().starts_with(NON_DETERMINISM_PREFIX), "{e}");
    }
}
