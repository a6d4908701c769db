//! What both storage backends must agree on, written once so that they
//! cannot drift: the SQLSTATE classification, the fencing error, the limits
//! and constants that the schema, the SQL functions and the engine share.
//!
//! The PostgreSQL side of each constant lives in `migrations/` (a column
//! default, a check in `tandem.enqueue_workflow`); the tests in this module
//! and the conformance suite hold the two together.

use super::{ErrorKind, StorageError, StorageResult};

/// The queue of workflows started locally, and of enqueues that name none
/// (the column default of `tandem.workflows.queue`).
pub const DEFAULT_QUEUE: &str = "default";

/// The longest accepted workflow ID, in characters (as the SQL function
/// `tandem.enqueue_workflow` counts them: every path accepts the same IDs).
pub const WORKFLOW_ID_MAX_CHARS: usize = 256;

/// The longest accepted concurrency key, in characters (as the SQL function
/// counts them).
pub const CONCURRENCY_KEY_MAX_CHARS: usize = 256;

/// The default `payload_max_bytes`: 1 MiB of JSON.
pub const PAYLOAD_MAX_BYTES_DEFAULT: usize = 1 << 20;

/// The owner epoch of a workflow that no execution has run: an enqueued one
/// (the column default), and the epoch of checkpoints copied by a fork,
/// which replay for every execution of the copy.
pub const EPOCH_NEVER_RAN: i64 = 0;

/// The owner epoch of a workflow's first execution: a local start runs
/// under it, and a claim of a never-run workflow bumps it there. A claimed
/// row at this epoch has no history to load; so a fork, whose copy has
/// checkpoints, inserts its copy at this epoch (the claim makes it 2).
pub const EPOCH_FIRST: i64 = 1;

/// Checks what every backend's `step_record` assumes of its parameters:
/// exactly one of output and error (debug builds; the engine builds them in
/// one place that guarantees it).
pub(crate) fn debug_check_step_record(p: &super::StepRecord) {
    debug_assert!(
        p.output.is_some() != p.error.is_some(),
        "step {} of {} must have exactly one of output and error",
        p.step_id,
        p.workflow_id
    );
}

/// Checks what every backend's `step_record_many` and
/// `workflow_complete_many` assume: the entries name distinct workflows
/// (one statement cannot report two inserts of one key apart), and no
/// checkpoint changes the run's version (debug builds).
pub(crate) fn debug_check_many<'a>(ids: impl Iterator<Item = &'a str>, versioned: bool) {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        debug_assert!(seen.insert(id), "workflow {id} twice in one group commit");
    }
    debug_assert!(
        !versioned,
        "a version-changing checkpoint in a group commit"
    );
}

/// Checks what every backend's `workflow_complete` assumes: the status it
/// records is terminal (debug builds).
pub(crate) fn debug_check_completion(p: &super::WorkflowComplete) {
    debug_assert!(
        p.status.is_terminal(),
        "completion of {} with the non-terminal status {}",
        p.id,
        p.status
    );
}

/// The one mapping from a SQLSTATE to the [`ErrorKind`] the engine's retry
/// logic reads, for PostgreSQL's errors and the memory model's alike.
pub fn classify_sqlstate(code: &str) -> ErrorKind {
    match code {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => ErrorKind::Conflict,
        // admin_shutdown, crash_shutdown, cannot_connect_now (57P), and the
        // connection_exception class (08): the server went away.
        _ if code.starts_with("57P") || code.starts_with("08") => ErrorKind::Unavailable,
        // data_exception, integrity_constraint_violation,
        // program_limit_exceeded (an oversized payload)
        _ if ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class)) =>
        {
            ErrorKind::Invalid
        }
        // insufficient_privilege
        "42501" => ErrorKind::Denied,
        // Tandem's own: the checkpoint fence's re-check after the insert
        // (migrations/0012_step_fence.sql).
        STEP_FENCED_SQLSTATE => ErrorKind::Fenced,
        _ => ErrorKind::Other,
    }
}

/// The reason a workflow cancelled for its deadline records (its error
/// column; a parent awaiting a child recognizes it).
pub const DEADLINE_EXCEEDED: &str = "deadline exceeded";

/// The outcome of a deadline's fenced cancel, from what its cascade
/// cancelled: the root first, or nothing when the execution no longer owns
/// the workflow (then fenced).
pub(crate) fn overdue_cancelled(id: &str, cancelled: Vec<String>) -> StorageResult<Vec<String>> {
    if cancelled.first().map(String::as_str) != Some(id) {
        return Err(fenced(id));
    }
    Ok(cancelled)
}

/// Why a resume failed whole: a workflow it would re-enqueue has a
/// `dedup_key` that another unfinished workflow of its queue took meanwhile
/// (the partial unique index `workflows_dedup` allows one).
pub fn resume_dedup_held(workflow_id: &str) -> String {
    format!(
        "workflow {workflow_id:?} cannot be resumed: another unfinished workflow of its queue \
         holds the dedup_key of a workflow it would resume; resume it once that one has finished"
    )
}

/// The SQLSTATE of a checkpoint whose fence failed its re-check after the
/// insert (the trigger `tandem.steps_fence`).
pub const STEP_FENCED_SQLSTATE: &str = "TDF01";

/// The error of a write by an execution that no longer owns its workflow.
pub fn fenced(workflow_id: &str) -> StorageError {
    StorageError::new(
        ErrorKind::Fenced,
        format!("workflow {workflow_id:?} is no longer owned by this execution"),
    )
}

/// Whether `jsonb` refuses JSON text: a string holding NUL (`\u0000`;
/// PostgreSQL fails the whole statement with 22P05). Exact on valid JSON
/// (outside strings there are no backslashes, and inside them every escape
/// is skipped whole); on other text it never panics, and may flag a literal
/// `\u0000` there too.
pub fn jsonb_refuses(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        if bytes[i + 1..].starts_with(b"u0000") {
            return true;
        }
        // `\uXXXX` or a one-character escape: never a NUL, skip it.
        i += if bytes.get(i + 1) == Some(&b'u') {
            6
        } else {
            2
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify_by_class() {
        let cases = [
            ("40001", ErrorKind::Conflict),
            ("40P01", ErrorKind::Conflict),
            ("08006", ErrorKind::Unavailable),
            ("57P01", ErrorKind::Unavailable),
            ("22023", ErrorKind::Invalid),
            ("22P02", ErrorKind::Invalid),
            ("23505", ErrorKind::Invalid),
            ("54000", ErrorKind::Invalid),
            ("42501", ErrorKind::Denied),
            ("55P03", ErrorKind::Other),
            ("25P02", ErrorKind::Other),
            // A raised code outside those classes (RAISE's default P0001,
            // an undefined function) is not bad input: before the shared
            // layer the memory model called every raised code but 40001
            // invalid, PostgreSQL's mapping did not.
            ("P0001", ErrorKind::Other),
            ("42883", ErrorKind::Other),
            ("40003", ErrorKind::Other),
        ];
        for (code, kind) in cases {
            assert_eq!(classify_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn jsonb_refuses_only_an_escaped_nul() {
        assert!(jsonb_refuses(r#"{"a":"x\u0000"}"#));
        assert!(!jsonb_refuses(r#"{"a":"x\\u0000"}"#));
        assert!(!jsonb_refuses(r#"{"a":"\u0001\n"}"#));
        assert!(!jsonb_refuses("\\"));
    }
}
