//! Deterministic simulation of the tandem engine: madsim nodes as
//! executors, the memory backend as the shared database, faults drawn from
//! a seed, invariants checked after every run. See `docs/simulation.md`.
//!
//! Compiled only with `--cfg madsim` (set for the workspace in
//! `.cargo/config.toml`); without it the crate is empty and the guard test
//! in `tests/sim/guard.rs` fails with an explanation.
//!
//! One deliberate circle among the modules: `world` (the shared state of a
//! run) holds the `workload` it runs, the workload's workflows run on
//! `storage` (they are `Workflow<SimStorage>`) and report their external
//! calls to the world, and `storage` reports what executions loaded and
//! committed to the world. They are one simulated system; `env` only reads
//! the world's clock and `run` ties them together.
#![cfg(madsim)]

pub mod admission;
pub mod debounce;
pub mod env;
pub mod faults;
pub mod history;
pub mod metrics;
pub mod retention;
pub mod run;
pub mod schedules;
pub mod storage;
pub mod traces;
pub mod versions;
pub mod workload;
pub mod world;

pub use faults::{Plan, Scheduled, Site};
pub use run::{Options, Report, run_seed, simulate};
pub use tandem::bugs::Bug;
pub use workload::Generation;

/// The operations the default sweep must perform at least once (its
/// coverage table in `docs/simulation.md`): every storage operation by its
/// trait name, every context operation, the `Admin` and `Engine` calls.
pub const OPERATIONS: &[&str] = &[
    "begin",
    "commit",
    "rollback",
    "workflow_insert",
    "workflow_insert_many",
    "workflow_get",
    "workflow_complete",
    "workflow_complete_many",
    "workflows_recover",
    "steps_load",
    "step_get",
    "step_record",
    "step_record_many",
    "executor_register",
    "executor_heartbeat",
    "workflows_reclaim",
    "workflows_claim",
    "workflows_release",
    "workflow_enqueue",
    "workflow_suspend",
    "message_send",
    "message_take",
    "recv_deadline",
    "event_set",
    "event_get",
    "workflows_cancel",
    "workflow_cancel_overdue",
    "workflow_resume",
    "workflow_fork",
    "workflows_owned",
    "workflows_list",
    "workflow_info",
    "steps_info",
    "schedule_lock",
    "schedule_advance",
    "schedule_pause",
    "workflows_gc",
    "ctx.transaction",
    "ctx.step",
    "ctx.step_with",
    "ctx.sleep (short)",
    "ctx.sleep (suspending)",
    "ctx.recv (message)",
    "ctx.recv (timeout)",
    "ctx.set_event",
    "ctx.start_child + ctx.child_result",
    "admin.cancel",
    "admin.resume",
    "admin.fork",
    "admin.get_event",
    "admin.get_workflow",
    "admin.list_workflows",
    "engine.start_with_id",
    "engine.start_with_timeout",
    "engine.shutdown",
    "admin.pause_schedule",
    "admin.resume_schedule",
    "schedule.tick_run",
];

/// What the admission generation must be seen doing in a default-size run
/// (the sweep fails if one is never observed): a claim choosing by priority
/// over age, a claim at the rate limit, a claim after a delay, a
/// deduplicated enqueue, a deadline cancelling a workflow, a receive timing
/// out at the time an earlier execution's wait recorded.
pub const ADMISSION_OBSERVED: &[&str] = &[
    // Group commit: a statement carried several workflows' writes, and a
    // group's statement failed (its writes went out alone).
    "group.shared",
    "group.failed",
    "claim.priority_over_age",
    "claim.rate_limit_reached",
    "claim.per_key_limit_reached",
    // Debounce: a call replaced a pending workflow's input, and a key's
    // call started another workflow once an earlier one had started.
    "debounce.replaced",
    "debounce.new_after_start",
    "claim.after_run_after",
    "enqueue.deduplicated",
    "deadline.cancelled",
    "recv.timeout_kept_across_executions",
    // Versioned deploys: a run of `v1` finished by `v2` code down its old
    // path (`patched` false), a `v1` run that reached the patch under `v2`
    // and took the new one, and an executor's recovery handing back a run
    // of a version its new code does not accept.
    "patch.old_path",
    "patch.new_path_for_v1",
    // Schedules: a firing that ran missed ticks; retention: a deletion,
    // one of a child with its parent.
    "schedule.missed_tick_caught_up",
    "gc.deleted_workflow",
    "gc.deleted_child_with_parent",
    "recover.handed_back_version",
];
