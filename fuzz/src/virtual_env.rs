//! An [`Env`] on tokio's paused clock, so harnesses run the engine in
//! virtual time: sleeps cost nothing and "still running after an hour" is a
//! hang, found in microseconds.

use std::time::{Duration, SystemTime};

use tandem::Env;
use tandem::env::BoxFuture;

/// The virtual clock's start (2026-01-01), in ms since the epoch: fixed, so
/// stored times are the same every run.
pub(crate) const START_MS: i64 = 1_767_225_600_000;

/// Time is `start` plus the paused tokio clock's elapsed time.
#[derive(Debug)]
pub(crate) struct VirtualEnv {
    start: SystemTime,
    origin: tokio::time::Instant,
    seed: u64,
}

impl VirtualEnv {
    /// Must be created inside a runtime whose clock is paused.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(START_MS as u64),
            origin: tokio::time::Instant::now(),
            seed,
        }
    }
}

impl Env for VirtualEnv {
    fn now(&self) -> SystemTime {
        self.start + self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn seed(&self) -> u64 {
        self.seed
    }
}

/// A current-thread runtime with the clock paused: time advances only when
/// every task waits on a timer, straight to the next one.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}
