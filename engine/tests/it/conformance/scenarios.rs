//! Storage-level concurrency scenarios, each run on PostgreSQL and on the
//! memory model and compared step by step with one expected log (blocked or
//! not, rows returned, error SQLSTATE, final tables), in the manner of
//! PostgreSQL's isolation tests. The expectations are what PostgreSQL 15
//! does; the model must match them.

use tandem::MemStorage;
use tandem::storage::memory::{Defect, RowLock};

use super::harness::{Backend, Mem, Op, Pg, Setup, run};

type Scenario = (Setup, Vec<(usize, Op)>, &'static str);

/// Instantiates each scenario on both backends.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn pg() {
                check(&Pg::open().await, super::$name()).await;
            }

            #[tokio::test]
            async fn mem() {
                check(&Mem::new(MemStorage::new()), super::$name()).await;
            }
        }
    )*};
}

scenarios!(
    skip_locked_claims_skip_each_other_but_not_their_own_locks,
    a_for_update_claim_after_a_wait_returns_the_next_row,
    a_claim_without_a_row_lock_double_claims,
    a_claim_without_a_row_lock_but_rechecked_claims_nothing,
    read_then_write_loses_an_update_under_read_committed,
    an_increment_after_a_wait_applies_to_the_newest_version,
    nowait_fails_at_once_on_a_locked_row,
    a_deadlock_aborts_the_longest_waiter,
    a_concurrent_checkpoint_insert_waits_then_exists,
    a_concurrent_checkpoint_insert_proceeds_after_an_abort,
    a_concurrent_start_of_one_id_waits_then_attaches,
    a_second_inserter_gets_a_unique_violation_after_a_wait,
    on_conflict_do_nothing_after_a_wait_does_nothing,
    a_dropped_connection_rolls_back,
    an_epoch_bump_fences_a_concurrent_completion,
    the_checkpoint_fence_reads_the_statement_snapshot,
    a_checkpoint_that_waited_checks_its_fence_again,
    a_group_of_checkpoints_answers_each_by_its_own_fence,
    a_group_of_starts_waits_for_a_concurrent_start_then_attaches,
    a_group_of_completions_answers_each_by_its_own_fence,
    a_group_whose_checkpoint_fails_its_recheck_fails_as_a_whole,
    enqueue_validates_in_order_and_is_idempotent_on_the_id,
    an_enqueue_with_a_held_dedup_key_waits_then_returns_the_holder,
    concurrent_claims_skip_each_others_rows,
    claims_take_accepted_versions_and_recovery_hands_the_others_back,
    per_key_claims_take_one_per_key_and_wait_for_the_queue,
    debounced_enqueues_replace_the_pending_input_and_wait_for_each_other,
    reclaim_rechecks_a_lease_renewed_while_it_waited,
    schedule_firings_skip_each_other_and_a_pause_waits_for_the_firing,
    owned_rows_are_the_committed_running_ones_of_the_executor,
    a_step_is_read_by_key_once_committed,
    workflows_enqueued_together_are_claimed_in_id_order,
    a_message_is_taken_once_and_returns_after_a_rollback,
    cancel_cascades_to_unfinished_descendants_after_a_wait,
    gc_batches_skip_each_others_roots_and_keep_trees_with_a_running_member,
    an_upsert_waits_for_a_concurrent_inserter_then_updates_its_row,
    an_ordered_claim_after_a_wait_keeps_the_row_it_sorted_first,
    a_check_violation_fails_the_statement_and_aborts_the_transaction,
    a_check_violation_fails_before_waiting_for_the_row,
    a_rollback_to_a_savepoint_undoes_since_and_releases_its_locks,
    a_rollback_to_a_savepoint_lets_a_waiter_have_the_row,
);

async fn check<B: Backend>(backend: &B, (setup, steps, expected): Scenario) {
    let log = run(backend, &setup, &steps).await;
    assert_eq!(
        log, expected,
        "\n--- got ---\n{log}\n--- expected ---\n{expected}"
    );
}

fn jobs() -> Setup {
    Setup {
        jobs: vec![(1, None), (2, None)],
        workflows: vec![("w1", "a")],
        children: Vec::new(),
    }
}

const SKIP: Op = Op::Select {
    unowned: true,
    lock: Some(RowLock {
        for_update: true,
        wait: tandem::storage::memory::LockWait::SkipLocked,
    }),
};

fn skip_locked_claims_skip_each_other_but_not_their_own_locks() -> Scenario {
    (
        jobs(),
        vec![
            (0, SKIP),
            (1, SKIP),
            (0, SKIP),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 select unowned for update skip locked: [1]
s2 select unowned for update skip locked: [2]
s1 select unowned for update skip locked: [1]
s1 Commit: ok
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn a_for_update_claim_after_a_wait_returns_the_next_row() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::ClaimLocked(1)),
            (1, Op::ClaimLocked(2)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 ClaimLocked(1): [1]
s2 ClaimLocked(2): blocked
s1 Commit: ok
s2 done: [2]
s2 Commit: ok
jobs 1:1 2:2
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn unlocked(owner: i64, recheck: bool) -> Op {
    Op::ClaimUnlocked { owner, recheck }
}

fn a_claim_without_a_row_lock_double_claims() -> Scenario {
    (
        jobs(),
        vec![
            (0, unlocked(1, false)),
            (1, unlocked(2, false)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 ClaimUnlocked { owner: 1, recheck: false }: [1]
s2 ClaimUnlocked { owner: 2, recheck: false }: blocked
s1 Commit: ok
s2 done: [1]
s2 Commit: ok
jobs 1:2 2:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn a_claim_without_a_row_lock_but_rechecked_claims_nothing() -> Scenario {
    (
        jobs(),
        vec![
            (0, unlocked(1, true)),
            (1, unlocked(2, true)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 ClaimUnlocked { owner: 1, recheck: true }: [1]
s2 ClaimUnlocked { owner: 2, recheck: true }: blocked
s1 Commit: ok
s2 done: []
s2 Commit: ok
jobs 1:1 2:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn counter() -> Setup {
    Setup {
        jobs: vec![(1, Some(10))],
        workflows: vec![],
        children: Vec::new(),
    }
}

fn read_then_write_loses_an_update_under_read_committed() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Read(1)),
            (1, Op::Read(1)),
            (0, Op::Set(1, 11)),
            (1, Op::Set(1, 11)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 Read(1): [10]
s2 Read(1): [10]
s1 Set(1, 11): [11]
s2 Set(1, 11): blocked
s1 Commit: ok
s2 done: [11]
s2 Commit: ok
jobs 1:11
workflows 
steps 
",
    )
}

fn an_increment_after_a_wait_applies_to_the_newest_version() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Incr(1)),
            (1, Op::Incr(1)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 Incr(1): [11]
s2 Incr(1): blocked
s1 Commit: ok
s2 done: [12]
s2 Commit: ok
jobs 1:12
workflows 
steps 
",
    )
}

fn nowait_fails_at_once_on_a_locked_row() -> Scenario {
    let lock = |lock| Op::Select {
        unowned: false,
        lock: Some(lock),
    };
    (
        jobs(),
        vec![
            (0, lock(RowLock::for_update())),
            (1, lock(RowLock::for_no_key_update().nowait())),
            (1, Op::Read(1)),
            (1, Op::Rollback),
            (0, Op::Commit),
        ],
        "\
s1 select for update: [1]
s2 select for no key update nowait: err 55P03
s2 Read(1): err 25P02
s2 Rollback: ok
s1 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn a_deadlock_aborts_the_longest_waiter() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Set(1, 1)),
            (1, Op::Set(2, 2)),
            (0, Op::Set(2, 1)),
            (1, Op::Set(1, 2)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 Set(1, 1): [1]
s2 Set(2, 2): [2]
s1 Set(2, 1): blocked
s2 Set(1, 2): [2]
s1 done: err 40P01
s1 Commit: ok
s2 Commit: ok
jobs 1:2 2:2
workflows w1:RUNNING:e1:a
steps 
",
    )
}

const RECORD: Op = Op::StepRecord("w1", 0, 1);

fn a_concurrent_checkpoint_insert_waits_then_exists() -> Scenario {
    (
        jobs(),
        vec![(0, RECORD), (1, RECORD), (0, Op::Commit), (1, Op::Commit)],
        "\
s1 StepRecord(\"w1\", 0, 1): recorded
s2 StepRecord(\"w1\", 0, 1): blocked
s1 Commit: ok
s2 done: exists
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps w1/0:e1
",
    )
}

fn a_concurrent_checkpoint_insert_proceeds_after_an_abort() -> Scenario {
    (
        jobs(),
        vec![(0, RECORD), (1, RECORD), (0, Op::Rollback), (1, Op::Commit)],
        "\
s1 StepRecord(\"w1\", 0, 1): recorded
s2 StepRecord(\"w1\", 0, 1): blocked
s1 Rollback: ok
s2 done: recorded
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps w1/0:e1
",
    )
}

fn a_concurrent_start_of_one_id_waits_then_attaches() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::WfInsert("w2", "a")),
            (1, Op::WfInsert("w2", "b")),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 WfInsert(\"w2\", \"a\"): inserted
s2 WfInsert(\"w2\", \"b\"): blocked
s1 Commit: ok
s2 done: existing e1 RUNNING a
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a w2:RUNNING:e1:a
steps 
",
    )
}

fn a_second_inserter_gets_a_unique_violation_after_a_wait() -> Scenario {
    let insert = Op::InsertJob {
        id: 3,
        do_nothing: false,
    };
    (
        jobs(),
        vec![(0, insert), (1, insert), (0, Op::Commit), (1, Op::Rollback)],
        "\
s1 InsertJob { id: 3, do_nothing: false }: inserted
s2 InsertJob { id: 3, do_nothing: false }: blocked
s1 Commit: ok
s2 done: err 23505
s2 Rollback: ok
jobs 1:null 2:null 3:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn on_conflict_do_nothing_after_a_wait_does_nothing() -> Scenario {
    let insert = Op::InsertJob {
        id: 3,
        do_nothing: true,
    };
    (
        jobs(),
        vec![(0, insert), (1, insert), (0, Op::Commit), (1, Op::Commit)],
        "\
s1 InsertJob { id: 3, do_nothing: true }: inserted
s2 InsertJob { id: 3, do_nothing: true }: blocked
s1 Commit: ok
s2 done: nothing
s2 Commit: ok
jobs 1:null 2:null 3:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn a_dropped_connection_rolls_back() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Set(1, 5)),
            (1, Op::Set(1, 6)),
            (0, Op::Disconnect),
            (1, Op::Commit),
        ],
        "\
s1 Set(1, 5): [5]
s2 Set(1, 6): blocked
s1 Disconnect: ok
s2 done: [6]
s2 Commit: ok
jobs 1:6 2:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn an_epoch_bump_fences_a_concurrent_completion() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::WfRecover("a", Some("w1"))),
            (1, Op::WfComplete("w1", 1)),
            (0, Op::Commit),
            (1, Op::Rollback),
        ],
        "\
s1 WfRecover(\"a\", Some(\"w1\")): [w1:e2]
s2 WfComplete(\"w1\", 1): blocked
s1 Commit: ok
s2 done: fenced
s2 Rollback: ok
jobs 1:null 2:null
workflows w1:RUNNING:e2:a
steps 
",
    )
}

/// The fence in `step_record` is a plain read: an uncommitted epoch bump
/// does not stop it. What makes a step exactly-once is the primary key.
fn the_checkpoint_fence_reads_the_statement_snapshot() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::WfRecover("a", None)),
            (1, RECORD),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 WfRecover(\"a\", None): [w1:e2]
s2 StepRecord(\"w1\", 0, 1): recorded
s1 Commit: ok
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e2:a
steps w1/0:e1
",
    )
}

/// The checkpoint fence reads the statement's snapshot, and is checked
/// again after the insert (the trigger `tandem.steps_fence`): a checkpoint
/// that waited for a concurrent inserter of its step, which then rolled
/// back, while its workflow was cancelled, is refused and aborts its
/// transaction (without the re-check it would be recorded under the old
/// epoch, with nothing left to conflict with).
fn a_checkpoint_that_waited_checks_its_fence_again() -> Scenario {
    (
        jobs(),
        vec![
            (1, RECORD),
            (0, RECORD),
            (2, Op::Cancel("w1")),
            (2, Op::Commit),
            (1, Op::Rollback),
            (0, Op::Commit),
        ],
        "\
s2 StepRecord(\"w1\", 0, 1): recorded
s1 StepRecord(\"w1\", 0, 1): blocked
s3 Cancel(\"w1\"): [w1]
s3 Commit: ok
s2 Rollback: ok
s1 done: fenced
s1 Commit: ok
jobs 1:null 2:null
workflows w1:CANCELLED:e2:
steps 
",
    )
}

fn three() -> Setup {
    Setup {
        jobs: Vec::new(),
        workflows: vec![("w1", "a"), ("w2", "a"), ("w3", "a")],
        children: Vec::new(),
    }
}

/// The group commit's statement: each checkpoint gets the answer it would
/// get alone. w2's insert waits for a concurrent inserter of its step and
/// then exists, w3's fence fails (wrong epoch), w1 is recorded, all in one
/// statement that commits what it recorded.
fn a_group_of_checkpoints_answers_each_by_its_own_fence() -> Scenario {
    (
        three(),
        vec![
            (0, Op::StepRecord("w2", 0, 1)),
            (
                1,
                Op::StepRecordMany(&[("w1", 0, 1), ("w2", 0, 1), ("w3", 0, 9)]),
            ),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 StepRecord(\"w2\", 0, 1): recorded
s2 StepRecordMany([(\"w1\", 0, 1), (\"w2\", 0, 1), (\"w3\", 0, 9)]): blocked
s1 Commit: ok
s2 done: [recorded, exists, fenced]
s2 Commit: ok
jobs 
workflows w1:RUNNING:e1:a w2:RUNNING:e1:a w3:RUNNING:e1:a
steps w1/0:e1 w2/0:e1
",
    )
}

/// Starts in one statement: a new ID is inserted, an existing one answers
/// with its row, and one a concurrent start holds waits for it and then
/// answers with the row that start committed (read in a statement of its
/// own, as for one start).
fn a_group_of_starts_waits_for_a_concurrent_start_then_attaches() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::WfInsert("w2", "a")),
            (1, Op::WfInsertMany(&["w3", "w2", "w1"])),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 WfInsert(\"w2\", \"a\"): inserted
s2 WfInsertMany([\"w3\", \"w2\", \"w1\"]): blocked
s1 Commit: ok
s2 done: [inserted, existing e1 RUNNING a, existing e1 RUNNING a]
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a w2:RUNNING:e1:a w3:RUNNING:e1:b
steps 
",
    )
}

/// Completions in one statement: each row's fence is re-checked after a
/// wait (a concurrent recovery bumped w1's epoch), the others complete.
fn a_group_of_completions_answers_each_by_its_own_fence() -> Scenario {
    (
        three(),
        vec![
            (0, Op::WfRecover("a", Some("w1"))),
            (1, Op::WfCompleteMany(&[("w1", 1), ("w2", 1), ("w3", 2)])),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 WfRecover(\"a\", Some(\"w1\")): [w1:e2]
s2 WfCompleteMany([(\"w1\", 1), (\"w2\", 1), (\"w3\", 2)]): blocked
s1 Commit: ok
s2 done: [fenced, ok, fenced]
s2 Commit: ok
jobs 
workflows w1:RUNNING:e2:a w2:SUCCESS:e1:a w3:RUNNING:e1:a
steps 
",
    )
}

/// A checkpoint of a group that waited, and whose workflow was cancelled
/// meanwhile, fails the fence's re-check after its insert: that error
/// fails the whole statement (the engine then sends each alone), and
/// nothing of the group is recorded.
fn a_group_whose_checkpoint_fails_its_recheck_fails_as_a_whole() -> Scenario {
    (
        three(),
        vec![
            (1, Op::StepRecord("w1", 0, 1)),
            (0, Op::StepRecordMany(&[("w2", 0, 1), ("w1", 0, 1)])),
            (2, Op::Cancel("w1")),
            (2, Op::Commit),
            (1, Op::Rollback),
            (0, Op::Commit),
        ],
        "\
s2 StepRecord(\"w1\", 0, 1): recorded
s1 StepRecordMany([(\"w2\", 0, 1), (\"w1\", 0, 1)]): blocked
s3 Cancel(\"w1\"): [w1]
s3 Commit: ok
s2 Rollback: ok
s1 done: fenced
s1 Commit: ok
jobs 
workflows w1:CANCELLED:e2: w2:RUNNING:e1:a w3:RUNNING:e1:a
steps 
",
    )
}

/// A deliberately wrong model fails the suite: each defect changes the log
/// of at least one scenario.
#[tokio::test]
async fn a_wrong_model_fails_the_suite() {
    let cases: [(Defect, fn() -> Scenario); 3] = [
        (
            Defect::SkipLockedDoesNotSkip,
            skip_locked_claims_skip_each_other_but_not_their_own_locks,
        ),
        (
            Defect::NoRecheckAfterWait,
            a_for_update_claim_after_a_wait_returns_the_next_row,
        ),
        (
            Defect::NoRecheckAfterWait,
            an_epoch_bump_fences_a_concurrent_completion,
        ),
    ];
    for (defect, scenario) in cases {
        let (setup, steps, expected) = scenario();
        let wrong = Mem::new(MemStorage::new().with_defect(defect));
        let log = run(&wrong, &setup, &steps).await;
        assert_ne!(log, expected, "{defect:?} went unnoticed");
    }
}

fn enqueue(id: &'static str, name: &'static str, input: &'static str) -> Op {
    Op::Enqueue {
        id,
        name,
        input,
        dedup: None,
        dedup_error: false,
    }
}

fn dedup(id: &'static str, dedup_error: bool) -> Op {
    Op::Enqueue {
        id,
        name: "wf",
        input: "{}",
        dedup: Some("k"),
        dedup_error,
    }
}

const LONG_LEASE: i64 = 3_600_000;

fn enqueue_validates_in_order_and_is_idempotent_on_the_id() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, Op::Commit),
            (0, enqueue("e1", "nope", "1")),
            (0, Op::Rollback),
            (0, enqueue("e1", "wf", "1")),
            (0, Op::Rollback),
            (
                0,
                enqueue("e1", "wf", r#"{"pad": "0123456789012345678901234567890123456789012345678901234567890123"}"#),
            ),
            (0, Op::Rollback),
            (0, enqueue("", "other", "[1,2]")),
            (0, Op::Rollback),
            (0, enqueue("e1", "wf", r#"{"b":1,"a":2}"#)),
            (0, enqueue("e1", "wf", "{}")),
            (0, Op::Commit),
            (1, enqueue("e1", "other", "[]")),
            (1, Op::Rollback),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 Commit: ok
s1 Enqueue { id: \"e1\", name: \"nope\", input: \"1\", dedup: None, dedup_error: false }: err 22023 tandem.enqueue_workflow: unknown workflow name \"nope\"
s1 Rollback: ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"1\", dedup: None, dedup_error: false }: err 22023 tandem.enqueue_workflow: workflow \"wf\" takes JSON object, not number
s1 Rollback: ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{\\\"pad\\\": \\\"0123456789012345678901234567890123456789012345678901234567890123\\\"}\", dedup: None, dedup_error: false }: err 54000 tandem.enqueue_workflow: input is 75 bytes, over the limit of 64 bytes
s1 Rollback: ok
s1 Enqueue { id: \"\", name: \"other\", input: \"[1,2]\", dedup: None, dedup_error: false }: err 22023 tandem.enqueue_workflow: workflow_id must be 1 to 256 characters
s1 Rollback: ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{\\\"b\\\":1,\\\"a\\\":2}\", dedup: None, dedup_error: false }: e1
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e1
s1 Commit: ok
s2 Enqueue { id: \"e1\", name: \"other\", input: \"[]\", dedup: None, dedup_error: false }: err 23505 tandem.enqueue_workflow: workflow ID \"e1\" belongs to workflow \"wf\", not \"other\"
s2 Rollback: ok
jobs 1:null 2:null
workflows e1:ENQUEUED:e0: w1:RUNNING:e1:a
steps 
executors a
",
    )
}

fn an_enqueue_with_a_held_dedup_key_waits_then_returns_the_holder() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, Op::Commit),
            (0, dedup("e1", false)),
            (1, dedup("e2", false)),
            (0, Op::Commit),
            (1, dedup("e3", true)),
            (1, Op::Rollback),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 Commit: ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: Some(\"k\"), dedup_error: false }: e1
s2 Enqueue { id: \"e2\", name: \"wf\", input: \"{}\", dedup: Some(\"k\"), dedup_error: false }: blocked
s1 Commit: ok
s2 done: e1
s2 Enqueue { id: \"e3\", name: \"wf\", input: \"{}\", dedup: Some(\"k\"), dedup_error: true }: err 23505 tandem.enqueue_workflow: queue \"q\" already has an unfinished workflow with dedup_key \"k\": \"e1\"
s2 Rollback: ok
jobs 1:null 2:null
workflows e1:ENQUEUED:e0: w1:RUNNING:e1:a
steps 
executors a
",
    )
}

fn concurrent_claims_skip_each_others_rows() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, Op::Commit),
            (0, enqueue("e1", "wf", "{}")),
            (0, Op::Commit),
            (0, enqueue("e2", "wf", "{}")),
            (0, Op::Commit),
            (0, Op::Claim("a", 1)),
            (1, Op::Claim("b", 2)),
            (1, Op::Claim("b", 1)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 Commit: ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e1
s1 Commit: ok
s1 Enqueue { id: \"e2\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e2
s1 Commit: ok
s1 Claim(\"a\", 1): [e1:e1]
s2 Claim(\"b\", 2): [e2:e1]
s2 Claim(\"b\", 1): []
s1 Commit: ok
s2 Commit: ok
jobs 1:null 2:null
workflows e1:RUNNING:e1:a e2:RUNNING:e1:b w1:RUNNING:e1:a
steps 
executors a
",
    )
}

/// `v2` code stamps the row it starts; default code skips it in its
/// claims and hands a `v2` row it owns back to the queue on recovery; a
/// patch marker recorded by `v2` code stamps its run `v2` (the concurrent
/// one that finds the marker recorded stamps nothing).
fn claims_take_accepted_versions_and_recovery_hands_the_others_back() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, enqueue("e1", "wf", "{}")),
            (0, Op::Commit),
            (0, enqueue("e2", "wf", "{}")),
            (0, Op::Commit),
            (0, Op::ClaimV2("b", 1)),
            (0, Op::Release("b")),
            (0, Op::Commit),
            (1, Op::Claim("a", 2)),
            (1, Op::Commit),
            (1, Op::WfInsertV2("w9", "a")),
            (1, Op::Commit),
            (0, Op::WfRecover("a", None)),
            (0, Op::Commit),
            (1, Op::ClaimV2("b", 5)),
            (1, Op::Commit),
            (0, Op::PatchRecordV2("w1", 0, 2)),
            (1, Op::PatchRecordV2("w1", 0, 2)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e1
s1 Commit: ok
s1 Enqueue { id: \"e2\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e2
s1 Commit: ok
s1 ClaimV2(\"b\", 1): [e1:e1]
s1 Release(\"b\"): 1
s1 Commit: ok
s2 Claim(\"a\", 2): [e2:e1]
s2 Commit: ok
s2 WfInsertV2(\"w9\", \"a\"): inserted
s2 Commit: ok
s1 WfRecover(\"a\", None): [e2:e2, w1:e2]
s1 Commit: ok
s2 ClaimV2(\"b\", 5): [e1:e3]
s2 Commit: ok
s1 PatchRecordV2(\"w1\", 0, 2): recorded
s2 PatchRecordV2(\"w1\", 0, 2): blocked
s1 Commit: ok
s2 done: exists
s2 Commit: ok
jobs 1:null 2:null
workflows e1:RUNNING:e3:b e2:RUNNING:e2:a w1:RUNNING:e2:a w9:ENQUEUED:e2:
steps w1/0:e2
versions e1:v2 e2:unversioned w1:v2 w9:v2
executors a
",
    )
}

/// A queue with a per-key limit of one: a claim takes the first workflow of
/// each key and every unkeyed one; a concurrent claimer waits for the
/// queue's row lock, then finds the key still running; once it finishes,
/// the key's next workflow is claimed.
fn per_key_claims_take_one_per_key_and_wait_for_the_queue() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, Op::EnqueueKeyed("k1a", "c1")),
            (0, Op::EnqueueKeyed("k1b", "c1")),
            (0, Op::EnqueueKeyed("k2a", "c2")),
            (0, enqueue("e0", "wf", "{}")),
            (0, Op::Commit),
            (0, Op::ClaimPerKey("a", 10)),
            (1, Op::ClaimPerKey("b", 10)),
            (0, Op::Commit),
            (1, Op::Commit),
            (0, Op::WfComplete("k1a", 1)),
            (0, Op::Commit),
            (1, Op::ClaimPerKey("b", 10)),
            (1, Op::Commit),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 EnqueueKeyed(\"k1a\", \"c1\"): k1a
s1 EnqueueKeyed(\"k1b\", \"c1\"): k1b
s1 EnqueueKeyed(\"k2a\", \"c2\"): k2a
s1 Enqueue { id: \"e0\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e0
s1 Commit: ok
s1 ClaimPerKey(\"a\", 10): [e0:e1, k1a:e1, k2a:e1]
s2 ClaimPerKey(\"b\", 10): blocked
s1 Commit: ok
s2 done: []
s2 Commit: ok
s1 WfComplete(\"k1a\", 1): ok
s1 Commit: ok
s2 ClaimPerKey(\"b\", 10): [k1b:e1]
s2 Commit: ok
jobs 1:null 2:null
workflows e0:RUNNING:e1:a k1a:SUCCESS:e1:a k1b:RUNNING:e1:b k2a:RUNNING:e1:a w1:RUNNING:e1:a
steps 
executors a
",
    )
}

/// A debounced enqueue updates the pending workflow and holds it: a second
/// one waits and then updates it on top; a rolled-back one leaves the
/// input as it was. Two first enqueues of a fresh key at once: the second
/// waits for the first's insert, then updates its row. (Claims are not in
/// it: the harness claims at time 0, before any debounced start.)
fn debounced_enqueues_replace_the_pending_input_and_wait_for_each_other() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, Op::EnqueueDebounced("k", r#"{"n": 1}"#)),
            (0, Op::Commit),
            (0, Op::EnqueueDebounced("k", r#"{"n": 2}"#)),
            (1, Op::EnqueueDebounced("k", r#"{"n": 3}"#)),
            (0, Op::Commit),
            (1, Op::Commit),
            (0, Op::EnqueueDebounced("k", r#"{"n": 4}"#)),
            (0, Op::Rollback),
            (1, Op::EnqueueDebounced("k", r#"{"n": 5}"#)),
            (1, Op::Commit),
            (0, Op::EnqueueDebounced("k2", r#"{"n": 6}"#)),
            (1, Op::EnqueueDebounced("k2", r#"{"n": 7}"#)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 EnqueueDebounced(\"k\", \"{\\\"n\\\": 1}\"): d{\"n\": 1}
s1 Commit: ok
s1 EnqueueDebounced(\"k\", \"{\\\"n\\\": 2}\"): d{\"n\": 2}
s2 EnqueueDebounced(\"k\", \"{\\\"n\\\": 3}\"): blocked
s1 Commit: ok
s2 done: d{\"n\": 3}
s2 Commit: ok
s1 EnqueueDebounced(\"k\", \"{\\\"n\\\": 4}\"): d{\"n\": 4}
s1 Rollback: ok
s2 EnqueueDebounced(\"k\", \"{\\\"n\\\": 5}\"): d{\"n\": 5}
s2 Commit: ok
s1 EnqueueDebounced(\"k2\", \"{\\\"n\\\": 6}\"): d{\"n\": 6}
s2 EnqueueDebounced(\"k2\", \"{\\\"n\\\": 7}\"): blocked
s1 Commit: ok
s2 done: d{\"n\": 7}
s2 Commit: ok
jobs 1:null 2:null
workflows d{\"n\": 5}:ENQUEUED:e0: d{\"n\": 7}:ENQUEUED:e0: w1:RUNNING:e1:a
steps 
executors a
",
    )
}

/// The schedule loop's transaction: the row lock decides which executor
/// fires; a pause (or a resume) waits for the firing to commit; a
/// redeploy's registration keeps the cursor and the pause.
fn schedule_firings_skip_each_other_and_a_pause_waits_for_the_firing() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::RegisterSchedule("a")),
            (0, Op::Commit),
            (0, Op::ScheduleLock("s")),
            (1, Op::ScheduleLock("s")),
            (1, Op::SchedulePause("s", true)),
            (0, Op::ScheduleAdvance("s", 2_000_000_000_000)),
            (0, Op::Commit),
            (1, Op::Commit),
            (0, Op::ScheduleLock("s")),
            (0, Op::Commit),
            (0, Op::RegisterSchedule("b")),
            (0, Op::Commit),
            (1, Op::ScheduleLock("s")),
            (1, Op::Rollback),
            (0, Op::SchedulePause("s", false)),
            (0, Op::SchedulePause("s", false)),
            (0, Op::Commit),
            (1, Op::ScheduleLock("s")),
            (1, Op::ScheduleLock("nope")),
            (1, Op::Commit),
        ],
        "\
s1 RegisterSchedule(\"a\"): ok
s1 Commit: ok
s1 ScheduleLock(\"s\"): paused:false cursor:clock
s2 ScheduleLock(\"s\"): none
s2 SchedulePause(\"s\", true): blocked
s1 ScheduleAdvance(\"s\", 2000000000000): ok
s1 Commit: ok
s2 done: paused:true
s2 Commit: ok
s1 ScheduleLock(\"s\"): paused:true cursor:2000000000000
s1 Commit: ok
s1 RegisterSchedule(\"b\"): ok
s1 Commit: ok
s2 ScheduleLock(\"s\"): paused:true cursor:2000000000000
s2 Rollback: ok
s1 SchedulePause(\"s\", false): paused:false
s1 SchedulePause(\"s\", false): paused:false
s1 Commit: ok
s2 ScheduleLock(\"s\"): paused:false cursor:2000000000000
s2 ScheduleLock(\"nope\"): none
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps 
executors a b
",
    )
}

fn reclaim_rechecks_a_lease_renewed_while_it_waited() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("dead", -60_000)),
            (0, Op::Register("a", LONG_LEASE)),
            (0, enqueue("e1", "wf", "{}")),
            (0, Op::Commit),
            (0, Op::Claim("dead", 1)),
            (0, Op::Commit),
            (0, Op::Heartbeat("dead", LONG_LEASE)),
            (1, Op::Reclaim),
            (0, Op::Commit),
            (1, Op::Commit),
            (0, Op::Heartbeat("dead", -60_000)),
            (0, Op::Commit),
            (1, Op::Reclaim),
            (1, Op::Commit),
        ],
        "\
s1 Register(\"dead\", -60000): ok
s1 Register(\"a\", 3600000): ok
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e1
s1 Commit: ok
s1 Claim(\"dead\", 1): [e1:e1]
s1 Commit: ok
s1 Heartbeat(\"dead\", 3600000): ok
s2 Reclaim: blocked
s1 Commit: ok
s2 done: 0
s2 Commit: ok
s1 Heartbeat(\"dead\", -60000): ok
s1 Commit: ok
s2 Reclaim: 1
s2 Commit: ok
jobs 1:null 2:null
workflows e1:ENQUEUED:e2: w1:RUNNING:e1:a
steps 
executors a
",
    )
}

/// What adoption reads (`Transaction::workflows_owned`): only committed
/// `RUNNING` rows of that executor, ordered by ID, without waiting on a
/// concurrent claim's row locks.
fn owned_rows_are_the_committed_running_ones_of_the_executor() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, enqueue("e2", "wf", "{}")),
            (0, enqueue("e1", "wf", "{}")),
            (0, Op::Commit),
            (0, Op::Claim("a", 2)),
            (1, Op::Owned("a")),
            (0, Op::Commit),
            (1, Op::Owned("a")),
            (1, Op::WfComplete("e1", 1)),
            (1, Op::Owned("a")),
            (1, Op::Commit),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 Enqueue { id: \"e2\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e2
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e1
s1 Commit: ok
s1 Claim(\"a\", 2): [e1:e1, e2:e1]
s2 Owned(\"a\"): [w1:e1]
s1 Commit: ok
s2 Owned(\"a\"): [e1:e1 e2:e1 w1:e1]
s2 WfComplete(\"e1\", 1): ok
s2 Owned(\"a\"): [e2:e1 w1:e1]
s2 Commit: ok
jobs 1:null 2:null
workflows e1:SUCCESS:e1:a e2:RUNNING:e1:a w1:RUNNING:e1:a
steps 
executors a
",
    )
}

/// What an execution reads after a commit with an unknown outcome
/// (`Transaction::step_get`): the committed checkpoint only, without
/// waiting on a concurrent recorder's lock.
fn a_step_is_read_by_key_once_committed() -> Scenario {
    (
        jobs(),
        vec![
            (0, RECORD),
            (1, Op::StepGet("w1", 0)),
            (0, Op::Commit),
            (1, Op::StepGet("w1", 0)),
            (1, Op::StepGet("w1", 1)),
            (1, Op::Commit),
        ],
        "\
s1 StepRecord(\"w1\", 0, 1): recorded
s2 StepGet(\"w1\", 0): none
s1 Commit: ok
s2 StepGet(\"w1\", 0): 0:s:Some(\"1\")
s2 StepGet(\"w1\", 1): none
s2 Commit: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps w1/0:e1
",
    )
}

/// Workflows enqueued in one transaction share `now()`, so `priority,
/// created_at` ties; both backends break the tie by ID (a total order), so
/// a claim takes the same rows on each.
fn workflows_enqueued_together_are_claimed_in_id_order() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::Register("a", LONG_LEASE)),
            (0, enqueue("e3", "wf", "{}")),
            (0, enqueue("e1", "wf", "{}")),
            (0, enqueue("e2", "wf", "{}")),
            (0, Op::Commit),
            (0, Op::Claim("a", 1)),
            (0, Op::Claim("a", 1)),
            (0, Op::Commit),
        ],
        "\
s1 Register(\"a\", 3600000): ok
s1 Enqueue { id: \"e3\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e3
s1 Enqueue { id: \"e1\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e1
s1 Enqueue { id: \"e2\", name: \"wf\", input: \"{}\", dedup: None, dedup_error: false }: e2
s1 Commit: ok
s1 Claim(\"a\", 1): [e1:e1]
s1 Claim(\"a\", 1): [e2:e1]
s1 Commit: ok
jobs 1:null 2:null
workflows e1:RUNNING:e1:a e2:RUNNING:e1:a e3:ENQUEUED:e0: w1:RUNNING:e1:a
steps 
executors a
",
    )
}

fn a_message_is_taken_once_and_returns_after_a_rollback() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::MsgSend("w1", r#"{"n":1}"#)),
            (0, Op::MsgSend("w1", "2")),
            (0, Op::Commit),
            (0, Op::MsgTake("w1", 1)),
            (1, Op::MsgTake("w1", 1)),
            (1, Op::MsgTake("w1", 1)),
            (0, Op::Rollback),
            (1, Op::MsgTake("w1", 1)),
            (1, Op::Commit),
            (2, Op::MsgTake("w1", 2)),
            (2, Op::MsgSend("nope", "1")),
            (2, Op::Rollback),
        ],
        "\
s1 MsgSend(\"w1\", \"{\\\"n\\\":1}\"): ok
s1 MsgSend(\"w1\", \"2\"): ok
s1 Commit: ok
s1 MsgTake(\"w1\", 1): {\"n\": 1}
s2 MsgTake(\"w1\", 1): 2
s2 MsgTake(\"w1\", 1): none
s1 Rollback: ok
s2 MsgTake(\"w1\", 1): {\"n\": 1}
s2 Commit: ok
s3 MsgTake(\"w1\", 2): fenced
s3 MsgSend(\"nope\", \"1\"): err 22023 tandem.send: unknown workflow \"nope\"
s3 Rollback: ok
jobs 1:null 2:null
workflows w1:RUNNING:e1:a
steps 
",
    )
}

fn cancel_cascades_to_unfinished_descendants_after_a_wait() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::WfInsertChild("c1", "w1", "a")),
            (0, Op::WfInsertChild("c2", "c1", "a")),
            (0, Op::WfInsertChild("c3", "w1", "a")),
            (0, Op::WfComplete("c3", 1)),
            (0, Op::Commit),
            (1, Op::WfComplete("c2", 1)),
            (0, Op::Cancel("w1")),
            (1, Op::Commit),
            (0, Op::Commit),
            (0, Op::Cancel("w1")),
            (0, Op::Commit),
        ],
        "\
s1 WfInsertChild(\"c1\", \"w1\", \"a\"): Inserted
s1 WfInsertChild(\"c2\", \"c1\", \"a\"): Inserted
s1 WfInsertChild(\"c3\", \"w1\", \"a\"): Inserted
s1 WfComplete(\"c3\", 1): ok
s1 Commit: ok
s2 WfComplete(\"c2\", 1): ok
s1 Cancel(\"w1\"): blocked
s2 Commit: ok
s1 done: [c1, w1]
s1 Commit: ok
s1 Cancel(\"w1\"): []
s1 Commit: ok
jobs 1:null 2:null
workflows c1:CANCELLED:e2: c2:SUCCESS:e1:a c3:SUCCESS:e1:a w1:CANCELLED:e2:
steps 
",
    )
}

/// Retention: concurrent batches take different roots (`SKIP LOCKED`); a
/// tree with a running member stays whole, its finished child too; a tree
/// goes with its steps and messages once its last member finished.
fn gc_batches_skip_each_others_roots_and_keep_trees_with_a_running_member() -> Scenario {
    (
        jobs(),
        vec![
            (0, Op::WfInsert("w2", "a")),
            (0, Op::StepRecord("w2", 0, 1)),
            (0, Op::WfComplete("w2", 1)),
            (0, Op::Commit),
            (0, Op::WfInsert("w3", "a")),
            (0, Op::StepRecord("w3", 0, 1)),
            (0, Op::WfComplete("w3", 1)),
            (0, Op::MsgSend("w3", "\"x\"")),
            (0, Op::WfInsertChild("c1", "w1", "a")),
            (0, Op::StepRecord("c1", 0, 1)),
            (0, Op::WfComplete("c1", 1)),
            (0, Op::Commit),
            (0, Op::GcDry),
            (0, Op::Gc(1)),
            (1, Op::Gc(1)),
            (0, Op::Commit),
            (1, Op::Commit),
            (0, Op::Gc(10)),
            (0, Op::Commit),
            (0, Op::WfComplete("w1", 1)),
            (0, Op::Commit),
            (1, Op::GcDry),
            (1, Op::Gc(10)),
            (1, Op::Commit),
        ],
        "\
s1 WfInsert(\"w2\", \"a\"): inserted
s1 StepRecord(\"w2\", 0, 1): recorded
s1 WfComplete(\"w2\", 1): ok
s1 Commit: ok
s1 WfInsert(\"w3\", \"a\"): inserted
s1 StepRecord(\"w3\", 0, 1): recorded
s1 WfComplete(\"w3\", 1): ok
s1 MsgSend(\"w3\", \"\\\"x\\\"\"): ok
s1 WfInsertChild(\"c1\", \"w1\", \"a\"): Inserted
s1 StepRecord(\"c1\", 0, 1): recorded
s1 WfComplete(\"c1\", 1): ok
s1 Commit: ok
s1 GcDry: roots:2 workflows:2 steps:2 messages:1 events:0
s1 Gc(1): roots:1 workflows:1 steps:1 messages:0 events:0
s2 Gc(1): roots:1 workflows:1 steps:1 messages:1 events:0
s1 Commit: ok
s2 Commit: ok
s1 Gc(10): roots:0 workflows:0 steps:0 messages:0 events:0
s1 Commit: ok
s1 WfComplete(\"w1\", 1): ok
s1 Commit: ok
s2 GcDry: roots:1 workflows:2 steps:1 messages:0 events:0
s2 Gc(10): roots:1 workflows:2 steps:1 messages:0 events:0
s2 Commit: ok
jobs 1:null 2:null
workflows 
steps 
",
    )
}

fn an_upsert_waits_for_a_concurrent_inserter_then_updates_its_row() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Upsert(1)),
            (1, Op::Upsert(2)),
            (0, Op::Upsert(2)),
            (1, Op::Commit),
            (0, Op::Commit),
        ],
        // s1 updates row 1 (10 + 1); s2 inserts row 2; s1's upsert of row 2
        // waits for s2's insert, then updates the newest version although
        // its snapshot never saw it.
        "\
s1 Upsert(1): [11]
s2 Upsert(2): [1]
s1 Upsert(2): blocked
s2 Commit: ok
s1 done: [2]
s1 Commit: ok
jobs 1:11 2:2
workflows 
steps 
",
    )
}

fn an_ordered_claim_after_a_wait_keeps_the_row_it_sorted_first() -> Scenario {
    (
        Setup {
            jobs: vec![(1, Some(1)), (2, Some(5)), (3, None)],
            workflows: vec![],
            children: Vec::new(),
        },
        vec![
            (0, Op::Set(2, 0)),
            (1, Op::SelectByOwner),
            (0, Op::Commit),
            (1, Op::SelectByOwner),
            (1, Op::Commit),
        ],
        // s2 sorted row 2 first (owner 5, DESC, NULLS LAST) and waited for
        // s1; s1 set it to 0, yet s2 returns row 2 (no WHERE to fail, no
        // sort again). A new statement sorts row 1 first.
        "\
s1 Set(2, 0): [0]
s2 SelectByOwner: blocked
s1 Commit: ok
s2 done: [2]
s2 SelectByOwner: [1]
s2 Commit: ok
jobs 1:1 2:0 3:null
workflows 
steps 
",
    )
}

fn a_check_violation_fails_the_statement_and_aborts_the_transaction() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Incr(1)),
            (0, Op::Set(1, 13)),
            (0, Op::Incr(1)),
            (0, Op::Commit),
            (1, Op::Upsert(1)),
            (1, Op::Commit),
        ],
        // `owner <> 13`: the violation aborts s1, whose earlier increment
        // rolls back with it.
        "\
s1 Incr(1): [11]
s1 Set(1, 13): err 23514
s1 Incr(1): err 25P02
s1 Commit: ok
s2 Upsert(1): [11]
s2 Commit: ok
jobs 1:11
workflows 
steps 
",
    )
}

fn a_check_violation_fails_before_waiting_for_the_row() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Incr(1)),
            (1, Op::Set(1, 13)),
            (0, Op::Commit),
            (1, Op::Commit),
        ],
        // PostgreSQL checks the new row, built from the snapshot's version,
        // before it waits for the row's lock (found by the differential
        // test: the model waited first).
        "\
s1 Incr(1): [11]
s2 Set(1, 13): err 23514
s1 Commit: ok
s2 Commit: ok
jobs 1:11
workflows 
steps 
",
    )
}

fn a_rollback_to_a_savepoint_undoes_since_and_releases_its_locks() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Incr(1)),
            (0, Op::Savepoint),
            (0, Op::Upsert(2)),
            (0, Op::Set(1, 13)),
            (1, Op::Upsert(2)),
            (0, Op::RollbackToSavepoint),
            (0, Op::Incr(1)),
            (1, Op::Commit),
            (0, Op::Commit),
        ],
        // The CHECK violation aborts s1's subtransaction at once: its insert
        // of row 2 is gone (s2's upsert inserts the row itself without
        // waiting) while the increment before the savepoint stays; after
        // the rollback to the savepoint s1 goes on.
        "\
s1 Incr(1): [11]
s1 Savepoint: ok
s1 Upsert(2): [1]
s1 Set(1, 13): err 23514
s2 Upsert(2): [1]
s1 RollbackToSavepoint: ok
s1 Incr(1): [12]
s2 Commit: ok
s1 Commit: ok
jobs 1:12 2:1
workflows 
steps 
",
    )
}

fn a_rollback_to_a_savepoint_lets_a_waiter_have_the_row() -> Scenario {
    (
        counter(),
        vec![
            (0, Op::Savepoint),
            (0, Op::Incr(1)),
            (1, Op::Incr(1)),
            (0, Op::RollbackToSavepoint),
            (1, Op::Commit),
            (0, Op::Incr(1)),
            (0, Op::Commit),
        ],
        // s1's increment inside the savepoint held row 1; rolling back to it
        // releases the row, and s2's increment applies to the original 10.
        "\
s1 Savepoint: ok
s1 Incr(1): [11]
s2 Incr(1): blocked
s1 RollbackToSavepoint: ok
s2 done: [11]
s2 Commit: ok
s1 Incr(1): [12]
s1 Commit: ok
jobs 1:12
workflows 
steps 
",
    )
}
