//! The stable twin of `replay_history`: committed inputs, then random
//! histories from random bytes.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn committed_histories_replay_or_fail_cleanly() {
    let inputs = tandem_fuzz::committed_inputs("replay_history");
    assert!(inputs.len() >= 10, "the seed corpus is missing");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        tandem_fuzz::replay::run(&bytes);
    }
}

#[test]
fn random_histories_replay_or_fail_cleanly() {
    let mut runner = TestRunner::new(Config {
        cases: crate::cases(300),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            tandem_fuzz::replay::run(&bytes);
            Ok(())
        })
        .unwrap();
}

/// The target can fail: with the engine's planted replay bug (a recorded
/// plain step runs again instead of returning its checkpoint), random
/// histories expose it within a few hundred inputs.
#[test]
fn a_replay_that_reruns_recorded_steps_is_caught() {
    use tandem::bugs::Bug;
    assert!(crate::catches(
        Bug::ReplayRerunsPlain,
        tandem_fuzz::replay::run,
        crate::inputs(500, 64)
    ));
    assert!(crate::catches(
        Bug::NoOwnRecovery,
        tandem_fuzz::replay::run,
        crate::inputs(500, 64)
    ));
}
