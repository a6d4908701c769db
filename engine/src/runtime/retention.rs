//! The retention loop: deletes finished workflow trees past their queue's
//! retention, in bounded batches, one transaction each. Executors that run
//! it at once take different batches (`SKIP LOCKED` on the roots).

use super::*;
use crate::storage::{GcCount, Transaction, WorkflowsGc};

/// The most batches one round deletes: a backlog larger than that (a
/// retention just switched on over years of history) is worked off over
/// several rounds instead of one long burst.
const BATCHES_PER_ROUND: u32 = 100;

impl<S: Storage> Shared<S> {
    /// Every `gc_interval`, deletes batches until one comes up short.
    pub(super) async fn gc_loop(self: Arc<Self>) {
        while self
            .sleep_unless_shutdown(self.config.gc_interval)
            .await
            .is_ok()
        {
            let mut total = GcCount::default();
            for _ in 0..BATCHES_PER_ROUND {
                if self.is_shutting_down() {
                    break;
                }
                let started_ms = self.now_ms();
                let params = WorkflowsGc {
                    limit: self.config.gc_batch,
                    older_than_ms: None,
                    dry_run: false,
                    now_ms: self.now_ms(),
                };
                match self
                    .storage
                    .autocommit(move |tx| Box::pin(async move { tx.workflows_gc(params).await }))
                    .await
                {
                    Ok(batch) => {
                        total.add(batch);
                        if batch.roots < u64::from(self.config.gc_batch) {
                            break;
                        }
                        // Paced: as long again as the batch took, so that a
                        // backlog is deleted at most half the time and the
                        // workflows running meanwhile keep most of the
                        // database (benchmarks.md §8).
                        let took = self.now_ms().saturating_sub(started_ms).max(1);
                        if self
                            .sleep_unless_shutdown(Duration::from_millis(took as u64))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(error) => {
                        // An unknown outcome is harmless: the next round
                        // finds what is left.
                        tracing::debug!(%error, "retention batch failed");
                        break;
                    }
                }
            }
            if total.workflows > 0 {
                tracing::info!(
                    workflows = total.workflows,
                    steps = total.steps,
                    messages = total.messages,
                    events = total.events,
                    "deleted finished workflows past their retention"
                );
            }
        }
    }
}
