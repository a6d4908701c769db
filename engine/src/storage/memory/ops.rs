//! The engine's operations on the memory backend, each modelled on the SQL
//! that `storage/postgres.rs` runs for it.

use super::*;
use std::collections::BTreeMap;

impl MemConn {
    pub(super) async fn workflow_insert(
        &mut self,
        p: WorkflowInsert,
    ) -> StorageResult<WorkflowInserted> {
        // INSERT ... ON CONFLICT (id) DO NOTHING: waits for a concurrent
        // inserter of the same ID, then inserts nothing if it committed.
        let snap = self.start("workflow_insert")?;
        self.insert_at(&snap, p).await
    }

    /// `workflow_insert_many`: one INSERT of every top-level row of the
    /// group on one snapshot, in ID order; then, for each one that was not
    /// inserted, the existing row in a statement of its own.
    pub(super) async fn workflow_insert_many(
        &mut self,
        ps: Vec<WorkflowInsert>,
    ) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
        crate::storage::debug_check_many(
            ps.iter().map(|p| p.id.as_str()),
            ps.iter()
                .any(|p| p.parent_id.is_some() || p.parent_epoch.is_some()),
        );
        let snap = self.start("workflow_insert_many")?;
        let mut order: Vec<usize> = (0..ps.len()).collect();
        order.sort_by(|&a, &b| ps[a].id.cmp(&ps[b].id));
        let mut inserted = vec![false; ps.len()];
        for i in order {
            let row = Self::started_row(ps[i].clone());
            inserted[i] = self
                .insert_row(&Workflows, &snap, row.id.clone(), || row.clone(), true)
                .await?;
        }
        let mut answers = Vec::with_capacity(ps.len());
        for (p, inserted) in ps.iter().zip(inserted) {
            answers.push(if inserted {
                Ok(WorkflowInserted::Inserted)
            } else {
                match self.workflow_get(&p.id).await? {
                    Some(row) => Ok(WorkflowInserted::Existing(Box::new(row))),
                    None => Err(MemError::SerializationFailure.into()),
                }
            });
        }
        Ok(answers)
    }

    /// The row a start inserts.
    fn started_row(p: WorkflowInsert) -> WorkflowRecord {
        WorkflowRecord {
            id: p.id.clone(),
            name: p.name,
            status: Status::Running,
            input: p.input,
            output: None,
            error: None,
            executor_id: Some(p.executor_id),
            owner_epoch: EPOCH_FIRST,
            created_ms: p.now_ms,
            updated_ms: p.now_ms,
            completed_ms: None,
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            dedup_key: None,
            concurrency_key: None,
            debounce_key: None,
            run_after_ms: None,
            // clock_timestamp(): the database clock, which the model takes
            // from the engine.
            started_ms: Some(p.now_ms),
            parent_id: p.parent_id.clone(),
            deadline_ms: p.deadline_ms,
            wait_step: None,
            wait_until_ms: None,
            version: Some(p.version.clone()),
            trace_parent: p.trace_parent.clone(),
        }
    }

    /// One start under the statement snapshot `snap`.
    async fn insert_at(
        &mut self,
        snap: &Snapshot,
        p: WorkflowInsert,
    ) -> StorageResult<WorkflowInserted> {
        let row = Self::started_row(p.clone());
        // A child's row comes from its parent's, locked (FOR NO KEY UPDATE,
        // re-checked after a wait) while it runs at the starting epoch.
        let parent = match (&p.parent_id, p.parent_epoch) {
            (Some(parent), Some(epoch)) => {
                let key = parent.clone();
                let idx = {
                    let mut db = self.storage.db();
                    let (t, txs) = Workflows.split(&mut db);
                    t.visible(txs, snap, &key)
                        .filter(|i| running_at(t.data(&key, *i), epoch))
                };
                let locked = match idx {
                    None => None,
                    Some(idx) => {
                        self.lock_row(&Workflows, snap, &key, idx, LockWait::Block, |w| {
                            running_at(w, epoch)
                        })
                        .await?
                    }
                };
                Some((parent.clone(), locked.is_some()))
            }
            _ => None,
        };
        if parent.as_ref().is_none_or(|(_, live)| *live)
            && self
                .insert_row(&Workflows, snap, p.id.clone(), || row.clone(), true)
                .await?
        {
            return Ok(WorkflowInserted::Inserted);
        }
        // A statement of its own: the INSERT's snapshot may predate the
        // conflicting row's commit.
        match self.workflow_get(&p.id).await? {
            Some(row) => Ok(WorkflowInserted::Existing(Box::new(row))),
            None => match parent {
                Some((parent, _)) => Err(fenced(&parent)),
                None => Err(MemError::SerializationFailure.into()),
            },
        }
    }

    pub(super) async fn workflow_get(&mut self, id: &str) -> Result<Option<WorkflowRow>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflow_get")?;
        let key = id.to_owned();
        let (t, txs) = Workflows.split(&mut db);
        Ok(t.visible(txs, &snap, &key)
            .map(|i| workflow_row(t.data(&key, i))))
    }

    pub(super) async fn workflow_complete(&mut self, p: WorkflowComplete) -> StorageResult<()> {
        crate::storage::debug_check_completion(&p);
        // UPDATE ... WHERE id = $1 AND owner_epoch = $2 AND status =
        // 'RUNNING': after waiting for a concurrent writer (an epoch bump)
        // the condition is checked again on the newest version.
        let snap = self.start("workflow_complete")?;
        self.complete_at(&snap, p).await?
    }

    /// `workflow_complete_many`: one UPDATE of every row of the group, on
    /// one snapshot, each row re-checked after a wait as for one row.
    pub(super) async fn workflow_complete_many(
        &mut self,
        ps: Vec<WorkflowComplete>,
    ) -> StorageResult<Vec<StorageResult<()>>> {
        crate::storage::debug_check_many(ps.iter().map(|p| p.id.as_str()), false);
        ps.iter().for_each(crate::storage::debug_check_completion);
        let snap = self.start("workflow_complete_many")?;
        let mut done = Vec::with_capacity(ps.len());
        for p in ps {
            done.push(self.complete_at(&snap, p).await?);
        }
        Ok(done)
    }

    /// One row of a completion's UPDATE under the statement snapshot
    /// `snap`: the inner `Err` is the fence's answer, the outer one fails
    /// the statement.
    async fn complete_at(
        &mut self,
        snap: &Snapshot,
        p: WorkflowComplete,
    ) -> StorageResult<StorageResult<()>> {
        let updated = self
            .update_row(&Workflows, snap, &p.id, |w| {
                (w.owner_epoch == p.owner_epoch && w.status == Status::Running).then(|| {
                    WorkflowRecord {
                        status: p.status,
                        output: p.output.clone(),
                        error: p.error.clone(),
                        updated_ms: p.now_ms,
                        completed_ms: Some(p.now_ms),
                        ..w.clone()
                    }
                })
            })
            .await?;
        Ok(match updated {
            Some(_) => Ok(()),
            None => Err(fenced(&p.id)),
        })
    }

    pub(super) async fn workflows_recover(
        &mut self,
        p: WorkflowsRecover,
    ) -> Result<Vec<WorkflowRow>, MemError> {
        let snap = self.start("workflows_recover")?;
        let matches = |w: &WorkflowRecord| {
            w.executor_id.as_deref() == Some(p.executor_id.as_str())
                && w.status == Status::Running
                && p.workflow_id.as_ref().is_none_or(|id| *id == w.id)
        };
        let keys: Vec<String> = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            match &p.workflow_id {
                Some(id) => t
                    .visible(txs, &snap, id)
                    .map(|_| id.clone())
                    .into_iter()
                    .collect(),
                None => t.scan(txs, &snap, ..).map(|(k, _)| k.clone()).collect(),
            }
        };
        let mut rows = Vec::new();
        for key in keys {
            // One UPDATE: a run of an accepted version gets a bumped epoch
            // and runs here; any other goes back to its queue.
            let bumped = self
                .update_row(&Workflows, &snap, &key, |w| {
                    matches(w).then(|| {
                        if p.versions.accepts(w.version.as_deref())
                            || crate::bugs::active(crate::bugs::Bug::RecoverIgnoresVersion)
                        {
                            WorkflowRecord {
                                owner_epoch: w.owner_epoch + 1,
                                updated_ms: p.now_ms,
                                ..w.clone()
                            }
                        } else {
                            handed_back(w, p.now_ms)
                        }
                    })
                })
                .await?;
            if let Some(w) = bumped.filter(|w| w.status == Status::Running) {
                rows.push(workflow_row(&w));
            }
        }
        Ok(rows)
    }

    pub(super) async fn steps_load(&mut self, workflow_id: &str) -> Result<Vec<StepRow>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "steps_load")?;
        let (t, txs) = Steps.split(&mut db);
        let range = (workflow_id.to_owned(), i32::MIN)..=(workflow_id.to_owned(), i32::MAX);
        Ok(t.scan(txs, &snap, range)
            .map(|(k, i)| step_row(t.data(k, i)))
            .collect())
    }

    pub(super) async fn step_get(
        &mut self,
        workflow_id: &str,
        step_id: i32,
    ) -> Result<Option<StepRow>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "step_get")?;
        Ok(read(&Steps, &mut db, &snap, &(workflow_id.to_owned(), step_id)).map(|s| step_row(&s)))
    }

    pub(super) async fn step_record(&mut self, p: StepRecord) -> StorageResult<StepRecorded> {
        crate::storage::debug_check_step_record(&p);
        // One statement: the fence reads the statement's snapshot; the
        // insert then waits for a concurrent inserter of the same step and
        // does nothing if it committed (ON CONFLICT DO NOTHING). The fence
        // values stay those of the snapshot, as in the CTE.
        let snap = self.start("step_record")?;
        // A marker that changes the run's version: the statement's UPDATE of
        // the run's row first, strictly fenced (it waits for and re-checks
        // the newest version, and keeps the row locked).
        if let Some(version) = &p.version {
            let stamped = self
                .update_row(&Workflows, &snap, &p.workflow_id, |w| {
                    (w.owner_epoch == p.owner_epoch && w.status == Status::Running).then(|| {
                        WorkflowRecord {
                            version: Some(version.clone()),
                            ..w.clone()
                        }
                    })
                })
                .await?;
            if stamped.is_none() {
                return Err(fenced(&p.workflow_id));
            }
        }
        self.step_insert(&snap, p).await?
    }

    /// `step_record_many`: the checkpoint statement for every entry of the
    /// group on one snapshot (PostgreSQL's one multi-row statement). A
    /// fence that fails answers its entry; the re-check's error (the
    /// trigger's) fails the statement.
    pub(super) async fn step_record_many(
        &mut self,
        ps: Vec<StepRecord>,
    ) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
        crate::storage::debug_check_many(
            ps.iter().map(|p| p.workflow_id.as_str()),
            ps.iter().any(|p| p.version.is_some()),
        );
        ps.iter().for_each(crate::storage::debug_check_step_record);
        let snap = self.start("step_record_many")?;
        let mut recorded = Vec::with_capacity(ps.len());
        for p in ps {
            recorded.push(self.step_insert(&snap, p).await?);
        }
        Ok(recorded)
    }

    /// One checkpoint's fence and insert under the statement snapshot
    /// `snap`: the inner `Err` is the fence's answer, the outer one fails
    /// the statement.
    async fn step_insert(
        &mut self,
        snap: &Snapshot,
        p: StepRecord,
    ) -> StorageResult<StorageResult<StepRecorded>> {
        let fence = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            t.visible(txs, snap, &p.workflow_id).map(|i| {
                let w = t.data(&p.workflow_id, i);
                (w.owner_epoch, w.status)
            })
        };
        let owned = fence == Some((p.owner_epoch, Status::Running));
        if !owned {
            return Ok(Err(fenced(&p.workflow_id)));
        }
        let row = StepRecordRow {
            workflow_id: p.workflow_id.clone(),
            step_id: p.step_id,
            name: p.name,
            kind: p.kind,
            output: p.output,
            error: p.error,
            owner_epoch: p.owner_epoch,
            attempts: p.attempts,
            started_ms: p.started_ms,
            completed_ms: p.now_ms,
        };
        let key = (p.workflow_id.clone(), p.step_id);
        if !self
            .insert_row(&Steps, snap, key, || row.clone(), true)
            .await?
        {
            return Ok(Ok(StepRecorded::Exists));
        }
        // The trigger `tandem.steps_fence`: the fence again, on a new
        // snapshot, after the insert (and any wait for a concurrent
        // inserter). A superseded execution whose statement waited while
        // retention deleted the step's finished workflow must not insert it
        // again; the error aborts the transaction, as the trigger's does.
        if p.owner_epoch != EPOCH_NEVER_RAN
            && !crate::bugs::active(crate::bugs::Bug::StepFenceNotRechecked)
        {
            let now = self.start("step_record")?;
            let mut db = self.storage.db();
            let owned = read(&Workflows, &mut db, &now, &p.workflow_id)
                .is_some_and(|w| w.owner_epoch == p.owner_epoch && w.status == Status::Running);
            if !owned {
                let e = MemError::Raised {
                    sqlstate: crate::storage::contract::STEP_FENCED_SQLSTATE,
                    message: format!(
                        "workflow \"{}\" is no longer owned by this execution",
                        p.workflow_id
                    ),
                };
                return Err(self.s.fail(&mut db, e).into());
            }
        }
        Ok(Ok(StepRecorded::Recorded))
    }

    pub(super) async fn executor_register(&mut self, p: ExecutorRegister) -> Result<(), MemError> {
        // The heartbeat's upsert, then UPDATE ... SET app_version, accepts:
        // one modelled statement (the same rows end the same way).
        self.executor_upsert(&p.executor_id, p.now_ms, p.lease_ms, Some(&p.versions))
            .await?;
        // In name order, as on PostgreSQL, so that executors launching at
        // once lock the shared rows in the same order.
        let mut workflows = p.workflows;
        workflows.sort();
        for (name, types) in workflows {
            let snap = self.start("executor_register")?;
            let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
            self.upsert_row(&WorkflowNames, &snap, name, types.clone(), |_| {
                types.clone()
            })
            .await?;
        }
        let mut queues = p.queues;
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues {
            let snap = self.start("executor_register")?;
            let row = QueueRecord {
                concurrency_global: q.concurrency_global,
                rate_limit: q.rate_limit,
                concurrency_per_key: q.concurrency_per_key,
                retention_ms: q.retention_ms,
            };
            self.upsert_row(&Queues, &snap, q.name, row.clone(), |_| row.clone())
                .await?;
        }
        let mut schedules = p.schedules;
        schedules.sort_by(|a, b| a.name.cmp(&b.name));
        for decl in schedules {
            // INSERT ... ON CONFLICT (name) DO UPDATE SET <the declaration>:
            // the cursor and the pause survive a redeploy.
            let snap = self.start("executor_register")?;
            let row = ScheduleRecord {
                decl: decl.clone(),
                paused: false,
                cursor_ms: p.now_ms,
                last_tick_ms: None,
                updated_ms: p.now_ms,
            };
            self.upsert_row(&Schedules, &snap, decl.name.clone(), row, |old| {
                ScheduleRecord {
                    decl: decl.clone(),
                    updated_ms: if old.decl == decl {
                        old.updated_ms
                    } else {
                        p.now_ms
                    },
                    ..old.clone()
                }
            })
            .await?;
        }
        let snap = self.start("executor_register")?;
        for (key, value) in [
            ("notify_on_enqueue", p.notify_on_enqueue.to_string()),
            ("payload_max_bytes", p.payload_max_bytes.to_string()),
        ] {
            self.upsert_row(&Settings, &snap, key.to_owned(), value.clone(), |_| {
                value.clone()
            })
            .await?;
        }
        Ok(())
    }

    pub(super) async fn workflows_gc(&mut self, p: WorkflowsGc) -> Result<GcCount, MemError> {
        use crate::bugs::{Bug, active};
        // One statement, one snapshot, as the CTE on PostgreSQL.
        let snap = self.start("workflows_gc")?;
        let terminal = |w: &WorkflowRecord| w.status.is_terminal();
        let (rows, retention) = {
            let mut db = self.storage.db();
            let retention: BTreeMap<String, Option<i64>> = {
                let (t, txs) = Queues.split(&mut db);
                t.scan(txs, &snap, ..)
                    .map(|(k, i)| (k.clone(), t.data(k, i).retention_ms))
                    .collect()
            };
            let (t, txs) = Workflows.split(&mut db);
            let rows: BTreeMap<String, WorkflowRecord> = t
                .scan(txs, &snap, ..)
                .map(|(k, i)| (k.clone(), t.data(k, i).clone()))
                .collect();
            (rows, retention)
        };
        // The root's queue decides (a child runs wherever it was started).
        let root_queue = |w: &WorkflowRecord| {
            let mut at = w;
            while let Some(parent) = at.parent_id.as_ref().and_then(|p| rows.get(p)) {
                at = parent;
            }
            at.queue.clone()
        };
        let old = |w: &WorkflowRecord| {
            let keep = p
                .older_than_ms
                .or_else(|| retention.get(&root_queue(w)).copied().flatten());
            // `parent_id IS NULL`, unless a planted bug collects children
            // on their own.
            (w.parent_id.is_none() || active(Bug::GcIgnoresAncestors))
                && terminal(w)
                && keep.is_some_and(|keep| w.completed_ms.is_some_and(|c| c < p.now_ms - keep))
        };
        let mut candidates: Vec<&WorkflowRecord> = rows.values().filter(|w| old(w)).collect();
        candidates.sort_by(|a, b| (a.completed_ms, &a.id).cmp(&(b.completed_ms, &b.id)));
        let mut roots: Vec<String> = Vec::new();
        for w in candidates {
            if p.dry_run {
                roots.push(w.id.clone());
                continue;
            }
            if roots.len() as u64 >= u64::from(p.limit) {
                break;
            }
            let idx = {
                let mut db = self.storage.db();
                let (t, txs) = Workflows.split(&mut db);
                t.visible(txs, &snap, &w.id)
            };
            let Some(idx) = idx else { continue };
            if self
                .lock_row(&Workflows, &snap, &w.id, idx, LockWait::SkipLocked, |v| {
                    old(v)
                })
                .await?
                .is_some()
            {
                roots.push(w.id.clone());
            }
        }
        // The trees, from the snapshot; a tree with an unfinished member
        // stays whole.
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for w in rows.values() {
            if let Some(parent) = &w.parent_id {
                children.entry(parent.as_str()).or_default().push(&w.id);
            }
        }
        let mut doomed: Vec<String> = Vec::new();
        for root in &roots {
            let mut tree = vec![root.as_str()];
            let mut at = 0;
            while at < tree.len() {
                if let Some(c) = children.get(tree[at]) {
                    tree.extend(c.iter().copied());
                }
                at += 1;
            }
            if tree.iter().all(|id| rows.get(*id).is_some_and(terminal)) {
                doomed.extend(tree.into_iter().map(str::to_owned));
            }
        }
        doomed.sort();
        doomed.dedup();
        let mut count = GcCount {
            roots: roots.len() as u64,
            ..GcCount::default()
        };
        let doomed: std::collections::BTreeSet<String> = if p.dry_run {
            doomed.into_iter().collect()
        } else {
            let mut deleted = std::collections::BTreeSet::new();
            for id in doomed {
                // Re-checked on a row changed since the snapshot.
                if self.delete_row(&Workflows, &snap, &id, terminal).await? {
                    deleted.insert(id);
                }
            }
            deleted
        };
        count.workflows = doomed.len() as u64;
        let (steps, messages, events) = {
            let mut db = self.storage.db();
            let (t, txs) = Steps.split(&mut db);
            let steps: Vec<(String, i32)> = t
                .scan(txs, &snap, ..)
                .filter(|(k, _)| doomed.contains(&k.0))
                .map(|(k, _)| k.clone())
                .collect();
            let (t, txs) = Messages.split(&mut db);
            let messages: Vec<i64> = t
                .scan(txs, &snap, ..)
                .filter(|(k, i)| doomed.contains(&t.data(k, *i).workflow_id))
                .map(|(k, _)| *k)
                .collect();
            let (t, txs) = Events.split(&mut db);
            let events: Vec<(String, String)> = t
                .scan(txs, &snap, ..)
                .filter(|(k, _)| doomed.contains(&k.0))
                .map(|(k, _)| k.clone())
                .collect();
            (steps, messages, events)
        };
        count.steps = steps.len() as u64;
        count.messages = messages.len() as u64;
        count.events = events.len() as u64;
        if p.dry_run {
            return Ok(count);
        }
        if !active(Bug::GcLeavesSteps) {
            for key in &steps {
                self.delete_row(&Steps, &snap, key, |_| true).await?;
            }
        }
        for key in &messages {
            self.delete_row(&Messages, &snap, key, |_| true).await?;
        }
        for key in &events {
            self.delete_row(&Events, &snap, key, |_| true).await?;
        }
        Ok(count)
    }

    pub(super) async fn schedule_lock(
        &mut self,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<ScheduleState>, MemError> {
        // SELECT ... FOR UPDATE SKIP LOCKED.
        let snap = self.start("schedule_lock")?;
        let key = name.to_owned();
        let idx = {
            let mut db = self.storage.db();
            let (t, txs) = Schedules.split(&mut db);
            t.visible(txs, &snap, &key)
        };
        let Some(idx) = idx else { return Ok(None) };
        let Some(latest) = self
            .lock_row(&Schedules, &snap, &key, idx, LockWait::SkipLocked, |_| true)
            .await?
        else {
            return Ok(None);
        };
        let mut db = self.storage.db();
        let (t, _) = Schedules.split(&mut db);
        Ok(Some(schedule_state(t.data(&key, latest), now_ms)))
    }

    pub(super) async fn schedule_advance(
        &mut self,
        name: &str,
        cursor_ms: i64,
        last_tick_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), MemError> {
        let snap = self.start("schedule_advance")?;
        self.update_row(&Schedules, &snap, &name.to_owned(), |s| {
            Some(ScheduleRecord {
                cursor_ms,
                last_tick_ms: last_tick_ms.or(s.last_tick_ms),
                updated_ms: now_ms,
                ..s.clone()
            })
        })
        .await?;
        Ok(())
    }

    pub(super) async fn schedule_pause(
        &mut self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Option<ScheduleState>, MemError> {
        // `tandem.pause_schedule` / `tandem.resume_schedule`: one UPDATE
        // (waiting for a firing transaction's lock), then the row.
        let snap = self.start("schedule_pause")?;
        let key = name.to_owned();
        self.update_row(&Schedules, &snap, &key, |s| {
            (s.paused != paused).then(|| ScheduleRecord {
                paused,
                cursor_ms: if paused {
                    s.cursor_ms
                } else {
                    now_ms.max(s.cursor_ms)
                },
                updated_ms: now_ms,
                ..s.clone()
            })
        })
        .await?;
        let snap = self.start("schedule_pause")?;
        let mut db = self.storage.db();
        Ok(read(&Schedules, &mut db, &snap, &key).map(|s| schedule_state(&s, now_ms)))
    }

    pub(super) async fn schedules_list(
        &mut self,
        now_ms: i64,
    ) -> Result<Vec<ScheduleState>, MemError> {
        let snap = self.start("schedules_list")?;
        let mut db = self.storage.db();
        let (t, txs) = Schedules.split(&mut db);
        Ok(t.scan(txs, &snap, ..)
            .map(|(k, i)| schedule_state(t.data(k, i), now_ms))
            .collect())
    }

    pub(super) async fn executor_heartbeat(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), MemError> {
        self.executor_upsert(executor_id, now_ms, lease_ms, None)
            .await
    }

    /// `executor_heartbeat`'s upsert; with `versions` (a registration) it
    /// also sets the executor's versions.
    async fn executor_upsert(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
        versions: Option<&Versions>,
    ) -> Result<(), MemError> {
        let snap = self.start("executor_heartbeat")?;
        // clock_timestamp() + lease: the engine's clock is the database's.
        let lease_expires_ms = now_ms.saturating_add(lease_ms);
        let row = ExecutorRecord {
            started_ms: now_ms,
            heartbeat_ms: now_ms,
            lease_expires_ms,
            version: versions.map(|v| v.version.clone()),
            accepts: versions.map(|v| v.accepts.clone()).unwrap_or_default(),
        };
        self.upsert_row(&Executors, &snap, executor_id.to_owned(), row, |e| {
            let mut e = ExecutorRecord {
                heartbeat_ms: now_ms,
                lease_expires_ms,
                ..e.clone()
            };
            if let Some(v) = versions {
                e.version = Some(v.version.clone());
                e.accepts = v.accepts.clone();
            }
            e
        })
        .await
    }

    pub(super) async fn workflows_reclaim(&mut self, now_ms: i64) -> Result<u64, MemError> {
        // One statement, one snapshot: DELETE the expired executors
        // (re-checking each lease after a wait, so a heartbeat that
        // committed meanwhile saves its executor), then UPDATE the RUNNING
        // workflows of those executors or of executors the snapshot does not
        // know. The snapshot still sees the executors this statement
        // deletes, as in the CTE, so `dead` is checked explicitly.
        let snap = self.start("workflows_reclaim")?;
        let (expired, known) = {
            let mut db = self.storage.db();
            let (t, txs) = Executors.split(&mut db);
            let mut expired = Vec::new();
            let mut known = std::collections::HashSet::new();
            for (k, i) in t.scan(txs, &snap, ..) {
                if t.data(k, i).lease_expires_ms < now_ms
                    && !crate::bugs::active(crate::bugs::Bug::LeaseNeverExpires)
                {
                    expired.push(k.clone());
                }
                known.insert(k.clone());
            }
            (expired, known)
        };
        let mut dead = std::collections::HashSet::new();
        for key in expired {
            if self
                .delete_row(&Executors, &snap, &key, |e| e.lease_expires_ms < now_ms)
                .await?
            {
                dead.insert(key);
            }
        }
        let requeued = self
            .update_all(&Workflows, &snap, |w| {
                let orphaned = w.status == Status::Running
                    && w.executor_id
                        .as_ref()
                        .is_none_or(|e| dead.contains(e) || !known.contains(e));
                orphaned.then(|| handed_back(w, now_ms))
            })
            .await?;
        Ok(requeued.len() as u64)
    }

    /// For a limited queue: locks the queue's row (`FOR UPDATE`, waiting),
    /// then in a new statement counts the queue's running workflows and
    /// recent starts. How many more may start; `None` if unlimited.
    pub(super) async fn claim_budget(
        &mut self,
        p: &WorkflowsClaim,
    ) -> Result<Option<u32>, MemError> {
        if !p.queue.is_limited() {
            return Ok(None);
        }
        let snap = self.start("workflows_claim")?;
        let idx = {
            let mut db = self.storage.db();
            let (t, txs) = Queues.split(&mut db);
            t.visible(txs, &snap, &p.queue.name)
        };
        if let Some(idx) = idx {
            self.lock_row(&Queues, &snap, &p.queue.name, idx, LockWait::Block, |_| {
                true
            })
            .await?;
        }
        let snap = self.start("workflows_claim")?;
        let period_ms = p.queue.rate_limit.map_or(0, |(_, ms)| ms);
        let since_ms = p.now_ms - period_ms;
        let (running, recent) = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            let mut running = 0i64;
            let mut recent = 0i64;
            for (k, i) in t.scan(txs, &snap, ..) {
                let w = t.data(k, i);
                if w.queue != p.queue.name {
                    continue;
                }
                running += i64::from(w.status == Status::Running);
                recent += i64::from(w.started_ms.is_some_and(|s| s > since_ms));
            }
            (running, recent)
        };
        Ok(Some(p.queue.budget(running, recent)))
    }

    pub(super) async fn workflows_claim(
        &mut self,
        p: WorkflowsClaim,
    ) -> Result<Vec<WorkflowRow>, MemError> {
        let mut limit = p.limit;
        if let Some(budget) = self.claim_budget(&p).await? {
            limit = limit.min(budget);
            if limit == 0 {
                return Ok(Vec::new());
            }
        }
        // SELECT ... ORDER BY priority, created_at LIMIT n FOR UPDATE SKIP
        // LOCKED, then UPDATE the locked rows: concurrent claimers take
        // different rows, and a row that changed since the snapshot is
        // re-checked on its newest version.
        let snap = self.start("workflows_claim")?;
        let ready = |w: &WorkflowRecord| {
            w.status == Status::Enqueued
                && w.queue == p.queue.name
                && p.names.contains(&w.name)
                && (p.versions.accepts(w.version.as_deref())
                    || crate::bugs::active(crate::bugs::Bug::ClaimIgnoresVersion))
                && (w.run_after_ms.is_none_or(|t| t <= p.now_ms)
                    || crate::bugs::active(crate::bugs::Bug::ClaimIgnoresDelay))
        };
        // (priority, created, ID, version index, concurrency key)
        type Candidate = (i32, i64, String, usize, Option<String>);
        let (mut candidates, mut running_per_key): (Vec<Candidate>, BTreeMap<String, i64>) = {
            let mut db = self.storage.db();
            let (t, txs) = Workflows.split(&mut db);
            let candidates = t
                .scan(txs, &snap, ..)
                .filter(|(k, i)| ready(t.data(k, *i)))
                .map(|(k, i)| {
                    let w = t.data(k, i);
                    // (The planted bug orders by age alone.)
                    let priority = if crate::bugs::active(crate::bugs::Bug::ClaimIgnoresPriority) {
                        0
                    } else {
                        w.priority
                    };
                    (
                        priority,
                        w.created_ms,
                        k.clone(),
                        i,
                        w.concurrency_key.clone(),
                    )
                })
                .collect();
            let mut running = BTreeMap::new();
            if p.queue.concurrency_per_key.is_some() {
                for (k, i) in t.scan(txs, &snap, ..) {
                    let w = t.data(k, i);
                    if let (Status::Running, true, Some(key)) =
                        (w.status, w.queue == p.queue.name, &w.concurrency_key)
                    {
                        *running.entry(key.clone()).or_insert(0) += 1;
                    }
                }
            }
            (candidates, running)
        };
        candidates.sort();
        // A per-key limit admits, per key, only the first (limit - running)
        // ready workflows in claim order, counted before any is locked (the
        // window function of the PostgreSQL statement): a locked one still
        // takes its key's turn.
        if let Some(per_key) = p.queue.concurrency_per_key {
            candidates.retain(|c| {
                let Some(key) = &c.4 else { return true };
                let n = running_per_key.entry(key.clone()).or_insert(0);
                *n += 1;
                *n <= i64::from(per_key)
            });
        }
        let mut rows = Vec::new();
        for (_, _, key, idx, _) in candidates {
            if rows.len() >= limit as usize {
                break;
            }
            let locked = self
                .lock_row(&Workflows, &snap, &key, idx, LockWait::SkipLocked, ready)
                .await?;
            let Some(latest) = locked else { continue };
            let mut db = self.storage.db();
            let (t, _) = Workflows.split(&mut db);
            let w = t.data(&key, latest);
            let claimed = WorkflowRecord {
                status: Status::Running,
                executor_id: Some(p.executor_id.clone()),
                owner_epoch: w.owner_epoch + 1,
                started_ms: Some(p.now_ms),
                updated_ms: p.now_ms,
                version: w
                    .version
                    .clone()
                    .or_else(|| Some(p.versions.version.clone())),
                ..w.clone()
            };
            t.write(&snap, &key, latest, Some(claimed.clone()));
            rows.push(workflow_row(&claimed));
        }
        Ok(rows)
    }

    pub(super) async fn workflows_release(
        &mut self,
        executor_id: &str,
        now_ms: i64,
    ) -> Result<u64, MemError> {
        let snap = self.start("workflows_release")?;
        let released = self
            .update_all(&Workflows, &snap, |w| {
                (w.status == Status::Running && w.executor_id.as_deref() == Some(executor_id))
                    .then(|| handed_back(w, now_ms))
            })
            .await?;
        self.delete_row(&Executors, &snap, &executor_id.to_owned(), |_| true)
            .await?;
        Ok(released.len() as u64)
    }

    pub(super) async fn workflow_suspend(
        &mut self,
        id: &str,
        owner_epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
        let snap = self.start("workflow_suspend")?;
        let updated = self
            .update_row(&Workflows, &snap, &id.to_owned(), |w| {
                (w.owner_epoch == owner_epoch && w.status == Status::Running).then(|| {
                    WorkflowRecord {
                        status: Status::Enqueued,
                        executor_id: None,
                        run_after_ms: Some(run_after_ms),
                        updated_ms: now_ms,
                        ..w.clone()
                    }
                })
            })
            .await?;
        match updated {
            Some(_) => Ok(()),
            None => Err(fenced(id)),
        }
    }

    pub(super) async fn recv_deadline(
        &mut self,
        id: &str,
        owner_epoch: i64,
        step_id: i32,
        deadline_ms: i64,
    ) -> StorageResult<i64> {
        // One UPDATE, fenced on the snapshot and re-checked after a wait.
        let snap = self.start("recv_deadline")?;
        let updated = self
            .update_row(&Workflows, &snap, &id.to_owned(), |w| {
                running_at(w, owner_epoch).then(|| WorkflowRecord {
                    wait_until_ms: if w.wait_step == Some(step_id) {
                        w.wait_until_ms
                    } else {
                        Some(deadline_ms)
                    },
                    wait_step: Some(step_id),
                    ..w.clone()
                })
            })
            .await?;
        match updated.and_then(|w| w.wait_until_ms) {
            Some(recorded) => Ok(recorded),
            None => Err(fenced(id)),
        }
    }

    pub(super) async fn message_take(
        &mut self,
        workflow_id: &str,
        topic: &str,
        owner_epoch: i64,
    ) -> StorageResult<Option<String>> {
        // One statement: the fence reads the snapshot; the oldest message is
        // locked SKIP LOCKED (a message another execution is taking is
        // passed over, one that was taken since the snapshot is gone) and
        // deleted.
        let snap = self.start("message_take")?;
        let (owned, candidates) = {
            let mut db = self.storage.db();
            let owned = read(&Workflows, &mut db, &snap, &workflow_id.to_owned())
                .is_some_and(|w| w.owner_epoch == owner_epoch && w.status == Status::Running);
            let (t, txs) = Messages.split(&mut db);
            let candidates: Vec<(i64, usize)> = t
                .scan(txs, &snap, ..)
                .filter(|(k, i)| {
                    let m = t.data(k, *i);
                    m.workflow_id == workflow_id && m.topic == topic
                })
                .map(|(k, i)| (*k, i))
                .collect();
            (owned, candidates)
        };
        if !owned {
            return Err(fenced(workflow_id));
        }
        for (key, idx) in candidates {
            let locked = self
                .lock_row(&Messages, &snap, &key, idx, LockWait::SkipLocked, |_| true)
                .await?;
            let Some(latest) = locked else { continue };
            let mut db = self.storage.db();
            let (t, _) = Messages.split(&mut db);
            let payload = t.data(&key, latest).payload.clone();
            t.write(&snap, &key, latest, None);
            return Ok(Some(payload));
        }
        Ok(None)
    }

    pub(super) async fn event_set(
        &mut self,
        workflow_id: &str,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> Result<(), MemError> {
        let snap = self.start("event_set")?;
        let value = match jsonb_text(value) {
            Ok(v) => v,
            Err(e) => return Err(self.s.fail(&mut self.storage.db(), e)),
        };
        let row = EventRecord {
            value,
            updated_ms: now_ms,
        };
        let key = (workflow_id.to_owned(), key.to_owned());
        self.upsert_row(&Events, &snap, key, row.clone(), |_| row.clone())
            .await
    }

    pub(super) async fn event_get(
        &mut self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<String>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "event_get")?;
        let key = (workflow_id.to_owned(), key.to_owned());
        Ok(read(&Events, &mut db, &snap, &key).map(|e| e.value))
    }

    pub(super) async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, MemError> {
        self.cancel_tree(id, reason, now_ms, None).await
    }

    pub(super) async fn workflow_cancel_overdue(
        &mut self,
        id: &str,
        owner_epoch: i64,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        let cancelled = self
            .cancel_tree(
                id,
                crate::storage::DEADLINE_EXCEEDED,
                now_ms,
                Some(owner_epoch),
            )
            .await?;
        crate::storage::contract::overdue_cancelled(id, cancelled)
    }

    /// A cancel's cascade; with `fence`, the root only while it runs under
    /// that epoch, and nothing otherwise.
    async fn cancel_tree(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
        fence: Option<i64>,
    ) -> Result<Vec<String>, MemError> {
        // Level by level, as on PostgreSQL: an UPDATE of the level's
        // unfinished rows (each re-checked after a wait: a workflow that
        // finished meanwhile is left alone), then in a new statement, whose
        // snapshot sees every child inserted under the rows now locked, the
        // next level.
        let mut cancelled = Vec::new();
        let mut level = vec![id.to_owned()];
        let mut seen: std::collections::HashSet<String> = level.iter().cloned().collect();
        let mut root = true;
        while !level.is_empty() {
            let snap = self.start("workflows_cancel")?;
            let mut ids = Vec::new();
            let fence = if root { fence } else { None };
            for key in &level {
                let updated = self
                    .update_row(&Workflows, &snap, key, |w| {
                        let owned = fence.is_none_or(|epoch| running_at(w, epoch));
                        (owned && matches!(w.status, Status::Enqueued | Status::Running)).then(
                            || WorkflowRecord {
                                status: Status::Cancelled,
                                error: Some(reason.to_owned()),
                                executor_id: None,
                                owner_epoch: w.owner_epoch + 1,
                                updated_ms: now_ms,
                                completed_ms: Some(now_ms),
                                ..w.clone()
                            },
                        )
                    })
                    .await?;
                if updated.is_some() {
                    ids.push(key.clone());
                }
            }
            if fence.is_some() && ids.is_empty() {
                return Ok(Vec::new());
            }
            root = false;
            ids.sort();
            cancelled.extend(ids);
            let snap = self.start("workflows_cancel")?;
            let mut children: Vec<String> = {
                let mut db = self.storage.db();
                let (t, txs) = Workflows.split(&mut db);
                t.scan(txs, &snap, ..)
                    .filter(|(k, i)| {
                        t.data(k, *i)
                            .parent_id
                            .as_ref()
                            .is_some_and(|p| level.contains(p))
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            children.sort();
            level = children
                .into_iter()
                .filter(|c| seen.insert(c.clone()))
                .collect();
        }
        Ok(cancelled)
    }

    pub(super) async fn workflow_resume(
        &mut self,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, MemError> {
        // The subtree of a cancelled root (WITH RECURSIVE over the
        // snapshot), then an UPDATE of its cancelled members, each re-checked
        // after a wait.
        let snap = self.start("workflow_resume")?;
        let tree = self.subtree(&snap, id, |w| w.status == Status::Cancelled);
        let mut root = false;
        for key in tree {
            let updated = self
                .update_row(&Workflows, &snap, &key, |w| {
                    (w.status == Status::Cancelled).then(|| WorkflowRecord {
                        status: Status::Enqueued,
                        error: None,
                        executor_id: None,
                        run_after_ms: None,
                        deadline_ms: None,
                        completed_ms: None,
                        owner_epoch: w.owner_epoch + 1,
                        updated_ms: now_ms,
                        ..w.clone()
                    })
                })
                .await?;
            if let Some(w) = &updated {
                // The UPDATE puts the row back into the partial unique index
                // workflows_dedup: another unfinished holder of its key fails
                // the whole statement (after waiting for one in progress).
                self.resume_dedup_check(w, id).await?;
            }
            root |= updated.is_some() && key == id;
        }
        Ok(root)
    }

    /// The unique check of `workflows_dedup` for the version of `w` a resume
    /// just wrote.
    async fn resume_dedup_check(&mut self, w: &WorkflowRecord, root: &str) -> Result<(), MemError> {
        let Some(key) = &w.dedup_key else {
            return Ok(());
        };
        loop {
            let wake = {
                let mut db = self.storage.db();
                let (t, txs) = Workflows.split(&mut db);
                let check = t.unique_where(txs, self.s.xid, |o| {
                    o.id != w.id
                        && o.queue == w.queue
                        && o.dedup_key.as_ref() == Some(key)
                        && matches!(o.status, Status::Enqueued | Status::Running)
                });
                match check {
                    Unique::Free => return Ok(()),
                    Unique::Conflict => {
                        let e = MemError::Raised {
                            sqlstate: "23505",
                            message: crate::storage::contract::resume_dedup_held(root),
                        };
                        return Err(self.s.fail(&mut db, e));
                    }
                    Unique::WaitFor(x) => self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?,
                }
            };
            self.s.block(wake).await?;
        }
    }

    /// The IDs of workflow `id` (if the snapshot sees it and `root` accepts
    /// it) and of all its descendants, breadth first, each once: the
    /// recursive CTE of the cancel and resume statements.
    fn subtree(
        &mut self,
        snap: &Snapshot,
        id: &str,
        root: impl Fn(&WorkflowRecord) -> bool,
    ) -> Vec<String> {
        let mut db = self.storage.db();
        let (t, txs) = Workflows.split(&mut db);
        let mut children: std::collections::HashMap<&str, Vec<&str>> = Default::default();
        for (k, i) in t.scan(txs, snap, ..) {
            if let Some(parent) = &t.data(k, i).parent_id {
                children
                    .entry(parent.as_str())
                    .or_default()
                    .push(k.as_str());
            }
        }
        let mut tree: Vec<String> = Vec::new();
        if let Some(i) = t.visible(txs, snap, &id.to_owned())
            && root(t.data(&id.to_owned(), i))
        {
            tree.push(id.to_owned());
        }
        let mut next = 0;
        while next < tree.len() {
            for child in children.get(tree[next].as_str()).into_iter().flatten() {
                if !tree.iter().any(|t| t == child) {
                    tree.push((*child).to_owned());
                }
            }
            next += 1;
        }
        tree
    }

    pub(super) async fn workflow_fork(&mut self, p: WorkflowFork) -> Result<bool, MemError> {
        let snap = self.start("workflow_fork")?;
        let source = read(&Workflows, &mut self.storage.db(), &snap, &p.source_id);
        let Some(source) = source else {
            return Ok(false);
        };
        // EPOCH_FIRST, not EPOCH_NEVER_RAN: a claim at EPOCH_FIRST skips
        // loading the history, and the fork has copied checkpoints.
        let row = WorkflowRecord {
            id: p.new_id.clone(),
            name: source.name,
            status: Status::Enqueued,
            input: source.input,
            output: None,
            error: None,
            executor_id: None,
            owner_epoch: EPOCH_FIRST,
            created_ms: p.now_ms,
            updated_ms: p.now_ms,
            completed_ms: None,
            queue: source.queue,
            priority: source.priority,
            dedup_key: None,
            concurrency_key: None,
            debounce_key: None,
            run_after_ms: None,
            started_ms: None,
            parent_id: None,
            deadline_ms: None,
            wait_step: None,
            wait_until_ms: None,
            // Its copied steps were recorded under the source's version.
            version: source.version,
            // A fork is a new run, on an operator's behalf: a trace of its own.
            trace_parent: None,
        };
        self.insert_row(&Workflows, &snap, p.new_id.clone(), || row.clone(), false)
            .await?;
        let snap = self.start("workflow_fork")?;
        let steps: Vec<StepRecordRow> = {
            let mut db = self.storage.db();
            let (t, txs) = Steps.split(&mut db);
            let range = (p.source_id.clone(), i32::MIN)..(p.source_id.clone(), p.from_step);
            t.scan(txs, &snap, range)
                .map(|(k, i)| t.data(k, i).clone())
                .collect()
        };
        for step in steps {
            // Copied checkpoints carry EPOCH_NEVER_RAN: they replay for every
            // execution of the fork.
            let copy = StepRecordRow {
                workflow_id: p.new_id.clone(),
                owner_epoch: EPOCH_NEVER_RAN,
                ..step
            };
            let key = (p.new_id.clone(), copy.step_id);
            self.insert_row(&Steps, &snap, key, || copy.clone(), false)
                .await?;
        }
        Ok(true)
    }

    pub(super) async fn workflows_owned(
        &mut self,
        executor_id: &str,
    ) -> Result<Vec<(String, i64)>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflows_owned")?;
        let (t, txs) = Workflows.split(&mut db);
        // ORDER BY id: the scan is in key order.
        Ok(t.scan(txs, &snap, ..)
            .map(|(k, i)| t.data(k, i))
            .filter(|w| {
                w.status == Status::Running && w.executor_id.as_deref() == Some(executor_id)
            })
            .map(|w| (w.id.clone(), w.owner_epoch))
            .collect())
    }

    pub(super) async fn workflows_list(
        &mut self,
        f: WorkflowFilter,
    ) -> Result<Vec<WorkflowInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflows_list")?;
        let (t, txs) = Workflows.split(&mut db);
        let mut rows: Vec<&WorkflowRecord> = t
            .scan(txs, &snap, ..)
            .map(|(k, i)| t.data(k, i))
            .filter(|w| filter_matches(&f, w))
            .collect();
        // ORDER BY created_at DESC, id
        rows.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        Ok(rows
            .into_iter()
            .skip(usize::try_from(f.offset).unwrap_or(usize::MAX))
            .take(f.limit as usize)
            .map(workflow_info)
            .collect())
    }

    pub(super) async fn workflow_info(
        &mut self,
        id: &str,
    ) -> Result<Option<WorkflowInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflow_info")?;
        Ok(read(&Workflows, &mut db, &snap, &id.to_owned()).map(|w| workflow_info(&w)))
    }

    pub(super) async fn steps_info(
        &mut self,
        workflow_id: &str,
    ) -> Result<Vec<StepInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "steps_info")?;
        let (t, txs) = Steps.split(&mut db);
        let range = (workflow_id.to_owned(), i32::MIN)..=(workflow_id.to_owned(), i32::MAX);
        Ok(t.scan(txs, &snap, range)
            .map(|(k, i)| {
                let s = t.data(k, i);
                StepInfo {
                    row: step_row(s),
                    attempts: s.attempts,
                    owner_epoch: s.owner_epoch,
                    started_ms: s.started_ms,
                    completed_ms: s.completed_ms,
                }
            })
            .collect())
    }
}

impl MemConn {
    pub(super) async fn workflows_count(
        &mut self,
        f: WorkflowFilter,
        cap: u64,
    ) -> Result<Vec<(Status, u64)>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "workflows_count")?;
        let (t, txs) = Workflows.split(&mut db);
        let mut counts: Vec<(Status, u64)> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        let f = WorkflowFilter { status: None, ..f };
        for (k, i) in t.scan(txs, &snap, ..) {
            let w = t.data(k, i);
            if filter_matches(&f, w)
                && let Some(c) = counts.iter_mut().find(|(s, _)| *s == w.status)
            {
                c.1 = (c.1 + 1).min(cap);
            }
        }
        Ok(counts)
    }

    pub(super) async fn queues_info(&mut self, now_ms: i64) -> Result<Vec<QueueInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "queues_info")?;
        let mut queues: Vec<QueueInfo> = {
            let (t, txs) = Queues.split(&mut db);
            t.scan(txs, &snap, ..)
                .map(|(k, i)| {
                    let q = t.data(k, i);
                    QueueInfo {
                        limits: QueueLimits {
                            name: k.clone(),
                            concurrency_global: q.concurrency_global,
                            rate_limit: q.rate_limit,
                            concurrency_per_key: q.concurrency_per_key,
                            retention_ms: q.retention_ms,
                        },
                        enqueued: 0,
                        running: 0,
                        oldest_ready_ms: None,
                    }
                })
                .collect()
        };
        let (t, txs) = Workflows.split(&mut db);
        for (k, i) in t.scan(txs, &snap, ..) {
            let w = t.data(k, i);
            let Some(q) = queues.iter_mut().find(|q| q.limits.name == w.queue) else {
                continue;
            };
            match w.status {
                Status::Enqueued => {
                    q.enqueued += 1;
                    if w.run_after_ms.is_none_or(|ms| ms <= now_ms) {
                        q.oldest_ready_ms = Some(
                            q.oldest_ready_ms
                                .map_or(w.created_ms, |ms| ms.min(w.created_ms)),
                        );
                    }
                }
                Status::Running => q.running += 1,
                _ => {}
            }
        }
        Ok(queues)
    }

    pub(super) async fn executors_info(&mut self) -> Result<Vec<ExecutorInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "executors_info")?;
        let mut executors: Vec<ExecutorInfo> = {
            let (t, txs) = Executors.split(&mut db);
            t.scan(txs, &snap, ..)
                .map(|(k, i)| {
                    let e = t.data(k, i);
                    ExecutorInfo {
                        id: k.clone(),
                        version: e.version.clone(),
                        accepts: e.accepts.clone(),
                        started_ms: e.started_ms,
                        heartbeat_ms: e.heartbeat_ms,
                        lease_expires_ms: e.lease_expires_ms,
                        running: 0,
                    }
                })
                .collect()
        };
        let (t, txs) = Workflows.split(&mut db);
        for (k, i) in t.scan(txs, &snap, ..) {
            let w = t.data(k, i);
            if w.status == Status::Running
                && let Some(e) = executors
                    .iter_mut()
                    .find(|e| w.executor_id.as_deref() == Some(e.id.as_str()))
            {
                e.running += 1;
            }
        }
        Ok(executors)
    }

    pub(super) async fn messages_info(
        &mut self,
        workflow_id: &str,
    ) -> Result<Vec<MessageInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "messages_info")?;
        let (t, txs) = Messages.split(&mut db);
        // ORDER BY id: the identity is the send order.
        Ok(t.scan(txs, &snap, ..)
            .map(|(k, i)| t.data(k, i))
            .filter(|m| m.workflow_id == workflow_id)
            .map(|m| MessageInfo {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                created_ms: m.created_ms,
            })
            .collect())
    }

    pub(super) async fn events_info(
        &mut self,
        workflow_id: &str,
    ) -> Result<Vec<EventInfo>, MemError> {
        let mut db = self.storage.db();
        let snap = self.s.statement(&mut db, "events_info")?;
        let (t, txs) = Events.split(&mut db);
        let range = (workflow_id.to_owned(), String::new())..;
        Ok(t.scan(txs, &snap, range)
            .take_while(|(k, _)| k.0 == workflow_id)
            .map(|(k, i)| {
                let e = t.data(k, i);
                EventInfo {
                    key: k.1.clone(),
                    value: e.value.clone(),
                    updated_ms: e.updated_ms,
                }
            })
            .collect())
    }
}

/// Whether `w` matches `f` (the WHERE clause of `workflows_list`).
fn filter_matches(f: &WorkflowFilter, w: &WorkflowRecord) -> bool {
    f.status.is_none_or(|s| w.status == s)
        && f.name.as_ref().is_none_or(|n| w.name == *n)
        && f.queue.as_ref().is_none_or(|q| w.queue == *q)
        && f.version
            .as_ref()
            .is_none_or(|v| w.version.as_ref() == Some(v))
        && f.created_from_ms.is_none_or(|ms| w.created_ms >= ms)
        && f.created_until_ms.is_none_or(|ms| w.created_ms < ms)
        && f.parent_id
            .as_ref()
            .is_none_or(|p| w.parent_id.as_ref() == Some(p))
}

fn schedule_state(s: &ScheduleRecord, now_ms: i64) -> ScheduleState {
    ScheduleState {
        decl: s.decl.clone(),
        paused: s.paused,
        cursor_ms: s.cursor_ms,
        last_tick_ms: s.last_tick_ms,
        updated_ms: s.updated_ms,
        now_ms,
    }
}

pub(super) fn workflow_info(w: &WorkflowRecord) -> WorkflowInfo {
    WorkflowInfo {
        row: workflow_row(w),
        priority: w.priority,
        created_ms: w.created_ms,
        updated_ms: w.updated_ms,
        started_ms: w.started_ms,
        completed_ms: w.completed_ms,
        concurrency_key: w.concurrency_key.clone(),
    }
}

/// Whether `w` runs at `epoch` (a child's insert checks its parent so).
fn running_at(w: &WorkflowRecord, epoch: i64) -> bool {
    w.status == Status::Running && w.owner_epoch == epoch
}

/// A running workflow handed back to its queue (reclaim, release, a
/// recovery of a version not accepted): owned by no one, under a bumped
/// epoch that fences its last execution.
fn handed_back(w: &WorkflowRecord, now_ms: i64) -> WorkflowRecord {
    WorkflowRecord {
        status: Status::Enqueued,
        executor_id: None,
        owner_epoch: w.owner_epoch + 1,
        updated_ms: now_ms,
        ..w.clone()
    }
}

/// A checkpoint as the engine reads it.
pub(super) fn step_row(s: &StepRecordRow) -> StepRow {
    StepRow {
        step_id: s.step_id,
        name: s.name.clone(),
        kind: s.kind,
        output: s.output.clone(),
        error: s.error.clone(),
    }
}

pub(super) fn workflow_row(w: &WorkflowRecord) -> WorkflowRow {
    WorkflowRow {
        id: w.id.clone(),
        name: w.name.clone(),
        status: w.status,
        input: w.input.clone(),
        output: w.output.clone(),
        error: w.error.clone(),
        executor_id: w.executor_id.clone(),
        owner_epoch: w.owner_epoch,
        queue: w.queue.clone(),
        parent_id: w.parent_id.clone(),
        deadline_ms: w.deadline_ms,
        version: w.version.clone(),
        trace_parent: w.trace_parent.clone(),
    }
}
