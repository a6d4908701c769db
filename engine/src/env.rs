//! The engine's only door to time, sleeping, spawning and randomness.
//!
//! Engine code never calls `tokio::spawn`, `tokio::time::*`, `Instant::now`,
//! `SystemTime::now` or an OS random source directly (clippy's
//! `disallowed-methods` enforces it). It asks an [`Env`] instead, so the
//! simulator can run the very same engine under a deterministic runtime where
//! those calls would break reproducibility or panic.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A boxed, sendable future, the currency of [`Env`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Time, sleeping, spawning and seeding, injected into the engine.
///
/// The trait is object safe so that the engine and every workflow context can
/// share one `Arc<dyn Env>` without an extra type parameter.
pub trait Env: Send + Sync + 'static {
    /// Wall-clock time, used for the timestamps the engine stores.
    fn now(&self) -> SystemTime;

    /// A future that completes after `duration` of this environment's time.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;

    /// Runs `task` in the background. The engine tracks every task it spawns
    /// and waits for them on shutdown, so no join handle is returned.
    fn spawn(&self, task: BoxFuture<()>);

    /// The seed of the engine's random number generator (retry jitter,
    /// generated workflow IDs). A simulator returns its run's seed here.
    fn seed(&self) -> u64;
}

/// Milliseconds since the Unix epoch, the unit of every stored timestamp.
pub(crate) fn unix_ms(time: SystemTime) -> i64 {
    // A clock before 1970 is a broken clock; storing 0 beats panicking.
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The production [`Env`]: the tokio runtime and the system clock.
#[derive(Debug, Clone, Default)]
pub struct TokioEnv {
    seed: Option<u64>,
}

impl TokioEnv {
    /// An environment whose random seed comes from the clock and process ID.
    pub fn new() -> Self {
        Self { seed: None }
    }

    /// An environment with a fixed random seed (reproducible retry jitter).
    pub fn with_seed(seed: u64) -> Self {
        Self { seed: Some(seed) }
    }
}

// This is the one production implementation allowed to touch the real clock,
// timers and task spawner; everything else goes through `Env`.
#[allow(clippy::disallowed_methods)]
impl Env for TokioEnv {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        })
    }
}
