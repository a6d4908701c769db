//! Versioned deploys (issue 16): executors of two application versions
//! side by side, the newer one changing the workflow behind
//! `ctx.patched`.
//!
//! Since [`Generation::Versions`] every executor incarnation runs the
//! bank workflow's code of version `v1` or `v2`, drawn per incarnation (a
//! restart is a deploy, in either direction). Both run the same ops; they
//! differ in the workflow's tail, after its last op:
//!
//! - `v1` sleeps past `sleep_suspend_after`, so the run goes back to its
//!   queue with the sleep recorded, and whoever claims it next finishes it;
//! - `v2` (which accepts `v1`) asks `ctx.patched("receipt")`: a run that
//!   reaches the tail under `v2` records the marker and a "receipt" step
//!   instead; a `v1` run whose history holds the tail sleep goes on down
//!   `v1`'s path. `v1` does not accept `v2`.
//!
//! Invariants: no execution of code commits a write to a run whose
//! version, when its epoch was granted, the code does not accept
//! ([`check`]); every
//! finished run recorded a version; the deploy check of either code finds
//! no accepted run it would break (`workload::admin_client`); every
//! finished run replays under `v2` (`run::check_replays`). Liveness: once
//! faults stop the deploy completes (every live `v1` executor restarts as
//! `v2`, [`roll_out`]), and everything finishes.

use std::time::Duration;

use madsim::runtime::Handle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem::{EngineBuilder, WorkflowContext, WorkflowError};

use crate::storage::{NodeLabel, SimStorage};
use crate::workload::{Generation, SLEEP_SUSPEND_AFTER};
use crate::world::World;

/// The code a node incarnation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Before [`Generation::Versions`]: no version declared, no tail.
    Unversioned,
    /// Version `v1`.
    V1,
    /// Version `v2`, which accepts `v1`.
    V2,
}

/// The patch `v2` adds.
pub const PATCH: &str = "receipt";

/// The plain step on `v2`'s path: it calls no service.
pub const RECEIPT: &str = "receipt";

/// `v1`'s tail sleep: long enough to suspend.
const TAIL_SLEEP: Duration = Duration::from_millis(SLEEP_SUSPEND_AFTER.as_millis() as u64 + 20);

impl Code {
    /// The version it declares.
    pub fn version(self) -> Option<&'static str> {
        match self {
            Code::Unversioned => None,
            Code::V1 => Some("v1"),
            Code::V2 => Some("v2"),
        }
    }

    /// The versions whose runs it may run, besides its own.
    fn also_accepts(self) -> &'static [&'static str] {
        match self {
            Code::V2 => &["v1"],
            _ => &[],
        }
    }

    /// Whether it may run a run recorded under `version`.
    pub fn accepts(self, version: Option<&str>) -> bool {
        match (self.version(), version) {
            (_, None) => true,
            (None, Some(v)) => v == tandem::storage::DEFAULT_VERSION,
            (Some(own), Some(v)) => own == v || self.also_accepts().contains(&v),
        }
    }

    /// Declares it on an engine builder.
    pub fn declare(self, builder: EngineBuilder<SimStorage>) -> EngineBuilder<SimStorage> {
        match self.version() {
            None => builder,
            Some(v) => builder
                .version(v)
                .accept_versions(self.also_accepts().iter().copied()),
        }
    }

    /// The newest code of `generation`: what replays and checks run.
    pub fn newest(generation: Generation) -> Code {
        if generation >= Generation::Versions {
            Code::V2
        } else {
            Code::Unversioned
        }
    }

    /// The workflow's tail, after its last op (see the module docs).
    pub async fn tail(self, ctx: &mut WorkflowContext<SimStorage>) -> Result<(), WorkflowError> {
        match self {
            Code::Unversioned => Ok(()),
            Code::V1 => ctx.sleep(TAIL_SLEEP).await,
            Code::V2 => {
                if ctx.patched(PATCH).await? {
                    ctx.step(RECEIPT, || async { Ok::<_, std::io::Error>(()) })
                        .await
                } else {
                    ctx.sleep(TAIL_SLEEP).await
                }
            }
        }
    }

    /// Runs the tail, counting which path a live execution of a `v1` run
    /// under `v2` took.
    pub async fn run_tail(
        self,
        world: &World,
        node: &NodeLabel,
        ctx: &mut WorkflowContext<SimStorage>,
    ) -> Result<(), WorkflowError> {
        let live_v1_under_v2 = self == Code::V2
            && node.executor_id.is_some()
            && version_of(world, ctx.workflow_id()).as_deref() == Some("v1");
        let patch_step = ctx.workflow_id().to_owned();
        self.tail(ctx).await?;
        if live_v1_under_v2 {
            let took_patch = world
                .mem
                .steps()
                .iter()
                .any(|s| s.workflow_id == patch_step && s.name == format!("patch:{PATCH}"));
            world.faults.observe(if took_patch {
                "patch.new_path_for_v1"
            } else {
                "patch.old_path"
            });
        }
        Ok(())
    }
}

/// The code incarnation `incarnation` of a node runs, from its own random
/// stream: `v1` or `v2` during the chaos phase, `v2` once the deploy has
/// completed.
pub fn draw(world: &World, seed: u64) -> Code {
    if world.workload.generation < Generation::Versions {
        return Code::Unversioned;
    }
    if world.state().deployed {
        return Code::V2;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7e75_1005);
    if rng.gen_bool(0.5) {
        Code::V1
    } else {
        Code::V2
    }
}

/// The version run `workflow_id` records now.
fn version_of(world: &World, workflow_id: &str) -> Option<String> {
    world
        .mem
        .workflows()
        .into_iter()
        .find(|r| r.id == workflow_id)
        .and_then(|r| r.version)
}

/// Invariants, after the run: every fenced write that committed (a
/// checkpoint, a completion, a suspend) was made by code that accepts the
/// version its run had when the writer's epoch was granted (the first
/// `RUNNING` row version at that epoch: what the claim or recovery that
/// granted it saw); and every run that took a step records a version.
/// (Judged at the grant, not at the write: a superseded execution's run
/// may have moved to a newer version since, through the new owner's
/// patch marker, and its late writes are fenced or lose the slot.)
pub fn check(world: &World) -> Vec<String> {
    if world.workload.generation < Generation::Versions {
        return Vec::new();
    }
    let mut v = Vec::new();
    let mut granted: std::collections::BTreeMap<(String, i64), Option<String>> =
        std::collections::BTreeMap::new();
    for (_, r) in world.mem.workflow_history() {
        if r.status == tandem::Status::Running {
            granted
                .entry((r.id.clone(), r.owner_epoch))
                .or_insert(r.version.clone());
        }
    }
    let state = world.state();
    for w in &state.writes {
        let Some(code) = state.label_codes.get(&w.node) else {
            continue;
        };
        let version = granted
            .get(&(w.workflow_id.clone(), w.epoch))
            .cloned()
            .flatten();
        if !code.accepts(version.as_deref()) {
            v.push(format!(
                "versions: {} {} (epoch {}, granted under {version:?}) written by {} running {code:?}, which does not accept it",
                w.workflow_id, w.what, w.epoch, w.node
            ));
        }
    }
    drop(state);
    let ran: std::collections::BTreeSet<String> = world
        .mem
        .steps()
        .into_iter()
        .filter(|s| s.owner_epoch != tandem::storage::EPOCH_NEVER_RAN)
        .map(|s| s.workflow_id)
        .collect();
    v.extend(
        world
            .mem
            .workflows()
            .into_iter()
            .filter(|r| ran.contains(&r.id))
            .filter(|r| !matches!(r.version.as_deref(), Some("v1" | "v2")))
            .map(|r| {
                format!(
                    "versions: {} took steps but records version {:?}",
                    r.id, r.version
                )
            }),
    );
    v
}

/// The deploy completes once faults stop: every live executor running
/// `v1` is stopped, and restarts (as every later incarnation) as `v2`.
pub fn roll_out(handle: &Handle, world: &World) {
    if world.workload.generation < Generation::Versions {
        return;
    }
    let stale: Vec<String> = {
        let mut state = world.state();
        state.deployed = true;
        state
            .codes
            .iter()
            .filter(|(n, c)| {
                **c == Code::V1
                    && !state.dead.contains_key(*n)
                    && !state.paused.contains_key(*n)
                    && !state.permanent.contains(*n)
            })
            .map(|(n, _)| n.clone())
            .collect()
    };
    for n in stale {
        world.log(format!("deploy: {n} runs v1; restarting it as v2"));
        handle.kill(n.as_str());
        world.mark_dead(&n);
    }
}
