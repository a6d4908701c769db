//! Replay checks: does the code registered now take the steps a run
//! recorded, in order, and (for a finished run) return what it recorded?
//! Nothing runs and nothing is written: outputs come from the history, and
//! the body stops at the first step beyond it.
//!
//! A difference means the workflow's control flow is not a function of its
//! input and its steps' recorded outputs (it read a clock, a random number
//! or the database between steps), or that the code changed under a run.

use std::fmt;
use std::sync::Arc;

use crate::context::WorkflowContext;
use crate::error::Error;
use crate::payload;
use crate::runtime::Shared;
use crate::storage::{Status, StepRow, Storage, Transaction as _, WorkflowFilter, WorkflowRow};

/// The outcome of [`Engine::replay`](crate::Engine::replay) for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The run.
    pub workflow_id: String,
    /// Its workflow's name.
    pub name: String,
    /// Its status when it was replayed.
    pub status: Status,
    /// The recorded steps the replay consumed.
    pub steps: usize,
    /// Where the code and the history part, if they do.
    pub divergence: Option<Divergence>,
    /// The application version the run was recorded under (`None`: it
    /// never ran).
    pub version: Option<String>,
    /// Whether this code accepts that version
    /// ([`EngineBuilder::version`](crate::EngineBuilder::version)): an
    /// executor of this code would run the run. A run it does not accept
    /// is replayed all the same, which says whether accepting it would be
    /// safe.
    pub accepted: bool,
}

impl Replay {
    /// Whether the code agrees with the history.
    pub fn agrees(&self) -> bool {
        self.divergence.is_none()
    }

    /// Whether this code would break the run: it accepts the run's version
    /// and disagrees with its history.
    pub fn breaks(&self) -> bool {
        self.accepted && !self.agrees()
    }
}

/// How the code and a run's history differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Divergence {
    /// At step `step_id` the history and the code disagree: a different step
    /// (both `Some`), a step the history does not have although the run
    /// finished (`recorded: None`), or a recorded step the code no longer
    /// reaches (`current: None`).
    Step {
        /// The step's ID.
        step_id: i32,
        /// The recorded step's name.
        recorded: Option<String>,
        /// The name the code calls it by.
        current: Option<String>,
    },
    /// The history has no step `step_id`, where the code calls `current`,
    /// but it does have later steps: the run skipped a step the code takes.
    Gap {
        /// The missing step's ID.
        step_id: i32,
        /// The name the code calls it by.
        current: String,
    },
    /// No workflow of the run's name is registered: the code cannot run it.
    NotRegistered,
    /// The run finished, and the code, given the same step outputs, returns
    /// something else.
    Outcome {
        /// What the run recorded (`output` JSON, or `error: ` and the error).
        recorded: String,
        /// What the replay returned, in the same form.
        replayed: String,
    },
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Divergence::Step {
                step_id,
                recorded: Some(recorded),
                current: Some(current),
            } => write!(
                f,
                "step {step_id} was recorded as {recorded:?} but the code calls {current:?}"
            ),
            Divergence::Step {
                step_id,
                recorded: None,
                current,
            } => write!(
                f,
                "the run finished, but its history has no step {step_id}, where the code calls {:?}",
                current.as_deref().unwrap_or("?")
            ),
            Divergence::Step {
                step_id, recorded, ..
            } => write!(
                f,
                "step {step_id} ({:?}) was recorded, but the code returns before reaching it",
                recorded.as_deref().unwrap_or("?")
            ),
            Divergence::Gap { step_id, current } => write!(
                f,
                "the history has no step {step_id}, where the code calls {current:?}, but it has later steps"
            ),
            Divergence::NotRegistered => {
                f.write_str("no workflow of its name is registered in this code")
            }
            Divergence::Outcome { recorded, replayed } => write!(
                f,
                "the run recorded {recorded} but its replay returns {replayed}"
            ),
        }
    }
}

/// What a run recorded or a replay returned, comparably: JSON outputs
/// compare as values (key order and spacing do not matter).
fn outcome_text(output: Option<&str>, error: Option<&str>) -> String {
    match (output, error) {
        (Some(json), _) => serde_json::from_str::<serde_json::Value>(json)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| json.to_owned()),
        (None, Some(error)) => format!("error: {error}"),
        (None, None) => "nothing".to_owned(),
    }
}

/// An engine that only replays: built from an
/// [`EngineBuilder`](crate::EngineBuilder::replayer) (the same
/// registered workflows) without launching, so it registers no executor,
/// claims nothing and writes nothing. For checking recorded runs against
/// code, for example the simulator's replay invariant.
pub struct Replayer<S: Storage> {
    shared: Arc<Shared<S>>,
}

impl<S: Storage> Replayer<S> {
    /// Replays run `id` (see [`Engine::replay`](crate::Engine::replay)).
    pub async fn replay(&self, id: &str) -> Result<Replay, Error> {
        self.shared.replay(id).await
    }

    /// Replays every unfinished run in the database (`ENQUEUED`, `RUNNING`,
    /// and `CANCELLED`, which a resume would run on) against this code:
    /// before a deploy, which runs the new code would break. A run of a
    /// workflow this code does not register is incompatible
    /// ([`Divergence::NotRegistered`]).
    pub async fn check(&self) -> Result<Check, Error> {
        const PAGE: u32 = 1000;
        let storage = self.shared.storage();
        let mut runs = Vec::new();
        for status in [Status::Running, Status::Enqueued, Status::Cancelled] {
            let mut offset = 0;
            loop {
                let filter = WorkflowFilter {
                    status: Some(status),
                    limit: PAGE,
                    offset,
                    ..WorkflowFilter::default()
                };
                let page = storage
                    .autocommit(move |tx| Box::pin(tx.workflows_list(filter)))
                    .await?;
                for info in &page {
                    let row = &info.row;
                    let replay = match self.shared.replay(&row.id).await {
                        Ok(replay) => replay,
                        Err(Error::UnknownWorkflow { .. }) => Replay {
                            workflow_id: row.id.clone(),
                            name: row.name.clone(),
                            status: row.status,
                            steps: 0,
                            divergence: Some(Divergence::NotRegistered),
                            version: row.version.clone(),
                            accepted: self
                                .shared
                                .config()
                                .versions()
                                .accepts(row.version.as_deref()),
                        },
                        // Finished or gone since the listing: nothing to
                        // check any more.
                        Err(Error::WorkflowNotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    runs.push(replay);
                }
                if page.len() < PAGE as usize {
                    break;
                }
                offset += u64::from(PAGE);
            }
        }
        runs.sort_by(|a, b| a.workflow_id.cmp(&b.workflow_id));
        runs.dedup_by(|a, b| a.workflow_id == b.workflow_id);
        Ok(Check { runs })
    }
}

/// What [`Replayer::check`] found: each unfinished run, replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The runs, by workflow ID.
    pub runs: Vec<Replay>,
}

impl Check {
    /// Whether the code can run on every unfinished run it accepts: the
    /// deploy gate. Runs of versions it does not accept are left to
    /// executors that do, and never fail the gate.
    pub fn is_compatible(&self) -> bool {
        !self.runs.iter().any(Replay::breaks)
    }

    /// The runs the code would break (accepted, and disagreeing).
    pub fn incompatible(&self) -> impl Iterator<Item = &Replay> {
        self.runs.iter().filter(|r| r.breaks())
    }

    /// The process exit status of the gate: 0 when compatible, 1 when some
    /// accepted run would break. (2, the check could not run, comes from
    /// [`Replayer::check_command`].)
    pub fn exit_status(&self) -> u8 {
        if self.is_compatible() { 0 } else { 1 }
    }

    /// The report as JSON: `{"compatible": bool, "runs": [{"workflow_id",
    /// "name", "status", "app_version", "accepted", "steps", "compatible",
    /// "divergence"}]}`. A run's `compatible` says whether the code agrees
    /// with its history, accepted or not.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "compatible": self.is_compatible(),
            "runs": self.runs.iter().map(|r| serde_json::json!({
                "workflow_id": r.workflow_id,
                "name": r.name,
                "status": r.status.as_str(),
                "app_version": r.version,
                "accepted": r.accepted,
                "steps": r.steps,
                "compatible": r.agrees(),
                "divergence": r.divergence.as_ref().map(ToString::to_string),
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.runs {
            let version = r.version.as_deref().unwrap_or("not started");
            write!(
                f,
                "{} ({}, {}, {version}): ",
                r.workflow_id, r.name, r.status
            )?;
            match (&r.divergence, r.accepted) {
                (None, true) => {
                    writeln!(f, "compatible ({} recorded steps replay)", r.steps)?;
                }
                (Some(d), true) => writeln!(f, "INCOMPATIBLE: {d}")?,
                (None, false) => writeln!(
                    f,
                    "not accepted, left to executors that accept {version} (accepting it would be safe)"
                )?,
                (Some(d), false) => writeln!(
                    f,
                    "not accepted, left to executors that accept {version} (this code would break it: {d})"
                )?,
            }
        }
        let bad = self.incompatible().count();
        let left = self.runs.iter().filter(|r| !r.accepted).count();
        write!(
            f,
            "{} unfinished runs, {} compatible, {bad} incompatible, {left} not accepted",
            self.runs.len(),
            self.runs.len() - bad - left
        )
    }
}

impl<S: Storage> Replayer<S> {
    /// The deploy gate as a command for your service's binary (the
    /// generic `tandem` CLI cannot run your workflow bodies): runs
    /// [`check`](Self::check), prints the report on stdout (text, or the
    /// JSON of [`Check::to_json`] with `json`) and returns the exit status:
    /// 0 compatible, 1 some accepted run would break, 2 the check could not
    /// run (the reason on stderr).
    ///
    /// ```ignore
    /// // in main(), for `myservice check [--json]`:
    /// let json = std::env::args().any(|a| a == "--json");
    /// let replayer = build_engine(PgStorage::connect(&url).await?).replayer();
    /// return std::process::ExitCode::from(replayer.check_command(json).await);
    /// ```
    pub async fn check_command(&self, json: bool) -> u8 {
        match self.check().await {
            Ok(check) => {
                if json {
                    println!("{:#}", check.to_json());
                } else {
                    println!("{check}");
                }
                check.exit_status()
            }
            Err(error) => {
                eprintln!("tandem check: cannot check the unfinished runs: {error}");
                2
            }
        }
    }

    pub(crate) fn new(shared: Arc<Shared<S>>) -> Self {
        Self { shared }
    }
}

impl<S: Storage> Shared<S> {
    /// Run `id`'s row and its history as of one moment: the row is read
    /// before and after the history, until it did not change in between.
    /// (Each read sees the database as of its own statement. A history
    /// read alone against a row read before it may hold a completion's
    /// last steps or a patch marker whose change to the row the row does
    /// not show yet.)
    async fn run_and_history(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<(WorkflowRow, Vec<StepRow>), Error> {
        let get = || async {
            self.storage()
                .workflow_get(id)
                .await?
                .ok_or_else(|| Error::WorkflowNotFound { id: id.to_owned() })
        };
        let mut row = get().await?;
        loop {
            let history = self.storage().steps_load(id).await?;
            let again = get().await?;
            if again == row {
                return Ok((row, history));
            }
            row = again;
        }
    }

    /// Replays run `id` against the registered code (see the module docs).
    pub(crate) async fn replay(self: &Arc<Self>, id: &str) -> Result<Replay, Error> {
        let (row, history) = self.run_and_history(id).await?;
        let workflow = self
            .workflow(&row.name)
            .ok_or_else(|| Error::UnknownWorkflow {
                name: row.name.clone(),
            })?;
        let mut ctx = WorkflowContext::replay_only(
            Arc::clone(self),
            row.id.clone(),
            row.owner_epoch,
            history.clone(),
            row.version.clone(),
        )
        .with_trace_parent(row.trace_parent.clone());
        let result = workflow.run_json(&mut ctx, &row.input).await;
        let called = ctx.steps_called();
        let finished = matches!(row.status, Status::Success | Status::Error);
        let consumed = history.iter().filter(|s| s.step_id < called).count();
        let divergence = match &result {
            Err(e) => match e.as_engine_error() {
                Some(Error::NonDeterminism {
                    step_id,
                    recorded,
                    current,
                }) => Some(Divergence::Step {
                    step_id: *step_id,
                    recorded: Some(recorded.clone()),
                    current: Some(current.clone()),
                }),
                // The code wants a step the history lacks: fine for a run
                // that is still going (its next step), wrong for a finished
                // one.
                Some(Error::ReplayEnded { step_id, name }) if finished => Some(Divergence::Step {
                    step_id: *step_id,
                    recorded: None,
                    current: Some(name.clone()),
                }),
                // Steps are recorded in order: a history with a hole where
                // the code takes a step disagrees with it, finished or not.
                Some(Error::ReplayEnded { step_id, name })
                    if history.iter().any(|s| s.step_id > *step_id) =>
                {
                    Some(Divergence::Gap {
                        step_id: *step_id,
                        current: name.clone(),
                    })
                }
                _ => None,
            },
            Ok(_) => None,
        };
        let ended_early = matches!(
            result.as_ref().err().and_then(|e| e.as_engine_error()),
            Some(Error::ReplayEnded { .. } | Error::NonDeterminism { .. })
        );
        let divergence = divergence.or_else(|| {
            if ended_early {
                return None;
            }
            // The body returned: every recorded step must have been taken.
            if let Some(left) = history.iter().find(|s| s.step_id >= called) {
                return Some(Divergence::Step {
                    step_id: left.step_id,
                    recorded: Some(left.name.clone()),
                    current: None,
                });
            }
            if !finished {
                return None;
            }
            let recorded = outcome_text(row.output.as_deref(), row.error.as_deref());
            let replayed = match &result {
                Ok(json) => outcome_text(Some(json), None),
                Err(e) => outcome_text(None, Some(&payload::error_text(e.to_string()))),
            };
            (recorded != replayed).then_some(Divergence::Outcome { recorded, replayed })
        });
        Ok(Replay {
            accepted: self.config().versions().accepts(row.version.as_deref()),
            version: row.version,
            workflow_id: row.id,
            name: row.name,
            status: row.status,
            steps: consumed,
            divergence,
        })
    }
}
