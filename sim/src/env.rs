//! [`MadsimEnv`]: the engine's `Env` on madsim's virtual clock, timers and
//! task spawner. The engine itself never names madsim.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem::Env;
use tandem::env::BoxFuture;

use crate::world::World;

/// The simulated environment of one executor incarnation.
#[derive(Clone)]
pub struct MadsimEnv {
    world: Arc<World>,
    seed: u64,
    skew_ms: i64,
}

impl MadsimEnv {
    /// An environment whose engine seed is `seed`, on the run's clock.
    pub fn new(world: Arc<World>, seed: u64) -> Self {
        Self {
            world,
            seed,
            skew_ms: 0,
        }
    }

    /// The same on a clock `skew_ms` ahead of the run's (behind if
    /// negative): a machine whose clock is off.
    pub fn skewed(mut self, skew_ms: i64) -> Self {
        self.skew_ms = skew_ms;
        self
    }
}

/// Where the simulated wall clock starts: a fixed date, so runs replay.
pub(crate) const EPOCH_OFFSET: Duration = Duration::from_secs(1_750_000_000);

impl Env for MadsimEnv {
    fn now(&self) -> SystemTime {
        // Virtual time plus the run's clock jumps (which may go backwards)
        // plus this machine's skew.
        let ms = self.world.now_ms() + self.skew_ms;
        UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(madsim::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<()>) {
        // Spawned on the current node, so the task dies with it on a kill.
        drop(madsim::task::spawn(task));
    }

    fn seed(&self) -> u64 {
        self.seed
    }
}
