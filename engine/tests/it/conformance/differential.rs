//! A differential property test: random small scenarios (2 or 3 sessions, a
//! few of the engine's own storage operations plus row-locking application
//! statements each) run on PostgreSQL and on the memory model; any
//! difference in the step-by-step logs fails, and proptest shrinks it to a
//! minimal interleaving. `TANDEM_DIFF_CASES` sets the number of cases
//! (default 40).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tandem::MemStorage;
use tandem::storage::memory::RowLock;

use super::harness::{Mem, Op, Pg, Setup, run};

fn op() -> impl Strategy<Value = Op> {
    let workflow = || prop_oneof![Just("w1"), Just("w2")];
    let executor = || prop_oneof![Just("a"), Just("b")];
    let lock = prop_oneof![
        Just(None),
        Just(Some(RowLock::for_update())),
        Just(Some(RowLock::for_no_key_update().skip_locked())),
        Just(Some(RowLock::for_update().nowait())),
    ];
    prop_oneof![
        (workflow(), executor()).prop_map(|(w, e)| Op::WfInsert(w, e)),
        workflow().prop_map(Op::WfGet),
        (workflow(), 1..=2i64).prop_map(|(w, e)| Op::WfComplete(w, e)),
        (executor(), prop::option::of(workflow())).prop_map(|(e, w)| Op::WfRecover(e, w)),
        workflow().prop_map(Op::StepsLoad),
        (workflow(), 0..2i32, 1..=2i64).prop_map(|(w, s, e)| Op::StepRecord(w, s, e)),
        (any::<bool>(), lock).prop_map(|(unowned, lock)| Op::Select { unowned, lock }),
        (1..=2i64).prop_map(Op::ClaimLocked),
        (1..=2i64).prop_map(Op::Incr),
        Just(Op::Commit),
        Just(Op::Rollback),
    ]
}

fn scenario() -> impl Strategy<Value = Vec<(usize, Op)>> {
    (2..=3usize)
        .prop_flat_map(|sessions| prop::collection::vec((0..sessions, op()), 2..=9))
        .prop_map(|mut steps| {
            // Every session ends by committing, so the final tables show
            // what committed work did.
            let mut used: Vec<usize> = steps.iter().map(|(s, _)| *s).collect();
            used.sort_unstable();
            used.dedup();
            steps.extend(used.into_iter().map(|s| (s, Op::Commit)));
            steps
        })
}

#[test]
fn the_model_matches_postgres_on_random_scenarios() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pg = runtime.block_on(Pg::open());
    let cases = std::env::var("TANDEM_DIFF_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let setup = Setup {
        jobs: vec![(1, None), (2, None)],
        workflows: vec![("w1", "a")],
    };
    let result = runner.run(&scenario(), |steps| {
        let (on_pg, on_model) = runtime.block_on(async {
            let on_pg = run(&pg, &setup, &steps).await;
            let on_model = run(&Mem::new(MemStorage::new()), &setup, &steps).await;
            (on_pg, on_model)
        });
        prop_assert_eq!(
            &on_pg,
            &on_model,
            "\n--- postgres ---\n{}\n--- model ---\n{}",
            on_pg,
            on_model
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("the model diverges from PostgreSQL: {e}");
    }
}
