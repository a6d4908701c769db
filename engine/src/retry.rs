//! Retry policies for plain steps, and the backoff the engine itself uses
//! when the database is unavailable.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::Error;
use crate::storage::{ErrorKind, StorageError};

/// How a plain step is retried when its closure returns an error.
///
/// Delays grow exponentially from `backoff_initial` by `backoff_factor`, are
/// capped at `backoff_max`, and are then shortened by a random fraction of up
/// to `jitter` (from the engine's seeded generator), so that many workflows
/// failing together do not retry in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, including the first. `1` means no retries.
    pub attempts_max: u32,
    /// Delay before the second attempt.
    pub backoff_initial: Duration,
    /// Growth of the delay per attempt.
    pub backoff_factor: f64,
    /// Upper bound of any delay.
    pub backoff_max: Duration,
    /// Fraction (0 to 1) of each delay that is randomized away.
    pub jitter: f64,
}

impl RetryPolicy {
    /// No retries: the first error is the step's recorded outcome. This is
    /// the default, because retrying an external call is only safe when the
    /// call is idempotent, which only the application knows.
    pub fn none() -> Self {
        Self {
            attempts_max: 1,
            ..Self::exponential(1)
        }
    }

    /// `attempts_max` attempts with delays of 100 ms, 200 ms, 400 ms, ...
    /// capped at 30 s, with 50% jitter.
    pub fn exponential(attempts_max: u32) -> Self {
        Self {
            attempts_max: attempts_max.max(1),
            backoff_initial: Duration::from_millis(100),
            backoff_factor: 2.0,
            backoff_max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }

    /// The delay after failed attempt number `attempt` (1-based).
    pub(crate) fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.backoff_initial.as_secs_f64() * self.backoff_factor.powi(exponent);
        let capped = base.min(self.backoff_max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0) * rng.r#gen::<f64>();
        Duration::from_secs_f64(capped * (1.0 - jitter))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::none()
    }
}

/// The engine's own retries: storage operations after a lost connection or
/// a conflict, with capped exponential delays jittered by the engine's
/// seeded generator.
impl<S: crate::storage::Storage> crate::runtime::Shared<S> {
    /// The delay before retrying after the database was unavailable or
    /// reported a conflict: 10 ms doubling to 1 s, with jitter.
    pub(crate) fn infra_delay(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(7);
        let base = Duration::from_millis(10 * (1 << exponent)).min(Duration::from_secs(1));
        let factor = self.with_rng(|rng| rng.gen_range(0.5..=1.0));
        base.mul_f64(factor)
    }

    /// Backs off after a retryable storage error; returns any other error.
    /// Unavailability is retried without bound (the database will be back),
    /// conflicts up to `conflict_attempts_max`.
    pub(crate) async fn backoff_after(
        &self,
        error: StorageError,
        attempts: u32,
    ) -> Result<(), Error> {
        match error.kind() {
            ErrorKind::Unavailable => {}
            ErrorKind::Conflict if attempts < self.config().conflict_attempts_max => {}
            _ => return Err(Error::Storage(error)),
        }
        tracing::debug!(%error, attempts, "storage error, retrying");
        self.sleep_unless_shutdown(self.infra_delay(attempts)).await
    }

    /// Runs an idempotent storage operation until it succeeds, fails for
    /// good, or the engine shuts down.
    pub(crate) async fn retry<R, Op, Fut>(&self, mut op: Op) -> Result<R, Error>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<R, StorageError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match op().await {
                Ok(r) => return Ok(r),
                Err(e) => self.backoff_after(e, attempts).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_exponentially_and_are_capped() {
        let policy = RetryPolicy {
            jitter: 0.0,
            backoff_max: Duration::from_millis(500),
            ..RetryPolicy::exponential(10)
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let delays: Vec<u128> = (1..=5)
            .map(|a| policy.delay(a, &mut rng).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_only_shortens_and_is_reproducible_from_the_seed() {
        let policy = RetryPolicy::exponential(5);
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (1..=4)
                .map(|a| policy.delay(a, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        for (a, d) in (1..=4).zip(draw(3)) {
            let full = Duration::from_millis(100 * 2u64.pow(a - 1));
            assert!(d <= full && d >= full / 2, "attempt {a}: {d:?} vs {full:?}");
        }
    }
}
