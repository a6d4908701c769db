//! The stable twin of `enqueue_args`: committed inputs, then random
//! operation sequences from random bytes.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn committed_calls_are_validated_and_atomic() {
    let inputs = tandem_fuzz::committed_inputs("enqueue_args");
    assert!(inputs.len() >= 10, "the seed corpus is missing");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        tandem_fuzz::enqueue::run(&bytes);
    }
}

#[test]
fn random_calls_are_validated_and_atomic() {
    let mut runner = TestRunner::new(Config {
        cases: crate::cases(1_000),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            tandem_fuzz::enqueue::run(&bytes);
            Ok(())
        })
        .unwrap();
}
