//! Management of workflows without running any: list and inspect them,
//! cancel, resume and fork them, send messages and read events. The `tandem`
//! CLI is built on this; an [`Engine`](crate::Engine) hands one out too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::env::{Env, TokioEnv, unix_ms};
use crate::error::Error;
use crate::payload;
use crate::schedule::ScheduleInfo;
use crate::storage::{
    ErrorKind, EventInfo, ExecutorInfo, GcCount, MessageInfo, QueueInfo, Status, StepInfo, Storage,
    Transaction, WorkflowFilter, WorkflowFork, WorkflowInfo, WorkflowsGc,
};

/// A workflow with its steps, as management tools show it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowDetail {
    /// The workflow.
    pub workflow: WorkflowInfo,
    /// Its recorded steps, in order.
    pub steps: Vec<StepInfo>,
}

/// Management operations over a storage.
#[derive(Clone)]
pub struct Admin<S: Storage> {
    storage: S,
    env: Arc<dyn Env>,
    /// Draws fork IDs: seeded once from the environment and shared by
    /// clones, so successive forks get successive IDs (not the first draw
    /// of an identically seeded generator each time).
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl<S: Storage> std::fmt::Debug for Admin<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl<S: Storage> Admin<S> {
    /// Management over `storage`, on the system clock.
    pub fn new(storage: S) -> Self {
        Self::with_env(storage, Arc::new(TokioEnv::new()))
    }

    /// Management over `storage` with an injected environment.
    pub fn with_env(storage: S, env: Arc<dyn Env>) -> Self {
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(env.seed())));
        Self { storage, env, rng }
    }

    fn fork_id(&self, id: &str) -> String {
        let suffix: u64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).r#gen();
        format!("{id}-fork-{suffix:016x}")
    }

    /// The current time on its clock (ms since the epoch).
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.env.now())
    }

    /// Workflows matching `filter`, newest first (a page of `filter.limit`).
    pub async fn list_workflows(&self, filter: WorkflowFilter) -> Result<Vec<WorkflowInfo>, Error> {
        Ok(self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.workflows_list(filter).await }))
            .await?)
    }

    /// How many workflows of each status match `filter` (its status, page
    /// and offset ignored), every status in [`Status::ALL`] order; a count
    /// stops at `cap`, so it costs at most `cap` rows per status however
    /// many finished workflows the database keeps.
    pub async fn count_workflows(
        &self,
        filter: WorkflowFilter,
        cap: u64,
    ) -> Result<Vec<(Status, u64)>, Error> {
        Ok(self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.workflows_count(filter, cap).await }))
            .await?)
    }

    /// The declared queues, by name, with their limits, how many of their
    /// workflows wait and run, and how old the oldest waiting one is.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let now_ms = self.now_ms();
        Ok(self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.queues_info(now_ms).await }))
            .await?)
    }

    /// The registered executors, by ID, with their lease and the workflows
    /// each runs.
    pub async fn executors(&self) -> Result<Vec<ExecutorInfo>, Error> {
        Ok(self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.executors_info().await }))
            .await?)
    }

    /// A workflow's messages not yet received, oldest first, and the
    /// events it published, by key.
    pub async fn mailbox(&self, id: &str) -> Result<(Vec<MessageInfo>, Vec<EventInfo>), Error> {
        let id = id.to_owned();
        Ok(self
            .storage
            .autocommit(move |tx| {
                Box::pin(async move {
                    let messages = tx.messages_info(&id).await?;
                    let events = tx.events_info(&id).await?;
                    Ok((messages, events))
                })
            })
            .await?)
    }

    /// One workflow with its steps (inputs, outputs, errors, timings).
    pub async fn get_workflow(&self, id: &str) -> Result<Option<WorkflowDetail>, Error> {
        let id = id.to_owned();
        Ok(self
            .storage
            .autocommit(move |tx| {
                Box::pin(async move {
                    let Some(workflow) = tx.workflow_info(&id).await? else {
                        return Ok(None);
                    };
                    let steps = tx.steps_info(&id).await?;
                    Ok(Some(WorkflowDetail { workflow, steps }))
                })
            })
            .await?)
    }

    async fn require(&self, id: &str) -> Result<WorkflowInfo, Error> {
        let owned = id.to_owned();
        let info = self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.workflow_info(&owned).await }))
            .await?;
        info.ok_or_else(|| Error::WorkflowNotFound { id: id.to_owned() })
    }

    /// Cancels a workflow and its unfinished descendants: they become
    /// `CANCELLED`, and any execution still running stops at its next step
    /// boundary (its writes are fenced). Cancelling a finished workflow does
    /// nothing. Returns the IDs of the workflows cancelled.
    pub async fn cancel(&self, id: &str) -> Result<Vec<String>, Error> {
        self.require(id).await?;
        let owned = id.to_owned();
        let now_ms = self.now_ms();
        Ok(self
            .storage
            .autocommit(move |tx| {
                Box::pin(async move { tx.workflows_cancel(&owned, "cancelled", now_ms).await })
            })
            .await?)
    }

    /// Retention by hand: deletes the finished workflow trees past their
    /// queue's retention (or, with `older_than`, finished longer ago than
    /// that, in every queue), with their steps, messages and events, in
    /// transactions of at most `batch` trees, until none is left; or, with
    /// `dry_run`, only counts them. What it deleted, or would delete.
    pub async fn gc(
        &self,
        older_than: Option<Duration>,
        dry_run: bool,
        batch: u32,
    ) -> Result<GcCount, Error> {
        let older_than_ms = older_than.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut total = GcCount::default();
        loop {
            let params = WorkflowsGc {
                limit: batch.max(1),
                older_than_ms,
                dry_run,
                now_ms: self.now_ms(),
            };
            let counted = self
                .storage
                .autocommit(move |tx| Box::pin(async move { tx.workflows_gc(params).await }))
                .await?;
            total.add(counted);
            if dry_run || counted.roots < u64::from(batch.max(1)) {
                return Ok(total);
            }
        }
    }

    /// Every schedule in the database (declared by any executor, now or
    /// before), by name, with its next tick.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, Error> {
        let now_ms = self.now_ms();
        let states = self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.schedules_list(now_ms).await }))
            .await?;
        Ok(states.iter().map(ScheduleInfo::from_state).collect())
    }

    /// Pauses a schedule: no executor fires it until it is resumed.
    /// Pausing a paused schedule changes nothing.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        self.set_paused(name, true).await
    }

    /// Resumes a paused schedule from now: the ticks that fell in the pause
    /// never run (start one by hand with its [`ScheduledTick`](crate::ScheduledTick) to backfill).
    /// Resuming a schedule that is not paused changes nothing.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        self.set_paused(name, false).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<ScheduleInfo, Error> {
        let owned = name.to_owned();
        let now_ms = self.now_ms();
        let state = self
            .storage
            .autocommit(move |tx| {
                Box::pin(async move { tx.schedule_pause(&owned, paused, now_ms).await })
            })
            .await?;
        match state {
            Some(state) => Ok(ScheduleInfo::from_state(&state)),
            None => Err(Error::InvalidSchedule {
                name: name.to_owned(),
                reason: "no such schedule (executors register schedules at launch)".to_owned(),
            }),
        }
    }

    /// Enqueues a cancelled workflow again, with the cancelled members of
    /// its subtree (what cancelling it cancelled); an executor claims each
    /// and continues from its last checkpoint (deadlines are cleared).
    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        let owned = id.to_owned();
        let now_ms = self.now_ms();
        let resumed = self
            .storage
            .autocommit(move |tx| Box::pin(async move { tx.workflow_resume(&owned, now_ms).await }))
            .await?;
        if resumed {
            return Ok(());
        }
        let info = self.require(id).await?;
        Err(Error::InvalidTransition {
            id: id.to_owned(),
            status: info.row.status.to_string(),
            action: "resume",
        })
    }

    /// Starts a new run of a workflow that replays the original's recorded
    /// steps before `from_step` and runs the rest anew (for example after
    /// fixing a bug in step `from_step`). Returns the new workflow's ID.
    pub async fn fork(&self, id: &str, from_step: i32) -> Result<String, Error> {
        // A drawn ID can be taken (another process whose generator had the
        // same seed forked this workflow): the insert then fails with a
        // unique violation and rolls back whole, so draw again.
        const DRAWS_MAX: u32 = 8;
        let mut draws = 0;
        loop {
            draws += 1;
            let params = WorkflowFork {
                source_id: id.to_owned(),
                new_id: self.fork_id(id),
                from_step: from_step.max(0)
                    + i32::from(crate::bugs::active(crate::bugs::Bug::ForkCopiesItsStep)),
                now_ms: self.now_ms(),
            };
            let new_id = params.new_id.clone();
            let forked = self
                .storage
                .autocommit(move |tx| Box::pin(async move { tx.workflow_fork(params).await }))
                .await;
            return match forked {
                Ok(true) => Ok(new_id),
                Ok(false) => Err(Error::WorkflowNotFound { id: id.to_owned() }),
                Err(e) if e.kind() == ErrorKind::Invalid && draws < DRAWS_MAX => continue,
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Sends `message` to workflow `id` on `topic` (in its own transaction;
    /// same checks as the SQL function `tandem.send`).
    pub async fn send<T: Serialize>(
        &self,
        id: &str,
        topic: &str,
        message: &T,
    ) -> Result<(), Error> {
        let payload = payload::encode(message, || format!("message on topic {topic:?}"))?;
        let (id, topic) = (id.to_owned(), topic.to_owned());
        let now_ms = self.now_ms();
        Ok(self
            .storage
            .autocommit(move |tx| {
                Box::pin(async move { tx.message_send(&id, &topic, &payload, now_ms).await })
            })
            .await?)
    }

    /// Waits up to `timeout` for workflow `id` to publish event `key`, and
    /// returns its latest value (`None` on timeout).
    pub async fn get_event<T: DeserializeOwned>(
        &self,
        id: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<T>, Error> {
        let deadline_ms = self
            .now_ms()
            .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
        loop {
            let (owned_id, owned_key) = (id.to_owned(), key.to_owned());
            let value = self
                .storage
                .autocommit(move |tx| {
                    Box::pin(async move { tx.event_get(&owned_id, &owned_key).await })
                })
                .await?;
            if let Some(json) = value {
                return payload::decode(&json, || format!("event {key:?} of workflow {id:?}"))
                    .map(Some);
            }
            let now_ms = self.now_ms();
            if now_ms >= deadline_ms {
                return Ok(None);
            }
            let wait = Duration::from_millis(((deadline_ms - now_ms) as u64).min(50));
            self.env.sleep(wait).await;
        }
    }
}
