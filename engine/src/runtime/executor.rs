//! The executor's side of the runtime: claiming queued work, renewing the
//! lease, adopting workflows owned here that run nowhere, recovering at
//! launch, and handing work back at shutdown.

use super::*;

impl<S: Storage> Shared<S> {
    /// Resumes this executor's unfinished workflows and starts its loops:
    /// the end of a launch.
    pub(crate) async fn run_executor(self: &Arc<Self>) -> Result<(), Error> {
        let recovered = self.recover(None).await?;
        if recovered > 0 {
            tracing::info!(recovered, executor_id = %self.config.executor_id, "resumed unfinished workflows");
        }
        self.spawn(Arc::clone(self).claim_loop());
        self.spawn(Arc::clone(self).heartbeat_loop());
        if !self.config.schedules.is_empty() {
            self.spawn(Arc::clone(self).schedule_loop());
        }
        if self
            .config
            .declared_limits()
            .iter()
            .any(|q| q.retention_ms.is_some())
        {
            self.spawn(Arc::clone(self).gc_loop());
        }
        Ok(())
    }

    /// Stops every task at its next step boundary, waits for them, and hands
    /// the stopped workflows back to their queues (see `Engine::shutdown`).
    pub(crate) async fn shutdown(&self) {
        let shared = self;
        shared.shutdown.send_replace(true);
        let mut tasks = shared.tasks.subscribe();
        let _ = tasks.wait_for(|n| *n == 0).await;
        // Hand the stopped workflows back to their queues at once, so that
        // other executors need not wait for this one's lease to expire.
        match shared
            .storage
            .workflows_release(&shared.config.executor_id, shared.now_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "handed unfinished workflows back"),
            Err(error) => {
                tracing::warn!(%error, "could not hand workflows back; they wait for the lease to expire")
            }
        }
    }

    pub(super) fn lock_saturated(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.saturated.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running_in(&self, queue: &str) -> usize {
        self.lock_running()
            .values()
            .filter(|r| r.queue == queue)
            .count()
    }

    pub(super) fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX)
    }

    fn workflow_names(&self) -> Vec<String> {
        self.registry.keys().map(|n| (*n).to_owned()).collect()
    }

    /// Claims work from every queue while this executor has free slots,
    /// re-enqueues the workflows of executors whose lease expired, and
    /// sleeps until a wake-up (NOTIFY, a freed slot, a local enqueue) or the
    /// poll interval.
    pub(super) async fn claim_loop(self: Arc<Self>) {
        let mut listener: Option<S::Listener> = None;
        let mut reclaimed_ms = i64::MIN;
        let names = self.workflow_names();
        let versions = self.config.versions();
        let mut errors = 0u32;
        // Launch has just recovered everything owned here: the first look
        // is due half a lease from now.
        let mut orphans = Orphans {
            looked_ms: self.now_ms(),
            ..Orphans::default()
        };
        while !self.is_shutting_down() {
            let now_ms = self.now_ms();
            if orphans.due(now_ms, self.lease_ms() / 2) {
                self.adopt_orphans(&mut orphans, now_ms).await;
            }
            if listener.is_none() {
                match self.storage.listen().await {
                    Ok(l) => listener = Some(l),
                    Err(error) => tracing::debug!(%error, "cannot listen for wake-ups; polling"),
                }
            }
            let now_ms = self.now_ms();
            let mut failed = false;
            // `now_ms < reclaimed_ms`: the clock went back; do not wait for
            // it to catch up.
            if now_ms.saturating_sub(reclaimed_ms) >= self.lease_ms() / 2 || now_ms < reclaimed_ms {
                match self.storage.workflows_reclaim(now_ms).await {
                    Ok(n) => {
                        reclaimed_ms = now_ms;
                        crate::telemetry::taken_over("reclaim", n);
                        if n > 0 {
                            tracing::info!(
                                requeued = n,
                                "re-enqueued workflows of expired executors"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "reclaim failed");
                        failed = true;
                    }
                }
            }
            for queue in &self.config.queues {
                // Checked right before counting the free slots: an execution
                // that a shutdown stops frees its slot while its row stays
                // RUNNING here until the release, so a claim after that
                // would run more of the queue here than its concurrency.
                if self.is_shutting_down() {
                    break;
                }
                let free = queue
                    .worker_concurrency
                    .saturating_sub(self.running_in(queue.name()));
                // A queue whose last claim has an unknown outcome waits for
                // the orphan look: the rows it may have claimed count
                // against the worker concurrency until adopted or ruled out.
                if free == 0 || names.is_empty() || orphans.unsettled.contains(queue.name()) {
                    continue;
                }
                let params = WorkflowsClaim {
                    queue: crate::bugs::claim_limits(&queue.limits),
                    executor_id: self.config.executor_id.clone(),
                    names: names.clone(),
                    versions: versions.clone(),
                    limit: u32::try_from(free).unwrap_or(u32::MAX),
                    now_ms: self.now_ms(),
                };
                match self.storage.workflows_claim(params).await {
                    Ok(rows) => {
                        crate::telemetry::claimed(queue.name(), rows.len());
                        let mut saturated = self.lock_saturated();
                        if rows.len() >= free {
                            saturated.insert(queue.name().to_owned());
                        } else {
                            saturated.remove(queue.name());
                        }
                        drop(saturated);
                        for row in rows {
                            // Epoch 1 after a claim: never ran, so no history
                            // to read.
                            let history = (row.owner_epoch == EPOCH_FIRST
                                || crate::bugs::active(crate::bugs::Bug::ClaimSkipsHistory))
                            .then(Vec::new);
                            self.execute(row, history);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, queue = queue.name(), "claim failed");
                        failed = true;
                        // After an unknown outcome the claim may have
                        // committed: its workflows would then be RUNNING here
                        // but run by no one, kept alive by our heartbeats.
                        // Look now rather than at the next periodic look.
                        if error.kind() == ErrorKind::Unavailable {
                            orphans.urgent = true;
                            orphans.unsettled.insert(queue.name().to_owned());
                        }
                    }
                }
            }
            errors = if failed { errors + 1 } else { 0 };
            let delay = if failed {
                self.infra_delay(errors).max(Duration::from_millis(50))
            } else {
                self.config.queue_poll_interval
            };
            let mut shutdown = self.shutdown.subscribe();
            // `biased`: a deterministic poll order (see sleep_unless_shutdown).
            let woke_by_listener = tokio::select! {
                biased;
                received = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await,
                        None => std::future::pending().await,
                    }
                } => Some(received),
                () = self.wakeup.notified() => None,
                () = self.env.sleep(delay) => None,
                _ = shutdown.wait_for(|down| *down) => None,
            };
            match woke_by_listener {
                // Any notification may be a message for a waiting `recv`.
                Some(Ok(())) => self.messages.notify_waiters(),
                Some(Err(error)) => {
                    tracing::debug!(%error, "wake-up subscription lost; polling until it is back");
                    listener = None;
                }
                None => {}
            }
        }
    }

    /// Takes over the workflows the storage says this executor runs but that
    /// no execution here runs under their current epoch. Such rows are left
    /// by any operation whose commit was acknowledged to no one: a claim
    /// (the claimer believes it got nothing), or a claim or recovery of a
    /// workflow whose older execution is still registered here. Heartbeats
    /// keep this executor's lease alive, so no other executor would ever
    /// take them. A row is adopted when two looks in a row find it orphaned
    /// under the same epoch, so a start between its insert and its
    /// registration here is never mistaken for one; adoption bumps the epoch
    /// (fencing any older execution) and runs the workflow, as at launch.
    async fn adopt_orphans(self: &Arc<Self>, orphans: &mut Orphans, now_ms: i64) {
        if crate::bugs::active(crate::bugs::Bug::NoOwnRecovery) {
            return;
        }
        let owned = self.storage.workflows_owned(&self.config.executor_id).await;
        let owned = match owned {
            Ok(owned) => owned,
            Err(error) => {
                // Look again at the next iteration.
                tracing::debug!(%error, "could not list this executor's workflows");
                orphans.urgent = true;
                return;
            }
        };
        let seen = std::mem::take(&mut orphans.suspects);
        orphans.looked_ms = now_ms;
        orphans.urgent = false;
        for (id, epoch) in owned {
            if self.runs_here(&id, epoch) {
                continue;
            }
            if seen.get(&id) != Some(&epoch) {
                orphans.suspects.insert(id, epoch);
                continue;
            }
            tracing::info!(workflow_id = %id, epoch, "adopting a workflow owned here but run by no execution");
            if let Err(error) = self.recover(Some(&id)).await {
                tracing::debug!(%error, "adoption failed; retrying at the next look");
                orphans.suspects.insert(id, epoch);
            }
        }
        // Confirm the suspects soon rather than a period later. Once none
        // remain, whatever an unacknowledged claim took runs here (and is
        // counted in its queue's worker concurrency) or was never taken.
        orphans.urgent |= !orphans.suspects.is_empty();
        if orphans.suspects.is_empty() {
            orphans.unsettled.clear();
        }
    }

    /// Renews this executor's lease every third of the lease.
    pub(super) async fn heartbeat_loop(self: Arc<Self>) {
        while self
            .sleep_unless_shutdown(self.config.lease / 3)
            .await
            .is_ok()
        {
            let result = self
                .storage
                .executor_heartbeat(&self.config.executor_id, self.now_ms(), self.lease_ms())
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "heartbeat failed");
            }
        }
    }

    /// Bumps the epoch of this executor's unfinished workflows (all, or just
    /// `only`) and runs them here; those of versions this executor does not
    /// accept (left by its previous incarnation, which ran other code) go
    /// back to their queues instead.
    pub(super) async fn recover(self: &Arc<Self>, only: Option<&str>) -> Result<usize, Error> {
        if only.is_none() && crate::bugs::active(crate::bugs::Bug::NoOwnRecovery) {
            return Ok(0);
        }
        let params = WorkflowsRecover {
            executor_id: self.config.executor_id.clone(),
            workflow_id: only.map(str::to_owned),
            versions: self.config.versions(),
            now_ms: self.now_ms(),
        };
        let rows = self
            .retry(|| self.storage.workflows_recover(params.clone()))
            .await?;
        crate::telemetry::taken_over("recovery", rows.len() as u64);
        let mut count = 0;
        for row in rows {
            let mut row = crate::bugs::stale_epoch(row);
            if crate::bugs::active(crate::bugs::Bug::TraceParentDroppedOnRecovery) {
                row.trace_parent = None;
            }
            // Always run the new epoch, even if an execution of this
            // workflow is registered here (it registered while the bump was
            // in flight): the bump fenced that execution, which stops at its
            // next write and removes only its own entry.
            tracing::info!(workflow_id = %row.id, name = %row.name, epoch = row.owner_epoch, "recovering workflow");
            self.execute(row, None);
            count += 1;
        }
        Ok(count)
    }
}

/// The claim loop's look for workflows owned here but run by no execution
/// (see `Shared::adopt_orphans`).
#[derive(Default)]
struct Orphans {
    /// Found orphaned by the last look, with their epochs.
    suspects: HashMap<String, i64>,
    /// When the last look succeeded (engine clock).
    looked_ms: i64,
    /// Look at the next iteration: a claim's outcome was unknown, a look
    /// failed, or suspects await confirmation.
    urgent: bool,
    /// Queues not to claim from until no suspects remain: their last claim's
    /// outcome is unknown, and the rows it may have taken are not yet in the
    /// running map that worker concurrency counts.
    unsettled: std::collections::HashSet<String>,
}

impl Orphans {
    /// Whether to look now: when urgent, else every `period_ms` (and at
    /// once if the clock went back).
    fn due(&self, now_ms: i64, period_ms: i64) -> bool {
        self.urgent || now_ms.saturating_sub(self.looked_ms) >= period_ms || now_ms < self.looked_ms
    }
}
