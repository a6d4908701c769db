//! The schedule loop: fires the schedules this executor declares when their
//! ticks are due (`crate::schedule` has the policy and the tick arithmetic).
//!
//! Every executor that declares a schedule runs this loop for it; the row
//! lock decides who fires a tick, the cursor and the derived workflow IDs
//! make firing it twice harmless.

use super::*;
use crate::schedule::{CatchUp, Schedule, ScheduledTick, Spec, plan, tick_id};
use crate::storage::{ScheduleState, Transaction, WorkflowEnqueue};

/// What one firing attempt found.
enum Fired {
    /// Fired (perhaps nothing): the next tick is due `in_ms` from now by
    /// the database clock, if there is one.
    Done { in_ms: Option<i64> },
    /// Another transaction holds the row, or it is paused, or gone: look
    /// again after the poll interval.
    Later,
}

impl<S: Storage> Shared<S> {
    /// Fires each declared schedule when its next tick is due, forever.
    pub(super) async fn schedule_loop(self: Arc<Self>) {
        let schedules = self.config.schedules.clone();
        // When to try each next, by this executor's clock.
        let mut due = vec![i64::MIN; schedules.len()];
        let mut errors = 0u32;
        let poll_ms = i64::try_from(self.config.queue_poll_interval.as_millis()).unwrap_or(1000);
        while !self.is_shutting_down() {
            let mut failed = false;
            for (i, (schedule, workflow)) in schedules.iter().enumerate() {
                let now_ms = self.now_ms();
                if due[i] > now_ms {
                    continue;
                }
                due[i] = match self.fire(schedule, workflow, now_ms).await {
                    // 1 ms past the tick: the database clock is then past it
                    // too, unless the clocks disagree (then the next attempt
                    // finds nothing due yet and looks again).
                    Ok(Fired::Done { in_ms: Some(in_ms) }) => {
                        now_ms.saturating_add(in_ms.clamp(0, 60_000) + 1)
                    }
                    // No tick ever again, or one more than a minute away:
                    // look again in a minute (a redeploy may change the
                    // declaration).
                    Ok(Fired::Done { in_ms: None }) => now_ms + 60_000,
                    Ok(Fired::Later) => now_ms + poll_ms,
                    Err(error) => {
                        // Contention and outages are routine; anything else
                        // (a privilege, a bad declaration) needs a person.
                        if matches!(error.kind(), ErrorKind::Conflict | ErrorKind::Unavailable) {
                            tracing::debug!(%error, schedule = schedule.name(), "schedule firing failed");
                        } else {
                            tracing::warn!(%error, schedule = schedule.name(), "schedule firing failed");
                        }
                        failed = true;
                        now_ms
                            + i64::try_from(self.infra_delay(errors + 1).as_millis())
                                .unwrap_or(1000)
                    }
                };
            }
            errors = if failed { errors + 1 } else { 0 };
            let next = due.iter().copied().min().unwrap_or(i64::MAX);
            let wait = next.saturating_sub(self.now_ms()).clamp(1, 60_000);
            if self
                .sleep_unless_shutdown(Duration::from_millis(wait as u64))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// One firing transaction: lock the row, enqueue the due ticks, move
    /// the cursor, commit. An unknown commit outcome is safe to retry: if
    /// it committed, the cursor has moved; if the retry still finds a tick
    /// due that was enqueued, its derived ID makes the enqueue a no-op.
    async fn fire(&self, schedule: &Schedule, workflow: &str, now_ms: i64) -> Result<Fired, Error> {
        let name = schedule.name();
        let mut tx = self.storage.begin().await?;
        let Some(state) = tx.schedule_lock(name, now_ms).await? else {
            let _ = tx.rollback().await;
            return Ok(Fired::Later);
        };
        if state.paused && !crate::bugs::active(crate::bugs::Bug::ScheduleIgnoresPause) {
            let _ = tx.rollback().await;
            return Ok(Fired::Later);
        }
        // The stored declaration is the one every executor fires by: the
        // last executor to launch wrote it.
        let (spec, catch_up) = match stored_spec(&state) {
            Ok(spec) => spec,
            Err(error) => {
                let _ = tx.rollback().await;
                tracing::warn!(%error, "cannot fire schedule: its stored declaration is unusable");
                return Ok(Fired::Done { in_ms: None });
            }
        };
        let catch_up = if crate::bugs::active(crate::bugs::Bug::ScheduleDropsMissed) {
            CatchUp::Skip
        } else {
            catch_up
        };
        let planned = plan(
            &spec,
            catch_up,
            state.decl.grace_ms,
            state.cursor_ms,
            state.now_ms,
        );
        for &tick in &planned.ticks {
            let tick = if crate::bugs::active(crate::bugs::Bug::ScheduleTickIsFireTime) {
                state.now_ms
            } else {
                tick
            };
            let input = self.encode(
                &ScheduledTick {
                    schedule: name.to_owned(),
                    scheduled_at_ms: tick,
                },
                || format!("input of schedule {name:?}"),
            )?;
            tx.workflow_enqueue(WorkflowEnqueue {
                name: state.decl.workflow.clone(),
                input,
                queue: state.decl.queue.clone(),
                workflow_id: Some(tick_id(name, tick)),
                priority: 0,
                dedup_key: None,
                delay_ms: None,
                dedup_error: false,
                concurrency_key: None,
                debounce_key: None,
                debounce_max_wait_ms: None,
                // No caller: each scheduled run is a trace of its own.
                trace_parent: None,
            })
            .await?;
        }
        tx.schedule_advance(
            name,
            planned.cursor_ms,
            planned.ticks.last().copied(),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        if !planned.ticks.is_empty() {
            tracing::debug!(
                schedule = name,
                workflow,
                ticks = planned.ticks.len(),
                "schedule fired"
            );
            self.wake_claimer();
        }
        let in_ms = spec
            .next_after(planned.cursor_ms)
            .map(|next| next.saturating_sub(state.now_ms));
        Ok(Fired::Done { in_ms })
    }
}

/// The stored declaration, parsed.
fn stored_spec(state: &ScheduleState) -> Result<(Spec, CatchUp), Error> {
    let d = &state.decl;
    let spec = Spec::parse(&d.name, &d.cron, &d.time_zone)?;
    let catch_up = CatchUp::from_stored(&d.catch_up, d.catch_up_max).ok_or_else(|| {
        Error::InvalidSchedule {
            name: d.name.clone(),
            reason: format!("unknown catch-up policy {:?}", d.catch_up),
        }
    })?;
    Ok((spec, catch_up))
}
